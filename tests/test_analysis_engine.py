import numpy as np
import pytest

from flakebot.analysis import EngineSettings, beta_rate, culprit_rates, known_rates_prior, step

N = 16


def counts_step(k, fail_before=0, fail_after=10, runs=20, n=N, empty=()):
    c = np.zeros((n + 1, 6), dtype=int)
    for i in range(n + 1):
        if i in empty:
            continue
        f = fail_after if i >= k else fail_before
        c[i] = [runs - f, 0, 0, 0, f, 0]
    return c


@pytest.mark.parametrize("counts, settings, runs_used, host_min, verdict, culprit", [
    (counts_step(7), EngineSettings(), 340, 0, "culprit", 7),
    (counts_step(1), EngineSettings(), 340, 0, "culprit", 1),
    (counts_step(N), EngineSettings(), 340, 0, "culprit", N),
    (counts_step(99, fail_before=0, fail_after=0, runs=150), EngineSettings(), 2550, 0, "no-regression", None),
    (np.zeros((N + 1, 6), int), EngineSettings(max_runs=10), 10, 0, "inconclusive", None),
    (np.zeros((N + 1, 6), int), EngineSettings(max_host_hours=1), 5, 61, "inconclusive", None),
    (np.zeros((N + 1, 6), int), EngineSettings(max_runs=10), 3, 0, None, None),
])
def test_stop_rule_table(counts, settings, runs_used, host_min, verdict, culprit):
    s = step(counts, set(range(N + 1)), runs_used, host_min, [], 2, settings)
    assert s.verdict == verdict
    if verdict == "culprit":
        assert s.culprit == culprit and s.confidence >= 0.95 and s.requests == []
        assert s.rates is not None and s.rates.culprit == culprit
    if verdict is None:
        assert len(s.requests) == 2
    if verdict == "inconclusive":
        assert s.candidates and s.requests == []


def test_culprit_needs_confirmation_runs_at_it_and_its_parent():
    c = counts_step(7, fail_before=0, fail_after=10, runs=20)
    c[7] = [0, 0, 0, 0, 1, 0]  # one failing run at the culprit
    st = EngineSettings(confirm_runs=3)
    s = step(c, set(range(N + 1)), 400, 0, [], 4, st)
    assert s.verdict is None and s.confidence >= 0.95
    assert s.requests[0] == (7, 2)
    # in flight confirmation is not requested twice
    s = step(c, set(range(N + 1)), 400, 0, [(7, 2)], 1, st)
    assert (7, 2) not in s.requests
    c[7] = [1, 0, 0, 0, 2, 0]
    s = step(c, set(range(N + 1)), 403, 0, [], 4, st)
    assert s.verdict == "culprit" and s.culprit == 7 and s.rates.after.failure.k > 0


def test_infra_free_counts_and_candidates_are_sorted():
    s = step(np.zeros((N + 1, 6), int), set(), 0, 0, [], 3, EngineSettings())
    probs = [p for _, p in s.candidates]
    assert probs == sorted(probs, reverse=True)
    assert len(s.requests) == 3 and s.verdict is None


def test_determinism_by_seed():
    c = counts_step(9, fail_after=1, runs=2)
    a = step(c, set(), 30, 0, [(3, 1)], 5, EngineSettings(seed=3))
    b = step(c, set(), 30, 0, [(3, 1)], 5, EngineSettings(seed=3))
    assert a == b


def test_budget_committed_waits_for_results():
    s = step(np.zeros((N + 1, 6), int), set(), 8, 0, [(3, 2)], 4, EngineSettings(max_runs=10))
    assert s.verdict is None and s.requests == []


@pytest.mark.parametrize("bad", [dict(confidence=1.0), dict(max_runs=-1), dict(run_minutes=0),
                                 dict(iteration_options=())])
def test_bad_settings(bad):
    with pytest.raises(ValueError):
        EngineSettings(**bad)


def test_credible_intervals_cover_the_truth():
    rng = np.random.default_rng(7)
    for p, n in [(0.02, 200), (0.1, 100), (0.5, 30)]:
        hits = 0
        for _ in range(400):
            k = rng.binomial(n, p)
            r = beta_rate(k, n, 0.9)
            hits += r.lo <= p <= r.hi
        assert 0.84 <= hits / 400 <= 0.97


