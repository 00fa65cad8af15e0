"""`flakebot nightly`, `flakebot serve`, `flakebot status` (click commands).

Standalone commands, registered on the main group in cli/app.py with
``main.add_command``; like the other commands they read the config path from
``ctx.obj["config_path"]`` (set by the group's --config). This module imports
flakebot.cli.app only inside functions, so either module may be imported first.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from datetime import datetime, timezone
from typing import Optional

import click
from rich.console import Console

from flakebot.cli.common import InputError, config_from, executor_options, executor_overrides, guard
from flakebot.model import fmt_outcomes
from flakebot.report.table import Col, fitted


def _guard(fn):
    """common.guard, and a second service on the same database is bad input too."""
    @functools.wraps(fn)
    @guard
    def wrapper(*a, **kw):
        from flakebot.service.daemon import ServiceLocked
        try:
            return fn(*a, **kw)
        except ServiceLocked as e:
            raise InputError(str(e)) from None

    return wrapper


def _common(fn, run_options: bool = True):
    if run_options:
        return executor_options(fn)
    opts = [click.option("--db", type=click.Path(dir_okay=False), help="SQLite database file."),
            click.option("--repo", type=click.Path(file_okay=False), help="Local SPDK git clone.")]
    for o in reversed(opts):
        fn = o(fn)
    return fn


# --------------------------------------------------------------------- nightly

@click.command()
@_common
@click.option("--no-fetch", is_flag=True, help="Do not fetch spdk.remote first.")
@click.option("--drive", is_flag=True, help="Also drive the campaigns this cycle opens to their verdicts "
              "(otherwise `flakebot serve` or `flakebot bisect --resume ID` does).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@_guard
def nightly(ctx, db, repo, executor, command_, seed, no_fetch, drive, as_json):
    """One nightly cycle now: fetch, run the tests at the branch tip, detect a
    rise or fall, open a bisection on a rise."""
    from flakebot.campaigns.bisect import BisectCampaign
    from flakebot.service.nightly import describe, nightly_cycle
    from flakebot.campaigns.wiring import build_executor, open_history, open_store, poll_seconds

    cfg = config_from(ctx, executor_overrides(db, executor, command_, repo, seed))
    history = open_history(cfg)
    ex = build_executor(cfg)
    with open_store(cfg) as store:
        result = nightly_cycle(cfg, store, history, ex, fetch=not no_fetch, quiet=as_json)
        if drive:
            result["campaigns"] = []
            for cid in sorted({t["campaign_id"] for t in result["tests"]
                               if t["action"] in ("campaign-opened", "campaign-open") and t["campaign_id"]}):
                result["campaigns"].append(BisectCampaign(store, ex, cid, poll_seconds=poll_seconds(cfg),
                                                          lease_seconds=cfg.store.lease_seconds).run())
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"nightly at {result['tip'][:10]} (fetch: {result['fetch']})")
    for t in result["tests"]:
        click.echo(f"  {t['test']}: {t['runs']} runs: {describe(t)}")
    for r in result.get("campaigns", []):
        culprit = (r.get("culprit") or "")[:10]
        click.echo(f"  campaign {r['campaign_id']}: {r['verdict']} {culprit} "
                   f"(confidence {r['confidence']:.3f}, {r['runs']} runs)")


# --------------------------------------------------------------------- serve

@click.command()
@_common
@click.option("--verbose", "-v", is_flag=True, help="Log every step (default: info).")
@click.pass_context
@_guard
def serve(ctx, db, repo, executor, command_, seed, verbose):
    """Run the service: the nightly cycle on its cron, the campaign driver and
    the review-comment poller. One per database; SIGTERM stops it cleanly."""
    from flakebot.service.daemon import Service
    from flakebot.campaigns.wiring import open_history

    cfg = config_from(ctx, executor_overrides(db, executor, command_, repo, seed))
    open_history(cfg).close()  # no clone, no service: say so now, not at 02:30
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # -v is for flakebot's own steps: the libraries' debug chatter (tzlocal, GitPython's
    # every git call, urllib3's connections) stays at warnings either way.
    for noisy in ("tzlocal", "git", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    sys.exit(Service(cfg).serve())


# --------------------------------------------------------------------- status

def status_data(cfg, now: Optional[datetime] = None) -> dict:
    """What `flakebot status --json` prints."""
    from flakebot.analysis.posterior import posterior
    from flakebot.campaigns.bisect import BisectCampaign
    from flakebot.service.nightly import events
    from flakebot.service.daemon import InstanceLock, lock_path, next_fire_times, nightly_trigger, \
        DRIVER_SECONDS
    from flakebot.campaigns.wiring import open_existing_store, open_history

    now = now or datetime.now(timezone.utc)
    history = open_history(cfg, required=False)
    out: dict = {"database": str(cfg.db_path()), "campaigns": [], "nightly": [], "events": []}
    store = open_existing_store(cfg)
    out["service"] = "running" if InstanceLock.is_held(lock_path(cfg)) else "not running"
    with store:
        for row in store.open_campaigns():
            item = {"id": row["id"], "kind": row["kind"], "test": row["test"], "good": row["good"],
                    "bad": row["bad"], "created_at": row["created_at"], "driver": _driver(store, row["id"])}
            if row["kind"] == "bisect":
                camp = BisectCampaign(store, None, row["id"])
                s = camp.settings()
                counts = camp.counts()
                post = posterior(counts, s.prior, list(s.commit_weights) if s.commit_weights else None,
                                 bins=s.bins)
                (top, p), = post.top(1)
                runs = sum(map(sum, counts))
                host_minutes, _ = camp.spent()
                c = store.get_commit(camp.shas[top])
                item.update(commits=len(camp.shas) - 1, runs=runs, builds=len(store.builds(row["id"])),
                            pending=len(store.pending_builds(row["id"])), host_minutes=round(host_minutes, 1),
                            top={"commit": camp.shas[top], "probability": round(float(p), 6),
                                 "subject": c.subject if c else ""},
                            p_no_change=round(float(post.p_no_change), 6))
            out["campaigns"].append(item)
        latest: dict[str, dict] = {}
        for row in store.nightlies():
            latest[row["test"]] = row
        for test, row in sorted(latest.items()):
            same = [r for r in store.nightlies(test) if r["commit_sha"] == row["commit_sha"]]
            builds = {r["build_id"] for r in same}
            runs = [r for r in store.runs(test=test, commits=[row["commit_sha"]]) if r["build_id"] in builds]
            outcomes: dict[str, int] = {}
            for r in runs:
                outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
            ev = events(store, test)
            out["nightly"].append({"test": test, "commit": row["commit_sha"], "at": row["started_at"],
                                   "runs": len(runs), "outcomes": outcomes,
                                   "last_event": _event_brief(ev[-1]) if ev else None})
        out["events"] = [_event_brief(e) for e in events(store)[-10:]]
        out["finished"] = finished_campaigns(store)
        out["detector"] = detector_status(store, cfg)
        out["deliveries"] = pending_deliveries(store)
    n = cfg.nightly
    out["schedule"] = {"cron": n.cron, "timezone": n.timezone,
                       "nightly": [t.isoformat() for t in next_fire_times(nightly_trigger(cfg), 3, now)],
                       "campaign_driver_every_s": DRIVER_SECONDS,
                       "review_poll_every_min": cfg.commands.poll_minutes}
    if history is not None:
        history.close()
    return out


def _driver(store, campaign_id: int) -> Optional[dict]:
    """Who holds the campaign's lease (lease.py), expired or not; None if nobody."""
    from flakebot.campaigns.lease import holder

    h = holder(store, campaign_id)
    return None if h is None else {"host": h.host, "pid": h.pid, "since": h.since, "expires": h.expires}


