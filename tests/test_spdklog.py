"""flakebot.evidence.spdklog: SPDK console text -> Runs. Samples from tests/fixtures/spdk-logs/,
synthetic logs from tests/logfixtures.py (every era x prefix x outcome)."""
from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flakebot.model import Outcome
from flakebot.evidence.spdklog import parse_file, parse_lines, parse_text
from tests.logfixtures import LogBuilder

SAMPLES = Path(__file__).resolve().parent / "fixtures" / "spdk-logs"
ERAS = ("pre2024", "2024", "2025")
PREFIXES = ("jenkins", "gha", "plain")


def all_ways(text: str, tmp_path: Path, **kw):
    """parse_text, parse_lines (str and bytes lines) and parse_file must agree."""
    a = parse_text(text, **kw)
    data = text.encode("utf-8", "surrogateescape")
    b = list(parse_lines(io.BytesIO(data), **kw))
    p = tmp_path / "log.txt"
    p.write_bytes(data)
    c = list(parse_file(p, **kw))
    assert a == b == c
    return a


def summary(runs):
    return [(r.test, r.iteration, r.outcome.value) for r in runs]


# ------------------------------------------------------------------ samples
def test_sample_pass_jenkins(tmp_path):
    runs = all_ways((SAMPLES / "nvme-pass-jenkins-2024.log").read_text(), tmp_path)
    assert summary(runs) == [("vfio_user_nvme_restart_vm", 1, "pass")]
    (r,) = runs
    assert [s.call_site for s in r.shutdowns] == ["vfio_user_restart_vm.sh@36", "vfio_user_restart_vm.sh@54"]
    assert [s.waited_s for s in r.shutdowns] == pytest.approx([4.049, 3.046], abs=1e-6)  # ms clock
    assert all(s.limit_s == 90 and not s.timed_out for s in r.shutdowns)
    assert r.rc == 0
    assert r.duration_s == pytest.approx(56.774, abs=1e-6)


def test_sample_timeout_jenkins(tmp_path):
    runs = all_ways((SAMPLES / "nvme-timeout-jenkins-2024.log").read_text(), tmp_path)
    assert summary(runs) == [("vfio_user_nvme_restart_vm", 1, "timeout")]
    first, second = runs[0].shutdowns
    assert (first.call_site, first.timed_out) == ("vfio_user_restart_vm.sh@36", False)
    assert first.waited_s == pytest.approx(5.078, abs=1e-6)
    assert (second.call_site, second.limit_s, second.timed_out) == ("vfio_user_restart_vm.sh@54", 90, True)
    assert second.waited_s == pytest.approx(91.162, abs=1e-6)  # 00:07:49.903 -> 00:09:21.065
    assert runs[0].rc is None


def test_sample_nearmiss_gha(tmp_path):
    runs = all_ways((SAMPLES / "virtio-blk-nearmiss-gha-2026.log").read_text(), tmp_path)
    assert summary(runs) == [("vfio_user_virtio_blk_restart_vm", 1, "slow")]
    a, b = runs[0].shutdowns
    assert (a.call_site, b.call_site) == ("fio_restart_vm.sh@78", "fio_restart_vm.sh@97")
    assert a.waited_s == pytest.approx(84.081887, abs=1e-6)  # 100 ns clock
    assert b.waited_s == pytest.approx(4.062379, abs=1e-6)
    assert not a.timed_out and not b.timed_out
    # below the threshold it is a plain pass
    assert parse_text((SAMPLES / "virtio-blk-nearmiss-gha-2026.log").read_text(),
                      slow_threshold_s=85.0)[0].outcome is Outcome.PASS


def test_sample_as_plain_log_uses_xtrace_clock(tmp_path):
    """Strip the Jenkins prefix: only the 1 s xtrace clock is left."""
    lines = (SAMPLES / "nvme-pass-jenkins-2024.log").read_text().splitlines()
    text = "\n".join(l[14:] for l in lines) + "\n"
    (r,) = all_ways(text, tmp_path)
    assert [s.waited_s for s in r.shutdowns] == [4.0, 3.0]  # 14:10:23->27, 14:10:53->56


