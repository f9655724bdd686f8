"""Local paths of a config made absolute, so that a run's saved config works from any directory.

A run directory keeps the config it trained with (``config.yaml``), and ``cotune train --resume``,
``data check``, ``eval`` and ``predict`` read it from wherever they are started: a path relative to
the directory the run was started in would point elsewhere. The trainer therefore keeps these
absolute: each dataset's ``path`` and ``media_root`` and each backbone's ``name_or_path`` when it
names a file or folder that exists, and ``data.feature_cache`` (a folder cotune creates). Names
that are not local paths (hub ids of models and of ``hf`` datasets, paths that do not exist, whose
errors come later and name them) are kept as written.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from cotune.config.data import DatasetConfig
from cotune.config.model import CotuneConfig


def _absolute(value: str, base: Path) -> str:
    """``value`` made absolute against ``base`` (``~`` expanded); the same string when it is
    already absolute or does not name an existing file or folder."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path) if path != Path(value) else value
    candidate = base / path
    return os.path.abspath(candidate) if candidate.exists() else value


def _dataset(config: DatasetConfig, base: Path) -> DatasetConfig:
    media_root = _absolute(config.media_root, base) if config.media_root else config.media_root
    return replace(config, path=_absolute(config.path, base), media_root=media_root)


def absolute_paths(config: CotuneConfig, base: str | Path | None = None) -> CotuneConfig:
    """``config`` with its local paths absolute against ``base`` (default: the working directory)."""
    base = Path(base) if base is not None else Path.cwd()
    model, data = config.model, config.data
    llm = replace(model.llm, name_or_path=_absolute(model.llm.name_or_path, base))
    encoders = {name: replace(enc, name_or_path=_absolute(enc.name_or_path, base)) for name, enc in model.encoders.items()}
    cache = data.feature_cache
    if cache is not None and not Path(cache).expanduser().is_absolute():
        cache = os.path.abspath(base / Path(cache).expanduser())
    data = replace(data, train=tuple(_dataset(d, base) for d in data.train), eval=tuple(_dataset(d, base) for d in data.eval),
                   feature_cache=cache)
    return replace(config, model=replace(model, llm=llm, encoders=encoders), data=data)
