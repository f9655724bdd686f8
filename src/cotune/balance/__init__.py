"""CoMMIT-style balance: kappa estimation, coordinated learning rates, regulariser, CD baselines."""

from cotune.balance.controller import BalanceController
from cotune.balance.estimator import Estimate, exact_estimate, jvp_estimate
from cotune.balance.scheduler import BalanceScheduler, kappa_of

__all__ = ["BalanceController", "BalanceScheduler", "Estimate", "exact_estimate", "jvp_estimate", "kappa_of"]
