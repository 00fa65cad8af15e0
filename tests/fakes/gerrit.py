"""A fake Gerrit: a real HTTP server on 127.0.0.1 with Gerrit's REST quirks.

- every JSON answer starts with ``)]}'`` and a newline;
- ``/a/`` endpoints need HTTP basic auth (401 without or with wrong credentials);
- 404 for unknown changes (plain text body, as Gerrit does);
- 409 when voting on a closed change, or on changes marked ``reject_reviews``;
- fault injection: ``fail_next(status, ...)``, optionally after applying the
  write (the "posted but the answer was lost" case).

Endpoints: ``GET /a/changes/?q=&o=&n=&S=`` (operators ``commit:``, ``since:``/
``after:``, ``age:`` with Gerrit's units, ``status:open|merged|abandoned``,
``change:``, ``project:``; any of them negated with a leading ``-``; an
unknown operator or a malformed value is a 400 "bad query", as in Gerrit), ``GET /a/changes/{id}``,
``GET /a/changes/{id}/messages``, ``GET /a/changes/{id}/revisions/{rev}/commit``,
``POST /a/changes/{id}/revisions/{rev}/review``, ``GET /a/accounts/{id}/groups``.

    >>> with FakeGerrit() as g:
    ...     n = g.add_change("a" * 40, subject="x")
    ...     g.url.startswith("http://127.0.0.1:")
    True

Standalone: ``python -m tests.fakes.gerrit --port 8081``.
"""
from __future__ import annotations

import json
import re
import shlex
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes._server import FakeHandler, FakeServer

XSSI = ")]}'\n"


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{dt.microsecond:06d}000"


# Gerrit's age units (Documentation/user-search.txt): a unit is required.
_AGE_UNITS = {**dict.fromkeys(("s", "sec", "second", "seconds"), 1),
              **dict.fromkeys(("m", "min", "minute", "minutes"), 60),
              **dict.fromkeys(("h", "hr", "hour", "hours"), 3600),
              **dict.fromkeys(("d", "day", "days"), 86400),
              **dict.fromkeys(("w", "week", "weeks"), 7 * 86400),
              **dict.fromkeys(("mon", "month", "months"), 30 * 86400),
              **dict.fromkeys(("y", "year", "years"), 365 * 86400)}


def _parse_age(v: str) -> Optional[timedelta]:
    """``2d``, ``36h``, ``1week`` -> a timedelta; None when malformed or unitless."""
    m = re.fullmatch(r"(\d+)([a-z]+)", v.strip().lower())
    if not m or m.group(2) not in _AGE_UNITS:
        return None
    return timedelta(seconds=int(m.group(1)) * _AGE_UNITS[m.group(2)])


def _parse_since(v: str) -> Optional[str]:
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)(?: (\d\d:\d\d:\d\d)(?:\.(\d{1,3}))?)?", v.strip())
    if not m:
        return None
    return f"{m.group(1)} {m.group(2) or '00:00:00'}.{(m.group(3) or '').ljust(9, '0')}"


