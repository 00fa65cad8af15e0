"""/flakebot commands: parsing tables (good and hostile), allow-list, pollers with cursors."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from flakebot.service import commands as cmds
from flakebot.service.commands import Author, Command, Policy, Refusal, ReplyTo
from tests.fakes.gerrit import FakeGerrit
from tests.fakes.github import FakeGitHub
from flakebot.model import KNOWN_TESTS
from flakebot.reporters.gerrit import GerritClient
from flakebot.reporters.github import GitHubClient

GOOD = "1234567" + "0" * 33
BAD = "89abcde" + "f" * 33
REPO = {GOOD: GOOD, BAD: BAD}


def resolver(prefix):
    hits = [s for s in REPO if s.startswith(prefix)]
    return hits[0] if len(hits) == 1 else None


POLICY = Policy(allowed_accounts=frozenset({"alice", "bob@example.org", "1007"}),
                max_iterations=200, default_iterations=20, resolve=resolver,
                ignore_accounts=frozenset({"flakebot"}))
NVME, BLK = "vfio_user_nvme_restart_vm", "vfio_user_virtio_blk_restart_vm"


@pytest.mark.parametrize("line,expected", [
    ("/flakebot verify", ("verify", 20, NVME, None, None)),
    ("/flakebot verify 50", ("verify", 50, NVME, None, None)),
    ("/flakebot verify 50 " + BLK, ("verify", 50, BLK, None, None)),
    ("/flakebot verify " + BLK, ("verify", 20, BLK, None, None)),
    ("/flakebot   VERIFY\t7", ("verify", 7, NVME, None, None)),
    ("/flakebot verify 200", ("verify", 200, NVME, None, None)),
    ("/flakebot bisect 1234567 89abcde", ("bisect", None, NVME, GOOD, BAD)),
    (f"/flakebot bisect {GOOD} {BAD} {BLK}", ("bisect", None, BLK, GOOD, BAD)),
    ("/flakebot bisect 1234567 89ABCDE", ("bisect", None, NVME, GOOD, BAD)),
])
def test_parse_good(line, expected):
    assert cmds.parse_command(line, POLICY) == expected


@pytest.mark.parametrize("line,reason", [
    ("/flakebot", "usage"),
    ("/flakebot retrigger", "usage"),
    ("/flakebot verify 0", "between 1 and 200"),
    ("/flakebot verify 201", "between 1 and 200"),
    ("/flakebot verify 99999999999999999999", "between 1 and 200"),
    ("/flakebot verify -5", "usage"),
    ("/flakebot verify 5.0", "usage"),
    ("/flakebot verify 1e3", "unknown test"),
    ("/flakebot verify 0x10", "unknown test"),
    ("/flakebot verify ٣", "usage"),  # unicode digit
    ("/flakebot verify ５", "usage"),  # fullwidth digit
    ("/flakebot verify 5 no_such_test", "unknown test"),
    ("/flakebot verify 5 " + NVME + " extra", "usage"),
    ("/flakebot verify 5; rm -rf /", "usage"),
    ("/flakebot verify $(reboot)", "usage"),
    ("/flakebot verify `id`", "usage"),
    ("/flakebot verify 5 && curl x|sh", "usage"),
    ("/flakebot verify 5 " + NVME + ";id", "usage"),
    ("/flakebot verify ../../etc/passwd", "usage"),
    ("/flakebot verify 5\x00", "usage"),
    ("/flakebot verify vfio_user_nvme_restart_vm\u202e", "usage"),
    ("/flakebot bisect 1234567", "usage"),
    ("/flakebot bisect 1234567 89abcde " + NVME + " x", "usage"),
    ("/flakebot bisect 123456 89abcde", "7 to 40 hex"),
    ("/flakebot bisect xyz1234 89abcde", "7 to 40 hex"),
    ("/flakebot bisect " + "a" * 41 + " 89abcde", "7 to 40 hex"),
    ("/flakebot bisect HEAD~3 HEAD", "usage"),
    ("/flakebot bisect main 89abcde", "7 to 40 hex"),
    ("/flakebot bisect 1234567 1234567", "same commit"),
    ("/flakebot bisect deadbee 89abcde", "does not resolve"),
    ("/flakebot bisect 1234567 89abcde no_such_test", "unknown test"),
    ("/flakebot bisect 1234567 89abcde --test=x", "usage"),
    ("/flakebot verify " + "9" * 400, "too long"),
])
def test_parse_refusals(line, reason):
    out = cmds.parse_command(line, POLICY)
    assert isinstance(out, str) and reason in out
    assert len(out) < 200
    # refusals never echo user text
    for tok in line.split()[2:]:
        if tok not in KNOWN_TESTS and len(tok) > 3:
            assert tok not in out


def test_bisect_disabled_without_resolver():
    p = Policy(allowed_accounts=frozenset({"alice"}))
    assert "not enabled" in cmds.parse_command("/flakebot bisect 1234567 89abcde", p)


def test_resolver_returning_garbage_is_refused():
    p = Policy(allowed_accounts=frozenset({"alice"}), resolve=lambda s: "1234567; rm -rf /")
    assert "does not resolve" in cmds.parse_command("/flakebot bisect 1234567 89abcde", p)
    p = Policy(allowed_accounts=frozenset({"alice"}), resolve=lambda s: 1 / 0)
    assert "does not resolve" in cmds.parse_command("/flakebot bisect 1234567 89abcde", p)


@pytest.mark.parametrize("text,line", [
    ("Patch Set 3:\n\n/flakebot verify 30", "/flakebot verify 30"),
    ("looks good\n  /flakebot verify\nthanks", "/flakebot verify"),
    ("> /flakebot verify 30\nquoted", None),
    ("```\n/flakebot verify\n```", None),
    ("please run /flakebot verify", None),
    ("/flakebotverify", None),
    ("/flakebot verify 1\n/flakebot verify 2", "/flakebot verify 1"),
    ("", None),
])
def test_command_line(text, line):
    assert cmds.command_line(text) == line


GERRIT_REPLY = ReplyTo("gerrit", change="spdk%2Fspdk~master~I1", revision="e" * 40)
PATCH, PARENT = "e" * 40, "d" * 40


@pytest.mark.parametrize("author,allowed", [
    (Author("gerrit", "1007", "stranger", "x@y"), True),  # by account id
    (Author("gerrit", "1", "ALICE", ""), True),  # case-insensitive username
    (Author("gerrit", "2", "bob", "Bob@Example.org"), True),  # by email
    (Author("gerrit", "3", "mallory", "mallory@example.org"), False),
    (Author("gerrit", "", "", ""), False),
])
def test_allow_list(author, allowed):
    assert POLICY.allows(author) is allowed


def test_groups_via_callable_and_failing_lookup_denies():
    calls = []

    def in_group(a, g):
        calls.append((a.username, g))
        if a.username == "boom":
            raise RuntimeError("ldap down")
        return a.username == "carol" and g == "spdk-core"

    p = Policy(allowed_groups=frozenset({"spdk-core"}), in_group=in_group)
    assert p.allows(Author("gerrit", "5", "carol"))
    assert not p.allows(Author("gerrit", "6", "dave"))
    assert not p.allows(Author("gerrit", "7", "boom"))


def test_github_association_groups():
    p = Policy(allowed_groups=frozenset({"association:MEMBER"}),
               in_group=cmds.github_association_checker())
    assert p.allows(Author("github", "1", "m", association="MEMBER"))
    assert not p.allows(Author("github", "2", "n", association="CONTRIBUTOR"))


def test_evaluate_stranger_silent_or_refused():
    mallory = Author("gerrit", "3", "mallory")
    assert cmds.evaluate("/flakebot verify", mallory, GERRIT_REPLY, "k", POLICY, patch=PATCH) is None
    p = Policy(allowed_accounts=frozenset({"alice"}), refuse_strangers=True)
    r = cmds.evaluate("/flakebot verify", mallory, GERRIT_REPLY, "k", p, patch=PATCH)
    assert isinstance(r, Refusal) and "allow-list" in r.reason


def test_evaluate_allowed_verify_holds_only_validated_values():
    alice = Author("gerrit", "1", "alice")
    c = cmds.evaluate("Patch Set 2:\n\n/flakebot verify 30 " + BLK, alice, GERRIT_REPLY, "k1",
                      POLICY, patch=PATCH.upper(), parent=PARENT, ref="refs/changes/72/22972/2")
    assert c == Command("verify", BLK, GERRIT_REPLY, alice, "k1", iterations=30, patch=PATCH,
                        parent=PARENT, ref="refs/changes/72/22972/2")


def test_evaluate_verify_needs_a_patch():
    alice = Author("github", "1", "alice")
    r = cmds.evaluate("/flakebot verify", alice, ReplyTo("github", repo="o/r", number=3322), "k",
                      POLICY, patch=None)
    assert isinstance(r, Refusal) and "pull request" in r.reason


def test_evaluate_drops_bad_ref_and_parent():
    alice = Author("gerrit", "1", "alice")
    c = cmds.evaluate("/flakebot verify", alice, GERRIT_REPLY, "k", POLICY, patch=PATCH,
                      parent="not-a-sha", ref="refs/heads/master; rm")
    assert c.parent is None and c.ref is None


def test_evaluate_ignores_own_account():
    bot = Author("gerrit", "9", "flakebot")
    assert cmds.evaluate("/flakebot verify", bot, GERRIT_REPLY, "k", POLICY, patch=PATCH) is None


def test_reply_targets():
    assert GERRIT_REPLY.target == "gerrit:spdk%2Fspdk~master~I1:" + "e" * 40
    assert ReplyTo("github", repo="o/r", number=5, is_pull=True).target == "github-issue:5"


# ------------------------------------------------------------------ Gerrit poller


@pytest.fixture
def gerrit():
    with FakeGerrit({"flakebot": "pw"}) as g:
        yield g


def gclient(g):
    return GerritClient(g.url, "flakebot", "pw", timeout=5, sleep=lambda s: None)


def test_poll_gerrit_first_pass_starts_now_and_replays_nothing(gerrit):
    n = gerrit.add_change(PATCH, parent=PARENT)
    gerrit.add_message(n, "alice", "/flakebot verify")
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    got, cur = cmds.poll_gerrit(gclient(gerrit), None, POLICY, now=lambda: now)
    assert got == [] and json.loads(cur)["ts"].startswith("2030-01-01 00:00:00.000")


def test_poll_gerrit_commands_and_cursor(gerrit):
    cursor = json.dumps({"ts": gerrit.now(), "ids": []})
    n = gerrit.add_change(PATCH, parent=PARENT, status="NEW")
    gerrit.add_message(n, "alice", "/flakebot verify 30")
    gerrit.add_message(n, "mallory", "/flakebot verify 30")  # stranger: silent
    gerrit.add_message(n, "alice", "just a comment")
    gerrit.add_message(n, "bob", "/flakebot verify 5 no_such_test")
    gerrit.add_message(n, "flakebot", "/flakebot verify", tag="autogenerated:flakebot")
    gerrit.add_message(n, "ci", "/flakebot verify", tag="autogenerated:ci")
    gerrit.account("bob", email="bob@example.org")
    client = gclient(gerrit)
    got, cur2 = cmds.poll_gerrit(client, cursor, POLICY)
    assert [type(x).__name__ for x in got] == ["Command", "Refusal"]
    c = got[0]
    assert c.action == "verify" and c.iterations == 30 and c.patch == PATCH and c.parent == PARENT
    assert c.author.username == "alice" and c.reply_to.revision == PATCH
    assert c.reply_to.change == gerrit.changes[n]["id"] and c.ref == f"refs/changes/{n % 100:02d}/{n}/1"
    assert c.key.startswith(f"gerrit:{n}:")
    assert "unknown test" in got[1].reason
    # nothing new: nothing returned, even though since: is inclusive
    again, cur3 = cmds.poll_gerrit(client, cur2, POLICY)
    assert again == [] and cur3 == cur2
    gerrit.add_message(n, "alice", "/flakebot bisect 1234567 89abcde")
    more, _ = cmds.poll_gerrit(client, cur3, POLICY)
    assert [(m.action, m.good, m.bad) for m in more] == [("bisect", GOOD, BAD)]


def test_poll_gerrit_same_millisecond_messages_are_not_lost(gerrit):
    n = gerrit.add_change(PATCH, parent=PARENT)
    ts = gerrit.now()
    cursor = json.dumps({"ts": "2000-01-01 00:00:00.000000000", "ids": []})
    gerrit.add_message(n, "alice", "/flakebot verify 1", date=ts)
    got, cur = cmds.poll_gerrit(gclient(gerrit), cursor, POLICY)
    assert len(got) == 1
    gerrit.add_message(n, "alice", "/flakebot verify 2", date=ts)  # same timestamp, later
    got, cur = cmds.poll_gerrit(gclient(gerrit), cur, POLICY)
    assert [c.iterations for c in got] == [2]


def test_poll_gerrit_comment_on_older_patchset_targets_that_patchset(gerrit):
    cursor = json.dumps({"ts": gerrit.now(), "ids": []})
    n = gerrit.add_change("a" * 40, parent=PARENT)
    gerrit.add_patchset(n, PATCH, parent="a" * 40)
    gerrit.add_message(n, "alice", "/flakebot verify", patchset=1)
    (c,), _ = cmds.poll_gerrit(gclient(gerrit), cursor, POLICY)
    assert c.patch == "a" * 40 and c.parent == PARENT and c.reply_to.revision == "a" * 40


def test_poll_gerrit_pages(gerrit):
    cursor = json.dumps({"ts": gerrit.now(), "ids": []})
    for i in range(7):
        n = gerrit.add_change(f"{i:x}" * 40, parent=PARENT)
        gerrit.add_message(n, "alice", f"/flakebot verify {i + 1}")
    got, _ = cmds.poll_gerrit(gclient(gerrit), cursor, POLICY, page_size=3)
    assert sorted(c.iterations for c in got) == [1, 2, 3, 4, 5, 6, 7]


def test_poll_gerrit_group_allow_list(gerrit):
    client = gclient(gerrit)
    carol = gerrit.account("carol")["_account_id"]
    gerrit.groups[str(carol)] = ["spdk-core"]
    p = Policy(allowed_groups=frozenset({"spdk-core"}), in_group=cmds.gerrit_group_checker(client))
    cursor = json.dumps({"ts": gerrit.now(), "ids": []})
    n = gerrit.add_change(PATCH, parent=PARENT)
    gerrit.add_message(n, "carol", "/flakebot verify")
    gerrit.add_message(n, "dave", "/flakebot verify")
    got, _ = cmds.poll_gerrit(client, cursor, p)
    assert [c.author.username for c in got] == ["carol"]


# ------------------------------------------------------------------ GitHub poller


@pytest.fixture
def github():
    with FakeGitHub(token="t") as gh:
        gh.add_issue(3322)
        gh.add_pull(77, head=PATCH, base=PARENT, merged=False)
        yield gh


def hclient(gh):
    return GitHubClient(gh.url, "spdk/spdk", "t", timeout=5, sleep=lambda s: None)


def test_poll_github_first_pass_starts_now(github):
    github.add_comment(77, "alice", "/flakebot verify")
    got, cur = cmds.poll_github(hclient(github), None, POLICY,
                                now=lambda: datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert got == [] and json.loads(cur)["ts"] == "2030-01-01T00:00:00Z"


def test_poll_github_commands_and_cursor(github):
    cursor = json.dumps({"ts": github.now(), "ids": []})
    github.add_comment(77, "alice", "/flakebot verify 10")
    github.add_comment(77, "mallory", "/flakebot verify 10")
    github.add_comment(3322, "alice", "/flakebot verify")  # an issue, not a PR
    github.add_comment(3322, "alice", "/flakebot bisect 1234567 89abcde " + BLK)
    github.add_comment(77, "flakebot", "/flakebot verify", user_type="Bot")
    client = hclient(github)
    got, cur2 = cmds.poll_github(client, cursor, POLICY)
    kinds = [(type(x).__name__, x.reply_to.number) for x in got]
    assert kinds == [("Command", 77), ("Refusal", 3322), ("Command", 3322)]
    v, _, b = got
    assert v.patch == PATCH and v.parent == PARENT and v.ref == "refs/pull/77/head"
    assert v.reply_to.is_pull and v.reply_to.target == "github-issue:77"
    assert (b.action, b.good, b.bad, b.test) == ("bisect", GOOD, BAD, BLK)
    again, cur3 = cmds.poll_github(client, cur2, POLICY)
    assert again == [] and cur3 == cur2


def test_poll_github_same_second_not_lost(github):
    ts = github.now()
    github.add_comment(77, "alice", "/flakebot verify 1", created_at=ts)
    got, cur = cmds.poll_github(hclient(github), json.dumps({"ts": "2000-01-01T00:00:00Z"}), POLICY)
    assert len(got) == 1
    github.add_comment(77, "alice", "/flakebot verify 2", created_at=ts)
    got, _ = cmds.poll_github(hclient(github), cur, POLICY)
    assert [c.iterations for c in got] == [2]


def test_poll_github_refuse_strangers(github):
    cursor = json.dumps({"ts": github.now(), "ids": []})
    github.add_comment(77, "mallory", "/flakebot verify")
    p = Policy(allowed_accounts=frozenset({"alice"}), refuse_strangers=True)
    (r,), _ = cmds.poll_github(hclient(github), cursor, p)
    assert isinstance(r, Refusal) and r.author.username == "mallory"


def test_policy_from_config(tmp_path):
    from flakebot.config import load_config
    p = tmp_path / "flakebot.toml"
    p.write_text('[commands]\nallow = ["alice", "group:spdk-core"]\nrefuse_strangers = true\n'
                 'max_verify_iterations = 40\n[gerrit]\nuser = "flakebot"\n')
    cfg = load_config(p, env={})
    pol = cmds.policy_from_config(cfg, resolve=resolver,
                                  in_group=lambda a, g: a.username == "carol" and g == "spdk-core")
    assert pol.allows(Author("gerrit", "1", "alice")) and pol.allows(Author("gerrit", "2", "carol"))
    assert not pol.allows(Author("gerrit", "3", "mallory"))
    assert pol.refuse_strangers and pol.max_iterations == 40 and pol.default_iterations <= 40
    assert pol.ignores(Author("gerrit", "9", "flakebot"))
    assert pol.default_test in KNOWN_TESTS


def test_policy_from_config_empty_allow_list_allows_nobody(tmp_path, monkeypatch):
    from flakebot.config import load_config
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, env={"FLAKEBOT_CONFIG": ""})
    pol = cmds.policy_from_config(cfg)
    assert not pol.allows(Author("github", "1", "anyone"))


def test_group_checker_dispatches_by_platform(gerrit):
    client = gclient(gerrit)
    carol = gerrit.account("carol")["_account_id"]
    gerrit.groups[str(carol)] = ["spdk-core"]
    check = cmds.group_checker(client)
    assert check(Author("gerrit", str(carol), "carol"), "spdk-core")
    assert not check(Author("gerrit", "424242", "x"), "spdk-core")
    assert check(Author("github", "1", "m", association="MEMBER"), "association:MEMBER")
    assert not check(Author("github", "1", "m", association="NONE"), "association:NONE")
    assert not cmds.group_checker(None)(Author("gerrit", "1", "carol"), "spdk-core")


def test_poll_gerrit_sees_commands_on_merged_changes_once_and_asks_by_age():
    """Culprits are merged: a command on a merged (or abandoned) change is read,
    once; the query bounds changes by age (-age:Nd), not by status."""
    from datetime import timedelta

    wall = [datetime(2031, 5, 1, tzinfo=timezone.utc)]
    with FakeGerrit({"flakebot": "pw"}, clock=lambda: wall[0]) as gerrit:
        cursor = json.dumps({"ts": gerrit.now(), "ids": []})
        merged = gerrit.add_change(PATCH, parent=PARENT, status="MERGED")
        gone = gerrit.add_change("e" * 40, parent=PARENT, status="ABANDONED")
        gerrit.add_message(merged, "alice", "/flakebot verify 7")
        gerrit.add_message(gone, "alice", "/flakebot verify 8")
        client = gclient(gerrit)
        got, cur = cmds.poll_gerrit(client, cursor, POLICY, max_age_days=3)
        assert sorted(c.iterations for c in got) == [7, 8]
        q = [p for m, p in gerrit.requests if p.startswith("/a/changes/?")][-1]
        assert "-age%3A3d" in q and "status" not in q
        again, cur2 = cmds.poll_gerrit(client, cur, POLICY, max_age_days=3)
        assert again == [] and cur2 == cur
        # days later: only the new command is read (the old ones never again)
        wall[0] += timedelta(days=4)
        gerrit.add_message(merged, "alice", "/flakebot verify 9")
        got, _ = cmds.poll_gerrit(client, cur2, POLICY, max_age_days=3)
        assert [c.iterations for c in got] == [9]
