"""The command line: results, JSON shapes, and one-line errors on bad input
with nothing recorded."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from flakebot.cli.app import main
from flakebot.demo.repo import build_demo_repo
from flakebot.executors.runids import seed_key
from flakebot.store import Store

SAMPLES = Path(__file__).resolve().parent / "fixtures" / "spdk-logs"
TEST = "vfio_user_nvme_restart_vm"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_repo(tmp_path_factory.mktemp("demo") / "spdk", n_commits=60, seed=1)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    # No user config or data dir leaks in.
    monkeypatch.delenv("FLAKEBOT_CONFIG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_run_records_and_prints_json(tmp_path, demo):
    db = tmp_path / "f.db"
    r = invoke("run", "--commit", demo.tip, "--test", TEST, "--iterations", 30, "--repo", demo.path,
               "--db", db, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["commit"] == demo.tip
    (t,) = out["tests"]
    assert t["runs"] == 30 and sum(t["outcomes"].values()) == 30
    # The tip is past the culprit: the #3322 hang shows as timeouts or near misses.
    assert t["outcomes"].get("timeout", 0) + t["outcomes"].get("slow", 0) > 0
    sites = {w["call_site"] for w in t["waits"]}
    assert sites == {"vfio_user_restart_vm.sh@36", "vfio_user_restart_vm.sh@54"}
    with Store(db) as s:
        assert len(s.runs(test=TEST, commits=[demo.tip])) == 30


def test_run_table_output(tmp_path, demo):
    r = invoke("run", "--commit", demo.good, "--test", TEST, "--iterations", 5, "--repo", demo.path,
               "--db", tmp_path / "f.db")
    assert r.exit_code == 0, r.output
    assert "runs by outcome" in r.output and "@54" in r.output and "vm_shutdown_all waits" in r.output


def test_import_log_is_idempotent(tmp_path):
    db = tmp_path / "f.db"
    logs = sorted(SAMPLES.glob("*.log"))
    sha = "a" * 40
    r = invoke("import-log", *logs, "--commit", sha, "--db", db, "--json")
    assert r.exit_code == 0, r.output
    first = json.loads(r.output)
    assert sum(f["added"] for f in first["files"]) == sum(f["runs"] for f in first["files"]) > 0
    r = invoke("import-log", *logs, "--commit", sha, "--db", db, "--json")
    assert all(f["added"] == 0 for f in json.loads(r.output)["files"])
    with Store(db) as s:
        outcomes = sorted(r["outcome"] for r in s.runs())
    assert "timeout" in outcomes and "slow" in outcomes and "pass" in outcomes


def test_import_log_narrowed_by_test(tmp_path):
    r = invoke("import-log", SAMPLES / "virtio-blk-nearmiss-gha-2026.log", "--commit", "b" * 40,
               "--test", TEST, "--db", tmp_path / "f.db")
    assert r.exit_code == 2
    assert "no runs of vfio_user_nvme_restart_vm" in r.output


def _one_line_error(r):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flakebot: error:"), r.output
    return lines[0]


@pytest.mark.parametrize("args, expect", [
    (["--test", "no_such_test"], "unknown test"),
    (["--good", "deadbeef" * 5], "unknown ref"),
    (["--good", "TIP", "--bad", "GOOD"], "not an ancestor"),
    (["--good", "TIP"], "empty"),
    (["--max-runs", "-1"], "must not be negative"),
    (["--max-host-hours", "-2"], "must not be negative"),
    (["--confidence", "1.5"], "--confidence must"),
])
def test_bisect_bad_input(tmp_path, demo, args, expect):
    db = tmp_path / "f.db"
    base = {"--good": demo.good, "--bad": demo.tip, "--test": TEST}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = {"TIP": demo.tip, "GOOD": demo.good}.get(v, v)
    argv = ["bisect", "--repo", demo.path, "--db", db]
    for k, v in base.items():
        argv += [k, v]
    line = _one_line_error(invoke(*argv))
    assert expect in line
    assert not db.exists(), "bad input must record nothing"


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage\xff" * 100])
def test_import_empty_or_junk_log(tmp_path, content):
    f = tmp_path / "build.log"
    f.write_bytes(content)
    db = tmp_path / "f.db"
    line = _one_line_error(invoke("import-log", f, "--commit", "c" * 40, "--db", db))
    assert "no test runs found" in line
    assert not db.exists()


def test_unreadable_log_and_keeps_existing(tmp_path):
    db = tmp_path / "f.db"
    good = SAMPLES / "nvme-pass-jenkins-2024.log"
    assert invoke("import-log", good, "--commit", "d" * 40, "--db", db).exit_code == 0
    line = _one_line_error(invoke("import-log", good, tmp_path / "missing.log", "--commit", "e" * 40, "--db", db))
    assert "cannot read" in line
    with Store(db) as s:  # the first import is intact, the failed one added nothing
        assert {r["commit_sha"] for r in s.runs()} == {"d" * 40}


def test_run_unknown_ref_and_test(tmp_path, demo):
    db = tmp_path / "f.db"
    _one_line_error(invoke("run", "--commit", "nope", "--test", TEST, "--repo", demo.path, "--db", db))
    _one_line_error(invoke("run", "--commit", demo.tip, "--test", "bogus", "--repo", demo.path, "--db", db))
    assert not db.exists()


def test_malformed_config(tmp_path, demo):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[bisect]\nconfidance = 0.9\n")
    line = _one_line_error(invoke("--config", cfg, "run", "--commit", demo.tip, "--repo", demo.path))
    assert "bisect.confidance" in line


def test_newer_schema_refused(tmp_path, demo):
    db = tmp_path / "f.db"
    with Store(db) as s:
        with s.write() as w:
            w.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    line = _one_line_error(invoke("run", "--commit", demo.tip, "--test", TEST, "--repo", demo.path, "--db", db))
    assert "newer" in line


def test_bisect_json_and_rerun_continues(tmp_path, demo):
    db = tmp_path / "f.db"
    argv = ["bisect", "--good", demo.good, "--bad", demo.tip, "--test", TEST, "--repo", demo.path,
            "--db", db, "--seed", 3, "--json"]
    r = invoke(*argv)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert set(out) >= {"verdict", "culprit", "confidence", "runs", "builds", "host_minutes", "candidates", "commits"}
    assert out["verdict"] == "culprit" and out["culprit"] == demo.culprit
    assert all(set(c) == {"commit", "probability", "subject"} for c in out["candidates"])
    assert all(set(c) >= {"commit", "runs", "outcomes", "max_wait_s"} for c in out["commits"])
    # The same command again answers from the stored, finished campaign.
    again = json.loads(invoke(*argv).output)
    assert again["runs"] == out["runs"] and again["campaign_id"] == out["campaign_id"]


def test_python_dash_m(tmp_path):
    r = subprocess.run([sys.executable, "-m", "flakebot", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "bisect" in r.stdout


def test_demo_finds_the_culprit(tmp_path):
    r = invoke("demo", "--workdir", tmp_path / "demo", "--iterations", 20, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["found"] is True
    tip = out["tip"]["tests"][0]["outcomes"]
    old = out["old"]["tests"][0]["outcomes"]
    assert tip.get("timeout", 0) + tip.get("slow", 0) > 0
    assert old.get("timeout", 0) + old.get("slow", 0) == 0
    # The nightly chain: one rise (which opened the bisection), then the fix seen as a fall.
    kinds = [e["kind"] for e in out["events"]]
    assert kinds == ["rise", "fall"]
    assert out["events"][0]["campaign_id"] == out["bisect"]["campaign_id"]
    fall = out["events"][1]
    from git import Repo
    repo = Repo(Path(out["workdir"]) / "spdk")
    # The fix lies in the range the fall was pinned to: (before, after].
    assert repo.is_ancestor(fall["before_sha"], out["true_fix"]) and fall["before_sha"] != out["true_fix"]
    assert repo.is_ancestor(out["true_fix"], fall["after_sha"])
    assert Path(out["report"]).is_file()
    # The dry-run reporters wrote what would be posted: Gerrit, GitHub, the tracking issue.
    texts = [Path(p).read_text() for p in out["comments"]]
    assert len(texts) >= 3 and all(out["true_culprit"][:10] in t for t in texts)


def test_bisect_is_reproducible_by_seed(tmp_path, demo):
    """Same seed, same command, fresh databases: the same campaign, run for run."""
    outs = []
    for name in ("a.db", "b.db"):
        r = invoke("bisect", "--good", demo.good, "--bad", demo.tip, "--test", TEST, "--repo", demo.path,
                   "--db", tmp_path / name, "--seed", 7, "--json")
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        out.pop("wall_seconds")
        # Run ids (and the sim's build URLs) carry each database's own instance
        # id; the sim seeds from the rest, so everything else is the same.
        urls = out.pop("build_urls")
        assert urls and all(u.rsplit("/", 1)[1].split("-", 1)[1].startswith("c") for u in urls)
        outs.append((out, [seed_key(u.rsplit("/", 1)[1]) for u in urls]))
    assert outs[0] == outs[1]


def test_ctrl_c_stops_local_runs_and_keeps_the_campaign_open(tmp_path, demo, monkeypatch):
    """Ctrl-C while a local run is in progress: the run's process group is
    stopped (it could not be found again after exit) and the campaign stays
    open for `--resume` (resuming is tested in test_campaign.py)."""
    import os
    import time

    from flakebot.campaigns.dispatch import Dispatcher

    pids = tmp_path / "pids"
    pids.mkdir()
    job = tmp_path / "job.sh"
    job.write_text(f'#!/usr/bin/env bash\nsleep 300 & echo $! > {pids}/"$FLAKEBOT_RUN_ID"\nwait\n')
    job.chmod(0o755)
    def interrupted(self, wait=True):
        deadline = time.monotonic() + 10
        while len(list(pids.iterdir())) < len(self.in_flight) and time.monotonic() < deadline:
            time.sleep(0.02)
        raise KeyboardInterrupt

    monkeypatch.setattr(Dispatcher, "collect", interrupted)
    db = tmp_path / "f.db"
    argv = ["bisect", "--good", demo.good, "--bad", demo.tip, "--test", TEST, "--repo", demo.path, "--db", db,
            "--executor", "local", "--command", job]
    r = invoke(*argv)
    assert r.exit_code == 130 and "--resume" in r.output
    (pidfile,) = pids.iterdir()
    child = int(pidfile.read_text())
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        st = open(f"/proc/{child}/stat").read().split(")")[-1].split()[0]
        if st == "Z":
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the local run is still running after Ctrl-C")
    with Store(db) as s:
        (camp,) = s.campaigns()
        assert camp["status"] == "open"
