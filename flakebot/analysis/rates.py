"""Before/after rates of a named culprit with Beta credible intervals.

Given the culprit c, the before side is every run at c_0..c_{c-1} and the
after side every run at c_c..c_n. Rates use a Beta(0.5, 0.5) (Jeffreys) prior
and equal-tailed intervals (default 90%). Pooling a whole side is what makes
this an estimate: a raw per-commit "k of n failed" table is biased by
adaptive sampling (docs/bisection.md), the pooled side given the culprit is not
selected on its outcome in the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta as beta_dist

from flakebot.analysis.classes import DEFAULT_BINS, GROUP_BAD, GROUP_NEAR, Bins


@dataclass(frozen=True)
class Rate:
    k: int
    n: int
    mean: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.k}/{self.n} = {self.mean:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def beta_rate(k: float, n: float, level: float = 0.9, a: float = 0.5, b: float = 0.5) -> Rate:
    """Posterior mean and equal-tailed `level` interval of a Bernoulli rate."""
    a1, b1 = a + k, b + n - k
    t = (1 - level) / 2
    return Rate(int(k), int(n), a1 / (a1 + b1), float(beta_dist.ppf(t, a1, b1)), float(beta_dist.ppf(1 - t, a1, b1)))


@dataclass(frozen=True)
class SideRates:
    runs: int
    classes: tuple[int, ...]  # counts per class (classes.py order)
    failure: Rate             # timeout + fail
    near_miss: Rate           # near-miss bins (passed, but slow)


@dataclass(frozen=True)
class Rates:
    culprit: int
    before: SideRates
    after: SideRates
    level: float


def side_rates(counts, bins: Bins = DEFAULT_BINS, level: float = 0.9) -> SideRates:
    c = np.asarray(counts, dtype=float).reshape(-1, bins.n_classes).sum(0)
    g = bins.groups
    n = c.sum()
    return SideRates(int(n), tuple(int(v) for v in c), beta_rate(c[g == GROUP_BAD].sum(), n, level),
                     beta_rate(c[g == GROUP_NEAR].sum(), n, level))


def culprit_rates(counts, culprit: int, bins: Bins = DEFAULT_BINS, level: float = 0.9) -> Rates:
    c = np.asarray(counts, dtype=float)
    if not 1 <= culprit < len(c):
        raise ValueError("culprit index must be in 1..n")
    return Rates(culprit, side_rates(c[:culprit], bins, level), side_rates(c[culprit:], bins, level), level)
