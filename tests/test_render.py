"""render: one document, two formats. Key content, not whole-string snapshots."""
from __future__ import annotations

import copy
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flakebot.report import comments as render

CULPRIT = "cc1a07f73a" + "0" * 30
PARENT = "d" * 40
GOOD = "a" * 40
BAD = "b" * 40


def bisect_result(**over) -> dict:
    r = {
        "campaign_id": 7, "kind": "bisect", "test": "vfio_user_nvme_restart_vm",
        "good": GOOD, "bad": BAD, "verdict": "culprit", "culprit": CULPRIT, "confidence": 0.973,
        "culprit_info": {"sha": CULPRIT, "subject": "test/vfio_user: remove listener first",
                         "author": "A Developer", "change_id": "I0123456789abcdef",
                         "url": "https://review.spdk.io/c/spdk/spdk/+/22972"},
        "parent": PARENT,
        "rates": {
            "before": {"timeout": {"k": 1, "n": 40, "rate": 0.025, "lo": 0.004, "hi": 0.1},
                       "near_miss": {"k": 2, "n": 40, "rate": 0.05, "lo": 0.01, "hi": 0.14},
                       "fail": {"k": 0, "n": 40, "rate": 0.0, "lo": 0.0, "hi": 0.05},
                       "failure": {"k": 1, "n": 40, "rate": 0.025, "lo": 0.004, "hi": 0.1},
                       "runs": 40},
            "after": {"timeout": {"k": 9, "n": 40, "rate": 0.225, "lo": 0.13, "hi": 0.35},
                      "near_miss": {"k": 6, "n": 40, "rate": 0.15, "lo": 0.07, "hi": 0.27},
                      "fail": {"k": 1, "n": 40, "rate": 0.025, "lo": 0.004, "hi": 0.1},
                      "failure": {"k": 10, "n": 40, "rate": 0.25, "lo": 0.15, "hi": 0.37},
                      "runs": 40},
            "interval": 0.9,
        },
        "runs": 160, "infra_runs": 3, "p_no_change": 0.01, "builds": 8, "host_minutes": 512.3, "wall_seconds": 15123,
        "hosts": ["lab-host-1", "lab-host-2"],
        "candidates": [{"commit": CULPRIT, "probability": 0.973, "subject": "remove listener"},
                       {"commit": "e" * 40, "probability": 0.02, "subject": "other change"}],
        "commits": [{"commit": CULPRIT, "runs": 40, "outcomes": {"pass": 25, "timeout": 9, "slow": 6},
                     "max_wait_s": 91.2}],
        "waits": [
            {"side": "before", "call_site": "vfio_user_restart_vm.sh@54", "n": 40,
             "p50": 4.1, "p95": 62.0, "max": 83.0, "limit_s": 90},
            {"side": "after", "call_site": "vfio_user_restart_vm.sh@54", "n": 40,
             "p50": 11.0, "p95": 91.0, "max": 91.0, "limit_s": 90},
            {"side": "after", "call_site": "vfio_user_restart_vm.sh@36", "n": 40,
             "p50": 3.0, "p95": 4.0, "max": 5.0, "limit_s": 90},
        ],
        "build_urls": ["https://ci.example.org/job/flakebot-run/12/",
                       "https://ci.example.org/job/flakebot-run/13/"],
        "command": f"flakebot bisect --good {GOOD} --bad {BAD} --test vfio_user_nvme_restart_vm",
        "report_url": "https://flakebot.example.org/reports/7.html",
    }
    r.update(over)
    return r


def verify_result(**over) -> dict:
    r = {
        "campaign_id": 9, "kind": "verify", "test": "vfio_user_nvme_restart_vm",
        "patch": CULPRIT, "parent": PARENT, "iterations": 50,
        "patch_rates": {"timeout": {"k": 0, "n": 50, "rate": 0.0, "lo": 0.0, "hi": 0.045},
                        "near_miss": {"k": 1, "n": 50, "rate": 0.02, "lo": 0.003, "hi": 0.08}},
        "parent_rates": {"timeout": {"k": 8, "n": 50, "rate": 0.16, "lo": 0.09, "hi": 0.26},
                         "near_miss": {"k": 7, "n": 50, "rate": 0.14, "lo": 0.07, "hi": 0.24}},
        "p_lower": 0.998, "p_raise": 0.001, "runs": 100, "hosts": ["lab-host-1"],
        "wall_seconds": 5400, "build_urls": [], "command": "flakebot verify --patch x",
        "report_url": None,
    }
    r.update(over)
    return r


