"""The self-contained HTML report: one file, no scripts, no fetched resources.

    page = report_page(store)                      # every test, history order
    page = report_page(store, campaign_id=3)       # one campaign's range
    write_report(store, "report.html", campaign_id=3)

Styles are inline, charts are inline SVG (charts.py), fonts are the
browser's own; the only links that leave the page are build URLs from the
store (http(s) only) and links to sibling report pages.
"""
from __future__ import annotations

import contextlib
import html
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from flakebot.model import OUTCOME_LABEL
from flakebot.report import charts
from flakebot.report.data import (OUTCOMES, CampaignData, CampaignSummary, Event, ReportData, TestData,
                                  collect)

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans",
       Arial, sans-serif; color: #1f2328; background: #fff; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 24px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-top: 10px; border-top: 1px solid #d8dee4; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.meta, .note { color: #59636e; margin: 2px 0; }
.note { font-size: 12.5px; }
code, .sha { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace;
             font-size: 12.5px; }
figure { margin: 10px 0 4px; }
svg.chart { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e6e9ec; text-align: right; vertical-align: top;
         white-space: nowrap; }
td.wrap { white-space: normal; }
h2 code { font-size: 17px; }
th { background: #f6f8fa; font-weight: 600; position: sticky; top: 0; }
td.l, th.l { text-align: left; }
tr:nth-child(even) td { background: #fbfcfd; }
tr.culprit td { background: #fff1ee; }
.verdict { border: 1px solid #d8dee4; border-left: 6px solid #0072b2; border-radius: 6px; padding: 10px 14px;
           margin: 12px 0; background: #f6f9fc; }
.verdict.culprit { border-left-color: #d7301f; }
.verdict.no-regression { border-left-color: #4c9a2a; }
.verdict .big { font-size: 16px; font-weight: 600; }
.o-pass { color: #3b7a20; } .o-slow { color: #a66f00; font-weight: 600; } .o-timeout { color: #c0281a; font-weight: 700; }
.o-fail { color: #6a2a80; font-weight: 600; } .o-infra { color: #7a7a7a; }
.zero { color: #b5bcc4; font-weight: 400; }
.w-over { color: #c0281a; font-weight: 700; } .w-slow { color: #a66f00; font-weight: 600; }
.flag { color: #c0281a; font-weight: 600; }
td.builds { text-align: left; font-size: 12px; white-space: normal; }
.builds a, .builds span { white-space: nowrap; margin-right: 8px; display: inline-block; }
a { color: #0b62b0; }
details summary { cursor: pointer; color: #0b62b0; }
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _sha(sha: Optional[str], n: int = 10) -> str:
    return f'<span class="sha" title="{_e(sha)}">{_e((sha or "")[:n])}</span>' if sha else "-"


def _count(o: str, v: int) -> str:
    return f'<span class="{"zero" if not v else "o-" + o}">{v}</span>'


def _wait(v: Optional[float], limit: float, slow: float) -> str:
    if v is None:
        return '<span class="zero">-</span>'
    cls = "w-over" if v >= limit else "w-slow" if v >= slow else ""
    return f'<span class="{cls}">{v:.1f}</span>' if cls else f"{v:.1f}"


def _rate(r) -> str:
    return _est(r.k, r.n, r.mean, r.lo, r.hi, 2)


def _est(k: int, n: int, mean: float, lo: float, hi: float, digits: int = 3) -> str:
    """'0/24, est. 0.020 [0.000, 0.076]': the count first, so an estimate is never read as an observation."""
    return (f"{k}/{n}<br><span class=\"note\">est. {mean:.{digits}f} "
            f"[{lo:.{digits}f}, {hi:.{digits}f}]</span>")


def _link(url: Optional[str], text: str) -> str:
    """A link only for web addresses; anything else (sim://, file://) is shown as text."""
    if url and url.startswith(("http://", "https://")):
        return f'<a href="{_e(url)}" rel="noopener">{_e(text)}</a>'
    return f'<span title="{_e(url or "")}">{_e(text)}</span>'


# ------------------------------------------------------------------ sections


def _verdict(cd: CampaignData, db_path: str) -> str:
    s, r = cd.summary, cd.result or {}
    kind = s.verdict or s.status
    if s.verdict == "culprit":
        info = r.get("culprit_info") or {}
        head = (f'<div class="big">Culprit {_sha(s.culprit)} {_e(s.culprit_subject)}</div>'
                f"<div>confidence {s.confidence:.3f}"
                + (f", author {_e(info.get('author'))}" if info.get("author") else "")
                + (f", Change-Id <code>{_e(info.get('change_id'))}</code>" if info.get("change_id") else "")
                + "</div>")
    elif s.verdict == "no-regression":
        head = f'<div class="big">No regression in this range</div><div>confidence {s.confidence:.3f}</div>'
    elif s.verdict == "culprit-range" and isinstance(r.get("culprit_range"), dict):
        rg = r["culprit_range"]
        members = ", ".join(f"{_sha(c.get('commit'))} {_e(c.get('subject') or '')}" for c in rg.get("commits") or [])
        head = (f'<div class="big">Culprit range {_sha(rg.get("first"))}..{_sha(rg.get("last"))}</div>'
                f"<div>confidence {s.confidence:.3f} that one of these raised the rate (all but the last cannot "
                f"be tested here): {members}</div>")
    elif s.verdict == "inconclusive":
        cands = ", ".join(f"{_sha(cd.shas[i])} {p:.2f}" for i, p in cd.top[:3])
        head = (f'<div class="big">Inconclusive: {_e(r.get("reason") or "budget spent")}</div>'
                f"<div>top candidates: {cands}</div>")
    else:
        head = f'<div class="big">Campaign {_e(s.status)}</div>'
    body = (f"<div>{s.kind} of <code>{_e(s.test)}</code> over {_sha(s.good)}..{_sha(s.bad)} "
            f"({s.range_size - 1} commits after the good end): {s.runs} runs, {s.builds} builds, "
            f"{s.host_minutes / 60:.1f} host-hours"
            + (f" on {len(r.get('hosts') or [])} hosts" if r.get("hosts") else "") + "</div>")
    rates = r.get("rates")
    table = ""
    if rates:
        rows = []
        for side in ("before", "after"):
            x = rates[side]
            cells = "".join(f"<td>{_est(x[k]['k'], x[k]['n'], x[k]['rate'], x[k]['lo'], x[k]['hi'])}</td>"
                            for k in ("timeout", "near_miss", "fail"))
            rows.append(f'<tr><td class="l">{side} the culprit</td><td>{x["runs"]}</td>{cells}</tr>')
        table = ("<table><tr><th class=l>side</th><th>runs</th><th>timeouts</th><th>near misses</th>"
                 "<th>other failures</th></tr>" + "".join(rows) + "</table>"
                 f'<div class="note">Rates pooled over each side of the culprit: Beta posterior mean and '
                 f'{rates.get("interval", 0.9):.0%} interval.</div>')
    cmd = ""
    if r.get("command"):
        line = f"{r['command']} --repo SPDK_CLONE --db {os.path.abspath(db_path)}"
        cmd = (f'<div class="note">reproduce: <code>{_e(line)}</code> (SPDK_CLONE: any clone of SPDK with '
               "these commits; the database holds every run)</div>")
    skipped = ""
    if cd.untestable:
        skipped = ("<details><summary>" + f"{len(cd.untestable)} commits cannot be tested here (skipped)</summary>"
                   "<table><tr><th>pos</th><th class=l>commit</th><th class=l>why</th><th>requests</th></tr>"
                   + "".join(f'<tr><td>{u["position"]}</td><td class="l">{_sha(u["commit"])}</td>'
                             f'<td class="l wrap">{_e(u["reason"])}</td><td>{u["requests"]}</td></tr>'
                             for u in cd.untestable) + "</table></details>")
    return f'<div class="verdict {_e(kind)}">{head}{body}{table}{skipped}{cmd}</div>'


def _commit_table(td: TestData, culprits: set[str]) -> str:
    pos = any(c.position is not None for c in td.commits)
    head = ("<tr><th>#</th>" + ("<th>pos</th>" if pos else "") + "<th class=l>commit</th><th class=l>subject</th>"
            "<th>runs</th>" + "".join(f"<th>{OUTCOME_LABEL[o]}</th>" for o in OUTCOMES)
            + "<th>p50</th><th>p95</th><th>max</th><th>limit</th><th class=l>builds</th></tr>")
    rows = []
    for c in td.commits:
        builds = " ".join(_link(b.url, f"#{b.id} {b.host or ''} ({b.runs})")
                          for b in c.builds)
        if len(c.builds) > 6:
            builds = f"<details><summary>{len(c.builds)} builds</summary>{builds}</details>"
        mark = ' class="culprit"' if c.sha in culprits else ""
        subject = _e(c.subject[:72] + ("…" if len(c.subject) > 72 else ""))
        rows.append(
            f"<tr{mark}><td>{c.index}</td>" + (f"<td>{'' if c.position is None else c.position}</td>" if pos else "")
            + f'<td class="l">{_sha(c.sha)}</td><td class="l wrap" title="{_e(c.subject)}">{subject}'
            + (" <b>(culprit)</b>" if c.sha in culprits else "") + f"</td><td>{c.runs}</td>"
            + "".join(f"<td>{_count(o, c.outcomes[o])}</td>" for o in OUTCOMES)
            + "".join(f"<td>{_wait(c.waits[k], c.limit_s, td.slow_threshold_s)}</td>" for k in ("p50", "p95", "max"))
            + f'<td>{c.limit_s}</td><td class="builds">{builds}</td></tr>')
    return ("<table>" + head + "".join(rows) + "</table>"
            '<div class="note">p50/p95/max: the worst <code>vm_shutdown_all</code> wait of each run, in seconds '
            "(median; p95 nearest-rank); red at or over the limit, amber at or over the slow threshold. "
            "Builds: id, host, runs; linked when the executor gave a web address.</div>")


def _host_table(td: TestData) -> str:
    if not td.hosts:
        return ""
    head = ("<tr><th class=l>host</th><th>runs</th><th>timeouts</th><th>other failures</th><th>near misses</th>"
            "<th>infra</th><th>comparable runs</th><th class=l>vs the other hosts at the same commits</th></tr>")
    rows = []
    for h in td.hosts:
        if h.flags:
            verdict = "<br>".join(f'<span class="flag">⚑ {_e(f)}</span>' for f in h.flags)
        elif h.tests:
            verdict = "; ".join(f"{k} {v['observed']} vs {v['expected']:.1f} (p={v['p']:.2g})"
                                for k, v in h.tests.items())
            verdict = f'<span class="note">{_e(verdict)}</span>'
        else:
            verdict = '<span class="note">no commit run by this host and another</span>'
        rows.append(f'<tr><td class="l">{_e(h.host)}</td><td>{h.runs}</td><td>{_rate(h.timeout_rate)}</td>'
                    f"<td>{_rate(h.fail_rate)}</td><td>{_rate(h.near_miss_rate)}</td><td>{_rate(h.infra_rate)}</td><td>{h.comparable}</td>"
                    f'<td class="l wrap">{verdict}</td></tr>')
    return ("<table>" + head + "".join(rows) + "</table>"
            '<div class="note">Rates: k/n, then the Beta posterior estimate (Jeffreys prior) and 90% interval; '
            "timeouts, other failures and near misses per evidence run, infra per run. The test flags a host on "
            "failures (timeouts and other failures together), near misses and infra. Each host is compared with the others <i>at the same "
            "commits</i> (exact conditional test stratified by commit: hypergeometric per commit, convolved; "
            "two-sided) and flagged ⚑ when p &lt; 0.05 / (hosts × 3), Bonferroni over hosts and the three "
            "kinds. Runs at commits no other host ran are not comparable.</div>")


def _campaign_table(rows: list[CampaignSummary], href: Optional[Callable[[int], Optional[str]]]) -> str:
    if not rows:
        return "<p class=note>No campaigns.</p>"
    out = []
    for s in rows:
        link = href(s.id) if href else None
        ident = f'<a href="{_e(link)}">{s.id}</a>' if link else str(s.id)
        conf = f"{s.confidence:.3f}" if s.confidence is not None else "-"
        culprit = f"{_sha(s.culprit)} {_e(s.culprit_subject)}" if s.culprit else "-"
        out.append(f"<tr><td>{ident}</td><td class=l>{_e(s.kind)}</td><td class=l><code>{_e(s.test)}</code></td>"
                   f"<td class=l>{_sha(s.good)}..{_sha(s.bad)}</td><td class=l>{_e(s.status)}</td>"
                   f"<td class=l>{_e(s.verdict or '-')}</td><td class='l wrap'>{culprit}</td><td>{conf}</td>"
                   f"<td>{s.runs}</td><td>{s.builds}</td><td>{s.host_minutes / 60:.1f}</td>"
                   f"<td class=l>{_e(s.created_at[:16].replace('T', ' '))}</td></tr>")
    return ("<table><tr><th>id</th><th class=l>kind</th><th class=l>test</th><th class=l>range</th>"
            "<th class=l>status</th><th class=l>verdict</th><th class=l>culprit</th><th>confidence</th><th>runs</th>"
            "<th>builds</th><th>host-hours</th><th class=l>started (UTC)</th></tr>" + "".join(out) + "</table>")


def _timeline(events: list[Event], href: Optional[Callable[[int], Optional[str]]]) -> str:
    """What the nightly detector saw: each rise (and the culprit its bisection named) and
    each fall ("appears fixed"), with the commits between which the rate changed."""
    rows = []
    for e in events:
        link = href(e.campaign_id) if href and e.campaign_id else None
        camp = (f'<a href="{_e(link)}">campaign {e.campaign_id}</a>' if link else
                f"campaign {e.campaign_id}" if e.campaign_id else "-")
        what = ('<b class="o-timeout">rise</b>' if e.kind == "rise" else
                '<b class="o-pass">fall: appears fixed</b>' if e.kind == "fall" else _e(e.kind))
        found = f"culprit {_sha(e.culprit)} {_e(e.culprit_subject)}" if e.culprit else ""
        rows.append(f'<tr class="event-{_e(e.kind)}"><td class=l>{_e(e.at[:16].replace("T", " "))}</td>'
                    f"<td class=l>{what}</td><td class=l><code>{_e(e.test)}</code></td>"
                    f"<td class=l>{_sha(e.before)}..{_sha(e.after)}</td><td>{e.probability:.3f}</td>"
                    f"<td class=l>{camp}</td><td class='l wrap'>{found}</td></tr>")
    return ("<table><tr><th class=l>when (UTC)</th><th class=l>what</th><th class=l>test</th>"
            "<th class=l>rate changed between</th><th>P</th><th class=l>campaign</th><th class=l>found</th></tr>"
            + "".join(rows) + "</table>"
            '<div class="note">The nightly runs at the branch tip: a rise means the failure rate went up between '
            "the two tips shown (a bisection then looks for the culprit in that range); a fall means it went "
            "back down there (the fixing commit is in that range).</div>")


def _test_section(td: TestData, culprits: set[str], heading: bool, after_waits: str = "") -> str:
    parts = []
    if heading:
        parts.append(f"<h2><code>{_e(td.test)}</code></h2>")
    parts.append(f'<p class="meta">{td.runs} runs at {len(td.commits)} commits; {len(td.points)} '
                 f"<code>vm_shutdown_all</code> waits; limit {td.limit_s:g} s, slow threshold "
                 f"{td.slow_threshold_s:g} s"
                 + (f"; {td.unmeasured} shutdowns without a measured wait are not plotted" if td.unmeasured else "")
                 + "</p>")
    waits = charts.waits_chart(td)
    if waits:
        parts.append(f"<figure>{waits}</figure>")
    parts.append(after_waits)
    rates = charts.rates_chart(td)
    if rates:
        parts.append(f"<figure>{rates}</figure>")
    parts.append("<h3>Runs and waits by commit</h3>" + _commit_table(td, culprits))
    parts.append("<h3>Hosts</h3>" + _host_table(td))
    return "\n".join(parts)


def render(data: ReportData, *, campaign_href: Optional[Callable[[int], Optional[str]]] = None,
           title: Optional[str] = None) -> str:
    """The page for already collected data (pure)."""
    cd = data.campaign
    title = title or (f"flakebot: campaign {cd.summary.id} ({cd.summary.test})" if cd else "flakebot report")
    scope = []
    if cd:
        scope.append(f"campaign {cd.summary.id}: first-parent range {cd.shas[0][:10]}..{cd.shas[-1][:10]}, "
                     "commits in range order")
    else:
        scope.append("commits in history order (commit date)")
    if data.test_filter:
        scope.append(f"test {data.test_filter}")
    if data.since:
        scope.append(f"runs since {data.since}")
    culprits = {s.culprit for s in data.campaigns if s.culprit and s.verdict == "culprit"}
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="meta">{_e("; ".join(scope))}. Generated {_e(data.generated_at)} from '
            f"<code>{_e(os.path.basename(data.db_path))}</code>.</p>"]
    campaign_part = ""
    if cd:
        body.append(_verdict(cd, data.db_path))
        chart = charts.campaign_chart(cd)
        if chart:
            campaign_part = (
                f"<figure>{chart}</figure>"
                '<p class="note">Top: the culprit posterior recomputed from the stored counts with the campaign\'s '
                "own settings and prior (the engine's exact posterior; the bars sum to 1 − P(no change)). Bottom: "
                "runs this campaign spent at each commit of the range, by outcome; ▼ marks runs stored before the "
                "campaign began, which formed its prior.</p>")
        if not data.tests:
            body.append(campaign_part)
    if not data.tests:
        body.append("<p>No runs recorded" + (" for this selection" if data.test_filter or data.since else "")
                    + ".</p>")
    for td in data.tests:
        body.append(_test_section(td, culprits, heading=True,
                                  after_waits=campaign_part if cd and td.test == cd.summary.test else ""))
    if data.events and not cd:
        body.insert(2, "<h2>Timeline</h2>" + _timeline(data.events, campaign_href))
    body.append("<h2>Campaigns</h2>" + _campaign_table(data.campaigns, campaign_href))
    body.append('<p class="note">Outcomes: <b>pass</b>; <b>near miss</b> = passed, but a shutdown waited at least '
                "the slow threshold; <b>timeout</b> = a shutdown passed its limit; <b>fail</b> = another failure; "
                "<b>infra</b> = no usable result (never counted as evidence). Rates by commit: Beta posterior "
                "(Jeffreys prior, Beta(½, ½)) mean and 90% equal-tailed interval over evidence runs; per-commit "
                "rates from a bisection are noisy by design (runs go where they are informative).</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")


def report_page(store, *, test: Optional[str] = None, since: Optional[str] = None,
                campaign_id: Optional[int] = None, limit_s: Optional[int] = None,
                slow_threshold_s: Optional[float] = None, now: Optional[str] = None,
                campaign_href: Optional[Callable[[int], Optional[str]]] = None) -> str:
    """The whole HTML page as a string. Reads the store, writes nothing.
    `now` (ISO 8601) is the "generated" stamp (default: the current UTC time)."""
    now = now or datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = collect(store, test=test, since=since, campaign_id=campaign_id, limit_s=limit_s,
                   slow_threshold_s=slow_threshold_s, now=now)
    return render(data, campaign_href=campaign_href)


def atomic_write(path: Path, text: str) -> None:
    """Write through a temporary file and rename: a web server never serves half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_report(store, path, **kw) -> Path:
    """`report_page(store, **kw)` written to `path` (atomically). Returns the path."""
    path = Path(path)
    atomic_write(path, report_page(store, **kw))
    return path
