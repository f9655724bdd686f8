"""``cotune train CONFIG [--set k=v ...] [--out RUN_DIR] [--resume RUN_DIR] [--nproc N] [--device auto|cpu|cuda]``."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from cotune.cli.common import add_set_argument, load_checked_config
from cotune.config import ConfigError
from cotune.train.launch import DEVICES, use_cuda

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", nargs="?", help="YAML config (optional with --resume: the run's own)")
    add_set_argument(parser)
    parser.add_argument("--out", help="run directory (default: runs/<config name>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (DDP; gloo on CPU)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where to train: auto (CUDA if available, else CPU), cpu, or cuda (stops if there is no GPU)")


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` (torchrun would take ``--nproc`` for its own option)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _relaunch(args: argparse.Namespace, argv: list[str]) -> int:
    """Re-runs this command under torch.distributed.run with ``--nproc`` processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", "-m", "cotune", *argv]
    log.info("launching %d processes: %s", args.nproc, " ".join(command))
    return subprocess.call(command, env={**os.environ, "COTUNE_LAUNCHED": "1"})


def run(args: argparse.Namespace) -> int:
    """Train a model from a config; writes a run directory with checkpoints, metrics and the model."""
    from cotune.train import Interrupted, train

    use_cuda(args.device)  # before launching processes that would each fail alike
    if args.nproc > 1 and os.environ.get("COTUNE_LAUNCHED") != "1":
        return _relaunch(args, _without_nproc(sys.argv[1:]))
    if args.resume:
        from cotune.rundir import RunDir

        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume {run_dir}: no such run directory")
        RunDir(run_dir).refuse_merged()
        if not RunDir(run_dir).checkpoints():  # before its config is read: a failed start's config may be the fault
            raise FileNotFoundError(f"--resume {run_dir}: the run saved no checkpoint to resume from; start it again with "
                                    f"cotune train CONFIG --out {run_dir}")
        config_path = Path(args.config) if args.config else RunDir(run_dir).config_file
        resume = True
    else:
        if not args.config:
            raise ConfigError("cotune train needs a CONFIG (or --resume RUN_DIR)")
        config_path = Path(args.config)
        run_dir = Path(args.out) if args.out else Path("runs") / f"{config_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        resume = False
    config = load_checked_config(config_path, args.overrides)
    try:
        final = train(config, run_dir, resume=resume, device=args.device)
    except Interrupted as stop:
        log.warning("%s", stop)
        return 128 + stop.signal_number
    print(final)
    return 0
