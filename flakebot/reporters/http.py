"""The request plumbing GerritClient and GitHubClient share: one request with
its exceptions mapped to ReporterErrors, and the retry decision after a
transient failure. What a status code means stays with each client."""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import requests

from flakebot.reporters import MaybePosted, ReporterError, TransientError, backoff_delay


def send(session: requests.Session, method: str, url: str, *, what: str, timeout: float,
         write: bool, **kwargs: Any) -> tuple[Optional[requests.Response], Optional[ReporterError], bool]:
    """One request. ``(response, None, False)`` when the server answered;
    ``(None, error, maybe)`` on a timeout or connection failure, ``maybe`` when
    a write may have reached the server. Other request errors raise
    TransientError (one line, no URL or headers)."""
    try:
        return session.request(method, url, timeout=timeout, **kwargs), None, False
    except requests.ConnectTimeout:
        return None, TransientError(f"{what}: connection timed out"), False
    except requests.Timeout:
        return None, TransientError(f"{what}: timed out after {timeout:g} s"), write
    except requests.ConnectionError as e:
        return None, TransientError(f"{what}: connection failed ({type(e).__name__})"), write
    except requests.RequestException as e:
        raise TransientError(f"{what}: {type(e).__name__}") from None


def pause_before_retry(err: ReporterError, maybe: bool, attempt: int, *, retries: int,
                       already_posted: Optional[Callable[[], bool]], backoff_base: float,
                       sleep: Callable[[float], None], log: logging.Logger) -> bool:
    """After transient failure ``err`` on try ``attempt`` (from 0): raise it
    (as MaybePosted if ``maybe``) when out of retries, or when a write may have
    been posted and ``already_posted`` cannot tell; else back off, then return
    True if ``already_posted()`` says the write did go through."""
    if attempt >= retries or (maybe and already_posted is None):
        raise (MaybePosted(str(err), err.status) if maybe else err)
    delay = backoff_delay(attempt, backoff_base)
    log.info("%s; retrying in %.1f s", err, delay)
    sleep(delay)
    return maybe and already_posted is not None and already_posted()
