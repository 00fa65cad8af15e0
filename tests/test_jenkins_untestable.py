"""Against the fake Jenkins: a commit whose build fails (the host script's
`flakebot: infra:` line, exit 3, build FAILURE) is skipped, not rebuilt
forever; a range where every build fails ends at once; the budgets hold."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from flakebot.cli.app import main
from flakebot.demo.repo import build_demo_repo
from tests.fakes.jenkins import FakeJenkins
from flakebot.demo.hosts import Scenario, untestable_commits
from flakebot.store import Store

TEST = "vfio_user_nvme_restart_vm"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_repo(tmp_path_factory.mktemp("spdk") / "spdk", n_commits=40, seed=4)


def _bisect(tmp_path, monkeypatch, demo, unbuildable, *args):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("FLAKEBOT_CONFIG", raising=False)
    scenario = Scenario.from_repo(str(demo.path)).with_untestable(untestable_commits((), build_fails=unbuildable))
    fake = FakeJenkins(agents=4, time_scale=0.002, scenario=scenario)
    with fake as url:
        tmp_path.mkdir(parents=True, exist_ok=True)
        cfg = tmp_path / "flakebot.toml"
        cfg.write_text(f'[executor]\nname = "jenkins"\n[jenkins]\nurl = "{url}"\nuser = "{fake.user}"\n'
                       f'token_env = "TEST_JENKINS_TOKEN"\npoll_seconds = 0.01\n')
        monkeypatch.setenv("TEST_JENKINS_TOKEN", fake.token)
        db = tmp_path / "f.db"
        r = CliRunner().invoke(main, ["--config", str(cfg), "bisect", "--good", demo.good, "--bad", demo.tip,
                                      "--test", TEST, "--repo", str(demo.path), "--db", str(db), "--json", *args],
                               catch_exceptions=False)
        out = json.loads(r.output)
        with Store(db) as s:
            builds = s.builds(out["campaign_id"])
            infra = [x for x in s.runs(campaign_id=out["campaign_id"]) if x["outcome"] == "infra"]
        results = [fake.build(b["external_id"] and json.loads(b["external_id"])["build"]).result for b in builds]
        return r.exit_code, out, builds, infra, results


def test_unbuildable_parent_of_the_culprit_is_skipped_and_named_in_the_range(tmp_path, monkeypatch, demo):
    i = demo.shas.index(demo.culprit)
    parent = demo.shas[i - 1]
    code, out, builds, infra, results = _bisect(tmp_path, monkeypatch, demo, [parent])
    assert code == 0 and out["verdict"] == "culprit-range", out["reason"]
    rg = out["culprit_range"]
    assert (rg["first"], rg["last"], rg["parent"]) == (parent, demo.culprit, demo.shas[i - 2])
    assert [c["commit"] for c in rg["commits"]] == [parent, demo.culprit] and rg["probability"] >= 0.95
    # Built once, or by the hosts that got it in the same round: never again after the answer.
    at_parent = [b for b in builds if b["commit_sha"] == parent]
    assert 1 <= len(at_parent) <= 4
    [u] = out["untestable"]
    assert (u["commit"], u["reason"], u["reasons"]) == (parent, f"build of {parent} failed", [u["reason"]])
    assert u["requests"] == len(at_parent) and u["evidence_runs"] == 0
    assert u["hosts"] == sorted({b["host"] for b in at_parent})
    # Its builds failed as exit 3 does (FAILURE), stored as infra with the host's reason, never as a test failure.
    assert all(results[builds.index(b)] == "FAILURE" for b in at_parent)
    assert {x["reason"] for x in infra if x["commit_sha"] == parent} == {f"cannot test here: build of {parent} failed"}
    # A failed build costs its 10 simulated minutes of host time, counted in the total.
    assert all(b["host_minutes"] == pytest.approx(10.0, abs=0.1) for b in at_parent)
    assert out["host_minutes"] == pytest.approx(sum(b["host_minutes"] for b in builds), abs=0.01)


def test_every_build_failing_ends_at_once(tmp_path, monkeypatch, demo):
    code, out, builds, infra, results = _bisect(tmp_path, monkeypatch, demo, demo.shas)
    assert code == 3 and out["verdict"] == "inconclusive" and out["reason"] == "the bad end cannot be tested here"
    assert out["runs"] == 0 and len(builds) <= 8 and set(results) == {"FAILURE"}
    assert demo.tip in {u["commit"] for u in out["untestable"]}


def test_build_and_host_hour_budgets_stop_a_range_of_failing_builds(tmp_path, monkeypatch, demo):
    lo, hi = demo.shas.index(demo.good), demo.shas.index(demo.tip)
    middle = demo.shas[lo + 1:hi]  # only the two ends can be built
    code, out, builds, *_ = _bisect(tmp_path / "a", monkeypatch, demo, middle, "--max-builds", "10")
    assert code == 3 and out["reason"] == "build budget spent" and out["builds"] == len(builds) == 10
    code, out, builds, *_ = _bisect(tmp_path / "b", monkeypatch, demo, middle, "--max-host-hours", "1")
    assert code == 3 and "host-hour budget spent" in out["reason"]
    # New work stops once an hour is spent; what was out (4 hosts) still finishes.
    assert 60 <= out["host_minutes"] <= 60 + 4 * (10 + 8 * 2)
