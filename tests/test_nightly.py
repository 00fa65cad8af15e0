"""The nightly cycle over a simulated history: an upstream demo repository
whose branch moves forward night after night (culprit at 40, fix at 50), a
clone that fetches it, sim hosts whose behaviour comes from the tree."""
from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flakebot.campaign import BisectCampaign
from flakebot.config import load_config
from flakebot.demo_repo import build_demo_repo
from flakebot.history import History
from flakebot.nightly import appears_fixed, events, nightly_cycle
from flakebot.store import Store
from flakebot.wiring import build_executor

TEST = "vfio_user_nvme_restart_vm"
CULPRIT, FIX = 40, 50
T0 = datetime(2026, 11, 1, 2, 30, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def fast_sqlite(monkeypatch):
    """Test speed only: no fsync per commit (this disk makes each one cost ~5 ms)."""
    init = Store.__init__

    def fast_init(self, *a, **kw):
        init(self, *a, **kw)
        self.db.execute("PRAGMA synchronous=OFF")

    monkeypatch.setattr(Store, "__init__", fast_init)


class World:
    """upstream/ (the demo repo, its master moved by `move`), clone/ (fetches
    it), f.db. `World(base, shas=...)` reopens a copy of an existing one."""

    def __init__(self, base: Path, remote: bool = True, shas: list[str] | None = None):
        self.base = base
        self.upstream = base / "upstream"
        if shas is None:
            demo = build_demo_repo(self.upstream, n_commits=60, culprit_index=CULPRIT, fix_index=FIX, seed=3)
            self.shas = demo.shas
            self.move(10)
            if remote:
                subprocess.run(["git", "clone", "-q", str(self.upstream), str(base / "clone")], check=True)
        else:
            self.shas = shas
        self.repo = base / "clone" if remote else self.upstream
        self.cfg = load_config(env={}).with_overrides(
            {"store.db": str(base / "f.db"), "spdk.repo": str(self.repo), "executor.name": "sim",
             "tests.names": [TEST], "sim.seed": 2, "report.dir": str(base / "reports"),
             "report.base_url": "https://ci.example.org/flakebot/"})
        self.store = Store(self.cfg.store.db)
        self.history = History(self.repo)
        self.night = 0

    def close(self) -> None:
        self.store.close()
        self.history.close()

    def move(self, i: int) -> None:
        subprocess.run(["git", "-C", str(self.upstream), "update-ref", "refs/heads/master", self.shas[i]], check=True)

    def cycle(self, tip: int, **kw) -> dict:
        self.move(tip)
        self.night += 1
        r = nightly_cycle(self.cfg, self.store, self.history, build_executor(self.cfg),
                          now=T0 + timedelta(days=self.night), **kw)
        assert r["tip"] == self.shas[tip]
        return r

    def index(self, sha):
        return self.shas.index(sha)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()
    w.history.close()


def only(r: dict) -> dict:
    (t,) = r["tests"]
    return t


def test_rise_one_campaign_right_culprit_then_fall(world):
    told = []
    for tip in (10, 20, 30, 38):
        t = only(world.cycle(tip, notify=told.append))
        assert t["detection"]["verdict"] == "none" and t["action"] == "none"
    # The culprit lands at 40; the rise is seen on the first or second night after it.
    for tip in (43, 44):
        r = world.cycle(tip, notify=told.append)
        assert r["fetch"] == "fetched"
        t = only(r)
        if t["detection"]["verdict"] != "none":
            break
    assert t["detection"]["verdict"] == "rise" and t["detection"]["probability"] >= 0.99
    assert t["action"] == "campaign-opened"
    (camp,) = world.store.campaigns()
    assert camp["id"] == t["campaign_id"] and camp["status"] == "open"
    assert 38 <= world.index(camp["good"]) < CULPRIT and camp["bad"] == world.shas[tip]
    assert [e["kind"] for e in told] == ["rise"] and told[0]["campaign_id"] == camp["id"]

    # The same tip again (e.g. a restarted service): no second campaign.
    t = only(world.cycle(tip))
    assert t["action"] == "campaign-open" and t["campaign_id"] == camp["id"]
    assert len(world.store.campaigns()) == 1

    result = BisectCampaign(world.store, build_executor(world.cfg), camp["id"]).run()
    assert result["verdict"] == "culprit" and result["culprit"] == world.shas[CULPRIT]

    # Still high at a later tip: explained by the finished campaign.
    t = only(world.cycle(47, notify=told.append))
    assert t["detection"]["verdict"] == "rise" and t["action"] == "known-culprit"
    assert len(world.store.campaigns()) == 1

    # The fix lands at 50: after a night or two the fall is recorded, once.
    actions = [only(world.cycle(tip, notify=told.append))["action"] for tip in (53, 56, 59)]
    assert "appears-fixed" in actions
    # Later clean nights: recorded already ('fall-known'), or, as more clean
    # nights dilute P(fall) (detect.py, "Known limitation"), 'none'; never twice.
    assert set(actions[actions.index("appears-fixed") + 1:]) <= {"fall-known", "none"}
    (fall,) = appears_fixed(world.store, TEST)
    assert CULPRIT <= world.index(fall["before_sha"]) < FIX <= world.index(fall["after_sha"])
    assert [e["kind"] for e in told] == ["rise", "fall"] and told[1]["id"] == fall["id"]
    assert all(e["reported_at"] for e in events(world.store))
    assert len(world.store.campaigns()) == 1
    # Every nightly build is recorded as such, for the test and the tip.
    rows = world.store.nightlies(TEST)
    assert {r["commit_sha"] for r in rows} == {world.shas[i] for i in (10, 20, 30, 38, 43, tip, 47, 53, 56, 59)}


def test_thin_good_end_is_verified_first(world):
    for tip in (10, 20, 30):
        world.cycle(tip)
    from flakebot.batch import run_at
    run_at(world.store, build_executor(world.cfg), world.shas[39], [TEST], 5, slow_threshold_s=60.0,
           poll_seconds=0.0, label="x", quiet=True, run_prefix="handrun")
    for tip in (43, 44, 45, 46):
        t = only(world.cycle(tip))
        if t["detection"]["verdict"] != "none":
            break
    assert t["detection"]["verdict"] == "rise"
    assert t["verified"] and t["verified"][0] == world.shas[39]
    assert len(world.store.runs(test=TEST, commits=[world.shas[39]])) >= 25
    assert t["action"] == "campaign-opened"
    camp = world.store.get_campaign(t["campaign_id"])
    assert world.index(camp["good"]) in (30, 39)


def test_without_a_remote_the_fetch_is_skipped(tmp_path):
    w = World(tmp_path, remote=False)
    try:
        r = w.cycle(20)
        assert r["fetch"].startswith("skipped: no remote 'origin'")
        assert only(r)["runs"] == 20
    finally:
        w.store.close()
        w.history.close()


def test_fetch_failure_is_reported_and_the_last_tip_used(world):
    world.cycle(20)
    subprocess.run(["git", "-C", str(world.repo), "remote", "set-url", "origin", str(world.upstream) + "-gone"],
                   check=True)
    world.move(30)
    world.night += 1
    r = nightly_cycle(world.cfg, world.store, world.history, build_executor(world.cfg), now=T0)
    assert r["fetch"].startswith("failed:") and r["tip"] == world.shas[20]


def test_a_failing_reporter_neither_stops_the_cycle_nor_loses_the_event(tmp_path):
    from flakebot.analysis.detect import Detection
    from flakebot.nightly import _emit

    det = Detection("fall", 0.995, 0.0, 0.995, 1.0, "t" * 40, before="b" * 40, after="a" * 40)

    def broken(event):
        raise RuntimeError("gerrit is down")

    with Store(tmp_path / "f.db") as store:
        eid = _emit(store, "fall", TEST, det, None, broken)
        (ev,) = events(store, TEST)
        assert ev["id"] == eid and ev["reported_at"] is None and ev["detail"]["probability"] == 0.995
        assert (ev["before_sha"], ev["after_sha"], ev["tip_sha"]) == ("b" * 40, "a" * 40, "t" * 40)
        told = []
        _emit(store, "rise", TEST, det, None, told.append)
        assert told[0]["kind"] == "rise" and events(store, TEST)[-1]["reported_at"]


def test_demo_nights_runs_the_whole_chain(tmp_path):
    """What `flakebot demo` can call: nights over a demo repo without a remote."""
    from flakebot.nightly import demo_nights

    demo = build_demo_repo(tmp_path / "spdk", n_commits=60, culprit_index=CULPRIT, fix_index=FIX, seed=3)
    cfg = load_config(env={}).with_overrides(
        {"store.db": str(tmp_path / "f.db"), "spdk.repo": str(demo.path), "executor.name": "sim",
         "tests.names": [TEST], "sim.seed": 2})
    lines = []
    with Store(cfg.store.db) as store:
        h = History(demo.path)
        out = demo_nights(cfg, store, h, build_executor(cfg), demo, every=4, start=24, say=lines.append, now=T0)
        h.close()
    (camp,) = out["campaigns"]
    assert camp["verdict"] == "culprit" and camp["culprit"] == demo.culprit
    assert [e["kind"] for e in out["events"]] == ["rise", "fall"]
    assert all(r["fetch"].startswith("skipped") for r in out["nights"])
    assert History(demo.path).resolve("master") == demo.tip
    assert any("campaign" in ln for ln in lines)