# ------------------------------------------------------ era x prefix x outcome
OUTCOME_CASES = [
    # builder outcome, waits, expected outcome, last call timed out, last wait (approx, ms clock)
    ("pass", (4.05, 3.05), "pass", False, 3.05),
    ("pass", (83.2, 3.05), "slow", False, 3.05),
    ("timeout", (4.05, 0), "timeout", True, 91.2),
    ("timeout_old", (4.05, 0), "timeout", True, 91.2),
    ("fail", (4.05, 0), "fail", None, None),
    ("cut", (4.05, 30.0), "infra", False, None),
]


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("outcome,waits,expected,timed_out,last_wait", OUTCOME_CASES)
def test_era_prefix_outcome(tmp_path, era, prefix, outcome, waits, expected, timed_out, last_wait):
    b = LogBuilder(era, prefix)
    b.iteration("vfio_user_nvme_restart_vm", waits, outcome)
    (r,) = all_ways(b.text(), tmp_path)
    assert (r.test, r.iteration, r.outcome.value) == ("vfio_user_nvme_restart_vm", 1, expected)
    tol = 1.01 if prefix == "plain" else 0.01  # xtrace clock: 1 s resolution
    assert r.shutdowns[0].call_site == "vfio_user_restart_vm.sh@36"
    assert r.shutdowns[0].waited_s == pytest.approx(waits[0], abs=tol)
    if timed_out is not None:
        last = r.shutdowns[-1]
        assert last.call_site == "vfio_user_restart_vm.sh@54"
        assert last.timed_out is timed_out
        assert last.limit_s == 90
        if last_wait is None:
            assert last.waited_s is None
        else:
            assert last.waited_s == pytest.approx(last_wait, abs=tol)
    else:
        assert len(r.shutdowns) == 1
    if expected in ("pass", "slow"):
        assert r.rc == 0 and r.duration_s is not None and r.duration_s > 40
    if expected == "infra":
        assert "cut off" in r.reason


@pytest.mark.parametrize("threshold,expected", [(60.0, "slow"), (83.0, "slow"), (83.3, "pass"), (100.0, "pass")])
def test_slow_threshold_boundary(tmp_path, threshold, expected):
    b = LogBuilder("2024", "jenkins")
    b.iteration(waits=(83.2, 3.0))
    (r,) = all_ways(b.text(), tmp_path, slow_threshold_s=threshold)
    assert r.outcome.value == expected


def test_many_iterations_one_log(tmp_path):
    b = LogBuilder("2024", "jenkins")
    plan = ["pass", "pass", "timeout", "pass", "fail", "pass", "timeout_old", "pass"]
    for o in plan:
        b.iteration("vfio_user_nvme_restart_vm", (4.0, 83.5 if o == "pass" else 3.0), o)
    runs = all_ways(b.text(), tmp_path)
    assert [r.iteration for r in runs] == list(range(1, len(plan) + 1))
    assert [r.outcome.value for r in runs] == ["slow", "slow", "timeout", "slow", "fail", "slow", "timeout", "slow"]


@pytest.mark.parametrize("limit,arg", [(120, 120), (30, None)])
def test_limit_from_local_timeo_and_argument(tmp_path, limit, arg):
    b = LogBuilder("2025", "gha")
    b.iteration(waits=(4.0, 0), outcome="timeout", limit=limit, arg=arg)
    (r,) = all_ways(b.text(), tmp_path)
    assert r.outcome is Outcome.TIMEOUT
    assert r.shutdowns[-1].limit_s == limit
    assert r.shutdowns[-1].waited_s == pytest.approx(limit + 1.2, abs=0.01)


def test_limit_from_argument_when_no_local_line(tmp_path):
    text = "\n".join([
        "*" * 36, "START TEST t", "*" * 36, " 10:00:00 d -- x/a.sh@5 -- # vm_shutdown_all 45",
        "INFO: Waiting for VMs to shutdown...", " 10:00:01 d -- vhost/common.sh@1 -- # sleep 1",
        "INFO: All VMs successfully shut down", " 10:00:02 d -- vhost/common.sh@2 -- # return 0",
        "*" * 36, "END TEST t", "*" * 36, ""])
    (r,) = all_ways(text, tmp_path)
    assert r.shutdowns == [r.shutdowns[0]] and r.shutdowns[0].limit_s == 45
    assert r.shutdowns[0].call_site == "a.sh@5" and r.shutdowns[0].waited_s == 1.0


