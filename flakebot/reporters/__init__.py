"""Reporters deliver text that flakebot.report.comments produced to Gerrit and GitHub.

- ``gerrit.GerritClient`` / ``github.GitHubClient``: thin REST clients (requests)
  with retries, timeouts and (GitHub) rate-limit handling.
- ``gerrit.GerritReporter`` / ``github.GitHubReporter`` / ``dryrun.DryRunReporter``:
  one small interface used by the outbox: ``find_posted(item)`` and ``post(item)``.
- ``outbox``: keyed, stored deliveries: never twice, never lost.

Errors carry one-line messages that never contain secrets (no headers, no
tokens, no credentials embedded in URLs).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Optional, Protocol
from urllib.parse import urlsplit, urlunsplit


class ReporterError(Exception):
    """A delivery problem. ``permanent`` errors will not get better by retrying
    (unknown change, closed change, rejected body); the others will."""

    permanent = False

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class NotFound(ReporterError):
    permanent = True


class Conflict(ReporterError):
    """409: e.g. the change is closed or locked."""

    permanent = True


class BadRequest(ReporterError):
    """400/422: the server rejected what we sent."""

    permanent = True


class AuthError(ReporterError):
    """401/403 (not a rate limit). Not permanent for the outbox: fixing the
    credentials makes queued items go out."""


class TransientError(ReporterError):
    """5xx, connection problems, rate limits longer than we wait."""


class MaybePosted(TransientError):
    """A write failed in a way that may have reached the server (5xx, read
    timeout, connection reset): check before writing again."""


class RateLimited(TransientError):
    pass


# A marker makes a delivered comment recognisable after a crash.
MARKER_PREFIX = "flakebot:"


def github_marker(key: str) -> str:
    return f"<!-- {MARKER_PREFIX}{_safe_key(key)} -->"


def gerrit_marker(key: str) -> str:
    return f"[{MARKER_PREFIX}{_safe_key(key)}]"


def _safe_key(key: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9:._/@+%~-]{1,200}", key) or "--" in key:
        raise ValueError(f"delivery key has unexpected characters: {key[:60]!r}")
    return key


@dataclass(frozen=True)
class Item:
    """One queued delivery, as stored in the comments table."""

    key: str
    target: str
    body: str
    created_at: Optional[str] = None

    @classmethod
    def from_row(cls, row: dict) -> "Item":
        return cls(row["key"], row["target"], row["body"], row.get("created_at"))


class Reporter(Protocol):
    """Delivers queued items to one platform ("gerrit" or "github")."""

    platform: str

    def find_posted(self, item: Item) -> Optional[str]:
        """The external id of an earlier delivery of ``item`` (its marker is on
        the target), or None."""

    def post(self, item: Item) -> str:
        """Deliver ``item``; return an external id. Raises ReporterError."""


def platform_of(target: str) -> str:
    """'gerrit-commit:abc' -> 'gerrit'; 'github-issue:3322' -> 'github'."""
    head = target.split(":", 1)[0]
    return head.split("-", 1)[0]


def redact_url(url: str) -> str:
    """Drop user:password@ from a URL (so it can appear in messages)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 60.0, rng=random.random) -> float:
    """Exponential backoff with jitter: attempt 0 -> ~base, 1 -> ~2 base, ..."""
    d = min(cap, base * (2 ** attempt))
    return d * (0.5 + rng() / 2)


def short_message(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
