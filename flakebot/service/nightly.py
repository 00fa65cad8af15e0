"""The nightly cycle: fetch, run at the branch tip, store, detect, act.

    result = nightly_cycle(cfg, store, history, executor)

1. Fetch `spdk.remote` into the clone. A clone without that remote (the demo
   repository, a hand-made clone) is not an error: the fetch is *skipped* and
   the local `spdk.branch` is tested (the result says so in "fetch").
   A failing fetch (network) is reported and the last fetched tip is used.
2. The tip: `<remote>/<branch>` when the remote exists, else `<branch>`.
3. Every configured test runs `nightly.iterations` times at the tip through
   the executor (the same `run_at` as `flakebot run`); each build is
   recorded as a nightly (`Store.record_nightly`).
4. Per test, `analysis.detect` (a CUSUM per outcome class, near misses
   included) replays the test's stored nights: one night per nightly cycle,
   its runs counted per class. When a statistic is suggestive (at
   `suggest_fraction` of the threshold) but has not crossed it, the test runs
   `nightly.extra_iterations` more times at the tip that night (recorded as
   part of the same night) and the nights are replayed again.
5. A rise (a rise CUSUM crossed its threshold on tonight's night) opens a
   bisection campaign (`campaign.open_bisect`) from `before` (the newest
   nightly tip on the old side at the detector's `level`) to the tip, unless
   a campaign for the test over an overlapping range is open, or a finished
   one already named a culprit inside the change window (before, after] (or
   searched the whole window in vain). Campaigns are only opened here;
   `flakebot serve` (or `flakebot bisect --resume ID`) drives them.
   A fall records "appears fixed" with the range (before, after] in which
   the rate fell; no campaign is opened for it (the fixing commit can be
   bisected by hand over that range).
6. Rises and falls are kept in the `nightly_events` table, one per
   transition per test, and handed to `notify(event)` (the reporters' hook;
   None = nobody is told yet).

Everything is recomputed from the store, so a cycle killed half-way loses at
most the unfinished runs; the next cycle starts afresh.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Callable, Optional, Sequence

from flakebot.analysis.classes import Bins
import re

from flakebot.analysis.detect import FALL, NONE, RISE, Detection, DetectSettings, Detector, Night, night_counts, \
    replay_detector
from flakebot.campaigns.bisect import BisectParams, open_bisect
from flakebot.config import Config
from flakebot.model import fmt_outcomes
from flakebot.history import History, HistoryError
from flakebot.store import Store
from flakebot.executors.runids import seed_key
from flakebot.campaigns.batch import Stopped, run_at
from flakebot.campaigns.wiring import poll_seconds

log = logging.getLogger("flakebot.service.nightly")

Notify = Callable[[dict], None]


# ---------------------------------------------------------------- settings


def detect_settings(cfg: Config) -> DetectSettings:
    n = cfg.nightly
    return DetectSettings(min_effect=n.min_effect, false_alarms_per_year=n.false_alarms_per_year)


def bins(cfg: Config) -> Bins:
    return Bins(tuple(cfg.bisect.wait_bins_s), float(cfg.tests.limit_s), float(cfg.tests.slow_threshold_s))


# ---------------------------------------------------------------- events table
#
def record_event(store: Store, kind: str, test: str, det: Detection, campaign_id: Optional[int] = None) -> int:
    return store.record_event(kind, test, tip=det.tip, before=det.before, after=det.after,
                              probability=det.probability, campaign_id=campaign_id, detail=det.to_json())


def events(store: Store, test: Optional[str] = None) -> list[dict]:
    """Recorded rises and falls, oldest first (detail decoded)."""
    return store.events(test)


def appears_fixed(store: Store, test: Optional[str] = None) -> list[dict]:
    """The "appears fixed" records (falls)."""
    return [e for e in events(store, test) if e["kind"] == FALL]


# ---------------------------------------------------------------- git


def fetch_remote(cfg: Config, history: History) -> str:
    """'fetched', 'skipped: ...' (no such remote in the clone) or 'failed: ...'."""
    remote = cfg.spdk.remote
    if remote not in {r.name for r in history.repo.remotes}:
        return f"skipped: no remote '{remote}' in {history.path}"
    try:
        history.fetch(remote)
    except HistoryError as e:
        return f"failed: {e}"
    return "fetched"


def resolve_tip(cfg: Config, history: History) -> str:
    remote, branch = cfg.spdk.remote, cfg.spdk.branch
    if remote in {r.name for r in history.repo.remotes}:
        try:
            return history.resolve(f"{remote}/{branch}")
        except HistoryError:
            pass
    return history.resolve(branch)


def first_parent_chain(history: History, tip: str) -> list[str]:
    """Every commit on tip's first-parent chain, oldest first (one git call)."""
    out = history.repo.git.rev_list("--first-parent", tip)
    return out.split()[::-1]


