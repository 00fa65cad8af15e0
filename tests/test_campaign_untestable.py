"""Bisections over commits the hosts cannot test (sim hosts): never evidence,
skipped like `git bisect skip`, a culprit next to them named as a range, and
every campaign ends within its budgets."""
from __future__ import annotations

import pytest

from flakebot.campaigns.bisect import BisectCampaign, BisectParams, open_bisect
from flakebot.executors.sim import CHECK_MINUTES, SimExecutor
from flakebot.history import History
from flakebot.demo.hosts import Behaviour, Scenario, untestable_commits
from flakebot.store import Store
from tests.gitrepo import make_repo

TEST = "vfio_user_nvme_restart_vm"
HEALTHY = Behaviour(0.0, 0.0)
BROKEN = Behaviour(0.25, 0.35)
OLDEST_THIRD = range(1, 14)  # positions 1..13 of 0..39 (the good end stays testable)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("repo")
    return path, make_repo(path, 40)


def _run(store, repo, culprit, untestable, *, seed=0, hosts=4, infra_hook=None, **kw):
    path, shas = repo
    hist = History(path)
    scenario = Scenario.by_culprit(shas, None if culprit is None else shas[culprit], HEALTHY, BROKEN)
    scenario = scenario.with_untestable(untestable)
    params = BisectParams(seed=seed, **{"max_runs": 800, **kw})
    cid, _ = open_bisect(store, TEST, hist.commit(shas[0]), hist.first_parent_range(shas[0], shas[-1]), params)
    ex = SimExecutor(scenario, hosts=hosts, seed=seed, infra_hook=infra_hook)
    return cid, BisectCampaign(store, ex, cid).run()


def _requests_at(store, cid):
    at: dict[str, int] = {}
    for b in store.builds(cid):
        at[b["commit_sha"]] = at.get(b["commit_sha"], 0) + 1
    return at


@pytest.mark.parametrize("seed", [0, 1])
def test_oldest_third_untestable_never_names_the_boundary(tmp_path, repo, seed):
    shas = repo[1]
    bad = untestable_commits([shas[i] for i in OLDEST_THIRD], oldest=1.0)
    with Store(tmp_path / "f.db") as store:
        cid, r = _run(store, repo, 14, bad, seed=seed)
        assert r["verdict"] == "culprit-range" and r["culprit"] is None, r["reason"]
        rg = r["culprit_range"]
        # The untestable commits the search touched plus the first testable one after them.
        assert rg["last"] == shas[14] and rg["probability"] >= 0.95
        inside = [c["commit"] for c in rg["commits"]]
        assert inside == shas[shas.index(rg["first"]):15] and set(inside[:-1]) <= set(bad)
        assert rg["parent"] == shas[shas.index(rg["first"]) - 1]
        # The untestable commits are listed with the host's reason, and none is evidence.
        listed = {u["commit"]: u for u in r["untestable"]}
        assert set(inside[:-1]) <= set(listed) <= set(bad)
        assert all(u["reason"] == bad[c].reason for c, u in listed.items())
        assert not [x for x in store.runs(campaign_id=cid, include_infra=False) if x["commit_sha"] in bad]
        # Skipped at once: every host says "cannot test here". Only requests
        # sent in the same round as the first (4 hosts) can hit it again.
        assert all(_requests_at(store, cid).get(c, 0) <= 4 for c in bad)
        assert r["rates"]["after"]["failure"]["rate"] > r["rates"]["before"]["failure"]["rate"]


@pytest.mark.parametrize("culprit", [17, 30])
def test_oldest_third_untestable_culprit_in_the_testable_part_is_found(tmp_path, repo, culprit):
    shas = repo[1]
    bad = untestable_commits([shas[i] for i in OLDEST_THIRD], oldest=1.0)
    with Store(tmp_path / "f.db") as store:
        _, r = _run(store, repo, culprit, bad)
        assert (r["verdict"], r["culprit"]) == ("culprit", shas[culprit])


def test_scattered_untestable_and_unbuildable_commits_are_skipped(tmp_path, repo):
    shas = repo[1]
    bad = untestable_commits(shas[1:], scattered=0.1, build_fails=[shas[22]], seed=3)
    assert len(bad) == 5 and bad[shas[22]].build
    with Store(tmp_path / "f.db") as store:
        cid, r = _run(store, repo, 26, bad)
        assert (r["verdict"], r["culprit"]) == ("culprit", shas[26]) or \
            (r["verdict"] == "culprit-range" and r["culprit_range"]["last"] == shas[26])
        assert all(n <= 4 for c, n in _requests_at(store, cid).items() if c in bad)
        # A failed build costs its build time; a commit without the test only the check.
        minutes = {b["commit_sha"]: b["host_minutes"] for b in store.builds(cid) if b["commit_sha"] in bad}
        for c, m in minutes.items():
            assert m == (10.0 if bad[c].build else CHECK_MINUTES)
        assert r["host_minutes"] == pytest.approx(sum(b["host_minutes"] for b in store.builds(cid)), abs=1e-3)


