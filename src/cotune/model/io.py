"""Saving and loading an assembled model as a small directory: resolved config + trainable weights.

Layout: ``config.yaml`` (the full resolved CotuneConfig), ``trainable.safetensors`` (exactly the
trainable parameters) and ``manifest.json`` (config hash, counts, format version). Backbones are
not copied: they are re-read from the config's ``name_or_path`` entries. Files are written to a
temporary name, fsynced and renamed, so an interrupted save never leaves a half-written file.

Loading a saved, merged or run directory is :class:`cotune.rundir.RunDir`'s job (``cotune.load``).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from cotune.config import CotuneConfig, config_hash, save_config
from cotune.fileio import atomic_write, atomic_write_text
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
        raise ValueError("a merged model is written by cotune.merge.model.merge_model(model, directory), not save_model")
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
