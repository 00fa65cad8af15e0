"""`flakebot serve` / `status`: the scheduler on a short schedule, resuming a
campaign after a kill or a stop, the one-instance lock, SIGTERM, status."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import click
import pytest
from apscheduler.triggers.interval import IntervalTrigger
from click.testing import CliRunner

from flakebot.cli.service import COMMANDS, status_data
from flakebot.service.daemon import InstanceLock, Service, ServiceLocked, lock_path, missed_nightly, next_fire_times, \
    nightly_trigger
from flakebot.campaigns.wiring import build_executor
from tests.test_nightly import CULPRIT, TEST, World, fast_sqlite, only  # noqa: F401 (fixture)


@click.group()
@click.option("--config", "config_path")
@click.pass_context
def cli(ctx, config_path):
    """Test-only group; cli.py registers the same commands on `main`."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


for _c in COMMANDS:
    cli.add_command(_c)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


@pytest.fixture(scope="module")
def opened_template(tmp_path_factory):
    """Built once: healthy nights, then the nightly that opened a bisection."""
    base = tmp_path_factory.mktemp("template")
    w = World(base)
    w.store.db.execute("PRAGMA synchronous=OFF")
    cid = open_a_campaign(w)
    w.close()
    return base, w.shas, cid


@pytest.fixture
def opened(opened_template, tmp_path):
    """A fresh copy of the template: (world, campaign id)."""
    base, shas, cid = opened_template
    shutil.copytree(base, tmp_path / "w", symlinks=True)
    w = World(tmp_path / "w", shas=shas)
    yield w, cid
    w.close()


def open_a_campaign(world) -> int:
    """Healthy nights (enough for a baseline), then bad tips until the nightly opens a bisection."""
    for tip in (10, 13, 16, 19, 22, 25, 28, 31):  # the good end 31: a range of ten commits or more
        world.cycle(tip)
    for tip in (41, 42, 43, 44, 45, 46, 47):
        t = only(world.cycle(tip))
        if t["action"] == "campaign-opened":
            return t["campaign_id"]
    raise AssertionError("no campaign opened")


def write_config(world, tmp_path, extra: str = "") -> str:
    path = tmp_path / "flakebot.toml"
    path.write_text(f'[store]\ndb = "{world.cfg.store.db}"\n[spdk]\nrepo = "{world.repo}"\n'
                    f'[tests]\nnames = ["{TEST}"]\n[sim]\nseed = 2\n{extra}')
    return str(path)


def no_duplicates(store, cid):
    keys = [(r["build_id"], r["test"], r["iteration"]) for r in store.runs(campaign_id=cid)]
    assert len(keys) == len(set(keys))


# ------------------------------------------------------------------ scheduler

def test_serve_on_a_short_schedule_detects_bisects_and_stops(world):
    for tip in (10, 20, 30, 38):
        world.cycle(tip)
    world.move(46)  # the culprit (40) is upstream now; the service's nightly fetches it
    first = datetime.now(timezone.utc) + timedelta(milliseconds=200)
    svc = Service(world.cfg, nightly_trigger=IntervalTrigger(seconds=1, start_date=first), driver_seconds=0.5)
    th = threading.Thread(target=svc.serve, kwargs={"install_signals": False})
    th.start()
    try:
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and not svc.campaign_results and th.is_alive():
            time.sleep(0.1)
    finally:
        svc.request_stop()
        th.join(15)
    assert not th.is_alive() and not svc.errors
    assert svc.nightly_results, "the nightly job never ran"
    (result,) = svc.campaign_results
    assert result["verdict"] == "culprit" and result["culprit"] == world.shas[CULPRIT]
    assert len(world.store.campaigns()) == 1
    # The reports are rewritten after each cycle and campaign; comments will link to them.
    cid = result["campaign_id"]
    reports = world.cfg.report_dir()
    assert (reports / "index.html").is_file() and (reports / f"campaign-{cid}.html").is_file()
    assert result["report_url"] == f"https://ci.example.org/flakebot/campaign-{cid}.html"
    assert world.store.get_campaign(cid)["result"]["report_url"] == result["report_url"]
    assert svc.nightly_results[-1]["report"] == str(reports / "index.html")
    # Stopped cleanly: the lock is free again.
    with InstanceLock(lock_path(world.cfg)):
        pass


