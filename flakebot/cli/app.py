"""`flakebot` command line (click). Thin: options -> config -> the layers.

Every command reads the one config (--config / FLAKEBOT_CONFIG / ./flakebot.toml)
and lets a few flags override it. Bad input of any kind ends in one line on
stderr and exit status 2, before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import click
from rich.console import Console
from rich.text import Text

from flakebot.evidence import spdklog
from flakebot.campaigns.batch import run_at
from flakebot.campaigns.bisect import BisectCampaign, BisectParams, Progress as CampaignProgress, open_bisect
from flakebot.cli.common import FlakebotGroup, InputError, config_from, executor_options, executor_overrides, guard
from flakebot.config import load_config
from flakebot.model import OUTCOME_LABEL, OUTCOME_ORDER, fmt_outcomes
from flakebot.report import write_reports
from flakebot.report.table import Col, fitted
from flakebot.campaigns.wiring import (build_executor, check_tests, open_existing_store, open_history, open_store, poll_seconds,
                             resolve_commit)

EXIT_OK, EXIT_INCONCLUSIVE = 0, 3
# soft_wrap: a sentence is never broken by a hard newline at 80 columns when piped
# (tables still lay out for the width).
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)




@click.group(cls=FlakebotGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar=None,
              help="TOML config file (default: $FLAKEBOT_CONFIG, then ./flakebot.toml).")
@click.version_option(package_name="flakebot")
@click.pass_context
def main(ctx: click.Context, config_path: Optional[str]) -> None:
    """Find the commit that made an intermittent CI failure more frequent."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path  # a --config after the subcommand, parsed later, wins


# --------------------------------------------------------------------- run

@main.command()
@click.option("--commit", required=True, help="Commit (sha or ref) to test.")
@click.option("--test", "tests", multiple=True, help="Test name (repeatable; default: config tests.names).")
@click.option("--iterations", type=click.IntRange(1, 10_000), default=10, show_default=True)
@executor_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.pass_context
@guard
def run(ctx, commit, tests, iterations, db, executor, command_, repo, seed, as_json):
    """Run tests at one commit N times, record every run, print the table."""
    cfg = config_from(ctx, executor_overrides(db, executor, command_, repo, seed))
    tests = check_tests(tests or cfg.tests.names)
    history = open_history(cfg, required=False)
    sha = resolve_commit(history, commit)
    ex = build_executor(cfg)
    with open_store(cfg) as store:
        if history is not None:
            store.upsert_commits([history.commit(sha)])
        summary = run_at(store, ex, sha, tests, iterations, slow_threshold_s=cfg.tests.slow_threshold_s,
                         poll_seconds=poll_seconds(cfg), label=f"run {sha[:10]}", quiet=as_json)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_run_table(summary)


def print_run_table(summary: dict, title: Optional[str] = None) -> None:
    sha = summary["commit"]
    cols = [Col("test", "left"), Col("runs")] + [Col(OUTCOME_LABEL[o]) for o in OUTCOME_ORDER]
    rows = [[pt["test"], str(pt["runs"]), *[str(pt["outcomes"].get(o, 0)) for o in OUTCOME_ORDER]]
            for pt in summary["tests"]]
    out.print(fitted(title or f"{sha[:10]}: runs by outcome", cols, rows, out.width))
    for pt in summary["tests"]:
        print_waits(f"{pt['test']}: vm_shutdown_all waits (s) against the limit", pt["waits"])


def print_waits(title: str, waits: list[dict], side: bool = False) -> None:
    """p50/p95/max of the shutdown waits per call site (and side of the culprit)."""
    counted = all("timeouts" in ws for ws in waits)
    cols = ([Col("side", "left")] if side else []) + [Col("call site", "left")] + [
        Col(c) for c in ("n", "p50", "p95", "max", "limit") + (("timed out",) if counted else ())]
    rows = [([ws["side"]] if side else []) + [ws["call_site"], str(ws["n"]), _s(ws["p50"]), _s(ws["p95"]),
                                              _s(ws["max"], ws["limit_s"]), str(ws["limit_s"])]
            + ([str(ws["timeouts"])] if counted else []) for ws in waits]
    out.print(fitted(title, cols, rows, out.width))


