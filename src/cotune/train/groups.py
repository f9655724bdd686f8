"""Parameter groups per component, their resolved settings, and the coverage check.

Group names are the component names (``llm``, ``encoder.<name>``, ``connector.<name>``,
``modality_embedding``): the same vocabulary the balance scheduler, the logs and the checkpoints
use. Each group becomes two optimizer groups: matrices with weight decay, and 1-D tensors (biases,
norms, gains) without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from cotune.config import GroupConfig, TrainConfig


class GroupCoverageError(RuntimeError):
    """A trainable parameter belongs to no group or to several."""


@dataclass(frozen=True)
class GroupSettings:
    """A group's resolved schedule: peak ``lr``, ``weight_decay``, ``warmup`` steps, ``schedule``,
    ``min_lr_ratio`` and ``start_step``."""

    name: str
    lr: float
    weight_decay: float
    warmup: int
    schedule: str
    min_lr_ratio: float
    start_step: int


def resolve_settings(name: str, train: TrainConfig, steps_per_epoch: int) -> GroupSettings:
    group: GroupConfig = train.groups.for_group(name)

    def pick(field: str):
        value = getattr(group, field)
        return getattr(train, field) if value is None else value

    if group.warmup_steps is not None or group.warmup_epochs is not None:
        warmup_steps, warmup_epochs = group.warmup_steps, group.warmup_epochs
    else:
        warmup_steps, warmup_epochs = train.warmup_steps, train.warmup_epochs
    warmup = warmup_steps if warmup_steps is not None else math.ceil((warmup_epochs or 0) * steps_per_epoch)
    return GroupSettings(name, pick("lr"), pick("weight_decay"), warmup, pick("schedule"), pick("min_lr_ratio"), group.start_step)


def check_group_names(train: TrainConfig, components: list[str]) -> None:
    """Group overrides must name existing components."""
    from cotune.config import ConfigError

    for kind in ("encoder", "connector"):
        for sub in getattr(train.groups, kind):
            if f"{kind}.{sub}" not in components:
                raise ConfigError(f"train.groups.{kind}.{sub}: no such component; components: {', '.join(components)}")


def component_parameters(model) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters per component, checked: each in exactly one component."""
    owner: dict[int, str] = {}
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for component, module in model.components().items():
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if id(p) in owner:
                raise GroupCoverageError(f"{component}.{name} is also in group {owner[id(p)]}")
            owner[id(p)] = component
            groups.setdefault(component, []).append((name, p))
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in owner]
    if missing:
        raise GroupCoverageError(f"trainable parameters in no group: {missing[:5]}")
    return groups


def optimizer_groups(model, train: TrainConfig, steps_per_epoch: int) -> tuple[list[dict], dict[str, GroupSettings]]:
    """torch optimizer param groups (two per component: decay / no decay) and settings by group."""
    parameters = component_parameters(model)
    check_group_names(train, list(model.components()))
    param_groups, settings = [], {}
    for name, named in parameters.items():
        settings[name] = resolve_settings(name, train, steps_per_epoch)
        decay = [p for _n, p in named if p.ndim >= 2]
        no_decay = [p for _n, p in named if p.ndim < 2]
        for params, weight_decay in ((decay, settings[name].weight_decay), (no_decay, 0.0)):
            if params:
                param_groups.append({"params": params, "group": name, "weight_decay": weight_decay, "lr": 0.0})
    return param_groups, settings
