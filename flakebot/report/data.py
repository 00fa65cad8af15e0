"""What a report shows, computed from the store: pure queries and aggregation.

`collect(store, ...)` reads runs, shutdowns, builds, commits and campaigns and
returns a `ReportData`; the terminal, HTML and chart modules only format it.
Nothing here writes, prints or looks at the clock (the caller passes `now`).

Order of commits ("history order"):
- with a campaign: the campaign's first-parent range (position 0 = good end);
- otherwise: by commit date (UTC) when the store knows the commit, else by the
  time its first run was recorded.

Rates per commit (timeouts, near misses) are Beta posteriors with the Jeffreys
prior and 90% equal-tailed intervals (`analysis.rates.beta_rate`) over the
commit's evidence runs (infra runs never count). A near miss is a run whose
class falls in the near-miss group (`analysis.classes`: passed, but its worst
`vm_shutdown_all` wait reached the slow threshold).

The campaign posterior is recomputed from the stored counts through the same
code the campaign loop uses (`BisectCampaign.counts()` / `.settings()` and
`analysis.posterior.posterior`), so a report of a finished campaign shows the
posterior its verdict came from (its prior is stored with it).

Hosts: each host's failure, near-miss and infra counts are compared with what
the other hosts saw *at the same commits*: an exact conditional test
stratified by commit (so a host that happened to run more bad commits is not
blamed). At each commit, given how many runs there had the event, the host's
share is hypergeometric if the host is like the others; the per-commit
distributions are convolved, and the host's total is tested two-sided. A
host is flagged when p < 0.05 / (hosts x 3 kinds) (Bonferroni). Runs at
commits no other host ran cannot be compared and are left out of the test
(the table says how many runs were comparable).
"""
from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional, Sequence

import numpy as np

from flakebot.analysis.classes import GROUP_BAD, GROUP_NEAR, Bins, classify
from flakebot.analysis.rates import Rate, beta_rate
from flakebot.campaigns.bisect import wait_stats
from flakebot.model import DEFAULT_LIMIT_S, DEFAULT_SLOW_THRESHOLD_S, KNOWN_TESTS, OUTCOME_ORDER
from flakebot.store import Store, StoreError

OUTCOMES = OUTCOME_ORDER
INTERVAL = 0.9  # credible interval level used everywhere in the report
HOST_ALPHA = 0.05  # family-wise level of the host flags (Bonferroni)


class ReportError(ValueError):
    """The report cannot be made as asked (one line)."""


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class BuildLink:
    id: int
    url: Optional[str]
    host: Optional[str]
    runs: int

    @property
    def linkable(self) -> bool:
        """Only web addresses become links in HTML (sim:// and file:// do not)."""
        return bool(self.url) and self.url.startswith(("http://", "https://"))


@dataclass
class CommitStats:
    """One commit of one test: its runs and shutdown waits."""

    sha: str
    subject: str
    date: str
    index: int  # position in history order within the table (0, 1, ...)
    position: Optional[int]  # position in the campaign range, when there is a campaign
    outcomes: dict[str, int]
    runs: int  # all runs, infra included
    evidence: int  # runs that are evidence (not infra)
    timeouts: int
    near_misses: int
    waits: dict  # wait_stats() of each run's worst shutdown wait: n, p50, p95, max
    limit_s: int
    timeout_rate: Rate
    near_miss_rate: Rate
    builds: list[BuildLink] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.sha[:10]


@dataclass(frozen=True)
class WaitPoint:
    """One `vm_shutdown_all` wait."""

    index: int  # the commit's index in history order
    sha: str
    call_site: str
    waited_s: float
    limit_s: int
    timed_out: bool
    host: Optional[str]
    run_id: int


