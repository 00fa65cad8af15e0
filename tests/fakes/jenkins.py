"""A fake Jenkins: a real HTTP server on 127.0.0.1 speaking the REST subset that
python-jenkins and :mod:`flakebot.executors.jenkins` use, whose agents run the
simulated SPDK hosts of :mod:`flakebot.demo.hosts`.

What it serves (paths relative to the root URL)::

    GET  /  and  /api/json                        X-Jenkins header, jobs, useCrumbs
    GET  /crumbIssuer/api/json                    {crumb, crumbRequestField}
    GET  /me/api/json                             the authenticated user
    GET  /job/<job>/api/json                      builds (with their parameters), queueItem, ...
    POST /job/<job>/buildWithParameters?K=V       201 + Location: <root>/queue/item/<id>/
    POST /job/<job>/build                         same, default parameters
    GET  /queue/api/json                          waiting items (why, params, actions)
    GET  /queue/item/<id>/api/json                why / cancelled / executable{number,url}
    POST /queue/cancelItem?id=<id>                204
    GET  /job/<job>/<n>/api/json                  result, building, builtOn, duration, url, actions
    GET  /job/<job>/<n>/consoleText               the whole log so far
    GET  /job/<job>/<n>/logText/progressiveText?start=N
                                                  bytes from N; X-Text-Size, X-More-Data while building
    POST /job/<job>/<n>/stop                      302 to the build, build ends ABORTED
    GET  /computer/api/json, /computer/<n>/api/json   agents: assignedLabels, offline, executors

Every answer but the crumb and root needs HTTP basic auth with the user and API
token (401 otherwise); every POST needs the crumb header (403 otherwise), as on
a Jenkins with CSRF protection on.

Semantics kept from Jenkins: queue items wait (``why``) until a free online agent
matching the label expression (tested against the agent's labels and its name,
so ``vfio-user && agent-2`` pins a build; a label no agent matches stays
queued) takes them, then become "left" items with ``executable``
and expire ``queue_expiry_s`` later (404); identical queued requests (same job,
same parameters) are merged into one queue item; each agent runs one build at
a time. Builds run a simulated host: the console comes from a console factory
(default: :func:`flakebot.demo.hosts.console_lines` in Jenkins/Timestamper format) and
appears progressively on a time scale, ``time_scale`` real seconds per simulated
minute (default 0.01: a 30-minute build takes 0.3 s). Durations (``duration``)
are reported in simulated milliseconds, so host minutes stay meaningful.

Faults, for tests: :meth:`FakeJenkins.fail_auth`, :meth:`fail_5xx`,
:meth:`fail_triggers`, :meth:`slow`, :meth:`cancel_queue_items`, :meth:`lose_agent`,
:meth:`truncate_logs`, :meth:`rotate_crumb`. Each agent keeps its last
``builds_kept`` builds as the host script does (``compiles()`` counts what each
agent compiled). A scenario with commits that
cannot be tested (``sim.Scenario.with_untestable``) makes their builds print
the host script's ``flakebot: infra:`` line and end FAILURE, as exit 3 does.

    >>> fake = FakeJenkins(agents=2)
    >>> with fake as url:
    ...     url.startswith("http://127.0.0.1:")
    True

Standalone: ``python -m tests.fakes.jenkins --port 8080 --agents 4``.
"""
from __future__ import annotations

import argparse
import hmac
import itertools
import json
import re
import secrets
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Iterable, Iterator, Optional
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from tests.fakes._server import FakeHandler, serve, shutdown

JENKINS_VERSION = "2.462.3"
DEFAULT_JOB = "flakebot-vfio-user-restart"
DEFAULT_LABEL = "vfio-user"
DEFAULT_TESTS = "vfio_user_nvme_restart_vm"
PARAMETERS = ("SPDK_COMMIT", "FLAKEBOT_TESTS", "FLAKEBOT_ITERATIONS", "FLAKEBOT_RUN_ID", "LABEL")
CRUMB_FIELD = "Jenkins-Crumb"
CHUNK = 64 * 1024

ConsoleFactory = Callable[[dict], Iterable[str]]

_PREFIX_RE = re.compile(r"^(\d{2,}):(\d{2}):(\d{2})\.(\d{3})  ")
_FAILED_RE = re.compile(
    r"WARN: Not all VMs were shut down|Backtrace start|BACKTRACE START|err_clean|"
    r"FLAKEBOT-ITERATION-END.*\brc=[1-9]"
)


# ---------------------------------------------------------------------------
# Console factories: params dict -> lines (no newline)
# ---------------------------------------------------------------------------


def split_tests(value: str) -> list[str]:
    """FLAKEBOT_TESTS as a list: names separated by spaces and/or commas."""
    return [t for t in re.split(r"[\s,]+", value or "") if t]


