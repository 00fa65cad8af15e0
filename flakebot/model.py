"""Plain data shared by every layer. No I/O here.

A Run is one iteration of one test at one commit; its Shutdowns are the
`vm_shutdown_all` calls it made. The outcomes:
pass, slow (passed, but a shutdown waited >= the slow threshold), timeout,
fail (another failure), infra (no usable result; never test evidence).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

# The tests flakebot knows, with the script each runs (docs/spdk.md).
KNOWN_TESTS: dict[str, str] = {
    "vfio_user_nvme_restart_vm": "test/vfio_user/nvme/vfio_user_restart_vm.sh",
    "vfio_user_virtio_blk_restart_vm": "test/vfio_user/virtio/fio_restart_vm.sh virtio_blk",
    "vfio_user_virtio_scsi_restart_vm": "test/vfio_user/virtio/fio_restart_vm.sh virtio_scsi",
}

DEFAULT_LIMIT_S = 90  # vm_shutdown_all's timeo since 53ca0afb57 (2023-07)
DEFAULT_SLOW_THRESHOLD_S = 60.0  # a pass whose worst wait reaches this is a near miss


class Outcome(str, enum.Enum):
    PASS = "pass"
    SLOW = "slow"
    TIMEOUT = "timeout"
    FAIL = "fail"
    INFRA = "infra"

    @property
    def is_evidence(self) -> bool:
        """Infra runs never enter the statistics."""
        return self is not Outcome.INFRA


# One fixed order everywhere (tables, text, charts, JSON key order).
OUTCOME_ORDER: tuple[str, ...] = tuple(o.value for o in Outcome)
# One word per idea for people: the stored value `slow` reads "near miss" in every
# table, text, comment and report (the JSON keeps the stored values).
OUTCOME_LABEL: dict[str, str] = {"pass": "pass", "slow": "near miss", "timeout": "timeout", "fail": "fail",
                                 "infra": "infra"}


def fmt_outcomes(counts: dict[str, int]) -> str:
    """Counts by outcome for a line of text, in the fixed order, zeros left out.

        >>> fmt_outcomes({"timeout": 1, "pass": 30, "slow": 2, "fail": 0})
        'pass 30, near miss 2, timeout 1'
    """
    known = [o for o in OUTCOME_ORDER if counts.get(o)]
    other = sorted(k for k, v in counts.items() if v and k not in OUTCOME_LABEL)
    return ", ".join(f"{OUTCOME_LABEL.get(o, o)} {counts[o]}" for o in known + other) or "no runs"


@dataclass(frozen=True)
class Shutdown:
    """One `vm_shutdown_all` call."""

    call_site: str  # "vfio_user_restart_vm.sh@54": calling script basename @ line
    waited_s: Optional[float]  # from "Waiting for VMs to shutdown..." to done/timeout
    limit_s: int  # `local timeo=N` in force
    timed_out: bool


@dataclass
class Run:
    """One iteration of one test, as parsed from a console log."""

    test: str
    iteration: int  # 1-based within the log
    outcome: Outcome
    rc: Optional[int] = None
    shutdowns: list[Shutdown] = field(default_factory=list)
    duration_s: Optional[float] = None  # START TEST to END TEST (or end of evidence)
    reason: str = ""  # short why, for fail/infra

    @property
    def worst_wait_s(self) -> Optional[float]:
        waits = [s.waited_s for s in self.shutdowns if s.waited_s is not None]
        return max(waits) if waits else None


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str = ""
    author: str = ""
    date: str = ""  # ISO 8601
    change_id: Optional[str] = None  # Gerrit Change-Id trailer
    paths: tuple[str, ...] = ()  # touched paths (first-parent diff)
    parents: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return self.sha[:10]


@dataclass(frozen=True)
class RunRequest:
    """Run `tests` `iterations` times at `commit`. run_id is unique per request
    (Jenkins merges identical queued items; we also key idempotency on it)."""

    run_id: str
    commit: str
    tests: tuple[str, ...]
    iterations: int
    host: Optional[str] = None  # run on this host only (it has the commit built); None = any host


class BuildState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # finished; console is complete
    LOST = "lost"  # executor lost it (cancelled, host gone); treat unfinished runs as infra


@dataclass
class BuildStatus:
    """What an executor knows about one submitted request."""

    state: BuildState
    host: Optional[str] = None
    url: Optional[str] = None
    rc: Optional[int] = None  # host script exit status when known
    host_minutes: float = 0.0  # host time spent (simulated or measured)
    external_id: Optional[str] = None  # e.g. Jenkins queue id / build number


class Verdict(str, enum.Enum):
    CULPRIT = "culprit"
    CULPRIT_RANGE = "culprit-range"  # one of a run of untestable commits or the testable one after them
    NO_REGRESSION = "no-regression"
    INCONCLUSIVE = "inconclusive"