@dataclass
class HostStats:
    host: str
    runs: int
    infra: int
    evidence: int
    failures: int  # timeout + fail
    timeouts: int
    near_misses: int
    failure_rate: Rate
    near_miss_rate: Rate
    infra_rate: Rate
    comparable: int  # evidence runs at commits other hosts also ran
    tests: dict[str, dict] = field(default_factory=dict)  # kind -> observed, expected, p
    flags: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    @property
    def timeout_rate(self) -> Rate:
        return beta_rate(self.timeouts, self.evidence, INTERVAL)

    @property
    def fail_rate(self) -> Rate:
        """Failures other than timeouts (the culprit box splits them too)."""
        return beta_rate(self.failures - self.timeouts, self.evidence, INTERVAL)


@dataclass
class TestData:
    __test__ = False  # not a pytest class

    test: str
    commits: list[CommitStats]
    points: list[WaitPoint]
    hosts: list[HostStats]
    limit_s: int
    slow_threshold_s: float
    culprits: list[tuple[str, int]]  # (sha, campaign id) of culprits found among these commits
    unmeasured: int = 0  # shutdowns with no measured wait (not plotted)

    @property
    def runs(self) -> int:
        return sum(c.runs for c in self.commits)


@dataclass
class CampaignSummary:
    id: int
    kind: str
    test: str
    good: str
    bad: str
    status: str
    verdict: Optional[str]
    culprit: Optional[str]
    culprit_subject: str
    confidence: Optional[float]
    runs: int
    builds: int
    host_minutes: float
    created_at: str
    range_size: int


@dataclass
class CampaignData:
    """One campaign in detail: the posterior over its range and where runs went."""

    summary: CampaignSummary
    shas: list[str]  # the range, position 0 = good end
    subjects: list[str]
    posterior: Optional[np.ndarray]  # P(culprit = position k); [0] = 0; None for non-bisect
    p_no_change: Optional[float]
    runs_at: list[dict[str, int]]  # per position: outcome -> runs of this campaign
    builds_at: list[int]  # per position: builds of this campaign
    prior_runs_at: list[int]  # per position: runs stored before the campaign (its prior)
    result: Optional[dict]
    params: dict
    # Commits the bisection skipped as untestable: {"position", "commit", "subject", "reason", "requests"}
    untestable: list[dict] = field(default_factory=list)

    @property
    def top(self) -> list[tuple[int, float]]:
        if self.posterior is None:
            return []
        idx = np.argsort(-self.posterior, kind="stable")[:5]
        return [(int(i), float(self.posterior[i])) for i in idx if self.posterior[i] > 0]


@dataclass
class ReportData:
    generated_at: str
    tests: list[TestData]
    campaigns: list[CampaignSummary]
    campaign: Optional[CampaignData]
    test_filter: Optional[str]
    since: Optional[str]
    db_path: str
    events: list["Event"] = field(default_factory=list)  # nightly rises and falls, oldest first


@dataclass(frozen=True)
class Event:
    """A rise or fall the nightly detector recorded: the rate changed between
    `before` (the last night's tip at the old rate) and `after`."""

    kind: str  # "rise" | "fall"
    test: str
    before: str
    after: str
    probability: float
    campaign_id: Optional[int]
    at: str
    culprit: Optional[str] = None  # the campaign's verdict, when it named one
    culprit_subject: str = ""


# ------------------------------------------------------------------ helpers


def parse_since(text: Optional[str]) -> Optional[datetime]:
    """`2024-05-01` or an ISO 8601 time (naive = UTC) -> aware datetime."""
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReportError(f"--since: expected a date like 2024-05-01 or 2024-05-01T12:00 (got {text!r})") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _when(text: Optional[str]) -> Optional[datetime]:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def make_bins(limit_s: float, slow_threshold_s: float, edges: Sequence[float] = (20.0, 60.0, 80.0)) -> Bins:
    """Bins whose edges include the slow threshold (as `Bins` requires)."""
    e = sorted({float(x) for x in edges if 0 < float(x) < limit_s} | {float(slow_threshold_s)})
    return Bins(tuple(e), float(limit_s), float(slow_threshold_s))


