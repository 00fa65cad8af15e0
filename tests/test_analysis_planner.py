import numpy as np
import pytest

from flakebot.analysis.planner import information, plan
from flakebot.analysis.posterior import default_prior, known_rates_prior, posterior

PRIOR = default_prior()


def cold(n):
    return np.zeros((n + 1, 3))


@pytest.mark.parametrize("free, in_flight", [(1, []), (4, []), (8, [(10, 2), (20, 1)]), (3, [(5, 1)] * 6)])
def test_fills_every_free_host(free, in_flight):
    reqs = plan(cold(32), PRIOR, built=set(), in_flight=in_flight, free_hosts=free, build_minutes=10,
                run_minutes=2, rng=np.random.default_rng(0), iteration_options=(1, 2, 4))
    assert len(reqs) == free
    assert all(0 <= j <= 32 and m in (1, 2, 4) for j, m in reqs)


def test_deterministic_given_seed():
    kw = dict(built={3}, in_flight=[(7, 1)], free_hosts=6, build_minutes=10, run_minutes=2,
              iteration_options=(1, 2))
    a = plan(cold(64), PRIOR, rng=np.random.default_rng(42), **kw)
    b = plan(cold(64), PRIOR, rng=np.random.default_rng(42), **kw)
    assert a == b


def test_batch_spreads_over_the_range():
    reqs = plan(cold(128), PRIOR, built=set(), in_flight=[], free_hosts=8, build_minutes=0, run_minutes=2,
                rng=np.random.default_rng(1))
    assert len({j for j, _ in reqs}) >= 4


def test_in_flight_is_pending_information():
    # A known-rates range: one probe's answer is almost certain to be decisive, so
    # with 6 runs already in flight at the best commit the next host goes elsewhere.
    prior = known_rates_prior([1, 0, 0], [0.2, 0, 0.8])
    first = plan(cold(32), prior, built=set(), in_flight=[], free_hosts=1, build_minutes=0, run_minutes=1,
                 rng=np.random.default_rng(0), tie_tol=0.0)[0][0]
    nxt = plan(cold(32), prior, built=set(), in_flight=[(first, 6)], free_hosts=1, build_minutes=0,
               run_minutes=1, rng=np.random.default_rng(0), tie_tol=0.0)[0][0]
    assert nxt != first


@pytest.mark.parametrize("built", [{20}, {12}, {40}])
def test_prefers_built_commits_when_information_is_close(built):
    # Cold 64-commit range: information is flat near the best split; a built
    # commit nearby costs 2 minutes instead of 12 and wins.
    reqs = plan(cold(64), PRIOR, built=built, in_flight=[], free_hosts=1, build_minutes=10, run_minutes=2,
                rng=np.random.default_rng(0))
    assert reqs[0][0] in built
    # with no build cost it is not forced there
    free = plan(cold(64), PRIOR, built=set(), in_flight=[], free_hosts=1, build_minutes=0, run_minutes=2,
                rng=np.random.default_rng(0), tie_tol=0.0)
    assert free[0][0] not in built


def test_build_cost_makes_longer_requests():
    r = plan(cold(64), PRIOR, built=set(), in_flight=[], free_hosts=1, build_minutes=30, run_minutes=1,
             rng=np.random.default_rng(0), iteration_options=(1, 2, 4, 8))
    assert r[0][1] > 1


def test_probes_the_predecessor():
    # Strong evidence that the change is at 9 or 10 (passes at 8, failures at 10),
    # nothing at 9: the most useful run is at 9.
    g = cold(16)
    g[8] = [30, 0, 0]
    g[10:] = [5, 0, 5]
    for seed in range(5):
        r = plan(g, PRIOR, built=set(range(17)), in_flight=[], free_hosts=1, build_minutes=10, run_minutes=2,
                 rng=np.random.default_rng(seed))
        assert r[0][0] == 9


def test_split_near_q_star_not_the_median():
    prior = known_rates_prior([1, 0, 0], [0.9, 0, 0.1], p_no_change=1e-9)
    post = posterior(cold(200), prior, groups=True)
    j = int(np.argmax(information(post)))
    assert 0.3 <= post.cdf()[j] <= 0.47


def test_information_properties():
    g = cold(16)
    g[:6] = [50, 0, 0]
    g[6:] = [25, 0, 25]
    post = posterior(g, PRIOR, groups=True)
    info = information(post)
    assert np.all(info >= 0)
    # when the answer is known, no commit is worth much
    assert info.max() < 0.05
    assert np.all(information(post, 4) >= info - 1e-12)


