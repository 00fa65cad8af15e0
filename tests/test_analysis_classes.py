import numpy as np
import pytest

from flakebot.analysis.classes import DEFAULT_BINS, Bins, class_names, classify, to_groups


@pytest.mark.parametrize("outcome, wait, name", [
    ("pass", 3.0, "pass <20s"),
    ("pass", None, "pass <20s"),
    ("pass", 19.99, "pass <20s"),
    ("pass", 20.0, "pass 20-60s"),
    ("pass", 59.9, "pass 20-60s"),
    ("slow", 60.0, "near 60-80s"),
    ("slow", 83.0, "near 80-90s"),
    ("slow", None, "near 60-80s"),
    ("slow", 30.0, "near 60-80s"),   # a parser's 'slow' is never a plain pass
    ("pass", 85.0, "near 80-90s"),   # a pass with an 85 s wait is a near miss
    ("pass", 500.0, "near 80-90s"),
    ("timeout", 90.0, "timeout"),
    ("timeout", None, "timeout"),
    ("fail", 12.0, "fail"),
])
def test_classify_table(outcome, wait, name):
    assert class_names()[classify(outcome, wait)] == name


def test_infra_never_enters():
    assert classify("infra", None) is None
    assert classify("infra", 95.0) is None


def test_groups_and_custom_bins():
    b = Bins(edges=(30.0, 60.0), limit_s=90.0, slow_threshold_s=60.0)
    assert b.names == ("pass <30s", "pass 30-60s", "near 60-90s", "timeout", "fail")
    assert list(b.groups) == [0, 0, 1, 2, 2]
    assert np.array_equal(to_groups([[1, 2, 3, 4, 5]], b), [[3, 3, 9]])
    assert list(DEFAULT_BINS.groups) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("edges, thr", [((60.0, 20.0), 60.0), ((20.0, 95.0), 20.0), ((20.0, 60.0), 50.0)])
def test_bad_bins(edges, thr):
    with pytest.raises(ValueError):
        Bins(edges=edges, slow_threshold_s=thr)


def test_to_groups_rejects_bad_shapes():
    with pytest.raises(ValueError):
        to_groups([[1, 2, 3]])
    with pytest.raises(ValueError):
        to_groups([[1, 0, 0, 0, -1, 0]])
