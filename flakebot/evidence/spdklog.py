"""SPDK console log -> Runs (model.Run). The one parser.

Streaming, one pass, bounded memory (Runs whose times still wait for a clock
are held back until it comes). Public API::

    parse_lines(lines, *, slow_threshold_s=DEFAULT_SLOW_THRESHOLD_S) -> Iterator[Run]
    parse_file(path, *, slow_threshold_s=...) -> Iterator[Run]
    parse_text(text, *, slow_threshold_s=...) -> list[Run]

All three give the same Runs for the same content (tested). ``parse_file`` reads
the file in binary blocks and only decodes the lines that can matter, which is
what makes it fast: it finds them with one Hyperscan pass per block
(``spdklog_scan``), or, where ``import hyperscan`` fails, with one ``bytes.find``
pass per needle (same lines). ``parse_lines`` takes any iterable of ``str`` or
``bytes`` lines (one line per item, with or without ``\\n``/``\\r\\n``).
``parse_file`` also handles the hot line shapes (Jenkins-prefixed xtrace
lines, Waiting for VMs / All VMs successfully shut down, START/END TEST)
straight from the bytes (``_FAST``, ``_Parser.fast``: same state changes as
``feed``, tested line by line); every other line goes through ``feed``.

Formats: the three PS4 xtrace eras, the Jenkins timestamper prefix
(``00:09:03.952  ``), the GitHub Actions prefix (``2026-09-17T03:25:48.5680391Z ``)
or no prefix; ANSI colour codes; CRLF; stderr interleaved; logs crossing midnight.

How a line is chosen: by its content only, never by its distance from another
line, so interleaved stderr lines (any number, anywhere) change nothing. A
line is looked at if it contains one of ``NEEDLES`` (a ``shut`` line only with
``VMs`` or ``vm_shutdown_all`` in it), or one of ``WANTED`` while the parser
wants it (``timeo=`` while a wait has no limit yet, ``ERROR:``/``FAIL:``
while an error block is open), or, while a time is waiting for a clock (see
Clocks), if it starts like an xtrace line (``_XHEAD``). Lines are cut to
``_MAX_LINE`` characters before anything else looks at them, on every entry
point. A log of two or more lines whose last line has no line break was cut
inside that line: it opens no run (``START TEST``, ``FLAKEBOT-ITERATION-START``)
and closes no iteration (its name or rc may be cut short).

Decisions (documented in tests/test_spdklog.py as tables):

* Runs are the innermost ``run_test`` tests. A test whose ``START TEST`` is
  followed by another test's ``START TEST`` before its ``END TEST``, and which has
  recorded no shutdown and no failure, is a wrapper (``vfio_user_qemu``) and is
  never emitted. A ``START TEST`` after a test that failed (failure evidence) or
  that already did shutdowns, or of the same name, ends that test instead.
* Outcome: ``timeout`` if a shutdown timed out; else (END TEST seen) ``slow`` if
  the worst wait >= slow_threshold_s, else ``pass``; else (no END TEST) ``infra``
  for host-script rc 125, ``fail`` with failure evidence (backtrace, ``ERROR:``
  block, ``err_clean``/``error_exit``, non-zero marker rc),
  else ``infra`` (cut off). A failed iteration ends at the next START TEST, the
  next iteration marker, or end of log.
* Timeout evidence while a shutdown waits: ``WARN: Not all VMs were shut down``
  (2024-06+); ``err_clean``/``error_exit vm_shutdown_all <line>`` or a backtrace
  frame ``-> vm_shutdown_all(`` (pre-June 2024: ``(( timeo -= 1 ))`` hit zero
  under errexit); the old ``ERROR: Timeout waiting for some VMs to shutdown`` /
  ``VMs were NOT shutdown properly`` messages; any other failure evidence once
  the wait has lasted >= limit - 1 s (the counter cannot run out sooner).
* Our markers ``FLAKEBOT-ITERATION-START test= iteration= run_id=`` /
  ``FLAKEBOT-ITERATION-END test= iteration= rc=`` (jobs/run-restart-tests.sh):
  they give the iteration number and rc. The iteration's Run is the banner test
  of the same name inside it, or, if the host script printed no banner, the
  marker pair itself (then rc 0 counts as passed). END marker without END TEST:
  ``fail`` for rc != 0, ``infra`` for rc 125 (or rc 0: the log lost the END TEST).
  START marker without END marker (at end of log, or before the next START
  marker): ``infra``, unless a shutdown timed out (``timeout``) or END TEST was
  seen (``pass``/``slow``, rc None). A run that saw END TEST keeps its pass/slow
  outcome whatever the rc (the rc is recorded).
* rc: from the END marker; 0 when END TEST was seen without markers; else None.
* Clocks, finest first: GitHub Actions prefix (100 ns), Jenkins elapsed prefix
  (1 ms), xtrace wall clock (1 s). A message line with no clock of its own
  (logs without a prefix) lies between the previous and the next xtrace line;
  it takes the clock of the NEXT xtrace line, however many lines later
  (pending until then; a Run whose times are pending is held back until they
  have their clock). Why the next one: ``notice``/``warning`` print the
  message just before the next traced command of the same function (the
  wait loop's first test after ``Waiting for VMs``, ``return 0`` after ``All
  VMs successfully shut down``), while the previous xtrace line can be
  seconds older (``vm_shutdown`` ssh-ing into the VM before ``Waiting``). So
  the estimate is the floor of a time a few ms after the event, like an
  xtrace line's own clock, and a wait between two such lines is good to the
  clock's resolution (+-1 s). Only at the end of the log, with no later xtrace
  line, does a pending time take the last xtrace clock read (a lower bound):
  a wait with such an end is not measured (None), a duration uses it. The
  xtrace clock is unwrapped across midnight (a jump back of more than 12 h is
  a new day).
* Error blocks: SPDK's ``error``/``fail`` print a line of ``=`` only, the
  ``ERROR:``/``FAIL:`` message, and a line of ``=`` again. A line of ``=``
  opens a block in the innermost open test; the next ``ERROR:``/``FAIL:`` line
  while it is open (however far) is failure evidence; the next line of ``=``
  after that closes the block. An ``ERROR:`` line outside a block is no
  evidence.
* Banners: a line that is exactly ``START TEST <name>`` / ``END TEST <name>
  [(in Ns)]`` (after prefix and colour) is a ``run_test`` banner; the lines of
  stars around it are not needed. Names of older trees are read as flakebot's
  (``RENAMED_TESTS``: until 2022-09 the NVMe restart test ran as
  ``vfio_user_restart_vm``), so their runs are stored under one name.
* Shutdown: one per ``vm_shutdown_all`` xtrace call line, call site
  ``<calling script basename>@<line>``, limit from the first ``timeo=N``
  xtrace line after the call while its wait is open (2024+: right after the
  call; before: right after ``Waiting for VMs``), else the call argument,
  else 90. waited_s runs from ``Waiting for VMs to shutdown...`` to ``All VMs
  successfully shut down`` or to the timeout evidence; None if the log ends
  (or the test fails otherwise) before either.
* Duration: prefix clocks START TEST -> END TEST; else ``(in Ns)``; else xtrace
  clocks. For runs without END TEST, up to the last line seen in the run.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from typing import IO, Iterable, Iterator, Optional, Union

from flakebot.evidence import spdklog_scan as _scan
from flakebot.model import DEFAULT_LIMIT_S, DEFAULT_SLOW_THRESHOLD_S, Outcome, Run, Shutdown

__all__ = ["parse_lines", "parse_file", "parse_text", "NEEDLES", "RENAMED_TESTS"]

# run_test names of older SPDK trees -> flakebot's test name (jobs/host-checks.sh
# runs the old script under its old name)
RENAMED_TESTS: dict[str, str] = {"vfio_user_restart_vm": "vfio_user_nvme_restart_vm"}

# A line is interesting iff it contains one of these (plus, while a time waits
# for a clock, the lines that start like an xtrace line). Without Hyperscan
# each is one C-speed scan of the file.
NEEDLES: tuple[str, ...] = (
    "shut",  # with "VMs" or "vm_shutdown_all" in the same line (see _SHUT_ALSO):
    # the call, Waiting for VMs / All VMs successfully / Not all VMs / old timeout
    # messages, err_clean vm_shutdown_all, backtrace frames
    "==========",  # backtrace banner, error() block separator
    "TEST ",  # run_test's START TEST / END TEST banner
    "err_clean",  # the ERR traps
    "error_exit",
    "FLAKEBOT-ITERATION-",  # our markers
    "\x1b",  # ANSI: strip, then look again
)
# Lines with these are chosen only while the parser wants them: timeo= while
# a wait has no limit yet (_Parser.want_limit), ERROR:/FAIL: while an error
# block is open (err_open). Still by content and state only, never by
# distance; it spares the bytes.find scanner three passes per block.
WANTED: tuple[str, ...] = ("timeo=", "ERROR:", "FAIL:")
_SHUT_ALSO = ("VMs", "vm_shutdown_all")
_NEEDLES_B = tuple(n.encode() for n in NEEDLES)
# after shut; the two traps are found by one regex search (one scan for both,
# from their common "err": cheaper than two bytes.find passes)
_OTHER_B = tuple(n for n in _NEEDLES_B[1:] if n not in (b"err_clean", b"error_exit"))
_TRAPS_B = re.compile(rb"err(?:_clean|or_exit)")
_TIMEO_B, _ERROR_B, _FAIL_B = (n.encode() for n in WANTED)
_SHUT_B = b"shut"
_SHUT_ALSO_B = tuple(n.encode() for n in _SHUT_ALSO)
# Hyperscan finds the needles in one pass where it is installed (spdklog_scan);
# else one bytes.find pass per needle. Tests switch this off to test both.
_HS = _scan.AVAILABLE
_VMS, _TIMEO_K, _ERR_K = _scan.VMS, _scan.TIMEO, _scan.ERR

_MAX_STACK = 32
_MAX_LINE = 1 << 20  # a "line" longer than this is cut (binary junk), in characters
# bytes of a line that always decode to at least its first _MAX_LINE characters
# (UTF-8: at most 4 bytes per character, plus a sequence cut at the end)
_KEEP = 4 * _MAX_LINE + 3
_BLOCK = 1 << 20

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
# clock fields are [0-9], not \d: \d also matches other scripts' digits, which
# _N2/_MS below do not know
_JPREFIX = re.compile(r"([0-9]{1,6}):([0-9][0-9]):([0-9][0-9])\.([0-9]{3})  ")  # Jenkins timestamper
_GPREFIX = re.compile(  # GitHub Actions
    r"([0-9]{4})-([0-9][0-9])-([0-9][0-9])T([0-9][0-9]):([0-9][0-9]):([0-9][0-9])(?:\.([0-9]{1,9}))?Z ?")
_XSTART = (" ", "+", "\t")
_XTRACE = re.compile(
    r"[+ ]*([0-9][0-9]):([0-9][0-9]):([0-9][0-9])[\t ]+(?:\S+ +)?-- (\S+)@(\d+)(?: -- [#$] ?|: ?)(.*)"
)
# The start of a line that feed() may read as an xtrace line (a superset: feed
# decides): an optional prefix, "+"/" ", the wall clock. While a time waits for
# a clock, the drivers feed every line that starts so (str and bytes forms: the
# same lines, the pattern is ASCII).
_XHEAD_P = (r"(?:[0-9]{1,6}:[0-9][0-9]:[0-9][0-9]\.[0-9]{3}  "
            r"|[0-9]{4}-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9](?:\.[0-9]{1,9})?Z ?)?"
            r"[+ ]+[0-9][0-9]:[0-9][0-9]:[0-9][0-9][\t ]")
_XHEAD = re.compile(_XHEAD_P)
_XHEAD_B = re.compile(_XHEAD_P.encode())
_XNEXT_B = re.compile(b"\n" + _XHEAD_P.encode())  # search: the next such line
_BANNER = re.compile(r"\s*(START|END) TEST (\S{1,200})(?: \(in (\d{1,9}(?:\.\d{1,9})?)s\))?\s*$")
_MARKER = re.compile(r"FLAKEBOT-ITERATION-(START|END)((?:\s+\w+=\S*)*)")
_KV = re.compile(r"(\w+)=(\S*)")
_CALL = re.compile(r"vm_shutdown_all(?:\s+(\d{1,9}))?\s*$")
_TIMEO = re.compile(r"(?:local\s+)?timeo=(\d{1,9})")
_TRAP = re.compile(r"(err_clean|error_exit)\s+(\S+)")
_FRAME_IN_SHUTDOWN = re.compile(r"->\s*vm_shutdown_all\(")

_TIMEOUT_MSGS = (
    "Not all VMs were shut down",
    "Timeout waiting for some VMs to shutdown",
    "VMs were NOT shutdown properly",
)


# Prefix clocks are integer ticks of 100 ns (the finest prefix, GitHub
# Actions'): differences are exact, so a wait comes out as the nearest float
# to the logged difference with one division (no round()). xtrace clocks
# are whole seconds.
_TICKS = 10_000_000
# int() is slow; clock fields are looked up instead, already scaled (the
# fast path adds four look-ups, no multiplications)
_N2 = {f"{i:02d}": i for i in range(100)}
_MS = {f"{i:03d}": i * (_TICKS // 1000) for i in range(1000)}  # ms -> ticks
_N2B = {k.encode(): v for k, v in _N2.items()}
_MSB = {k.encode(): v for k, v in _MS.items()}
_H2B = {k: v * 3600 for k, v in _N2B.items()}  # xtrace: hours -> seconds
_M2B = {k: v * 60 for k, v in _N2B.items()}
_H2T = {k: v * _TICKS for k, v in _H2B.items()}  # prefix: hours -> ticks
_M2T = {k: v * _TICKS for k, v in _M2B.items()}
_S2T = {k: v * _TICKS for k, v in _N2B.items()}

# The fast path (parse_file): the hot line shapes, matched over the raw bytes
# and handled by _Parser.fast without decoding the line or running feed's
# cascade. A Jenkins prefix, then one of: an xtrace line, Waiting for VMs /
# All VMs successfully shut down, START/END TEST. Each part is feed's own
# regex (_JPREFIX, _XTRACE, _BANNER) over a narrower alphabet: printable
# ASCII without "*" (feed once treated lines of stars apart), space, tab (\S -> _A, . -> _B, \s -> [\t ],
# \d -> [0-9]); the trailing "\r*" is feed's rstrip. On such a line the str
# regexes match the same way with the same groups, and feed's other checks
# (ESC, invalid UTF-8: not in the alphabet; the 1 MiB cut: the callers check
# the length) cannot fire, except FLAKEBOT-ITERATION- in a
# banner's test name (fast() hands that line to feed). Any other line goes
# to feed. tests/test_spdklog_fast.py compares the two line by line.
# The two xtrace commands that matter are told apart here too, as _xtrace
# does: a whole vm_shutdown_all call (_CALL) and a timeo=N line (_TIMEO);
# any other command (or one of those that _CALL / _TIMEO reject) is the
# third alternative and goes through _xtrace.
_A = rb"[!-)+-~]"
_B = rb"[ -)+-~\t]"
# Groups: 1-4 the prefix clock; xtrace: 5-7 its clock, 8 script, 9 line,
# then 10 the call's argument + 11 (empty, marks a call), or 12 timeo's N +
# 13 (empty, marks timeo=N), or 14 any other command; 15 Waiting; 16-18
# START/END TEST. fast() dispatches on m.lastindex (the last group closed).
_FAST = re.compile(
    rb"([0-9]{1,6}):([0-9][0-9]):([0-9][0-9])\.([0-9]{3})  (?:"
    rb"[+ ]+([0-9][0-9]):([0-9][0-9]):([0-9][0-9])[\t ]+(?:" + _A + rb"+ +)?-- (" + _A + rb"+)@([0-9]+)"
    rb"(?: -- [#$] ?|: ?)"
    rb"(?:vm_shutdown_all(?:[\t ]+([0-9]{1,9}))?[\t ]*()"
    rb"|(?:local[\t ]+)?timeo=([0-9]{1,9})" + _B + rb"*()"
    rb"|(" + _B + rb"*))\r*"
    rb"|INFO: (W)aiting for VMs to shutdown\.\.\.\r*|INFO: All VMs successfully shut down\r*"
    rb"|(START|END) TEST (" + _A + rb"{1,200})(?: \(in ([0-9]{1,9}(?:\.[0-9]{1,9})?)s\))?[\t \r]*"
    rb")$")


def _measured(a: Optional[list], b: Optional[list]) -> Optional[float]:
    """_diff for a wait: None if a time got no clock before the end of the
    log (Parser.close marks those: a lower bound is not a measurement)."""
    if a is None or b is None or len(a) > 2 or len(b) > 2:
        return None
    return _diff(a, b)


def _diff(a: Optional[list], b: Optional[list]) -> Optional[float]:
    """Seconds from time a to time b, each [prefix_clock, xtrace_clock]."""
    if a is None or b is None:
        return None
    pa = a[0]
    pb = b[0]
    if pa is not None and pb is not None:
        return (pb - pa) / _TICKS if pb > pa else 0.0
    xa = a[1]
    xb = b[1]
    if xa is not None and xb is not None:
        return float(xb - xa) if xb > xa else 0.0
    return None


class _Wait:
    """One vm_shutdown_all call being followed."""

    __slots__ = ("site", "limit", "limit_set", "start", "end", "timed_out", "done")

    def __init__(self, site: str, arg_limit: Optional[int]):
        self.site = site
        self.limit = arg_limit if arg_limit is not None else DEFAULT_LIMIT_S
        self.limit_set = False  # a timeo=N line seen
        self.start: Optional[list] = None  # Waiting for VMs
        self.end: Optional[list] = None
        self.timed_out = False
        self.done = False


class _Run:
    __slots__ = (
        "test", "iteration", "start", "last", "end", "ended", "in_s", "rc",
        "evidence", "waits", "cur", "wrapper", "marker", "banner", "frame",
    )

    def __init__(self, test: str, iteration: int, start: list, marker: bool = False):
        self.test = test
        self.iteration = iteration
        self.start = start
        self.last = start
        self.end: Optional[list] = None
        self.ended = False
        self.in_s: Optional[float] = None
        self.rc: Optional[int] = None
        self.evidence = ""
        self.waits: list[_Wait] = []
        self.cur: Optional[_Wait] = None
        self.wrapper = False
        self.marker = marker  # the implicit run of a marker frame
        self.banner = not marker  # a START TEST banner opened it
        self.frame = None

    def active(self) -> bool:
        return bool(self.waits) or bool(self.evidence)


class _Frame:
    __slots__ = ("test", "iteration", "run", "others")

    def __init__(self, test: str, iteration: int, run: _Run):
        self.test = test
        self.iteration = iteration
        self.run = run
        self.others: list[_Run] = []  # non-wrapper banner runs of other names inside


class _Parser:
    def __init__(self, slow_threshold_s: float = DEFAULT_SLOW_THRESHOLD_S):
        self.slow = float(slow_threshold_s)
        # error()/fail() blocks (see the module doc): the run whose block is
        # open (waiting for its ERROR:/FAIL: line), the run whose block had
        # it (its next line of "=" closes it)
        self.err_open: Optional[_Run] = None
        self.err_close: Optional[_Run] = None
        self.cut_line = False  # the line being fed is a last line cut short
        # a wait was opened and has no timeo=N yet: timeo= lines are wanted
        # (like err_open for ERROR:/FAIL: lines; see WANTED)
        self.want_limit = False
        self.out: list[Run] = []
        self.stack: list[_Run] = []
        self.frame: Optional[_Frame] = None
        self.counts: dict[str, int] = {}
        self.pending: list[list] = []  # times waiting for the next xtrace clock
        self.deferred: list[tuple] = []  # finished Runs held back for pending times
        self.x_off = 0
        self.x_raw: Optional[int] = None
        self.x_last: Optional[int] = None
        self._days: dict[tuple, float] = {}
        self._day0: Optional[int] = None

    # ----------------------------------------------------------------- lines
    def feed(self, line: str) -> None:
        # the hot path: kept to few operations (see docs/benchmarks/parse.md)
        if len(line) > _MAX_LINE:
            line = line[:_MAX_LINE]
        line = line.rstrip("\r\n")
        if "\x1b" in line:
            line = _ANSI.sub("", line).replace("\x1b", "")
        p = None
        pos = 0
        m = _JPREFIX.match(line)
        if m is not None:
            pos = m.end()
            h, mi, s, ms = m.groups()
            hh = _N2.get(h)
            if hh is None:
                hh = int(h)
            p = (hh * 3600 + _N2[mi] * 60 + _N2[s]) * _TICKS + _MS[ms]
        else:
            m = _GPREFIX.match(line)
            if m is not None:
                pos = m.end()
                g = m.groups()
                key = g[:3]
                day = self._days.get(key)
                if day is None:
                    try:
                        o = _dt.date(int(key[0]), int(key[1]), int(key[2])).toordinal()
                    except ValueError:
                        o = 0
                    if self._day0 is None:
                        self._day0 = o  # keep values small
                    day = (o - self._day0) * (86400 * _TICKS)
                    if len(self._days) > 64:
                        self._days.clear()
                    self._days[key] = day
                frac = g[6]
                p = day + (_N2[g[3]] * 3600 + _N2[g[4]] * 60 + _N2[g[5]]) * _TICKS
                if frac:  # to the nearest 100 ns tick (GitHub prints 7 digits)
                    d = 10 ** len(frac)
                    p += (int(frac) * 2 * _TICKS + d) // (2 * d)
        x = None
        if line.startswith(_XSTART, pos):
            xm = _XTRACE.match(line, pos)
            if xm is not None:
                xh, xmi, xs, script, sline, cmd = xm.groups()
                x = self._xclock(_N2[xh] * 3600 + _N2[xmi] * 60 + _N2[xs])
                if self.stack:
                    self._xtrace(cmd, script, sline, [p, x])
                return
        rest = line[pos:] if pos else line
        tm = [p, x]
        body = rest.strip()
        if not body:
            return
        if "FLAKEBOT-ITERATION-" in body:
            mm = _MARKER.search(body)
            if mm:
                self._marker(mm, self._clock(tm))
            return
        if "TEST" in body:
            bm = _BANNER.match(body)
            if bm:
                self._banner(bm.group(1) == "START", bm.group(2), bm.group(3), self._clock(tm))
                return
        run = self.stack[-1] if self.stack else None
        if run is None:
            return
        if "VMs" in body:
            w = run.cur
            if "Waiting for VMs to shutdown" in body:
                self._waiting(run, self._clock(tm))
                return
            if w is not None and w.start is not None and not w.done and not w.timed_out:
                if "All VMs successfully shut down" in body:
                    self._all_down(run, w, self._clock(tm))
                    return
                for msg in _TIMEOUT_MSGS:
                    if msg in body:
                        self._timeout(run, w, tm)
                        return
            return
        if "==========" in body:
            if "backtrace start" in body.lower():
                self._evidence(run, "backtrace", tm, shutdown_hint=False)
            elif not body.strip("="):  # error()/fail(): a line of "=" only
                if self.err_close is run:
                    self.err_close = None  # the block's closing line
                else:
                    self.err_open = run
            return
        if body.startswith(("ERROR:", "FAIL:")):
            if self.err_open is run:  # the message of the open block
                self.err_open = None
                self.err_close = run
                self._evidence(run, body[:80], tm, shutdown_hint=False)
            return
        if "vm_shutdown_all" in body and _FRAME_IN_SHUTDOWN.search(body):
            self._evidence(run, "backtrace in vm_shutdown_all", tm, shutdown_hint=True)
            return

    def _xclock(self, raw: int) -> int:
        """An xtrace line's wall clock (seconds of the day): unwrapped across
        midnight; gives the pending times their clock."""
        if self.x_raw is not None and raw < self.x_raw - 43200:
            self.x_off += 86400
        self.x_raw = raw
        x = raw + self.x_off
        self.x_last = x
        if self.pending:
            for tm in self.pending:
                tm[1] = x
            self.pending.clear()
            if self.deferred:
                self._flush()
        return x

    # _banner, _waiting, _all_down: tm has a clock or is registered for one
    # (_clock; feed does that, the fast path's lines have prefix clocks)
    def _banner(self, start: bool, name: str, in_s: Optional[str], tm: list) -> None:
        """A START/END TEST line that run_test printed."""
        name = RENAMED_TESTS.get(name, name)
        if start:
            if not self.cut_line:  # else the name may be cut short
                self._start_test(name, tm)
        else:
            self._end_test(name, in_s, tm)

    def _waiting(self, run: _Run, tm: list) -> None:
        """Waiting for VMs to shutdown..."""
        w = run.cur
        if w is None or w.start is not None:
            # no call line seen for this wait (xtrace off?)
            w = run.cur = _Wait("?", None)
            run.waits.append(w)
            self.want_limit = True
        w.start = tm
        run.last = tm

    def _all_down(self, run: _Run, w: _Wait, tm: list) -> None:
        """All VMs successfully shut down (w is waiting)."""
        w.end = tm
        w.done = True
        run.last = tm
        run.cur = None
        self.want_limit = False

    def fast(self, m: "re.Match[bytes]") -> None:
        """What feed() does with a line that _FAST matched (see there), from
        the match over the raw bytes: no decoding of the line, no cascade."""
        k = m.lastindex
        # groups 5-14 belong to the xtrace alternative; "All VMs successfully
        # shut down" has no group of its own (k == 4)
        xtrace = 4 < k < 15
        if xtrace:
            h, mi, sec, ms, xh, xmi, xs = m.group(1, 2, 3, 4, 5, 6, 7)
        else:  # only the groups needed: each one is a new bytes object
            h, mi, sec, ms = m.group(1, 2, 3, 4)
        hh = _H2T.get(h)
        if hh is None:
            hh = int(h) * (3600 * _TICKS)
        p = hh + _M2T[mi] + _S2T[sec] + _MSB[ms]
        if xtrace:
            x = self._xclock(_H2B[xh] + _M2B[xmi] + _N2B[xs])
            if not self.stack:
                return
            tm = [p, x]
            if k == 14:
                script, sline, cmd = m.group(8, 9, 14)
                self._xtrace(cmd.decode(), script, sline, tm)
                return
            run = self.stack[-1]
            run.last = tm
            if k == 13:
                self._limit(run, int(m.group(12)))
            else:  # k == 11
                script, sline, arg = m.group(8, 9, 10)
                self._call(run, f"{script.rsplit(b'/', 1)[-1].decode()}@{sline.decode()}",
                           None if arg is None else int(arg))
            return
        if k >= 17:  # START/END TEST
            se, name, in_s = m.group(16, 17, 18)
            if b"FLAKEBOT-ITERATION-" in name:  # feed reads that as a marker
                self.feed(m.string[m.start():m.end()].decode())
                return
            self._banner(se == b"START", name.decode(),
                         None if in_s is None else in_s.decode(), [p, None])
            return
        if not self.stack:
            return
        run = self.stack[-1]
        if k == 15:
            self._waiting(run, [p, None])
            return
        w = run.cur  # All VMs successfully shut down
        if w is not None and w.start is not None and not w.done and not w.timed_out:
            self._all_down(run, w, [p, None])

    def _clock(self, tm: list) -> list:
        """tm, registered to get the next xtrace clock if it has no clock."""
        if tm[0] is None and tm[1] is None:
            self.pending.append(tm)
        return tm

    def _now(self, tm: list) -> list:
        """Best immediate estimate of tm (last xtrace clock if it has none)."""
        if tm[0] is None and tm[1] is None:
            return [None, self.x_last]
        return tm

    # --------------------------------------------------------------- xtrace
    def _xtrace(self, cmd: str, script: Union[str, bytes], sline: Union[str, bytes],
                tm: list) -> None:
        # script and sline are only needed for a call line: fast() passes them
        # undecoded (ASCII bytes)
        run = self.stack[-1]
        run.last = tm
        if cmd.startswith("vm_shutdown_all"):
            cm = _CALL.match(cmd)
            if cm:
                arg = cm.group(1)
                if type(script) is bytes:
                    script = script.decode()
                    sline = sline.decode()
                self._call(run, f"{script.rsplit('/', 1)[-1]}@{sline}", int(arg) if arg else None)
            return
        if "timeo=" in cmd:
            lm = _TIMEO.match(cmd)
            if lm:
                self._limit(run, int(lm.group(1)))
            return
        if cmd.startswith(("err_clean", "error_exit")):
            tr = _TRAP.match(cmd)
            if tr:
                self._evidence(run, f"{tr.group(1)} {tr.group(2)}", tm,
                               shutdown_hint=tr.group(2) == "vm_shutdown_all")

    def _call(self, run: _Run, site: str, arg_limit: Optional[int]) -> None:
        """A vm_shutdown_all call line (xtrace)."""
        w = _Wait(site, arg_limit)
        run.waits.append(w)
        run.cur = w
        self.want_limit = True

    def _limit(self, run: _Run, limit: int) -> None:
        """A timeo=N line (xtrace): the limit of the wait being followed."""
        w = run.cur
        if w is not None and not w.limit_set and not w.done and not w.timed_out:
            w.limit = limit
            w.limit_set = True
            self.want_limit = False

    def _timeout(self, run: _Run, w: _Wait, tm: list) -> None:
        w.end = self._clock(tm)
        w.timed_out = True
        run.cur = None
        self.want_limit = False
        run.last = w.end
        if not run.evidence:
            run.evidence = "vm_shutdown_all timed out"

    def _evidence(self, run: _Run, why: str, tm: list, shutdown_hint: bool) -> None:
        w = run.cur
        timed = False
        if w is not None and w.start is not None and not w.done and not w.timed_out:
            el = _diff(w.start, self._now(tm))
            if shutdown_hint or (el is not None and el >= w.limit - 1):
                self._timeout(run, w, tm)  # the loop counter ran out (pre-June 2024)
                timed = True
        if not run.evidence:
            run.evidence = why
        if not timed:
            run.last = self._clock(tm)

    # ---------------------------------------------------------- run banners
    def _start_test(self, name: str, tm: list) -> None:
        n = self.counts.get(name, 0) + 1
        self.counts[name] = n
        fr = self.frame
        if self.stack:
            self._end_open_runs(name)
            # every open banner test around this one is a wrapper
            for r in self.stack:
                if not r.marker and not r.active():
                    r.wrapper = True
        if fr is not None and name == fr.test and not fr.run.banner and fr.run in self.stack:
            r = fr.run  # the marker iteration's own test: bind it
            r.banner = True
            r.start = tm
            r.last = tm
            self.stack.remove(r)
            self.stack.append(r)
            return
        run = _Run(name, n, tm)
        run.frame = fr
        self.stack.append(run)
        if len(self.stack) > _MAX_STACK:
            del self.stack[0]

    def _end_open_runs(self, name: Optional[str]) -> None:
        """A new test or iteration starts: open tests that failed or did
        shutdowns (or have the same name) end here; the rest are wrappers."""
        while self.stack:
            r = self.stack[-1]
            if r.marker or r.wrapper:
                break
            if r.active() or r.test == name or r.cur is not None:
                self.stack.pop()
                self._finish(r)
                continue
            break

    def _end_test(self, name: str, in_s: Optional[str], tm: list) -> None:
        stack = self.stack
        r = stack[-1] if stack else None
        if r is not None and r.test == name and (r.banner or not r.marker):
            stack.pop()  # the usual case: the innermost test ends
        else:
            for i in range(len(stack) - 2, -1, -1):
                r = stack[i]
                if r.test == name and (r.banner or not r.marker):
                    break
            else:
                return
            inner = stack[i + 1:]
            del stack[i:]
            for r2 in reversed(inner):
                self._finish(r2)
        r.ended = True
        r.end = tm
        r.last = tm
        if in_s is not None:
            r.in_s = float(in_s)
        if r.wrapper:
            return
        if r.marker:
            return  # wait for the END marker's rc
        if r.rc is None:
            r.rc = 0
        fr = r.frame
        if fr is not None and fr is self.frame:
            fr.others.append(r)
        self._finish(r)

    # --------------------------------------------------------------- markers
    def _marker(self, mm: re.Match, tm: list) -> None:
        if self.cut_line:
            return  # a cut test name or rc
        kv = dict(_KV.findall(mm.group(2) or ""))
        test = kv.get("test", "")
        try:
            it = int(kv.get("iteration", "0"))
        except ValueError:
            it = 0
        if mm.group(1) == "START":
            self._close_frame(None)
            self._end_open_runs(None)
            if not test:
                return
            r = _Run(test, it if it > 0 else self.counts.get(test, 0) + 1, tm, marker=True)
            fr = _Frame(test, r.iteration, r)
            r.frame = fr
            self.frame = fr
            self.stack.append(r)
        else:
            rc: Optional[int]
            try:
                rc = int(kv.get("rc", ""))
            except ValueError:
                rc = None
            fr = self.frame
            if fr is None or (test and test != fr.test):
                return
            self._close_frame(rc, tm)

    def _close_frame(self, rc: Optional[int], tm: Optional[list] = None) -> None:
        """End the open marker frame: rc None means no END marker (cut off)."""
        fr = self.frame
        if fr is None:
            return
        self.frame = None
        r = fr.run
        # everything opened inside the frame ends with it
        inside = [x for x in self.stack if x.frame is fr]
        self.stack = [x for x in self.stack if x.frame is not fr]
        others = [x for x in inside if x is not r and not x.wrapper]
        if rc is None:
            for x in others:
                x.rc = None
                self._finish(x, cut_marker=True)
            if r.banner or not fr.others or r.active():
                self._finish(r, cut_marker=True)
            return
        if tm is not None and not r.ended:
            r.last = tm
        if not r.banner and not r.active() and (others or fr.others):
            # the host script's test name did not match any banner: the rc
            # belongs to the last banner run of the iteration
            if others:
                last = others[-1]
                for x in others[:-1]:
                    self._finish(x)
                last.rc = rc
                self._finish(last)
            return
        for x in others:
            self._finish(x)
        r.rc = rc
        if not r.banner and rc == 0:
            r.ended = True  # no banner: the script's rc is the result
            r.end = tm
        self._finish(r)

    # ------------------------------------------------------------ finishing
    def _finish(self, r: _Run, cut_marker: bool = False) -> None:
        if self.err_open is r:
            self.err_open = None
        if r.cur is not None:
            self.want_limit = False
        if r.wrapper:
            return
        if self.pending or self.deferred:
            # its times may still wait for a clock: emit it (in order) then
            self.deferred.append((r, cut_marker))
            return
        self._emit(r, cut_marker)

    def _flush(self) -> None:
        d = self.deferred
        self.deferred = []
        for r, cut_marker in d:
            self._emit(r, cut_marker)

    def _emit(self, r: _Run, cut_marker: bool) -> None:
        # one loop, no generators: this runs once per Run
        shutdowns = []
        timed_site = None
        worst = None
        for w in r.waits:
            # a time that got no clock before the end of the log (3 items)
            # is a lower bound only: not a measured wait
            if w.timed_out:
                waited = _measured(w.start, w.end)
                if timed_site is None:
                    timed_site = w.site
            elif w.done:
                waited = _measured(w.start, w.end)
                if waited is not None and (worst is None or waited > worst):
                    worst = waited
            else:
                waited = None
            shutdowns.append(Shutdown(w.site, waited, w.limit, w.timed_out))
        reason = ""
        if timed_site is not None:
            outcome = Outcome.TIMEOUT
            reason = f"vm_shutdown_all timed out at {timed_site}"
        elif r.ended:
            outcome = Outcome.SLOW if worst is not None and worst >= self.slow else Outcome.PASS
        elif cut_marker:
            outcome, reason = Outcome.INFRA, "cut off: no FLAKEBOT-ITERATION-END"
        elif r.rc == 125:
            outcome, reason = Outcome.INFRA, "host script infra rc 125"
        elif r.rc == 0 and r.marker:
            outcome, reason = Outcome.INFRA, "rc 0 but no END TEST in the log"
        elif r.evidence or (r.rc is not None and r.rc != 0):
            outcome, reason = Outcome.FAIL, r.evidence or f"rc {r.rc}"
        else:
            outcome, reason = Outcome.INFRA, "cut off: no END TEST and no failure"
        if r.ended and r.end is not None:
            dur = _diff(r.start, r.end)
            if r.in_s is not None and (dur is None or r.start[0] is None or r.end[0] is None):
                dur = r.in_s
        else:
            dur = _diff(r.start, r.last)
        self.out.append(Run(
            test=r.test, iteration=r.iteration, outcome=outcome, rc=r.rc,
            shutdowns=shutdowns, duration_s=dur, reason=reason,
        ))

    def close(self) -> None:
        self._close_frame(None)
        while self.stack:
            self._finish(self.stack.pop())
        # the log ends: no later clock; the last one read is a lower bound
        for tm in self.pending:
            tm[1] = self.x_last
            tm.append(None)  # marks it (see _emit)
        self.pending.clear()
        self._flush()


def _is_candidate(line: str) -> bool:
    """The line contains a needle (NEEDLES); same choice as spdklog_scan."""
    return (("shut" in line and ("VMs" in line or "vm_shutdown_all" in line))
            or "==========" in line or "TEST " in line or "err_clean" in line or "error_exit" in line
            or "FLAKEBOT-ITERATION-" in line or "\x1b" in line)


assert NEEDLES == ("shut", "==========", "TEST ", "err_clean", "error_exit", "FLAKEBOT-ITERATION-", "\x1b")
assert WANTED == ("timeo=", "ERROR:", "FAIL:")
_END = object()


def _take(p: _Parser, line: str) -> None:
    """Feed p the line if it is chosen (see the module doc)."""
    if len(line) > _MAX_LINE:
        line = line[:_MAX_LINE]
    if (_is_candidate(line) or (p.pending and _XHEAD.match(line))
            or (p.want_limit and "timeo=" in line)
            or (p.err_open is not None and ("ERROR:" in line or "FAIL:" in line))):
        p.feed(line)


def parse_lines(lines: Iterable[Union[str, bytes]], *,
                slow_threshold_s: float = DEFAULT_SLOW_THRESHOLD_S) -> Iterator[Run]:
    """Yield each Run as soon as it is complete (in a log without prefix:
    once its times have their clock, see the module doc), reading one line
    ahead. Lines may be str or bytes. The last item is taken as a line cut
    short (the log was cut inside it) when it has no line break and an item
    before it had one."""
    return _parse_items(lines, slow_threshold_s, None)


def _parse_items(lines: Iterable[Union[str, bytes]], slow_threshold_s: float,
                 cut_last: Optional[bool]) -> Iterator[Run]:
    """parse_lines; cut_last: whether the last item was cut (None: guess
    from the line breaks, see parse_lines)."""
    p = _Parser(slow_threshold_s)
    out = p.out
    broken = False  # an item ended with a line break
    prev: object = _END  # one item behind, to know the last one
    for line in lines:
        if prev is not _END:
            if type(prev) is not str:
                prev = _text(prev)
            if not broken and prev.endswith("\n"):
                broken = True
            _take(p, prev)
            if out:
                yield from out
                out.clear()
        prev = line
    if prev is not _END:
        if type(prev) is not str:
            prev = _text(prev)
        p.cut_line = cut_last if cut_last is not None else broken and not prev.endswith("\n")
        _take(p, prev)
        p.cut_line = False
    p.close()
    yield from out
    out.clear()


def _text(line: object) -> str:
    if isinstance(line, (bytes, bytearray, memoryview)):
        return bytes(line).decode("utf-8", "replace")
    return str(line)


def parse_text(text: Union[str, bytes], *,
               slow_threshold_s: float = DEFAULT_SLOW_THRESHOLD_S) -> list[Run]:
    """All Runs of a whole log given as one string (or bytes)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
        cut = False
    else:  # no line break at the end: cut inside the last line, if any before it
        cut = len(lines) > 1
    return list(_parse_items(lines, slow_threshold_s, cut))


