"""`flakebot doctor`: can this host test a commit? (flakebot/executors/hostcheck.py; the
checks are jobs/host-checks.sh's). Exit 0: it can; 1: it cannot (the table says
what to fix); 2: bad input. Does not import flakebot.cli.app."""
from __future__ import annotations

from typing import Optional

import click
from rich.console import Console

from flakebot.cli.common import InputError, config_from, guard
from flakebot.executors.hostcheck import run_checks, table
from flakebot.campaigns.wiring import check_tests


@click.command("doctor")
@click.option("--commit", help="Check against this commit's tree (default: the checkout as it is; never changed).")
@click.option("--spdk-dir", type=click.Path(file_okay=False),
              help="SPDK clone (default: executor.spdk_dir, then spdk.repo).")
@click.option("--test", "tests", multiple=True, help="Test to check for (repeatable; default: config tests.names).")
@click.pass_context
@guard
def doctor(ctx: click.Context, commit: Optional[str], spdk_dir: Optional[str], tests: tuple[str, ...]) -> None:
    """Can this host test COMMIT? Root, KVM, hugepages, the QEMU its tree needs, the image, ..."""
    cfg = config_from(ctx, {})
    tests = check_tests(tests or cfg.tests.names)
    where = spdk_dir or cfg.spdk_dir()
    if not where:
        raise InputError("doctor: no SPDK clone: give --spdk-dir, or set executor.spdk_dir or spdk.repo")
    checks = run_checks(where, tests, commit)
    missing = [c for c in checks if not c.ok]
    title = f"{commit or 'the checkout'} in {where}: " + (
        "this host can test it" if not missing else f"{len(missing)} missing, cannot test it here")
    Console(soft_wrap=False).print(table(checks, title))
    ctx.exit(1 if missing else 0)