def sim_console_factory(scenario: Any = None, *, era: str = "2024") -> ConsoleFactory:
    """A console factory that runs :mod:`flakebot.demo.hosts` hosts.

    ``scenario`` gives the behaviour per (test, commit) (``scenario.behaviour``);
    without one every commit behaves the same (a small baseline flake rate).
    Falls back to a tiny built-in generator when flakebot.demo.hosts is not importable.
    """

    def factory(params: dict) -> Iterator[str]:
        tests = split_tests(params.get("FLAKEBOT_TESTS", "")) or [DEFAULT_TESTS]
        iterations = max(0, int(params.get("FLAKEBOT_ITERATIONS") or 1))
        commit = params.get("SPDK_COMMIT", "") or "HEAD"
        run_id = params.get("FLAKEBOT_RUN_ID", "")
        key = _seed_key(run_id)  # the same logs whichever database asked
        seed = zlib.crc32(f"{key}/{commit}".encode())
        try:
            from flakebot.demo import hosts as sim
        except ImportError:  # pragma: no cover - flakebot.demo.hosts missing
            for i, test in enumerate(tests):
                yield from _fallback_console(test, iterations, seed + i)
            return
        clock = sim.SimClock.seeded(seed, era)  # one clock: tests run one after another
        why = scenario.cannot_test(commit, tests) if hasattr(scenario, "cannot_test") else None
        if why is not None:  # the host script gives up on this commit and exits 3
            clock.elapsed = 0.0
            yield from sim.cannot_test_lines(commit, why, fmt="jenkins", era=era, clock=clock)
            return
        for i, test in enumerate(tests):
            if scenario is not None:
                behaviour = scenario.behaviour(test, commit)
            else:
                behaviour = sim.Behaviour(p_hang=0.05, p_near_miss=0.1)
            yield from sim.console_lines(
                test, commit, iterations, behaviour=behaviour, rng_seed=seed + i,
                fmt="jenkins", era=era, markers=True, run_id=run_id, clock=clock, seed_id=key,
            )

    return factory


def _seed_key(run_id: str) -> str:
    try:
        from flakebot.executors.runids import seed_key
    except ImportError:  # pragma: no cover - standalone copy of the fake
        return run_id
    return seed_key(run_id)


def _fallback_console(test: str, iterations: int, seed: int) -> Iterator[str]:
    """Minimal SPDK-shaped log (Jenkins Timestamper prefix), used only when
    flakebot.demo.hosts is missing."""
    import random

    rng = random.Random(seed)
    t = 0.0

    def line(text: str, dt: float = 0.001) -> str:
        nonlocal t
        t += dt
        h, rem = divmod(t, 3600)
        m, s = divmod(rem, 60)
        return f"{int(h):02d}:{int(m):02d}:{s:06.3f}  {text}"

    stars = "*" * 36
    script = "nvme/vfio_user_restart_vm.sh"
    for _ in range(iterations):
        yield line(stars)
        yield line(f"START TEST {test}")
        yield line(stars)
        for site in (36, 54):
            yield line(f" 14:10:00 vfio_user_qemu.{test} -- {script}@{site} -- # vm_shutdown_all", 30.0)
            yield line("INFO: Waiting for VMs to shutdown...")
            wait = rng.choice([3.0, 3.0, 3.0, 83.0]) if site == 54 else 3.0
            if site == 54 and rng.random() < 0.05:
                yield line("WARN: Not all VMs were shut down. Leftovers: 1", 90.0)
                yield line("========== Backtrace start: ==========")
                return
            yield line("INFO: All VMs successfully shut down", wait)
        yield line("real\t1m28.401s")
        yield line(stars)
        yield line(f"END TEST {test}")
        yield line(stars)