# ---------------------------------------------------------------- detection


# A nightly cycle's builds share the run-id prefix "nightly-<stamp>-<n>" after
# the database's instance id (runids.py; its extra runs add "-extra"): that
# prefix is the night.
_NIGHT_KEY = re.compile(r"^(nightly-\d{8}T\d{6}-\d+)")


def stored_nights(store: Store, test: str, cfg: Config) -> list[Night]:
    """The test's nights, oldest first, from the nightly records and their runs."""
    order: dict[str, tuple[str, set]] = {}
    for row in store.nightlies(test):
        build = store.get_build(row["build_id"]) if row["build_id"] is not None else None
        m = _NIGHT_KEY.match(seed_key(build["run_id"])) if build else None
        key = m.group(1) if m else f"nightly-record-{row['id']}"
        order.setdefault(key, (row["commit_sha"], set()))[1].add(row["build_id"])
    by_build: dict[int, list[tuple[str, object]]] = {}
    for r in store.runs(test=test, include_infra=False):
        by_build.setdefault(r["build_id"], []).append((r["outcome"], r["worst_wait_s"]))
    b = bins(cfg)
    return [Night(key, sha, night_counts((x for bid in builds for x in by_build.get(bid, ())), b))
            for key, (sha, builds) in order.items()]


def detect_test(store: Store, test: str, cfg: Config) -> tuple[Detector, Detection]:
    """The detector after replaying the test's stored nights, and its verdict on the newest."""
    return replay_detector(stored_nights(store, test, cfg), detect_settings(cfg))


