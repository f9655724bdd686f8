"""Can the LLM side learn easy-VQA's yes/no comparison at all, when the image is given in words?

easy-VQA's yes/no questions ask whether the image holds a colour or a shape ("is there not a red
shape?"). Answering them from the image needs two things: reading the colour and shape (the demo
learns that: 86 % on open questions) and comparing them with the question's words, negation
included. This probe isolates the second: every image's colour and shape (known from its open
questions) is written into the prompt as text, so no encoder is involved::

    user: The image shows a blue circle.
          is there not a red shape?
    assistant: yes

Training and test questions are drawn balanced per polarity (negated or not) and answer, so the
wording predicts nothing (chance 50 %). The model is the demo's LLM (SmolLM2-135M-Instruct,
float32) with the LLM-side trainable part of the demo recipe (MM-Adapters dim 8, lr 1e-3) unless
``--set`` says otherwise (for example ``model.llm.trainable=lora``). Reported: yes/no accuracy on
the held-out test images' questions, balanced accuracy, and the counter-prior split
(cotune.eval.breakdown), after ``--steps`` steps of batch 16.

    python -m benchmarks.grounding_probe [--steps 100] [--questions 400] [--seed 0] [--set KEY=VALUE ...] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.throughput_report import machine

log = logging.getLogger("grounding_probe")
SHAPES = frozenset({"circle", "rectangle", "triangle"})


def attributes(questions: list) -> tuple[dict[int, str], dict[int, str]]:
    """Image id -> colour and -> shape, read off the answers of the open questions."""
    colour, shape = {}, {}
    for _question, answer, image in questions:
        if answer in SHAPES:
            shape[image] = answer
        elif answer not in ("yes", "no"):
            colour[image] = answer
    return colour, shape


def balanced_text_set(questions: list, seed: int) -> list[dict]:
    """Alpaca records of the yes/no questions with the image described in words, drawn balanced
    per (polarity, answer)."""
    colour, shape = attributes(questions)
    cells = defaultdict(list)
    for question, answer, image in questions:
        if answer in ("yes", "no") and image in colour and image in shape:
            negated = bool(re.search(r"\b(not|no)\b", question))
            cells[(negated, answer)].append((question, answer, image))
    size = min(len(cell) for cell in cells.values())
    rng = random.Random(seed)
    drawn = [row for key in sorted(cells) for row in rng.sample(cells[key], size)]
    rng.shuffle(drawn)
    return [{"instruction": f"The image shows a {colour[i]} {shape[i]}.\n{q}", "output": a, "answers": [a]} for q, a, i in drawn]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--questions", type=int, default=400, help="held-out test questions (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, help="data and run (default: a temporary directory)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)

    from cotune.config import load_config
    from benchmarks.recipes import mm_adapter_recipe
    from cotune.eval.runner import evaluate_run
    from cotune.eval.tasks import TASKS
    from cotune.train import Trainer
    from cotune.zoo import dataset_dir, fetch

    fetch("easy-vqa")
    data = Path(dataset_dir("easy-vqa"))
    work = args.work or Path(tempfile.mkdtemp(prefix="cotune-grounding-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        questions = json.loads((data / split / "questions.json").read_text())
        (work / f"{split}.json").write_text(json.dumps(balanced_text_set(questions, args.seed)))
    raw = mm_adapter_recipe()
    raw["seed"] = args.seed
    raw["model"]["encoders"] = {}
    raw["model"].pop("routing", None)
    raw["data"].update(train=[{"kind": "alpaca", "path": str(work / "train.json")}], epoch_size=args.steps * raw["data"]["batch_size"])
    raw["train"].update(max_steps=args.steps, checkpoint_every=10 * args.steps, groups={"llm": raw["train"]["groups"]["llm"]})
    raw.pop("balance", None)
    config = load_config(data=raw, overrides=args.overrides)
    started = time.perf_counter()
    trainer = Trainer(config, work / "run")
    trainer.run()
    train_s = time.perf_counter() - started
    metrics = evaluate_run(trainer.model, config, (TASKS.get("textqa"), work / "test.json"), limit=args.questions,
                           sample_seed=args.seed, batch_size=32, max_new_tokens=4, out=work / "eval")
    part = metrics["breakdown"]
    result = {
        "steps": args.steps, "seed": args.seed, "overrides": args.overrides, "train_seconds": round(train_s, 1),
        "trainable": sum(c["trainable"] for c in trainer.model.parameter_counts().values()),
        "yes_no_accuracy": part["by_answer_type"]["yes_no"]["accuracy"], "questions": metrics["evaluated"],
        "yes_no_balanced_accuracy": part["yes_no_balanced_accuracy"],
        "counter_prior": part["wording_prior"]["counter_prior"], "machine": machine("cpu"),
    }
    print(json.dumps(result, indent=2))
    (work / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
