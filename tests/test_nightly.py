"""The nightly cycle over a simulated history: an upstream demo repository
whose branch moves forward night after night (culprit at 40, fix at 50), a
clone that fetches it, sim hosts whose behaviour comes from the tree."""
from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flakebot.campaigns.bisect import BisectCampaign
from flakebot.config import load_config
from flakebot.demo.repo import build_demo_repo
from flakebot.history import History
from flakebot.service.nightly import appears_fixed, events, nightly_cycle, stored_nights
from flakebot.store import Store
from flakebot.campaigns.wiring import build_executor

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


CLEAN_TIPS = (10, 14, 18, 22, 26, 30, 34, 38)  # eight clean nights: the baseline


def test_rise_one_campaign_right_culprit_then_fall(world):
    told = []
    for tip in CLEAN_TIPS:
        t = only(world.cycle(tip, notify=told.append))
        assert t["detection"]["verdict"] == "none" and t["action"] == "none"
    # The culprit lands at 40; the CUSUM crosses within a week of nights.
    for tip in (41, 42, 43, 44, 45, 46, 47):
        r = world.cycle(tip, notify=told.append)
        assert r["fetch"] == "fetched"
        t = only(r)
        if t["detection"]["verdict"] != "none":
            break
    assert t["detection"]["verdict"] == "rise" and t["detection"]["probability"] >= 0.99
    assert t["action"] == "campaign-opened"
    (camp,) = world.store.campaigns()
    assert camp["id"] == t["campaign_id"] and camp["status"] == "open"
    assert world.index(camp["good"]) in CLEAN_TIPS and camp["bad"] == world.shas[tip]
    assert [e["kind"] for e in told] == ["rise"] and told[0]["campaign_id"] == camp["id"]

    # The same tip again (e.g. a restarted service): the rise is not found twice.
    t = only(world.cycle(tip))
    assert t["detection"]["verdict"] == "none" and t["action"] == "none"
    assert len(world.store.campaigns()) == 1

    result = BisectCampaign(world.store, build_executor(world.cfg), camp["id"]).run()
    assert result["verdict"] == "culprit" and result["culprit"] == world.shas[CULPRIT]

    # The fix lands at 50: within two weeks of nights the fall is recorded, once.
    actions = []
    for tip in (53, 56, 59) + (59,) * 11:
        actions.append(only(world.cycle(tip, notify=told.append))["action"])
        if actions[-1] == "appears-fixed":
            break
    assert actions[-1] == "appears-fixed"
    assert set(only(world.cycle(59))["action"] for _ in range(2)) == {"none"}
    (fall,) = appears_fixed(world.store, TEST)
    assert CULPRIT <= world.index(fall["before_sha"]) < FIX <= world.index(fall["after_sha"])
    assert [e["kind"] for e in told] == ["rise", "fall"] and told[1]["id"] == fall["id"]
    assert all(e["reported_at"] for e in events(world.store))
    assert len(world.store.campaigns()) == 1
    # Every nightly build is recorded as such, for the test and the tip.
    assert {r["commit_sha"] for r in world.store.nightlies(TEST)} >= {world.shas[i] for i in CLEAN_TIPS}


def test_suggestive_nights_spend_extra_runs_in_the_same_night(world):
    # A strict budget (h = 21) so that the first bad night is suggestive, not decisive.
    world.cfg = world.cfg.with_overrides({"nightly.false_alarms_per_year": 1e-6})
    for tip in CLEAN_TIPS:
        assert only(world.cycle(tip))["extra_runs"] == 0
    extra = []
    for tip in range(41, 49):
        t = only(world.cycle(tip))
        extra.append(t["extra_runs"])
        if t["extra_runs"] or t["detection"]["verdict"] != "none":
            break
    assert extra[-1] == world.cfg.nightly.extra_iterations == 40
    assert t["runs"] == 60 and sum(t["outcomes"].values()) == 60
    # The extra runs are part of tonight's night, as the replay from the store sees it.
    last = stored_nights(world.store, TEST, world.cfg)[-1]
    assert last.sha == world.shas[tip] and last.runs == 60 - t["outcomes"].get("infra", 0)  # infra never counts
    assert len(stored_nights(world.store, TEST, world.cfg)) == len(CLEAN_TIPS) + len(extra)


def test_no_extra_runs_when_the_budget_is_zero(world):
    world.cfg = world.cfg.with_overrides({"nightly.extra_iterations": 0})
    for tip in CLEAN_TIPS + tuple(range(41, 49)):
        t = only(world.cycle(tip))
        assert t["extra_runs"] == 0 and t["runs"] == 20


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
    from flakebot.service.nightly import _emit

    det = Detection("fall", 0.995, "t" * 40, 9.3, klass="fail", before="b" * 40, after="a" * 40)

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
    from flakebot.service.nightly import demo_nights

    demo = build_demo_repo(tmp_path / "spdk", n_commits=60, culprit_index=CULPRIT, fix_index=FIX, seed=3)
    cfg = load_config(env={}).with_overrides(
        {"store.db": str(tmp_path / "f.db"), "spdk.repo": str(demo.path), "executor.name": "sim",
         "tests.names": [TEST], "sim.seed": 2})
    lines = []
    with Store(cfg.store.db) as store:
        h = History(demo.path)
        out = demo_nights(cfg, store, h, build_executor(cfg), demo, every=4, start=4, say=lines.append, now=T0)
        h.close()
    (camp,) = out["campaigns"]
    assert camp["verdict"] == "culprit" and camp["culprit"] == demo.culprit
    assert [e["kind"] for e in out["events"]] == ["rise", "fall"]
    assert all(r["fetch"].startswith("skipped") for r in out["nights"])
    assert History(demo.path).resolve("master") == demo.tip
    assert any("campaign" in ln for ln in lines)


def test_status_shows_the_detector_per_test(world):
    from click.testing import CliRunner

    from flakebot.cli.app import main
    from flakebot.cli.service import status_data

    for tip in CLEAN_TIPS:
        world.cycle(tip)
    d = status_data(world.cfg)["detector"]
    assert d["threshold"] == pytest.approx(9.301, abs=1e-3) and d["runs_a_night"] == 20
    (t,) = d["tests"]
    assert t["test"] == TEST and t["nights"] == len(CLEAN_TIPS) and t["segment_start"] == world.shas[10]
    timeout = t["classes"]["timeout"]
    assert timeout["rise"] >= 0 and 1 <= timeout["rise_at_least"] <= 20 and timeout["rise_delay_nights"] > 0
    r = CliRunner().invoke(main, ["status", "--db", world.cfg.store.db, "--repo", str(world.repo)])
    assert r.exit_code == 0, r.output
    assert "alarm at h = 9.30" in r.output
    # piped: 80 columns; only the database's path may be longer
    wide = [ln for ln in r.output.splitlines() if len(ln) > 80 and not ln.startswith("database /")]
    assert not wide, wide
    (row,) = [ln.split() for ln in r.output.splitlines() if ln.startswith("timeout ")]
    assert row[:5] == ["timeout", f"{timeout['rate']:.3f}", f"{timeout['rise']:.2f}", ">=",
                       f"{timeout['rise_at_least']}/20"]