def _fmt_elapsed(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


# ---------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------


class _Log:
    """An append-only byte log, read by offset (what progressiveText serves)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self._buf)

    def append_line(self, text: str) -> None:
        with self._lock:
            self._buf += text.encode("utf-8", "replace") + b"\n"

    def read(self, start: int, end: int) -> Iterator[bytes]:
        pos = start
        while pos < end:
            with self._lock:
                chunk = bytes(self._buf[pos:min(end, pos + CHUNK)])
            if not chunk:
                return
            pos += len(chunk)
            yield chunk


class _RepeatLog:
    """A finished log of ``count`` copies of ``line``, produced on the fly (no
    storage): lets tests stream hundreds of megabytes in bounded memory."""

    def __init__(self, line: str, count: int, tail: str = "Finished: SUCCESS") -> None:
        self._line = line.encode() + b"\n"
        self._count = count
        self._tail = tail.encode() + b"\n"
        self.size = len(self._line) * count + len(self._tail)

    def append_line(self, text: str) -> None:  # pragma: no cover - finished
        raise RuntimeError("static log")

    def read(self, start: int, end: int) -> Iterator[bytes]:
        body = len(self._line) * self._count
        pos = start
        per = max(1, CHUNK // len(self._line))
        while pos < min(end, body):
            i, off = divmod(pos, len(self._line))
            n = min(per, self._count - i)
            chunk = (self._line * n)[off:]
            chunk = chunk[: min(end, body) - pos]
            pos += len(chunk)
            yield chunk
        if pos < end:
            yield self._tail[pos - body: end - body]


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass
class Agent:
    name: str
    labels: tuple[str, ...]
    online: bool = True
    removed: bool = False
    build: Optional["Build"] = None
    lose_after: Optional[int] = None  # fault: lose this agent after N finished iterations
    offline_until: Optional[float] = None  # back online then (a host that rebooted)
    built: list = field(default_factory=list)  # commits whose build it keeps, oldest first
    compiles: int = 0  # builds it compiled (a kept build is not compiled again)


@dataclass
class QueueItem:
    id: int
    job: str
    params: dict
    label: str
    since: float
    left_at: Optional[float] = None
    cancelled: bool = False
    build: Optional["Build"] = None


@dataclass
class Build:
    job: str
    number: int
    params: dict
    queue_id: int
    agent: Agent
    started: float  # real time.time()
    lines: Iterator[str]
    log: Any = field(default_factory=_Log)
    building: bool = True
    result: Optional[str] = None
    sim_seconds: float = 0.0  # simulated time of the last released line
    offset: float = 0.0  # added to the lines' own elapsed prefix
    raw_last: float = 0.0
    pending: Optional[tuple[float, str]] = None
    failed: bool = False
    refused: bool = False  # the host script printed `flakebot: infra: ...` (it exits 3)
    iterations_done: int = 0
    starts: int = 0
    ends: list = field(default_factory=lambda: [0, 0])  # iteration-end markers, END TEST lines
    cut_after: Optional[int] = None  # truncate the log after N iterations (+ a few lines)
    cut_mode: str = ""  # "truncate" | "agent"
    cut_countdown: Optional[int] = None


@dataclass
class Job:
    name: str
    label: str
    builds: dict[int, Build] = field(default_factory=dict)
    next_number: int = 1


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class FakeJenkins:
    """A fake Jenkins on 127.0.0.1 (see the module doc).

    ``with FakeJenkins(agents=4) as url:`` starts it and gives its root URL
    (``fake.url`` too); the fault methods may be called at any time.
    """

    def __init__(
        self,
        agents: int = 4,
        label: str = DEFAULT_LABEL,
        *,
        time_scale: float = 0.01,
        scenario: Any = None,
        console_factory: Optional[ConsoleFactory] = None,
        job: str = DEFAULT_JOB,
        user: str = "flakebot",
        token: str = "fake-api-token",
        port: int = 0,
        queue_delay_s: float = 0.02,
        queue_expiry_s: float = 300.0,
        reconnect_s: float = 1.0,
        tick_s: float = 0.002,
        crumbs: bool = True,
        builds_kept: int = 1,
    ) -> None:
        self.time_scale = time_scale  # real seconds per simulated minute
        self.builds_kept = max(1, builds_kept)  # the host script builds in one SPDK_DIR: 1
        self.console_factory = console_factory or sim_console_factory(scenario)
        self.user, self.token = user, token
        self.port = port
        self.queue_delay_s = queue_delay_s
        self.queue_expiry_s = queue_expiry_s
        self.reconnect_s = reconnect_s
        self.tick_s = tick_s
        self.crumbs = crumbs
        self.crumb = secrets.token_hex(16)
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {job: Job(job, label)}
        self.default_job = job
        self.agents: dict[str, Agent] = {}
        for i in range(1, agents + 1):
            self.add_agent(f"agent-{i}", (label,))
        self.queue: dict[int, QueueItem] = {}
        self._queue_ids = itertools.count(1)
        # faults
        self._auth_fault: Optional[tuple[int, Optional[int]]] = None
        self._5xx: list[int] = []  # statuses for the next requests
        self._trigger_faults: list[int] = []  # statuses for the next triggers, after queuing them
        self._slow: list[float] = []  # delays for the next requests
        self._cancel_next = 0
        self._truncate_next: list[int] = []
        self._lose_next: list[int] = []
        # stats
        self.requests: deque[tuple[str, str]] = deque(maxlen=100_000)  # (method, path), latest
        self.max_running = 0
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.url = ""

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> str:
        self._httpd, http_thread = serve(self, _Handler, self.port, name="fake-jenkins-http")
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._stop.clear()
        sched = threading.Thread(target=self._scheduler, name="fake-jenkins-sched", daemon=True)
        self._threads = [http_thread, sched]
        sched.start()
        return self.url

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            shutdown(self._httpd)
        for t in self._threads:
            t.join(timeout=2)
        self._httpd = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- setup & faults ----------------------------------------------------

    def add_agent(self, name: str, labels: Iterable[str] = (DEFAULT_LABEL,)) -> Agent:
        with self.lock:
            agent = Agent(name, tuple(labels))
            self.agents[name] = agent
            return agent

    def set_online(self, name: str, online: bool) -> None:
        with self.lock:
            self.agents[name].online = online

    def fail_auth(self, status: Optional[int] = 401, count: Optional[int] = None) -> None:
        """Answer ``status`` (401/403) to the next ``count`` requests (all if
        None); ``fail_auth(None)`` clears it."""
        with self.lock:
            self._auth_fault = None if status is None else (status, count)

    def fail_5xx(self, count: int = 1, status: int = 503) -> None:
        """The next ``count`` requests get ``status`` (a burst of server errors)."""
        with self.lock:
            self._5xx.extend([status] * count)

    def fail_triggers(self, count: int = 1, status: int = 503) -> None:
        """The next ``count`` build triggers are queued as usual and then
        answered ``status`` without the queue item's Location, as a Jenkins
        behind a proxy that timed out can: the build exists, the caller was
        told it failed."""
        with self.lock:
            self._trigger_faults.extend([status] * count)

    def slow(self, seconds: float, count: int = 1) -> None:
        """The next ``count`` requests wait ``seconds`` before answering."""
        with self.lock:
            self._slow.extend([seconds] * count)

    def cancel_queue_items(self, count: int = 1) -> None:
        """The next ``count`` queue items are cancelled while waiting (as by a
        person in the UI); queue items already waiting are cancelled first."""
        with self.lock:
            waiting = [q for q in self.queue.values() if q.left_at is None]
            for q in waiting[:count]:
                self._cancel_item(q)
            self._cancel_next += max(0, count - len(waiting))

    def lose_agent(self, name: Optional[str] = None, after_iterations: int = 1) -> None:
        """An agent disappears after its current or next build has finished
        ``after_iterations`` iterations: the build ends FAILURE with a truncated
        log and a channel-closed message, and the agent is removed from
        /computer. ``name`` None: the agent of the next build to start.
        ``after_iterations=0``: the agent is gone now (a build it runs is cut),
        and what is queued for it alone waits as on Jenkins ("There are no
        nodes with the label ...")."""
        with self.lock:
            if name is None:
                self._lose_next.append(after_iterations)
                return
            agent = self.agents[name]
            if after_iterations <= 0:
                if agent.build is not None:
                    agent.build.cut_mode = "agent"
                    self._cut(agent.build)
                agent.removed, agent.online, agent.lose_after = True, False, None
                return
            agent.lose_after = after_iterations
            if agent.build is not None and agent.build.cut_after is None:
                agent.build.cut_after, agent.build.cut_mode = after_iterations, "agent"

    def truncate_logs(self, count: int = 1, after_iterations: int = 1) -> None:
        """The next ``count`` builds stop writing their log a few lines after
        ``after_iterations`` iterations and end FAILURE (no closing lines)."""
        with self.lock:
            self._truncate_next.extend([after_iterations] * count)

    def rotate_crumb(self) -> None:
        """Invalidate the current crumb (as a Jenkins restart does)."""
        with self.lock:
            self.crumb = secrets.token_hex(16)

    def add_static_build(self, line: str, count: int, job: Optional[str] = None,
                         params: Optional[dict] = None, agent: Optional[str] = None) -> int:
        """A finished SUCCESS build whose log is ``count`` copies of ``line``
        (generated on the fly); returns its number."""
        with self.lock:
            j = self.jobs[job or self.default_job]
            ag = self.agents[agent] if agent else next(iter(self.agents.values()))
            b = Build(j.name, j.next_number, dict(params or {}), 0, ag, time.time(), iter(()),
                      log=_RepeatLog(line, count), building=False, result="SUCCESS")
            j.builds[b.number] = b
            j.next_number += 1
            return b.number

    # -- views used by tests -----------------------------------------------

    def running(self) -> int:
        with self.lock:
            return sum(1 for a in self.agents.values() if a.build is not None)

    def build(self, number: int, job: Optional[str] = None) -> Build:
        return self.jobs[job or self.default_job].builds[number]

    # -- scheduler ---------------------------------------------------------

    def submit(self, job: str, params: dict) -> QueueItem:
        with self.lock:
            j = self.jobs[job]
            for q in self.queue.values():  # Jenkins merges identical queued requests
                if q.left_at is None and q.job == job and q.params == params:
                    return q
            label = params.get("LABEL") or j.label
            q = QueueItem(next(self._queue_ids), job, dict(params), label, time.time())
            self.queue[q.id] = q
            if self._cancel_next:
                self._cancel_next -= 1
                self._cancel_item(q)
            return q

    def _cancel_item(self, q: QueueItem) -> None:
        q.cancelled = True
        q.left_at = time.time()

    def cancel(self, qid: int) -> bool:
        with self.lock:
            q = self.queue.get(qid)
            if q is None or q.left_at is not None:
                return False
            self._cancel_item(q)
            return True

    def _scheduler(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as e:  # pragma: no cover - keep the fake alive
                print(f"fake jenkins scheduler: {e!r}", file=sys.stderr)
            self._stop.wait(self.tick_s)

    def _tick(self) -> None:
        now = time.time()
        with self.lock:
            for q in list(self.queue.values()):
                if q.left_at is not None:
                    if now - q.left_at > self.queue_expiry_s:
                        del self.queue[q.id]
                    continue
                if now - q.since < self.queue_delay_s:
                    continue
                agent = self._free_agent(q.label)
                if agent is not None:
                    self._start_build(q, agent, now)
            for agent in list(self.agents.values()):
                if agent.offline_until is not None and now >= agent.offline_until:
                    agent.online, agent.offline_until = True, None
                if agent.build is not None:
                    self._advance(agent.build, now)
            self.max_running = max(self.max_running, self.running())

    def _free_agent(self, label: str) -> Optional[Agent]:
        for a in self.agents.values():
            if a.online and not a.removed and a.build is None and _label_matches(label, a):
                return a
        return None

    def _why(self, q: QueueItem) -> str:
        if time.time() - q.since < self.queue_delay_s:
            return "In the quiet period. Expires in 0 ms"
        matching = [a for a in self.agents.values() if _label_matches(q.label, a) and not a.removed]
        if not matching:
            return f"There are no nodes with the label \u2018{q.label}\u2019"
        if not any(a.online for a in matching):
            return f"All nodes of label \u2018{q.label}\u2019 are offline"
        return f"Waiting for next available executor on \u2018{q.label}\u2019"

    def _start_build(self, q: QueueItem, agent: Agent, now: float) -> None:
        j = self.jobs[q.job]
        b = Build(j.name, j.next_number, q.params, q.id, agent, now, iter(()))
        j.next_number += 1
        j.builds[b.number] = b
        q.build, q.left_at = b, now
        agent.build = b
        if agent.lose_after is None and self._lose_next:
            agent.lose_after = self._lose_next.pop(0)
        if agent.lose_after is not None:
            b.cut_after, b.cut_mode = agent.lose_after, "agent"
        elif self._truncate_next:
            b.cut_after, b.cut_mode = self._truncate_next.pop(0), "truncate"
        b.log.append_line(f"Started by user {self.user}")
        b.log.append_line("Running as SYSTEM")
        b.log.append_line(f"Building remotely on {agent.name} ({' '.join(agent.labels)}) "
                          f"in workspace /var/jenkins/workspace/{j.name}")
        b.lines = iter(self._host_lines(b))

    def _host_lines(self, b: Build) -> Iterator[str]:
        p = b.params
        sha = p.get('SPDK_COMMIT', '')
        yield f"00:00:00.000  + export FLAKEBOT_COMMIT={sha}"
        with self.lock:  # as the host script: build unless the agent's last build is this commit
            kept = sha in b.agent.built
            if kept:
                b.agent.built.remove(sha)
            else:
                b.agent.compiles += 1
            b.agent.built.append(sha)
            del b.agent.built[:-self.builds_kept]
        if kept:
            yield f"00:00:00.010  build of {sha} is current, skipping build"
        else:
            yield "00:00:00.010  + ./configure --with-vfio-user"
            yield "00:00:00.020  + make -j96"
        yield from self.console_factory(dict(p))

    def compiles(self) -> dict[str, int]:
        """Builds each agent compiled (a request at the commit it has built compiles nothing)."""
        with self.lock:
            return {a.name: a.compiles for a in self.agents.values()}

    def _advance(self, b: Build, now: float) -> None:
        sim_now = (now - b.started) / self.time_scale * 60.0 if self.time_scale > 0 else float("inf")
        while b.building:
            if b.pending is None:
                try:
                    text = next(b.lines)
                except StopIteration:
                    if b.starts > b.ends[0]:  # the simulated host vanished mid-iteration
                        self._agent_lost_lines(b)
                        self._finish(b, "FAILURE")
                        b.agent.online = False  # its agent reconnects a little later
                        b.agent.offline_until = now + self.reconnect_s
                    elif b.refused:  # exit 3: the shell step fails the build
                        b.log.append_line("Build step 'Execute shell' marked build as failure")
                        self._finish(b, "FAILURE")
                    else:
                        # the job maps the host script's exit 1 (a test failed) to UNSTABLE
                        self._finish(b, "UNSTABLE" if b.failed else "SUCCESS")
                    return
                except Exception as e:  # a broken factory is a broken build
                    b.log.append_line(f"ERROR: {e!r}")
                    self._finish(b, "FAILURE")
                    return
                b.pending = self._timed(b, text)
            t, text = b.pending
            if t > sim_now:
                return
            b.pending = None
            b.sim_seconds = t
            b.log.append_line(text)
            if _FAILED_RE.search(text):
                b.failed = True
            if "flakebot: infra: " in text:
                b.refused = True
            if "FLAKEBOT-ITERATION-START" in text:
                b.starts += 1
            if "FLAKEBOT-ITERATION-END" in text:
                b.ends[0] += 1
            elif "END TEST" in text:
                b.ends[1] += 1
            b.iterations_done = max(b.ends)
            if b.cut_after is not None and b.cut_countdown is None and b.iterations_done >= b.cut_after:
                b.cut_countdown = 6
            if b.cut_countdown is not None:
                b.cut_countdown -= 1
                if b.cut_countdown <= 0:
                    self._cut(b)
                    return

    def _timed(self, b: Build, text: str) -> tuple[float, str]:
        m = _PREFIX_RE.match(text)
        if not m:
            return b.sim_seconds, text
        h, mi, s, ms = (int(g) for g in m.groups())
        raw = h * 3600 + mi * 60 + s + ms / 1000.0
        if raw + b.offset < b.sim_seconds:  # a new test restarted its clock: keep elapsed monotonic
            b.offset = b.sim_seconds - raw
        t = raw + b.offset
        if b.offset:
            text = f"{_fmt_elapsed(t)}  {text[m.end():]}"
        return t, text

    def _cut(self, b: Build) -> None:
        if b.cut_mode == "agent":
            a = b.agent
            self._agent_lost_lines(b)
            self._finish(b, "FAILURE", closing=True)
            a.removed, a.online, a.lose_after = True, False, None
        else:
            self._finish(b, "FAILURE", closing=False)

    def _agent_lost_lines(self, b: Build) -> None:
        name = b.agent.name
        b.log.append_line("FATAL: command execution failed")
        b.log.append_line(
            f'hudson.remoting.ChannelClosedException: Channel "hudson.remoting.Channel@5d1a7b2c:{name}": '
            f"Remote call on {name} failed. The channel is closing down or has closed down")
        b.log.append_line("Agent went offline during the build")
        b.log.append_line("ERROR: Connection was broken")
        b.log.append_line("Build step 'Execute shell' marked build as failure")

    def _finish(self, b: Build, result: str, closing: bool = True) -> None:
        if not b.building:
            return
        if closing:
            b.log.append_line(f"Finished: {result}")
        b.result, b.building = result, False
        if b.agent.build is b:
            b.agent.build = None

    def stop_build(self, job: str, number: int) -> bool:
        with self.lock:
            b = self.jobs[job].builds.get(number)
            if b is None:
                return False
            if b.building:
                b.log.append_line(f"Aborted by {self.user}")
                self._finish(b, "ABORTED")
            return True

    # -- JSON views --------------------------------------------------------

    def _build_url(self, b: Build) -> str:
        return f"{self.url}job/{quote(b.job)}/{b.number}/"

    def build_json(self, b: Build) -> dict:
        dur_ms = int(b.sim_seconds * 1000)
        return {
            "_class": "hudson.model.FreeStyleBuild",
            "actions": [
                {"_class": "hudson.model.ParametersAction", "parameters": [
                    {"_class": "hudson.model.StringParameterValue", "name": k, "value": v}
                    for k, v in b.params.items()]},
                {"_class": "hudson.model.CauseAction", "causes": [
                    {"_class": "hudson.model.Cause$UserIdCause",
                     "shortDescription": f"Started by user {self.user}", "userId": self.user}]},
            ],
            "building": b.building,
            "builtOn": b.agent.name,
            "description": None,
            "displayName": f"#{b.number}",
            "duration": 0 if b.building else dur_ms,
            "estimatedDuration": dur_ms,
            "fullDisplayName": f"{b.job} #{b.number}",
            "id": str(b.number),
            "number": b.number,
            "queueId": b.queue_id,
            "result": b.result,
            "timestamp": int(b.started * 1000),
            "url": self._build_url(b),
        }

    def queue_json(self, q: QueueItem) -> dict:
        j = {
            "actions": [{"_class": "hudson.model.ParametersAction", "parameters": [
                {"_class": "hudson.model.StringParameterValue", "name": k, "value": v}
                for k, v in q.params.items()]}],
            "blocked": False,
            "buildable": q.left_at is None,
            "id": q.id,
            "inQueueSince": int(q.since * 1000),
            "params": "".join(f"\n{k}={v}" for k, v in q.params.items()),
            "stuck": False,
            "task": {"_class": "hudson.model.FreeStyleProject", "name": q.job,
                     "url": f"{self.url}job/{quote(q.job)}/", "color": "blue"},
            "url": f"queue/item/{q.id}/",
        }
        if q.left_at is None:
            j.update({"_class": "hudson.model.Queue$BuildableItem", "why": self._why(q),
                      "pending": False, "stuck": False})
        else:
            j.update({"_class": "hudson.model.Queue$LeftItem", "why": None,
                      "cancelled": q.cancelled,
                      "executable": None if q.build is None else {
                          "_class": "hudson.model.FreeStyleBuild", "number": q.build.number,
                          "url": self._build_url(q.build)}})
        return j

    def job_json(self, j: Job) -> dict:
        builds = sorted(j.builds.values(), key=lambda b: -b.number)
        short = [{"_class": "hudson.model.FreeStyleBuild", "number": b.number, "url": self._build_url(b),
                  "queueId": b.queue_id, "actions": self.build_json(b)["actions"][:1]}
                 for b in builds]
        waiting = [q for q in self.queue.values() if q.job == j.name and q.left_at is None]
        return {
            "_class": "hudson.model.FreeStyleProject",
            "name": j.name, "fullName": j.name, "displayName": j.name,
            "url": f"{self.url}job/{quote(j.name)}/",
            "buildable": True, "color": "blue", "concurrentBuild": True,
            "builds": short,
            "firstBuild": short[-1] if short else None,
            "lastBuild": short[0] if short else None,
            "inQueue": bool(waiting),
            "queueItem": self.queue_json(waiting[0]) if waiting else None,
            "nextBuildNumber": j.next_number,
            "property": [{"_class": "hudson.model.ParametersDefinitionProperty",
                          "parameterDefinitions": [
                              {"_class": "hudson.model.StringParameterDefinition", "name": n,
                               "type": "StringParameterDefinition",
                               "defaultParameterValue": {"name": n, "value": ""}}
                              for n in PARAMETERS]}],
        }

    def computer_json(self, a: Agent) -> dict:
        return {
            "_class": "hudson.slaves.SlaveComputer",
            "assignedLabels": [{"name": a.name}] + [{"name": l} for l in a.labels],
            "description": "simulated SPDK host",
            "displayName": a.name,
            "executors": [{"currentExecutable": None if a.build is None else {
                "_class": "hudson.model.FreeStyleBuild", "number": a.build.number,
                "url": self._build_url(a.build)}, "idle": a.build is None, "number": 0}],
            "icon": "symbol-computer" if a.online else "symbol-computer-offline",
            "idle": a.build is None,
            "jnlpAgent": True,
            "numExecutors": 1,
            "offline": not a.online,
            "offlineCause": None if a.online else {"_class": "hudson.slaves.OfflineCause$ChannelTermination"},
            "offlineCauseReason": "" if a.online else "Connection was broken",
            "temporarilyOffline": False,
        }

    def computers_json(self) -> dict:
        comps = [{
            "_class": "hudson.model.Hudson$MasterComputer",
            "assignedLabels": [{"name": "built-in"}], "description": "the Jenkins controller",
            "displayName": "Built-In Node", "executors": [], "icon": "symbol-computer",
            "idle": True, "jnlpAgent": False, "numExecutors": 0, "offline": False,
            "offlineCause": None, "offlineCauseReason": "", "temporarilyOffline": False,
        }] + [self.computer_json(a) for a in self.agents.values() if not a.removed]
        busy = sum(1 for a in self.agents.values() if a.build is not None)
        return {"_class": "hudson.model.ComputerSet", "busyExecutors": busy,
                "computer": comps, "displayName": "Nodes",
                "totalExecutors": sum(1 for a in self.agents.values() if not a.removed and a.online)}


def _label_matches(expr: str, agent: Agent) -> bool:
    """A small label-expression matcher: atoms, ``&&``, ``||``, ``!`` (no parentheses)."""
    names = set(agent.labels) | {agent.name}
    expr = (expr or "").strip()
    if not expr:
        return True
    for alt in expr.split("||"):
        ok = True
        for atom in alt.split("&&"):
            atom = atom.strip()
            neg = atom.startswith("!")
            atom = atom.lstrip("!").strip()
            if (atom in names) == neg:
                ok = False
                break
        if ok:
            return True
    return False


class _Handler(FakeHandler):
    # FakeHandler: HTTP/1.1, TCP_NODELAY (headers and body go out in two writes:
    # no 40 ms delayed-ACK stalls), no request log
    fake: FakeJenkins
    server_version = "Jetty(10.0.20)"

    # -- plumbing ----------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", ctype: str = "text/plain;charset=utf-8",
              headers: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("X-Jenkins", JENKINS_VERSION)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json;charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._send(status, f"<html><body><h2>HTTP ERROR {status} {message}</h2></body></html>".encode(),
                   "text/html;charset=utf-8")

    def _authorized(self) -> bool:
        f = self.fake
        cred = self.basic_credentials()
        if cred is None:
            return False
        user, token = cred
        return hmac.compare_digest(user, f.user) and hmac.compare_digest(token, f.token)

    def _fault(self) -> bool:
        """Apply injected faults; True if an answer was already sent."""
        f = self.fake
        with f.lock:
            delay = f._slow.pop(0) if f._slow else 0.0
            status = f._5xx.pop(0) if f._5xx else None
            auth = f._auth_fault
            if auth is not None and auth[1] is not None:
                f._auth_fault = None if auth[1] <= 1 else (auth[0], auth[1] - 1)
        if delay:
            time.sleep(delay)
        if auth is not None:
            self._error(auth[0], "Unauthorized" if auth[0] == 401 else "Forbidden")
            return True
        if status is not None:
            self._error(status, "Service Unavailable" if status == 503 else "Server Error")
            return True
        return False

    def _dispatch(self) -> None:
        f = self.fake
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.command == "POST" and body and "form" in (self.headers.get("Content-Type") or ""):
            query.update(parse_qsl(body.decode(), keep_blank_values=True))
        with f.lock:
            f.requests.append((self.command, self.path))
        if self._fault():
            return
        if path in ("", "/") and self.command in ("GET", "HEAD"):
            self._send(200, b"<html><body>Fake Jenkins</body></html>", "text/html;charset=utf-8")
            return
        if path == "/crumbIssuer/api/json":
            if not f.crumbs:
                self._error(404, "Not Found")
            else:
                self._json({"_class": "hudson.security.csrf.DefaultCrumbIssuer",
                            "crumb": f.crumb, "crumbRequestField": CRUMB_FIELD})
            return
        if not self._authorized():
            self._send(401, b"Unauthorized", headers={"WWW-Authenticate": 'Basic realm="Jenkins"'})
            return
        if self.command == "POST" and f.crumbs and self.headers.get(CRUMB_FIELD) != f.crumb:
            self._error(403, "No valid crumb was included in the request")
            return
        try:
            self._route(path.rstrip("/").split("/")[1:], query)
        except (KeyError, ValueError):
            self._error(404, "Not Found")

    def _route(self, seg: list[str], q: dict) -> None:
        f = self.fake
        get = self.command in ("GET", "HEAD")
        post = self.command == "POST"
        with f.lock:
            if seg == ["api", "json"] and get:
                self._json({"_class": "hudson.model.Hudson", "mode": "NORMAL", "nodeName": "",
                            "nodeDescription": "the Jenkins controller", "numExecutors": 0,
                            "useCrumbs": f.crumbs, "useSecurity": True,
                            "jobs": [{"_class": "hudson.model.FreeStyleProject", "name": j.name,
                                      "url": f"{f.url}job/{quote(j.name)}/", "color": "blue"}
                                     for j in f.jobs.values()]})
                return
            if seg == ["me", "api", "json"] and get:
                self._json({"_class": "hudson.model.User", "id": f.user, "fullName": f.user})
                return
            if seg == ["computer", "api", "json"] and get:
                self._json(f.computers_json())
                return
            if len(seg) == 4 and seg[0] == "computer" and seg[2:] == ["api", "json"] and get:
                a = f.agents[seg[1]]
                if a.removed:
                    raise KeyError(seg[1])
                self._json(f.computer_json(a))
                return
            if seg == ["queue", "api", "json"] and get:
                self._json({"_class": "hudson.model.Queue", "discoverableItems": [],
                            "items": [f.queue_json(i) for i in f.queue.values() if i.left_at is None]})
                return
            if len(seg) == 5 and seg[:2] == ["queue", "item"] and seg[3:] == ["api", "json"] and get:
                self._json(f.queue_json(f.queue[int(seg[2])]))
                return
            if seg == ["queue", "cancelItem"] and post:
                f.cancel(int(q.get("id", "0")))
                self._send(204)
                return
            if len(seg) >= 2 and seg[0] == "job":
                job = f.jobs[seg[1]]
                rest = seg[2:]
                if rest == ["api", "json"] and get:
                    self._json(f.job_json(job))
                    return
                if not rest and get:
                    self._send(200, f"<html><body>{job.name}</body></html>".encode(), "text/html;charset=utf-8")
                    return
                if rest in (["buildWithParameters"], ["build"]) and post:
                    params = {k: v for k, v in q.items() if k not in ("token", "delay")}
                    item = f.submit(job.name, params)
                    if f._trigger_faults:
                        status = f._trigger_faults.pop(0)
                        self._error(status, "Service Unavailable" if status == 503 else "Server Error")
                        return
                    self._send(201, headers={"Location": f"{f.url}queue/item/{item.id}/"})
                    return
                if rest and rest[0].isdigit():
                    b = job.builds[int(rest[0])]
                    self._build_route(b, rest[1:], q)
                    return
        self._error(404, "Not Found")

    def _build_route(self, b: Build, rest: list[str], q: dict) -> None:
        f = self.fake
        if not rest and self.command in ("GET", "HEAD"):
            self._send(200, f"<html><body>{b.job} #{b.number}</body></html>".encode(), "text/html;charset=utf-8")
        elif rest == ["api", "json"] and self.command in ("GET", "HEAD"):
            self._json(f.build_json(b))
        elif rest == ["stop"] and self.command == "POST":
            f.stop_build(b.job, b.number)
            self._send(302, headers={"Location": f._build_url(b)})
        elif rest == ["consoleText"] and self.command in ("GET", "HEAD"):
            size = b.log.size
            self._stream(200, b.log, 0, size, {})
        elif rest == ["logText", "progressiveText"] and self.command in ("GET", "HEAD"):
            size = b.log.size
            start = int(q.get("start") or 0)
            if start > size:  # Stapler's LargeText: "text rolled over"
                start = 0
            headers = {"X-Text-Size": size}
            if b.building:
                headers["X-More-Data"] = "true"
            self._stream(200, b.log, start, size, headers)
        else:
            raise KeyError(rest)

    def _stream(self, status: int, log: Any, start: int, end: int, headers: dict) -> None:
        # Answer without holding the lock (a slow reader must not stall the fake).
        self.fake.lock.release()
        try:
            self.send_response(status)
            self.send_header("X-Jenkins", JENKINS_VERSION)
            self.send_header("Content-Type", "text/plain;charset=utf-8")
            for k, v in headers.items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(max(0, end - start)))
            self.end_headers()
            if self.command != "HEAD":
                for chunk in log.read(start, end):
                    self.wfile.write(chunk)
        finally:
            self.fake.lock.acquire()

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self._dispatch()


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def _culprit_scenario(repo: str, good: str, bad: str, culprit: str,
                      before: tuple[float, float], after: tuple[float, float]) -> Any:
    from flakebot.demo import hosts as sim
    from flakebot.history import History

    h = History(repo)
    good = h.resolve(good)
    chain = [good] + [c.sha for c in h.first_parent_range(good, bad)]
    return sim.Scenario.by_culprit(chain, h.resolve(culprit), sim.Behaviour(*before), sim.Behaviour(*after))


def _load_object(spec: str) -> Any:
    """``module:attr`` -> the object (called if callable)."""
    import importlib

    mod, _, attr = spec.partition(":")
    obj = importlib.import_module(mod)
    for part in (attr or "").split("."):
        if part:
            obj = getattr(obj, part)
    return obj() if callable(obj) else obj


def _pair(text: str) -> tuple[float, float]:
    a, _, b = text.partition(",")
    return float(a), float(b or 0.0)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.fakes.jenkins",
        description="A fake Jenkins on 127.0.0.1 whose agents run simulated SPDK hosts.")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--label", default=DEFAULT_LABEL)
    p.add_argument("--job", default=DEFAULT_JOB)
    p.add_argument("--user", default="flakebot")
    p.add_argument("--token", default="fake-api-token")
    p.add_argument("--time-scale", type=float, default=0.01,
                   help="real seconds per simulated minute (default 0.01)")
    p.add_argument("--scenario", default=None,
                   help="'tree' (behaviour read from the nvme test script in --repo, as the demo), "
                        "'culprit' (needs --repo --good --bad --culprit), or module:attr naming a "
                        "Scenario (or a function returning one); default: the same small flake rate "
                        "at every commit")
    p.add_argument("--repo", help="git clone (SPDK or `flakebot demo`'s repo) for 'tree' and 'culprit'")
    p.add_argument("--good")
    p.add_argument("--bad")
    p.add_argument("--culprit")
    p.add_argument("--before", type=_pair, default=(0.02, 0.05),
                   help="p_hang,p_near_miss before the culprit (default 0.02,0.05)")
    p.add_argument("--after", type=_pair, default=(0.3, 0.2),
                   help="p_hang,p_near_miss from the culprit on (default 0.3,0.2)")
    a = p.parse_args(argv)
    scenario = None
    if a.scenario == "culprit":
        if not (a.repo and a.good and a.bad and a.culprit):
            p.error("--scenario culprit needs --repo, --good, --bad and --culprit")
        scenario = _culprit_scenario(a.repo, a.good, a.bad, a.culprit, a.before, a.after)
    elif a.scenario == "tree":
        if not a.repo:
            p.error("--scenario tree needs --repo")
        from flakebot.demo import hosts as sim

        scenario = sim.Scenario.from_repo(a.repo, prone=sim.Behaviour(*a.after))
    elif a.scenario:
        scenario = _load_object(a.scenario)
    fake = FakeJenkins(agents=a.agents, label=a.label, job=a.job, user=a.user, token=a.token,
                       time_scale=a.time_scale,
                       scenario=scenario, port=a.port)
    url = fake.start()
    print(f"fake Jenkins at {url} job={a.job} label={a.label} agents={a.agents} "
          f"user={a.user} token={a.token}", flush=True)
    print(f"  export FLAKEBOT_JENKINS_URL={url} FLAKEBOT_JENKINS_USER={a.user} "
          f"FLAKEBOT_JENKINS_TOKEN={a.token}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
