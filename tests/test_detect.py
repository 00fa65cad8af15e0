"""Rise / fall detection (analysis/detect.py): the CUSUM over nights, by cases."""
from __future__ import annotations

import math

import pytest

from flakebot.analysis.classes import Bins
from flakebot.analysis.detect import DetectSettings, Detector, Night, night_counts, replay, replay_detector


def nights(spec: str, start: int = 0) -> list[Night]:
    """'0 0 4' -> 20-run nights with that many failures (k/n for n runs, kt for timeouts, kn near misses)."""
    out = []
    for i, tok in enumerate(spec.split(), start=start):
        n = 20
        if "/" in tok:
            tok, n = tok.split("/")[0], int(tok.split("/")[1])
        kind = 3
        if tok.endswith("t"):
            tok, kind = tok[:-1], 2
        elif tok.endswith("n"):
            tok, kind = tok[:-1], 1
        counts = [n - int(tok), 0, 0, 0]
        counts[kind] = int(tok)
        out.append(Night(f"n{i}", f"c{i}", tuple(counts)))
    return out


def verdicts(ns: list[Night], settings: DetectSettings = DetectSettings()) -> list[str]:
    d = Detector(settings)
    return [d.push(n).verdict for n in ns]


CLEAN = "0 " * 20


@pytest.mark.parametrize("name,spec,expect", [
    ("clean", CLEAN, []),
    ("flaky 15%, flat", "3 2 4 3 3 2 4 3 2 3 4 3 3 2 4 3", []),
    ("rise of failures", CLEAN + "3 4", ["rise", 21]),
    ("rise of timeouts", CLEAN + "3t 4t", ["rise", 21]),
    ("rise of near misses alone", CLEAN + "3n 4n", ["rise", 21]),
    ("one unlucky night is not a rise", "1 0 1 0 1 0 0 1 0 1 2", []),
    ("too young to judge (under 100 runs)", "0 0 0 0 6", []),
])
def test_rises(name, spec, expect):
    v = verdicts(nights(spec))
    got = [(x, i) for i, x in enumerate(v) if x != "none"]
    assert got == ([tuple(expect)] if expect else [])


def test_rise_names_the_range_and_the_class():
    d = replay(nights(CLEAN + "5t"))
    assert (d.verdict, d.klass, d.before, d.after, d.tip) == ("rise", "timeout", "c19", "c20", "c20")
    assert d.probability >= 0.99 and d.current > d.baseline


def test_rise_found_late_is_placed_where_it_began():
    """A weak rise (2 of 20 from 0) takes nights to cross; its range still starts at the change."""
    ns = nights(CLEAN + "2 1 2 2 1 2 2 2 2")
    v = verdicts(ns)
    i = v.index("rise")
    d = replay(ns[:i + 1])
    assert 15 <= int(d.before[1:]) <= 19 and 20 <= int(d.after[1:]) <= i


def test_fall_after_a_rise_names_the_range_it_fell_in():
    ns = nights(CLEAN + "4 " * 15 + "0 " * 14)
    v = verdicts(ns)
    assert v.count("rise") == 1 and v.count("fall") == 1
    i = v.index("fall")
    assert 35 <= i < 49
    d = replay(ns[:i + 1])
    assert d.klass == "fail" and d.current < d.baseline
    assert 30 <= int(d.before[1:]) <= 34 and 35 <= int(d.after[1:]) <= i


def test_no_fall_while_the_rate_stays_high():
    v = verdicts(nights(CLEAN + "2 " * 60))
    assert v.count("rise") == 1 and "fall" not in v


def test_threshold_from_the_budget():
    assert DetectSettings().threshold == pytest.approx(math.log(3 * 365 / 0.1))
    assert DetectSettings(false_alarms_per_year=1).threshold < DetectSettings().threshold


def test_a_stricter_budget_waits_longer():
    ns = nights(CLEAN + "2 2 2 2 2 2 2 2 2 2")
    loose, strict = DetectSettings(false_alarms_per_year=10), DetectSettings(false_alarms_per_year=0.001)
    assert verdicts(ns, loose).index("rise") < verdicts(ns, strict).index("rise")


def test_suggestive_and_peek():
    d, _ = replay_detector(nights(CLEAN))
    det = d.peek(nights("3", start=20)[0])
    assert det.verdict == "none" and det.suggestive
    assert d.peek(nights("0", start=20)[0]).suggestive is False
    assert len(d.nights) == 20  # peek keeps nothing


def test_triggers_say_what_tonight_would_take():
    d, _ = replay_detector(nights(CLEAN))
    t = d.triggers(20)["fail"]
    k = t["rise_at_least"]
    assert k is not None and 1 <= k <= 20
    assert d.peek(nights(f"{k}", start=20)[0]).verdict == "rise"
    assert d.peek(nights(f"{k - 1}", start=20)[0]).verdict == "none"
    assert t["rise_delay_nights"] > 0 and t["fall_at_most"] is None  # nothing to fall from at 0%


def test_deterministic_and_reproducible():
    ns = nights(CLEAN + "1 3 2 4")
    assert replay(ns) == replay(list(ns))


def test_night_counts_count_near_misses_and_drop_infra():
    runs = [("pass", 3.0), ("slow", 83.0), ("infra", None), ("timeout", 90.0), ("fail", None), ("pass", 65.0)]
    assert night_counts(runs, Bins()) == (1, 2, 1, 1)


def test_bad_input():
    with pytest.raises(ValueError):
        DetectSettings(min_effect=0)
    with pytest.raises(ValueError):
        DetectSettings(false_alarms_per_year=0)
    with pytest.raises(ValueError):
        Night("a", "b", (1, -1, 0, 0))
