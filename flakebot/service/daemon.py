"""`flakebot serve`: the scheduled service (APScheduler 3.x BlockingScheduler).

Jobs, all with coalesce=True and max_instances=1 (a late start runs once, two
copies of a job never overlap), on a pool of two threads (the nightly cycle
may run while a long campaign is being driven; each job opens its own Store,
History and executor):

- ``nightly``: the nightly cycle (`nightly.nightly_cycle`) on the cron of
  `nightly.cron`, read in `nightly.timezone`, with misfire grace
  `nightly.misfire_grace_minutes`. A run missed while the service was down
  (its fire time within the grace and no nightly recorded since) runs once
  at start.
- ``campaigns``: the campaign driver: every open campaign, oldest first, one
  at a time, is driven to its verdict (`BisectCampaign.run()`,
  `VerifyCampaign.run()` for the verify campaigns review commands start).
  It first runs at start, so a restart resumes every open campaign (the
  campaign loop recomputes everything from the store: nothing finished is
  lost or counted twice). Each finished campaign's result is delivered
  (`review_service.deliver_campaign`: the culprit's Gerrit change and PR, the
  tracking issue, the review threads that asked); queued deliveries are
  retried (`outbox.flush`) when the driver starts and after each campaign.
- ``review-poller``: every `commands.poll_minutes`, one pass of the Gerrit and
  GitHub comment pollers (`review_service.poll_pass`: commands start their
  campaigns, refusals are answered), then an outbox flush. Nothing to do
  when neither Gerrit nor GitHub is configured.

Nightly rises and falls are posted on the test's tracking issue
(`review_service.notifier`) when GitHub is configured, unless another
``notify`` is given.

One instance per database: an exclusive ``fcntl.flock`` on ``<db>.lock``
(next to the database). A second `flakebot serve` on the same database ends
with "another flakebot serve holds <lock>" (exit 2). Each campaign is driven
under its lease (lease.py): one another process drives (a terminal `bisect
--resume`, a `flakebot poll` running a verify) is skipped and taken up on a
later driver tick, once that process is done or its lease has expired.

SIGTERM (and SIGINT) finish the current step and exit cleanly: no new job
starts; a campaign stops at its next step or poll (requests in flight stay
recorded in the store and are picked up again on restart); a nightly cycle
stops between its steps.
"""
from __future__ import annotations

import contextlib
import json
import fcntl
import logging
import os
import signal
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from flakebot.service import review as review_service
from flakebot.campaigns.bisect import BisectCampaign
from flakebot.config import Config
from flakebot.campaigns.lease import LeaseHeld, LeaseLost, holding_open
from flakebot.service.nightly import Notify, Stopped, nightly_cycle
from flakebot.report import write_reports
from flakebot.reporters import outbox
from flakebot.campaigns.verify import VerifyCampaign
from flakebot.campaigns.wiring import build_executor, open_history, open_store, poll_seconds

log = logging.getLogger("flakebot.service.daemon")

DRIVER_SECONDS = 60.0


class ServiceLocked(Exception):
    """Another `flakebot serve` holds the database's lock (one line)."""


class StopRequested(Exception):
    """Raised inside a job when the service is stopping."""


# ---------------------------------------------------------------- the lock


def lock_path(cfg: Config) -> Path:
    db = Path(cfg.store.db) if cfg.store.db else cfg.db_path()
    return db.with_name(db.name + ".lock")


class InstanceLock:
    """An exclusive, non-blocking flock on a file; released on close or when
    the process dies (the kernel drops it), so a crash never leaves it stale."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: Optional[int] = None

    def acquire(self) -> "InstanceLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ServiceLocked(f"another flakebot serve holds {self.path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    @staticmethod
    def is_held(path: Path) -> bool:
        """Whether a live process holds the lock at `path`; creates and writes nothing."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # also drops our shared lock
        return False

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "InstanceLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------- schedule


def nightly_trigger(cfg: Config) -> CronTrigger:
    return CronTrigger(**cfg.nightly.cron_fields())


def next_fire_times(trigger, n: int = 3, now: Optional[datetime] = None) -> list[datetime]:
    """The next `n` fire times of an APScheduler 3 trigger after `now`."""
    now = now or datetime.now(timezone.utc)
    out: list[datetime] = []
    prev = None
    t = now
    while len(out) < n:
        nxt = trigger.get_next_fire_time(prev, t)
        if nxt is None:
            break
        out.append(nxt)
        prev, t = nxt, nxt + timedelta(microseconds=1)
    return out


