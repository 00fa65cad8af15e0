"""Issue 6's "done when", through the real wiring (Service jobs, `flakebot poll`),
on simulated hosts and the fake Gerrit and GitHub (127.0.0.1 only):

- a campaign the service drives lands exactly once on the culprit's Gerrit
  change, its PR and the tracking issue, also when the bot is killed between
  posting and recording; injected rate limits delay but do not lose posts;
- `/flakebot verify` from an allowed account is answered with both rates; a
  stranger gets nothing; cursors persist across runs and restarts;
- hostile comment text never reaches a run request (refused, or validated values only).
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from flakebot.service import review as review_service
from flakebot.campaigns.bisect import BisectParams, open_bisect
from flakebot.config import load_config
from flakebot.demo.repo import build_demo_repo
from tests.fakes.gerrit import FakeGerrit
from tests.fakes.github import FakeGitHub
from flakebot.history import History
from flakebot.model import KNOWN_TESTS
from flakebot.reporters.gerrit import DEFAULT_TAG, GerritClient, GerritReporter
from flakebot.reporters.github import GitHubClient, GitHubReporter
from flakebot.service.daemon import Service
from flakebot.store import Store
from tests.helpers_review import FakeClock

TEST = "vfio_user_nvme_restart_vm"
CULPRIT, FIX = 40, 50
ISSUE = 3322


class Killed(BaseException):
    pass


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("wiring")
    return build_demo_repo(base / "repo", n_commits=60, culprit_index=CULPRIT, fix_index=FIX, seed=3)


@pytest.fixture
def g():
    with FakeGerrit({"flakebot": "pw"}) as fake:
        fake.set_clock(datetime.now(timezone.utc))
        yield fake


@pytest.fixture
def gh():
    with FakeGitHub(token="t") as fake:
        fake.set_clock(datetime.now(timezone.utc))
        fake.add_issue(ISSUE)
        yield fake


ENV = {"FLAKEBOT_GERRIT_PASSWORD": "pw", "FLAKEBOT_GITHUB_TOKEN": "t"}


def make_cfg(demo, tmp_path, g=None, gh=None, **over):
    o = {"store.db": str(tmp_path / "f.db"), "spdk.repo": str(demo.path), "executor.name": "sim",
         "tests.names": [TEST], "sim.seed": 2, "report.dir": str(tmp_path / "reports"),
         "commands.allow": ["alice"]}
    if g is not None:
        o.update({"gerrit.url": g.url, "gerrit.user": "flakebot"})
    if gh is not None:
        o.update({"github.api_url": gh.url, "github.repo": "spdk/spdk"})
    o.update(over)
    return load_config(env=ENV).with_overrides(o)


def fake_reporters(g, gh, clock):
    out = {}
    if g is not None:
        out["gerrit"] = GerritReporter(GerritClient(g.url, "flakebot", "pw", timeout=5, sleep=clock.sleep))
    if gh is not None:
        out["github"] = GitHubReporter(GitHubClient(gh.url, "spdk/spdk", "t", timeout=5, sleep=clock.sleep,
                                                    clock=clock.time))
    return out


def service(cfg, g, gh, clock, **kw):
    return Service(cfg, reporters_factory=lambda c: fake_reporters(g, gh, clock), **kw)


def after_now(fake):
    """The fake's clock just after the real one (a first pass put the cursor at "now")."""
    fake.set_clock(datetime.now(timezone.utc) + timedelta(seconds=2))


def bot_comments(gh, number):
    return [c for c in gh.comments_on(number) if c["user"]["login"] == "flakebot"]


# ------------------------------------------------------------------ results out


