"""`flakebot report`: what the store knows, in the terminal or as one HTML file.

A standalone click command; `flakebot/cli.py` registers it with
``main.add_command(report)``. It does not import `flakebot.cli` (no import
cycle): errors follow the same convention, one line on stderr and exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click
from rich.console import Console

from flakebot.cliutil import Fail, guard
from flakebot.config import load_config

@click.command("report")
@click.option("--test", help="Only this test.")
@click.option("--since", metavar="DATE", help="Only runs recorded (and campaigns started) on or after DATE "
              "(2024-05-01 or 2024-05-01T12:00, UTC unless an offset is given).")
@click.option("--campaign", "campaign_id", type=int, metavar="ID",
              help="One campaign: its range in first-parent order, its posterior and where its runs went.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write one self-contained HTML page to FILE (and print its path) instead of tables.")
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite database file.")
@click.pass_context
@guard
def report(ctx: click.Context, test: Optional[str], since: Optional[str], campaign_id: Optional[int],
           html_path: Optional[str], db: Optional[str]) -> None:
    """Runs by outcome and shutdown waits against the limit, per test and
    commit, and the campaigns with their verdicts."""
    from flakebot.config import default_db_path
    from flakebot.report.data import collect, parse_since
    from flakebot.report.html import write_report
    from flakebot.report.terminal import print_report
    from flakebot.store import Store

    cfg = load_config((ctx.obj or {}).get("config_path"))
    if db:
        cfg = cfg.with_overrides({"store.db": db})
    parse_since(since)  # bad dates stop here, before anything is opened
    path = Path(cfg.store.db) if cfg.store.db else default_db_path()
    if not path.is_file():
        raise Fail(f"no database at {path} (run some tests first, or pass --db)")
    store = Store(path)
    try:
        if html_path:
            out = write_report(store, html_path, test=test, since=since, campaign_id=campaign_id,
                               slow_threshold_s=None if campaign_id else cfg.tests.slow_threshold_s)
            click.echo(str(out.resolve()))
            return
        data = collect(store, test=test, since=since, campaign_id=campaign_id,
                       slow_threshold_s=None if campaign_id else cfg.tests.slow_threshold_s)
        # Piped or captured output gets room for the wide tables; a terminal keeps its width.
        print_report(data, Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200))
    finally:
        store.close()
