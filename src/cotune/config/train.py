"""Typed configuration of training: optimisation, per-component groups and schedules, checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

from cotune.config.io import ConfigError, check_choice

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class GroupConfig:
    """Overrides for one parameter group (unset fields fall back to the ``train`` defaults).

    ``start_step``: the group's learning rate is 0 before this optimizer step (delayed
    unfreezing); its warmup starts there.
    """

    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    warmup_epochs: float | None = None
    schedule: str | None = None
    min_lr_ratio: float | None = None
    start_step: int = 0

    def __post_init__(self) -> None:
        if self.schedule is not None:
            check_choice("schedule", self.schedule, SCHEDULES)
        _check_common(self)
        if self.start_step < 0:
            raise ConfigError(f"start_step: must be >= 0, got {self.start_step}")


@dataclass(frozen=True)
class GroupsConfig:
    """Per-component overrides, keyed like the components: ``llm``, ``modality_embedding``,
    ``encoder.<name>``, ``connector.<name>`` (e.g. ``--set train.groups.connector.image.lr=2e-4``)."""

    llm: GroupConfig = field(default_factory=GroupConfig)
    modality_embedding: GroupConfig = field(default_factory=GroupConfig)
    encoder: dict[str, GroupConfig] = field(default_factory=dict)
    connector: dict[str, GroupConfig] = field(default_factory=dict)

    def for_group(self, name: str) -> GroupConfig:
        kind, _, sub = name.partition(".")
        if sub:
            return getattr(self, kind).get(sub, GroupConfig())
        return getattr(self, kind)


def _check_common(cfg) -> None:
    if cfg.lr is not None and cfg.lr < 0:
        raise ConfigError(f"lr: must be >= 0, got {cfg.lr}")
    if cfg.weight_decay is not None and cfg.weight_decay < 0:
        raise ConfigError(f"weight_decay: must be >= 0, got {cfg.weight_decay}")
    if cfg.warmup_steps is not None and cfg.warmup_epochs is not None:
        raise ConfigError("warmup_steps: set warmup_steps or warmup_epochs, not both")
    if (cfg.warmup_steps or 0) < 0 or (cfg.warmup_epochs or 0) < 0:
        raise ConfigError("warmup_steps: warmup must be >= 0")
    if cfg.min_lr_ratio is not None and not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"min_lr_ratio: must be in [0, 1], got {cfg.min_lr_ratio}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run settings; the defaults of every parameter group.

    Length: ``epochs`` (may be fractional) unless ``max_steps`` is set. ``grad_accum`` micro-batches
    per optimizer step; the loss is normalised by the supervised tokens of the whole step (all
    micro-batches, all processes), so accumulation equals one big batch. ``max_grad_norm``: clip
    the global gradient norm (None: no clipping, as LaVIN). ``precision``: autocast dtype on CUDA
    (fp16 adds loss scaling). ``max_bad_steps``: consecutive non-finite steps tolerated before the
    run stops (after saving a checkpoint).
    """

    epochs: float = 1.0
    max_steps: int | None = None
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int | None = None
    warmup_epochs: float | None = None
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    log_every: int = 1
    eval_every: int | None = None
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_bad_steps: int = 5
    report_to: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        _check_common(self)
        if self.epochs <= 0:
            raise ConfigError(f"epochs: must be > 0, got {self.epochs}")
        for name in ("grad_accum", "log_every", "checkpoint_every", "keep_checkpoints", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1, got {self.max_steps}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ConfigError(f"eval_every: must be >= 1, got {self.eval_every}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas: two numbers in [0, 1), got {list(self.betas)}")
        if not self.eps > 0:
            raise ConfigError(f"eps: must be > 0 (Adam divides by sqrt(v) + eps), got {self.eps}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm: must be > 0 or null, got {self.max_grad_norm}")
        for sink in self.report_to:
            check_choice("report_to", sink, ("tensorboard", "wandb"))