def test_culprit_rates_split_the_evidence():
    c = counts_step(5, fail_before=1, fail_after=8, runs=20)
    c[:, 2] = 1  # a near miss at every commit
    r = culprit_rates(c, 5)
    assert r.before.runs == 5 * 21 and r.after.runs == 12 * 21
    assert r.before.failure.k == 5 and r.after.failure.k == 12 * 8
    assert r.before.near_miss.k == 5
    assert r.before.failure.hi < r.after.failure.lo


def simulate(p0, p1, n, k, seed, settings, hosts=1):
    rng = np.random.default_rng(seed)
    counts = np.zeros((n + 1, 6), dtype=int)
    runs = 0
    built = set()
    while True:
        s = step(counts, built, runs, 0.0, [], hosts, settings, rng=rng)
        if s.verdict:
            return s, runs
        for j, m in s.requests:
            for _ in range(m):
                counts[j, 4 if rng.random() < (p1 if j >= k else p0) else 0] += 1
            runs += m
            built.add(j)


@pytest.mark.parametrize("p0, p1, n, k, seed", [(0.0, 0.5, 16, 11, 0), (0.02, 0.6, 24, 3, 1), (0.0, 0.5, 16, 16, 2)])
def test_end_to_end_simulated_bisection_finds_the_culprit(p0, p1, n, k, seed):
    # 99% intervals: a 90% one misses the true rate in one seed of ten (and the
    # runs at the bad end stop after its first failures, which biases its rate up)
    s, runs = simulate(p0, p1, n, k, seed, EngineSettings(build_minutes=0, iteration_options=(1,), max_runs=400,
                                                          interval_level=0.99))
    assert s.verdict == "culprit" and s.culprit == k, (s, runs)
    assert s.rates.before.failure.lo <= p0 + 0.05 and s.rates.after.failure.lo <= p1 <= s.rates.after.failure.hi
    assert runs < 150


def test_end_to_end_with_batches_and_known_rates():
    st = EngineSettings(prior=known_rates_prior([1, 0, 0], [0.5, 0, 0.5]), iteration_options=(1, 2, 4))
    s, runs = simulate(0.0, 0.5, 32, 20, 5, st, hosts=4)
    assert s.verdict == "culprit" and s.culprit == 20


def test_neighbour_factor_asks_the_parent_to_show_its_side():
    # 0 -> 0.1 style: c7 has a clear record, its parent c6 30 passes (each favours
    # "before" by only ~1.1x): P(c7) just reaches 0.95 and the default names c7;
    # with a factor of 100 the parent's own runs must show more, so c6 gets a run.
    c = counts_step(7, fail_before=0, fail_after=4, runs=40)
    c[6] = [30, 0, 0, 0, 0, 0]
    off = step(c, set(range(N + 1)), 600, 0, [], 2, EngineSettings(close_divergence=0))
    assert off.verdict == "culprit" and off.culprit == 7
    on = step(c, set(range(N + 1)), 600, 0, [], 2, EngineSettings(neighbour_factor=100, close_divergence=0))
    assert on.verdict is None and on.confidence >= 0.95 and on.requests[0] == (6, 1)
    c[6] = [60, 0, 0, 0, 0, 0]
    on = step(c, set(range(N + 1)), 630, 0, [], 2, EngineSettings(neighbour_factor=100, close_divergence=0))
    assert on.verdict == "culprit" and on.culprit == 7


def test_close_rates_need_more_confidence():
    # 0.02 -> 0.1: one run tells the sides apart by little (J ~ 0.14 nats), so a
    # culprit needs close_confidence; far apart (0 -> 0.5) the usual confidence.
    c = counts_step(7, fail_before=2, fail_after=8, runs=80)
    c[6] = [88, 0, 0, 0, 2, 0]
    s = step(c, set(range(N + 1)), 900, 0, [], 1, EngineSettings(close_divergence=0))
    assert s.verdict == "culprit" and s.culprit == 7 and s.confidence < 0.98
    s = step(c, set(range(N + 1)), 900, 0, [], 1, EngineSettings())
    assert s.verdict is None and s.confidence >= 0.95 and s.requests == [(6, 1)]
    c[6] = [118, 0, 0, 0, 2, 0]
    s = step(c, set(range(N + 1)), 930, 0, [], 1, EngineSettings())
    assert s.verdict == "culprit" and s.culprit == 7 and s.confidence >= 0.98