def _s(v: Optional[float], limit: Optional[float] = None) -> Text:
    if v is None:
        return Text("-")
    style = "bold red" if limit and v >= limit else "yellow" if limit and v >= 0.66 * limit else ""
    return Text(f"{v:.1f}", style=style)


# --------------------------------------------------------------- import-log

@main.command("import-log")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--commit", required=True, help="Commit the logs were produced at.")
@click.option("--test", "tests", multiple=True, help="Only these tests (default: every test found).")
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite database file.")
@click.option("--repo", type=click.Path(file_okay=False), help="Local SPDK git clone (to resolve --commit).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a line per file.")
@click.pass_context
@guard
def import_log(ctx, files, commit, tests, db, repo, as_json):
    """Ingest existing CI console logs (e.g. build.log of past SPDK CI runs)."""
    cfg = config_from(ctx, {"store.db": db, "spdk.repo": repo})
    wanted = set(check_tests(tests)) if tests else None
    sha = resolve_commit(open_history(cfg, required=False), commit)
    parsed = []  # parse everything first: one bad file must not leave the others half-imported
    for f in files:
        try:
            digest = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            runs = [r for r in spdklog.parse_file(f, slow_threshold_s=cfg.tests.slow_threshold_s)
                    if wanted is None or r.test in wanted]
        except OSError as e:
            raise InputError(f"cannot read {f}: {e.strerror or e}") from None
        if not runs:
            what = "runs of " + ", ".join(sorted(wanted)) if wanted else "test runs"
            raise InputError(f"{f}: no {what} found in the log")
        parsed.append((f, digest.hexdigest(), runs))
    report = []
    with open_store(cfg) as store:
        for f, digest, runs in parsed:
            build_id, added = store.import_build("import", digest, sha, runs, url=Path(f).resolve().as_uri())
            counts: dict[str, int] = {}
            for r in runs:
                counts[r.outcome.value] = counts.get(r.outcome.value, 0) + 1
            report.append({"file": f, "build_id": build_id, "runs": len(runs), "added": added, "outcomes": counts})
    if as_json:
        click.echo(json.dumps({"commit": sha, "files": report}, indent=2))
    else:
        for r in report:
            note = "" if r["added"] else " (already imported; nothing added)"
            out.print(f"{r['file']}: {r['runs']} runs ({fmt_outcomes(r['outcomes'])}){note}", highlight=False)


# ------------------------------------------------------------------- bisect

@main.command()
@click.option("--good", help="Last commit believed good (older end). Required unless --resume/--abort.")
@click.option("--bad", help="Commit where the failure is more frequent (newer end). Required unless "
              "--resume/--abort.")
@click.option("--test", help="Test to bisect. Required unless --resume/--abort.")
@click.option("--confidence", type=float, help="Posterior probability to stop at (default bisect.confidence).")
@click.option("--max-runs", type=int, help="Budget: most test runs (default bisect.max_runs).")
@click.option("--max-host-hours", type=float, help="Budget: most host hours; 0 = no limit.")
@click.option("--max-builds", type=int, help="Budget: most builds, failed ones included "
              "(default bisect.max_builds); 0 = no limit.")
