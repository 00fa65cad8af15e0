"""What every click command module shares (app, report, review,
service), importable without importing app: the one way a command
fails on bad input (one line on stderr, exit 2), reading the config with flag
overrides, and the options of commands that run tests.
"""
from __future__ import annotations

import functools
import sys

import click

from flakebot.campaigns.wiring import InputError
from flakebot.config import ConfigError, load_config
from flakebot.executors.base import ExecutorError
from flakebot.history import HistoryError
from flakebot.store import StoreError

EXIT_INPUT = 2


class Fail(click.ClickException):
    """One-line error, exit 2."""

    exit_code = EXIT_INPUT

    def show(self, file=None) -> None:
        click.echo(f"flakebot: error: {_one_line(self.format_message())}", err=True)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class FlakebotGroup(click.Group):
    """The `flakebot` group. In one place for every command:
    - a usage error (bad option value, unknown option, missing argument) is one
      line on stderr and exit 2, never click's four-line usage block;
    - ``--config FILE`` is accepted before or after the subcommand;
    - ``--help`` shows every option's default (context setting show_default)."""

    def add_command(self, cmd: click.Command, name=None) -> None:
        if not any(p.name == "config_path" for p in cmd.params):
            cmd.params.append(click.Option(
                ["--config", "config_path"], type=click.Path(dir_okay=False), expose_value=False,
                is_eager=True, callback=_remember_config,
                help="TOML config file (as the global --config)."))
        super().add_command(cmd, name)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx else "flakebot"
            click.echo(f"flakebot: error: {where}: {_one_line(e.format_message())} "
                       f"(see '{where} --help')", err=True)
            sys.exit(EXIT_INPUT)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("flakebot: aborted", err=True)
            sys.exit(130)
        # click returns a ctx.exit() code here when not standalone; a command's
        # own return value is not an exit status.
        sys.exit(rv if isinstance(rv, int) else 0)


def _remember_config(ctx: click.Context, _param, value) -> None:
    if value is not None:
        root = ctx.find_root()
        root.ensure_object(dict)
        root.obj["config_path"] = value


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
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return cfg.with_overrides(given)
    except ConfigError as e:
        # A bad flag value is reported by the flag the user typed, not the config key.
        msg = str(e)
        for key in given:
            if msg.startswith(f"config: {key} "):
                raise InputError(f"{flag_of(key)}{msg[len('config: ') + len(key):]}") from None
        raise


_FLAG_NAMES = {"executor.name": "--executor", "sim.seed": "--seed", "store.db": "--db"}


def flag_of(key: str) -> str:
    """The command-line flag that overrides config ``key`` (bisect.max_runs -> --max-runs)."""
    return _FLAG_NAMES.get(key) or "--" + key.rsplit(".", 1)[-1].replace("_", "-")


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