class FakeGerrit(FakeServer):
    def __init__(self, users: Optional[dict[str, str]] = None, project: str = "spdk/spdk",
                 port: int = 0, clock: Optional[Callable[[], datetime]] = None):
        self.users = dict(users if users is not None else {"flakebot": "http-password"})
        self.project = project
        self.port = port
        self.lock = threading.RLock()
        self.changes: dict[int, dict] = {}
        self.reviews: list[dict] = []  # every accepted review, in order
        self.requests: list[tuple[str, str]] = []  # (method, path) log
        self.groups: dict[str, list[str]] = {}  # account id -> group names
        self.accounts: dict[str, dict] = {}  # username -> AccountInfo
        self._faults: list[dict] = []
        self._next_number = 22970
        self._next_account = 1000
        # The real service stamps with the real time: so does the fake, through an
        # injectable wall clock (tests shift it; never a fixed date).
        self.wall = clock or (lambda: datetime.now(timezone.utc))
        self._clock = self.wall()
        for u in self.users:
            self.account(u)

    # ------------------------------------------------------------ seeding

    def now(self) -> str:
        """Advance the fake clock by one millisecond and return a Gerrit timestamp."""
        with self.lock:
            self._clock = max(self.wall(), self._clock + timedelta(milliseconds=1))  # monotonic
            return _ts(self._clock)

    def set_clock(self, dt: datetime) -> None:
        with self.lock:
            self._clock = dt.astimezone(timezone.utc)

    def account(self, username: str, email: Optional[str] = None, name: Optional[str] = None) -> dict:
        with self.lock:
            if username not in self.accounts:
                self.accounts[username] = {
                    "_account_id": self._next_account, "username": username,
                    "email": email or f"{username}@example.org", "name": name or username,
                }
                self._next_account += 1
            return self.accounts[username]

    def add_change(self, sha: str, number: Optional[int] = None, status: str = "NEW",
                   subject: str = "", branch: str = "master", owner: str = "owner",
                   parent: Optional[str] = None) -> int:
        """A change whose first patch set is ``sha``. Returns its number."""
        with self.lock:
            if number is None:
                number = self._next_number
                self._next_number += 1
            change_id = "I" + (sha * 2)[:40]
            ts = self.now()
            self.changes[number] = {
                "id": f"{self.project.replace('/', '%2F')}~{branch}~{change_id}",
                "project": self.project, "branch": branch, "change_id": change_id,
                "subject": subject, "status": status, "created": ts, "updated": ts,
                "_number": number, "owner": self.account(owner),
                "revisions": {}, "current_revision": None, "messages": [],
                "reject_reviews": False,
            }
            self.add_patchset(number, sha, parent=parent)
            return number

    def add_patchset(self, number: int, sha: str, parent: Optional[str] = None) -> None:
        with self.lock:
            ch = self.changes[number]
            ps = len(ch["revisions"]) + 1
            ch["revisions"][sha] = {
                "_number": ps, "kind": "REWORK",
                "ref": f"refs/changes/{number % 100:02d}/{number}/{ps}",
                "_parent": parent or ("0" * 39 + str(ps)),
            }
            ch["current_revision"] = sha
            ch["updated"] = self.now()

    def add_message(self, number: int, author: str, text: str, tag: Optional[str] = None,
                    patchset: Optional[int] = None, date: Optional[str] = None) -> dict:
        """A review comment as Gerrit stores it ("Patch Set N:\\n\\n" + text)."""
        with self.lock:
            ch = self.changes[number]
            ps = patchset or ch["revisions"][ch["current_revision"]]["_number"]
            ts = date or self.now()
            msg = {
                "id": f"m{len(self.reviews) + sum(len(c['messages']) for c in self.changes.values()) + 1:06d}",
                "author": dict(self.account(author)),
                "real_author": dict(self.account(author)),
                "date": ts, "message": f"Patch Set {ps}:\n\n{text}", "_revision_number": ps,
            }
            if tag:
                msg["tag"] = tag
            ch["messages"].append(msg)
            ch["updated"] = max(ch["updated"], ts)
            return msg

    def set_status(self, number: int, status: str) -> None:
        with self.lock:
            self.changes[number]["status"] = status

    def reject_reviews(self, number: int, on: bool = True) -> None:
        """Make reviews on this change answer 409 (e.g. a read-only change)."""
        with self.lock:
            self.changes[number]["reject_reviews"] = on

    def fail_next(self, status: int, count: int = 1, path_contains: str = "",
                  method: Optional[str] = None, after_apply: bool = False,
                  body: str = "injected failure") -> None:
        """The next ``count`` matching requests answer ``status``. With
        ``after_apply`` a write is applied first (then the answer is lost)."""
        with self.lock:
            self._faults.append({"status": status, "count": count, "path": path_contains,
                                 "method": method, "after_apply": after_apply, "body": body})

    # ------------------------------------------------------------ queries for tests

    def reviews_on(self, number: int, tag: Optional[str] = None) -> list[dict]:
        with self.lock:
            return [r for r in self.reviews
                    if r["change"] == number and (tag is None or r.get("tag") == tag)]

    # ------------------------------------------------------------ internals

    def _take_fault(self, method: str, path: str) -> Optional[dict]:
        with self.lock:
            for f in self._faults:
                if f["count"] > 0 and f["path"] in path and (f["method"] in (None, method)):
                    f["count"] -= 1
                    if f["count"] == 0:
                        self._faults.remove(f)
                    return f
        return None

    def _find_change(self, ident: str) -> Optional[dict]:
        ident = unquote(ident)
        with self.lock:
            if ident.isdigit():
                return self.changes.get(int(ident))
            for ch in self.changes.values():
                full = f"{ch['project']}~{ch['branch']}~{ch['change_id']}"
                if ident in (full, ch["change_id"], f"{ch['project']}~{ch['_number']}"):
                    return ch
        return None

    def _match(self, ch: dict, q: str) -> bool:
        try:
            terms = shlex.split(q)
        except ValueError:
            raise _Bad("bad query")
        for t in terms:
            negate = t.startswith("-")
            if self._term(ch, t[1:] if negate else t) == negate:
                return False
        return True

    def _term(self, ch: dict, t: str) -> bool:
        """Whether change ``ch`` matches one (non-negated) query term."""
        op, colon, val = t.partition(":")
        if not colon or not val:
            raise _Bad(f"unsupported query term {t}")
        if op == "commit":
            return len(val) >= 4 and any(s.startswith(val.lower()) for s in ch["revisions"])
        if op in ("since", "after"):
            since = _parse_since(val)
            if since is None:
                raise _Bad(f"bad date {val}")
            return ch["updated"] >= since
        if op == "age":
            # age:2d = last updated at least 2 days ago; -age:2d = within the last 2 days
            age = _parse_age(val)
            if age is None:
                raise _Bad(f"bad age {val} (a number and a unit: s, m, h, d, w, mon, y)")
            now = max(self.wall().astimezone(timezone.utc), self._clock)
            return ch["updated"] <= _ts(now - age)
        if op in ("status", "is"):
            want = {"open": "NEW", "new": "NEW", "merged": "MERGED", "abandoned": "ABANDONED"}
            if val == "closed":
                return ch["status"] != "NEW"
            if val not in want:
                raise _Bad(f"unsupported {op}:{val}")
            return ch["status"] == want[val]
        if op == "change":
            return val in (str(ch["_number"]), ch["change_id"])
        if op == "project":
            return val == ch["project"]
        raise _Bad(f"unsupported operator {op}")

    def _info(self, ch: dict, options: list[str]) -> dict:
        out = {k: v for k, v in ch.items()
               if k not in ("revisions", "current_revision", "messages", "reject_reviews")}
        cur = ch["current_revision"]
        if "CURRENT_REVISION" in options or "ALL_REVISIONS" in options:
            out["current_revision"] = cur
            revs = ch["revisions"] if "ALL_REVISIONS" in options else {cur: ch["revisions"][cur]}
            out["revisions"] = {s: {k: v for k, v in r.items() if not k.startswith("_p")}
                                for s, r in revs.items()}
            if "CURRENT_COMMIT" in options or "ALL_COMMITS" in options:
                for s in out["revisions"]:
                    out["revisions"][s]["commit"] = self._commit(ch, s)
        if "MESSAGES" in options:
            out["messages"] = [dict(m) for m in ch["messages"]]
        return out

    def _commit(self, ch: dict, sha: str) -> dict:
        return {"commit": sha, "parents": [{"commit": ch["revisions"][sha]["_parent"]}],
                "subject": ch["subject"], "message": ch["subject"] + "\n"}


