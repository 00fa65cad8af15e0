"""Outbox: never twice, never lost. Real SQLite Store, fake Gerrit and GitHub."""
from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from flakebot.report import comments as render
from tests.fakes.gerrit import FakeGerrit
from tests.fakes.github import FakeGitHub
from flakebot.reporters import github_marker, gerrit_marker, outbox
from flakebot.reporters.dryrun import DryRunReporter, dryrun_reporters
from flakebot.reporters.gerrit import DEFAULT_TAG, GerritClient, GerritReporter
from flakebot.reporters.github import GitHubClient, GitHubReporter
from flakebot.store import Store
from tests.helpers_review import FakeClock
from tests.test_render import CULPRIT, bisect_result, verify_result

TOKEN = "tok"
TRACKING = {"vfio_user_nvme_restart_vm": 3322}
TEST = "vfio_user_nvme_restart_vm"
ISSUE_KEY = f"github-issue:3322:{CULPRIT}:{TEST}"  # a culprit: keyed by (culprit, test)


class Killed(BaseException):
    """The process dies (not an Exception: nothing catches it)."""


class KillAfterPost:
    """A Store whose process is killed right after the post of ``key`` reached
    the server, before 'posted' is recorded."""

    def __init__(self, store, key):
        self.store = store
        self.key = key

    def queue_comment(self, *a):
        return self.store.queue_comment(*a)

    def queued_comments(self):
        return self.store.queued_comments()

    def claim_comment(self, *a, **kw):
        return self.store.claim_comment(*a, **kw)

    def mark_comment(self, key, status, external_id=None, error=None):
        if status == "posted" and key == self.key:
            raise Killed(key)
        return self.store.mark_comment(key, status, external_id, error)


@pytest.fixture(params=[0, 365], ids=["today", "a-year-ahead"])
def env(tmp_path, request):
    """Every party's clock (store, fakes, clients) shifted by the same number of days:
    nothing here may depend on today's date."""
    shift = timedelta(days=request.param)
    wall = lambda: datetime.now(timezone.utc) + shift  # noqa: E731
    clock = FakeClock()
    clock.t += shift.total_seconds()
    with FakeGerrit({"flakebot": "pw"}, clock=wall) as g, FakeGitHub(token=TOKEN, clock=wall) as gh:
        change = g.add_change(CULPRIT, status="MERGED", subject="test/vfio_user: x")
        gh.add_issue(3322)
        gh.add_pull(2048, head=CULPRIT, commits=[CULPRIT])
        gc = GerritClient(g.url, "flakebot", "pw", timeout=5, sleep=clock.sleep)
        hc = GitHubClient(gh.url, "spdk/spdk", TOKEN, timeout=5, sleep=clock.sleep,
                          clock=clock.time)
        reps = {"gerrit": GerritReporter(gc), "github": GitHubReporter(hc)}
        store = Store(tmp_path / "flakebot.db", clock=wall)
        yield type("Env", (), dict(g=g, gh=gh, change=change, reps=reps, store=store,
                                   clock=clock, wall=wall, path=tmp_path / "flakebot.db"))
        store.close()


def counts(env):
    return (len(env.g.reviews_on(env.change, DEFAULT_TAG)), len(env.gh.comments_on(2048)),
            len(env.gh.comments_on(3322)))


def test_plan_is_pure_and_keyed():
    items = outbox.plan_result(bisect_result(), tracking_issue=3322)
    assert [i.key for i in items] == [f"gerrit-commit:{CULPRIT}:{TEST}", f"github-culprit:{CULPRIT}:{TEST}",
                                      ISSUE_KEY]
    assert github_marker(items[1].key) in items[1].body and "**Culprit:**" in items[1].body
    assert gerrit_marker(items[0].key) in items[0].body and "**" not in items[0].body


def test_plan_without_culprit_only_tracking_issue():
    r = bisect_result(verdict="inconclusive", culprit=None, culprit_info=None)
    assert [i.key for i in outbox.plan_result(r, tracking_issue=3322)] == ["github-issue:3322:7"]
    assert outbox.plan_result(r) == []


def test_plan_verify_answers_the_thread():
    items = outbox.plan_result(verify_result(), reply_to="gerrit:spdk%2Fspdk~1:" + "a" * 40,
                               tracking_issue=3322)
    assert [i.key for i in items] == ["reply:gerrit:spdk%2Fspdk~1:" + "a" * 40 + ":9"]


def test_plan_needs_campaign_id():
    with pytest.raises(ValueError):
        outbox.plan_result(bisect_result(campaign_id=None))


