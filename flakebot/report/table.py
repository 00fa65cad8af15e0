"""Terminal tables that fit the terminal: every command's tables go through `fitted`.

A table is laid out for the width it will be printed at (80, 100, 120 columns
or a pipe): the least important columns are dropped first, a free-text column
(a subject) takes only the room that is left and is cut with an ellipsis, and a
number is never hidden: number columns are never dropped, never cut (at worst
they fold onto a second line).

    t = fitted("runs", [Col("commit", "left"), Col("subject", "left", flex=True), Col("runs")],
               [["cc1a07f73a", "test/vfio_user: clean up", "12"]], width=80)
    Console(width=80).print(t)
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

Cell = Union[str, Text]
MIN_FLEX = 12  # a subject narrower than this says nothing: drop it instead
FLEX_WANT = 24  # minor columns are dropped before a subject gets narrower than this


@dataclass(frozen=True)
class Col:
    header: str
    justify: str = "right"
    drop: int = 0  # 0: never dropped; otherwise dropped when narrow, higher first
    flex: bool = False  # free text: takes the room left, cut with an ellipsis


def _table(title: Optional[str], cols: Sequence[Col], rows: Sequence[Sequence[Cell]], keep: Sequence[int],
           flex_width: Optional[int], fold: bool, caption: Optional[str]) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
              collapse_padding=True,
              caption=caption, caption_justify="left")
    for i in keep:
        c = cols[i]
        if c.flex:
            t.add_column(c.header, justify=c.justify, no_wrap=True, overflow="ellipsis", max_width=flex_width)
        else:
            t.add_column(c.header, justify=c.justify, no_wrap=not fold, overflow="fold")
    for r in rows:
        t.add_row(*[r[i] for i in keep])
    return t


def _width(t: Table) -> int:
    c = Console(file=io.StringIO(), width=10_000, color_system=None, legacy_windows=False)
    return max((c.measure(t).maximum,), default=0)


def fitted(title: Optional[str], cols: Sequence[Col], rows: Sequence[Sequence[Cell]], width: int,
           caption: Optional[str] = None) -> Table:
    """A rich Table of `rows` laid out to fit `width` columns (see the module doc)."""
    flex = [i for i, c in enumerate(cols) if c.flex]
    keep = [i for i in range(len(cols)) if not cols[i].flex]
    droppable = sorted((i for i in keep if cols[i].drop), key=lambda i: (-cols[i].drop, -i))
    want = (FLEX_WANT + 2) * len(flex)  # a readable subject beats a minor column
    while True:
        fixed = _width(_table(None, cols, rows, keep, None, False, None))
        if fixed + want <= width or not droppable:
            break
        keep.remove(droppable.pop(0))
    room = width - fixed - 2 * len(flex)
    if flex and room >= MIN_FLEX * len(flex):
        keep = sorted(keep + flex)
        return _table(title, cols, rows, keep, room // len(flex), fixed > width, caption)
    return _table(title, cols, rows, keep, None, fixed > width, caption)


def terminal_width(console: Console) -> int:
    """The width to lay tables out for: the console's (a terminal's, or COLUMNS)."""
    return console.width
