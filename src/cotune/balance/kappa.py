"""Kappa monitoring shared by every balance strategy: the sides, when to estimate, the estimate
around an optimizer step, and the windows that turn estimates into per-side shares and multipliers."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from cotune.balance.estimator import ESTIMATORS, Estimate, select_supervised, snapshot
from cotune.balance.scheduler import BalanceScheduler
from cotune.balance.sides import resolve_sides
from cotune.config import BalanceConfig

log = logging.getLogger(__name__)


class KappaMonitor:
    """Sides of a run and their kappa estimates. ``reduce(x)`` sums a float over processes.

    The trainer's order on a step the monitor is due: the training forward (whose logits may be
    the "before" distribution: :meth:`capture`), backward, :meth:`before_update` (snapshot),
    optimizer step, :meth:`after_update` (estimate, then window bookkeeping)."""

    def __init__(self, config: BalanceConfig, model, optimizer, start_step: int, reduce: Callable[[float], float]) -> None:
        self.config, self.model, self.reduce = config, model, reduce
        groups = list(dict.fromkeys(g["group"] for g in optimizer.param_groups))
        self.sides = resolve_sides(config, groups)
        self.group_side = {g: side for side, gs in self.sides.items() for g in gs}
        self.params: dict[str, list[torch.nn.Parameter]] = {side: [] for side in self.sides}
        for group in optimizer.param_groups:
            self.params[self.group_side[group["group"]]].extend(group["params"])
        self.enabled = len(self.sides) >= 2
        if not self.enabled:
            log.warning("balance: fewer than two sides have trainable parameters (%s); kappa is not estimated", self.sides)
        start = config.start_step if config.start_step is not None else start_step
        self.scheduler = BalanceScheduler(config, list(self.sides), start)
        self._before = None
        self._before_logits = None

    def due(self, step: int) -> bool:
        """Estimate on optimizer step ``step`` (0-based)?"""
        return self.enabled and self.config.estimator != "none" and step % self.config.every_k == 0

    def reuses_training_logits(self, step: int, precision: str) -> bool:
        """Whether the training forward of ``step`` gives the "before" distribution: only for the
        exact estimator, without autocast and with no active dropout anywhere in the model."""
        if self.config.reuse_training_logits == "never" or self.config.estimator != "exact" or not self.due(step):
            return False
        dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in self.model.modules())
        return precision == "fp32" and not dropout

    def capture(self, batch: dict, logits: torch.Tensor, positions: torch.Tensor | None = None) -> None:
        """Keeps the training forward's supervised logits [B, S, V] (or [B, K, V] at ``positions``)."""
        self._before_logits = select_supervised(self.model, batch, logits.detach(), self.config.samples, positions)

    def before_update(self, step: int) -> None:
        self._before = snapshot(self.params) if self.due(step) else None

    def after_update(self, step: int, batch: dict) -> tuple[dict[str, float], bool]:
        """Estimates kappa if due (then restores the parameters bit-exactly) and closes a window when
        one ends. Returns (the step's balance record, whether a window ended with new shares)."""
        record: dict[str, float] = {}
        if self._before is not None:
            record.update(self._estimate(step, batch))
        window = self.scheduler.end_of_step(step + 1)
        record.update(window)
        return record, "balance/kappa_bar" in window

    def _estimate(self, step: int, batch: dict) -> dict[str, float]:
        after = snapshot(self.params)
        extra = {"before_logits": self._before_logits} if self._before_logits is not None else {}
        estimate: Estimate = ESTIMATORS[self.config.estimator](
            self.model, batch, self.params, self._before, after, self.config.samples, self.config.kl_direction, **extra
        )
        self._before_logits = None
        estimate.positions = int(self.reduce(estimate.positions))
        # Every process reduces every side (one may have had no multimodal position: zeros).
        estimate.kl = {side: self.reduce(estimate.kl.get(side, 0.0)) for side in self.sides}
        estimate.kl_joint = self.reduce(estimate.kl_joint)
        record = self.scheduler.observe(step + 1, estimate)
        for side in self.sides:
            moved = sum(float((a - b).float().pow(2).sum()) for a, b in zip(after[side], self._before[side]))
            record[f"balance/update_norm/{side}"] = math.sqrt(moved)
        self._before = None
        return record

    def side_norms(self, group_norms: dict[str, float]) -> dict[str, float]:
        """``balance/grad_norm/<side>`` from the step's gradient norm per parameter group."""
        squares: dict[str, float] = {}
        for group, norm in group_norms.items():
            side = self.group_side.get(group)
            if side is not None:
                squares[side] = squares.get(side, 0.0) + norm * norm
        return {f"balance/grad_norm/{side}": math.sqrt(v) for side, v in squares.items()}
