"""Descriptive statistics of shutdown waits (pure)."""
from __future__ import annotations

import math
import statistics
from typing import Sequence


def wait_stats(values: Sequence[float]) -> dict:
    """n, p50, p95, max of shutdown waits (p95 by nearest rank).

        >>> wait_stats([3.0, 4.0, 83.0])
        {'n': 3, 'p50': 4.0, 'p95': 83.0, 'max': 83.0}
    """
    v = sorted(values)
    if not v:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    p95 = v[max(0, math.ceil(0.95 * len(v)) - 1)]
    return {"n": len(v), "p50": round(statistics.median(v), 3), "p95": round(p95, 3), "max": round(v[-1], 3)}
