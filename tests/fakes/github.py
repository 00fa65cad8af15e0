"""A fake GitHub REST API: a real HTTP server on 127.0.0.1 with GitHub's quirks.

- ``Authorization: Bearer TOKEN`` (or ``token TOKEN``) required: 401 otherwise;
- x-ratelimit-limit/remaining/used/reset/resource headers on every answer;
- 422 on bad comment bodies (missing, not a string, empty, > 65536 chars) and
  on commits it does not know (``/commits/{sha}/pulls``);
- rate limits on demand: ``rate_limit_next(kind=...)``:
  ``primary`` (403, remaining 0, reset in N s), ``secondary`` (403 with the
  secondary-limit message and no retry-after), ``retry-after`` (429 or 403
  with a retry-after header);
- 5xx on demand: ``fail_next(status, ..., after_apply=False)``;
- pagination with ``Link: <...>; rel="next"`` (``per_page``, ``page``).

Endpoints (``/repos/{owner}/{repo}`` prefix): ``GET /commits/{sha}/pulls``,
``GET /pulls/{n}``, ``GET|POST /issues/{n}/comments``, ``GET /issues/comments``
(``since``, ``sort``, ``direction``), ``GET|POST /commits/{sha}/comments``.

    >>> with FakeGitHub() as gh:
    ...     gh.add_pull(42, head="b" * 40, commits=["b" * 40])
    ...     gh.url.startswith("http://127.0.0.1:")
    True

Standalone: ``python -m tests.fakes.github --port 8082``.
"""
from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.fakes._server import FakeHandler, FakeServer


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeGitHub(FakeServer):
    def __init__(self, repo: str = "spdk/spdk", token: str = "test-token",
                 bot_login: str = "flakebot", port: int = 0,
                 clock: Optional[Callable[[], datetime]] = None):
        self.repo = repo
        self.token = token
        self.bot_login = bot_login
        self.port = port
        self.lock = threading.RLock()
        self.commits: set[str] = set()
        self.pulls: dict[int, dict] = {}
        self.issues: set[int] = set()
        self.issue_comments: list[dict] = []  # every issue/PR comment, in order
        self.commit_comments: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.users: dict[str, dict] = {}
        self._faults: list[dict] = []
        self._limits: list[dict] = []
        self._next_id = 1000
        # The real service stamps with the real time: so does the fake, through an
        # injectable wall clock (tests shift it; never a fixed date).
        self.wall = clock or (lambda: datetime.now(timezone.utc))
        self._clock = self.wall()
        self.rate_limit = 5000
        self.remaining = 5000

    # ------------------------------------------------------------ seeding

    def now(self) -> str:
        """Advance the fake clock one second; ISO 8601 UTC."""
        with self.lock:
            self._clock = max(self.wall(), self._clock + timedelta(seconds=1))  # monotonic
            return _iso(self._clock)

    def set_clock(self, dt: datetime) -> None:
        with self.lock:
            self._clock = dt.astimezone(timezone.utc)

    def user(self, login: str, type_: str = "User") -> dict:
        with self.lock:
            if login not in self.users:
                self._next_id += 1
                self.users[login] = {"login": login, "id": self._next_id, "type": type_}
            return dict(self.users[login])

    def add_commit(self, sha: str) -> None:
        with self.lock:
            self.commits.add(sha)

    def add_issue(self, number: int) -> None:
        with self.lock:
            self.issues.add(number)

    def add_pull(self, number: int, head: str, commits: tuple | list = (), base: str = "0" * 40,
                 merged: bool = True, state: Optional[str] = None) -> None:
        with self.lock:
            self.pulls[number] = {
                "number": number, "state": state or ("closed" if merged else "open"),
                "merged_at": _iso(self._clock) if merged else None,
                "html_url": f"https://github.com/{self.repo}/pull/{number}",
                "head": {"sha": head, "ref": f"pr-{number}"}, "base": {"sha": base, "ref": "master"},
                "_commits": set(commits) | {head},
            }
            self.commits |= set(commits) | {head}

    def add_comment(self, number: int, login: str, body: str, created_at: Optional[str] = None,
                    association: str = "NONE", user_type: str = "User") -> dict:
        """An issue/PR conversation comment, as if a person posted it."""
        with self.lock:
            return self._new_issue_comment(number, self.user(login, user_type), body,
                                           created_at or self.now(), association)

    def fail_next(self, status: int, count: int = 1, path_contains: str = "",
                  method: Optional[str] = None, after_apply: bool = False) -> None:
        with self.lock:
            self._faults.append({"status": status, "count": count, "path": path_contains,
                                 "method": method, "after_apply": after_apply})

    def rate_limit_next(self, kind: str = "primary", status: int = 403, count: int = 1,
                        reset_in: int = 30, retry_after: int = 5, path_contains: str = "",
                        method: Optional[str] = None) -> None:
        """kind: 'primary' (remaining 0 until reset), 'secondary' (message only),
        'retry-after' (retry-after header)."""
        assert kind in ("primary", "secondary", "retry-after")
        with self.lock:
            self._limits.append({"kind": kind, "status": status, "count": count,
                                 "reset_in": reset_in, "retry_after": retry_after,
                                 "path": path_contains, "method": method})

    # ------------------------------------------------------------ test helpers

    def comments_on(self, number: int, marker: str = "") -> list[dict]:
        with self.lock:
            return [c for c in self.issue_comments
                    if c["_number"] == number and marker in c["body"]]

    def comments_on_commit(self, sha: str) -> list[dict]:
        with self.lock:
            return [c for c in self.commit_comments if c["commit_id"] == sha]

    # ------------------------------------------------------------ internals

    def _new_issue_comment(self, number: int, user: dict, body: str, ts: str,
                           association: str = "NONE") -> dict:
        self._next_id += 1
        base = f"https://github.com/{self.repo}"
        kind = "pull" if number in self.pulls else "issues"
        c = {
            "id": self._next_id, "body": body, "user": user, "created_at": ts, "updated_at": ts,
            "author_association": association,
            "html_url": f"{base}/{kind}/{number}#issuecomment-{self._next_id}",
            "issue_url": f"https://api.github.com/repos/{self.repo}/issues/{number}",
            "_number": number,
        }
        self.issue_comments.append(c)
        return c

    @staticmethod
    def _take(lst: list[dict], method: str, path: str) -> Optional[dict]:
        for f in lst:
            if f["count"] > 0 and f["path"] in path and f["method"] in (None, method):
                f["count"] -= 1
                if f["count"] == 0:
                    lst.remove(f)
                return f
        return None


