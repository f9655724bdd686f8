"""The trainer-facing part of balance: sides, estimation schedule, multipliers, CD, regulariser."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable

import torch

from cotune.balance.estimator import ESTIMATORS, Estimate, snapshot
from cotune.balance.regularizer import aux_loss, lag_weights
from cotune.balance.scheduler import BalanceScheduler
from cotune.balance.sides import resolve_sides
from cotune.config import BalanceConfig

log = logging.getLogger(__name__)


class BalanceController:
    """Owns the balance state of a run. ``reduce(x)`` sums a float over processes."""

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
        self.lag = {side: 0.0 for side in self.sides}
        self._before = None
        self._before_logits = None
        self._aux_grads: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ schedule
    def due(self, step: int) -> bool:
        """Estimate on optimizer step ``step`` (0-based)?"""
        return self.enabled and self.config.estimator != "none" and step % self.config.every_k == 0

    def group_multipliers(self) -> dict[str, float]:
        if self.config.method not in ("commit_clr", "commit"):
            return {}
        return {group: self.scheduler.multipliers[side] for group, side in self.group_side.items()}

    # ------------------------------------------------------------------ coordinate descent
    def active_side(self, step: int) -> str | None:
        """The side a CD baseline moves at ``step`` (None: all sides move)."""
        if self.config.method not in ("feature_cd", "language_cd") or not self.enabled:
            return None
        order = list(self.sides) if self.config.method == "feature_cd" else list(reversed(self.sides))
        return order[(step // self.config.cd_period) % len(order)]

    def active_groups(self, step: int) -> set[str] | None:
        """Parameter groups that move at ``step`` under a CD baseline (None: all of them)."""
        active = self.active_side(step)
        return None if active is None else set(self.sides[active])

    def drop_inactive_gradients(self, step: int) -> None:
        """CD: the other sides get no gradient, so AdamW neither moves them nor updates their moments."""
        active = self.active_side(step)
        if active is None:
            return
        for side, params in self.params.items():
            if side != active:
                for p in params:
                    p.grad = None

    # ------------------------------------------------------------------ regulariser
    def aux_active(self) -> bool:
        return self.config.method == "commit" and self.config.aux_weight > 0 and any(v > 0 for v in self.lag.values())

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Context for the training forward: ``grad_norm`` back-propagates through a backward, and
        only PyTorch's math attention kernel has a double backward (the fused ones have none)."""
        if self.aux_active() and self.config.aux_target == "grad_norm":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()

    def add_aux(self, logits: torch.Tensor, labels: torch.Tensor, fraction: float, positions: torch.Tensor | None = None,
                main_loss: torch.Tensor | None = None) -> float:
        """Accumulates the regulariser's gradient for lagging sides (graph kept for the main backward).
        logits [B, S, V] or [B, K, V] at ``positions``; labels [B, S]; ``main_loss``: the micro-batch's
        scalar training loss (needed by ``aux_target: grad_norm``). Returns the regulariser's value."""
        lagging = {side: [p for p in ps if p.requires_grad] for side, ps in self.params.items() if self.lag[side] > 0}
        if self.config.aux_target == "grad_norm":
            if main_loss is None:
                raise ValueError("aux_target grad_norm needs the micro-batch's training loss (main_loss)")
            return self._add_grad_norm(main_loss, lagging)
        loss = aux_loss(logits, labels, self.config.aux_target, positions) * fraction
        flat = [(side, p) for side, ps in lagging.items() for p in ps]
        grads = torch.autograd.grad(loss, [p for _s, p in flat], retain_graph=True, allow_unused=True)
        for (side, p), g in zip(flat, grads):
            self._accumulate_aux(p, g, self.config.aux_weight * self.lag[side])
        return float(loss.detach())

    def _add_grad_norm(self, main_loss: torch.Tensor, lagging: dict[str, list[torch.nn.Parameter]]) -> float:
        """The ``grad_norm`` variant: L_gn = -sum_X lambda l_X ||grad_X L_main||_2 over lagging sides X,
        its gradient (a Hessian-vector product: one double backward per lagging side) routed to X's
        own parameters only, like option A's. The norm is the micro-batch's (with grad_accum > 1 it is
        not the step's)."""
        value = 0.0
        for side, params in lagging.items():
            grads = torch.autograd.grad(main_loss, params, create_graph=True, allow_unused=True)
            present = [g for g in grads if g is not None]
            if not present:
                continue
            norm = torch.sqrt(sum(g.float().pow(2).sum() for g in present))
            weight = self.config.aux_weight * self.lag[side]
            if norm.requires_grad and float(norm.detach()) > 0:
                hvp = torch.autograd.grad(norm, params, retain_graph=True, allow_unused=True)
                for p, h in zip(params, hvp):
                    self._accumulate_aux(p, h, -weight)
            value -= weight * float(norm.detach())
        return value

    def _accumulate_aux(self, param: torch.nn.Parameter, grad: torch.Tensor | None, scale: float) -> None:
        scaled = torch.zeros_like(param, dtype=torch.float32) if grad is None else grad.detach().float() * scale
        self._aux_grads[id(param)] = self._aux_grads.get(id(param), 0) + scaled

    def apply_aux(self, world: int, all_reduce: Callable[[torch.Tensor], torch.Tensor], loss_scale: float = 1.0) -> None:
        """Adds the accumulated regulariser gradients (averaged over processes, times ``loss_scale``,
        the fp16 GradScaler's current scale, which the main gradients still carry) into ``.grad``."""
        if not self._aux_grads:
            return
        for params in self.params.values():
            for p in params:
                g = self._aux_grads.get(id(p))
                if g is None:  # same on every process: lag weights and sides are global
                    continue
                g = all_reduce(g) / world if world > 1 else g
                g = g * loss_scale if loss_scale != 1.0 else g
                p.grad = g.to(p.dtype) if p.grad is None else p.grad + g.to(p.grad.dtype)
        self._aux_grads = {}

    # ------------------------------------------------------------------ estimation
    def reuses_training_logits(self, step: int, precision: str) -> bool:
        """Whether the training forward of ``step`` gives the "before" distribution: only for the
        exact estimator, without autocast and with no active dropout anywhere in the model."""
        if self.config.reuse_training_logits == "never" or self.config.estimator != "exact" or not self.due(step):
            return False
        dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in self.model.modules())
        return precision == "fp32" and not dropout

    def capture_training_logits(self, batch: dict, logits: torch.Tensor, positions: torch.Tensor | None = None) -> None:
        from cotune.balance.estimator import select_supervised

        self._before_logits = select_supervised(self.model, batch, logits.detach(), self.config.samples, positions)

    def before_step(self, step: int) -> None:
        self._before = snapshot(self.params) if self.due(step) else None

    def after_step(self, step: int, batch: dict) -> dict[str, float]:
        """Estimates kappa if due (then restores the parameters bit-exactly), updates windows."""
        record: dict[str, float] = {}
        if self._before is not None:
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
            record.update(self.scheduler.observe(step + 1, estimate))
            for side in self.sides:
                record[f"balance/update_norm/{side}"] = math.sqrt(sum(float((a - b).float().pow(2).sum()) for a, b in zip(after[side], self._before[side])))
            self._before = None
        window = self.scheduler.end_of_step(step + 1)
        if "balance/kappa_bar" in window:
            self.lag = lag_weights(self.scheduler.last_shares)
        record.update(window)
        # Log the multipliers actually applied: methods without the scheduler keep every side at 1.
        applied = self.config.method in ("commit_clr", "commit")
        record.update({f"balance/multiplier/{side}": m if applied else 1.0 for side, m in self.scheduler.multipliers.items()})
        if self.config.method == "commit":
            record.update({f"balance/lag/{side}": v for side, v in self.lag.items()})
        return record

    def side_norms(self, group_norms: dict[str, float]) -> dict[str, float]:
        squares: dict[str, float] = {}
        for group, norm in group_norms.items():
            side = self.group_side.get(group)
            if side is not None:
                squares[side] = squares.get(side, 0.0) + norm * norm
        return {f"balance/grad_norm/{side}": math.sqrt(v) for side, v in squares.items()}

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(), "lag": dict(self.lag)}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.lag = {side: float(state["lag"][side]) for side in self.sides}