def history_order(store: Store, first_seen: dict[str, str]) -> list[str]:
    """Shas sorted by commit date (UTC), falling back to when they were first run."""
    def key(sha: str):
        c = store.get_commit(sha)
        dt = _when(c.date if c else None) or _when(first_seen.get(sha))
        return (dt or datetime.max.replace(tzinfo=timezone.utc), first_seen.get(sha, ""), sha)

    return sorted(first_seen, key=key)


# ------------------------------------------------------------------ per test


def test_data(store: Store, test: str, runs: list[dict], order: list[str], *,
              limit_s: Optional[int] = None, slow_threshold_s: float = DEFAULT_SLOW_THRESHOLD_S,
              positions: Optional[dict[str, int]] = None, culprits: Sequence[tuple[str, int]] = (),
              edges: Sequence[float] = (20.0, 60.0, 80.0)) -> TestData:
    """Aggregate one test's runs (dicts from `Store.runs`) per commit in `order`."""
    shutdowns = store.shutdowns_for(r["id"] for r in runs)
    by_run: dict[int, list[dict]] = defaultdict(list)
    for s in shutdowns:
        by_run[s["run_id"]].append(s)
    if limit_s is None:
        limits = Counter(s["limit_s"] for s in shutdowns if s["limit_s"])
        limit_s = limits.most_common(1)[0][0] if limits else DEFAULT_LIMIT_S
    bins = make_bins(limit_s, slow_threshold_s, edges)
    groups = bins.groups

    by_commit: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_commit[r["commit_sha"]].append(r)
    builds = {b["id"]: b for b in store.builds()}

    commits: list[CommitStats] = []
    points: list[WaitPoint] = []
    unmeasured = 0
    index = {sha: i for i, sha in enumerate(s for s in order if s in by_commit)}
    for sha, i in index.items():
        rs = by_commit[sha]
        outcomes = Counter(r["outcome"] for r in rs)
        classes = [classify(r["outcome"], r["worst_wait_s"], bins) for r in rs]
        evidence = [c for c in classes if c is not None]
        timeouts = sum(1 for c in evidence if c == bins.timeout)
        near = sum(1 for c in evidence if groups[c] == GROUP_NEAR)
        worst, site_limits = [], []
        for r in rs:
            if r["worst_wait_s"] is not None:
                worst.append(r["worst_wait_s"])
            for s in by_run.get(r["id"], []):
                site_limits.append(s["limit_s"] or limit_s)
                if s["waited_s"] is None:
                    unmeasured += 1
                    continue
                points.append(WaitPoint(i, sha, s["call_site"] or "?", float(s["waited_s"]),
                                        int(s["limit_s"] or limit_s), bool(s["timed_out"]), r["host"], r["id"]))
        runs_per_build = Counter(r["build_id"] for r in rs)
        links = [BuildLink(bid, builds[bid]["url"] if bid in builds else None,
                           (builds[bid]["host"] if bid in builds else None) or None, n)
                 for bid, n in sorted(runs_per_build.items())]
        c = store.get_commit(sha)
        commits.append(CommitStats(
            sha=sha, subject=c.subject if c else "", date=c.date if c else "", index=i,
            position=(positions or {}).get(sha), outcomes={o: outcomes.get(o, 0) for o in OUTCOMES},
            runs=len(rs), evidence=len(evidence), timeouts=timeouts, near_misses=near,
            waits=wait_stats(worst), limit_s=max(site_limits) if site_limits else limit_s,
            timeout_rate=beta_rate(timeouts, len(evidence), INTERVAL),
            near_miss_rate=beta_rate(near, len(evidence), INTERVAL), builds=links))
    shown: dict[str, int] = {}
    for sha, cid in culprits:  # one line per culprit, labelled with its first campaign
        if sha in index:
            shown[sha] = min(cid, shown.get(sha, cid))
    shown_list = sorted(shown.items(), key=lambda x: index[x[0]])
    return TestData(test, commits, points, host_stats(runs, bins), int(limit_s), float(slow_threshold_s),
                    shown_list, unmeasured)


# ------------------------------------------------------------------ hosts