def parse_file(path_or_file: Union[str, "os.PathLike[str]", IO[bytes]], *,
               slow_threshold_s: float = DEFAULT_SLOW_THRESHOLD_S) -> Iterator[Run]:
    """Yield the Runs of a log file, read in binary and decoded with
    errors='replace'. Same results as parse_lines over the file's lines, faster:
    it scans 1 MiB blocks for NEEDLES (Hyperscan, else bytes.find) and decodes
    only those lines."""
    if hasattr(path_or_file, "read"):
        yield from _parse_stream(path_or_file, slow_threshold_s)
        return
    with open(path_or_file, "rb") as f:
        yield from _parse_stream(f, slow_threshold_s)


def _parse_stream(f: IO[bytes], slow_threshold_s: float) -> Iterator[Run]:
    p = _Parser(slow_threshold_s)
    scan_block = _scan_block if _HS and _scan.ready() else _scan_block_find
    out = p.out
    carry = b""
    giant = False  # carry is the head of a line longer than _KEEP: drop the rest of it
    broken = False  # a line break seen
    while True:
        block = f.read(_BLOCK)
        if not block:
            break
        if giant:
            i = block.find(b"\n")
            if i < 0:
                continue
            # the giant line ends here: its head is all of it that counts
            giant = False
            broken = True
            scan_block(p, carry + b"\n", len(carry) + 1)
            carry = b""
            block = block[i + 1:]
        elif carry:
            block = carry + block
        end = block.rfind(b"\n") + 1
        if end == 0:
            if len(block) > _KEEP:
                carry = block[:_KEEP]
                giant = True
            else:
                carry = block
            continue
        broken = True
        carry = block[end:]
        scan_block(p, block, end)
        if out:
            yield from out
            out.clear()
    if carry:
        p.cut_line = broken  # the last line has no line break
        scan_block(p, carry + b"\n", len(carry) + 1)
        p.cut_line = False
    p.close()
    yield from out
    out.clear()


