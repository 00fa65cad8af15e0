"""Several flakebot processes posting from one database to the fake Gerrit and
GitHub: the world tests/test_posting.py and benchmarks/posting_soak.py share.

One trial: a fresh database holding the deliveries of four bisections (three
of them reach the same culprit) and stored cursors just before four review
comments whose commands are refused (so every poller queues the same replies);
then ``flakebot poll`` twice and ``flakebot serve`` start together as
subprocesses on that database. Afterwards every expected delivery's marker is
counted on the fakes: more than once is a duplicate, never is a lost post.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from flakebot.service import commands as cmds
from tests.fakes.gerrit import FakeGerrit
from tests.fakes.github import FakeGitHub
from flakebot.reporters import gerrit_marker, github_marker, outbox
from flakebot.store import Store
from tests.test_render import bisect_result

ROOT = Path(__file__).resolve().parents[1]
TEST = "vfio_user_nvme_restart_vm"
ISSUE, PR = 3322, 2048
CULPRITS = ("c" * 40, "d" * 40)
ENV = {"FLAKEBOT_GERRIT_PASSWORD": "pw", "FLAKEBOT_GITHUB_TOKEN": "t"}
# Commands the policy refuses (bad N, unknown test): each poller queues the same reply keys.
REFUSED = ("/flakebot verify 0", "/flakebot verify 5 no_such_test")


def git_repo(path: Path) -> Path:
    """An SPDK clone stand-in: the pollers only need a repository to open."""
    path.mkdir(parents=True, exist_ok=True)
    if not (path / ".git").exists():
        run = lambda *a: subprocess.run(["git", *a], cwd=path, check=True, capture_output=True)  # noqa: E731
        run("init", "-q")
        run("-c", "user.email=bot@example.org", "-c", "user.name=bot", "commit", "-q", "--allow-empty",
            "-m", "init")
    return path


@dataclass
class Trial:
    deliveries: int = 0
    duplicates: int = 0
    lost: int = 0
    not_recorded: int = 0  # posted on the fake but not 'posted' in the store
    exit_codes: list = field(default_factory=list)
    seconds: float = 0.0
    killed: bool = False


class PostingWorld:
    """Fakes (in this process, 127.0.0.1) plus a database and config in ``base``."""

    def __init__(self, base: Path, write_latency: float = 0.0):
        self.base = Path(base)
        self.repo = git_repo(self.base / "repo")
        self.write_latency = write_latency
        self.g: Optional[FakeGerrit] = None
        self.gh: Optional[FakeGitHub] = None
        self.n = 0

    def close(self) -> None:
        """Stop the fakes of the last trial."""
        for fake in (self.g, self.gh):
            if fake is not None:
                fake.stop()
        self.g = self.gh = None

    def _fresh_fakes(self) -> None:
        self.close()
        self.g, self.gh = FakeGerrit({"flakebot": "pw"}), FakeGitHub(token="t")
        self.g.start()
        self.gh.start()
        self.g.write_latency = self.gh.write_latency = self.write_latency
        self.gh.add_issue(ISSUE)
        self.gh.add_pull(PR, head=CULPRITS[0], commits=[CULPRITS[0]])
        self.gh.add_commit(CULPRITS[1])  # no PR: its culprit comment goes on the commit
        self.changes = [self.g.add_change(sha, status="MERGED", subject="culprit") for sha in CULPRITS]

    # ------------------------------------------------------------ one trial

    def prepare(self) -> tuple[Path, Path, list[str]]:
        """Fresh fakes, database and config; returns (config, db, expected keys)."""
        self._fresh_fakes()
        self.n += 1
        d = self.base / f"t{self.n}"
        d.mkdir()
        db, cfg = d / "f.db", d / "flakebot.toml"
        cfg.write_text(
            f'[store]\ndb = "{db}"\n[spdk]\nrepo = "{self.repo}"\n[tests]\nnames = ["{TEST}"]\n'
            f'[executor]\nname = "sim"\n[report]\ndir = "{d / "reports"}"\n'
            f'[nightly]\ncron = "0 3 1 1 *"\nmisfire_grace_minutes = 0\n'
            f'[gerrit]\nurl = "{self.g.url}"\nuser = "flakebot"\n'
            f'[github]\napi_url = "{self.gh.url}"\nrepo = "spdk/spdk"\n'
            f'[commands]\nallow = ["alice"]\n')
        now = datetime.now(timezone.utc) - timedelta(seconds=1)
        with Store(db) as store:
            for cid, culprit in ((1, CULPRITS[0]), (2, CULPRITS[0]), (3, CULPRITS[0]), (4, CULPRITS[1])):
                result = bisect_result(campaign_id=cid, culprit=culprit,
                                       culprit_info={"sha": culprit, "subject": "x"})
                outbox.queue_items(store, outbox.plan_result(result, tracking_issue=ISSUE))
            store.set_meta("cursor:gerrit", json.dumps({"ts": cmds.gerrit_ts(now), "ids": []}))
            store.set_meta("cursor:github", json.dumps({"ts": cmds.github_ts(now - timedelta(seconds=1)),
                                                        "ids": []}))
            keys = [r["key"] for r in store.queued_comments()]
        for text in REFUSED:
            self.g.add_message(self.changes[0], "alice", text)
            c = self.gh.add_comment(ISSUE, "alice", text)
            keys.append(f"refusal:github:spdk/spdk:{c['id']}")
        msgs = self.g.changes[self.changes[0]]["messages"][-len(REFUSED):]
        keys += [f"refusal:gerrit:{self.changes[0]}:{m['id']}" for m in msgs]
        return cfg, db, keys

    def start(self, cfg: Path, what: str) -> subprocess.Popen:
        """``flakebot poll`` or ``flakebot serve`` on ``cfg`` (a subprocess)."""
        env = {**os.environ, **ENV, "FLAKEBOT_CONFIG": str(cfg), "PYTHONPATH": str(ROOT)}
        args = [sys.executable, "-m", "flakebot", what] + (["--json"] if what == "poll" else [])
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def run_together(self, cfg: Path, db: Path, keys: list[str], *, kill_after: Optional[float] = None,
                     victim: int = 0, timeout: float = 120.0) -> Trial:
        """Two polls and serve at once; serve is stopped (SIGTERM) once every key
        is recorded or at ``timeout``. ``kill_after``: kill -9 process ``victim``
        (0, 1: a poll; 2: serve) that many seconds after the first post reached
        a fake, then run one more poll (a restart). ``Trial.killed``: whether
        the victim was still running when killed."""
        t0 = time.monotonic()
        procs = [self.start(cfg, "poll"), self.start(cfg, "poll"), self.start(cfg, "serve")]
        killed = False
        if kill_after is not None:
            self.wait_for_post(timeout)
            time.sleep(kill_after)
            killed = procs[victim].poll() is None
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
        for p in procs[:2]:
            _wait(p, timeout)
        if kill_after is not None:
            _wait(self.start(cfg, "poll"), timeout)  # the restart
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _all_recorded(db, keys):
            time.sleep(0.1)
        if procs[2].poll() is None:
            procs[2].send_signal(signal.SIGTERM)
        _wait(procs[2], timeout)
        trial = self.count(db, keys)
        trial.exit_codes = [p.returncode for p in procs]
        trial.seconds = time.monotonic() - t0
        trial.killed = killed
        return trial

    def wait_for_post(self, timeout: float = 60.0) -> None:
        """Until some process's first write reached a fake."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(m == "POST" for f in (self.g, self.gh) for m, _ in list(f.requests)):
                return
            time.sleep(0.01)
        raise TimeoutError("no post reached the fakes")

    # ------------------------------------------------------------ counting

    def posted_bodies(self) -> list[str]:
        with self.g.lock:
            out = [m.get("message") or "" for ch in self.g.changes.values() for m in ch["messages"]
                   if m.get("tag") == "autogenerated:flakebot"]
        with self.gh.lock:
            out += [c.get("body") or "" for c in self.gh.comments_on(ISSUE) + self.gh.comments_on(PR)
                    + self.gh.comments_on_commit(CULPRITS[1])]
        return out

    def count(self, db: Path, keys: list[str]) -> Trial:
        bodies = self.posted_bodies()
        t = Trial(deliveries=len(keys))
        with Store(db) as store:
            for k in keys:
                n = sum(github_marker(k) in b or gerrit_marker(k) in b for b in bodies)
                t.duplicates += max(0, n - 1)
                t.lost += n == 0
                row = store.get_comment(k)
                t.not_recorded += n > 0 and (row is None or row["status"] != "posted")
        return t


def _wait(p: subprocess.Popen, timeout: float) -> None:
    try:
        p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()


def _all_recorded(db: Path, keys: list[str]) -> bool:
    with Store(db) as store:
        return all((store.get_comment(k) or {}).get("status") == "posted" for k in keys)
