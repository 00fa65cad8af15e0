"""Executor `local`: run the host script (or any command) on this machine.

The command comes from config (split with shlex, never interpreted by a shell)
and gets the host-script contract in its environment: FLAKEBOT_COMMIT,
FLAKEBOT_TESTS (space separated), FLAKEBOT_ITERATIONS, FLAKEBOT_RUN_ID,
SPDK_DIR. It runs in its own process group (start_new_session) so a timeout or
`cancel` stops the whole group, QEMU children included. One request at a time
on this host: slots() == 1, and a host script left running by another flakebot
process makes `submit` refuse (one line naming its run id and pid).

    >>> ex = LocalExecutor("jobs/run-restart-tests.sh", spdk_dir="/root/spdk")  # doctest: +SKIP
    >>> h = ex.submit(RunRequest("r1", sha, ("vfio_user_nvme_restart_vm",), 5))  # doctest: +SKIP

Everything about a run lives in the work directory (executor.local_workdir,
default <data dir>/local), so the handle -- the run id -- stays valid across
polls and across a restart of flakebot:

    <run_id>.log   stdout and stderr, merged (streamed by `console`, never held in memory)
    <run_id>.pid   the process group leader: pid, start time (clock ticks since
                   boot) and boot id, so a recycled pid is never taken for it;
                   and the request (commit, tests, iterations): a run found by
                   its run id is adopted only if it ran the same request
    <run_id>.end   "<rc> <uptime> <boot id>" once it ended ("-" for rc when cancelled)

A small /bin/sh wrapper leads the group: it waits until the pid file is
written before it starts the command (a flakebot killed before that leaves no
host script behind), and writes the end file when the command exits. After a
restart `reattach` finds a run by its run id: still running -> follow it
again; ended while flakebot was away -> its rc and log count; cancelled or
gone without an end file -> None, so the same request is run again (never
beside the old one: looking and launching happen under one lock on the work
directory).

A timed-out request (counted from the script's start, so across restarts too)
is DONE with rc 124 (as coreutils `timeout`) and a last log line saying so; a
cancelled one is LOST. What a finished script leaves running in its group is
stopped. Finished runs' files are removed
when a new request starts, beyond the newest `keep_logs` or older than
`keep_days` days.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional

from flakebot.config import default_data_dir
from flakebot.executors.base import ExecutorError
from flakebot.executors.procs import Leader, boot_id, live_groups, proc_stat, uptime_s
from flakebot.model import BuildState, BuildStatus, RunRequest

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_RC = 124
KILL_GRACE_S = 5.0
LOCK_WAIT_S = 30.0
CANCELLED = "-"

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_TEST_RE = re.compile(r"^[A-Za-z0-9_]+$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# stdin: the go-ahead; $1: the run's path prefix; then the command. EOF
# instead of a line means flakebot died before recording us: run nothing.
_WRAPPER = r'''run=$1
shift
IFS= read -r _ || exit 125
exec </dev/null
"$@"
rc=$?
read -r up _ < /proc/uptime
read -r boot < /proc/sys/kernel/random/boot_id
printf '%s %s %s\n' "$rc" "$up" "$boot" > "$run.end.tmp" && mv -f "$run.end.tmp" "$run.end"
exit "$rc"
'''


def resolve_command(command: str) -> list[str]:
    """argv for `command`: a relative program path is looked up in the flakebot
    repository first, then on PATH. Raises a one-line ExecutorError if missing."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise ExecutorError(f"local executor: cannot parse command {command!r}: {e}") from None
    if not argv:
        raise ExecutorError("local executor: empty command")
    prog = argv[0]
    p = Path(prog)
    if p.is_absolute():
        found: Optional[str] = prog if p.is_file() else None
    elif (REPO_ROOT / p).is_file():
        found = str(REPO_ROOT / p)
    elif "/" in prog and p.is_file():
        found = str(p.resolve())
    else:
        found = shutil.which(prog)
    if not found:
        raise ExecutorError(f"local executor: command not found: {prog}")
    if not os.access(found, os.X_OK):
        raise ExecutorError(f"local executor: command not executable: {found}")
    return [found, *argv[1:]]


@dataclass(frozen=True)
class End:
    rc: Optional[int]  # None: cancelled
    uptime: float
    boot: str

    def minutes_since(self, leader: Leader) -> float:
        """Host minutes the run took (0 when start and end are not on one clock)."""
        return max(0.0, self.uptime - leader.start_s) / 60 if self.boot == leader.boot else 0.0