def test_a_missed_nightly_runs_once_at_start(world):
    cfg = world.cfg.with_overrides({"nightly.cron": "30 2 * * *", "nightly.misfire_grace_minutes": 60})
    now = datetime(2026, 11, 3, 3, 0, tzinfo=timezone.utc)
    assert missed_nightly(cfg, [], now) == datetime(2026, 11, 3, 2, 30, tzinfo=timezone.utc)
    assert missed_nightly(cfg, [{"started_at": "2026-11-03T02:30:05+00:00"}], now) is None
    assert missed_nightly(cfg, [], datetime(2026, 11, 3, 4, 0, tzinfo=timezone.utc)) is None  # beyond the grace
    sched = Service(cfg, now=lambda: now).build_scheduler()
    jobs = {j.id: j for j in sched.get_jobs()}
    assert {"nightly", "campaigns", "review-poller", "nightly-missed"} <= set(jobs)
    assert all(j.coalesce and j.max_instances == 1 for j in jobs.values())
    assert jobs["nightly"].misfire_grace_time == 3600


def test_cron_weekdays_follow_crontab():
    from flakebot.config import load_config
    cfg = load_config(env={}).with_overrides({"nightly.cron": "30 2 * * 1", "nightly.timezone": "Europe/Warsaw"})
    times = next_fire_times(nightly_trigger(cfg), 3, datetime(2026, 11, 25, tzinfo=timezone.utc))
    assert [t.strftime("%a %H:%M") for t in times] == ["Mon 02:30"] * 3
    assert str(times[0].tzinfo) == "Europe/Warsaw"


# ------------------------------------------------------------------ resume

class Killed(BaseException):
    """A crash: not caught by the service's job guard."""


def test_killed_mid_campaign_and_restarted_resumes_without_repeating_or_losing(opened):
    world, cid = opened
    calls = {"n": 0}

    def dying_executor(cfg):
        ex = build_executor(cfg)
        real = ex.console

        def console(handle):
            calls["n"] += 1
            if calls["n"] == 6:
                raise Killed()
            return real(handle)

        ex.console = console
        return ex

    with pytest.raises(Killed):
        Service(world.cfg, executor_factory=dying_executor).drive_campaigns()
    assert world.store.get_campaign(cid)["status"] == "open"
    pending = {b["run_id"] for b in world.store.pending_builds(cid)}
    assert pending
    before = {b["run_id"]: b["status"] for b in world.store.builds(cid)}
    runs_before = {(r["build_id"], r["iteration"]) for r in world.store.runs(campaign_id=cid)}

    (result,) = Service(world.cfg).drive_campaigns()  # a new process: fresh executor and store
    assert result["verdict"] == "culprit" and result["culprit"] == world.shas[CULPRIT]
    no_duplicates(world.store, cid)
    assert not world.store.pending_builds(cid)
    builds = {b["run_id"]: b for b in world.store.builds(cid)}
    assert set(before) <= set(builds) and all(builds[r]["status"] == "ingested" for r in pending)
    assert runs_before <= {(r["build_id"], r["iteration"]) for r in world.store.runs(campaign_id=cid)}
    assert result["runs"] == len(world.store.runs(test=TEST, campaign_id=cid, include_infra=False))


def test_stop_finishes_the_step_and_a_restart_resumes(opened):
    world, cid = opened
    svc = Service(world.cfg)
    submitted = {"n": 0}

    def stopping_executor(cfg):
        ex = build_executor(cfg)
        real = ex.submit

        def submit(request):
            submitted["n"] += 1
            if submitted["n"] == 5:
                svc.request_stop()  # as SIGTERM would
            return real(request)

        ex.submit = submit
        return ex

    svc.executor_factory = stopping_executor
    assert svc.drive_campaigns() == [] and not svc.errors
    assert world.store.get_campaign(cid)["status"] == "open"
    n_builds = len(world.store.builds(cid))
    assert n_builds >= 5
    (result,) = Service(world.cfg).drive_campaigns()
    assert result["culprit"] == world.shas[CULPRIT]
    assert len(world.store.builds(cid)) > n_builds
    no_duplicates(world.store, cid)
    # A stopped service starts no job at all.
    assert svc.run_nightly() is None and svc.drive_campaigns() == []


