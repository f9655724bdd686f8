"""Opening a Hugging Face dataset for the ``hf`` reader: a local folder or file, or a Hub id read
from the ``datasets`` cache (never downloaded).

Rows come raw from Arrow in batches: python values with media undecoded (``datasets`` Image/Audio
values are ``{"bytes", "path"}`` dicts), each with its position for skip reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from cotune.data.readers.common import Record

TABLE_SUFFIXES = (".parquet", ".arrow")
BATCH_ROWS = 256
#: ``owner/name`` or ``owner/name/config`` (a Hub dataset id, with one of its configurations).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)?")


def open_dataset(datasets, path: Path, split: str) -> tuple[list[str], Iterator[Record]]:
    """Column names and the raw rows of ``path``'s ``split``: a local dataset when ``path`` exists,
    else a Hub id found in the ``datasets`` cache."""
    if not path.exists():
        if HUB_ID.fullmatch(str(path)):
            return _cached_hub_dataset(datasets, str(path), split)
        raise FileNotFoundError(f"{path}: no such file or directory (nor a Hub dataset id owner/name[/config])")
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


def _cached_hub_dataset(datasets, name: str, split: str) -> tuple[list[str], Iterator[Record]]:
    """The ``split`` of Hub dataset ``name`` as ``load_dataset`` left it in the ``datasets`` cache
    (``$HF_DATASETS_CACHE``), through ``datasets``' own cache builder: nothing is fetched, so a run
    reads the same data on a machine without network."""
    from datasets.packaged_modules.cache.cache import Cache

    parts = name.split("/")
    repo, config = "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None)
    cache_dir = datasets.config.HF_DATASETS_CACHE
    try:
        builder = Cache(cache_dir=str(cache_dir), repo_id=repo, dataset_name=repo.split("/")[-1],
                        config_name=config, version="auto", hash="auto")
    except ValueError as err:  # not cached, or several configurations cached
        raise FileNotFoundError(
            f"{name}: not a local path, and the datasets cache ({cache_dir}) holds no copy of it "
            f"({' '.join(str(err).split())}); run datasets.load_dataset({repo!r}) once on a machine with network "
            "and copy the cache, or save the dataset with save_to_disk / to_parquet and give that path (a dataset "
            "with several configurations cached is named owner/name/config)"
        ) from None
    splits = list(builder.info.splits or {})
    if split not in splits:
        raise ValueError(f"{name}: no split {split!r} in the cached copy; splits: {', '.join(splits)}")
    dataset = builder.as_dataset(split=split)
    return dataset.column_names, _dataset_rows(dataset, f"{name}[{split}]")


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
        import pyarrow.parquet as pq  # installed with datasets

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