# ------------------------------------------------------ CRLF, ANSI, stderr
@pytest.mark.parametrize("crlf,ansi,stderr", [(True, False, False), (False, True, False),
                                              (False, False, True), (True, True, True)])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_crlf_ansi_stderr(tmp_path, crlf, ansi, stderr, prefix):
    b = LogBuilder("2025", prefix, crlf=crlf, ansi=ansi, stderr=stderr)
    b.iteration(waits=(4.05, 3.05))
    b.iteration(waits=(83.2, 3.05))
    b.iteration(waits=(4.05, 0), outcome="timeout")
    runs = all_ways(b.text(), tmp_path)
    assert summary(runs) == [("vfio_user_nvme_restart_vm", i, o) for i, o in
                             [(1, "pass"), (2, "slow"), (3, "timeout")]]


def test_midnight_crossing_plain_xtrace_clock(tmp_path):
    b = LogBuilder("2024", "plain", wall0=23 * 3600 + 59 * 60 + 30)  # 23:59:30
    b.iteration(waits=(83.2, 3.05))  # the first wait spans midnight
    b.iteration(waits=(4.05, 3.05))
    runs = all_ways(b.text(), tmp_path)
    assert [r.outcome.value for r in runs] == ["slow", "pass"]
    assert runs[0].shutdowns[0].waited_s == pytest.approx(83.2, abs=1.01)
    assert runs[1].shutdowns[0].waited_s == pytest.approx(4.05, abs=1.01)
    assert all(r.duration_s and 0 < r.duration_s < 200 for r in runs)


# -------------------------------------------------------------- markers
MARKER_CASES = [
    # builder outcome, rc given by the host script, expected outcome, expected rc
    ("pass", 0, "pass", 0),
    ("timeout", 1, "timeout", 1),
    ("fail", 1, "fail", 1),
    ("fail", 125, "infra", 125),
    ("infra125", 125, "infra", 125),
    ("pass", 3, "pass", 3),  # END TEST seen: the test passed, rc kept
]


@pytest.mark.parametrize("banner", [True, False])
@pytest.mark.parametrize("outcome,rc,expected,exp_rc", MARKER_CASES)
def test_markers(tmp_path, outcome, rc, expected, exp_rc, banner):
    if not banner and outcome == "pass" and rc != 0:
        expected = "fail"  # no END TEST: rc decides
    b = LogBuilder("2024", "jenkins", wrapper="vfio_user_qemu" if banner else None)
    b.iteration(waits=(4.0, 3.0), marker=7)  # a plain pass before
    b.iteration(waits=(4.0, 3.0), outcome=outcome, marker=8, rc=rc, banner=banner)
    runs = all_ways(b.text(), tmp_path)
    assert [(r.iteration, r.outcome.value, r.rc) for r in runs] == [(7, "pass", 0), (8, expected, exp_rc)]


def test_marker_end_without_end_test_is_fail(tmp_path):
    b = LogBuilder("2025", "gha")
    b.marker("START", "vfio_user_nvme_restart_vm", 3)
    b.banner("START", "vfio_user_nvme_restart_vm")
    b.x("vfio_user/nvme/vfio_user_restart_vm.sh", 20, "vm_run 1")
    b.marker("END", "vfio_user_nvme_restart_vm", 3, rc=2)
    (r,) = all_ways(b.text(), tmp_path)
    assert (r.iteration, r.outcome, r.rc) == (3, Outcome.FAIL, 2)


def test_marker_start_without_end_at_eof_is_infra(tmp_path):
    b = LogBuilder("2024", "jenkins")
    b.iteration(waits=(4.0, 3.0), marker=1)
    b.iteration(waits=(4.0, 30.0), outcome="cut", marker=2)
    runs = all_ways(b.text(), tmp_path)
    assert [(r.iteration, r.outcome.value) for r in runs] == [(1, "pass"), (2, "infra")]
    assert runs[1].shutdowns[-1].waited_s is None


def test_marker_cut_then_next_iteration(tmp_path):
    """A START marker while the previous iteration has no END marker: that one is infra."""
    b = LogBuilder("2024", "jenkins")
    b.iteration(waits=(4.0, 30.0), outcome="cut", marker=1)
    b.iteration(waits=(4.0, 3.0), marker=2)
    runs = all_ways(b.text(), tmp_path)
    assert [(r.iteration, r.outcome.value) for r in runs] == [(1, "infra"), (2, "pass")]


