"""``cotune eval RUN_DIR --dataset NAME[:PATH] [--split test] [--limit N] [--sample-seed S]
[--ablate shuffle|blank | --ablations shuffle,blank] [--batch-size B] [--max-new-tokens M] --out DIR``:
generate answers with a trained model, score them and write ``DIR/predictions.jsonl`` and
``DIR/metrics.json`` (formats: docs/eval.md); with ablations, how much the answers use the media."""

from __future__ import annotations

import argparse
import logging

from cotune.cli.score import format_metrics, format_mme, format_scienceqa
from cotune.eval.ablation import ABLATIONS, check_ablations
from cotune.eval.breakdown import group_accuracies

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cotune.eval.tasks import TASKS

    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory from cotune train (or a saved model directory)")
    parser.add_argument(
        "--dataset", required=True, metavar="NAME[:PATH]",
        help=f"task and data, e.g. scienceqa:/data/scienceqa; NAME is one of {', '.join(TASKS.names())} "
        "(without :PATH, the zoo's copy of NAME)",
    )
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate N samples (the first N, or a random N with --sample-seed)")
    parser.add_argument("--sample-seed", type=int, metavar="S", help="with --limit: draw the N samples at random with seed S")
    parser.add_argument(
        "--ablate", choices=ABLATIONS, metavar="KIND",
        help="evaluate with other media: shuffle (each sample gets another sample's media) or blank (grey image, silence)",
    )
    parser.add_argument(
        "--ablations", type=_ablation_list, default=(), metavar="KIND[,KIND]",
        help="evaluate with own media, then with each ablation (results under DIR/ablate-KIND), and report the gap",
    )
    parser.add_argument("--ablation-seed", type=int, default=0, metavar="S", help="seed of the shuffle (default: 0)")
    add_generation_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="where predictions.jsonl and metrics.json go")


def _ablation_list(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in ABLATIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown ablation {', '.join(unknown) or value!r}; choose from {', '.join(ABLATIONS)}")
    return tuple(dict.fromkeys(names))


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--batch-size``, ``--max-new-tokens``, ``--num-workers``, ``--device`` (shared with predict)."""
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="prompts generated together (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="M", help="most tokens generated per answer (default: 64)")
    parser.add_argument("--num-workers", type=int, default=0, metavar="W", help="media decoding worker processes (default: 0)")
    parser.add_argument("--device", help="torch device for the model (default: cuda if available, else cpu)")


def load_for_inference(args: argparse.Namespace, config=None):
    """(model, config) of ``args.run_dir`` on ``args.device``."""
    import torch

    from cotune.rundir import RunDir

    config = config or RunDir(args.run_dir).config()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    log.info("loading %s on %s", args.run_dir, device)
    model = RunDir(args.run_dir).load(torch.device(device))[0]
    model.check_generation()
    return model, config


def run(args: argparse.Namespace) -> int:
    """Evaluate a trained run on a dataset: predictions.jsonl, metrics.json and a printed table."""
    from cotune.config import ConfigError
    from cotune.eval.runner import RUN_KEYS, evaluate_run, load_eval_set
    from cotune.rundir import RunDir

    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    check_ablations(args.ablate, args.ablations)
    # Everything the user gave is checked (run, dataset, split, flags) before the weights load.
    config = RunDir(args.run_dir).config()
    data = load_eval_set(config, args.dataset, args.split, args.limit, args.sample_seed)
    if (args.ablate or args.ablations) and not any(sample.media for sample in data.samples):
        raise ConfigError(f"--ablate/--ablations: {args.dataset} has no image or audio to ablate")
    model, config = load_for_inference(args, config)
    metrics = evaluate_run(
        model, config, data, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, out=args.out,
        num_workers=args.num_workers, run_dir=args.run_dir, ablate=args.ablate, ablations=args.ablations,
        ablation_seed=args.ablation_seed,
    )
    print(format_report(metrics, RUN_KEYS))
    if metrics.get("breakdown"):
        print(format_grounding(metrics))
    return 0 if metrics["evaluated"] else 1


def format_report(metrics: dict, run_keys: tuple[str, ...]) -> str:
    """The metric table (ScienceQA's breakdown or one line per metric) and a summary line."""
    if metrics["evaluated"] == 0:
        table = "nothing evaluated"
    elif metrics["metric"] == "scienceqa":
        table = format_scienceqa(metrics) + f"\nfallbacks (not 'The answer is X'): {metrics['fallbacks']}"
    elif metrics["metric"] == "mme":
        table = format_mme(metrics)
    else:
        table = format_metrics({k: v for k, v in metrics.items() if k not in run_keys and not isinstance(v, dict)})
    skipped = ", ".join(f"{reason} {n}" for reason, n in metrics["skipped"].items()) or "none"
    rate = metrics["samples_per_second"]
    return (
        f"{table}\n{metrics['dataset']} ({metrics['split']}): {metrics['evaluated']} evaluated of {metrics['selected']} selected, "
        f"{metrics['records']} records; skipped: {skipped}; {metrics['seconds']:.1f} s"
        + (f" ({rate:.2f} samples/s)" if rate else "")
    )


def format_grounding(metrics: dict) -> str:
    """Accuracy by answer type and against the wording prior; with ablations, own vs ablated and
    the gap per group (docs/eval.md, "Does the model use its media?")."""
    part = metrics["breakdown"]
    lines = []
    if metrics.get("ablation"):
        lines.append(f"media ablated: {metrics['ablation']['kind']} ({metrics['ablation']['changed']} samples changed)")
    # The whole set and the balanced yes/no accuracy are printed above and below the table.
    groups = {k: v for k, v in group_accuracies(metrics).items() if k not in ("all", "yes_no_balanced")}
    prior = part["wording_prior"]
    ablations = metrics.get("ablations") or {}
    header = f"{'group':<22}{'count':>7}{'own':>9}" + "".join(f"{name:>10}{'gap':>8}" for name in ablations)
    lines.append(header)
    for name, (accuracy, count) in groups.items():
        if not count:
            continue
        row = f"{name:<22}{count:>7}{_pct(accuracy):>9}"
        for result in ablations.values():
            entry = result["reliance"].get(name, {})
            row += f"{_pct(entry.get('ablated')):>10}{_pct(entry.get('gap')):>8}"
        lines.append(row)
    if part["yes_no_balanced_accuracy"] is not None:
        lines.append(f"yes/no balanced accuracy {_pct(part['yes_no_balanced_accuracy'])}; "
                     f"answering from the wording alone {_pct(prior['accuracy'])} (majority by polarity: {prior['majority']})")
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1f}"
