"""One driver per campaign: a lease in the store.

Two processes driving one campaign (the same `flakebot bisect` started twice,
`serve` next to a terminal `bisect --resume`) would number their requests
alike and build one run id at two commits. So whoever drives a campaign
(`BisectCampaign.run`, `VerifyCampaign.run`, their `abort`) first takes its
lease: one row in the ``leases`` table naming the holder (host, pid, since
when) and when the lease expires, written in one ``BEGIN IMMEDIATE``
transaction so two takers cannot both win. The holder renews it while its
loop runs (every poll tick, at most every quarter of the lease, and before it
submits anything) and deletes it when it stops, however it stops.

Another process may take the lease over only when it has expired (the holder
hung, or its host went away), or at once when the holder was a process on
this host that is gone (killed with -9: same boot id, and its pid is dead or
now another process's). Otherwise it gets `LeaseHeld`, one line naming the
holder; a holder that finds its lease taken over stops with `LeaseLost`.

    >>> import tempfile, os
    >>> from flakebot.store import Store
    >>> s = Store(os.path.join(tempfile.mkdtemp(), "f.db"))
    >>> cid = s.create_campaign("bisect", "t", "g", "b", ["g", "b"], {})
    >>> with CampaignLease(s, cid):
    ...     try:
    ...         CampaignLease(s, cid).acquire()
    ...     except LeaseHeld as e:
    ...         print(str(e).split(":")[0])
    campaign 1 is driven by another flakebot
    >>> holder(s, cid) is None
    True
    >>> s.close()
"""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator, Optional

from flakebot.store import Store, StoreError

DEFAULT_LEASE_SECONDS = 120.0
RENEW_FRACTION = 0.25  # renew once this much of the lease has passed: three quarters stay in hand


@dataclass(frozen=True)
class Holder:
    """Who holds a campaign's lease (one ``leases`` row)."""

    campaign_id: int
    token: str
    host: str
    pid: int
    boot: Optional[str]
    start_ticks: Optional[int]
    since: str
    expires: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since}"


class LeaseHeld(StoreError):
    """Another process drives the campaign (one line naming it)."""

    def __init__(self, holder: Holder, message: Optional[str] = None):
        self.holder = holder
        super().__init__(message or (
            f"campaign {holder.campaign_id} is driven by another flakebot: {holder.describe()} "
            f"(its lease runs to {holder.expires} and is renewed while it runs); "
            f"stop that process or let it finish"))


class LeaseLost(LeaseHeld):
    """Our lease expired and another process took the campaign over."""


def holder(store: Store, campaign_id: int) -> Optional[Holder]:
    """The campaign's lease holder, or None (expired leases included)."""
    rows = store._query("SELECT * FROM leases WHERE campaign_id = ?", [campaign_id])
    return _holder(rows[0]) if rows else None


def _holder(row: dict) -> Holder:
    return Holder(row["campaign_id"], row["token"], row["host"] or "?", int(row["pid"] or 0), row["boot"],
                  row["start_ticks"], row["since"] or "?", row["expires"])


@dataclass(frozen=True)
class Identity:
    """This process, as a lease records it."""

    host: str
    pid: int
    boot: Optional[str]
    start_ticks: Optional[int]

    @classmethod
    def of_this_process(cls) -> "Identity":
        boot, ticks = _boot_and_start(os.getpid())
        return cls(socket.gethostname(), os.getpid(), boot, ticks)


def _boot_and_start(pid: int) -> tuple[Optional[str], Optional[int]]:
    """(boot id, start ticks) of a process, or Nones where /proc cannot tell."""
    from flakebot.executors.procs import boot_id, proc_stat

    try:
        st = proc_stat(pid)
        return boot_id(), (st.start_ticks if st is not None and st.state != "Z" else None)
    except OSError:
        return None, None


def gone_from_this_host(h: Holder, me: Identity) -> bool:
    """True when `h` was a process on this host that no longer runs (its boot
    is over, or its pid is dead or another process's). False when it runs or
    when this host cannot tell (another host, no /proc): then only expiry frees it."""
    if h.host != me.host or not h.boot or h.start_ticks is None or not me.boot:
        return False
    if h.boot != me.boot:
        return True
    _boot, ticks = _boot_and_start(h.pid)
    return ticks != h.start_ticks


