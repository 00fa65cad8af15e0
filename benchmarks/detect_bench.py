#!/usr/bin/env python3
"""Nightly detection benchmark: flakebot's CUSUM detector against a plain CUSUM
on the same simulated nights. Pure simulation (not a timed test).

A night is `--runs` runs (default 20, the project default) drawn from the
night's class probabilities (near miss, timeout, fail; the rest pass). Both
detectors see the same regular runs; flakebot's may add `--extra` runs at the
tip on a suggestive night (adaptive effort), drawn from a separate stream.

flakebot  `flakebot.analysis.detect.Detector` with the default settings and
          false_alarms_per_year = --budget (h = log(3 x 365 / budget)); the
          baseline is estimated from the nights, as in production.
plain     one Bernoulli CUSUM on nightly trouble counts (near miss + timeout +
          fail), told the true rates (an oracle: rise p0 -> p0 + 0.05, fall
          p_raised -> p_raised - 0.05, p_raised the true raised rate), threshold
          log(365 / budget) (the same budget, one CUSUM), no extra runs.

Tables
- false alarms per 1000 nights at constant baselines: --null-trials histories
  of --nights nights each (rises; falls in brackets), and the same for young
  tests: --young-trials histories of their first 30 nights.
- the four rise cases: --trials trials; the rate rises at night 30 (30 nights
  of history) and returns to the baseline at night 55. Rise delay = nights
  from the first raised night to the detection, inclusive (1 = found on the
  first raised night); a rise found before night 30 counts as 'early' and the
  trial as undetected. Fall delay likewise from night 55 (trials whose rise
  was found); 'while high' counts falls recorded before night 55.

    nice python benchmarks/detect_bench.py --null-trials 50 --trials 200 --young-trials 400 --seed 1 --budget 0.1
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flakebot.analysis.detect import FALL, RISE, DetectSettings, Detector, Night  # noqa: E402

RISE_AT, FIX_AT, LAST = 30, 55, 80
YOUNG_NIGHTS = 30
EFFECT = 0.05

# (near, timeout, fail)
BASELINES = [("0% failures", (0.0, 0.0, 0.0)), ("1% failures", (0.0, 0.0, 0.01)),
             ("3% failures", (0.0, 0.0, 0.03)), ("5% failures", (0.0, 0.0, 0.05)),
             ("5% near + 1% timeouts", (0.05, 0.01, 0.0))]
CASES = [("0 -> 0.1", (0.0, 0.0, 0.0), (0.0, 0.0, 0.1)),
         ("0.01 -> 0.2", (0.0, 0.0, 0.01), (0.0, 0.0, 0.2)),
         ("0.02 -> 0.1", (0.0, 0.0, 0.02), (0.0, 0.0, 0.1)),
         ("#3322 shape (1.5% timeouts -> 5% + 10% near)", (0.0, 0.015, 0.0), (0.10, 0.05, 0.0))]


def draw(rng: np.random.Generator, p: tuple[float, float, float], n: int) -> tuple[int, int, int, int]:
    near, to, fail = p
    c = rng.multinomial(n, [1 - near - to - fail, near, to, fail])
    return int(c[0]), int(c[1]), int(c[2]), int(c[3])


class Plain:
    """A Bernoulli CUSUM on trouble counts with known rates."""

    def __init__(self, p0: float, p1: float, h: float):
        p0, p1 = min(max(p0, 1e-3), 0.999), min(max(p1, 1e-3), 0.999)
        self.a, self.b = np.log(p1 / p0), np.log((1 - p1) / (1 - p0))
        self.h, self.s = h, 0.0

    def push(self, counts) -> bool:
        k = counts[1] + counts[2] + counts[3]
        self.s = max(0.0, self.s + k * self.a + (sum(counts) - k) * self.b)
        if self.s >= self.h:
            self.s = 0.0
            return True
        return False


@dataclass
class Args:
    runs: int
    extra: int
    settings: DetectSettings


def flakebot_night(det: Detector, key: str, counts, rng_extra, p, a: Args):
    """One night with adaptive effort; returns (verdict, runs spent)."""
    night = Night(key, key, counts)
    d = det.peek(night)
    if d.verdict == "none" and d.suggestive and a.extra:
        more = draw(rng_extra, p, a.extra)
        night = Night(key, key, tuple(x + y for x, y in zip(counts, more)))
    return det.push(night).verdict, night.runs


def null_rates(p, nights: int, trials: int, seed: int, a: Args, h_plain: float) -> dict:
    fb_rise = fb_fall = pl_rise = runs = 0
    for t in range(trials):
        rng, rng_x = np.random.default_rng([seed, t, 0]), np.random.default_rng([seed, t, 1])
        det, pl = Detector(a.settings), Plain(sum(p), sum(p) + EFFECT, h_plain)
        for i in range(nights):
            c = draw(rng, p, a.runs)
            v, n = flakebot_night(det, f"n{i}", c, rng_x, p, a)
            fb_rise += v == RISE
            fb_fall += v == FALL
            runs += n
            pl_rise += pl.push(c)
    total = nights * trials
    return {"flakebot": 1000 * fb_rise / total, "flakebot_falls": 1000 * fb_fall / total,
            "plain": 1000 * pl_rise / total, "runs_per_night": runs / total}


def case_trials(p0, p1, trials: int, seed: int, a: Args, h_plain: float) -> dict:
    out = {k: [] for k in ("fb_rise", "fb_fall", "pl_rise", "pl_fall")}
    fb_high = pl_high = fb_early = pl_early = 0
    extra_runs = 0
    for t in range(trials):
        rng, rng_x = np.random.default_rng([seed, 1000 + t, 0]), np.random.default_rng([seed, 1000 + t, 1])
        det = Detector(a.settings)
        pl = Plain(sum(p0), sum(p0) + EFFECT, h_plain)
        pl_state = "base"
        fb_rise = fb_fall = pl_rise = pl_fall = None
        for i in range(LAST):
            p = p1 if RISE_AT <= i < FIX_AT else p0
            c = draw(rng, p, a.runs)
            v, n = flakebot_night(det, f"n{i}", c, rng_x, p, a)
            extra_runs += n - a.runs
            if v == RISE and fb_rise is None:
                if i < RISE_AT:
                    fb_early += 1
                    fb_rise = -1
                else:
                    fb_rise = i - RISE_AT + 1
            elif v == FALL and fb_rise not in (None, -1) and fb_fall is None:
                if i < FIX_AT:
                    fb_high += 1
                    fb_fall = -1
                else:
                    fb_fall = i - FIX_AT + 1
            if pl.push(c):
                if pl_state == "base":
                    if i < RISE_AT:
                        pl_early += 1
                        pl_rise = -1
                        pl_state = "dead"
                    else:
                        pl_rise = i - RISE_AT + 1
                        pl_state = "raised"
                        pl = Plain(sum(p1), sum(p1) - EFFECT, h_plain)
                elif pl_state == "raised":
                    pl_state = "dead"
                    if i < FIX_AT:
                        pl_high += 1
                        pl_fall = -1
                    else:
                        pl_fall = i - FIX_AT + 1
        out["fb_rise"].append(fb_rise)
        out["fb_fall"].append(fb_fall)
        out["pl_rise"].append(pl_rise)
        out["pl_fall"].append(pl_fall)
    return {"fb": summary(out["fb_rise"], out["fb_fall"], fb_early, fb_high, trials),
            "pl": summary(out["pl_rise"], out["pl_fall"], pl_early, pl_high, trials),
            "extra_runs_per_trial": extra_runs / trials}


def summary(rises, falls, early, high, trials) -> dict:
    big = 10 ** 6
    d = np.array([r if r not in (None, -1) else big for r in rises], dtype=float)
    found = [i for i, r in enumerate(rises) if r not in (None, -1)]
    f = np.array([falls[i] if falls[i] not in (None, -1) else big for i in found], dtype=float)
    med = np.median(d)
    p90 = np.percentile(d, 90, method="higher")
    return {"median": fmt_n(med, big), "p90": fmt_n(p90, big),
            "within7": 100 * float(np.mean(d <= 7)), "by25": 100 * float(np.mean(d <= FIX_AT - RISE_AT)),
            "early": early, "fall_within14": 100 * float(np.mean(f <= 14)) if len(f) else float("nan"),
            "fall_by25": 100 * float(np.mean(f <= 25)) if len(f) else float("nan"),
            "fall_median": fmt_n(np.median(f), big) if len(f) else "-", "high": high, "found": len(found)}


def fmt_n(x, big) -> str:
    return f">{FIX_AT - RISE_AT}" if x >= big else f"{x:g}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--null-trials", type=int, default=10)
    ap.add_argument("--nights", type=int, default=1000, help="nights per null history")
    ap.add_argument("--young-trials", type=int, default=100)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget", type=float, default=0.1, help="false alarms per test per year")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--extra", type=int, default=40)
    ns = ap.parse_args(argv)
    settings = DetectSettings(false_alarms_per_year=ns.budget)
    a = Args(ns.runs, ns.extra, settings)
    h_plain = float(np.log(365 / ns.budget))
    t0 = time.time()
    print(f"flakebot: h = {settings.threshold:.2f} (3 CUSUMs a direction, {ns.budget:g} false alarms/year), "
          f"extra runs {ns.extra}; plain CUSUM: h = {h_plain:.2f}, true rates; {ns.runs} runs a night\n")
    print(f"False alarms per 1000 nights (rises; flakebot's falls in brackets), {ns.null_trials} x {ns.nights} "
          f"nights; young tests: {ns.young_trials} x their first {YOUNG_NIGHTS} nights\n")
    print("| baseline | flakebot | plain CUSUM | flakebot, young | plain, young | flakebot runs/night |")
    print("|---|---|---|---|---|---|")
    for name, p in BASELINES:
        r = null_rates(p, ns.nights, ns.null_trials, ns.seed, a, h_plain)
        y = null_rates(p, YOUNG_NIGHTS, ns.young_trials, ns.seed + 7, a, h_plain)
        print(f"| {name} | {r['flakebot']:.2f} ({r['flakebot_falls']:.2f}) | {r['plain']:.2f} | "
              f"{y['flakebot']:.2f} ({y['flakebot_falls']:.2f}) | {y['plain']:.2f} | {r['runs_per_night']:.2f} |")
    print(f"\nRise at night {RISE_AT}, back to the baseline at night {FIX_AT}; {ns.trials} trials per case\n")
    print("| case | detector | rise: median / p90 / within 7 / by 25 nights | rises before the change | "
          "fall: median / within 14 / by 25 nights | falls while still high | extra runs per trial |")
    print("|---|---|---|---|---|---|---|")
    for name, p0, p1 in CASES:
        r = case_trials(p0, p1, ns.trials, ns.seed, a, h_plain)
        for label, s in (("flakebot", r["fb"]), ("plain CUSUM", r["pl"])):
            extra = f"{r['extra_runs_per_trial']:.0f}" if label == "flakebot" else "0"
            print(f"| {name} | {label} | {s['median']} / {s['p90']} / {s['within7']:.0f}% / {s['by25']:.0f}% | "
                  f"{s['early']} | {s['fall_median']} / {s['fall_within14']:.0f}% / {s['fall_by25']:.0f}% "
                  f"(of {s['found']}) | {s['high']} | {extra} |")
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
