"""Balance methods as strategies: what each method does to a training step, behind the few named
points the trainer calls. Every strategy shares a :class:`~cotune.balance.kappa.KappaMonitor`
(estimates are logged under every method, so ``constant`` runs show kappa too).

In a step's order the trainer calls:

1. ``forward_context()`` around each micro-batch's forward, then ``after_forward(step, batch, out,
   loss, fraction, last)`` (the regulariser's gradient; the "before" logits of an estimate);
2. ``after_backward(world, all_reduce, loss_scale)`` once the step's backward is done;
3. ``restrict_update(step)`` before clipping: the parameter groups that move (None: all), the
   others' gradients dropped;
4. ``lr_multipliers()`` when the learning rates are set;
5. ``before_update(step)`` right before the optimizer step, ``after_update(step, batch, norms)``
   right after it (returns the step's ``balance/...`` metrics);
6. ``state_dict()`` / ``load_state_dict()`` for checkpoints.

| method | strategy |
|---|---|
| ``constant`` | :class:`BalanceStrategy` (every side at its configured rate) |
| ``feature_cd``, ``language_cd`` | :class:`CoordinateDescent` (one side moves per ``cd_period`` steps) |
| ``commit_clr`` | :class:`CoordinatedRates` (per-side multipliers from kappa's windows) |
| ``commit`` | :class:`Commit` (coordinated rates and the regulariser for lagging sides) |
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from cotune.balance.kappa import KappaMonitor
from cotune.balance.regularizer import Regulariser, lag_weights
from cotune.config import BalanceConfig
from cotune.registry import Registry

STRATEGIES: Registry = Registry("balance method")


@STRATEGIES.register("constant")
class BalanceStrategy:
    """``constant``, and the base of the others: every side at its configured learning rate; kappa
    is still estimated and logged."""

    def __init__(self, config: BalanceConfig, monitor: KappaMonitor, precision: str = "fp32") -> None:
        self.config, self.monitor, self.precision = config, monitor, precision

    @property
    def sides(self) -> dict[str, list[str]]:
        return self.monitor.sides

    @property
    def params(self) -> dict[str, list[torch.nn.Parameter]]:
        return self.monitor.params

    def forward_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def after_forward(self, step: int, batch: dict, out, loss: torch.Tensor, fraction: float, last: bool) -> float:
        """After micro-batch ``batch``'s forward (``out``: the model's output, ``loss``: its scaled
        training loss, ``fraction``: its share of the step's supervised tokens, ``last``: the step's
        last micro-batch). Returns the regulariser's value (0 without one)."""
        if last and self.monitor.reuses_training_logits(step, self.precision):
            self.monitor.capture(batch, out.logits, out.logit_positions)
        return 0.0

    def after_backward(self, world: int, all_reduce: Callable[[torch.Tensor], torch.Tensor], loss_scale: float = 1.0) -> None:
        """Once the step's backward is done (gradients still carry fp16's ``loss_scale``)."""

    def restrict_update(self, step: int) -> set[str] | None:
        """The parameter groups that move at ``step`` (None: all of them)."""
        return None

    def lr_multipliers(self) -> dict[str, float]:
        """Parameter group -> factor on its scheduled learning rate (missing: 1)."""
        return {}

    def before_update(self, step: int) -> None:
        self.monitor.before_update(step)

    def after_update(self, step: int, batch: dict, group_norms: dict[str, float]) -> dict[str, float]:
        """The step's ``balance/...`` metrics: the estimate if one was due, window results, the
        multipliers applied and the gradient norm per side."""
        record, window_ended = self.monitor.after_update(step, batch)
        if window_ended:
            self.on_window(self.monitor.scheduler.last_shares)
        applied = self.lr_multipliers()
        # Every group of a side has the side's multiplier (resolve_sides keeps no side without a group).
        record.update({f"balance/multiplier/{side}": applied.get(groups[0], 1.0) for side, groups in self.sides.items()})
        record.update(self.monitor.side_norms(group_norms))
        return record

    def on_window(self, shares: dict[str, float]) -> None:
        """A window ended with these mean shares per side."""

    def state_dict(self) -> dict:
        # "lag" stays in every method's state so checkpoints of any method read alike.
        return {"scheduler": self.monitor.scheduler.state_dict(), "lag": {side: 0.0 for side in self.sides}}

    def load_state_dict(self, state: dict) -> None:
        self.monitor.scheduler.load_state_dict(state["scheduler"])


