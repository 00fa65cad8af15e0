"""Where the cold-start bisection spends its runs: planner vs posterior vs prior.

    .venv/bin/python benchmarks/bisect_ablation.py [--trials 40] [--jobs 2]

Same simulation as bisect_bench.py (one host, run by run, build cost 0, stop at
0.95, outcomes drawn from the scenario's class probabilities), for these
variants of the engine:

- default: the engine as shipped (cold prior: posterior.default_prior()).
- old prior: the baseline weight decaying by 0.6 per grid step from the lowest
  rate (the shape before the knee; favours the cleanest baselines).
- flat baseline: no decay at all on the before side.
- oracle planning: the probes are chosen by the engine told the true rates,
  but the verdict (stop rule, confidence) comes from the default, honest
  posterior. If the planner were what costs runs at a cold start, this would
  approach the known-rates column; if the honest uncertainty about the rates
  is what costs them, it will not.
- plug-in planning: the probes are chosen as if the rates were those of the
  honest posterior's most probable culprit (certainty equivalence), the
  verdict still from the honest posterior: a planner that needs no oracle.
- warm start: the prior the product builds from its store (campaign.history_counts
  -> prior_from_evidence, history_cap 50): 100 nightly runs at the good end and its
  ancestors (capped to 50 pseudo-runs) and the 20 runs at the bad end from the night
  that noticed the rise, drawn from the scenario. Those runs were spent by the
  nightly service, not by the bisection, and are not counted.
- confirm 10 runs: the default engine with the product's bisect.confirm_runs
  (10 runs at the culprit and at its parent; the engine's own default is 2).
- known rates: the engine told the true rates (planning and verdict).
- known rates, no bad-end runs: the same without the engine's first runs at
  the bad end (what docs/bisection.md's "rates known" figures correspond to).

Prints one markdown table: mean runs (± standard error) and accuracy per cell.

A second table (--host-trials > 0) runs bisect_bench's 8-host simulation (build
10 min once per commit, shared; run 2 min) with the iterations a request may ask
for limited to (1, 2, 4, 8) (the default), (1, 2) or (1,): host-hours,
wall-clock hours, runs and accuracy.
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bisect_bench as bb  # noqa: E402
from flakebot.analysis import (EngineSettings, default_prior, known_rates_prior,  # noqa: E402
                               posterior, step)

CELLS = [0, 1, 2, 3, 8]  # bisect_bench.SCENARIOS: the four target cells and the #3322 shape
VARIANTS = ["default", "old prior", "flat baseline", "oracle planning", "plug-in planning", "warm start",
            "confirm 10 runs", "known rates", "known rates, no bad-end runs"]


def _settings(sc: bb.Scenario, variant: str, seed: int) -> EngineSettings:
    prior = None
    kw = {}
    if variant == "old prior":
        prior = default_prior(before_decay=0.6, baseline_knee=(0.0, 0.0))
    elif variant == "flat baseline":
        prior = default_prior(before_decay=1.0)
    elif variant == "warm start":
        prior = bb.nightly_prior(sc, seed)  # its own stream: the trial's draws stay the same
    elif variant.startswith("known rates"):
        prior = known_rates_prior(bb.groups3(sc.before), bb.groups3(sc.after))
        if variant.endswith("no bad-end runs"):
            kw["bad_end_runs"] = 0
    elif variant == "confirm 10 runs":
        kw["confirm_runs"] = 10
    return EngineSettings(prior=prior, max_runs=sc.max_runs, build_minutes=0.0, iteration_options=(1,),
                          seed=seed, **kw)


def trial(args) -> tuple[tuple[int, str], tuple[bool, int]]:
    i, variant, seed = args
    sc = bb.SCENARIOS[i]
    st = _settings(sc, variant, seed)
    planner = None  # counts -> the prior the probes are chosen with (None: the engine's own)
    if variant == "oracle planning":
        known = known_rates_prior(bb.groups3(sc.before), bb.groups3(sc.after))
        planner = lambda counts: known  # noqa: E731
    elif variant == "plug-in planning":
        def planner(counts):
            post = posterior(counts, st.prior)
            top = int(np.argmax(post.culprit))
            return known_rates_prior(post.pred_before[top], post.pred_after[top])
    rng = np.random.default_rng([seed, 1])
    k = bb.draw_culprit(sc, rng)
    counts = np.zeros((sc.n + 1, 6), dtype=np.int64)
    runs = 0
    while True:
        s = step(counts, set(), runs, 0.0, [], 1, st, rng=rng)
        if s.verdict:
            return (i, variant), (s.verdict == "culprit" and s.culprit == k, runs)
        reqs = s.requests
        if planner is not None and s.confidence < st.confidence:  # confirmation runs stay the engine's
            o = step(counts, set(), runs, 0.0, [], 1,
                     EngineSettings(prior=planner(counts), build_minutes=0.0, iteration_options=(1,), seed=seed),
                     rng=rng)
            if not o.verdict and o.requests:
                reqs = o.requests
        for j, m in reqs:
            counts[j] += bb.draw(sc, j, k, rng, m)
            runs += m


ITERATION_OPTIONS = [(1, 2, 4, 8), (1, 2), (1,)]
HOST_CELLS = [0, 3, 8]


def _pool(fn, tasks, jobs: int) -> dict:
    """Run fn over tasks in jobs processes; its (key, result) pairs as key -> [results]."""
    res: dict = {}
    with mp.Pool(jobs) as pool:
        for key, r in pool.imap_unordered(fn, tasks, chunksize=2):
            res.setdefault(key, []).append(r)
    return res


def host_trial(args):
    i, opts, seed = args
    return (i, opts), bb.eight_hosts(bb.SCENARIOS[i], seed, iteration_options=opts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--host-trials", type=int, default=20, help="trials per cell of the 8-host table (0: skip)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    tasks = [(i, v, s) for i in CELLS for v in VARIANTS for s in range(args.trials)]
    t0 = time.time()
    res = _pool(trial, tasks, args.jobs)
    print(f"Command: `.venv/bin/python benchmarks/bisect_ablation.py {' '.join(argv or sys.argv[1:])}`  ")
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {args.trials} trials per cell; "
          f"{(time.time() - t0) / 60:.1f} min on {args.jobs} processes.\n")
    print("| variant | " + " | ".join(bb.SCENARIOS[i].name for i in CELLS) + " |")
    print("|---|" + "---|" * len(CELLS))
    for v in VARIANTS:
        cells = []
        for i in CELLS:
            e = res[(i, v)]
            r = np.array([x[1] for x in e], dtype=float)
            cells.append(f"{r.mean():.0f} ±{r.std(ddof=1) / np.sqrt(len(r)):.0f}, acc {np.mean([x[0] for x in e]):.2f}")
        print(f"| {v} | " + " | ".join(cells) + " |")
    if args.host_trials <= 0:
        return
    tasks = [(i, o, s) for i in HOST_CELLS for o in ITERATION_OPTIONS for s in range(args.host_trials)]
    hres = _pool(host_trial, tasks, args.jobs)
    print(f"\n8 hosts, {args.host_trials} trials per cell: host-hours / wall-clock hours / runs / accuracy\n")
    print("| iterations per request | " + " | ".join(bb.SCENARIOS[i].name for i in HOST_CELLS) + " |")
    print("|---|" + "---|" * len(HOST_CELLS))
    for o in ITERATION_OPTIONS:
        cells = []
        for i in HOST_CELLS:
            e = hres[(i, o)]
            cells.append(f"{np.mean([x[2] for x in e]):.1f} h / {np.mean([x[3] for x in e]):.2f} h / "
                         f"{np.mean([x[1] for x in e]):.0f} / {np.mean([x[0] for x in e]):.2f}")
        print(f"| {', '.join(map(str, o))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
