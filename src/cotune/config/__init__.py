"""Configuration: typed dataclasses, YAML io, dotted overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cotune.config.balance import BalanceConfig
from cotune.config.data import DataConfig, DatasetConfig
from cotune.fileio import atomic_write_text
from cotune.config.train import GroupConfig, GroupsConfig, TrainConfig
from cotune.config.io import (
    ConfigError,
    apply_overrides,
    config_hash,
    dump_yaml,
    from_dict,
    read_yaml,
    to_dict,
)
from cotune.config.model import (
    TEXT_KEY,
    AdapterConfig,
    ConnectorConfig,
    CotuneConfig,
    EncoderConfig,
    LLMConfig,
    ModelConfig,
    RoutingConfig,
    modality_key,
)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), data: dict | None = None) -> CotuneConfig:
    """Reads a YAML file (or ``data``), applies ``a.b=value`` overrides, validates, returns the config."""
    raw = read_yaml(path) if path is not None else (data or {})
    raw = apply_overrides(raw, overrides)
    try:
        return from_dict(CotuneConfig, raw)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(f"{path}: {err}") from None
        raise


def save_config(config: CotuneConfig, path: str | Path) -> Path:
    """Writes the resolved config as YAML that :func:`load_config` reads back unchanged."""
    return atomic_write_text(path, dump_yaml(config))


__all__ = [
    "TEXT_KEY", "AdapterConfig", "BalanceConfig", "ConfigError", "ConnectorConfig", "CotuneConfig", "DataConfig", "DatasetConfig",
    "EncoderConfig", "GroupConfig", "GroupsConfig", "TrainConfig",
    "LLMConfig", "ModelConfig", "RoutingConfig", "apply_overrides", "config_hash", "dump_yaml",
    "from_dict", "load_config", "modality_key", "read_yaml", "save_config", "to_dict",
]