def test_service_delivers_a_bisection_once_also_across_a_kill(demo, g, gh, tmp_path, monkeypatch):
    culprit = demo.shas[CULPRIT]
    change = g.add_change(culprit, status="MERGED", subject="the culprit")
    gh.add_pull(2048, head=culprit, commits=[culprit])
    clock = FakeClock()
    cfg = make_cfg(demo, tmp_path, g, gh)
    h = History(demo.path)
    with Store(cfg.store.db) as store:
        cid, _ = open_bisect(store, TEST, h.commit(demo.shas[30]), h.first_parent_range(demo.shas[30], demo.shas[46]),
                             BisectParams.from_config(cfg), is_ancestor=h.is_ancestor)
    h.close()
    # rate limits on the way: delayed, not lost
    gh.rate_limit_next("secondary", method="POST")
    gh.rate_limit_next("primary", reset_in=90, method="POST")

    real_mark = Store.mark_comment

    def mark(self, key, status, external_id=None, error=None):
        if status == "posted" and key.startswith("github-issue"):
            raise Killed()  # posted, but the process dies before recording it
        return real_mark(self, key, status, external_id, error)

    monkeypatch.setattr(Store, "mark_comment", mark)
    done = []
    with pytest.raises(Killed):
        service(cfg, g, gh, clock, on_campaign_done=done.append).drive_campaigns()
    monkeypatch.setattr(Store, "mark_comment", real_mark)
    with Store(cfg.store.db) as store:
        row = store.get_campaign(cid)
        assert row["status"] == "done" and row["culprit"] == culprit  # stored before any post
        # a culprit's deliveries are keyed by (culprit, test), not by campaign
        assert store.get_comment(f"github-issue:{ISSUE}:{culprit}:{TEST}")["status"] == "queued"

    # restart: the driver's first flush finds the post and records it; nothing is posted again
    svc = service(cfg, g, gh, clock)
    assert svc.drive_campaigns() == []
    svc.poll_reviews()  # a poller pass flushes too
    assert not svc.errors
    (review,) = g.reviews_on(change, DEFAULT_TAG)
    assert culprit[:10] in review["message"] and "culprit found" in review["message"]
    assert len(bot_comments(gh, 2048)) == 1 and len(bot_comments(gh, ISSUE)) == 1
    assert culprit[:10] in bot_comments(gh, ISSUE)[0]["body"]
    assert 60 in clock.sleeps and sum(clock.sleeps) >= 89
    with Store(cfg.store.db) as store:
        assert {r["status"] for r in store.queued_comments(include_failed=True)} == set()


def test_nightly_rise_is_posted_on_the_tracking_issue_once(demo, gh, tmp_path):
    clock = FakeClock()
    cfg = make_cfg(demo, tmp_path, None, gh)
    svc = service(cfg, None, gh, clock)
    notify = svc._notify()
    assert notify is not None
    event = {"id": 4, "kind": "rise", "test": TEST, "before_sha": demo.shas[30], "after_sha": demo.shas[46],
             "tip_sha": demo.shas[46], "probability": 0.997, "campaign_id": 3}
    notify(event)
    notify(event)  # told twice, posted once
    (c,) = bot_comments(gh, ISSUE)
    assert "rose" in c["body"] and demo.shas[30][:10] in c["body"] and "campaign 3" in c["body"].lower()


def test_without_gerrit_or_github_nothing_is_polled_or_posted(demo, tmp_path):
    cfg = load_config(env={}).with_overrides({"store.db": str(tmp_path / "f.db"), "spdk.repo": str(demo.path)})
    svc = Service(cfg)
    assert svc.review_pass() is None and svc._notify() is None
    res = CliRunner().invoke(_main(), ["poll", "--db", str(tmp_path / "f.db")], env={"FLAKEBOT_CONFIG": ""})
    assert res.exit_code == 2 and "nothing to poll" in res.output


def _main():
    from flakebot.cli.app import main
    return main


# ------------------------------------------------------------------ commands in


def test_verify_from_gerrit_through_the_service(demo, g, tmp_path):
    clock = FakeClock()
    cfg = make_cfg(demo, tmp_path, g, None)
    patch, parent = demo.shas[FIX], demo.shas[FIX - 1]
    n = g.add_change(patch, parent=parent, status="NEW")
    svc = service(cfg, g, None, clock)
    svc.poll_reviews()  # first pass: the cursor starts now; old comments are never replayed
    with Store(cfg.store.db) as store:
        first = store.get_meta("cursor:gerrit")
        assert first and store.get_meta("cursor:github") is None
    after_now(g)
    g.add_message(n, "alice", "/flakebot verify 60")
    g.add_message(n, "mallory", "/flakebot verify 60")
    svc.poll_reviews()
    with Store(cfg.store.db) as store:
        (camp,) = store.campaigns()
        assert camp["kind"] == "verify" and camp["status"] == "open"
        assert (camp["good"], camp["bad"]) == (parent, patch) and camp["params"]["iterations"] == 60
        assert store.get_meta("cursor:gerrit") != first
    (ack,) = g.reviews_on(n, DEFAULT_TAG)
    assert "verify started" in ack["message"]
    # a restarted service: the cursor is in the store, nothing is started twice
    svc2 = service(cfg, g, None, clock)
    svc2.poll_reviews()
    (result,) = svc2.drive_campaigns()
    assert result["kind"] == "verify" and result["verdict"] == "lowers"
    svc2.poll_reviews()
    assert not svc.errors and not svc2.errors
    reviews = g.reviews_on(n, DEFAULT_TAG)
    assert len(reviews) == 2
    answer = reviews[1]["message"]
    assert answer.count("probability") == 1 and reviews[1]["revision"] == patch  # said once
    assert "The patch lowers the failure rate" in answer
    for side in ("parent_rates", "patch_rates"):
        assert f"{result[side]['timeout']['k']}/60" in answer
    with Store(cfg.store.db) as store:
        assert len(store.campaigns()) == 1  # mallory started nothing
    assert all("mallory" not in r["message"] for r in g.reviews)


