"""Describe, then answer: does naming what the image shows before the yes/no answer teach grounding?

easy-VQA's yes/no questions ("is there not a red shape?") need the image's colour and shape and a
comparison with the question's words. Trained to answer "yes"/"no" directly, the demo's models learn
the wording prior, or nothing once it is balanced away (docs/demo.md). Here every yes/no target
first names the image's colour and shape, then answers:

    user: <image> is there not a red shape?
    assistant: blue circle: yes

so the answer is a comparison between words the model has just written and the question's words
(which LoRA learns from words in about 60 steps: ``grounding_probe.py``), and every yes/no sample
also teaches the colour and shape names. Open questions ("what color is the shape?") keep their
one-word answers. The baseline variant trains the same questions with their plain answers.

Setup (both variants): SmolLM2-135M-Instruct (float32) with LoRA r 16 on every linear layer (lr
1e-3), MobileNetV2 frozen (layer 18, 7 row tokens, features cached), LaVIN's neck (hidden 128, lr
3e-3); the first 12,000 easy-VQA train questions whose image's colour and shape are known from its
open questions; half open questions, half yes/no balanced per answer and polarity (so the wording
predicts nothing); 200 steps of 16. Evaluation: 400 test questions drawn with seed 1, greedy, at
most 10 new tokens, with own and with shuffled images (cotune's shuffle ablation). A yes/no answer
is the prediction's last word; open answers likewise. Reported per variant and seed: yes/no and
open accuracy (colour and shape), the counter-prior split, and the same with shuffled images.

    python -m benchmarks.grounding_describe [--seeds 0 1 2] [--variants describe plain] [--steps 200] [--work DIR]

Measured on a 2-core AMD EPYC shared with two other runs: training 1,540-1,570 s a run, evaluation about 180 s
(2 x 400 answers); idle it is faster (not measured).
Writes ``results/grounding_describe-cpu.{md,json}`` (not with ``--steps`` below 200).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.grounding_probe import attributes
from benchmarks.throughput_report import machine, save_results


COLOURS = frozenset({"red", "green", "blue", "yellow", "black", "gray", "teal", "brown"})
CELLS = ("yes-affirmative", "no-affirmative", "yes-negated", "no-negated")  # the order of the recorded runs
TRAIN_QUESTIONS = 12000


def write_sets(easyvqa: Path, work: Path, describe: bool) -> dict[str, int]:
    """One easy-VQA folder per cell (open, yes/no x polarity) under ``work``; returns their sizes."""
    from cotune.data.questions import polarity

    questions = json.loads((easyvqa / "train" / "questions.json").read_text())
    colour, shape = attributes(questions)
    cells = defaultdict(list)
    for question, answer, image in questions[:TRAIN_QUESTIONS]:
        if image not in colour or image not in shape:
            continue
        if answer in ("yes", "no"):
            target = f"{colour[image]} {shape[image]}: {answer}" if describe else answer
            cells[f"{answer}-{polarity(question)}"].append([question, target, image])
        else:
            cells["open"].append([question, answer, image])
    for name, rows in cells.items():
        folder = work / name / "train"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "questions.json").write_text(json.dumps(rows))
        if not (folder / "images").exists():
            os.symlink(easyvqa / "train" / "images", folder / "images")
    return {name: len(rows) for name, rows in cells.items()}


def config(sets: Path, sizes: dict[str, int], seed: int, steps: int, cache: Path):
    from cotune.config import load_config

    shares = {"open": 0.5, **{cell: 0.125 for cell in CELLS}}  # per-sample rates: share / size
    train = [{"kind": "easyvqa", "path": str(sets / name), "split": "train", "weight": round(1000 * shares[name] / sizes[name], 6),
              "name": name} for name in ("open", *CELLS)]
    lora = {"type": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ["all-linear"]}
    recipe = {
        "seed": seed,
        "model": {
            "llm": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "dtype": "float32", "trainable": "lora", "adapter": lora},
            "encoders": {"image": {"type": "mobilenet-v2", "name_or_path": "torchvision/mobilenet_v2", "layers": [18],
                                   "reduce": "windows", "window": 7, "trainable": "frozen",
                                   "connector": {"type": "lavin-neck", "hidden": 128}}},
        },
        "data": {"train": train, "template": "auto", "system_prompt": "Answer briefly.", "max_length": 128, "batch_size": 16,
                 "epoch_size": steps * 16, "feature_cache": str(cache)},
        "train": {"lr": 3.0e-3, "groups": {"llm": {"lr": 1.0e-3}}, "warmup_steps": 15, "schedule": "cosine", "max_grad_norm": 1.0,
                  "precision": "fp32", "log_every": 10, "checkpoint_every": 100, "keep_checkpoints": 1, "max_steps": steps},
    }
    return load_config(data=recipe)


def last_word(text: str) -> str:
    words = re.findall(r"[a-z]+", text.lower())
    return words[-1] if words else ""


def score(predictions: Path) -> dict[str, float]:
    """Accuracy (percent) by group, reading each answer as the prediction's last word."""
    from cotune.data.questions import polarity

    groups = defaultdict(lambda: [0, 0])
    for line in predictions.read_text().splitlines():
        record = json.loads(line)
        reference = record["references"][0].lower()
        right = last_word(record["prediction"]) == reference
        if reference in ("yes", "no"):
            prior = "yes" if polarity(record["question"]) == "negated" else "no"
            keys = ("yes_no", "counter_prior" if reference != prior else "follows_prior")
        else:
            keys = ("open", "colour" if reference in COLOURS else "shape")
        for key in keys:
            groups[key][0] += right
            groups[key][1] += 1
    return {key: round(100 * right / count, 1) for key, (right, count) in groups.items()} | \
        {f"{key}_count": count for key, (_right, count) in groups.items()}