class CampaignLease:
    """The right to drive one campaign. ``with lease:`` takes it (LeaseHeld if
    another process holds it) and gives it back; nested ``with`` blocks of one
    lease object join the outer one. `renew()` keeps it while the loop runs.

    `clock` (UTC datetimes) and `monotonic` are injectable for tests."""

    def __init__(self, store: Store, campaign_id: int, *, seconds: float = DEFAULT_LEASE_SECONDS,
                 clock: Optional[Callable[[], datetime]] = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 identity: Optional[Identity] = None):
        if not seconds > 0:
            raise ValueError(f"lease seconds must be above 0 (got {seconds!r})")
        self.store = store
        self.campaign_id = int(campaign_id)
        self.seconds = float(seconds)
        self.clock = clock or store.clock or (lambda: datetime.now(timezone.utc))
        self.monotonic = monotonic
        self.identity = identity
        self.token = ""
        self._depth = 0
        self._renewed_at = 0.0

    @property
    def held(self) -> bool:
        return self._depth > 0

    def _stamps(self) -> tuple[str, str]:
        now = self.clock().astimezone(timezone.utc)
        return _iso(now), _iso(now + timedelta(seconds=self.seconds))

    def acquire(self) -> "CampaignLease":
        if self._depth:
            self._depth += 1
            return self
        me = self.identity or Identity.of_this_process()
        token = secrets.token_hex(8)
        since, expires = self._stamps()
        with self.store.write() as db:
            if db.execute("SELECT 1 FROM campaigns WHERE id = ?", [self.campaign_id]).fetchone() is None:
                raise StoreError(f"no campaign {self.campaign_id}")
            cur = db.execute("SELECT * FROM leases WHERE campaign_id = ?", [self.campaign_id])
            row = cur.fetchone()
            if row is not None:
                h = _holder(dict(zip([d[0] for d in cur.description], row)))
                if not _expired(h, since) and not gone_from_this_host(h, me):
                    raise LeaseHeld(h)
            db.execute(
                "INSERT INTO leases (campaign_id, token, host, pid, boot, start_ticks, since, expires)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(campaign_id) DO UPDATE SET"
                " token = excluded.token, host = excluded.host, pid = excluded.pid, boot = excluded.boot,"
                " start_ticks = excluded.start_ticks, since = excluded.since, expires = excluded.expires",
                [self.campaign_id, token, me.host, me.pid, me.boot, me.start_ticks, since, expires])
        self.token, self._depth, self._renewed_at = token, 1, self.monotonic()
        return self

    def renew(self, force: bool = False) -> None:
        """Push the expiry on (at most every RENEW_FRACTION of the lease unless
        `force`). LeaseLost if another process has taken the campaign over."""
        if not self._depth:
            return
        if not force and self.monotonic() - self._renewed_at < self.seconds * RENEW_FRACTION:
            return
        _now, expires = self._stamps()
        with self.store.write() as db:
            cur = db.execute("UPDATE leases SET expires = ? WHERE campaign_id = ? AND token = ?",
                             [expires, self.campaign_id, self.token])
            if cur.rowcount != 1:
                h = holder(self.store, self.campaign_id)
                self._depth = 0
                if h is None:
                    raise StoreError(f"campaign {self.campaign_id}: its lease was removed while this "
                                     f"flakebot drove it; stopping")
                raise LeaseLost(h, f"campaign {self.campaign_id}: another flakebot took it over "
                                   f"({h.describe()}) after this one's lease expired; stopping")
        self._renewed_at = self.monotonic()

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth:
            return
        with self.store.write() as db:
            db.execute("DELETE FROM leases WHERE campaign_id = ? AND token = ?", [self.campaign_id, self.token])

    def __enter__(self) -> "CampaignLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def holding_open(lease: CampaignLease) -> Iterator[Optional[dict]]:
    """Hold `lease` for the block. Yields None while its campaign is open,
    else the campaign's row: the process that held it before finished it."""
    with lease:
        row = lease.store.get_campaign(lease.campaign_id)
        yield None if row["status"] == "open" else row


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds")


def _expired(h: Holder, now_iso: str) -> bool:
    try:
        return datetime.fromisoformat(h.expires) <= datetime.fromisoformat(now_iso)
    except (TypeError, ValueError):
        return True  # an unreadable expiry protects nothing
