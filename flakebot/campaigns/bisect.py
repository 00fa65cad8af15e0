"""The one campaign loop: decide -> run -> parse -> store -> decide.

A bisection campaign is a row in the store plus its first-parent range
(position 0 = the good end). Every decision is recomputed from the store:
the loop reads the stored runs, asks the pure engine (`analysis.engine.step`)
for a verdict or for the next requests, hands those to the dispatcher (which
records each request before submitting it) and waits for results. A killed
process therefore resumes by running the same loop again: finished runs are
in the store, unfinished requests are reattached or resubmitted under their
original run_id, and the engine's choices are reproducible from the counts.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from typing import Callable, Optional, Sequence

from flakebot.analysis.classes import Bins, classify
from flakebot.analysis.engine import EngineSettings, Step, step
from flakebot.analysis.planner import host_build_sets
from flakebot.analysis.posterior import path_weights, prior_from_evidence
from flakebot.analysis.rates import beta_rate
from flakebot.analysis.summary import wait_stats
from flakebot.campaigns.dispatch import CANNOT_TEST, Dispatcher, is_cannot_test
from flakebot.executors.base import Executor, ExecutorError
from flakebot.campaigns.lease import DEFAULT_LEASE_SECONDS, CampaignLease, holding_open
from flakebot.model import Commit, RunRequest, Verdict
from flakebot.executors.runids import campaign_run_id, instance_id
from flakebot.store import Store


@dataclass(frozen=True)
class Progress:
    campaign_id: int
    runs: int
    builds: int
    in_flight: int
    top_commit: Optional[str]
    top_probability: float
    p_no_change: float


@dataclass(frozen=True)
class StoredParams:
    """Settings stored with a campaign (JSON, tuples as lists), so a resumed
    campaign keeps them; and the outcome classes they define."""

    wait_bins_s: tuple[float, ...] = (20.0, 60.0, 80.0)
    limit_s: float = 90.0
    slow_threshold_s: float = 60.0

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict):
        """Inverse of to_json; keys this version does not know are ignored."""
        kw = {}
        for f in fields(cls):
            if f.name in d:
                v = d[f.name]
                kw[f.name] = tuple(v) if isinstance(v, list) and isinstance(f.default, tuple) else v
        return cls(**kw)

    @property
    def bins(self) -> Bins:
        return Bins(tuple(self.wait_bins_s), float(self.limit_s), float(self.slow_threshold_s))


@dataclass(frozen=True)
class BisectParams(StoredParams):
    """What a bisection campaign was asked for."""

    confidence: float = 0.95
    max_runs: Optional[int] = None
    max_host_hours: Optional[float] = None
    max_builds: Optional[int] = None
    max_infra_per_commit: int = 3
    build_minutes: float = 10.0
    run_minutes: float = 2.0
    history_cap: float = 50.0
    confirm_runs: int = 2
    path_weights: bool = False
    suspect_paths: tuple[str, ...] = ()
    seed: int = 0
    host_builds_kept: int = 1

    @classmethod
    def from_config(cls, cfg) -> "BisectParams":
        """What a campaign opened from this config gets (bisect, nightly, demo)."""
        b = cfg.bisect
        return cls(confidence=b.confidence, max_runs=b.max_runs, max_host_hours=b.max_host_hours,
                   max_builds=b.max_builds or None, max_infra_per_commit=b.max_infra_per_commit,
                   build_minutes=cfg.executor.build_minutes, run_minutes=cfg.executor.run_minutes,
                   wait_bins_s=b.wait_bins_s, limit_s=cfg.tests.limit_s, slow_threshold_s=cfg.tests.slow_threshold_s,
                   history_cap=b.history_cap, confirm_runs=b.confirm_runs, path_weights=b.path_weights,
                   suspect_paths=b.suspect_paths, seed=cfg.sim.seed, host_builds_kept=b.host_builds_kept)



def open_bisect(store: Store, test: str, good: Commit, commits: Sequence[Commit],
                params: BisectParams, *, is_ancestor: Optional[Callable[[str, str], bool]] = None
                ) -> tuple[int, bool]:
    """Create the campaign, or find the one the same command made before: the
    open one for this test and range (running the command again continues
    it, with its stored settings), or a finished one asked with the same
    settings (its stored result is the answer). Returns (id, resumed).

    A new campaign stores, with its settings, the class counts of what the
    store already knew when it began (`history_counts`), so its prior is a
    stored fact: every later number is reproducible from the store alone."""
    for row in store.find_campaigns("bisect", test, good.sha, commits[-1].sha):
        if row["status"] == "open" or (row["status"] == "done" and BisectParams.from_json(row["params"]) == params):
            return row["id"], True
    store.upsert_commits([good, *commits])
    shas = [good.sha] + [c.sha for c in commits]
    baseline, at_bad = history_counts(store, test, shas, params.bins, is_ancestor)
    stored = {**params.to_json(), "prior_counts": {"baseline": baseline, "bad": at_bad}}
    cid = store.create_campaign("bisect", test, good.sha, commits[-1].sha, shas, stored)
    return cid, False


def history_counts(store: Store, test: str, shas: Sequence[str], bins: Bins,
                   is_ancestor: Optional[Callable[[str, str], bool]] = None) -> tuple[list[int], list[int]]:
    """Class counts of stored runs of `test` outside a range: at the good end
    and (with `is_ancestor`) its ancestors, the baseline; and at the bad end,
    the evidence that started the search. Runs inside the range are left to
    the campaign itself."""
    good, bad = shas[0], shas[-1]
    inside = set(shas)
    base = [0] * bins.n_classes
    at_bad = [0] * bins.n_classes
    ancestors: dict[str, bool] = {}
    for r in store.runs(test=test, include_infra=False):
        c = classify(r["outcome"], r["worst_wait_s"], bins)
        sha = r["commit_sha"]
        if c is None:
            continue
        if sha == bad:
            at_bad[c] += 1
        elif sha == good or (sha not in inside and is_ancestor is not None
                             and ancestors.setdefault(sha, is_ancestor(sha, good))):
            base[c] += 1
    return base, at_bad


class BisectCampaign:
    """Drives one stored bisection campaign to a verdict."""

    def __init__(self, store: Store, executor: Executor, campaign_id: int, *,
                 poll_seconds: float = 0.0,
                 on_progress: Callable[[Progress], None] = lambda p: None,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS):
        self.store = store
        self.executor = executor
        self.cid = campaign_id
        row = store.get_campaign(campaign_id)
        if row["kind"] != "bisect":
            raise ValueError(f"campaign {campaign_id} is a {row['kind']} campaign")
        self.row = row
        self.test = row["test"]
        self.params = BisectParams.from_json(row["params"])
        self.shas = store.campaign_commits(campaign_id)
        self.index = {sha: i for i, sha in enumerate(self.shas)}
        self.on_progress = on_progress
        self.dispatcher = Dispatcher(store, executor, slow_threshold_s=self.params.slow_threshold_s,
                                     campaign_id=campaign_id, poll_seconds=poll_seconds)
        # One driver at a time (lease.py): run() and abort() hold it, the poll loop renews it.
        self.lease = CampaignLease(store, campaign_id, seconds=lease_seconds)
        self.dispatcher.heartbeat = self.lease.renew

    # -- evidence, all from the store ------------------------------------

    def counts(self) -> list[list[int]]:
        """Class counts per range position from this campaign's runs."""
        bins = self.params.bins
        counts = [[0] * bins.n_classes for _ in self.shas]
        for r in self.store.runs(test=self.test, campaign_id=self.cid, include_infra=False):
            c = classify(r["outcome"], r["worst_wait_s"], bins)
            if c is not None and r["commit_sha"] in self.index:
                counts[self.index[r["commit_sha"]]][c] += 1
        return counts

    def untestable(self) -> dict[int, dict]:
        """Positions the search no longer sends work to, like `git bisect skip`:
        a commit without a test result where every host that tried said
        "cannot test here" (the host script's `flakebot: infra:` line, e.g. a
        failed build), or any commit where `max_infra_per_commit` requests came
        back with nothing but infra (lost hosts, cut logs; the evidence it has
        still counts). Value: {"reasons": [(reason, runs)], "hosts": [...],
        "requests": infra-only requests, "evidence_runs": n}."""
        seen: dict[int, dict] = {}
        for r in self.store.runs(test=self.test, campaign_id=self.cid):
            pos = self.index.get(r["commit_sha"])
            if pos is None:
                continue
            d = seen.setdefault(pos, {"evidence": 0, "good_builds": set(), "builds": set(), "hosts": set(),
                                      "cannot": set(), "reasons": Counter()})
            if r["outcome"] != "infra":
                d["evidence"] += 1
                d["good_builds"].add(r["build_id"])
                continue
            d["builds"].add(r["build_id"])
            d["hosts"].add(r["host"])
            reason = r["reason"] or "infra"
            if is_cannot_test(reason):
                d["cannot"].add(r["host"])
                reason = reason[len(CANNOT_TEST):]
            d["reasons"][reason] += 1
        out = {}
        for pos, d in sorted(seen.items()):
            infra_only = d["builds"] - d["good_builds"]
            refused = not d["evidence"] and d["cannot"] and d["cannot"] == d["hosts"]
            if refused or len(infra_only) >= self.params.max_infra_per_commit:
                out[pos] = {"reasons": d["reasons"].most_common(), "requests": len(infra_only),
                            "hosts": sorted(h for h in d["hosts"] if h), "evidence_runs": d["evidence"]}
        return out

    def settings(self) -> EngineSettings:
        p = self.params
        prior = self._prior_from_store()
        weights = None
        if p.path_weights:
            paths = [(self.store.get_commit(s) or Commit(s)).paths for s in self.shas]
            kw = {"suspect_prefixes": p.suspect_paths} if p.suspect_paths else {}
            weights = tuple(path_weights(paths, **kw))
        return EngineSettings(confidence=p.confidence, max_runs=p.max_runs,
                              max_host_hours=p.max_host_hours or None, max_builds=p.max_builds or None,
                              build_minutes=p.build_minutes, run_minutes=p.run_minutes,
                              bins=p.bins, prior=prior, commit_weights=weights, confirm_runs=p.confirm_runs,
                              seed=p.seed + self.cid)

    def _prior_from_store(self):
        """The prior from the counts stored when the campaign began, each side
        capped at history_cap pseudo-runs so old data cannot dominate."""
        stored = self.row["params"].get("prior_counts") or {}
        base = stored.get("baseline") if any(stored.get("baseline") or ()) else None
        at_bad = stored.get("bad") if any(stored.get("bad") or ()) else None
        if base is None and at_bad is None:
            return None
        return prior_from_evidence(base, at_bad, cap=self.params.history_cap, bins=self.params.bins)

    def spent(self) -> tuple[float, set[int]]:
        """(host minutes, built positions) of this campaign."""
        builds = self.store.builds(self.cid)
        host_minutes = sum(b["host_minutes"] or 0.0 for b in builds)
        built = {self.index[b["commit_sha"]] for b in builds if b["commit_sha"] in self.index}
        return host_minutes, built

    def host_slots(self, free: int) -> list[tuple[Optional[str], frozenset[int]]]:
        """The `free` hosts to fill now, each with the positions it has built
        (its last `host_builds_kept` builds of this campaign, from the stored
        builds; online ones only, when the executor can tell): idle hosts that
        ran builds for this campaign first, then
        hosts not known yet (None, nothing built). A host with a request in
        flight is busy."""
        rows = [(b["host"], self.index[b["commit_sha"]]) for b in self.store.builds(self.cid)
                if b["commit_sha"] in self.index]
        have = host_build_sets(rows, max(1, self.params.host_builds_kept))
        online = self._online_hosts()
        if online is not None:  # never pin to a host that is gone: the request would wait forever
            have = {h: b for h, b in have.items() if h in online}
        busy = {f.request.host or (f.last_seen[2] if f.last_seen else None) for f in self.dispatcher.in_flight}
        idle = [(h, s) for h, s in sorted(have.items()) if h not in busy][:free]
        return idle + [(None, frozenset())] * (free - len(idle))

    def _online_hosts(self) -> Optional[set[str]]:
        """The executor's online hosts when it can tell (Jenkins: agents with
        the label), None when it has no such notion; empty when it cannot
        answer now (nothing is pinned then)."""
        agents = getattr(self.executor, "agents", None)
        if agents is None:
            return None
        try:
            return set(agents())
        except ExecutorError:
            return set()

    def _pin(self, slots, hosts: Sequence[int], i: int, j: int) -> Optional[str]:
        """The host request i must run on: the one it was planned for, when
        that host has the commit built (else any host may build it)."""
        if i >= len(hosts):
            return None
        name, built = slots[hosts[i]]
        return name if name is not None and j in built else None

    # -- the loop --------------------------------------------------------

    def run(self) -> dict:
        """Drive the campaign to its verdict, holding its lease (LeaseHeld, one
        line naming the holder, while another process drives it)."""
        if self.row["status"] != "open":
            return self.row["result"] or {}
        with holding_open(self.lease) as finished:
            return (finished["result"] or {}) if finished else self._drive()

    def _drive(self) -> dict:
        self.dispatcher.resume()
        settings = self.settings()
        instance = instance_id(self.store)
        seq = len(self.store.builds(self.cid))
        while True:
            counts = self.counts()
            untestable = self.untestable()
            # Budgets count infra too: a run cut off by a lost host counts as a
            # run; a request the host refused ("cannot test here", e.g. a failed
            # build) ran no iteration but counts as a build and its host time.
            runs = sum(1 for r in self.store.runs(test=self.test, campaign_id=self.cid)
                       if not is_cannot_test(r["reason"]) or r["outcome"] != "infra")
            host_minutes, built = self.spent()
            builds = len(self.store.builds(self.cid))
            in_flight = [(self.index[f.request.commit], f.request.iterations) for f in self.dispatcher.in_flight]
            slots = self.host_slots(self.dispatcher.free_slots())
            s = step(counts, built, runs, host_minutes, in_flight, len(slots), settings,
                     untestable=untestable, builds_used=builds,
                     hosts=None if self.params.host_builds_kept == 0 else [b for _, b in slots])
            self._report(s, sum(map(sum, counts)))
            if s.verdict and not self.dispatcher.in_flight:
                return self._finish(s, untestable)
            if not s.verdict:
                if s.requests:
                    self.lease.renew()  # still ours before anything is sent (LeaseLost if not)
                pins = [self._pin(slots, s.hosts, i, j) for i, (j, _) in enumerate(s.requests)]
                # Pinned requests first: queued ahead, they get their host before
                # an unpinned request can take it.
                for i in sorted(range(len(pins)), key=lambda i: pins[i] is None):
                    j, iterations = s.requests[i]
                    seq += 1
                    self.dispatcher.submit(RunRequest(campaign_run_id(instance, "c", self.cid, seq), self.shas[j],
                                                      (self.test,), int(iterations), host=pins[i]))
            if not self.dispatcher.in_flight:
                # Nothing running and nothing worth running: the engine's own
                # stop rule must decide; ask it with the budget declared spent.
                s = step(counts, built, runs, host_minutes, [], 0,
                         replace(settings, max_runs=min(runs, settings.max_runs or runs)),
                         untestable=untestable, builds_used=builds)
                return self._finish(s, untestable)
            self.dispatcher.collect(wait=True)

    def abort(self) -> None:
        """Stop the campaign: cancel its builds still out (found again after a
        restart) and close it as aborted. What finished stays stored."""
        if self.row["status"] != "open":
            raise ValueError(f"campaign {self.cid} is {self.row['status']}, not open")
        with holding_open(self.lease) as finished:  # a driver would send new work after the abort
            if finished:
                raise ValueError(f"campaign {self.cid} is {finished['status']}, not open")
            self.dispatcher.resume(resubmit=False)
            self.dispatcher.cancel_all()
            self.store.update_campaign(self.cid, status="aborted")

    def _report(self, s: Step, runs: int) -> None:
        top = s.candidates[0] if s.candidates else (None, 0.0)
        self.on_progress(Progress(self.cid, runs, len(self.store.builds(self.cid)),
                                  len(self.dispatcher.in_flight),
                                  self.shas[top[0]] if top[0] is not None else None, float(top[1]),
                                  float(s.p_no_change)))

    # -- the result ------------------------------------------------------

    def _finish(self, s: Step, untestable: Optional[dict[int, dict]] = None) -> dict:
        result = self.result(s, untestable)
        culprit = self.shas[s.culprit] if s.verdict == Verdict.CULPRIT.value else None
        self.store.finish_campaign(self.cid, s.verdict, culprit, float(s.confidence), result)
        return result

    def result(self, s: Step, untestable: Optional[dict[int, dict]] = None) -> dict:
        """The campaign's result: what `--json` prints and reporters render."""
        untestable = self.untestable() if untestable is None else untestable
        runs = self.store.runs(test=self.test, campaign_id=self.cid)
        builds = self.store.builds(self.cid)
        culprit_idx = s.culprit if s.verdict == Verdict.CULPRIT.value else None
        per_commit: dict[str, Counter] = defaultdict(Counter)
        max_wait: dict[str, float] = {}
        for r in runs:
            per_commit[r["commit_sha"]][r["outcome"]] += 1
            if r["worst_wait_s"] is not None:
                max_wait[r["commit_sha"]] = max(max_wait.get(r["commit_sha"], 0.0), r["worst_wait_s"])
        evidence_runs = sum(1 for r in runs if r["outcome"] != "infra")
        created = datetime.fromisoformat(self.row["created_at"])
        out = {
            "campaign_id": self.cid,
            "kind": "bisect",
            "test": self.test,
            "good": self.shas[0],
            "bad": self.shas[-1],
            "verdict": s.verdict,
            "culprit": self.shas[culprit_idx] if culprit_idx is not None else None,
            "confidence": round(float(s.confidence), 6),
            "p_no_change": round(float(s.p_no_change), 6),
            "reason": s.reason,
            "runs": evidence_runs,
            "infra_runs": len(runs) - evidence_runs,
            "builds": len(builds),
            "host_minutes": round(sum(b["host_minutes"] or 0.0 for b in builds), 3),
            "wall_seconds": round((datetime.now(timezone.utc) - created).total_seconds(), 1),
            "hosts": sorted({b["host"] for b in builds if b["host"]}),
            "candidates": [{"commit": self.shas[i], "probability": round(float(p), 6),
                            "subject": self._subject(self.shas[i])} for i, p in s.candidates],
            "commits": [{"commit": sha, "runs": sum(per_commit[sha].values()),
                         "outcomes": dict(per_commit[sha]), "max_wait_s": max_wait.get(sha)}
                        for sha in self.shas if per_commit[sha]],
            "culprit_range": self._range(s),
            "candidate_ranges": [self._range_json(lo, hi, p) for lo, hi, p in s.blocks if lo != hi],
            "untestable": [{"commit": self.shas[i], "subject": self._subject(self.shas[i]),
                            "reason": u["reasons"][0][0] if u["reasons"] else "infra",
                            "reasons": [r for r, _ in u["reasons"]], "requests": u["requests"],
                            "evidence_runs": u["evidence_runs"],
                            "hosts": u["hosts"]} for i, u in sorted(untestable.items())],
            "build_urls": [b["url"] for b in builds if b["url"]],
            "command": (f"flakebot bisect --good {self.shas[0]} --bad {self.shas[-1]} --test {self.test}"
                        f" --confidence {self.params.confidence} --seed {self.params.seed}"),
            "report_url": None,
            "culprit_info": None,
            "parent": None,
            "rates": None,
            "waits": self._waits(runs, culprit_idx if culprit_idx is not None else (s.range[1] if s.range else None)),
        }
        if s.verdict == Verdict.CULPRIT_RANGE.value and s.rates is not None:
            out["rates"] = {"interval": s.rates.level,
                            "before": _side(s.rates.before, self.params.bins, s.rates.level),
                            "after": _side(s.rates.after, self.params.bins, s.rates.level)}
        if culprit_idx is not None:
            sha = self.shas[culprit_idx]
            c = self.store.get_commit(sha) or Commit(sha)
            out["culprit_info"] = {"sha": sha, "subject": c.subject, "author": c.author, "change_id": c.change_id}
            out["parent"] = self.shas[culprit_idx - 1]
            if s.rates is not None:
                out["rates"] = {
                    "interval": s.rates.level,
                    "before": _side(s.rates.before, self.params.bins, s.rates.level),
                    "after": _side(s.rates.after, self.params.bins, s.rates.level),
                }
        return out

    def _range(self, s: Step) -> Optional[dict]:
        if s.verdict != Verdict.CULPRIT_RANGE.value or s.range is None:
            return None
        return self._range_json(*s.range, s.confidence)

    def _range_json(self, lo: int, hi: int, p: float) -> dict:
        """A block of hypotheses: untestable lo..hi-1 and the testable hi."""
        return {"first": self.shas[lo], "last": self.shas[hi], "probability": round(float(p), 6),
                "parent": self.shas[lo - 1],
                "commits": [{"commit": self.shas[i], "subject": self._subject(self.shas[i])}
                            for i in range(lo, hi + 1)]}

    def _subject(self, sha: str) -> str:
        c = self.store.get_commit(sha)
        return c.subject if c else ""

    def _waits(self, runs: list[dict], culprit_idx: Optional[int]) -> list[dict]:
        """Shutdown waits per call site, split at the culprit when there is one."""
        by_id = {r["id"]: r for r in runs}
        groups: dict[tuple[str, str], list[float]] = defaultdict(list)
        limits: dict[tuple[str, str], int] = {}
        for sd in self.store.shutdowns_for(by_id):
            if sd["waited_s"] is None:
                continue
            pos = self.index.get(by_id[sd["run_id"]]["commit_sha"], 0)
            side = "all" if culprit_idx is None else ("after" if pos >= culprit_idx else "before")
            key = (side, sd["call_site"])
            groups[key].append(sd["waited_s"])
            limits[key] = sd["limit_s"]
        return [dict(side=side, call_site=site, limit_s=limits[(side, site)], **wait_stats(v))
                for (side, site), v in sorted(groups.items())]


def _side(side, bins: Bins, level: float) -> dict:
    """One side of the culprit: timeout, near-miss, other-failure and any-failure
    rates (Beta posterior mean and equal-tailed interval)."""
    def rate(r):
        return {"k": r.k, "n": r.n, "rate": round(r.mean, 6), "lo": round(r.lo, 6), "hi": round(r.hi, 6)}

    n = side.runs
    return {"runs": n, "timeout": rate(beta_rate(side.classes[bins.timeout], n, level)),
            "near_miss": rate(side.near_miss), "fail": rate(beta_rate(side.classes[bins.fail], n, level)),
            "failure": rate(side.failure)}