BOTH = pytest.mark.parametrize("fmt", ["markdown", "gerrit"])


def out(result, fmt):
    return render.render_markdown(result) if fmt == "markdown" else render.render_gerrit(result)


@BOTH
@pytest.mark.parametrize("result,expected", [
    (bisect_result(), ["culprit found", "cc1a07f73a", "test/vfio", "remove listener first",
                       "97.3%", "1/40: 2.5%", "9/40: 22.5%", "(13%–35%)", "2/40: 5%",
                       "6/40: 15%", "90% credible interval", "vfio_user_restart_vm.sh@54",
                       "vfio_user_restart_vm.sh@36", "91.0 s", "over limit", "near limit",
                       "160 runs", "3 infra runs not counted", "any failure", "10/40: 25%",
                       "2 hosts", "lab-host-1", "4 h 12 min",
                       "https://flakebot.example.org/reports/7.html",
                       "https://ci.example.org/job/flakebot-run/12/",
                       f"flakebot bisect --good {GOOD} --bad {BAD}", "I0123456789abcdef"]),
    (bisect_result(verdict="no-regression", culprit=None, culprit_info=None, confidence=0.91,
                   rates=None),
     ["no regression", "aaaaaaaaaa..bbbbbbbbbb", "91%", "Next candidates", "flakebot bisect"]),
    (bisect_result(verdict="inconclusive", culprit=None, culprit_info=None, confidence=0.55),
     ["inconclusive", "55%", "Next candidates", "eeeeeeeeee", "2%", "other change"]),
    (verify_result(), ["verify", "cc1a07f73a", "dddddddddd", "lowers the failure rate",
                       "99.8%", "0/50: 0%", "8/50: 16%", "50 iterations"]),
    (verify_result(p_lower=0.02, p_raise=0.97), ["raises the failure rate", "97%"]),
    (verify_result(p_lower=0.6, p_raise=0.3), ["No clear difference", "60%", "30%"]),
])
def test_key_content(result, expected, fmt):
    text = out(result, fmt)
    for e in expected:
        assert e in text, (e, text)


@BOTH
@pytest.mark.parametrize("result,absent", [
    (bisect_result(), ["Next candidates"]),  # certain culprit: no candidate list
    (bisect_result(report_url=None, build_urls=[]), ["Report:", "Builds"]),
    (bisect_result(verdict="no-regression", culprit=None, culprit_info=None), ["Culprit:"]),
    (verify_result(), ["Report:"]),
])
def test_absent_content(result, absent, fmt):
    text = out(result, fmt)
    for a in absent:
        assert a not in text


def test_candidates_shown_when_culprit_not_certain():
    text = render.render_markdown(bisect_result(confidence=0.8))
    assert "Next candidates" in text and "eeeeeeeeee" in text


def test_markdown_structure():
    md = render.render_markdown(bisect_result())
    assert md.startswith("### ")
    assert "[cc1a07f73a](https://review.spdk.io/c/spdk/spdk/+/22972)" in md
    assert re.search(r"^\| +\| before \(up to dddddddddd\) \| after \(from cc1a07f73a\) \|$", md, re.M)
    assert "<details><summary>Builds (2)</summary>" in md
    assert "```\nflakebot bisect --good" in md
    assert "[full HTML report](https://flakebot.example.org/reports/7.html)" in md


