"""A git_bayesect baseline, written from its published description (not its code).

git_bayesect (PyPI `git-bayesect`, "Bayesian git bisection"), as its README
and write-up describe it:
- hypotheses: the change came with commit k (k = 1..n after the old commit),
  uniform prior (per-commit weights are an option; not used here);
- every observation is pass or fail; the fail rate before k and the fail rate
  from k on are unknown and integrated out with a Beta prior on each
  (Beta-Bernoulli conjugacy), Jeffreys Beta(1/2, 1/2), independently: "some
  change in some direction", no rise assumed and no "no change" hypothesis;
- the next commit to test is the one that minimises the expected entropy of
  the culprit posterior after one more observation (greedy);
- stop when one commit's posterior reaches the confidence (0.95 here).

A run is "fail" when it timed out or failed (classes 4 and 5 of the
benchmark's six classes); near misses are passes, as a pass/fail tool sees
them. `bayesect_one_host` draws the culprit and the outcomes from the same
streams as bisect_bench.one_host, so both see the same culprit per seed.

The docs (docs/bisection.md) quote Monte Carlo figures for git_bayesect at
0.95: 392 / 228 / 782 / 103 runs for (0, 0.1, 256) / (0.01, 0.2, 256) /
(0.02, 0.1, 256) / (0, 0.5, 64); `python benchmarks/bayesect_baseline.py
--trials N` prints this implementation's figures next to them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.special import betaln

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bisect_bench as bb  # noqa: E402

JEFFREYS = (0.5, 0.5)
PUBLISHED = {0: 392, 1: 228, 2: 782, 3: 103}  # bisect_bench.SCENARIOS index -> runs (docs/bisection.md)


def _entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


class Bayesect:
    """The posterior and the greedy probe choice over commits 0..n (0 = old end)."""

    def __init__(self, n: int, prior=JEFFREYS):
        self.n = n
        self.a, self.b = prior
        self.fail = np.zeros(n + 1)
        self.ok = np.zeros(n + 1)

    def observe(self, j: int, failed: bool) -> None:
        (self.fail if failed else self.ok)[j] += 1

    def _sides(self):
        """Fail/pass counts before k and from k on, for k = 1..n."""
        cf = np.concatenate([[0.0], np.cumsum(self.fail)])
        co = np.concatenate([[0.0], np.cumsum(self.ok)])
        k = np.arange(1, self.n + 1)
        fb, ob = cf[k], co[k]
        return fb, ob, cf[-1] - fb, co[-1] - ob

    def posterior(self) -> np.ndarray:
        """P(culprit = k), k = 1..n."""
        fb, ob, fa, oa = self._sides()
        a, b = self.a, self.b
        ll = betaln(a + fb, b + ob) + betaln(a + fa, b + oa)
        p = np.exp(ll - ll.max())
        return p / p.sum()

    def choose(self) -> int:
        """The commit whose one more run minimises the expected posterior entropy."""
        post = self.posterior()
        fb, ob, fa, oa = self._sides()
        a, b = self.a, self.b
        q_before = (a + fb) / (a + b + fb + ob)  # P(fail) of one more run on each side, per k
        q_after = (a + fa) / (a + b + fa + oa)
        j = np.arange(self.n + 1)[:, None]
        k = np.arange(1, self.n + 1)[None, :]
        q = np.where(j >= k, q_after[None, :], q_before[None, :])  # (n+1 probes, n hypotheses)
        pf = post[None, :] * q
        po = post[None, :] * (1 - q)
        mf, mo = pf.sum(1), po.sum(1)
        h = mf * _entropy(pf / mf[:, None]) + mo * _entropy(po / mo[:, None])
        return int(np.argmin(h))


def bayesect_one_host(sc: "bb.Scenario", seed: int, confidence: float = 0.95):
    """Run by run to `confidence` or the scenario's budget. Same culprit and
    outcome streams as bisect_bench.one_host. Returns (verdict, right, confidence, runs)."""
    rng = np.random.default_rng([seed, 1])
    k = bb.draw_culprit(sc, rng)
    g = Bayesect(sc.n)
    runs = 0
    while True:
        post = g.posterior()
        top = int(np.argmax(post))
        if post[top] >= confidence:
            culprit = top + 1
            return "culprit", culprit == k, float(post[top]), runs
        if runs >= sc.max_runs:
            return "inconclusive", False, float(post[top]), runs
        j = g.choose()
        c = bb.draw(sc, j, k, rng)
        g.observe(j, bool(c[4] + c[5]))
        runs += 1


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="git_bayesect baseline against its published figures")
    ap.add_argument("--trials", type=int, default=50)
    a = ap.parse_args(argv)
    print("| scenario | published runs | this baseline: mean runs (±se) | accuracy |")
    print("|---|---|---|---|")
    for i, pub in PUBLISHED.items():
        sc = bb.SCENARIOS[i]
        res = [bayesect_one_host(sc, s) for s in range(a.trials)]
        r = np.array([x[3] for x in res])
        print(f"| {sc.name} | {pub} | {r.mean():.0f} (±{r.std(ddof=1) / np.sqrt(len(r)):.0f}) "
              f"| {np.mean([x[1] for x in res]):.2f} |")


if __name__ == "__main__":
    main()
