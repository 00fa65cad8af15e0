"""The store: every build, run, shutdown, campaign and comment in one SQLite file.

SQLite through sqlite-utils, in WAL mode, with every write inside one
``BEGIN IMMEDIATE`` transaction (``Store.write()``). A plain ``BEGIN`` takes the
write lock only at the first write, and a reader that tries to upgrade then
fails with "database is locked" without waiting; ``BEGIN IMMEDIATE`` takes it up
front, so concurrent writers simply queue on ``busy_timeout``.

The connection is opened with ``isolation_level=None`` so that Python's sqlite3
module never opens transactions behind our back; inside ``write()`` the
sqlite-utils helpers (``insert``, ``create``, ...) see the open transaction and
nest as savepoints instead of committing on their own.

    >>> import tempfile, os
    >>> from flakebot.model import Commit, RunRequest, Run, Outcome, Shutdown
    >>> store = Store(os.path.join(tempfile.mkdtemp(), "flakebot.db"))
    >>> store.upsert_commits([Commit("a" * 40, subject="nvme: fix")])
    >>> bid = store.record_submission(RunRequest("r1", "a" * 40, ("t",), 2), "sim")
    >>> run = Run("t", 1, Outcome.SLOW, shutdowns=[Shutdown("x.sh@54", 83.0, 90, False)])
    >>> store.ingest_runs(bid, "a" * 40, [run], host="h1")
    1
    >>> store.ingest_runs(bid, "a" * 40, [run], host="h1")
    0
    >>> store.outcome_counts("t", ["a" * 40])["a" * 40][Outcome.SLOW]
    1
    >>> store.close()
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import sqlite_utils

from flakebot import model

SCHEMA_VERSION = 5  # == len(MIGRATIONS)
BUSY_TIMEOUT_MS = 30_000

BUILD_STATUSES = ("submitted", "queued", "running", "done", "lost", "ingested")
CAMPAIGN_KINDS = ("bisect", "verify")
CAMPAIGN_STATUSES = ("open", "done", "aborted")
COMMENT_STATUSES = ("queued", "posted", "failed")


class StoreError(Exception):
    """The database cannot be used as asked (one-line message)."""


def default_db_path(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_DATA_HOME/flakebot/flakebot.db``, else ``~/.local/share/flakebot/flakebot.db``
    (a relative XDG_DATA_HOME is ignored, as the XDG spec says)."""
    base = env.get("XDG_DATA_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "flakebot" / "flakebot.db"


def utcnow(clock: Optional[Callable[[], datetime]] = None) -> str:
    """Now (or ``clock()``), UTC, ISO 8601 with seconds: ``2026-11-25T16:21:42+00:00``."""
    t = clock() if clock else datetime.now(timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec="seconds")


def _enum_value(v: Any) -> Any:
    return v.value if hasattr(v, "value") else v


# --------------------------------------------------------------------------
# Migrations: an ordered list; MIGRATIONS[i] brings the schema from v(i) to
# v(i+1). Each runs inside the migrating write transaction. Never edit a
# released migration; append a new one.
# --------------------------------------------------------------------------


def _migrate_1(db: sqlite_utils.Database) -> None:
    """Initial schema."""
    db["commits"].create(
        {
            "sha": str,
            "subject": str,
            "author": str,
            "date": str,
            "change_id": str,
            "paths": str,  # JSON list
            "parents": str,  # JSON list
        },
        pk="sha",
    )
    db["campaigns"].create(
        {
            "id": int,
            "kind": str,
            "test": str,
            "good": str,
            "bad": str,
            "status": str,
            "params": str,  # JSON
            "verdict": str,
            "culprit": str,
            "confidence": float,
            "result": str,  # JSON
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"kind", "status"},
    )
    db["campaigns"].create_index(["kind", "test", "good", "bad", "status"])
    db["campaign_commits"].create(
        {"campaign_id": int, "position": int, "sha": str},
        pk=("campaign_id", "position"),
        foreign_keys=[("campaign_id", "campaigns", "id")],
        not_null={"sha"},
    )
    db["builds"].create(
        {
            "id": int,
            "run_id": str,
            "executor": str,
            "external_id": str,
            "url": str,
            "host": str,
            "status": str,
            "commit_sha": str,
            "tests": str,  # JSON list
            "iterations": int,
            "campaign_id": int,
            "submitted_at": str,
            "finished_at": str,
            "host_minutes": float,
            "rc": int,
        },
        pk="id",
        not_null={"run_id", "status"},
        foreign_keys=[("campaign_id", "campaigns", "id")],
    )
    db["builds"].create_index(["run_id"], unique=True)
    db["builds"].create_index(["executor", "external_id"])
    db["builds"].create_index(["campaign_id", "status"])
    db["runs"].create(
        {
            "id": int,
            "build_id": int,
            "commit_sha": str,
            "test": str,
            "iteration": int,
            "outcome": str,
            "rc": int,
            "duration_s": float,
            "worst_wait_s": float,
            "reason": str,
            "host": str,
            "recorded_at": str,
        },
        pk="id",
        not_null={"build_id", "test", "iteration", "outcome"},
        foreign_keys=[("build_id", "builds", "id")],
    )
    db["runs"].create_index(["build_id", "test", "iteration"], unique=True)
    db["runs"].create_index(["test", "commit_sha"])
    db["shutdowns"].create(
        {
            "id": int,
            "run_id": int,
            "seq": int,
            "call_site": str,
            "waited_s": float,
            "limit_s": int,
            "timed_out": int,
        },
        pk="id",
        not_null={"run_id", "seq"},
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["shutdowns"].create_index(["run_id", "seq"], unique=True)
    db["comments"].create(
        {
            "id": int,
            "key": str,
            "target": str,
            "body": str,
            "status": str,
            "attempts": int,
            "last_error": str,
            "external_id": str,
            "created_at": str,
            "posted_at": str,
        },
        pk="id",
        not_null={"key", "status"},
        defaults={"attempts": 0},
    )
    db["comments"].create_index(["key"], unique=True)
    db["nightly"].create(
        {"id": int, "test": str, "commit_sha": str, "build_id": int, "started_at": str},
        pk="id",
        foreign_keys=[("build_id", "builds", "id")],
    )
    db["nightly"].create_index(["test", "started_at"])


def _migrate_2(db: sqlite_utils.Database) -> None:
    """Rises and falls found by the nightly cycle."""
    db["nightly_events"].create(
        {
            "id": int,
            "kind": str,  # 'rise' | 'fall'
            "test": str,
            "before_sha": str,  # rise: newest good commit; fall: newest still-bad commit
            "after_sha": str,  # oldest commit on the new side: the change is in (before, after]
            "tip_sha": str,
            "probability": float,
            "campaign_id": int,
            "detail": str,  # JSON: the detection
            "created_at": str,
            "reported_at": str,  # set once a reporter accepted it
        },
        pk="id",
        not_null={"kind", "test", "tip_sha", "created_at"},
        foreign_keys=[("campaign_id", "campaigns", "id")],
        if_not_exists=True,
    )
    db["nightly_events"].create_index(["test", "id"], if_not_exists=True)


def _migrate_3(db: sqlite_utils.Database) -> None:
    """One driver per campaign (flakebot/campaigns/lease.py) and run ids unique across
    databases (flakebot/executors/runids.py): a lease row per driven campaign, and a
    random instance id for this database, made once, here."""
    db["leases"].create(
        {
            "campaign_id": int,
            "token": str,  # the holding driver (random per lease taken)
            "host": str,
            "pid": int,
            "boot": str,  # boot id and process start, so a dead holder on
            "start_ticks": int,  # this host is told from a recycled pid
            "since": str,
            "expires": str,  # ISO 8601 UTC; renewed while the driver runs
        },
        pk="campaign_id",
        not_null={"token", "expires"},
        foreign_keys=[("campaign_id", "campaigns", "id")],
        if_not_exists=True,
    )
    db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('instance_id', ?)", [secrets.token_hex(6)])


def _migrate_4(db: sqlite_utils.Database) -> None:
    """Delivery claims: a process claims a queued comment before posting it
    (``claimed_by`` = host:pid:nonce, ``claim_until`` = when it lapses), so two
    processes on one database never post the same row at once."""
    cols = {c.name for c in db["comments"].columns}
    if "claimed_by" not in cols:
        db.execute("ALTER TABLE comments ADD COLUMN claimed_by TEXT")
    if "claim_until" not in cols:
        db.execute("ALTER TABLE comments ADD COLUMN claim_until TEXT")
    db["comments"].create_index(["status", "id"], if_not_exists=True)


def _migrate_5(db: sqlite_utils.Database) -> None:
    """The host a request was pinned to (``RunRequest.host``), kept with its
    build so a resumed campaign submits it to the same host again."""
    if "pinned_host" not in {c.name for c in db["builds"].columns}:
        db.execute("ALTER TABLE builds ADD COLUMN pinned_host TEXT")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migrate_1, _migrate_2, _migrate_3, _migrate_4,
                                                             _migrate_5]
assert len(MIGRATIONS) == SCHEMA_VERSION


class Store:
    """One SQLite file. Create one Store per process (or per thread; a Store
    may also be shared between threads: its methods serialize on a lock).

        >>> import tempfile, os
        >>> s = Store(os.path.join(tempfile.mkdtemp(), "sub", "f.db"))
        >>> s.schema_version() == SCHEMA_VERSION
        True
        >>> s.db.execute("PRAGMA journal_mode").fetchone()[0]
        'wal'
        >>> s.close()
    """

    def __init__(self, path: str | os.PathLike | None = None, *,
                 clock: Optional[Callable[[], datetime]] = None):
        self.path = Path(path) if path is not None else default_db_path()
        self.clock = clock  # injectable wall clock for the stamps (tests shift the date)
        self._lock = threading.RLock()
        self._depth = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {self.path.parent}: {e.strerror}") from None
        try:
            conn = sqlite3.connect(
                str(self.path),
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {self.path}: {e}") from None
        try:
            self._open(conn)
        except StoreError:
            conn.close()
            raise
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(f"{self.path} is not a usable flakebot database: {e}") from None

    def _open(self, conn: sqlite3.Connection) -> None:
        """Check the schema version, switch to WAL, migrate. Several processes
        opening a new database at once can get SQLITE_BUSY where SQLite does not
        call the busy handler (e.g. while another switches the journal mode):
        retry that, within the busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        delay = 0.01
        while True:
            try:
                return self._open_once(conn)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                    raise
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _open_once(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # Reading the schema is the first thing that fails on a non-SQLite file.
        version = self._read_version(conn)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema v{version} is newer than this flakebot "
                f"(v{SCHEMA_VERSION}); upgrade flakebot"
            )
        conn.execute("PRAGMA foreign_keys=ON")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journal mode (got {mode})")
        self.db = sqlite_utils.Database(conn, execute_plugins=False)
        self._migrate()

    # ------------------------------------------------------------ plumbing

    @staticmethod
    def _read_version(conn: sqlite3.Connection) -> int:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def schema_version(self) -> int:
        with self._lock:
            return self._read_version(self.db.conn)

    def _migrate(self) -> None:
        if self._read_version(self.db.conn) == SCHEMA_VERSION:
            return
        with self.write():
            # Re-read under the write lock: another process may have migrated.
            version = self._read_version(self.db.conn)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema v{version} is newer than this flakebot "
                    f"(v{SCHEMA_VERSION}); upgrade flakebot"
                )
            if version == 0:
                self.db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
            for i in range(version, SCHEMA_VERSION):
                MIGRATIONS[i](self.db)
                self.db["meta"].upsert({"key": "schema_version", "value": str(i + 1)}, pk="key")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT``, or
        ``ROLLBACK`` if the block raises. Nested ``write()`` blocks join the
        outer transaction. Yields the sqlite-utils Database.

            >>> import tempfile, os
            >>> s = Store(os.path.join(tempfile.mkdtemp(), "f.db"))
            >>> with s.write() as db:
            ...     _ = db.execute("INSERT INTO meta(key, value) VALUES ('x', '1')")
            >>> s.close()
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.db
                finally:
                    self._depth -= 1
                return
            conn = self.db.conn
            if conn.in_transaction:  # should never happen; refuse rather than corrupt
                raise StoreError("internal error: transaction already open")
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.db
            except BaseException:
                self._depth = 0
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence | dict | None = None) -> list[dict]:
        with self._lock:
            return list(self.db.query(sql, params))

    def close(self) -> None:
        """Close the connection (checkpointing the WAL if we are the last)."""
        with self._lock:
            self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ meta

    def get_meta(self, key: str) -> Optional[str]:
        """A small persistent setting (e.g. a poller cursor), or None.

            >>> import tempfile, os
            >>> s = Store(os.path.join(tempfile.mkdtemp(), "f.db"))
            >>> s.get_meta("cursor:github") is None
            True
            >>> s.set_meta("cursor:github", '{"ts": "2026-01-01T00:00:00Z"}')
            >>> s.get_meta("cursor:github")
            '{"ts": "2026-01-01T00:00:00Z"}'
            >>> s.close()
        """
        if key == "schema_version":
            raise StoreError("schema_version is not a setting")
        rows = self._query("SELECT value FROM meta WHERE key = ?", [key])
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Store a small persistent setting (one write transaction)."""
        if key == "schema_version":
            raise StoreError("schema_version is not a setting")
        if not isinstance(value, str):
            raise StoreError(f"meta value for {key!r} must be a string")
        with self.write() as db:
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?)"
                       " ON CONFLICT(key) DO UPDATE SET value = excluded.value", [key, value])

    # ------------------------------------------------------------ commits

    def upsert_commits(self, commits: Iterable[model.Commit]) -> None:
        """Insert or refresh commit metadata (keyed by sha)."""
        rows = [
            {
                "sha": c.sha,
                "subject": c.subject,
                "author": c.author,
                "date": c.date,
                "change_id": c.change_id,
                "paths": json.dumps(list(c.paths)),
                "parents": json.dumps(list(c.parents)),
            }
            for c in commits
        ]
        if not rows:
            return
        with self.write() as db:
            db["commits"].upsert_all(rows, pk="sha")

    def get_commit(self, sha: str) -> Optional[model.Commit]:
        """The stored Commit, or None."""
        rows = self._query("SELECT * FROM commits WHERE sha = ?", [sha])
        if not rows:
            return None
        r = rows[0]
        return model.Commit(
            sha=r["sha"],
            subject=r["subject"] or "",
            author=r["author"] or "",
            date=r["date"] or "",
            change_id=r["change_id"],
            paths=tuple(json.loads(r["paths"] or "[]")),
            parents=tuple(json.loads(r["parents"] or "[]")),
        )

    # ------------------------------------------------------------ builds

    def record_submission(
        self, request: model.RunRequest, executor: str, campaign_id: Optional[int] = None,
        *, same_request: bool = True,
    ) -> int:
        """Remember a request before (or as) it is submitted; returns the build id.
        Idempotent on ``request.run_id``: a second call returns the existing id,
        and (``same_request``) refuses one that asks for another commit, tests or
        iterations under that run id: a run id names one request only.

            >>> import tempfile, os
            >>> s = Store(os.path.join(tempfile.mkdtemp(), "f.db"))
            >>> req = model.RunRequest("bisect-1-abc-1", "abc", ("t",), 5)
            >>> s.record_submission(req, "sim") == s.record_submission(req, "sim")
            True
            >>> s.close()
        """
        with self.write() as db:
            row = db.execute("SELECT id, commit_sha, tests, iterations FROM builds WHERE run_id = ?",
                             [request.run_id]).fetchone()
            if row:
                stored = (row[1], tuple(json.loads(row[2] or "[]")), row[3])
                if same_request and stored != (request.commit, tuple(request.tests), request.iterations):
                    raise StoreError(f"run id {request.run_id} is already build {row[0]} at {str(row[1])[:10]} "
                                     f"({' '.join(stored[1])} x{row[3]}), not this request")
                return row[0]
            db["builds"].insert(
                {
                    "run_id": request.run_id,
                    "executor": executor,
                    "status": "submitted",
                    "commit_sha": request.commit,
                    "tests": json.dumps(list(request.tests)),
                    "iterations": request.iterations,
                    "campaign_id": campaign_id,
                    "submitted_at": utcnow(self.clock),
                    "pinned_host": request.host,
                }
            )
            return db.execute("SELECT last_insert_rowid()").fetchone()[0]

    def update_build(
        self,
        build_id: int,
        *,
        status: Optional[str] = None,
        external_id: Optional[str] = None,
        url: Optional[str] = None,
        host: Optional[str] = None,
        rc: Optional[int] = None,
        host_minutes: Optional[float] = None,
        finished: bool = False,
        unpin: bool = False,
    ) -> None:
        """Set the given fields (None leaves a field alone). ``status`` may be a
        string or a ``model.BuildState``. ``finished=True`` stamps finished_at
        (once); ``unpin=True`` clears the request's pinned host (it is sent to
        any host from now on). An 'ingested' build never goes back to another status."""
        updates: dict[str, Any] = {"pinned_host": None} if unpin else {}
        if status is not None:
            status = _enum_value(status)
            if status not in BUILD_STATUSES:
                raise StoreError(f"unknown build status {status!r}")
            updates["status"] = status
        for k, v in (
            ("external_id", external_id),
            ("url", url),
            ("host", host),
            ("rc", rc),
            ("host_minutes", host_minutes),
        ):
            if v is not None:
                updates[k] = v
        with self.write() as db:
            row = db.execute(
                "SELECT status, finished_at FROM builds WHERE id = ?", [build_id]
            ).fetchone()
            if row is None:
                raise StoreError(f"no build {build_id}")
            if row[0] == "ingested":
                updates.pop("status", None)
            if finished and row[1] is None:
                updates["finished_at"] = utcnow(self.clock)
            if updates:
                db["builds"].update(build_id, updates)

    def get_build(self, build_id: int) -> Optional[dict]:
        rows = self._query("SELECT * FROM builds WHERE id = ?", [build_id])
        return _decode_build(rows[0]) if rows else None

    def build_by_run_id(self, run_id: str) -> Optional[dict]:
        rows = self._query("SELECT * FROM builds WHERE run_id = ?", [run_id])
        return _decode_build(rows[0]) if rows else None

    def pending_builds(self, campaign_id: Optional[int] = None) -> list[dict]:
        """Builds recorded but not yet ingested (any campaign, or one), oldest
        first, with ``tests`` decoded: what a resumed process must reattach to."""
        sql = "SELECT * FROM builds WHERE status != 'ingested'"
        params: list = []
        if campaign_id is not None:
            sql += " AND campaign_id = ?"
            params.append(campaign_id)
        return [_decode_build(r) for r in self._query(sql + " ORDER BY id", params)]

    def builds(self, campaign_id: Optional[int] = None) -> list[dict]:
        """All builds (of one campaign), oldest first, ``tests`` decoded."""
        sql, params = "SELECT * FROM builds", []
        if campaign_id is not None:
            sql, params = sql + " WHERE campaign_id = ?", [campaign_id]
        return [_decode_build(r) for r in self._query(sql + " ORDER BY id", params)]

    # ------------------------------------------------------------ runs

    def ingest_runs(
        self,
        build_id: int,
        commit_sha: str,
        runs: Iterable[model.Run],
        host: Optional[str] = None,
    ) -> int:
        """Record a build's parsed runs with their shutdowns and mark the build
        'ingested', all in one transaction. Returns the number of runs added;
        a build already ingested adds nothing (returns 0), and a run already
        present (same build, test, iteration) is skipped."""
        runs = list(runs)
        now = utcnow(self.clock)
        with self.write() as db:
            row = db.execute("SELECT status, host FROM builds WHERE id = ?", [build_id]).fetchone()
            if row is None:
                raise StoreError(f"no build {build_id}")
            if row[0] == "ingested":
                return 0
            host = host or row[1]
            added = 0
            for run in runs:
                cur = db.execute(
                    "INSERT OR IGNORE INTO runs (build_id, commit_sha, test, iteration, outcome,"
                    " rc, duration_s, worst_wait_s, reason, host, recorded_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        build_id,
                        commit_sha,
                        run.test,
                        run.iteration,
                        _enum_value(run.outcome),
                        run.rc,
                        run.duration_s,
                        run.worst_wait_s,
                        run.reason,
                        host,
                        now,
                    ],
                )
                if cur.rowcount != 1:
                    continue
                run_id = cur.lastrowid
                added += 1
                if run.shutdowns:
                    db["shutdowns"].insert_all(
                        {
                            "run_id": run_id,
                            "seq": seq,
                            "call_site": s.call_site,
                            "waited_s": s.waited_s,
                            "limit_s": s.limit_s,
                            "timed_out": int(bool(s.timed_out)),
                        }
                        for seq, s in enumerate(run.shutdowns, 1)
                    )
            db.execute(
                "UPDATE builds SET status = 'ingested', host = COALESCE(?, host),"
                " commit_sha = COALESCE(commit_sha, ?),"
                " finished_at = COALESCE(finished_at, ?) WHERE id = ?",
                [host, commit_sha, now, build_id],
            )
            return added

    def import_build(
        self,
        executor: str,
        external_id: str,
        commit_sha: str,
        runs: Iterable[model.Run],
        url: Optional[str] = None,
        host: Optional[str] = None,
    ) -> tuple[int, int]:
        """Record a build that flakebot did not submit (``import-log``): keyed by
        run_id ``f"{executor}:{external_id}"``, created if absent, then ingested.
        Returns ``(build_id, runs_added)``; importing the same build again adds 0."""
        runs = list(runs)
        run_id = f"{executor}:{external_id}"
        tests = tuple(sorted({r.test for r in runs}))
        iterations = max((r.iteration for r in runs), default=0)
        with self.write():
            build_id = self.record_submission(  # the same log again: the same build, whatever asked
                model.RunRequest(run_id, commit_sha, tests, iterations), executor, same_request=False
            )
            self.update_build(
                build_id, external_id=str(external_id), url=url, host=host, finished=True
            )
            added = self.ingest_runs(build_id, commit_sha, runs, host=host)
        return build_id, added

    def runs(
        self,
        test: Optional[str] = None,
        commits: Optional[Iterable[str]] = None,
        campaign_id: Optional[int] = None,
        include_infra: bool = True,
    ) -> list[dict]:
        """Stored runs as dicts (columns of ``runs``), oldest first. Filters:
        one test, a set of commit shas, the builds of one campaign, and
        whether infra runs are included."""
        where, params = _run_filters(test, commits, campaign_id, include_infra)
        return self._query(f"SELECT runs.* FROM runs {where} ORDER BY runs.id", params)

    def shutdowns_for(self, run_ids: Iterable[int]) -> list[dict]:
        """Shutdowns of the given runs (by ``runs.id``), ordered by run then
        call order; ``timed_out`` as bool."""
        ids = list(run_ids)
        if not ids:
            return []
        rows = self._query(
            "SELECT * FROM shutdowns WHERE run_id IN (SELECT value FROM json_each(?))"
            " ORDER BY run_id, seq",
            [json.dumps(ids)],
        )
        for r in rows:
            r["timed_out"] = bool(r["timed_out"])
        return rows

    def load_runs(
        self,
        test: Optional[str] = None,
        commits: Optional[Iterable[str]] = None,
        campaign_id: Optional[int] = None,
        include_infra: bool = True,
    ) -> list[tuple[str, model.Run]]:
        """Like ``runs()`` but rebuilt as ``(commit_sha, model.Run)`` with shutdowns."""
        rows = self.runs(test, commits, campaign_id, include_infra)
        by_run: dict[int, list[dict]] = {}
        for s in self.shutdowns_for(r["id"] for r in rows):
            by_run.setdefault(s["run_id"], []).append(s)
        return [(r["commit_sha"], row_to_run(r, by_run.get(r["id"], []))) for r in rows]

    def outcome_counts(
        self, test: str, commits: Iterable[str], campaign_id: Optional[int] = None
    ) -> dict[str, Counter]:
        """``{sha: Counter({model.Outcome: n})}`` for every sha asked (empty
        Counter if never run). Infra runs are counted too, under
        ``Outcome.INFRA``; callers drop them with ``Outcome.is_evidence``.

            >>> import tempfile, os
            >>> s = Store(os.path.join(tempfile.mkdtemp(), "f.db"))
            >>> s.outcome_counts("t", ["abc"])
            {'abc': Counter()}
            >>> s.close()
        """
        commits = list(commits)
        out: dict[str, Counter] = {sha: Counter() for sha in commits}
        where, params = _run_filters(test, commits, campaign_id, True)
        for r in self._query(
            f"SELECT runs.commit_sha AS sha, runs.outcome AS outcome, COUNT(*) AS n"
            f" FROM runs {where} GROUP BY runs.commit_sha, runs.outcome",
            params,
        ):
            try:
                key: Any = model.Outcome(r["outcome"])
            except ValueError:
                key = r["outcome"]
            out.setdefault(r["sha"], Counter())[key] += r["n"]
        return out

    # ------------------------------------------------------------ campaigns

    def create_campaign(
        self,
        kind: str,
        test: str,
        good: str,
        bad: str,
        commits: list[str],
        params: dict,
    ) -> int:
        """A new open campaign over ``commits`` (the first-parent range, oldest
        first). Returns its id.

            >>> import tempfile, os
            >>> s = Store(os.path.join(tempfile.mkdtemp(), "f.db"))
            >>> cid = s.create_campaign("bisect", "t", "g", "b", ["c1", "b"], {"confidence": 0.95})
            >>> s.campaign_commits(cid), s.find_open_campaign("bisect", "t", "g", "b") == cid
            (['c1', 'b'], True)
            >>> s.close()
        """
        if kind not in CAMPAIGN_KINDS:
            raise StoreError(f"unknown campaign kind {kind!r}")
        now = utcnow(self.clock)
        with self.write() as db:
            db["campaigns"].insert(
                {
                    "kind": kind,
                    "test": test,
                    "good": good,
                    "bad": bad,
                    "status": "open",
                    "params": json.dumps(params, sort_keys=True),
                    "created_at": now,
                    "updated_at": now,
                }
            )
            cid = db.execute("SELECT last_insert_rowid()").fetchone()[0]
            db["campaign_commits"].insert_all(
                {"campaign_id": cid, "position": i, "sha": sha} for i, sha in enumerate(commits)
            )
            return cid

    def get_campaign(self, campaign_id: int) -> dict:
        """The campaign row with ``params`` and ``result`` decoded."""
        rows = self._query("SELECT * FROM campaigns WHERE id = ?", [campaign_id])
        if not rows:
            raise StoreError(f"no campaign {campaign_id}")
        return _decode_campaign(rows[0])

    def find_open_campaign(self, kind: str, test: str, good: str, bad: str) -> Optional[int]:
        """The newest open campaign with these parameters, or None."""
        rows = self._query(
            "SELECT id FROM campaigns WHERE kind = ? AND test = ? AND good = ? AND bad = ?"
            " AND status = 'open' ORDER BY id DESC LIMIT 1",
            [kind, test, good, bad],
        )
        return rows[0]["id"] if rows else None

    def find_campaigns(self, kind: str, test: str, good: str, bad: str) -> list[dict]:
        """Every campaign with these parameters, newest first, decoded."""
        rows = self._query(
            "SELECT * FROM campaigns WHERE kind = ? AND test = ? AND good = ? AND bad = ? ORDER BY id DESC",
            [kind, test, good, bad],
        )
        return [_decode_campaign(r) for r in rows]

    def campaign_commits(self, campaign_id: int) -> list[str]:
        return [
            r["sha"]
            for r in self._query(
                "SELECT sha FROM campaign_commits WHERE campaign_id = ? ORDER BY position",
                [campaign_id],
            )
        ]

    def update_campaign(self, campaign_id: int, *, params: Optional[dict] = None,
                        status: Optional[str] = None) -> None:
        """Replace params and/or set status ('open', 'done', 'aborted')."""
        updates: dict[str, Any] = {"updated_at": utcnow(self.clock)}
        if params is not None:
            updates["params"] = json.dumps(params, sort_keys=True)
        if status is not None:
            if status not in CAMPAIGN_STATUSES:
                raise StoreError(f"unknown campaign status {status!r}")
            updates["status"] = status
        with self.write() as db:
            if db.execute("SELECT 1 FROM campaigns WHERE id = ?", [campaign_id]).fetchone() is None:
                raise StoreError(f"no campaign {campaign_id}")
            db["campaigns"].update(campaign_id, updates)

    def finish_campaign(
        self,
        campaign_id: int,
        verdict: str | model.Verdict,
        culprit: Optional[str],
        confidence: Optional[float],
        result: dict,
    ) -> None:
        """Close a campaign with its verdict ('culprit', 'no-regression',
        'inconclusive'), culprit sha, confidence and a JSON-able result."""
        with self.write() as db:
            if db.execute("SELECT 1 FROM campaigns WHERE id = ?", [campaign_id]).fetchone() is None:
                raise StoreError(f"no campaign {campaign_id}")
            db["campaigns"].update(
                campaign_id,
                {
                    "status": "done",
                    "verdict": _enum_value(verdict),
                    "culprit": culprit,
                    "confidence": confidence,
                    "result": json.dumps(result, sort_keys=True),
                    "updated_at": utcnow(self.clock),
                },
            )

    def open_campaigns(self) -> list[dict]:
        """Open campaigns, oldest first, decoded."""
        return [
            _decode_campaign(r)
            for r in self._query("SELECT * FROM campaigns WHERE status = 'open' ORDER BY id")
        ]

    def campaigns(self, limit: Optional[int] = None) -> list[dict]:
        """All campaigns, newest first, decoded."""
        sql = "SELECT * FROM campaigns ORDER BY id DESC"
        params: list = []
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [_decode_campaign(r) for r in self._query(sql, params)]

    # ------------------------------------------------------------ comments

    def queue_comment(self, key: str, target: str, body: str) -> bool:
        """Queue a comment to post once. False if ``key`` was ever queued
        (whatever its status): the same thing is never posted twice."""
        with self.write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO comments (key, target, body, status, attempts, created_at)"
                " VALUES (?, ?, ?, 'queued', 0, ?)",
                [key, target, body, utcnow(self.clock)],
            )
            return cur.rowcount == 1

    def mark_comment(
        self,
        key: str,
        status: str,
        external_id: Optional[str] = None,
        error: Optional[str] = None,
    ) -> None:
        """Record a delivery attempt: 'posted' (stamps posted_at), 'failed'
        (keeps ``error``), or back to 'queued'. Posted and failed count an
        attempt. Releases any claim; a posted comment stays posted (a late
        'queued' or 'failed' from a process whose claim lapsed changes nothing)."""
        if status not in COMMENT_STATUSES:
            raise StoreError(f"unknown comment status {status!r}")
        with self.write() as db:
            row = db.execute("SELECT status FROM comments WHERE key = ?", [key]).fetchone()
            if row is None:
                raise StoreError(f"no comment {key!r}")
            if row[0] == "posted" and status != "posted":
                return
            db.execute(
                "UPDATE comments SET status = ?,"
                " attempts = attempts + ?,"
                " external_id = COALESCE(?, external_id),"
                " last_error = CASE WHEN ? IS NULL THEN last_error ELSE ? END,"
                " posted_at = CASE WHEN ? = 'posted' THEN COALESCE(posted_at, ?) ELSE posted_at END,"
                " claimed_by = NULL, claim_until = NULL"
                " WHERE key = ?",
                [
                    status,
                    0 if status == "queued" else 1,
                    external_id,
                    error,
                    error,
                    status,
                    utcnow(self.clock),
                    key,
                ],
            )

    def claim_comment(self, key: str, owner: str, seconds: float,
                      stale: Callable[[str], bool] = lambda holder: False) -> bool:
        """Claim a queued comment for ``seconds`` before posting it (in one
        ``BEGIN IMMEDIATE`` transaction, so exactly one process wins). False
        when it is no longer queued, or another live holder's claim has not
        lapsed; ``stale(holder)`` says a holder is gone (e.g. a dead pid on
        this host) so its claim can be taken over at once.

            >>> import tempfile, os
            >>> s = Store(os.path.join(tempfile.mkdtemp(), "f.db"))
            >>> s.queue_comment("k", "github-issue:1", "hi")
            True
            >>> s.claim_comment("k", "a", 60), s.claim_comment("k", "b", 60)
            (True, False)
            >>> s.mark_comment("k", "posted", external_id="1"); s.claim_comment("k", "b", 60)
            False
            >>> s.close()
        """
        now_dt = self.clock() if self.clock else datetime.now(timezone.utc)
        now = utcnow(lambda: now_dt)
        until = utcnow(lambda: now_dt + timedelta(seconds=seconds))
        with self.write() as db:
            row = db.execute("SELECT status, claimed_by, claim_until FROM comments WHERE key = ?",
                             [key]).fetchone()
            if row is None or row[0] != "queued":
                return False
            holder, holder_until = row[1], row[2]
            if holder and holder != owner and holder_until and holder_until > now and not stale(holder):
                return False
            db.execute("UPDATE comments SET claimed_by = ?, claim_until = ? WHERE key = ?",
                       [owner, until, key])
            return True

    def queued_comments(self, include_failed: bool = False) -> list[dict]:
        """Comments still to post, oldest first (and failed ones if asked)."""
        statuses = ("queued", "failed") if include_failed else ("queued",)
        return self._query(
            "SELECT * FROM comments WHERE status IN (SELECT value FROM json_each(?)) ORDER BY id",
            [json.dumps(statuses)],
        )

    def get_comment(self, key: str) -> Optional[dict]:
        rows = self._query("SELECT * FROM comments WHERE key = ?", [key])
        return rows[0] if rows else None

    # ------------------------------------------------------------ nightly

    # ------------------------------------------------------------ nightly events

    def record_event(self, kind: str, test: str, *, tip: str, before: Optional[str] = None,
                     after: Optional[str] = None, probability: Optional[float] = None,
                     campaign_id: Optional[int] = None, detail: Optional[dict] = None) -> int:
        """Remember a rise or fall the nightly cycle found; returns its id."""
        if kind not in ("rise", "fall"):
            raise StoreError(f"unknown event kind {kind!r}")
        with self.write() as db:
            cur = db.execute(
                "INSERT INTO nightly_events (kind, test, before_sha, after_sha, tip_sha, probability,"
                " campaign_id, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [kind, test, before, after, tip, probability, campaign_id,
                 json.dumps(detail, sort_keys=True) if detail is not None else None, utcnow(self.clock)])
            return cur.lastrowid

    def mark_event_reported(self, event_id: int) -> None:
        with self.write() as db:
            db.execute("UPDATE nightly_events SET reported_at = ? WHERE id = ?", [utcnow(self.clock), event_id])

    def events(self, test: Optional[str] = None) -> list[dict]:
        """Recorded rises and falls, oldest first (detail decoded)."""
        sql, params = "SELECT * FROM nightly_events", []
        if test is not None:
            sql, params = sql + " WHERE test = ?", [test]
        rows = self._query(sql + " ORDER BY id", params)
        for r in rows:
            r["detail"] = json.loads(r["detail"]) if r.get("detail") else None
        return rows

    def record_nightly(self, test: str, commit_sha: str, build_id: Optional[int] = None) -> int:
        with self.write() as db:
            db["nightly"].insert(
                {"test": test, "commit_sha": commit_sha, "build_id": build_id,
                 "started_at": utcnow(self.clock)}
            )
            return db.execute("SELECT last_insert_rowid()").fetchone()[0]

    def nightlies(self, test: Optional[str] = None) -> list[dict]:
        """Nightly records, oldest first."""
        if test is None:
            return self._query("SELECT * FROM nightly ORDER BY id")
        return self._query("SELECT * FROM nightly WHERE test = ? ORDER BY id", [test])


