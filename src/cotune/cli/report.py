"""``cotune report RUN_DIR [RUN_DIR ...] --out DIR``: figures and a Markdown summary of training runs.

Several runs are overlaid on the same axes, one colour per run (see docs/report.md).
"""

from __future__ import annotations

import argparse

from cotune.report import make_report
from cotune.report.make import summary_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run directories written by `cotune train` (each holds metrics.jsonl)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs and summary.md (created if missing)")
    parser.add_argument(
        "--smooth", type=int, default=1, metavar="N", help="draw a trailing moving average of N steps over the training loss (default: 1, none)"
    )


def run(args: argparse.Namespace) -> int:
    """Plot training runs (loss, kappa, learning rates, gradient norms, KL) and write a summary table."""
    report = make_report(args.run_dirs, args.out, smooth=args.smooth)
    print(summary_table(report["runs"]))
    return 0
