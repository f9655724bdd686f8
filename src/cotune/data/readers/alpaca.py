"""The ``alpaca`` reader: Alpaca instruction JSON (a list of records, or JSONL one per line).

One record::

    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well..."}

Following the Alpaca convention, the user turn is ``instruction``, plus a blank line and ``input``
when ``input`` is non-empty; the assistant turn is ``output``. Text only: a media marker in the
text is a ``marker_mismatch``. ``id`` is optional (default ``<file stem>-<record index>``).
``path`` is the file; ``split`` only picks the file when ``path`` is a directory.

An optional ``answers`` field (a list of acceptable short answers, e.g. ``["Paris"]``, for the
``text-match`` metric) is kept as ``metadata["answers"]``; records without it have no metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.readers.common import as_object, check_markers, data_file, emit, json_records, record_id
from cotune.data.report import DatasetReport
from cotune.data.schema import Message, Sample, SkipSample


@READERS.register("alpaca")
def read(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]:
    """Samples of an Alpaca file (module docstring)."""
    path = data_file(config, (".json", ".jsonl"))
    return emit(config, report, json_records(path), partial(_sample, stem=path.stem))


def _sample(record: Any, index: int, *, stem: str) -> Sample:
    record = as_object(record)
    sample_id = record_id(record, f"{stem}-{index}")
    messages = alpaca_messages(record)
    check_markers(sample_id, messages, {})
    metadata = {"answers": _answers(record["answers"])} if "answers" in record else {}
    return Sample(sample_id, messages, metadata=metadata)


def _answers(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a.strip() for a in value):
        raise SkipSample("malformed_record", f"'answers' must be a non-empty list of non-empty strings, got {value!r:.80}")
    return list(value)


def alpaca_messages(record: dict) -> list[Message]:
    """User (instruction, then input if any) and assistant (output) messages of an Alpaca record."""
    instruction = _text(record, "instruction")
    output = _text(record, "output")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise SkipSample("malformed_record", f"'input' must be a string, got {type(extra).__name__}")
    if not instruction.strip():
        raise SkipSample("missing_field", "empty 'instruction'")
    if not output.strip():
        raise SkipSample("empty_answer", "empty 'output'")
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return [Message("user", user), Message("assistant", output)]


def _text(record: dict, field: str) -> str:
    value = record.get(field)
    if value is None:
        raise SkipSample("missing_field", f"no {field!r}")
    if not isinstance(value, str):
        raise SkipSample("malformed_record", f"{field!r} must be a string, got {type(value).__name__}")
    return value