def test_commit_whose_host_keeps_getting_lost_is_skipped_after_max_infra(tmp_path, repo):
    """Lost hosts are not "cannot test here": the commit is retried, up to
    max_infra_per_commit requests, then skipped."""
    shas = repo[1]
    with Store(tmp_path / "f.db") as store:
        cid, r = _run(store, repo, 20, {}, infra_hook=lambda req: req.commit == shas[19], max_infra_per_commit=2)
        assert r["verdict"] in ("culprit", "culprit-range")
        assert r["verdict"] != "culprit" or r["culprit"] == shas[20]
        # Its hosts get lost in every request (sometimes after a few iterations,
        # which are evidence); after two requests with no result it is skipped.
        listed = {u["commit"]: u for u in r["untestable"]}
        # (More than two when requests were already out when the second came back.)
        assert listed[shas[19]]["requests"] >= 2
        assert any("cut off" in why for why in listed[shas[19]]["reasons"])  # a lost host, not "cannot test"
        assert _requests_at(store, cid)[shas[19]] <= 2 + 4  # plus those already out, on 4 hosts


def test_every_build_failing_ends_at_once_with_the_reason(tmp_path, repo):
    shas = repo[1]
    bad = untestable_commits(shas, build_fails=shas)
    with Store(tmp_path / "f.db") as store:
        cid, r = _run(store, repo, 20, bad)
        assert r["verdict"] == "inconclusive" and r["reason"] == "the bad end cannot be tested here"
        assert r["runs"] == 0 and r["builds"] <= 8  # the first round on 4 hosts, and the next
        assert shas[-1] in {u["commit"] for u in r["untestable"]}
        assert r["host_minutes"] == pytest.approx(10.0 * r["builds"])


def test_infra_runs_and_failed_builds_count_against_the_budgets(tmp_path, repo):
    shas = repo[1]
    bad = untestable_commits(shas[1:-1], build_fails=shas[1:-1])  # only the two ends can be tested
    with Store(tmp_path / "f.db") as store:
        cid, r = _run(store, repo, 20, bad, max_builds=12)
        assert r["verdict"] == "inconclusive" and r["reason"] == "build budget spent"
        assert r["builds"] == 12 == len(store.builds(cid))
    with Store(tmp_path / "g.db") as store:
        cid, r = _run(store, repo, 20, bad, max_host_hours=1.0)
        assert r["verdict"] == "inconclusive" and "host-hour budget spent" in r["reason"]
        # The budget stopped new work once 60 min were spent; what was in flight finished.
        assert 60 <= r["host_minutes"] <= 60 + 4 * 10 + 4 * 8 * 2


def test_the_skip_rule_host_by_host(tmp_path, repo):
    """Which commits the campaign stops sending work to, from stored runs alone."""
    from flakebot.campaigns.dispatch import CANNOT_TEST
    from flakebot.model import Outcome, Run, RunRequest

    shas = repo[1]
    with Store(tmp_path / "f.db") as store:
        hist = History(repo[0])
        cid, _ = open_bisect(store, TEST, hist.commit(shas[0]), hist.first_parent_range(shas[0], shas[-1]),
                             BisectParams())
        seq = iter(range(1000))

        def stored(pos, host, outcome, reason=""):
            rid = f"c{cid}-t{next(seq)}"
            bid = store.record_submission(RunRequest(rid, shas[pos], (TEST,), 1), "sim", cid)
            store.ingest_runs(bid, shas[pos], [Run(TEST, 1, Outcome(outcome), reason=reason)], host=host)

        no_qemu = CANNOT_TEST + "no QEMU of the kind this commit needs"
        stored(3, "h1", "infra", no_qemu)          # h1 cannot; h2 only got lost: try again
        stored(3, "h2", "infra", "build lost")
        stored(4, "h1", "infra", no_qemu)          # every host that tried said so
        stored(4, "h2", "infra", no_qemu)
        stored(5, "h1", "infra", no_qemu)          # h2 could test it
        stored(5, "h2", "pass")
        for _ in range(3):                         # three lost requests, nothing else
            stored(6, "h1", "infra", "build lost")
        stored(7, "h1", "pass")                    # tested once, then lost three times
        for _ in range(3):
            stored(7, "h2", "infra", "log cut off")
        u = BisectCampaign(store, None, cid).untestable()
        assert sorted(u) == [4, 6, 7]
        assert u[4]["reasons"] == [("no QEMU of the kind this commit needs", 2)] and u[4]["hosts"] == ["h1", "h2"]
        assert u[6]["requests"] == 3 and u[7]["evidence_runs"] == 1
