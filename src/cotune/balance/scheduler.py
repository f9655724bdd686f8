"""kappa from KLs, window means, and the coordinated learning-rate multipliers per side.

Shares: with two sides (feature side S first, LLM side T last) ``kappa`` is one of
``encoder_share`` KL_S / KL_J (default), ``llm_share`` KL_T / KL_J, ``normalised_share``
KL_S / (KL_S + KL_T) or ``direct_ratio`` KL_S / KL_T; the scheduler always consumes the encoder share
s in [0, 1] (1 - llm_share, r / (1 + r) for the ratio). With more sides every side's share is
KL_X / sum of the KLs. Multipliers change only at window ends and hold through the next window.
"""

from __future__ import annotations

import math
import statistics

from cotune.balance.estimator import Estimate
from cotune.config import BalanceConfig

KL_EQUALISE_MAX = 10.0


def kappa_of(config: BalanceConfig, sides: list[str], kl: dict[str, float], kl_joint: float) -> tuple[float, dict[str, float]]:
    """(kappa as configured, unclipped; the share s_X in [0, 1] of every side). NaN when invalid."""
    eps = config.eps
    if kl_joint < config.kl_floor and all(v < config.kl_floor for v in kl.values()):
        return math.nan, {side: math.nan for side in sides}
    if len(sides) > 2:
        total = sum(kl.values())
        shares = {side: kl[side] / max(total, eps) for side in sides}
        return shares[sides[0]], shares
    s_name, t_name = sides
    ks, kt = kl[s_name], kl[t_name]
    if config.kappa == "encoder_share":
        kappa = ks / max(kl_joint, eps)
        share = kappa
    elif config.kappa == "llm_share":
        kappa = kt / max(kl_joint, eps)
        share = 1 - kappa
    elif config.kappa == "normalised_share":
        kappa = ks / max(ks + kt, eps)
        share = kappa
    else:
        kappa = ks / max(kt, eps)
        share = kappa / (1 + kappa)
    share = min(1.0, max(0.0, share))
    return kappa, {s_name: share, t_name: 1 - share}


class BalanceScheduler:
    """Collects shares and KLs per window and sets the per-side multipliers at window ends."""

    def __init__(self, config: BalanceConfig, sides: list[str], start_step: int) -> None:
        self.config, self.sides, self.start_step = config, list(sides), start_step
        self.multipliers = {side: 1.0 for side in self.sides}
        self.shares: list[dict[str, float]] = []
        self.kl_sums = {side: 0.0 for side in self.sides}
        self.kl_count = 0
        self.windows = 0
        self.last_shares: dict[str, float] | None = None

    def observe(self, step: int, estimate: Estimate) -> dict[str, float]:
        """Adds one estimate (already reduced over processes) made after optimizer step ``step``."""
        n = max(estimate.positions, 1)
        kl = {side: estimate.kl.get(side, 0.0) / n for side in self.sides}  # no positions: all 0, invalid
        kl_joint = estimate.kl_joint / n
        kappa, shares = kappa_of(self.config, self.sides, kl, kl_joint)
        record = {"balance/kappa_raw": kappa, "balance/kl_joint": kl_joint, "balance/kl_interaction": kl_joint - sum(kl.values()),
                  "balance/estimate_seconds": estimate.seconds, "balance/valid": float(not math.isnan(kappa))}
        record["balance/kappa"] = shares[self.sides[0]] if len(self.sides) == 2 and self.config.kappa in ("encoder_share", "normalised_share") else kappa
        for side in self.sides:
            record[f"balance/kl/{side}"] = kl[side]
            record[f"balance/share/{side}"] = shares[side]
        if not math.isnan(kappa) and step >= self.start_step:
            self.shares.append(shares)
            for side in self.sides:
                self.kl_sums[side] += kl[side]
            self.kl_count += 1
        return record

    def end_of_step(self, step: int) -> dict[str, float]:
        """After optimizer step ``step`` (1-based count of steps done): at a window end, new multipliers."""
        if step < self.start_step or (step - self.start_step) % self.config.window or step == self.start_step:
            return {}
        record = {}
        if self.shares:
            pick = statistics.median if self.config.aggregate == "median" else statistics.fmean
            mean_share = {side: pick([s[side] for s in self.shares]) for side in self.sides}
            mean_kl = {side: self.kl_sums[side] / self.kl_count for side in self.sides}
            self.multipliers = self._rule(mean_share, mean_kl)
            self.last_shares = mean_share
            record["balance/kappa_bar"] = mean_share[self.sides[0]]
            record.update({f"balance/kl_bar/{side}": mean_kl[side] for side in self.sides})
        self.windows += 1
        self.shares, self.kl_sums, self.kl_count = [], {side: 0.0 for side in self.sides}, 0
        record.update({f"balance/rule_multiplier/{side}": m for side, m in self.multipliers.items()})
        return record

    def _clip(self, value: float, high: float) -> float:
        return min(high, max(self.config.clip_min, value))

    def _rule(self, share: dict[str, float], kl: dict[str, float]) -> dict[str, float]:
        n = len(self.sides)
        if self.config.rule == "reference":
            return {side: self._clip(2 - n * share[side], self.config.clip_max) for side in self.sides}
        floor = self.config.eps
        geometric = math.exp(sum(math.log(max(kl[s], floor)) for s in self.sides) / n)
        high = max(self.config.clip_max, KL_EQUALISE_MAX)
        return {
            side: self._clip(self.multipliers[side] * (geometric / max(kl[side], floor)) ** (self.config.gamma / 2), high)
            for side in self.sides
        }

    def state_dict(self) -> dict:
        return {"multipliers": dict(self.multipliers), "shares": list(self.shares), "kl_sums": dict(self.kl_sums),
                "kl_count": self.kl_count, "windows": self.windows, "last_shares": self.last_shares}

    def load_state_dict(self, state: dict) -> None:
        self.multipliers = {side: float(state["multipliers"][side]) for side in self.sides}
        self.shares = [dict(s) for s in state["shares"]]
        self.kl_sums = {side: float(state["kl_sums"][side]) for side in self.sides}
        self.kl_count, self.windows = int(state["kl_count"]), int(state["windows"])
        self.last_shares = state.get("last_shares")
