"""The `local` executor: tiny scripts in tmp; commands that print a realistic
SPDK log over many polls; flakebot restarted (and SIGKILLed, as a real process)
while a command runs, never two host scripts with one run id; log retention;
then the host script + fake SPDK tree."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from flakebot.executors import make_executor
from flakebot.executors.base import ExecutorError
from flakebot.executors.local import LocalExecutor, resolve_command
from flakebot.model import BuildState, RunRequest

from tests.test_host_script import NVME, ROOT, fake_env, make_fake_spdk

SHA = "0123456789abcdef0123456789abcdef01234567"


def script(tmp: Path, body: str, name: str = "job.sh") -> Path:
    p = tmp / name
    p.write_text("#!/usr/bin/env bash\n" + body)
    p.chmod(0o755)
    return p


def req(run_id="r1", commit=SHA, tests=(NVME,), n=2) -> RunRequest:
    return RunRequest(run_id, commit, tuple(tests), n)


def wait_done(ex, h, limit=30.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        st = ex.poll(h)
        if st.state is not BuildState.RUNNING:
            return st
        time.sleep(0.05)
    raise AssertionError("did not finish")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_env_passed_and_log_captured(tmp_path):
    job = script(tmp_path, 'echo "commit=$FLAKEBOT_COMMIT tests=$FLAKEBOT_TESTS n=$FLAKEBOT_ITERATIONS"\n'
                           'echo "run=$FLAKEBOT_RUN_ID spdk=$SPDK_DIR extra=$EXTRA"\n'
                           'echo "to stderr" >&2\nsleep 0.1\nprintf "no newline at end"\nexit 1\n')
    ex = LocalExecutor(f"{job} --flag", spdk_dir="/opt/spdk", workdir=tmp_path / "w", env={"EXTRA": "x"})
    assert ex.slots() == 1
    h = ex.submit(req(tests=(NVME, "vfio_user_virtio_blk_restart_vm"), n=3))
    st = wait_done(ex, h)
    assert st.state is BuildState.DONE and st.rc == 1
    assert st.host == socket.gethostname() and st.host_minutes > 0
    assert list(ex.console(h)) == [
        f"commit={SHA} tests={NVME} vfio_user_virtio_blk_restart_vm n=3",
        "run=r1 spdk=/opt/spdk extra=x",
        "to stderr",
        "no newline at end",
    ]
    assert (tmp_path / "w" / "r1.log").is_file()
    assert ex.submit(req(tests=(NVME, "vfio_user_virtio_blk_restart_vm"), n=3)) == h  # idempotent on run_id
    # ... for that request only: r1 at other tests or iterations is a stranger, never adopted.
    with pytest.raises(ExecutorError, match="r1 .* ran another request .*tests .* not adopting it"):
        ex.submit(req())
    assert ex.reattach(req()) is None
    assert ex.reattach(req(tests=(NVME, "vfio_user_virtio_blk_restart_vm"), n=3)) == h


def test_rc_zero_and_default_workdir_under_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    ex = LocalExecutor(str(script(tmp_path, "echo ok\n")), spdk_dir="/x")
    st = wait_done(ex, ex.submit(req("ok-run")))
    assert (st.state, st.rc) == (BuildState.DONE, 0)
    assert list(ex.console("ok-run")) == ["ok"]
    assert ex.workdir == tmp_path / "xdg" / "flakebot" / "local"
    assert sorted(p.name for p in ex.workdir.iterdir()) == [".lock", "ok-run.end", "ok-run.log", "ok-run.pid"]


def test_timeout_kills_the_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    job = script(tmp_path, f'sleep 300 & echo $! > {pidfile}\necho started\nwait\n')
    ex = LocalExecutor(str(job), spdk_dir="/x", timeout_s=1, workdir=tmp_path)
    h = ex.submit(req())
    st = wait_done(ex, h, limit=20)
    assert st.state is BuildState.DONE and st.rc == 124
    assert not pid_alive(int(pidfile.read_text()))
    assert "timeout" in list(ex.console(h))[-1]


def test_cancel_kills_the_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    job = script(tmp_path, f'sleep 300 & echo $! > {pidfile}\nwait\n')
    ex = LocalExecutor(str(job), spdk_dir="/x", workdir=tmp_path)
    h = ex.submit(req())
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    assert ex.poll(h).state is BuildState.RUNNING
    with pytest.raises(ExecutorError, match="busy"):
        ex.submit(req("other"))
    ex.cancel(h)
    assert ex.poll(h).state is BuildState.LOST
    # SIGKILL is delivered asynchronously: give the kernel a moment, no more.
    child = int(pidfile.read_text())
    for _ in range(100):
        if not pid_alive(child):
            break
        time.sleep(0.02)
    assert not pid_alive(child)


def test_missing_command_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ExecutorError, match="command not found: /nonexistent/run.sh") as e:
        LocalExecutor("/nonexistent/run.sh", spdk_dir="/x")
    assert "\n" not in str(e.value)
    with pytest.raises(ExecutorError, match="command not found: no-such-flakebot-cmd"):
        LocalExecutor("no-such-flakebot-cmd --x", spdk_dir="/x")
    monkeypatch.delenv("SPDK_DIR", raising=False)
    with pytest.raises(ExecutorError, match="spdk_dir"):
        LocalExecutor(str(script(tmp_path, "true\n")))


def test_default_command_resolves_in_the_repo():
    assert resolve_command("jobs/run-restart-tests.sh") == [str(ROOT / "jobs" / "run-restart-tests.sh")]
    assert resolve_command("bash -c 'echo hi'")[1:] == ["-c", "echo hi"]


@pytest.mark.parametrize("bad", [
    req(commit="abc"),
    req(commit="A" * 40),
    req(commit=SHA + "; id"),
    req(tests=("x; rm -rf /",)),
    req(tests=("a b",)),
    req(tests=()),
    req(n=0),
    req(run_id="../up"),
])
def test_rejects_bad_requests(tmp_path, bad):
    ex = LocalExecutor(str(script(tmp_path, "echo should-not-run\n")), spdk_dir="/x", workdir=tmp_path)
    with pytest.raises(ExecutorError):
        ex.submit(bad)


def test_unknown_handle_is_lost(tmp_path):
    ex = LocalExecutor(str(script(tmp_path, "true\n")), spdk_dir="/x", workdir=tmp_path)
    assert ex.poll("never-submitted").state is BuildState.LOST
    assert list(ex.console("never-submitted")) == []


def test_made_by_name(tmp_path):
    ex = make_executor("local", command=str(script(tmp_path, "true\n")), spdk_dir="/x", workdir=str(tmp_path))
    assert isinstance(ex, LocalExecutor) and ex.name == "local"


# ------------------------------------------------------------------ end to end with the host script


def test_host_script_end_to_end(tmp_path):
    spdk, sha = make_fake_spdk(tmp_path)
    ex = LocalExecutor(spdk_dir=str(spdk), workdir=tmp_path / "logs",
                       env=fake_env(tmp_path, FAKE_SPDK_OUTCOME="pass,timeout,slow"))
    h = ex.submit(req("e2e", commit=sha, n=3))
    st = wait_done(ex, h, limit=120)
    assert (st.state, st.rc) == (BuildState.DONE, 1)
    lines = list(ex.console(h))
    ends = [l for l in lines if l.startswith("FLAKEBOT-ITERATION-END")]
    assert [e.rsplit("rc=", 1)[1] for e in ends] == ["0", "1", "0"]
    assert any("A stop job is running" in l for l in lines)
    try:
        from flakebot.evidence import spdklog
    except ImportError:
        return
    from flakebot.model import Outcome

    runs = list(spdklog.parse_lines(iter(lines), slow_threshold_s=60.0))
    assert [r.outcome for r in runs] == [Outcome.PASS, Outcome.TIMEOUT, Outcome.SLOW]


def test_host_script_cancel_stops_the_test(tmp_path):
    spdk, sha = make_fake_spdk(tmp_path)
    state = tmp_path / "state"
    ex = LocalExecutor(spdk_dir=str(spdk), workdir=tmp_path / "logs", env=fake_env(tmp_path, FAKE_SPDK_OUTCOME="hang"))
    h = ex.submit(req("hang", commit=sha, n=1))
    pidfile = state / f"pid-{NVME}"
    for _ in range(400):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    assert pid_alive(pid)
    ex.cancel(h)
    assert ex.poll(h).state is BuildState.LOST
    for _ in range(100):  # the host script forwards the signal past `timeout`'s own group
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    assert not pid_alive(pid)


# ------------------------------------------------------------------ runs that outlive polls and restarts


def spdk_job(tmp: Path, ledger: Path, *, pause: float = 0.01, sim_args: str = "--outcome pass", rc: int = 0,
             gates: Optional[Path] = None, wait_until_polled: Optional[Path] = None) -> Path:
    """A host command that records its start and end (run id, pid) in `ledger`
    and prints a realistic SPDK console log (flakebot.demo.hosts, plain as on a host
    outside Jenkins, with the host script's iteration markers), pausing `pause`
    seconds every 40 lines; `sim_args` go to flakebot.demo.hosts. With `wait_until_polled`
    (a database) the first line waits until flakebot has stored the build as
    running, i.e. has polled it while it ran. With `gates` (a directory) it
    stops after the first iteration until gates/<run id> or gates/all exists."""
    held = ":"
    if gates is not None:
        held = (f'[[ $line != FLAKEBOT-ITERATION-END* ]] || until [[ -e {gates}/$FLAKEBOT_RUN_ID || '
                f'-e {gates}/all ]]; do sleep 0.02; done')
    polled = ":"
    if wait_until_polled is not None:
        polled = (f'until {sys.executable} -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); '
                  f'sys.exit(not c.execute(\\"SELECT 1 FROM builds WHERE run_id=? AND status=\'running\'\\", '
                  f'(sys.argv[2],)).fetchone())" {wait_until_polled} "$FLAKEBOT_RUN_ID"; do sleep 0.05; done')
    return script(tmp, f"""
echo "start $FLAKEBOT_RUN_ID $$" >> {ledger}
n=0
for t in $FLAKEBOT_TESTS; do
    while IFS= read -r line; do
        printf '%s\\n' "$line"
        (( n++ )) || {polled}
        (( n % 40 )) || sleep {pause}
        {held}
    done < <(PYTHONPATH={ROOT} {sys.executable} -m flakebot.demo.hosts --test "$t" --commit "$FLAKEBOT_COMMIT" --fmt plain \\
              --iterations "$FLAKEBOT_ITERATIONS" --run-id "$FLAKEBOT_RUN_ID" --markers {sim_args})
done
echo "end $FLAKEBOT_RUN_ID $$" >> {ledger}
exit {rc}
""", name="spdk-job.sh")


def ledger_events(ledger: Path) -> list[tuple[str, str, int]]:
    if not ledger.exists():
        return []
    return [(kind, rid, int(pid)) for kind, rid, pid in (l.split() for l in ledger.read_text().splitlines())]


def assert_one_script_at_a_time(ledger: Path) -> None:
    """Per run id, every start is followed by its own end before the next start."""
    open_: dict[str, int] = {}
    for kind, rid, pid in ledger_events(ledger):
        if kind == "start":
            assert rid not in open_, f"two host scripts for {rid}: pids {open_[rid]} and {pid}"
            open_[rid] = pid
        else:
            assert open_.pop(rid) == pid


def wait_for(cond, what: str, limit: float = 30.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def started(ledger: Path, n: int = 1):
    wait_for(lambda: sum(e[0] == "start" for e in ledger_events(ledger)) >= n, "the host script to start")


def test_dispatcher_follows_a_run_over_many_polls(tmp_path):
    """The bug this guards: RUNNING carried the PID as external_id, the
    dispatcher took it as the handle and the next poll answered LOST."""
    from flakebot.campaigns.dispatch import Dispatcher
    from flakebot.model import Outcome
    from flakebot.store import Store

    ledger, gates = tmp_path / "ledger", tmp_path / "gates"
    gates.mkdir()
    ex = LocalExecutor(str(spdk_job(tmp_path, ledger, gates=gates)), spdk_dir="/x", workdir=tmp_path / "w")
    polls_while_running = []

    def sleep(_s):  # one call per round of polls that found the request still running
        polls_while_running.append(1)
        if len(polls_while_running) == 5:
            (gates / "all").touch()
        time.sleep(0.02)

    with Store(tmp_path / "f.db") as store:
        d = Dispatcher(store, ex, slow_threshold_s=60.0, poll_seconds=0.02, sleep=sleep)
        d.submit(req("many-polls", tests=(NVME, "vfio_user_virtio_blk_restart_vm"), n=3))
        (f,) = d.collect(wait=True)
        assert len(polls_while_running) >= 5
        assert (f.status.state, f.status.rc, f.status.external_id) == (BuildState.DONE, 0, "many-polls")
        assert f.added == 6 and all(r.outcome is Outcome.PASS for r in f.runs)
        (b,) = store.builds()
        assert (b["status"], b["external_id"]) == ("ingested", "many-polls")
        assert len(store.runs()) == 6
    assert [e[0] for e in ledger_events(ledger)] == ["start", "end"]


def test_a_restarted_flakebot_follows_the_same_script(tmp_path):
    ledger, gates = tmp_path / "ledger", tmp_path / "gates"
    gates.mkdir()
    job = str(spdk_job(tmp_path, ledger, gates=gates, rc=3))
    first = LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w")
    h = first.submit(req("again", n=2))
    started(ledger)
    assert first.poll(h).state is BuildState.RUNNING
    del first  # what a killed flakebot leaves: the script and its files

    second = LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w")
    assert second.reattach(req("again", n=2)) == h
    st = second.poll(h)
    assert (st.state, st.external_id) == (BuildState.RUNNING, h)
    assert second.submit(req("again", n=2)) == h  # the same request: no second script
    with pytest.raises(ExecutorError, match=r"busy with run again \(pid \d+"):
        second.submit(req("other"))
    wait_for(lambda: any(l.startswith("FLAKEBOT-ITERATION-END") for l in second.console(h)),
             "the first iteration in the log")  # read as it grows
    (gates / "all").touch()
    st = wait_done(second, h)
    assert (st.state, st.rc) == (BuildState.DONE, 3)
    ends = [l for l in second.console(h) if l.startswith("FLAKEBOT-ITERATION-END")]
    assert len(ends) == 2
    assert [e[0] for e in ledger_events(ledger)] == ["start", "end"]


def test_a_script_that_ended_while_flakebot_was_away_counts(tmp_path):
    ledger = tmp_path / "ledger"
    job = str(spdk_job(tmp_path, ledger, rc=1))
    LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w").submit(req("away"))
    wait_for(lambda: (tmp_path / "w" / "away.end").exists(), "the script to end")
    later = LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w")
    assert later.reattach(req("away")) == "away"
    st = later.poll("away")
    assert (st.state, st.rc) == (BuildState.DONE, 1) and st.host_minutes > 0
    assert later.submit(req("away")) == "away"
    assert [e[0] for e in ledger_events(ledger)] == ["start", "end"]


def test_a_script_gone_without_an_end_is_run_again_never_beside_it(tmp_path):
    ledger, gates = tmp_path / "ledger", tmp_path / "gates"
    gates.mkdir()
    job = str(spdk_job(tmp_path, ledger, gates=gates))
    first = LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w")
    first.submit(req("gone"))
    started(ledger)
    pid = json.loads((tmp_path / "w" / "gone.pid").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)  # the host lost it (OOM killer, an operator)
    wait_for(lambda: not LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w").reattach(req("gone")),
             "the group to be gone")
    again = LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w")
    assert again.reattach(req("gone")) is None
    (gates / "all").touch()
    assert again.submit(req("gone")) == "gone"
    assert wait_done(again, "gone").state is BuildState.DONE
    assert [e[0] for e in ledger_events(ledger)] == ["start", "start", "end"]
    first_pid = ledger_events(ledger)[0][2]
    assert not pid_alive(first_pid)


def test_a_recycled_pid_or_another_boot_is_not_the_run(tmp_path):
    from flakebot.executors.procs import boot_id, proc_stat

    job = str(script(tmp_path, "echo ran >> " + str(tmp_path / "ran") + "\n"))
    ex = LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w")
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)  # leads its own group, as ours do
    try:
        ticks = proc_stat(other.pid).start_ticks
        pid_file = tmp_path / "w" / "r1.pid"
        for recorded, boot, ours in ((ticks, boot_id(), True), (ticks + 1, boot_id(), False),
                                     (ticks, "another-boot", False)):
            pid_file.write_text(json.dumps({"pid": other.pid, "start_ticks": recorded, "boot": boot}))
            assert (ex.reattach(req()) == "r1") is ours
        assert ex.poll("r1").state is BuildState.LOST
        assert ex.submit(req()) == "r1"
        assert wait_done(ex, "r1").state is BuildState.DONE
        assert (tmp_path / "ran").read_text() == "ran\n"
    finally:
        other.kill()
        other.wait()


def test_after_a_restart_cancel_and_timeout_stop_the_whole_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    job = str(script(tmp_path, f'sleep 300 & echo $! > {pidfile}\nwait\n'))
    LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w").submit(req("c"))
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the child")
    child = int(pidfile.read_text())
    later = LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w")
    assert later.reattach(req("c")) == "c"
    later.cancel("c")
    assert later.poll("c").state is BuildState.LOST
    wait_for(lambda: not pid_alive(child), "the child to die", limit=5)
    assert later.reattach(req("c")) is None  # cancelled: run it again when asked

    pidfile.unlink()
    LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w").submit(req("t"))
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the child")
    child = int(pidfile.read_text())
    short = LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w", timeout_s=0.5)
    st = wait_done(short, "t")
    assert (st.state, st.rc) == (BuildState.DONE, 124)
    assert "timeout" in list(short.console("t"))[-1]
    wait_for(lambda: not pid_alive(child), "the child to die", limit=5)


def test_the_wrapper_runs_nothing_without_the_go_ahead(tmp_path):
    """flakebot killed between starting the wrapper and recording its pid: the
    wrapper reads EOF instead of the go-ahead and never starts the command."""
    from flakebot.executors.local import _WRAPPER

    marker = tmp_path / "ran"
    job = script(tmp_path, f"touch {marker}\n")
    r, w = os.pipe()
    p = subprocess.Popen(["/bin/sh", "-c", _WRAPPER, "flakebot-local", str(tmp_path / "x"), str(job)], stdin=r)
    os.close(r)
    os.close(w)
    assert p.wait(10) == 125
    assert not marker.exists() and not (tmp_path / "x.end").exists()


def test_finished_logs_are_kept_by_count_and_by_age(tmp_path):
    w = tmp_path / "w"
    job = str(script(tmp_path, 'echo "$FLAKEBOT_RUN_ID"\n'))

    def age(rid: str, seconds: float) -> None:
        for kind in ("log", "pid", "end"):
            os.utime(w / f"{rid}.{kind}", (time.time() - seconds,) * 2)

    ex = LocalExecutor(job, spdk_dir="/x", workdir=w, keep_logs=2, keep_days=30)
    for i in range(1, 5):
        wait_done(ex, ex.submit(req(f"k{i}")))
        age(f"k{i}", 100 - i)  # distinct ages, k4 the newest
    # at k4's start, k1 was the third-newest finished run
    assert sorted(p.name for p in w.glob("*.log")) == ["k2.log", "k3.log", "k4.log"]
    assert list(ex.console("k1")) == [] and ex.poll("k1").state is BuildState.LOST

    by_age = LocalExecutor(job, spdk_dir="/x", workdir=w, keep_logs=100, keep_days=30)
    age("k2", 31 * 86400)
    wait_done(by_age, by_age.submit(req("k5")))
    assert sorted(p.name for p in w.iterdir()) == [
        ".lock", "k3.end", "k3.log", "k3.pid", "k4.end", "k4.log", "k4.pid", "k5.end", "k5.log", "k5.pid"]


# ------------------------------------------------------------------ the real CLI, killed and resumed


def cli_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp / "xdg"), PYTHONPATH=str(ROOT))
    env.pop("FLAKEBOT_CONFIG", None)
    return env


def local_config(tmp: Path) -> Path:
    cfg = tmp / "flakebot.toml"
    cfg.write_text(f'[executor]\nlocal_workdir = "{tmp / "w"}"\nlocal_poll_seconds = 0.1\n')
    return cfg


def test_flakebot_run_stores_real_runs_of_a_slow_host_command(tmp_path):
    from flakebot.model import Outcome
    from flakebot.demo.hosts import Behaviour, truths
    from flakebot.store import Store

    db, ledger = tmp_path / "f.db", tmp_path / "ledger"
    # The host's draws are seeded by the run id, which starts with the database's
    # random instance id: fix it, so the same runs (a pass and a timeout) come every time.
    with Store(db) as store:
        store.db.execute("UPDATE meta SET value = '0123456789ab' WHERE key = 'instance_id'")
        store.db.conn.commit()
    job = spdk_job(tmp_path, ledger, pause=0.02, sim_args="--p-hang 0.4 --p-near-miss 0.3 --seed 5",
                   wait_until_polled=db)
    r = subprocess.run([sys.executable, "-m", "flakebot", "--config", str(local_config(tmp_path)), "run",
                        "--commit", SHA, "--test", NVME, "--iterations", "6", "--db", str(db),
                        "--executor", "local", "--command", str(job), "--json"],
                       env=dict(cli_env(tmp_path), SPDK_DIR="/x"), cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    with Store(db) as store:
        (b,) = store.builds()
        assert (b["status"], b["external_id"], b["rc"]) == ("ingested", b["run_id"], 0)
        stored = [(x["iteration"], x["outcome"]) for x in sorted(store.runs(), key=lambda x: x["iteration"])]
    expected = truths(NVME, SHA, 6, behaviour=Behaviour(0.4, 0.3), rng_seed=5, fmt="plain", markers=True,
                      run_id=b["run_id"])
    assert stored == [(t.iteration, t.outcome.value) for t in expected]
    assert {o for _, o in stored} >= {Outcome.TIMEOUT.value, Outcome.PASS.value}
    assert Outcome.INFRA.value not in {o for _, o in stored}
    assert not list(tmp_path.glob("flakebot-local-*")) and (tmp_path / "w" / f"{b['run_id']}.log").is_file()


def test_killed_flakebot_resumes_without_a_second_host_script(tmp_path):
    """SIGKILL `flakebot bisect` while its second host script runs; the script
    is held until the resumed flakebot has polled its build, so a resume that
    started the request again would run two scripts with one run id."""
    import sqlite3

    from flakebot.demo.repo import build_demo_repo
    from flakebot.store import Store

    demo = build_demo_repo(tmp_path / "spdk", n_commits=20, seed=1)
    db, ledger, gates = tmp_path / "f.db", tmp_path / "ledger", tmp_path / "gates"
    gates.mkdir()
    job = spdk_job(tmp_path, ledger, gates=gates)
    common = [sys.executable, "-m", "flakebot", "--config", str(local_config(tmp_path)), "bisect"]
    tail = ["--repo", str(demo.path), "--db", str(db), "--executor", "local", "--command", str(job), "--json"]
    first = subprocess.Popen([*common, "--good", demo.good, "--bad", demo.tip, "--test", NVME, "--max-runs", "6",
                              *tail], env=cli_env(tmp_path), cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started(ledger, 1)
        (gates / ledger_events(ledger)[0][1]).touch()  # the first request runs through
        started(ledger, 2)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    (_, orphan_rid, orphan_pid) = ledger_events(ledger)[-1]
    assert pid_alive(orphan_pid)  # the script outlives the flakebot that started it
    with Store(db) as store:
        (camp,) = store.campaigns()

    def polled_since_resume() -> bool:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT host FROM builds WHERE run_id = ?", (orphan_rid,)).fetchone()[0] is not None

    with sqlite3.connect(db) as c:  # cleared here, written again by the resumed flakebot's first poll
        c.execute("UPDATE builds SET host = NULL WHERE run_id = ?", (orphan_rid,))
    resumed = subprocess.Popen([*common, "--resume", str(camp["id"]), *tail], env=cli_env(tmp_path), cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: polled_since_resume() or resumed.poll() is not None, "the resumed flakebot to poll", 120)
        (gates / "all").touch()
        _, err = resumed.communicate(timeout=300)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode in (0, 3), err
    assert_one_script_at_a_time(ledger)
    starts = [rid for kind, rid, _ in ledger_events(ledger) if kind == "start"]
    assert len(starts) == len(set(starts)) and orphan_rid in starts  # followed again, not run again
    with Store(db) as store:
        builds = store.builds()
        assert [b["run_id"] for b in builds] == starts
        assert all(b["status"] == "ingested" for b in builds)
        runs = store.runs()
        assert len(runs) == sum(b["iterations"] for b in builds)  # stored once each
        assert {x["outcome"] for x in runs} == {"pass"}
        assert store.campaigns()[0]["status"] != "open"


def test_what_a_finished_script_leaves_running_is_stopped(tmp_path):
    pidfile = tmp_path / "straggler.pid"
    ex = LocalExecutor(str(script(tmp_path, f"sleep 300 & echo $! > {pidfile}\nexit 0\n")), spdk_dir="/x",
                       workdir=tmp_path / "w")
    st = wait_done(ex, ex.submit(req()))
    assert (st.state, st.rc) == (BuildState.DONE, 0)
    assert not pid_alive(int(pidfile.read_text()))


def test_the_wrapper_is_shellcheck_clean(tmp_path):
    from flakebot.executors.local import _WRAPPER

    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (CI installs it)")
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text("#!/bin/sh\n" + _WRAPPER)
    p = subprocess.run(["shellcheck", "-s", "sh", str(wrapper)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


def test_abort_after_a_restart_stops_the_script_a_killed_flakebot_left(tmp_path):
    """`bisect --abort` after a kill: resume without resubmitting, then cancel."""
    from flakebot.campaigns.dispatch import Dispatcher
    from flakebot.store import Store

    ledger, gates = tmp_path / "ledger", tmp_path / "gates"
    gates.mkdir()
    job = str(spdk_job(tmp_path, ledger, gates=gates))
    with Store(tmp_path / "f.db") as store:
        Dispatcher(store, LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w"),
                   slow_threshold_s=60.0).submit(req("left"))
        started(ledger)
        pid = ledger_events(ledger)[0][2]
        later = Dispatcher(store, LocalExecutor(job, spdk_dir="/x", workdir=tmp_path / "w"), slow_threshold_s=60.0)
        assert later.resume(resubmit=False) == 1
        later.cancel_all()
        wait_for(lambda: not pid_alive(pid), "the script to stop", limit=10)
        assert [e[0] for e in ledger_events(ledger)] == ["start"]
