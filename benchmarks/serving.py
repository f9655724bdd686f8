"""Serving throughput: requests/s and latency of ``cotune serve`` for 1, 4, 8 and 16 concurrent
clients, unmerged and merged, and each level's requests/s as a multiple of one client's (measured
side by side in the same run).

A run directory is written first: the mini backbones of ``mini_model.py`` in its ``mma``
configuration (LLaMA-style LLM hidden 512, 8 layers, vocab 8000 with MM-Adapters; CLIP hidden 384,
6 layers, 224 px) with random trainable weights, saved with ``save_model`` as training would.
``--quick`` uses the tiny backbones of ``cotune.testing.tiny`` instead. The run is served twice on a
free loopback port, as ``cotune serve RUN`` and ``cotune serve RUN --merged`` do (the app, the
model worker and uvicorn in a background thread of this process). Each client is a thread with its
own keep-alive connection sending requests one after another (closed loop): an image (a 224x224
PNG, as a base64 data URL) and a question, greedy, ``--max-tokens`` new tokens at most; requests
are non-streamed, and one streamed request per level measures the time to the first piece of text.
After a warm-up, each level sends ``--requests`` requests per client (at least 16 per level).
Latency is the client's wall time per request; requests/s is the level's requests over its wall
time; "x 1 client" divides it by the 1-client level's requests/s of the same model in the same run.
The model worker generates for the requests waiting together in one batch (dynamic batching, at most
``--max-batch``; 1 turns it off): with more clients, requests/s rises as far as a batched decoding
step costs less than that many single ones, and as far as the rest of a request (HTTP, JSON, image
decoding, in server threads) overlaps with generation; the mean batch size of each level is
reported. Torch threads: 1 by default (``--threads``), as in ``generation.py``.

    python -m benchmarks.serving                # ~5 min on 2 cores; writes results/serving-<device>.{md,json}
    python -m benchmarks.serving --quick        # tiny run, ~20 s; prints only
    python -m benchmarks.serving --device cuda
    python -m benchmarks.serving --run DEMO/run # a trained run instead (e.g. `cotune demo`'s); writes serving-<device>-run.*
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.throughput_report import Contention, machine

ROOT = Path(__file__).resolve().parents[1]

LEVELS = (1, 4, 8, 16)


def write_run(work: Path, quick: bool) -> Path:
    """A saved model directory with random trainable weights (mini ``mma`` backbones, or tiny ones)."""
    from cotune.testing import tiny

    from cotune.config import load_config
    from cotune.model import build_model, save_model

    if quick:
        encoders = {"image": {"type": "clip", "name_or_path": str(tiny.save_encoder(work, "clip")), "layers": [1, 2, 3],
                              "reduce": "cls", "trainable": "adapter", "adapter": {"type": "mm_adapter"},
                              "connector": {"type": "lavin-neck", "hidden": 16}}}
        config = load_config(data=tiny.model_config(tiny.save_llm(work), encoders, trainable="adapter", adapter={"type": "mm_adapter"}))
    else:
        from benchmarks.mini_model import cotune_config

        config = cotune_config(work, "mma")
    torch.manual_seed(0)
    model = build_model(config)
    tiny.randomise_trainables(model, seed=1, std=0.02)
    return save_model(model, config, work / "run")


def request_body(max_tokens: int) -> dict:
    from PIL import Image

    pixels = torch.Generator().manual_seed(0)
    noise = (torch.rand(224, 224, 3, generator=pixels) * 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "text", "text": "what is in the image?"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def first_piece_ms(client, body: dict) -> float:
    """Milliseconds from sending a streamed request to its first piece of answer text."""
    start = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line:
                return 1000 * (time.perf_counter() - start)
    return float("nan")


def level(url: str, body: dict, clients: int, per_client: int, engine) -> dict:
    """``clients`` threads x ``per_client`` closed-loop requests: throughput, latency, batch sizes."""
    import httpx

    batches, completed = engine.batches, engine.completed
    latencies, tokens, failures, lock = [], [], [], threading.Lock()

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            for _ in range(per_client):
                start = time.perf_counter()
                response = client.post("/v1/chat/completions", json=body)
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code != 200:
                        failures.append(response.status_code)
                        continue
                    latencies.append(1000 * elapsed)
                    tokens.append(response.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    rows = (engine.completed - completed) / max(engine.batches - batches, 1)
    with httpx.Client(base_url=url, timeout=600) as client:
        ttft = first_piece_ms(client, body)
    return {"clients": clients, "requests": len(latencies), "failed": len(failures), "seconds": round(seconds, 3),
            "mean_batch": round(rows, 2),
            "requests_per_s": round(len(latencies) / seconds, 2), "p50_ms": round(percentile(latencies, 50), 1),
            "p95_ms": round(percentile(latencies, 95), 1), "mean_completion_tokens": round(statistics.mean(tokens), 1),
            "tokens_per_s": round(sum(tokens) / seconds, 1), "first_piece_ms_alone": round(ttft, 1)}


def measure(run: Path, merged: bool, args: argparse.Namespace) -> list[dict]:
    import httpx

    from cotune.serve import ServeConfig, load_service
    from cotune.serve.server import BackgroundServer

    service = load_service(run, ServeConfig(queue_timeout=600, max_queue=256, max_batch=args.max_batch), merged=merged,
                           device=args.device)
    body = request_body(args.max_tokens)
    rows = []
    with BackgroundServer(service) as url:
        with httpx.Client(base_url=url, timeout=600) as client:
            for _ in range(args.warmup):
                assert client.post("/v1/chat/completions", json=body).status_code == 200
        for clients in LEVELS:
            per_client = max(args.requests, -(-args.min_requests // clients))  # at least min_requests per level
            row = {"model": "merged" if merged else "unmerged", **level(url, body, clients, per_client, service.engine)}
            row["vs_one_client"] = round(row["requests_per_s"] / rows[0]["requests_per_s"], 2) if rows else 1.0
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | clients | requests | failed | requests/s | x 1 client | mean batch | p50 ms | p95 ms | "
             "answer tokens (mean) | tokens/s | first piece ms (alone) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['clients']} | {r['requests']} | {r['failed']} | {r['requests_per_s']:.2f} | "
                     f"{r['vs_one_client']:.2f} | {r['mean_batch']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                     f"{r['mean_completion_tokens']:.1f} | {r['tokens_per_s']:.1f} | {r['first_piece_ms_alone']:.0f} |")
    return lines


def describe(args: argparse.Namespace, command: str, runtime: float, info: dict, others: tuple) -> list[str]:
    """The report's header: command, machine, contention, what was measured."""
    model = ("tiny backbones of cotune.testing.tiny" if args.quick else
             "mini LLaMA hidden 512, 8 layers, vocab 8000 + CLIP 384/6 layers/224 px, MM-Adapters (mini_model.py, mma)")
    if args.run:
        model = f"the run `{args.run}` (trained weights)"
    return [
        f"# Serving throughput ({args.device})", "",
        f"Command: `{command}` (total runtime {runtime:.0f} s)", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
        f"Other processes used {others[0]:.0f} core-seconds during the run ({100 * others[1]:.1f}% of the machine).", "",
        f"Model: {model}{'' if args.run else '; random adapter weights'}. Each request: one 224x224 PNG (data URL) + a question, greedy, at most "
        f"{args.max_tokens} new tokens, not streamed. {args.requests} requests per client per level (at least "
        f"{args.min_requests} per level) after {args.warmup} warm-up requests; clients are threads of the benchmark process "
        "with keep-alive connections, the server (uvicorn + the model worker) runs in the same process on 127.0.0.1. The "
        f"worker generates for the requests waiting together in one batch (at most {args.max_batch}; 'mean batch' is the "
        "level's requests per generate call); 'x 1 client' is the level's requests/s over the 1-client level's of the same "
        "model in this run. 'first piece' is the time to the first streamed text of one request sent alone after the level.", "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run, few requests; results not saved")
    parser.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    parser.add_argument("--max-tokens", type=int, default=None, help="new tokens per answer at most (default 32; --quick 8)")
    parser.add_argument("--requests", type=int, default=None, help="requests per client and level (default 4; --quick 2)")
    parser.add_argument("--warmup", type=int, default=2, help="requests before timing (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (default 8; 1: no batching)")
    parser.add_argument("--out-suffix", default="", help="appended to the result file names (e.g. -nobatch)")
    parser.add_argument("--work", type=Path, default=None, help="where the run directory goes (default: a temporary directory)")
    parser.add_argument("--run", type=Path, default=None, help="serve this run directory (e.g. the demo's DIR/run) instead of writing one")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.max_tokens = args.max_tokens or (8 if args.quick else 32)
    args.requests = args.requests or (2 if args.quick else 4)
    args.min_requests = 4 if args.quick else 16
    import logging

    logging.basicConfig(level=logging.WARNING)
    started, contention = time.monotonic(), Contention()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run = args.run or write_run(work, args.quick)
        rows = measure(run, False, args) + measure(run, True, args)
    others = contention.others()
    command = "python -m benchmarks.serving " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine(args.device if args.device == "cuda" else "cpu")
    report = "\n".join(describe(args, command.strip(), time.monotonic() - started, info, others) + table(rows) + [""])
    print(report)
    if not args.quick:
        out = ROOT / "benchmarks" / "results" / f"serving-{args.device.split(':')[0]}{'-run' if args.run else ''}{args.out_suffix}"
        out.with_suffix(".md").write_text(report)
        payload = {"command": command.strip(), "machine": info, "max_tokens": args.max_tokens, "requests_per_client": args.requests,
                   "max_batch": args.max_batch,
                   "other_processes_share": round(others[1], 3), "rows": rows}
        out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
