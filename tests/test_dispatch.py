"""Dispatcher: every requested iteration is accounted for, a queue item
cancelled before it ran is sent again, a request outliving many polls is
followed by the handle its executor gives, and nothing is ingested twice."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest

from flakebot.campaigns.dispatch import Dispatcher, complete_runs
from flakebot.executors.sim import SimExecutor
from flakebot.model import BuildState, BuildStatus, Outcome, Run, RunRequest
from flakebot.store import Store

SHA = "ab" * 20
TEST = "vfio_user_nvme_restart_vm"


def test_complete_runs_fills_gaps_with_infra():
    req = RunRequest("r1", SHA, (TEST, "vfio_user_virtio_blk_restart_vm"), 3)
    parsed = [Run(TEST, 1, Outcome.PASS), Run(TEST, 3, Outcome.TIMEOUT),
              Run("some_other_test", 1, Outcome.FAIL), Run(TEST, 9, Outcome.PASS)]
    runs = complete_runs(req, parsed, "host lost")
    assert [(r.test, r.iteration, r.outcome.value) for r in runs] == [
        (TEST, 1, "pass"), (TEST, 2, "infra"), (TEST, 3, "timeout"),
        ("vfio_user_virtio_blk_restart_vm", 1, "infra"), ("vfio_user_virtio_blk_restart_vm", 2, "infra"),
        ("vfio_user_virtio_blk_restart_vm", 3, "infra")]
    assert all(r.reason == "host lost" for r in runs if r.outcome is Outcome.INFRA)


@dataclass
class QueuedStatus(BuildStatus):
    queue_id: Optional[int] = None
    build_number: Optional[int] = None


class CancelsFirstQueueItem(SimExecutor):
    """A sim whose first submission is cancelled while queued, as Jenkins
    reports a cancelled queue item (no build number)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.submissions = 0
        self.first: Optional[str] = None

    def submit(self, request):
        self.submissions += 1
        handle = super().submit(request)
        if self.first is None:
            self.first = f"cancelled-{handle}"
            return self.first
        return handle

    def poll(self, handle):
        if handle == self.first:
            return QueuedStatus(BuildState.LOST, queue_id=7, build_number=None)
        return super().poll(handle)


def test_cancelled_queue_item_is_resubmitted_not_counted(tmp_path):
    ex = CancelsFirstQueueItem(hosts=1)
    with Store(tmp_path / "f.db") as store:
        d = Dispatcher(store, ex, slow_threshold_s=60.0)
        d.submit(RunRequest("r1", SHA, (TEST,), 4))
        done = d.collect(wait=True)
        assert ex.submissions == 2
        (f,) = done
        assert f.added == 4 and all(r.outcome is not Outcome.INFRA for r in f.runs)
        assert len(store.builds()) == 1 and store.builds()[0]["status"] == "ingested"


def test_lost_build_keeps_finished_iterations(tmp_path):
    ex = SimExecutor(hosts=1)
    ex.fail_next(1)
    with Store(tmp_path / "f.db") as store:
        d = Dispatcher(store, ex, slow_threshold_s=60.0)
        d.submit(RunRequest("r1", SHA, (TEST,), 6))
        (f,) = d.collect(wait=True)
        assert len(f.runs) == 6
        outcomes = [r.outcome for r in f.runs]
        assert Outcome.INFRA in outcomes
        # infra only from the cut onwards: what finished before it is kept
        first_infra = outcomes.index(Outcome.INFRA)
        assert all(o is Outcome.INFRA for o in outcomes[first_infra:])


def test_resume_reuses_the_request_and_ingests_once(tmp_path):
    with Store(tmp_path / "f.db") as store:
        d = Dispatcher(store, SimExecutor(hosts=2), slow_threshold_s=60.0)
        d.submit(RunRequest("r1", SHA, (TEST,), 3))
        # the process dies here; a new one resumes
        d2 = Dispatcher(store, SimExecutor(hosts=2), slow_threshold_s=60.0)
        assert d2.resume() == 1 and d2.resume() == 0
        d2.collect(wait=True)
        assert len(store.runs()) == 3
        assert store.builds()[0]["run_id"] == "r1"


def test_resume_keeps_the_request_pinned_to_its_host(tmp_path):
    with Store(tmp_path / "f.db") as store:
        d = Dispatcher(store, SimExecutor(hosts=4), slow_threshold_s=60.0)
        d.submit(RunRequest("r1", SHA, (TEST,), 2, host="sim-host-3"))
        d.submit(RunRequest("r2", SHA, (TEST,), 2))
        # the process dies here; a new one (no reattach in the sim) resubmits both
        d2 = Dispatcher(store, SimExecutor(hosts=4), slow_threshold_s=60.0)
        assert d2.resume() == 2
        assert {f.request.run_id: f.request.host for f in d2.in_flight} == {"r1": "sim-host-3", "r2": None}
        while d2.in_flight:
            d2.collect(wait=True)
        hosts = {b["run_id"]: b["host"] for b in store.builds()}
        assert hosts["r1"] == "sim-host-3" and hosts["r2"] != "sim-host-3"


class StrictSlowExecutor(SimExecutor):
    """Runs each request for `polls` polls. Answers LOST for any handle it did
    not issue (as a real backend would); with `moves`, the handle changes on
    the first poll (a Jenkins queue item becoming a build)."""

    def __init__(self, polls: int, moves: bool = False):
        super().__init__(hosts=1)
        self.polls, self.moves = polls, moves
        self.valid: dict[str, str] = {}  # handle -> sim handle
        self.seen: dict[str, int] = {}
        self.polled_handles: list[str] = []

    def submit(self, request):
        inner = super().submit(request)
        self.valid[f"queue:{inner}"] = inner
        self.seen[inner] = 0
        return f"queue:{inner}"

    def poll(self, handle):
        self.polled_handles.append(handle)
        inner = self.valid.get(handle)
        if inner is None:
            return BuildStatus(BuildState.LOST, external_id=handle)
        self.seen[inner] += 1
        if self.seen[inner] <= self.polls:
            new = handle
            if self.moves:
                new = f"build:{inner}"
                self.valid[new] = inner
            return BuildStatus(BuildState.RUNNING, host="h1", external_id=new)
        st = super().poll(inner)
        return BuildStatus(st.state, st.host, st.url, st.rc, st.host_minutes, handle)

    def console(self, handle):
        return super().console(self.valid[handle])


class CountingStore(Store):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.updates = 0

    def update_build(self, *a, **kw):
        self.updates += 1
        return super().update_build(*a, **kw)


@pytest.mark.parametrize("moves", [False, True])
def test_request_outliving_many_polls_is_followed_by_its_handle(tmp_path, moves):
    ex = StrictSlowExecutor(polls=6, moves=moves)
    with CountingStore(tmp_path / "f.db") as store:
        d = Dispatcher(store, ex, slow_threshold_s=60.0, poll_seconds=0.0)
        d.submit(RunRequest("r1", SHA, (TEST,), 3))
        before = store.updates
        (f,) = d.collect(wait=True)
        assert f.status.state is BuildState.DONE
        assert [r.outcome for r in f.runs].count(Outcome.INFRA) == 0 and f.added == 3
        assert len(ex.polled_handles) == 7
        assert all(h in ex.valid for h in ex.polled_handles)
        if moves:
            assert ex.polled_handles[1:] == [ex.polled_handles[1]] * 6 and ex.polled_handles[1].startswith("build:")
            assert store.builds()[0]["external_id"] == ex.polled_handles[1]
        # six RUNNING polls with nothing new are one store write, plus the final one
        assert store.updates - before == 2
