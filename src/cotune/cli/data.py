"""``cotune data check``: run the readers, the template and the media loading over datasets and report.

Two forms:

* ``cotune data check CONFIG [--set ...]``: every dataset in ``data.train`` and ``data.eval`` of the
  config, rendered with the model's tokenizer and decoded with its encoders' processors (read from
  the backbones' directories; no weights are loaded).
* ``cotune data check PATH --kind KIND [--split S] [--config CONFIG]``: one dataset; without
  ``--config`` only the reader and raw media decoding run (no tokenizer needed).

Exit status 0 when every dataset is within ``data.max_skip_fraction``, 1 when a run would stop.

``cotune data synth --kind {audioqa,scienceqa,textqa} --out DIR [--seed S] [--count N] [--json]``
writes a synthetic dataset (:mod:`cotune.data.synth`, docs/data-synth.md) into an empty or new
DIR and prints a one-line summary: samples per split, files, and the tree's sha256 (equal for
equal seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from cotune.cli.common import add_set_argument, load_checked_config
from cotune.config import ConfigError, CotuneConfig, DataConfig, DatasetConfig
from cotune.data.collate import Collator
from cotune.data.dataset import DataError, check_skip_fraction, prepare_dataset
from cotune.data.media import load_audio, load_image
from cotune.data.readers import READERS, read_dataset
from cotune.data.report import DataReport
from cotune.data.schema import SkipSample
from cotune.data.synth import SYNTHESIZERS

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="read, render and decode datasets; report kept and skipped samples")
    check.add_argument("target", metavar="CONFIG_OR_PATH", help="a YAML config, or a dataset path with --kind")
    check.add_argument("--kind", help=f"reader for a dataset path ({', '.join(READERS.names())})")
    check.add_argument("--split", default="train", help="split of a dataset path (default: train)")
    check.add_argument("--config", help="with a dataset path: also render it with this config's model")
    add_set_argument(check)
    check.add_argument("--workers", type=int, default=0, help="DataLoader workers for media decoding")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    synth = sub.add_parser("synth", help="write a synthetic demo dataset (audioqa, scienceqa, textqa) into an empty directory")
    synth.add_argument("--kind", required=True, help=f"what to generate ({', '.join(SYNTHESIZERS.names())})")
    synth.add_argument("--out", required=True, metavar="DIR", help="output directory (created; must be empty if it exists)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files (default: 0)")
    synth.add_argument("--count", type=int, help="samples to generate (default per kind; textqa: facts drawn from its pool)")
    synth.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _decode_all(dataset, report: DataReport, workers: int, pad_id: int) -> None:
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=workers, collate_fn=Collator(pad_id))
    for batch in loader:
        report.record_batch(batch)


def _check_raw(config: DatasetConfig, report: DataReport) -> None:
    """Reader plus raw media decoding (no tokenizer, no processor)."""
    ds_report = report.dataset(config.name)
    kept = 0
    for sample in read_dataset(config, ds_report, key="--kind"):
        try:
            for path in sample.media.get("image", ()):
                load_image(path, sample.id)
            for path in sample.media.get("audio", ()):
                load_audio(path, sample.id, target_rate=16000)
        except SkipSample as skip:
            ds_report.skip(skip.reason, skip.detail)
            continue
        kept += 1
    ds_report.kept = kept


def _check_with_model(config: CotuneConfig, datasets: tuple[DatasetConfig, ...], report: DataReport, workers: int) -> None:
    from cotune.model.data_spec import data_spec_from_config
    from cotune.zoo.sources import resolve_sources

    spec = data_spec_from_config(config, resolve_sources(config.model))
    for ds_config in datasets:
        try:
            dataset = prepare_dataset(ds_config, spec, report, max_skip_fraction=1.0)
        except DataError:  # nothing usable at all: the report already says why
            continue
        _decode_all(dataset, report, workers, spec.pad_id)


def run_check(args: argparse.Namespace) -> tuple[DataReport, float]:
    """Runs the check; returns the report and the skip fraction a run would tolerate."""
    report = DataReport()
    target = Path(args.target)
    if target.suffix in (".yaml", ".yml") and not args.kind:
        config = load_checked_config(target, args.overrides)
        datasets = (*config.data.train, *config.data.eval)
        if not datasets:
            raise ConfigError(f"{target}: data.train and data.eval are empty; nothing to check")
        _check_with_model(config, datasets, report, args.workers)
        return report, config.data.max_skip_fraction
    if not args.kind:
        raise ConfigError(f"{target}: a dataset path needs --kind ({', '.join(READERS.names())})")
    ds_config = DatasetConfig(kind=args.kind, path=str(target), split=args.split)
    if args.config:
        config = load_checked_config(args.config, args.overrides)
        _check_with_model(config, (ds_config,), report, args.workers)
        return report, config.data.max_skip_fraction
    _check_raw(ds_config, report)
    return report, DataConfig().max_skip_fraction


def format_report(report: DataReport) -> str:
    lines = []
    for name, ds in report.datasets.items():
        filtered = f" ({ds.filtered} more left out by answers:)" if ds.filtered else ""
        lines.append(f"{name}: {ds.total} records, {ds.kept} kept, {ds.total - ds.kept} skipped{filtered}")
        for reason, count in sorted(ds.skipped.items()):
            lines.append(f"  {reason}: {count}  e.g. {ds.examples[reason][0]}")
    return "\n".join(lines)


def run_synth(args: argparse.Namespace) -> dict:
    """Runs the generator named by ``--kind``; returns its summary."""
    synthesize = SYNTHESIZERS.get(args.kind, key="--kind")
    return synthesize(Path(args.out), seed=args.seed, count=args.count)


def format_synth(summary: dict) -> str:
    splits = ", ".join(f"{name} {n}" for name, n in summary["splits"].items())
    return (f"{summary['kind']}: {splits}; {summary['files']} files in {summary['out']} "
            f"(seed {summary['seed']}, sha256 {summary['sha256'][:12]})")


def run(args: argparse.Namespace) -> int:
    """Check datasets (read, render, decode, report skips) or write a synthetic demo dataset."""
    if args.data_command == "synth":
        summary = run_synth(args)
        print(json.dumps(summary) if args.json else format_synth(summary))
        return 0
    report, max_fraction = run_check(args)
    print(json.dumps(report.as_dict()) if args.json else format_report(report))
    status = 0
    for ds in report.datasets.values():
        try:
            check_skip_fraction(ds, max_fraction)
        except DataError as err:
            log.error("%s", err)
            status = 1
    return status
