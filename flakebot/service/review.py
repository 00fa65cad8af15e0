"""Review glue: `/flakebot` commands in, campaign results out.

What `flakebot poll`, `flakebot verify` and the service share:

- :func:`poll_pass`: one pass of the Gerrit and GitHub pollers (whichever are
  configured). Cursors live in the store's meta table (``cursor:gerrit``,
  ``cursor:github``). Each command starts its campaign once: the command's
  key is stored in the campaign's params and looked up before anything is
  started, so a pass that died before saving its cursor starts nothing twice.
  Refusals are queued as replies. The cursor is saved after every command of
  the pass has its campaign (or reply) stored; then the outbox is flushed.
- :func:`deliver_campaign`: a finished campaign's result to the culprit's
  Gerrit change and GitHub PR, the test's tracking issue and every review
  thread that asked for it (``outbox.deliver_result``; the result is already
  in the store).
- :func:`notifier`: the nightly cycle's ``notify(event)``: a rise or fall is
  rendered and posted on the test's tracking issue.

Nothing from a comment reaches a shell or a Jenkins parameter: campaigns are
started only from a :class:`flakebot.service.commands.Command`, which holds validated
values (full SHAs, a known test name, an int).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from flakebot.service import commands as cmds
from flakebot.report import comments as render
from flakebot.campaigns.bisect import BisectParams, open_bisect
from flakebot.config import Config
from flakebot.history import HistoryError
from flakebot.campaigns.lease import LeaseHeld
from flakebot.model import Commit
from flakebot.reporters import Reporter, outbox
from flakebot.store import Store
from flakebot.campaigns.verify import VerifyCampaign, VerifyParams, find_by_command, open_verify

log = logging.getLogger("flakebot.review")

PLATFORMS = ("gerrit", "github")


# ---------------------------------------------------------------- clients


def clients_from_config(cfg: Config, *, sleep=None) -> dict[str, object]:
    """REST clients for reading comments, for the configured platforms (the
    same conditions as ``outbox.reporters_from_config``)."""
    from flakebot.reporters.gerrit import GerritClient
    from flakebot.reporters.github import GitHubClient

    kw = {"sleep": sleep} if sleep is not None else {}
    out: dict[str, object] = {}
    pw = cfg.secret("gerrit.password_env")
    if cfg.gerrit.url and cfg.gerrit.user and pw:
        out["gerrit"] = GerritClient(cfg.gerrit.url, cfg.gerrit.user, pw, **kw)
    token = cfg.secret("github.token_env")
    if token:
        out["github"] = GitHubClient(cfg.github.api_url, cfg.github.repo, token, **kw)
    return out


def clients_of(reporters: Mapping[str, Reporter]) -> dict[str, object]:
    """The clients inside real reporters (dry-run reporters have none)."""
    return {p: r.client for p, r in reporters.items() if getattr(r, "client", None) is not None}


def policy_for(cfg: Config, history, gerrit_client=None) -> cmds.Policy:
    """The command policy: allow-list from config, GOOD/BAD resolved in the clone."""
    def resolve(prefix: str) -> Optional[str]:
        if history is None:
            return None
        try:
            return history.resolve(prefix)
        except (HistoryError, ValueError):
            return None

    return cmds.policy_from_config(cfg, resolve=resolve, in_group=cmds.group_checker(gerrit_client))


# ---------------------------------------------------------------- delivery


def reply_targets(params: dict) -> list[str]:
    """The review threads a campaign answers (params 'reply_to': str or list)."""
    r = (params or {}).get("reply_to")
    if not r:
        return []
    return [r] if isinstance(r, str) else [t for t in r if isinstance(t, str)]


def campaign_items(cfg: Config, row: dict, platforms) -> list[outbox.Item]:
    """The deliveries of a finished campaign (a store row): its culprit's change
    and PR, the tracking issue, every review thread that asked (pure)."""
    result = row.get("result")
    if row["status"] != "done" or not result:
        return []
    result = {**result, "campaign_id": row["id"]}
    rendered = render.render(result)
    tracking = dict(cfg.github.tracking_issues)
    issue = tracking.get(str(result.get("test")))
    # A bisection asked for on the tracking issue is answered there once (its tracking-issue post).
    same = f"github-issue:{issue}" if issue is not None and result.get("kind") == "bisect" else None
    targets = [t for t in reply_targets(row["params"]) if t != same]
    items = outbox.plan_result(result, rendered, platforms=tuple(platforms), tracking_issue=issue,
                               reply_to=targets[0] if targets else None)
    for t in targets[1:]:
        items += outbox.plan_result(result, rendered, platforms=tuple(platforms), reply_to=t)
    return list({i.key: i for i in items}.values())


def deliver_campaign(store: Store, cfg: Config, campaign_id: int, reporters: Mapping[str, Reporter],
                     *, post: bool = True, outbox_store=None) -> Optional[outbox.FlushReport]:
    """Queue (and unless ``post`` is False, post) a finished campaign's
    deliveries. Safe to call any number of times: keyed, never twice.
    ``outbox_store``: where to queue (default ``store``)."""
    row = store.get_campaign(campaign_id)
    ostore = outbox_store if outbox_store is not None else store
    items = campaign_items(cfg, row, reporters) if reporters else []
    if not items:
        return None
    outbox.queue_items(ostore, items)
    return outbox.flush(ostore, reporters) if post else outbox.FlushReport(pending=[i.key for i in items])


def deliver_answered_commands(store: Store, cfg: Config, reporters: Mapping[str, Reporter]) -> int:
    """Queue the results of finished campaigns that review threads asked for
    and that were not queued yet (e.g. a bisection driven by
    `flakebot bisect --resume`). Returns how many campaigns were queued."""
    n = 0
    if not reporters:
        return 0
    for row in store.campaigns():
        targets = [t for t in reply_targets(row["params"]) if outbox.platform_of(t) in reporters]
        if row["status"] != "done" or not targets:
            continue
        items = campaign_items(cfg, row, reporters)
        planned = {i.target: i.key for i in items}
        # Answered: each asking thread's reply (or its tracking-issue post) is queued,
        # under today's key or the campaign-keyed one of earlier versions.
        if all(any(store.get_comment(k) is not None
                   for k in (f"reply:{t}:{row['id']}", f"{t}:{row['id']}", planned.get(t)) if k)
               for t in targets):
            continue
        outbox.queue_items(store, items)
        n += 1
    return n


def notifier(cfg: Config, reporters_factory: Callable[[], Mapping[str, Reporter]],
             open_store: Callable[[], Store]) -> Callable[[dict], None]:
    """A nightly ``notify(event)``: the rise or fall, rendered, on the test's
    tracking issue (GitHub), keyed ``nightly-event:{id}:github-issue:{n}``."""
    def notify(event: dict) -> None:
        issue = dict(cfg.github.tracking_issues).get(str(event.get("test")))
        reporters = reporters_factory()
        if issue is None or "github" not in reporters:
            return
        target = f"github-issue:{int(issue)}"
        key = f"nightly-event:{int(event['id'])}:{target}"
        with open_store() as store:
            outbox.queue_reply(store, target, key, render.render(event_result(event)))
            outbox.flush(store, reporters)
    return notify


def event_result(event: dict) -> dict:
    """A nightly rise/fall as a result dict for render (its generic builder)."""
    kind = event.get("kind")
    before, after = str(event.get("before_sha") or ""), str(event.get("after_sha") or "")
    p = event.get("probability")
    prob = f" (probability {p:.3f})" if isinstance(p, (int, float)) else ""
    where = f" between {before[:10]} and {after[:10]}" if before and after else ""
    if kind == "rise":
        msg = f"The nightly runs found the failure rate rose{where}{prob}."
        if event.get("campaign_id"):
            msg += f" Bisection campaign {event['campaign_id']} looks for the commit."
    else:
        msg = f"The nightly runs found the failure rate fell{where}{prob}: the failure appears fixed."
    out = {"kind": f"nightly {kind}", "test": event.get("test"), "message": msg,
           "tip": event.get("tip_sha"), "before": before or None, "after": after or None}
    if event.get("campaign_id"):
        out["campaign"] = event["campaign_id"]
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------- commands


@dataclass
class PassReport:
    """What one poll pass did (JSON-able with ``as_json``)."""

    polled: list[str] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)
    flush: Optional[dict] = None  # every delivery of the pass (all its flushes together)
    delivery_errors: dict[str, str] = field(default_factory=dict)  # platform -> a post's last error

    @property
    def failed(self) -> bool:
        """Polling or posting failed on some platform (`flakebot poll` exits 1)."""
        return bool(self.errors or self.delivery_errors)

    def as_json(self) -> dict:
        return {"polled": self.polled, "commands": self.commands, "refusals": self.refusals,
                "errors": self.errors, "delivery_errors": self.delivery_errors,
                "results": self.results, "flush": self.flush}


def start_command(store: Store, cfg: Config, history, cmd: cmds.Command) -> tuple[Optional[int], bool, str]:
    """The campaign of a command: (campaign id, started now, refusal reason or '').
    Looks the command's key up first: a command starts one campaign, ever."""
    row = _campaign_of_command(store, cmd.key)
    if row is not None:
        return row["id"], False, ""
    target = cmd.reply_to.target
    if cmd.action == "verify":
        patch, parent = cmd.patch, cmd.parent
        if parent is None and history is not None:
            try:
                parents = history.commit(patch).parents
                parent = parents[0] if parents else None
            except (HistoryError, ValueError):
                parent = None
        if not patch or not parent:
            return None, False, "cannot find the parent of this patch"
        params = VerifyParams.from_config(cfg, cmd.iterations or cfg.nightly.iterations,
                                          command_key=cmd.key, reply_to=target, ref=cmd.ref)
        cid, resumed = open_verify(store, cmd.test, _commit(history, patch), _commit(history, parent), params)
        return cid, not resumed, ""
    if history is None:
        return None, False, "bisect is not enabled here"
    try:
        commits = history.first_parent_range(cmd.good, cmd.bad)
        good = history.commit(cmd.good)
    except (HistoryError, ValueError):
        commits = []
    if not commits:
        return None, False, "BAD is not a first-parent descendant of GOOD"
    cid, resumed = open_bisect(store, cmd.test, good, commits, BisectParams.from_config(cfg),
                               is_ancestor=history.is_ancestor)
    row = store.get_campaign(cid)
    params = dict(row["params"])
    params["command_keys"] = sorted(set(params.get("command_keys", [])) | {cmd.key})
    params["reply_to"] = list(dict.fromkeys(reply_targets(params) + [target]))
    store.update_campaign(cid, params=params)
    return cid, not resumed, ""


