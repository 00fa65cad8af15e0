"""Store tests, against real SQLite files."""
from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections import Counter

import pytest

from flakebot import model
from flakebot.model import Outcome, Run, RunRequest, Shutdown
from flakebot.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError, default_db_path, row_to_run

SHA_A = "a" * 40
SHA_B = "b" * 40


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "flakebot.db")
    yield s
    s.close()


def make_runs(n=3, test="t1"):
    outcomes = [Outcome.PASS, Outcome.SLOW, Outcome.TIMEOUT, Outcome.FAIL, Outcome.INFRA]
    runs = []
    for i in range(1, n + 1):
        o = outcomes[(i - 1) % len(outcomes)]
        shutdowns = [
            Shutdown("vfio_user_restart_vm.sh@54", 10.0 * i, 90, False),
            Shutdown("vfio_user_restart_vm.sh@70", None if o is Outcome.INFRA else 91.5,
                     90, o is Outcome.TIMEOUT),
        ]
        runs.append(Run(test, i, o, rc=0 if o is Outcome.PASS else 1, shutdowns=shutdowns,
                        duration_s=100.0 + i, reason="" if o is Outcome.PASS else f"why {i}"))
    return runs


def submit(store, run_id="r1", commit=SHA_A, campaign_id=None):
    return store.record_submission(RunRequest(run_id, commit, ("t1",), 3), "sim",
                                   campaign_id=campaign_id)


# ---------------------------------------------------------------- opening


def test_default_db_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "flakebot" / "flakebot.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / ".local" / "share" / "flakebot" / "flakebot.db"
    assert default_db_path({"XDG_DATA_HOME": "relative"}) == default_db_path({})


def test_creates_parent_dirs_wal_and_pragmas(tmp_path):
    path = tmp_path / "a" / "b" / "flakebot.db"
    s = Store(path)
    assert path.exists()
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert s.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 30000
    assert s.schema_version() == SCHEMA_VERSION
    assert {"commits", "builds", "runs", "shutdowns", "campaigns", "campaign_commits",
            "comments", "meta"} <= set(s.db.table_names())
    s.close()
    # a second connection sees WAL persisted, and reopening does not migrate again
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    s2 = Store(path)
    assert s2.schema_version() == SCHEMA_VERSION
    s2.close()


def test_migrates_from_zero_and_is_idempotent(tmp_path):
    path = tmp_path / "f.db"
    # an existing, empty SQLite database (version 0)
    sqlite3.connect(path).close()
    s = Store(path)
    assert s.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    bid = submit(s)
    s.close()
    s = Store(path)
    assert s.get_build(bid)["run_id"] == "r1"
    s.close()


def test_refuses_newer_schema_and_changes_nothing(tmp_path):
    path = tmp_path / "f.db"
    s = Store(path)
    submit(s)
    s.db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as e:
        Store(path)
    assert str(e.value) == (
        f"database schema v99 is newer than this flakebot (v{SCHEMA_VERSION}); upgrade flakebot"
    )
    assert path.read_bytes() == before


def test_refuses_newer_schema_in_rollback_journal_mode_without_switching_to_wal(tmp_path):
    path = tmp_path / "f.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '7')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="v7 is newer"):
        Store(path)
    assert path.read_bytes() == before
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["meta"]
    conn.close()


def test_not_sqlite_is_one_line_error(tmp_path):
    path = tmp_path / "f.db"
    path.write_text("this is not a database\n" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError) as e:
        Store(path)
    assert "\n" not in str(e.value)
    assert "not a" in str(e.value)
    assert path.read_bytes() == before


def test_unwritable_location_is_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        Store(blocker / "sub" / "f.db")


# ---------------------------------------------------------------- commits, builds


def test_upsert_commits_round_trip(store):
    c = model.Commit(SHA_A, subject="nvme: x", author="A <a@b>", date="2024-01-01T00:00:00+00:00",
                     change_id="I" + "1" * 40, paths=("lib/a.c", "test/b.sh"), parents=(SHA_B,))
    store.upsert_commits([c])
    assert store.get_commit(SHA_A) == c
    c2 = model.Commit(SHA_A, subject="nvme: y")
    store.upsert_commits([c2])
    assert store.get_commit(SHA_A).subject == "nvme: y"
    assert store.get_commit(SHA_B) is None
    store.upsert_commits([])