def detector_status(store, cfg) -> dict:
    """The nightly detector per test: each class's CUSUM evidence against the
    threshold, and what tonight's runs would take to call a rise or a fall."""
    from flakebot.service.nightly import detect_settings, detect_test

    s = detect_settings(cfg)
    runs = cfg.nightly.iterations
    out = {"threshold": round(s.threshold, 3), "false_alarms_per_year": s.false_alarms_per_year,
           "min_effect": s.min_effect, "runs_a_night": runs, "tests": []}
    for test in sorted({r["test"] for r in store.nightlies()}):
        det, last = detect_test(store, test, cfg)
        trig = det.triggers(runs)
        classes = {c: {**v, **trig[c]} for c, v in det.state().items()}
        out["tests"].append({"test": test, "nights": len(det.nights), "segment_start": last.segment_start,
                             "last_verdict": last.verdict, "classes": classes})
    return out


def _print_detector(d: dict) -> None:
    """One table per test: a class per row, every number in its own column, so
    the section fits 80 columns (report/table.py)."""
    if not d["tests"]:
        click.echo("detector: no nights yet")
        return
    n, eff = d["runs_a_night"], d["min_effect"]
    console = Console(soft_wrap=True)
    click.echo(f"detector: CUSUM per class, alarm at h = {d['threshold']:.2f}\n"
               f"  ({d['false_alarms_per_year']:g} false alarms per test per year, {n} runs a night);\n"
               f"  rise, fall: evidence so far; at: tonight's count (or clean nights) to call it;\n"
               f"  +{eff:g}, -{eff:g}: nights a change of that size takes to call")
    cols = [Col("class", "left"), Col("rate"), Col("rise"), Col("at"), Col(f"+{eff:g}"),
            Col("fall"), Col("at "), Col(f"-{eff:g}")]
    for t in d["tests"]:
        rows = []
        for c, v in t["classes"].items():
            falls = v["fall_clean_nights"] is not None
            rows.append([
                _CLASS_WORDS.get(c, c), f"{v['rate']:.3f}", f"{v['rise']:.2f}",
                _at(">=", v["rise_at_least"], n) if v["rise_delay_nights"] is not None else "too few runs",
                _nights(v["rise_delay_nights"]),
                f"{v['fall']:.2f}" if falls else "-",
                (_at("<=", v["fall_at_most"], n) if v["fall_at_most"] is not None
                 else f"{v['fall_clean_nights']} clean") if falls else "-",
                _nights(v["fall_delay_nights"]) if falls else "-",
            ])
        since = (t["segment_start"] or "")[:10]
        console.print(fitted(f"{t['test']}: {t['nights']} nights" + (f", segment since {since}" if since else ""),
                             cols, rows, console.width))