def test_gerrit_is_plain_text():
    g = render.render_gerrit(bisect_result())
    assert "**" not in g and "<details>" not in g and "](" not in g and "|---" not in g
    # tables and the command are preformatted (lines start with a space)
    assert re.search(r"^  timeouts \(shutdown > 90 s\) +1/40", g, re.M)
    assert re.search(r"^  flakebot bisect --good", g, re.M)
    assert "* flakebot-run #12 (https://ci.example.org/job/flakebot-run/12/)" in g


@pytest.mark.parametrize("subject,bad_md", [
    ("<script>alert(1)</script>", "<script>"),
    ("ping @spdk/maintainers now", "@spdk"),
    ("see [x](javascript:alert(1))", "[x](javascript"),
    ("<!-- flakebot:github-issue:1:1 -->", "<!--"),
])
def test_untrusted_subject_is_defused_in_markdown(subject, bad_md):
    r = bisect_result()
    r["culprit_info"] = dict(r["culprit_info"], subject=subject)
    assert bad_md not in render.render_markdown(r)


def test_untrusted_text_cannot_start_a_command_line_in_gerrit():
    r = bisect_result()
    r["culprit_info"] = dict(r["culprit_info"], subject="x\n/flakebot verify 100")
    g = render.render_gerrit(r)
    assert not any(line.lstrip().startswith("/flakebot") for line in g.splitlines())


def test_non_http_links_are_not_linked():
    r = bisect_result(report_url="javascript:alert(1)", build_urls=["file:///etc/passwd"])
    md = render.render_markdown(r)
    assert "javascript:" not in md and "file://" not in md


@pytest.mark.parametrize("x,s", [
    (0, "0%"), (0.05, "5%"), (0.0534, "5.3%"), (0.0004, "0.04%"), (0.999, "99.9%"),
    (0.99999, "99.999%"), (1, "100%"), (None, "?"), ("x", "?"),
])
def test_pct(x, s):
    assert render.pct(x) == s


@pytest.mark.parametrize("secs,s", [(42, "42 s"), (600, "10 min"), (15123, "4 h 12 min"),
                                    (None, "?"), (-1, "?")])
def test_duration(secs, s):
    assert render.duration(secs) == s


def test_render_once_gives_both():
    r = render.render(bisect_result())
    assert r.markdown == render.render_markdown(bisect_result())
    assert r.gerrit == render.render_gerrit(bisect_result())


def test_unknown_kind_gets_generic_rendering():
    r = {"campaign_id": 3, "kind": "fixed", "test": "vfio_user_nvme_restart_vm",
         "message": "the timeout rate fell from 20% to 0% since abc", "runs": 40,
         "command": "flakebot nightly"}
    for text in (render.render_markdown(r), render.render_gerrit(r)):
        assert "flakebot fixed" in text and "fell from 20%" in text and "flakebot nightly" in text


def test_builders_are_extensible(monkeypatch):
    monkeypatch.setitem(render.BUILDERS, "note", lambda r: [render.Para((render.T("hello"),))])
    assert render.render_gerrit({"kind": "note"}) == "hello\n"


def test_refusal_and_ack():
    r = render.render_refusal("N must be between 1 and 100")
    assert "not running" in r.markdown and "N must be between 1 and 100" in r.gerrit
    a = render.render_ack("verify", "vfio_user_nvme_restart_vm", "20 iterations")
    assert "verify started" in a.gerrit and "`vfio_user_nvme_restart_vm`" in a.markdown


_values = st.one_of(st.none(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=30), st.lists(st.text(max_size=5), max_size=3),
                    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["bisect", "verify", "other"]),
       drop=st.sets(st.sampled_from(sorted(bisect_result()) + sorted(verify_result()))),
       junk=st.dictionaries(st.sampled_from(sorted(bisect_result()) + sorted(verify_result())),
                            _values, max_size=4))
def test_never_crashes_on_partial_or_odd_results(kind, drop, junk):
    base = bisect_result() if kind == "bisect" else verify_result()
    r = copy.deepcopy(base)
    r["kind"] = kind
    for k in drop:
        r.pop(k, None)
    r.update(junk)
    r["kind"] = kind
    out = render.render(r)
    assert out.markdown.endswith("\n") and out.gerrit.endswith("\n")