def stratified_pvalue(strata: Sequence[tuple[int, int, int]], observed: int) -> tuple[float, float]:
    """Exact conditional test of one host against the others, stratified by commit.

    strata: (N, K, n) per commit: N runs there in all, K of them with the
    event, n of them on this host. Given the totals, the host's count at a
    commit is hypergeometric when the host is like the others; the counts of
    the strata add up (convolution). Returns (expected count, two-sided
    p-value = 2 x the smaller tail, at most 1).

        >>> e, p = stratified_pvalue([(20, 10, 10)], 5)
        >>> e, round(p, 6)
        (5.0, 1.0)
        >>> stratified_pvalue([(20, 10, 10)], 10)[1] < 0.001
        True
    """
    from scipy.stats import hypergeom

    pmf = np.ones(1)
    expected = 0.0
    for N, K, n in strata:
        lo, hi = max(0, n - (N - K)), min(n, K)
        if lo == hi:  # no freedom in this stratum: the host's count is fixed
            pmf = np.concatenate([np.zeros(lo), pmf])
            expected += lo
            continue
        k = np.arange(0, hi + 1)
        pk = hypergeom.pmf(k, N, K, n)
        pmf = np.convolve(pmf, pk)
        expected += n * K / N
    lower = float(pmf[: observed + 1].sum())
    upper = float(pmf[observed:].sum())
    return expected, float(min(1.0, 2 * min(lower, upper)))


HOST_TESTS = ("failures", "near misses", "infra")


def host_stats(runs: list[dict], bins: Bins, alpha: float = HOST_ALPHA) -> list[HostStats]:
    """Per-host counts and rates, each host tested against the others at the
    same commits (see the module docstring)."""
    groups = bins.groups
    rows = []
    for r in runs:
        c = classify(r["outcome"], r["worst_wait_s"], bins)
        rows.append({"host": r["host"] or "(unknown)", "sha": r["commit_sha"],
                     "infra": c is None,
                     "failures": c is not None and int(groups[c]) == GROUP_BAD,
                     "near misses": c is not None and int(groups[c]) == GROUP_NEAR,
                     "timeout": c == bins.timeout})
    hosts = sorted({r["host"] for r in rows})
    # Per (commit, host): counts of each event and the denominators.
    cell: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in rows:
        k = cell[(r["sha"], r["host"])]
        k["all"] += 1
        k["evidence"] += 0 if r["infra"] else 1
        for kind in HOST_TESTS:
            k[kind] += int(r[kind])
    by_commit: dict[str, list[str]] = defaultdict(list)
    for sha, h in cell:
        by_commit[sha].append(h)
    m = max(1, len(hosts) * len(HOST_TESTS))
    out = []
    for h in hosts:
        mine = [r for r in rows if r["host"] == h]
        ev = [r for r in mine if not r["infra"]]
        fails = sum(int(r["failures"]) for r in ev)
        near = sum(int(r["near misses"]) for r in ev)
        infra = sum(int(r["infra"]) for r in mine)
        hs = HostStats(h, len(mine), infra, len(ev), fails, sum(int(r["timeout"]) for r in ev), near,
                       beta_rate(fails, len(ev), INTERVAL), beta_rate(near, len(ev), INTERVAL),
                       beta_rate(infra, len(mine), INTERVAL), 0)
        for kind in HOST_TESTS:
            denom = "all" if kind == "infra" else "evidence"
            strata: list[tuple[int, int, int]] = []
            observed = 0
            for sha, at in by_commit.items():
                if h not in at or len(at) < 2:
                    continue  # nobody else ran this commit: nothing to compare with
                cells = [cell[(sha, o)] for o in at]
                N = sum(x[denom] for x in cells)
                n = cell[(sha, h)][denom]
                if n == 0 or N == n:
                    continue
                strata.append((N, sum(x[kind] for x in cells), n))
                observed += cell[(sha, h)][kind]
            comparable = sum(n for _, _, n in strata)
            if kind == "failures":
                hs.comparable = comparable
            if not strata:
                continue
            expected, p_value = stratified_pvalue(strata, observed)
            hs.tests[kind] = {"observed": observed, "expected": round(expected, 3), "n": comparable,
                              "p": p_value}
            if p_value < alpha / m:
                word = "more" if observed > expected else "fewer"
                hs.flags.append(f"{word} {kind} than the other hosts at the same commits: "
                                f"{observed} vs {expected:.1f} expected (p={p_value:.2g})")
        out.append(hs)
    return out


