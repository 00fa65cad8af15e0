"""The campaign loop end to end on sim hosts: verdicts, resume, idempotence."""
from __future__ import annotations

import pytest

from flakebot.campaigns.bisect import BisectCampaign, BisectParams, open_bisect
from flakebot.executors.sim import SimExecutor
from flakebot.history import History
from flakebot.demo.hosts import Behaviour, Scenario
from flakebot.store import Store
from tests.gitrepo import make_repo

TEST = "vfio_user_nvme_restart_vm"
HEALTHY = Behaviour(0.0, 0.0)
BROKEN = Behaviour(0.25, 0.35)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("repo")
    shas = make_repo(path, 40)
    return path, shas


def _campaign(store, repo, culprit_index, *, seed=0, hosts=4, max_runs=600, **kw):
    path, shas = repo
    hist = History(path)
    good, bad = shas[0], shas[-1]
    commits = hist.first_parent_range(good, bad)
    culprit = shas[culprit_index] if culprit_index is not None else None
    scenario = Scenario.by_culprit(list(shas), culprit, HEALTHY, BROKEN)
    params = BisectParams(seed=seed, max_runs=max_runs, **kw)
    cid, resumed = open_bisect(store, TEST, hist.commit(good), commits, params)
    return cid, resumed, SimExecutor(scenario, hosts=hosts, seed=seed), hist


@pytest.mark.parametrize("culprit_index", [1, 17, 39])
def test_finds_the_culprit(tmp_path, repo, culprit_index):
    with Store(tmp_path / "f.db") as store:
        cid, resumed, ex, hist = _campaign(store, repo, culprit_index)
        assert not resumed
        result = BisectCampaign(store, ex, cid).run()
        assert result["verdict"] == "culprit"
        assert result["culprit"] == repo[1][culprit_index]
        assert result["parent"] == repo[1][culprit_index - 1]
        assert result["confidence"] >= 0.95
        # The runs it reports are exactly the stored evidence of this campaign.
        stored = store.runs(test=TEST, campaign_id=cid, include_infra=False)
        assert result["runs"] == len(stored)
        assert sum(c["runs"] for c in result["commits"]) == len(store.runs(test=TEST, campaign_id=cid))
        # Confirmation: fresh runs at the culprit and at its parent.
        at = {c["commit"]: c["runs"] for c in result["commits"]}
        assert at[result["culprit"]] >= 2 and at[result["parent"]] >= 2
        after, before = result["rates"]["after"], result["rates"]["before"]
        assert after["failure"]["rate"] > before["failure"]["rate"]
        assert 0 <= after["timeout"]["lo"] <= after["timeout"]["rate"] <= after["timeout"]["hi"] <= 1
        assert store.get_campaign(cid)["status"] == "done"


def test_no_regression(tmp_path, repo):
    with Store(tmp_path / "f.db") as store:
        cid, _, ex, hist = _campaign(store, repo, None, max_runs=2000)
        result = BisectCampaign(store, ex, cid).run()
        assert result["verdict"] in ("no-regression", "inconclusive")
        assert result["culprit"] is None


def test_budget_spent_is_inconclusive(tmp_path, repo):
    with Store(tmp_path / "f.db") as store:
        cid, _, ex, _ = _campaign(store, repo, 20, max_runs=8)
        result = BisectCampaign(store, ex, cid).run()
        assert result["verdict"] == "inconclusive"
        assert result["candidates"] and all(0 <= c["probability"] <= 1 for c in result["candidates"])


class Killed(Exception):
    pass


def test_killed_and_resumed_loses_and_repeats_nothing(tmp_path, repo):
    """A process killed mid-campaign, started again, ends exactly where an
    uninterrupted one does: same evidence, same verdict, no run twice."""
    with Store(tmp_path / "straight.db") as store:
        cid, _, ex, _ = _campaign(store, repo, 23, seed=5)
        straight = BisectCampaign(store, ex, cid).run()

    with Store(tmp_path / "killed.db") as store:
        cid, _, ex, _ = _campaign(store, repo, 23, seed=5)
        calls = {"n": 0}
        real_console = ex.console

        def dying_console(handle):
            # Killed while ingesting the 10th build: others of its round are
            # finished on the hosts but not yet in the store.
            calls["n"] += 1
            if calls["n"] == 10:
                raise Killed()
            return real_console(handle)

        ex.console = dying_console
        with pytest.raises(Killed):
            BisectCampaign(store, ex, cid).run()
        pending = {b["run_id"] for b in store.pending_builds(cid)}
        assert pending, "the kill should leave requests in flight"
        before = {b["run_id"] for b in store.builds(cid)}
        # A new process: new executor instance, same command -> same campaign.
        cid2, resumed, ex2, _ = _campaign(store, repo, 23, seed=5)
        assert (cid2, resumed) == (cid, True)
        resumed_result = BisectCampaign(store, ex2, cid).run()
        keys = [(r["build_id"], r["test"], r["iteration"]) for r in store.runs(campaign_id=cid)]
        assert len(keys) == len(set(keys))
        assert not store.pending_builds(cid)
        builds = {b["run_id"]: b for b in store.builds(cid)}
        # The requests in flight at the kill were finished under their own
        # run ids (not started afresh), and everything recorded before stays.
        assert before <= set(builds) and all(builds[r]["status"] == "ingested" for r in pending)
        assert resumed_result["runs"] == len(store.runs(test=TEST, campaign_id=cid, include_infra=False))

    # Resuming plans the next requests while the reattached ones are still out,
    # so the path may differ by a run or two from an uninterrupted campaign;
    # the answer may not.
    assert (resumed_result["verdict"], resumed_result["culprit"]) == (straight["verdict"], straight["culprit"])


def test_finished_campaign_is_not_rerun(tmp_path, repo):
    with Store(tmp_path / "f.db") as store:
        cid, _, ex, _ = _campaign(store, repo, 10)
        first = BisectCampaign(store, ex, cid).run()
        n = len(store.runs(campaign_id=cid))
        again = BisectCampaign(store, ex, cid).run()
        assert again == first and len(store.runs(campaign_id=cid)) == n


def test_infra_faults_never_count_as_flakes(tmp_path, repo):
    """Every request hits an infra fault for a while: the runs are stored as
    infra, never as failures, and the verdict is the same."""
    with Store(tmp_path / "f.db") as store:
        cid, _, ex, _ = _campaign(store, repo, 12)
        ex.fail_next(6)
        result = BisectCampaign(store, ex, cid).run()
        assert result["verdict"] == "culprit" and result["culprit"] == repo[1][12]
        assert result["infra_runs"] > 0
        infra = [r for r in store.runs(campaign_id=cid) if r["outcome"] == "infra"]
        assert len(infra) == result["infra_runs"]