def test_budget_limits_requests():
    reqs = plan(cold(32), PRIOR, built=set(), in_flight=[], free_hosts=8, build_minutes=0, run_minutes=2,
                rng=np.random.default_rng(0), iteration_options=(1, 4), max_new_runs=5)
    assert sum(m for _, m in reqs) <= 5


def test_nothing_worth_running_returns_no_requests():
    # thresholds above any possible information: no request, no crash
    reqs = plan(cold(32), PRIOR, built=set(), in_flight=[(3, 1)], free_hosts=4, build_minutes=10, run_minutes=2,
                rng=np.random.default_rng(0), iteration_options=(1, 2), min_information=10.0)
    assert reqs == []


# -- per-host builds ------------------------------------------------------

from flakebot.analysis.planner import host_build_sets, plan_hosts  # noqa: E402


def test_host_build_sets_keep_the_last_builds():
    seq = [("a", 5), (None, 9), ("b", 7), ("a", 6), ("b", 7), ("a", 8)]
    assert host_build_sets(seq) == {"a": frozenset({8}), "b": frozenset({7})}
    assert host_build_sets(seq, keep=2) == {"a": frozenset({6, 8}), "b": frozenset({7})}


@pytest.mark.parametrize("built", [20, 12, 40])
def test_plan_hosts_sends_a_commit_to_the_host_that_has_it(built):
    # Four free hosts, one has commit `built`: a request there goes to that host.
    hosts = [set(), set(), {built}, set()]
    reqs = plan_hosts(cold(64), PRIOR, hosts=hosts, in_flight=[], build_minutes=10, run_minutes=2,
                      rng=np.random.default_rng(0), iteration_options=(1, 2, 4))
    assert len(reqs) == 4 and sorted(h for _, _, h in reqs) == [0, 1, 2, 3]
    on = {j: h for j, _, h in reqs}
    assert built in on and on[built] == 2


def test_plan_hosts_prices_the_build_on_each_host():
    # Commit 20 built on host 1 only: host 0 alone (without it) does not pick 20,
    # host 1 alone does; shared pricing (`plan` with built={20}) cannot tell them apart.
    kw = dict(in_flight=[], build_minutes=10, run_minutes=2, tie_tol=0.0)
    alone0 = plan_hosts(cold(64), PRIOR, hosts=[set()], rng=np.random.default_rng(3), **kw)
    alone1 = plan_hosts(cold(64), PRIOR, hosts=[{20}], rng=np.random.default_rng(3), **kw)
    assert alone1[0][0] == 20 and alone0[0][0] != 20


def test_plan_hosts_forced_request_goes_to_a_host_with_its_build():
    reqs = plan_hosts(cold(32), PRIOR, hosts=[{3}, {9}, set()], in_flight=[], build_minutes=10, run_minutes=2,
                      rng=np.random.default_rng(0), forced=[(9, 2)])
    assert reqs[0] == (9, 2, 1)


def test_plan_hosts_deterministic_given_seed():
    kw = dict(hosts=[{3}, set(), {7, 8}], in_flight=[(7, 1)], build_minutes=10, run_minutes=2,
              iteration_options=(1, 2))
    assert plan_hosts(cold(64), PRIOR, rng=np.random.default_rng(5), **kw) == \
        plan_hosts(cold(64), PRIOR, rng=np.random.default_rng(5), **kw)


def test_plan_hosts_idle_fraction_leaves_hosts_idle_rather_than_build_for_little():
    # Eight hosts without builds: every request costs a build. Off (0) fills them
    # all; a floor fills fewer, never none while nothing is in flight, and a
    # host that has the best commit built still gets work.
    kw = dict(in_flight=[], build_minutes=10, run_minutes=2, iteration_options=(1, 2, 4))
    x = cold(64)
    x[64] = (6, 2, 2)  # the bad end has failed: the search is on
    full = plan_hosts(x, PRIOR, hosts=[set()] * 8, rng=np.random.default_rng(1), **kw)
    some = plan_hosts(x, PRIOR, hosts=[set()] * 8, rng=np.random.default_rng(1), idle_fraction=0.5, **kw)
    assert len(full) == 8 and 1 <= len(some) < 8
    busy = plan_hosts(x, PRIOR, hosts=[set()] * 8, in_flight=[(32, 1)], build_minutes=10, run_minutes=2,
                      rng=np.random.default_rng(1), idle_fraction=0.99)
    assert busy == []  # no build is worth 99% of a free probe: all idle while one runs
    best = some[0][0]
    kept = plan_hosts(x, PRIOR, hosts=[{best}] + [set()] * 7, in_flight=[(32, 1)], build_minutes=10,
                      run_minutes=2, rng=np.random.default_rng(1), idle_fraction=0.5, iteration_options=(1, 2, 4))
    assert kept and kept[0][2] == 0