def test_record_submission_idempotent(store):
    b1 = submit(store, "r1")
    b2 = submit(store, "r1")
    b3 = submit(store, "r2")
    assert b1 == b2 != b3
    build = store.get_build(b1)
    assert build["status"] == "submitted"
    assert build["tests"] == ["t1"]
    assert build["iterations"] == 3
    assert build["executor"] == "sim"
    assert build["submitted_at"].endswith("+00:00")
    assert store.build_by_run_id("r2")["id"] == b3


def test_update_build(store):
    bid = submit(store)
    store.update_build(bid, status=model.BuildState.RUNNING, external_id="17", url="http://j/17",
                       host="h1")
    b = store.get_build(bid)
    assert (b["status"], b["external_id"], b["url"], b["host"], b["finished_at"]) == (
        "running", "17", "http://j/17", "h1", None)
    store.update_build(bid, status="done", rc=0, host_minutes=12.5, finished=True)
    b = store.get_build(bid)
    assert (b["status"], b["rc"], b["host_minutes"]) == ("done", 0, 12.5)
    assert b["finished_at"]
    assert b["url"] == "http://j/17"  # untouched
    with pytest.raises(StoreError, match="unknown build status"):
        store.update_build(bid, status="bogus")
    with pytest.raises(StoreError, match="no build"):
        store.update_build(9999, status="done")


def test_pending_builds(store):
    cid = store.create_campaign("bisect", "t1", "g", "b", [SHA_A], {})
    b1 = submit(store, "r1", campaign_id=cid)
    b2 = submit(store, "r2")
    b3 = submit(store, "r3", campaign_id=cid)
    store.update_build(b3, status="lost")
    store.ingest_runs(b1, SHA_A, make_runs(1))
    assert [b["id"] for b in store.pending_builds()] == [b2, b3]
    assert [b["id"] for b in store.pending_builds(campaign_id=cid)] == [b3]
    assert store.pending_builds(campaign_id=cid)[0]["tests"] == ["t1"]


# ---------------------------------------------------------------- runs


def test_ingest_round_trip_with_shutdowns(store):
    bid = submit(store)
    runs = make_runs(5)
    assert store.ingest_runs(bid, SHA_A, runs, host="host-7") == 5
    rows = store.runs()
    assert len(rows) == 5
    assert all(r["host"] == "host-7" and r["commit_sha"] == SHA_A for r in rows)
    assert rows[1]["worst_wait_s"] == 91.5
    assert rows[4]["worst_wait_s"] == 50.0  # infra run: the unknown wait is skipped
    sd = store.shutdowns_for([r["id"] for r in rows])
    assert len(sd) == 10
    assert [s["seq"] for s in sd[:2]] == [1, 2]
    assert sd[5]["timed_out"] is True  # run 3 (timeout), second call
    loaded = [run for _, run in store.load_runs()]
    assert loaded == runs
    assert [row_to_run(r, [s for s in sd if s["run_id"] == r["id"]]) for r in rows] == runs
    b = store.get_build(bid)
    assert b["status"] == "ingested" and b["host"] == "host-7" and b["finished_at"]


def test_ingest_twice_adds_nothing(store):
    bid = submit(store)
    assert store.ingest_runs(bid, SHA_A, make_runs(3)) == 3
    assert store.ingest_runs(bid, SHA_A, make_runs(3)) == 0
    assert store.ingest_runs(bid, SHA_A, make_runs(4)) == 0
    assert len(store.runs()) == 3
    assert len(store.shutdowns_for([r["id"] for r in store.runs()])) == 6
    # an ingested build stays ingested
    store.update_build(bid, status="done")
    assert store.get_build(bid)["status"] == "ingested"


def test_ingest_duplicate_iterations_in_one_batch_counted_once(store):
    bid = submit(store)
    runs = make_runs(2) + make_runs(2)
    assert store.ingest_runs(bid, SHA_A, runs) == 2


def test_ingest_unknown_build(store):
    with pytest.raises(StoreError, match="no build"):
        store.ingest_runs(42, SHA_A, make_runs(1))


def test_ingest_empty_marks_ingested(store):
    bid = submit(store)
    assert store.ingest_runs(bid, SHA_A, []) == 0
    assert store.get_build(bid)["status"] == "ingested"


def test_ingest_is_all_or_nothing(store):
    bid = submit(store)

    def runs():
        yield from make_runs(2)
        yield Run("t1", 3, "not-an-outcome-object", shutdowns=[object()])  # blows up mid-way

    with pytest.raises(Exception):
        store.ingest_runs(bid, SHA_A, runs())
    assert store.runs() == []
    assert store.db.execute("SELECT count(*) FROM shutdowns").fetchone()[0] == 0
    assert store.get_build(bid)["status"] == "submitted"
    # the connection is usable afterwards
    assert store.ingest_runs(bid, SHA_A, make_runs(2)) == 2


