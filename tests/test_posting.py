"""Exactly once across processes (issue 11, part 3).

- two `flakebot poll` and `flakebot serve` subprocesses on one database post
  every delivery once (claims in the store), also when a poller is killed -9
  mid-post (its claim is taken over, the marker found);
- claims: one winner, a lapsed claim or a dead local holder is taken over;
- one culprit comment per (culprit, test) however many campaigns reach it;
- `flakebot status` lists queued and failed deliveries with their last error;
- `flakebot poll` exits 1 when a platform failed and counts every post of the pass;
- a command on a merged Gerrit change is read, once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from flakebot.cli.app import main
from tests.fakes.gerrit import FakeGerrit
from tests.fakes.github import FakeGitHub
from flakebot.reporters import github_marker, outbox
from flakebot.reporters.gerrit import DEFAULT_TAG, GerritClient, GerritReporter
from flakebot.reporters.github import GitHubClient, GitHubReporter
from flakebot.store import Store
from tests.helpers_review import FakeClock
from tests.posting_world import ENV, PostingWorld, git_repo
from tests.test_render import CULPRIT, bisect_result, verify_result

TEST = "vfio_user_nvme_restart_vm"


# ------------------------------------------------------------------ processes


def test_two_polls_and_serve_at_once_post_every_delivery_once(tmp_path):
    world = PostingWorld(tmp_path, write_latency=0.05)
    try:
        cfg, db, keys = world.prepare()
        trial = world.run_together(cfg, db, keys)
    finally:
        world.close()
    assert trial.deliveries == 10  # 6 culprit deliveries of 4 campaigns (2 culprits), 4 refusals
    assert (trial.duplicates, trial.lost, trial.not_recorded) == (0, 0, 0)
    assert trial.exit_codes == [0, 0, 0]


def test_a_poller_killed_mid_post_leaves_a_claim_the_next_one_takes_over(tmp_path):
    world = PostingWorld(tmp_path, write_latency=30.0)  # a post is applied, its answer never arrives
    try:
        cfg, db, keys = world.prepare()
        proc = world.start(cfg, "poll")
        world.wait_for_post()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Store(db) as store:
            (held,) = [r for r in store.queued_comments() if r["claimed_by"]]
            assert held["claimed_by"].split(":")[1] == str(proc.pid) and held["claim_until"]
        # status shows the claimed delivery; the restart takes it over at once (its holder is gone)
        env = {**ENV, "FLAKEBOT_CONFIG": str(cfg)}
        out = CliRunner().invoke(main, ["status"], env=env).output
        assert f"queued {held['key']}" in out and f"claimed by {held['claimed_by']}" in out
        world.g.write_latency = world.gh.write_latency = 0.0
        again = world.start(cfg, "poll")
        _, err = again.communicate(timeout=120)
        assert again.returncode == 0, err
        trial = world.count(db, keys)
        assert (trial.duplicates, trial.lost, trial.not_recorded) == (0, 0, 0)
        with Store(db) as store:
            assert store.get_comment(held["key"])["status"] == "posted"
            assert not [r for r in store.queued_comments(include_failed=True)]
    finally:
        world.close()


# ------------------------------------------------------------------ claims


def test_claims_one_winner_lapse_and_dead_holders(tmp_path):
    now = [datetime(2031, 1, 1, tzinfo=timezone.utc)]
    s = Store(tmp_path / "f.db", clock=lambda: now[0])
    for k in ("a", "b", "c"):
        s.queue_comment(k, "github-issue:1", "x")
    assert s.claim_comment("a", "h1:1:x", 60) and not s.claim_comment("a", "h2:2:y", 60)
    assert s.claim_comment("a", "h1:1:x", 60)  # the holder may renew
    now[0] += timedelta(seconds=61)
    assert s.claim_comment("a", "h2:2:y", 60)  # lapsed: taken over
    assert not s.claim_comment("a", "h1:1:x", 60)
    # another host's claim is respected until it lapses; a gone local holder is not
    assert s.claim_comment("b", "elsewhere:1:z", 3600)
    assert not s.claim_comment("b", "me:1:x", 60, stale=outbox.holder_is_gone)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = f"{outbox.HOST}:{dead.pid}:n"
    assert s.claim_comment("c", holder, 3600)
    assert outbox.holder_is_gone(holder) and not outbox.holder_is_gone(outbox.claimant())
    assert not outbox.holder_is_gone(f"{outbox.HOST}:{os.getppid()}:n")  # alive
    assert s.claim_comment("c", outbox.claimant(), 60, stale=outbox.holder_is_gone)
    # recording releases the claim; a posted row is never claimed, nor set back to queued
    s.mark_comment("c", "posted", external_id="9")
    assert s.get_comment("c")["claimed_by"] is None and not s.claim_comment("c", "h2:2:y", 60)
    s.mark_comment("c", "queued", error="late answer of a lapsed claim")
    assert s.get_comment("c")["status"] == "posted"
    s.close()


def test_flush_leaves_rows_another_live_process_holds(tmp_path):
    s = Store(tmp_path / "f.db")
    s.queue_comment("k", "github-issue:1", "x")
    s.claim_comment("k", f"{outbox.HOST}:{os.getppid()}:other", 3600)  # a live process holds it

    class Never:
        platform = "github"

        def find_posted(self, item):
            raise AssertionError("must not be looked up")

        post = find_posted

    rep = outbox.flush(s, {"github": Never()})
    assert rep.busy == ["k"] and rep.posted == [] and s.get_comment("k")["status"] == "queued"
    s.close()


# ------------------------------------------------------------------ (culprit, test)


@pytest.fixture
def fakes():
    with FakeGerrit({"flakebot": "pw"}) as g, FakeGitHub(token="t") as gh:
        yield g, gh


def _reporters(g, gh):
    clock = FakeClock()
    return {"gerrit": GerritReporter(GerritClient(g.url, "flakebot", "pw", timeout=5, sleep=clock.sleep)),
            "github": GitHubReporter(GitHubClient(gh.url, "spdk/spdk", "t", timeout=5, sleep=clock.sleep,
                                                  clock=clock.time))}


def test_one_culprit_comment_per_culprit_and_test_across_three_campaigns(fakes, tmp_path):
    g, gh = fakes
    change = g.add_change(CULPRIT, status="MERGED")
    gh.add_pull(2048, head=CULPRIT, commits=[CULPRIT])
    for n in (3322, 70, 71, 72):
        gh.add_issue(n)
    reps = _reporters(g, gh)
    with Store(tmp_path / "f.db") as store:
        for cid, thread in ((7, 70), (8, 71), (9, 72)):  # three campaigns, each asked on its own thread
            rep = outbox.deliver_result(store, bisect_result(campaign_id=cid), reps,
                                        tracking_issues={TEST: 3322}, reply_to=f"github-issue:{thread}")
            assert rep.done and not rep.errors
            assert len(rep.posted) == (4 if cid == 7 else 1)  # later ones: only their own thread
        # another test with the same culprit is another finding
        other = bisect_result(campaign_id=10, test="vfio_user_virtio_blk_restart_vm")
        outbox.deliver_result(store, other, reps)
    ours = lambda cs: [c for c in cs if c["user"]["login"] == "flakebot"]  # noqa: E731
    assert len(g.reviews_on(change, DEFAULT_TAG)) == 2
    assert len(ours(gh.comments_on(2048))) == 2 and len(ours(gh.comments_on(3322))) == 1
    assert [len(ours(gh.comments_on(n))) for n in (70, 71, 72)] == [1, 1, 1]
    assert github_marker("reply:github-issue:72:9") in ours(gh.comments_on(72))[0]["body"]


# ------------------------------------------------------------------ status and poll


def _cfg(tmp_path, g=None, gh=None) -> dict:
    text = (f'[store]\ndb = "{tmp_path / "f.db"}"\n[spdk]\nrepo = "{git_repo(tmp_path / "repo")}"\n'
            f'[executor]\nname = "sim"\n[commands]\nallow = ["alice"]\n')
    if g is not None:
        text += f'[gerrit]\nurl = "{g.url}"\nuser = "flakebot"\n'
    if gh is not None:
        text += f'[github]\napi_url = "{gh.url}"\nrepo = "spdk/spdk"\n'
    (tmp_path / "flakebot.toml").write_text(text)
    # only the configured fakes' secrets: an unset secret means "not configured", never the real service
    return {"FLAKEBOT_GERRIT_PASSWORD": "pw" if g is not None else "",
            "FLAKEBOT_GITHUB_TOKEN": "t" if gh is not None else "",
            "FLAKEBOT_CONFIG": str(tmp_path / "flakebot.toml")}


def test_status_lists_queued_and_failed_deliveries_with_their_last_error(fakes, tmp_path):
    g, gh = fakes
    gh.add_issue(3322)
    env = _cfg(tmp_path)
    with Store(tmp_path / "f.db") as store:
        outbox.deliver_result(store, bisect_result(), _reporters(g, gh), tracking_issues={TEST: 3322})
        # no change holds the culprit (failed for good); GitHub has no PR or commit for it (failed)
        store.queue_comment("reply:github-issue:5:3", "github-issue:5", "x")
        store.mark_comment("reply:github-issue:5:3", "queued", error="GitHub POST: 503 unavailable")
    res = CliRunner().invoke(main, ["status", "--json"], env=env)
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)["deliveries"]
    assert d["queued"] == 1 and d["failed"] == 2
    (q,) = d["queued_items"]
    assert q["key"] == "reply:github-issue:5:3" and q["last_error"] == "GitHub POST: 503 unavailable"
    assert {f["key"].split(":")[0] for f in d["failed_items"]} == {"gerrit-commit", "github-culprit"}
    assert all(f["last_error"] for f in d["failed_items"])
    out = CliRunner().invoke(main, ["status"], env=env).output
    assert "deliveries: 1 queued, 2 failed" in out
    assert "queued reply:github-issue:5:3" in out and "503 unavailable" in out
    # all delivered: one line
    with Store(tmp_path / "f.db") as store:
        for r in store.queued_comments(include_failed=True):
            store.mark_comment(r["key"], "posted")
    assert "deliveries: none queued or failed" in CliRunner().invoke(main, ["status"], env=env).output


def test_poll_exits_1_when_a_platform_fails_and_counts_every_post_of_the_pass(fakes, tmp_path):
    g, gh = fakes
    for n in (3322, 77):
        gh.add_issue(n)
    env = {**_cfg(tmp_path, g, gh), "FLAKEBOT_GERRIT_PASSWORD": "wrong"}
    with Store(tmp_path / "f.db") as store:
        store.set_meta("cursor:github", json.dumps({"ts": "2000-01-01T00:00:00Z", "ids": []}))
        store.set_meta("cursor:gerrit", json.dumps({"ts": "2000-01-01 00:00:00.000000000", "ids": []}))
        # posted by the pass's first flush
        store.queue_comment("k1", "github-issue:3322", "one\n\n" + github_marker("k1"))
        # a finished verify asked for on #77: queued and posted by the pass's last flush
        cid = store.create_campaign("verify", TEST, "b" * 40, "a" * 40, ["a" * 40],
                                    {"reply_to": "github-issue:77"})
        store.finish_campaign(cid, "lowers", None, 0.99, {**verify_result(), "campaign_id": cid})
    res = CliRunner().invoke(main, ["poll"], env=env)
    assert res.exit_code == 1, res.output
    assert "answers posted 2," in res.stdout
    assert res.stderr.startswith("error: gerrit: ") and "401" in res.stderr and "wrong" not in res.stderr
    assert len(gh.comments_on(77)) == 1 and len(gh.comments_on(3322)) == 1
    # with good credentials (and nothing failing): exit 0
    env["FLAKEBOT_GERRIT_PASSWORD"] = "pw"
    res = CliRunner().invoke(main, ["poll", "--json"], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["flush"]["posted"] == []
    # a delivery that fails (GitHub down) also makes the pass fail; the item stays queued
    with Store(tmp_path / "f.db") as store:
        store.queue_comment("k2", "github-issue:3322", "two\n\n" + github_marker("k2"))
    gh.fail_next(503, count=100, method="POST")
    res = CliRunner().invoke(main, ["poll", "--json"], env=env)
    assert res.exit_code == 1 and json.loads(res.stdout)["flush"]["pending"] == ["k2"]
    assert "error: github: " in res.stderr


def test_a_command_on_a_merged_gerrit_change_is_read_once(fakes, tmp_path):
    g, gh = fakes
    change = g.add_change("e" * 40, status="MERGED")
    env = _cfg(tmp_path, g)
    res = CliRunner().invoke(main, ["poll", "--json"], env=env)  # the first pass starts "now"
    assert res.exit_code == 0, res.output
    g.set_clock(datetime.now(timezone.utc) + timedelta(seconds=2))
    g.add_message(change, "alice", "/flakebot verify 0")
    for expected in (1, 0):
        res = CliRunner().invoke(main, ["poll", "--json"], env=env)
        assert res.exit_code == 0, res.output
        assert len(json.loads(res.stdout)["refusals"]) == expected
    (answer,) = g.reviews_on(change, DEFAULT_TAG)
    assert "between 1 and" in answer["message"]
