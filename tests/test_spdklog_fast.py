"""parse_file's fast path (spdklog._FAST / _Parser.fast): the hot line shapes
handled from the raw bytes must leave the parser exactly as feed() does, and a
line the fast path does not take must go to feed. Also: logs made of banner
lines of stars (no needle: the drivers must agree on them), and clock digits
that are not ASCII."""
from __future__ import annotations

import io
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flakebot.evidence.spdklog as spdklog
from flakebot.evidence import spdklog_scan
from flakebot.evidence.spdklog import parse_file, parse_lines, parse_text
from tests.logfixtures import LogBuilder

J = "00:07:20.302  "
XCALL = J + " 14:10:20 vfio_user_qemu.t -- vfio_user/nvme/vfio_user_restart_vm.sh@36 -- # vm_shutdown_all"
SHAPES = [
    # (line, handled by the fast path)
    (XCALL, True),
    (XCALL + " 30", True),
    (XCALL + "\r", True),
    (XCALL + " \r\r", True),
    (J + " 14:10:20 vfio_user_qemu.t -- vhost/common.sh@487 -- # local timeo=30 vms vm", True),
    (J + "+ 14:10:20 vfio_user_qemu.t -- test/vhost/common.sh@487: local timeo=7", True),
    (J + " 14:10:20\t-- vhost/common.sh@495 -- # local timeo=12", True),
    (J + " 14:10:20\t-- vhost/common.sh@508 -- # (( timeo -= 1 ))", True),
    (J + " 23:59:59 x -- a@b@5 -- # vm_shutdown_all", True),
    (J + " 14:10:20 x -- a@1:vm_shutdown_all@2:x", True),
    (J + " 14:10:20 x -- a/b.sh@9 -- $ err_clean vm_shutdown_all 508", True),
    # the call / timeo=N alternatives of _FAST, and commands they must leave
    # to _xtrace (feed's _CALL / _TIMEO reject them, or take them differently)
    (XCALL + "\t7\t", True),
    (XCALL + " 1234567890", True),  # 10 digits: not a call (_CALL)
    (XCALL + " 30 x", True),
    (XCALL + " timeo=5", True),
    (XCALL + "x", True),
    (J + " 14:10:20 x -- a.sh@1 -- # timeo=5", True),
    (J + " 14:10:20 x -- a.sh@1 -- # local \t timeo=5 # vm_shutdown_all", True),
    (J + " 14:10:20 x -- a.sh@1 -- # local timeo=1234567890", True),  # N: 9 digits
    (J + " 14:10:20 x -- a.sh@1 -- # local timeo=x", True),
    (J + " 14:10:20 x -- a.sh@1 -- # localtimeo=5", True),
    (J + " 14:10:20 x -- a.sh@1 -- # local timeo=5\r", True),
    (J + " 14:10:20 x -- a.sh@1 -- # local timeo", True),
    (J + " 14:10:20 x -- a.sh@1 -- #  local timeo=5", True),
    (J + "INFO: Waiting for VMs to shutdown...", True),
    (J + "INFO: Waiting for VMs to shutdown...\r", True),
    (J + "INFO: All VMs successfully shut down", True),
    (J + "START TEST t", True),
    (J + "END TEST t", True),
    (J + "END TEST t (in 47s)", True),
    (J + "END TEST t (in 4.25s) \t\r", True),
    ("123456:07:20.302  END TEST t", True),
    ("7:07:20.302  INFO: All VMs successfully shut down", True),
    (J + "START TEST FLAKEBOT-ITERATION-START", True),  # matched, then handed to feed
    # not taken: feed decides
    (J + "START TEST " + "x" * 201, False),
    (J + "START TEST t*", False),
    (J + " 14:10:20 vfio_user_qemu.t -- a.sh@36 -- # vm_shutdown_all " + "*" * 20, False),
    (J + " 14:10:20 vfio_user_qemu.t -- a.sh@36 -- # vm_shutdown_all \x1b[0m", False),
    (J + " 14:10:20 vfio_user_qemu.t -- a.sh@36 -- # vm_shutdown_all é", False),
    (J + " 14:10:20 vfio_user_qemu.t -- a.sh@36 -- # vm_shutdown_all \x1c", False),
    (J + " 14:10:20 vfio_user_qemu.\x85t -- a.sh@36 -- # vm_shutdown_all", False),
    (J + "\t14:10:20 x -- a.sh@36 -- # vm_shutdown_all", False),
    (J + "  START TEST t", False),
    (J + "INFO: Waiting for VMs to shutdown... (2)", False),
    (J + "\x1b[0;32mINFO:\x1b[0m All VMs successfully shut down", False),
    ("2026-09-17T03:25:48.5680391Z INFO: All VMs successfully shut down", False),
    ("INFO: All VMs successfully shut down", False),
    ("00:07:20.30  INFO: All VMs successfully shut down", False),
]