# ---------------------------------------------------------------------- executor


class LocalExecutor:
    name = "local"
    stop_on_interrupt = True  # Ctrl-C stops the run: it holds this host's VMs and hugepages

    def __init__(
        self,
        command: str = "jobs/run-restart-tests.sh",
        spdk_dir: Optional[str] = None,
        timeout_s: float = 4 * 3600,
        workdir: Optional[Path | str] = None,
        env: Optional[Mapping[str, str]] = None,
        keep_logs: int = 20,
        keep_days: float = 30.0,
        poll_interval_s: float = 0.05,
    ):
        """`spdk_dir` defaults to $SPDK_DIR; `env` adds variables (e.g. VM_IMAGE);
        `workdir` defaults to <data dir>/local; `keep_days` 0 = no age limit."""
        if not Path("/proc/self/stat").is_file():
            raise ExecutorError("local executor: needs Linux /proc to follow its runs")
        self.argv = resolve_command(command)
        spdk_dir = spdk_dir or os.environ.get("SPDK_DIR")
        if not spdk_dir:
            raise ExecutorError("local executor: spdk_dir is not set (config or $SPDK_DIR)")
        self.spdk_dir = str(spdk_dir)
        if timeout_s <= 0:
            raise ExecutorError("local executor: timeout_s must be > 0")
        if keep_logs < 0 or keep_days < 0:
            raise ExecutorError("local executor: keep_logs and keep_days must not be negative")
        self.timeout_s = float(timeout_s)
        self.keep_logs, self.keep_days = int(keep_logs), float(keep_days)
        self.workdir = Path(workdir) if workdir else default_data_dir() / "local"
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ExecutorError(f"local executor: cannot create work directory {self.workdir}: {e.strerror}") from None
        self.extra_env = dict(env or {})
        self.host = socket.gethostname()
        self.poll_interval_s = poll_interval_s  # while waiting for a stopped group to go
        self._children: dict[str, subprocess.Popen] = {}  # runs this process started (to reap)

    # ------------------------------------------------------------------ interface
    def slots(self) -> int:
        return 1

    def submit(self, request: RunRequest) -> str:
        """Start the request; idempotent on run_id (a run of it that is still
        going or has ended, in this process or before a restart, is its answer)."""
        self._validate(request)
        handle = request.run_id
        with self._locked():
            if self._state(handle) is not None:
                stranger = self._stranger(request)
                if stranger:
                    raise ExecutorError(f"local executor: run {handle} in {self.workdir} ran another request "
                                        f"({stranger}); not adopting it: remove its {handle}.* files to run "
                                        f"this one")
                return handle
            self._prune(keep=handle)
            busy = self._running_other_than(handle)
            if busy:
                rid, leader = busy
                raise ExecutorError(f"local executor: busy with run {rid} (pid {leader.pid}, one slot); "
                                    f"wait for it or stop its group: kill -TERM -- -{leader.pid}")
            self._launch(request)
        return handle

    def reattach(self, request: RunRequest, external_id: Optional[str] = None) -> Optional[str]:
        """After a restart: the handle of `request`'s run if it is still running
        or ended while we were away; None if it left no end (run it again)."""
        handle = request.run_id
        if not _RUN_ID_RE.match(handle or ""):
            return None
        with self._locked():
            if self._state(handle) is None or self._stranger(request):
                return None  # nothing of ours to follow (submit refuses a stranger, naming it)
            return handle

    def poll(self, handle: str) -> BuildStatus:
        leader = self._leader(handle) if _RUN_ID_RE.match(handle or "") else None
        if leader is None:
            return self._status(handle, BuildState.LOST)
        self._reap(handle)
        running = leader.is_running()
        end = self._end(handle)
        if end is None and running and uptime_s() - leader.start_s > self.timeout_s:
            end = self._time_out(handle, leader)
        elif end is None and running:
            return self._status(handle, BuildState.RUNNING, minutes=(uptime_s() - leader.start_s) / 60)
        elif running:
            self._stop_group(handle, leader)  # the script ended; what it left behind must not
        if end is None:  # gone without an end: killed from outside, host rebooted
            return self._status(handle, BuildState.LOST)
        minutes = end.minutes_since(leader)
        if end.rc is None:
            return self._status(handle, BuildState.LOST, minutes=minutes)
        return self._status(handle, BuildState.DONE, rc=end.rc, minutes=minutes)

    def console(self, handle: str) -> Iterator[str]:
        if not _RUN_ID_RE.match(handle or ""):
            return
        path = self._path(handle, "log")
        if not path.is_file():
            return
        with open(path, "rb") as f:
            for raw in f:
                yield raw.rstrip(b"\n").decode("utf-8", "replace")

    def cancel(self, handle: str) -> None:
        leader = self._leader(handle) if _RUN_ID_RE.match(handle or "") else None
        if leader is None or self._end(handle) is not None:
            return
        self._stop_group(handle, leader)
        self._write_end(handle, None)

    # ------------------------------------------------------------------ files
    def _path(self, handle: str, kind: str) -> Path:
        return self.workdir / f"{handle}.{kind}"

    def _status(self, handle: str, state: BuildState, rc: Optional[int] = None, minutes: float = 0.0) -> BuildStatus:
        # external_id is the handle itself: it must stay valid for the next poll.
        return BuildStatus(state, self.host, self._path(handle, "log").as_uri(), rc, minutes, handle)

    @contextmanager
    def _locked(self):
        """The work directory's lock: held while looking for runs and launching
        one, so two flakebot processes never both start the same run id."""
        fd = os.open(self.workdir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ExecutorError(f"local executor: {self.workdir} stays locked by another flakebot") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def _state(self, handle: str) -> Optional[str]:
        """"running", "ended" (with an exit status), or None: nothing to follow
        (never started, cancelled, or gone without an end) -- run it (again)."""
        leader = self._leader(handle)
        if leader is None:
            return None
        self._reap(handle)
        if leader.is_running():
            return "running"
        end = self._end(handle)
        return "ended" if end is not None and end.rc is not None else None

    def _stranger(self, request: RunRequest) -> Optional[str]:
        """How the run recorded under `request`'s run id differs from it (commit,
        tests, iterations), or None: the same request, or a pid file from before
        flakebot recorded them."""
        try:
            d = json.loads(self._path(request.run_id, "pid").read_text())
        except (OSError, ValueError):
            return None
        asked = {"commit": request.commit, "tests": list(request.tests), "iterations": request.iterations}
        for key, want in asked.items():
            if key in d and d[key] != want:
                got = d[key]
                return f"{key} {' '.join(got) if key == 'tests' else got}, asked {' '.join(want) if key == 'tests' else want}"
        return None

    def _leader(self, handle: str) -> Optional[Leader]:
        try:
            d = json.loads(self._path(handle, "pid").read_text())
            return Leader(int(d["pid"]), int(d["start_ticks"]), str(d["boot"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _end(self, handle: str) -> Optional[End]:
        try:
            rc, up, boot = self._path(handle, "end").read_text().split()
            return End(None if rc == CANCELLED else int(rc), float(up), boot)
        except (OSError, ValueError):
            return None

    def _write_end(self, handle: str, rc: Optional[int]) -> End:
        """Record how a run ended unless its wrapper already did (first one wins)."""
        end = self._path(handle, "end")
        tmp = self._path(handle, f"end.{os.getpid()}")
        tmp.write_text(f"{CANCELLED if rc is None else rc} {uptime_s():.2f} {boot_id()}\n")
        try:
            os.link(tmp, end)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return self._end(handle)

    def _write_atomic(self, path: Path, text: str) -> None:
        tmp = path.with_name(path.name + f".{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ processes
    def _launch(self, request: RunRequest) -> None:
        handle = request.run_id
        for kind in ("end", "pid"):  # a run of it that vanished without an end: start afresh
            self._path(handle, kind).unlink(missing_ok=True)
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update({
            "FLAKEBOT_COMMIT": request.commit,
            "FLAKEBOT_TESTS": " ".join(request.tests),
            "FLAKEBOT_ITERATIONS": str(request.iterations),
            "FLAKEBOT_RUN_ID": handle,
            "SPDK_DIR": self.spdk_dir,
        })
        go_r, go_w = os.pipe()
        try:
            with open(self._path(handle, "log"), "wb") as log:
                popen = subprocess.Popen(
                    ["/bin/sh", "-c", _WRAPPER, "flakebot-local", str(self.workdir / handle), *self.argv],
                    stdin=go_r, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                )
        except OSError as e:
            os.close(go_w)
            self._path(handle, "log").unlink(missing_ok=True)
            raise ExecutorError(f"local executor: cannot start {self.argv[0]}: {e.strerror}") from None
        finally:
            os.close(go_r)
        self._children[handle] = popen
        try:
            # Our child cannot be reaped before we wait for it: its stat is there.
            st = proc_stat(popen.pid)
            if st is None:
                raise ExecutorError(f"local executor: {self.argv[0]} vanished as it started")
            self._write_atomic(self._path(handle, "pid"), json.dumps(
                {"pid": popen.pid, "start_ticks": st.start_ticks, "boot": boot_id(), "run_id": handle,
                 "argv": self.argv, "commit": request.commit, "tests": list(request.tests),
                 "iterations": request.iterations}) + "\n")
            os.write(go_w, b"go\n")
        finally:
            os.close(go_w)

    def _reap(self, handle: str) -> None:
        popen = self._children.get(handle)
        if popen is not None and popen.poll() is not None:
            del self._children[handle]

    def _time_out(self, handle: str, leader: Leader) -> Optional[End]:
        self._stop_group(handle, leader)
        end = self._write_end(handle, TIMEOUT_RC)
        if end is not None and end.rc == TIMEOUT_RC:
            with open(self._path(handle, "log"), "ab") as log:
                log.write(f"\nFLAKEBOT: run {handle} killed after the {self.timeout_s:g} s timeout\n".encode())
        return end

    def _stop_group(self, handle: str, leader: Leader) -> None:
        """SIGTERM the run's group, SIGKILL what is left after the grace time."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not leader.is_running():
                return
            try:
                os.killpg(leader.pid, sig)
            except ProcessLookupError:
                return
            except PermissionError:  # only members we may not signal (e.g. under sudo): theirs to end
                return
            deadline = time.monotonic() + KILL_GRACE_S
            while time.monotonic() < deadline:
                self._reap(handle)
                if not leader.is_running():
                    return
                time.sleep(self.poll_interval_s)

    def _running_other_than(self, handle: str) -> Optional[tuple[str, Leader]]:
        for rid in list(self._children):
            self._reap(rid)
        groups = live_groups()
        for pid_file in self.workdir.glob("*.pid"):
            rid = pid_file.name[: -len(".pid")]
            leader = self._leader(rid)
            if rid != handle and leader is not None and self._end(rid) is None and leader.is_running(groups):
                return rid, leader
        return None

    def _prune(self, keep: str) -> None:
        """Remove the files of ended runs beyond the newest keep_logs, or older
        than keep_days. Runs still going are never touched."""
        ended = []
        groups = live_groups()
        for pid_file in self.workdir.glob("*.pid"):
            rid = pid_file.name[: -len(".pid")]
            if rid == keep or rid in self._children:
                continue
            leader = self._leader(rid)
            if leader is not None and leader.is_running(groups):
                continue
            try:
                mtime = max(p.stat().st_mtime for p in (pid_file, self._path(rid, "log"), self._path(rid, "end"))
                            if p.exists())
            except OSError:
                continue
            ended.append((mtime, rid))
        ended.sort(reverse=True)
        now = time.time()
        for i, (mtime, rid) in enumerate(ended):
            too_old = self.keep_days > 0 and now - mtime > self.keep_days * 86400
            if i >= self.keep_logs or too_old:
                for kind in ("log", "end", "pid"):
                    self._path(rid, kind).unlink(missing_ok=True)

    @staticmethod
    def _validate(request: RunRequest) -> None:
        if not _SHA_RE.match(request.commit or ""):
            raise ExecutorError(f"local executor: commit must be 40 lowercase hex digits, got {request.commit!r}")
        if not request.tests:
            raise ExecutorError("local executor: no tests requested")
        for t in request.tests:
            if not _TEST_RE.match(t):
                raise ExecutorError(f"local executor: bad test name {t!r}")
        if not isinstance(request.iterations, int) or not 1 <= request.iterations <= 1000:
            raise ExecutorError(f"local executor: iterations must be 1..1000, got {request.iterations!r}")
        if not _RUN_ID_RE.match(request.run_id or ""):
            raise ExecutorError(f"local executor: bad run_id {request.run_id!r}")
