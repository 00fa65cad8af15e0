"""The `local` executor: a tiny script in tmp, then the host script + fake SPDK tree."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

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
    assert ex.submit(req()) == h  # idempotent on run_id


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
        from flakebot import spdklog
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
