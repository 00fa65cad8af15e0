"""Verify campaigns: does a patch lower (or raise) a test's failure rate?

A verify campaign is a stored campaign of kind 'verify' over two commits,
``good`` = the parent and ``bad`` = the patch (``commits = [parent, patch]``).
It runs the test N times on each side through the one Dispatcher (the same
way every build becomes evidence), then compares the two sides:

- rates of timeouts, near misses, other failures and any failure on each
  side, with Beta (Jeffreys) credible intervals (`analysis.rates.beta_rate`);
- the probability that the patch lowers the any-failure rate, and that it
  raises it (`analysis.compare`, independent Beta posteriors).

Like a bisection it is resumable: the runs done so far are counted from the
store by campaign id, requests recorded but not ingested are picked up again
by the Dispatcher (`resume`), so a killed verify never repeats a finished run.
Infra runs are not evidence; they are run again, up to ``max_attempts``
iterations per side in all.

    cid, resumed = open_verify(store, test, patch=Commit(sha), parent=Commit(psha),
                               params=VerifyParams.from_config(cfg, iterations=50))
    result = VerifyCampaign(store, executor, cid).run()
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional

from flakebot.analysis.classes import Bins, classify
from flakebot.analysis.compare import compare_rates
from flakebot.analysis.rates import beta_rate
from flakebot.analysis.summary import wait_stats
from flakebot.campaigns.bisect import StoredParams
from flakebot.campaigns.dispatch import Dispatcher
from flakebot.executors.base import Executor
from flakebot.campaigns.lease import DEFAULT_LEASE_SECONDS, CampaignLease, holding_open
from flakebot.model import Commit, RunRequest
from flakebot.executors.runids import campaign_run_id, instance_id
from flakebot.store import Store

DECIDE_AT = 0.95  # a verdict of 'lowers' / 'raises' needs this probability (render uses the same)


@dataclass(frozen=True)
class VerifyParams(StoredParams):
    """What a verify campaign was asked for."""

    iterations: int = 20
    interval: float = 0.9
    max_attempts_factor: int = 3  # iterations per side in all, infra included, at most N x this
    # Where the request came from (review commands); None from the CLI.
    command_key: Optional[str] = None
    reply_to: Optional[str] = None
    ref: Optional[str] = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg, iterations: int, **kw) -> "VerifyParams":
        return cls(iterations=int(iterations), wait_bins_s=tuple(cfg.bisect.wait_bins_s),
                   limit_s=float(cfg.tests.limit_s), slow_threshold_s=float(cfg.tests.slow_threshold_s), **kw)


def find_by_command(store: Store, key: str) -> Optional[dict]:
    """The campaign a review command (its ``key``) started, if any."""
    for row in store.campaigns():
        if (row.get("params") or {}).get("command_key") == key:
            return row
    return None


def open_verify(store: Store, test: str, patch: Commit, parent: Commit, params: VerifyParams
                ) -> tuple[int, bool]:
    """Create the verify campaign, or find the one made before: by the
    command's key when there is one, else an open one for the same test,
    patch and parent. Returns (id, resumed)."""
    if params.command_key:
        row = find_by_command(store, params.command_key)
        if row is not None:
            return row["id"], True
    else:
        for row in store.find_campaigns("verify", test, parent.sha, patch.sha):
            if row["status"] == "open" and VerifyParams.from_json(row["params"]).iterations == params.iterations:
                return row["id"], True
    store.upsert_commits([parent, patch])
    cid = store.create_campaign("verify", test, parent.sha, patch.sha, [parent.sha, patch.sha],
                                params.to_json())
    return cid, False


class VerifyCampaign:
    """Drives one stored verify campaign to its answer."""

    def __init__(self, store: Store, executor: Optional[Executor], campaign_id: int, *,
                 poll_seconds: float = 0.0, on_progress: Callable[[dict], None] = lambda p: None,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS):
        row = store.get_campaign(campaign_id)
        if row["kind"] != "verify":
            raise ValueError(f"campaign {campaign_id} is a {row['kind']} campaign")
        self.store = store
        self.executor = executor
        self.cid = campaign_id
        self.row = row
        self.test = row["test"]
        self.parent, self.patch = row["good"], row["bad"]
        self.params = VerifyParams.from_json(row["params"])
        self.on_progress = on_progress
        self.dispatcher = Dispatcher(store, executor, slow_threshold_s=self.params.slow_threshold_s,
                                     campaign_id=campaign_id, poll_seconds=poll_seconds) \
            if executor is not None else None
        # One driver at a time (lease.py): run() and abort() hold it, the poll loop renews it.
        self.lease = CampaignLease(store, campaign_id, seconds=lease_seconds)
        if self.dispatcher is not None:
            self.dispatcher.heartbeat = self.lease.renew

    # -- evidence, all from the store ------------------------------------

    def counts(self) -> dict[str, list[int]]:
        """Class counts per side ('parent', 'patch') from this campaign's runs."""
        bins = self.params.bins
        out = {"parent": [0] * bins.n_classes, "patch": [0] * bins.n_classes}
        for r in self.store.runs(test=self.test, campaign_id=self.cid, include_infra=False):
            c = classify(r["outcome"], r["worst_wait_s"], bins)
            side = self._side(r["commit_sha"])
            if c is not None and side:
                out[side][c] += 1
        return out

    def _side(self, sha: str) -> Optional[str]:
        return "patch" if sha == self.patch else "parent" if sha == self.parent else None

    def _attempted(self) -> dict[str, int]:
        """Iterations requested per side so far (every build of this campaign)."""
        out = {"parent": 0, "patch": 0}
        for b in self.store.builds(self.cid):
            side = self._side(b["commit_sha"])
            if side:
                out[side] += int(b["iterations"] or 0)
        return out

    # -- the loop --------------------------------------------------------

    def run(self) -> dict:
        if self.row["status"] != "open":
            return self.row["result"] or {}
        if self.dispatcher is None:
            raise ValueError("an executor is needed to run a verify campaign")
        with holding_open(self.lease) as finished:
            return (finished["result"] or {}) if finished else self._drive()

    def _drive(self) -> dict:
        disp = self.dispatcher
        disp.resume()
        instance = instance_id(self.store)
        n = self.params.iterations
        cap = n * max(1, self.params.max_attempts_factor)
        seq = len(self.store.builds(self.cid))
        while True:
            counts = self.counts()
            attempted = self._attempted()
            done = {s: sum(c) for s, c in counts.items()}
            flying = {"parent": 0, "patch": 0}
            for f in disp.in_flight:
                flying[self._side(f.request.commit) or "parent"] += f.request.iterations
            self.on_progress({"campaign_id": self.cid, "done": done, "in_flight": flying, "iterations": n})
            # What each side still needs, within its attempt cap.
            need = {s: max(0, min(n - done[s] - flying[s], cap - attempted[s])) for s in done}
            free = disp.free_slots()
            if free and any(need.values()):
                self.lease.renew()  # still ours before anything is sent (LeaseLost if not)
                for side, iters in _spread(need, free):
                    seq += 1
                    sha = self.patch if side == "patch" else self.parent
                    disp.submit(RunRequest(campaign_run_id(instance, "v", self.cid, seq), sha, (self.test,), iters))
            if not disp.in_flight:
                return self._finish()
            disp.collect(wait=True)

    def abort(self) -> None:
        """Stop the campaign: cancel its builds still out, close it as aborted."""
        if self.row["status"] != "open":
            raise ValueError(f"campaign {self.cid} is {self.row['status']}, not open")
        with holding_open(self.lease) as finished:  # a driver would send new work after the abort
            if finished:
                raise ValueError(f"campaign {self.cid} is {finished['status']}, not open")
            if self.dispatcher is not None:
                self.dispatcher.resume(resubmit=False)
                self.dispatcher.cancel_all()
            self.store.update_campaign(self.cid, status="aborted")

    # -- the result ------------------------------------------------------

    def _finish(self) -> dict:
        result = self.result()
        self.store.finish_campaign(self.cid, result["verdict"], None, result["confidence"], result)
        return result

    def result(self) -> dict:
        """The campaign's answer, in the shape flakebot.report.comments's verify builder reads."""
        p = self.params
        bins = p.bins
        counts = self.counts()
        rates = {side: side_rates(c, bins, p.interval) for side, c in counts.items()}
        k_patch, n_patch = rates["patch"]["failure"]["k"], rates["patch"]["failure"]["n"]
        k_par, n_par = rates["parent"]["failure"]["k"], rates["parent"]["failure"]["n"]
        p_lower, p_raise = compare_rates(k_patch, n_patch, k_par, n_par)
        if p_lower >= DECIDE_AT:
            verdict = "lowers"
        elif p_raise >= DECIDE_AT:
            verdict = "raises"
        else:
            verdict = "no-difference"
        runs = self.store.runs(test=self.test, campaign_id=self.cid)
        builds = self.store.builds(self.cid)
        evidence = sum(1 for r in runs if r["outcome"] != "infra")
        created = datetime.fromisoformat(self.row["created_at"])
        out = {
            "campaign_id": self.cid,
            "kind": "verify",
            "test": self.test,
            "patch": self.patch,
            "parent": self.parent,
            "iterations": p.iterations,
            "verdict": verdict,
            "confidence": round(max(p_lower, p_raise), 6),
            "p_lower": round(p_lower, 6),
            "p_raise": round(p_raise, 6),
            "compared": "failure",  # any failure: timeouts and other failures
            "interval": p.interval,
            "patch_rates": rates["patch"],
            "parent_rates": rates["parent"],
            "runs": evidence,
            "infra_runs": len(runs) - evidence,
            "builds": len(builds),
            "host_minutes": round(sum(b["host_minutes"] or 0.0 for b in builds), 3),
            "wall_seconds": round((datetime.now(timezone.utc) - created).total_seconds(), 1),
            "hosts": sorted({b["host"] for b in builds if b["host"]}),
            "build_urls": [b["url"] for b in builds if b["url"]],
            "waits": self._waits(runs),
            "command": (f"flakebot verify --patch {self.patch} --parent {self.parent} --test {self.test}"
                        f" --iterations {p.iterations}"),
            "report_url": None,
            "ref": p.ref,
            "reply_to": p.reply_to,
        }
        return out

    def _waits(self, runs: list[dict]) -> list[dict]:
        by_id = {r["id"]: r for r in runs}
        groups: dict[tuple[str, str], list[float]] = defaultdict(list)
        limits: dict[tuple[str, str], float] = {}
        for sd in self.store.shutdowns_for(by_id):
            side = self._side(by_id[sd["run_id"]]["commit_sha"])
            if sd["waited_s"] is None or side is None:
                continue
            key = (sd["call_site"], side)
            groups[key].append(sd["waited_s"])
            limits[key] = sd["limit_s"]
        return [dict(side=side, call_site=site, limit_s=limits[(site, side)], **wait_stats(v))
                for (site, side), v in sorted(groups.items())]


