"""Untestable commits, as `git bisect skip` treats them.

A commit no host can test gives no evidence, so the culprit hypotheses on
either side of it cannot be told apart: "culprit is c_k" and "culprit is
c_k+1" differ only in which side commit k is on. A run of untestable commits
a..e-1 followed by the testable commit e therefore makes the hypotheses
a..e one *block*: the data can only ever say "one of these". The posterior
itself needs no change (those commits simply have no runs); the stop rule
must judge blocks, and the planner must not probe the untestable commits.

    >>> blocks(6, {2, 3})
    [(1, 1), (2, 4), (5, 5), (6, 6)]
    >>> blocks(4, {3, 4})  # no testable commit after 3: the block runs to the bad end
    [(1, 1), (2, 2), (3, 4)]
"""
from __future__ import annotations

from typing import Collection

import numpy as np


def blocks(n: int, untestable: Collection[int]) -> list[tuple[int, int]]:
    """The culprit hypotheses 1..n grouped into blocks (lo, hi), oldest first:
    lo..hi-1 are untestable, hi is testable (or the bad end)."""
    out, lo = [], 1
    for k in range(1, n + 1):
        if k not in untestable or k == n:
            out.append((lo, k))
            lo = k + 1
    return out


def block_probabilities(culprit: np.ndarray, bl: list[tuple[int, int]]) -> np.ndarray:
    """P(culprit in block) for each block (culprit[k] = P(culprit is c_k))."""
    cum = np.concatenate([[0.0], np.cumsum(culprit)])
    return np.array([cum[hi + 1] - cum[lo] for lo, hi in bl])


def testable_before(k: int, untestable: Collection[int]) -> int | None:
    """The newest testable commit older than k, or None."""
    j = k - 1
    while j >= 0 and j in untestable:
        j -= 1
    return j if j >= 0 else None

