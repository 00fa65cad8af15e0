"""Executor `sim`: simulated SPDK hosts printing realistic console logs.

Simulated time only (no sleeping). A request is finished as soon as it is
submitted (after `polls_until_done` RUNNING polls, for tests of the polling
loop). Each request goes to its pinned host (`RunRequest.host`) or to the
least-loaded host (by simulated host minutes; ties to the lowest number).
Host time: `build_minutes` unless the host has the commit built (it keeps
its last `builds_kept` builds; None = all), plus `run_minutes` per iteration
actually run.

    >>> from flakebot.model import RunRequest
    >>> from flakebot.demo.hosts import Behaviour, Scenario
    >>> ex = SimExecutor(Scenario.constant(Behaviour(0.2, 0.3)), hosts=2)
    >>> h = ex.submit(RunRequest("r1", "a" * 40, ("vfio_user_nvme_restart_vm",), 3))
    >>> ex.poll(h).state.value, ex.poll(h).host
    ('done', 'sim-host-1')

Exit codes mirror the host script: 0 all passed, 1 some iteration failed.
An infra fault (Behaviour.p_infra, `fail_next()` or `infra_hook`) cuts the
console off mid-iteration and the request ends LOST (host gone, rc None).
A commit the scenario says cannot be tested (`Scenario.with_untestable`) ends
as the host script does: one `flakebot: infra: <reason>` line, exit 3, no
iteration run; it costs the build when the build is what fails (and leaves
nothing built), else CHECK_MINUTES.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from flakebot.executors.base import ExecutorError
from flakebot.model import BuildState, BuildStatus, KNOWN_TESTS, RunRequest
from flakebot.executors.runids import seed_key
from flakebot.demo.hosts import (
    ERAS,
    CannotTest,
    FORMATS,
    IterationTruth,
    Scenario,
    SimClock,
    _stable_int,
    cannot_test_lines,
    simulate,
)

CHECK_MINUTES = 0.5  # checkout and the host's checks before it gives up on a commit


@dataclass
class _Job:
    request: RunRequest
    host: str
    infra_at: Optional[tuple[int, int]]  # (test index, iteration) forced cut
    needs_build: bool = True
    truths: list[IterationTruth] = field(default_factory=list)
    rc: Optional[int] = None
    lost: bool = False
    cancelled: bool = False
    host_minutes: float = 0.0
    polls: int = 0
    cannot: Optional[CannotTest] = None


class SimExecutor:
    name = "sim"

    def __init__(
        self,
        scenario: Optional[Scenario] = None,
        *,
        hosts: int = 4,
        seed: int = 0,
        build_minutes: float = 10,
        run_minutes: float = 2,
        fmt: str = "jenkins",
        era: str = "2024",
        markers: bool = True,
        repo: Optional[str] = None,
        polls_until_done: int = 0,
        infra_hook: Optional[Callable[[RunRequest], bool]] = None,
        builds_kept: Optional[int] = None,
    ):
        """`scenario` says how each (test, commit) behaves; without one, `repo` (a git
        path) gives Scenario.from_repo(repo), else every commit is healthy.
        `infra_hook(request) -> True` forces an infra fault on that request."""
        if hosts < 1:
            raise ExecutorError("sim executor: hosts must be >= 1")
        if fmt not in FORMATS or era not in ERAS:
            raise ExecutorError(f"sim executor: fmt in {FORMATS}, era in {ERAS}")
        if scenario is None:
            scenario = Scenario.from_repo(repo) if repo else Scenario.constant()
        self.scenario = scenario
        self.hosts = [f"sim-host-{i + 1}" for i in range(hosts)]
        self.seed = seed
        self.build_minutes = float(build_minutes)
        self.run_minutes = float(run_minutes)
        self.fmt, self.era, self.markers = fmt, era, markers
        self.polls_until_done = polls_until_done
        self.infra_hook = infra_hook
        self._jobs: dict[str, _Job] = {}
        self._built: dict[str, list[str]] = {h: [] for h in self.hosts}
        self.builds_kept = builds_kept
        self._load: dict[str, float] = {h: 0.0 for h in self.hosts}
        self._force_infra = 0

    # ------------------------------------------------------------------ hooks
    def fail_next(self, n: int = 1) -> None:
        """Test hook: the next `n` submitted requests hit an infra fault."""
        self._force_infra += n

    def truth(self, handle: str) -> list[IterationTruth]:
        """What really happened in each iteration (for tests and benchmarks)."""
        return list(self._job(handle).truths)

    @property
    def host_minutes(self) -> dict[str, float]:
        return dict(self._load)

    # ------------------------------------------------------------------ interface
    def slots(self) -> int:
        return len(self.hosts)

    def submit(self, request: RunRequest) -> str:
        if request.run_id in self._jobs:  # idempotent on run_id: the same request only
            adopted = self._jobs[request.run_id].request
            if adopted != request:
                raise ExecutorError(f"sim executor: run id {request.run_id} already ran another request "
                                    f"({adopted.commit[:10]} {' '.join(adopted.tests)} x{adopted.iterations}); "
                                    f"not adopting it")
            return request.run_id
        for t in request.tests:
            if t not in KNOWN_TESTS:
                raise ExecutorError(f"sim executor: unknown test {t!r}")
        if request.iterations < 1:
            raise ExecutorError("sim executor: iterations must be >= 1")
        if request.host is not None and request.host not in self.hosts:
            raise ExecutorError(f"sim executor: no host {request.host!r}")
        host = request.host or min(self.hosts, key=lambda h: (self._load[h], self.hosts.index(h)))
        infra_at = None
        forced = False
        if self._force_infra > 0:
            self._force_infra -= 1
            forced = True
        elif self.infra_hook is not None and self.infra_hook(request):
            forced = True
        if forced:
            n = len(request.tests) * request.iterations
            k = _stable_int("infra", self.seed, seed_key(request.run_id)) % n
            infra_at = (k // request.iterations, k % request.iterations + 1)
        job = _Job(request, host, infra_at)
        self._run(job)
        self._jobs[request.run_id] = job
        self._load[host] += job.host_minutes
        return request.run_id

    def poll(self, handle: str) -> BuildStatus:
        job = self._job(handle)
        url = f"sim://{job.host}/{job.request.run_id}"
        if job.cancelled:
            return BuildStatus(BuildState.LOST, job.host, url, None, job.host_minutes, handle)
        if job.polls < self.polls_until_done:
            job.polls += 1
            state = BuildState.QUEUED if job.polls == 1 else BuildState.RUNNING
            return BuildStatus(state, job.host, url, None, 0.0, handle)
        state = BuildState.LOST if job.lost else BuildState.DONE
        return BuildStatus(state, job.host, url, job.rc, job.host_minutes, handle)

    def console(self, handle: str) -> Iterator[str]:
        job = self._job(handle)
        if job.cancelled:
            return
        for _truth, lines in self._simulate(job):
            yield from lines

    def cancel(self, handle: str) -> None:
        job = self._job(handle)
        if job.polls < self.polls_until_done:  # still "running": it never finishes
            job.cancelled = True

    # ------------------------------------------------------------------ internals
    def _job(self, handle: str) -> _Job:
        try:
            return self._jobs[handle]
        except KeyError:
            raise ExecutorError(f"sim executor: unknown handle {handle!r}") from None

    def _simulate(self, job: _Job, with_lines: bool = True) -> Iterator[tuple[Optional[IterationTruth], list[str]]]:
        req = job.request
        key = seed_key(req.run_id)  # not the database's instance id: one seed, one result anywhere
        clock = SimClock.seeded((self.seed, key), self.era)
        if job.cannot is not None:
            yield None, cannot_test_lines(req.commit, job.cannot, fmt=self.fmt, era=self.era, clock=clock,
                                          build_minutes=self.build_minutes)
            return
        if job.needs_build:  # the build runs first, on the same console
            clock.elapsed += self.build_minutes * 60
        for ti, test in enumerate(req.tests):
            behaviour = self.scenario.behaviour(test, req.commit)
            infra_at = job.infra_at[1] if job.infra_at and job.infra_at[0] == ti else None
            for truth, lines in simulate(test, req.commit, req.iterations, behaviour=behaviour, rng_seed=self.seed,
                                         fmt=self.fmt, era=self.era, markers=self.markers, run_id=req.run_id,
                                         clock=clock, infra_at=infra_at, lines=with_lines, seed_id=key):
                yield truth, lines
                if truth.rc is None:  # host lost: nothing after this
                    return

    def _run(self, job: _Job) -> None:
        req = job.request
        built = self._built[job.host]
        job.needs_build = req.commit not in built
        job.cannot = self.scenario.cannot_test(req.commit, req.tests)
        if job.cannot is not None:
            job.rc = 3
            job.host_minutes = self.build_minutes if job.cannot.build else CHECK_MINUTES
            return
        minutes = self.build_minutes if job.needs_build else 0.0
        rc = 0
        for truth, _lines in self._simulate(job, with_lines=False):
            job.truths.append(truth)
            minutes += self.run_minutes
            if truth.rc is None:
                job.lost = True
                rc = None
                break
            if truth.rc:
                rc = 1
        if req.commit in built:
            built.remove(req.commit)
        built.append(req.commit)
        if self.builds_kept is not None:
            del built[:-max(1, self.builds_kept)]
        job.rc = rc
        job.host_minutes = minutes
