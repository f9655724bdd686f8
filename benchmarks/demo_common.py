"""The demo's trained runs of several seeds on common, larger test sets: how much of the spread
between seeds is what they learned, and how much is the demo's own test sets, which are small and
differ per seed (each seed draws its easy-VQA subset and synthesises its own sound QA set).

    python -m benchmarks.demo_common [--seeds 0 1 2] [--work DIR] [--image N] [--counter-prior N] [--clips N] [--reuse]

For each seed's finished run (``WORK/seedN/run``, from ``cotune demo --seed N --out WORK/seedN``
or ``benchmarks.demo_seeds``), the same questions for every seed: ``--image`` easy-VQA test
questions (a subset drawn with ``--data-seed``) with own and with shuffled images;
``--counter-prior`` of the test split's yes/no questions whose answer the wording does not predict
(:func:`cotune.eval.runner.counter_prior_set`); and the test split of one sound QA set
synthesised with ``--data-seed`` (``--clips`` clips, a fifth of them test; no seed's training
clips) with own and with shuffled clips. Greedy, the demo's batch and answer length. Writes
``results/demo_common-cpu.{md,json}`` with each seed's figures, the mean, the range and the worst
seed's distance from the mean, beside the same from the demo's own test sets
(``WORK/seedN/metrics.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.demo_seeds import spread
from benchmarks.throughput_report import machine, results_header, save_results

#: (label, set, group of the demo's ``grounding``, key of the demo's own figure).
ROWS = (
    ("easy-VQA, all", "image", "all"),
    ("easy-VQA, yes/no against the wording (a set of their own)", "counter_prior", "counter_prior_set"),
    ("sound QA, all", "audio", "all"),
    ("sound QA, open", "audio", "open"),
    ("sound QA, yes/no", "audio", "yes_no"),
)


def common_sets(config, work: Path, args) -> dict:
    """The three evaluation sets, read as the run's config renders them."""
    from cotune.data.synth import SYNTHESIZERS
    from cotune.eval.runner import counter_prior_set, load_eval_set, subset
    from cotune.eval.tasks import TASKS

    easyvqa = Path(next(entry.path for entry in config.data.train if entry.kind == "easyvqa"))
    sounds = work / f"common-sounds-{args.clips}-seed{args.data_seed}"
    if not (sounds / "test.csv").is_file():
        SYNTHESIZERS.get("audioqa")(sounds, seed=args.data_seed, count=args.clips)
    test = load_eval_set(config, (TASKS.get("easyvqa"), easyvqa), "test")
    return {
        "image": subset(test, args.image, args.data_seed),
        "counter_prior": counter_prior_set(test, args.counter_prior, args.data_seed),
        "audio": load_eval_set(config, (TASKS.get("audioqa"), sounds), "test"),
    }


def evaluate_seed(run: Path, work: Path, args) -> dict:
    """Per set: the demo's grounding groups (own, shuffled, drop, count; own only without shuffle)."""
    from cotune.demo.pipeline import grounding
    from cotune.eval.runner import evaluate_run
    from cotune.rundir import RunDir

    model, config = RunDir(run).load()
    figures = {}
    for name, data in common_sets(config, work, args).items():
        shuffle = ("shuffle",) if name != "counter_prior" else ()
        out = run.parent / "eval-common" / name
        metrics = recorded(out / "metrics.json", data) if args.reuse else None
        if metrics is None:
            metrics = evaluate_run(model, config, data, batch_size=32, max_new_tokens=6, out=out,
                                   ablations=shuffle, ablation_seed=args.data_seed, progress=False)
        figures[name] = grounding(metrics) if shuffle else {"all": {"own": metrics["accuracy"], "count": metrics["evaluated"]}}
    return figures


def recorded(path: Path, data) -> dict | None:
    """An earlier evaluation's metrics of the same questions (path, count, subset seed), else None."""
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    same = (metrics.get("path"), metrics.get("selected"), metrics.get("sample_seed")) == (str(data.path), len(data.samples), data.sample_seed)
    return metrics if same else None


def summary(values: list[float]) -> str:
    """Per-seed values | mean (range) | the worst seed's distance from the mean."""
    return f"{' / '.join(f'{v:.1f}' for v in values)} | {spread(values)} | {min(values) - statistics.mean(values):+.1f}"


def table(common: dict[int, dict], own: dict[int, dict]) -> list[str]:
    seeds = " / ".join(str(s) for s in common)
    lines = [f"| questions | common sets: seeds {seeds} | mean (range) | worst - mean | the demo's own sets: seeds {seeds} "
             "| mean (range) | worst - mean |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, name, group in ROWS:
        key = "all" if name == "counter_prior" else group
        cells = [common[s][name].get(key) for s in common]
        kind = "image" if name != "audio" else "audio"
        mine = [own[s]["grounding"][kind].get(group) for s in own] if own else []
        theirs = summary([c["own"] for c in mine]) if mine and all(mine) else "- | - | -"
        lines.append(f"| {label} ({cells[0]['count']}) | {summary([c['own'] for c in cells])} | {theirs} |")
        if "drop" in cells[0] and group == "all":
            mine_drop = summary([c["drop"] for c in mine]) if mine and all(mine) else "- | - | -"
            lines.append(f"| {label}: drop with shuffled media (points) | {summary([c['drop'] for c in cells])} | {mine_drop} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("demo-seeds"), help="the seeds' demo folders (WORK/seedN)")
    parser.add_argument("--image", type=int, default=600, help="easy-VQA test questions (default 600)")
    parser.add_argument("--counter-prior", type=int, default=600, help="easy-VQA questions against the wording (default 600)")
    parser.add_argument("--clips", type=int, default=3000, help="clips of the common sound QA set, a fifth of them test (default 3000)")
    parser.add_argument("--data-seed", type=int, default=1000, help="seed of the common sets (default 1000: no demo seed's data)")
    parser.add_argument("--reuse", action="store_true", help="read back a seed's earlier evaluation of the same questions "
                        "(WORK/seedN/eval-common) instead of evaluating again")
    parser.add_argument("--note", default="", help="how the runs were made, printed under the machine")
    args = parser.parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    common, own = {}, {}
    for seed in args.seeds:
        folder = args.work / f"seed{seed}"
        common[seed] = evaluate_seed(folder / "run", args.work, args)
        metrics = folder / "metrics.json"
        if metrics.is_file():
            own[seed] = json.loads(metrics.read_text())
    own = own if set(own) == set(common) else {}
    info = machine("cpu")
    command = "python -m benchmarks.demo_common " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        *results_header("The demo's seeds on common test sets (cpu)", command.strip(), info, args.note),
        "Accuracy in percent with each question's own image or clip; drops: own minus shuffled media, in points. Common "
        "sets: the same questions for every seed; the demo's own: the sets each seed's `cotune demo` evaluated.", "",
        *table(common, own), "",
    ])
    print(text)
    save_results("demo_common-cpu", text, {"command": command.strip(), "machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                          "common": common, "own": {s: m["grounding"] for s, m in own.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
