"""Pieces shared by the CLI commands: the command contract, config arguments, user errors, logging."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from cotune.adapters import SiteError
from cotune.backbones import LoadError
from cotune.config import ConfigError, CotuneConfig, load_config
from cotune.data.dataset import DataError
from cotune.eval import ScoreError
from cotune.extras import MissingExtra
from cotune.registry import UnknownNameError
from cotune.report import ReportError
from cotune.train.checkpoint import CheckpointError
from cotune.zoo import ZooError

#: Errors caused by the user's input (config, paths, names); the CLI reports them in one line, exit 2.
USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, LoadError, UnknownNameError, SiteError, DataError, ReportError, ScoreError, ZooError, FileNotFoundError,
    FileExistsError, CheckpointError, MissingExtra,
)

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Command:
    """One CLI command: ``add_arguments(parser)`` declares its options, ``run(args) -> int`` executes it.

    The first line of ``run``'s docstring is the command's one-line help in ``cotune --help``.
    """

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

    @property
    def help(self) -> str:
        doc = (self.run.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the positional CONFIG (a YAML file) and repeated ``--set KEY=VALUE`` overrides."""
    parser.add_argument("config", metavar="CONFIG", help="YAML config file (e.g. recipes/lavin-7b-scienceqa.yaml)")
    add_set_argument(parser)


def add_set_argument(parser: argparse.ArgumentParser, what: str = "a config value") -> None:
    """Repeated ``--set KEY=VALUE`` overrides into ``args.overrides`` (``what`` they override, for the help)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override {what} by its dotted key, e.g. --set model.llm.dtype=bfloat16 "
        "(VALUE is parsed as YAML; repeatable, applied in order)",
    )


def load_cli_config(args: argparse.Namespace) -> CotuneConfig:
    """The validated config named by ``args.config`` with ``args.overrides`` applied."""
    return load_checked_config(args.config, args.overrides)


def load_checked_config(path, overrides=()) -> CotuneConfig:
    """:func:`load_config`, then its component and reader names (ConfigError naming the file and the
    key, as load_config's own errors do): a command fails on a misspelt name before it reads any weight."""
    from cotune.model.build import check_component_names

    config = load_config(path, overrides)
    try:
        check_component_names(config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return config


def one_line(err: BaseException) -> str:
    """The error's message collapsed onto one line (library messages may span several)."""
    return " ".join(str(err).split()) or type(err).__name__


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (which test runners and notebooks replace)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: str) -> None:
    """Sends cotune's log records at ``level`` and above to stderr (libraries keep their own handlers).

    Idempotent: repeated calls (several ``main()`` calls in one process) only change the level.
    """
    logger = logging.getLogger("cotune")
    logger.setLevel(level.upper())
    # On AVX512-BF16 CPUs bitsandbytes warns, whenever PEFT or transformers imports it, that it
    # cannot fetch its packed CPU inference kernel from the Hub; cotune never uses that kernel
    # (cotune.backbones.loading.keep_cpu_layout), so the warning only shows with --log-level debug.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel("DEBUG" if level.upper() == "DEBUG" else "ERROR")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.propagate = False
