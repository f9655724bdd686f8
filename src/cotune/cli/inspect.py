"""``cotune inspect CONFIG``: build the configured model and report parameter counts per component.

With ``--dry-run`` only the backbones' config.json files are read and every module is created on the
meta device, so a 13B model is inspected in seconds without its weights.
"""

from __future__ import annotations

import argparse
import json
import logging

from cotune.cli.common import add_config_arguments, load_cli_config
from cotune.config import CotuneConfig, config_hash
from cotune.model import build_model

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="read only config.json files and build on the meta device (no weights are loaded)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def inspect_config(config: CotuneConfig, dry_run: bool = False) -> dict:
    """Builds the model of ``config`` and returns its parameter report.

    Returns ``{"trainable_params", "total_params", "components": {name: {"total", "trainable"}},
    "config_hash", "dry_run"}``; components are those of :meth:`CotuneModel.components`.
    """
    log.info("building the model (%s)", "meta device, configs only" if dry_run else "loading weights")
    model = build_model(config, meta=dry_run)
    components = model.parameter_counts()
    return {
        "trainable_params": sum(c["trainable"] for c in components.values()),
        "total_params": sum(c["total"] for c in components.values()),
        "components": components,
        "config_hash": config_hash(config),
        "dry_run": dry_run,
    }


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def format_table(report: dict) -> str:
    """The report as an aligned text table: one row per component, then the totals."""
    rows = [("component", "total", "trainable", "trainable %")]
    for name, counts in report["components"].items():
        rows.append((name, f"{counts['total']:,}", f"{counts['trainable']:,}", _percent(counts["trainable"], counts["total"])))
    total, trainable = report["total_params"], report["trainable_params"]
    rows.append(("total", f"{total:,}", f"{trainable:,}", _percent(trainable, total)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(-1, lines[1])
    mode = "dry run, meta device" if report["dry_run"] else "weights loaded"
    lines.append(f"config hash {report['config_hash']} ({mode})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Build a config's model and print its total and trainable parameters per component."""
    report = inspect_config(load_cli_config(args), dry_run=args.dry_run)
    print(json.dumps(report) if args.json else format_table(report))
    return 0