def _overlaps(index: dict[str, int], a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Do the ranges (good, bad] a and b share a commit? Both ends must be on the chain."""
    try:
        ag, ab, bg, bb = (index[x] for x in (*a, *b))
    except KeyError:
        return False
    return ag < bb and bg < ab


def _known_rise(store: Store, test: str, det: Detection, good: str,
                index: dict[str, int]) -> Optional[tuple[str, int]]:
    """An open campaign over a range overlapping good..tip, or a finished one
    that named a culprit in the change window (before, after] or searched
    all of it: (why, campaign id)."""
    window_lo = index.get(det.before or "")
    window_hi = index.get(det.after or "")
    for row in store.open_campaigns():
        if row["kind"] == "bisect" and row["test"] == test and \
                _overlaps(index, (row["good"], row["bad"]), (good, det.tip)):
            return "campaign-open", row["id"]
    if window_lo is None or window_hi is None:
        return None
    for row in store.campaigns():
        if row["kind"] != "bisect" or row["test"] != test or row["status"] != "done":
            continue
        c = index.get(row["culprit"] or "")
        if row["verdict"] == "culprit" and c is not None and window_lo < c <= window_hi:
            return "known-culprit", row["id"]
        g, b = index.get(row["good"]), index.get(row["bad"])
        if row["verdict"] != "culprit" and g is not None and b is not None and g <= window_lo and window_hi <= b:
            return "searched-before", row["id"]
    return None


# ---------------------------------------------------------------- the cycle


def nightly_cycle(cfg: Config, store: Store, history: History, executor, *,
                  now: Optional[datetime] = None, fetch: bool = True, notify: Optional[Notify] = None,
                  should_stop: Callable[[], bool] = lambda: False, quiet: bool = True) -> dict:
    """One nightly cycle (module docstring). Returns a JSON-able summary:

        {"started_at", "fetch", "tip", "tests": [{"test", "commit", "runs", "outcomes",
          "detection", "action", "campaign_id", "event_id", "extra_runs"}]}

    action: 'none', 'campaign-opened', 'campaign-open' (one over an overlapping
    range is open already), 'known-culprit', 'searched-before' (a finished
    campaign covers the change), 'good-end-off-branch' (the branch was rewritten
    under the old side), 'appears-fixed', 'fall-known' (recorded before).
    Raises Stopped if should_stop() turns true between steps.
    """
    now = now or datetime.now(timezone.utc)
    fetched = fetch_remote(cfg, history) if fetch else "skipped: not asked"
    tip = resolve_tip(cfg, history)
    store.upsert_commits([history.commit(tip)])
    tests = tuple(cfg.tests.names)
    stamp = now.strftime("%Y%m%dT%H%M%S")
    prefix = f"nightly-{stamp}-{len(store.nightlies()) + 1}"
    summary = run_at(store, executor, tip, tests, cfg.nightly.iterations,
                     slow_threshold_s=cfg.tests.slow_threshold_s, poll_seconds=poll_seconds(cfg),
                     label=f"nightly {tip[:10]}", quiet=quiet, run_prefix=prefix, should_stop=should_stop)
    for test in tests:
        for bid in summary["build_ids"]:
            store.record_nightly(test, tip, bid)
    chain = first_parent_chain(history, tip)
    index = {sha: i for i, sha in enumerate(chain)}
    out = {"started_at": now.isoformat(timespec="seconds"), "fetch": fetched, "tip": tip, "tests": []}
    for per_test in summary["tests"]:
        if should_stop():
            raise Stopped()
        test = per_test["test"]
        entry = {"test": test, "commit": tip, "runs": per_test["runs"], "outcomes": per_test["outcomes"],
                 "action": "none", "campaign_id": None, "event_id": None, "extra_runs": 0}
        _, det = detect_test(store, test, cfg)
        if det.verdict == NONE and det.suggestive and cfg.nightly.extra_iterations:
            det = _extra_runs(cfg, store, executor, tip, test, entry, prefix, quiet, should_stop)
        entry["detection"] = det.to_json()
        if det.verdict == RISE:
            _act_on_rise(cfg, store, history, test, det, index, entry, notify)
        elif det.verdict == FALL:
            _act_on_fall(store, test, det, entry, notify)
        out["tests"].append(entry)
    return out


def _extra_runs(cfg, store, executor, tip, test, entry, prefix, quiet, should_stop) -> Detection:
    """Suggestive evidence: spend nightly.extra_iterations more runs at the tip
    tonight (part of the same night) and judge again."""
    if should_stop():
        raise Stopped()
    extra = run_at(store, executor, tip, [test], cfg.nightly.extra_iterations,
                   slow_threshold_s=cfg.tests.slow_threshold_s, poll_seconds=poll_seconds(cfg),
                   label=f"nightly {tip[:10]} extra", quiet=quiet, run_prefix=f"{prefix}-extra",
                   should_stop=should_stop)
    for bid in extra["build_ids"]:
        store.record_nightly(test, tip, bid)
    (more,) = extra["tests"]
    entry["extra_runs"] = more["runs"]
    entry["runs"] += more["runs"]
    for k, v in more["outcomes"].items():
        entry["outcomes"][k] = entry["outcomes"].get(k, 0) + v
    return detect_test(store, test, cfg)[1]


def _emit(store: Store, kind: str, test: str, det: Detection, cid: Optional[int], notify: Optional[Notify]) -> int:
    eid = record_event(store, kind, test, det, cid)
    if notify is not None:
        event = next(e for e in events(store, test) if e["id"] == eid)
        try:
            notify(event)
        except Exception as e:  # a reporter's failure must not stop the cycle; reported_at stays NULL
            log.warning("notify of %s event %s failed: %s", kind, eid, e)
        else:
            store.mark_event_reported(eid)
    return eid


def _last_kind(store: Store, test: str) -> Optional[str]:
    ev = events(store, test)
    return ev[-1]["kind"] if ev else None


def _act_on_rise(cfg, store, history, test, det, index, entry, notify) -> None:
    good = det.before
    known = _known_rise(store, test, det, good, index)
    if good not in index:  # the branch was rewritten since that night: no range to bisect
        entry["action"] = "good-end-off-branch"
    elif known is not None:
        entry["action"], entry["campaign_id"] = known
    else:
        commits = history.first_parent_range(good, det.tip)
        cid, resumed = open_bisect(store, test, history.commit(good), commits, BisectParams.from_config(cfg),
                                   is_ancestor=history.is_ancestor)
        entry["action"] = "campaign-open" if resumed else "campaign-opened"
        entry["campaign_id"] = cid
        entry["bisect"] = {"good": good, "bad": det.tip, "commits": len(commits)}
    if _last_kind(store, test) != RISE:
        entry["event_id"] = _emit(store, RISE, test, det, entry["campaign_id"], notify)


def _act_on_fall(store, test, det, entry, notify) -> None:
    if _last_kind(store, test) == FALL:
        entry["action"] = "fall-known"
        return
    entry["action"] = "appears-fixed"
    entry["event_id"] = _emit(store, FALL, test, det, None, notify)


# ---------------------------------------------------------------- demo


_ACTION_WORDS = {
    "none": "",
    "campaign-opened": "bisection opened",
    "campaign-open": "a bisection of this range is open already",
    "known-culprit": "a known culprit explains it",
    "searched-before": "a finished bisection covers it",
    "good-end-off-branch": "no bisection: the branch was rewritten under the good end",
    "appears-fixed": "recorded as appears fixed",
    "fall-known": "the fall was recorded before",
}


def describe(t: dict) -> str:
    """One test's night in words, as `flakebot nightly` and the demo print it:
    'pass 8, near miss 9, timeout 3; rise after 6993a66871 (P=1.000): bisection
    opened (campaign 1)' or '...; no change'."""
    d = t["detection"]
    if d["verdict"] == NONE:
        line = f"{fmt_outcomes(t['outcomes'])}; no change"
    else:
        line = f"{fmt_outcomes(t['outcomes'])}; {d['verdict']} after {d['before'][:10]} (P={d['probability']:.3f})"
    if t.get("extra_runs"):
        line += f", {t['extra_runs']} of the runs extra (a suggestive night)"
    words = _ACTION_WORDS.get(t["action"], t["action"])
    if words:
        line += f": {words}"
    if t.get("campaign_id"):
        line += f" (campaign {t['campaign_id']})"
    return line


def demo_nights(cfg: Config, store: Store, history: History, executor, demo, *, every: int = 10,
                start: Optional[int] = None, settle: int = 14, say: Callable[[str], None] = lambda line: None,
                now: Optional[datetime] = None) -> dict:
    """The nightly chain on a demo repository (`demo_repo.build_demo_repo`, with a
    culprit and optionally a fix; no remote: the fetch is skipped): one nightly
    cycle every `every` commits from `start` (default: the demo's good commit)
    to the tip, moving the repository's `master` to each night's tip, and every
    campaign a night opens driven to its verdict before the next night; then,
    while a rise has no fall after it, up to `settle` more nights at the tip
    (the branch stands still, the nights go on). The branch is put back at the
    real tip at the end.

    Returns {"nights": [cycle results], "campaigns": [campaign results],
    "events": [rise/fall records]}; `say` gets one line per night and campaign."""
    from datetime import timedelta

    from flakebot.campaigns.bisect import BisectCampaign
    from flakebot.campaigns.wiring import poll_seconds

    now = now or datetime.now(timezone.utc)
    shas = demo.shas
    first = demo.good_index if start is None else start
    tips = list(range(first, len(shas), every))
    if tips[-1] != len(shas) - 1:
        tips.append(len(shas) - 1)
    tips += [None] * settle
    out: dict = {"nights": [], "campaigns": [], "events": []}
    try:
        for n, i in enumerate(tips):
            if i is None:
                kinds = [e["kind"] for e in events(store)]
                if RISE not in kinds or kinds[-1] != RISE:
                    break
                i = len(shas) - 1
            history.repo.git.update_ref(f"refs/heads/{cfg.spdk.branch}", shas[i])
            r = nightly_cycle(cfg, store, history, executor, fetch=False, now=now + timedelta(days=n))
            out["nights"].append(r)
            for t in r["tests"]:
                say(f"night {n + 1}: tip {shas[i][:10]} (commit {i}): {t['test']}: {describe(t)}")
                if t["action"] == "campaign-opened":
                    res = BisectCampaign(store, executor, t["campaign_id"], poll_seconds=poll_seconds(cfg)).run()
                    out["campaigns"].append(res)
                    say(f"  campaign {res['campaign_id']}: {res['verdict']} {(res.get('culprit') or '')[:10]} "
                        f"(confidence {res['confidence']:.3f}, {res['runs']} runs)")
    finally:
        history.repo.git.update_ref(f"refs/heads/{cfg.spdk.branch}", shas[-1])
    out["events"] = events(store)
    return out
