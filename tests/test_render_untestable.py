"""Comments on bisections with untestable commits: the culprit range with its
probability, the inconclusive reason, and the skipped commits with why."""
from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flakebot.report import comments as render
from tests.test_render import BAD, CULPRIT, GOOD, PARENT, bisect_result

U1, U2 = "1" * 40, "2" * 40
UNTESTABLE = [{"commit": U1, "subject": "old era", "reason": "no test/vfio_user/nvme/vfio_user_restart_vm.sh at this "
               "commit", "reasons": [], "requests": 1, "evidence_runs": 0, "hosts": ["h1"]},
              {"commit": U2, "subject": "broken build", "reason": f"build of {U2} failed", "reasons": [],
               "requests": 2, "evidence_runs": 0, "hosts": ["h1", "h2"]}]


def range_result(**over):
    r = bisect_result(verdict="culprit-range", culprit=None, culprit_info=None, confidence=0.968,
                      culprit_range={"first": U2, "last": CULPRIT, "probability": 0.968, "parent": PARENT,
                                     "commits": [{"commit": U2, "subject": "broken build"},
                                                 {"commit": CULPRIT, "subject": "remove listener"}]},
                      untestable=UNTESTABLE, reason="P(c4..c5) = 0.968; c4 cannot be tested here")
    r.update(over)
    return r


@pytest.mark.parametrize("fmt", ["markdown", "gerrit"])
def test_range_verdict_names_every_commit_of_the_range_and_the_skipped_ones(fmt):
    text = render.render_markdown(range_result()) if fmt == "markdown" else render.render_gerrit(range_result())
    for e in ["culprit range found", "96.8%", "one of these 2 commits", "2222222222", "broken build",
              "cc1a07f73a", "remove listener", "cannot be tested here", "1111111111",
              "restart\\_vm.sh at this commit" if fmt == "markdown" else "restart_vm.sh at this commit",
              f"build of {U2} failed",
              "skipped (2)"]:
        assert e in text, (e, text)
    assert "Culprit:" not in text


@pytest.mark.parametrize("fmt", ["markdown", "gerrit"])
def test_inconclusive_says_why(fmt):
    r = bisect_result(verdict="inconclusive", culprit=None, culprit_info=None, confidence=0.4,
                      reason="the bad end cannot be tested here", untestable=UNTESTABLE[1:])
    text = render.render_markdown(r) if fmt == "markdown" else render.render_gerrit(r)
    assert "(the bad end cannot be tested here)" in text and f"build of {U2} failed" in text
    old = bisect_result(verdict="inconclusive", culprit=None, culprit_info=None, confidence=0.4)
    assert "(the budget ran out)" in render.render_markdown(old)  # results stored before the reason was


_junk = st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.one_of(st.text(max_size=5),
                  st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)), max_size=3),
                  st.dictionaries(st.sampled_from(["first", "last", "commits", "probability", "commit",
                                                   "reason", "requests"]), st.text(max_size=8), max_size=4))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=st.dictionaries(st.sampled_from(["culprit_range", "untestable", "reason", "verdict"]), _junk,
                            max_size=4))
def test_never_crashes_on_odd_range_fields(junk):
    r = copy.deepcopy(range_result())
    r.update(junk)
    out = render.render(r)
    assert out.markdown.endswith("\n") and out.gerrit.endswith("\n")
    assert GOOD[:10] in out.markdown or BAD[:10] in out.markdown or "flakebot" in out.markdown


def test_a_culprit_range_is_posted_on_the_tracking_issue_only():
    """No single change is to blame: nothing goes to a change or pull request."""
    from flakebot.reporters.outbox import plan_result
    items = plan_result(range_result(), tracking_issue=12)
    assert [it.target for it in items] == ["github-issue:12"]
    assert "culprit range found" in items[0].body
