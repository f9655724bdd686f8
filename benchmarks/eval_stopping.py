"""Where evaluation's generation time goes: stopping at the end of an answer, and rows that wait.

transformers' ``generate`` ends a batch when every row has produced a stop token; a row that ends
early keeps being decoded (and padded) until the batch's longest row ends. Two questions:

1. **End of answer** (the change of issue 19): a run with the ``chat`` template ends its answers in
   the template's end-of-turn token, which for a base LLM's tokenizer is not its EOS. Before, rows
   stopped only at EOS and ran to ``--max-new-tokens``; now they stop at the end-of-turn token too.
   Timed side by side on the same samples: ``eos only`` (before) vs ``end of answer`` (now).
2. **Rows that wait**: from the answers' lengths, the share of decode steps spent on rows that had
   already ended (``waste``: 1 - sum of row lengths / (batch rows x longest row), per batch). That
   is the most per-row stopping inside a batch (dropping finished rows from the KV cache, which
   transformers' ``generate`` does not do) could save; batched decode costs less than linearly in
   rows, so the saving in time is smaller than the share.

Default: a tiny random LLaMA whose tokenizer has a ChatML template and an EOS (``</s>``) that is
not ``<|im_end|>``, answering 64 short text questions (a smoke test of the script: a random
model's answers say nothing about real lengths). With ``--run DIR --dataset
NAME:PATH`` it measures a real run (e.g. ``--run demo/run --dataset easyvqa --limit 64``; the
demo's SmolLM2-Instruct has EOS = ``<|im_end|>``, so there only the waste is of interest). Time on
an idle machine: on a shared one the two timings are not comparable.

    python -m benchmarks.eval_stopping --quick                    # tiny model, 16 samples, prints only
    python -m benchmarks.eval_stopping --run RUN --dataset NAME:PATH [--limit 64] [--batch-size 8] [--max-new-tokens 64] [--rounds 3]

Results: ``benchmarks/results/eval_stopping-<device>.md`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.throughput_report import Contention, machine
from cotune.config import load_config
from cotune.data.turn_end import stop_ids
from cotune.eval.generation import predict_samples
from cotune.eval.runner import load_eval_set
from cotune.model import build_model, save_model
from cotune.model.data_spec import data_spec_from_model
from cotune.rundir import RunDir
from cotune.testing import tiny

ROOT = Path(__file__).resolve().parents[1]


def tiny_chat_run(work: Path) -> tuple[Path, str]:
    """A saved tiny text LLaMA with a ChatML tokenizer whose EOS is not <|im_end|>, and 64 text questions (``textqa``)."""
    from cotune.testing.tiny import CHATML

    llm = work / "llm"
    shutil.copytree(tiny.save_llm(work / "tiny"), llm, dirs_exist_ok=True)
    tok = tiny.make_tokenizer()
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tok.chat_template = CHATML
    tok.save_pretrained(llm)
    config = load_config(data=tiny.model_config(llm))
    run = save_model(build_model(config), config, work / "run")
    questions = ["what colour is the circle", "is the sound loud", "what shape is it", "is the square red"]
    records = [{"instruction": f"{questions[i % 4]} {i}", "output": "red", "answers": ["red"]} for i in range(64)]
    (work / "qa.json").write_text(json.dumps(records))
    return run, f"textqa:{work / 'qa.json'}"


def timed(model, spec, samples, batch_size: int, max_new_tokens: int, eos: list[int] | None) -> tuple[float, list[str]]:
    extra = {} if eos is None else {"eos_token_id": eos}
    start = time.perf_counter()
    texts = [p.text for p in predict_samples(model, spec, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, **extra)]
    return time.perf_counter() - start, texts


def waste(tokenizer, texts: list[str], batch_size: int, max_new_tokens: int) -> float:
    """Share of decode steps spent on rows that had ended (row length: answer tokens + 1 stop token)."""
    lengths = [min(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1, max_new_tokens) for t in texts]
    used = total = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start:start + batch_size]
        used, total = used + sum(batch), total + len(batch) * max(batch)
    return 1 - used / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run"), parser.add_argument("--dataset")
    parser.add_argument("--limit", type=int, default=64), parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64), parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1), parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.limit, args.rounds, args.max_new_tokens = 16, 1, 16
    with tempfile.TemporaryDirectory() as work:
        run, dataset = (Path(args.run), args.dataset) if args.run else tiny_chat_run(Path(work))
        model, config = RunDir(run).load()
        spec = data_spec_from_model(model, config.data)
        samples = load_eval_set(config, dataset, "test", args.limit).samples
        stops, eos = list(stop_ids(spec.tokenizer, spec.template)), [spec.tokenizer.eos_token_id]
        contention = Contention()
        rows = {"eos only (before)": eos, "end of answer (now)": stops}
        best = {name: float("inf") for name in rows}
        texts = {}
        for _ in range(args.rounds):  # interleaved rounds; the fastest of each is reported
            for name, ids in rows.items():
                seconds, texts[name] = timed(model, spec, samples, args.batch_size, args.max_new_tokens, ids)
                best[name] = min(best[name], seconds)
        report = [f"# eval_stopping ({'quick' if args.quick else 'full'})", "",
                  f"run `{run}`, {len(samples)} samples of `{dataset}`, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
                  f"template `{spec.template}`, stops {stops} (EOS {eos[0]}), {args.rounds} round(s), fastest shown", "",
                  "| stopping | seconds | samples/s | waste (decode steps on ended rows) |", "|---|---|---|---|"]
        for name in rows:
            report.append(f"| {name} | {best[name]:.2f} | {len(samples) / best[name]:.2f} | "
                          f"{100 * waste(spec.tokenizer, texts[name], args.batch_size, args.max_new_tokens):.0f}% |")
        others = contention.others()
        report += ["", f"other processes while measuring: {others[0]:.1f} CPU-s ({others[1]:.0%} of the machine): "
                   "above a few percent, compare only rows of one round", "",
                   "| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in machine("cpu").items()]
        print("\n".join(report))
        if not args.quick:
            out = ROOT / "benchmarks" / "results" / "eval_stopping-cpu.md"
            out.write_text("\n".join(report) + "\n")
            print(f"written: {out}")


if __name__ == "__main__":
    main()
