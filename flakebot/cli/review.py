"""`flakebot verify` and `flakebot poll` (click commands).

Standalone commands, registered on the main group in cli/app.py with
``main.add_command``; like the others they read the config path from
``ctx.obj["config_path"]``, fail on bad input with one line and exit 2, and
do not import flakebot.cli.app.

- `flakebot verify --patch SHA [--parent SHA] --test T --iterations N`: a
  verify campaign (flakebot.campaigns.verify) run to its answer here. Exit 0 when the
  patch clearly lowers or raises the failure rate, 3 when there is no clear
  difference. A by-hand verify posts nothing (it has no review thread).
- `flakebot poll [--dry-run DIR|-]`: one pass of the Gerrit and GitHub
  pollers (review_service.poll_pass); the verify commands found are run to
  their answer here, the bisect commands open their campaign (for
  `flakebot serve` or `flakebot bisect --resume ID` to drive; `poll` posts
  the answer of a finished one on a later pass). Exit 1 when polling or
  posting failed on any platform (credentials refused, an outage): one
  `error: PLATFORM: ...` line each on stderr; what was not posted stays
  queued (`flakebot status` lists it). The summary counts every delivery of
  the pass. Several polls and `flakebot serve` may run at once on one
  database: each delivery is claimed in the store before it is posted.
"""
from __future__ import annotations

import json
import sys

import click

from flakebot.cli.common import InputError, config_from, executor_options, executor_overrides, fmt_rate, guard

EXIT_OK, EXIT_PLATFORM_FAILED, EXIT_INCONCLUSIVE = 0, 1, 3
HEX = r"[0-9a-fA-F]{7,40}"


@click.command("verify")
@click.option("--patch", required=True, help="The commit to verify (sha or ref).")
@click.option("--parent", help="What to compare it with (default: the patch's first parent).")
@click.option("--test", help="Test to run (default: the first of tests.names).")
@click.option("--iterations", type=click.IntRange(1, 10_000), help="Runs on each side "
              "(default: nightly.iterations).")
@executor_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@guard
def verify(ctx, patch, parent, test, iterations, db, executor, command_, repo, seed, as_json):
    """Does PATCH lower (or raise) TEST's failure rate against its parent?
    Runs TEST N times on each and compares the two rates."""
    from flakebot.model import Commit
    from flakebot.campaigns.verify import VerifyCampaign, VerifyParams, open_verify
    from flakebot.campaigns.wiring import build_executor, check_tests, open_history, open_store, poll_seconds, \
        resolve_commit

    cfg = config_from(ctx, executor_overrides(db, executor, command_, repo, seed))
    test = check_tests([test or cfg.tests.names[0]])[0]
    history = open_history(cfg, required=False)
    patch_sha = resolve_commit(history, patch)
    if parent:
        parent_sha = resolve_commit(history, parent)
    else:
        if history is None:
            raise InputError("--parent is needed without an SPDK clone (pass --repo PATH or --parent SHA)")
        parents = history.commit(patch_sha).parents
        if not parents:
            raise InputError(f"{patch_sha[:10]} has no parent; pass --parent")
        parent_sha = parents[0]
    if parent_sha == patch_sha:
        raise InputError("--patch and --parent are the same commit")
    commit = (lambda s: history.commit(s)) if history is not None else Commit
    ex = build_executor(cfg)
    params = VerifyParams.from_config(cfg, iterations or cfg.nightly.iterations)
    with open_store(cfg) as store:
        cid, resumed = open_verify(store, test, commit(patch_sha), commit(parent_sha), params)
        camp = VerifyCampaign(store, ex, cid, poll_seconds=poll_seconds(cfg), lease_seconds=cfg.store.lease_seconds)
        try:
            with camp.lease:  # another driver: one line naming it, before anything is said or sent
                if resumed and not as_json:
                    click.echo(f"continuing verify campaign {cid}", err=True)
                result = camp.run()
        except KeyboardInterrupt:
            click.echo(f"interrupted; every finished run is stored. Run the same command again to continue "
                       f"(campaign {cid}).", err=True)
            raise SystemExit(130)
    if history is not None:
        history.close()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_verify_result(result)
    sys.exit(EXIT_OK if result.get("verdict") in ("lowers", "raises") else EXIT_INCONCLUSIVE)


