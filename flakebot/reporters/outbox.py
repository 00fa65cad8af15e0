"""Never twice, never lost: keyed, stored deliveries.

Every delivery has a key. A culprit is announced once per (culprit, test),
however many campaigns reach it: ``gerrit-commit:{sha}:{test}``,
``github-culprit:{sha}:{test}``, ``github-issue:{n}:{sha}:{test}``; other
verdicts and answers are keyed by campaign (``github-issue:{n}:{campaign_id}``,
``reply:{target}:{campaign_id}``...). It is queued in the store's comments
table, with its final body, BEFORE anything is posted; it is marked posted
after.

Several processes may flush one database at once (``flakebot poll`` next to
``flakebot serve``, two polls): each row is claimed in the store (one
``BEGIN IMMEDIATE`` transaction, ``Store.claim_comment``) before it is looked
up and posted, and the claim is released when the outcome is recorded. A
claim lapses after ``CLAIM_SECONDS`` (longer than the longest rate-limit wait),
or at once when its holder was a process on this host that is gone (kill -9),
so a row is never lost to a dead poster.

The body carries a marker (GitHub: ``<!-- flakebot:KEY -->``; Gerrit: a
``[flakebot:KEY]`` line plus the review tag), so a pass that finds an item
still queued first looks at the target for that marker: if an earlier attempt
reached the server (the bot was killed between posting and recording), the
item is marked posted instead of being posted again.

- permanent failures (no change for the commit, change closed, body rejected)
  are marked 'failed' with the reason;
- anything else (network, 5xx, rate limits, bad credentials) stays 'queued' and
  is retried on the next ``flush``.

Targets are resolved when posting, not when queueing, so queueing needs no
network and a result is never lost to an outage:
``gerrit-commit:SHA`` (the change holding SHA), ``gerrit:CHANGE:REV``,
``github-culprit:SHA`` (its PR, else the commit), ``github-issue:N``,
``github-commit:SHA``.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Mapping, Optional, Protocol, Union

from flakebot.report import comments as _render
from flakebot.reporters import (
    Item,
    Reporter,
    ReporterError,
    gerrit_marker,
    github_marker,
    platform_of,
)

log = logging.getLogger(__name__)

_FLUSH_LOCK = threading.Lock()  # one pass, hence one write, at a time per process
_SHA = re.compile(r"[0-9a-f]{7,40}")
_TEST = re.compile(r"[A-Za-z0-9_.-]{1,100}")

# A claim outlives the longest wait inside one post (GitHub rate limits: up to
# an hour, then retries), so a live poster never loses its claim mid-post.
CLAIM_SECONDS = 2 * 3600.0
HOST = socket.gethostname()
_CLAIMANT: Optional[tuple[str, int]] = None  # (name, pid): a forked child gets its own


def claimant() -> str:
    """This process's claim name: host:pid:nonce (the nonce tells a reused pid apart)."""
    global _CLAIMANT
    if _CLAIMANT is None or _CLAIMANT[1] != os.getpid():
        _CLAIMANT = (f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}", os.getpid())
    return _CLAIMANT[0]


def holder_is_gone(holder: str) -> bool:
    """A claim held by a process on this host that no longer runs (or by an
    earlier process with our pid) is stale; another host's claim only lapses."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != HOST or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return holder != claimant()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class CommentStore(Protocol):
    """What the outbox needs from flakebot.store.Store."""

    def queue_comment(self, key: str, target: str, body: str) -> bool: ...

    def mark_comment(self, key: str, status: str, external_id: Optional[str] = None,
                     error: Optional[str] = None) -> None: ...

    def queued_comments(self) -> list[dict]: ...

    def claim_comment(self, key: str, owner: str, seconds: float, stale=None) -> bool: ...


@dataclass
class FlushReport:
    posted: list[str] = field(default_factory=list)  # posted in this pass
    found: list[str] = field(default_factory=list)  # an earlier attempt had posted it
    failed: list[str] = field(default_factory=list)  # permanent failure, marked 'failed'
    pending: list[str] = field(default_factory=list)  # still queued (transient error / no reporter)
    busy: list[str] = field(default_factory=list)  # claimed by another process (it posts them)
    errors: dict[str, str] = field(default_factory=dict)
    failed_platforms: dict[str, str] = field(default_factory=dict)  # platform -> its last error

    @property
    def done(self) -> bool:
        return not self.pending

    def merge(self, other: "FlushReport") -> "FlushReport":
        """This report plus a later pass's (a key counts once, at its latest state)."""
        out = FlushReport()
        latest: dict[str, str] = {}
        for rep in (self, other):
            for name in ("posted", "found", "failed", "pending", "busy"):
                for k in getattr(rep, name):
                    if latest.get(k) in ("posted", "found", "failed") and name in ("pending", "busy"):
                        continue  # a later pass does not undo a delivery
                    latest[k] = name
        for k, name in latest.items():
            getattr(out, name).append(k)
        out.errors = {**self.errors, **other.errors}
        out.failed_platforms = {**self.failed_platforms, **other.failed_platforms}
        return out


