import itertools
import math

import numpy as np
import pytest

from flakebot.analysis.posterior import (default_prior, known_rates_prior, path_weights, posterior,
                                         prior_from_evidence)


def seq_dm(x, alpha):
    """Dirichlet-categorical marginal of a count vector by the sequential rule
    (independent of the gammaln formula)."""
    lp, seen, S = 0.0, np.zeros(len(alpha)), float(np.sum(alpha))
    n = 0
    for c, k in enumerate(x):
        for _ in range(int(k)):
            lp += math.log((alpha[c] + seen[c]) / (S + n))
            seen[c] += 1
            n += 1
    return lp


def brute(gcounts, prior, weights=None):
    """O(n^2 * M^2) posterior straight from the definition."""
    n = len(gcounts) - 1
    w = np.ones(n + 1) if weights is None else np.asarray(weights, float)
    w = w[1:] / w[1:].sum()
    logs = []
    for k in range(1, n + 1):
        b = np.sum(gcounts[:k], axis=0)
        a = np.sum(gcounts[k:], axis=0)
        terms = [prior.log_pair[i, j] + seq_dm(b, prior.alpha_before[i]) + seq_dm(a, prior.alpha_after[j])
                 for i, j in itertools.product(range(len(prior.alpha_before)), range(len(prior.alpha_after)))
                 if np.isfinite(prior.log_pair[i, j])]
        logs.append(math.log(1 - prior.p_no_change) + math.log(w[k - 1]) + np.logaddexp.reduce(terms))
    t = np.sum(gcounts, axis=0)
    l0 = math.log(prior.p_no_change) + np.logaddexp.reduce(
        [prior.log_null[i] + seq_dm(t, prior.alpha_null[i]) for i in range(len(prior.alpha_null))])
    z = np.logaddexp.reduce(logs + [l0])
    return np.exp(np.array(logs) - z), math.exp(l0 - z)


SMALL_PRIOR = default_prior(bad_grid=(0.01, 0.1, 0.4), near_grid=(0.01, 0.2))


@pytest.mark.parametrize("seed, n, prior, weights", [
    (0, 3, SMALL_PRIOR, None),
    (1, 6, SMALL_PRIOR, None),
    (2, 5, SMALL_PRIOR, [0, 1, 3, 1, 1, 2]),
    (3, 4, known_rates_prior([0.9, 0.05, 0.05], [0.6, 0.2, 0.2]), None),
    (4, 7, default_prior(), None),
])
def test_exact_vs_brute_force(seed, n, prior, weights):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 4, size=(n + 1, 3))
    g[rng.random(n + 1) < 0.3] = 0  # some commits without runs
    post = posterior(g, prior, weights, groups=True)
    pk, p0 = brute(g, prior, weights)
    np.testing.assert_allclose(post.culprit[1:], pk, rtol=1e-7, atol=1e-12)
    assert post.p_no_change == pytest.approx(p0, rel=1e-7, abs=1e-12)
    assert post.culprit[0] == 0.0
    assert post.culprit.sum() + post.p_no_change == pytest.approx(1.0, abs=1e-12)


def test_class_counts_and_group_counts_agree():
    rng = np.random.default_rng(5)
    c = rng.integers(0, 3, size=(9, 6))
    g = np.stack([c[:, :2].sum(1), c[:, 2:4].sum(1), c[:, 4:].sum(1)], axis=1)
    a, b = posterior(c), posterior(g, groups=True)
    np.testing.assert_allclose(a.culprit, b.culprit)


def test_no_data_gives_the_prior():
    post = posterior(np.zeros((11, 6)))
    assert post.p_no_change == pytest.approx(0.5)
    np.testing.assert_allclose(post.culprit[1:], 0.05)
    w = path_weights([[]] + [["lib/nvmf/ctrlr.c"] if i == 4 else ["doc/x.md"] for i in range(1, 11)], factor=3.0)
    post = posterior(np.zeros((11, 6)), commit_weights=w)
    assert post.culprit[4] == pytest.approx(3 * post.culprit[5])


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.3])
def test_no_change_wins_on_identical_data(rate):
    n, runs = 8, 200
    g = np.zeros((n + 1, 3))
    g[:, 2] = round(rate * runs)
    g[:, 0] = runs - g[:, 2]
    post = posterior(g, groups=True)
    assert post.p_no_change > 0.9
    assert post.p_no_change > post.culprit.max() * 10


