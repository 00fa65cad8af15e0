"""Rise and fall detection over the stored history of one test. Pure.

Passive Bayesian change-point detection in the manner of LUCI Analysis
(BISECTION.md): the first-parent history is cut into segments, each with its
own Bernoulli "trouble" rate (a run is trouble when it is a near miss, a
timeout or another failure; infra runs never enter), Beta priors, rates
integrated out exactly. A change may start at any commit with prior
probability `change_prior` per commit, independently.

Only commits with runs (the *points*) change the likelihood; commits between
two points collapse into the gap before the later one: a change somewhere in
that gap starts a new segment at the later point, with prior probability
1 - (1 - change_prior) ** gap. That is exact for this model (a segment with no
runs integrates to 1).

The question asked is narrow: is the rate at the tip (the newest point's
segment) higher (or lower) than the rate of the segment before it, by at least
`min_effect`? A forward pass gives P(segments up to point i); from it the
joint posterior of (start of the previous segment i, start of the tip segment
j) is exact, O(N^2) in the number of points, and for each pair

    P(p_tip - p_prev >= min_effect | i, j)

is a one-dimensional integral of two Beta posteriors (numeric, on a fixed
grid: deterministic). Summed with the pair weights: P(rise), P(fall).

Where the change happened: the posterior of the tip segment's start, weighted
by the rise (or fall) probability of each split, gives

    before       the newest point more likely than not on the old side (for
                 a rise: the newest good commit, where a bisection starts);
    safe_before  the newest point on the old side at `level`;
    after        the oldest point on the new side at `level`;
                 the change lies in (safe_before, after] with probability >= level.

Priors: LUCI's Beta(0.05, 0.5) segment rate (most segments rarely fail).
LUCI uses change odds of 1e-4 per commit, against thousands of results per
commit; a nightly point here is ~20 runs, and at 1e-4 a 2% -> 45% rise seen on
one night stays near P = 0.85-0.95. At 1e-3 it is found the first or second
night, while one unlucky night (5 of 20 after 1 in 20) stays below P = 0.2.

Known limitation: "the segment before the newest change" may be a split
inside the tip's own regime (e.g. one night among clean nights after a fix):
each extra night adds a little prior mass for such splits, so P(fall) can
drift down again (0.995 -> 0.975 over a few more clean nights in the demo).
The nightly cycle records a rise or fall once, when first seen, so this does
not lose events; a model that looks past segments differing by < min_effect
would remove it.

`before` is *thin* when it has fewer than `thin_runs` runs of its own or is on
the old side with probability below `level`: verify it with more runs and
detect again (or fall back to safe_before).

    >>> pts = [Point(0, "a", 20, 0), Point(10, "b", 20, 0), Point(20, "c", 20, 0), Point(30, "d", 20, 9)]
    >>> d = detect(pts)
    >>> d.verdict, d.before, d.after, round(d.p_rise, 2)
    ('rise', 'c', 'd', 1.0)
    >>> detect(pts[:3]).verdict
    'none'
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy.special import betainc, betaln

from flakebot.analysis.classes import DEFAULT_BINS, GROUP_BAD, GROUP_NEAR, Bins, classify
from flakebot.analysis.posterior import logsumexp

RISE, FALL, NONE = "rise", "fall", "none"


@dataclass(frozen=True)
class Point:
    """Evidence at one commit: `runs` evidence runs, `events` of them trouble
    (near miss, timeout or failure). `position` is the commit's index on the
    first-parent chain (oldest first); only order and gaps matter."""

    position: int
    sha: str
    runs: int
    events: int

    def __post_init__(self) -> None:
        if self.runs < 0 or not 0 <= self.events <= self.runs:
            raise ValueError(f"bad point {self}: need 0 <= events <= runs")


@dataclass(frozen=True)
class DetectSettings:
    min_effect: float = 0.05     # smallest rise/fall of the trouble rate worth acting on (absolute)
    threshold: float = 0.99      # P(rise) or P(fall) needed for a verdict
    change_prior: float = 1e-3   # prior probability that a given commit changes the rate (see below)
    a: float = 0.05              # Beta prior of a segment's rate (LUCI: Beta(0.05, 0.5))
    b: float = 0.5
    level: float = 0.99          # credibility of the (before, after] interval
    thin_runs: int = 10          # fewer runs than this at `before`: verify it first
    grid: int = 2000             # integration bins for the rate difference
    max_pairs: int = 400         # most (prev, tip) segment splits integrated (the heaviest)
    max_points: int = 250        # only the newest points are read (cost is O(points^2))

    def __post_init__(self) -> None:
        if not 0 < self.min_effect < 1:
            raise ValueError("min_effect must be in (0, 1)")
        if not 0.5 <= self.threshold < 1 or not 0.5 <= self.level < 1:
            raise ValueError("threshold and level must be in [0.5, 1)")
        if not 0 < self.change_prior < 1 or self.a <= 0 or self.b <= 0:
            raise ValueError("change_prior must be in (0, 1); a, b positive")


@dataclass(frozen=True)
class SegmentRate:
    runs: int
    events: int
    mean: float  # posterior mean of the trouble rate


@dataclass(frozen=True)
class Detection:
    """What `detect` concluded for one test.

    verdict      'rise', 'fall' or 'none'
    probability  P(rise) for a rise, P(fall) for a fall, max of the two otherwise
    p_rise       P(rate at the tip >= rate before the newest change + min_effect)
    p_fall       P(rate at the tip <= rate before the newest change - min_effect)
    p_change     P(the tip's segment does not reach back to the oldest point)
    tip          newest point's commit
    before       newest commit the data support as on the old side (rise: the
                 newest good commit), i.e. more likely than not; None for 'none'
    before_runs  runs at `before`
    before_confidence  P(the change is after `before`)
    thin         before_runs < thin_runs or before_confidence < level: verify
                 `before` with more runs (then detect again), or use safe_before
    safe_before  the newest commit on the old side at `level` (safe_confidence)
    after        oldest commit on the new side at `level` (the change is in (before, after])
    baseline, current  rates of the most probable split (display only)
    """

    verdict: str
    probability: float
    p_rise: float
    p_fall: float
    p_change: float
    tip: Optional[str]
    before: Optional[str] = None
    before_position: Optional[int] = None
    before_runs: int = 0
    thin: bool = False
    before_confidence: float = 0.0
    safe_before: Optional[str] = None
    safe_confidence: float = 0.0
    after: Optional[str] = None
    after_position: Optional[int] = None
    baseline: Optional[SegmentRate] = None
    current: Optional[SegmentRate] = None
    points: int = 0
    reason: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def points_from_runs(runs: Iterable[tuple[str, str, Optional[float]]], chain: Sequence[str],
                     bins: Bins = DEFAULT_BINS) -> list[Point]:
    """Points from (commit sha, outcome, worst wait s) triples, e.g. rows of
    ``Store.runs(test=...)``. `chain` is the first-parent history, oldest
    first; runs at commits off the chain (side branches, patches under
    review) and infra runs are left out. Near misses are trouble."""
    index = {sha: i for i, sha in enumerate(chain)}
    groups = bins.groups
    acc: dict[int, list[int]] = {}
    for sha, outcome, wait in runs:
        i = index.get(sha)
        if i is None:
            continue
        c = classify(outcome, wait, bins)
        if c is None:
            continue
        cell = acc.setdefault(i, [0, 0])
        cell[0] += 1
        cell[1] += int(groups[c] in (GROUP_NEAR, GROUP_BAD))
    return [Point(i, chain[i], n, k) for i, (n, k) in sorted(acc.items())]


def _merge(points: Iterable[Point]) -> list[Point]:
    by_pos: dict[int, Point] = {}
    for p in points:
        if p.runs == 0:
            continue
        q = by_pos.get(p.position)
        by_pos[p.position] = p if q is None else Point(p.position, q.sha, q.runs + p.runs, q.events + p.events)
    return [by_pos[k] for k in sorted(by_pos)]


def _p_diffs(a0, b0, a1, b1, delta: float, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(P(p1 - p0 >= delta), P(p0 - p1 >= delta)) for p0 ~ Beta(a0, b0),
    p1 ~ Beta(a1, b1), vectorised over the parameter arrays. Both CDFs are
    evaluated once on one grid of `grid` bins (delta rounded to whole bins);
    each bin's mass of one side times the other's survival at the bin's
    midpoint + delta (the mean of the two edge values)."""
    edges = np.linspace(0.0, 1.0, grid + 1)
    shift = max(1, int(round(delta * grid)))
    a0, b0, a1, b1 = (np.asarray(v, dtype=float)[:, None] for v in (a0, b0, a1, b1))
    F0 = betainc(a0, b0, edges[None, :])
    F1 = betainc(a1, b1, edges[None, :])

    def tail(Fa, Fb):  # P(b - a >= delta)
        pad = np.ones((Fb.shape[0], shift + 1))
        Fs = np.concatenate([Fb[:, shift:], pad], axis=1)       # Fb at edge t + shift, 1 beyond
        surv = 1.0 - 0.5 * (Fs[:, :grid] + Fs[:, 1:grid + 1])
        return np.clip((np.diff(Fa, axis=1) * surv).sum(1), 0.0, 1.0)

    return tail(F0, F1), tail(F1, F0)


def detect(points: Iterable[Point], settings: DetectSettings = DetectSettings()) -> Detection:
    """Rise / fall / none at the newest point. See the module docstring."""
    s = settings
    pts = _merge(points)[-s.max_points:]
    n = len(pts)
    if n == 0:
        return Detection(NONE, 0.0, 0.0, 0.0, 0.0, None, reason="no runs")
    tip = pts[-1]
    if n == 1:
        return Detection(NONE, 0.0, 0.0, 0.0, 0.0, tip.sha, points=1, reason="no history before the tip")
    m = np.array([p.runs for p in pts], dtype=float)
    k = np.array([p.events for p in pts], dtype=float)
    M = np.concatenate([[0.0], np.cumsum(m)])
    K = np.concatenate([[0.0], np.cumsum(k)])
    pos = np.array([p.position for p in pts], dtype=float)
    gaps = np.concatenate([[1.0], np.maximum(np.diff(pos), 1.0)])
    log_stay = gaps * np.log1p(-s.change_prior)          # log(1 - q_j): no change in gap j
    log_q = np.log(-np.expm1(log_stay))                  # log q_j: a change in gap j
    log_stay[0], log_q[0] = 0.0, 0.0
    L1 = np.cumsum(log_stay)                             # L1[j] = sum_{m<=j} log(1-q_m)
    lb0 = betaln(s.a, s.b)

    def seg(i, j):
        """log marginal of points i..j (inclusive) as one segment; arrays ok."""
        kk = K[np.asarray(j) + 1] - K[np.asarray(i)]
        mm = M[np.asarray(j) + 1] - M[np.asarray(i)]
        return betaln(s.a + kk, s.b + mm - kk) - lb0

    # Forward: A[j] = log P(points 0..j-1, a segment starts at j).
    A = np.zeros(n)
    for j in range(1, n):
        i = np.arange(j)
        A[j] = logsumexp(A[i] + seg(i, j - 1) + (L1[j - 1] - L1[i])) + log_q[j]
    # Joint of (previous segment start i, tip segment start j), j >= 1; j = 0 is "no change".
    ii, jj = np.triu_indices(n, 1)
    J = A[ii] + seg(ii, jj - 1) + (L1[jj - 1] - L1[ii]) + log_q[jj] + seg(jj, n - 1) + (L1[n - 1] - L1[jj])
    l_none = seg(0, n - 1) + L1[n - 1]
    z = np.logaddexp(logsumexp(J), l_none)
    w = np.exp(J - z)
    p_change = float(w.sum())
    # Integrate the rate difference for the heaviest splits.
    order = np.argsort(-w, kind="stable")[: s.max_pairs]
    order = order[w[order] > 1e-12 * max(w.max(initial=0.0), 1e-300)]
    r = np.zeros_like(w)
    f = np.zeros_like(w)
    if len(order):
        i_, j_ = ii[order], jj[order]
        kp, mp = K[j_] - K[i_], M[j_] - M[i_]
        kt, mt = K[n] - K[j_], M[n] - M[j_]
        a0, b0 = s.a + kp, s.b + mp - kp
        a1, b1 = s.a + kt, s.b + mt - kt
        r[order], f[order] = _p_diffs(a0, b0, a1, b1, s.min_effect, s.grid)
    p_rise = float(np.clip((w * r).sum(), 0.0, 1.0))
    p_fall = float(np.clip((w * f).sum(), 0.0, 1.0))

    # Display rates: the most probable split (or one segment).
    if w.size and w.max() > np.exp(l_none - z):
        b = int(np.argmax(w))
        i0, j0 = int(ii[b]), int(jj[b])
        base = _rate(K[j0] - K[i0], M[j0] - M[i0], s)
        cur = _rate(K[n] - K[j0], M[n] - M[j0], s)
    else:
        base = None
        cur = _rate(K[n], M[n], s)

    if p_rise >= s.threshold or p_fall >= s.threshold:
        verdict = RISE if p_rise >= p_fall else FALL
        prob = p_rise if verdict == RISE else p_fall
        wv = w * (r if verdict == RISE else f)
        start = np.zeros(n)
        np.add.at(start, jj, wv)
        start /= start.sum()
        tail = np.cumsum(start[::-1])[::-1]               # tail[j] = P(start >= j)
        # `before`: the newest point more likely than not on the old side;
        # `safe_before`: the newest point on the old side at `level`.
        bi = max([b for b in range(n - 1) if tail[b + 1] >= 0.5], default=0)
        si = max([b for b in range(n - 1) if tail[b + 1] >= s.level], default=0)
        cdf = np.cumsum(start)
        ai = int(np.argmax(cdf >= s.level - 1e-12)) if (cdf >= s.level - 1e-12).any() else n - 1
        ai = max(ai, bi + 1)
        before, after = pts[bi], pts[ai]
        word = "rose" if verdict == RISE else "fell"
        conf = float(tail[bi + 1])
        return Detection(verdict, prob, p_rise, p_fall, p_change, tip.sha, before.sha, before.position,
                         before.runs, before.runs < s.thin_runs or conf < s.level, conf, pts[si].sha,
                         float(tail[si + 1]), after.sha, after.position, base, cur, n,
                         f"trouble rate {word} by >= {s.min_effect:g} with P = {prob:.4f}; "
                         f"change after {before.sha[:10]}, at or before {after.sha[:10]}")
    return Detection(NONE, max(p_rise, p_fall), p_rise, p_fall, p_change, tip.sha, baseline=base, current=cur,
                     points=n, reason=f"P(rise) = {p_rise:.4f}, P(fall) = {p_fall:.4f}: below {s.threshold:g}")


def _rate(k: float, m: float, s: DetectSettings) -> SegmentRate:
    return SegmentRate(int(m), int(k), float((s.a + k) / (s.a + s.b + m)))
