"""``cotune inspect CONFIG``: build the configured model and report parameter counts per component
and how each component's weights are stored (dtype, or 4/8-bit quantization).

With ``--dry-run`` only the backbones' config.json files are read and every module is created on the
meta device, so a 13B model is inspected in seconds without its weights. ``--memory`` (implies
``--dry-run``) adds the memory plan of a training step (:mod:`cotune.train.memory`): the peak per
device, its parts, and with ``--device-memory`` whether it fits and what to change if not.
"""

from __future__ import annotations

import argparse
import json
import logging
import re

from cotune.cli.common import add_config_arguments, load_cli_config
from cotune.config import ConfigError, CotuneConfig, config_hash
from cotune.model import build_model
from cotune.train.memory import GIB, MemoryPlan, plan_memory
from cotune.train.memory_weights import weight_formats
from cotune.zoo.sources import resolve_sources

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="read only config.json files and build on the meta device (no weights are loaded)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    memory = parser.add_argument_group("memory plan (peak training memory per device, from shapes alone)")
    memory.add_argument("--memory", action="store_true", help="estimate the peak memory of a training step (implies --dry-run)")
    memory.add_argument("--batch-size", type=int, metavar="B", help="rows per device (default: data.batch_size)")
    memory.add_argument("--seq-len", type=int, metavar="L", help="tokens per row, media included (default: data.max_length)")
    memory.add_argument("--device-memory", metavar="SIZE",
                        help="memory of one device, e.g. 24GB or 80GiB (GB = GiB = 2^30 bytes, as GPU memory is quoted): "
                             "says whether the step fits and what to change if not")
    memory.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="plan with or without gradient checkpointing (default: train.gradient_checkpointing)")
    memory.add_argument("--supervised-fraction", type=float, default=1.0, metavar="F",
                        help="fraction of positions whose next token is supervised, where the LM head runs (default 1: all)")


def inspect_config(config: CotuneConfig, dry_run: bool = False) -> dict:
    """Builds the model of ``config`` and returns its parameter report.

    Returns ``{"trainable_params", "total_params", "components": {name: {"total", "trainable"}},
    "weights": {name: {"bits", "format"[, "rest"]}}, "config_hash", "dry_run"}``; components are
    those of :meth:`CotuneModel.components`; ``weights`` says how each is stored (quantized: the
    linear layers' bits and type, ``rest`` the dtype of everything else).
    """
    log.info("building the model (%s)", "meta device, configs only" if dry_run else "loading weights")
    return _report(config, build_model(config, meta=dry_run, sources=resolve_sources(config.model)), dry_run)


def _report(config: CotuneConfig, model, dry_run: bool) -> dict:
    components = model.parameter_counts()
    return {
        "trainable_params": sum(c["trainable"] for c in components.values()),
        "total_params": sum(c["total"] for c in components.values()),
        "components": components,
        "weights": weight_formats(config, components),
        "config_hash": config_hash(config),
        "dry_run": dry_run,
    }


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def _weights(entry: dict) -> str:
    if "rest" in entry:
        return f"{entry['bits']}-bit {entry['format']}"
    return entry["format"]


def _aligned(rows: list[tuple[str, ...]], totals: bool = True, left: tuple[int, ...] = (0,)) -> list[str]:
    """Rows as columns two spaces apart (columns ``left`` left-aligned, the rest right-aligned)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if totals:
        lines.insert(-1, lines[1])
    return lines


def format_table(report: dict) -> str:
    """The report as an aligned text table: one row per component, then the totals."""
    rows = [("component", "weights", "total", "trainable", "trainable %")]
    for name, counts in report["components"].items():
        rows.append((name, _weights(report["weights"][name]), f"{counts['total']:,}", f"{counts['trainable']:,}",
                     _percent(counts["trainable"], counts["total"])))
    total, trainable = report["total_params"], report["trainable_params"]
    rows.append(("total", "", f"{total:,}", f"{trainable:,}", _percent(trainable, total)))
    lines = _aligned(rows)
    mode = "dry run, meta device" if report["dry_run"] else "weights loaded"
    lines.append(f"config hash {report['config_hash']} ({mode})")
    return "\n".join(lines)


def format_plan(plan: MemoryPlan) -> str:
    """The memory plan as text: the step, one row per term, the peak, the fit and the advice."""
    s = plan.settings
    lines = [f"memory plan per device: batch {s.batch_size} x {s.seq_len} tokens, logits at {s.supervised_positions} positions, "
             f"precision {s.precision}, gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}"]
    rows = [("term", "GiB", "how")]
    rows += [(t.name, f"{t.bytes / GIB:.2f}", t.detail) for t in (*plan.static, *plan.activations)]
    lines += _aligned(rows, totals=False, left=(0, 2))
    lines.append(f"peak {plan.peak / GIB:.1f} GiB at the {plan.peak_phase} "
                 f"(checkpointing off: {plan.peak_without / GIB:.1f} GiB, on: {plan.peak_with / GIB:.1f} GiB)")
    if plan.device_memory is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(f"device {plan.device_memory / GIB:g} GiB, {plan.usable / GIB:.1f} GiB usable for tensors: {verdict}")
    lines += [f"  - {line}" for line in plan.advice]
    return "\n".join(lines)


_UNITS = {"": GIB, "g": GIB, "gb": GIB, "gib": GIB, "m": 2**20, "mb": 2**20, "mib": 2**20, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_size(text: str) -> int:
    """``24GB``, ``24 GiB``, ``80G``, ``512MB`` (a bare number is GiB) -> bytes; GB = GiB = 2^30."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"--device-memory: cannot read {text!r}; write e.g. 24GB, 80GiB or 512MB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _check_memory_flags(args: argparse.Namespace) -> None:
    given = [flag for flag, value in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len),
                                      ("--device-memory", args.device_memory),
                                      ("--gradient-checkpointing", args.gradient_checkpointing),
                                      ("--supervised-fraction", None if args.supervised_fraction == 1.0 else 1))
             if value is not None]
    if given and not args.memory:
        raise ConfigError(f"{', '.join(given)}: memory plan options; add --memory")
    for flag, value in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    if not 0 < args.supervised_fraction <= 1:
        raise ConfigError(f"--supervised-fraction: must be in (0, 1], got {args.supervised_fraction}")


def run(args: argparse.Namespace) -> int:
    """Build a config's model and print its parameters per component (and, with --memory, the plan)."""
    _check_memory_flags(args)
    config = load_cli_config(args)
    if not args.memory:
        report = inspect_config(config, dry_run=args.dry_run)
        print(json.dumps(report) if args.json else format_table(report))
        return 0
    device_memory = parse_size(args.device_memory) if args.device_memory is not None else None
    log.info("building the model (meta device, configs only) for the memory plan")
    model = build_model(config, meta=True, sources=resolve_sources(config.model))
    report = _report(config, model, dry_run=True)
    plan = plan_memory(config, model, batch_size=args.batch_size, seq_len=args.seq_len,
                       gradient_checkpointing=args.gradient_checkpointing,
                       supervised_fraction=args.supervised_fraction, device_memory=device_memory)
    if args.json:
        print(json.dumps({**report, "memory": plan.to_dict()}))
    else:
        print(format_table(report) + "\n\n" + format_plan(plan))
    return 0
