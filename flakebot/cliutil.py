"""What every click command module shares (cli.py, cli_report.py,
cli_service.py), importable without importing cli.py: the one way a command
fails on bad input (one line on stderr, exit 2), reading the config with flag
overrides, and the options of commands that run tests.
"""
from __future__ import annotations

import functools

import click

from flakebot.config import ConfigError, load_config
from flakebot.executors.base import ExecutorError
from flakebot.history import HistoryError
from flakebot.store import StoreError

EXIT_INPUT = 2


class InputError(Exception):
    """Bad input from the command line (one line)."""


class Fail(click.ClickException):
    """One-line error, exit 2."""

    exit_code = EXIT_INPUT

    def show(self, file=None) -> None:
        click.echo(f"flakebot: error: {self.format_message()}", err=True)


def guard(fn):
    """Turn the layers' own error types into one-line exits."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except (ConfigError, StoreError, HistoryError, ExecutorError, InputError, ValueError, OSError) as e:
            msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
            if isinstance(e, OSError) and e.strerror:
                msg = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
            raise Fail(msg) from None

    return wrapper


def config_from(ctx: click.Context, overrides: dict):
    """The config named by the group's --config, with flag values (None = not
    given) laid over it and everything checked again."""
    cfg = load_config((ctx.obj or {}).get("config_path"))
    return cfg.with_overrides({k: v for k, v in overrides.items() if v is not None})


def executor_options(fn):
    """--db --executor --command --repo --seed: the options of commands that run tests."""
    opts = [
        click.option("--db", type=click.Path(dir_okay=False), help="SQLite database file."),
        click.option("--executor", type=click.Choice(["sim", "local", "jenkins"]), help="Where runs happen."),
        click.option("--command", "command_", metavar="CMD", help="Host script the local executor runs."),
        click.option("--repo", type=click.Path(file_okay=False), help="Local SPDK git clone."),
        click.option("--seed", type=click.IntRange(min=0), help="Seed for the sim hosts and the search."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def executor_overrides(db=None, executor=None, command_=None, repo=None, seed=None) -> dict:
    return {"store.db": db, "executor.name": executor, "executor.command": command_, "spdk.repo": repo,
            "sim.seed": seed}


def fmt_rate(x: dict) -> str:
    """'k/n, est. mean [lo, hi]' of a stored rate (Jeffreys: 0/24 is est. 0.020, not 0)."""
    return f"{x['k']}/{x['n']}, est. {x['rate']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]"
