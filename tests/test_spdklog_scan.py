"""parse_file's two line finders (Hyperscan, and the bytes.find fallback used
where ``import hyperscan`` fails) must choose the same lines, so give the same
Runs as parse_text / parse_lines, on every log shape and on junk."""
from __future__ import annotations

import io
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flakebot.evidence.spdklog as spdklog
from flakebot.evidence import spdklog_scan
from flakebot.evidence.spdklog import parse_file, parse_lines, parse_text
from tests.logfixtures import LogBuilder

SCANNERS = [
    pytest.param(True, id="hyperscan",
                 marks=pytest.mark.skipif(not spdklog_scan.AVAILABLE, reason="hyperscan not installed")),
    pytest.param(False, id="find"),
]


@pytest.fixture(params=SCANNERS)
def scanner(request, monkeypatch):
    monkeypatch.setattr(spdklog, "_HS", request.param)
    return request.param


def both_scanners(data: bytes, block: int | None = None) -> list:
    """parse_file with each scanner (and parse_lines over the lines): all equal."""
    results = []
    with pytest.MonkeyPatch.context() as mp:
        if block:
            mp.setattr(spdklog, "_BLOCK", block)
        for hs in ([True, False] if spdklog_scan.AVAILABLE else [False]):
            mp.setattr(spdklog, "_HS", hs)
            results.append(list(parse_file(io.BytesIO(data))))
    results.append(list(parse_lines(io.BytesIO(data))))
    expected = parse_text(data)
    for r in results:
        assert r == expected
    return expected


def test_fallback_is_used_without_hyperscan(monkeypatch):
    """Where the import fails, the bytes.find scanner runs (and Hyperscan is not touched)."""
    monkeypatch.setattr(spdklog, "_HS", False)

    def boom(*a, **k):
        raise AssertionError("hyperscan used")

    monkeypatch.setattr(spdklog_scan, "hits", boom)
    b = LogBuilder("2024", "jenkins")
    b.iteration(waits=(4.0, 3.0))
    (r,) = parse_file(io.BytesIO(b.text().encode()))
    assert r.outcome.value == "pass"


@pytest.mark.skipif(not spdklog_scan.AVAILABLE, reason="hyperscan not installed")
def test_fallback_when_hyperscan_cannot_compile(monkeypatch):
    """Hyperscan imports but refuses to compile (e.g. a CPU without SSSE3): the
    bytes.find scanner runs and the Runs are the same."""
    b = LogBuilder("2024", "jenkins")
    b.iteration(waits=(4.0, 83.0))
    data = b.text().encode()
    expected = parse_text(data)

    class Broken:
        def __init__(self, *a, **k):
            raise spdklog_scan._hs.error("unsupported platform")

    monkeypatch.setattr(spdklog_scan._hs, "Database", Broken)
    monkeypatch.setattr(spdklog_scan, "_db", None)
    monkeypatch.setattr(spdklog_scan, "_ready", None)
    assert list(parse_file(io.BytesIO(data))) == expected
    assert spdklog_scan.ready() is False


@pytest.mark.skipif(not spdklog_scan.AVAILABLE, reason="hyperscan not installed")
def test_hits_one_per_needle_run():
    buf = (b"x\n" + b"*" * 36 + b"\n== " + b"=" * 11 + b" x\n"
           b"a VMs shut\n\x1b[0m\x1b[1m\n vm_shutdown_all\nFLAKEBOT-ITERATION-END\n"
           b"START TEST t\nEND TEST t\nlocal timeo=5\nERROR: x\nFAIL: y\nerr_clean a\nerror_exit b\n")
    kinds = [h & 15 for h in spdklog_scan.hits(buf, len(buf))]
    S = spdklog_scan
    assert kinds == [S.EQ, S.VMS, S.ESC, S.ESC, S.CALL, S.MARK, S.TEST, S.TEST, S.TIMEO, S.ERR, S.ERR,
                     S.TRAP, S.TRAP]
    offs = [h >> 4 for h in spdklog_scan.hits(buf, len(buf))]
    assert offs == sorted(offs)
    assert spdklog_scan.hits(buf, 2) == []  # only buf[:end] is scanned


FIXTURES = list(itertools.product(("pre2024", "2024", "2025"), ("jenkins", "gha", "plain"),
                                  (False, True), (False, True), (False, True)))


