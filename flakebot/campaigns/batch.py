"""Run tests N times at one commit over every free host, and summarise exactly
those runs. Used by `flakebot run`, the nightly cycle and the demo; it drives
the one Dispatcher, like a campaign does, without a search around it."""
from __future__ import annotations

import time
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flakebot.analysis.summary import wait_stats
from flakebot.campaigns.dispatch import Dispatcher
from flakebot.model import RunRequest
from flakebot.executors.runids import batch_run_id, instance_id

err = Console(stderr=True)


class Stopped(Exception):
    """should_stop() turned true; requests in flight stay recorded for a resume."""


def run_at(store, ex, sha: str, tests, iterations: int, *, slow_threshold_s: float, poll_seconds: float,
           label: str, quiet: bool = False, run_prefix: str = "run",
           should_stop: Callable[[], bool] = lambda: False, sleep: Callable[[float], None] = time.sleep) -> dict:
    """Spread `iterations` of each test over the executor's hosts, wait, ingest;
    return the summary of exactly the runs these requests produced (with their
    build ids). Raises Stopped between polls once should_stop() is true."""
    def pause(seconds: float) -> None:
        if should_stop():
            raise Stopped()
        sleep(seconds)

    disp = Dispatcher(store, ex, slow_threshold_s=slow_threshold_s, poll_seconds=poll_seconds, sleep=pause)
    # Run ids must be unique (Jenkins merges identical queued requests; other
    # databases share the hosts: runids.py) and, for the sim hosts,
    # reproducible: number them after the builds stored so far.
    first = len(store.builds()) + 1
    chunks = _split(iterations, max(1, ex.slots()))
    instance = instance_id(store)
    requests = [RunRequest(batch_run_id(instance, run_prefix, sha, first + i), sha, tuple(tests), n)
                for i, n in enumerate(chunks)]
    build_ids, pending = [], list(requests)
    with _progress(quiet) as bar:
        task = bar.add_task(label, total=len(tests) * iterations)
        while pending or disp.in_flight:
            while pending and disp.free_slots() > 0:
                build_ids.append(disp.submit(pending.pop(0)).build_id)
            for f in disp.collect(wait=True):
                bar.advance(task, len(f.runs))
            if should_stop() and (pending or disp.in_flight):
                raise Stopped()
    return summarize(store, build_ids, sha, tests)


def _split(total: int, parts: int) -> list[int]:
    parts = min(parts, total)
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, disable=quiet or not err.is_terminal, transient=True)


def summarize(store, build_ids, sha: str, tests) -> dict:
    """Outcomes and shutdown waits of the given builds, per test."""
    rows = [r for r in store.runs(commits=[sha]) if r["build_id"] in set(build_ids)]
    per_test = []
    for t in tests:
        mine = [r for r in rows if r["test"] == t]
        outcomes: dict[str, int] = {}
        for r in mine:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        per_test.append({"test": t, "runs": len(mine), "outcomes": outcomes,
                         "waits": _waits_by_site(store, mine)})
    return {"commit": sha, "builds": len(build_ids), "build_ids": list(build_ids), "hosts": sorted({r["host"] for r in rows if r["host"]}),
            "tests": per_test}


def _waits_by_site(store, runs: list[dict]) -> list[dict]:
    by_site: dict[str, list[float]] = {}
    limits: dict[str, int] = {}
    timeouts: dict[str, int] = {}
    for sd in store.shutdowns_for([r["id"] for r in runs]):
        site = sd["call_site"]
        limits[site] = sd["limit_s"]
        timeouts[site] = timeouts.get(site, 0) + int(bool(sd["timed_out"]))
        if sd["waited_s"] is not None:
            by_site.setdefault(site, []).append(sd["waited_s"])
    return [dict(call_site=s, limit_s=limits[s], timeouts=timeouts.get(s, 0), **wait_stats(by_site.get(s, [])))
            for s in sorted(limits)]