def _line(p: _Parser, buf: bytes, s: int, e: int) -> None:
    """Feed p the line buf[s:e], through the fast path if it takes it."""
    if e - s <= _MAX_LINE:
        m = _FAST.match(buf, s, e)
        if m is not None:
            p.fast(m)
        else:
            p.feed(buf[s:e].decode("utf-8", "replace"))
    else:  # cut it first, as parse_lines does, then choose again
        _take(p, buf[s:min(e, s + _KEEP)].decode("utf-8", "replace"))


def _scan_block(p: _Parser, buf: bytes, end: int) -> None:
    """Feed p the chosen lines of buf[:end] (whole lines) in order: same
    choice as parse_lines. The needles come from one Hyperscan pass
    (spdklog_scan.hits); the lines between them from _walk, while a time
    waits for a clock."""
    find = buf.find
    rfind = buf.rfind
    pos = 0
    feed = p.feed
    fast = p.fast
    fast_match = _FAST.match
    for h in _scan.hits(buf, end):
        to = h >> 4
        if to < pos:
            continue  # another hit in a line already handled
        s = rfind(b"\n", 0, to) + 1
        e = find(b"\n", to, end)
        k = h & 15
        if k == _VMS and find(_SHUT_B, s, e) < 0:
            continue
        if p.pending and pos < s:
            pos = _walk(p, buf, pos, s)
        # a WANTED needle counts only while the parser wants it (the state
        # after every line before this one: the walk came first)
        if (k == _TIMEO_K and not p.want_limit) or (k == _ERR_K and p.err_open is None):
            continue
        pos = e + 1
        if e - s <= _MAX_LINE:
            m = fast_match(buf, s, e)
            if m is not None:
                fast(m)
            else:
                feed(buf[s:e].decode("utf-8", "replace"))
        else:
            _line(p, buf, s, e)
    if p.pending and pos < end:
        _walk(p, buf, pos, end)