# ------------------------------------------------------------------ campaigns


def campaign_summary(store: Store, row: dict) -> CampaignSummary:
    result = row.get("result") or {}
    builds = store.builds(row["id"])
    runs = store.runs(test=row["test"], campaign_id=row["id"], include_infra=False)
    culprit = row.get("culprit")
    c = store.get_commit(culprit) if culprit else None
    return CampaignSummary(
        id=row["id"], kind=row["kind"], test=row["test"], good=row["good"] or "", bad=row["bad"] or "",
        status=row["status"], verdict=row.get("verdict"), culprit=culprit,
        culprit_subject=(c.subject if c else "") or (result.get("culprit_info") or {}).get("subject", ""),
        confidence=row.get("confidence"), runs=len(runs), builds=len(builds),
        host_minutes=round(sum(b["host_minutes"] or 0.0 for b in builds), 3),
        created_at=row.get("created_at") or "", range_size=len(store.campaign_commits(row["id"])))


def campaign_data(store: Store, campaign_id: int) -> CampaignData:
    """The campaign's range, its posterior recomputed from the stored counts,
    and the runs and builds it spent at each position."""
    from flakebot.analysis.classes import to_groups
    from flakebot.analysis.posterior import posterior
    from flakebot.campaigns.bisect import BisectCampaign

    row = store.get_campaign(campaign_id)
    shas = store.campaign_commits(campaign_id)
    index = {sha: i for i, sha in enumerate(shas)}
    post, p0 = None, None
    skipped: dict[int, dict] = {}
    if row["kind"] == "bisect" and len(shas) >= 2:
        # The campaign's own evidence and prior, through the engine's posterior.
        camp = BisectCampaign(store, None, campaign_id)  # type: ignore[arg-type]  (no executor needed)
        settings = camp.settings()
        cw = None if settings.commit_weights is None else list(settings.commit_weights)
        p = posterior(to_groups(camp.counts(), settings.bins), settings.prior, cw, groups=True)
        post, p0 = np.asarray(p.culprit, dtype=float), float(p.p_no_change)
        skipped = camp.untestable()
    runs_at: list[dict[str, int]] = [dict.fromkeys(OUTCOMES, 0) for _ in shas]
    for r in store.runs(test=row["test"], campaign_id=campaign_id):
        if r["commit_sha"] in index:
            runs_at[index[r["commit_sha"]]][r["outcome"]] += 1
    builds_at = [0] * len(shas)
    own = set()
    for b in store.builds(campaign_id):
        own.add(b["id"])
        if b["commit_sha"] in index:
            builds_at[index[b["commit_sha"]]] += 1
    prior_at = [0] * len(shas)
    for r in store.runs(test=row["test"], commits=shas, include_infra=False):
        if r["build_id"] not in own and (r["recorded_at"] or "") <= (row["created_at"] or ""):
            prior_at[index[r["commit_sha"]]] += 1
    subjects = []
    for sha in shas:
        c = store.get_commit(sha)
        subjects.append(c.subject if c else "")
    untestable = [{"position": i, "commit": shas[i], "subject": subjects[i], "requests": u["requests"],
                   "reason": u["reasons"][0][0] if u["reasons"] else "infra"} for i, u in sorted(skipped.items())]
    return CampaignData(campaign_summary(store, row), shas, subjects, post, p0, runs_at, builds_at, prior_at,
                        row.get("result"), row.get("params") or {}, untestable)


# ------------------------------------------------------------------ the whole


