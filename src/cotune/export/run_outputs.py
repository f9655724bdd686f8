"""What a finished training run writes beside cotune's own model: PEFT folders and a model card."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from cotune.config import CotuneConfig
from cotune.export.card import run_card_facts, write_card
from cotune.export.peft_adapters import write_peft_adapters
from cotune.rundir import RunDir


def write_run_outputs(model, config: CotuneConfig, run_dir: str | Path, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, Path]:
    """``RUN/model/peft/<component>/`` for every LoRA component and ``RUN/README.md``; returns the
    PEFT folders. ``state``: the whole trainable tensors when the model's parameters are shards."""
    run = RunDir(run_dir)
    folders = write_peft_adapters(model, config, run.peft_dir, state)
    write_card(run.path, config, run.path, run_card_facts(run.path, {c: f.relative_to(run.path) for c, f in folders.items()}))
    return folders
