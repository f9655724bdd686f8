"""Convergence of the five balance methods on a toy colour-VQA task (tiny random backbones; the
same comparison on real small models and data is ``balance_zoo.py``).

Task: 30 x 30 images of one of four colours with noise; "what colour is the image" -> the colour
word; a quarter of the samples are text-only ("is the answer yes" -> yes). Model: the tiny random
LLaMA + CLIP of cotune.testing.tiny with LaVIN-style MM-Adapters in both and the LaVIN neck. Each method
trains the same number of steps from the same seed; every 10 steps the validation loss and the
teacher-forced answer-token accuracy on held-out images are measured. Writes
``benchmarks/results/balance_methods-cpu.json`` and ``.md`` and the ``cotune report`` figures under
``benchmarks/results/balance_methods/``.

Run: python -m benchmarks.balance_methods [--steps N] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cotune.config import load_config
from cotune.data.collate import Collator
from cotune.report import make_report
from cotune.testing import tiny
from cotune.train import Trainer

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40), "quiet": (240, 240, 240)}
METHODS = ("constant", "feature_cd", "language_cd", "commit_clr", "commit")


def write_task(root: Path, n_train: int, n_val: int, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("val", n_val)):
        records = []
        for i in range(n):
            if split == "train" and i % 4 == 3:
                records.append({"id": f"{split}-{i}", "conversations": [
                    {"from": "human", "value": "is the answer yes"}, {"from": "gpt", "value": "yes"}]})
                continue
            name = list(COLOURS)[rng.integers(len(COLOURS))]
            pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 25, (30, 30, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "img" / f"{split}-{i}.png")
            records.append({"id": f"{split}-{i}", "image": f"img/{split}-{i}.png", "conversations": [
                {"from": "human", "value": "<image>\nwhat colour is the image"}, {"from": "gpt", "value": name}]})
        files[split] = root / f"{split}.json"
        files[split].write_text(json.dumps(records))
    return files


def config_for(work: Path, files: dict[str, Path], method: str, steps: int):
    adapter = {"type": "mm_adapter", "dropout": 0.0}
    raw = tiny.model_config(tiny.save_llm(work), {"image": {
        "type": "clip", "name_or_path": str(tiny.save_encoder(work, "clip")), "layers": [1, 2, 3], "reduce": "cls",
        "trainable": "adapter", "adapter": adapter, "connector": {"type": "lavin-neck", "hidden": 32},
    }}, trainable="adapter", adapter=adapter)
    raw["data"] = {"train": [{"kind": "llava", "path": str(files["train"])}],
                   "eval": [{"kind": "llava", "path": str(files["val"]), "name": "val"}], "template": "lavin", "batch_size": 8}
    raw["train"] = {"max_steps": steps, "lr": 5e-2, "warmup_steps": 5, "schedule": "cosine", "eval_every": 10,
                    "checkpoint_every": 10_000, "log_every": 10}
    raw["balance"] = {"method": method, "every_k": 2, "window": 10, "start_step": 5}
    return load_config(data=raw)


@torch.no_grad()
def answer_accuracy(trainer) -> float:
    """Teacher-forced accuracy of the answer's first token on the validation set."""
    model, dataset = trainer.model, trainer.evaluator.datasets[0]
    model.eval()
    right = total = 0
    for batch in torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=Collator(trainer.spec.pad_id)):
        out = model(batch["input_ids"], batch["attention_mask"], media=batch["media"])
        labels = batch["labels"][:, 1:]
        predicted = out.logits[:, :-1].argmax(-1)
        first = (labels != -100).float().argmax(1)
        rows = torch.arange(labels.shape[0])
        right += int((predicted[rows, first] == labels[rows, first]).sum())
        total += labels.shape[0]
    return right / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="steps per method (default 80; --quick 20)")
    parser.add_argument("--quick", action="store_true", help="20 steps per method; prints, writes results under --work only")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args(argv)
    args.steps = args.steps or (20 if args.quick else 80)
    if args.steps < 10:
        parser.error(f"--steps: at least 10 (one validation every 10 steps), got {args.steps}")
    work = args.work or Path(tempfile.mkdtemp(prefix="cotune-methods-"))
    files = write_task(work / "task", n_train=160, n_val=40)
    results, runs = {}, []
    for method in METHODS:
        run_dir = work / "runs" / method
        trainer = Trainer(config_for(work, files, method, args.steps), run_dir)
        trainer.run()
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        evals = [(r["step"], r["eval/loss"]) for r in records if "eval/loss" in r]
        kappas = [r["balance/kappa"] for r in records if r.get("balance/valid") == 1.0]
        results[method] = {"eval_loss": evals, "final_eval_loss": evals[-1][1], "answer_accuracy": answer_accuracy(trainer),
                           "mean_kappa": float(np.mean(kappas)) if kappas else None}
        runs.append(run_dir)
    target = max(r["eval_loss"][0][1] for r in results.values()) * 0.5
    for r in results.values():
        r["steps_to_half_first_eval_loss"] = next((s for s, v in r["eval_loss"] if v <= target), None)
    out = work / "results" if args.quick else Path(__file__).parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    make_report(runs, out / "balance_methods")
    (out / "balance_methods-cpu.json").write_text(json.dumps(results, indent=2))
    lines = ["# Balance methods on the toy colour-VQA task (cpu)", "",
             f"Command: `python -m benchmarks.balance_methods --steps {args.steps}{' --quick' if args.quick else ''}`; tiny random backbones, 160 train / 40 validation samples, "
             "batch 8, lr 5e-2 cosine, kappa every 2 steps, windows of 10 steps from step 5. Figures: `balance_methods/`.", "",
             f"| method | final val loss | steps to val loss <= {target:.3f} | answer-token accuracy | mean kappa |", "|---|---:|---:|---:|---:|"]
    for method, r in results.items():
        kappa = f"{r['mean_kappa']:.3f}" if r["mean_kappa"] is not None else "-"
        lines.append(f"| {method} | {r['final_eval_loss']:.3f} | {r['steps_to_half_first_eval_loss'] or '-'} | {100 * r['answer_accuracy']:.0f}% | {kappa} |")
    text = "\n".join(lines) + "\n"
    (out / "balance_methods-cpu.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
