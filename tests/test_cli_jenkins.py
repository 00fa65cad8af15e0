"""`flakebot bisect --executor jenkins` end to end against the fake Jenkins:
config file, token from the environment, 4 agents kept busy, right culprit."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from flakebot.cli.app import main
from flakebot.demo.repo import build_demo_repo
from tests.fakes.jenkins import FakeJenkins
from flakebot.demo.hosts import Scenario
from flakebot.store import Store

TEST = "vfio_user_nvme_restart_vm"


def jenkins_config(tmp_path, fake, url: str, monkeypatch, poll_seconds: float = 0.02):
    """A config file for the jenkins executor against `fake`, its token in the environment."""
    cfg = tmp_path / "flakebot.toml"
    cfg.write_text(f'[executor]\nname = "jenkins"\n[jenkins]\nurl = "{url}"\nuser = "{fake.user}"\n'
                   f'token_env = "TEST_JENKINS_TOKEN"\npoll_seconds = {poll_seconds}\n')
    monkeypatch.setenv("TEST_JENKINS_TOKEN", fake.token)
    return cfg


def test_bisect_through_the_fake_jenkins(tmp_path, monkeypatch):
    demo = build_demo_repo(tmp_path / "spdk", n_commits=40, seed=4)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("FLAKEBOT_CONFIG", raising=False)
    # Builds last long enough (1 simulated minute = 20 ms) that all four overlap.
    fake = FakeJenkins(agents=4, time_scale=0.02, scenario=Scenario.from_repo(str(demo.path)))
    with fake as url:
        cfg = jenkins_config(tmp_path, fake, url, monkeypatch)
        db = tmp_path / "f.db"
        r = CliRunner().invoke(main, ["--config", str(cfg), "bisect", "--good", demo.good, "--bad", demo.tip,
                                      "--test", TEST, "--repo", str(demo.path), "--db", str(db), "--json"],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        assert (out["verdict"], out["culprit"]) == ("culprit", demo.culprit)
        assert fake.max_running == 4  # every agent was kept busy at some point
        assert fake.token not in r.output
        with Store(db) as s:
            builds = s.builds(out["campaign_id"])
        # Every build is a real Jenkins build: its URL and the agent that ran it are stored.
        assert all(b["url"].startswith(url) and b["host"] for b in builds)
        assert len({b["host"] for b in builds}) == 4


class Killed(Exception):
    pass


def test_abort_stops_the_campaigns_running_builds(tmp_path, monkeypatch):
    """A bot killed with builds running; `flakebot bisect --abort ID` from a new
    process finds them on Jenkins and stops them; what finished stays stored."""
    from flakebot.campaigns.bisect import BisectCampaign, BisectParams, open_bisect
    from flakebot.executors.jenkins import JenkinsExecutor
    from tests.fakes.jenkins import DEFAULT_JOB
    from flakebot.history import History

    demo = build_demo_repo(tmp_path / "spdk", n_commits=40, seed=4)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("FLAKEBOT_CONFIG", raising=False)
    # Slow builds (1 simulated minute = 0.3 s): still running when we abort.
    fake = FakeJenkins(agents=4, time_scale=0.3, scenario=Scenario.from_repo(str(demo.path)))
    with fake as url:
        db = tmp_path / "f.db"
        hist = History(demo.path)
        with Store(db) as store:
            cid, _ = open_bisect(store, TEST, hist.commit(demo.good), hist.first_parent_range(demo.good, demo.tip),
                                 BisectParams(seed=1))
            ex = JenkinsExecutor(url, fake.user, fake.token, poll_seconds=0.02)

            def die(progress):
                if progress.in_flight:  # a build came back, the others are still running
                    raise Killed()

            with pytest.raises(Killed):
                BisectCampaign(store, ex, cid, poll_seconds=0.02, on_progress=die).run()
            assert store.pending_builds(cid)
        cfg = jenkins_config(tmp_path, fake, url, monkeypatch)
        r = CliRunner().invoke(main, ["--config", str(cfg), "bisect", "--abort", str(cid), "--db", str(db)],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        with Store(db) as store:
            assert store.get_campaign(cid)["status"] == "aborted"
        builds = list(fake.jobs[DEFAULT_JOB].builds.values())
        assert builds and all(not b.building for b in builds)
        assert any(b.result == "ABORTED" for b in builds)
        # Aborting twice is bad input: one line, exit 2.
        r = CliRunner().invoke(main, ["--config", str(cfg), "bisect", "--abort", str(cid), "--db", str(db)])
        assert r.exit_code == 2 and "not open" in r.output