# ------------------------------------------------------------------ lock

def test_the_lock_refuses_a_second_instance(world, tmp_path):
    cfg_path = write_config(world, tmp_path)
    with InstanceLock(lock_path(world.cfg)) as held:
        with pytest.raises(ServiceLocked, match="another flakebot serve holds .*f.db.lock"):
            Service(world.cfg).serve(install_signals=False)
        r = CliRunner().invoke(cli, ["--config", cfg_path, "serve"])
        assert r.exit_code == 2
        assert r.output.strip() == f"flakebot: error: another flakebot serve holds {held.path}"
    assert lock_path(world.cfg) == world.cfg.db_path().with_name("f.db.lock")


def test_sigterm_exits_cleanly_and_the_lock_holds_across_processes(world, tmp_path):
    cfg_path = write_config(world, tmp_path, '[nightly]\ncron = "0 3 1 1 *"\n')
    code = ("import click, sys; from flakebot.cli.service import COMMANDS\n"
            "@click.group()\n@click.option('--config', 'config_path')\n@click.pass_context\n"
            "def g(ctx, config_path):\n    ctx.ensure_object(dict); ctx.obj['config_path'] = config_path\n"
            "for c in COMMANDS: g.add_command(c)\n"
            "g(['--config', sys.argv[1], 'serve'])\n")
    proc = subprocess.Popen([sys.executable, "-c", code, cfg_path], stderr=subprocess.PIPE, text=True,
                            cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "serving" in line:
                break
        assert any("serving" in ln for ln in lines), "".join(lines)
        r = CliRunner().invoke(cli, ["--config", cfg_path, "serve"])
        assert r.exit_code == 2 and "another flakebot serve holds" in r.output
        assert status_data(world.cfg)["service"] == "running"
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(20) == 0, rest
        assert "stopped cleanly" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert status_data(world.cfg)["service"] == "not running"


# ------------------------------------------------------------------ status

def test_status_shows_campaigns_nightlies_and_schedule(opened, tmp_path):
    world, cid = opened
    cfg_path = write_config(world, tmp_path, '[nightly]\ncron = "30 2 * * 1"\n')
    r = CliRunner().invoke(cli, ["--config", cfg_path, "status", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    (camp,) = data["campaigns"]
    assert camp["id"] == cid and camp["test"] == TEST and camp["runs"] == 0
    assert 0 < camp["top"]["probability"] < 1 and camp["top"]["commit"] in world.shas
    (n,) = data["nightly"]
    assert n["test"] == TEST and n["runs"] == 20 and sum(n["outcomes"].values()) == 20
    assert n["last_event"]["kind"] == "rise" and n["last_event"]["campaign_id"] == cid
    assert len(data["schedule"]["nightly"]) == 3
    assert all(datetime.fromisoformat(t).weekday() == 0 for t in data["schedule"]["nightly"])
    r = CliRunner().invoke(cli, ["--config", cfg_path, "status"])
    assert r.exit_code == 0 and f"{cid} bisect {TEST}" in r.output and "next nightly runs" in r.output


def test_nightly_command(world, tmp_path):
    for tip in (10, 20, 30):
        world.cycle(tip)
    cfg_path = write_config(world, tmp_path)
    world.move(38)
    r = CliRunner().invoke(cli, ["--config", cfg_path, "nightly", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["tip"] == world.shas[38] and out["fetch"] == "fetched"
    assert only(out)["detection"]["verdict"] == "none"
    r = CliRunner().invoke(cli, ["--config", cfg_path, "nightly", "--repo", str(tmp_path / "nope")])
    assert r.exit_code == 2 and r.output.startswith("flakebot: error: ")
