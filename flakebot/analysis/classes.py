"""Outcome classes: one run (outcome + worst shutdown wait) -> one class index.

Classes, in order (default edges (20, 60, 80) for the 90 s limit):

    0 pass <20s        fast pass                      group "ok"
    1 pass 20-60s      slowish pass                   group "ok"
    2 near 60-80s      near miss (DESIGN 'slow')      group "near"
    3 near 80-90s      near miss, close to the limit  group "near"
    4 timeout          a shutdown passed its limit    group "bad"
    5 fail             any other failure              group "bad"

Infra runs never enter: `classify` returns None for them.

The posterior (posterior.py) works on three *groups*: ok, near, bad. The split
inside a group (e.g. 60-80 s vs 80-90 s) is kept in the counts for display and
rates but is modelled as shared by both sides of the culprit, so it cancels out
of the culprit posterior (see posterior.py for why).

    >>> b = Bins()
    >>> [b.names[classify(o, w, b)] for o, w in
    ...  [("pass", 3.0), ("pass", 45.0), ("slow", 83.0), ("timeout", 90.0), ("fail", None)]]
    ['pass <20s', 'pass 20-60s', 'near 80-90s', 'timeout', 'fail']
    >>> classify("infra", None, b) is None
    True
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flakebot.model import DEFAULT_LIMIT_S, DEFAULT_SLOW_THRESHOLD_S, Outcome

GROUP_OK, GROUP_NEAR, GROUP_BAD = 0, 1, 2
GROUP_NAMES = ("ok", "near", "bad")


@dataclass(frozen=True)
class Bins:
    """Worst-wait bin edges (seconds) for passing runs.

    Pass runs fall in [0, e0), [e0, e1), ..., [e_last, limit); bins whose lower
    edge is >= `slow_threshold_s` are near misses. `slow` outcomes always land in
    a near-miss bin (at least the first one), so a parser's 'slow' is never
    counted as a plain pass.
    """

    edges: tuple[float, ...] = (20.0, 60.0, 80.0)
    limit_s: float = float(DEFAULT_LIMIT_S)
    slow_threshold_s: float = DEFAULT_SLOW_THRESHOLD_S

    def __post_init__(self) -> None:
        e = list(self.edges)
        if any(b <= a for a, b in zip(e, e[1:])) or (e and (e[0] <= 0 or e[-1] >= self.limit_s)):
            raise ValueError(f"bin edges must increase inside (0, {self.limit_s}): {self.edges}")
        if self.slow_threshold_s not in e:
            raise ValueError("slow_threshold_s must be one of the edges")

    @property
    def n_pass_bins(self) -> int:
        return len(self.edges) + 1

    @property
    def n_classes(self) -> int:
        return self.n_pass_bins + 2

    @property
    def timeout(self) -> int:
        return self.n_pass_bins

    @property
    def fail(self) -> int:
        return self.n_pass_bins + 1

    @property
    def first_near(self) -> int:
        return 1 + list(self.edges).index(self.slow_threshold_s)

    @property
    def names(self) -> tuple[str, ...]:
        lo = (0.0,) + tuple(self.edges)
        hi = tuple(self.edges) + (self.limit_s,)
        out = []
        for i, (a, b) in enumerate(zip(lo, hi)):
            kind = "near" if i >= self.first_near else "pass"
            out.append(f"{kind} <{b:g}s" if i == 0 else f"{kind} {a:g}-{b:g}s")
        return tuple(out) + ("timeout", "fail")

    @property
    def groups(self) -> np.ndarray:
        """Group index (ok/near/bad) of every class."""
        g = [GROUP_OK if i < self.first_near else GROUP_NEAR for i in range(self.n_pass_bins)]
        return np.array(g + [GROUP_BAD, GROUP_BAD], dtype=np.int64)


DEFAULT_BINS = Bins()


def classify(outcome: str | Outcome, worst_wait_s: float | None, bins: Bins = DEFAULT_BINS) -> int | None:
    """Class index of one run, or None for infra (never evidence).

    pass/slow go to the bin of their worst wait (a 'slow' run with no wait
    recorded, or a wait below the threshold, goes to the first near-miss bin;
    a 'pass' with no wait recorded goes to the first bin).
    """
    o = Outcome(outcome)
    if o is Outcome.INFRA:
        return None
    if o is Outcome.TIMEOUT:
        return bins.timeout
    if o is Outcome.FAIL:
        return bins.fail
    if worst_wait_s is None:
        return bins.first_near if o is Outcome.SLOW else 0
    i = int(np.searchsorted(np.asarray(bins.edges), float(worst_wait_s), side="right"))
    i = min(i, bins.n_pass_bins - 1)
    if o is Outcome.SLOW:
        i = max(i, bins.first_near)
    return i


def class_names(bins: Bins = DEFAULT_BINS) -> tuple[str, ...]:
    return bins.names


def to_groups(counts, bins: Bins = DEFAULT_BINS) -> np.ndarray:
    """(n_commits, n_classes) class counts -> (n_commits, 3) group counts."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != bins.n_classes:
        raise ValueError(f"counts must be (commits, {bins.n_classes}); got {c.shape}")
    if (c < 0).any():
        raise ValueError("negative counts")
    out = np.zeros((c.shape[0], 3))
    np.add.at(out.T, bins.groups, c.T)
    return out