def test_write_rolls_back_on_exception(store):
    with pytest.raises(RuntimeError):
        with store.write() as db:
            db["builds"].insert({"run_id": "x", "status": "submitted"})
            db.execute("INSERT INTO comments (key, status) VALUES ('k', 'queued')")
            with store.write():  # nested block joins the outer transaction
                db.execute("INSERT INTO comments (key, status) VALUES ('k2', 'queued')")
            raise RuntimeError("boom")
    assert store.db.execute("SELECT count(*) FROM builds").fetchone()[0] == 0
    assert store.db.execute("SELECT count(*) FROM comments").fetchone()[0] == 0
    assert not store.db.conn.in_transaction
    # and a following write commits normally
    with store.write() as db:
        db["builds"].insert({"run_id": "y", "status": "submitted"})
    other = Store(store.path)
    assert other.db.execute("SELECT count(*) FROM builds").fetchone()[0] == 1
    other.close()


def test_writes_are_visible_to_other_connections_immediately(store):
    submit(store)
    other = Store(store.path)
    assert other.build_by_run_id("r1") is not None
    other.close()


def test_import_build_idempotent(store):
    runs = make_runs(4)
    bid, added = store.import_build("jenkins", "1234", SHA_A, runs, url="http://j/1234", host="h2")
    assert added == 4
    b = store.get_build(bid)
    assert (b["run_id"], b["external_id"], b["status"], b["url"], b["host"]) == (
        "jenkins:1234", "1234", "ingested", "http://j/1234", "h2")
    assert b["tests"] == ["t1"] and b["iterations"] == 4
    assert store.import_build("jenkins", "1234", SHA_A, runs) == (bid, 0)
    assert len(store.runs()) == 4
    assert store.pending_builds() == []


def test_runs_filters_and_outcome_counts(store):
    cid = store.create_campaign("bisect", "t1", "g", "b", [SHA_A, SHA_B], {})
    b1 = submit(store, "r1", SHA_A, campaign_id=cid)
    b2 = submit(store, "r2", SHA_B)
    b3 = store.record_submission(RunRequest("r3", SHA_A, ("t2",), 2), "sim")
    store.ingest_runs(b1, SHA_A, make_runs(5))
    store.ingest_runs(b2, SHA_B, make_runs(2))
    store.ingest_runs(b3, SHA_A, make_runs(2, test="t2"))
    assert len(store.runs()) == 9
    assert len(store.runs(test="t1")) == 7
    assert len(store.runs(test="t1", commits=[SHA_A])) == 5
    assert len(store.runs(test="t1", commits=[SHA_A], include_infra=False)) == 4
    assert len(store.runs(campaign_id=cid)) == 5
    assert store.runs(commits=[]) == []
    counts = store.outcome_counts("t1", [SHA_A, SHA_B, "c" * 40])
    assert counts[SHA_A] == Counter({Outcome.PASS: 1, Outcome.SLOW: 1, Outcome.TIMEOUT: 1,
                                     Outcome.FAIL: 1, Outcome.INFRA: 1})
    assert counts[SHA_B] == Counter({Outcome.PASS: 1, Outcome.SLOW: 1})
    assert counts["c" * 40] == Counter()
    assert list(counts) == [SHA_A, SHA_B, "c" * 40]


def test_many_commits_in_filter(store):
    shas = [f"{i:040x}" for i in range(2000)]
    assert len(store.outcome_counts("t1", shas)) == 2000
    assert store.runs(commits=shas) == []


# ---------------------------------------------------------------- campaigns


