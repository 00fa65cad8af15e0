"""Compare two failure rates (pure): how likely is one side's rate below the other's?

Each side's rate gets an independent Beta posterior from its k failures in n
runs under the Jeffreys prior Beta(0.5, 0.5) (the prior of analysis.rates),
and

    P(p_a < p_b) = E[F_a(X_b)] = integral over u in (0, 1) of F_a(Q_b(u)) du,

with F_a the CDF of side a's posterior and Q_b the quantile function of side
b's. The integrand is bounded and monotone, so a midpoint rule on a fixed grid
is accurate to about 1e-5 and deterministic (no sampling).

    >>> round(prob_lower(0, 50, 8, 50), 4)       # 0/50 against 8/50: almost surely lower
    0.9995
    >>> round(prob_lower(3, 40, 3, 40), 3)       # the same evidence: a coin toss
    0.5
    >>> round(prob_lower(8, 50, 0, 50), 4)
    0.0005
"""
from __future__ import annotations

import numpy as np
from scipy.stats import beta as beta_dist

GRID = 4096


def prob_lower(k_a: float, n_a: float, k_b: float, n_b: float, *, a: float = 0.5, b: float = 0.5,
               grid: int = GRID) -> float:
    """P(p_a < p_b) for rates with k_a/n_a and k_b/n_b failures, independent
    Beta(a + k, b + n - k) posteriors. Ties have probability 0, so
    ``prob_lower(a..., b...) + prob_lower(b..., a...)`` is 1 to within about 1e-5."""
    for k, n in ((k_a, n_a), (k_b, n_b)):
        if n < 0 or k < 0 or k > n:
            raise ValueError(f"need 0 <= k <= n (got k={k}, n={n})")
    u = (np.arange(grid) + 0.5) / grid
    xb = beta_dist.ppf(u, a + k_b, b + n_b - k_b)
    p = float(np.mean(beta_dist.cdf(xb, a + k_a, b + n_a - k_a)))
    return min(1.0, max(0.0, p))


def compare_rates(k_patch: int, n_patch: int, k_parent: int, n_parent: int) -> tuple[float, float]:
    """(P(the patch's rate is lower than the parent's), P(it is higher))."""
    lower = prob_lower(k_patch, n_patch, k_parent, n_parent)
    return lower, 1.0 - lower