def with_marker(platform: str, body: str, key: str) -> str:
    """The body as posted: the rendered text plus the hidden (GitHub) or
    small trailing (Gerrit) marker."""
    if platform == "github":
        return body.rstrip("\n") + "\n\n" + github_marker(key) + "\n"
    return body.rstrip("\n") + "\n\n" + gerrit_marker(key) + "\n"


def plan_result(
    result: dict,
    rendered: Optional[_render.Rendered] = None,
    *,
    platforms: tuple[str, ...] = ("gerrit", "github"),
    tracking_issue: Optional[int] = None,
    reply_to: Optional[str] = None,
) -> list[Item]:
    """The deliveries for one campaign result (pure).

    - bisect with a culprit: the culprit's Gerrit change; on GitHub its PR
      (else the commit);
    - the tracking issue for the test, if given (every bisect verdict);
    - a culprit's deliveries are keyed by (culprit, test), the others by campaign;
    - ``reply_to`` (a target such as ``gerrit:CHANGE:REV`` or ``github-issue:N``):
      the thread a command came from (verify, or a bisect asked for in review).
    """
    cid = result.get("campaign_id")
    if not isinstance(cid, int):
        raise ValueError("result needs an integer campaign_id")
    rendered = rendered or _render.render(result)
    targets: list[str] = []
    culprit = str(result.get("culprit") or "").lower()
    test = str(result.get("test") or "")
    culprit_found = result.get("kind") == "bisect" and result.get("verdict") == "culprit" \
        and _SHA.fullmatch(culprit)
    if culprit_found:
        targets += [f"gerrit-commit:{culprit}", f"github-culprit:{culprit}"]
    if tracking_issue is not None and result.get("kind") == "bisect":
        targets.append(f"github-issue:{int(tracking_issue)}")
    if reply_to:
        targets.append(reply_to)
    # A culprit is announced once per (culprit, test): later campaigns that reach
    # it queue the same keys, which the store already holds.
    once = f"{culprit}:{test}" if culprit_found and _TEST.fullmatch(test) else None
    items: list[Item] = []
    seen: set[str] = set()
    for t in targets:
        p = platform_of(t)
        if p not in platforms:
            continue
        if t == reply_to:
            key = f"reply:{t}:{cid}"
        elif once and t.startswith("github-issue:"):
            key = f"{t}:{once}"
        elif once:
            key = f"{t}:{test}"  # the target names the culprit already
        else:
            key = f"{t}:{cid}"
        if key in seen:
            continue
        seen.add(key)
        body = rendered.markdown if p == "github" else rendered.gerrit
        items.append(Item(key, t, with_marker(p, body, key)))
    return items


def queue_items(store: CommentStore, items: list[Item]) -> list[str]:
    """Queue items; returns the keys that were new (queued now)."""
    return [it.key for it in items if store.queue_comment(it.key, it.target, it.body)]


def queue_reply(store: CommentStore, target: str, key: str, rendered: _render.Rendered) -> bool:
    """Queue one answer (refusal, acknowledgement) to a command's thread."""
    p = platform_of(target)
    body = rendered.markdown if p == "github" else rendered.gerrit
    return store.queue_comment(key, target, with_marker(p, body, key))


