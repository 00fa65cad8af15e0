"""Verify campaigns: the comparison (pure, by table), the stored, resumable
campaign on simulated hosts, and `flakebot verify`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from flakebot.analysis.classes import Bins
from flakebot.analysis.compare import compare_rates, prob_lower
from flakebot.config import load_config
from flakebot.demo.repo import build_demo_repo
from flakebot.history import History
from flakebot.report.comments import render
from flakebot.store import Store
from flakebot.campaigns.verify import VerifyCampaign, VerifyParams, _spread, open_verify, side_rates
from flakebot.campaigns.wiring import build_executor

TEST = "vfio_user_nvme_restart_vm"
CULPRIT, FIX = 40, 50


class Killed(BaseException):
    pass


# ------------------------------------------------------------------ pure


@pytest.mark.parametrize("ka,na,kb,nb,lo,hi", [
    (0, 50, 8, 50, 0.999, 1.0),     # the #3322 fix: 0/50 against 8/50
    (8, 50, 0, 50, 0.0, 0.001),
    (3, 40, 3, 40, 0.4999, 0.5001),  # same evidence
    (0, 0, 0, 0, 0.4999, 0.5001),    # no evidence at all
    (2, 20, 3, 20, 0.6, 0.75),
    (0, 5, 1, 5, 0.6, 0.9),          # little evidence: no certainty
])
def test_prob_lower_table(ka, na, kb, nb, lo, hi):
    assert lo <= prob_lower(ka, na, kb, nb) <= hi


@pytest.mark.parametrize("ka,na,kb,nb", [(0, 50, 8, 50), (2, 20, 3, 20), (5, 10, 1, 30), (1, 3, 0, 100)])
def test_prob_lower_agrees_with_sampling_and_is_complementary(ka, na, kb, nb):
    rng = np.random.default_rng(7)
    xa = rng.beta(0.5 + ka, 0.5 + na - ka, 400_000)
    xb = rng.beta(0.5 + kb, 0.5 + nb - kb, 400_000)
    assert abs(prob_lower(ka, na, kb, nb) - float((xa < xb).mean())) < 0.005
    assert abs(prob_lower(ka, na, kb, nb) + prob_lower(kb, nb, ka, na) - 1) < 1e-4
    lower, raise_ = compare_rates(ka, na, kb, nb)
    assert abs(lower + raise_ - 1) < 1e-12


@pytest.mark.parametrize("bad", [(-1, 5, 0, 5), (6, 5, 0, 5), (0, 5, 0, -1)])
def test_prob_lower_rejects_impossible_counts(bad):
    with pytest.raises(ValueError):
        prob_lower(*bad)


def test_side_rates_by_class():
    b = Bins()
    counts = [10, 5, 2, 1, 3, 1]  # pass<20, pass 20-60, near 60-80, near 80-90, timeout, fail
    r = side_rates(counts, b, 0.9)
    assert r["runs"] == 22
    assert (r["timeout"]["k"], r["near_miss"]["k"], r["fail"]["k"], r["failure"]["k"]) == (3, 3, 1, 4)
    assert all(r[c]["n"] == 22 and r[c]["lo"] <= r[c]["rate"] <= r[c]["hi"]
               for c in ("timeout", "near_miss", "fail", "failure"))


@pytest.mark.parametrize("need,slots", [({"parent": 20, "patch": 20}, 4), ({"parent": 20, "patch": 20}, 1),
                                        ({"parent": 0, "patch": 7}, 3), ({"parent": 3, "patch": 1}, 8),
                                        ({"parent": 5, "patch": 5}, 3)])
def test_spread_never_exceeds_need_or_slots(need, slots):
    out = _spread(need, slots)
    assert 0 < len(out) <= slots
    for side in need:
        assert sum(n for s, n in out if s == side) <= need[side]
        assert all(n >= 1 for _, n in out)
    if slots >= 2 and all(need.values()):
        assert {s for s, _ in out} == {"parent", "patch"}  # both sides progress together


# ------------------------------------------------------------------ the campaign


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("verify")
    return build_demo_repo(base / "repo", n_commits=60, culprit_index=CULPRIT, fix_index=FIX, seed=3)


def cfg_for(demo, tmp_path):
    return load_config(env={}).with_overrides(
        {"store.db": str(tmp_path / "f.db"), "spdk.repo": str(demo.path), "executor.name": "sim",
         "tests.names": [TEST], "sim.seed": 2})


def open_(store, cfg, demo, patch_i, n=40):
    h = History(demo.path)
    try:
        patch = h.commit(demo.shas[patch_i])
        parent = h.commit(patch.parents[0])
    finally:
        h.close()
    return open_verify(store, TEST, patch, parent, VerifyParams.from_config(cfg, n))


def test_verify_the_fix_lowers_the_rate_and_the_culprit_raises_it(demo, tmp_path):
    cfg = cfg_for(demo, tmp_path)
    with Store(cfg.store.db) as store:
        cid, resumed = open_(store, cfg, demo, FIX)
        assert not resumed
        r = VerifyCampaign(store, build_executor(cfg), cid).run()
        assert r["kind"] == "verify" and r["campaign_id"] == cid
        assert r["patch"] == demo.shas[FIX] and r["parent"] == demo.shas[FIX - 1]
        assert r["verdict"] == "lowers" and r["p_lower"] >= 0.95 and abs(r["p_lower"] + r["p_raise"] - 1) < 1e-5
        assert r["patch_rates"]["failure"]["n"] == r["parent_rates"]["failure"]["n"] == 40
        assert r["runs"] == 80 and r["builds"] >= 2 and r["hosts"]
        assert {w["side"] for w in r["waits"]} == {"parent", "patch"}
        row = store.get_campaign(cid)
        assert row["status"] == "done" and row["verdict"] == "lowers" and row["result"] == r
        assert store.campaign_commits(cid) == [demo.shas[FIX - 1], demo.shas[FIX]]
        # running it again answers from the store
        assert VerifyCampaign(store, None, cid).run() == r

        cid2, _ = open_(store, cfg, demo, CULPRIT)
        r2 = VerifyCampaign(store, build_executor(cfg), cid2).run()
        assert r2["verdict"] == "raises" and r2["p_raise"] >= 0.95
    md = render(r).markdown
    assert "lowers the failure rate" in md and "parent (" in md and "patch (" in md
    assert f"{r['parent_rates']['timeout']['k']}/40" in md and f"{r['patch_rates']['timeout']['k']}/40" in md


def test_killed_verify_resumes_without_repeating_runs(demo, tmp_path):
    cfg = cfg_for(demo, tmp_path)
    ex = build_executor(cfg)
    real = ex.console
    calls = {"n": 0}

    def console(handle):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed()
        return real(handle)

    ex.console = console
    with Store(cfg.store.db) as store:
        cid, _ = open_(store, cfg, demo, FIX, n=30)
        with pytest.raises(Killed):
            VerifyCampaign(store, ex, cid).run()
        assert store.get_campaign(cid)["status"] == "open"
        done_before = {(r["build_id"], r["iteration"]) for r in store.runs(campaign_id=cid)}
        assert done_before and store.pending_builds(cid)
        builds_before = {b["run_id"] for b in store.builds(cid)}
    with Store(cfg.store.db) as store:  # a new process
        cid_again, resumed = open_(store, cfg, demo, FIX, n=30)
        assert (cid_again, resumed) == (cid, True)
        r = VerifyCampaign(store, build_executor(cfg), cid).run()
        runs = store.runs(campaign_id=cid)
        keys = [(x["build_id"], x["test"], x["iteration"]) for x in runs]
        assert len(keys) == len(set(keys))  # nothing counted twice
        assert done_before <= {(x["build_id"], x["iteration"]) for x in runs}  # nothing lost
        assert builds_before <= {b["run_id"] for b in store.builds(cid)}
        assert not store.pending_builds(cid)
        assert r["patch_rates"]["runs"] == 30 and r["parent_rates"]["runs"] == 30
        assert r["runs"] == 60  # exactly N per side: the resumed builds were not run again on top


def test_infra_runs_are_retried_within_a_cap(demo, tmp_path):
    cfg = cfg_for(demo, tmp_path)
    ex = build_executor(cfg)
    ex.console = lambda handle: iter(())  # every log comes back empty: every run is infra
    with Store(cfg.store.db) as store:
        cid, _ = open_(store, cfg, demo, FIX, n=5)
        r = VerifyCampaign(store, ex, cid).run()
        assert r["runs"] == 0 and r["infra_runs"] == 30  # 5 x 3 attempts per side, then it stops
        assert r["verdict"] == "no-difference" and abs(r["p_lower"] - 0.5) < 1e-3


# ------------------------------------------------------------------ CLI


def test_cli_verify_json_default_parent_and_exit_status(demo, tmp_path):
    from flakebot.cli.app import main

    args = ["verify", "--patch", demo.shas[FIX][:12], "--test", TEST, "--iterations", "40",
            "--db", str(tmp_path / "f.db"), "--repo", str(demo.path), "--executor", "sim", "--seed", "2"]
    res = CliRunner().invoke(main, args + ["--json"], env={"FLAKEBOT_CONFIG": ""})
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["parent"] == demo.shas[FIX - 1] and r["verdict"] == "lowers"
    assert r["command"].startswith(f"flakebot verify --patch {demo.shas[FIX]} --parent {demo.shas[FIX - 1]}")
    # no clear difference: exit 3; text output
    res = CliRunner().invoke(main, ["verify", "--patch", demo.shas[20], "--parent", demo.shas[19], "--test", TEST,
                                    "--iterations", "3", "--db", str(tmp_path / "f.db"), "--repo",
                                    str(demo.path), "--executor", "sim"], env={"FLAKEBOT_CONFIG": ""})
    assert res.exit_code == 3 and "No clear difference" in res.output


@pytest.mark.parametrize("args,message", [
    (["--patch", "nope"], "unknown ref"),
    (["--patch", "HEAD", "--parent", "HEAD"], "same commit"),
    (["--patch", "HEAD", "--test", "rm -rf /"], "unknown test"),
])
def test_cli_verify_bad_input_is_one_line(demo, tmp_path, args, message):
    from flakebot.cli.app import main

    res = CliRunner().invoke(main, ["verify", *args, "--db", str(tmp_path / "f.db"), "--repo", str(demo.path),
                                    "--executor", "sim"], env={"FLAKEBOT_CONFIG": ""})
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1


def test_abort_closes_an_open_verify_only(demo, tmp_path):
    cfg = cfg_for(demo, tmp_path)
    with Store(cfg.store.db) as store:
        cid, _ = open_(store, cfg, demo, FIX, n=5)
        VerifyCampaign(store, build_executor(cfg), cid).abort()
        assert store.get_campaign(cid)["status"] == "aborted"
        with pytest.raises(ValueError):
            VerifyCampaign(store, build_executor(cfg), cid).abort()
        with pytest.raises(ValueError):  # not a verify campaign
            VerifyCampaign(store, None, store.create_campaign("bisect", TEST, "a", "b", ["a", "b"], {}))
