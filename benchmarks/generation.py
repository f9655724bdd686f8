"""Generation speed: the base LLM alone vs the cotune model unmerged vs the same model merged.

Uses the mini backbones of ``mini_model.py`` (LLaMA-style LLM hidden 512, 8 layers, vocab 8000;
CLIP hidden 384, 6 layers) in its two configurations, with random trainable weights:

* ``mma``:  MM-Adapters in every LLM layer (modality router, 2 experts) and in CLIP (per-token
  router, kept unmerged by ``cotune merge``); merged, each LLM q/k/v projection holds one folded
  weight set per modality key (text, image);
* ``lora``: LoRA r=16 on every linear of the LLM's blocks; merged, the LLM is a plain LLaMA.

For each case and batch size (1 and 8) greedy decoding of ``--new-tokens`` tokens (forced: no early
EOS) after a prompt of ``--prompt`` random text tokens is timed for the base LLM (transformers
``generate`` on token ids), cotune unmerged and cotune merged (``cotune.model.generate`` on input
embeddings, KV cache on); the merged model is loaded from the directory ``merge_model`` wrote, as
a user would. Rows run in interleaved rounds: tokens/s is the fastest round (the figure least
distorted by other processes on a shared machine); ratios are medians over rounds of speeds
relative to the base row of the same round. tokens/s = B x new tokens / time of the whole call
(prefill included). Targets: merged >= 0.95 x base, unmerged >= 0.8 x base. A last row times a
mixed batch of 8 (4 image, 4 text prompts: two modality rows, so the merged per-modality layers run
the majority weight set plus a rank-h correction), for the cotune models only. One torch thread by
default (``--threads``): on a busy 2-core machine two OpenMP threads wait on each other at every
small decode op and run several times slower.

    python -m benchmarks.generation                 # ~3 min on 2 cores; writes benchmarks/results/generation.md
    python -m benchmarks.generation --rounds 8 --profile   # the recorded run (~6 min)
    python -m benchmarks.generation --quick         # one round, fewer tokens; prints only
    python -m benchmarks.generation --profile       # also: top ops of one unmerged vs merged decode

``--zoo`` runs the same comparison on the zoo's real models (``zoo_model.py``): the bare
SmolLM2-135M-Instruct (transformers, float32) vs cotune with the demo's MM-Adapters + MobileNetV2
and LaVIN neck (7 image tokens), and with LoRA r=16 + mlp2x-gelu on the 49-token grid, unmerged
and merged; default 3 rounds of 24 new tokens (the demo's answers are a few tokens; its text
evaluation generates up to 24):

    python -m benchmarks.generation --zoo           # ~4 min on 2 cores; writes benchmarks/results/generation-zoo-cpu.md
    python -m benchmarks.generation --zoo --quick   # one round, 16 tokens; prints only

Results go to ``benchmarks/results/generation.md`` (``--zoo``: ``generation-zoo-cpu.md``; without ``--quick``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import zoo_model
from benchmarks.mini_model import CASES, CLIP, TOKENIZER_SIZE, cotune_config, save_backbones
from benchmarks.throughput_report import Contention, machine
from cotune.testing import tiny

ROOT = Path(__file__).resolve().parents[1]

ROWS = ("base", "unmerged", "merged")


def build(work: Path, case: str, zoo: bool = False) -> dict:
    """The base LLM, the randomised cotune model, and the same weights merged, written to
    ``work/merged-<case>`` and loaded back (what a user of the merged directory runs);
    ``zoo``: the zoo's SmolLM2 and MobileNetV2 instead of the mini backbones."""
    import shutil

    import transformers

    from cotune.merge.model import merge_model
    from cotune import load
    from cotune.model import build_model

    config = zoo_model.zoo_config(case) if zoo else cotune_config(work, case)

    def randomised():
        torch.manual_seed(0)
        model = build_model(config)
        tiny.randomise_trainables(model, seed=1, std=0.02)
        return model.eval()

    if zoo:
        base = zoo_model.base_llm()[0]
    else:
        base = transformers.AutoModelForCausalLM.from_pretrained(save_backbones(work)["llm"]).eval()
    merged_dir = work / f"merged-{case}"
    shutil.rmtree(merged_dir, ignore_errors=True)
    merge_model(randomised(), merged_dir)
    return {"base": base, "unmerged": randomised(), "merged": load(merged_dir)}