class CoordinateDescent(BalanceStrategy):
    """``feature_cd`` / ``language_cd``: one side moves per ``cd_period`` steps, in turn, starting
    with the feature side(s) or with the LLM side; the others get no gradient, so AdamW neither
    moves them nor updates their moments."""

    first_side = "feature"

    def active_side(self, step: int) -> str | None:
        if not self.monitor.enabled:
            return None
        order = list(self.sides) if self.first_side == "feature" else list(reversed(self.sides))
        return order[(step // self.config.cd_period) % len(order)]

    def restrict_update(self, step: int) -> set[str] | None:
        active = self.active_side(step)
        if active is None:
            return None
        for side, params in self.params.items():
            if side != active:
                for p in params:
                    p.grad = None
        return set(self.sides[active])


@STRATEGIES.register("feature_cd")
class FeatureFirst(CoordinateDescent):
    first_side = "feature"


@STRATEGIES.register("language_cd")
class LanguageFirst(CoordinateDescent):
    first_side = "language"


@STRATEGIES.register("commit_clr")
class CoordinatedRates(BalanceStrategy):
    """``commit_clr``: each side's learning rate times the multiplier its kappa windows set
    (:class:`~cotune.balance.scheduler.BalanceScheduler`)."""

    def lr_multipliers(self) -> dict[str, float]:
        multipliers = self.monitor.scheduler.multipliers
        return {group: multipliers[side] for group, side in self.monitor.group_side.items()}


@STRATEGIES.register("commit")
class Commit(CoordinatedRates):
    """``commit``: coordinated rates plus the regulariser, whose gradient reaches the sides that lag
    in moving the output (:class:`~cotune.balance.regularizer.Regulariser`)."""

    def __init__(self, config: BalanceConfig, monitor: KappaMonitor, precision: str = "fp32") -> None:
        super().__init__(config, monitor, precision)
        self.regulariser = Regulariser(config, monitor.params)
        self._value = 0.0  # the regulariser's value summed over the step's micro-batches
        self._step_value = 0.0

    @property
    def lag(self) -> dict[str, float]:
        return self.regulariser.lag

    @lag.setter
    def lag(self, value: dict[str, float]) -> None:
        self.regulariser.lag = dict(value)

    def forward_context(self) -> contextlib.AbstractContextManager:
        return self.regulariser.forward_context()

    def after_forward(self, step: int, batch: dict, out, loss: torch.Tensor, fraction: float, last: bool) -> float:
        super().after_forward(step, batch, out, loss, fraction, last)
        if not self.regulariser.active():
            return 0.0
        labels = batch["labels"].to(out.logits.device)
        value = self.regulariser.add(out.logits, labels, fraction, out.logit_positions, main_loss=loss)
        self._value += value
        return value

    def after_backward(self, world: int, all_reduce: Callable[[torch.Tensor], torch.Tensor], loss_scale: float = 1.0) -> None:
        self.regulariser.apply(world, all_reduce, loss_scale)
        self._step_value, self._value = self._value, 0.0

    def on_window(self, shares: dict[str, float]) -> None:
        self.lag = lag_weights(shares)

    def after_update(self, step: int, batch: dict, group_norms: dict[str, float]) -> dict[str, float]:
        record = super().after_update(step, batch, group_norms)
        record.update({f"balance/lag/{side}": v for side, v in self.lag.items()})
        if self.regulariser.active() or self._step_value:  # from the window that switched it on
            record["balance/aux_loss"] = self._step_value
        return record

    def state_dict(self) -> dict:
        return {**super().state_dict(), "lag": dict(self.lag)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.lag = {side: float(state["lag"][side]) for side in self.sides}


def make_balance(config: BalanceConfig, model, optimizer, start_step: int, reduce: Callable[[float], float],
                 precision: str = "fp32") -> BalanceStrategy:
    """The strategy of ``config.method`` over the optimizer's parameter groups. ``start_step``: the
    first step whose estimates count (default end of warm-up); ``reduce(x)`` sums a float over
    processes; ``precision``: ``train.precision`` (only fp32 forwards can serve as an estimate's
    "before" distribution)."""
    monitor = KappaMonitor(config, model, optimizer, start_step, reduce)
    return STRATEGIES.get(config.method, key="balance.method")(config, monitor, precision)
