"""Wall-clock of the same work through the fake Jenkins with 1 agent and with 4,
driven by the real JenkinsExecutor over HTTP on 127.0.0.1.

Two workloads:
- batch: the same N requests (default 16, 4 iterations each, at 4 commits),
  kept at most ``slots()`` in flight, each console streamed and parsed;
- bisect: a whole bisection campaign (flakebot.campaigns.bisect) over the same
  simulated range (a 24-commit git repo, culprit at 15) with the same seed.

Builds run on the fake's simulated clock: ``--time-scale`` real seconds per
simulated minute (default 0.04), so "sim h" below is the wall-clock a real lab
would need at the same build and test durations.

    .venv/bin/python benchmarks/jenkins_parallel_bench.py            # prints a markdown table
    .venv/bin/python benchmarks/jenkins_parallel_bench.py --requests 32 --agents 1 2 4 8
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flakebot.evidence import spdklog  # noqa: E402
from flakebot.executors.jenkins import JenkinsExecutor  # noqa: E402
from tests.fakes.jenkins import DEFAULT_JOB, FakeJenkins  # noqa: E402
from flakebot.model import BuildState, RunRequest  # noqa: E402
from flakebot.demo.hosts import Behaviour, Scenario  # noqa: E402

TEST = "vfio_user_nvme_restart_vm"
USER, TOKEN = "bench", "bench-token"
HEALTHY, BROKEN = Behaviour(0.0, 0.0), Behaviour(0.25, 0.35)


def _executor(url: str) -> JenkinsExecutor:
    return JenkinsExecutor(url, USER, TOKEN, DEFAULT_JOB, "vfio-user", timeout=5.0, poll_seconds=0.01,
                           backoff_seconds=0.01)


def run_batch(agents: int, n_requests: int, iterations: int, time_scale: float) -> dict:
    commits = [c * 40 for c in "abcd"]
    scenario = Scenario.by_culprit(commits, commits[2], HEALTHY, BROKEN)
    fake = FakeJenkins(agents=agents, user=USER, token=TOKEN, time_scale=time_scale, scenario=scenario)
    with fake as url:
        ex = _executor(url)
        todo = [RunRequest(f"bench-{i}", commits[i % len(commits)], (TEST,), iterations)
                for i in range(n_requests)]
        flying: list[str] = []
        order = {r.run_id: i for i, r in enumerate(todo)}
        minutes = [0.0] * len(todo)
        runs = builds = 0
        host_minutes = 0.0
        t0 = time.perf_counter()
        slots = ex.slots()
        while todo or flying:
            while todo and len(flying) < slots:
                flying.append(ex.submit(todo.pop(0)))
            for h in list(flying):
                s = ex.poll(h)
                if s.state in (BuildState.DONE, BuildState.LOST):
                    runs += sum(1 for _ in spdklog.parse_lines(ex.console(s.external_id or h)))
                    builds += 1
                    host_minutes += s.host_minutes
                    minutes[order[json.loads(s.external_id)["run_id"]]] = s.host_minutes
                    flying.remove(h)
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        return {"agents": agents, "builds": builds, "runs": runs, "wall_s": wall,
                "sim_h": wall / time_scale / 60.0, "host_h": host_minutes / 60.0,
                "max_running": fake.max_running, "bound_h": list_schedule(minutes, agents) / 60.0}


def list_schedule(minutes: list[float], agents: int) -> float:
    """Makespan of running the builds in submission order on the first free
    agent, with zero overhead: the best any dispatcher can do in that order."""
    free = [0.0] * agents
    for m in minutes:
        i = free.index(min(free))
        free[i] += m
    return max(free)


def run_bisect(agents: int, time_scale: float, workdir: Path, seed: int = 7) -> dict:
    from flakebot.campaigns.bisect import BisectCampaign, BisectParams, open_bisect
    from flakebot.history import History
    from flakebot.store import Store
    from tests.gitrepo import make_repo

    repo = workdir / "repo"
    if not repo.exists():
        make_repo(repo, 24)
    hist = History(repo)
    shas = [c.sha for c in hist.first_parent_range(hist.resolve("HEAD~23"), hist.resolve("HEAD"))]
    good = hist.resolve("HEAD~23")
    chain = [good] + shas
    scenario = Scenario.by_culprit(chain, chain[15], HEALTHY, BROKEN)
    fake = FakeJenkins(agents=agents, user=USER, token=TOKEN, time_scale=time_scale, scenario=scenario)
    with fake as url, Store(workdir / f"bisect-{agents}-{seed}.db") as store:
        cid, _ = open_bisect(store, TEST, hist.commit(good), hist.first_parent_range(good, chain[-1]),
                             BisectParams(seed=seed, max_runs=1000))
        t0 = time.perf_counter()
        result = BisectCampaign(store, _executor(url), cid, poll_seconds=0.01).run()
        wall = time.perf_counter() - t0
        builds = store.builds(cid)
        return {"agents": agents, "seed": seed, "builds": len(builds), "runs": result.get("runs"), "wall_s": wall,
                "sim_h": wall / time_scale / 60.0,
                "host_h": sum(b["host_minutes"] or 0.0 for b in builds) / 60.0,
                "max_running": fake.max_running,
                "verdict": f"{result['verdict']} {(result.get('culprit') or '')[:10]}"
                           f"{' (right)' if result.get('culprit') == chain[15] else ''}"}


def table(title: str, rows: list[dict], extra: str = "") -> str:
    base = rows[0]["wall_s"]
    head = "| agents | builds | runs | wall-clock (s) | sim. wall-clock (h) | host hours | max builds running | speed-up |"
    sep = "|---:|---:|---:|---:|---:|---:|---:|---:|"
    if "bound_h" in rows[0]:
        head += " zero-overhead bound |"
        sep += "---:|"
    if extra:
        head += f" {extra} |"
        sep += "---|"
    out = [f"**{title}**", "", head, sep]
    for r in rows:
        line = (f"| {r['agents']} | {r['builds']} | {r['runs']} | {r['wall_s']:.2f} | {r['sim_h']:.1f} | "
                f"{r['host_h']:.1f} | {r['max_running']} | {base / r['wall_s']:.2f}x |")
        if "bound_h" in r:
            line += f" {rows[0]['bound_h'] / r['bound_h']:.2f}x |"
        if extra:
            line += f" {r.get('verdict', '')} |"
        out.append(line)
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--time-scale", type=float, default=0.04, help="real seconds per simulated minute")
    ap.add_argument("--no-bisect", action="store_true", help="only the batch workload")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9], help="bisection seeds")
    a = ap.parse_args(argv)
    print(table(f"Batch: {a.requests} requests x {a.iterations} iterations of {TEST}",
                [run_batch(n, a.requests, a.iterations, a.time_scale) for n in a.agents]))
    if not a.no_bisect:
        with tempfile.TemporaryDirectory() as d:
            for seed in a.seeds:
                rows = [run_bisect(n, a.time_scale, Path(d), seed) for n in a.agents]
                print()
                print(table(f"Bisection: 24-commit range, culprit at 15, seed {seed}", rows, extra="verdict"))
    print()
    print(f"time scale {a.time_scale} s per simulated minute; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
