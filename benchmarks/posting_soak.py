"""Exactly once across processes: a soak against the fake Gerrit and GitHub.

Each trial (tests/posting_world.py): a fresh database holding the deliveries
of four bisections (three reach the same culprit: one comment per culprit and
test), stored cursors just before four review commands that are refused (every
poller queues the same four replies), and fresh fakes; then two `flakebot poll`
and one `flakebot serve` start together as subprocesses on that database.
Every expected delivery's marker is counted on the fakes afterwards:

- duplicates: posts beyond the first of a delivery;
- lost: deliveries never posted;
- not recorded: posted, but not marked posted in the store.

The kill -9 soak kills one of the three (a poll or serve, in turn) at a
random moment within ``--kill-window`` seconds after the first post reached a
fake, then runs one more `flakebot poll` (the restart).

    nice .venv/bin/python benchmarks/posting_soak.py --trials 100 --kill-trials 30

Prints a table; exit 1 if any trial posted twice or lost a post.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.posting_world import PostingWorld  # noqa: E402

VICTIMS = ("poll", "poll", "serve")


def soak(world: PostingWorld, trials: int, rng: random.Random, kill_window: float = 0.0) -> dict:
    rows = []
    for i in range(trials):
        cfg, db, keys = world.prepare()
        if kill_window:
            victim = i % 3
            t = world.run_together(cfg, db, keys, kill_after=rng.uniform(0, kill_window), victim=victim)
            exits = [c for j, c in enumerate(t.exit_codes) if j != victim]
        else:
            t = world.run_together(cfg, db, keys)
            exits = t.exit_codes
        rows.append((t, sum(c != 0 for c in exits)))
        bad = " <-" if t.duplicates or t.lost or t.not_recorded else ""
        print(f"  trial {i + 1}: {t.deliveries} deliveries, {t.duplicates} duplicates, {t.lost} lost, "
              f"{t.not_recorded} not recorded, {t.seconds:.1f} s"
              + (f", killed {VICTIMS[i % 3]}{'' if t.killed else ' (already done)'}" if kill_window else "")
              + bad, file=sys.stderr, flush=True)
    ts = [t for t, _ in rows]
    return {"trials": trials, "deliveries": sum(t.deliveries for t in ts),
            "duplicates": sum(t.duplicates for t in ts), "lost": sum(t.lost for t in ts),
            "not_recorded": sum(t.not_recorded for t in ts), "bad_exits": sum(n for _, n in rows),
            "kills": sum(t.killed for t in ts), "median_s": statistics.median(t.seconds for t in ts)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100, help="trials of two polls plus serve")
    ap.add_argument("--kill-trials", type=int, default=30, help="trials with one process killed -9")
    ap.add_argument("--kill-window", type=float, default=2.0,
                    help="kill within this many seconds after the first post")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds each fake write takes")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    results = []
    with tempfile.TemporaryDirectory() as d:
        world = PostingWorld(Path(d), write_latency=a.latency)
        try:
            if a.trials:
                results.append(("2 polls + serve", soak(world, a.trials, rng)))
            if a.kill_trials:
                results.append(("same, one killed -9", soak(world, a.kill_trials, rng, a.kill_window)))
        finally:
            world.close()
    print(f"write latency {a.latency} s, seed {a.seed}")
    print("| soak | trials | deliveries | duplicates | lost | not recorded | other exits != 0 | kills "
          "| median s/trial |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results:
        kills = str(r["kills"]) if "killed" in name else "-"
        print(f"| {name} | {r['trials']} | {r['deliveries']} | {r['duplicates']} | {r['lost']} "
              f"| {r['not_recorded']} | {r['bad_exits']} | {kills} | {r['median_s']:.1f} |")
    return 1 if any(r["duplicates"] or r["lost"] or r["not_recorded"] for _, r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
