"""The ``cotune`` console entry point: a table of commands, each a :class:`~cotune.cli.common.Command`.

A new command (train, eval, merge, serve...) is one module with ``add_arguments`` and ``run``,
plus one entry in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cotune import __version__
from cotune.cli import chat as chat_cmd
from cotune.cli import data as data_cmd
from cotune.cli import demo as demo_cmd
from cotune.cli import eval as eval_cmd
from cotune.cli import export as export_cmd
from cotune.cli import inspect as inspect_cmd
from cotune.cli import merge as merge_cmd
from cotune.cli import predict as predict_cmd
from cotune.cli import report as report_cmd
from cotune.cli import score as score_cmd
from cotune.cli import serve as serve_cmd
from cotune.cli import train as train_cmd
from cotune.cli import zoo as zoo_cmd
from cotune.cli.common import LOG_LEVELS, USER_ERRORS, Command, one_line, setup_logging

log = logging.getLogger(__name__)

COMMANDS: dict[str, Command] = {
    "inspect": Command(inspect_cmd.add_arguments, inspect_cmd.run),
    "data": Command(data_cmd.add_arguments, data_cmd.run),
    "train": Command(train_cmd.add_arguments, train_cmd.run),
    "report": Command(report_cmd.add_arguments, report_cmd.run),
    "score": Command(score_cmd.add_arguments, score_cmd.run),
    "merge": Command(merge_cmd.add_arguments, merge_cmd.run),
    "export": Command(export_cmd.add_arguments, export_cmd.run),
    "eval": Command(eval_cmd.add_arguments, eval_cmd.run),
    "predict": Command(predict_cmd.add_arguments, predict_cmd.run),
    "chat": Command(chat_cmd.add_arguments, chat_cmd.run),
    "serve": Command(serve_cmd.add_arguments, serve_cmd.run),
    "zoo": Command(zoo_cmd.add_arguments, zoo_cmd.run),
    "demo": Command(demo_cmd.add_arguments, demo_cmd.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cotune",
        description="Multimodal instruction tuning: any Hugging Face encoder x any LLM.",
    )
    parser.add_argument("--version", action="version", version=f"cotune {__version__}")
    _add_global_options(parser, default="info")
    # Global options are accepted after the command too; SUPPRESS keeps the subparser from
    # overwriting a value given before the command.
    shared = argparse.ArgumentParser(add_help=False)
    _add_global_options(shared, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help, parents=[shared])
        command.add_arguments(sub)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default=default, help="verbosity of cotune's messages on stderr (default: info)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``cotune`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Errors in the user's input (config keys and values, unreadable backbones, unknown names) are
    reported as one ``cotune: error: ...`` line on stderr with status 2, without a traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors (already reported by argparse)
        return exit_.code if isinstance(exit_.code, int) else 2
    setup_logging(args.log_level)
    try:
        return COMMANDS[args.command].run(args)
    except USER_ERRORS as err:
        log.debug("user error", exc_info=True)
        sys.stderr.write(f"cotune: error: {one_line(err)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("cotune: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
