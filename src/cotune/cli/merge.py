"""``cotune merge RUN_DIR --out DIR``: fold LoRA and linear adapters into the backbones' weights.

The output directory is a standalone model for ``cotune.load`` (and, for runs whose LLM carries
only LoRA, for ``transformers.AutoModelForCausalLM.from_pretrained(DIR/llm)``). Adapters that
cannot be folded (input-dependent routers, conv blocks with residuals) are listed and kept.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_DIR",
                        help="a training run directory (its model/ or latest checkpoint) or a saved model directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the merged model goes (must not exist or be empty)")
    parser.add_argument("--device", default=None, help="device to merge on, e.g. cpu or cuda (default: where the backbones load)")
    parser.add_argument("--dequantize", action="store_true",
                        help="a run with 4- or 8-bit backbones: merge into the backbones loaded in full precision")


def run(args: argparse.Namespace) -> int:
    """Fold a run's LoRA and linear adapters into the backbone weights (a standalone model directory)."""
    from cotune.rundir import merge_run

    summary = merge_run(args.run, args.out, device=args.device, dequantize=args.dequantize)
    for line in summary.lines():
        print(line)
    print(summary.directory)
    return 0