_CLASS_WORDS = {"near": "near miss"}  # the detector's class names, in the words of the tables


def _at(op: str, k, n: int) -> str:
    return "no" if k is None else f"{op} {k}/{n}"


def _nights(x) -> str:
    return "-" if x is None else f"~{x:.0f}"


def finished_campaigns(store, limit: int = 5) -> list[dict]:
    """The newest finished campaigns with their verdicts (what happened lately)."""
    out = []
    for row in store.campaigns():
        if row["status"] == "open":
            continue
        c = store.get_commit(row["culprit"]) if row.get("culprit") else None
        out.append({"id": row["id"], "kind": row["kind"], "test": row["test"], "good": row["good"],
                    "bad": row["bad"], "status": row["status"], "verdict": row["verdict"],
                    "culprit": row.get("culprit"), "subject": c.subject if c else "",
                    "confidence": row.get("confidence"), "at": row.get("updated_at")})
        if len(out) == limit:
            break
    return out


def pending_deliveries(store, limit: int = 20) -> dict:
    """Comments not posted (yet): queued ones (retried on every pass) and failed
    ones (given up), each with its last error; the oldest ``limit`` of each."""
    out: dict = {}
    pending = store.queued_comments(include_failed=True)  # one query for both lists
    for status in ("queued", "failed"):
        rows = [r for r in pending if r["status"] == status]
        out[status] = len(rows)
        out[f"{status}_items"] = [{"key": r["key"], "target": r["target"], "attempts": r["attempts"],
                                   "last_error": r["last_error"], "since": r["created_at"],
                                   "claimed_by": r.get("claimed_by"), "claim_until": r.get("claim_until")}
                                  for r in rows[:limit]]
    return out