def run(variant: str, seed: int, args, work: Path, easyvqa: Path) -> dict:
    from cotune.eval.runner import evaluate_run
    from cotune.train import Trainer

    sets = work / f"sets-{variant}"
    sizes = write_sets(easyvqa, sets, describe=variant == "describe")
    cfg = config(sets, sizes, seed, args.steps, work / f"cache-{variant}")
    run_dir = work / f"{variant}-seed{seed}"
    started = time.perf_counter()
    trainer = Trainer(cfg, run_dir)
    trainer.run()
    trained = time.perf_counter() - started
    out = run_dir / "eval"
    evaluate_run(trainer.model, trainer.config, f"easyvqa:{easyvqa}", limit=args.questions, sample_seed=1, batch_size=32,
                 max_new_tokens=10, out=out, ablations=("shuffle",))
    own, shuffled = score(out / "predictions.jsonl"), score(out / "ablate-shuffle" / "predictions.jsonl")
    row = {"variant": variant, "seed": seed, "sizes": sizes, "train_seconds": round(trained, 1), "own": own, "shuffled": shuffled}
    print(json.dumps(row), flush=True)
    return row


COLUMNS = (("own", "yes_no"), ("own", "counter_prior"), ("own", "open"), ("own", "colour"), ("own", "shape"),
           ("shuffled", "yes_no"), ("shuffled", "counter_prior"), ("shuffled", "open"))


def table(rows: list[dict]) -> list[str]:
    """One row per run, then each variant's mean (min-max) over its seeds; '-' where a group had no question."""
    lines = ["| variant | seed | yes/no | against the wording | open | colour | shape | yes/no, shuffled | against the wording, "
             "shuffled | open, shuffled | train s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [str(r[side].get(key, "-")) for side, key in COLUMNS]
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(cells) + f" | {r['train_seconds']:.0f} |")
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        if len(mine) < 2:
            continue
        cells = []
        for side, key in COLUMNS:
            values = [r[side][key] for r in mine if key in r[side]]
            cells.append(f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})" if values else "-")
        lines.append(f"| {variant}, mean (min-max) | {len(mine)} seeds | " + " | ".join(cells) + " | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=("describe", "plain"), default=["describe", "plain"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--questions", type=int, default=400, help="test questions (default 400)")
    parser.add_argument("--work", type=Path, help="sets, caches and runs (default: a temporary directory)")
    args = parser.parse_args(argv)
    from cotune.zoo import dataset_dir, fetch

    fetch("easy-vqa")
    easyvqa = Path(dataset_dir("easy-vqa"))
    work = args.work or Path(tempfile.mkdtemp(prefix="cotune-grounding-describe-"))
    started = time.monotonic()
    rows = [run(variant, seed, args, work, easyvqa) for variant in args.variants for seed in args.seeds]
    command = "python -m benchmarks.grounding_describe " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine("cpu")
    text = "\n".join([
        "# Describe, then answer (cpu)", "", f"Command: `{command.strip()}` (total {(time.monotonic() - started) / 60:.1f} min)", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
        f"{args.questions} easy-VQA test questions (seed 1); accuracy in percent, answers read as the prediction's last word; "
        "'against the wording': yes/no questions whose answer the question's polarity does not predict.", "",
        *table(rows), "",
    ])
    print(text)
    if args.steps >= 200:
        save_results("grounding_describe-cpu", text, {"command": command.strip(), "machine": info, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
