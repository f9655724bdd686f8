"""The trainer's counters, saved in every checkpoint's ``state.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TrainerState:
    """Where a run is. ``epoch_step``: optimizer steps done in the current epoch (the sampler
    position follows from it); ``dropped``: items dropped while loading, per dataset, so the data
    report of a resumed run still counts them."""

    step: int = 0
    epoch: int = 0
    epoch_step: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0
    bad_steps: int = 0
    consecutive_bad: int = 0
    config_hash: str = ""
    world_size: int = 1
    dropped: dict[str, list[list[str]]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainerState":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