def _scan_block_find(p: _Parser, buf: bytes, end: int) -> None:
    """_scan_block without Hyperscan: one bytes.find pass per needle."""
    lines: dict[int, int] = {}  # start -> end of each line with a needle
    find = buf.find
    rfind = buf.rfind
    a, b = _SHUT_ALSO_B
    i = find(_SHUT_B, 0, end)
    while i >= 0:
        s = rfind(b"\n", 0, i) + 1
        e = find(b"\n", i, end)
        if find(a, s, e) >= 0 or find(b, s, e) >= 0:
            lines[s] = e
        i = find(_SHUT_B, e + 1, end)
    for nd in _OTHER_B:
        i = find(nd, 0, end)
        while i >= 0:
            e = find(b"\n", i, end)
            lines[rfind(b"\n", 0, i) + 1] = e
            i = find(nd, e + 1, end)
    search = _TRAPS_B.search
    m = search(buf, 0, end)
    while m is not None:
        i = m.start()
        e = find(b"\n", i, end)
        lines[rfind(b"\n", 0, i) + 1] = e
        m = search(buf, e + 1, end)
    pos = 0
    for s, e in sorted(lines.items()):
        if pos < s and (p.pending or p.want_limit or p.err_open is not None):
            _walk(p, buf, pos, s, True)
        pos = e + 1
        _line(p, buf, s, e)
    if pos < end and (p.pending or p.want_limit or p.err_open is not None):
        _walk(p, buf, pos, end, True)


