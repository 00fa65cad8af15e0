"""Rise and fall detection over a test's nightly runs: CUSUM per outcome class. Pure.

The evidence accumulates over nights instead of being re-judged from scratch
every night. A *night* is one nightly cycle at the branch tip (its regular
runs plus any extra runs it spent); its runs are counted per outcome class:
ok (fast or slowish pass), near miss, timeout, fail (infra runs never enter).

For each trouble class c (near miss, timeout, fail) and each direction a
Bernoulli log-likelihood-ratio CUSUM (Page) runs over the nights:

    rise: S = max(0, S + k log(q1/q0) + (n - k) log((1 - q1)/(1 - q0)))
          q0 = the class's rate in the current segment, q1 = q0 + min_effect
    fall: the same with q0 = the raised (segment) rate, q1 = q0 - min_effect
          (only where q0 - min_effect >= min_effect / 5: a rate already near
          zero cannot fall by min_effect)

where k of the night's n runs are of class c. The reference rate q0 is
estimated from the segment's nights, conservatively: the `rise_quantile`
upper (rise) or `fall_quantile` lower (fall) quantile of its Beta(k + 1/2,
n - k + 1/2) posterior, so a young test with few nights does not raise false
alarms from an underestimated baseline; nothing is judged before the segment
has `min_ref_runs` runs. The newest nights of the CUSUM's current excursion
(the nights since S was last 0, at most `excursion_lag` of them) are left
out of the reference, so a change does not dilute its own baseline; older
excursion nights count again, because excluding nights for how they looked
biases the reference toward in-control nights (a slow false alarm).
A segment begins at the first night, and again at every detected change.
Every CUSUM restarts there with an empty reference: the nights up to an alarm
were picked for being extreme, so the new rate is estimated from the nights
after it (which also means a fall is judged only `min_ref_runs` runs after
the rise).

Threshold from a false-alarm budget. Each CUSUM statistic is a sum of
log-likelihood ratios; between two returns to 0 it is a likelihood-ratio
martingale under the reference rate, so (Ville's inequality) an excursion
reaches h with probability at most e^-h. An excursion takes at least a night,
so one CUSUM raises at most `nights` x e^-h false alarms in expectation over
`nights` nights, whatever the baseline and however many runs a night spends
(the adaptive extra runs included). With 3 classes per direction and one
night a day:

    h = log(3 x 365 / false_alarms_per_year)        (0.1 a year: h = 9.30)

The bound assumes q0 is the true rate; the conservative estimate above is
what keeps that near true for young tests (docs/benchmarks/detect.md measures
it). What h buys: a rise of min_effect from q0 is found after about
h / (n KL(q0 + min_effect || q0)) nights of n runs (Wald; `expected_delay`).

Adaptive effort: when a statistic stands at `suggest_fraction` (0.4) x h or more
after tonight's runs (and none crossed h), the nightly cycle runs extra
iterations at the tip the same night (`suggestive`).

Where the change happened: on an alarm, the change point tau (the first night
on the new side) has posterior weight proportional to
exp(sum over nights u >= tau of LLR_u), flat prior over the segment's nights,
with the old rate (the reference) and the new rate (the excursion's nights)
plugged in. `before` is the newest night on the old side with probability
>= `level`, `after` the oldest night on the new side at `level`: the change is
in (before, after]. For a rise `before` is the good end of the bisection; for
a fall (appears fixed) the range holds the fixing commit.

Everything is recomputed from the stored nights, so the state is reproducible
from the store: `replay(nights)` gives the state after the last night.

    >>> ok = [Night(f"n{i}", f"c{i}", (20, 0, 0, 0)) for i in range(30)]
    >>> bad = [Night(f"n{i}", f"c{i}", (16, 0, 0, 4)) for i in range(30, 33)]
    >>> d = replay(ok + bad[:1])
    >>> d.verdict, d.klass, d.before, d.after
    ('rise', 'fail', 'c29', 'c30')
    >>> replay(ok).verdict, replay(ok + bad).verdict   # the rise is reported on its night only
    ('none', 'none')
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy.special import betaincinv

from flakebot.analysis.classes import DEFAULT_BINS, GROUP_NEAR, Bins, classify

RISE, FALL, NONE = "rise", "fall", "none"
# Outcome classes of a night, in Night.counts order; the last three are trouble.
KINDS = ("ok", "near", "timeout", "fail")
TROUBLE = KINDS[1:]


@dataclass(frozen=True)
class Night:
    """One nightly cycle of one test: `key` identifies the cycle, `sha` the tip it
    tested, `counts` its runs per class (ok, near, timeout, fail)."""

    key: str
    sha: str
    counts: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        if len(self.counts) != 4 or min(self.counts) < 0:
            raise ValueError(f"bad night {self}: need 4 non-negative counts")

    @property
    def runs(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class DetectSettings:
    min_effect: float = 0.05           # smallest rise/fall of a class's rate worth acting on (absolute)
    false_alarms_per_year: float = 0.1  # per test and direction, at one night a day
    nights_per_year: float = 365.0
    suggest_fraction: float = 0.4      # statistic >= this x h: spend extra runs tonight
    rise_quantile: float = 0.9         # conservative reference for a rise: this upper quantile
    fall_quantile: float = 0.9         # ... for a fall: 1 - this (lower) quantile
    min_ref_runs: int = 100            # judge only once the segment has this many reference runs
    excursion_lag: int = 7             # an excursion's nights older than this count as reference again
    level: float = 0.99                # credibility of the (before, after] range
    window: int = 120                  # newest nights of a segment the change point is sought in

    def __post_init__(self) -> None:
        if not 0 < self.min_effect < 0.5:
            raise ValueError("min_effect must be in (0, 0.5)")
        if not 0 < self.false_alarms_per_year < self.nights_per_year:
            raise ValueError("false_alarms_per_year must be above 0 and below nights_per_year")
        if not 0 < self.suggest_fraction <= 1 or not 0.5 <= min(self.rise_quantile, self.fall_quantile) < 1 or not 0.5 <= self.level < 1:
            raise ValueError("suggest_fraction in (0, 1]; quantiles and level in [0.5, 1)")

    @property
    def threshold(self) -> float:
        """h: one of len(TROUBLE) CUSUMs per direction alarms falsely at most
        false_alarms_per_year times a year (module docstring)."""
        return math.log(len(TROUBLE) * self.nights_per_year / self.false_alarms_per_year)

    @property
    def fall_floor(self) -> float:
        return self.min_effect / 5


def _llr(q0: float, q1: float) -> tuple[float, float]:
    """Per-run log-likelihood ratio (class c run, other run) of q1 against q0."""
    return math.log(q1 / q0), math.log((1 - q1) / (1 - q0))


def kl(q1: float, q0: float) -> float:
    """KL(Bernoulli(q1) || Bernoulli(q0)): the mean LLR a run adds under q1."""
    a, b = _llr(q0, q1)
    return q1 * a + (1 - q1) * b


def expected_delay(q0: float, q1: float, runs: int, h: float) -> float:
    """Nights of `runs` runs until a CUSUM of q1 against q0 reaches h when the
    rate is q1 (Wald's approximation: h over the mean step; no overshoot, no
    extra runs)."""
    return h / (runs * kl(q1, q0))


@dataclass
class _Cusum:
    """One class, one direction: statistic, reference counts (nights before the
    current excursion), the excursion's counts and first night."""

    s: float = 0.0
    ref_k: int = 0
    ref_n: int = 0
    exc_k: int = 0
    exc_n: int = 0
    exc_start: int = -1
    exc_nights: list = field(default_factory=list)  # (k, n) of each excursion night
    q0: Optional[float] = None  # reference rate the last step used (None: not judged)
    q1: Optional[float] = None

    def reset(self, k: int, n: int) -> None:
        self.s, self.ref_k, self.ref_n, self.exc_k, self.exc_n, self.exc_start = 0.0, k, n, 0, 0, -1
        self.exc_nights = []