@click.option("--resume", "resume_id", type=int, help="Continue campaign ID.")
@click.option("--abort", "abort_id", type=int, help="Stop campaign ID: cancel its builds still running, close it.")
@executor_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.pass_context
@guard
def bisect(ctx, good, bad, test, confidence, max_runs, max_host_hours, max_builds, resume_id, abort_id,
           db, executor, command_, repo, seed, as_json):
    """Find the commit in GOOD..BAD that raised TEST's failure rate.

    Start one with --good, --bad and --test; continue one with --resume ID."""
    if abort_id is not None:
        cfg = config_from(ctx, executor_overrides(db, executor, command_, repo, seed))
        with open_existing_store(cfg) as store:
            BisectCampaign(store, build_executor(cfg), abort_id, lease_seconds=cfg.store.lease_seconds).abort()
        out.print(f"campaign {abort_id} aborted; its finished runs stay stored")
        return
    for name, v in (("--max-runs", max_runs), ("--max-host-hours", max_host_hours), ("--max-builds", max_builds)):
        if v is not None and v < 0:
            raise InputError(f"{name} must not be negative (got {v})")
    if max_runs == 0:
        raise InputError("--max-runs must be at least 1")
    cfg = config_from(ctx, {**executor_overrides(db, executor, command_, repo, seed),
                            "bisect.confidence": confidence, "bisect.max_runs": max_runs,
                            "bisect.max_host_hours": max_host_hours, "bisect.max_builds": max_builds})
    history = open_history(cfg, required=resume_id is None)
    if resume_id is None:
        if not (good and bad and test):
            raise InputError("--good, --bad and --test are required (or --resume ID)")
        check_tests([test])
        good_c = history.commit(history.resolve(good))
        commits = history.first_parent_range(good, bad)
    ex = build_executor(cfg)
    with (open_existing_store if resume_id is not None else open_store)(cfg) as store:
        if resume_id is not None:
            row = store.get_campaign(resume_id)
            if row["kind"] != "bisect":
                raise InputError(f"campaign {resume_id} is not a bisection")
            cid, resumed = resume_id, True
        else:
            cid, resumed = open_bisect(store, test, good_c, commits, BisectParams.from_config(cfg),
                                       is_ancestor=history.is_ancestor)
        result = drive_bisect(store, ex, cid, history, cfg, quiet=as_json, resumed=resumed)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_bisect_result(result)
    sys.exit(EXIT_INCONCLUSIVE if result["verdict"] == "inconclusive" else EXIT_OK)


def drive_bisect(store, ex, cid: int, history, cfg, *, quiet: bool, resumed: bool = False) -> dict:
    with err.status("bisecting…", spinner="dots") if not quiet and err.is_terminal else _Null() as status:
        def show(p: CampaignProgress) -> None:
            top = f"{p.top_commit[:10]} p={p.top_probability:.3f}" if p.top_commit else "-"
            line = (f"campaign {p.campaign_id}: {p.runs} runs, {p.builds} builds, {p.in_flight} in flight; "
                    f"top candidate {top}; P(no change)={p.p_no_change:.3f}")
            if status is not None:
                status.update(line)
            elif not quiet:
                err.print(line, highlight=False)
        camp = BisectCampaign(store, ex, cid, poll_seconds=poll_seconds(cfg),
                              on_progress=show if (not quiet and err.is_terminal) else lambda p: None,
                              lease_seconds=cfg.store.lease_seconds)
        try:
            with camp.lease:  # another driver: one line naming it, before anything is said or sent
                if resumed and not quiet:
                    err.print(f"continuing campaign {cid}")
                return camp.run()
        except KeyboardInterrupt:
            if not hasattr(ex, "reattach") or getattr(ex, "stop_on_interrupt", False):
                # A local run holds this host's VMs: stop it rather than leave it
                # unwatched (--resume runs it again; a killed flakebot reattaches).
                camp.dispatcher.cancel_all()
            err.print(f"interrupted; every finished run is stored. Continue with: flakebot bisect --resume {cid}")
            raise SystemExit(130)


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def print_bisect_result(r: dict) -> None:
    verdict = r["verdict"]
    if verdict == "culprit":
        info = r.get("culprit_info") or {}
        out.print(f"[bold]culprit[/] {r['culprit'][:10]} (confidence {r['confidence']:.3f})", highlight=False)
        out.print(f"  {info.get('subject', '')}", highlight=False)
        rates = r.get("rates")
        if rates:
            # One row per class and side: four narrow columns fit 80 columns, where a
            # class per column folded every interval onto a second line.
            cols = [Col("", "left"), Col("side", "left"), Col("k/n"), Col("estimate"), Col("90% interval")]
            rows = []
            for k, name in (("timeout", "timeouts"), ("near_miss", "near misses"), ("fail", "other failures")):
                for side in ("before", "after"):
                    x = rates[side][k]
                    rows.append([name if side == "before" else "", side, f"{x['k']}/{x['n']}",
                                 f"{x['rate']:.3f}", f"[{x['lo']:.3f}, {x['hi']:.3f}]"])
            out.print(fitted("failure rates on each side of the culprit", cols, rows, out.width))
    elif verdict == "culprit-range":
        rg = r["culprit_range"]
        out.print(f"[bold]culprit range[/] {rg['first'][:10]}..{rg['last'][:10]} "
                  f"(confidence {r['confidence']:.3f}): one of these {len(rg['commits'])} commits; all but the "
                  f"last cannot be tested here", highlight=False)
        for c in rg["commits"]:
            out.print(f"  {c['commit'][:10]} {c.get('subject', '')}", highlight=False)
    elif verdict == "no-regression":
        out.print(f"[bold]no regression[/] in this range (confidence {r['confidence']:.3f})")
    else:
        out.print(f"[bold]inconclusive[/]: {r.get('reason') or 'budget spent'}; top candidates:", highlight=False)
        for c in r["candidates"]:
            out.print(f"  {c['commit'][:10]} {c['probability']:.3f} {c.get('subject', '')}", highlight=False)
        for rg in r.get("candidate_ranges") or []:
            out.print(f"  range {rg['first'][:10]}..{rg['last'][:10]} ({len(rg['commits'])} commits, all but the "
                      f"last untestable) {rg['probability']:.3f}", highlight=False)
    if r.get("untestable"):
        out.print(f"{len(r['untestable'])} commits cannot be tested here (skipped):")
        for u in r["untestable"][:20]:
            n = u["requests"]
            out.print(f"  {u['commit'][:10]} {u['reason']} ({n} request{'' if n == 1 else 's'})", highlight=False)
        if len(r["untestable"]) > 20:
            out.print(f"  ... and {len(r['untestable']) - 20} more (--json lists them all)")
    out.print(f"{r['runs']} runs ({r['infra_runs']} infra), {r['builds']} builds, "
              f"{r['host_minutes'] / 60:.1f} host-hours on {len(r['hosts'])} hosts", highlight=False)
    if r.get("waits"):
        print_waits("vm_shutdown_all waits (s)", r["waits"], side=True)


