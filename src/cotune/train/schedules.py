"""Learning-rate schedules per group: pure functions of the optimizer step (nothing to save)."""

from __future__ import annotations

import math

from cotune.train.groups import GroupSettings


def lr_multiplier(settings: GroupSettings, step: int, total_steps: int) -> float:
    """Factor in [0, 1] applied to the group's peak lr at optimizer step ``step`` (0-based).

    0 before ``start_step``; linear warmup over ``warmup`` steps from there (reaching the peak at
    the end of warmup, LaVIN's per-iteration warmup); then ``cosine`` (half cycle) or ``linear``
    decay to ``min_lr_ratio`` at ``total_steps``, or ``constant``.
    """
    local = step - settings.start_step
    if local < 0:
        return 0.0
    if settings.warmup > 0 and local < settings.warmup:
        return (local + 1) / settings.warmup
    span = max(1, total_steps - settings.start_step - settings.warmup)
    progress = min(1.0, (local - settings.warmup) / span)
    floor = settings.min_lr_ratio
    if settings.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if settings.schedule == "linear":
        return floor + (1 - floor) * (1 - progress)
    return 1.0