class _Bad(Exception):
    pass


class _Handler(FakeHandler):
    fake: FakeGerrit

    def _send(self, status: int, obj: Any = None, text: Optional[str] = None) -> None:
        if text is None:
            data = (XSSI + json.dumps(obj)).encode()
            ctype = "application/json; charset=utf-8"
        else:
            data = text.encode()
            ctype = "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="Gerrit Code Review"')
        self.end_headers()
        self.wfile.write(data)

    def _authed(self) -> Optional[str]:
        cred = self.basic_credentials()
        if cred is None:
            return None
        user, pw = cred
        return user if self.fake.users.get(user) == pw and pw else None

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        path = parts.path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with fake.lock:
            fake.requests.append((method, self.path))
        if not path.startswith("/a/"):
            return self._send(401, text="Unauthorized")  # this fake serves /a/ only
        user = self._authed()
        if user is None:
            return self._send(401, text="Unauthorized")
        fault = fake._take_fault(method, self.path)
        if fault and not fault["after_apply"]:
            return self._send(fault["status"], text=fault["body"])
        try:
            status, obj, text = self._route(method, path[2:], parse_qs(parts.query), raw, user)
        except _Bad as e:
            status, obj, text = 400, None, str(e)
        if method == "POST" and fake.write_latency:
            time.sleep(fake.write_latency)
        if fault:
            return self._send(fault["status"], text=fault["body"])
        self._send(status, obj, text)

    def _route(self, method: str, path: str, qs: dict, raw: bytes, user: str):
        fake = self.fake
        opts = qs.get("o", [])
        if method == "GET" and path in ("/changes/", "/changes"):
            q = (qs.get("q") or [""])[0]
            n = int((qs.get("n") or ["500"])[0])
            start = int((qs.get("S") or ["0"])[0])
            with fake.lock:
                hits = [c for c in sorted(fake.changes.values(), key=lambda c: c["updated"],
                                          reverse=True) if fake._match(c, q)]
                page = [fake._info(c, opts) for c in hits[start:start + n]]
            if page and start + n < len(hits):
                page[-1]["_more_changes"] = True
            return 200, page, None
        m = re.fullmatch(r"/accounts/([^/]+)/groups", path)
        if m and method == "GET":
            acct = unquote(m.group(1))
            return 200, [{"name": g, "id": g} for g in fake.groups.get(acct, [])], None
        m = re.fullmatch(r"/changes/([^/]+)(/.*)?", path)
        if not m:
            return 404, None, "Not found"
        ch = fake._find_change(m.group(1))
        if ch is None:
            return 404, None, f"Not found: {unquote(m.group(1))}"
        rest = m.group(2) or ""
        with fake.lock:
            if method == "GET" and rest in ("", "/", "/detail"):
                return 200, fake._info(ch, opts + (["MESSAGES"] if rest == "/detail" else [])), None
            if method == "GET" and rest == "/messages":
                return 200, [dict(x) for x in ch["messages"]], None
            r = re.fullmatch(r"/revisions/([^/]+)/(commit|review)", rest)
            if not r:
                return 404, None, "Not found"
            rev = self._revision(ch, unquote(r.group(1)))
            if rev is None:
                return 404, None, f"Not found: {r.group(1)}"
            if r.group(2) == "commit" and method == "GET":
                return 200, fake._commit(ch, rev), None
            if r.group(2) == "review" and method == "POST":
                return self._review(ch, rev, raw, user)
        return 405, None, "Method not allowed"

    def _revision(self, ch: dict, rev: str) -> Optional[str]:
        if rev == "current":
            return ch["current_revision"]
        for sha, info in ch["revisions"].items():
            if rev == sha or (len(rev) >= 4 and sha.startswith(rev)) or rev == str(info["_number"]):
                return sha
        return None

    def _review(self, ch: dict, rev: str, raw: bytes, user: str):
        fake = self.fake
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, None, "Invalid JSON"
        if not isinstance(body, dict):
            return 400, None, "Expected JSON object"
        notify = body.get("notify", "ALL")
        if notify not in ("NONE", "OWNER", "OWNER_REVIEWERS", "ALL"):
            return 400, None, f"invalid notify {notify}"
        labels = body.get("labels") or {}
        if ch["reject_reviews"]:
            return 409, None, "change is read-only"
        if labels and ch["status"] != "NEW":
            return 409, None, f"change is {ch['status'].lower()}"
        ps = ch["revisions"][rev]["_number"]
        msg_text = body.get("message")
        if msg_text:
            msg = {
                "id": f"r{len(fake.reviews) + 1:06d}{ch['_number']}",
                "author": dict(fake.account(user)), "real_author": dict(fake.account(user)),
                "date": fake.now(), "message": f"Patch Set {ps}:\n\n{msg_text}",
                "_revision_number": ps,
            }
            if body.get("tag"):
                msg["tag"] = body["tag"]
            ch["messages"].append(msg)
            ch["updated"] = msg["date"]
        fake.reviews.append({"change": ch["_number"], "revision": rev, "message": msg_text,
                             "tag": body.get("tag"), "notify": notify, "labels": labels,
                             "user": user})
        return 200, {"labels": labels}, None


FakeGerrit.handler = _Handler


def main(argv: Optional[list[str]] = None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--user", default="flakebot")
    ap.add_argument("--password", default="http-password")
    a = ap.parse_args(argv)
    FakeGerrit({a.user: a.password}, port=a.port).serve_until_interrupted()


if __name__ == "__main__":
    main()
