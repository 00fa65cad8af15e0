"""Build the store, history and executor a command needs from the config.

Kept apart from the CLI so the service and tests assemble things the same way.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from flakebot.config import Config, default_db_path
from flakebot.executors import make_executor
from flakebot.executors.base import Executor, ExecutorError
from flakebot.history import History, HistoryError
from flakebot.model import KNOWN_TESTS
from flakebot.demo.hosts import Behaviour, Scenario
from flakebot.store import Store



class InputError(Exception):
    """Bad input from the command line or a config value (one line)."""


FULL_SHA = re.compile(r"[0-9a-f]{40}")


def open_store(cfg: Config) -> Store:
    return Store(cfg.store.db or default_db_path())


def open_existing_store(cfg: Config) -> Store:
    """For read-only commands: never create a database (or its directory) that is not there."""
    path = Path(cfg.store.db) if cfg.store.db else default_db_path()
    if not path.is_file():
        raise InputError(f"no database at {path} (run some tests first, or pass --db)")
    return Store(path)


def open_history(cfg: Config, required: bool = True) -> Optional[History]:
    if not cfg.spdk.repo:
        if required:
            raise InputError("no SPDK clone configured: pass --repo PATH or set spdk.repo")
        return None
    return History(cfg.spdk.repo)


def check_tests(names) -> tuple[str, ...]:
    names = tuple(names)
    for n in names:
        if n not in KNOWN_TESTS:
            raise InputError(f"unknown test {n!r}; known: {', '.join(KNOWN_TESTS)}")
    return names


def resolve_commit(history: Optional[History], ref: str) -> str:
    """A full sha: through the clone when there is one, else the ref must be one."""
    if history is not None:
        return history.resolve(ref)
    if FULL_SHA.fullmatch(ref or ""):
        return ref
    raise InputError(f"cannot resolve {ref!r} without an SPDK clone: pass --repo PATH or a full 40-hex sha")


def sim_scenario(cfg: Config) -> Scenario:
    """The sim hosts' behaviour: from the clone's tree (#3322 shape) when there
    is one, else healthy everywhere with the configured background rates."""
    s = cfg.sim
    healthy = Behaviour(0.0, 0.0, p_fail=s.background_fail, p_infra=s.infra)
    prone = Behaviour(s.p_hang, s.p_near_miss, p_fail=s.background_fail, p_infra=s.infra)
    if cfg.spdk.repo:
        return Scenario.from_repo(cfg.spdk.repo, healthy=healthy, prone=prone)
    return Scenario.constant(healthy)


def build_executor(cfg: Config) -> Executor:
    name = cfg.executor.name
    if name == "sim":
        s = cfg.sim
        return make_executor("sim", scenario=sim_scenario(cfg), hosts=s.hosts, seed=s.seed,
                             build_minutes=cfg.executor.build_minutes, run_minutes=cfg.executor.run_minutes,
                             fmt=s.format, era=s.era)
    if name == "local":
        return make_executor("local", command=cfg.executor.command,
                             spdk_dir=cfg.executor.spdk_dir or cfg.spdk.repo or None,
                             timeout_s=cfg.executor.timeout_minutes * 60.0, workdir=cfg.local_workdir(),
                             keep_logs=cfg.executor.local_keep_logs, keep_days=cfg.executor.local_keep_days)
    if name == "jenkins":
        j = cfg.jenkins
        return make_executor("jenkins", url=j.url, user=j.user, token=cfg.secret("jenkins.token_env") or "",
                             job=j.job, label=j.label, max_parallel=j.max_parallel,
                             timeout=j.http_timeout_seconds, poll_seconds=j.poll_seconds)
    raise ExecutorError(f"unknown executor {name!r}")


def poll_seconds(cfg: Config) -> float:
    return {"sim": 0.0, "local": cfg.executor.local_poll_seconds}.get(cfg.executor.name, cfg.jenkins.poll_seconds)


__all__ = ["InputError", "HistoryError", "open_store", "open_existing_store", "open_history", "check_tests", "resolve_commit",
           "build_executor", "poll_seconds"]
