"""The facade the campaign loop calls: `step`.

Usage (an imperative loop; the loop owns storage, this module is pure):

    settings = EngineSettings(confidence=0.95, max_runs=500, seed=7)
    while True:
        s = step(counts, built, runs_used, host_minutes_used, in_flight, free_hosts, settings)
        if s.verdict:           # 'culprit' | 'no-regression' | 'inconclusive'
            break               # report s.culprit, s.confidence, s.candidates, s.rates
        submit(s.requests)      # list of (commit index, iterations), one per free host
        ... wait for results, add them to counts, call step again ...

Arguments of `step`:
  counts            (n+1) x n_classes run counts per commit, index 0 = good end,
                    n = bad end; classes from classes.classify (infra never counted)
  built             commit indices already built (no build cost for more runs)
  runs_used         runs spent so far (evidence + confirmation; infra excluded
                    or included as the loop prefers, it only feeds the budget)
  host_minutes_used host time spent so far (budget)
  in_flight         [(index, iterations)] submitted and not yet back
  free_hosts        hosts to fill now (0 = only evaluate the stop rule)
  settings          EngineSettings
  rng               numpy Generator; None derives one from settings.seed and the
                    state (runs_used, in-flight), so that each call is
                    reproducible from stored counts alone.

Step fields:
  verdict     None while searching; 'culprit', 'no-regression' or 'inconclusive'
  culprit     index of the culprit (verdict 'culprit'), else the top candidate or None
  confidence  P(culprit) for 'culprit', P(no change) for 'no-regression', top
              probability otherwise
  p_no_change P(no change in the range)
  candidates  top-k [(index, probability)]
  requests    [(index, iterations)] to submit now (empty once a verdict is set)
  rates       culprit_rates(...) (before/after failure and near-miss rates
              with credible intervals) when verdict == 'culprit'
  reason      one line: why this verdict / what the requests are for

Planning order: (1) confirmation runs owed to a candidate at `confidence`;
(2) learning the bad side: while c_n has fewer than `bad_end_runs` runs and has
not yet shown `bad_end_events` near misses/failures, one request goes there
(with unknown rates and no data at the bad end, passes anywhere are consistent
with a small p1); (3) the predecessor of a candidate at >= `predecessor_threshold`
whose parent has no runs; (4) everything else by expected information about the
culprit per host-minute (planner.py), in-flight runs counted as pending.

Build cost: `built` is the set of commits whose build is available to every
host (a shared artifact). A commit with a request in flight is treated as
built for further requests. Hosts that build for themselves (the host script
builds in its own SPDK_DIR and keeps the last build): pass `hosts`, the
commits each free host has built (planner.host_build_sets); a request then
costs a build unless its host has the commit, and `Step.hosts` says which
free host each request is for (planner.plan_hosts).

Untestable commits (keyword `untestable`: indices no host can test, skip.py)
are never probed; those without runs carry no evidence, so a run of them and the first
testable commit after it form one block of hypotheses the data cannot split.
The stop rule judges blocks: a block of one commit is the usual 'culprit'; a
longer block reaching `confidence` is the verdict 'culprit-range' (`range` =
(first, last) index; confirmation runs at its testable end and at the
testable commit before it). An untestable bad end stops the search
('inconclusive'): there is nothing to learn the risen rate from. With an
untestable good end, "culprit in the first block" and "no change" cannot be
told apart; once they share `confidence` the search stops ('inconclusive').

Stop rule: 'culprit' when one commit reaches `confidence` AND there are at least
`confirm_runs` runs at it and at its parent, AND (with `neighbour_factor` > 1)
the culprit's own runs favour the after side and its parent's the before side
by that Bayes factor each. Where the two sides' rates are close
(side_divergence below `close_divergence`, e.g. 0.02 -> 0.1) a culprit needs
`close_confidence` (default 0.98) instead of `confidence` (the engine requests the missing
confirmation runs first; they count in the budget; if they move the posterior
below the threshold, the search simply continues). 'no-regression' when
P(no change) reaches `confidence`. 'inconclusive' when the budget (max_runs,
max_host_hours or max_builds, with `builds_used` the requests submitted so
far, in flight included) is spent, or when no probe carries information.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Optional, Sequence

import numpy as np

from flakebot.analysis.classes import DEFAULT_BINS, Bins, to_groups
from flakebot.analysis.planner import plan, plan_hosts
from flakebot.analysis.posterior import Posterior, Prior, default_prior, posterior
from flakebot.analysis.rates import Rates, culprit_rates
from flakebot.analysis.skip import block_probabilities, blocks, testable_before


@dataclass(frozen=True)
class EngineSettings:
    confidence: float = 0.95
    max_runs: Optional[int] = None
    max_host_hours: Optional[float] = None
    max_builds: Optional[int] = None       # requests (each one build on its host)
    build_minutes: float = 10.0
    run_minutes: float = 2.0
    bins: Bins = DEFAULT_BINS
    prior: Optional[Prior] = None          # None: posterior.default_prior()
    commit_weights: Optional[tuple[float, ...]] = None  # e.g. posterior.path_weights(...)
    confirm_runs: int = 2                  # runs needed at the culprit and at its parent
    neighbour_factor: float = 1.0          # Bayes factor the culprit's and its parent's own runs must each show (1 = off)
    close_divergence: float = 0.5          # sides closer than this (J-divergence, nats per run) ...
    close_confidence: float = 0.98         # ... need this confidence for a culprit (measured: docs/benchmarks/bisect.md)
    iteration_options: tuple[int, ...] = (1, 2, 4, 8)  # iterations per request to consider
    predecessor_threshold: float = 0.5     # probe c-1 first once P(c) >= this and c-1 has no runs
    tie_tol: float = 0.05
    rate_weight: float = 0.0               # value of learning the rates, relative to the culprit (planner)
    idle_fraction: float = 0.0             # per-host builds: leave a host idle below this share of the best value (planner.plan_hosts)
    bad_end_runs: int = 10                 # learn the bad side first: up to this many runs at c_n ...
    bad_end_events: int = 2                # ... until it has shown this many near misses/failures
    top_k: int = 5
    interval_level: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1 or not 0.5 < self.close_confidence < 1:
            raise ValueError("confidence and close_confidence must be in (0.5, 1)")
        for name in ("max_runs", "max_host_hours", "max_builds"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.build_minutes < 0 or self.run_minutes <= 0 or self.confirm_runs < 0:
            raise ValueError("bad costs or confirm_runs")
        if not self.iteration_options or min(self.iteration_options) < 1:
            raise ValueError("iteration_options must be positive")


@dataclass(frozen=True)
class Step:
    verdict: Optional[str]
    culprit: Optional[int]
    confidence: float
    p_no_change: float
    candidates: list[tuple[int, float]]
    requests: list[tuple[int, int]] = field(default_factory=list)
    rates: Optional[Rates] = None
    reason: str = ""
    range: Optional[tuple[int, int]] = None  # verdict 'culprit-range': (first, last) index
    blocks: list[tuple[int, int, float]] = field(default_factory=list)  # top-k (first, last, P) blocks
    hosts: list[int] = field(default_factory=list)  # with step(hosts=...): the host slot of each request


def _rng_for(settings: EngineSettings, runs_used: int, in_flight) -> np.random.Generator:
    pend = sum(int(m) for _, m in in_flight)
    return np.random.default_rng([int(settings.seed), int(runs_used), pend, len(in_flight)])


def side_divergence(post: Posterior, k: int) -> float:
    """J-divergence (nats per run, KL both ways) between the after and before
    sides' predictive group probabilities under hypothesis k: how much one
    run tells the two sides apart."""
    pa = np.clip(post.pred_after[k], 1e-12, None)
    pb = np.clip(post.pred_before[k], 1e-12, None)
    return float(((pa - pb) * (np.log(pa) - np.log(pb))).sum())


def culprit_confidence(post: Posterior, k: int, settings: EngineSettings) -> float:
    """The confidence a culprit verdict at k needs: `close_confidence` where
    the sides are close (side_divergence < close_divergence), else
    `confidence`. Where one run tells the sides apart by little, the verdict
    leans on the rates prior more and wrong culprits concentrate there
    ((0.02, 0.1) and the #3322 shape in the benchmark)."""
    if side_divergence(post, k) < settings.close_divergence:
        return max(settings.confidence, settings.close_confidence)
    return settings.confidence


def _weak_neighbours(x: np.ndarray, post: Posterior, k: int, parent: Optional[int], factor: float,
                     skip: Collection[int]) -> list[int]:
    """Of the culprit k and its parent, those whose own runs do not yet show
    their side (after for k, before for the parent) by a Bayes factor of at
    least `factor`, with the side rates the posterior gives under hypothesis
    k. Guards the verdict against a neighbour whose few runs happened to look
    like the other side (the rates being learnt from the same runs)."""
    if factor <= 1.0:
        return []
    lr = np.log(np.clip(post.pred_after[k], 1e-300, None)) - np.log(np.clip(post.pred_before[k], 1e-300, None))
    need = np.log(factor)
    out = []
    if float(x[k] @ lr) < need:
        out.append(k)
    if parent is not None and parent not in skip and -float(x[parent] @ lr) < need:
        out.append(parent)
    return out


def step(counts, built: set[int], runs_used: int, host_minutes_used: float,
         in_flight: Sequence[tuple[int, int]], free_hosts: int, settings: EngineSettings = EngineSettings(),
         rng: np.random.Generator | None = None, post: Posterior | None = None, *,
         untestable: Collection[int] = (), builds_used: int = 0,
         hosts: Optional[Sequence[Collection[int]]] = None) -> Step:
    """One decision: verdict or requests. See the module docstring.

    hosts: per-host builds. The free hosts, each as the set of commits it
    has built (planner.host_build_sets); replaces `free_hosts` and `built`,
    and each request comes with the index of its host in `Step.hosts`."""
    if hosts is not None:
        free_hosts = len(hosts)
    rng = rng if rng is not None else _rng_for(settings, runs_used, in_flight)
    prior = settings.prior or default_prior()
    x = to_groups(counts, settings.bins)
    cw = None if settings.commit_weights is None else list(settings.commit_weights)
    post = post or posterior(x, prior, cw, groups=True)
    cands = post.top(settings.top_k)
    top, ptop = cands[0]
    runs_at = x.sum(1)
    n = len(x) - 1
    skip = frozenset(int(j) for j in untestable)
    # A skipped commit that has runs (its hosts kept getting lost) is not
    # probed again, but its evidence still splits the hypotheses.
    empty = frozenset(j for j in skip if runs_at[j] == 0)
    bl = blocks(n, empty)
    bp = block_probabilities(post.culprit, bl)
    order = np.argsort(-bp, kind="stable")
    top_blocks = [(bl[i][0], bl[i][1], float(bp[i])) for i in order[:settings.top_k]]
    lo, hi, pblock = top_blocks[0]
    pend: dict[int, int] = {}
    for j, m in in_flight:
        pend[int(j)] = pend.get(int(j), 0) + int(m)

    def done(verdict, culprit, conf, reason, **kw) -> Step:
        return Step(verdict, culprit, conf, post.p_no_change, cands, reason=reason, blocks=top_blocks, **kw)

    # Budget.
    spent = [what for what, over in (
        ("run", settings.max_runs is not None and runs_used >= settings.max_runs),
        ("host-hour", settings.max_host_hours is not None and host_minutes_used >= 60 * settings.max_host_hours),
        ("build", settings.max_builds is not None and builds_used >= settings.max_builds)) if over]

    if post.p_no_change >= settings.confidence:
        return done("no-regression", None, post.p_no_change, f"P(no change) = {post.p_no_change:.3f}")
    forced: list[tuple[int, int]] = []
    parent = testable_before(lo, empty)
    needed = culprit_confidence(post, hi, settings)
    if pblock >= needed and hi not in empty:
        short = [(j, settings.confirm_runs - int(runs_at[j])) for j in (hi, parent)
                 if j is not None and j not in skip and runs_at[j] < settings.confirm_runs]
        weak = [] if short else _weak_neighbours(x, post, hi, parent, settings.neighbour_factor, skip)
        short += [(j, 1) for j in weak]
        if not short:
            rates = culprit_rates(counts, hi, settings.bins, settings.interval_level)
            if lo == hi:
                return done("culprit", hi, pblock, f"P(c{hi}) = {pblock:.3f}, confirmed by runs at it and its parent",
                            rates=rates)
            return done("culprit-range", None, pblock,
                        f"P(c{lo}..c{hi}) = {pblock:.3f}; "
                        f"{f'c{lo}' if hi - lo == 1 else f'c{lo}..c{hi - 1}'} cannot be tested here", rates=rates,
                        range=(lo, hi))
        forced = [(j, m - pend.get(j, 0)) for j, m in short if m - pend.get(j, 0) > 0]
    front_lo, front_hi = bl[0]
    if 0 in skip and runs_at[0] == 0 and front_hi not in empty and not forced:
        # The good end cannot be tested: "culprit in the first block" and "no
        # change" both say every testable commit behaves alike, so no run can
        # split them. Stop once together they reach the confidence.
        p_front = float(bp[0]) + post.p_no_change
        if p_front >= settings.confidence and runs_at[front_hi] >= settings.confirm_runs:
            return done("inconclusive", top, ptop,
                        f"c0..c{front_hi - 1} cannot be tested here and every testable commit behaves like "
                        f"c{front_hi} (P = {p_front:.3f}): a change, if any, came at or before c{front_hi}")
    if spent:
        return done("inconclusive", top, ptop, f"{' and '.join(spent)} budget spent")
    if n in empty:
        return done("inconclusive", top, ptop, "the bad end cannot be tested here")
    # Learn the bad side early: with unknown rates and no data at the bad end,
    # passes anywhere are consistent with a small p1 (docs/bisection.md).
    if not forced and runs_at[n] + pend.get(n, 0) < settings.bad_end_runs \
            and x[n, 1] + x[n, 2] < settings.bad_end_events:
        forced = [(n, 1)]
    if pblock >= settings.predecessor_threshold and parent is not None and runs_at[parent] == 0 \
            and pend.get(parent, 0) == 0 and not forced:
        forced = [(parent, 1)]
    if settings.max_builds is not None:
        free_hosts = max(0, min(free_hosts, settings.max_builds - builds_used))
    max_new = None
    if settings.max_runs is not None:
        max_new = settings.max_runs - runs_used - sum(pend.values())
        if max_new <= 0:
            return Step(None, top, ptop, post.p_no_change, cands, reason="budget committed; waiting",
                        blocks=top_blocks)
    # Runs in flight at a commit found untestable will come back as infra: no pending evidence.
    testable_in_flight = [(j, m) for j, m in in_flight if int(j) not in skip]
    common = dict(in_flight=testable_in_flight, build_minutes=settings.build_minutes,
                  run_minutes=settings.run_minutes, rng=rng, iteration_options=settings.iteration_options,
                  commit_weights=cw, tie_tol=settings.tie_tol, forced=forced, rate_weight=settings.rate_weight,
                  max_new_runs=max_new, post=post, skip=skip)
    slots: list[int] = []
    if hosts is not None:
        placed = plan_hosts(x, prior, hosts=list(hosts)[:free_hosts], idle_fraction=settings.idle_fraction, **common)
        reqs = [(j, m) for j, m, _ in placed]
        slots = [h for _, _, h in placed]
    else:
        reqs = plan(x, prior, built=set(built), free_hosts=free_hosts, **common)
    if not reqs and not in_flight and free_hosts > 0:
        why = ("what is left to learn lies among commits that cannot be tested here" if lo != hi
               else "no probe carries information")
        return done("inconclusive", top, ptop, why)
    why = "confirmation runs" if forced and pblock >= needed else "most information per host-minute"
    return Step(None, top, ptop, post.p_no_change, cands, reqs, reason=why, blocks=top_blocks, hosts=slots)
