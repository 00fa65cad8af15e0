"""GerritClient / GerritReporter against the fake Gerrit (127.0.0.1 only)."""
from __future__ import annotations

import pytest
import requests

from tests.fakes.gerrit import FakeGerrit
from flakebot.reporters import (AuthError, Conflict, Item, MaybePosted, NotFound,
                                TransientError, gerrit_marker)
from flakebot.reporters.gerrit import DEFAULT_TAG, GerritClient, GerritReporter, strip_xssi

SHA = "cc1a07f73a" + "1" * 30
USER, PW = "flakebot", "s3cret-http-pw"


class Sleeps(list):
    def __call__(self, s):
        self.append(s)


@pytest.fixture
def gerrit():
    with FakeGerrit({USER: PW}) as g:
        yield g


@pytest.fixture
def sleeps():
    return Sleeps()


@pytest.fixture
def client(gerrit, sleeps):
    return GerritClient(gerrit.url, USER, PW, timeout=5, sleep=sleeps)


def test_strip_xssi():
    assert strip_xssi(")]}'\n[1]") == "[1]"
    assert strip_xssi("[1]") == "[1]"


def test_every_json_answer_has_the_xssi_prefix(gerrit):
    gerrit.add_change(SHA)
    r = requests.get(f"{gerrit.url}/a/changes/?q=commit:{SHA}", auth=(USER, PW), timeout=5)
    assert r.status_code == 200 and r.text.startswith(")]}'\n")


def test_find_change_strips_xssi_and_returns_id_and_revision(gerrit, client):
    n = gerrit.add_change(SHA, status="MERGED", subject="test/vfio_user: clean up")
    change, rev = client.find_change(SHA)
    assert change == gerrit.changes[n]["id"] and rev == SHA
    assert ("GET", f"/a/changes/?q=commit%3A{SHA}&o=CURRENT_REVISION") in gerrit.requests


def test_find_change_unknown_commit_is_none(client):
    assert client.find_change("f" * 40) is None


def test_find_change_of_an_older_patchset_answers_the_current_revision(gerrit, client):
    n = gerrit.add_change("e" * 40)
    gerrit.add_patchset(n, SHA)
    assert client.find_change("e" * 40) == (gerrit.changes[n]["id"], SHA)


@pytest.mark.parametrize("user,pw", [(USER, "wrong"), ("nobody", PW), (USER, "")])
def test_wrong_auth_is_a_clear_error_without_the_password(gerrit, sleeps, user, pw):
    c = GerritClient(gerrit.url, user, pw, timeout=5, sleep=sleeps)
    with pytest.raises(AuthError) as ei:
        c.find_change(SHA)
    assert "401" in str(ei.value) and PW not in str(ei.value) and "wrong" not in str(ei.value)
    assert not sleeps  # not retried


def test_password_in_url_is_not_kept_in_base_or_repr(gerrit):
    url = gerrit.url.replace("http://", f"http://{USER}:{PW}@")
    c = GerritClient(url, USER, PW)
    assert PW not in c.base and PW not in repr(c)
    assert c.find_change("f" * 40) is None


def test_post_review_sends_review_input(gerrit, client):
    n = gerrit.add_change(SHA, status="MERGED")
    change, rev = client.find_change(SHA)
    client.post_review(change, rev, "hello\n\n[flakebot:k]")
    (r,) = gerrit.reviews
    assert r["change"] == n and r["revision"] == SHA and r["tag"] == DEFAULT_TAG
    assert r["notify"] == "OWNER" and r["labels"] == {} and r["message"].startswith("hello")


def test_labels_only_when_configured(gerrit, client):
    gerrit.add_change(SHA)
    change, rev = client.find_change(SHA)
    client.post_review(change, rev, "m", labels={"Verified": -1}, notify="NONE")
    assert gerrit.reviews[0]["labels"] == {"Verified": -1}
    assert gerrit.reviews[0]["notify"] == "NONE"


def test_bad_notify_rejected_locally(client):
    with pytest.raises(ValueError):
        client.post_review("1", "abc", "m", notify="EVERYONE")


