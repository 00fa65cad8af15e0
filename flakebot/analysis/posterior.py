"""The culprit posterior: exact, O(n * M) per update, log-space.

Commits c_0 (good end, index 0) .. c_n (bad end). Hypotheses: "culprit is c_k"
(k = 1..n: runs at commits >= k come from the *after* distribution, runs at
commits < k from the *before* distribution) and "no change in this range" (H0:
every commit has one distribution).

Evidence: counts[i][class] per commit (classes.py). The likelihood works on the
three groups ok / near / bad. The split inside a group (fast vs slowish pass,
60-80 vs 80-90 s, timeout vs fail) is modelled as one Dirichlet-categorical
shared by both sides; its marginal likelihood is the same under every
hypothesis and cancels exactly, so it is not computed. (Letting it change at
the culprit would make every hypothesis pay an Occam penalty for splits that
rarely carry the signal; near misses as a group do carry it, and they are a
group of their own.)

Each side of the culprit is a categorical over the groups with a prior that is
a *mixture of Dirichlets*; the mixture is over pairs (before component, after
component) so that the two sides are coupled: the default prior only contains
pairs where the after side is worse (more 'bad' or more 'near' mass, by a
margin). For every hypothesis the rates are integrated out exactly:

    P(data | k) = sum_{a,b} W[a,b] * DM(before_k; alpha_a) * DM(after_k; beta_b)

with DM the Dirichlet-categorical (sequence) marginal, computed with gammaln on
prefix sums of the counts. H0 uses its own single-side mixture on the totals.

Component concentration (default 300) is high: each component is close to a
point on the rate grid, so the mixture is in effect a discretised prior over
(p0, p1) with the rates still integrated out exactly (within components by the
Dirichlet, across them by the sum). A low concentration (e.g. 30) makes the
rise constraint soft (data can stretch a component far from its mean), so a
*drop* in the rate can be named as a culprit and "no change" can never win;
both are tested.

Why restrict to rises: the bot is asked "which commit made it worse"; a model
that also allows falls spends prior mass on explanations nobody asked about
(label switching: a 'culprit' that fixed things), and, more importantly, with a
minimum rise the absence of failures at a commit is evidence that it is before
the culprit. Changes smaller than the margin are absorbed by H0 / by the
neighbouring grid components; such changes are not findable at a sane budget.

Priors from what the store knows (`prior_from_evidence`) condition the mixture
on the history before the range (before side) and on the evidence at the bad
end (after side), with counts capped so that old data cannot dominate.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy.special import gammaln


def logsumexp(a, axis=None):
    """log(sum(exp(a))) along axis, stable, -inf for all -inf (numpy only; fast)."""
    a = np.asarray(a, dtype=np.float64)
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    if axis is None:
        return float(out.reshape(()))
    return np.squeeze(out, axis=axis)

from flakebot.analysis.classes import DEFAULT_BINS, Bins, to_groups

G = 3  # groups: ok, near, bad

# Default grid: rates of the 'bad' group (timeout + fail) and of the 'near' group.
BAD_GRID = (0.001, 0.004, 0.015, 0.04, 0.1, 0.2, 0.35, 0.55, 0.8)
NEAR_GRID = (0.002, 0.02, 0.08, 0.25)


@dataclass(frozen=True)
class Prior:
    """Mixture-of-Dirichlet prior over (before, after) group distributions.

    alpha_before (Mb, 3), alpha_after (Ma, 3): Dirichlet pseudo-counts of the
    components (group order ok, near, bad). log_pair (Mb, Ma): log weights of
    component pairs (-inf = excluded), normalised. alpha_null (M0, 3) and
    log_null (M0,): H0's single-side mixture. p_no_change: prior of H0.
    """

    alpha_before: np.ndarray
    alpha_after: np.ndarray
    log_pair: np.ndarray
    alpha_null: np.ndarray
    log_null: np.ndarray
    p_no_change: float = 0.1

    def with_no_change(self, p: float) -> "Prior":
        return replace(self, p_no_change=float(p))


def _norm_log(w: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        lw = np.log(np.asarray(w, dtype=np.float64))
    return lw - logsumexp(lw)


@lru_cache(maxsize=32)
def default_prior(
    p_no_change: float = 0.5,
    concentration: float = 300.0,
    min_rise: float = 0.01,
    bad_grid: tuple[float, ...] = BAD_GRID,
    near_grid: tuple[float, ...] = NEAR_GRID,
    before_decay: float = 0.5,
    baseline_knee: tuple[float, float] = (0.04, 0.08),
    after_power: float = 0.0,
    min_after: float = 0.0,
) -> Prior:
    """The cold-start prior.

    Components: every (bad rate f, near rate g) on the grids, Dirichlet with mean
    (1-f-g, g, f) and total `concentration` (so the 0.001 component is about
    Beta(0.3, 300) on the bad rate: LUCI's "most segments fail < 1%").
    Before side: flat up to `baseline_knee` (bad, near), then decaying by
    `before_decay` per grid step above it. Flat below the knee because a test
    worth bisecting usually has other flakes ("p0 is often not zero"); a
    prior that favours the cleanest baselines makes a left neighbour's chance
    failures look like the rise and names it with false confidence (#3322 shape:
    0.80 right at a stated 0.95 with per-step decay from the bottom of the grid,
    0.91 with this shape; docs/benchmarks/bisect.md). Decaying above the
    knee: tests that already fail 10%+ of the time are rarely bisected. A knee
    at the grid's first point gives the old per-step decay from the bottom.
    After side: weight f ** after_power over the
    (log-spaced) grid (0 = flat in log f). Pairs allowed only when the after side is no better in
    either group and worse by >= `min_rise` (absolute) and >= 2x in one group.
    """
    pts = [(f, g) for f in bad_grid for g in near_grid if f + g <= 0.95]
    mean = np.array([[1.0 - f - g, g, f] for f, g in pts])
    alpha = concentration * mean
    fi = {f: i for i, f in enumerate(bad_grid)}
    gi = {g: i for i, g in enumerate(near_grid)}
    kf = int(np.searchsorted(bad_grid, baseline_knee[0], side="right")) - 1
    kg = int(np.searchsorted(near_grid, baseline_knee[1], side="right")) - 1
    wb = np.array([before_decay ** (max(0, fi[f] - kf) + max(0, gi[g] - kg)) for f, g in pts])
    wa = np.array([f ** after_power for f, g in pts])
    M = len(pts)
    W = np.zeros((M, M))
    for a, (f0, g0) in enumerate(pts):
        for b, (f1, g1) in enumerate(pts):
            if f1 < f0 or g1 < g0:
                continue
            rise_bad = f1 - f0 >= min_rise and f1 >= 2 * f0 and f1 >= min_after
            rise_near = g1 - g0 >= min_rise and g1 >= 2 * g0 and g1 >= min_after
            if rise_bad or rise_near:
                W[a, b] = wb[a] * wa[b]
    w0 = wb / wb.sum() + wa / wa.sum()
    return Prior(alpha, alpha.copy(), _norm_log(W), alpha.copy(), _norm_log(w0), float(p_no_change))


def known_rates_prior(before: Sequence[float], after: Sequence[float], p_no_change: float = 0.1,
                      concentration: float = 1e7) -> Prior:
    """Point-mass prior at known group probabilities (ok, near, bad) on each side
    (for benchmarks: 'the same engine told the true rates'). H0 is 'all commits
    like the before side' or 'all like the after side', equally likely."""
    b = np.clip(np.asarray(before, dtype=float), 1e-9, None)
    a = np.clip(np.asarray(after, dtype=float), 1e-9, None)
    b, a = b / b.sum(), a / a.sum()
    ab, aa = concentration * b[None, :], concentration * a[None, :]
    return Prior(ab, aa, np.zeros((1, 1)), np.vstack([ab, aa]), _norm_log(np.ones(2)), float(p_no_change))


def log_dm(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """log Dirichlet-categorical (sequence) marginal: x (..., G), alpha (M, G) -> (..., M)."""
    x = np.asarray(x, dtype=np.float64)[..., None, :]
    S = alpha.sum(-1)
    N = x.sum(-1)
    return (gammaln(S) - gammaln(S + N)
            + (gammaln(alpha + x) - gammaln(alpha)).sum(-1))


def _cap(x: np.ndarray, cap: float | None) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    n = x.sum()
    if cap is not None and n > cap:
        x = x * (cap / n)
    return x


def prior_from_evidence(baseline_counts=None, bad_counts=None, cap: float | None = 50.0,
                        base: Prior | None = None, bins: Bins = DEFAULT_BINS) -> Prior:
    """Condition `base` (default_prior()) on evidence outside the range.

    baseline_counts: class counts from history before c_0 (before side under
    every culprit hypothesis). bad_counts: class counts at/after the bad end
    that are NOT in the campaign's counts (after side under every hypothesis).
    Each is scaled down to at most `cap` runs (tempering: old data, other hosts
    and other days cannot dominate the fresh evidence). The update is exact
    Bayesian conditioning on the scaled counts: component pseudo-counts grow,
    pair weights and p_no_change are reweighted by the marginal likelihoods.
    """
    p = base or default_prior()
    xb = np.zeros(G) if baseline_counts is None else _cap(to_groups([baseline_counts], bins)[0], cap)
    xa = np.zeros(G) if bad_counts is None else _cap(to_groups([bad_counts], bins)[0], cap)
    lb = log_dm(xb, p.alpha_before)
    la = log_dm(xa, p.alpha_after)
    lp = p.log_pair + lb[:, None] + la[None, :]
    l0 = p.log_null + log_dm(xb + xa, p.alpha_null)
    z1, z0 = logsumexp(lp), logsumexp(l0)
    lo = np.log(p.p_no_change) + z0 - np.logaddexp(np.log(p.p_no_change) + z0, np.log1p(-p.p_no_change) + z1)
    return Prior(p.alpha_before + xb, p.alpha_after + xa, lp - z1, p.alpha_null + xb + xa, l0 - z0,
                 float(np.exp(lo)))


SUSPECT_PREFIXES = ("test/vhost", "test/vfio_user", "lib/vfio_user", "lib/nvmf",
                    "module/bdev/virtio", "lib/virtio", "lib/vhost", "test/common/autotest_common.sh")


def path_weights(paths_per_commit: Sequence[Sequence[str]], suspect_prefixes: Sequence[str] = SUSPECT_PREFIXES,
                 factor: float = 3.0) -> list[float]:
    """Per-commit prior weights: `factor` for commits touching a suspect path,
    1 otherwise. Index 0 (the good end) can never be the culprit and gets 0.
    Off by default: pass the result as `commit_weights` to `posterior`."""
    w = []
    for i, paths in enumerate(paths_per_commit):
        if i == 0:
            w.append(0.0)
            continue
        hit = any(p.startswith(tuple(suspect_prefixes)) for p in paths)
        w.append(float(factor) if hit else 1.0)
    return w


@dataclass(frozen=True)
class Posterior:
    """Result of `posterior`. culprit[k] = P(culprit is c_k) (culprit[0] = 0);
    p_no_change = P(H0); culprit.sum() + p_no_change == 1.

    pred_before[k] / pred_after[k]: posterior predictive group probabilities
    of one more run on the before / after side under hypothesis k (row 0
    unused); pred_null: under H0. Used by the planner.
    """

    culprit: np.ndarray
    p_no_change: float
    log_culprit: np.ndarray
    log_no_change: float
    pred_before: np.ndarray
    pred_after: np.ndarray
    pred_null: np.ndarray
    rate_ent_before: np.ndarray  # sum_m u_m H(pred_m): see _predictive
    rate_ent_after: np.ndarray
    rate_ent_null: float

    @property
    def n(self) -> int:
        return len(self.culprit) - 1

    def top(self, k: int = 5) -> list[tuple[int, float]]:
        idx = np.argsort(-self.culprit[1:], kind="stable")[:k] + 1
        return [(int(i), float(self.culprit[i])) for i in idx]

    def cdf(self) -> np.ndarray:
        """P(culprit <= k), k = 0..n (culprit hypotheses only, not H0)."""
        return np.cumsum(self.culprit)


def _pair_logsumexp(Lb: np.ndarray, La: np.ndarray, log_pair: np.ndarray):
    """For each row k: log sum_{a,b} exp(log_pair[a,b] + Lb[k,a] + La[k,b]),
    plus the per-component posterior weights of each side. Fast path with two
    matrix products; rows that would underflow are redone in full log space."""
    mb = Lb.max(1, keepdims=True)
    ma = La.max(1, keepdims=True)
    Eb = np.exp(Lb - mb)
    Ea = np.exp(La - ma)
    W = np.exp(log_pair)
    EaW = Ea @ W.T  # (n, Mb): sum_b W[a,b] Ea[k,b]
    tot = (Eb * EaW).sum(1)
    ub = Eb * EaW
    ua = Ea * (Eb @ W)
    with np.errstate(divide="ignore"):
        out = np.log(tot) + mb[:, 0] + ma[:, 0]
    bad = ~(tot > 1e-250)
    if bad.any():
        T = log_pair[None] + Lb[bad][:, :, None] + La[bad][:, None, :]
        z = logsumexp(T, axis=(1, 2))
        out[bad] = z
        ub[bad] = np.exp(logsumexp(T, axis=2) - z[:, None])
        ua[bad] = np.exp(logsumexp(T, axis=1) - z[:, None])
    ub = ub / ub.sum(1, keepdims=True)
    ua = ua / ua.sum(1, keepdims=True)
    return out, ub, ua


def _predictive(u: np.ndarray, alpha: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mixture predictive sum_m u[k,m] (alpha[m] + x[k]) / (S[m] + N[k]) -> (n, G),
    and the expected entropy of the component predictives sum_m u[k,m] H(p_m) -> (n,)
    (the difference H(mixture) - that is what one run teaches about the rates)."""
    num = alpha[None, :, :] + x[:, None, :]
    p = num / num.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(p > 0, -p * np.log(p), 0.0).sum(-1)
    return np.einsum("km,kmg->kg", u, p), (u * h).sum(-1)


def posterior(counts, prior: Prior | None = None, commit_weights: Sequence[float] | None = None,
              bins: Bins = DEFAULT_BINS, groups: bool = False) -> Posterior:
    """Exact posterior over the culprit and H0.

    counts: (n+1, n_classes) class counts (index 0 = good end), or (n+1, 3)
    group counts with groups=True. commit_weights: optional prior weights per
    commit (index 0 ignored), e.g. from `path_weights`; uniform by default.
    """
    prior = prior or default_prior()
    x = np.asarray(counts, dtype=np.float64) if groups else to_groups(counts, bins)
    if x.ndim != 2 or x.shape[1] != G or x.shape[0] < 2:
        raise ValueError("need counts for at least two commits (good end and bad end)")
    n = x.shape[0] - 1
    total = x.sum(0)
    # Prefix sums only change after a commit with runs: compute every side
    # likelihood once per distinct prefix (O(#probed commits * M)), then expand.
    has = x.sum(1) > 0
    seg = np.cumsum(has)[:-1]          # seg[k-1] = #commits with runs among 0..k-1
    cum = np.vstack([np.zeros((1, G)), np.cumsum(x[has], axis=0)])
    Bu = cum                           # distinct "counts before" vectors
    Au = total[None, :] - Bu
    Lb = log_dm(Bu, prior.alpha_before)
    La = log_dm(Au, prior.alpha_after)
    lmu, ubu, uau = _pair_logsumexp(Lb, La, prior.log_pair)
    lm = lmu[seg]
    if commit_weights is None:
        lw = np.full(n, -np.log(n))
    else:
        w = np.asarray(commit_weights, dtype=float)
        if w.shape != (n + 1,) or (w < 0).any() or w[1:].sum() <= 0:
            raise ValueError("commit_weights must have n+1 non-negative entries")
        with np.errstate(divide="ignore"):
            lw = np.log(w[1:] / w[1:].sum())
    l0c = prior.log_null + log_dm(total, prior.alpha_null)
    lm0 = logsumexp(l0c)
    u0 = np.exp(l0c - lm0)
    lk = np.log1p(-prior.p_no_change) + lw + lm
    l0 = np.log(prior.p_no_change) + lm0 if prior.p_no_change > 0 else -np.inf
    z = np.logaddexp(logsumexp(lk), l0)
    log_c = np.concatenate([[-np.inf], lk - z])
    culprit = np.exp(log_c)
    pb = np.zeros((n + 1, G))
    pa = np.zeros((n + 1, G))
    hb = np.zeros(n + 1)
    ha = np.zeros(n + 1)
    q, h = _predictive(ubu, prior.alpha_before, Bu)
    pb[1:], hb[1:] = q[seg], h[seg]
    q, h = _predictive(uau, prior.alpha_after, Au)
    pa[1:], ha[1:] = q[seg], h[seg]
    q, h = _predictive(u0[None, :], prior.alpha_null, total[None, :])
    return Posterior(culprit, float(np.exp(l0 - z)), log_c, float(l0 - z), pb, pa, q[0], hb, ha, float(h[0]))
