"""The optional ``hf`` reader: local Hugging Face datasets (``save_to_disk`` folders, parquet, arrow).

Needs the ``datasets`` package (``pip install 'cotune[hf-datasets]'``), imported only when the
reader runs. ``path`` is one of:

- a ``save_to_disk`` folder of a ``Dataset`` (``split`` is ignored) or of a ``DatasetDict``
  (``split`` picks one; a missing split is an error listing the splits);
- a ``.parquet`` or ``.arrow`` file (arrow files as ``datasets`` writes them);
- a folder of such files: those of the split, named ``<split>.*``, ``<split>-*`` (the Hub's
  ``data/train-00000-of-00002.parquet``), ``*_<split>.*``, or inside a ``<split>/`` folder.

The conversation comes from the first of these columns present: ``messages`` (the ``jsonl``
reader's messages, contents as strings or lists of parts), ``conversations`` (LLaVA turns), or
``instruction``/``output`` with optional ``input`` (Alpaca). Media: ``image``/``images`` and
``audio``/``audios`` columns hold a path, a list of paths, or ``datasets`` Image/Audio values
(``{"bytes", "path"}``), relative to ``config.media_root`` (default: ``path`` if it is a folder,
else its folder). Media embedded as bytes are not supported: such records are skipped as
``embedded_media`` (cotune's samples refer to files, and this reader writes nothing); store the
files and their paths instead. Optional ``id`` column (default ``<path stem>-<row index>``).
Rows are read raw from Arrow in batches; no media is decoded and nothing is cached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.readers.alpaca import alpaca_messages
from cotune.data.readers.common import Record, as_object, attach_media, chat_messages, emit, media_root, path_list, record_id
from cotune.data.readers.llava import llava_messages
from cotune.data.report import DatasetReport
from cotune.data.schema import Message, Sample, SkipSample

MEDIA_COLUMNS = {"image": ("image", "images"), "audio": ("audio", "audios")}
TABLE_SUFFIXES = (".parquet", ".arrow")
BATCH_ROWS = 256


@READERS.register("hf")
def read(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]:
    """Samples of a local Hugging Face dataset (module docstring)."""
    datasets = _import_datasets()
    path = Path(config.path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    columns, records = _open(datasets, path, config.split)
    media = {kind: next((c for c in names if c in columns), None) for kind, names in MEDIA_COLUMNS.items()}
    make = partial(
        _sample,
        stem=path.stem,
        to_messages=_conversation_format(columns, path),
        media_columns={kind: column for kind, column in media.items() if column},
        root=media_root(config, path if path.is_dir() else path.parent),
    )
    return emit(config, report, records, make)


def _import_datasets():
    try:
        import datasets
    except ImportError as err:
        from cotune.extras import missing

        raise missing("the hf reader (data kind: hf)", "datasets", "hf-datasets") from err
    return datasets


def _sample(
    row: Any,
    index: int,
    *,
    stem: str,
    to_messages: Callable[[dict], list[Message]],
    media_columns: dict[str, str],
    root: Path,
) -> Sample:
    row = as_object(row)
    sample_id = record_id(row, f"{stem}-{index}")
    messages = to_messages(row)
    media = {kind: _media_paths(row.get(column), column) for kind, column in media_columns.items()}
    return Sample(sample_id, messages, attach_media(sample_id, messages, media, root))


def _conversation_format(columns: list[str], path: Path) -> Callable[[dict], list[Message]]:
    if "messages" in columns:
        return lambda row: chat_messages(row.get("messages"), "messages")
    if "conversations" in columns:
        return lambda row: llava_messages(row.get("conversations"))
    if "instruction" in columns and "output" in columns:
        return alpaca_messages
    raise ValueError(
        f"{path}: no conversation columns (messages, conversations, or instruction + output); "
        f"columns: {', '.join(columns)}"
    )


def _media_paths(value: Any, column: str) -> list[str]:
    """Paths of a media cell: None, a path, a ``{"bytes", "path"}`` value, or a list of these."""
    items = value if isinstance(value, list) else [] if value is None else [value]
    paths = []
    for item in items:
        if isinstance(item, dict):
            if item.get("bytes") is not None:
                raise SkipSample("embedded_media", f"{column!r} holds embedded bytes; the hf reader takes file paths only")
            item = item.get("path")
        paths.append(item)
    return path_list(paths, column) if paths else []


# --- opening the dataset ----------------------------------------------------------------------


def _open(datasets, path: Path, split: str) -> tuple[list[str], Iterator[Record]]:
    """Column names and the raw rows (python values, media undecoded) with their positions."""
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = datasets.load_from_disk(str(path))
        if split not in splits:
            raise ValueError(f"{path}: no split {split!r}; splits: {', '.join(splits)}")
        return splits[split].column_names, _dataset_rows(splits[split], f"{path}[{split}]")
    if path.is_dir() and (path / "state.json").is_file():
        dataset = datasets.load_from_disk(str(path))
        return dataset.column_names, _dataset_rows(dataset, str(path))
    files = _table_files(path, split)
    return _file_columns(datasets, files[0]), _files_rows(datasets, files)


def _table_files(path: Path, split: str) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise ValueError(f"{path}: expected a save_to_disk folder or a .parquet/.arrow file")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES and p.is_file())
    chosen = [p for p in files if _in_split(p.relative_to(path), split)]
    if not chosen:
        names = ", ".join(str(p.relative_to(path)) for p in files) or "none"
        raise ValueError(f"{path}: no parquet/arrow file for split {split!r}; files: {names}")
    return chosen


def _in_split(relative: Path, split: str) -> bool:
    stem = relative.stem
    named = stem == split or stem.startswith(f"{split}-") or stem.endswith(f"_{split}")
    return named or split in relative.parts[:-1]


def _file_columns(datasets, file: Path) -> list[str]:
    if file.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(file).names
    return datasets.Dataset.from_file(str(file)).column_names


def _files_rows(datasets, files: list[Path]) -> Iterator[Record]:
    for file in files:
        if file.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            batches = (batch.to_pylist() for batch in pq.ParquetFile(file).iter_batches(batch_size=BATCH_ROWS))
            yield from _numbered(batches, str(file))
        else:
            yield from _dataset_rows(datasets.Dataset.from_file(str(file)), str(file))


def _dataset_rows(dataset, where: str) -> Iterator[Record]:
    batches = (table.to_pylist() for table in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS))
    return _numbered(batches, where)


def _numbered(batches: Iterator[list[dict]], where: str) -> Iterator[Record]:
    index = 0
    for rows in batches:
        for row in rows:
            yield f"{where} row {index}", row
            index += 1