def test_marker_iteration_numbers_win_over_counts(tmp_path):
    b = LogBuilder("2025", "plain")
    for i in (5, 6, 7):
        b.iteration(waits=(4.0, 3.0), marker=i)
    assert [r.iteration for r in all_ways(b.text(), tmp_path)] == [5, 6, 7]


# ---------------------------------------------------------- nesting, tests
def test_nested_wrapper_innermost_only(tmp_path):
    b = LogBuilder("2024", "jenkins", wrapper="vfio_user_qemu")
    b.iteration("vfio_user_nvme_restart_vm", (4.0, 3.0))
    b.iteration("vfio_user_virtio_blk_restart_vm", (83.5, 3.0))
    b.iteration("vfio_user_virtio_scsi_restart_vm", (4.0, 3.0))
    runs = all_ways(b.text(), tmp_path)
    assert summary(runs) == [("vfio_user_nvme_restart_vm", 1, "pass"),
                             ("vfio_user_virtio_blk_restart_vm", 1, "slow"),
                             ("vfio_user_virtio_scsi_restart_vm", 1, "pass")]
    assert [s.call_site for s in runs[1].shutdowns] == ["fio_restart_vm.sh@78", "fio_restart_vm.sh@97"]


def test_nested_wrapper_inner_fails(tmp_path):
    b = LogBuilder("2024", "jenkins", wrapper="vfio_user_qemu")
    b.iteration("vfio_user_nvme_restart_vm", (4.0, 0), "timeout")
    text = b.text().rsplit("*" * 36, 2)[0]  # SPDK stops: no END TEST for the wrapper either
    assert summary(all_ways(text, tmp_path)) == [("vfio_user_nvme_restart_vm", 1, "timeout")]


def test_every_test_pair_is_a_run(tmp_path):
    text = "\n".join(["*" * 36, "START TEST other_test", "*" * 36, "stuff", "*" * 36,
                      "END TEST other_test", "*" * 36, ""])
    (r,) = all_ways(text, tmp_path)
    assert (r.test, r.outcome, r.shutdowns, r.rc) == ("other_test", Outcome.PASS, [], 0)


def test_failed_run_ends_at_next_start_test(tmp_path):
    b = LogBuilder("2025", "plain")
    b.iteration(waits=(4.0, 0), outcome="fail")
    b.iteration(waits=(4.0, 3.0))
    runs = all_ways(b.text(), tmp_path)
    assert summary(runs) == [("vfio_user_nvme_restart_vm", 1, "fail"), ("vfio_user_nvme_restart_vm", 2, "pass")]


def test_cut_before_any_shutdown_is_infra(tmp_path):
    text = "*" * 36 + "\nSTART TEST vfio_user_nvme_restart_vm\n 14:10:00 d -- x.sh@1 -- # vhosttestinit\n"
    (r,) = all_ways(text, tmp_path)
    assert (r.outcome, r.shutdowns) == (Outcome.INFRA, [])


def test_streaming_yields_before_the_end():
    b = LogBuilder("2024", "jenkins")
    b.iteration(waits=(4.0, 3.0))
    first = b.text().splitlines()
    b.iteration(waits=(4.0, 3.0))
    seen = []

    def lines():
        for i, line in enumerate(b.text().splitlines()):
            seen.append(i)
            yield line

    gen = parse_lines(lines())
    r = next(gen)
    assert r.iteration == 1 and len(seen) <= len(first) + 2


# ------------------------------------------------------------- junk
def test_binary_junk_file(tmp_path):
    rnd = random.Random(1)
    data = bytes(rnd.randrange(256) for _ in range(300_000))
    p = tmp_path / "junk.bin"
    p.write_bytes(data)
    assert list(parse_file(p)) == []
    assert parse_text(data) == []


JUNK = st.one_of(
    st.text(max_size=120).map(lambda s: s.replace("\n", " ")),
    st.sampled_from([
        "INFO: All VMs successfully shut down", "WARN: Not all VMs were shut down. Leftovers: 1",
        "========== Backtrace start: ==========", "===========", "ERROR: boom", "\x1b[0m",
        " 14:10:00 d -- x/a.sh@5 -- # vm_shutdown_all", "+ 00:00:00 d -- t.sh@1: local timeo=5",
        "FLAKEBOT-ITERATION-END test=x iteration=1 rc=1", "INFO: Waiting for VMs to shutdown...",
        "00:00:01.000  ", "2026-01-01T00:00:00.1Z ", "\r", "TEST", "END TEST",
    ]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000))
