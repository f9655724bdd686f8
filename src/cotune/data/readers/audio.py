"""Audio CSV readers: ``audioqa`` (ClothoAQA-style questions) and ``audiocaps`` (Clotho/AudioCaps captions).

Both read one CSV (UTF-8, header row; column names match case-insensitively). ``path`` is the CSV,
or a directory holding ``<split>.csv`` or ``*_<split>.csv`` (ClothoAQA's ``clotho_aqa_train.csv``).
Audio paths are relative to ``config.media_root``, by default the CSV's ``audio/`` subfolder if it
exists, else the CSV's directory. A row whose field count differs from the header's is a
``malformed_record`` at its line number. Readers check only that the audio files exist.

``audioqa``: columns ``file`` (or ``file_name``, ``filename``, ``audio``), ``question`` (or
``QuestionText``), ``answer``, optional ``id``, ``question_type`` and ``description`` (what the clip
sounds like, for ``targets: describe``). One sample per row
(ClothoAQA's several answers to a question stay separate samples); id: the ``id`` cell, else
``<file>#<k>``, k counting earlier rows of that file; metadata ``{"answer", "question"}``, plus
``question_type`` and ``description`` when those cells are set (the evaluation reports accuracy per
question type).

``audiocaps``: a file column as above, or AudioCaps' ``youtube_id`` + ``start_time``, which name
the file ``<youtube_id>_<start_time>.wav``; captions in ``caption`` (AudioCaps: one row per
caption) or ``caption_1`` ... ``caption_N`` (Clotho: one row per file). Each caption is one record
and one sample, id ``<file>#<k>`` (k: the caption's index among that file's captions), user turn
``config.prompt`` (default :data:`CAPTION_PROMPT`), metadata ``{"references": [all captions of
that file in the CSV]}`` for evaluation.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.readers.common import Record, attach_media, data_file, emit, media_root
from cotune.data.report import DatasetReport
from cotune.data.schema import Message, Sample, SkipSample

FILE_COLUMNS = ("file", "file_name", "filename", "audio")
QUESTION_COLUMNS = ("question", "questiontext")
CAPTION_PROMPT = "Describe the sound in one sentence."

Row = dict[str, str]


@READERS.register("audioqa")
def read_audioqa(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]:
    """Question-answer samples of a ClothoAQA-style CSV (module docstring)."""
    path = data_file(config, (".csv",))
    header = _header(path)
    file_of = _file_column(header, path)
    question = _column(header, QUESTION_COLUMNS, path, "question")
    answer = _column(header, ("answer",), path, "answer")
    id_column = _column(header, ("id",), path, "id", required=False)
    type_column = _column(header, ("question_type",), path, "question_type", required=False)
    description_column = _column(header, ("description",), path, "description", required=False)
    root = _audio_root(config, path)
    rows_per_file: Counter = Counter()

    def make(row: Row, index: int) -> Sample:
        file = file_of(row)
        own_id = row[id_column].strip() if id_column else ""
        sample_id = own_id or f"{file}#{rows_per_file[file]}"
        rows_per_file[file] += 1
        text, reply = _cell(row, question, "missing_field"), _cell(row, answer, "empty_answer")
        messages = [Message("user", text), Message("assistant", reply)]
        media = attach_media(sample_id, messages, {"audio": [file]}, root)
        metadata = {"answer": reply, "question": text}
        if type_column and row.get(type_column, "").strip():
            metadata["question_type"] = row[type_column].strip()
        if description_column and row.get(description_column, "").strip():
            metadata["description"] = row[description_column].strip()
        return Sample(sample_id, messages, media, metadata)

    return emit(config, report, _rows(path, header), make)


@READERS.register("audiocaps")
def read_audiocaps(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]:
    """One captioning sample per caption of a Clotho/AudioCaps-style CSV (module docstring)."""
    path = data_file(config, (".csv",))
    header = _header(path)
    file_of = _file_column(header, path)
    captions = _caption_columns(header, path)
    root = _audio_root(config, path)
    prompt = config.prompt or CAPTION_PROMPT
    references = _references(path, header, file_of, captions)

    def make(item: tuple[str, int, str], index: int) -> Sample:
        file, k, caption = item
        sample_id = f"{file}#{k}"
        messages = [Message("user", prompt), Message("assistant", caption)]
        media = attach_media(sample_id, messages, {"audio": [file]}, root)
        return Sample(sample_id, messages, media, {"references": list(references[file])})

    return emit(config, report, _caption_records(path, header, file_of, captions), make)


def _caption_records(path: Path, header: list[str], file_of: Callable[[Row], str], captions: list[str]) -> Iterator[Record]:
    """One record per caption cell: (file, k, caption); a row that names no file is one record."""
    seen: Counter = Counter()
    for where, row in _rows(path, header):
        try:
            if isinstance(row, SkipSample):
                raise row
            file = file_of(row)
        except SkipSample as skip:
            yield where, skip
            continue
        for column in captions:
            caption = row[column].strip()
            if not caption:
                yield f"{where} {column}", SkipSample("empty_answer", f"{file}: empty {column}")
                continue
            yield f"{where} {column}", (file, seen[file], caption)
            seen[file] += 1


def _references(path: Path, header: list[str], file_of: Callable[[Row], str], captions: list[str]) -> dict[str, list[str]]:
    """All non-empty captions of each file, in CSV order (a first pass over the CSV)."""
    references: dict[str, list[str]] = defaultdict(list)
    for _, row in _rows(path, header):
        try:
            if isinstance(row, SkipSample):
                continue
            texts = [row[c].strip() for c in captions]
            references[file_of(row)].extend(t for t in texts if t)
        except SkipSample:
            continue
    return references


# --- CSV --------------------------------------------------------------------------------------


def _open(path: Path):
    return path.open(newline="", encoding="utf-8-sig")


def _header(path: Path) -> list[str]:
    try:
        with _open(path) as f:
            header = next(csv.reader(f), None)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a readable UTF-8 CSV ({err})") from err
    if not header:
        raise ValueError(f"{path}: empty CSV, expected a header row")
    return [name.strip() for name in header]


def _rows(path: Path, header: list[str]) -> Iterator[tuple[str, Row | SkipSample]]:
    """(position, row as column -> value) for each non-blank row after the header; a row that
    cannot be parsed or has the wrong number of fields comes as a SkipSample.

    Quotes are parsed strictly, and a bad record that ran over several lines (an unterminated quote
    swallows the rows after it) costs only its first line: reading starts again on the next line,
    so the rows the quote swallowed are read and counted on their own."""
    try:
        with _open(path) as f:
            lines = f.readlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    position, in_header = 0, True  # the 0-based line the reader starts at
    while position < len(lines):
        reader = csv.reader(itertools.islice(lines, position, None), strict=True)
        while True:
            first = position + reader.line_num  # 0-based line where the next record starts
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield f"{path} line {first + 1}", SkipSample("malformed_record", f"unparsable row ({err})")
                position = first + 1
                break
            spanned = position + reader.line_num - first
            if in_header:
                in_header = False
                continue
            if not row:
                continue
            where = f"{path} line {first + 1}"
            if len(row) == len(header):
                yield where, dict(zip(header, row))
                continue
            detail = f"{len(row)} fields, the header has {len(header)}"
            if spanned > 1:
                yield where, SkipSample("malformed_record", f"{detail} (a quoted field runs over {spanned} lines: "
                                                            f"an unterminated quote?); reading again from line {first + 2}")
                position = first + 1
                break
            yield where, SkipSample("malformed_record", detail)


def _column(header: list[str], names: tuple[str, ...], path: Path, what: str, *, required: bool = True) -> str | None:
    """The first header name among ``names`` (case-insensitive); ValueError naming the path if required and absent."""
    by_lower = {name.lower(): name for name in header}
    for name in names:
        if name in by_lower:
            return by_lower[name]
    if required:
        raise ValueError(f"{path}: no {what} column (one of {', '.join(names)}); columns: {', '.join(header)}")
    return None


def _cell(row: Row, column: str, reason: str) -> str:
    value = row[column].strip()
    if not value:
        raise SkipSample(reason, f"empty {column!r}")
    return value


def _file_column(header: list[str], path: Path) -> Callable[[Row], str]:
    """Row -> audio file name: a file column, else ``<youtube_id>_<start_time>.wav``."""
    column = _column(header, FILE_COLUMNS, path, "file", required=False)
    if column is not None:
        return lambda row: _cell(row, column, "missing_field")
    video = _column(header, ("youtube_id",), path, "youtube_id", required=False)
    start = _column(header, ("start_time",), path, "start_time", required=False)
    if video is None or start is None:
        raise ValueError(
            f"{path}: no audio file column (one of {', '.join(FILE_COLUMNS)}, or youtube_id and start_time); "
            f"columns: {', '.join(header)}"
        )
    return lambda row: f"{_cell(row, video, 'missing_field')}_{_cell(row, start, 'missing_field')}.wav"


def _caption_columns(header: list[str], path: Path) -> list[str]:
    """``caption``, else ``caption_1`` ... ``caption_N`` in numeric order."""
    single = _column(header, ("caption",), path, "caption", required=False)
    if single is not None:
        return [single]
    numbered = [(int(m.group(1)), name) for name in header if (m := re.fullmatch(r"caption_(\d+)", name, re.IGNORECASE))]
    if not numbered:
        raise ValueError(f"{path}: no caption column (caption or caption_1 ... caption_N); columns: {', '.join(header)}")
    return [name for _, name in sorted(numbered)]


def _audio_root(config: DatasetConfig, csv_path: Path) -> Path:
    folder = csv_path.parent / "audio"
    return media_root(config, folder if folder.is_dir() else csv_path.parent)