def prompts(model, batch: int, length: int, images: int = 0, zoo: bool = False) -> dict:
    """Left-padded prompt ids [B, T] (``images`` rows start with the image placeholders) and media;
    text ids are random non-special ids of the tokenizer (the mini one's, or SmolLM2's with ``zoo``)."""
    from cotune.model import left_pad

    g = torch.Generator().manual_seed(batch)
    first, vocab = (zoo_model.FIRST_WORD_ID, zoo_model.SMOL["vocab_size"]) if zoo else (4, TOKENIZER_SIZE)
    rows = []
    for i in range(batch):
        text = torch.randint(first, vocab, (length,), generator=g).tolist()
        media = [model.placeholder_ids["image"]] * model.num_media_tokens("image") if i < images else []
        rows.append([model.tokenizer.bos_token_id, *media, *text])
    ids, mask = left_pad(rows, model.tokenizer.pad_token_id)
    pixels = torch.randn(images, 3, CLIP["image_size"], CLIP["image_size"], generator=g)
    return {"ids": ids, "mask": mask, "media": {"image": pixels} if images else None, "pad": model.tokenizer.pad_token_id}


def run_once(name: str, model, batch: dict, new_tokens: int) -> float:
    """Seconds for one greedy generation of ``new_tokens`` tokens per row."""
    from cotune.model import generate

    fixed = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    start = time.perf_counter()
    with torch.inference_mode():
        if name == "base":
            out = model.generate(input_ids=batch["ids"], attention_mask=batch["mask"], pad_token_id=batch["pad"], **fixed)
            out = out[:, batch["ids"].shape[1]:]
        else:
            out = generate(model, batch["ids"], batch["mask"], media=batch["media"], **fixed)
    elapsed = time.perf_counter() - start
    assert out.shape == (batch["ids"].shape[0], new_tokens), out.shape
    return elapsed


def measure(models: dict, args: argparse.Namespace) -> list[dict]:
    """Per (batch size, row): tokens/s of the fastest of ``args.rounds`` interleaved rounds, and the
    median over rounds of each row's speed relative to the reference row timed in the same round
    (base; unmerged for the mixed batch), which cancels the slow drifts of a shared machine."""
    cotune = models["unmerged"]
    cases = [(b, prompts(cotune, b, args.prompt, zoo=args.zoo), ROWS) for b in (1, 8)]
    cases.append((8, prompts(cotune, 8, args.prompt, images=4, zoo=args.zoo), ROWS[1:]))
    results = []
    for size, batch, rows in cases:
        for name in rows:  # warm-up (first-call allocations, lazy imports)
            run_once(name, models[name], batch, 4)
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name in rows:
                times[name].append(run_once(name, models[name], batch, args.new_tokens))
        reference = times[rows[0]]
        results.append({
            "batch": size, "mixed": batch["media"] is not None, "reference": rows[0],
            "tok_s": {n: size * args.new_tokens / min(t) for n, t in times.items()},
            "ratio": {n: statistics.median(r / x for r, x in zip(reference, t)) for n, t in times.items()},
        })
    return results


def profile_decode(models: dict, args: argparse.Namespace) -> dict[str, list[tuple[str, int, float]]]:
    """Top ops by self CPU time over one batch-1 generation of 16 tokens, per cotune row."""
    from torch.profiler import ProfilerActivity, profile

    batch = prompts(models["unmerged"], 1, args.prompt, zoo=args.zoo)
    out = {}
    for name in ROWS:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run_once(name, models[name], batch, 16)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        top = [(e.key, e.count, e.self_cpu_time_total / 1e3) for e in events[:12]]
        out[name] = [("total", sum(e.count for e in events), total / 1e3), *top]
    return out


def table(results_by_case: dict[str, list[dict]]) -> list[str]:
    lines = ["| case | batch | base tok/s | unmerged tok/s (x base) | merged tok/s (x base) | merged x unmerged | "
             "targets (merged >= 0.95, unmerged >= 0.8 x base) |", "|---|---:|---:|---:|---:|---:|---|"]
    for case, results in results_by_case.items():
        for r in results:
            tok, ratio = r["tok_s"], r["ratio"]
            if r["mixed"]:
                lines.append(f"| {case} | 8 (4 image + 4 text) | - | {tok['unmerged']:.0f} | {tok['merged']:.0f} | "
                             f"{ratio['merged']:.2f} | - |")
                continue
            u, m = ratio["unmerged"], ratio["merged"]
            verdict = ", ".join(f"{n} {'met' if ok else 'NOT met'}" for n, ok in (("merged", m >= 0.95), ("unmerged", u >= 0.8)))
            lines.append(f"| {case} | {r['batch']} | {tok['base']:.0f} | {tok['unmerged']:.0f} ({u:.2f}) | {tok['merged']:.0f} ({m:.2f}) | "
                         f"{m / u:.2f} | {verdict} |")
    return lines