def test_random_bytes_never_crash(data):
    runs = parse_text(data)
    assert all(isinstance(r.outcome, Outcome) for r in runs)
    assert runs == list(parse_file(io.BytesIO(data)))


@settings(max_examples=150, deadline=None)
@given(st.lists(JUNK, max_size=40))
def test_random_lines_never_crash(lines):
    text = "\n".join(lines)
    assert parse_text(text) == list(parse_file(io.BytesIO(text.encode("utf-8", "replace"))))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), JUNK), max_size=30), st.sampled_from(PREFIXES))
def test_junk_between_lines_makes_no_runs(inserts, prefix):
    b = LogBuilder("2024", prefix)
    b.iteration(waits=(4.0, 3.0))
    b.iteration(waits=(83.2, 3.0))
    lines = b.text().splitlines()
    for pos, junk in inserts:
        if "TEST" in junk or "FLAKEBOT" in junk:
            continue  # a real banner or marker is not junk
        lines.insert(pos % (len(lines) + 1), junk)
    runs = parse_text("\n".join(lines))
    assert [(r.test, r.iteration) for r in runs] == [("vfio_user_nvme_restart_vm", 1), ("vfio_user_nvme_restart_vm", 2)]


@pytest.mark.parametrize("block", [64, 1000, 4096])
def test_parse_file_block_boundaries(monkeypatch, block):
    """Small read blocks: lines, follow/watch windows and banners cross block edges."""
    import flakebot.evidence.spdklog as spdklog

    b = LogBuilder("2025", "plain", crlf=True, ansi=True, stderr=True, wall0=86390)
    for i, o in enumerate(["pass", "timeout_old", "fail", "pass", "cut"], 1):
        b.iteration(waits=(4.0, 83.0), outcome=o, marker=i if i % 2 else None)
    data = b.text().encode()
    expected = parse_text(data)
    monkeypatch.setattr(spdklog, "_BLOCK", block)
    assert list(parse_file(io.BytesIO(data))) == expected
    assert [r.outcome.value for r in expected] == ["slow", "timeout", "fail", "slow", "infra"]


@pytest.mark.parametrize("failed_after,expected,waited", [
    (30.5, "timeout", 30.5),  # counter ran out: no err_clean line, generic backtrace
    (10.0, "fail", None),  # failed mid-wait for another reason: not a timeout
])
def test_failure_during_wait_by_elapsed_time(tmp_path, failed_after, expected, waited):
    def j(t):
        return f"00:00:{t:06.3f}  "

    lines = [j(0) + "*" * 36, j(0) + "START TEST vfio_user_nvme_restart_vm", j(0) + "*" * 36,
             j(1) + "  10:00:01\t-- nvme/vfio_user_restart_vm.sh@54 -- # vm_shutdown_all",
             j(1.5) + "INFO: Waiting for VMs to shutdown...",
             j(1.6) + "  10:00:01\t-- vhost/common.sh@495 -- # local timeo=30",
             j(1.5 + failed_after) + "  10:00:31\t-- vhost/common.sh@508 -- # (( timeo -= 1 ))",
             j(1.5 + failed_after) + "========== Backtrace start: ==========",
             j(1.5 + failed_after) + "in /x/test/vfio_user/nvme/vfio_user_restart_vm.sh:54 -> main([])"]
    (r,) = all_ways("\n".join(lines) + "\n", tmp_path)
    assert r.outcome.value == expected
    (s,) = r.shutdowns
    assert (s.call_site, s.limit_s, s.timed_out) == ("vfio_user_restart_vm.sh@54", 30, expected == "timeout")
    assert s.waited_s == (pytest.approx(waited, abs=1e-6) if waited else None)


