"""Untestable commits in the pure engine: skipped like `git bisect skip`,
never probed, and a culprit next to them named as a range."""
import numpy as np
import pytest

from flakebot.analysis import EngineSettings, plan, posterior, step, to_groups
from flakebot.analysis.posterior import default_prior
from flakebot.analysis import skip as sk


def test_blocks_group_untestable_commits_with_the_first_testable_one_after_them():
    assert sk.blocks(6, set()) == [(k, k) for k in range(1, 7)]
    assert sk.blocks(6, {2, 3}) == [(1, 1), (2, 4), (5, 5), (6, 6)]
    assert sk.blocks(6, {0, 1, 2}) == [(1, 3), (4, 4), (5, 5), (6, 6)]
    assert sk.blocks(4, {3, 4}) == [(1, 1), (2, 2), (3, 4)]
    assert sk.testable_before(4, {2, 3}) == 1 and sk.testable_before(3, {0, 1, 2}) is None
    p = np.array([0.0, 0.1, 0.2, 0.3, 0.1, 0.05, 0.05])
    assert np.allclose(sk.block_probabilities(p, sk.blocks(6, {2, 3})), [0.1, 0.6, 0.05, 0.05])


def test_posterior_cannot_split_a_block():
    """Hypotheses inside a block have the same likelihood: the posterior keeps
    their prior ratio whatever the data (here uniform, so equal)."""
    c = np.zeros((13, 6), int)
    for i in [0, 5, 6, 9, 12]:
        c[i] = [20, 0, 0, 0, 0, 0] if i < 5 else [10, 0, 0, 0, 10, 0]
    post = posterior(c)
    assert np.allclose(post.culprit[1:6], post.culprit[1])


def _draw_loop(n, k, untestable, seed, settings, hosts=1, p0=0.0, p1=0.5, max_steps=2000):
    """A pure bisection: a request at an untestable commit comes back without
    evidence and marks it (as the campaign does after a host's 'cannot test')."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n + 1, 6), dtype=int)
    known_bad: set[int] = set()
    runs = builds = 0
    probed: list[int] = []
    for _ in range(max_steps):
        s = step(counts, set(), runs + builds, 0.0, [], hosts, settings, rng=rng,
                 untestable=known_bad, builds_used=builds)
        if s.verdict:
            return s, runs, builds, probed
        for j, m in s.requests:
            builds += 1
            probed.append(j)
            if j in untestable:
                known_bad.add(j)
                continue
            for _ in range(m):
                counts[j, 4 if rng.random() < (p1 if j >= k else p0) else 0] += 1
            runs += m
    raise AssertionError("did not stop")


ST = EngineSettings(build_minutes=0, iteration_options=(1,), max_runs=600)


@pytest.mark.parametrize("seed", range(4))
def test_oldest_third_untestable_culprit_at_the_boundary_is_a_range(seed):
    n = 24
    untestable = set(range(1, 9))  # the good end (0) is testable, 1..8 are not
    s, runs, builds, probed = _draw_loop(n, 9, untestable, seed, ST)
    assert s.verdict == "culprit-range" and s.range == (1, 9), s
    assert s.culprit is None and s.confidence >= 0.95
    # Each untestable commit was tried at most once, and never after it was known.
    assert len(probed) == len(set(probed) & untestable) + sum(1 for j in probed if j not in untestable)
    assert all(probed.count(j) == 1 for j in untestable if j in probed)


@pytest.mark.parametrize("seed, k", [(0, 14), (1, 20), (2, 11)])
def test_oldest_third_untestable_culprit_in_the_testable_part_is_found(seed, k):
    s, runs, builds, _ = _draw_loop(24, k, set(range(1, 9)), seed, ST)
    assert (s.verdict, s.culprit) == ("culprit", k), s


@pytest.mark.parametrize("seed", range(3))
def test_good_end_untestable_too_never_names_the_boundary(seed):
    """With the good end untestable as well, nothing separates 'culprit at the
    boundary' from 'no change': the answer is never the boundary commit alone."""
    s, runs, builds, _ = _draw_loop(24, 9, set(range(0, 9)), seed, ST)
    assert s.verdict == "inconclusive" and s.reason.startswith("c0..c8 cannot be tested here"), s
    assert runs < 200, runs  # it stops once the testable part all looks alike


def test_good_end_untestable_culprit_in_the_testable_part_is_found():
    s, *_ = _draw_loop(24, 15, set(range(0, 9)), 0, ST)
    assert (s.verdict, s.culprit) == ("culprit", 15), s


def test_culprit_next_to_an_untestable_parent_is_a_two_commit_range():
    s, *_ = _draw_loop(20, 12, {11}, 0, ST)
    assert s.verdict == "culprit-range" and s.range == (11, 12)


def test_planner_never_probes_a_skipped_commit():
    x = to_groups(np.zeros((17, 6), int))
    skip = set(range(2, 15))
    reqs = plan(x, default_prior(), built=set(), in_flight=[], free_hosts=8, build_minutes=10, run_minutes=2,
                rng=np.random.default_rng(0), iteration_options=(1, 2), forced=[(5, 1)], skip=skip)
    assert reqs and not {j for j, _ in reqs} & skip


def test_untestable_bad_end_stops_with_the_reason():
    s = step(np.zeros((9, 6), int), set(), 3, 30.0, [], 4, EngineSettings(), untestable={8})
    assert s.verdict == "inconclusive" and "bad end cannot be tested" in s.reason


@pytest.mark.parametrize("settings, kw, why", [
    (EngineSettings(max_builds=5), dict(builds_used=5), "build budget spent"),
    (EngineSettings(max_runs=5), dict(), "run budget spent"),
    (EngineSettings(max_host_hours=1), dict(), "host-hour budget spent"),
])
def test_each_budget_stops_with_its_name(settings, kw, why):
    s = step(np.zeros((9, 6), int), set(), 5, 60.0, [], 4, settings, **kw)
    assert s.verdict == "inconclusive" and s.reason == why


def test_build_budget_caps_the_requests():
    s = step(np.zeros((9, 6), int), set(), 0, 0.0, [], 8, EngineSettings(max_builds=10), builds_used=7)
    assert s.verdict is None and len(s.requests) == 3
