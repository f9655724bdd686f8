"""``cotune demo [--out DIR] [--quick] [--seed N]``: the offline end-to-end demo (docs/demo.md)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from cotune.cli.common import add_set_argument
from cotune.demo import DemoPlan, run_demo

ROWS = (("image", "easy-VQA test (image)"), ("audio", "sound QA test (audio)"), ("text", "held-out text questions"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="cotune-demo", metavar="DIR", help="output folder (default: ./cotune-demo); a rerun reuses what is done")
    parser.add_argument("--quick", action="store_true", help="a short run (60 steps, smaller evaluation) to check the setup")
    parser.add_argument("--steps", type=int, metavar="N", help="training steps (default: 200, quick: 60)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of every random choice of training: the synthetic sets' training splits, the training "
                        "draws and their order, the initialisation (default: 0); the evaluated questions and the media shuffle "
                        "are the same for every seed")
    parser.add_argument("--cache", metavar="DIR", help="zoo cache root (default: $COTUNE_CACHE, else ~/.cache/cotune)")
    add_set_argument(parser, "the demo recipe")


def run(args: argparse.Namespace) -> int:
    """Run the offline demo: zoo, data, untuned baseline, training, evaluation, report."""
    plan = DemoPlan.quick() if args.quick else DemoPlan()
    plan = replace(plan, seed=args.seed)
    if args.steps is not None:
        plan = replace(plan, steps=args.steps)
    result = run_demo(Path(args.out), plan, cache=args.cache, overrides=args.overrides)
    m = result.metrics
    before = {"image": m["image_accuracy_before"], "audio": m["audio_accuracy_before"], "text": m["text_accuracy_base"]}
    after = {"image": m["image_accuracy"], "audio": m["audio_accuracy"], "text": m["text_accuracy"]}
    print(f"\n{'accuracy (%)':28s} {'before':>8s} {'after':>8s} {'questions':>10s}")
    for key, label in ROWS:
        print(f"{label:28s} {_pct(before[key]):>8s} {_pct(after[key]):>8s} {m['questions'][key]:>10d}")
    print(format_grounding(m))
    print(f"\ntrainable parameters: {m['trainable_parameters']:,} of {m['total_parameters']:,}; total time {m['total_seconds'] / 60:.1f} min")
    for name, target in m["targets"].items():
        verdict = "not judged (this run reused earlier phases)" if target["met"] is None else "met" if target["met"] else "NOT met"
        value = f"{target['value']:.1f}" if name == "total_minutes" else _pct(target["value"])
        print(f"target {name} {target['compare']} {target['target']}: {value} {verdict}")
    print("\nexample answers after training:")
    for ex in result.examples:
        refs = ", ".join(ex.get("references") or [])
        print(f"  [{ex['set']}] {ex.get('question', '')!r} -> {ex.get('prediction', '')!r} (reference: {refs})")
    print(f"\nwritten: {result.out / 'metrics.json'}, {result.out / 'report'}, run directory {result.out / 'run'}")
    return 0


GROUP_LABELS = {
    "all": "all questions", "open": "open questions", "yes_no": "yes/no questions", "yes_no_balanced": "yes/no, balanced",
    "follows_prior": "yes/no the wording predicts", "counter_prior": "yes/no against the wording",
    "counter_prior_set": "yes/no against the wording, own set",
}


def format_grounding(metrics: dict) -> str:
    """After training: accuracy with each sample's own media and with another sample's (shuffled),
    and the drop, per group: what the media add (docs/demo.md). The easy-VQA questions against the
    wording in a set of their own are evaluated with their own media only."""
    lines = [f"\n{'after training (%)':45s} {'own media':>10s} {'shuffled':>9s} {'drop':>6s} {'questions':>10s}"]
    for key, label in (("image", "easy-VQA"), ("audio", "sound QA")):
        for name, group in metrics["grounding"][key].items():
            if name.startswith("type:") or (key == "audio" and name in ("follows_prior", "counter_prior")):
                continue
            lines.append(f"{label + ': ' + GROUP_LABELS[name]:45s} {_pct(group['own']):>10s} {_pct(group['shuffled']):>9s} "
                         f"{_pct(group['drop']):>6s} {group['count']:>10d}")
    return "\n".join(lines)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"
