"""Record helpers the readers share: locate the data file, read JSON/JSONL records with their
positions, check conversations and media, and :func:`emit`, which applies ``limit``, counts
records, reports skips and rejects repeated ids. Readers only check that media files exist;
decoding is left to the loading workers.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from cotune.config.data import DatasetConfig
from cotune.data.report import DatasetReport
from cotune.data.questions import YES_NO, answer_word, polarity
from cotune.data.schema import MEDIA_MARKERS, ROLES, Message, Sample, SkipSample, check_text, resolve_media_path, shown

#: A record's position for skip details ("<file> line 3", "<file> record 3") and the record, or
#: the SkipSample that reading it raised.
Record = tuple[str, Any]


# --- locating and reading ---------------------------------------------------------------------


def data_file(config: DatasetConfig, suffixes: tuple[str, ...]) -> Path:
    """``config.path`` if it is a file; in a directory, the one ``<split><suffix>`` or ``*_<split><suffix>``."""
    path = Path(config.path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    split = config.split
    chosen = [p for p in files if p.stem == split or p.stem.endswith(f"_{split}")]
    if len(chosen) != 1:
        problem = f"{len(chosen)} files match" if chosen else "no file matches"
        names = ", ".join(p.name for p in files) or "none"
        raise ValueError(
            f"{path}: {problem} split {split!r} (<split>{suffixes[0]} or *_<split>{suffixes[0]}); "
            f"{'/'.join(suffixes)} files here: {names}; set path to the file"
        )
    return chosen[0]


def media_root(config: DatasetConfig, default: Path) -> Path:
    """``config.media_root`` (must be a directory) or ``default``."""
    if config.media_root is None:
        return default
    root = Path(config.media_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"media_root: {root} is not a directory")
    return root


def json_records(path: Path) -> Iterator[Record]:
    """Records of a JSONL file (name ends in ``.jsonl``, streamed) or a JSON list file.

    A JSON list is parsed at once (ValueError naming the file if it does not parse) and each entry
    is released as it is yielded. A JSONL line that does not parse comes as a SkipSample.
    """
    if path.suffix.lower() == ".jsonl":
        return _jsonl_records(path)
    try:
        records = json.loads(path.read_bytes())
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{path}: not readable JSON (nested too deeply)") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got a {type(records).__name__}")
    return _released(path, records)


def _released(path: Path, records: list) -> Iterator[Record]:
    for index in range(len(records)):
        record, records[index] = records[index], None
        yield f"{path} record {index}", record


def _jsonl_records(path: Path) -> Iterator[Record]:
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path} line {number}", json.loads(line)
            except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
                yield f"{path} line {number}", SkipSample("malformed_record", f"not valid JSON ({err})")
            except RecursionError:
                yield f"{path} line {number}", SkipSample("malformed_record", "JSON nested too deeply")


def emit(
    config: DatasetConfig,
    report: DatasetReport,
    records: Iterable[Record],
    make: Callable[[Any, int], Sample],
) -> Iterator[Sample]:
    """Yields ``make(record, index)`` for at most ``config.limit`` records, counting each in
    ``report.total``; a SkipSample (raised by ``make`` or read in place of a record) and an id
    already yielded (``malformed_record``) are reported with the record's position. Samples that
    ``config.answers``/``polarity`` leave out, and yes/no samples that ``targets: describe`` cannot
    describe, are counted in ``report.filtered``, not in ``total``. Text that is
    not valid Unicode (:func:`~cotune.data.schema.check_text`) and a record that makes ``make``
    fail in any other way (nested too deeply, a type no check foresaw) are ``malformed_record``
    skips too: one bad record never costs the dataset."""
    seen: set[str] = set()
    for index, (where, record) in enumerate(itertools.islice(records, config.limit)):
        try:
            if isinstance(record, SkipSample):
                raise record
            try:
                sample = make(record, index)
                check_text(sample)
            except SkipSample:
                raise
            except RecursionError:
                raise SkipSample("malformed_record", "nested too deeply") from None
            except Exception as err:  # noqa: BLE001 - a record no check foresaw must not end the dataset
                raise SkipSample("malformed_record", f"unusable record ({type(err).__name__}: {shown(str(err)):.200})") from None
            if not answer_filter_keeps(sample, config.answers, config.polarity):
                report.filtered += 1
                continue
            if config.targets == "describe":
                sample = described(sample)
                if sample is None:
                    report.filtered += 1
                    continue
            if sample.id in seen:
                raise SkipSample("malformed_record", f"duplicate id {sample.id!r}")
        except SkipSample as skip:
            report.total += 1
            report.skip(skip.reason, f"{where}: {skip.detail}")
            continue
        report.total += 1
        seen.add(sample.id)
        yield sample


def answer_filter_keeps(sample: Sample, answers: str, polarity_filter: str = "all") -> bool:
    """Whether ``DatasetConfig.answers`` (``all``, ``yes_no``, ``yes``, ``no``, ``open``) and
    ``DatasetConfig.polarity`` (``all``, ``affirmative``, ``negated``) keep ``sample``, judged by its
    last assistant turn (case, surrounding space and a final full stop ignored) and the last user
    turn before it."""
    if answers == "all" and polarity_filter == "all":
        return True
    last = next((m.content for m in reversed(sample.messages) if m.role == "assistant"), "")
    word = answer_word(last)
    kept = {"all": True, "yes_no": word in YES_NO, "open": word not in YES_NO, "yes": word == "yes", "no": word == "no"}[answers]
    if kept and polarity_filter != "all":
        question = next((m.content for m in reversed(sample.messages) if m.role == "user"), "")
        kept = polarity(question) == polarity_filter
    return kept


def described(sample: Sample) -> Sample | None:
    """``DatasetConfig.targets: describe``: a yes/no sample's last answer becomes
    ``<description>: <answer>`` (its media described first, then the comparison with the question);
    other samples are returned as they are. None (left out, counted as filtered: the data is not at
    fault) for a yes/no sample whose reader gave no ``metadata["description"]``."""
    last = max((i for i, m in enumerate(sample.messages) if m.role == "assistant"), default=None)
    answer = answer_word(sample.messages[last].content) if last is not None else ""
    if answer not in YES_NO:
        return sample
    description = (sample.metadata or {}).get("description")
    if not isinstance(description, str) or not description.strip():
        return None
    messages = list(sample.messages)
    messages[last] = Message("assistant", f"{description.strip()}: {answer}")
    return replace(sample, messages=messages)


# --- record fields ----------------------------------------------------------------------------


def as_object(record: Any) -> dict:
    if not isinstance(record, dict):
        raise SkipSample("malformed_record", f"expected an object, got {type(record).__name__}")
    return record


def record_id(record: dict, default: str) -> str:
    """The record's ``id`` (string or integer) as a string, or ``default`` when it has none."""
    value = record.get("id")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise SkipSample("malformed_record", f"'id' must be a non-empty string or an integer, got {value!r}")
    return str(value)


