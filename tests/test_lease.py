"""One driver per campaign (flakebot/campaigns/lease.py) and no adopted stranger:
the lease refuses a second driver naming the holder, renewal keeps it, expiry
(or a holder dead on this host) frees it; run ids carry each database's
instance id; two databases against one Jenkins that answers 503 after
queuing every trigger never adopt each other's builds."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from flakebot.cli.app import main
from flakebot.executors.procs import boot_id, proc_stat
from flakebot.campaigns.lease import CampaignLease, Identity, LeaseHeld, LeaseLost, holder
from flakebot.executors.runids import campaign_run_id, instance_id, seed_key
from flakebot.store import SCHEMA_VERSION, Store, StoreError

T0 = datetime(2026, 11, 25, 16, 0, 0, tzinfo=timezone.utc)
TEST = "vfio_user_nvme_restart_vm"
ELSEWHERE = Identity("lab-7", 4242, "boot-of-lab-7", 1234)


class Clock:
    """Wall clock and monotonic clock a test moves by hand."""

    def __init__(self):
        self.now = T0
        self.mono = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "f.db")
    yield s
    s.close()


@pytest.fixture
def cid(store):
    return store.create_campaign("bisect", TEST, "a" * 40, "b" * 40, ["a" * 40, "b" * 40], {})


def lease(store, cid, clock, identity=None, seconds=120.0):
    return CampaignLease(store, cid, seconds=seconds, clock=clock, monotonic=clock.monotonic, identity=identity)


# ------------------------------------------------------------------ the lease


def test_a_second_driver_is_refused_with_the_holder_named(store, cid):
    clock = Clock()
    with lease(store, cid, clock, ELSEWHERE):
        with pytest.raises(LeaseHeld) as e:
            lease(store, cid, clock).acquire()
        msg = str(e.value)
        assert "\n" not in msg
        assert f"campaign {cid} is driven by another flakebot: pid 4242 on lab-7 since 2026-11-25T16:00:00+00:00" in msg
        assert "2026-11-25T16:02:00+00:00" in msg  # until when
        h = holder(store, cid)
        assert (h.host, h.pid, h.since) == ("lab-7", 4242, "2026-11-25T16:00:00+00:00")
        # A live holder in this very process is refused too (another lease object).
        with pytest.raises(LeaseHeld):
            with lease(store, cid, clock, Identity.of_this_process()):
                pass
    assert holder(store, cid) is None  # given back on the way out
    with lease(store, cid, clock):
        assert holder(store, cid).pid == os.getpid()


def test_renewal_keeps_the_lease_and_expiry_hands_it_over(store, cid):
    clock = Clock()
    first = lease(store, cid, clock, ELSEWHERE).acquire()
    clock.advance(20)
    first.renew()  # within a quarter of the lease: nothing written
    assert holder(store, cid).expires == "2026-11-25T16:02:00+00:00"
    for _ in range(10):  # a driver that keeps polling keeps its campaign
        clock.advance(40)
        first.renew()
        with pytest.raises(LeaseHeld):
            lease(store, cid, clock).acquire()
    assert holder(store, cid).expires == "2026-11-25T16:09:00+00:00"  # renewed at 16:07:00
    clock.advance(121)  # the holder stopped renewing (hung, its host gone): expired
    second = lease(store, cid, clock).acquire()
    assert holder(store, cid).pid == os.getpid()
    with pytest.raises(LeaseLost, match=rf"another flakebot took it over \(pid {os.getpid()} on "):
        first.renew()
    assert not first.held
    first.release()  # the old holder's way out leaves the new lease alone
    assert holder(store, cid).token == second.token
    second.release()
    assert holder(store, cid) is None


def test_nested_holds_join_and_bad_input_is_one_line(store, cid):
    clock = Clock()
    lz = lease(store, cid, clock)
    with lz:
        with lz:
            pass
        assert lz.held and holder(store, cid) is not None
    assert holder(store, cid) is None
    with pytest.raises(StoreError, match="no campaign 99"):
        lease(store, 99, clock).acquire()
    with pytest.raises(ValueError, match="above 0"):
        lease(store, cid, clock, seconds=0)


def test_a_holder_dead_on_this_host_is_replaced_at_once(store, cid):
    clock = Clock()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    st = proc_stat(proc.pid)
    dead = Identity(socket.gethostname(), proc.pid, boot_id(), st.start_ticks)
    lease(store, cid, clock, dead).acquire()
    with pytest.raises(LeaseHeld):  # alive: refused
        lease(store, cid, clock).acquire()
    proc.stdin.close()
    proc.wait()
    with lease(store, cid, clock):  # killed (no release): taken over without waiting for expiry
        assert holder(store, cid).pid == os.getpid()
    # The same pid on another host proves nothing: only expiry frees that one.
    lease(store, cid, clock, Identity("elsewhere", proc.pid, boot_id(), st.start_ticks)).acquire()
    with pytest.raises(LeaseHeld):
        lease(store, cid, clock).acquire()


# ------------------------------------------------------------------ run ids


def test_each_database_has_its_own_instance_id_and_a_copy_keeps_it(tmp_path):
    a, b = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    ia, ib = instance_id(a), instance_id(b)
    assert ia != ib and len(ia) == 12 and int(ia, 16) >= 0
    a.close(), b.close()
    shutil.copy(tmp_path / "a.db", tmp_path / "c.db")
    with Store(tmp_path / "a.db") as a2, Store(tmp_path / "c.db") as c:
        assert instance_id(a2) == instance_id(c) == ia  # made once, at creation
    rid = campaign_run_id(ia, "c", 3, 7)
    assert rid == f"{ia}-c3-r7" and seed_key(rid) == "c3-r7"


def test_a_v2_database_gets_an_instance_id_and_leases(tmp_path):
    path = tmp_path / "f.db"
    s = Store(path)
    with s.write() as db:  # as flakebot v2 left it
        db.execute("DROP TABLE leases")
        db.execute("DELETE FROM meta WHERE key = 'instance_id'")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    s.close()
    with Store(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert len(instance_id(s)) == 12
        cid = s.create_campaign("verify", TEST, "a" * 40, "b" * 40, ["a" * 40, "b" * 40], {})
        with CampaignLease(s, cid):
            assert holder(s, cid) is not None


def test_a_run_id_names_one_request_in_the_store(store):
    from flakebot.model import RunRequest

    r = RunRequest("x-c1-r1", "a" * 40, (TEST,), 3)
    bid = store.record_submission(r, "sim")
    assert store.record_submission(r, "sim") == bid
    with pytest.raises(StoreError, match="run id x-c1-r1 is already build 1 at aaaaaaaaaa"):
        store.record_submission(RunRequest("x-c1-r1", "b" * 40, (TEST,), 3), "sim")


# ------------------------------------------------------------------ drivers


@pytest.fixture
def jenkins_world(tmp_path, monkeypatch):
    """A demo repo, a slow fake Jenkins (builds outlive the test's steps) and
    a config pointing at it."""
    from flakebot.demo.repo import build_demo_repo
    from tests.fakes.jenkins import FakeJenkins
    from flakebot.demo.hosts import Scenario
    from tests.test_cli_jenkins import jenkins_config

    demo = build_demo_repo(tmp_path / "spdk", n_commits=30, seed=4)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("FLAKEBOT_CONFIG", raising=False)
    fake = FakeJenkins(agents=2, time_scale=0.5, scenario=Scenario.from_repo(str(demo.path)))
    with fake as url:
        yield demo, fake, jenkins_config(tmp_path, fake, url, monkeypatch, poll_seconds=0.05)


def test_two_bisect_processes_on_one_campaign_the_second_is_refused(tmp_path, jenkins_world):
    demo, fake, cfg = jenkins_world
    db = tmp_path / "f.db"
    args = ["--config", str(cfg), "bisect", "--good", demo.good, "--bad", demo.tip, "--test", TEST,
            "--repo", str(demo.path), "--db", str(db)]
    first = subprocess.Popen([sys.executable, "-m", "flakebot", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        h = None
        while h is None:  # wait for it to hold the campaign
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first bisect never took its campaign"
            if db.exists():
                with Store(db) as s:
                    rows = s._query("SELECT campaign_id FROM leases")
                    h = holder(s, rows[0]["campaign_id"]) if rows else None
            time.sleep(0.05)
        assert (h.pid, h.host) == (first.pid, socket.gethostname())
        cid = h.campaign_id
        for again in (args, ["--config", str(cfg), "bisect", "--resume", str(cid), "--db", str(db)],
                      ["--config", str(cfg), "bisect", "--abort", str(cid), "--db", str(db)]):
            r = CliRunner().invoke(main, again)
            assert r.exit_code == 2, r.output
            assert r.output.count("\n") == 1 and r.output.startswith("flakebot: error: ")
            assert (f"campaign {cid} is driven by another flakebot: pid {first.pid} on {socket.gethostname()} "
                    f"since {h.since}") in r.output
        with Store(db) as s:
            assert s.get_campaign(cid)["status"] == "open"
            assert all(b["run_id"].startswith(instance_id(s) + f"-c{cid}-r") for b in s.builds(cid))
        first.send_signal(signal.SIGKILL)  # no chance to give the lease back
        first.wait(10)
        # Its holder is gone from this host: the lease is taken over at once.
        r = CliRunner().invoke(main, ["--config", str(cfg), "bisect", "--abort", str(cid), "--db", str(db)])
        assert r.exit_code == 0, r.output
        with Store(db) as s:
            assert s.get_campaign(cid)["status"] == "aborted" and holder(s, cid) is None
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)


def test_serve_skips_a_campaign_another_process_drives_and_takes_it_after_expiry(tmp_path):
    from flakebot.service.daemon import Service
    from tests.test_nightly import CULPRIT, World
    from tests.test_service import open_a_campaign

    world = World(tmp_path)
    try:
        cid = open_a_campaign(world)
        CampaignLease(world.store, cid, identity=ELSEWHERE).acquire()  # a terminal's `bisect --resume` elsewhere
        builds = len(world.store.builds(cid))
        svc = Service(world.cfg)
        assert svc.drive_campaigns() == [] and not svc.errors
        assert world.store.get_campaign(cid)["status"] == "open" and len(world.store.builds(cid)) == builds
        with world.store.write() as db:  # that process stopped renewing long ago
            db.execute("UPDATE leases SET expires = '2026-01-01T00:00:00+00:00' WHERE campaign_id = ?", [cid])
        (result,) = svc.drive_campaigns()
        assert not svc.errors
        assert (result["campaign_id"], result["verdict"], result["culprit"]) == (cid, "culprit",
                                                                                  world.shas[CULPRIT])
        assert holder(world.store, cid) is None
    finally:
        world.close()


# ------------------------------------------------------------------ no adopted stranger


@pytest.mark.parametrize("databases", ["fresh", "copied"])
def test_two_databases_one_jenkins_503_on_every_trigger_adopt_only_their_own(tmp_path, monkeypatch, databases):
    """Every trigger is queued and then answered 503, so every request is found
    again by run id. Two databases (two fresh ones; or one copied from the
    other, so both make the same run ids for different commits) bisect
    different ranges at once: each stored build must be the Jenkins build of
    its own request."""
    from flakebot.campaigns.bisect import BisectCampaign, BisectParams, open_bisect
    from flakebot.executors.jenkins import JenkinsExecutor
    from tests.fakes.jenkins import DEFAULT_JOB, FakeJenkins
    from flakebot.history import History
    from flakebot.demo.hosts import Behaviour, Scenario
    from tests.gitrepo import make_repo

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    shas = make_repo(tmp_path / "repo", 16)
    hist = History(tmp_path / "repo")
    scenario = Scenario.by_culprit(list(shas), shas[10], Behaviour(0.0, 0.02), Behaviour(0.4, 0.3))
    fake = FakeJenkins(agents=4, time_scale=0.001, scenario=scenario, user="u", token="t")
    Store(tmp_path / "a.db").close()
    if databases == "copied":
        shutil.copy(tmp_path / "a.db", tmp_path / "b.db")
    ranges = {"a": (0, 15), "b": (3, 15)}
    stores = {k: Store(tmp_path / f"{k}.db") for k in ranges}
    results, errors = {}, []
    with fake as url:
        fake.fail_triggers(100_000)

        def drive(k):
            try:
                lo, hi = ranges[k]
                s = stores[k]
                cid, _ = open_bisect(s, TEST, hist.commit(shas[lo]), hist.first_parent_range(shas[lo], shas[hi]),
                                     BisectParams(seed=5, max_runs=100, confirm_runs=0))
                ex = JenkinsExecutor(url, "u", "t", DEFAULT_JOB, "vfio-user", timeout=5.0, poll_seconds=0.005,
                                     backoff_seconds=0.002, retries=6)
                results[k] = BisectCampaign(s, ex, cid, poll_seconds=0.005).run()
            except Exception as e:  # reported below with the assertion
                errors.append(f"{k}: {e!r}")

        threads = [threading.Thread(target=drive, args=(k,)) for k in ranges]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and set(results) == set(ranges), errors
        rows = {k: s.builds(results[k]["campaign_id"]) for k, s in stores.items()}
        same = instance_id(stores["a"]) == instance_id(stores["b"])
        for s in stores.values():
            s.close()
        builds = fake.jobs[DEFAULT_JOB].builds
    assert same == (databases == "copied")
    assert all(q.left_at is not None for q in fake.queue.values())  # every trigger was queued
    checked = 0
    for k, bs in rows.items():
        assert bs and all(b["status"] == "ingested" for b in bs)
        for b in bs:
            number = json.loads(b["external_id"])["build"]
            p = builds[number].params
            asked = {"FLAKEBOT_RUN_ID": b["run_id"], "SPDK_COMMIT": b["commit_sha"],
                     "FLAKEBOT_TESTS": " ".join(b["tests"]), "FLAKEBOT_ITERATIONS": str(b["iterations"])}
            assert {n: p.get(n) for n in asked} == asked, (k, b["run_id"])
            checked += 1
    if databases == "copied":  # the same run ids, asked at other commits: strangers were there to adopt
        commits = {b["run_id"]: b["commit_sha"] for b in rows["a"]}
        assert any(commits.get(b["run_id"]) not in (None, b["commit_sha"]) for b in rows["b"])
    assert checked == len(rows["a"]) + len(rows["b"])


def test_the_fake_jenkins_queues_a_trigger_it_answers_503(monkeypatch):
    from flakebot.executors.jenkins import _HTTPStatusError
    from tests.fakes.jenkins import DEFAULT_JOB, FakeJenkins

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fake = FakeJenkins(agents=0, user="u", token="t")
    with fake as url:
        ex = _jenkins(url)
        fake.fail_triggers(1)
        with pytest.raises(_HTTPStatusError) as e:
            ex._server.build_job(DEFAULT_JOB, ex.parameters(_req("t-1")))
        assert e.value.status == 503
        (item,) = fake.queue.values()  # queued all the same, as behind a proxy that gave up
        assert item.params["FLAKEBOT_RUN_ID"] == "t-1"
        assert ex._server.build_job(DEFAULT_JOB, ex.parameters(_req("t-2"))) == 2
        assert len(fake.queue) == 2  # the next trigger is answered normally


def _jenkins(url, **kw):
    from flakebot.executors.jenkins import JenkinsExecutor
    from tests.fakes.jenkins import DEFAULT_JOB

    return JenkinsExecutor(url, "u", "t", DEFAULT_JOB, "vfio-user", timeout=5.0, poll_seconds=0.005,
                           backoff_seconds=0.002, retries=4, **kw)


def _req(run_id, commit="a" * 40, iterations=1):
    from flakebot.model import RunRequest

    return RunRequest(run_id, commit, (TEST,), iterations)


def test_jenkins_never_adopts_a_build_of_another_request_with_its_run_id(monkeypatch):
    from flakebot.executors.jenkins import Handle
    from tests.fakes.jenkins import DEFAULT_JOB, FakeJenkins
    from flakebot.model import BuildState

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fake = FakeJenkins(agents=1, time_scale=0.001, user="u", token="t")
    with fake as url:
        fake.set_online("agent-1", False)  # both stay queued while we look
        theirs_req, ours_req = _req("dup-1", "a" * 40), _req("dup-1", "b" * 40)
        theirs = Handle.decode(_jenkins(url).submit(theirs_req), DEFAULT_JOB)
        fake.fail_triggers(1)
        ex = _jenkins(url)
        ours = Handle.decode(ex.submit(ours_req), DEFAULT_JOB)  # 503: found again by run id
        assert ours.queue != theirs.queue
        assert fake.queue[ours.queue].params["SPDK_COMMIT"] == "b" * 40
        fake.set_online("agent-1", True)
        done = {}
        deadline = time.monotonic() + 30
        while len(done) < 2:
            assert time.monotonic() < deadline
            for name, h, e in (("theirs", theirs, _jenkins(url)), ("ours", ours, ex)):
                s = e.poll(h.encode())
                if s.state is BuildState.DONE:
                    done[name] = Handle.decode(s.external_id, DEFAULT_JOB)
            time.sleep(0.01)
        # After a restart: a stored handle of the other request's build is not ours ...
        fresh = _jenkins(url)
        found = Handle.decode(fresh.reattach(ours_req, done["theirs"].encode()), DEFAULT_JOB)
        assert found.build == done["ours"].build
        # ... nor is any build with the run id, for a request nobody built.
        assert _jenkins(url).reattach(_req("dup-1", "c" * 40)) is None
        # Followed by its handle, the other request's build is lost to us, never our answer.
        s = fresh.poll(done["theirs"].encode())
        assert s.state is BuildState.LOST and "another request's parameters (commit aaaaaaaaaa" in s.reason


def test_the_sim_executor_never_adopts_another_request_with_its_run_id():
    from flakebot.executors.base import ExecutorError
    from flakebot.executors.sim import SimExecutor

    ex = SimExecutor()
    h = ex.submit(_req("s-1"))
    assert ex.submit(_req("s-1")) == h
    with pytest.raises(ExecutorError, match="run id s-1 already ran another request .* not adopting it"):
        ex.submit(_req("s-1", iterations=2))


def test_the_campaign_renews_its_lease_on_every_poll_tick(store):
    from flakebot.campaigns.bisect import BisectCampaign, BisectParams, open_bisect
    from flakebot.executors.sim import SimExecutor
    from flakebot.model import Commit

    shas = [f"{i:040x}" for i in range(1, 9)]
    cid, _ = open_bisect(store, TEST, Commit(shas[0]), [Commit(s) for s in shas[1:]],
                         BisectParams(max_runs=12, confirm_runs=0))
    camp = BisectCampaign(store, SimExecutor(polls_until_done=3), cid)
    ticks = []
    renew = camp.dispatcher.heartbeat

    def heartbeat():
        h = holder(store, cid)
        ticks.append(h is not None and h.pid == os.getpid() and h.token == camp.lease.token)
        renew()

    camp.dispatcher.heartbeat = heartbeat
    camp.run()
    assert len(ticks) > 3 and all(ticks)  # every tick, held by this driver
    assert holder(store, cid) is None


def test_the_lease_must_outlast_several_poll_ticks():
    from flakebot.config import ConfigError, load_config

    cfg = load_config(env={})
    assert cfg.store.lease_seconds == 120.0
    jenkins = {"executor.name": "jenkins", "jenkins.url": "https://ci.example.org/"}
    assert cfg.with_overrides({**jenkins, "store.lease_seconds": 60}).store.lease_seconds == 60.0
    with pytest.raises(ConfigError, match=r"^config: store.lease_seconds must be at least 4 x "
                                          r"jenkins.poll_seconds \(60\) \(got 59\)$"):
        cfg.with_overrides({**jenkins, "store.lease_seconds": 59})
    with pytest.raises(ConfigError, match="store.lease_seconds must be a number between 1 and 86400"):
        cfg.with_overrides({"store.lease_seconds": 0})


def test_status_names_the_process_driving_each_campaign(tmp_path):
    from flakebot.cli.service import status_data
    from tests.test_nightly import World
    from tests.test_service import open_a_campaign, write_config

    world = World(tmp_path)
    try:
        cid = open_a_campaign(world)
        cfg = write_config(world, tmp_path)
        r = CliRunner().invoke(main, ["--config", cfg, "status"])
        assert r.exit_code == 0 and "driven by" not in r.output
        with CampaignLease(world.store, cid, identity=ELSEWHERE):
            (camp,) = status_data(world.cfg)["campaigns"]
            assert (camp["id"], camp["driver"]["host"], camp["driver"]["pid"]) == (cid, "lab-7", 4242)
            r = CliRunner().invoke(main, ["--config", cfg, "status"])
            assert r.exit_code == 0 and "driven by pid 4242 on lab-7 since " in r.output
    finally:
        world.close()


def test_a_second_verify_of_one_campaign_is_refused(tmp_path, monkeypatch):
    from flakebot.config import load_config
    from flakebot.model import Commit
    from flakebot.campaigns.verify import VerifyParams, open_verify

    monkeypatch.delenv("FLAKEBOT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    db, patch, parent = tmp_path / "f.db", "b" * 40, "a" * 40
    with Store(db) as s:
        cid, _ = open_verify(s, TEST, Commit(patch), Commit(parent), VerifyParams.from_config(load_config(env={}), 4))
        CampaignLease(s, cid, identity=ELSEWHERE).acquire()
    args = ["verify", "--patch", patch, "--parent", parent, "--test", TEST, "--iterations", "4", "--db", str(db),
            "--executor", "sim"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert f"campaign {cid} is driven by another flakebot: pid 4242 on lab-7 since " in r.output
    with Store(db) as s:
        assert not s.builds(cid)
        with s.write() as w:  # that holder's lease ran out long ago
            w.execute("UPDATE leases SET expires = '2026-01-01T00:00:00+00:00'")
    r = CliRunner().invoke(main, args + ["--json"])
    assert r.exit_code in (0, 3) and json.loads(r.output)["campaign_id"] == cid