def state(p: spdklog._Parser):
    """Everything feed() can change, comparable."""
    def run(r):
        return (r.test, r.iteration, r.start, r.last, r.end, r.ended, r.in_s, r.rc, r.evidence,
                r.wrapper, r.marker, r.banner, r.cur is None,
                [(w.site, w.limit, w.limit_set, w.start, w.end, w.timed_out, w.done) for w in r.waits])
    def name(r):
        return r and (r.test, r.iteration)
    return (name(p.err_open), name(p.err_close), p.want_limit, list(p.out), [run(r) for r in p.stack],
            [(run(r), c) for r, c in p.deferred], dict(p.counts), [list(t) for t in p.pending],
            p.x_off, p.x_raw, p.x_last, p.frame and (p.frame.test, p.frame.iteration))


def prepared(stage: int) -> spdklog._Parser:
    """A parser inside a run: 0 none open, 1 run open, 2 call seen, 3 waiting."""
    p = spdklog._Parser()
    lines = [J + "START TEST t", XCALL, J + "INFO: Waiting for VMs to shutdown..."][:stage]
    for x in lines:
        p.feed(x)
    return p


def fast_vs_feed(line: str, stage: int):
    """(state after the fast path, state after feed), or None if _FAST does not match."""
    raw = line.encode("utf-8", "surrogateescape")
    m = spdklog._FAST.match(raw, 0, len(raw))
    if m is None:
        return None
    a, b = prepared(stage), prepared(stage)
    a.fast(m)
    b.feed(raw.decode("utf-8", "replace"))
    return state(a), state(b)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("line,taken", SHAPES)
def test_fast_path_same_state_as_feed(line, taken, stage):
    got = fast_vs_feed(line, stage)
    assert (got is not None) == taken
    if got is not None:
        assert got[0] == got[1]


def test_pending_clock_and_midnight_through_the_fast_path():
    """A message without a clock waits for the next xtrace clock; the fast
    xtrace line gives it, and unwraps midnight, as feed does."""
    for way in ("fast", "feed"):
        p = spdklog._Parser()
        p.feed("START TEST t")  # no clock: pending
        assert p.pending
        for line in (J + " 23:59:59 x -- a.sh@1 -- # true", J + " 00:00:01 x -- a.sh@2 -- # true"):
            raw = line.encode()
            if way == "fast":
                p.fast(spdklog._FAST.match(raw, 0, len(raw)))
            else:
                p.feed(line)
        assert (p.pending, p.x_off, p.x_last) == ([], 86400, 86401)
        assert p.stack[0].start == [None, 86399]


ALPHABET = st.sampled_from(list("ab09 \t*@:-#$./()\r") + ["\x1b", "é", "\x1c", "\x85", "TEST", "VMs",
                                                        "timeo=", "local ", "vm_shutdown_all"])


def mutate(line: str, edits) -> str:
    for pos, kind, ch in edits:
        pos %= len(line) + 1
        if kind == 0:
            line = line[:pos] + ch + line[pos:]
        elif kind == 1:
            line = line[:pos] + line[pos + 1:]
        else:
            line = line[:pos] + ch + line[pos + 1:]
    return line


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([x for x, _ in SHAPES]),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 2), ALPHABET), max_size=4),
       st.integers(0, 3))
def test_mutated_shapes_fast_equals_feed(line, edits, stage):
    got = fast_vs_feed(mutate(line, edits), stage)
    if got is not None:
        assert got[0] == got[1]


def no_fast(monkeypatch):
    """Send every line to feed (the reference)."""
    monkeypatch.setattr(spdklog, "_FAST", re.compile(rb"(?!)"))


@pytest.mark.parametrize("era", ["pre2024", "2024", "2025"])
@pytest.mark.parametrize("crlf", [False, True])
def test_parse_file_same_runs_without_fast_path(monkeypatch, era, crlf):
    b = LogBuilder(era, "jenkins", crlf=crlf, wrapper="vfio_user_qemu")
    for i, o in enumerate(["pass", "timeout", "timeout_old", "fail", "pass", "cut"], 1):
        b.iteration(waits=(4.0, 83.0), outcome=o, marker=i if i % 2 else None)
    data = b.text().encode()
    scanners = [True, False] if spdklog_scan.AVAILABLE else [False]
    with_fast = []
    for hs in scanners:
        monkeypatch.setattr(spdklog, "_HS", hs)
        with_fast.append(list(parse_file(io.BytesIO(data))))
    no_fast(monkeypatch)
    for hs in scanners:
        monkeypatch.setattr(spdklog, "_HS", hs)
        assert list(parse_file(io.BytesIO(data))) == with_fast[0]
    assert all(r == with_fast[0] for r in with_fast)
    assert with_fast[0] == parse_text(data)


