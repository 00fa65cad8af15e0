"""`flakebot report`: what the store knows, in the terminal or as one HTML file.

A standalone click command; `flakebot/cli/app.py` registers it with
``main.add_command(report)``. It does not import `flakebot.cli.app` (no import
cycle): errors follow the same convention, one line on stderr and exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click
from rich.console import Console

from flakebot.cli.common import Fail, guard
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
    from flakebot.report.data import collect, parse_since
    from flakebot.report.html import write_report
    from flakebot.report.terminal import print_report
    from flakebot.campaigns.wiring import open_existing_store

    cfg = load_config((ctx.obj or {}).get("config_path"))
    if db:
        cfg = cfg.with_overrides({"store.db": db})
    parse_since(since)  # bad dates stop here, before anything is opened
    if html_path:
        parent = Path(html_path).resolve().parent
        if not parent.is_dir():
            raise Fail(f"cannot write {html_path}: no directory {parent}")
    store = open_existing_store(cfg)
    try:
        if html_path:
            try:
                out = write_report(store, html_path, test=test, since=since, campaign_id=campaign_id,
                                   slow_threshold_s=None if campaign_id else cfg.tests.slow_threshold_s)
            except OSError as e:  # name the file asked for, not the temporary file beside it
                raise Fail(f"cannot write {html_path}: {e.strerror or e}") from None
            click.echo(str(out.resolve()))
            return
        data = collect(store, test=test, since=since, campaign_id=campaign_id,
                       slow_threshold_s=None if campaign_id else cfg.tests.slow_threshold_s)
        # The terminal's width (or COLUMNS; 80 when piped): the tables fit it.
        print_report(data, Console(file=sys.stdout))
    finally:
        store.close()
