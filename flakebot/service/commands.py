"""`/flakebot` commands from review comments: parsing, validation, allow-list,
and the Gerrit / GitHub pollers.

Syntax (one command per comment: the first line that starts with ``/flakebot``)::

    /flakebot verify [N] [TEST]
    /flakebot bisect GOOD BAD [TEST]

Everything is validated before it leaves this module: N is an ASCII integer in
1..max_iterations, TEST is one of model.KNOWN_TESTS, GOOD/BAD are 7-40 hex
digits that the caller's resolver turns into full 40-hex SHAs, and the patch
and parent of a verify come from the server (revision / PR head), checked as
40-hex. A :class:`Command` holds only those values; nothing from the comment
text is kept. Anything else becomes a :class:`Refusal` with a short, fixed
reason (user text is never echoed back).

    >>> p = Policy(allowed_accounts=frozenset({"alice"}))
    >>> parse_command("/flakebot verify 30", p)
    ('verify', 30, 'vfio_user_nvme_restart_vm', None, None)
    >>> parse_command("/flakebot verify 30; rm -rf /", p)
    'usage: /flakebot verify [N] [TEST] | /flakebot bisect GOOD BAD [TEST]'
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional, Union

from flakebot.model import KNOWN_TESTS
from flakebot.reporters import ReporterError

log = logging.getLogger(__name__)

USAGE = "usage: /flakebot verify [N] [TEST] | /flakebot bisect GOOD BAD [TEST]"

_HEX = re.compile(r"[0-9a-f]{7,40}", re.ASCII)
_FULL = re.compile(r"[0-9a-f]{40}", re.ASCII)
_INT = re.compile(r"[0-9]+", re.ASCII)
_TOKEN = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)
_REF = re.compile(r"refs/(changes/[0-9]{2}/[0-9]{1,9}/[0-9]{1,5}|pull/[0-9]{1,9}/head)", re.ASCII)


# ------------------------------------------------------------------ data


@dataclass(frozen=True)
class Author:
    """Who wrote a comment. ``platform`` is 'gerrit' or 'github'."""

    platform: str
    account_id: str = ""  # Gerrit _account_id / GitHub user id
    username: str = ""  # Gerrit username / GitHub login
    email: str = ""
    name: str = ""
    association: str = ""  # GitHub author_association (OWNER, MEMBER, ...)

    def identities(self) -> set[str]:
        ids = {self.username.lower(), self.email.lower()}
        if self.account_id:
            ids.add(str(self.account_id))
        return {i for i in ids if i}


@dataclass(frozen=True)
class ReplyTo:
    """Where to answer. Gerrit: change id + revision; GitHub: repo + issue/PR number."""

    platform: str
    change: str = ""
    revision: str = ""
    repo: str = ""
    number: int = 0
    is_pull: bool = False

    @property
    def target(self) -> str:
        """The outbox target string for this thread."""
        if self.platform == "gerrit":
            return f"gerrit:{self.change}:{self.revision}"
        return f"github-issue:{self.number}"


@dataclass(frozen=True)
class Command:
    """A validated command. ``key`` identifies the comment it came from (use it
    to start each command's campaign once, e.g. in campaign params)."""

    action: str  # 'verify' | 'bisect'
    test: str
    reply_to: ReplyTo
    author: Author
    key: str
    iterations: Optional[int] = None  # verify
    good: Optional[str] = None  # bisect, full sha
    bad: Optional[str] = None  # bisect, full sha
    patch: Optional[str] = None  # verify: the revision / PR head (full sha)
    parent: Optional[str] = None  # verify: its parent (Gerrit) or PR base (GitHub), if known
    ref: Optional[str] = None  # verify: fetchable ref (refs/changes/.. or refs/pull/N/head)


@dataclass(frozen=True)
class Refusal:
    reply_to: ReplyTo
    author: Author
    key: str
    reason: str


Parsed = Union[Command, Refusal]


@dataclass(frozen=True)
class Policy:
    """Who may command and what is accepted. Build it from config.

    ``allowed_accounts``: usernames/logins, emails or account ids (case-insensitive).
    ``allowed_groups`` with ``in_group(author, group) -> bool`` (e.g. Gerrit
    account groups, GitHub team membership, or ``association:MEMBER``-style
    checks); ``refuse_strangers``: answer strangers with a short refusal
    instead of silence. ``resolve(prefix) -> full sha | None`` resolves GOOD/BAD
    against the local repository. ``ignore_accounts``: the bot's own accounts.
    """

    allowed_accounts: frozenset = frozenset()
    allowed_groups: frozenset = frozenset()
    in_group: Optional[Callable[[Author, str], bool]] = None
    refuse_strangers: bool = False
    max_iterations: int = 100
    default_iterations: int = 20
    default_test: str = "vfio_user_nvme_restart_vm"
    resolve: Optional[Callable[[str], Optional[str]]] = None
    ignore_accounts: frozenset = frozenset()

    def allows(self, author: Author) -> bool:
        allowed = {a.lower() for a in self.allowed_accounts}
        if author.identities() & allowed:
            return True
        if self.allowed_groups and self.in_group is not None:
            for g in sorted(self.allowed_groups):
                try:
                    if self.in_group(author, g):
                        return True
                except Exception as e:  # a failing lookup denies, never allows
                    log.warning("group check %s failed: %s", g, type(e).__name__)
        return False

    def ignores(self, author: Author) -> bool:
        return bool(author.identities() & {a.lower() for a in self.ignore_accounts})


# ------------------------------------------------------------------ parsing


def command_line(text: str) -> Optional[str]:
    """The first line starting with ``/flakebot`` (outside fenced code), or None."""
    in_fence = False
    for raw in (text or "").splitlines():
        line = raw.strip()
        if line.startswith("```") or line.startswith("~~~"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if line == "/flakebot" or line.startswith("/flakebot ") or line.startswith("/flakebot\t"):
            return line
    return None


def parse_command(line: str, policy: "Policy") -> Union[tuple, str]:
    """Validate one command line. Returns ``(action, iterations, test, good, bad)``
    (good/bad resolved to full SHAs) or a short refusal reason."""
    if len(line) > 300:
        return "command too long"
    if not line.isascii():
        return USAGE
    tokens = line.split()
    if not tokens or tokens[0] != "/flakebot":
        return USAGE
    args = tokens[1:]
    if not args or not all(_TOKEN.fullmatch(a) for a in args):
        return USAGE
    action, args = args[0].lower(), args[1:]
    if action == "verify":
        n: Optional[int] = None
        test = policy.default_test
        if args and _INT.fullmatch(args[0]):
            if len(args[0]) > 9:
                return f"N must be between 1 and {policy.max_iterations}"
            n = int(args[0])
            args = args[1:]
        if args:
            test = args[0]
            args = args[1:]
        if args:
            return USAGE
        if test not in KNOWN_TESTS:
            return "unknown test; known: " + ", ".join(sorted(KNOWN_TESTS))
        if n is None:
            n = policy.default_iterations
        if not 1 <= n <= policy.max_iterations:
            return f"N must be between 1 and {policy.max_iterations}"
        return ("verify", n, test, None, None)
    if action == "bisect":
        if len(args) not in (2, 3):
            return USAGE
        test = args[2] if len(args) == 3 else policy.default_test
        if test not in KNOWN_TESTS:
            return "unknown test; known: " + ", ".join(sorted(KNOWN_TESTS))
        shas = []
        for a in args[:2]:
            a = a.lower()
            if not _HEX.fullmatch(a):
                return "GOOD and BAD must be commit SHAs (7 to 40 hex digits)"
            if policy.resolve is None:
                return "bisect is not enabled here"
            try:
                full = policy.resolve(a)
            except Exception:
                full = None
            if not isinstance(full, str) or not _FULL.fullmatch(full.lower()):
                return "a commit SHA does not resolve to one commit in the repository"
            shas.append(full.lower())
        if shas[0] == shas[1]:
            return "GOOD and BAD are the same commit"
        return ("bisect", None, test, shas[0], shas[1])
    return USAGE


def evaluate(text: str, author: Author, reply_to: ReplyTo, key: str, policy: Policy,
             patch: Optional[str] = None, parent: Optional[str] = None,
             ref: Optional[str] = None) -> Optional[Parsed]:
    """A comment -> Command, Refusal, or None (no command, our own comment, or
    a stranger under a silent policy)."""
    line = command_line(text)
    if line is None or policy.ignores(author):
        return None
    if not policy.allows(author):
        if policy.refuse_strangers:
            return Refusal(reply_to, author, key, "you are not on this bot's allow-list")
        log.info("ignoring /flakebot from non-allowed %s account", author.platform)
        return None
    parsed = parse_command(line, policy)
    if isinstance(parsed, str):
        return Refusal(reply_to, author, key, parsed)
    action, n, test, good, bad = parsed
    if action == "verify":
        patch = (patch or "").lower()
        if not _FULL.fullmatch(patch):
            return Refusal(reply_to, author, key,
                           "verify works on a Gerrit change or a GitHub pull request")
        parent = parent.lower() if parent and _FULL.fullmatch(parent.lower()) else None
        ref = ref if ref and _REF.fullmatch(ref) else None
        return Command("verify", test, reply_to, author, key, iterations=n, patch=patch,
                       parent=parent, ref=ref)
    return Command("bisect", test, reply_to, author, key, good=good, bad=bad)


# ------------------------------------------------------------------ cursors


def _load_cursor(cursor: Optional[str]) -> Optional[dict]:
    if not cursor:
        return None
    try:
        c = json.loads(cursor)
        if isinstance(c, dict) and isinstance(c.get("ts"), str):
            c["ids"] = [str(i) for i in c.get("ids", [])]
            return c
    except ValueError:
        pass
    return {"ts": str(cursor), "ids": []}  # a bare timestamp works too


def _dump_cursor(ts: str, ids: Iterable[str]) -> str:
    return json.dumps({"ts": ts, "ids": sorted(set(ids))})


def _advance(cur: dict, items: list[tuple[str, str]]) -> str:
    """New cursor after seeing (ts, id) items."""
    ts, ids = cur["ts"], set(cur["ids"])
    for t, i in items:
        if t > ts:
            ts, ids = t, {i}
        elif t == ts:
            ids.add(i)
    return _dump_cursor(ts, ids)


def _is_new(cur: dict, ts: str, ident: str) -> bool:
    return ts > cur["ts"] or (ts == cur["ts"] and ident not in cur["ids"])


# ------------------------------------------------------------------ Gerrit


def gerrit_ts(dt: datetime) -> str:
    """A Gerrit timestamp, ``YYYY-MM-DD hh:mm:ss.fffffffff`` (UTC)."""
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{dt.microsecond:06d}000"


def _norm_gerrit_ts(ts: str) -> str:
    """Pad fractions to 9 digits so timestamps compare as strings."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d{1,9}))?", (ts or "").strip())
    if not m:
        return ""
    return f"{m.group(1)}.{(m.group(2) or '').ljust(9, '0')}"


def poll_gerrit(client, cursor: Optional[str], policy: Policy, *, max_age_days: int = 14,
                query: str = "", now: Optional[Callable[[], datetime]] = None, page_size: int = 100,
                max_pages: int = 10) -> tuple[list[Parsed], str]:
    """Commands in change messages newer than ``cursor``.

    Asks ``GET /a/changes/?q=since:"TS" -age:Nd <query>&o=MESSAGES&o=ALL_REVISIONS``:
    changes updated since the cursor and within the last ``max_age_days``,
    whatever their status, so a command on a merged change (where every
    culprit is) is seen. ``since`` is inclusive and about the change's update
    time, so messages are filtered again by their own date and id against the
    cursor: a comment is read once. ``cursor`` is an opaque string (store it);
    None starts from now, so old comments are never replayed. Returns
    (commands and refusals oldest first, new cursor).
    """
    if not cursor:
        t = (now or (lambda: datetime.now(timezone.utc)))()
        return [], _dump_cursor(gerrit_ts(t), [])
    cur = _load_cursor(cursor)
    assert cur is not None
    cur["ts"] = _norm_gerrit_ts(cur["ts"]) or cur["ts"]
    since = cur["ts"][:23]  # Gerrit's since: takes milliseconds at most
    q = f'since:"{since}" -age:{int(max_age_days)}d' + (f" {query}" if query else "")
    found: list[tuple[str, str, dict, dict]] = []
    start = 0
    for _ in range(max_pages):
        changes = client.query_changes(q, ("MESSAGES", "ALL_REVISIONS"), limit=page_size,
                                       start=start)
        for ch in changes:
            for m in ch.get("messages") or []:
                ts = _norm_gerrit_ts(m.get("date", ""))
                mid = str(m.get("id", ""))
                if ts and mid and _is_new(cur, ts, mid):
                    found.append((ts, mid, m, ch))
        if not changes or not changes[-1].get("_more_changes"):
            break
        start += len(changes)
    found.sort(key=lambda f: (f[0], f[1]))
    out: list[Parsed] = []
    for ts, mid, m, ch in found:
        tag = m.get("tag") or ""
        if tag.startswith("autogenerated:"):
            continue  # bots, CI and ourselves
        a = m.get("author") or {}
        author = Author("gerrit", account_id=str(a.get("_account_id", "")),
                        username=str(a.get("username", "")), email=str(a.get("email", "")),
                        name=str(a.get("name", "")))
        rev, ref = _gerrit_revision(ch, m.get("_revision_number"))
        if not rev:
            continue
        reply = ReplyTo("gerrit", change=str(ch.get("id", "")), revision=rev)
        key = f"gerrit:{ch.get('_number', ch.get('id'))}:{mid}"
        text = m.get("message") or ""
        if command_line(text) is None:
            continue
        parent = None
        if policy.allows(author) and not policy.ignores(author):
            parent = _gerrit_parent(client, ch, rev)
        parsed = evaluate(text, author, reply, key, policy, patch=rev, parent=parent, ref=ref)
        if parsed is not None:
            out.append(parsed)
    return out, _advance(cur, [(f[0], f[1]) for f in found])


def _gerrit_revision(change: dict, number) -> tuple[Optional[str], Optional[str]]:
    revs = change.get("revisions") or {}
    for sha, info in revs.items():
        if number is not None and info.get("_number") == number:
            return sha, info.get("ref")
    cur = change.get("current_revision")
    if cur:
        return cur, (revs.get(cur) or {}).get("ref")
    return None, None


def _gerrit_parent(client, change: dict, rev: str) -> Optional[str]:
    info = (change.get("revisions") or {}).get(rev) or {}
    commit = info.get("commit")
    try:
        if not commit:
            commit = client.revision_commit(change["id"], rev)
        return (commit.get("parents") or [{}])[0].get("commit")
    except (ReporterError, KeyError, AttributeError, IndexError) as e:
        log.warning("cannot read the parent of %s: %s", rev[:10], e)
        return None


# ------------------------------------------------------------------ GitHub


def github_ts(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def poll_github(client, cursor: Optional[str], policy: Policy, *,
                now: Optional[Callable[[], datetime]] = None,
                max_pages: int = 10) -> tuple[list[Parsed], str]:
    """Commands in issue and PR conversation comments created after ``cursor``
    (``GET /repos/{o}/{r}/issues/comments?since=...``). Comments edited later
    to add a command are not picked up: post a new comment. None starts from now."""
    if not cursor:
        t = (now or (lambda: datetime.now(timezone.utc)))()
        return [], _dump_cursor(github_ts(t), [])
    cur = _load_cursor(cursor)
    assert cur is not None
    comments = client.issue_comments_since(cur["ts"], max_pages=max_pages)
    seen: list[tuple[str, str]] = []
    out: list[Parsed] = []
    for c in sorted(comments, key=lambda c: (c.get("created_at", ""), c.get("id", 0))):
        ts, cid = str(c.get("created_at", "")), str(c.get("id", ""))
        if not ts or not cid or not _is_new(cur, ts, cid):
            continue
        seen.append((ts, cid))
        body = c.get("body") or ""
        if command_line(body) is None:
            continue
        u = c.get("user") or {}
        if u.get("type") == "Bot":
            continue
        author = Author("github", account_id=str(u.get("id", "")), username=str(u.get("login", "")),
                        association=str(c.get("author_association", "")))
        number = _issue_number(c)
        if number is None:
            continue
        is_pull = "/pull/" in str(c.get("html_url", ""))
        reply = ReplyTo("github", repo=client.repo, number=number, is_pull=is_pull)
        key = f"github:{client.repo}:{cid}"
        patch = parent = ref = None
        if is_pull and policy.allows(author) and not policy.ignores(author):
            try:
                pr = client.pull(number)
                patch = (pr.get("head") or {}).get("sha")
                parent = (pr.get("base") or {}).get("sha")
                ref = f"refs/pull/{number}/head"
            except ReporterError as e:
                log.warning("cannot read PR #%s: %s", number, e)
        parsed = evaluate(body, author, reply, key, policy, patch=patch, parent=parent, ref=ref)
        if parsed is not None:
            out.append(parsed)
    return out, _advance(cur, seen)


def _issue_number(c: dict) -> Optional[int]:
    m = re.search(r"/issues/(\d+)$", str(c.get("issue_url", "")))
    return int(m.group(1)) if m else None


def github_association_checker(associations: Iterable[str] = ("OWNER", "MEMBER", "COLLABORATOR")
                               ) -> Callable[[Author, str], bool]:
    """An ``in_group`` for GitHub: group ``association:MEMBER`` matches authors
    whose author_association is MEMBER."""
    allowed = {a.upper() for a in associations}

    def check(author: Author, group: str) -> bool:
        kind, _, value = group.partition(":")
        return (kind == "association" and author.platform == "github"
                and author.association.upper() == value.upper() and value.upper() in allowed)
    return check


def gerrit_group_checker(client) -> Callable[[Author, str], bool]:
    """An ``in_group`` for Gerrit: asks ``/a/accounts/{id}/groups`` (cached per poll)."""
    cache: dict[str, set[str]] = {}

    def check(author: Author, group: str) -> bool:
        if author.platform != "gerrit" or not author.account_id:
            return False
        if author.account_id not in cache:
            groups = client.account_groups(author.account_id)
            cache[author.account_id] = {str(g.get("name", "")) for g in groups} | {
                str(g.get("id", "")) for g in groups}
        return group in cache[author.account_id]
    return check


def policy_from_config(cfg, *, resolve: Optional[Callable[[str], Optional[str]]] = None,
                       in_group: Optional[Callable[[Author, str], bool]] = None,
                       ignore_accounts: Iterable[str] = ()) -> Policy:
    """A Policy from ``flakebot.config.Config``: ``commands.allow`` entries
    ``group:NAME`` are groups (checked with ``in_group``), others accounts.
    An empty allow-list allows nobody (the issue: only allow-listed accounts
    or groups may command). The bot's own Gerrit user is always ignored."""
    accounts = {a for a in cfg.commands.allow if not a.startswith("group:")}
    groups = {a[len("group:"):] for a in cfg.commands.allow if a.startswith("group:")}
    ignore = set(ignore_accounts) | ({cfg.gerrit.user} if cfg.gerrit.user else set())
    return Policy(
        allowed_accounts=frozenset(accounts), allowed_groups=frozenset(groups), in_group=in_group,
        refuse_strangers=cfg.commands.refuse_strangers,
        max_iterations=cfg.commands.max_verify_iterations,
        default_iterations=min(cfg.nightly.iterations, cfg.commands.max_verify_iterations),
        default_test=cfg.tests.names[0], resolve=resolve, ignore_accounts=frozenset(ignore),
    )


def group_checker(gerrit_client=None, associations: Iterable[str] = ("OWNER", "MEMBER", "COLLABORATOR")
                  ) -> Callable[[Author, str], bool]:
    """One ``in_group`` for both platforms: Gerrit groups through the REST API
    (when a client is given), GitHub ``association:X`` from the comment."""
    gh = github_association_checker(associations)
    gr = gerrit_group_checker(gerrit_client) if gerrit_client is not None else None

    def check(author: Author, group: str) -> bool:
        if author.platform == "github":
            return gh(author, group)
        return gr(author, group) if gr is not None else False
    return check
