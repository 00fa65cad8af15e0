"""One-pass multi-pattern line finder for ``spdklog._scan_block`` (Hyperscan).

``spdklog`` looks at a line only if it contains one of its ``NEEDLES`` (see there).
Without Hyperscan it runs one ``bytes.find`` pass per needle over every 1 MiB
block; with it, one SIMD pass finds them all. ``hits(buf, end)`` returns the
match end offsets in ``buf[:end]``, each as ``offset << 4 | kind`` (kind: which
needle), sorted, so the caller walks the lines in order and knows why each one
was hit. Several hits can fall in one line; the caller keeps the first.

``AVAILABLE`` is False where ``import hyperscan`` fails (no wheel for the
platform): spdklog then uses its ``bytes.find`` scanner, same lines, same Runs.
"""
from __future__ import annotations

from typing import Optional

try:
    import hyperscan as _hs
except ImportError:  # pragma: no cover - depends on the platform
    _hs = None

AVAILABLE = _hs is not None

# Kinds (pattern ids), one per needle of spdklog.NEEDLES; only VMS matters to
# the caller (it checks for "shut" in that line), the others tell tests why.
CALL, VMS, EQ, TEST, TIMEO, ERR, TRAP, MARK, ESC = range(9)

# "=" lines are reported once per run of "=" ("[^=]" starts it). "shut" is
# searched as its two useful forms: "vm_shutdown_all" (contains "shut") and
# "VMs" (the caller checks for "shut" in that line); a plain "shut" would hit
# every "vm_shutdown 1" and "is shutting down" line.
_PATTERNS = (
    (rb"vm_shutdown_all", CALL),
    (rb"VMs", VMS),
    # "(?:^|[^=])={10}" is the same needle, but takes Hyperscan ~60 M instructions
    # to compile; hits() adds the one case this misses, a run at offset 0
    (rb"[^=]={10}", EQ),
    (rb"TEST ", TEST),
    (rb"timeo=", TIMEO),
    (rb"ERROR:|FAIL:", ERR),
    (rb"err_clean|error_exit", TRAP),
    (rb"FLAKEBOT-ITERATION-", MARK),
    (rb"\x1b", ESC),
)
_EQ10 = b"=" * 10
_db = None


def _database():
    global _db
    if _db is None:
        db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
        db.compile(expressions=[p for p, _ in _PATTERNS], ids=[i for _, i in _PATTERNS],
                   elements=len(_PATTERNS), flags=[_hs.HS_FLAG_MULTILINE] * len(_PATTERNS))
        _db = db
    return _db


_ready: Optional[bool] = None


def ready() -> bool:
    """True once the database compiles. Hyperscan can import and still refuse
    to compile, e.g. on a CPU without SSSE3; spdklog then uses bytes.find."""
    global _ready
    if _ready is None:
        try:
            _ready = AVAILABLE and _database() is not None
        except Exception:  # hyperscan.error and whatever a broken install raises
            _ready = False
    return _ready


def hits(buf: bytes, end: int) -> list[int]:
    """Sorted ``offset << 4 | kind`` of the needle matches in buf[:end]."""
    out: list[int] = []
    app = out.append

    def on_match(kind: int, _start: int, to: int, _flags: int, _ctx: Optional[object]) -> None:
        app(to << 4 | kind)

    if buf.startswith(_EQ10) and end >= 10:
        app(10 << 4 | EQ)
    _database().scan(memoryview(buf)[:end], match_event_handler=on_match)
    out.sort()  # Hyperscan does not promise end-offset order across patterns
    return out
