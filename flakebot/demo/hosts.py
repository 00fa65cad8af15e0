"""Simulated SPDK hosts: realistic console logs of the vfio-user restart tests.

Pure and deterministic: no I/O, no sleeping, no global RNG. The same
(seed, run_id, test, commit) always gives the same log. Formats follow
the sample logs in tests/fixtures/spdk-logs (docs/spdk.md):

- ``fmt``: ``jenkins`` (Timestamper elapsed prefix ``HH:MM:SS.mmm  ``),
  ``gha`` (``2026-09-17T03:25:48.5680391Z ``) or ``plain`` (no prefix).
- ``era``: ``2023`` (PS4 before 2024-04, old ``while [[ $timeo -gt 0 ]]`` loop
  whose timeout dies under errexit at ``(( timeo -= 1 ))`` + ``err_clean``),
  ``2024`` (PS4 with test domain, ``local timeo=90 vms vm`` loop, bash ``time``
  output before END TEST), ``2025`` (``+`` PS4, repo-root paths, ``END TEST
  name (in Ns)``, banner names wrapped in ANSI colours), ``2026`` (as 2025,
  colours off: ``AUTOTEST_COLORS_ENABLED=no``, like the GHA sample).

Example::

    >>> from flakebot.demo.hosts import Behaviour, console_lines, simulate
    >>> lines = list(console_lines("vfio_user_nvme_restart_vm", "a" * 40, 2,
    ...                            behaviour=Behaviour(0.5, 0.2), rng_seed=1))
    >>> lines[0].endswith("FLAKEBOT-ITERATION-START test=vfio_user_nvme_restart_vm iteration=1 run_id=")
    True

`simulate` yields ``(IterationTruth, lines)`` per iteration so tests can check a
parser against the truth. ``python -m flakebot.demo.hosts --help`` prints one log.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

from flakebot.model import DEFAULT_LIMIT_S, DEFAULT_SLOW_THRESHOLD_S, KNOWN_TESTS, Outcome

FORMATS = ("jenkins", "gha", "plain")
ERAS = ("2023", "2024", "2025", "2026")

NVME_TEST = "vfio_user_nvme_restart_vm"
NVME_SCRIPT = "test/vfio_user/nvme/vfio_user_restart_vm.sh"
VIRTIO_SCRIPT = "test/vfio_user/virtio/fio_restart_vm.sh"

STAR = "*" * 36
_VM_DIR = "/root/vhost_test/vms/1"
_WORKSPACE = {
    "jenkins": "/var/jenkins/workspace/vfio-user-phy-autotest/spdk",
    "gha": "/home/runner/_work/spdk-ci/spdk-ci/spdk",
    "plain": "/root/spdk",
}
_ERA_START_DATE = {"2023": "2023-10-11", "2024": "2024-09-03", "2025": "2025-12-02", "2026": "2026-09-17"}


# --------------------------------------------------------------------------- behaviour


@dataclass(frozen=True)
class Behaviour:
    """Per-iteration probabilities (mutually exclusive; the rest is a clean pass).

    p_hang: the second vm_shutdown_all passes its 90 s limit (timeout);
    p_near_miss: it finishes late (~70-89 s, systemd's 10 s stop-job steps);
    p_fail: an unrelated failure (boot timeout, fio error; no END TEST);
    p_infra: the host is lost: the log is cut off mid-iteration.
    """

    p_hang: float
    p_near_miss: float
    p_fail: float = 0.0
    p_infra: float = 0.0

    def __post_init__(self) -> None:
        ps = (self.p_hang, self.p_near_miss, self.p_fail, self.p_infra)
        if any(p < 0 or p > 1 for p in ps) or sum(ps) > 1 + 1e-9:
            raise ValueError(f"bad Behaviour probabilities {ps}: each in [0,1], sum <= 1")


HEALTHY = Behaviour(0.0, 0.0)


@dataclass(frozen=True)
class CannotTest:
    """Why no host can test a commit: the reason the host script prints on its
    `flakebot: infra: <reason>` line before it exits 3. `build`: it gives up
    after building (a failed build costs the build time); else in the checks
    before it (no such test, no QEMU of the right kind, ...)."""

    reason: str
    build: bool = False


def untestable_commits(commits: Iterable[Any], *, oldest: float = 0.0, scattered: float = 0.0,
                       build_fails: Iterable[Any] = (), seed: int = 0,
                       reason: str = "no test/vfio_user/nvme/vfio_user_restart_vm.sh at this commit"
                       ) -> dict[str, CannotTest]:
    """Which commits of a range (oldest first) cannot be tested: the oldest
    `oldest` fraction (an era boundary), a `scattered` fraction drawn from the
    rest (never the last commit), and `build_fails` (their build fails)."""
    shas = [_sha(c) for c in commits]
    out: dict[str, CannotTest] = {}
    cut = int(round(oldest * len(shas)))
    for sha in shas[:cut]:
        out[sha] = CannotTest(reason)
    rest = shas[cut:-1]
    k = int(round(scattered * len(shas)))
    if k:
        for sha in random.Random(_stable_int("untestable", seed)).sample(rest, min(k, len(rest))):
            out[sha] = CannotTest("VFIO_QEMU_BIN is not the QEMU this commit's test/vhost/common.sh needs")
    for c in build_fails:
        sha = _sha(c)
        out[sha] = CannotTest(f"build of {sha} failed", build=True)
    return out


class Scenario:
    """Which Behaviour each (test, commit) has. Build one with a constructor below."""

    def __init__(self, fn: Callable[[str, str], Behaviour],
                 cannot: Optional[Callable[[str, str], Optional[CannotTest]]] = None):
        self._fn = fn
        self._cannot = cannot

    def behaviour(self, test: str, sha: str) -> Behaviour:
        return self._fn(test, sha)

    def cannot_test(self, sha: str, tests: Iterable[str] = (NVME_TEST,)) -> Optional[CannotTest]:
        """Why no host can run `tests` at `sha` (None: every host can)."""
        if self._cannot is None:
            return None
        for test in tests:
            why = self._cannot(test, sha)
            if why is not None:
                return why
        return None

    def with_untestable(self, untestable: dict[str, CannotTest]) -> "Scenario":
        """The same behaviours, with these commits untestable on every host,
        whatever the test (see `untestable_commits`)."""
        table = dict(untestable)
        before = self._cannot

        def cannot(test: str, sha: str) -> Optional[CannotTest]:
            return table.get(sha) or (before(test, sha) if before is not None else None)

        return Scenario(self._fn, cannot)

    @classmethod
    def constant(cls, behaviour: Behaviour = HEALTHY) -> "Scenario":
        return cls(lambda test, sha: behaviour)

    @classmethod
    def by_culprit(
        cls,
        commits: Iterable[Any],
        culprit: Optional[Any],
        before: Behaviour,
        after: Behaviour,
        *,
        tests: Optional[Iterable[str]] = None,
        unknown: str = "before",
    ) -> "Scenario":
        """commits oldest first (shas, or objects with a `.sha` such as model.Commit);
        the culprit and every later commit behave `after`. `tests` limits the change
        to those tests (others stay `before`); None = all. A commit not in the list
        (e.g. the `good` end of a good..bad range) behaves `before`, or raises
        KeyError with unknown="error"."""
        if unknown not in ("before", "error"):
            raise ValueError("unknown must be 'before' or 'error'")
        index = {_sha(c): i for i, c in enumerate(commits)}
        culprit = None if culprit is None else _sha(culprit)
        if culprit is not None and culprit not in index:
            raise ValueError(f"culprit {culprit} not in commits")
        cut = index[culprit] if culprit is not None else len(index)
        affected = None if tests is None else frozenset(tests)

        def fn(test: str, sha: str) -> Behaviour:
            i = index.get(sha)
            if i is None:
                if unknown == "error":
                    raise KeyError(f"commit {sha} is not in this scenario")
                return before
            if affected is not None and test not in affected:
                return before
            return after if i >= cut else before

        return cls(fn)

    @classmethod
    def from_tree(
        cls,
        show_file: Callable[[str, str], Optional[str]],
        *,
        healthy: Behaviour = HEALTHY,
        prone: Behaviour = Behaviour(0.15, 0.30),
    ) -> "Scenario":
        """Derive behaviour from the tree (#3322 shape, docs/spdk.md).

        The nvme test is healthy at a commit whose vfio_user_restart_vm.sh removes the
        namespace (`nvmf_subsystem_remove_ns`) before the listener
        (`nvmf_subsystem_remove_listener`), or never removes the listener; otherwise it
        is `prone`. A commit without the script cannot run the test: the host
        says so (`cannot_test`, as the host script's `flakebot: infra:` line);
        asked anyway, its behaviour is p_fail=1. The virtio tests are `healthy`
        at every commit. `show_file(sha, path)` returns the file's text or None."""
        cache: dict[str, Behaviour] = {}
        missing = Behaviour(0.0, 0.0, p_fail=1.0)
        no_script = CannotTest(f"no {NVME_SCRIPT} at this commit")

        def fn(test: str, sha: str) -> Behaviour:
            if test != NVME_TEST:
                return healthy
            if sha not in cache:
                text = show_file(sha, NVME_SCRIPT)
                if text is None:
                    cache[sha] = missing
                else:
                    cache[sha] = healthy if nvme_script_is_healthy(text) else prone
            return cache[sha]

        def cannot(test: str, sha: str) -> Optional[CannotTest]:
            return no_script if fn(test, sha) is missing else None

        return cls(fn, cannot)

    @classmethod
    def from_repo(cls, path: str, **kw) -> "Scenario":
        """`from_tree` over a local git repository (GitPython)."""
        import git  # local import: sim itself needs no git

        repo = git.Repo(path)

        def show(sha: str, p: str) -> Optional[str]:
            try:
                return repo.git.show(f"{sha}:{p}")
            except git.GitCommandError:
                return None

        return cls.from_tree(show, **kw)


def _sha(c: Any) -> str:
    return c if isinstance(c, str) else c.sha


def nvme_script_is_healthy(text: str) -> bool:
    """True when remove_ns comes before remove_listener (or no listener is removed)."""
    ns_at = listener_at = None
    for i, line in enumerate(text.splitlines()):
        s = line.strip()
        if s.startswith("#"):
            continue
        if ns_at is None and "nvmf_subsystem_remove_ns" in s:
            ns_at = i
        if listener_at is None and "nvmf_subsystem_remove_listener" in s:
            listener_at = i
    if listener_at is None:
        return True
    return ns_at is not None and ns_at < listener_at


# --------------------------------------------------------------------------- truth


@dataclass(frozen=True)
class ShutdownTruth:
    call_site: str  # "vfio_user_restart_vm.sh@54"
    waited_s: float  # elapsed clock: "Waiting for VMs to shutdown..." -> done / gave up
    limit_s: int
    timed_out: bool


@dataclass(frozen=True)
class IterationTruth:
    test: str
    iteration: int
    kind: str  # pass | near_miss | hang | fail | infra
    outcome: Outcome  # as the parser should report it (slow threshold DEFAULT_SLOW_THRESHOLD_S)
    rc: Optional[int]  # None for infra (no END marker)
    shutdowns: tuple[ShutdownTruth, ...] = ()
    duration_s: float = 0.0  # START TEST to END TEST (or end of evidence)
    reason: str = ""

    @property
    def worst_wait_s(self) -> Optional[float]:
        return max((s.waited_s for s in self.shutdowns), default=None)


# --------------------------------------------------------------------------- clock & writer


@dataclass
class SimClock:
    """Simulated time: `elapsed` seconds since build start (Jenkins prefix);
    `wall0` the wall clock (seconds since the epoch, UTC) at elapsed 0."""

    elapsed: float
    wall0: float

    @classmethod
    def seeded(cls, seed: object, era: str = "2024") -> "SimClock":
        r = random.Random(_stable_int("clock", seed))
        day = _dt.datetime.fromisoformat(_ERA_START_DATE.get(era, "2024-09-03")).replace(tzinfo=_dt.timezone.utc)
        start = day.timestamp() + r.randrange(0, 86400 - 3 * 3600)
        elapsed = r.randrange(60, 1200)  # the build and earlier tests ran first
        return cls(elapsed=float(elapsed), wall0=float(start - elapsed))


class _Writer:
    """Formats lines with the CI prefix and PS4 for one test."""

    __slots__ = ("fmt", "era", "clock", "rng", "lines", "quiet", "_ps4", "_ps4n", "_day", "_daystr", "_wall_int",
                 "_head", "_psec", "_pstr", "_tails", "common", "script", "test_label")

    def __init__(self, fmt: str, era: str, clock: SimClock, rng: random.Random, test: str, script: str):
        self.fmt, self.era, self.clock, self.rng = fmt, era, clock, rng
        self.lines: list[str] = []
        self.quiet = False  # truth only: draw the same random numbers, format nothing
        self._day = -1
        self._daystr = ""
        self._wall_int = -1
        self._head = ("", "")
        self._psec = -1
        self._pstr = ""
        self._tails: dict[tuple[str, str], str] = {}
        domain = f"vfio_user_qemu.{test}"
        if era == "2023":
            self.common = "vhost/common.sh"
            self.script = script.split("test/vfio_user/", 1)[1]
            self._ps4 = " {t}\t-- "
            self._ps4n = "  {t}\t-- "
        elif era == "2024":
            self.common = "vhost/common.sh"
            self.script = script.split("test/vfio_user/", 1)[1]
            self._ps4 = " {t} " + domain + " -- "
            self._ps4n = "  {t} " + domain + " -- "
        else:
            self.common = "test/vhost/common.sh"
            self.script = script
            self._ps4 = "+ {t} " + domain + " -- "
            self._ps4n = "++ {t} " + domain + " -- "
        self.test_label = domain

    # -- time
    def tick(self, lo: float = 0.0, hi: float = 0.004) -> None:
        self.clock.elapsed += lo + (hi - lo) * self.rng.random()

    def _prefix(self) -> str:
        fmt = self.fmt
        if fmt == "plain":
            return ""
        e = self.clock.elapsed
        if fmt == "jenkins":
            s, ms = divmod(int(e * 1000), 1000)
            if s != self._psec:
                self._psec = s
                m, sec = divmod(s, 60)
                h, m = divmod(m, 60)
                self._pstr = f"{h:02d}:{m:02d}:{sec:02d}."
            return f"{self._pstr}{ms:03d}  "
        w0 = self.clock.wall0
        w0i = int(w0)  # keep the big part out of the float multiply (100 ns resolution)
        secs, frac = divmod(w0i * 10_000_000 + int((w0 - w0i + e) * 10_000_000), 10_000_000)
        if secs != self._psec:
            self._psec = secs
            day, sod = divmod(secs, 86400)
            if day != self._day:
                self._day = day
                self._daystr = _dt.datetime.fromtimestamp(day * 86400, _dt.timezone.utc).strftime("%Y-%m-%d")
            h, rem = divmod(sod, 3600)
            m, sec = divmod(rem, 60)
            self._pstr = f"{self._daystr}T{h:02d}:{m:02d}:{sec:02d}."
        return f"{self._pstr}{frac:07d}Z "

    def _heads(self) -> tuple[str, str]:
        """PS4 up to and including the wall clock, (level 1, level 2)."""
        w = int(self.clock.wall0 + self.clock.elapsed)
        if w != self._wall_int:
            self._wall_int = w
            sod = w % 86400  # the xtrace clock wraps at midnight
            h, rem = divmod(sod, 3600)
            m, s = divmod(rem, 60)
            t = f"{h:02d}:{m:02d}:{s:02d}"
            self._head = (self._ps4.format(t=t), self._ps4n.format(t=t))
        return self._head

    # -- lines
    def out(self, text: str) -> None:
        if self.quiet:
            return
        self.lines.append(self._prefix() + text)

    def x(self, where: str, cmd: str, nested: bool = False) -> None:
        """One xtrace line: `where` is 'common@496' or 'script@36'."""
        if self.quiet:
            return
        key = (where, cmd)
        tail = self._tails.get(key)
        if tail is None:
            src, _, lineno = where.partition("@")
            path = self.common if src == "common" else self.script
            if self.era in ("2025", "2026"):
                tail = f"{path}@{lineno}: {cmd}"
            else:
                tail = f"{path}@{lineno} -- # {cmd}"
            self._tails[key] = tail
        self.lines.append(self._prefix() + self._heads()[nested] + tail)


# --------------------------------------------------------------------------- test bodies


@dataclass(frozen=True)
class _TestShape:
    script: str
    arg: str
    lsblk: str
    lines: dict = field(default_factory=dict)


def _shape(test: str, era: str) -> _TestShape:
    old = era == "2023"  # older commits differ by a line (docs/spdk.md)
    d = -1 if old else 0
    if test == NVME_TEST:
        return _TestShape(NVME_SCRIPT, "", "nvme0n1 259:0    0   32M  0 disk", {
            "init": 12, "run1": 28 + d, "boot1": 29 + d, "lsblk1": 30 + d, "sd1": 36 + d,
            "run2": 46 + d, "boot2": 47 + d, "lsblk2": 48 + d, "rpc": 50 + d, "sd2": 54 + d, "fini": 58 + d,
            "fio": None})
    if test.startswith("vfio_user_virtio_"):
        kind = test[len("vfio_user_"):-len("_restart_vm")]  # virtio_blk / virtio_scsi
        lsblk = "vda     253:0    0    1G  0 disk" if kind == "virtio_blk" else "sda       8:0    0    1G  0 disk"
        return _TestShape(VIRTIO_SCRIPT, kind, lsblk, {
            "init": 12, "run1": 70 + d, "boot1": 71 + d, "lsblk1": 72 + d, "sd1": 78 + d,
            "run2": 89 + d, "boot2": 90 + d, "lsblk2": 91 + d, "rpc": None, "fio": 93 + d, "sd2": 97 + d,
            "fini": 101 + d})
    raise ValueError(f"unknown test {test!r}; known: {', '.join(KNOWN_TESTS)}")


def _boot(w: _Writer, s: _TestShape, n: int, *, fail: bool = False) -> bool:
    L = s.lines
    w.x(f"script@{L[f'run{n}']}", "vm_run 1")
    w.tick()
    w.out(f"INFO: running {_VM_DIR}/run.sh")
    w.x(f"script@{L[f'boot{n}']}", "vm_wait_for_boot 60 1")
    w.tick()
    w.out("INFO: Waiting for VMs to boot")
    w.out(f"INFO: waiting for VM1 ({_VM_DIR})")
    if fail:
        w.tick(60.0, 60.5)
        w.out("===========")
        w.out("ERROR: timeout waiting for machines to boot")
        w.out("===========")
        w.tick()
        return False
    w.tick(16.0, 25.0)
    w.out("INFO: VM1 ready")
    w.out("INFO: all VMs ready")
    w.x(f"script@{L[f'lsblk{n}']}", "vm_exec 1 lsblk")
    w.tick()
    w.out("NAME    MAJ:MIN RM  SIZE RO TYPE MOUNTPOINTS")
    w.out(s.lsblk)
    return True


def _shutdown(w: _Writer, site_line: int, exit_after: Optional[float]) -> tuple[float, bool]:
    """Emit one vm_shutdown_all; QEMU exits `exit_after` s after the wait starts
    (None: never within the limit). Returns (waited_s, timed_out)."""
    era2023 = w.era == "2023"
    w.x(f"script@{site_line}", "vm_shutdown_all")
    w.tick()
    if era2023:
        w.x("common@483", "local vms")
        w.tick()
        w.x("common@484", "vm_list_all", nested=True)
        w.tick()
        w.x("common@484", "vms=1")
        w.x("common@485", "local vm")
        w.x("common@487", "for vm in $vms")
        w.tick()
        w.x("common@488", "vm_shutdown 1")
    else:
        w.x("common@487", "local timeo=90 vms vm")
        w.tick()
        w.x("common@489", "vm_list_all", nested=True)
        w.tick()
        w.x("common@489", "vms=($(vm_list_all))")
        w.tick()
        w.x("common@492", "vm_shutdown 1")
    w.tick()
    w.x("common@424", f"notice 'Shutting down virtual machine {_VM_DIR}'")
    w.tick()
    w.out(f"INFO: Shutting down virtual machine {_VM_DIR}")
    w.x("common@426", "vm_exec 1 'nohup sh -c '\\''shutdown -h -P now'\\'''")
    w.tick()
    w.out("Warning: Permanently added '[127.0.0.1]:10100' (ED25519) to the list of known hosts.")
    w.tick(0.2, 0.55)
    w.out("INFO: VM1 is shutting down - wait a while to complete")
    w.out("INFO: Waiting for VMs to shutdown...")
    t0 = w.clock.elapsed
    limit = DEFAULT_LIMIT_S
    deadline = float("inf") if exit_after is None else t0 + exit_after
    x = w.x
    tick = w.tick
    if era2023:
        x("common@492", f"local timeo={limit}")
        timeo = limit
        while True:
            x("common@493", f"[[ {timeo} -gt 0 ]]")
            x("common@494", "local all_vms_down=1")
            x("common@495", "for vm in $vms")
            tick()
            x("common@496", "vm_is_running 1")
            tick()
            if w.clock.elapsed < deadline:
                x("common@373", "return 0", nested=True)
                x("common@497", "all_vms_down=0")
                x("common@498", "break")
                x("common@502", "[[ 0 == 1 ]]")
                tick()
                x("common@508", "(( timeo -= 1 ))")
                timeo -= 1
                if timeo == 0:
                    tick()
                    waited = w.clock.elapsed - t0
                    x("common@508", "err_clean vm_shutdown_all 508", nested=True)
                    return waited, True
                x("common@509", "sleep 1")
                tick(1.0, 1.015)
            else:
                x("common@366", "return 1", nested=True)
                x("common@495", "for vm in $vms")
                x("common@502", "[[ 1 == 1 ]]")
                tick()
                x("common@503", "notice 'All VMs successfully shut down'")
                tick()
                w.out("INFO: All VMs successfully shut down")
                waited = w.clock.elapsed - t0
                x("common@504", "xtrace_restore")
                x("common@505", "return 0")
                return waited, False
    timeo = limit
    while True:
        if timeo <= 0:  # loop condition fails with the VM still there
            x("common@503", "(( 1 == 0 ))")
            tick()
            x("common@508", "warning 'Not all VMs were shut down. Leftovers: 1'")
            tick()
            w.out("WARN: Not all VMs were shut down. Leftovers: 1")
            waited = w.clock.elapsed - t0
            return waited, True
        timeo -= 1
        x("common@496", "(( timeo-- > 0 && 1 > 0 ))")
        tick()
        x("common@498", "vm_is_running 1")
        tick()
        if w.clock.elapsed < deadline:
            x("common@373", "return 0", nested=True)
            tick()
            x("common@500", "sleep 1")
            tick(1.004, 1.016)
            continue
        x("common@366", "return 1", nested=True)
        tick()
        x("common@498", "unset -v 'vms[vm]'")
        tick()
        x("common@500", "sleep 1")
        tick(1.004, 1.016)
        x("common@496", "(( timeo-- > 0 && 0 > 0 ))")
        tick()
        x("common@503", "(( 0 == 0 ))")
        tick()
        w.out("INFO: All VMs successfully shut down")
        waited = w.clock.elapsed - t0
        x("common@505", "return 0")
        tick()
        return waited, False


def _backtrace(w: _Writer, s: _TestShape, line: int, inner: Optional[str] = None) -> None:
    base = _WORKSPACE[w.fmt]
    w.tick()
    if w.era in ("2023", "2024"):
        w.out("========== Backtrace start: ==========")
    else:
        w.out(f"========== BACKTRACE START: (caught in {base}/{s.script}) ==========")
    w.out("")
    if inner:
        w.out(inner)
    args = f"[{s.arg}]" if s.arg else "[]"
    w.out(f"in {base}/{s.script}:{line} -> main({args})")


def _vm_log_dump(w: _Writer) -> None:
    w.out("WARN: ================")
    w.out("WARN: QEMU LOG:")
    w.out(f"qemu-system-x86_64: terminating on signal 15 from pid {w.rng.randrange(1000000, 4000000)}")
    w.out("WARN: VM LOG:")
    w.out("[  OK  ] Stopped target Local File Systems.")
    w.out("         Stopping lvm2-monitor.service - Monitoring of LVM2 mirrors...")
    w.out("[  ***] A stop job is running for Monitoring of LVM2 mirrors (1min 20s / 1min 30s)")
    w.out("WARN: SEABIOS LOG:")
    w.out("WARN: ================")


def _color(era: str, name: str) -> str:
    return f"\x1b[1;34m{name}\x1b[0m" if era == "2025" else name


def _exit_after(rng: random.Random, kind: str) -> Optional[float]:
    if kind == "hang":
        return None
    if kind == "near_miss":
        # systemd stop jobs wait in 10 s steps (DefaultTimeoutStopSec=10): 1 + 10k + jitter
        k = rng.choice((7, 8))
        t = 1 + 10 * k + rng.uniform(-0.6, 0.6) + abs(rng.gauss(0.0, 1.2))
        return min(t, 87.0)
    return rng.uniform(1.0, 5.0)  # healthy: QEMU exits after a few seconds


def _draw_kind(rng: random.Random, b: Behaviour) -> str:
    u = rng.random()
    for kind, p in (("infra", b.p_infra), ("hang", b.p_hang), ("near_miss", b.p_near_miss), ("fail", b.p_fail)):
        if u < p:
            return kind
        u -= p
    return "pass"


def simulate_iteration(
    w: _Writer, test: str, iteration: int, kind: str, *, markers: bool, run_id: str
) -> IterationTruth:
    """Append one iteration's lines to `w.lines` (an infra cut is applied by the caller);
    return its truth. `kind`: pass | near_miss | hang | fail | infra."""
    rng = w.rng
    s = _shape(test, w.era)
    L = s.lines
    base_kind = "pass" if kind == "infra" else kind
    if markers:
        w.out(f"FLAKEBOT-ITERATION-START test={test} iteration={iteration} run_id={run_id}")
        w.tick(0.001, 0.05)
    start = w.clock.elapsed
    w.out(STAR)
    w.out(f"START TEST {_color(w.era, test)}")
    w.out(STAR)
    w.x(f"script@{L['init']}", "vhosttestinit")
    w.tick()
    w.out("INFO: Testing vfio-user restart VM")
    w.tick(3.0, 4.0)
    shutdowns: list[ShutdownTruth] = []
    script_base = s.script.rsplit("/", 1)[1]
    _boot(w, s, 1)
    # first shutdown is always healthy; the second carries the behaviour
    waited, _ = _shutdown(w, L["sd1"], _exit_after(rng, "pass"))
    shutdowns.append(ShutdownTruth(f"{script_base}@{L['sd1']}", round(waited, 3), DEFAULT_LIMIT_S, False))
    fail_reason = ""
    if base_kind == "fail":
        fio = L["fio"] is not None and rng.random() < 0.5
        if not fio:
            _boot(w, s, 2, fail=True)
            fail_reason = "timeout waiting for machines to boot"
            w.x("common@330", "return 1", nested=True)
            _backtrace(w, s, L["boot2"])
        else:
            _boot(w, s, 2)
            w.x(f"script@{L['fio']}", f"vm_exec 1 'fio --name=restart --filename=/dev/{s.lsblk[:3]} --rw=randrw "
                                     "--bs=4k --runtime=10 --time_based'")
            w.tick(2.0, 10.0)
            w.out(f"fio: io_u error on file /dev/{s.lsblk[:3]}: Input/output error: read "
                  f"offset={rng.randrange(0, 262144) * 4096}, buflen=4096")
            w.out("===========")
            w.out("ERROR: FIO failed")
            w.out("===========")
            fail_reason = "fio failed"
            _backtrace(w, s, L["fio"])
        rc = 1
        outcome = Outcome.FAIL
    else:
        _boot(w, s, 2)
        if L["rpc"] is not None:
            w.x(f"script@{L['rpc']}", "rpc_cmd nvmf_subsystem_remove_listener nqn.2019-07.io.spdk:cnode1 -t vfiouser")
            w.tick()
        waited, timed_out = _shutdown(w, L["sd2"], _exit_after(rng, base_kind))
        shutdowns.append(ShutdownTruth(f"{script_base}@{L['sd2']}", round(waited, 3), DEFAULT_LIMIT_S, timed_out))
        if timed_out:
            if w.era == "2023":
                _backtrace(w, s, L["sd2"], inner=f"in {_WORKSPACE[w.fmt]}/test/vhost/common.sh:508 -> vm_shutdown_all([])")
            else:
                _vm_log_dump(w)
                w.x("common@512", "return 1")
                _backtrace(w, s, L["sd2"])
            rc = 1
            outcome = Outcome.TIMEOUT
        else:
            w.x(f"script@{L['fini']}", "vhosttestfini")
            w.tick()
            w.out(f"INFO: killing vhost (PID {rng.randrange(100000, 4000000)}) app")
            w.tick(0.4, 1.2)
            took = w.clock.elapsed - start
            if w.era in ("2023", "2024"):
                mins, secs = divmod(took, 60)
                w.out("")
                w.out(f"real\t{int(mins)}m{secs:06.3f}s")
                w.out(f"user\t0m{rng.uniform(3, 7):.3f}s")
                w.out(f"sys\t0m{rng.uniform(1.5, 4):.3f}s")
                w.out(STAR)
                w.out(f"END TEST {_color(w.era, test)}")
            else:
                w.out(STAR)
                w.out(f"END TEST {_color(w.era, test)} (in {int(took)}s)")
            w.out(STAR)
            rc = 0
            worst = max(sd.waited_s for sd in shutdowns)
            outcome = Outcome.SLOW if worst >= DEFAULT_SLOW_THRESHOLD_S else Outcome.PASS
    duration = w.clock.elapsed - start
    w.tick()
    if markers:
        w.out(f"FLAKEBOT-ITERATION-END test={test} iteration={iteration} rc={rc}")
    w.tick(0.5, 3.0)  # the host script cleans up between iterations
    if kind == "infra":
        return IterationTruth(test, iteration, "infra", Outcome.INFRA, None, (), round(duration, 3), "log cut off")
    return IterationTruth(test, iteration, kind, outcome, rc, tuple(shutdowns), round(duration, 3), fail_reason)


def simulate(
    test: str,
    commit: str,
    iterations: int,
    *,
    behaviour: Behaviour,
    rng_seed: int,
    fmt: str = "jenkins",
    era: str = "2024",
    markers: bool = True,
    run_id: str = "",
    clock: Optional[SimClock] = None,
    infra_at: Optional[int] = None,
    lines: bool = True,
    seed_id: Optional[str] = None,
) -> Iterator[tuple[IterationTruth, list[str]]]:
    """Yield (truth, lines) per iteration. An infra iteration (drawn with
    behaviour.p_infra, or forced by `infra_at`=iteration number) is cut off at a
    random line and is the last one yielded: the host is gone.
    `clock` is advanced in place (pass one SimClock to chain several tests).
    lines=False: the same truths, faster, with empty line lists.
    `seed_id` (default: `run_id`) is what the draws are seeded from; the
    markers print `run_id` (runids.seed_key: the same logs in any database)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}")
    if era not in ERAS:
        raise ValueError(f"era must be one of {ERAS}")
    if iterations < 0:
        raise ValueError("iterations must be >= 0")
    key = run_id if seed_id is None else seed_id
    rng = random.Random(_stable_int(rng_seed, key, test, commit))
    if clock is None:
        clock = SimClock.seeded((rng_seed, key, test, commit), era)
    w = _Writer(fmt, era, clock, rng, test, _shape(test, era).script)
    w.quiet = not lines
    for i in range(1, iterations + 1):
        kind = _draw_kind(rng, behaviour)
        if infra_at == i:
            kind = "infra"
        w.lines = []
        truth = simulate_iteration(w, test, i, kind, markers=markers, run_id=run_id)
        out = w.lines
        if kind == "infra":
            if out:
                out = out[:rng.randrange(1, max(2, len(out) - 2))]
            yield truth, out
            return
        yield truth, out


def cannot_test_lines(commit: str, why: CannotTest, *, fmt: str = "jenkins", era: str = "2024",
                      clock: Optional[SimClock] = None, build_minutes: float = 10.0) -> list[str]:
    """What the host script prints when it cannot test `commit`: its checkout,
    the build when `why.build`, and the one `flakebot: infra:` line."""
    clock = clock or SimClock.seeded(commit, era)
    w = _Writer(fmt, era, clock, random.Random(0), NVME_TEST, NVME_SCRIPT)
    out = [w._prefix() + f"+ git checkout --quiet --force --detach {commit}"]
    if why.build:
        out.append(w._prefix() + "+ ./configure --with-vfio-user")
        clock.elapsed += build_minutes * 60
        out.append(w._prefix() + "make: *** [Makefile:45: all] Error 2")
    clock.elapsed += 1.0
    out.append(w._prefix() + f"flakebot: infra: {why.reason}")
    return out


def _stable_int(*parts: object) -> int:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big")


def console_lines(
    test: str,
    commit: str,
    iterations: int,
    *,
    behaviour: Behaviour,
    rng_seed: int,
    fmt: str = "jenkins",
    era: str = "2024",
    markers: bool = True,
    run_id: str = "",
    clock: Optional[SimClock] = None,
    infra_at: Optional[int] = None,
    seed_id: Optional[str] = None,
) -> Iterator[str]:
    """The console log lines (no line ends) of `iterations` runs of `test`."""
    for _truth, lines in simulate(test, commit, iterations, behaviour=behaviour, rng_seed=rng_seed, fmt=fmt,
                                  era=era, markers=markers, run_id=run_id, clock=clock, infra_at=infra_at,
                                  seed_id=seed_id):
        yield from lines


def truths(test: str, commit: str, iterations: int, **kw) -> list[IterationTruth]:
    """The truth of what `console_lines` with the same arguments prints."""
    return [t for t, _ in simulate(test, commit, iterations, lines=False, **kw)]


# --------------------------------------------------------------------------- CLI (fake SPDK tree)

_FORCED = {
    "pass": HEALTHY,
    "slow": Behaviour(0.0, 1.0),
    "timeout": Behaviour(1.0, 0.0),
    "fail": Behaviour(0.0, 0.0, p_fail=1.0),
    "infra": Behaviour(0.0, 0.0, p_infra=1.0),
}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flakebot.demo.hosts", description="Print a simulated SPDK console log.")
    ap.add_argument("--test", default=NVME_TEST, choices=sorted(KNOWN_TESTS))
    ap.add_argument("--commit", default="0" * 40)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-id", default="")
    ap.add_argument("--fmt", default="plain", choices=FORMATS)
    ap.add_argument("--era", default="2024", choices=ERAS)
    ap.add_argument("--markers", action="store_true", help="print FLAKEBOT-ITERATION-* markers")
    ap.add_argument("--outcome", choices=sorted(_FORCED), help="force every iteration's outcome")
    ap.add_argument("--p-hang", type=float, default=0.0)
    ap.add_argument("--p-near-miss", type=float, default=0.0)
    ap.add_argument("--p-fail", type=float, default=0.0)
    ap.add_argument("--p-infra", type=float, default=0.0)
    ap.add_argument("--rc", action="store_true", help="exit 1 if any iteration failed (like the test script)")
    a = ap.parse_args(argv)
    b = _FORCED[a.outcome] if a.outcome else Behaviour(a.p_hang, a.p_near_miss, a.p_fail, a.p_infra)
    worst = 0
    out = sys.stdout
    try:
        for truth, lines in simulate(a.test, a.commit, a.iterations, behaviour=b, rng_seed=a.seed, fmt=a.fmt,
                                     era=a.era, markers=a.markers, run_id=a.run_id):
            out.write("\n".join(lines))
            out.write("\n")
            if truth.rc:
                worst = 1
        out.flush()
    except BrokenPipeError:  # `| head`
        return 0
    return worst if a.rc else 0


if __name__ == "__main__":
    sys.exit(main())
