"""Data-loader throughput: decode + preprocess + token lookup + collate, no model forward.

Builds synthetic datasets under a work directory (an image VQA set in LLaVA JSON form with 480x640
JPEG and PNG images, an audio-QA CSV with WAV clips at 8 / 22.05 / 44.1 kHz so resampling runs,
and an Alpaca text set) and a model whose preprocessing is real-size: CLIP's image processor at
224 px and Whisper's default feature extractor (80 mels, 30 s, 3000 frames). The encoder and LLM
*weights* are tiny random configs (nothing is downloaded); only the loader is measured.

Each case (image / audio / mixed x num_workers 0 / 2, batch size 8; plus audio and mixed with
num_workers 0 and one torch thread) runs in its own subprocess so its peak RSS is its own; after a
warm-up (each worker's first batch) the rest of one epoch is timed.

    python -m benchmarks.data_loader                     # default sizes, a few minutes on 2 cores
    python -m benchmarks.data_loader --quick             # under a minute, smoke test
    python -m benchmarks.data_loader --work /tmp/bench   # keep (and reuse) the generated data
    python -m benchmarks.data_loader --repeat 3          # fastest of 3 runs per row (busy machines)
    python -m cProfile -s cumtime -m benchmarks.data_loader --work /tmp/bench --case audio --workers 0

Results go to ``benchmarks/results/data_loader-cpu.md`` (``--quick`` runs do not overwrite it).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from cotune.testing import tiny

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("benchmarks.data_loader")

CASES = ("image", "audio", "mixed")
WORKERS = (0, 2)
#: Extra rows (set, num_workers, torch threads in the loading process): see "torch threads" in the README.
EXTRA_CASES = (("audio", 0, 1), ("mixed", 0, 1))
BATCH_SIZE = 8
IMAGE_SHAPES = ((480, 640), (640, 480))  # (height, width): landscape and portrait
AUDIO_RATES = (8000, 22050, 44100)
RESULTS = ROOT / "benchmarks" / "results" / "data_loader-cpu.md"
WORDS = tiny.WORDS
DATA_VERSION = 2  # bump when the generated data changes, so --work directories are rewritten


# ----------------------------------------------------------------------------------- data


def _phrase(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, size=n))


def _image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Smooth random colour fields plus sensor-like noise: compresses like a photo, not like static."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_images(root: Path, n: int, rng: np.random.Generator) -> Path:
    """n images (alternating JPEG q90 / PNG, landscape / portrait) and a LLaVA JSON of 1-2 turn VQA."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        name = f"images/{i:05d}.{'jpg' if i % 2 == 0 else 'png'}"
        height, width = IMAGE_SHAPES[(i // 2) % 2]
        _image(rng, height, width).save(root / name, **({"quality": 90} if i % 2 == 0 else {}))
        turns = [{"from": "human", "value": f"<image>\nwhat {_phrase(rng, 4)}?"}, {"from": "gpt", "value": _phrase(rng, 8)}]
        if i % 3 == 0:
            turns += [{"from": "human", "value": f"is {_phrase(rng, 3)}?"}, {"from": "gpt", "value": _phrase(rng, 2)}]
        records.append({"id": f"img{i}", "image": name, "conversations": turns})
    path = root / "vqa.json"
    path.write_text(json.dumps(records))
    return path


def write_clips(root: Path, n: int, rng: np.random.Generator) -> Path:
    """n WAV clips (16-bit; 8 kHz mono, 22.05 kHz mono, 44.1 kHz stereo; 2-10 s) and an audio-QA CSV."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    path = root / "aqa.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "QuestionText", "answer"])
        for i in range(n):
            rate = AUDIO_RATES[i % len(AUDIO_RATES)]
            t = np.arange(int(rng.uniform(2.0, 10.0) * rate)) / rate
            wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(t.size)
            channels = 2 if rate == 44100 else 1
            soundfile.write(root / "audio" / f"clip{i:05d}.wav", np.repeat(wave[:, None], channels, axis=1), rate, subtype="PCM_16")
            writer.writerow([f"clip{i:05d}.wav", f"is the sound {_phrase(rng, 3)}?", _phrase(rng, 2)])
    return path


def write_alpaca(path: Path, n: int, rng: np.random.Generator) -> Path:
    path.write_text(json.dumps([{"instruction": _phrase(rng, 8) + ".", "input": "", "output": _phrase(rng, 12)} for _ in range(n)]))
    return path


def prepare_data(work: Path, sizes: dict[str, int]) -> None:
    """Writes the datasets under ``work`` unless a previous run left ones of the same sizes."""
    manifest, sizes = work / "sizes.json", {**sizes, "version": DATA_VERSION}
    if manifest.exists() and json.loads(manifest.read_text()) == sizes:
        log.info("reusing the datasets in %s", work)
        return
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    write_images(work / "vqa", sizes["images"], rng)
    write_clips(work / "aqa", sizes["clips"], rng)
    write_alpaca(work / "alpaca.json", sizes["texts"], rng)
    manifest.write_text(json.dumps(sizes))
    log.info("wrote %s in %.1f s", sizes, time.perf_counter() - start)


# --------------------------------------------------------------------------------- model


def save_backbones(work: Path) -> dict[str, Path]:
    """Tiny random CLIP / Whisper / Llama weights with real-size CLIP and Whisper preprocessing."""
    import torch
    import transformers

    paths = {"clip": work / "enc-clip", "whisper": work / "enc-whisper", "llm": work / "llm"}
    if all((p / "config.json").exists() for p in paths.values()):
        return paths
    torch.manual_seed(0)
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=14,
    )).save_pretrained(paths["clip"])
    transformers.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(paths["clip"])
    transformers.WhisperModel(transformers.WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500, vocab_size=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )).save_pretrained(paths["whisper"])
    transformers.WhisperFeatureExtractor().save_pretrained(paths["whisper"])  # 80 mels, 30 s, 3000 frames
    llm_config = tiny.LLM_CONFIGS["llama"]()
    llm_config.max_position_embeddings = 1024  # 256 image / 375 audio tokens plus text
    transformers.LlamaForCausalLM(llm_config).save_pretrained(paths["llm"])
    tiny.make_tokenizer().save_pretrained(paths["llm"])
    return paths


def cotune_config(work: Path, case: str, workers: int):
    """The run config of one case: CLIP patches (256 tokens) and Whisper pooled by 4 (375 tokens)."""
    from cotune.config import load_config

    paths = save_backbones(work)
    encoders = {
        "image": {"type": "clip", "name_or_path": str(paths["clip"]), "reduce": "patches", "connector": {"type": "mlp2x-gelu"}},
        "audio": {"type": "whisper", "name_or_path": str(paths["whisper"]), "reduce": "all", "connector": {"type": "audio-pool", "stride": 4}},
    }
    datasets = {
        "image": {"kind": "llava", "path": str(work / "vqa" / "vqa.json")},
        "audio": {"kind": "audioqa", "path": str(work / "aqa" / "aqa.csv")},
        "text": {"kind": "alpaca", "path": str(work / "alpaca.json")},
    }
    train = [datasets["image"], datasets["audio"], datasets["text"]] if case == "mixed" else [datasets[case]]
    raw = tiny.model_config(paths["llm"], encoders)
    raw["data"] = {"train": train, "template": "lavin", "batch_size": BATCH_SIZE, "num_workers": workers, "max_length": 1024}
    return load_config(data=raw)


# ----------------------------------------------------------------------------- measuring


def _peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def run_case(work: Path, case: str, workers: int, max_batches: int | None, threads: int | None = None) -> dict:
    """Builds the loader of one case and times one epoch after the warm-up (no model forward).

    ``threads``: torch intra-op threads of this process (default: torch's own choice); DataLoader
    workers always run with one.
    """
    import torch

    from cotune.data.loader import build_train_data
    from cotune.model import build_model
    from cotune.model.data_spec import data_spec_from_model

    if threads is not None:
        torch.set_num_threads(threads)
    config = cotune_config(work, case, workers)
    start = time.perf_counter()
    model = build_model(config)
    spec = data_spec_from_model(model, config.data)
    train = build_train_data(config.data, spec, seed=0)
    prepare_s = time.perf_counter() - start
    del model
    batches = iter(train.loader)
    start = time.perf_counter()
    for _ in range(max(1, workers)):  # warm-up: each worker's first batch (they arrive together)
        next(batches)
    warmup_s = time.perf_counter() - start
    waits, samples, skipped = [], 0, 0
    last = start = time.perf_counter()
    for batch in batches:
        now = time.perf_counter()
        waits.append(now - last)
        last = now
        samples += len(batch["sample_ids"])
        skipped += len(batch["skipped"])
        if max_batches is not None and len(waits) >= max_batches:
            break
    del batches  # shuts the workers down so their usage is counted below
    elapsed = last - start
    return {
        "case": case, "workers": workers, "threads": torch.get_num_threads(), "samples": samples, "batches": len(waits), "skipped": skipped,
        "samples_per_s": samples / elapsed, "batches_per_s": len(waits) / elapsed,
        "p50_ms": 1000 * float(np.median(waits)), "max_ms": 1000 * float(np.max(waits)),
        "warmup_s": warmup_s, "prepare_s": prepare_s,
        "rss_main_mib": _peak_rss_mib(resource.RUSAGE_SELF), "rss_worker_mib": _peak_rss_mib(resource.RUSAGE_CHILDREN) if workers else None,
    }


def run_case_subprocess(work: Path, case: str, workers: int, max_batches: int | None, threads: int | None = None) -> dict:
    command = [sys.executable, "-m", "benchmarks.data_loader", "--work", str(work), "--case", case, "--workers", str(workers)]
    if max_batches is not None:
        command += ["--max-batches", str(max_batches)]
    if threads is not None:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_step(work: Path, steps: int = 6) -> list[dict]:
    """Forward+backward time of the tiny model on ``steps`` mixed batches of 8 (after one warm-up
    step), with torch's default thread count and with one thread."""
    import torch

    from cotune.data.loader import build_train_data
    from cotune.model import build_model
    from cotune.model.data_spec import data_spec_from_model

    config = cotune_config(work, "mixed", 0)
    model = build_model(config)
    model.train()
    loader = build_train_data(config.data, data_spec_from_model(model, config.data), seed=0).loader
    batches = [batch for _, batch in zip(range(steps + 1), loader)]
    rows, default = [], torch.get_num_threads()
    for threads in dict.fromkeys((default, 1)):
        torch.set_num_threads(threads)
        times = []
        for batch in batches:
            start = time.perf_counter()
            out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"], media=batch["media"], sample_ids=batch["sample_ids"])
            out.loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        times = 1000 * np.asarray(times[1:])
        width = np.mean([b["input_ids"].shape[1] for b in batches[1:]])
        rows.append({"threads": threads, "steps": len(times), "width": width, "mean_ms": times.mean(), "min_ms": times.min()})
    torch.set_num_threads(default)
    return rows


# ------------------------------------------------------------------------------ reporting


def _load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def machine() -> dict[str, str]:
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return {
        "nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()), "transformers": transformers.__version__,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| set | workers | torch threads (main) | samples | samples/s | batches/s | p50 ms/batch | max ms/batch | warm-up s | "
        "build + tokenize s | peak RSS main MiB | peak RSS worker MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        worker = "-" if r["rss_worker_mib"] is None else f"{r['rss_worker_mib']:.0f}"
        lines.append(
            f"| {r['case']} | {r['workers']} | {r['threads']} | {r['samples']} | {r['samples_per_s']:.1f} | {r['batches_per_s']:.2f} | "
            f"{r['p50_ms']:.0f} | {r['max_ms']:.0f} | {r['warmup_s']:.2f} | {r['prepare_s']:.1f} | {r['rss_main_mib']:.0f} | {worker} |"
        )
    return "\n".join(lines)


def report(rows: list[dict], steps: list[dict], sizes: dict[str, int], command: str, runtime_s: float) -> str:
    info = machine()
    step_lines = ["| torch threads | steps | mean padded length T | mean ms per forward+backward | min ms |", "|---:|---:|---:|---:|---:|"]
    step_lines += [f"| {s['threads']} | {s['steps']} | {s['width']:.0f} | {s['mean_ms']:.0f} | {s['min_ms']:.0f} |" for s in steps]
    return "\n".join([
        "# Data loader throughput (CPU)", "",
        f"Command: `{command}` (total runtime {runtime_s:.0f} s)", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
        f"Data: {sizes['images']} images (480x640 / 640x480, half JPEG q90, half PNG) in LLaVA JSON; "
        f"{sizes['clips']} WAV clips (8 kHz mono, 22.05 kHz mono, 44.1 kHz stereo; 2-10 s) in an audio-QA CSV; "
        f"{sizes['texts']} Alpaca records. Preprocessing: CLIPImageProcessor 224 px (256 tokens), "
        "WhisperFeatureExtractor 80 mels x 3000 frames (375 tokens after pooling by 4). Batch size "
        f"{BATCH_SIZE}; each row runs in a fresh process and times one epoch after the warm-up "
        "(with `--repeat R`: the fastest of R runs).", "",
        "`samples/s`, `batches/s`: after the warm-up (the first batch of each worker, or one batch without "
        "workers). `p50` / `max ms/batch`: time the main process waited for each batch (with workers, batches "
        "arrive in pairs, so p50 can be near 0). `warm-up s`: iterator creation (worker start-up) plus the "
        "warm-up batches. `build + tokenize s`: building the model and tokenizing every record up front. "
        "`torch threads (main)`: intra-op threads of the process that iterates (workers always use 1). "
        "Peak RSS: `getrusage` maxrss of that process and of its largest DataLoader worker "
        "(forked workers count the pages they share with the parent).", "",
        table(rows), "",
        "## Reference point (optional): tiny model forward+backward", "",
        "Not the loader: the tiny random model of this benchmark (hidden 32; frozen encoders and LLM, trainable "
        "connectors) on mixed batches of the loader, in one process. A real model's step takes far longer; the "
        "loader is a bottleneck only where its batches/s is below 1 / (step time).", "",
        *step_lines, "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="images in the VQA set (default 512)")
    parser.add_argument("--clips", type=int, default=256, help="WAV clips in the audio-QA set (default 256)")
    parser.add_argument("--texts", type=int, default=None, help="Alpaca records (default: --images)")
    parser.add_argument("--work", type=Path, default=None, help="where data and backbones go (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="48 images, 24 clips, 48 texts: under a minute; results not saved")
    parser.add_argument("--case", choices=CASES, help="run only this case in this process and print its JSON (for profiling)")
    parser.add_argument("--workers", type=int, default=0, help="num_workers for --case")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the --case process (default: torch's)")
    parser.add_argument("--repeat", type=int, default=1, help="run each case this many times and keep the fastest (default 1)")
    parser.add_argument("--max-batches", type=int, default=None, help="stop timing after this many batches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.quick:
        args.images, args.clips = 48, 24
    for flag in ("images", "clips", "repeat"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag}: must be >= 1, got {getattr(args, flag)}")
    sizes = {"images": args.images, "clips": args.clips, "texts": args.texts or args.images}
    if args.case:
        if args.work is None or not (args.work / "sizes.json").exists():
            parser.error("--case needs --work: a directory an earlier run has filled")
        print(json.dumps(run_case(args.work, args.case, args.workers, args.max_batches, args.threads)))
        return 0
    with tempfile.TemporaryDirectory(prefix="cotune-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return _run_all(work, sizes, args)


def _run_all(work: Path, sizes: dict[str, int], args: argparse.Namespace) -> int:
    start, load_before = time.perf_counter(), _load_average()
    prepare_data(work, sizes)
    save_backbones(work)
    rows = []
    cases = [(c, w, None) for c in CASES for w in WORKERS] + ([] if args.quick else list(EXTRA_CASES))
    run = run_case if args.quick else run_case_subprocess  # --quick saves the start-up of a process per case
    for case, workers, threads in cases:
        tries = [run(work, case, workers, args.max_batches, threads) for _ in range(args.repeat)]
        rows.append(max(tries, key=lambda r: r["samples_per_s"]))
        log.info("%s, %d workers, %d threads: %.1f samples/s", case, workers, rows[-1]["threads"], rows[-1]["samples_per_s"])
    steps = reference_step(work)
    command = "python -m benchmarks.data_loader " + " ".join(sys.argv[1:])
    text = report(rows, steps, sizes, command.strip(), time.perf_counter() - start)
    text += f"\nLoad average (1 min) before / after the run: {load_before} / {_load_average()}; other processes on the machine slow the rows down.\n"
    if args.quick:
        text += "\n--quick: every case ran in one process, so peak RSS is cumulative and the timings are a smoke test.\n"
    print(text)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        log.info("wrote %s", RESULTS.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
