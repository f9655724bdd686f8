"""Where evaluation's generation time goes: stopping at the end of an answer, and rows that wait.

Evaluation's batches are greedy. transformers' ``generate`` ends a batch when every row has produced
a stop token; a row that ends early keeps being decoded (and padded) until the batch's longest row
ends. :func:`cotune.model.greedy.greedy_generate`, which ``cotune eval`` now runs for plain greedy
batches, drops a row from the batch (KV cache, mask, routing) at its stop token. Timed side by side
on the same samples, through the same ``predict_samples`` (media decoding included):

* ``generate, EOS only`` (before issue 19; only where the template's end of answer is not EOS): a
  ``chat`` run's answers end in the template's end-of-turn token, which for a base LLM's tokenizer
  is not its EOS, so rows stopping at EOS alone ran to ``--max-new-tokens``.
* ``generate, end of answer``: rows stop at EOS or end of turn, ended rows wait for the longest
  (the path before row dropping; forced here with an empty ``logits_processor`` list, which sends
  a batch to ``generate`` and changes no token).
* ``rows dropped, end of answer`` (now).

After one untimed batch of each path, per path: seconds (fastest of the interleaved rounds), the LLM's decoding row-steps (rows of every
cached call after a batch's prefill, counted by a forward hook on the LLM) and ``waste``, the share
of decode steps on rows that had already ended as estimated from the answers' lengths
(1 - sum of row lengths / (batch rows x longest row), per batch). Then the time ratio of the two
``end of answer`` paths per round, and whether their predictions agree.

Default: a tiny random LLaMA whose tokenizer has a ChatML template and an EOS (``</s>``) that is
not ``<|im_end|>``, answering 64 short text questions (a smoke test of the script: a random model's
answers say nothing about real lengths, and run to ``--max-new-tokens``). With ``--run DIR
--dataset NAME:PATH`` a real run is measured after it, e.g. the demo's (``--run demo/run --dataset
easyvqa --limit 128 --batch-size 32 --max-new-tokens 6``; several ``--dataset`` take as many
``--max-new-tokens``). Timings use ``--threads`` torch threads (default 1) and the rounds
interleave the paths, so on a shared machine both see the same load; the report says how much CPU
other processes used meanwhile.

    python -m benchmarks.eval_stopping --quick                    # tiny model, 16 samples, prints only
    python -m benchmarks.eval_stopping [--run RUN --dataset NAME:PATH ... --max-new-tokens N ...] [--limit 128] [--batch-size 32] [--rounds 3]

Results: ``benchmarks/results/eval_stopping-cpu.{md,json}`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LogitsProcessorList

from benchmarks.throughput_report import Contention, machine, save_results
from cotune.config import load_config
from cotune.data.turn_end import stop_ids
from cotune.eval.generation import predict_samples
from cotune.eval.runner import load_eval_set
from cotune.model import build_model, save_model
from cotune.model.data_spec import data_spec_from_model
from cotune.rundir import RunDir
from cotune.testing import tiny


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


class RowSteps:
    """Rows of the LLM's cached decoding calls (a forward hook; a batch's prefill is not counted)."""

    def __init__(self, llm) -> None:
        self.rows = 0
        self.handle = llm.register_forward_hook(self._count, with_kwargs=True)

    def _count(self, _module, _args, kwargs, output) -> None:
        if kwargs.get("use_cache") and kwargs.get("inputs_embeds") is None:
            self.rows += output.logits.shape[0]


def timed(model, spec, samples, batch_size: int, max_new_tokens: int, settings: dict) -> tuple[float, list[str], int]:
    """(seconds, predictions, decoding row-steps) of one pass of ``predict_samples``."""
    counter = RowSteps(model.llm)
    try:
        start = time.perf_counter()
        texts = [p.text for p in predict_samples(model, spec, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, **settings)]
        return time.perf_counter() - start, texts, counter.rows
    finally:
        counter.handle.remove()


def waste(tokenizer, texts: list[str], batch_size: int, max_new_tokens: int) -> float:
    """Share of decode steps spent on rows that had ended (row length: answer tokens + 1 stop token)."""
    lengths = [min(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1, max_new_tokens) for t in texts]
    used = total = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start:start + batch_size]
        used, total = used + sum(batch), total + len(batch) * max(batch)
    return 1 - used / total if total else 0.0


def measure(run: Path, dataset: str, args, max_new_tokens: int) -> dict:
    """Every path over the same samples, interleaved ``args.rounds`` times."""
    model, config = RunDir(run).load()
    spec = data_spec_from_model(model, config.data)
    samples = load_eval_set(config, dataset, "test", args.limit).samples
    stops, eos = list(stop_ids(spec.tokenizer, spec.template)), [spec.tokenizer.eos_token_id]
    waiting = {"logits_processor": LogitsProcessorList()}  # any non-plain setting: transformers' generate
    paths = {}
    if stops != eos:
        paths["generate, EOS only (before issue 19)"] = {"eos_token_id": eos, **waiting}
    paths["generate, end of answer (rows wait)"] = {"eos_token_id": stops, **waiting}
    paths["rows dropped, end of answer (now)"] = {"eos_token_id": stops}
    seconds = {name: [] for name in paths}
    texts, steps = {}, {}
    for settings in paths.values():  # warm-up, untimed: one batch of each path
        timed(model, spec, samples[:args.batch_size], args.batch_size, max_new_tokens, settings)
    contention = Contention()
    for _ in range(args.rounds):
        for name, settings in paths.items():
            took, texts[name], steps[name] = timed(model, spec, samples, args.batch_size, max_new_tokens, settings)
            seconds[name].append(took)
    others = contention.others()
    before, now = "generate, end of answer (rows wait)", "rows dropped, end of answer (now)"
    return {
        "run": str(run), "dataset": dataset, "samples": len(samples), "batch_size": args.batch_size,
        "max_new_tokens": max_new_tokens, "template": spec.template, "stops": stops, "eos": eos[0], "rounds": args.rounds,
        "paths": {name: {"seconds": seconds[name], "fastest": min(seconds[name]), "decode_row_steps": steps[name],
                         "waste": waste(spec.tokenizer, texts[name], args.batch_size, max_new_tokens)} for name in paths},
        "ratios": [b / a for a, b in zip(seconds[before], seconds[now])],
        "differing_predictions": sum(a != b for a, b in zip(texts[before], texts[now])),
        "others_cpu_seconds": others[0], "others_share": others[1],
    }


def section(r: dict) -> list[str]:
    lines = [f"## `{r['dataset']}`", "",
             f"run `{r['run']}`, {r['samples']} samples, batch {r['batch_size']}, max_new_tokens {r['max_new_tokens']}, "
             f"template `{r['template']}`, stops {r['stops']} (EOS {r['eos']}), {r['rounds']} interleaved round(s)", "",
             "| path | fastest s | samples/s | rounds (s) | decoding row-steps | waste (decode steps on ended rows) |",
             "|---|---:|---:|---|---:|---:|"]
    for name, p in r["paths"].items():
        lines.append(f"| {name} | {p['fastest']:.2f} | {r['samples'] / p['fastest']:.2f} | "
                     f"{', '.join(f'{s:.2f}' for s in p['seconds'])} | {p['decode_row_steps']} | {100 * p['waste']:.0f}% |")
    ratios = r["ratios"]
    lines += ["", f"rows dropped / rows wait, time per round: {', '.join(f'{x:.3f}' for x in ratios)} "
              f"(median {statistics.median(ratios):.3f}); predictions that differ between the two: {r['differing_predictions']} "
              f"of {r['samples']}; other processes used {r['others_cpu_seconds']:.1f} CPU-s "
              f"({r['others_share']:.0%} of the machine) meanwhile", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run"), parser.add_argument("--dataset", action="append", default=[])
    parser.add_argument("--limit", type=int, default=64), parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, nargs="+", default=[64]), parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1), parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if bool(args.run) != bool(args.dataset):
        parser.error("--run and --dataset go together")
    if args.dataset and len(args.max_new_tokens) not in (1, len(args.dataset)):
        parser.error("--max-new-tokens: one value, or one per --dataset")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds = 1
    results = []
    with tempfile.TemporaryDirectory() as work:
        run, dataset = tiny_chat_run(Path(work))
        tiny_args = argparse.Namespace(**{**vars(args), "limit": 16 if args.quick else 64, "batch_size": 8})
        results.append(measure(run, dataset, tiny_args, 16 if args.quick else 64))
        tokens = args.max_new_tokens * len(args.dataset) if len(args.max_new_tokens) == 1 else args.max_new_tokens
        for dataset, max_new_tokens in zip(args.dataset, tokens):
            results.append(measure(Path(args.run), dataset, args, max_new_tokens))
    info = machine("cpu")
    report = [f"# eval_stopping ({'quick' if args.quick else 'full'})", "",
              f"Torch threads: {args.threads}. The first section is the tiny random chat model (a smoke test: its answers run "
              "to max_new_tokens, so it shows the loops' own overhead); later ones a real run.", ""]
    for r in results:
        report += section(r)
    report += ["| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in info.items()]
    text = "\n".join(report) + "\n"
    print(text)
    if not args.quick:
        print(f"written: {save_results('eval_stopping-cpu', text, {'results': results, 'machine': info, 'threads': args.threads})}")


if __name__ == "__main__":
    main()