# -------------------------------------------------------------- helpers


def _run_filters(
    test: Optional[str],
    commits: Optional[Iterable[str]],
    campaign_id: Optional[int],
    include_infra: bool,
) -> tuple[str, list]:
    clauses: list[str] = []
    params: list = []
    if test is not None:
        clauses.append("runs.test = ?")
        params.append(test)
    if commits is not None:
        clauses.append("runs.commit_sha IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(commits)))
    if campaign_id is not None:
        clauses.append("runs.build_id IN (SELECT id FROM builds WHERE campaign_id = ?)")
        params.append(campaign_id)
    if not include_infra:
        clauses.append("runs.outcome != 'infra'")
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _decode_build(r: dict) -> dict:
    r = dict(r)
    r["tests"] = json.loads(r["tests"]) if r.get("tests") else []
    return r


def _decode_campaign(r: dict) -> dict:
    r = dict(r)
    r["params"] = json.loads(r["params"]) if r.get("params") else {}
    r["result"] = json.loads(r["result"]) if r.get("result") else None
    return r


def row_to_run(row: dict, shutdowns: Iterable[dict] = ()) -> model.Run:
    """Rebuild a ``model.Run`` from a ``runs`` row and its ``shutdowns`` rows."""
    return model.Run(
        test=row["test"],
        iteration=row["iteration"],
        outcome=model.Outcome(row["outcome"]),
        rc=row["rc"],
        shutdowns=[
            model.Shutdown(
                call_site=s["call_site"],
                waited_s=s["waited_s"],
                limit_s=s["limit_s"],
                timed_out=bool(s["timed_out"]),
            )
            for s in sorted(shutdowns, key=lambda s: s["seq"])
        ],
        duration_s=row["duration_s"],
        reason=row["reason"] or "",
    )