def profile_lines(profiles: dict[str, dict]) -> list[str]:
    lines = []
    for case, by_row in profiles.items():
        for row, events in by_row.items():
            (_, calls, total), *top = events
            lines += [f"### {case}, {row}: {calls} op calls, {total:.0f} ms self CPU (16 tokens, batch 1, under the profiler)", "",
                      "| op | calls | self ms |", "|---|---:|---:|"]
            lines += [f"| `{op}` | {n} | {ms:.1f} |" for op, n, ms in top] + [""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, 16 new tokens, results not saved")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 4, --zoo 3; --quick 1)")
    parser.add_argument("--new-tokens", type=int, default=None, help="generated tokens per row (default 48, --zoo 24; --quick 16)")
    parser.add_argument("--zoo", action="store_true", help="the zoo's SmolLM2-135M-Instruct + MobileNetV2 (zoo_model.py) instead "
                        "of the mini backbones; results/generation-zoo-cpu.md")
    parser.add_argument("--prompt", type=int, default=32, help="random text tokens per prompt (default 32)")
    parser.add_argument("--case", choices=CASES, action="append", help="only this case (repeatable; default: all)")
    parser.add_argument("--profile", action="store_true", help="also profile one decode per row")
    parser.add_argument("--work", type=Path, default=None, help="where the mini backbones go (default: a temporary directory)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two OpenMP threads spin-wait on each "
                             "other at every small decode op and run several times slower)")
    args = parser.parse_args(argv)
    build_threads = torch.get_num_threads()
    args.rounds = args.rounds or (1 if args.quick else 3 if args.zoo else 4)
    args.new_tokens = args.new_tokens or (16 if args.quick else 24 if args.zoo else 48)
    import logging

    logging.basicConfig(level=logging.WARNING)
    started, contention = time.monotonic(), Contention()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        results, profiles = {}, {}
        for case in args.case or CASES:
            # Built and merged with torch's default threads: with one thread the merge check of the zoo's
            # 30-layer model failed (logits 4.4e-3 apart, limit 3.5e-3) although the unmerged model's own
            # logits move by 1.8e-3 between 1 and 2 threads and by 3.5e-3 against float64 (fp32 rounding).
            torch.set_num_threads(build_threads)
            models = build(work, case, args.zoo)
            torch.set_num_threads(args.threads)
            results[case] = measure(models, args)
            if args.profile:
                profiles[case] = profile_decode(models, args)
            print("\n".join(table({case: results[case]})), flush=True)
    others = contention.others()
    command = "python -m benchmarks.generation " + " ".join(argv if argv is not None else sys.argv[1:])
    report = "\n".join([
        f"# Generation throughput (cpu, fp32{', zoo models' if args.zoo else ''})", "",
        f"Command: `{command.strip()}` (total runtime {time.monotonic() - started:.0f} s)", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine("cpu").items()), "",
        f"Other processes used {others[0]:.0f} core-seconds during the run ({100 * others[1]:.1f}% of the machine). "
        f"Each row was timed in {args.rounds} interleaved rounds: tokens/s is the fastest round; the ratios (x base, "
        "merged x unmerged) are medians over rounds of the speed relative to the reference row (base; unmerged for the "
        "mixed batch) timed in the same round, which cancels the drifts of a shared machine. On this machine "
        "repeated runs differ by about +-5%.", "",
        f"Greedy decoding, {args.new_tokens} new tokens per row after a {args.prompt}-token text prompt (+ BOS), KV cache on; "
        "tokens/s = batch x new tokens / wall time of the whole generate call (prefill included). "
        + (f"{zoo_model.MODEL_TEXT} Base: the bare SmolLM2 (transformers `generate`); random trainable weights (std 0.02); "
           "image rows of the mixed batch carry 7 (`mma`) or 49 (`lora`) image tokens of a random 224 px image." if args.zoo else
           "Models: see `benchmarks/generation.py` (mini LLaMA hidden 512, 8 layers, vocab 8000; random adapter weights)."), "",
        *table(results), "",
        *(["## Profiles", "", *profile_lines(profiles)] if profiles else []),
    ])
    print(report)
    if not args.quick:
        out = ROOT / "benchmarks" / "results" / ("generation-zoo-cpu.md" if args.zoo else "generation.md")
        out.write_text(report + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