def test_campaign_life_cycle(store):
    cid = store.create_campaign("bisect", "t1", SHA_A, SHA_B, ["c1", "c2", SHA_B],
                                {"confidence": 0.95, "budget": 100})
    assert store.campaign_commits(cid) == ["c1", "c2", SHA_B]
    c = store.get_campaign(cid)
    assert c["status"] == "open" and c["params"] == {"confidence": 0.95, "budget": 100}
    assert c["result"] is None
    assert store.find_open_campaign("bisect", "t1", SHA_A, SHA_B) == cid
    assert store.find_open_campaign("verify", "t1", SHA_A, SHA_B) is None
    assert [x["id"] for x in store.open_campaigns()] == [cid]
    store.update_campaign(cid, params={"confidence": 0.99})
    assert store.get_campaign(cid)["params"] == {"confidence": 0.99}
    store.finish_campaign(cid, model.Verdict.CULPRIT, "c2", 0.97, {"posterior": [0.01, 0.97]})
    c = store.get_campaign(cid)
    assert (c["status"], c["verdict"], c["culprit"], c["confidence"]) == ("done", "culprit", "c2", 0.97)
    assert c["result"] == {"posterior": [0.01, 0.97]}
    assert store.find_open_campaign("bisect", "t1", SHA_A, SHA_B) is None
    assert store.open_campaigns() == []
    cid2 = store.create_campaign("verify", "t1", SHA_A, SHA_B, [], {})
    store.update_campaign(cid2, status="aborted")
    assert store.get_campaign(cid2)["status"] == "aborted"
    assert [c["id"] for c in store.campaigns()] == [cid2, cid]
    with pytest.raises(StoreError, match="no campaign"):
        store.get_campaign(999)
    with pytest.raises(StoreError, match="unknown campaign kind"):
        store.create_campaign("nope", "t1", "g", "b", [], {})


def test_foreign_keys_enforced(store):
    with pytest.raises(sqlite3.IntegrityError):
        with store.write() as db:
            db.execute("INSERT INTO runs (build_id, test, iteration, outcome) VALUES (77, 't', 1, 'pass')")


# ---------------------------------------------------------------- comments, nightly


def test_comments(store):
    assert store.queue_comment("gerrit:123:verify:1", "gerrit:123", "body") is True
    assert store.queue_comment("gerrit:123:verify:1", "gerrit:123", "other") is False
    assert store.queue_comment("gh:9:1", "github:9", "b2") is True
    assert [c["key"] for c in store.queued_comments()] == ["gerrit:123:verify:1", "gh:9:1"]
    store.mark_comment("gh:9:1", "failed", error="HTTP 502")
    c = store.get_comment("gh:9:1")
    assert (c["status"], c["attempts"], c["last_error"]) == ("failed", 1, "HTTP 502")
    assert [c["key"] for c in store.queued_comments()] == ["gerrit:123:verify:1"]
    assert len(store.queued_comments(include_failed=True)) == 2
    store.mark_comment("gerrit:123:verify:1", "posted", external_id="msg-1")
    c = store.get_comment("gerrit:123:verify:1")
    assert (c["status"], c["attempts"], c["external_id"], c["body"]) == ("posted", 1, "msg-1", "body")
    assert c["posted_at"]
    assert store.queued_comments() == []
    with pytest.raises(StoreError):
        store.mark_comment("nope", "posted")
    with pytest.raises(StoreError):
        store.mark_comment("gh:9:1", "weird")


def test_nightly(store):
    bid = submit(store)
    nid = store.record_nightly("t1", SHA_A, bid)
    assert store.nightlies("t1")[0]["id"] == nid
    assert store.nightlies("t2") == []


# ---------------------------------------------------------------- concurrency

N_BUILDS = 15


def _writer(path, tag, n, errors):
    try:
        s = Store(path)
        for i in range(n):
            bid = s.record_submission(RunRequest(f"{tag}-{i}", SHA_A, ("t1",), 3), "sim")
            s.update_build(bid, status="running", host=tag)
            s.ingest_runs(bid, SHA_A, make_runs(3))
            s.queue_comment(f"{tag}-{i}", "t", "b")
            # a read-then-write pattern that deadlocks under plain BEGIN
            with s.write() as db:
                n_runs = db.execute("SELECT count(*) FROM runs").fetchone()[0]
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", [f"{tag}-{i}", str(n_runs)])
        s.close()
    except Exception as e:  # pragma: no cover - reported below
        errors.append(f"{tag}: {type(e).__name__}: {e}")


def _process_writer(path, tag, n, queue):
    errors: list[str] = []
    _writer(path, tag, n, errors)
    queue.put(errors)


def _check(path, tags):
    s = Store(path)
    assert len(s.builds()) == N_BUILDS * len(tags)
    assert len(s.runs()) == 3 * N_BUILDS * len(tags)
    assert s.pending_builds() == []
    assert len(s.queued_comments()) == N_BUILDS * len(tags)
    s.close()


def test_concurrent_threads_each_with_own_store(tmp_path):
    path = tmp_path / "f.db"
    errors: list[str] = []
    tags = [f"th{i}" for i in range(6)]
    threads = [threading.Thread(target=_writer, args=(path, t, N_BUILDS, errors)) for t in tags]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _check(path, tags)


