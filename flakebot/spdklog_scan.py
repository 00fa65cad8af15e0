"""One-pass multi-pattern line finder for ``spdklog._scan_block`` (Hyperscan).

``spdklog`` looks at a line only if it contains one of its ``NEEDLES`` (see there).
Without Hyperscan it runs one ``bytes.find`` pass per needle over every 1 MiB
block; with it, one SIMD pass finds them all. ``hits(buf, end)`` returns the
match end offsets in ``buf[:end]``, each as ``offset << 3 | kind`` (kind: which
needle), sorted, so the caller walks the lines in order and knows why each one
was hit. Several hits can fall in one line; the caller keeps the first.
``hits(buf, end, stars=False)`` leaves out the lines of stars (the caller
finds them with ``bytes.find`` in the gaps between hits: the stars pattern is
the costliest one to scan for, and a third of all hits).

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

# Kinds (pattern ids), one per needle of spdklog.NEEDLES.
STARS, CALL, VMS, EQ, MARK, ESC = range(6)

# Each pattern reports a needle once per run of it: a line of 36 stars is one
# hit, not 17 ("(?:^|[^*])" starts the run), and so for "=" lines. "shut" is
# searched as its two useful forms: "vm_shutdown_all" (contains "shut") and
# "VMs" (the caller checks for "shut" in that line); a plain "shut" would hit
# every "vm_shutdown 1" and "is shutting down" line.
_PATTERNS = (
    (rb"(?:^|[^*])\*{20}", STARS),
    (rb"vm_shutdown_all", CALL),
    (rb"VMs", VMS),
    # "(?:^|[^=])={10}" is the same needle, but takes Hyperscan ~60 M instructions
    # to compile (without the stars pattern; 1 M like this): hits() adds the
    # one case this misses, a run at offset 0
    (rb"[^=]={10}", EQ),
    (rb"FLAKEBOT-ITERATION-", MARK),
    (rb"\x1b", ESC),
)
_EQ10 = b"=" * 10

# [with stars, without]: the caller finds the lines of stars itself in blocks
# without ESC (one bytes.find per gap between hits): the stars pattern is the
# costliest to scan for and a third of the hits.
_dbs: list = [None, None]


def _database(stars: bool):
    db = _dbs[not stars]
    if db is None:
        pats = [(p, i) for p, i in _PATTERNS if stars or i != STARS]
        db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
        db.compile(expressions=[p for p, _ in pats], ids=[i for _, i in pats],
                   elements=len(pats), flags=[_hs.HS_FLAG_MULTILINE] * len(pats))
        _dbs[not stars] = db
    return db


_ready: Optional[bool] = None


def ready() -> bool:
    """True once both databases compile. Hyperscan can import and still refuse
    to compile, e.g. on a CPU without SSSE3; spdklog then uses bytes.find."""
    global _ready
    if _ready is None:
        try:
            _ready = AVAILABLE and _database(True) is not None and _database(False) is not None
        except Exception:  # hyperscan.error and whatever a broken install raises
            _ready = False
    return _ready


def hits(buf: bytes, end: int, stars: bool = True) -> list[int]:
    """Sorted ``offset << 3 | kind`` of the needle matches in buf[:end]
    (without STARS hits if not stars)."""
    out: list[int] = []
    app = out.append

    def on_match(kind: int, _start: int, to: int, _flags: int, _ctx: Optional[object]) -> None:
        app(to << 3 | kind)

    if buf.startswith(_EQ10) and end >= 10:
        app(10 << 3 | EQ)
    _database(stars).scan(memoryview(buf)[:end], match_event_handler=on_match)
    out.sort()  # Hyperscan does not promise end-offset order across patterns
    return out