def print_verify_result(r: dict) -> None:
    from flakebot.report.comments import verify_summary

    click.echo(f"verify {r['test']}: patch {r['patch'][:10]} vs parent {r['parent'][:10]}, "
               f"{r['iterations']} iterations each (campaign {r['campaign_id']})")
    click.echo(verify_summary(r.get("p_lower"), r.get("p_raise")))
    for side in ("parent", "patch"):
        s = r[f"{side}_rates"]
        click.echo(f"  {side:6}: " + ", ".join(
            f"{name} {fmt_rate(s[k])}" for k, name in (("timeout", "timeouts"), ("near_miss", "near misses"),
                                                   ("fail", "other failures"), ("failure", "any failure"))))
    click.echo(f"{r['runs']} runs ({r['infra_runs']} infra), {r['builds']} builds on {len(r['hosts'])} hosts")


@click.command("poll")
@click.option("--dry-run", "dry_run", metavar="DIR|-", help="Write the answers to DIR (one file each) or "
              "to stdout (-) instead of posting them; the stored cursors are not advanced.")
@executor_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@guard
def poll(ctx, dry_run, db, executor, command_, repo, seed, as_json):
    """One pass of the review-comment pollers: /flakebot commands on Gerrit
    and GitHub start their campaigns; verify commands are run and answered."""
    from flakebot.service import review as review_service
    from flakebot.reporters import outbox
    from flakebot.campaigns.wiring import build_executor, open_history, open_store, poll_seconds

    cfg = config_from(ctx, executor_overrides(db, executor, command_, repo, seed))
    clients = review_service.clients_from_config(cfg)
    if not clients:
        raise InputError("neither Gerrit (gerrit.url, gerrit.user and its password variable) nor GitHub "
                         "(the github.token_env variable) is configured: nothing to poll")
    if dry_run is not None:
        reporters = outbox.reporters_from_config(cfg, dry_run=dry_run)
        if dry_run == "-" and as_json:
            from flakebot.reporters.dryrun import dryrun_reporters
            reporters = dryrun_reporters(None, stream=sys.stderr)
        comments = review_service.MemoryComments()
    else:
        reporters = outbox.reporters_from_config(cfg)
        clients = review_service.clients_of(reporters) or clients
        comments = None
    history = open_history(cfg, required=False)
    ex = build_executor(cfg)
    try:
        with open_store(cfg) as store:
            rep = review_service.poll_pass(cfg, store, history, clients=clients, reporters=reporters,
                                           save_cursors=dry_run is None, executor=ex,
                                           poll_seconds=poll_seconds(cfg), comment_store=comments)
    finally:
        if history is not None:
            history.close()
    data = rep.as_json()
    f = data["flush"] or {}
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(f"polled: {', '.join(data['polled']) or 'nothing'}")
        for c in data["commands"]:
            click.echo(f"  {c['action']} {c['test']} ({c['key']}): campaign {c['campaign_id']}"
                       + ("" if c["started"] else " (started before)"))
        for r in data["refusals"]:
            click.echo(f"  refused {r['key']}: {r['reason']}")
        click.echo(f"answers posted {len(f.get('posted', []))}, still queued {len(f.get('pending', []))}, "
                   f"failed {len(f.get('failed', []))}"
                   + (f", found already posted {len(f['found'])}" if f.get("found") else "")
                   + (f", being posted by another process {len(f['busy'])}" if f.get("busy") else ""))
    if rep.failed:
        # One line per failed platform; the queued deliveries wait for the next pass (`flakebot status`).
        for p, e in {**data["delivery_errors"], **data["errors"]}.items():
            click.echo(f"error: {p}: {e}", err=True)
        sys.exit(EXIT_PLATFORM_FAILED)


COMMANDS = (verify, poll)