def test_concurrent_processes(tmp_path):
    path = tmp_path / "f.db"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    tags = ["p0", "p1", "p2"]
    procs = [ctx.Process(target=_process_writer, args=(str(path), t, N_BUILDS, queue)) for t in tags]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [e for r in results for e in r] == []
    _check(path, tags)


def test_one_store_shared_between_threads(tmp_path):
    s = Store(tmp_path / "f.db")
    errors: list[str] = []

    def work(tag):
        try:
            for i in range(10):
                bid = s.record_submission(RunRequest(f"{tag}-{i}", SHA_A, ("t1",), 2), "sim")
                s.ingest_runs(bid, SHA_A, make_runs(2))
                s.runs(test="t1")
        except Exception as e:  # pragma: no cover
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(s.runs()) == 80
    s.close()


# ---------------------------------------------------------------- docs and properties


def test_docstring_examples_run():
    import doctest

    import flakebot.store

    result = doctest.testmod(flakebot.store)
    assert result.attempted > 0 and result.failed == 0


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_shutdowns = st.builds(
    Shutdown,
    call_site=st.sampled_from(["vfio_user_restart_vm.sh@54", "fio_restart_vm.sh@70"]),
    waited_s=st.one_of(st.none(), st.floats(0, 500, allow_nan=False)),
    limit_s=st.sampled_from([60, 90]),
    timed_out=st.booleans(),
)
_runs = st.builds(
    Run,
    test=st.sampled_from(["t1", "t2"]),
    iteration=st.integers(1, 6),
    outcome=st.sampled_from(list(Outcome)),
    rc=st.one_of(st.none(), st.integers(-1, 255)),
    shutdowns=st.lists(_shutdowns, max_size=3),
    duration_s=st.one_of(st.none(), st.floats(0, 1e4, allow_nan=False)),
    reason=st.text(max_size=20),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(_runs, max_size=8), min_size=1, max_size=3))
def test_property_ingest_round_trip(batches):
    """Whatever is ingested comes back exactly once: the first run per
    (build, test, iteration) wins, re-ingesting a build adds nothing."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        s = Store(Path(d) / "f.db")
        expected = []
        for i, batch in enumerate(batches):
            bid = submit(s, f"r{i}")
            seen = set()
            first = []
            for r in batch:
                if (r.test, r.iteration) not in seen:
                    seen.add((r.test, r.iteration))
                    first.append(r)
            assert s.ingest_runs(bid, SHA_A, batch) == len(first)
            assert s.ingest_runs(bid, SHA_A, batch) == 0
            expected += first
        assert [r for _, r in s.load_runs()] == expected
        total = sum(sum(c.values()) for c in s.outcome_counts("t1", [SHA_A]).values())
        assert total == sum(1 for r in expected if r.test == "t1")
        s.close()


def test_v1_database_migrates_to_v2_keeping_its_data(tmp_path):
    path = tmp_path / "f.db"
    s = Store(path)
    bid = submit(s)
    with s.write() as db:  # make it a v1 database again: no nightly_events
        db.execute("DROP TABLE nightly_events")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    s.close()
    s = Store(path)
    assert s.schema_version() == SCHEMA_VERSION
    assert s.get_build(bid)["run_id"] == "r1"
    eid = s.record_event("rise", "t", tip="c" * 40, before="a" * 40, probability=0.995, detail={"x": 1})
    (ev,) = s.events("t")
    assert ev["id"] == eid and ev["detail"] == {"x": 1} and ev["reported_at"] is None
    s.mark_event_reported(eid)
    assert s.events()[0]["reported_at"]
    s.close()


def test_meta_settings_persist_and_overwrite(tmp_path):
    path = tmp_path / "f.db"
    s = Store(path)
    assert s.get_meta("cursor:gerrit") is None
    s.set_meta("cursor:gerrit", '{"ts": "a", "ids": []}')
    s.set_meta("cursor:gerrit", '{"ts": "b", "ids": ["m1"]}')
    s.close()
    s = Store(path)
    assert s.get_meta("cursor:gerrit") == '{"ts": "b", "ids": ["m1"]}'
    assert s.schema_version() == SCHEMA_VERSION  # settings never touch the schema version
    with pytest.raises(StoreError):
        s.set_meta("schema_version", "99")
    with pytest.raises(StoreError):
        s.set_meta("x", 5)
    s.close()
