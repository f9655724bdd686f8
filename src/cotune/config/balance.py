"""Typed configuration of CoMMIT-style balance: sides, the kappa estimator, the coordinated
learning-rate scheduler, the auxiliary regulariser and the baselines.

Everything beyond "kappa is a ratio of KL divergences of the output distribution, raised by a larger
encoder learning rate, averaged over windows of L steps" is a reconstruction (see docs/balance.md);
each reconstructed choice is an option here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cotune.config.io import ConfigError, check_choice

METHODS = ("constant", "feature_cd", "language_cd", "commit_clr", "commit")
ESTIMATORS = ("exact", "jvp", "none")
KAPPAS = ("encoder_share", "llm_share", "normalised_share", "direct_ratio")


@dataclass(frozen=True)
class BalanceConfig:
    """``sides``: side name -> parameter groups (component names; ``encoder.*`` style wildcards
    allowed). Default: ``S`` = every encoder, connector and the modality embedding, ``T`` = ``llm``;
    ``per_encoder: true`` makes one feature side per encoder (``S.<name>``: its encoder and connector,
    the modality embedding going to the first). The first side listed is the feature side whose
    share kappa reports."""

    method: str = "constant"
    estimator: str = "exact"
    every_k: int = 20
    kappa: str = "encoder_share"
    kl_direction: str = "forward"
    samples: str = "multimodal_only"
    reuse_training_logits: str = "auto"
    eps: float = 1e-12
    kl_floor: float = 1e-9
    sides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    per_encoder: bool = False
    window: int = 50
    aggregate: str = "mean"
    rule: str = "reference"
    clip_min: float = 0.1
    clip_max: float = 2.0
    gamma: float = 0.5
    start_step: int | None = None
    aux_weight: float = 0.1
    aux_target: str = "self_predict"
    cd_period: int = 1

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_choice("kappa", self.kappa, KAPPAS)
        check_choice("kl_direction", self.kl_direction, ("forward", "reverse", "symmetric"))
        check_choice("samples", self.samples, ("multimodal_only", "all"))
        check_choice("reuse_training_logits", self.reuse_training_logits, ("auto", "never"))
        check_choice("aggregate", self.aggregate, ("mean", "median"))
        check_choice("rule", self.rule, ("reference", "kl_equalise"))
        check_choice("aux_target", self.aux_target, ("self_predict", "entropy", "grad_norm"))
        for name in ("every_k", "window", "cd_period"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 < self.clip_min <= 1 <= self.clip_max:
            raise ConfigError(f"clip_min: need 0 < clip_min <= 1 <= clip_max, got [{self.clip_min}, {self.clip_max}]")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma: must be in (0, 1], got {self.gamma}")
        if self.aux_weight < 0:
            raise ConfigError(f"aux_weight: must be >= 0, got {self.aux_weight}")
        if self.method in ("commit_clr", "commit") and self.estimator == "none":
            raise ConfigError(f"estimator: method {self.method!r} needs kappa; choose exact or jvp")
        if self.sides and self.per_encoder:
            raise ConfigError("per_encoder: give either explicit sides or per_encoder, not both")
        if self.sides and len(self.sides) < 2:
            raise ConfigError("sides: need at least two sides")
