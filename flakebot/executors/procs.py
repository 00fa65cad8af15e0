"""What the local executor asks /proc about its runs' processes (Linux only).

A run is known by its process group leader's pid, start time (clock ticks
since boot) and boot id: a pid the kernel has given to another process since,
or a record from before a reboot, is never taken for the run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def uptime_s() -> float:
    """Seconds since boot: the clock process start times are counted in."""
    return float(Path("/proc/uptime").read_text().split()[0])


@dataclass(frozen=True)
class ProcStat:
    state: str  # "Z": a zombie, dead but not yet reaped
    pgrp: int
    start_ticks: int  # clock ticks since boot


def proc_stat(pid: int | str) -> Optional[ProcStat]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name may hold spaces and ')'
    return ProcStat(fields[0], int(fields[2]), int(fields[19]))


def live_groups() -> frozenset[int]:
    """Process groups with a member that is not a zombie (kill(-pgid, 0) also
    succeeds for a group of zombies only). One pass over /proc."""
    groups = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = proc_stat(entry.name)
            if st is not None and st.state != "Z":
                groups.add(st.pgrp)
    return frozenset(groups)


_HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Leader:
    """The process that leads a run's group, as recorded in <run_id>.pid."""

    pid: int
    start_ticks: int
    boot: str

    @property
    def start_s(self) -> float:
        return self.start_ticks / _HZ

    def is_running(self, groups: Optional[frozenset[int]] = None) -> bool:
        """Whether anything of the run's process group is still alive. A pid
        whose start time differs is another process: ours is gone. `groups`:
        live_groups() when the caller checks many runs at once."""
        if self.boot != boot_id():
            return False
        st = proc_stat(self.pid)
        if st is not None:
            if st.start_ticks != self.start_ticks:
                return False
            if st.state != "Z":
                return True
        # The leader is gone (or a zombie): members of its group may remain,
        # and the kernel never reuses a pid that is still some group's id.
        return self.pid in (live_groups() if groups is None else groups)
