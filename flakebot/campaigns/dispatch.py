"""Send run requests to an executor and turn finished builds into stored runs.

This is the I/O half of the campaign loop, shared by `flakebot run`, bisection
campaigns and (later) the nightly cycle, so there is one way a build becomes
evidence:

    record the request in the store  ->  submit  ->  store the handle
    poll until done/lost  ->  parse the console (streamed)  ->  ingest in one
    transaction, with every iteration the log did not account for as `infra`.

A request is written to the store before it is submitted, so a process killed
at any point can find it again (`resume`): the executor reattaches to it when
it can (Jenkins; local, by the run id's pid file), otherwise the same request
(same run_id, pinned to the same host: the pin is stored with the request) is
submitted again; the store's ingestion is idempotent, so no finished run is counted twice.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Optional

from flakebot.evidence import spdklog
from flakebot.executors.base import Executor, ExecutorError
from flakebot.model import BuildState, BuildStatus, Outcome, Run, RunRequest
from flakebot.store import Store


@dataclass
class InFlight:
    build_id: int
    request: RunRequest
    handle: str
    resubmits: int = 0
    last_seen: tuple = ()  # (state, external_id, host, url) last written to the store


MAX_RESUBMITS = 3  # a queue item cancelled before it ran is sent again, a few times

# The host script's one line when it cannot test the commit on this host
# (jobs/run-restart-tests.sh: missing test, QEMU, drive, failed build, ...).
# Runs it leaves unaccounted for are infra with this reason, prefixed
# CANNOT_TEST so a bisection can tell them from a lost host.
_HOST_INFRA_RE = re.compile(r"flakebot: infra: (.*?)\s*$")
_HOST_INFRA_MARK = "flakebot: infra: "
CANNOT_TEST = "cannot test here: "


def is_cannot_test(reason: str | None) -> bool:
    """True for an infra run the host declared untestable (not a lost host)."""
    return bool(reason) and reason.startswith(CANNOT_TEST)


class _InfraTap:
    """Passes console lines through, remembering the host's last infra line."""

    def __init__(self, lines: Iterable):
        self.lines = lines
        self.reason: Optional[str] = None

    def __iter__(self):
        for line in self.lines:
            text = line if isinstance(line, str) else bytes(line).decode("utf-8", "replace")
            if _HOST_INFRA_MARK in text:
                m = _HOST_INFRA_RE.search(text)
                if m and m.group(1):
                    self.reason = m.group(1)[:300]
            yield line


@dataclass
class Finished:
    build_id: int
    request: RunRequest
    status: BuildStatus
    runs: list[Run] = field(default_factory=list)
    added: int = 0


def complete_runs(request: RunRequest, parsed: Iterable[Run], why: str) -> list[Run]:
    """The runs of `parsed` that belong to the request, plus an `infra` run for
    every requested (test, iteration) the log did not account for: a build that
    died or printed nothing must never look like fewer, cleaner runs."""
    wanted = set(request.tests)
    seen: dict[tuple[str, int], Run] = {}
    for run in parsed:
        if run.test in wanted and 1 <= run.iteration <= request.iterations:
            seen.setdefault((run.test, run.iteration), run)
    out = []
    for test in request.tests:
        for i in range(1, request.iterations + 1):
            out.append(seen.get((test, i)) or Run(test=test, iteration=i, outcome=Outcome.INFRA, reason=why))
    return out