@pytest.mark.parametrize("k, p0, p1", [(1, 0.0, 0.5), (5, 0.0, 0.5), (8, 0.0, 0.5), (5, 0.02, 0.3), (3, 0.1, 0.5)])
def test_clear_step_gives_the_culprit(k, p0, p1):
    n, runs = 8, 60
    g = np.zeros((n + 1, 3))
    for i in range(n + 1):
        p = p1 if i >= k else p0
        g[i] = [runs - round(p * runs), 0, round(p * runs)]
    post = posterior(g, groups=True)
    assert post.top(1)[0][0] == k
    assert post.culprit[k] > 0.95


def test_near_misses_alone_are_evidence():
    g = np.zeros((9, 3))
    g[:5] = [60, 0, 0]
    g[5:] = [40, 20, 0]
    post = posterior(g, groups=True)
    assert post.top(1)[0][0] == 5 and post.culprit[5] > 0.95


@pytest.mark.parametrize("low, high", [([18, 0, 2], [20, 0, 0]), ([16, 0, 4], [20, 0, 0])])
def test_a_drop_is_not_a_culprit_but_the_same_rise_is(low, high):
    g = np.zeros((9, 3))
    prior = default_prior(p_no_change=0.1)  # the figures below were chosen at this prior of "no change"
    g[:5], g[5:] = low, high          # rate falls at commit 5
    drop = posterior(g, prior, groups=True)
    g[:5], g[5:] = high, low          # the mirror image: rate rises at 5
    rise = posterior(g, prior, groups=True)
    assert drop.culprit[5] < 0.1 and drop.p_no_change > 0.5
    assert rise.culprit[5] > 0.8


@pytest.mark.parametrize("scale", [1e3, 1e5, 1e6])
def test_log_space_stability_with_big_counts(scale):
    n = 40
    g = np.zeros((n + 1, 3))
    g[:17] = [scale, 0, 0.01 * scale]
    g[17:] = [scale, 0.05 * scale, 0.03 * scale]
    post = posterior(g, groups=True)
    assert np.all(np.isfinite(post.culprit)) and np.isfinite(post.p_no_change)
    assert post.culprit.sum() + post.p_no_change == pytest.approx(1.0)
    assert post.culprit[17] > 0.999
    assert np.all(np.isfinite(post.pred_before[1:])) and np.all(np.isfinite(post.pred_after[1:]))


def test_prior_from_evidence_is_capped_and_informative():
    cold = default_prior()
    base = [1000, 0, 0, 0, 5, 0]
    bad = [60, 0, 0, 0, 40, 0]
    p_cap = prior_from_evidence(base, bad, cap=50)
    p_nocap = prior_from_evidence(base, bad, cap=None)
    # pseudo-counts added are at most the cap
    assert (p_cap.alpha_before - cold.alpha_before).sum(1).max() == pytest.approx(50)
    assert (p_nocap.alpha_before - cold.alpha_before).sum(1).max() == pytest.approx(1005)
    # evidence of a rise makes "no change" less likely
    assert p_cap.p_no_change < cold.p_no_change
    # and a single failure-free commit above a failing one is judged with the learnt rates
    g = np.zeros((5, 3))
    g[2] = [10, 0, 0]
    g[3] = [6, 0, 4]
    a = posterior(g, cold, groups=True)
    b = posterior(g, p_cap, groups=True)
    assert b.culprit[3] > a.culprit[3]


def test_prior_from_no_evidence_is_the_prior():
    cold = default_prior()
    p = prior_from_evidence(None, None)
    np.testing.assert_allclose(p.alpha_before, cold.alpha_before)
    assert p.p_no_change == pytest.approx(cold.p_no_change)


@pytest.mark.parametrize("paths, expected", [
    ([[], ["test/vfio_user/nvme/x.sh"], ["doc/a.md"], ["lib/nvmf/tcp.c", "doc/b.md"]], [0, 3, 1, 3]),
    ([[], [], ["module/bdev/virtio/bdev_virtio_blk.c"]], [0, 1, 3]),
])
def test_path_weights(paths, expected):
    assert path_weights(paths, factor=3.0) == expected


def test_bad_inputs():
    with pytest.raises(ValueError):
        posterior(np.zeros((1, 6)))
    with pytest.raises(ValueError):
        posterior(np.zeros((4, 6)), commit_weights=[0, 1, 1])
