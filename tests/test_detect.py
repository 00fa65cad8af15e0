"""Rise / fall detection (analysis/detect.py): tables of cases, as LUCI
Analysis tests its change-point code."""
from __future__ import annotations

import pytest

from flakebot.analysis.classes import Bins
from flakebot.analysis.detect import DetectSettings, Point, detect, points_from_runs


def night(pos: int, runs: int, events: int, sha: str | None = None) -> Point:
    return Point(pos, sha or f"c{pos}", runs, events)


def nights(spec: str, runs: int = 20, step: int = 10) -> list[Point]:
    """'0 0 0 9' -> one 20-run nightly every 10 commits with those event counts."""
    return [night(i * step, runs, int(k)) for i, k in enumerate(spec.split())]


# name, points, verdict, before (newest commit on the old side), after (oldest on the new side)
CASES = [
    ("no runs", [], "none", None, None),
    ("only the tip", nights("9"), "none", None, None),
    ("flat and clean", nights("0 0 0 0 0"), "none", None, None),
    ("flat and flaky (15%)", nights("3 2 4 3 3 2 4"), "none", None, None),
    ("rise at the tip", nights("0 0 0 0 9"), "rise", "c30", "c40"),
    ("rise two nights ago", nights("0 0 0 8 9"), "rise", "c20", "c30"),
    ("rise from a flaky baseline", nights("1 0 2 1 1 0 1 12"), "rise", "c60", "c70"),
    ("rise then fix, two clean nights", nights("0 0 0 8 9 0 0"), "fall", "c40", "c50"),
    ("one clean night after a rise is not yet a fix", nights("0 0 0 8 9 10 1"), "none", None, None),
    ("one unlucky night is not a rise", nights("1 0 1 0 1 0 5"), "none", None, None),
    ("a drop to a still-high rate below min_effect", nights("9 9 9 9 8", runs=20), "none", None, None),
]


@pytest.mark.parametrize("name,points,verdict,before,after", CASES, ids=[c[0] for c in CASES])
def test_cases(name, points, verdict, before, after):
    d = detect(points)
    assert d.verdict == verdict, d.reason
    if verdict == "none":
        assert d.probability < 0.99 and d.before is None
        return
    assert d.probability >= 0.99
    assert (d.before, d.after) == (before, after)
    assert d.tip == points[-1].sha
    assert d.before_confidence >= 0.5 and d.safe_confidence >= 0.99
    if verdict == "rise":
        assert d.p_rise >= 0.99 and d.current.mean > d.baseline.mean
    else:
        assert d.p_fall >= 0.99 and d.current.mean < d.baseline.mean


@pytest.mark.parametrize("base_rate_events,tip_events,min_effect,verdict", [
    # 2000 runs at 1% then 2000 at 3%: a sure change, but smaller than 5 points
    (20, 60, 0.05, "none"),
    (20, 60, 0.005, "rise"),
    # 1% -> 10%: bigger than both
    (20, 200, 0.05, "rise"),
])
def test_min_effect(base_rate_events, tip_events, min_effect, verdict):
    pts = [night(0, 2000, base_rate_events), night(10, 2000, tip_events)]
    d = detect(pts, DetectSettings(min_effect=min_effect, change_prior=0.01))
    assert d.verdict == verdict, d.reason


@pytest.mark.parametrize("good_runs,thin", [(5, True), (8, True), (40, False)])
def test_thin_good_end(good_runs, thin):
    """A clean commit just before the bad tip, with few runs of its own: the
    likeliest good end, but thin; the safe good end is the older nightly."""
    pts = nights("0 0 0 0") + [night(39, good_runs, 0, "g"), night(40, 20, 9, "tip")]
    d = detect(pts)
    assert d.verdict == "rise"
    assert d.before == "g" and d.thin is thin
    assert d.safe_before == ("g" if not thin else "c30")
    assert d.after == "tip"


def test_prior_change_odds_matter():
    """A weak rise: decisive with permissive change odds, not with LUCI's."""
    pts = nights("0 0 0 5")
    assert detect(pts).verdict == "none"
    assert detect(pts, DetectSettings(change_prior=0.05)).verdict == "rise"


def test_points_merge_and_order_do_not_matter():
    pts = nights("0 0 0 0 9")
    split = [Point(p.position, p.sha, p.runs // 2, p.events // 2) for p in pts] + \
            [Point(p.position, p.sha, p.runs - p.runs // 2, p.events - p.events // 2) for p in pts]
    a, b = detect(pts), detect(list(reversed(split)))
    assert (a.verdict, a.before, a.after) == (b.verdict, b.before, b.after)
    assert a.probability == pytest.approx(b.probability, abs=1e-9)


def test_deterministic():
    pts = nights("1 0 2 1 1 0 1 12")
    assert detect(pts) == detect(pts)


def test_points_from_runs_counts_near_misses_and_drops_infra_and_strangers():
    chain = ["a", "b", "c"]
    runs = [("a", "pass", 3.0), ("a", "slow", 83.0), ("a", "infra", None), ("b", "timeout", 90.0),
            ("b", "fail", None), ("b", "pass", 65.0),  # a pass that waited 65 s is a near miss too
            ("zzz", "timeout", 90.0)]                   # off the first-parent chain
    pts = points_from_runs(runs, chain, Bins())
    assert [(p.sha, p.position, p.runs, p.events) for p in pts] == [("a", 0, 2, 1), ("b", 1, 3, 3)]


def test_near_misses_alone_are_a_rise():
    chain = [f"c{i}" for i in range(50)]
    runs = [(f"c{i}", "pass", 4.0) for i in (0, 10, 20, 30) for _ in range(20)]
    runs += [("c40", "slow", 84.0)] * 8 + [("c40", "pass", 4.0)] * 12
    d = detect(points_from_runs(runs, chain))
    assert d.verdict == "rise" and d.before == "c30" and d.after == "c40"


def test_bad_settings():
    with pytest.raises(ValueError):
        DetectSettings(min_effect=0)
    with pytest.raises(ValueError):
        Point(0, "a", 2, 3)
