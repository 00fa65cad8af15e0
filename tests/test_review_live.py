"""Opt-in tests against a real Gerrit / GitHub. Skipped unless configured.

Read-only by default:
  FLAKEBOT_TEST_GERRIT_URL, FLAKEBOT_TEST_GERRIT_USER, FLAKEBOT_TEST_GERRIT_PASSWORD
      [FLAKEBOT_TEST_GERRIT_SHA: a commit with a change; default: any merged change]
  FLAKEBOT_TEST_GITHUB_TOKEN, FLAKEBOT_TEST_GITHUB_REPO (owner/name)
      [FLAKEBOT_TEST_GITHUB_API: default https://api.github.com]
      [FLAKEBOT_TEST_GITHUB_SHA: a commit to list PRs for]
Writes only with FLAKEBOT_TEST_WRITE=1 and an explicit target:
  FLAKEBOT_TEST_GERRIT_WRITE_SHA (a commit whose change may get a test message),
  FLAKEBOT_TEST_GITHUB_WRITE_ISSUE (an issue number that may get a test comment).
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from flakebot.reporters.gerrit import GerritClient
from flakebot.reporters.github import GitHubClient

E = os.environ
GERRIT = all(E.get(f"FLAKEBOT_TEST_GERRIT_{k}") for k in ("URL", "USER", "PASSWORD"))
GITHUB = all(E.get(f"FLAKEBOT_TEST_GITHUB_{k}") for k in ("TOKEN", "REPO"))
WRITE = E.get("FLAKEBOT_TEST_WRITE") == "1"

need_gerrit = pytest.mark.skipif(not GERRIT, reason="FLAKEBOT_TEST_GERRIT_URL/USER/PASSWORD not set")
need_github = pytest.mark.skipif(not GITHUB, reason="FLAKEBOT_TEST_GITHUB_TOKEN/REPO not set")


def gerrit() -> GerritClient:
    return GerritClient(E["FLAKEBOT_TEST_GERRIT_URL"], E["FLAKEBOT_TEST_GERRIT_USER"],
                        E["FLAKEBOT_TEST_GERRIT_PASSWORD"], timeout=20, retries=1)


def github() -> GitHubClient:
    return GitHubClient(E.get("FLAKEBOT_TEST_GITHUB_API", "https://api.github.com"),
                        E["FLAKEBOT_TEST_GITHUB_REPO"], E["FLAKEBOT_TEST_GITHUB_TOKEN"],
                        timeout=20, retries=1, max_rate_wait=60)


@need_gerrit
def test_live_gerrit_find_change():
    c = gerrit()
    sha = E.get("FLAKEBOT_TEST_GERRIT_SHA")
    if not sha:
        changes = c.query_changes("status:merged", ("CURRENT_REVISION",), limit=1)
        assert changes, "no merged change visible to this account"
        sha = changes[0]["current_revision"]
    found = c.find_change(sha)
    assert found is not None and found[1]
    assert isinstance(c.change_messages(found[0]), list)


@need_gerrit
def test_live_gerrit_poll_messages():
    since = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
    changes = gerrit().query_changes(f'since:"{since}"', ("MESSAGES",), limit=5)
    assert isinstance(changes, list)


@need_github
def test_live_github_reads():
    c = github()
    sha = E.get("FLAKEBOT_TEST_GITHUB_SHA")
    if sha:
        assert isinstance(c.pulls_for_commit(sha), list)
    since = (datetime.now(timezone.utc) - timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert isinstance(c.issue_comments_since(since, max_pages=1), list)


@need_gerrit
@pytest.mark.skipif(not (WRITE and E.get("FLAKEBOT_TEST_GERRIT_WRITE_SHA")),
                    reason="FLAKEBOT_TEST_WRITE=1 and FLAKEBOT_TEST_GERRIT_WRITE_SHA not set")
def test_live_gerrit_post_review():
    c = gerrit()
    change, rev = c.find_change(E["FLAKEBOT_TEST_GERRIT_WRITE_SHA"])
    c.post_review(change, rev, "flakebot live test: please ignore.", notify="NONE")


@need_github
@pytest.mark.skipif(not (WRITE and E.get("FLAKEBOT_TEST_GITHUB_WRITE_ISSUE")),
                    reason="FLAKEBOT_TEST_WRITE=1 and FLAKEBOT_TEST_GITHUB_WRITE_ISSUE not set")
def test_live_github_comment():
    c = github()
    out = c.comment_issue(int(E["FLAKEBOT_TEST_GITHUB_WRITE_ISSUE"]),
                          "flakebot live test: please ignore.")
    assert out.get("id")