def collect(store: Store, *, test: Optional[str] = None, since: Optional[str] = None,
            campaign_id: Optional[int] = None, limit_s: Optional[int] = None,
            slow_threshold_s: Optional[float] = None, now: Optional[str] = None) -> ReportData:
    """Everything a report shows.

    test: only this test (unknown names that were never run are an error);
    since: only runs recorded (and campaigns created) at or after this date;
    campaign_id: the campaign's test, its range in first-parent order, its
    posterior and spending. limit_s / slow_threshold_s: the lines to draw
    (default: the campaign's settings, else the most common stored limit and
    the model defaults).
    """
    since_dt = parse_since(since)
    camp: Optional[CampaignData] = None
    positions: Optional[dict[str, int]] = None
    edges: Sequence[float] = (20.0, 60.0, 80.0)
    if campaign_id is not None:
        try:
            camp = campaign_data(store, campaign_id)
        except StoreError:
            raise ReportError(f"no campaign {campaign_id} in {store.path}") from None
        if test is not None and test != camp.summary.test:
            raise ReportError(f"campaign {campaign_id} is about {camp.summary.test}, not {test}")
        test = camp.summary.test
        positions = {sha: i for i, sha in enumerate(camp.shas)}
        params = camp.params
        limit_s = limit_s if limit_s is not None else int(params.get("limit_s", DEFAULT_LIMIT_S))
        slow_threshold_s = slow_threshold_s if slow_threshold_s is not None else float(
            params.get("slow_threshold_s", DEFAULT_SLOW_THRESHOLD_S))
        edges = params.get("wait_bins_s", edges)

    all_runs = store.runs(test=test, commits=camp.shas if camp else None)
    if since_dt is not None:
        all_runs = [r for r in all_runs if (_when(r["recorded_at"]) or since_dt) >= since_dt]
    stored_tests = {r["test"] for r in all_runs}  # only tests with runs in the selection
    if test is not None and test not in KNOWN_TESTS and not store.runs(test=test):
        raise ReportError(f"unknown test {test!r}; known: {', '.join(KNOWN_TESTS)}")

    rows = store.campaigns()
    if test is not None:
        rows = [r for r in rows if r["test"] == test]
    if since_dt is not None:
        rows = [r for r in rows if (_when(r["created_at"]) or since_dt) >= since_dt]
    summaries = [campaign_summary(store, r) for r in rows]
    culprits = [(s.culprit, s.id) for s in summaries if s.culprit and s.verdict == "culprit"]

    tests = []
    for t in sorted(stored_tests):
        runs = [r for r in all_runs if r["test"] == t]
        first_seen: dict[str, str] = {}
        for r in runs:
            first_seen.setdefault(r["commit_sha"], r["recorded_at"] or "")
        order = camp.shas if camp else history_order(store, first_seen)
        tests.append(test_data(store, t, runs, order, limit_s=limit_s,
                               slow_threshold_s=slow_threshold_s if slow_threshold_s is not None
                               else DEFAULT_SLOW_THRESHOLD_S,
                               positions=positions, culprits=culprits, edges=edges))
    return ReportData(now or "", tests, summaries, camp, test, since, str(store.path),
                      events=nightly_events(store, test, since_dt))


def nightly_events(store: Store, test: Optional[str], since_dt: Optional[datetime]) -> list[Event]:
    """The recorded rises and falls with the culprit (or fix) their campaign named."""
    out = []
    for e in store.events(test):
        if since_dt is not None and (_when(e["created_at"]) or since_dt) < since_dt:
            continue
        culprit, subject = None, ""
        if e.get("campaign_id"):
            with contextlib.suppress(StoreError):
                row = store.get_campaign(e["campaign_id"])
                if row.get("verdict") == "culprit" and row.get("culprit"):
                    culprit = row["culprit"]
                    c = store.get_commit(culprit)
                    subject = c.subject if c else ""
        out.append(Event(e["kind"], e["test"], e["before_sha"], e["after_sha"], float(e["probability"]),
                         e.get("campaign_id"), e.get("created_at") or "", culprit, subject))
    return out