def test_unknown_change_404(client):
    with pytest.raises(NotFound) as ei:
        client.post_review("99999", "current", "m")
    assert "404" in str(ei.value)


def test_closed_change_409(gerrit, client):
    n = gerrit.add_change(SHA, status="ABANDONED")
    with pytest.raises(Conflict) as ei:
        client.post_review(str(n), SHA, "m", labels={"Verified": 1})
    assert "409" in str(ei.value)
    gerrit.reject_reviews(n)
    with pytest.raises(Conflict):
        client.post_review(str(n), SHA, "m")
    assert not gerrit.reviews


def test_reads_retry_on_5xx_with_backoff(gerrit, client, sleeps):
    gerrit.add_change(SHA)
    gerrit.fail_next(502, count=2, path_contains="/a/changes/")
    assert client.find_change(SHA) is not None
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.9


def test_reads_give_up_after_retries(gerrit, sleeps):
    c = GerritClient(gerrit.url, USER, PW, timeout=5, sleep=sleeps, retries=2)
    gerrit.fail_next(500, count=10)
    with pytest.raises(TransientError):
        c.find_change(SHA)
    assert len(sleeps) == 2


def test_connection_refused_is_transient(sleeps):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = GerritClient(f"http://127.0.0.1:{port}", USER, PW, timeout=2, sleep=sleeps, retries=1)
    with pytest.raises(TransientError) as ei:
        c.find_change(SHA)
    assert PW not in str(ei.value)


def test_write_5xx_without_check_raises_maybe_posted(gerrit, client):
    n = gerrit.add_change(SHA)
    gerrit.fail_next(500, method="POST")
    with pytest.raises(MaybePosted):
        client.post_review(str(n), SHA, "m")


def test_write_5xx_after_apply_is_not_posted_twice(gerrit, client, sleeps):
    n = gerrit.add_change(SHA)
    rep = GerritReporter(client)
    item = Item("gerrit-commit:x:1", f"gerrit:{n}:{SHA}", "body\n\n" + gerrit_marker("gerrit-commit:x:1"))
    gerrit.fail_next(500, method="POST", after_apply=True)
    rep.post(item)
    assert len(gerrit.reviews_on(n)) == 1 and len(sleeps) == 1


def test_write_5xx_before_apply_is_retried(gerrit, client, sleeps):
    n = gerrit.add_change(SHA)
    rep = GerritReporter(client)
    item = Item("k:1", f"gerrit:{n}:{SHA}", "body\n\n" + gerrit_marker("k:1"))
    gerrit.fail_next(503, method="POST", count=2)
    rep.post(item)
    assert len(gerrit.reviews_on(n)) == 1 and len(sleeps) == 2


def test_reporter_find_posted_uses_tag_and_marker(gerrit, client):
    n = gerrit.add_change(SHA, status="MERGED")
    rep = GerritReporter(client)
    item = Item("gerrit-commit:%s:7" % SHA, f"gerrit-commit:{SHA}",
                "result\n\n" + gerrit_marker(f"gerrit-commit:{SHA}:7"))
    assert rep.find_posted(item) is None
    # a human quoting the marker without the tag does not count
    gerrit.add_message(n, "alice", "quoting " + gerrit_marker(f"gerrit-commit:{SHA}:7"))
    assert rep.find_posted(item) is None
    ext = rep.post(item)
    assert ext and rep.find_posted(item) == ext
    assert len(gerrit.reviews_on(n, DEFAULT_TAG)) == 1


def test_reporter_no_change_for_commit_is_permanent(client):
    rep = GerritReporter(client)
    with pytest.raises(NotFound) as ei:
        rep.post(Item("k", "gerrit-commit:" + "f" * 40, "b"))
    assert ei.value.permanent


def test_group_lookup(gerrit, client):
    acct = gerrit.account("alice")["_account_id"]
    gerrit.groups[str(acct)] = ["spdk-maintainers"]
    assert [g["name"] for g in client.account_groups(str(acct))] == ["spdk-maintainers"]
