"""Atomic file writes (write to a temporary name beside the target, optionally fsync, rename) and
cotune's cache folder.

A reader (or a crash) sees either the old file or the complete new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object], fsync: bool = True) -> Path:
    """Calls ``write(tmp_path)``, fsyncs the file (unless ``fsync`` is False) and renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text), fsync)


def cache_root(cache: str | Path | None = None) -> Path:
    """``cache``, else ``$COTUNE_CACHE``, else ``$XDG_CACHE_HOME/cotune`` (default ``~/.cache/cotune``):
    the zoo's copies and the media the ``hf`` reader takes out of datasets live below it."""
    if cache is not None:
        return Path(cache).expanduser()
    if os.environ.get("COTUNE_CACHE"):
        return Path(os.environ["COTUNE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "cotune"


@contextlib.contextmanager
def using_cache_root(cache: str | Path | None) -> Iterator[None]:
    """``cache`` as the cache root of everything run inside the block (``$COTUNE_CACHE``, restored
    after): a command that fetches into ``--cache DIR`` and then trains and loads the run resolves
    the zoo's hub ids there too. None changes nothing."""
    if cache is None:
        yield
        return
    saved = os.environ.get("COTUNE_CACHE")
    os.environ["COTUNE_CACHE"] = str(Path(cache).expanduser().resolve())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("COTUNE_CACHE", None)
        else:
            os.environ["COTUNE_CACHE"] = saved
