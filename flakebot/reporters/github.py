"""GitHub REST client and reporter.

Facts relied on (docs.github.com, REST API version 2022-11-28):
- headers ``Authorization: Bearer TOKEN``, ``Accept: application/vnd.github+json``,
  ``X-GitHub-Api-Version: 2022-11-28``;
- ``GET /repos/{o}/{r}/commits/{sha}/pulls`` lists the PRs of a commit;
- ``POST /repos/{o}/{r}/issues/{n}/comments`` comments on an issue or a PR's
  conversation; ``POST /repos/{o}/{r}/commits/{sha}/comments`` on a commit;
- ``GET /repos/{o}/{r}/issues/comments?since=`` lists issue and PR comments of
  the repository updated at or after ``since`` (ISO 8601);
- rate limits: honour ``retry-after``; if ``x-ratelimit-remaining`` is 0 wait
  until ``x-ratelimit-reset`` (epoch seconds); other 403/429 rate limits
  (secondary): wait at least a minute, growing exponentially; make writes one
  at a time (and about a second apart).

The token is only ever in the Authorization header: never in messages or repr.

    >>> GitHubClient("https://api.github.com", "spdk/spdk", "ghp_secret")
    GitHubClient('https://api.github.com', repo='spdk/spdk')
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Callable, Optional
from urllib.parse import quote

import requests

from flakebot.reporters import (
    AuthError,
    BadRequest,
    Conflict,
    Item,
    NotFound,
    RateLimited,
    ReporterError,
    TransientError,
    github_marker,
    redact_url,
    short_message,
)
from flakebot.reporters.http import pause_before_retry, send

log = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
MAX_BODY = 65536  # GitHub rejects longer comment bodies with 422


class GitHubClient:
    def __init__(
        self,
        api_url: str,
        repo: str,
        token: str,
        timeout: float = 30,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        retries: int = 4,
        max_rate_wait: float = 3600.0,
        min_write_interval: float = 1.0,
        backoff_base: float = 1.0,
        session: Optional[requests.Session] = None,
    ):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo or ""):
            raise ValueError("repo must be 'owner/name'")
        self.api = redact_url(api_url).rstrip("/")
        self.repo = repo
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": "flakebot",
        }
        self.timeout = timeout
        self.sleep = sleep
        self.clock = clock
        self.retries = retries
        self.max_rate_wait = max_rate_wait
        self.min_write_interval = min_write_interval
        self.backoff_base = backoff_base
        self._session = session or requests.Session()
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._exhausted_until: float = 0.0  # primary limit used up until (epoch s)
        self._last_write: float = 0.0
        self.waited: float = 0.0  # total seconds slept for rate limits (for tests/metrics)

    def __repr__(self) -> str:
        return f"GitHubClient({self.api!r}, repo={self.repo!r})"

    # ------------------------------------------------------------------ plumbing

    def _wait(self, seconds: float, why: str) -> None:
        seconds = max(0.0, seconds)
        if seconds:
            log.info("GitHub: waiting %.0f s (%s)", seconds, why)
            self.waited += seconds
            self.sleep(seconds)

    def _rate_limit_wait(self, resp: requests.Response, secondary_hits: int) -> Optional[float]:
        """Seconds to wait if ``resp`` is a rate-limit answer, else None."""
        h = resp.headers
        ra = h.get("retry-after")
        if ra is not None:
            try:
                return max(1.0, float(ra))
            except ValueError:
                pass
        if h.get("x-ratelimit-remaining") == "0" and h.get("x-ratelimit-reset"):
            try:
                return max(1.0, float(h["x-ratelimit-reset"]) - self.clock() + 1)
            except ValueError:
                pass
        msg = ""
        try:
            msg = str((resp.json() or {}).get("message", ""))
        except ValueError:
            pass
        if resp.status_code == 429 or "rate limit" in msg.lower():
            return 60.0 * (2 ** secondary_hits)
        return None

    def _note_limits(self, resp: requests.Response) -> None:
        h = resp.headers
        if h.get("x-ratelimit-remaining") == "0" and h.get("x-ratelimit-reset"):
            try:
                with self._state_lock:
                    self._exhausted_until = float(h["x-ratelimit-reset"])
            except ValueError:
                pass

    def _request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                 write: bool = False, already_posted: Optional[Callable[[], bool]] = None
                 ) -> requests.Response:
        url = path if path.startswith(self.api + "/") else self.api + path
        what = f"GitHub {method} {path.split('?')[0].replace(self.api, '')}"
        attempt = 0
        secondary_hits = 0
        rate_waited = 0.0
        while True:
            with self._state_lock:
                until = self._exhausted_until
            if until and until > self.clock():
                w = until - self.clock() + 1
                if rate_waited + w > self.max_rate_wait:
                    raise RateLimited(f"{what}: primary rate limit exhausted for {w:.0f} s")
                rate_waited += w
                self._wait(w, "primary rate limit exhausted")
            with self._state_lock:
                self._exhausted_until = 0.0
            if write and self.min_write_interval:
                gap = self._last_write + self.min_write_interval - self.clock()
                if gap > 0:
                    self._wait(gap, "spacing writes")
            resp, err, maybe = send(self._session, method, url, what=what, timeout=self.timeout,
                                    write=write, params=params, json=body, headers=self._headers)
            if resp is not None:
                if write:
                    self._last_write = self.clock()
                s = resp.status_code
                self._note_limits(resp)
                if 200 <= s < 300:
                    return resp
                text = _message(resp)
                if s in (403, 429):
                    w = self._rate_limit_wait(resp, secondary_hits)
                    if w is not None:
                        if rate_waited + w > self.max_rate_wait:
                            raise RateLimited(f"{what}: rate limited for {w:.0f} s more", s)
                        if resp.headers.get("x-ratelimit-remaining") != "0" \
                                and resp.headers.get("retry-after") is None:
                            secondary_hits += 1
                        rate_waited += w
                        with self._state_lock:
                            self._exhausted_until = 0.0
                        self._wait(w, f"{s} rate limit")
                        continue
                if s == 401:
                    raise AuthError(f"{what}: 401 bad credentials (check the token)", s)
                if s == 403:
                    raise AuthError(f"{what}: 403 forbidden: {text}", s)
                if s == 404:
                    raise NotFound(f"{what}: 404 not found", s)
                if s == 409:
                    raise Conflict(f"{what}: 409 conflict: {text}", s)
                if s in (400, 410, 422):
                    raise BadRequest(f"{what}: {s} rejected: {text}", s)
                if s >= 500:
                    err, maybe = TransientError(f"{what}: {s} {text}", s), write
                else:
                    raise ReporterError(f"{what}: unexpected {s}: {text}", s)
            if pause_before_retry(err, maybe, attempt, retries=self.retries,
                                  already_posted=already_posted, backoff_base=self.backoff_base,
                                  sleep=self.sleep, log=log):
                return None  # type: ignore[return-value]
            attempt += 1

    def _get(self, path: str, params: Any = None) -> Any:
        return self._request("GET", path, params=params).json()

    def _paginate(self, path: str, params: Optional[dict] = None, max_pages: int = 20) -> list:
        out: list = []
        url: Optional[str] = path
        p = dict(params or {})
        p.setdefault("per_page", 100)
        for _ in range(max_pages):
            resp = self._request("GET", url, params=p)
            page = resp.json()
            if not isinstance(page, list):
                raise TransientError(f"GitHub GET {path}: expected a list")
            out.extend(page)
            nxt = resp.links.get("next", {}).get("url")
            if not nxt or not page:
                break
            if not nxt.startswith(self.api + "/"):
                break  # never follow links off the API host
            url, p = nxt, None
        return out

    def _repo(self) -> str:
        return f"/repos/{self.repo}"

    # ------------------------------------------------------------------ reads

    def pulls_for_commit(self, sha: str) -> list[dict]:
        """PRs associated with a commit (merged PRs first)."""
        try:
            prs = self._paginate(f"{self._repo()}/commits/{quote(sha, safe='')}/pulls", max_pages=3)
        except BadRequest:
            raise NotFound(f"GitHub: no commit {sha[:10]} in {self.repo}") from None
        return sorted(prs, key=lambda p: (p.get("merged_at") is None, p.get("number", 0)))

    def pull(self, number: int) -> dict:
        return self._get(f"{self._repo()}/pulls/{int(number)}")

    def issue_comments(self, number: int, since: Optional[str] = None) -> list[dict]:
        params = {"since": since} if since else None
        return self._paginate(f"{self._repo()}/issues/{int(number)}/comments", params)

    def commit_comments(self, sha: str) -> list[dict]:
        return self._paginate(f"{self._repo()}/commits/{quote(sha, safe='')}/comments")

    def issue_comments_since(self, since_iso: str, max_pages: int = 10) -> list[dict]:
        """Issue and PR conversation comments of the repo updated at or after
        ``since_iso``, oldest created first."""
        return self._paginate(
            f"{self._repo()}/issues/comments",
            {"since": since_iso, "sort": "created", "direction": "asc"},
            max_pages=max_pages,
        )

    # ------------------------------------------------------------------ writes

    def _write(self, path: str, body: str, already_posted: Optional[Callable[[], bool]]) -> dict:
        if not isinstance(body, str) or not body.strip():
            raise BadRequest("GitHub: empty comment body")
        if len(body) > MAX_BODY:
            raise BadRequest(f"GitHub: comment body too long ({len(body)} > {MAX_BODY})")
        with self._write_lock:
            resp = self._request("POST", path, body={"body": body}, write=True,
                                 already_posted=already_posted)
        return resp.json() if resp is not None else {}

    def comment_issue(self, number: int, body: str, *,
                      already_posted: Optional[Callable[[], bool]] = None) -> dict:
        return self._write(f"{self._repo()}/issues/{int(number)}/comments", body, already_posted)

    def comment_commit(self, sha: str, body: str, *,
                       already_posted: Optional[Callable[[], bool]] = None) -> dict:
        return self._write(f"{self._repo()}/commits/{quote(sha, safe='')}/comments", body,
                           already_posted)


def _message(resp: requests.Response) -> str:
    try:
        data = resp.json()
        msg = data.get("message", "") if isinstance(data, dict) else ""
    except ValueError:
        msg = resp.text or ""
    return short_message(msg, 160)


class GitHubReporter:
    """Delivers outbox items whose target is
    ``github-culprit:SHA`` (the commit's PR, else the commit itself),
    ``github-issue:N`` / ``github-pr:N`` (conversation comment) or ``github-commit:SHA``."""

    platform = "github"

    def __init__(self, client: GitHubClient):
        self.client = client

    def resolve(self, target: str) -> tuple[str, str]:
        """('issue', '123') or ('commit', sha)."""
        kind, _, rest = target.partition(":")
        if kind in ("github-issue", "github-pr") and rest.isdigit():
            return "issue", rest
        if kind == "github-commit" and re.fullmatch(r"[0-9a-f]{7,40}", rest):
            return "commit", rest
        if kind == "github-culprit" and re.fullmatch(r"[0-9a-f]{7,40}", rest):
            prs = self.client.pulls_for_commit(rest)
            if prs:
                return "issue", str(prs[0]["number"])
            return "commit", rest
        raise BadRequest(f"not a GitHub target: {target!r}")

    def _find(self, where: tuple[str, str], key: str, created_at: Optional[str]) -> Optional[str]:
        marker = github_marker(key)
        if where[0] == "issue":
            comments = self.client.issue_comments(int(where[1]), since=_since(created_at))
        else:
            comments = self.client.commit_comments(where[1])
        for c in comments:
            if marker in (c.get("body") or ""):
                return str(c.get("id"))
        return None

    def find_posted(self, item: Item) -> Optional[str]:
        return self._find(self.resolve(item.target), item.key, item.created_at)

    def post(self, item: Item) -> str:
        where = self.resolve(item.target)
        check = lambda: self._find(where, item.key, item.created_at) is not None  # noqa: E731
        if where[0] == "issue":
            c = self.client.comment_issue(int(where[1]), item.body, already_posted=check)
        else:
            c = self.client.comment_commit(where[1], item.body, already_posted=check)
        return str(c.get("id") or c.get("html_url") or f"{where[0]}:{where[1]}")


def _since(created_at: Optional[str]) -> Optional[str]:
    """A ``since`` a day before the item was queued (clock skew margin)."""
    if not created_at:
        return None
    from datetime import datetime, timedelta, timezone
    try:
        t = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return (t - timedelta(days=1)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
