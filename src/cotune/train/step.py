"""One optimizer update from gradients already accumulated: unscale, finite check, the balance
strategy's restriction, clipping, the learning-rate schedule, the step."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cotune.balance import BalanceStrategy
from cotune.train.schedules import lr_multiplier

log = logging.getLogger(__name__)


def make_optimizer(param_groups, train) -> torch.optim.Optimizer:
    """AdamW over ``param_groups`` (learning rates are set every step), fused where the device has it."""
    kwargs = {"betas": tuple(train.betas), "eps": train.eps}
    try:
        return torch.optim.AdamW(param_groups, lr=0.0, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # fused kernels missing for this device/dtype
        return torch.optim.AdamW(param_groups, lr=0.0, foreach=True, **kwargs)


@dataclass
class Update:
    """What one update did: ``applied`` (False: a non-finite loss or gradient, no update), the
    gradient norm per parameter group, and the metrics of the update (learning rates, balance)."""

    applied: bool
    norms: dict[str, float]
    record: dict[str, float] = field(default_factory=dict)


class OptimizerStep:
    """Applies the accumulated gradients of one training step.

    ``settings``: parameter group -> its schedule (:mod:`cotune.train.groups`); ``scaler``: fp16's
    GradScaler or None; ``sum_over_processes``: all-reduce (sum) of a float64 tensor when every
    process holds a disjoint slice of each gradient (FSDP), else None."""

    def __init__(self, model, optimizer, settings: dict, balance: BalanceStrategy, max_grad_norm: float | None,
                 total_steps: int, scaler=None, sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.model, self.optimizer, self.settings, self.balance = model, optimizer, settings, balance
        self.max_grad_norm, self.total_steps, self.scaler = max_grad_norm, total_steps, scaler
        self.sum_over_processes = sum_over_processes

    def __call__(self, step: int, loss: float, batch: dict) -> Update:
        """Updates the parameters at 0-based ``step`` unless ``loss`` or a gradient is not finite
        (then the gradients are dropped, and fp16's loss scale lowered). ``batch``: the step's last
        micro-batch (for a kappa estimate)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norms = self.group_norms()
        total = math.sqrt(sum(v * v for v in norms.values()))
        if not (math.isfinite(loss) and math.isfinite(total)):
            self.optimizer.zero_grad(set_to_none=True)
            log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s); skipped", step + 1, loss, total)
            if self.scaler is not None:
                self.scaler.update()  # lowers the loss scale after an overflow
            return Update(False, norms)
        active = self.balance.restrict_update(step)
        self._clip(total if active is None else math.sqrt(sum(v * v for g, v in norms.items() if g in active)))
        rates = self._set_learning_rates(step)
        self.balance.before_update(step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        record = {f"lr/{k}": v for k, v in rates.items()}
        record.update(self.balance.after_update(step, batch, norms))
        return Update(True, norms, record)

    def group_norms(self) -> dict[str, float]:
        """The gradient's L2 norm per parameter group (over all processes' slices under FSDP)."""
        squares: dict[str, float] = {}
        for group in self.optimizer.param_groups:
            total = sum(float(p.grad.detach().float().pow(2).sum()) for p in group["params"] if p.grad is not None)
            squares[group["group"]] = squares.get(group["group"], 0.0) + total
        if self.sum_over_processes is not None:
            names = sorted(squares)
            local = torch.tensor([squares[n] for n in names], dtype=torch.float64)
            squares = dict(zip(names, self.sum_over_processes(local).tolist()))
        return {name: math.sqrt(value) for name, value in squares.items()}

    def _clip(self, norm: float) -> None:
        if self.max_grad_norm is not None and norm > self.max_grad_norm:
            coefficient = self.max_grad_norm / (norm + 1e-6)
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(coefficient)

    def _set_learning_rates(self, step: int) -> dict[str, float]:
        """Each group's scheduled rate at ``step`` times the balance strategy's multiplier."""
        rates = {}
        scale = self.balance.lr_multipliers()
        for group in self.optimizer.param_groups:
            settings = self.settings[group["group"]]
            group["lr"] = settings.lr * lr_multiplier(settings, step, self.total_steps) * scale.get(group["group"], 1.0)
            rates[group["group"]] = group["lr"]
        return rates