@pytest.mark.parametrize("block", [64, 1000, 4096])
@pytest.mark.parametrize("ansi", [False, True])
def test_parse_file_stars_fast_path_matches_parse_text(monkeypatch, block, ansi):
    """parse_file handles banner lines of stars without decoding them when its
    block has no ESC; blocks with and without ESC must give parse_text's Runs."""
    import flakebot.evidence.spdklog as spdklog

    b = LogBuilder("2024", "jenkins", ansi=ansi, wrapper="vfio_user_qemu")
    for i, o in enumerate(["pass", "timeout", "fail", "pass", "timeout_old", "pass"], 1):
        b.iteration(waits=(4.0, 83.0), outcome=o, marker=i if i % 3 else None)
    lines = b.text().splitlines()
    lines.insert(len(lines) // 2, "\x1b[0m" + "*" * 36)  # one coloured line of stars mid-log
    data = ("\n".join(lines) + "\n").encode()
    expected = parse_text(data)
    monkeypatch.setattr(spdklog, "_BLOCK", block)
    assert list(parse_file(io.BytesIO(data))) == expected
    assert len(expected) == 6


# ----------------------------------------------------- clock arithmetic
@pytest.mark.parametrize("start,end,waited", [
    # Jenkins elapsed prefix (ms), incl. hours past 99 and a wait across an hour
    ("00:07:20.302  ", "00:07:23.302  ", 3.0),
    ("00:59:59.999  ", "01:00:00.000  ", 0.001),
    ("123:00:00.100  ", "123:01:23.300  ", 83.2),
    ("00:00:01.000  ", "00:00:00.500  ", 0.0),  # backwards: 0, as before
    # GitHub Actions prefix: 1 to 9 fraction digits, each time to the nearest 100 ns
    ("2026-09-17T03:25:48.5680391Z ", "2026-09-17T03:27:11.7680391Z ", 83.2),
    ("2026-09-17T23:59:59.9Z ", "2026-09-18T00:00:03.15Z ", 3.25),
    ("2026-09-17T03:25:48Z ", "2026-09-17T03:25:48.0000001Z ", 1e-07),
    ("2026-09-17T03:25:48.123456789Z ", "2026-09-17T03:25:48.123456799Z ", 0.0),
    ("2026-09-17T03:25:48.12345679Z ", "2026-09-17T03:25:49.2Z ", 1.0765432),
    ("2026-09-17T03:25:48.00000004Z ", "2026-09-17T03:25:48.00000016Z ", 2e-07),
])
def test_waits_are_the_logged_clock_difference(tmp_path, start, end, waited):
    """Prefix clocks are kept exact: a wait is the float nearest to the
    difference of the two logged times (3.0, not 3.0000000001)."""
    stars = "*" * 36
    lines = [(start, stars), (start, "START TEST t"), (start, stars),
             (start, " 14:10:00 x -- a/b.sh@5 -- # vm_shutdown_all"),
             (start, "INFO: Waiting for VMs to shutdown..."),
             (end, "INFO: All VMs successfully shut down"),
             (end, stars), (end, "END TEST t"), (end, stars)]
    runs = all_ways("".join(p + x + "\n" for p, x in lines), tmp_path, slow_threshold_s=100)
    assert [(r.test, r.outcome) for r in runs] == [("t", Outcome.PASS)]
    assert runs[0].shutdowns[0].waited_s == waited
    assert runs[0].duration_s == waited


@pytest.mark.parametrize("markers", [True, False])
def test_old_run_test_name_is_stored_under_flakebots_name(tmp_path, markers):
    """Until 2022-09 the NVMe restart test ran as run_test vfio_user_restart_vm (the
    host script runs it under that name): its runs are vfio_user_nvme_restart_vm's,
    with or without the host script's markers, through every entry point."""
    from flakebot.demo import hosts as sim
    from flakebot.evidence.spdklog import RENAMED_TESTS

    assert RENAMED_TESTS == {"vfio_user_restart_vm": "vfio_user_nvme_restart_vm"}
    lines = list(sim.console_lines("vfio_user_nvme_restart_vm", "0" * 40, 2, behaviour=sim.Behaviour(1.0, 0.0),
                                   rng_seed=3, markers=markers, run_id="r"))
    old = [l.replace("TEST vfio_user_nvme_restart_vm", "TEST vfio_user_restart_vm") for l in lines]
    assert old != lines
    path = tmp_path / "old.log"
    path.write_text("\n".join(old) + "\n")
    for runs in (parse_lines(iter(old)), parse_text("\n".join(old) + "\n"), parse_file(path)):
        runs = list(runs)
        assert [(r.test, r.iteration, r.outcome) for r in runs] == [
            ("vfio_user_nvme_restart_vm", 1, Outcome.TIMEOUT), ("vfio_user_nvme_restart_vm", 2, Outcome.TIMEOUT)]