def flush(store: CommentStore, reporters: Mapping[str, Reporter], *,
          claim_seconds: float = CLAIM_SECONDS) -> FlushReport:
    """One delivery pass over everything queued, oldest first, one at a time.
    Each row is claimed first (module docstring); rows another live process
    holds are left to it (``busy``)."""
    rep = FlushReport()
    me = claimant()
    claim = getattr(store, "claim_comment", None)  # the dry run's throwaway outbox has no rivals
    with _FLUSH_LOCK:
        for row in store.queued_comments():
            item = Item.from_row(row)
            platform = platform_of(item.target)
            reporter = reporters.get(platform)
            if reporter is None:
                rep.pending.append(item.key)
                continue
            if claim is not None and not claim(item.key, me, claim_seconds, stale=holder_is_gone):
                rep.busy.append(item.key)
                continue
            try:
                ext = reporter.find_posted(item)
                if ext is not None:
                    store.mark_comment(item.key, "posted", external_id=ext)
                    rep.found.append(item.key)
                    log.info("outbox: %s was already delivered (%s)", item.key, ext)
                    continue
                ext = reporter.post(item)
            except ReporterError as e:
                rep.errors[item.key] = str(e)
                if e.permanent:
                    store.mark_comment(item.key, "failed", error=str(e))
                    rep.failed.append(item.key)
                    log.warning("outbox: %s failed for good: %s", item.key, e)
                else:
                    store.mark_comment(item.key, "queued", error=str(e))
                    rep.pending.append(item.key)
                    rep.failed_platforms[platform] = str(e)
                    log.info("outbox: %s stays queued: %s", item.key, e)
                continue
            except Exception as e:  # an unexpected answer must not stop the pass
                msg = f"unexpected {type(e).__name__}"
                rep.errors[item.key] = msg
                store.mark_comment(item.key, "queued", error=msg)
                rep.pending.append(item.key)
                rep.failed_platforms[platform] = msg
                log.warning("outbox: %s stays queued: %s", item.key, msg)
                continue
            store.mark_comment(item.key, "posted", external_id=ext)
            rep.posted.append(item.key)
            log.info("outbox: posted %s (%s)", item.key, ext)
    return rep


def deliver_result(
    store: CommentStore,
    result: dict,
    reporters: Mapping[str, Reporter],
    *,
    rendered: Optional[_render.Rendered] = None,
    tracking_issues: Union[Mapping[str, int], int, None] = None,
    reply_to: Optional[str] = None,
    post: bool = True,
) -> FlushReport:
    """Queue the deliveries of ``result`` (for the platforms that have a
    reporter) and, unless ``post`` is False, run one delivery pass.

    Call it again at will (restart, retry): keys already queued are not queued
    again, and delivered items are not posted again.
    """
    issue = tracking_issues
    if isinstance(tracking_issues, Mapping):
        issue = tracking_issues.get(str(result.get("test")))
    items = plan_result(result, rendered, platforms=tuple(reporters), tracking_issue=issue,
                        reply_to=reply_to)
    queue_items(store, items)
    if not post:
        return FlushReport(pending=[i.key for i in items])
    return flush(store, reporters)


def reporters_from_config(cfg, *, dry_run: Optional[str] = None, sleep=None) -> dict[str, Reporter]:
    """Reporters for the configured platforms (``flakebot.config.Config``).

    Gerrit when ``gerrit.url`` and ``gerrit.user`` are set and the password
    variable is; GitHub when the token variable is set. ``dry_run``: a folder,
    or "-" for stdout, replaces both with the dry-run reporter.
    """
    from flakebot.reporters.dryrun import dryrun_reporters
    from flakebot.reporters.gerrit import GerritClient, GerritReporter
    from flakebot.reporters.github import GitHubClient, GitHubReporter

    if dry_run is not None:
        return dict(dryrun_reporters(None if dry_run == "-" else dry_run))
    out: dict[str, Reporter] = {}
    kw = {"sleep": sleep} if sleep is not None else {}
    pw = cfg.secret("gerrit.password_env")
    if cfg.gerrit.url and cfg.gerrit.user and pw:
        out["gerrit"] = GerritReporter(GerritClient(cfg.gerrit.url, cfg.gerrit.user, pw, **kw),
                                       notify=cfg.gerrit.notify,
                                       labels=dict(cfg.gerrit.labels) or None)
    token = cfg.secret("github.token_env")
    if token:
        out["github"] = GitHubReporter(GitHubClient(cfg.github.api_url, cfg.github.repo, token, **kw))
    return out
