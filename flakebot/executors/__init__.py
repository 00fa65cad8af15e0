"""Executors by name (docs/architecture.md: chosen by name from config).

    >>> from flakebot.executors import make_executor
    >>> ex = make_executor("sim", hosts=2)
    >>> ex.slots()
    2

Backends are imported lazily so a missing optional dependency of one backend
never breaks another.
"""
from __future__ import annotations

import importlib
from typing import Any

from flakebot.executors.base import Executor, ExecutorError

# name -> "module:factory"; the factory is called with the config options.
EXECUTORS: dict[str, str] = {
    "sim": "flakebot.executors.sim:SimExecutor",
    "local": "flakebot.executors.local:LocalExecutor",
    "jenkins": "flakebot.executors.jenkins:JenkinsExecutor",
}


def register(name: str, target: str) -> None:
    """Add a backend: `register("mine", "mypkg.executor:MyExecutor")`."""
    EXECUTORS[name] = target


def make_executor(name: str, **options: Any) -> Executor:
    """Build the executor called `name` with its config options."""
    try:
        target = EXECUTORS[name]
    except KeyError:
        raise ExecutorError(f"unknown executor {name!r}; known: {', '.join(sorted(EXECUTORS))}") from None
    module_name, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    try:
        return factory(**options)
    except TypeError as e:  # unknown / missing option in config
        raise ExecutorError(f"executor {name!r}: bad options: {e}") from None


__all__ = ["EXECUTORS", "Executor", "ExecutorError", "make_executor", "register"]