def _walk(p: _Parser, buf: bytes, pos: int, stop: int, wanted: bool = False) -> int:
    """The lines of buf[pos:stop] (whole lines, no needle in them) that the
    parser wants: while a time waits for a clock, those that start like an
    xtrace line (_XHEAD), until one gives the clock; with wanted (the
    bytes.find scanner, which has no hits for them), also those with a
    WANTED needle while the parser wants it. Returns where it stopped."""
    find = buf.find
    while pos < stop:
        nxt = stop
        if p.pending:
            if _XHEAD_B.match(buf, pos, stop) is not None:
                nxt = pos
            else:
                m = _XNEXT_B.search(buf, pos, stop)  # the line break before the next one
                if m is not None:
                    nxt = m.start() + 1
        if wanted and nxt > pos:
            if p.want_limit:
                i = find(_TIMEO_B, pos, nxt)
                if i >= 0:
                    nxt = buf.rfind(b"\n", pos, i) + 1 or pos
            if p.err_open is not None:
                for nd in (_ERROR_B, _FAIL_B):
                    i = find(nd, pos, nxt)
                    if i >= 0:
                        nxt = buf.rfind(b"\n", pos, i) + 1 or pos
        if nxt >= stop:
            return stop
        e = find(b"\n", nxt, stop)
        _line(p, buf, nxt, e)
        pos = e + 1
        if not (p.pending or (wanted and (p.want_limit or p.err_open is not None))):
            return pos
    return pos