def missed_nightly(cfg: Config, nightlies: list[dict], now: Optional[datetime] = None) -> Optional[datetime]:
    """The cron fire time within the misfire grace before `now` that has no
    nightly recorded since, if any (a run missed while the service was down)."""
    now = now or datetime.now(timezone.utc)
    grace = timedelta(minutes=cfg.nightly.misfire_grace_minutes)
    if not grace:
        return None
    fires = [t for t in next_fire_times(nightly_trigger(cfg), 1000, now - grace) if t <= now]
    if not fires:
        return None
    last = fires[-1]
    for row in nightlies:
        started = datetime.fromisoformat(row["started_at"])
        if started >= last:
            return None
    return last


# ---------------------------------------------------------------- the service


class Service:
    """The jobs of `flakebot serve`, callable one by one (tests) or scheduled (`serve`).

    nightly_trigger: APScheduler trigger for the nightly job (default: the cron
        of the config); tests pass e.g. IntervalTrigger(seconds=1).
    executor_factory(cfg) / history_factory(cfg): how each job gets its executor
        and clone (default: wiring.build_executor / wiring.open_history).
    notify(event): the reporters' hook for rises and falls (nightly); default:
        post them on the test's tracking issue.
    on_campaign_done(result): called with each finished campaign's result
        (after its deliveries are queued and a post was tried).
    poller(): the review-comment poller, run every commands.poll_minutes;
        default: `review_service.poll_pass` with the configured platforms.
    reporters_factory(cfg): the reporters results are delivered with (default
        `outbox.reporters_from_config`: none when nothing is configured).
    """

    def __init__(self, cfg: Config, *, nightly_trigger=None, driver_seconds: float = DRIVER_SECONDS,
                 executor_factory: Callable[[Config], object] = build_executor,
                 history_factory: Callable[[Config], object] = open_history,
                 notify: Optional[Notify] = None,
                 on_campaign_done: Callable[[dict], None] = lambda result: None,
                 poller: Optional[Callable[[], None]] = None,
                 reporters_factory: Optional[Callable[[Config], Mapping]] = None,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.cfg = cfg
        self._nightly_trigger = nightly_trigger
        self.driver_seconds = driver_seconds
        self.executor_factory = executor_factory
        self.history_factory = history_factory
        self.reporters_factory = reporters_factory or outbox.reporters_from_config
        self._reporters_cache: Optional[Mapping] = None
        self.notify = notify
        self.on_campaign_done = on_campaign_done
        self.poller = poller if poller is not None else self.review_pass
        self.now = now
        self.stopping = threading.Event()
        self.scheduler: Optional[BlockingScheduler] = None
        self.lock = InstanceLock(lock_path(cfg))
        self._active = 0
        self._idle = threading.Condition()
        self.nightly_results: list[dict] = []
        self.campaign_results: list[dict] = []
        self.errors: list[str] = []

    # -- plumbing -------------------------------------------------------

    @contextlib.contextmanager
    def _resources(self) -> Iterator[tuple]:
        store = open_store(self.cfg)
        history = None
        try:
            history = self.history_factory(self.cfg)
            yield store, history, self.executor_factory(self.cfg)
        finally:
            if history is not None:
                history.close()
            store.close()

    def _check_stop(self, *_a) -> None:
        if self.stopping.is_set():
            raise StopRequested()

    def _sleep(self, seconds: float) -> None:
        """The campaign dispatcher's poll wait: returns early, raising, on stop."""
        if self.stopping.wait(max(0.0, seconds)):
            raise StopRequested()

    @contextlib.contextmanager
    def _job(self, name: str) -> Iterator[None]:
        with self._idle:
            self._active += 1
        try:
            yield
        except (StopRequested, Stopped):
            log.info("%s: stopped", name)
        except Exception as e:  # a job never takes the service down; the next tick retries
            line = f"{name}: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            self.errors.append(line)
            log.error("%s", line)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    # -- the jobs -------------------------------------------------------

    def run_nightly(self) -> Optional[dict]:
        """One nightly cycle (the scheduled job; also callable directly)."""
        with self._job("nightly"):
            self._check_stop()
            with self._resources() as (store, history, ex):
                if history is None:
                    raise RuntimeError("no SPDK clone configured (spdk.repo)")
                result = nightly_cycle(self.cfg, store, history, ex, now=self.now(), notify=self._notify(),
                                       should_stop=self.stopping.is_set)
                result["report"] = str(self._write_reports(store).path)
            self.nightly_results.append(result)
            for t in result["tests"]:
                log.info("nightly %s at %s: %s -> %s", t["test"], result["tip"][:10],
                         t["detection"]["verdict"], t["action"])
            return result
        return None

    def _reporters(self) -> Mapping:
        """The reporters (built once per service from the config)."""
        if self._reporters_cache is None:
            self._reporters_cache = self.reporters_factory(self.cfg)
        return self._reporters_cache

    def _notify(self) -> Optional[Notify]:
        """The nightly hook: the given one, else the tracking-issue poster when
        GitHub is configured (else None: events stay unreported)."""
        if self.notify is not None:
            return self.notify
        if "github" not in self._reporters():
            return None
        return review_service.notifier(self.cfg, self._reporters, lambda: open_store(self.cfg))

    def _flush(self, store) -> None:
        reporters = self._reporters()
        if reporters:
            outbox.flush(store, reporters)

    # Campaigns being driven whose deliveries are not queued yet: a process
    # killed between storing a result and queueing its deliveries queues
    # them at the next start (the result is in the store, so nothing is lost).
    UNDELIVERED = "deliver:pending"

    def _undelivered(self, store, add: Optional[int] = None, remove: Optional[int] = None) -> list[int]:
        ids = json.loads(store.get_meta(self.UNDELIVERED) or "[]")
        if add is not None and add not in ids:
            ids.append(add)
        if remove is not None and remove in ids:
            ids.remove(remove)
        if add is not None or remove is not None:
            store.set_meta(self.UNDELIVERED, json.dumps(ids))
        return ids

    def _deliver(self, store, campaign_id: int) -> None:
        reporters = self._reporters()
        if reporters:
            review_service.deliver_campaign(store, self.cfg, campaign_id, reporters, post=False)
        self._undelivered(store, remove=campaign_id)
        if reporters:
            outbox.flush(store, reporters)

    def drive_campaigns(self) -> list[dict]:
        """Drive every open campaign (bisect and verify) to its verdict, oldest
        first, one at a time; deliver each result."""
        done: list[dict] = []
        with self._job("campaigns"):
            with self._resources() as (store, history, ex):
                for cid in self._undelivered(store):
                    if store.get_campaign(cid)["status"] != "open":
                        self._deliver(store, cid)
                self._flush(store)  # a restart retries what an earlier process left queued
                for row in store.open_campaigns():
                    self._check_stop()
                    if row["kind"] not in ("bisect", "verify"):
                        continue
                    if row["kind"] == "verify":
                        camp = VerifyCampaign(store, ex, row["id"], poll_seconds=poll_seconds(self.cfg),
                                              on_progress=self._check_stop, lease_seconds=self.cfg.store.lease_seconds)
                    else:
                        camp = BisectCampaign(store, ex, row["id"], poll_seconds=poll_seconds(self.cfg),
                                              on_progress=self._check_stop, lease_seconds=self.cfg.store.lease_seconds)
                    camp.dispatcher.sleep = self._sleep
                    result = self._drive_one(store, camp, row)
                    if result is None:
                        continue
                    if row["kind"] == "bisect":
                        loc = self._write_reports(store, row["id"])
                        if loc.url and result.get("report_url") != loc.url:
                            # Comments link to the page: keep its address with the stored result.
                            result = {**result, "report_url": loc.url}
                            store.finish_campaign(row["id"], result["verdict"], result["culprit"],
                                                  result["confidence"], result)
                    log.info("campaign %s: %s %s", row["id"], result.get("verdict"),
                             (result.get("culprit") or "")[:10])
                    done.append(result)
                    self.campaign_results.append(result)
                    # The result is in the store; now queue its deliveries and try them.
                    self._deliver(store, row["id"])
                    self.on_campaign_done(result)
        return done

    def _drive_one(self, store, camp, row: dict) -> Optional[dict]:
        """Drive one campaign under its lease; None when another process
        drives it (skipped: the driver tries again on its next tick, and
        takes it over once that process stops or its lease expires) or
        finished it meanwhile (its result is that process's to deliver)."""
        try:
            with holding_open(camp.lease) as finished:
                if finished:
                    return None
                log.info("campaign %s: driving %s %s %s..%s", row["id"], row["kind"], row["test"],
                         row["good"][:10], row["bad"][:10])
                self._undelivered(store, add=row["id"])
                return camp.run()
        except LeaseHeld as e:  # LeaseLost: this one stalled past its lease and was replaced
            (log.warning if isinstance(e, LeaseLost) else log.info)("campaign %s: skipped: %s", row["id"], e)
            return None

    def _write_reports(self, store, campaign_id: Optional[int] = None):
        """The HTML reports, rewritten after each nightly cycle and campaign."""
        return write_reports(store, self.cfg.report_dir(), base_url=self.cfg.report.base_url or None,
                             campaign_id=campaign_id)

    def poll_reviews(self) -> None:
        """The review-comment poller's slot."""
        with self._job("review-poller"):
            self._check_stop()
            if self.poller is not None:
                self.poller()

    def review_pass(self) -> Optional[dict]:
        """One pass of the review pollers (the default poller): commands start
        their campaigns (the campaign driver runs them), refusals and queued
        deliveries are posted. Returns the pass report, or None with no
        Gerrit/GitHub configured."""
        reporters = self._reporters()
        clients = review_service.clients_of(reporters)
        if not clients and not reporters:
            return None
        store = open_store(self.cfg)
        history = None
        try:
            history = self.history_factory(self.cfg)
            rep = review_service.poll_pass(self.cfg, store, history, clients=clients, reporters=reporters,
                                           should_stop=self.stopping.is_set)
        finally:
            if history is not None:
                history.close()
            store.close()
        for platform, e in rep.errors.items():
            self.errors.append(f"review-poller: {platform}: {e}")
        return rep.as_json()

    # -- scheduling -----------------------------------------------------

    def build_scheduler(self) -> BlockingScheduler:
        cfg = self.cfg
        grace = cfg.nightly.misfire_grace_minutes * 60 or 1
        opts = {"coalesce": True, "max_instances": 1, "misfire_grace_time": grace}
        sched = BlockingScheduler(executors={"default": ThreadPoolExecutor(2)}, job_defaults=opts,
                                  timezone=cfg.nightly.timezone)
        now = self.now()
        sched.add_job(self.run_nightly, self._nightly_trigger or nightly_trigger(cfg), id="nightly",
                      name="nightly cycle", **opts)
        sched.add_job(self.drive_campaigns, IntervalTrigger(seconds=self.driver_seconds), id="campaigns",
                      name="campaign driver", next_run_time=now, **opts)
        sched.add_job(self.poll_reviews, IntervalTrigger(minutes=cfg.commands.poll_minutes), id="review-poller",
                      name="review-comment poller", **opts)
        with open_store(cfg) as store:
            missed = missed_nightly(cfg, store.nightlies(), now)
        if missed is not None:
            log.info("nightly due at %s was missed; running it now", missed.isoformat())
            sched.add_job(self.run_nightly, id="nightly-missed", name="missed nightly cycle", next_run_time=now,
                          **opts)
        self.scheduler = sched
        return sched

    def request_stop(self) -> None:
        """Stop taking new jobs; running ones end at their next step."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        # Not from inside a signal handler's frame: shut down from a thread,
        # once the scheduler is up (a stop may come while it is starting).
        threading.Thread(target=self._shutdown_when_running, daemon=True).start()

    def _shutdown_when_running(self) -> None:
        for _ in range(200):
            sched = self.scheduler
            if sched is not None and sched.running:
                sched.shutdown(wait=False)
                return
            threading.Event().wait(0.05)

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def serve(self, install_signals: bool = True) -> int:
        """Take the lock (ServiceLocked if held), schedule, block until stopped,
        let the running step finish, release the lock. Returns 0."""
        self.lock.acquire()
        try:
            sched = self.build_scheduler()
            old = {}
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    old[sig] = signal.signal(sig, lambda *_: self.request_stop())
            try:
                nxt = next_fire_times(sched.get_job("nightly").trigger, 1, self.now())
                log.info("serving %s (lock %s); next nightly %s", self.cfg.db_path(), self.lock.path,
                         _fmt(nxt[0] if nxt else None))
                if self.stopping.is_set():
                    return 0
                sched.start()
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)
            self.wait_idle()
            log.info("stopped cleanly")
            return 0
        finally:
            self.lock.release()


def _fmt(t: Optional[datetime]) -> str:
    return t.isoformat() if t else "never"
