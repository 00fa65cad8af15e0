"""Render a campaign result once, for two places: GitHub Markdown and Gerrit.

The content is built once as a small document (headings, paragraphs, bullet
lists, tables, preformatted blocks) from the result dict the campaign loop
stores in ``campaigns.result``; two serializers turn it into text:

- :func:`render_markdown` for GitHub (tables, links, ``<details>``),
- :func:`render_gerrit` for Gerrit change messages: plain, readable text using
  only Gerrit's light markup (paragraphs, ``* `` bullets, preformatted lines
  that start with a space).

Everything here is pure: no I/O, no clock. Unknown result kinds (e.g. the
nightly "appears fixed" note) get a generic rendering until a dedicated
builder is registered in ``BUILDERS``.

    >>> r = {"kind": "verify", "test": "vfio_user_nvme_restart_vm", "patch": "a" * 40,
    ...      "parent": "b" * 40, "iterations": 20, "p_lower": 0.97, "p_raise": 0.01}
    >>> "lowers the failure rate" in render_gerrit(r)
    True
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

from flakebot.model import DEFAULT_LIMIT_S

# --------------------------------------------------------------------- document

# A span is one piece of inline content.


@dataclass(frozen=True)
class T:
    """Plain text (escaped for Markdown)."""

    s: str


@dataclass(frozen=True)
class C:
    """Inline code (a sha, a test name, a call site)."""

    s: str


@dataclass(frozen=True)
class B:
    """Bold text."""

    s: str


@dataclass(frozen=True)
class L:
    """A link; rendered as plain text when the url is not http(s)."""

    text: str
    url: Optional[str]


Span = Union[T, C, B, L]
Cell = Union[str, Span, list]


@dataclass(frozen=True)
class Heading:
    spans: tuple


@dataclass(frozen=True)
class Para:
    spans: tuple


@dataclass(frozen=True)
class Bullets:
    items: tuple  # of tuples of spans


@dataclass(frozen=True)
class Table:
    header: tuple
    rows: tuple  # of tuples of cells


@dataclass(frozen=True)
class Pre:
    text: str


@dataclass(frozen=True)
class Details:
    """Collapsed in Markdown; a titled section in Gerrit."""

    summary: str
    blocks: tuple


Block = Union[Heading, Para, Bullets, Table, Pre, Details]


@dataclass(frozen=True)
class Rendered:
    markdown: str
    gerrit: str


# --------------------------------------------------------------------- public API


def build(result: dict) -> list[Block]:
    """The document for ``result`` (dispatch on ``result["kind"]``)."""
    builder = BUILDERS.get(str(result.get("kind", "")), _build_generic)
    return builder(result or {})


def render_markdown(result: dict) -> str:
    return to_markdown(build(result))


def render_gerrit(result: dict) -> str:
    return to_gerrit(build(result))


def render(result: dict) -> Rendered:
    """Both formats from one document."""
    doc = build(result)
    return Rendered(markdown=to_markdown(doc), gerrit=to_gerrit(doc))


def render_refusal(reason: str) -> Rendered:
    """A short answer to a command that will not run."""
    doc = [Para((B("flakebot:"), T(" not running this command: " + _one_line(reason, 300))))]
    return Rendered(to_markdown(doc), to_gerrit(doc))


def render_ack(action: str, test: str, details: str = "") -> Rendered:
    """A short "started" answer to an accepted command (``details`` is ours, not user text)."""
    spans: list = [B("flakebot:"), T(f" {action} started for "), C(test)]
    if details:
        spans.append(T(": " + _one_line(details, 300)))
    spans.append(T(". The result will be posted here."))
    doc = [Para(tuple(spans))]
    return Rendered(to_markdown(doc), to_gerrit(doc))


# --------------------------------------------------------------------- formatting helpers

_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def _one_line(s: Any, limit: int = 200) -> str:
    """Untrusted text (commit subjects, author names) on one clean line."""
    s = _CTRL.sub("", str(s if s is not None else "")).replace("\n", " ").replace("\r", " ")
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def short(sha: Any) -> str:
    s = str(sha or "")
    return s[:10] if re.fullmatch(r"[0-9a-fA-F]{7,40}", s) else _one_line(s, 40) or "?"


def _num(x: Any) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pct(x: Any) -> str:
    """0.0534 -> '5.3%'; tiny values keep a significant digit; below 1 never shows 100%."""
    if not _num(x):
        return "?"
    v = float(x) * 100
    if v == 0:
        return "0%"
    d = 1
    while d < 4 and (abs(v) < 10 ** -d or (x < 1 and round(v, d) >= 100)):
        d += 1
    return f"{v:.{d}f}".rstrip("0").rstrip(".") + "%"


def seconds(s: Any) -> str:
    if not _num(s):
        return "?"
    return f"{float(s):.1f} s"


def duration(s: Any) -> str:
    """Wall time, human: '42 s', '12 min', '4 h 05 min'."""
    if not _num(s) or s < 0:
        return "?"
    s = int(round(s))
    if s < 120:
        return f"{s} s"
    m = s // 60
    if m < 120:
        return f"{m} min"
    return f"{m // 60} h {m % 60:02d} min"


def rate_cell(r: Any, interval: Optional[float]) -> str:
    """{'k': 3, 'n': 40, 'rate': .075, 'lo': .03, 'hi': .17} -> '3/40: 7.5% (3%–17%)'."""
    if not isinstance(r, dict):
        return "–"
    k, n = r.get("k"), r.get("n")
    head = f"{k}/{n}" if k is not None and n is not None else "?"
    rate = r.get("rate")
    if rate is None and _num(k) and _num(n) and n:
        rate = k / n
    out = f"{head}: {pct(rate)}"
    lo, hi = r.get("lo"), r.get("hi")
    if lo is not None and hi is not None:
        out += f" ({pct(lo)}–{pct(hi)})"
    return out


def _interval_label(interval: Any) -> str:
    if _num(interval) and 0 < interval < 1:
        return f"{pct(interval)} credible interval"
    return "credible interval"


def _list(x: Any) -> list:
    return x if isinstance(x, list) else []


def _is_url(u: Any) -> bool:
    return isinstance(u, str) and re.match(r"https?://[^\s<>\"'`]+$", u) is not None


# --------------------------------------------------------------------- builders

def _rates_table(left: dict, right: dict, left_name: str, right_name: str,
                 interval: Any, limit: Any) -> Optional[Table]:
    left = left if isinstance(left, dict) else {}
    right = right if isinstance(right, dict) else {}
    classes = [c for c in ("timeout", "near_miss", "slow", "fail", "failure")
               if c in left or c in right]
    if not classes:
        return None
    lim = limit if _num(limit) else DEFAULT_LIMIT_S
    names = {
        "timeout": f"timeouts (shutdown > {lim:g} s)",
        "near_miss": "near misses (slow shutdown, passed)",
        "slow": "near misses (slow shutdown, passed)",
        "fail": "other failures",
        "failure": "any failure",
    }
    rows = tuple(
        (names.get(c, c), rate_cell(left.get(c), interval), rate_cell(right.get(c), interval))
        for c in classes
    )
    return Table(("", left_name, right_name), rows)


def _waits_table(waits: Any) -> Optional[Table]:
    if not isinstance(waits, list) or not waits:
        return None
    rows = []
    order = {"before": 0, "parent": 0, "after": 1, "patch": 1}
    waits = sorted((w for w in waits if isinstance(w, dict)),
                   key=lambda w: (str(w.get("call_site", "")), order.get(str(w.get("side")), 2)))
    for w in waits:
        lim = w.get("limit_s", DEFAULT_LIMIT_S)
        mx = w.get("max")
        flag = ""
        if _num(mx) and _num(lim):
            if mx >= lim:
                flag = "over limit"
            elif mx >= 0.8 * lim:
                flag = "near limit"
        rows.append((
            C(_one_line(w.get("call_site", "?"), 80)),
            _one_line(w.get("side", ""), 20),
            str(w.get("n", "?")),
            seconds(w.get("p50")),
            seconds(w.get("p95")),
            seconds(mx),
            f"{lim} s" if lim is not None else "?",
            flag,
        ))
    if not rows:
        return None
    return Table(("call site", "side", "n", "p50", "p95", "max", "limit", ""), tuple(rows))


def _cost_para(r: dict) -> Para:
    hosts = [h for h in _list(r.get("hosts")) if h]
    parts = [f"{r.get('runs', '?')} runs"]
    if r.get("builds") is not None:
        parts.append(f"{r.get('builds')} builds")
    if _num(r.get("infra_runs")) and r["infra_runs"]:
        parts.append(f"{r['infra_runs']} infra runs not counted")
    txt = ", ".join(parts)
    if hosts:
        shown = ", ".join(_one_line(h, 40) for h in hosts[:6])
        more = f" and {len(hosts) - 6} more" if len(hosts) > 6 else ""
        txt += f" on {len(hosts)} host{'s' if len(hosts) != 1 else ''} ({shown}{more})"
    txt += f"; wall time {duration(r.get('wall_seconds'))}"
    if _num(r.get("host_minutes")):
        txt += f", {r['host_minutes']:.0f} host-minutes"
    return Para((B("Cost:"), T(" " + txt + ".")))


def _links_blocks(r: dict) -> list[Block]:
    out: list[Block] = []
    if _is_url(r.get("report_url")):
        out.append(Para((B("Report:"), T(" "), L("full HTML report", r["report_url"]))))
    urls = [u for u in _list(r.get("build_urls")) if _is_url(u)]
    if urls:
        items = tuple((L(_build_label(u, i), u),) for i, u in enumerate(urls[:10], 1))
        if len(urls) > 10:
            items += ((T(f"… and {len(urls) - 10} more builds"),),)
        out.append(Details(f"Builds ({len(urls)})", (Bullets(items),)))
    return out


def _build_label(url: str, i: int) -> str:
    m = re.search(r"/job/([^/]+)/(\d+)/?$", url)
    return f"{m.group(1)} #{m.group(2)}" if m else f"build {i}"


def _reproduce(r: dict) -> list[Block]:
    cmd = r.get("command")
    if not cmd:
        return []
    return [Para((B("Reproduce:"),)), Pre(_one_line(cmd, 500))]


def _build_bisect(r: dict) -> list[Block]:
    test = _one_line(r.get("test", "?"), 80)
    verdict = r.get("verdict")
    conf = r.get("confidence")
    info = r.get("culprit_info") if isinstance(r.get("culprit_info"), dict) else {}
    culprit = r.get("culprit") or info.get("sha")
    good, bad = short(r.get("good")), short(r.get("bad"))
    doc: list[Block] = []

    if verdict == "culprit" and culprit:
        doc.append(Heading((T("flakebot: culprit found for "), C(test))))
        spans: list = [B("Culprit:"), T(" ")]
        url = info.get("url")
        spans.append(L(short(culprit), url) if _is_url(url) else C(short(culprit)))
        if info.get("subject"):
            spans.append(T(" " + _one_line(info["subject"])))
        if info.get("author"):
            spans.append(T(" (" + _one_line(info["author"], 80) + ")"))
        doc.append(Para(tuple(spans)))
        if info.get("change_id"):
            doc.append(Para((B("Change-Id:"), T(" "), C(_one_line(info["change_id"], 60)))))
        doc.append(Para((B("Confidence:"), T(f" {pct(conf)} that this commit raised the failure rate "
                                            f"(searched {good}..{bad})."))))
    elif verdict == "culprit-range" and isinstance(r.get("culprit_range"), dict):
        rg = r["culprit_range"]
        members = [c for c in _list(rg.get("commits")) if isinstance(c, dict)]
        doc.append(Heading((T("flakebot: culprit range found for "), C(test))))
        doc.append(Para((B("Verdict:"), T(f" {pct(conf)} that one of these {len(members)} commits raised the "
                                         f"failure rate (searched {good}..{bad}); all but the last cannot be "
                                         f"tested here, so the data cannot tell which:"))))
        doc.append(Bullets(tuple((C(short(c.get("commit"))), T(" " + _one_line(c.get("subject") or "")))
                                 for c in members[:40])))
    elif verdict == "no-regression":
        doc.append(Heading((T("flakebot: no regression found for "), C(test))))
        doc.append(Para((B("Verdict:"), T(f" no commit in {good}..{bad} changed the failure rate "
                                         f"measurably (confidence {pct(conf)})."))))
    else:
        doc.append(Heading((T("flakebot: inconclusive for "), C(test))))
        why = _one_line(r.get("reason") or "", 200) or "the budget ran out"
        doc.append(Para((B("Verdict:"), T(f" inconclusive in {good}..{bad} ({why}): no commit reached "
                                         f"the requested confidence (best {pct(conf)})."))))

    rates = r.get("rates") if isinstance(r.get("rates"), dict) else None
    if rates:
        lim = _limit_of(r)
        left = f"before (up to {short(r.get('parent'))})" if r.get("parent") else "before"
        right = f"after (from {short(culprit)})" if culprit else "after"
        tbl = _rates_table(rates.get("before"), rates.get("after"), left, right,
                           rates.get("interval"), lim)
        if tbl:
            doc.append(Para((B("Failure rates"), T(f" (failing runs/runs: estimated rate ({_interval_label(rates.get('interval'))})):"))))
            doc.append(tbl)

    wt = _waits_table(r.get("waits"))
    if wt:
        doc.append(Para((B("Shutdown waits"), T(" ("), C("vm_shutdown_all"),
                         T(f", limit {_limit_of(r):g} s) per call site:"))))
        doc.append(wt)

    doc.append(_cost_para(r))

    cands = [c for c in _list(r.get("candidates")) if isinstance(c, dict)]
    not_certain = verdict != "culprit" or not _num(conf) or conf < 0.95
    if cands and not_certain:
        items = []
        for c in cands[:5]:
            item: list = [C(short(c.get("commit"))), T(f" {pct(c.get('probability'))}")]
            if c.get("subject"):
                item.append(T(" " + _one_line(c["subject"])))
            items.append(tuple(item))
        doc.append(Para((B("Next candidates"), T(" (probability of being the culprit):"))))
        doc.append(Bullets(tuple(items)))

    untestable = [u for u in _list(r.get("untestable")) if isinstance(u, dict)]
    if untestable:
        rows = tuple((C(short(u.get("commit"))), T(_one_line(u.get("reason") or "", 160)),
                      str(u.get("requests", "?"))) for u in untestable[:40])
        doc.append(Details(f"Commits that cannot be tested here, skipped ({len(untestable)})",
                           (Table(("commit", "why", "requests"), rows),)))

    commits = [c for c in _list(r.get("commits")) if isinstance(c, dict)]
    if commits:
        rows = []
        for c in commits[:40]:
            oc = c.get("outcomes") if isinstance(c.get("outcomes"), dict) else {}
            rows.append((
                C(short(c.get("commit"))),
                str(c.get("runs", "?")),
                ", ".join(f"{_one_line(k, 20)} {v}" for k, v in sorted(oc.items(), key=lambda kv: str(kv[0])) if v) or "–",
                seconds(c.get("max_wait_s")),
            ))
        doc.append(Details(f"Runs per commit ({len(commits)})",
                           (Table(("commit", "runs", "outcomes", "max wait"), tuple(rows)),)))

    doc += _links_blocks(r)
    doc += _reproduce(r)
    return doc


def _limit_of(r: dict) -> float:
    for w in _list(r.get("waits")):
        if isinstance(w, dict) and _num(w.get("limit_s")):
            return w["limit_s"]
    return DEFAULT_LIMIT_S


def verify_summary(p_lower: Any, p_raise: Any, threshold: float = 0.95) -> str:
    """One sentence on what a verify run says."""
    if _num(p_lower) and p_lower >= threshold:
        return f"The patch lowers the failure rate (probability {pct(p_lower)})."
    if _num(p_raise) and p_raise >= threshold:
        return f"The patch raises the failure rate (probability {pct(p_raise)})."
    return (f"No clear difference: probability {pct(p_lower)} that the patch lowers the failure rate, "
            f"{pct(p_raise)} that it raises it.")


def _build_verify(r: dict) -> list[Block]:
    test = _one_line(r.get("test", "?"), 80)
    patch, parent = short(r.get("patch")), short(r.get("parent"))
    doc: list[Block] = [Heading((T("flakebot verify: "), C(test), T(" on "), C(patch),
                                 T(" vs its parent "), C(parent)))]
    doc.append(Para((B("Verdict:"), T(" " + verify_summary(r.get("p_lower"), r.get("p_raise"))))))
    doc.append(Para((T(f"{r.get('iterations', '?')} iterations on each side."),)))
    interval = r.get("interval")
    tbl = _rates_table(r.get("parent_rates"), r.get("patch_rates"), f"parent ({parent})",
                       f"patch ({patch})", interval, _limit_of(r))
    if tbl:
        doc.append(Para((B("Failure rates"), T(f" (failing runs/runs: estimated rate ({_interval_label(interval)})):"))))
        doc.append(tbl)
    wt = _waits_table(r.get("waits"))
    if wt:
        doc.append(Para((B("Shutdown waits"), T(" ("), C("vm_shutdown_all"),
                         T(f", limit {_limit_of(r):g} s) per call site:"))))
        doc.append(wt)
    doc.append(_cost_para(r))
    doc += _links_blocks(r)
    doc += _reproduce(r)
    return doc


def _build_generic(r: dict) -> list[Block]:
    """Fallback for kinds without a builder: headline plus the scalar fields."""
    kind = _one_line(r.get("kind", "result"), 40)
    doc: list[Block] = [Heading((T(f"flakebot {kind}"),) + ((T(" for "), C(_one_line(r["test"], 80)))
                                                         if r.get("test") else ()))]
    if r.get("message"):
        doc.append(Para((T(_one_line(r["message"], 1000)),)))
    items = []
    for k, v in r.items():
        if k in ("kind", "test", "message", "command", "report_url", "build_urls"):
            continue
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            items.append((T(f"{_one_line(k, 40)}: {_one_line(v, 200)}"),))
    if items:
        doc.append(Bullets(tuple(items)))
    if "runs" in r or "wall_seconds" in r:
        doc.append(_cost_para(r))
    doc += _links_blocks(r)
    doc += _reproduce(r)
    return doc


BUILDERS: dict[str, Callable[[dict], list[Block]]] = {
    "bisect": _build_bisect,
    "verify": _build_verify,
}

# --------------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(s: str) -> str:
    """Escape Markdown and HTML in untrusted text; defuse @mentions."""
    s = _MD_SPECIAL.sub(r"\\\1", s)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"@(?=\w)", "@\u200b", s)
    return s


def _md_code(s: str) -> str:
    s = s.replace("\n", " ")
    ticks = "`"
    while ticks in s:
        ticks += "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def _md_url(u: str) -> str:
    return u.replace("(", "%28").replace(")", "%29").replace(" ", "%20")


def _md_span(sp: Any) -> str:
    if isinstance(sp, str):
        return md_escape(sp)
    if isinstance(sp, T):
        return md_escape(sp.s)
    if isinstance(sp, C):
        return _md_code(sp.s)
    if isinstance(sp, B):
        return f"**{md_escape(sp.s)}**"
    if isinstance(sp, L):
        if _is_url(sp.url):
            return f"[{md_escape(sp.text)}]({_md_url(sp.url)})"
        return md_escape(sp.text)
    if isinstance(sp, (list, tuple)):
        return "".join(_md_span(x) for x in sp)
    return md_escape(str(sp))


def _md_cell(c: Any) -> str:
    return _md_span(c).replace("\n", " ") or " "


def _md_block(b: Block) -> str:
    if isinstance(b, Heading):
        return "### " + _md_span(b.spans)
    if isinstance(b, Para):
        return _md_span(b.spans)
    if isinstance(b, Bullets):
        return "\n".join("- " + _md_span(i) for i in b.items)
    if isinstance(b, Table):
        lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                 "|" + "|".join("---" for _ in b.header) + "|"]
        for row in b.rows:
            lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
        return "\n".join(lines)
    if isinstance(b, Pre):
        fence = "```"
        while fence in b.text:
            fence += "`"
        return f"{fence}\n{b.text}\n{fence}"
    if isinstance(b, Details):
        inner = "\n\n".join(_md_block(x) for x in b.blocks)
        return f"<details><summary>{md_escape(b.summary)}</summary>\n\n{inner}\n\n</details>"
    raise TypeError(f"unknown block {b!r}")


def to_markdown(doc: Iterable[Block]) -> str:
    return "\n\n".join(_md_block(b) for b in doc) + "\n"


# --------------------------------------------------------------------- Gerrit


def _g_span(sp: Any) -> str:
    if isinstance(sp, str):
        return sp
    if isinstance(sp, (T, C, B)):
        return sp.s
    if isinstance(sp, L):
        return f"{sp.text} ({sp.url})" if _is_url(sp.url) else sp.text
    if isinstance(sp, (list, tuple)):
        return "".join(_g_span(x) for x in sp)
    return str(sp)


def _g_guard(line: str) -> str:
    # Our own messages never carry a command line (pollers also skip them).
    return "  " + line if line.lstrip().startswith("/flakebot") else line


def _g_block(b: Block) -> str:
    if isinstance(b, Heading):
        return _g_span(b.spans)
    if isinstance(b, Para):
        return _g_guard(_g_span(b.spans))
    if isinstance(b, Bullets):
        return "\n".join("* " + _g_span(i) for i in b.items)
    if isinstance(b, Table):
        cells = [[_g_span(c) for c in b.header]] + [[_g_span(c) for c in row] for row in b.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(b.header))]
        lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
        return "\n".join(lines)
    if isinstance(b, Pre):
        return "\n".join("  " + ln for ln in b.text.splitlines())
    if isinstance(b, Details):
        return b.summary + ":\n\n" + "\n\n".join(_g_block(x) for x in b.blocks)
    raise TypeError(f"unknown block {b!r}")


def to_gerrit(doc: Iterable[Block]) -> str:
    return "\n\n".join(_g_block(b) for b in doc) + "\n"