def side_rates(counts: list[int], bins: Bins, level: float) -> dict:
    """Rates of one side from its class counts: timeouts, near misses, other
    failures, any failure; each {'k', 'n', 'rate', 'lo', 'hi'}."""
    n = sum(counts)
    groups = bins.groups
    near = sum(c for c, g in zip(counts, groups) if g == 1)
    timeout, fail = counts[bins.timeout], counts[bins.fail]

    def rate(k: int) -> dict:
        r = beta_rate(k, n, level)
        return {"k": r.k, "n": r.n, "rate": round(r.mean, 6), "lo": round(r.lo, 6), "hi": round(r.hi, 6)}

    return {"runs": n, "timeout": rate(timeout), "near_miss": rate(near), "fail": rate(fail),
            "failure": rate(timeout + fail)}


def _spread(need: dict[str, int], slots: int) -> list[tuple[str, int]]:
    """Split what each side needs over ``slots`` requests, both sides
    alternating so both progress together; at most one request per slot."""
    sides = [s for s in ("parent", "patch") if need.get(s)]
    if not sides or slots <= 0:
        return []
    per = {s: max(1, slots // len(sides)) for s in sides}
    if slots % len(sides) and len(sides) == 2:
        per[sides[0]] += 1 if slots > 1 else 0
    out: list[tuple[str, int]] = []
    for s in sides:
        parts = min(per[s], need[s])
        base, extra = divmod(need[s], parts)
        out += [(s, base + (1 if i < extra else 0)) for i in range(parts)]
    return out[:slots]