# --------------------------------------------------------------------- demo

DEMO_COMMITS, DEMO_TIP, DEMO_FIX = 220, 199, 205
DEMO_FIRST_NIGHT = datetime(2024, 6, 1, 2, 30, tzinfo=timezone.utc)

@main.command()
@click.option("--workdir", type=click.Path(file_okay=False), help="Where to build the demo repo and database "
              "(default: a new temporary directory).")
@click.option("--iterations", type=click.IntRange(1, 1000), default=40, show_default=True,
              help="Runs at the tip and at the old commit.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the demo repo, the sim hosts and the search: the same seed gives the same demo.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the story.")
@click.pass_context
@guard
def demo(ctx, workdir, iterations, seed, as_json):
    """The whole chain on simulated hosts: an SPDK-like repo where one commit
    brings back the #3322 hang; runs at an old commit and at the tip; nightly
    cycles along the history that notice the rise and bisect to the culprit,
    then, once the fix lands upstream, notice the fall; the HTML report."""
    from flakebot.demo.repo import build_demo_repo
    from flakebot.service.nightly import demo_nights
    from flakebot.reporters.outbox import deliver_result, reporters_from_config

    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="flakebot-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    repo_dir = base / "spdk"
    if repo_dir.exists() and any(repo_dir.iterdir()):
        raise InputError(f"{repo_dir} already exists; pass an empty --workdir")
    # 220 commits: the culprit at 137, the branch tip at 199 when the demo
    # starts; the fix lands upstream at 205, for the later nights to find.
    demo_repo = build_demo_repo(repo_dir, n_commits=DEMO_COMMITS, culprit_index=137, fix_index=DEMO_FIX, seed=seed)
    tip_sha = demo_repo.shas[DEMO_TIP]
    cfg = load_config(ctx.obj.get("config_path")).with_overrides(
        {"store.db": str(base / "flakebot.db"), "spdk.repo": str(repo_dir), "executor.name": "sim",
         "sim.seed": seed, "tests.names": ["vfio_user_nvme_restart_vm"]})
    test = "vfio_user_nvme_restart_vm"
    history = open_history(cfg)
    history.repo.git.update_ref(f"refs/heads/{cfg.spdk.branch}", tip_sha)
    ex = build_executor(cfg)
    say = (lambda *a, **k: None) if as_json else out.print
    say(f"demo SPDK repo: {repo_dir} ({DEMO_COMMITS} commits; the branch tip starts at commit {DEMO_TIP}, "
        f"{tip_sha[:10]}, and moves on to commit {DEMO_COMMITS - 1} during the nights); "
        f"database: {base / 'flakebot.db'}")
    with open_store(cfg) as store:
        store.upsert_commits([history.commit(demo_repo.good), history.commit(tip_sha)])
        old, tip = (run_at(store, ex, sha, [test], iterations, slow_threshold_s=cfg.tests.slow_threshold_s,
                           poll_seconds=poll_seconds(cfg), label=label, quiet=as_json)
                    for sha, label in ((demo_repo.good, "old commit"), (tip_sha, "tip")))
        if not as_json:
            print_run_table(old, f"old commit {demo_repo.good[:10]}")
            print_run_table(tip, f"tip {tip_sha[:10]}")
            say(f"nightly cycles along the history, every 10 commits from the old commit, then at the tip until "
                f"the fall is seen; the fix lands upstream at commit {DEMO_FIX}:")
        # A fixed first night: run ids carry the night's date, and the sim hosts
        # are seeded by run id, so the same seed gives the same demo.
        chain = demo_nights(cfg, store, history, ex, demo_repo, now=DEMO_FIRST_NIGHT,
                            say=lambda line: say(line, highlight=False))
        campaigns = chain["campaigns"]
        result = campaigns[0] if campaigns else None
        report = write_reports(store, base / "reports", base_url=cfg.report.base_url or None,
                               campaign_id=result["campaign_id"] if result else None)
        comments = base / "comments"
        if result:
            # What the bot would post on Gerrit and GitHub, written to files instead.
            deliver_result(store, result, reporters_from_config(cfg, dry_run=str(comments)),
                           tracking_issues=cfg.github.tracking_issues)
    right = bool(result) and result["culprit"] == demo_repo.culprit
    fall = next((e for e in chain["events"] if e["kind"] == "fall"), None)
    if as_json:
        click.echo(json.dumps({"workdir": str(base), "old": old, "tip": tip, "bisect": result,
                               "events": chain["events"], "true_culprit": demo_repo.culprit, "found": right,
                               "true_fix": demo_repo.fix, "report": str(report.path),
                               "report_index": str(report.path.parent / "index.html"),
                               "comments": sorted(str(p) for p in comments.glob("*"))}, indent=2))
        return
    if result:
        print_bisect_result(result)
        say(f"reproduce: {result['command']} --repo {repo_dir} --db {base / 'flakebot.db'}", highlight=False)
    say(f"the demo repo's culprit is {demo_repo.culprit[:10]} ({demo_repo.subjects.get(demo_repo.culprit, '')}): "
        + ("found" if right else "[bold red]NOT found[/]"), highlight=False)
    if fall:
        say(f"appears fixed: the fall is in {fall['before_sha'][:10]}..{fall['after_sha'][:10]} "
            f"(P={fall['probability']:.3f}); the fix is {demo_repo.fix[:10]} (commit {DEMO_FIX})", highlight=False)
    say(f"comments the bot would post (dry run): {comments}", highlight=False)
    say(f"report: {report.path.parent / 'index.html'} (every test and campaign); the bisection: {report.path}",
        highlight=False)


# Commands kept in their own modules (they do not import this one).
from flakebot.cli.report import report  # noqa: E402
from flakebot.cli.service import nightly, serve, status  # noqa: E402
from flakebot.cli.review import poll, verify  # noqa: E402
from flakebot.cli.doctor import doctor  # noqa: E402

for _command in (report, nightly, serve, status, verify, poll, doctor):
    main.add_command(_command)
