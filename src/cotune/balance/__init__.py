"""CoMMIT-style balance: kappa estimation, coordinated learning rates, regulariser, CD baselines."""

from cotune.balance.estimator import Estimate, exact_estimate, jvp_estimate
from cotune.balance.kappa import KappaMonitor
from cotune.balance.scheduler import BalanceScheduler, kappa_of
from cotune.balance.strategies import STRATEGIES, BalanceStrategy, make_balance

__all__ = ["STRATEGIES", "BalanceScheduler", "BalanceStrategy", "Estimate", "KappaMonitor", "exact_estimate", "jvp_estimate",
           "kappa_of", "make_balance"]