class Dispatcher:
    """Keeps requests in flight on one executor and ingests what finishes."""

    def __init__(self, store: Store, executor: Executor, *, slow_threshold_s: float,
                 campaign_id: Optional[int] = None, poll_seconds: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.store = store
        self.executor = executor
        self.slow_threshold_s = slow_threshold_s
        self.campaign_id = campaign_id
        self.poll_seconds = poll_seconds
        self.sleep = sleep
        self.in_flight: list[InFlight] = []
        # Called on every poll tick (a campaign renews its lease here): a
        # build of hours must not let the campaign's lease run out.
        self.heartbeat: Callable[[], None] = lambda: None

    # -- submission -------------------------------------------------------

    def submit(self, request: RunRequest) -> InFlight:
        build_id = self.store.record_submission(request, self.executor.name, self.campaign_id)
        handle = self.executor.submit(request)
        self.store.update_build(build_id, status="queued", external_id=handle)
        item = InFlight(build_id, request, handle)
        self.in_flight.append(item)
        return item

    def resume(self, resubmit: bool = True) -> int:
        """Pick up requests a previous process recorded but never ingested:
        reattach where the executor can, else (with `resubmit`) send the same
        request again under its run id."""
        resumed = 0
        for b in self.store.pending_builds(self.campaign_id):
            self.heartbeat()
            request = RunRequest(b["run_id"], b["commit_sha"], tuple(b["tests"]), int(b["iterations"]),
                                 host=b.get("pinned_host") or None)
            if any(f.request.run_id == request.run_id for f in self.in_flight):
                continue
            handle = None
            reattach = getattr(self.executor, "reattach", None)
            if reattach is not None:
                handle = reattach(request, b.get("external_id"))
            if handle is None:
                if not resubmit:
                    continue
                handle = self.executor.submit(request)
            self.store.update_build(b["id"], status="queued", external_id=handle)
            self.in_flight.append(InFlight(b["id"], request, handle))
            resumed += 1
        return resumed

    def free_slots(self) -> int:
        return max(0, self.executor.slots() - len(self.in_flight))

    # -- completion -------------------------------------------------------

    def collect(self, wait: bool = True) -> list[Finished]:
        """Poll everything in flight; ingest finished builds. With `wait`, block
        (polling every poll_seconds) until at least one has finished."""
        while True:
            self.heartbeat()
            done: list[Finished] = []
            for item in list(self.in_flight):
                status = self.executor.poll(item.handle)
                if status.state in (BuildState.QUEUED, BuildState.RUNNING):
                    self._note_progress(item, status)
                    continue
                if _never_started(status) and item.resubmits < MAX_RESUBMITS:
                    # Cancelled in the queue: nothing ran, nothing to count. A
                    # pinned request goes to any host now: its host may be why
                    # it never started (gone, offline; it waits forever there).
                    item.resubmits += 1
                    unpin = item.request.host is not None
                    item.request = replace(item.request, host=None)
                    item.handle = self.executor.submit(item.request)
                    self.store.update_build(item.build_id, status="queued", external_id=item.handle, unpin=unpin)
                    continue
                done.append(self._ingest(item, status))
                self.in_flight.remove(item)
            if done or not wait or not self.in_flight:
                return done
            self.sleep(self.poll_seconds)

    def _note_progress(self, item: InFlight, status: BuildStatus) -> None:
        # Record build numbers and hosts as soon as they appear: a Jenkins
        # queue item expires minutes after it leaves the queue. external_id is
        # a handle by contract (executors/base.py), so it is followed from now on.
        if status.external_id and status.external_id != item.handle:
            item.handle = status.external_id
        seen = (status.state, status.external_id, status.host, status.url)
        if seen != item.last_seen and (status.external_id or status.host or status.url):
            item.last_seen = seen  # a run of hours is polled thousands of times: write changes only
            self.store.update_build(item.build_id, status=status.state.value,
                                    external_id=status.external_id, host=status.host, url=status.url)

    def _ingest(self, item: InFlight, status: BuildStatus) -> Finished:
        why = "build lost" if status.state is BuildState.LOST else f"no result in console (rc={status.rc})"
        try:
            tap = _InfraTap(self.executor.console(item.handle))
            parsed = list(spdklog.parse_lines(tap, slow_threshold_s=self.slow_threshold_s))
            if tap.reason:
                why = CANNOT_TEST + tap.reason
        except ExecutorError as exc:
            parsed, why = [], f"console unavailable: {exc}"
        runs = complete_runs(item.request, parsed, why)
        self.store.update_build(item.build_id, status=status.state.value, external_id=status.external_id,
                                url=status.url, host=status.host, rc=status.rc,
                                host_minutes=status.host_minutes, finished=True)
        added = self.store.ingest_runs(item.build_id, item.request.commit, runs, host=status.host)
        return Finished(item.build_id, item.request, status, runs, added)

    def cancel_all(self) -> None:
        for item in self.in_flight:
            try:
                self.executor.cancel(item.handle)
            except ExecutorError:
                pass  # best effort on abort; the build stays recorded as pending


def _never_started(status: BuildStatus) -> bool:
    """Lost while still queued (e.g. a Jenkins queue item cancelled): no build
    number was ever given, so no host ran anything."""
    return (status.state is BuildState.LOST and getattr(status, "queue_id", None) is not None
            and getattr(status, "build_number", 0) is None)
