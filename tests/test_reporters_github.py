"""GitHubClient / GitHubReporter against the fake GitHub, with a fake clock."""
from __future__ import annotations

import logging
import threading
import time

import pytest
import requests

from tests.fakes.github import FakeGitHub
from flakebot.reporters import (AuthError, BadRequest, Item, MaybePosted, NotFound,
                                RateLimited, github_marker)
from flakebot.reporters.github import GitHubClient, GitHubReporter
from tests.helpers_review import FakeClock

TOKEN = "ghp_SECRETtoken123"
SHA = "cc1a07f73a" + "2" * 30


@pytest.fixture
def gh():
    with FakeGitHub(token=TOKEN) as g:
        g.add_issue(3322)
        g.add_pull(42, head=SHA, commits=[SHA])
        yield g


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def client(gh, clock):
    return GitHubClient(gh.url, "spdk/spdk", TOKEN, timeout=5, sleep=clock.sleep, clock=clock.time)


def test_headers(gh, client):
    seen = {}
    orig = client._session.request

    def spy(method, url, **kw):
        seen.update(kw["headers"])
        return orig(method, url, **kw)

    client._session.request = spy
    client.pulls_for_commit(SHA)
    assert seen["Authorization"] == f"Bearer {TOKEN}"
    assert seen["X-GitHub-Api-Version"] == "2022-11-28"
    assert seen["Accept"] == "application/vnd.github+json"


def test_pulls_for_commit(client):
    assert [p["number"] for p in client.pulls_for_commit(SHA)] == [42]


def test_pulls_for_unknown_commit_is_not_found(client):
    with pytest.raises(NotFound):
        client.pulls_for_commit("f" * 40)


def test_bad_token_401_no_secret_anywhere(gh, clock, caplog):
    c = GitHubClient(gh.url, "spdk/spdk", "wrong-" + TOKEN, sleep=clock.sleep, clock=clock.time)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthError) as ei:
        c.comment_issue(3322, "hi")
    assert "401" in str(ei.value)
    for text in (str(ei.value), repr(c), caplog.text):
        assert TOKEN not in text
    assert not gh.issue_comments


def test_comment_issue_and_commit(gh, client):
    c = client.comment_issue(3322, "result")
    assert c["id"] and gh.comments_on(3322)[0]["body"] == "result"
    gh.add_commit("d" * 40)
    client.comment_commit("d" * 40, "on the commit")
    assert gh.comments_on_commit("d" * 40)[0]["body"] == "on the commit"


@pytest.mark.parametrize("body", ["", "   ", "x" * 65537])
def test_bad_bodies_rejected_before_sending(client, gh, body):
    with pytest.raises(BadRequest):
        client.comment_issue(3322, body)
    assert not gh.issue_comments


def test_422_from_server_is_bad_request(gh, client):
    with pytest.raises(BadRequest) as ei:
        client._request("POST", "/repos/spdk/spdk/issues/3322/comments", body={"nobody": 1},
                        write=True)
    assert ei.value.status == 422 and ei.value.permanent


def test_unknown_issue_404(client):
    with pytest.raises(NotFound):
        client.comment_issue(9999, "x")


@pytest.mark.parametrize("status", [403, 429])
def test_primary_limit_waits_until_reset_then_posts(gh, client, clock, status):
    gh.rate_limit_next("primary", status=status, reset_in=120, method="POST")
    client.comment_issue(3322, "after the reset")
    assert len(gh.comments_on(3322)) == 1
    assert any(110 <= s <= 125 for s in clock.sleeps), clock.sleeps


@pytest.mark.parametrize("status", [403, 429])
def test_retry_after_is_honoured(gh, client, clock, status):
    gh.rate_limit_next("retry-after", status=status, retry_after=7, method="POST")
    client.comment_issue(3322, "x")
    assert 7 in clock.sleeps and len(gh.comments_on(3322)) == 1


def test_secondary_limit_backs_off_a_minute_then_exponentially(gh, client, clock):
    gh.rate_limit_next("secondary", status=403, count=3, method="POST")
    client.comment_issue(3322, "x")
    waits = [s for s in clock.sleeps if s >= 60]
    assert waits == [60, 120, 240]
    assert len(gh.comments_on(3322)) == 1


def test_plain_403_is_not_a_rate_limit(gh, client, clock):
    gh.fail_next(403)
    with pytest.raises(AuthError):
        client.pulls_for_commit(SHA)
    assert not clock.sleeps


