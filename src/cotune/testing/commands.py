"""Running ``cotune`` commands in-process from a test, and reading what they wrote."""

from __future__ import annotations

import json
from pathlib import Path

from cotune.cli.main import main


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Runs ``cotune --log-level warning *argv`` in this process -> (exit code, stdout, stderr).

    ``capsys``: pytest's capture fixture (anything with ``readouterr()`` returning ``.out`` and ``.err``).
    """
    code = main(["--log-level", "warning", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_predictions(out: Path) -> list[dict]:
    """The records of ``out/predictions.jsonl`` (written by ``cotune eval`` and ``cotune predict``)."""
    return [json.loads(line) for line in (Path(out) / "predictions.jsonl").read_text().splitlines()]
