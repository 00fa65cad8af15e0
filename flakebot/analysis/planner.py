"""Where to run next: expected information about the culprit per host-minute.

For a probe of m runs at commit j the value is the mutual information
I(K; Y) between the hypothesis K (culprit c_1..c_n or "no change") and the
group counts Y of the m runs, using the exact posterior predictive of each
hypothesis (rates integrated out, posterior.py). Under hypothesis k a probe at
j < k sees the before side, at j >= k the after side, so P(Y | j) and
H(Y | K) for every j come from prefix sums over k: all commits in O(n * V)
(V = number of group-count outcomes of m runs). The m runs are treated as
i.i.d. given the hypothesis (their own learning about the rates is ignored).

Maximising I(K; Y) for a binary asymmetric channel lands where
P(culprit <= j) is near q* ~ 0.4, not at the median (docs/bisection.md); the
information criterion does that by itself and also values the predecessor of
a strong candidate (telling c from c-1 needs runs at c-1).

Cost: m * run_minutes, plus build_minutes if j is neither built nor already
being built by a request in flight or planned in this batch.

Batches and runs in flight: requests already submitted but not back are
*pending information*. Before choosing each request, the planner draws one
plausible world from the posterior (a hypothesis, then outcomes of every
pending run from that hypothesis' predictive), conditions on it, and picks the
best probe given that fantasy. This spreads a batch of hosts over the range
(like FACF's quantiles, but information-driven) instead of stacking every host
on one commit. Ties (within `tie_tol` of the best score) are broken at random,
so the choice is randomised between neighbours. Everything is deterministic
given the numpy Generator passed in.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Collection, Sequence

import numpy as np
from scipy.special import gammaln

from flakebot.analysis.posterior import G, Posterior, Prior, posterior


@lru_cache(maxsize=64)
def _outcomes(m: int) -> tuple[np.ndarray, np.ndarray]:
    """All group-count vectors of m runs (V, 3) and their log multinomial coefficients."""
    v = np.array([(a, b, m - a - b) for a in range(m + 1) for b in range(m + 1 - a)], dtype=float)
    coef = gammaln(m + 1.0) - gammaln(v + 1.0).sum(1)
    return v, coef


def _pmf(pred: np.ndarray, m: int) -> np.ndarray:
    """Multinomial pmf of m runs for each row of pred (rows, 3) -> (rows, V)."""
    v, coef = _outcomes(m)
    lp = np.log(np.clip(pred, 1e-300, None))
    return np.exp(coef[None, :] + lp @ v.T)


def _entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, -p * np.log(p), 0.0)
    return t.sum(-1)


def rate_information(post: Posterior) -> np.ndarray:
    """I(rates; Y | K) in nats for one run at each commit j = 0..n: what the run
    teaches about the rates of the side it falls on (mixture component),
    averaged over the culprit posterior. Large where the side's rates are
    still unknown (the bad side at a cold start)."""
    pk = post.culprit[1:]
    ib = _entropy(post.pred_before[1:]) - post.rate_ent_before[1:]
    ia = _entropy(post.pred_after[1:]) - post.rate_ent_after[1:]
    ca = np.concatenate([[0.0], np.cumsum(pk * ia)])
    cb = np.concatenate([[0.0], np.cumsum(pk * ib)])
    cb = cb[-1] - cb
    i0 = _entropy(post.pred_null) - post.rate_ent_null
    return np.maximum(ca + cb + post.p_no_change * i0, 0.0)


def information(post: Posterior, m: int = 1) -> np.ndarray:
    """I(K; Y) in nats for m runs at each commit j = 0..n (array of n+1)."""
    n = post.n
    pk = post.culprit[1:]  # k = 1..n
    pmf_b = _pmf(post.pred_before[1:], m)
    pmf_a = _pmf(post.pred_after[1:], m)
    pmf_0 = _pmf(post.pred_null[None, :], m)[0]
    wa = pk[:, None] * pmf_a
    wb = pk[:, None] * pmf_b
    # j = 0..n: after-side for k <= j, before-side for k > j.
    ca = np.vstack([np.zeros((1, wa.shape[1])), np.cumsum(wa, 0)])          # sum_{k<=j}
    cb = np.vstack([np.zeros((1, wb.shape[1])), np.cumsum(wb, 0)])
    cb = cb[-1][None, :] - cb                                                # sum_{k>j}
    py = ca + cb + post.p_no_change * pmf_0[None, :]
    ha = np.concatenate([[0.0], np.cumsum(pk * _entropy(pmf_a))])
    hb = np.concatenate([[0.0], np.cumsum(pk * _entropy(pmf_b))])
    hb = hb[-1] - hb
    hyk = ha + hb + post.p_no_change * _entropy(pmf_0)
    return np.maximum(_entropy(py) - hyk, 0.0)


def _fantasy(post: Posterior, group_counts: np.ndarray, pending: dict[int, int],
             rng: np.random.Generator) -> np.ndarray:
    """Group counts plus one draw of every pending run's outcome, from one
    hypothesis drawn from the posterior."""
    if not pending:
        return group_counts
    x = group_counts.copy()
    probs = np.concatenate([[post.p_no_change], post.culprit[1:]])
    probs = probs / probs.sum()
    h = int(rng.choice(len(probs), p=probs))  # 0 = no change, else culprit index
    for j, m in sorted(pending.items()):
        if h == 0:
            p = post.pred_null
        elif j >= h:
            p = post.pred_after[h]
        else:
            p = post.pred_before[h]
        x[j] += rng.multinomial(m, p / p.sum())
    return x


def _scored(post: Posterior, iteration_options: Sequence[int], budget: int, rate_weight: float,
            min_information: float, blocked: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """[(m, information of m runs at each commit)] for the options within budget;
    -inf where the information is below `min_information` or the commit is skipped."""
    ri = rate_weight * rate_information(post) if rate_weight > 0 else 0.0
    out = []
    for m in iteration_options:
        if m > budget:
            continue
        info = information(post, m) + m * ri
        info = np.where(info >= min_information, info, -np.inf)
        info[blocked] = -np.inf
        out.append((m, info))
    return out


def plan(group_counts, prior: Prior, *, built: set[int], in_flight: Sequence[tuple[int, int]],
         free_hosts: int, build_minutes: float, run_minutes: float, rng: np.random.Generator,
         iteration_options: Sequence[int] = (1,), commit_weights=None, tie_tol: float = 0.05,
         forced: Sequence[tuple[int, int]] = (), min_information: float = 1e-6, rate_weight: float = 0.0,
         max_new_runs: int | None = None, post: Posterior | None = None,
         skip: Collection[int] = ()) -> list[tuple[int, int]]:
    """One (commit, iterations) request per free host.

    group_counts: (n+1, 3) evidence; in_flight: requests submitted but not
    back; forced: requests the caller wants first (confirmation runs), which
    use up hosts. Returns fewer requests than free hosts only when nothing is
    worth running (information below `min_information`) or `max_new_runs`
    is reached. `skip`: commits no host can test (never probed, forced or not).
    """
    x = np.asarray(group_counts, dtype=float)
    n = x.shape[0] - 1
    pending: dict[int, int] = {}
    for j, m in in_flight:
        pending[int(j)] = pending.get(int(j), 0) + int(m)
    have_build = set(built) | set(pending)
    out: list[tuple[int, int]] = []
    budget = max_new_runs if max_new_runs is not None else 10**12
    blocked = np.array(sorted(int(j) for j in skip), dtype=int)
    for j, m in forced:
        if int(j) in skip:
            continue
        if len(out) >= free_hosts or budget <= 0:
            break
        m = min(int(m), budget)
        out.append((int(j), m))
        pending[int(j)] = pending.get(int(j), 0) + m
        have_build.add(int(j))
        budget -= m
    base = post if post is not None else posterior(x, prior, commit_weights, groups=True)
    while len(out) < free_hosts and budget > 0:
        post = posterior(_fantasy(base, x, pending, rng), prior, commit_weights, groups=True) if pending else base
        best_score, options = 0.0, []
        cost_build = np.array([0.0 if j in have_build else build_minutes for j in range(n + 1)])
        scored = [(m, info / (cost_build + m * run_minutes))
                  for m, info in _scored(post, iteration_options, budget, rate_weight, min_information, blocked)]
        best_score = max([best_score] + [float(sc.max()) for _, sc in scored])
        if not best_score > 0:
            break
        for m, score in scored:
            options.extend((int(j), int(m)) for j in np.flatnonzero(score >= (1 - tie_tol) * best_score))
        j, m = options[int(rng.integers(len(options)))]
        out.append((j, m))
        pending[j] = pending.get(j, 0) + m
        have_build.add(j)
        budget -= m
    return out


def host_build_sets(builds: Sequence[tuple[str | None, int]], keep: int = 1) -> dict[str, frozenset[int]]:
    """Which commits each host has built: `builds` are (host, commit index) in
    the order the hosts built them (oldest first); a host keeps its last
    `keep` distinct commits (the host script builds in one SPDK_DIR, so
    keep=1: a new commit replaces the old build). Builds without a host
    (not yet started) are ignored.

    >>> sorted(host_build_sets([("a", 1), ("b", 2), ("a", 3)])["a"])
    [3]
    >>> sorted(host_build_sets([("a", 1), ("a", 3), ("a", 1)], keep=2)["a"])
    [1, 3]
    """
    last: dict[str, list[int]] = {}
    for host, j in builds:
        if not host:
            continue
        seq = last.setdefault(host, [])
        if j in seq:
            seq.remove(j)
        seq.append(int(j))
        del seq[:-max(1, int(keep))]
    return {h: frozenset(v) for h, v in last.items()}


def plan_hosts(group_counts, prior: Prior, *, hosts: Sequence[Collection[int]], in_flight: Sequence[tuple[int, int]],
               build_minutes: float, run_minutes: float, rng: np.random.Generator,
               iteration_options: Sequence[int] = (1,), commit_weights=None, tie_tol: float = 0.05,
               forced: Sequence[tuple[int, int]] = (), min_information: float = 1e-6, rate_weight: float = 0.0,
               max_new_runs: int | None = None, post: Posterior | None = None,
               skip: Collection[int] = (), idle_fraction: float = 0.0) -> list[tuple[int, int, int]]:
    """`plan` for hosts that build for themselves: `hosts[h]` is the set of
    commits free host h has built; a request on h costs a build unless h has
    the commit. Returns (commit, iterations, h), at most one per free host.

    Each choice is the best (host, commit, iterations) by information per
    host-minute over every free host, so more runs of a commit go to a host
    that has it built, and a commit is built on another host only when its
    information pays for the build there. Forced requests go to a host that
    has their commit built when one is free. Runs in flight are pending
    information as in `plan` (a build in flight elsewhere does not help h).

    `idle_fraction` > 0 leaves hosts idle: a host gets a request only if its
    information per host-minute (build included) is at least that fraction
    of the best information per run-minute any probe offers (the value of
    the best probe were it built everywhere), since every new commit on a
    host costs a build. With nothing in flight and nothing chosen yet the
    best request is always sent (the search must go on).
    """
    x = np.asarray(group_counts, dtype=float)
    n = x.shape[0] - 1
    pending: dict[int, int] = {}
    for j, m in in_flight:
        pending[int(j)] = pending.get(int(j), 0) + int(m)
    free = list(range(len(hosts)))
    out: list[tuple[int, int, int]] = []
    budget = max_new_runs if max_new_runs is not None else 10**12
    blocked = np.array(sorted(int(j) for j in skip), dtype=int)
    for j, m in forced:
        j = int(j)
        if j in skip:
            continue
        if not free or budget <= 0:
            break
        h = next((h for h in free if j in hosts[h]), free[0])
        m = min(int(m), budget)
        out.append((j, m, h))
        free.remove(h)
        pending[j] = pending.get(j, 0) + m
        budget -= m
    base = post if post is not None else posterior(x, prior, commit_weights, groups=True)
    while free and budget > 0:
        post = posterior(_fantasy(base, x, pending, rng), prior, commit_weights, groups=True) if pending else base
        scored = _scored(post, iteration_options, budget, rate_weight, min_information, blocked)
        # Hosts with the same built set score alike: score each distinct set once.
        kinds: dict[frozenset[int], list[int]] = {}
        for h in free:
            kinds.setdefault(frozenset(int(j) for j in hosts[h]), []).append(h)
        best_score, table = 0.0, []
        for built, hs in kinds.items():
            cost_build = np.full(n + 1, float(build_minutes))
            cost_build[[j for j in built if 0 <= j <= n]] = 0.0
            for m, info in scored:
                score = info / (cost_build + m * run_minutes)
                table.append((hs, m, score))
                best_score = max(best_score, float(score.max()))
        if not best_score > 0:
            break
        if idle_fraction > 0 and (out or in_flight):
            free_build = max(float((info / (m * run_minutes)).max()) for m, info in scored)
            if best_score < idle_fraction * free_build:
                break
        options = [(hs, int(j), m) for hs, m, score in table
                   for j in np.flatnonzero(score >= (1 - tie_tol) * best_score)]
        hs, j, m = options[int(rng.integers(len(options)))]
        h = hs[0]
        out.append((j, m, h))
        free.remove(h)
        pending[j] = pending.get(j, 0) + m
        budget -= m
    return out