def test_rate_limit_longer_than_max_wait_raises_and_loses_nothing(gh, clock):
    c = GitHubClient(gh.url, "spdk/spdk", TOKEN, sleep=clock.sleep, clock=clock.time,
                     max_rate_wait=100)
    gh.rate_limit_next("primary", reset_in=3600, method="POST")
    with pytest.raises(RateLimited):
        c.comment_issue(3322, "x")
    assert not gh.comments_on(3322)


def test_remaining_zero_on_success_delays_the_next_request(gh, client, clock):
    orig = client._session.request

    def exhaust(method, url, **kw):
        r = orig(method, url, **kw)
        if not clock.sleeps and "pulls" in url:
            r.headers["x-ratelimit-remaining"] = "0"
            r.headers["x-ratelimit-reset"] = str(int(clock.t) + 50)
        return r

    client._session.request = exhaust
    client.pulls_for_commit(SHA)
    client.pull(42)
    assert any(45 <= s <= 52 for s in clock.sleeps)


def test_reads_retry_5xx(gh, client, clock):
    gh.fail_next(502, count=2)
    assert client.pull(42)["number"] == 42
    assert len(clock.sleeps) == 2


def test_write_5xx_without_check_raises_maybe_posted(gh, client):
    gh.fail_next(500, method="POST", after_apply=True)
    with pytest.raises(MaybePosted):
        client.comment_issue(3322, "x")


def test_writes_are_spaced_and_serialised(gh, client, clock):
    client.comment_issue(3322, "one")
    client.comment_issue(3322, "two")
    assert any(0 < s <= 1.0 for s in clock.sleeps)  # about a second between writes


def test_writes_one_at_a_time_across_threads(gh):
    c = GitHubClient(gh.url, "spdk/spdk", TOKEN, min_write_interval=0)
    active, peak = [0], [0]
    lock = threading.Lock()
    orig = c._session.request

    def track(method, url, **kw):
        if method == "POST":
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.01)
            try:
                return orig(method, url, **kw)
            finally:
                with lock:
                    active[0] -= 1
        return orig(method, url, **kw)

    c._session.request = track
    ts = [threading.Thread(target=c.comment_issue, args=(3322, f"c{i}")) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert peak[0] == 1 and len(gh.comments_on(3322)) == 6


def test_pagination_follows_link(gh, client):
    for i in range(250):
        gh.add_comment(3322, "someone", f"c{i}")
    assert len(client.issue_comments(3322)) == 250


def test_issue_comments_since(gh, client):
    gh.add_comment(3322, "a", "old", created_at="2026-11-01T00:00:00Z")
    gh.add_comment(42, "b", "new", created_at="2026-11-25T10:00:00Z")
    got = client.issue_comments_since("2026-11-20T00:00:00Z")
    assert [c["body"] for c in got] == ["new"]


def test_reporter_culprit_goes_to_pr_else_commit(gh, client):
    rep = GitHubReporter(client)
    assert rep.resolve(f"github-culprit:{SHA}") == ("issue", "42")
    gh.add_commit("9" * 40)
    assert rep.resolve("github-culprit:" + "9" * 40) == ("commit", "9" * 40)


def test_reporter_find_posted_by_marker(gh, client):
    rep = GitHubReporter(client)
    key = f"github-culprit:{SHA}:7"
    item = Item(key, f"github-culprit:{SHA}", "text\n\n" + github_marker(key))
    assert rep.find_posted(item) is None
    ext = rep.post(item)
    assert rep.find_posted(item) == ext
    assert len(gh.comments_on(42, github_marker(key))) == 1


def test_reporter_write_5xx_after_apply_checks_and_does_not_repost(gh, client, clock):
    rep = GitHubReporter(client)
    key = "github-issue:3322:5"
    gh.fail_next(502, method="POST", after_apply=True)
    rep.post(Item(key, "github-issue:3322", "x\n" + github_marker(key)))
    assert len(gh.comments_on(3322)) == 1


def test_commit_comment_marker_check(gh, client):
    gh.add_commit("9" * 40)
    rep = GitHubReporter(client)
    key = "github-culprit:" + "9" * 40 + ":3"
    item = Item(key, "github-culprit:" + "9" * 40, "x\n" + github_marker(key))
    rep.post(item)
    assert rep.find_posted(item) is not None
    assert len(gh.comments_on_commit("9" * 40)) == 1


def test_fake_needs_auth_for_raw_requests(gh):
    r = requests.get(f"{gh.url}/repos/spdk/spdk/pulls/42", timeout=5)
    assert r.status_code == 401 and r.json()["message"] == "Bad credentials"