def path_list(value: Any, field: str) -> list[str]:
    """A media field: nothing (None), one path or a list of paths."""
    if value is None:
        return []
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise SkipSample("malformed_record", f"{field!r} must be a path or a list of paths, got {value!r:.80}")
    if any(not p.strip() for p in paths):
        raise SkipSample("missing_field", f"{field!r} holds an empty path")
    return paths


def content_text(content: Any, field: str) -> str:
    """A message content: a string, or a list of text/image/audio parts joined with newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise SkipSample("malformed_record", f"{field}: content must be a string or a list of parts")
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind in MEDIA_MARKERS:
            pieces.append(MEDIA_MARKERS[kind])
        else:
            raise SkipSample("malformed_record", f"{field}: unknown content part {part!r:.80}")
    return "\n".join(pieces)


def chat_messages(raw: Any, field: str) -> list[Message]:
    """Messages from a list of ``{"role", "content"}`` objects, checked by :func:`conversation`."""
    if raw is None or raw == []:
        raise SkipSample("missing_field", f"no {field!r}")
    if not isinstance(raw, list):
        raise SkipSample("malformed_record", f"{field!r} must be a list of messages")
    turns = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise SkipSample("malformed_record", f"{field}[{i}]: needs a role in {ROLES} and a content")
        turns.append((message["role"], message.get("content")))
    return conversation(turns, field)


def conversation(turns: list[tuple[str, Any]], field: str) -> list[Message]:
    """Checked messages from (role, content) pairs: system turns only at the start, then user and
    assistant turns alternating from a user turn and ending on a non-empty assistant turn."""
    messages = [Message(role, content_text(content, f"{field}[{i}]")) for i, (role, content) in enumerate(turns)]
    start = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    for i, message in enumerate(messages[start:], start=start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if message.role != expected:
            raise SkipSample("malformed_record", f"{field}[{i}]: expected a {expected} turn, got {message.role}")
    if not messages or messages[-1].role != "assistant":
        raise SkipSample("malformed_record", f"{field}: the conversation must end with an assistant turn")
    for i, message in enumerate(messages):
        if message.role == "assistant" and not message.content.strip():
            raise SkipSample("empty_answer", f"{field}[{i}]: empty assistant turn")
    return messages


# --- media ------------------------------------------------------------------------------------


def check_markers(sample_id: str, messages: list[Message], counts: dict[str, int]) -> None:
    """Markers appear only in user turns and, per kind, 0 times or once per file (``counts``)."""
    for kind, marker in MEDIA_MARKERS.items():
        for message in messages:
            if message.role != "user" and marker in message.content:
                raise SkipSample("marker_mismatch", f"{sample_id}: {marker} in a {message.role} turn")
        found = sum(m.content.count(marker) for m in messages)
        files = counts.get(kind, 0)
        if found and found != files:
            raise SkipSample("marker_mismatch", f"{sample_id}: {found} {marker} marker(s) but {files} {kind} file(s)")


def attach_media(sample_id: str, messages: list[Message], media: dict[str, list[str]], root: Path) -> dict[str, list[Path]]:
    """Checks markers against ``media`` (kind -> relative paths), then resolves the paths under ``root``."""
    check_markers(sample_id, messages, {kind: len(paths) for kind, paths in media.items()})
    resolved = {}
    for kind, paths in media.items():
        if paths:
            resolved[kind] = [_resolve(root, path, sample_id) for path in paths]
    return resolved


def _resolve(root: Path, relative: str, sample_id: str) -> Path:
    try:
        return resolve_media_path(root, relative, sample_id)
    except (OSError, ValueError) as err:  # e.g. a NUL byte or an over-long name
        raise SkipSample("malformed_record", f"{sample_id}: unusable path {relative!r:.80} ({err})") from None
