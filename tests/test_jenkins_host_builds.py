"""Per-host builds through Jenkins: the fake's agents keep their last build,
the executor pins a request to a node by its label expression, and a
bisection sends more runs of a commit to the agent that has it built."""
from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from flakebot.cli.app import main
from flakebot.demo.repo import build_demo_repo
from flakebot.executors.base import ExecutorError
from flakebot.executors.jenkins import JenkinsExecutor, pin_label
from tests.fakes.jenkins import FakeJenkins
from flakebot.model import BuildState, RunRequest
from flakebot.demo.hosts import Scenario
from flakebot.store import Store
from tests.test_cli_jenkins import jenkins_config

TEST = "vfio_user_nvme_restart_vm"


@pytest.fixture(autouse=True)
def _loopback(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")


def wait_done(ex, handle, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = ex.poll(handle)
        if st.state in (BuildState.DONE, BuildState.LOST):
            return st
        time.sleep(0.01)
    raise AssertionError(f"{handle} not done")


@pytest.mark.parametrize("node", ["", "agent 2", "a&&b", "-x", "h(1)"])
def test_pin_label_refuses_what_is_not_a_node_name(node):
    with pytest.raises(ExecutorError, match="cannot pin"):
        pin_label("vfio-user", node)


def test_pinned_request_runs_on_its_node_and_reuses_its_build():
    fake = FakeJenkins(agents=4, time_scale=0.002)
    with fake as url:
        ex = JenkinsExecutor(url, fake.user, fake.token, poll_seconds=0.01)
        sha = "a" * 40
        first = wait_done(ex, ex.submit(RunRequest("r1", sha, (TEST,), 1, host="agent-3")))
        assert first.host == "agent-3"
        again = wait_done(ex, ex.submit(RunRequest("r2", sha, (TEST,), 1, host="agent-3")))
        assert again.host == "agent-3"
        assert fake.compiles()["agent-3"] == 1  # the second build found the commit built
        assert "is current, skipping build" in "\n".join(ex.console(ex.find_by_run_id("r2")))
        assert ex.parameters(RunRequest("r3", sha, (TEST,), 1, host="agent-3"))["LABEL"] == "vfio-user && agent-3"


@pytest.mark.parametrize("how", ["gone", "offline", "never-was"])
def test_request_pinned_to_a_node_that_cannot_take_it_is_withdrawn(how):
    """Jenkins would keep it queued forever ("There are no nodes with the
    label ...", "All nodes of label ... are offline"): the executor cancels the
    queue item and reports it lost before it started, so it is asked again."""
    fake = FakeJenkins(agents=2, time_scale=0.002)
    with fake as url:
        ex = JenkinsExecutor(url, fake.user, fake.token, poll_seconds=0.01)
        node = "agent-9" if how == "never-was" else "agent-2"
        if how == "gone":
            fake.lose_agent("agent-2", after_iterations=0)
        elif how == "offline":
            fake.set_online("agent-2", False)
        h = ex.submit(RunRequest("r1", "b" * 40, (TEST,), 1, host=node))
        st = wait_done(ex, h)  # after the quiet period, the queue item says why it waits
        (q,) = fake.queue.values()
        assert st.state is BuildState.LOST and st.queue_id == q.id and st.build_number is None
        assert ("are offline" if how == "offline" else "There are no nodes") in st.reason
        assert node in st.reason and q.cancelled
        unpinned = wait_done(ex, ex.submit(RunRequest("r1", "b" * 40, (TEST,), 1)))
        assert unpinned.state is BuildState.DONE and unpinned.host == "agent-1"
        assert fake.compiles() == {"agent-1": 1, "agent-2": 0}


def test_request_pinned_to_a_busy_node_waits_for_it():
    fake = FakeJenkins(agents=2, time_scale=0.002)
    with fake as url:
        ex = JenkinsExecutor(url, fake.user, fake.token, poll_seconds=0.01)
        first = ex.submit(RunRequest("r1", "c" * 40, (TEST,), 40, host="agent-2"))
        second = ex.submit(RunRequest("r2", "c" * 40, (TEST,), 1, host="agent-2"))
        while ex.poll(first).state is BuildState.QUEUED:
            time.sleep(0.01)
        st = ex.poll(second)
        assert st.state is BuildState.QUEUED and "Waiting for next available executor" in st.reason
        ex.cancel(second)
        ex.cancel(ex.poll(first).external_id)


def test_bisect_pins_runs_to_agents_that_have_the_commit_built(tmp_path, monkeypatch):
    demo = build_demo_repo(tmp_path / "spdk", n_commits=40, seed=4)
    monkeypatch.delenv("FLAKEBOT_CONFIG", raising=False)
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
        with Store(db) as s:
            builds = s.builds(out["campaign_id"])
        jobs = [b for j in fake.jobs.values() for b in j.builds.values()]
        pinned = [b for b in jobs if "&&" in b.params.get("LABEL", "")]
        assert pinned, "no request was pinned to the agent that had its commit"
        reused = 0
        for b in pinned:
            node = b.params["LABEL"].split("&&")[1].strip()
            assert b.agent.name == node
            reused += "is current, skipping build" in "".join(x.decode() for x in b.log.read(0, b.log.size))
        # A pinned request finds its commit still built unless an unpinned request
        # reached that agent first (queued while the campaign saw the agent idle).
        assert reused >= 0.75 * len(pinned)
        # Builds per agent: each agent compiled only when its last build was another
        # commit, and the kept builds saved compiles (requests - compiles > 0).
        per_agent: dict[str, list[str]] = {}
        for b in sorted(builds, key=lambda b: b["id"]):
            per_agent.setdefault(b["host"], []).append(b["commit_sha"])
        expected = {h: sum(1 for i, c in enumerate(seq) if i == 0 or seq[i - 1] != c) for h, seq in per_agent.items()}
        assert fake.compiles() == {h: expected.get(h, 0) for h in fake.compiles()}
        assert sum(expected.values()) <= len(builds) - reused
