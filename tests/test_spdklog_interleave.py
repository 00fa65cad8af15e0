"""spdklog and interleaved stderr: foreign lines between any two lines of a
log, any number of them, change no class and no wait by more than the
clock's resolution (tests/logfixtures.py logs: every era x prefix x
pass/slow/timeout/fail). Also the two misreads this fixed (an ERROR: line
pushed away from its ==== line, a clockless message far from the next
xtrace line), a log cut inside its last line, and giant lines."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flakebot.evidence.spdklog as spdklog
from flakebot.evidence import spdklog_scan
from flakebot.model import Outcome
from flakebot.evidence.spdklog import parse_file, parse_lines, parse_text
from tests.logfixtures import LogBuilder

ERAS = ("pre2024", "2024", "2025")
PREFIXES = ("jenkins", "gha", "plain")
TEST = "vfio_user_nvme_restart_vm"
# outcome -> builder arguments (the second call is the 72 s near miss)
KINDS = {
    "pass": dict(waits=(4.05, 3.05)),
    "slow": dict(waits=(4.05, 72.0)),
    "timeout": dict(waits=(4.05, 0), outcome="timeout"),
    "timeout_old": dict(waits=(4.05, 0), outcome="timeout_old"),
    "fail": dict(waits=(4.05, 0), outcome="fail"),
}
EXPECTED = {"pass": "pass", "slow": "slow", "timeout": "timeout", "timeout_old": "timeout", "fail": "fail"}

# Interleaved stderr: target and QEMU messages, ssh, a tool's own ERROR:/FAIL:
# line outside any error() block, colour, lines that carry a needle but
# nothing the parser takes, blank lines, lines of stars, and xtrace lines of
# another process (XTRACE: rendered with the clock of a neighbouring xtrace
# line, as it would be printed between them).
XTRACE = object()
FOREIGN = [
    "[2026-09-17 03:20:01.123456] ctrlr.c:1234:nvmf_ctrlr_x: *ERROR*: Connection reset by peer",
    "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.vmx",
    "Warning: Permanently added '[127.0.0.1]:10100' (ED25519) to the list of known hosts.",
    "",
    "ERROR: a background tool complained",
    "FAIL: some background check",
    "\x1b[1;31mWARN: coloured stderr noise\x1b[0m",
    "libvirt: 3 VMs shutting down elsewhere",
    "nvme-cli: SELF TEST passed",
    "ssh: connect timeo=5 retry",
    "Traceback (most recent call last):",
    "*" * 36,
    XTRACE,
]
_XCLOCK = re.compile(r"^(?:\S+  |\S+Z )?[+ ]+([0-9][0-9]:[0-9][0-9]:[0-9][0-9])[\t ]")
_PREFIX = re.compile(r"^(?:[0-9]+:[0-9][0-9]:[0-9][0-9]\.[0-9]{3}  |[0-9-]+T[0-9:.]+Z )")


def build(era: str, prefix: str, kind: str, *, limit: int = 90, marker: bool = False,
          ansi: bool = False) -> list[str]:
    b = LogBuilder(era, prefix, ansi=ansi)
    b.iteration(TEST, marker=1 if marker else None, limit=limit, **KINDS[kind])
    return b.text().splitlines()


def foreign(lines: list[str], at: int, k: int, seed: int, after: bool = False) -> list[str]:
    """k foreign lines to go before lines[at], each with the prefix of the
    line before (the time it was printed); xtrace ones with the clock of the
    nearest xtrace line before (or, if after, after) the insertion point."""
    near = lines[at - 1] if at > 0 else lines[0]
    pm = _PREFIX.match(near)
    pre = pm.group(0) if pm else ""
    order = range(at, len(lines)) if after else range(at - 1, -1, -1)
    clock = next((m.group(1) for i in order if (m := _XCLOCK.match(lines[i]))), "14:10:00")
    out = []
    for j in range(k):
        x = FOREIGN[(seed + j) % len(FOREIGN)]
        if x is XTRACE:
            x = f"+ {clock} bg -- common/autotest_common.sh@{100 + j} -- # kill -0 4242"
        out.append(pre + x)
    return out


def interleave(lines: list[str], inserts: dict[int, tuple[int, int, bool]]) -> str:
    out = []
    for i, line in enumerate(lines + [None]):
        if i in inserts:
            k, seed, after = inserts[i]
            out += foreign(lines, i, k, seed, after)
        if line is not None:
            out.append(line)
    return "\n".join(out) + "\n"


def resolution(prefix: str) -> float:
    # foreign lines are never read in prefixed logs: nothing may move there
    return 1.0 if prefix == "plain" else 0.0


def assert_same(base, got, res: float) -> None:
    assert [(r.test, r.iteration, r.outcome) for r in got] == [(r.test, r.iteration, r.outcome) for r in base]
    for rb, rg in zip(base, got):
        assert [(s.call_site, s.limit_s, s.timed_out) for s in rg.shutdowns] == \
               [(s.call_site, s.limit_s, s.timed_out) for s in rb.shutdowns]
        for sb, sg in zip(rb.shutdowns, rg.shutdowns):
            if sb.waited_s is None:
                assert sg.waited_s is None
            else:
                assert abs(sg.waited_s - sb.waited_s) <= res + 1e-9, (sb, sg)


def every_way(text: str, block: int | None = None) -> list:
    """parse_text, parse_lines and parse_file (each line finder; read blocks
    of `block` bytes if given) agree."""
    data = text.encode("utf-8", "surrogateescape")
    # every entry point decodes bytes with errors='replace'; a str holding lone
    # surrogates (undecodable bytes) is not text any decoder gives parse_text
    runs = parse_text(data)
    if data.decode("utf-8", "replace") == text:
        assert parse_text(text) == runs
    assert list(parse_lines(io.BytesIO(data))) == runs
    with pytest.MonkeyPatch.context() as mp:
        if block:
            mp.setattr(spdklog, "_BLOCK", block)
        for hs in ([True, False] if spdklog_scan.AVAILABLE else [False]):
            mp.setattr(spdklog, "_HS", hs)
            assert list(parse_file(io.BytesIO(data))) == runs
    return runs


# ------------------------------------------------------------ the misreads
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("k", [0, 1, 2, 3, 10, 50])
@pytest.mark.parametrize("backtrace", [True, False])
def test_error_line_far_from_its_block_is_a_failure(era, prefix, k, backtrace):
    """Misread 1: the ERROR: line after ===== was looked for in the next two
    lines only; three stderr lines made a failed run 'infra' (cut off) when
    no backtrace followed (fail() exits without one), and lost its message."""
    lines = build(era, prefix, "fail")
    if not backtrace:
        bt = [i for i, x in enumerate(lines) if "acktrace" in x or "BACKTRACE" in x]
        del lines[bt[0]:bt[-1] + 1]
    at = next(i for i, x in enumerate(lines) if x.endswith("ERROR: rpc nvmf_subsystem_remove_listener failed"))
    assert lines[at - 1].endswith("===========")
    pm = _PREFIX.match(lines[at])
    noise = ["[2026-09-17 03:20:01.1] nvmf.c: 123:*ERROR*: noise from the target",
             "qemu-system-x86_64: terminating on signal 15", "Traceback (most recent call last):"]
    lines[at:at] = [(pm.group(0) if pm else "") + noise[j % 3] for j in range(k)]
    (r,) = every_way("\n".join(lines) + "\n")
    assert (r.outcome, r.reason) == (Outcome.FAIL, "ERROR: rpc nvmf_subsystem_remove_listener failed")


def test_error_line_outside_a_block_is_no_failure():
    """A tool's own ERROR: line in a run that is cut off: still infra; the
    same line after ===== makes it a failure."""
    head = ["*" * 36, "START TEST t", "*" * 36, " 10:00:00 d -- a.sh@1 -- # true"]
    assert every_way("\n".join(head + ["ERROR: boom"]) + "\n")[0].outcome is Outcome.INFRA
    r = every_way("\n".join(head + ["=" * 11] + ["noise"] * 40 + ["ERROR: boom", "=" * 11]) + "\n")[0]
    assert (r.outcome, r.reason) == (Outcome.FAIL, "ERROR: boom")
    # the block's closing line opens no new block: a later ERROR: is no evidence
    r = every_way("\n".join(head + ["=" * 11, "FAIL: first", "=" * 11, "ERROR: later"]) + "\n")[0]
    assert r.reason == "FAIL: first"


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("k", [0, 8, 9, 30, 50])
@pytest.mark.parametrize("where", ["Waiting for VMs", "All VMs successfully"])
def test_clockless_message_far_from_the_next_xtrace_line(era, k, where):
    """Misread 2: in a log without prefix, a message line without a clock
    took the next xtrace clock only within 8 lines, else the last clock read:
    a 72 s near miss came out as 0 s (a pass), a pass as 101 s. Foreign lines
    after each such message: the waits stay right to the 1 s clock."""
    lines = build(era, "plain", "slow")
    text = interleave(lines, {i + 1: (k, 3, False) for i, x in enumerate(lines) if where in x})
    (r,) = every_way(text)
    assert r.outcome is Outcome.SLOW
    assert [s.waited_s for s in r.shutdowns] == [pytest.approx(4.05, abs=1.0), pytest.approx(72.0, abs=1.0)]
    lines = build(era, "plain", "pass")
    text = interleave(lines, {i + 1: (k, 3, False) for i, x in enumerate(lines) if where in x})
    (r,) = every_way(text)
    assert r.outcome is Outcome.PASS
    assert [s.waited_s for s in r.shutdowns] == [pytest.approx(4.05, abs=1.0), pytest.approx(3.05, abs=1.0)]


def test_clockless_end_test_waits_for_its_clock():
    """END TEST without a clock, then foreign lines, then the next xtrace
    line: the Run comes out once the clock is there, with it."""
    lines = ["*" * 36, "START TEST t", "*" * 36, " 10:00:00 d -- a.sh@5 -- # vm_shutdown_all",
             "INFO: Waiting for VMs to shutdown...", " 10:00:00 d -- c.sh@1 -- # sleep 1",
             "INFO: All VMs successfully shut down"] + ["noise"] * 40 + [
             "*" * 36, "END TEST t", "*" * 36] + ["more noise"] * 40 + [
             " 10:01:12 d -- c.sh@2 -- # return 0", " 10:01:13 d -- x.sh@3 -- # next"]
    (r,) = every_way("\n".join(lines) + "\n")
    assert (r.outcome, r.shutdowns[0].waited_s, r.duration_s) == (Outcome.SLOW, 72.0, 72.0)

    seen = []

    def feed():
        for i, line in enumerate(lines):
            seen.append(i)
            yield line

    first = next(parse_lines(feed()))
    # held until the clock came (parse_lines reads one line ahead)
    assert first == r and seen[-1] == lines.index(" 10:01:12 d -- c.sh@2 -- # return 0") + 1


def test_clockless_time_at_the_end_of_the_log():
    """No xtrace line after the last clockless line: a wait ending there is
    not measured; the duration uses the last clock read (a lower bound)."""
    lines = ["*" * 36, "START TEST t", "*" * 36, " 10:00:00 d -- a.sh@5 -- # vm_shutdown_all",
             "INFO: Waiting for VMs to shutdown...", " 10:00:00 d -- c.sh@1 -- # sleep 1",
             " 10:01:12 d -- c.sh@1 -- # sleep 1",
             "INFO: All VMs successfully shut down", "*" * 36, "END TEST t", "*" * 36]
    (r,) = every_way("\n".join(lines) + "\n")
    assert (r.outcome, r.shutdowns[0].waited_s, r.duration_s) == (Outcome.PASS, None, 0.0)


# ------------------------------------------------- the property, everywhere
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(era=st.sampled_from(ERAS), prefix=st.sampled_from(PREFIXES),
       kind=st.sampled_from(["pass", "slow", "timeout", "timeout_old", "fail"]),
       limit=st.sampled_from([30, 90]), marker=st.booleans(), ansi=st.booleans(),
       inserts=st.dictionaries(st.integers(0, 10_000),
                               st.tuples(st.integers(0, 50), st.integers(0, 99), st.booleans()),
                               max_size=12),
       block=st.sampled_from([None, 97, 4096]))
def test_foreign_lines_anywhere_change_no_class_and_no_wait(era, prefix, kind, limit, marker, ansi, inserts,
                                                            block):
    lines = build(era, prefix, kind, limit=limit, marker=marker, ansi=ansi)
    base = parse_text("\n".join(lines) + "\n")
    assert [r.outcome.value for r in base] == [EXPECTED[kind]]
    ins = {pos % (len(lines) + 1): v for pos, v in inserts.items()}
    assert_same(base, every_way(interleave(lines, ins), block), resolution(prefix))


@pytest.mark.parametrize("kind", ["pass", "slow", "timeout", "fail"])
@pytest.mark.parametrize("era,prefix", [("2024", "plain"), ("2025", "plain"), ("pre2024", "jenkins")])
def test_foreign_lines_at_every_position(era, prefix, kind):
    """0-50 foreign lines at every position of the log, one position at a
    time (0: the log itself; 1, 2, 3: the old ERROR window; 8, 9: the old
    clock window; 50)."""
    lines = build(era, prefix, kind, limit=30 if kind == "timeout" else 90)
    base = parse_text("\n".join(lines) + "\n")
    res = resolution(prefix)
    for at in range(len(lines) + 1):
        for k in (1, 2, 3, 8, 9, 50):
            got = parse_text(interleave(lines, {at: (k, at, at % 2 == 1)}))
            assert_same(base, got, res)


# ------------------------------------------------------------ cut last line
def test_log_cut_inside_start_test_has_no_run_for_the_cut_name():
    """A log cut inside 'START TEST <name>' stored an infra run for a test
    that does not exist; cut anywhere in that line, only the real names show."""
    b = LogBuilder("2024", "plain")
    b.iteration(TEST, waits=(4.0, 3.0))
    first = b.text()
    b.iteration(TEST, waits=(4.0, 3.0))
    full = b.text()
    start = full.index("START TEST", len(first))
    end = full.index("\n", start)
    for cut in range(start, end + 1):
        text = full[:cut]
        runs = every_way(text)
        names = {r.test for r in runs}
        assert names == {TEST}, (cut, names)
        # (the whole name without its line break too: nothing tells it from a cut one)
        assert [r.outcome for r in runs] == [Outcome.PASS]
    # the whole line with its line break: the run started, the log ends: infra
    assert [r.outcome for r in every_way(full[:end + 1])] == [Outcome.PASS, Outcome.INFRA]


def test_cut_marker_line_neither_opens_nor_closes_an_iteration():
    b = LogBuilder("2025", "gha")
    b.iteration(TEST, waits=(4.0, 3.0), marker=1)
    b.iteration(TEST, waits=(4.0, 0), outcome="infra125", marker=2)
    text = b.text()
    rc_at = text.rindex("rc=125") + len("rc=12")
    runs = every_way(text[:rc_at])  # "rc=12": not a failure with rc 12
    assert [(r.iteration, r.outcome, r.rc) for r in runs] == [(1, Outcome.PASS, 0), (2, Outcome.INFRA, None)]
    start = text.index("FLAKEBOT-ITERATION-START test=", text.index("iteration=2") - 60)
    runs = every_way(text[:start + len("FLAKEBOT-ITERATION-START test=vfio_user")])
    assert [r.test for r in runs] == [TEST]


def test_one_line_log_without_line_break_is_whole():
    """Only a log of two or more lines can have been cut inside its last one."""
    assert [r.test for r in every_way("START TEST t")] == ["t"]
    assert [r.test for r in parse_lines(["START TEST t", "x"])] == ["t"]  # no line breaks at all
    assert [r.test for r in parse_lines(["x\n", "START TEST t"])] == []


# ---------------------------------------------------------------- giant lines
def test_giant_line_same_runs_on_every_entry_point():
    """A line over 4 MiB: parse_file once split it and read its tail as a
    line of its own (here a START TEST banner); every entry point now cuts
    it to its first 1 MiB characters."""
    giant = "x" * (5 << 20) + "\nSTART TEST bogus"  # the tail after 5 MiB, if split
    giant = giant.replace("\n", " ")
    lines = ["*" * 36, "START TEST t", "*" * 36, giant, "*" * 36, "END TEST t", "*" * 36]
    runs = every_way("\n".join(lines) + "\n")
    assert [(r.test, r.outcome) for r in runs] == [("t", Outcome.PASS)]
    # at the end of the log (no line break after it), a giant xtrace line
    xline = " 10:00:05 d -- a.sh@1 -- # echo " + "é" * (3 << 20) + " vm_shutdown_all"
    runs = every_way("\n".join(lines[:3] + [" 10:00:00 d -- a.sh@1 -- # true", "*" * 36, "END TEST t",
                                            xline]))
    assert [(r.test, r.outcome, r.duration_s) for r in runs] == [("t", Outcome.PASS, 5.0)]


LONG = st.lists(st.one_of(
    st.sampled_from(["x", "é", "😀", "\udcff", " ", "vm_shutdown_all", "VMs shut", "START TEST t",
                     "END TEST t", "===========", "ERROR: e", " 10:00:01 d -- a.sh@1 -- # ", "timeo=5",
                     "INFO: Waiting for VMs to shutdown...", "INFO: All VMs successfully shut down",
                     "\x1b[0m", "\r"]),
    st.text(max_size=5).map(lambda s: s.replace("\n", " "))), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(LONG, min_size=1, max_size=12), st.booleans(), st.sampled_from([7, 40, 64]))
def test_long_lines_cut_the_same_everywhere(monkeypatch, lines, last_nl, block):
    """With a tiny line limit and read block, long lines (multi-byte
    characters, needles before and after the cut, a last line without line
    break) give the same Runs on every entry point."""
    monkeypatch.setattr(spdklog, "_MAX_LINE", 16)
    monkeypatch.setattr(spdklog, "_KEEP", 4 * 16 + 3)
    monkeypatch.setattr(spdklog, "_BLOCK", block)
    text = "\n".join(["START TEST t"] + lines) + ("\n" if last_nl else "")
    every_way(text)


# ------------------------------------------------------------ the samples
SAMPLES = Path(__file__).resolve().parent / "fixtures" / "spdk-logs"


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.log")))
@pytest.mark.parametrize("k", [9, 50])
def test_samples_without_prefix_with_foreign_lines_after_every_line(name, k):
    """The sample logs with their prefix stripped (only the 1 s xtrace clock
    left) and k foreign lines after every line: same class and shutdowns,
    waits to the clock's resolution."""
    lines = [_PREFIX.sub("", x) for x in (SAMPLES / name).read_text().splitlines()]
    base = parse_text("\n".join(lines) + "\n")
    assert base and all(r.shutdowns for r in base)
    text = interleave(lines, {i: (k, i, i % 2 == 0) for i in range(1, len(lines) + 1)})
    assert_same(base, every_way(text), 1.0)