@pytest.mark.parametrize("era,prefix,crlf,ansi,stderr", FIXTURES)
def test_every_shape_same_runs(era, prefix, crlf, ansi, stderr):
    b = LogBuilder(era, prefix, crlf=crlf, ansi=ansi, stderr=stderr,
                   wrapper="vfio_user_qemu" if stderr else None)
    plan = ["pass", "timeout", "timeout_old", "fail", "pass", "cut_marker", "infra125", "pass", "cut"]
    for i, o in enumerate(plan, 1):
        b.iteration("vfio_user_virtio_blk_restart_vm" if i % 2 else "vfio_user_nvme_restart_vm",
                    (4.0 + i, 83.5 if i % 3 == 0 else 3.0), o, marker=i if i % 2 else None)
    runs = both_scanners(b.text().encode())
    assert len(runs) >= len(plan) - 1


@pytest.mark.parametrize("shift", [0, 1, 7, 20, 40, 90])
def test_lines_across_the_1mib_block_boundary(shift):
    """Interesting lines, banners and follow-up windows cut by the real 1 MiB read."""
    b = LogBuilder("2024", "jenkins", ansi=True)
    while sum(len(x) + 1 for x in b.lines) < (1 << 20) + 40_000:
        b.iteration(waits=(4.0, 3.0))
    text = b.text()
    # move every line by `shift` bytes so different lines straddle the boundary
    data = (b"#" * shift + b"\n" + text.encode())
    runs = both_scanners(data)
    assert len(runs) == sum(1 for x in b.lines if "END TEST" in x)


@pytest.mark.parametrize("block", [50, 333, 4096])
def test_small_blocks_both_scanners(block):
    b = LogBuilder("2025", "plain", crlf=True, ansi=True, stderr=True, wall0=86390)
    for i, o in enumerate(["pass", "timeout_old", "fail", "pass", "cut"], 1):
        b.iteration(waits=(4.0, 83.0), outcome=o, marker=i if i % 2 else None)
    runs = both_scanners(b.text().encode(), block=block)
    assert [r.outcome.value for r in runs] == ["slow", "timeout", "fail", "slow", "infra"]


LINES = st.one_of(
    st.text(max_size=80).map(lambda s: s.replace("\n", " ")),
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ").decode("latin-1")),
    st.sampled_from([
        "*" * 36, "*" * 20, "x" + "*" * 25 + "y", "\x1b[0m" + "*" * 36, "START TEST t", "END TEST t",
        "END TEST t (in 5s)", "INFO: All VMs successfully shut down", "INFO: Waiting for VMs to shutdown...",
        "WARN: Not all VMs were shut down. Leftovers: 1", "========== Backtrace start: ==========",
        "===========", "ERROR: boom", "\x1b[0;32mINFO:\x1b[0m Waiting for VMs to shutdown...",
        " 14:10:00 d -- x/a.sh@5 -- # vm_shutdown_all", " 14:10:01 d -- x/a.sh@6 -- # local timeo=5",
        "+ 14:10:02 d -- test/a.sh@7: err_clean vm_shutdown_all 508", " 14:10:03\t-- v/c.sh@496 -- # sleep 1",
        "in /x/common.sh:508 -> vm_shutdown_all([])", "FLAKEBOT-ITERATION-START test=t iteration=2 run_id=r",
        "FLAKEBOT-ITERATION-END test=t iteration=2 rc=1", "VM1 is shutting down", "vm_shutdown 1", "",
        "\r", "timeo=7", "TEST",
    ]),
)
PREFIX = st.sampled_from(["", "00:07:20.123  ", "2026-09-17T03:25:48.5680391Z ", "12:00:00.000  "])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(PREFIX, LINES), max_size=60), st.sampled_from(["\n", "\r\n"]),
       st.sampled_from([None, 17, 64, 300]))
def test_random_logs_same_runs(lines, nl, block):
    text = nl.join(p + x for p, x in lines) + nl
    both_scanners(text.encode("utf-8", "surrogateescape"), block=block)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4000), st.sampled_from([None, 31, 256]))
def test_random_bytes_same_runs(data, block):
    both_scanners(data, block=block)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), LINES), max_size=25), st.sampled_from([None, 97]))
def test_fixture_log_with_junk_inserted(inserts, block):
    b = LogBuilder("2024", "jenkins", ansi=True)
    b.iteration(waits=(4.0, 3.0), marker=1)
    b.iteration(waits=(83.2, 3.0), outcome="timeout")
    lines = b.text().splitlines()
    for pos, junk in inserts:
        lines.insert(pos % (len(lines) + 1), junk)
    both_scanners(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"), block=block)


def test_existing_tests_run_with_both(scanner, tmp_path):
    """The samples through the scanner chosen by the fixture."""
    from tests.test_spdklog import SAMPLES
    for p in sorted(SAMPLES.glob("*.log")):
        assert list(parse_file(p)) == parse_text(p.read_text())