def _print_deliveries(d: dict) -> None:
    if not d["queued"] and not d["failed"]:
        click.echo("deliveries: none queued or failed")
        return
    click.echo(f"deliveries: {d['queued']} queued, {d['failed']} failed")
    for status in ("queued", "failed"):
        for r in d[f"{status}_items"]:
            click.echo(f"  {status} {r['key']}")
            line = f"    since {_short_time(r['since'])}, {r['attempts']} attempts"
            if r["claimed_by"]:
                line += f", claimed by {r['claimed_by']} until {_short_time(r['claim_until'])}"
            click.echo(line + (f": {r['last_error']}" if r["last_error"] else ""))


def _event_brief(e: dict) -> dict:
    return {"id": e["id"], "kind": e["kind"], "test": e["test"], "before": e["before_sha"], "after": e["after_sha"],
            "tip": e["tip_sha"], "probability": e["probability"], "campaign_id": e["campaign_id"],
            "at": e["created_at"]}


@click.command()
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite database file.")
@click.option("--repo", type=click.Path(file_okay=False), help="Local SPDK git clone.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@_guard
def status(ctx, db, repo, as_json):
    """Open campaigns, queued and failed deliveries, the last nightly results
    per test, the next scheduled runs."""
    cfg = config_from(ctx, {"store.db": db, "spdk.repo": repo})
    data = status_data(cfg)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"service {data['service']}")
    click.echo(f"database {data['database']}")  # a path: the one line that may pass the width
    click.echo("open campaigns:" if data["campaigns"] else "open campaigns: none")
    for c in data["campaigns"]:
        line = f"  {c['id']} {c['kind']} {c['test']} {c['good'][:10]}..{c['bad'][:10]}"
        if "top" in c:
            line += (f" ({c['commits']} commits): {c['runs']} runs, {c['pending']} pending; top "
                     f"{c['top']['commit'][:10]} p={c['top']['probability']:.3f} {c['top']['subject']}")
        if c["driver"]:
            d = c["driver"]
            line += f"; driven by pid {d['pid']} on {d['host']} since {_short_time(d['since'])}"
        click.echo(line)
    _print_finished(data["finished"])
    _print_deliveries(data["deliveries"])
    click.echo("last nightly:" if data["nightly"] else "last nightly: none yet")
    for t in data["nightly"]:
        click.echo(f"  {t['test']} at {t['commit'][:10]} ({_short_time(t['at'])}): {t['runs']} runs "
                   f"({fmt_outcomes(t['outcomes'])})")
        ev = t["last_event"]
        if ev:
            click.echo(f"    last {_EVENT_WORDS.get(ev['kind'], ev['kind'])} {_short_time(ev['at'])}: "
                       f"{ev['before'][:10]}..{ev['after'][:10]} (P={ev['probability']:.3f})"
                       + (f", campaign {ev['campaign_id']}" if ev["campaign_id"] else ""))
    _print_detector(data["detector"])
    s = data["schedule"]
    click.echo(f"next nightly runs ({s['timezone']}): {', '.join(_short_time(t) for t in s['nightly'])}")
    click.echo(f"nightly cron {s['cron']}; campaign driver every {s['campaign_driver_every_s']:g} s; "
               f"review poller every {s['review_poll_every_min']} min")


def _short_time(iso: str) -> str:
    """Minutes are enough in the text (--json has the full times)."""
    return iso[:16].replace("T", " ")


_EVENT_WORDS = {"rise": "rise", "fall": "fall (appears fixed)"}


def _print_finished(rows: list[dict]) -> None:
    click.echo("finished campaigns:" if rows else "finished campaigns: none")
    width = Console().width
    for c in rows:
        click.echo(f"  {c['id']} {c['kind']} {c['test']} {c['good'][:10]}..{c['bad'][:10]}:")
        line = f"    {c['verdict'] or c['status']}"
        if c["confidence"] is not None:
            line += f" (confidence {c['confidence']:.3f})"
        if c["culprit"]:
            line += f" {c['culprit'][:10]}"
            room = width - len(line) - 1
            subject = c["subject"] or ""
            # the subject is the one free text: cut it to the terminal, never a number
            line += " " + (subject if len(subject) <= room else subject[:max(room - 1, 0)] + "…")
        click.echo(line.rstrip())


COMMANDS = (nightly, serve, status)