# ------------------------------------------------------ lines of stars
STAR_LOGS = [
    # stars right before a hit line, banners back to back, a banner whose
    # closing line is missing, stars inside the watch window of a call,
    # a stars line that carries a needle, TEST / timeo= lines near stars
    ["*" * 36, "START TEST a", "*" * 36, "*" * 36, "START TEST b", "*" * 36,
     " 14:10:00 d -- x/a.sh@5 -- # vm_shutdown_all", "*" * 20, "x", "y",
     " 14:10:01 d -- x/a.sh@6 -- # local timeo=5", "INFO: Waiting for VMs to shutdown...",
     "*" * 36, "END TEST b", "INFO: All VMs successfully shut down", "*" * 36, "END TEST b",
     "*" * 36, "END TEST a", "*" * 36],
    ["*" * 36, "1", "2", "3", "START TEST a", "*" * 36, "*" * 36, "1", "2", "3", "4", "END TEST a",
     "START TEST c", "*" * 40 + " VMs shut", "END TEST c", "*" * 36, "timeo=3 TEST", "*" * 36],
    ["START TEST a", "*" * 36, "*" * 36, "END TEST a", "*" * 36, "*" * 36, "*" * 36, "START TEST z",
     "*" * 19, "END TEST z", "*" * 36, "FLAKEBOT-ITERATION-END test=z iteration=1 rc=0", "*" * 36,
     "========== Backtrace start: ==========", "*" * 36, "ERROR: x", "END TEST a"],
]


@pytest.mark.parametrize("prefix", ["", J])
@pytest.mark.parametrize("block", [None, 23, 64, 200])
@pytest.mark.parametrize("log", range(len(STAR_LOGS)))
def test_stars_found_between_hits(monkeypatch, log, block, prefix):
    text = "".join(prefix + x + "\n" for x in STAR_LOGS[log])
    data = text.encode()
    expected = parse_text(data)
    assert list(parse_lines(io.BytesIO(data))) == expected
    if block:
        monkeypatch.setattr(spdklog, "_BLOCK", block)
    for hs in ([True, False] if spdklog_scan.AVAILABLE else [False]):
        monkeypatch.setattr(spdklog, "_HS", hs)
        assert list(parse_file(io.BytesIO(data))) == expected


@pytest.mark.skipif(not spdklog_scan.AVAILABLE, reason="hyperscan not installed")
def test_hits_eq_at_offset_0():
    S = spdklog_scan
    buf = b"=" * 12 + b"\n" + b"*" * 36 + b"\na VMs\nx ========== y\n"
    assert [h & 15 for h in S.hits(buf, len(buf))] == [S.EQ, S.VMS, S.EQ]
    assert S.hits(buf, len(buf))[0] >> 4 == 10
    assert S.hits(b"=" * 9 + b"\n", 10) == []


# --------------------------------------------------- non-ASCII digits
@pytest.mark.parametrize("line", [
    "٠٠:٠٧:٢٠.٣٠٢  INFO: All VMs successfully shut down",
    "00:07:20.302   ١٤:١٠:٢٠ x -- a.sh@36 -- # vm_shutdown_all",
    "٢٠٢٦-٠٩-١٧T٠٣:٢٥:٤٨.٥Z START TEST t",
    " ١٤:١٠:٢٠ x -- a.sh@٣٦ -- # vm_shutdown_all",
])
def test_non_ascii_digits_do_not_crash(line):
    """\\d matches other scripts' digits; the clock regexes take [0-9] only."""
    st = "*" * 36
    lines = [st, "START TEST t", st, " 14:10:00 x -- a.sh@1 -- # vm_shutdown_all",
             "INFO: Waiting for VMs to shutdown...", line, st, "END TEST t", st]
    data = ("\n".join(lines) + "\n").encode()
    expected = parse_text(data)
    for hs in ([True, False] if spdklog_scan.AVAILABLE else [False]):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(spdklog, "_HS", hs)
            assert list(parse_file(io.BytesIO(data))) == expected
    assert [r.test for r in expected] == ["t"]