def test_deliver_once(env):
    rep = outbox.deliver_result(env.store, bisect_result(), env.reps, tracking_issues=TRACKING)
    assert len(rep.posted) == 3 and rep.done
    assert counts(env) == (1, 1, 1)
    # again (retry, restart, duplicate call): nothing new
    rep = outbox.deliver_result(env.store, bisect_result(), env.reps, tracking_issues=TRACKING)
    assert rep.posted == [] and counts(env) == (1, 1, 1)
    rows = [env.store.get_comment(k) for k in (f"gerrit-commit:{CULPRIT}:{TEST}",
                                               f"github-culprit:{CULPRIT}:{TEST}", ISSUE_KEY)]
    assert all(r["status"] == "posted" and r["external_id"] for r in rows)


@pytest.mark.parametrize("killed_key", [f"gerrit-commit:{CULPRIT}:{TEST}",
                                        f"github-culprit:{CULPRIT}:{TEST}", ISSUE_KEY])
def test_killed_between_post_and_record_does_not_post_again(env, killed_key):
    with pytest.raises(Killed):
        outbox.deliver_result(KillAfterPost(env.store, killed_key), bisect_result(), env.reps,
                              tracking_issues=TRACKING)
    assert env.store.get_comment(killed_key)["status"] == "queued"  # not recorded
    # restart: a new process, a new Store on the same file, the same call again
    env.store.close()
    env.store = Store(env.path, clock=env.wall)
    rep = outbox.deliver_result(env.store, bisect_result(), env.reps, tracking_issues=TRACKING)
    assert rep.found == [killed_key]
    assert counts(env) == (1, 1, 1)
    assert env.store.queued_comments() == []
    assert env.store.get_comment(killed_key)["status"] == "posted"


def test_failed_post_stays_queued_and_is_retried(env):
    env.gh.fail_next(500, count=100, method="POST")  # GitHub writes down (before applying)
    rep = outbox.deliver_result(env.store, bisect_result(), env.reps, tracking_issues=TRACKING)
    assert rep.posted == [f"gerrit-commit:{CULPRIT}:{TEST}"]
    assert sorted(rep.pending) == sorted([f"github-culprit:{CULPRIT}:{TEST}", ISSUE_KEY])
    row = env.store.get_comment(ISSUE_KEY)
    assert row["status"] == "queued" and "500" in row["last_error"]
    env.gh._faults.clear()
    rep = outbox.flush(env.store, env.reps)
    assert len(rep.posted) == 2 and counts(env) == (1, 1, 1)


def test_outage_then_recovery_across_many_passes(env):
    env.g.fail_next(503, count=1000)
    for _ in range(3):
        outbox.deliver_result(env.store, bisect_result(), env.reps, tracking_issues=TRACKING)
    assert env.store.get_comment(f"gerrit-commit:{CULPRIT}:{TEST}")["status"] == "queued"
    env.g._faults.clear()
    outbox.flush(env.store, env.reps)
    assert counts(env) == (1, 1, 1)


def test_rate_limits_delay_but_do_not_lose(env):
    env.gh.rate_limit_next("primary", reset_in=600, method="POST")
    env.gh.rate_limit_next("secondary", count=2, method="POST")
    env.gh.rate_limit_next("retry-after", status=429, retry_after=30, method="POST")
    rep = outbox.deliver_result(env.store, bisect_result(), env.reps, tracking_issues=TRACKING)
    assert rep.done and counts(env) == (1, 1, 1)
    assert sum(env.clock.sleeps) >= 60 + 120 + 30


def test_rate_limit_beyond_patience_keeps_it_queued(env):
    env.reps["github"].client.max_rate_wait = 10
    env.gh.rate_limit_next("primary", reset_in=3600, count=10, method="POST")
    rep = outbox.deliver_result(env.store, bisect_result(), env.reps, tracking_issues=TRACKING)
    assert len(rep.pending) == 2 and counts(env) == (1, 0, 0)
    env.reps["github"].client.max_rate_wait = 1e9
    env.gh._limits.clear()
    outbox.flush(env.store, env.reps)
    assert counts(env) == (1, 1, 1)


def test_5xx_after_the_server_applied_the_write_is_not_reposted(env):
    env.g.fail_next(500, method="POST", after_apply=True)
    env.gh.fail_next(502, method="POST", after_apply=True, count=2)
    rep = outbox.deliver_result(env.store, bisect_result(), env.reps, tracking_issues=TRACKING)
    assert rep.done and counts(env) == (1, 1, 1)


def test_permanent_failure_is_marked_failed_not_retried(env):
    other = "9" * 40
    env.gh.add_commit(other)
    r = bisect_result(culprit=other, culprit_info=None)
    rep = outbox.deliver_result(env.store, r, env.reps)
    assert rep.failed == [f"gerrit-commit:{other}:{TEST}"]  # no Gerrit change for it
    assert env.store.get_comment(f"gerrit-commit:{other}:{TEST}")["status"] == "failed"
    assert len(env.gh.comments_on_commit(other)) == 1  # no PR: commit comment
    before = len(env.g.requests)
    outbox.flush(env.store, env.reps)
    assert len(env.g.requests) == before