def _campaign_of_command(store: Store, key: str) -> Optional[dict]:
    row = find_by_command(store, key)
    if row is not None:
        return row
    for row in store.campaigns():
        if key in ((row.get("params") or {}).get("command_keys") or ()):
            return row
    return None


def _commit(history, sha: str) -> Commit:
    if history is not None:
        try:
            return history.commit(sha)
        except (HistoryError, ValueError):
            pass
    return Commit(sha)


def poll_pass(cfg: Config, store: Store, history, *, clients: Mapping[str, object],
              reporters: Mapping[str, Reporter], save_cursors: bool = True,
              executor=None, poll_seconds: float = 0.0, sleep=None,
              should_stop: Callable[[], bool] = lambda: False,
              comment_store=None) -> PassReport:
    """One pass of the review pollers (module docstring).

    ``executor``: given (``flakebot poll``), the verify campaigns this pass
    started are driven to their answer here; None (the service), the campaign
    driver drives them. ``save_cursors=False`` (dry run) keeps the stored
    cursors (only a first cursor is saved). ``comment_store``: where replies
    are queued (default ``store``; the dry run passes a throwaway one)."""
    rep = PassReport()
    cstore = comment_store if comment_store is not None else store
    flushed = outbox.FlushReport()

    def flush() -> None:
        nonlocal flushed
        flushed = flushed.merge(outbox.flush(cstore, reporters))
        rep.flush = _flush_json(flushed)
        rep.delivery_errors = dict(flushed.failed_platforms)

    policy = policy_for(cfg, history, clients.get("gerrit"))
    started_verify: list[int] = []
    for platform in PLATFORMS:
        client = clients.get(platform)
        if client is None:
            continue
        if should_stop():
            break
        meta = f"cursor:{platform}"
        cursor = store.get_meta(meta)
        poll = cmds.poll_gerrit if platform == "gerrit" else cmds.poll_github
        try:
            kw = {"max_age_days": cfg.commands.max_age_days} if platform == "gerrit" else {}
            found, new_cursor = poll(client, cursor, policy, **kw)
        except Exception as e:  # network, auth: this platform waits for the next pass
            rep.errors[platform] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("poll %s: %s", platform, rep.errors[platform])
            continue
        rep.polled.append(platform)
        for item in found:
            if isinstance(item, cmds.Refusal):
                _refuse(cstore, item.reply_to.target, item.key, item.reason)
                rep.refusals.append({"key": item.key, "reason": item.reason})
                continue
            try:
                # One transaction: a second poller reading the same command waits,
                # then finds the campaign by the command's key (one campaign, ever).
                with store.write():
                    cid, new, why = start_command(store, cfg, history, item)
            except Exception as e:  # one bad command must not block the ones after it
                log.warning("command %s: %s: %s", item.key, type(e).__name__, e)
                cid, new, why = None, False, "this command could not be started"
            if why:
                _refuse(cstore, item.reply_to.target, item.key, why)
                rep.refusals.append({"key": item.key, "reason": why})
                continue
            rep.commands.append({"key": item.key, "action": item.action, "test": item.test,
                                 "campaign_id": cid, "started": new})
            if new or store.get_campaign(cid)["status"] == "open":  # keyed: acknowledged once
                details = (f"{item.iterations} iterations on {item.patch[:10]} and its parent"
                           if item.action == "verify" else
                           f"bisection of {item.good[:10]}..{item.bad[:10]} (campaign {cid})")
                outbox.queue_reply(cstore, item.reply_to.target, f"ack:{item.key}",
                                   render.render_ack(item.action, item.test, details))
            if item.action == "verify" and cid is not None:
                started_verify.append(cid)
        if save_cursors or cursor is None:
            store.set_meta(meta, new_cursor)
    if reporters:
        flush()
    if executor is not None:
        # This pass's verify commands, and any an earlier pass left unfinished (killed).
        for row in store.open_campaigns():
            if row["kind"] == "verify" and (row.get("params") or {}).get("command_key"):
                started_verify.append(row["id"])
        for cid in dict.fromkeys(started_verify):
            if should_stop():
                break
            camp = VerifyCampaign(store, executor, cid, poll_seconds=poll_seconds)
            if sleep is not None:
                camp.dispatcher.sleep = sleep
            try:
                result = camp.run()
            except LeaseHeld as e:  # `serve` (or another poll) drives it: theirs to finish and answer
                log.info("verify campaign %s: skipped: %s", cid, e)
                continue
            rep.results.append(result)
            if reporters:
                deliver_campaign(store, cfg, cid, reporters, post=False, outbox_store=cstore)
    if reporters:
        if comment_store is None:
            deliver_answered_commands(store, cfg, reporters)
        flush()
    return rep


def _refuse(store, target: str, key: str, reason: str) -> None:
    outbox.queue_reply(store, target, f"refusal:{key}", render.render_refusal(reason))


def _flush_json(f: outbox.FlushReport) -> dict:
    return {"posted": f.posted, "found": f.found, "failed": f.failed, "pending": f.pending,
            "busy": f.busy}


class MemoryComments:
    """A throwaway outbox (the dry run): same interface as the store's comments."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def queue_comment(self, key: str, target: str, body: str) -> bool:
        if key in self.rows:
            return False
        self.rows[key] = {"key": key, "target": target, "body": body, "status": "queued",
                          "created_at": None, "id": len(self.rows)}
        return True

    def mark_comment(self, key, status, external_id=None, error=None) -> None:
        self.rows[key]["status"] = status

    def queued_comments(self) -> list[dict]:
        return [r for r in self.rows.values() if r["status"] == "queued"]

    def get_comment(self, key: str) -> Optional[dict]:
        return self.rows.get(key)