def test_poll_command_answers_verify_on_github_and_keeps_cursors(demo, gh, tmp_path):
    patch, parent = demo.shas[FIX], demo.shas[FIX - 1]
    gh.add_pull(77, head=patch, base=parent, merged=False)
    cfgfile = tmp_path / "flakebot.toml"
    cfgfile.write_text(f'[store]\ndb = "{tmp_path / "f.db"}"\n[spdk]\nrepo = "{demo.path}"\n'
                       f'[tests]\nnames = ["{TEST}"]\n[executor]\nname = "sim"\n[sim]\nseed = 2\n'
                       f'[github]\napi_url = "{gh.url}"\n'
                       f'[commands]\nallow = ["alice"]\n')
    env = {"FLAKEBOT_CONFIG": str(cfgfile), "FLAKEBOT_GITHUB_TOKEN": "t"}
    run = lambda *a: CliRunner().invoke(_main(), ["poll", *a], env=env)  # noqa: E731

    res = run("--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["polled"] == ["github"]
    after_now(gh)
    gh.add_comment(77, "alice", "/flakebot verify 60")
    gh.add_comment(77, "stranger", "/flakebot verify 60")
    gh.rate_limit_next("retry-after", status=429, retry_after=1, method="POST")  # delays, loses nothing

    # a dry run shows the answers and changes nothing on the review side
    res = run("--dry-run", str(tmp_path / "dry"), "--json")
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in (tmp_path / "dry").iterdir())
    assert len(files) == 2 and all(f.endswith(".md") for f in files)  # the ack and the answer
    assert bot_comments(gh, 77) == []

    res = run("--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    (cmd,) = data["commands"]
    assert cmd["action"] == "verify" and not cmd["started"]  # the dry run's campaign, not a second one
    (answer,) = bot_comments(gh, 77)  # the dry run already ran it: the answer, no "started" note
    assert "lowers the failure rate" in answer["body"] and "parent (" in answer["body"]
    assert "60 iterations on each side" in answer["body"]
    # again: nothing new, nothing posted twice
    res = run("--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["commands"] == []
    assert len(bot_comments(gh, 77)) == 1
    with Store(tmp_path / "f.db") as store:
        assert len(store.campaigns()) == 1 and json.loads(store.get_meta("cursor:github"))["ts"]


@pytest.mark.parametrize("text", [
    "/flakebot verify 5; rm -rf /",
    "/flakebot verify $(touch /tmp/flakebot-pwned)",
    "/flakebot verify 5 `id`",
    "/flakebot bisect HEAD~3 HEAD",
    "/flakebot bisect 53ca0afb57 cc1a07f73a\"; curl evil",
    "/flakebot verify 5 vfio_user_nvme_restart_vm&&reboot",
    "/flakebot verify 100000000000",
])
def test_hostile_commands_are_refused_and_start_nothing(demo, gh, tmp_path, text):
    clock = FakeClock()
    cfg = make_cfg(demo, tmp_path, None, gh)
    gh.add_pull(78, head=demo.shas[FIX], base=demo.shas[FIX - 1], merged=False)
    svc = service(cfg, None, gh, clock)
    svc.poll_reviews()
    after_now(gh)
    gh.add_comment(78, "alice", text)
    svc.poll_reviews()
    with Store(cfg.store.db) as store:
        assert store.campaigns() == [] and store.builds() == []
    (answer,) = bot_comments(gh, 78)
    assert "not running this command" in answer["body"]
    for bad in ("rm -rf", "touch", "`id`", "curl", "reboot", "100000000000"):
        assert bad not in answer["body"]  # the comment's text is never echoed


def test_bisect_command_opens_a_campaign_with_validated_values_and_answers_the_thread(demo, g, gh, tmp_path):
    clock = FakeClock()
    cfg = make_cfg(demo, tmp_path, g, gh)
    culprit = demo.shas[CULPRIT]
    change = g.add_change(culprit, status="MERGED")
    gh.add_pull(2049, head=culprit, commits=[culprit])
    svc = service(cfg, g, gh, clock)
    svc.poll_reviews()
    good, bad = demo.shas[30], demo.shas[46]
    after_now(gh)
    gh.add_comment(ISSUE, "alice", f"please\n/flakebot bisect {good[:10]} {bad[:12]} {TEST}")
    svc.poll_reviews()
    svc.poll_reviews()  # a second pass starts nothing new
    with Store(cfg.store.db) as store:
        (camp,) = store.campaigns()
        assert camp["kind"] == "bisect" and (camp["good"], camp["bad"]) == (good, bad)
        assert camp["params"]["reply_to"] == [f"github-issue:{ISSUE}"] and len(camp["params"]["command_keys"]) == 1
    (result,) = svc.drive_campaigns()
    assert result["culprit"] == culprit
    with Store(cfg.store.db) as store:
        for b in store.builds():  # what reached the executor: validated values only
            assert re.fullmatch(r"[0-9a-f]{40}", b["commit_sha"]) and set(b["tests"]) <= set(KNOWN_TESTS)
    issue = bot_comments(gh, ISSUE)
    assert len(issue) == 2 and "bisect started" in issue[0]["body"]
    assert "culprit found" in issue[1]["body"]  # the thread's answer is the tracking-issue post, once
    assert len(bot_comments(gh, 2049)) == 1 and len(g.reviews_on(change, DEFAULT_TAG)) == 1


def test_killed_between_storing_a_result_and_queueing_it_still_delivers(demo, g, tmp_path, monkeypatch):
    from flakebot.campaigns.verify import VerifyParams, open_verify

    clock = FakeClock()
    cfg = make_cfg(demo, tmp_path, g, None)
    patch, parent = demo.shas[FIX], demo.shas[FIX - 1]
    n = g.add_change(patch, parent=parent, status="NEW")
    change_id = g.changes[n]["id"]
    h = History(demo.path)
    with Store(cfg.store.db) as store:
        cid, _ = open_verify(store, TEST, h.commit(patch), h.commit(parent),
                             VerifyParams.from_config(cfg, 10, command_key="gerrit:1:m1",
                                                      reply_to=f"gerrit:{change_id}:{patch}"))
    h.close()

    def killed(*a, **kw):
        raise Killed()

    monkeypatch.setattr(review_service, "deliver_campaign", killed)
    with pytest.raises(Killed):
        service(cfg, g, None, clock).drive_campaigns()
    monkeypatch.undo()
    with Store(cfg.store.db) as store:
        assert store.get_campaign(cid)["status"] == "done" and store.queued_comments() == []
    assert g.reviews_on(n, DEFAULT_TAG) == []
    svc = service(cfg, g, None, clock)
    assert svc.drive_campaigns() == []  # nothing left to drive; the missing delivery is queued and posted
    svc.drive_campaigns()
    (answer,) = g.reviews_on(n, DEFAULT_TAG)
    assert "flakebot verify" in answer["message"] and answer["revision"] == patch


def test_poll_killed_mid_verify_finishes_it_on_the_next_pass(demo, gh, tmp_path):
    from flakebot.campaigns.wiring import build_executor

    clock = FakeClock()
    cfg = make_cfg(demo, tmp_path, None, gh)
    gh.add_pull(79, head=demo.shas[FIX], base=demo.shas[FIX - 1], merged=False)
    reps = fake_reporters(None, gh, clock)
    clients = review_service.clients_of(reps)
    h = History(demo.path)

    def one_pass(ex):
        with Store(cfg.store.db) as store:
            return review_service.poll_pass(cfg, store, h, clients=clients, reporters=reps, executor=ex)

    one_pass(build_executor(cfg))  # the first cursor
    after_now(gh)
    gh.add_comment(79, "alice", "/flakebot verify 20")
    ex = build_executor(cfg)
    real, calls = ex.console, {"n": 0}

    def console(handle):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed()
        return real(handle)

    ex.console = console
    with pytest.raises(Killed):
        one_pass(ex)
    assert [c["body"] for c in bot_comments(gh, 79) if "verify started" in c["body"]]
    rep = one_pass(build_executor(cfg))  # no new comment: the open verify is finished and answered
    assert rep.commands == [] and len(rep.results) == 1 and rep.results[0]["runs"] == 40
    assert len(bot_comments(gh, 79)) == 2 and "flakebot verify" in bot_comments(gh, 79)[1]["body"]
    one_pass(build_executor(cfg))
    assert len(bot_comments(gh, 79)) == 2
    h.close()