def test_bad_credentials_keep_items_queued(env, tmp_path):
    bad = GerritReporter(GerritClient(env.g.url, "flakebot", "wrong", sleep=env.clock.sleep))
    rep = outbox.deliver_result(env.store, bisect_result(), {"gerrit": bad})
    assert rep.pending == [f"gerrit-commit:{CULPRIT}:{TEST}"]
    assert "wrong" not in env.store.get_comment(f"gerrit-commit:{CULPRIT}:{TEST}")["last_error"]
    outbox.flush(env.store, env.reps)
    assert counts(env)[0] == 1


def test_items_for_unconfigured_platforms_wait(env):
    outbox.deliver_result(env.store, bisect_result(), env.reps, tracking_issues=TRACKING, post=False)
    rep = outbox.flush(env.store, {"gerrit": env.reps["gerrit"]})
    assert rep.posted == [f"gerrit-commit:{CULPRIT}:{TEST}"] and len(rep.pending) == 2


def test_queue_reply_refusal(env):
    target = f"gerrit:{env.g.changes[env.change]['id']}:{CULPRIT}"
    assert outbox.queue_reply(env.store, target, "refusal:gerrit:1:m1",
                              render.render_refusal("unknown test"))
    assert not outbox.queue_reply(env.store, target, "refusal:gerrit:1:m1",
                                  render.render_refusal("unknown test"))
    outbox.flush(env.store, env.reps)
    (r,) = env.g.reviews_on(env.change)
    assert "unknown test" in r["message"]


# ------------------------------------------------------------------ dry run


def test_dryrun_folder_one_file_per_key_and_never_twice(tmp_path):
    store = Store(tmp_path / "d.db")
    reps = dryrun_reporters(tmp_path / "out")
    rep = outbox.deliver_result(store, bisect_result(), reps, tracking_issues=TRACKING)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) == 3 and len(rep.posted) == 3
    assert any(f.endswith(".txt") for f in files) and any(f.endswith(".md") for f in files)
    text = (tmp_path / "out" / files[0]).read_text()
    assert text.startswith("target: ")
    # a restart whose store lost the 'posted' marks finds the files
    store2 = Store(tmp_path / "d2.db")
    rep2 = outbox.deliver_result(store2, bisect_result(), reps, tracking_issues=TRACKING)
    assert len(rep2.found) == 3 and rep2.posted == []
    store.close()
    store2.close()


def test_dryrun_stdout(tmp_path):
    buf = io.StringIO()
    store = Store(tmp_path / "d.db")
    outbox.deliver_result(store, verify_result(), {"github": DryRunReporter("github", stream=buf)},
                          reply_to="github-issue:77")
    assert "===== reply:github-issue:77:9 -> github-issue:77 =====" in buf.getvalue()
    assert "lowers the failure rate" in buf.getvalue()
    store.close()


def test_reporters_from_config(tmp_path):
    from flakebot.config import load_config
    from flakebot.reporters.gerrit import GerritReporter as GR
    from flakebot.reporters.github import GitHubReporter as HR
    p = tmp_path / "flakebot.toml"
    p.write_text('[gerrit]\nurl = "https://review.example.org/"\nuser = "bot"\nnotify = "NONE"\n')
    cfg = load_config(p, env={"FLAKEBOT_GERRIT_PASSWORD": "pw", "FLAKEBOT_GITHUB_TOKEN": "tok"})
    reps = outbox.reporters_from_config(cfg)
    assert isinstance(reps["gerrit"], GR) and isinstance(reps["github"], HR)
    assert reps["gerrit"].notify == "NONE" and reps["gerrit"].labels is None
    assert "pw" not in repr(reps["gerrit"].client) and "tok" not in repr(reps["github"].client)
    assert outbox.reporters_from_config(load_config(p, env={})) == {}
    dry = outbox.reporters_from_config(cfg, dry_run=str(tmp_path / "out"))
    assert set(dry) == {"gerrit", "github"} and isinstance(dry["gerrit"], DryRunReporter)


def test_unexpected_reporter_exception_keeps_item_queued_and_pass_goes_on(tmp_path):
    class Broken:
        platform = "gerrit"

        def find_posted(self, item):
            raise ValueError("not JSON")

        def post(self, item):  # pragma: no cover
            raise AssertionError

    store = Store(tmp_path / "x.db")
    buf = io.StringIO()
    rep = outbox.deliver_result(store, bisect_result(), {"gerrit": Broken(),
                                                         "github": DryRunReporter("github", stream=buf)},
                                tracking_issues=TRACKING)
    assert rep.pending == [f"gerrit-commit:{CULPRIT}:{TEST}"] and len(rep.posted) == 2
    assert store.get_comment(f"gerrit-commit:{CULPRIT}:{TEST}")["last_error"] == "unexpected ValueError"
    store.close()