@dataclass(frozen=True)
class Detection:
    """What the detector concluded after the newest night of one test.

    verdict      'rise', 'fall' (a CUSUM crossed h on the newest night) or 'none'
    klass        the outcome class that crossed (near, timeout, fail)
    probability  P(the change is in (before, after]) under the change-point posterior
    tip          newest night's commit
    before, after  the change is after `before`, at or before `after` (night tips)
    baseline, current  the class's rate before and after the change
    suggestive   a statistic at >= suggest_fraction x h without crossing: spend extra runs
    state        per class: rise/fall statistics, reference rates, alternatives
    threshold    h
    segment_start  first night (tip sha) of the current segment; nights: nights seen
    """

    verdict: str
    probability: float
    tip: Optional[str]
    threshold: float
    klass: Optional[str] = None
    before: Optional[str] = None
    after: Optional[str] = None
    baseline: Optional[float] = None
    current: Optional[float] = None
    suggestive: bool = False
    state: dict = field(default_factory=dict)
    segment_start: Optional[str] = None
    nights: int = 0
    reason: str = ""

    def to_json(self) -> dict:
        return asdict(self)


class Detector:
    """The CUSUMs of one test, fed night by night (`push`); `peek` asks what a
    night would do without keeping it. `replay` is the usual entry point."""

    def __init__(self, settings: DetectSettings = DetectSettings()):
        self.s = settings
        self.h = settings.threshold
        self.nights: list[Night] = []
        self.seg = 0  # index of the current segment's first night
        self.rise = {c: _Cusum() for c in TROUBLE}
        self.fall = {c: _Cusum() for c in TROUBLE}

    # --------------------------------------------------------------- estimates

    def _ref(self, cu: _Cusum, upper: bool) -> Optional[float]:
        k, n = cu.ref_k, cu.ref_n
        lag = self.s.excursion_lag
        if len(cu.exc_nights) > lag:
            # An excursion's nights older than `lag` count as reference again: excluding
            # nights for how they looked biases the reference (module docstring).
            old = cu.exc_nights[:-lag] if lag else cu.exc_nights
            k, n = k + sum(x for x, _ in old), n + sum(y for _, y in old)
        if n < self.s.min_ref_runs:
            return None
        q = self.s.rise_quantile if upper else 1 - self.s.fall_quantile
        return float(betaincinv(k + 0.5, n - k + 0.5, q))

    def _step(self, cu: _Cusum, k: int, n: int, index: int, upper: bool) -> None:
        """One night into one CUSUM (mutates cu)."""
        d = self.s.min_effect
        q0 = self._ref(cu, upper)
        q1 = None if q0 is None else (min(q0 + d, 0.999) if upper else max(q0 - d, self.s.fall_floor))
        if q0 is None or (not upper and q0 < 2 * self.s.fall_floor):
            cu.q0, cu.q1 = q0, None
            cu.ref_k, cu.ref_n = cu.ref_k + k, cu.ref_n + n  # no judgement: the night is reference
            cu.s = 0.0
            return
        q0 = max(q0, 1e-4)
        a, b = _llr(q0, q1)
        cu.q0, cu.q1 = q0, q1
        s = cu.s + k * a + (n - k) * b
        if s <= 0:
            # The excursion ended without an alarm: its nights were in control.
            cu.s = 0.0
            cu.ref_k, cu.ref_n = cu.ref_k + cu.exc_k + k, cu.ref_n + cu.exc_n + n
            cu.exc_k = cu.exc_n = 0
            cu.exc_start = -1
            cu.exc_nights = []
        else:
            if cu.exc_start < 0:
                cu.exc_start = index
            cu.s, cu.exc_k, cu.exc_n = s, cu.exc_k + k, cu.exc_n + n
            cu.exc_nights = cu.exc_nights + [(k, n)]

    # --------------------------------------------------------------- feeding

    def push(self, night: Night) -> Detection:
        """Take the night in; return the detection after it."""
        index = len(self.nights)
        self.nights.append(night)
        for i, c in enumerate(TROUBLE, start=1):
            k, n = night.counts[i], night.runs
            self._step(self.rise[c], k, n, index, True)
            self._step(self.fall[c], k, n, index, False)
        crossed = [(cu.s / self.h, direction, c) for direction, table in ((RISE, self.rise), (FALL, self.fall))
                   for c, cu in table.items() if cu.s >= self.h]
        if not crossed:
            return self._detection()
        _, direction, c = max(crossed)
        det = self._locate(direction, c)
        self._new_segment(det.extra_start)
        return det.detection

    def peek(self, night: Night) -> Detection:
        """What `push(night)` would return, leaving the detector as it was."""
        saved = (self.seg, {c: replace(cu) for c, cu in self.rise.items()},
                 {c: replace(cu) for c, cu in self.fall.items()})
        try:
            return self.push(night)
        finally:
            self.nights.pop()
            self.seg, self.rise, self.fall = saved

    # --------------------------------------------------------------- alarms

    @dataclass(frozen=True)
    class _Located:
        detection: "Detection"
        extra_start: int

    def _locate(self, direction: str, c: str) -> "Detector._Located":
        cu = (self.rise if direction == RISE else self.fall)[c]
        i = TROUBLE.index(c) + 1
        # The previous segment's last night anchors the old side (the segment's
        # own first night may be on the new side if that change was placed late).
        lo = max(0, self.seg - 1, len(self.nights) - self.s.window)
        nights = self.nights[lo:]
        k = np.array([nt.counts[i] for nt in nights], dtype=float)
        n = np.array([nt.runs for nt in nights], dtype=float)
        old = (cu.ref_k + 0.5) / (cu.ref_n + 1.0)
        new = (cu.exc_k + 0.5) / (cu.exc_n + 1.0)
        old, new = min(max(old, 1e-4), 0.999), min(max(new, 1e-4), 0.999)
        a, b = _llr(old, new)
        llr = k * a + (n - k) * b
        # tau = first night on the new side, tau in 1..m-1 of the window (night 0 is old by construction
        # when the window is the whole segment; otherwise it is the oldest night looked at).
        m = len(nights)
        tail = np.cumsum(llr[::-1])[::-1]             # tail[t] = sum_{u >= t} llr[u]
        logw = tail[1:] if m > 1 else np.array([0.0])
        w = np.exp(logw - logw.max())
        w /= w.sum()
        cdf = np.cumsum(w)                              # cdf[j] = P(tau <= j + 1)
        # before: newest night j with P(tau > j) >= level; after: oldest with P(tau <= a) >= level.
        jb = max([j for j in range(m) if j == 0 or cdf[j - 1] <= 1 - self.s.level], default=0)
        ja = int(np.argmax(cdf >= self.s.level - 1e-12)) + 1 if m > 1 else 0
        ja = min(max(ja, jb + 1), m - 1)
        conf = float(cdf[ja - 1] - (cdf[jb - 1] if jb > 0 else 0.0)) if m > 1 else 0.0
        tau = int(np.argmax(w)) + 1 if m > 1 else 0
        before, after = nights[jb], nights[ja]
        word = "rose" if direction == RISE else "fell"
        det = Detection(direction, conf, self.nights[-1].sha, self.h, klass=c, before=before.sha, after=after.sha,
                        baseline=old, current=new, state=self.state(), segment_start=self.nights[self.seg].sha,
                        nights=len(self.nights),
                        reason=f"{c} rate {word} from {old:.3f} to {new:.3f} (CUSUM {cu.s:.1f} >= {self.h:.1f}); "
                               f"change after {before.sha[:10]}, at or before {after.sha[:10]} (P = {conf:.3f})")
        return Detector._Located(det, lo + tau)

    def _new_segment(self, start: int) -> None:
        # The segment's reference starts empty (module docstring: the nights up to
        # the alarm were picked for being extreme).
        self.seg = start
        for c in TROUBLE:
            self.rise[c].reset(0, 0)
            self.fall[c].reset(0, 0)

    # --------------------------------------------------------------- reporting

    def state(self) -> dict:
        """Per class: rise and fall statistics, the rate so far in the segment, the
        reference rates and alternatives the last night used (None: not judged)."""
        out = {}
        for c in TROUBLE:
            r, f = self.rise[c], self.fall[c]
            out[c] = {"rise": round(r.s, 4), "fall": round(f.s, 4),
                      "rate": round((r.ref_k + r.exc_k) / max(1, r.ref_n + r.exc_n), 4),
                      "rise_from": _r(r.q0), "rise_to": _r(r.q1), "fall_from": _r(f.q0), "fall_to": _r(f.q1)}
        return out

    def _detection(self) -> Detection:
        if not self.nights:
            return Detection(NONE, 0.0, None, self.h, reason="no nights yet")
        st = self.state()
        top = max(max(v["rise"], v["fall"]) for v in st.values())
        suggestive = self.s.suggest_fraction * self.h <= top < self.h
        return Detection(NONE, 0.0, self.nights[-1].sha, self.h, suggestive=suggestive, state=st,
                         segment_start=self.nights[self.seg].sha, nights=len(self.nights),
                         reason=f"largest CUSUM {top:.2f} of {self.h:.2f}" + ("; suggestive" if suggestive else ""))

    def triggers(self, runs: int) -> dict:
        """Per class, what tonight's `runs` runs would take to cross h:
        rise_at_least k runs of the class, fall_at_most k (None: not tonight),
        fall_clean_nights (nights without the class that would), and the
        expected delay of a min_effect rise / fall from the reference rate."""
        out = {}
        for c in TROUBLE:
            r, f = self.rise[c], self.fall[c]
            item: dict = {"rise_at_least": None, "fall_at_most": None, "fall_clean_nights": None,
                          "rise_delay_nights": None, "fall_delay_nights": None}
            q0 = self._ref(r, True)
            if q0 is not None:
                q0 = max(q0, 1e-4)
                q1 = min(q0 + self.s.min_effect, 0.999)
                a, b = _llr(q0, q1)
                need = (self.h - r.s - runs * b) / (a - b)   # k a + (runs - k) b >= h - s
                k = max(0, math.ceil(need - 1e-9))
                item["rise_at_least"] = k if k <= runs else None
                item["rise_delay_nights"] = round(expected_delay(q0, q1, runs, self.h), 1)
            p0 = self._ref(f, False)
            if p0 is not None and p0 >= 2 * self.s.fall_floor:
                p1 = max(p0 - self.s.min_effect, self.s.fall_floor)
                a, b = _llr(p0, p1)
                most = (self.h - f.s - runs * b) / (a - b)   # a < 0: at most this many class runs
                k = math.floor(most + 1e-9)
                item["fall_at_most"] = k if k >= 0 else None
                item["fall_clean_nights"] = max(1, math.ceil((self.h - f.s) / (runs * b)))
                item["fall_delay_nights"] = round(expected_delay(p0, p1, runs, self.h), 1)
            out[c] = item
        return out


def _r(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 4)


def replay(nights: Sequence[Night], settings: DetectSettings = DetectSettings()) -> Detection:
    """The detection after the last of `nights` (oldest first)."""
    return replay_detector(nights, settings)[1]


def replay_detector(nights: Sequence[Night], settings: DetectSettings = DetectSettings()) -> tuple[Detector, Detection]:
    d = Detector(settings)
    det = d._detection()
    for nt in nights:
        det = d.push(nt)
    return d, det


def night_counts(runs: Iterable[tuple[str, Optional[float]]], bins: Bins = DEFAULT_BINS) -> tuple[int, int, int, int]:
    """(ok, near, timeout, fail) of (outcome, worst wait s) pairs; infra runs left out."""
    counts = [0, 0, 0, 0]
    groups = bins.groups
    for outcome, wait in runs:
        c = classify(outcome, wait, bins)
        if c is None:
            continue
        if c == bins.fail:
            counts[3] += 1
        elif c == bins.timeout:
            counts[2] += 1
        elif groups[c] == GROUP_NEAR:
            counts[1] += 1
        else:
            counts[0] += 1
    return counts[0], counts[1], counts[2], counts[3]
