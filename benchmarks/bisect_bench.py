"""Benchmark of the flake-aware bisection engine (flakebot.analysis).

Simulated ranges: outcomes are drawn directly from each scenario's class
probabilities (classes.py order: pass <20s, pass 20-60s, near 60-80s,
near 80-90s, timeout, fail), so the benchmark is pure and fast. Trial i uses
seed i in every column (the same culprit, drawn uniformly unless the scenario
fixes it).

Columns of the runs table (one host deciding run by run, free_hosts=1, 1
iteration per request, build cost 0 so that runs are comparable with the
published figures; runs include the confirmation runs):
- cold: the default engine, no history, no evidence at either end.
- nightly: the prior a nightly-opened campaign gets (nightly_prior).
- known: the same engine with a point-mass prior at the true class probabilities.
- git_bayesect: benchmarks/bayesect_baseline.py (pass/fail, from its description).
- Fano bound: ((1-d) log2 N - h(d)) / C, d = 0.05, C = capacity (bits/run) of
  the binary channel between p0 and p1 (failure = timeout + fail), maximised
  over q.
- 10 reruns: plain bisection with 10 runs per step, a step is 'bad' if any of
  its 10 runs fails (timeout or fail; near misses ignored) - the usual rule.

8-host tables (event-driven; the engine fills every free host each time results
come back, iterations per request chosen by the planner from 1/2/4/8):
- per-host builds (per_host_builds, the default model): each host builds for
  itself (10 min per host and commit) and keeps its last build; run 2 min; 3%
  of iterations lost to infra. Against host_hours_bound (Fano's runs over every
  outcome class, plus one build per bit needed) and wall_bound (that bound over
  8 hosts never idle).
- shared builds (eight_hosts): a commit built once is built for every host, no
  infra; with the 10-reruns bisection costed the same way.

Merges: the engine bisects the first-parent chain; a merge commit stands for
its whole side branch, so a culprit inside a side branch is found as that
merge. In this pure benchmark that is only a position on the chain: the
'merges' scenario is a 64-position first-parent chain of which 12 positions
are merges of side branches (200 commits in all), the culprit drawn over all
200 commits and mapped to its first-parent position.

Untestable commits (a separate table, `untestable_section`): the same
engine told which commits a host refused, 8 hosts as in the host-hours
table; rows for 10% of commits scattered untestable and the oldest third
untestable (an era boundary), with the culprit anywhere or at the boundary.

Usage: .venv/bin/python benchmarks/bisect_bench.py [--trials 200] [--host-trials N] [--jobs 2]
       [--untestable-trials N | --untestable-only] [--per-host-only] [--idle-fractions 0,0.5]
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flakebot.analysis import EngineSettings, known_rates_prior, prior_from_evidence, step  # noqa: E402

D = 0.05


def binary(p: float) -> tuple[float, ...]:
    return (1 - p, 0.0, 0.0, 0.0, p, 0.0)


# #3322 shape: a baseline with some slow shutdowns and rare timeouts; after the
# culprit near misses (70-89 s, split over the 60-80 and 80-90 bins) come twice
# as often as timeouts.
S3322_BEFORE = (0.875, 0.09, 0.012, 0.008, 0.01, 0.005)
S3322_AFTER = (0.725, 0.12, 0.05, 0.05, 0.05, 0.005)


@dataclass(frozen=True)
class Scenario:
    name: str
    before: tuple[float, ...]
    after: tuple[float, ...]
    n: int
    culprit: str = "uniform"  # uniform | first | last | none | merges
    max_runs: int = 1500

    @property
    def p0(self) -> float:
        return self.before[4] + self.before[5]

    @property
    def p1(self) -> float:
        return self.after[4] + self.after[5]


SCENARIOS = [
    Scenario("(0, 0.1, 256)", binary(0), binary(0.1), 256),
    Scenario("(0.01, 0.2, 256)", binary(0.01), binary(0.2), 256),
    Scenario("(0.02, 0.1, 256)", binary(0.02), binary(0.1), 256),
    Scenario("(0, 0.5, 64)", binary(0), binary(0.5), 64),
    Scenario("no culprit (0.05 everywhere, 64)", binary(0.05), binary(0.05), 64, "none", 1000),
    Scenario("first commit (0.01, 0.2, 64)", binary(0.01), binary(0.2), 64, "first"),
    Scenario("last commit (0.01, 0.2, 64)", binary(0.01), binary(0.2), 64, "last"),
    Scenario("merges (0.01, 0.2, 64 fp / 200)", binary(0.01), binary(0.2), 64, "merges"),
    Scenario("#3322 shape (128)", S3322_BEFORE, S3322_AFTER, 128),
]
HOST_SCENARIOS = [0, 1, 3, 8]  # the 8-host tables (per-host and shared builds)


def groups3(p):
    return (p[0] + p[1], p[2] + p[3], p[4] + p[5])


def draw_culprit(sc: Scenario, rng) -> int | None:
    if sc.culprit == "none":
        return None
    if sc.culprit == "first":
        return 1
    if sc.culprit == "last":
        return sc.n
    if sc.culprit == "merges":
        # positions 1..n; 12 of them are merges standing for 12 side-branch commits each (+ the merge)
        merge_pos = np.sort(np.random.default_rng(12345).choice(np.arange(1, sc.n + 1), 12, replace=False))
        size = np.ones(sc.n + 1, dtype=int)
        size[0] = 0
        size[merge_pos] = 12  # the merge commit itself + 11 side commits
        size = size * (200 / size.sum())
        return int(rng.choice(np.arange(sc.n + 1), p=size / size.sum()))
    return int(rng.integers(1, sc.n + 1))


NIGHTLY_BASELINE_RUNS, NIGHTLY_BAD_RUNS, HISTORY_CAP = 100, 20, 50.0
MODES = ("cold", "nightly", "known")


def nightly_prior(sc: Scenario, seed: int):
    """The prior a campaign opened by the nightly service gets (campaign.history_counts
    -> prior_from_evidence, history_cap 50): 100 nightly runs at the good end and its
    ancestors and the 20 runs at the bad end from the night that noticed the rise,
    drawn from the scenario on their own stream (not counted as the bisection's runs)."""
    rng = np.random.default_rng([seed, 7])
    base = rng.multinomial(NIGHTLY_BASELINE_RUNS, np.asarray(sc.before) / sum(sc.before))
    bad = rng.multinomial(NIGHTLY_BAD_RUNS, np.asarray(sc.after) / sum(sc.after))
    return prior_from_evidence(base, bad, cap=HISTORY_CAP)


def settings_for(sc: Scenario, mode, seed: int = 0, **kw) -> EngineSettings:
    """mode: 'cold' (the default prior), 'nightly' (nightly_prior) or 'known' (the true rates);
    True / False stand for 'known' / 'cold'."""
    mode = {True: "known", False: "cold"}.get(mode, mode)
    prior = {"cold": lambda: None, "nightly": lambda: nightly_prior(sc, seed),
             "known": lambda: known_rates_prior(groups3(sc.before), groups3(sc.after))}[mode]()
    return EngineSettings(prior=prior, max_runs=sc.max_runs, seed=seed, **kw)


def draw(sc, j, k, rng, m=1):
    p = sc.after if (k is not None and j >= k) else sc.before
    p = np.asarray(p, dtype=float)
    return rng.multinomial(m, p / p.sum())


def one_host(sc: Scenario, mode, seed: int):
    """One host, run by run. Returns (verdict, right, confidence, runs, snapshots)."""
    rng = np.random.default_rng([seed, 1])
    k = draw_culprit(sc, rng)
    st = settings_for(sc, mode, seed, build_minutes=0.0, iteration_options=(1,))
    counts = np.zeros((sc.n + 1, 6), dtype=np.int64)
    runs, snaps = 0, []
    while True:
        s = step(counts, set(), runs, 0.0, [], 1, st, rng=rng)
        if runs % 10 == 0:
            top_h = None if s.p_no_change > s.confidence else s.culprit
            snaps.append((max(s.confidence, s.p_no_change), top_h == k))
        if s.verdict:
            right = (s.verdict == "culprit" and s.culprit == k) or (s.verdict == "no-regression" and k is None)
            return s.verdict, right, s.confidence, runs, snaps
        for j, m in s.requests:
            counts[j] += draw(sc, j, k, rng, m)
            runs += m


def eight_hosts(sc: Scenario, seed: int, hosts=8, build=10.0, run=2.0, iteration_options=None):
    """Event-driven: 8 hosts, builds once per commit. Returns (right, runs, host_hours, wall_hours)."""
    rng = np.random.default_rng([seed, 2])
    k = draw_culprit(sc, rng)
    kw = {} if iteration_options is None else {"iteration_options": tuple(iteration_options)}
    st = settings_for(sc, "cold", seed, build_minutes=build, run_minutes=run, **kw)
    counts = np.zeros((sc.n + 1, 6), dtype=np.int64)
    built: set[int] = set()
    runs, host_min, now = 0, 0.0, 0.0
    flight: list[tuple[float, int, int]] = []  # (finish time, commit, iterations)
    free = hosts
    while True:
        s = step(counts, built, runs, host_min, [(j, m) for _, j, m in flight], free, st, rng=rng)
        if s.verdict:
            right = (s.verdict == "culprit" and s.culprit == k) or (s.verdict == "no-regression" and k is None)
            return right, runs, host_min / 60, now / 60
        for j, m in s.requests:
            cost = m * run + (0.0 if j in built else build)
            built.add(j)
            host_min += cost
            flight.append((now + cost, j, m))
            free -= 1
        if not flight:
            return False, runs, host_min / 60, now / 60
        flight.sort()
        t, j, m = flight.pop(0)
        now = t
        counts[j] += draw(sc, j, k, rng, m)
        runs += m
        free += 1


def per_host_builds(sc: Scenario, seed: int, hosts=8, build=10.0, run=2.0, keep=1, infra=0.03, idle_fraction=None):
    """Event-driven, every host builds for itself and keeps its last `keep`
    builds (the host script builds in its own SPDK_DIR). The engine is told
    what each free host has built (step(hosts=...)); a request costs a build
    unless its host has the commit. Each iteration is lost to infra with
    probability `infra` (the host is gone: the rest of the request is lost
    too; those runs cost host time and count in the budget, never as evidence).
    `idle_fraction`: EngineSettings.idle_fraction (None: the engine's default).
    Returns (right, runs incl. infra, host_hours, wall_hours, builds)."""
    rng = np.random.default_rng([seed, 2])
    k = draw_culprit(sc, rng)
    kw = {} if idle_fraction is None else {"idle_fraction": idle_fraction}
    st = settings_for(sc, "cold", seed, build_minutes=build, run_minutes=run, **kw)
    counts = np.zeros((sc.n + 1, 6), dtype=np.int64)
    have: list[list[int]] = [[] for _ in range(hosts)]
    busy = [False] * hosts
    runs, builds, host_min, now = 0, 0, 0.0, 0.0
    flight: list[tuple[float, int, int, int, np.ndarray, int]] = []  # (finish, host, commit, its, counts, runs)
    while True:
        free = [h for h in range(hosts) if not busy[h]]
        s = step(counts, set(), runs, host_min, [(j, m) for _, _, j, m, _, _ in flight], len(free), st, rng=rng,
                 hosts=[frozenset(have[h]) for h in free])
        if s.verdict:
            right = (s.verdict == "culprit" and s.culprit == k) or (s.verdict == "no-regression" and k is None)
            return right, runs, host_min / 60, now / 60, builds
        for (j, m), slot in zip(s.requests, s.hosts):
            h = free[slot]
            cost = 0.0
            if j in have[h]:
                have[h].remove(j)
            else:
                cost, builds = build, builds + 1
            have[h] = (have[h] + [j])[-keep:]
            c = np.zeros(6, dtype=np.int64)
            done = 0
            for _ in range(m):
                done += 1
                if rng.random() < infra:
                    break
                c += draw(sc, j, k, rng)
            cost += done * run
            host_min += cost
            busy[h] = True
            flight.append((now + cost, h, j, m, c, done))
        if not flight:
            return False, runs, host_min / 60, now / 60, builds
        flight.sort(key=lambda f: (f[0], f[1]))
        now, h, j, _m, c, done = flight.pop(0)
        counts[j] += c
        runs += done
        busy[h] = False


def reruns_bisect(sc: Scenario, seed: int, reruns=10, build=10.0, run=2.0):
    rng = np.random.default_rng([seed, 3])
    k = draw_culprit(sc, rng)
    lo, hi, runs, steps = 0, sc.n, 0, 0  # lo good, hi bad
    while hi - lo > 1:
        mid = (lo + hi) // 2
        c = draw(sc, mid, k, rng, reruns)
        runs += reruns
        steps += 1
        if c[4] + c[5] > 0:
            hi = mid
        else:
            lo = mid
    return hi == k, runs, steps * (build + reruns * run) / 60


def h2(p):
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def capacity(p0, p1):
    q = np.linspace(0, 1, 20001)
    return float(np.max(h2(q * p1 + (1 - q) * p0) - q * h2(p1) - (1 - q) * h2(p0)))


def fano(p0, p1, n, d=D):
    return ((1 - d) * np.log2(n) - h2(d)) / capacity(p0, p1)


def capacity_classes(before, after):
    """Capacity (bits/run) of the channel 'before or after the culprit' -> outcome class."""
    a, b = np.asarray(before, float), np.asarray(after, float)
    q = np.linspace(0, 1, 2001)[:, None]
    mix = q * b + (1 - q) * a

    def ent(p):
        p = np.clip(p, 1e-300, 1)
        return -(p * np.log2(p)).sum(-1)
    return float(np.max(ent(mix) - q[:, 0] * ent(b[None]) - (1 - q[:, 0]) * ent(a[None])))


def host_hours_bound(sc: Scenario, build=10.0, run=2.0, d=D) -> float:
    """A lower bound on the host-hours of any method right with probability 1 - d:
    Fano's bound on runs (over every outcome class) x run minutes, plus the least
    number of distinct commits x build minutes. All runs at one commit reveal at
    most one bit (is it before or after the culprit?), so identifying one of n
    commits needs at least (1-d) log2 n - h(d) distinct commits."""
    bits = (1 - d) * np.log2(sc.n) - h2(d)
    runs = bits / capacity_classes(sc.before, sc.after)
    return (np.ceil(bits) * build + runs * run) / 60


def wall_bound(sc: Scenario, hosts=8, build=10.0, run=2.0, d=D) -> float:
    """A lower bound on wall-clock hours with `hosts` hosts: the host-hour bound
    spread over every host with none idle, and at least one build and one run."""
    return max(host_hours_bound(sc, build, run, d) / hosts, (build + run) / 60)


def _task(args):
    try:
        return _task1(args)
    except Exception as e:  # a crashed trial is reported, not fatal
        kind, i, mode, seed = args
        return ("error", i, mode), f"{kind} {mode} seed {seed}: {e!r}"


def _task1(args):
    kind, i, mode, seed = args
    sc = SCENARIOS[i]
    if kind == "one":
        return (kind, i, mode), one_host(sc, mode, seed)
    if kind == "bayesect":
        from bayesect_baseline import bayesect_one_host
        return (kind, i, mode), bayesect_one_host(sc, seed)
    if kind == "perhost":  # mode: the idle fraction, "cold" for the engine's default
        return (kind, i, mode), per_host_builds(sc, seed, idle_fraction=None if mode == "cold" else float(mode))
    if kind == "eight":
        return (kind, i, mode), eight_hosts(sc, seed)
    return (kind, i, mode), reruns_bisect(sc, seed)


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--host-trials", type=int, default=None, help="trials for the 8-host tables (default: trials/2)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", type=str, default=None, help="comma-separated scenario indices")
    ap.add_argument("--untestable-trials", type=int, default=None,
                    help="trials per untestable-commit row (default: trials/4; 0 = skip)")
    ap.add_argument("--untestable-only", action="store_true", help="print only the untestable-commit table")
    ap.add_argument("--per-host-only", action="store_true", help="print only the per-host-builds table")
    ap.add_argument("--idle-fractions", type=str, default=None,
                    help="per-host table: comma-separated EngineSettings.idle_fraction values to compare "
                         "(default: the engine's default only)")
    args = ap.parse_args(argv)
    if args.untestable_only:
        print("\n".join(untestable_section(args.untestable_trials or max(1, args.trials // 4), args.jobs)))
        return
    T = args.trials
    HT = args.host_trials if args.host_trials is not None else max(1, T // 2)
    idx = range(len(SCENARIOS)) if args.only is None else [int(x) for x in args.only.split(",")]
    fractions = ["cold"] if args.idle_fractions is None else [str(float(f)) for f in args.idle_fractions.split(",")]
    tasks = []
    for i in ([] if args.per_host_only else idx):
        for s in range(T):
            tasks += [("one", i, "cold", s), ("one", i, "nightly", s), ("bayesect", i, "-", s), ("fixed", i, "-", s)]
            if SCENARIOS[i].culprit != "none":
                tasks.append(("one", i, "known", s))
    for i in HOST_SCENARIOS:
        if i in idx:
            tasks += [("perhost", i, f, s) for f in fractions for s in range(HT)]
            if not args.per_host_only:
                tasks += [("eight", i, "cold", s) for s in range(HT)]
    t0 = time.time()
    res: dict = {}
    with mp.Pool(args.jobs) as pool:
        for key, r in pool.imap_unordered(_task, tasks, chunksize=4):
            res.setdefault(key, []).append(r)
    elapsed = time.time() - t0

    def runs_of(key):
        return np.array([x[3] for x in res.get(key, [])])

    def acc_of(key):
        return _mean([x[1] for x in res.get(key, [])])

    out = []
    out.append(f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bisect_bench.py'] + (argv or sys.argv[1:]))}`  ")
    trials = (f"{HT} trials per cell; seeds 0..{HT - 1}" if args.per_host_only
              else f"{T} trials per cell (8-host tables: {HT}); seeds 0..{T - 1}")
    out.append(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {trials}; "
               f"{elapsed / 60:.1f} min on {args.jobs} processes.\n")
    hs = [i for i in HOST_SCENARIOS if i in idx and HT > 0]
    if args.per_host_only:
        print("\n".join(out + per_host_section(res, hs, fractions)))
        return
    out.append("### Runs to a 0.95 verdict, one host deciding run by run\n")
    out.append("cold: no history; nightly: the prior a nightly-opened campaign gets; known: told the true rates; "
               "git_bayesect: benchmarks/bayesect_baseline.py. Same seeds (same culprit per trial) in every column. "
               "Ratios of mean runs; accuracy = right verdicts (culprit, or no-regression without one).\n")
    out.append("| scenario | cold runs | nightly | known | git_bayesect | cold / known | nightly / known "
               "| cold / bayesect | nightly / bayesect | accuracy cold / nightly / known / bayesect "
               "| inconcl. cold | Fano bound | 10 reruns: runs, accuracy |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i in idx:
        sc = SCENARIOS[i]
        c, nt = runs_of(("one", i, "cold")), runs_of(("one", i, "nightly"))
        kn, by = runs_of(("one", i, "known")), runs_of(("bayesect", i, "-"))
        inc = _mean([x[0] == "inconclusive" for x in res[("one", i, "cold")]])
        kcol = f"{kn.mean():.0f}" if len(kn) else "n/a"

        def ratio(a, b):
            return f"{a.mean() / b.mean():.2f}" if len(a) and len(b) else "n/a"
        fb = f"{fano(sc.p0, sc.p1, sc.n):.0f}" if sc.p1 > sc.p0 else "n/a"
        fx = res[("fixed", i, "-")]
        accs = " / ".join(f"{acc_of(k):.2f}" if k in res else "n/a"
                          for k in (("one", i, "cold"), ("one", i, "nightly"), ("one", i, "known"), ("bayesect", i, "-")))
        out.append(f"| {sc.name} | {c.mean():.0f} (±{c.std(ddof=1) / np.sqrt(len(c)):.0f}) | {nt.mean():.0f} | {kcol} "
                   f"| {by.mean():.0f} | {ratio(c, kn)} | {ratio(nt, kn)} | {ratio(c, by)} | {ratio(nt, by)} | {accs} "
                   f"| {inc:.2f} | {fb} | {_mean([x[1] for x in fx]):.0f}, {_mean([x[0] for x in fx]):.2f} |")
    nc = [i for i in idx if SCENARIOS[i].culprit == "none"]
    if nc:
        out.append("\nNo-culprit row: share of trials ending 'no-regression' / 'culprit' (wrong) / 'inconclusive' "
                   "within the 1000-run budget:\n")
        out.append("| scenario | prior | no-regression | wrong culprit | inconclusive | mean runs |")
        out.append("|---|---|---|---|---|---|")
        for i in nc:
            for mode in ("cold", "nightly"):
                r = res[("one", i, mode)]
                out.append(f"| {SCENARIOS[i].name} | {mode} | {_mean([x[0] == 'no-regression' for x in r]):.2f} "
                           f"| {_mean([x[0] == 'culprit' for x in r]):.2f} | {_mean([x[0] == 'inconclusive' for x in r]):.2f} "
                           f"| {_mean([x[3] for x in r]):.0f} |")
            r = res[("bayesect", i, "-")]
            out.append(f"| {SCENARIOS[i].name} | git_bayesect (no such hypothesis) | 0.00 "
                       f"| {_mean([x[0] == 'culprit' for x in r]):.2f} | {_mean([x[0] == 'inconclusive' for x in r]):.2f} "
                       f"| {_mean([x[3] for x in r]):.0f} |")
    if hs:
        out += per_host_section(res, hs, fractions)
        out.append("\n### 8 hosts, shared builds (a commit built once is built for every host), no infra\n")
        out.append("| scenario | engine host-hours mean | median | wall-clock h | runs | accuracy "
                   "| 10 reruns host-hours | 10 reruns accuracy | ratio | lower bound, any method |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for i in hs:
            e = res[("eight", i, "cold")]
            hh = np.array([x[2] for x in e])
            fx = res[("fixed", i, "-")]
            fh = _mean([x[2] for x in fx])
            out.append(f"| {SCENARIOS[i].name} | {hh.mean():.1f} | {np.median(hh):.1f} | {_mean([x[3] for x in e]):.1f} "
                       f"| {_mean([x[1] for x in e]):.0f} | {_mean([x[0] for x in e]):.3f} | {fh:.1f} "
                       f"| {_mean([x[0] for x in fx]):.3f} | {hh.mean() / fh:.2f} | {host_hours_bound(SCENARIOS[i]):.1f} |")
    out.append("\n### Calibration (engine, cold start, all scenarios above)\n")
    out.append("Final verdicts are only stated at >= 0.95 (the stop rule), so the useful check is on the "
               "running statements: every 10 runs, the top hypothesis (a commit or 'no change') and its "
               "probability.\n")
    out.append("| stated confidence >= | final verdicts: n | right | running statements: n | right |")
    out.append("|---|---|---|---|---|")
    fin = [(x[2], x[1]) for i in idx for x in res[("one", i, "cold")] if x[0] != "inconclusive"]
    snap = [s for i in idx for x in res[("one", i, "cold")] for s in x[4]]
    for c in (0.5, 0.8, 0.9, 0.95, 0.99):
        f = [r for p, r in fin if p >= c]
        s = [r for p, r in snap if p >= c]
        out.append(f"| {c} | {len(f)} | {_mean(f):.3f} | {len(s)} | {_mean(s):.3f} |")
    ut = args.untestable_trials if args.untestable_trials is not None else max(1, T // 4)
    if ut:
        out += untestable_section(ut, args.jobs)
    if ("error" in {k[0] for k in res}):
        out.append("\nErrors: " + "; ".join(str(v) for k, vs in res.items() if k[0] == "error" for v in vs))
    print("\n".join(out))


def per_host_section(res: dict, hs: list[int], fractions: list[str]) -> list[str]:
    """The per-host-builds table: one row per scenario and idle fraction."""
    out = ["\n### 8 hosts, per-host builds (default model): build 10 min per host and commit, run 2 min, "
           "3% infra runs\n",
           "Each host keeps its last build; the engine knows what each free host has built. Cold start. "
           "Bounds: host_hours_bound (any method right with probability 0.95) and wall_bound (that bound "
           "over 8 hosts never idle). idle fraction: EngineSettings.idle_fraction (a host gets a request only "
           "if its value per host-minute is at least this share of the best probe's value per run-minute).\n",
           "| scenario | idle fraction | host-hours | / bound | wall-clock h | / wall bound | runs (incl. infra) "
           "| builds | accuracy | host-hour bound | wall bound h |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i in hs:
        for f in fractions:
            e = res[("perhost", i, f)]
            hh, wh = _mean([x[2] for x in e]), _mean([x[3] for x in e])
            hb, wb = host_hours_bound(SCENARIOS[i]), wall_bound(SCENARIOS[i])
            fname = f"{EngineSettings().idle_fraction:g} (default)" if f == "cold" else f"{float(f):g}"
            out.append(f"| {SCENARIOS[i].name} | {fname} | {hh:.1f} | {hh / hb:.1f}x | {wh:.2f} | {wh / wb:.1f}x "
                       f"| {_mean([x[1] for x in e]):.0f} | {_mean([x[4] for x in e]):.0f} "
                       f"| {_mean([x[0] for x in e]):.2f} | {hb:.1f} | {wb:.2f} |")
    return out


# ---------------------------------------------------------------- untestable commits
# Kept apart from the tables above: commits no host can test (git bisect skip).


@dataclass(frozen=True)
class UntestableCell:
    name: str
    base: Scenario
    oldest: float = 0.0          # fraction of the range, from position 1 (or 0 with good_end)
    scattered: float = 0.0       # fraction drawn among the rest (never the bad end)
    build_fails: float = 0.0     # share of the untestable commits whose build fails (10 min) instead of a 0.5 min check
    good_end: bool = False       # the good end cannot be tested either
    culprit: str = "uniform"     # uniform (over the whole range) | boundary (first testable after the oldest stretch)


UNTESTABLE_CELLS = [
    UntestableCell("10% scattered (0.01, 0.2, 128)", Scenario("", binary(0.01), binary(0.2), 128, max_runs=1500),
                   scattered=0.1, build_fails=0.5),
    UntestableCell("oldest third (0.01, 0.2, 128)", Scenario("", binary(0.01), binary(0.2), 128, max_runs=1500),
                   oldest=1 / 3),
    UntestableCell("oldest third, culprit at the boundary", Scenario("", binary(0.01), binary(0.2), 128,
                                                                     max_runs=1500), oldest=1 / 3, culprit="boundary"),
    UntestableCell("oldest third + good end, culprit at the boundary", Scenario("", binary(0.01), binary(0.2), 128,
                   max_runs=1500), oldest=1 / 3, good_end=True, culprit="boundary"),
    UntestableCell("#3322 shape (128), 10% scattered", Scenario("", S3322_BEFORE, S3322_AFTER, 128), scattered=0.1),
]


def untestable_trial(cell: UntestableCell, seed: int, hosts=8, build=10.0, run=2.0, check=0.5):
    """Event-driven like eight_hosts; a request at an untestable commit costs the
    check (or the failed build), returns no runs and marks the commit, as the
    campaign does after a host's "cannot test here". Returns (outcome, runs,
    builds, wasted builds, host-hours, wall hours) with outcome one of
    right | range (holds the culprit) | wrong-range | wrong | no-regression | inconclusive."""
    sc = cell.base
    rng = np.random.default_rng([seed, 4])
    n = sc.n
    cut = int(round(cell.oldest * n))
    bad = set(range(0 if cell.good_end else 1, cut + 1)) if cut else set()
    rest = [j for j in range(1, n) if j not in bad]
    bad |= {int(j) for j in rng.choice(rest, int(round(cell.scattered * n)), replace=False)} if cell.scattered else set()
    fails = {j for j in bad if rng.random() < cell.build_fails}
    k = cut + 1 if cell.culprit == "boundary" else int(rng.integers(1, n + 1))
    st = settings_for(sc, "cold", seed, build_minutes=build, run_minutes=run)
    counts = np.zeros((n + 1, 6), dtype=np.int64)
    built: set[int] = set()
    known: set[int] = set()
    runs = builds = wasted = 0
    host_min = now = 0.0
    flight: list[tuple[float, int, int]] = []
    free = hosts
    while True:
        s = step(counts, built, runs, host_min, [(j, m) for _, j, m in flight], free, st, rng=rng,
                 untestable=known, builds_used=builds)
        if s.verdict or (not s.requests and not flight):
            break
        for j, m in s.requests:
            builds += 1
            if j in bad:
                cost = build if j in fails else check
                wasted += 1
            else:
                cost = m * run + (0.0 if j in built else build)
                built.add(j)
            host_min += cost
            flight.append((now + cost, j, m))
            free -= 1
        flight.sort()
        t, j, m = flight.pop(0)
        now = t
        free += 1
        if j in bad:
            known.add(j)
        else:
            counts[j] += draw(sc, j, k, rng, m)
            runs += m
    if s.verdict == "culprit":
        outcome = "right" if s.culprit == k else "wrong"
    elif s.verdict == "culprit-range":
        outcome = "range" if s.range[0] <= k <= s.range[1] else "wrong-range"
    else:
        outcome = s.verdict or "inconclusive"
    return outcome, runs, builds, wasted, host_min / 60, now / 60


def _untestable_task(args):
    i, seed = args
    return i, untestable_trial(UNTESTABLE_CELLS[i], seed)


def untestable_section(trials: int, jobs: int) -> list[str]:
    """The untestable-commit table (8 hosts, shared builds, cold start)."""
    res: dict[int, list] = {}
    with mp.Pool(jobs) as pool:
        for i, r in pool.imap_unordered(_untestable_task, [(i, s) for i in range(len(UNTESTABLE_CELLS))
                                                           for s in range(trials)], chunksize=2):
            res.setdefault(i, []).append(r)
    out = ["\n### Untestable commits: 8 hosts, build 10 min, run 2 min, check 0.5 min\n",
           f"{trials} trials per row. A request at an untestable commit costs the host's check (0.5 min) or, "
           "for a failed build, 10 min, and marks the commit untestable. right: the culprit named; range: a "
           "culprit range holding it; wrong: another commit (or a range without it) named.\n",
           "| scenario | right | range | wrong | no-regr. | inconcl. | runs mean | builds | of them untestable "
           "| host-hours | wall h |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, cell in enumerate(UNTESTABLE_CELLS):
        r = res[i]

        def share(*what):
            return f"{np.mean([x[0] in what for x in r]):.2f}"
        out.append(f"| {cell.name} | {share('right')} | {share('range')} | {share('wrong', 'wrong-range')} "
                   f"| {share('no-regression')} | {share('inconclusive')} | {np.mean([x[1] for x in r]):.0f} "
                   f"| {np.mean([x[2] for x in r]):.0f} | {np.mean([x[3] for x in r]):.1f} "
                   f"| {np.mean([x[4] for x in r]):.1f} | {np.mean([x[5] for x in r]):.1f} |")
    return out


if __name__ == "__main__":
    main()
