"""`flakebot doctor`: can this host test a commit, and what to fix if not.

The checks are jobs/host-checks.sh's, the ones the host script and the Jenkins
job run (one source of truth): this module runs it with ``--tsv`` and lays its
rows out as a table (check, found, fix) that fits 80 columns.

    >>> checks = run_checks("/srv/spdk", ["vfio_user_nvme_restart_vm"], commit="v24.05")  # doctest: +SKIP
    >>> all(c.ok for c in checks)                                                        # doctest: +SKIP
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from rich import box
from rich.table import Table
from rich.text import Text

CHECKS = Path(__file__).resolve().parents[2] / "jobs" / "host-checks.sh"


class DoctorError(ValueError):
    """The checks could not run (one line)."""


@dataclass(frozen=True)
class Check:
    ok: bool  # False: this host cannot test the commit
    name: str
    found: str
    fix: str
    note: bool = False  # for other commits only (the QEMU of the other kind)


def run_checks(spdk_dir: "str | os.PathLike[str]", tests: Iterable[str], commit: Optional[str] = None,
               timeout_s: float = 300.0) -> list[Check]:
    """Every check of host-checks.sh for `tests` at `commit` (default: the tree as
    checked out in `spdk_dir`, which is never changed)."""
    if not CHECKS.is_file():
        raise DoctorError(f"doctor: {CHECKS} is missing (flakebot's jobs/ directory)")
    argv = [str(CHECKS), "--check", "--tsv", *(["--commit", commit] if commit else []), *tests]
    env = dict(os.environ, SPDK_DIR=str(spdk_dir))
    try:
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DoctorError(f"doctor: the checks took over {timeout_s:.0f} s") from None
    rows = [line.split("\t") for line in p.stdout.splitlines() if line.count("\t") == 3]
    if p.returncode not in (0, 1) or not rows:
        said = (p.stdout.strip() or p.stderr.strip() or f"exit {p.returncode}").splitlines()[0]
        raise DoctorError(f"doctor: {said}")
    return [Check(st != "missing", name, found, fix, note=st == "note") for st, name, found, fix in rows]


def table(checks: list[Check], title: str) -> Table:
    """check, found, fix: long paths fold inside their cell (rich sizes the columns),
    so it fits the console's width (80 when piped)."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    t.add_column("", no_wrap=True)
    t.add_column("check", overflow="fold")
    t.add_column("found", overflow="fold")
    t.add_column("fix", overflow="fold")
    for c in checks:
        mark = Text("--", style="dim") if c.note else Text("ok", style="green") if c.ok else Text("NO", style="bold red")
        t.add_row(mark, c.name, c.found, c.fix)
    return t
