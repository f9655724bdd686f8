"""Saving and loading an assembled model as a small directory: resolved config + trainable weights.

Layout: ``config.yaml`` (the full resolved CotuneConfig), ``trainable.safetensors`` (exactly the
trainable parameters) and ``manifest.json`` (config hash, counts, format version). Backbones are
not copied: they are re-read from the config's ``name_or_path`` entries. Files are written to a
temporary name, fsynced and renamed, so an interrupted save never leaves a half-written file.

A *merged* model directory (``cotune merge``, see :mod:`cotune.model.merge_io`) carries a
``merged`` record in its manifest; :func:`load` and :func:`load_model` rebuild it from there.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file, save_file

from cotune.config import CotuneConfig, config_hash, load_config, save_config
from cotune.config.model import dequantized
from cotune.fileio import atomic_write, atomic_write_text
from cotune.model.build import build_model
from cotune.model.fused import CotuneModel

WEIGHTS = "trainable.safetensors"
CONFIG = "config.yaml"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def save_model(model: CotuneModel, config: CotuneConfig, directory: str | Path, *, trainable: dict | None = None,
               counts: dict | None = None) -> Path:
    """Writes config, trainable weights and manifest of ``model`` to ``directory``.

    ``trainable`` / ``counts``: the whole trainable tensors and the per-component parameter counts,
    for a model whose own parameters are shards (FSDP; see :mod:`cotune.train.sharding`)."""
    if getattr(model, "is_merged", False):
        # Its folded weights live in the backbones, which this format does not store.
        raise ValueError("a merged model is written by cotune.model.merge.merge_model(model, directory), not save_model")
    if config.model != model.config:
        raise ValueError("config.model differs from the configuration the model was built from")
    directory = Path(directory)
    state = {k: v.contiguous().cpu() for k, v in (model.trainable_state_dict() if trainable is None else trainable).items()}
    atomic_write(directory / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"config_hash": config_hash(config)}))
    save_config(config, directory / CONFIG)
    manifest = {
        "format_version": FORMAT_VERSION,
        "config_hash": config_hash(config),
        "trainable_params": sum(v.numel() for v in state.values()),
        "components": model.parameter_counts() if counts is None else counts,
    }
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2))
    return directory


def merged_manifest(directory: str | Path) -> dict | None:
    """The ``merged`` record of a directory's manifest, or None when it holds no merged model."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("merged")


def load(path: str | Path, device=None, *, dequantize: bool = False) -> CotuneModel:
    """The model of a run directory (its final ``model/``, else its latest checkpoint), of a
    saved model directory, or of a merged model directory. ``dequantize``: load backbones
    configured in 4 or 8 bits in their own dtype instead (the trained weights are the same)."""
    path = Path(path)
    if merged_manifest(path) is not None:
        return load_model(path, device)[0]
    if (path / "model" / WEIGHTS).is_file():
        return load_model(path / "model", device, dequantize=dequantize)[0]
    if (path / WEIGHTS).is_file():
        return load_model(path, device, dequantize=dequantize)[0]
    checkpoints = sorted((path / "checkpoints").glob("step-*")) if (path / "checkpoints").is_dir() else []
    if checkpoints and (path / CONFIG).is_file():
        model = build_model(_loadable(load_config(path / CONFIG), dequantize), device=device)
        model.load_trainable_state_dict(load_file(checkpoints[-1] / WEIGHTS))
        return model
    raise FileNotFoundError(f"{path} holds neither a saved model ({WEIGHTS}) nor a run with checkpoints")


def _loadable(config: CotuneConfig, dequantize: bool) -> CotuneConfig:
    return replace(config, model=dequantized(config.model)) if dequantize else config


def load_model(directory: str | Path, device=None, *, dequantize: bool = False) -> tuple[CotuneModel, CotuneConfig]:
    """Rebuilds the model from ``directory``'s config and loads its trainable weights (a merged
    directory: its backbones, folded layers and extras; the config has its paths resolved).
    ``dequantize``: as in :func:`load`; the returned config is then the dequantized one."""
    directory = Path(directory)
    if merged_manifest(directory) is not None:
        from cotune.model.merge_io import load_merged

        return load_merged(directory, device)
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a saved cotune model: {name} is missing")
    config = _loadable(load_config(directory / CONFIG), dequantize)
    model = build_model(config, device=device)
    model.load_trainable_state_dict(load_file(directory / WEIGHTS))
    return model, config
