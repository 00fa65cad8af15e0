"""Run ids: unique across databases, reproducible where it matters.

A run id names one request (commit, tests, iterations) to an executor, and
executors find a request again by it (Jenkins by its FLAKEBOT_RUN_ID
parameter, the local executor by its pid file). Two databases driving one
Jenkins (a lab database and a developer's, or a database made again from
scratch) must therefore never make the same run id: each database holds a
random instance id (made once, with the database: store.py migration 3) and
every run id starts with it::

    <instance>-c<campaign>-r<seq>     a bisection's request
    <instance>-v<campaign>-r<seq>     a verify campaign's request
    <instance>-<prefix>-<sha12>-<n>   `flakebot run`, the nightly cycle

The simulated hosts seed their logs from the run id; so that a seed still
gives the same results in every database, they seed from `seed_key`, the run
id without its instance part.

    >>> campaign_run_id("3f9a0c1b2d4e", "c", 7, 12)
    '3f9a0c1b2d4e-c7-r12'
    >>> seed_key('3f9a0c1b2d4e-c7-r12'), seed_key('c7-r12')
    ('c7-r12', 'c7-r12')
"""
from __future__ import annotations

import re

from flakebot.store import Store, StoreError

INSTANCE_KEY = "instance_id"
_INSTANCE_RE = re.compile(r"[0-9a-f]{12}")
_PREFIXED_RE = re.compile(r"([0-9a-f]{12})-(.+)")


def instance_id(store: Store) -> str:
    """This database's instance id (12 hex digits, made with the database)."""
    value = store.get_meta(INSTANCE_KEY)
    if value is None or not _INSTANCE_RE.fullmatch(value):
        raise StoreError(f"{store.path}: no valid instance id in its meta table (got {value!r})")
    return value


def campaign_run_id(instance: str, kind: str, campaign_id: int, seq: int) -> str:
    """A campaign's request number `seq` (kind "c": bisection, "v": verify)."""
    return f"{instance}-{kind}{int(campaign_id)}-r{int(seq)}"


def batch_run_id(instance: str, prefix: str, sha: str, n: int) -> str:
    """Request `n` of a batch (`flakebot run`, nightly) at commit `sha`."""
    return f"{instance}-{prefix}-{sha[:12]}-{int(n)}"


def seed_key(run_id: str) -> str:
    """The run id without its database's instance id: what simulated hosts
    seed from, so the same seed gives the same logs in any database."""
    m = _PREFIXED_RE.fullmatch(run_id or "")
    return m.group(2) if m else (run_id or "")
