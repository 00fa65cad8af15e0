"""Executor `local`: run the host script (or any command) on this machine.

The command comes from config (split with shlex, never through a shell) and
gets the host-script contract in its environment: FLAKEBOT_COMMIT,
FLAKEBOT_TESTS (space separated), FLAKEBOT_ITERATIONS, FLAKEBOT_RUN_ID,
SPDK_DIR. Its stdout and stderr go, merged, to `<workdir>/<run_id>.log`
(never held in memory); `console` streams that file. It runs in its own
process group (start_new_session) so a timeout or `cancel` kills the whole
group, QEMU children included. One request at a time: slots() == 1.

    >>> ex = LocalExecutor("jobs/run-restart-tests.sh", spdk_dir="/root/spdk")  # doctest: +SKIP
    >>> h = ex.submit(RunRequest("r1", sha, ("vfio_user_nvme_restart_vm",), 5))  # doctest: +SKIP

A timed-out request is DONE with rc 124 (as coreutils `timeout`) and a last
log line saying so; a cancelled one is LOST. Handles live in this process only:
after a restart, `poll` of an old handle answers LOST.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional

from flakebot.executors.base import ExecutorError
from flakebot.model import BuildState, BuildStatus, RunRequest

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_RC = 124
KILL_GRACE_S = 5.0

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_TEST_RE = re.compile(r"^[A-Za-z0-9_]+$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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


@dataclass
class _Proc:
    request: RunRequest
    popen: subprocess.Popen
    log_path: Path
    started: float
    ended: Optional[float] = None
    timed_out: bool = False
    cancelled: bool = False
    timer: Optional[threading.Timer] = None


class LocalExecutor:
    name = "local"

    def __init__(
        self,
        command: str = "jobs/run-restart-tests.sh",
        spdk_dir: Optional[str] = None,
        timeout_s: float = 4 * 3600,
        workdir: Optional[Path | str] = None,
        env: Optional[Mapping[str, str]] = None,
    ):
        """`spdk_dir` defaults to $SPDK_DIR; `env` adds variables (e.g. VM_IMAGE)."""
        self.argv = resolve_command(command)
        spdk_dir = spdk_dir or os.environ.get("SPDK_DIR")
        if not spdk_dir:
            raise ExecutorError("local executor: spdk_dir is not set (config or $SPDK_DIR)")
        self.spdk_dir = str(spdk_dir)
        if timeout_s <= 0:
            raise ExecutorError("local executor: timeout_s must be > 0")
        self.timeout_s = float(timeout_s)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="flakebot-local-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(env or {})
        self.host = socket.gethostname()
        self._procs: dict[str, _Proc] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ interface
    def slots(self) -> int:
        return 1

    def submit(self, request: RunRequest) -> str:
        if request.run_id in self._procs:  # idempotent on run_id
            return request.run_id
        self._validate(request)
        busy = [h for h, p in self._procs.items() if p.popen.poll() is None]
        if busy:
            raise ExecutorError(f"local executor: busy with {busy[0]} (one slot)")
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update({
            "FLAKEBOT_COMMIT": request.commit,
            "FLAKEBOT_TESTS": " ".join(request.tests),
            "FLAKEBOT_ITERATIONS": str(request.iterations),
            "FLAKEBOT_RUN_ID": request.run_id,
            "SPDK_DIR": self.spdk_dir,
        })
        log_path = self.workdir / f"{request.run_id}.log"
        with open(log_path, "wb") as log:
            try:
                popen = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True,
                )
            except OSError as e:
                raise ExecutorError(f"local executor: cannot start {self.argv[0]}: {e.strerror}") from None
        proc = _Proc(request, popen, log_path, time.monotonic())
        proc.timer = threading.Timer(self.timeout_s, self._on_timeout, args=(proc,))
        proc.timer.daemon = True
        proc.timer.start()
        self._procs[request.run_id] = proc
        return request.run_id

    def poll(self, handle: str) -> BuildStatus:
        proc = self._procs.get(handle)
        if proc is None:
            return BuildStatus(BuildState.LOST, self.host, self._url(handle), None, 0.0, handle)
        rc = proc.popen.poll()
        if rc is None and time.monotonic() - proc.started > self.timeout_s:
            self._on_timeout(proc)
            rc = proc.popen.poll()
        if rc is None:
            minutes = (time.monotonic() - proc.started) / 60
            return BuildStatus(BuildState.RUNNING, self.host, self._url(handle), None, minutes, str(proc.popen.pid))
        self._finish(proc)
        minutes = ((proc.ended or time.monotonic()) - proc.started) / 60
        if proc.cancelled:
            return BuildStatus(BuildState.LOST, self.host, self._url(handle), None, minutes, str(proc.popen.pid))
        if proc.timed_out:
            rc = TIMEOUT_RC
        return BuildStatus(BuildState.DONE, self.host, self._url(handle), rc, minutes, str(proc.popen.pid))

    def console(self, handle: str) -> Iterator[str]:
        proc = self._procs.get(handle)
        path = proc.log_path if proc else self.workdir / f"{handle}.log"
        if not _RUN_ID_RE.match(handle) or not path.is_file():
            return
        with open(path, "rb") as f:
            for raw in f:
                yield raw.rstrip(b"\n").decode("utf-8", "replace")

    def cancel(self, handle: str) -> None:
        proc = self._procs.get(handle)
        if proc is None or proc.popen.poll() is not None:
            return
        proc.cancelled = True
        self._kill_group(proc)
        self._finish(proc)

    def wait(self, handle: str, timeout_s: Optional[float] = None) -> BuildStatus:
        """Block until the request ends (for the CLI and tests; the campaign polls)."""
        proc = self._procs.get(handle)
        if proc is not None:
            try:
                proc.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        return self.poll(handle)

    # ------------------------------------------------------------------ internals
    def _url(self, handle: str) -> str:
        return (self.workdir / f"{handle}.log").as_uri()

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

    def _on_timeout(self, proc: _Proc) -> None:
        with self._lock:
            if proc.popen.poll() is not None or proc.cancelled or proc.timed_out:
                return
            proc.timed_out = True
        self._kill_group(proc)
        with open(proc.log_path, "ab") as log:
            log.write(f"\nFLAKEBOT: run {proc.request.run_id} killed after the {self.timeout_s:g} s timeout\n".encode())

    @staticmethod
    def _kill_group(proc: _Proc) -> None:
        pgid = proc.popen.pid  # start_new_session: the child leads its own group
        for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                proc.popen.wait(timeout=grace)
                # the leader is gone; make sure its children are too
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            break

    def _finish(self, proc: _Proc) -> None:
        if proc.ended is None:
            proc.popen.wait()
            proc.ended = time.monotonic()
            if proc.timer is not None:
                proc.timer.cancel()