def _public(c: dict) -> dict:
    return {k: v for k, v in c.items() if not k.startswith("_")}


class _Handler(FakeHandler):
    fake: FakeGitHub

    def _send(self, status: int, obj: Any, extra: Optional[dict] = None) -> None:
        data = json.dumps(obj).encode()
        fake = self.fake
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        reset = int(fake.wall().timestamp()) + 3600
        hdr = {"x-ratelimit-limit": str(fake.rate_limit), "x-ratelimit-remaining": str(fake.remaining),
               "x-ratelimit-used": str(fake.rate_limit - fake.remaining),
               "x-ratelimit-reset": str(reset), "x-ratelimit-resource": "core"}
        hdr.update(extra or {})
        for k, v in hdr.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with fake.lock:
            fake.requests.append((method, self.path))
        auth = self.headers.get("Authorization", "")
        if auth not in (f"Bearer {fake.token}", f"token {fake.token}") or not fake.token:
            return self._send(401, {"message": "Bad credentials",
                                    "documentation_url": "https://docs.github.com/rest"})
        with fake.lock:
            lim = fake._take(fake._limits, method, self.path)
            fault = None if lim else fake._take(fake._faults, method, self.path)
            fake.remaining = max(0, fake.remaining - 1)
        if lim:
            return self._send_limit(lim)
        if fault and not fault["after_apply"]:
            return self._send(fault["status"], {"message": "Server Error"})
        try:
            status, obj, extra = self._route(method, parts.path, parse_qs(parts.query), raw)
        except Exception as e:  # pragma: no cover - a fake bug should be visible
            status, obj, extra = 500, {"message": f"fake error {type(e).__name__}: {e}"}, None
        if method == "POST" and fake.write_latency:
            time.sleep(fake.write_latency)
        if fault:
            return self._send(fault["status"], {"message": "Server Error"})
        self._send(status, obj, extra)

    def _send_limit(self, lim: dict) -> None:
        now = int(self.fake.wall().timestamp())
        if lim["kind"] == "primary":
            return self._send(lim["status"], {
                "message": "API rate limit exceeded for user ID 1.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"},
                {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(now + lim["reset_in"])})
        if lim["kind"] == "secondary":
            return self._send(lim["status"], {
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes "
                           "before you try again.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"})
        return self._send(lim["status"], {"message": "You have exceeded a secondary rate limit."},
                          {"retry-after": str(lim["retry_after"])})

    def _page(self, items: list, qs: dict, path: str) -> tuple[int, list, dict]:
        per = max(1, min(100, int((qs.get("per_page") or ["30"])[0])))
        page = max(1, int((qs.get("page") or ["1"])[0]))
        chunk = items[(page - 1) * per: page * per]
        extra = {}
        if page * per < len(items):
            q = {k: v[0] for k, v in qs.items()}
            q.update(page=str(page + 1), per_page=str(per))
            extra["Link"] = f'<{self.fake.url}{path}?{urlencode(q)}>; rel="next"'
        return 200, chunk, extra

    def _route(self, method: str, path: str, qs: dict, raw: bytes):
        fake = self.fake
        prefix = f"/repos/{fake.repo}"
        if not path.startswith(prefix + "/"):
            return 404, {"message": "Not Found"}, None
        rest = path[len(prefix):]
        with fake.lock:
            m = re.fullmatch(r"/commits/([0-9a-fA-F]{7,40})/pulls", rest)
            if m and method == "GET":
                sha = self._commit(m.group(1))
                if sha is None:
                    return 422, {"message": f"No commit found for SHA: {m.group(1)}"}, None
                prs = [_public(p) for n, p in sorted(fake.pulls.items()) if sha in p["_commits"]]
                return self._page(prs, qs, path)
            m = re.fullmatch(r"/pulls/(\d+)", rest)
            if m and method == "GET":
                p = fake.pulls.get(int(m.group(1)))
                return (200, _public(p), None) if p else (404, {"message": "Not Found"}, None)
            m = re.fullmatch(r"/issues/(\d+)/comments", rest)
            if m:
                n = int(m.group(1))
                if n not in fake.issues and n not in fake.pulls:
                    return 404, {"message": "Not Found"}, None
                if method == "GET":
                    since = (qs.get("since") or [""])[0]
                    items = [_public(c) for c in fake.issue_comments
                             if c["_number"] == n and c["updated_at"] >= since]
                    return self._page(items, qs, path)
                if method == "POST":
                    body, err = self._body(raw)
                    if err:
                        return 422, err, None
                    c = fake._new_issue_comment(n, fake.user(fake.bot_login, "Bot"), body,
                                                fake.now(), "NONE")
                    return 201, _public(c), None
            if rest == "/issues/comments" and method == "GET":
                since = (qs.get("since") or [""])[0]
                items = [c for c in fake.issue_comments if c["updated_at"] >= since]
                key = "created_at" if (qs.get("sort") or ["created"])[0] == "created" else "updated_at"
                items.sort(key=lambda c: (c[key], c["id"]),
                           reverse=(qs.get("direction") or ["asc"])[0] == "desc")
                return self._page([_public(c) for c in items], qs, path)
            m = re.fullmatch(r"/commits/([0-9a-fA-F]{7,40})/comments", rest)
            if m:
                sha = self._commit(m.group(1))
                if sha is None:
                    return 422, {"message": f"No commit found for SHA: {m.group(1)}"}, None
                if method == "GET":
                    return self._page([_public(c) for c in fake.commit_comments
                                       if c["commit_id"] == sha], qs, path)
                if method == "POST":
                    body, err = self._body(raw)
                    if err:
                        return 422, err, None
                    fake._next_id += 1
                    c = {"id": fake._next_id, "body": body, "commit_id": sha,
                         "user": fake.user(fake.bot_login, "Bot"), "created_at": fake.now(),
                         "html_url": f"https://github.com/{fake.repo}/commit/{sha}"
                                     f"#commitcomment-{fake._next_id}"}
                    c["updated_at"] = c["created_at"]
                    fake.commit_comments.append(c)
                    return 201, dict(c), None
        return 404, {"message": "Not Found"}, None

    def _commit(self, sha: str) -> Optional[str]:
        sha = sha.lower()
        hits = [c for c in self.fake.commits if c.startswith(sha)]
        return hits[0] if len(hits) == 1 else None

    @staticmethod
    def _body(raw: bytes) -> tuple[Optional[str], Optional[dict]]:
        invalid = {"message": "Validation Failed",
                   "errors": [{"resource": "IssueComment", "code": "missing_field", "field": "body"}],
                   "documentation_url": "https://docs.github.com/rest"}
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            return None, {"message": "Problems parsing JSON"}
        body = data.get("body") if isinstance(data, dict) else None
        if not isinstance(body, str) or not body.strip() or len(body) > 65536:
            return None, invalid
        return body, None


FakeGitHub.handler = _Handler


def main(argv: Optional[list[str]] = None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8082)
    ap.add_argument("--repo", default="spdk/spdk")
    ap.add_argument("--token", default="test-token")
    a = ap.parse_args(argv)
    FakeGitHub(a.repo, a.token, port=a.port).serve_until_interrupted()


if __name__ == "__main__":
    main()
