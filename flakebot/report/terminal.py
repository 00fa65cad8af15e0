"""The report in a terminal: rich tables from `data.ReportData`.

    from rich.console import Console
    print_report(collect(store), Console())
"""
from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table
from rich.text import Text

from flakebot.report.data import OUTCOMES, CampaignData, CampaignSummary, ReportData, TestData

OUTCOME_STYLE = {"pass": "green", "slow": "yellow", "timeout": "bold red", "fail": "magenta", "infra": "dim"}


def _wait(v: Optional[float], limit: float, slow: float) -> Text:
    if v is None:
        return Text("-", style="dim")
    style = "bold red" if v >= limit else "yellow" if v >= slow else ""
    return Text(f"{v:.1f}", style=style)


def _count(o: str, n: int) -> Text:
    return Text(str(n), style=OUTCOME_STYLE[o] if n else "dim")


def commits_table(td: TestData, culprits: set[str], ranged: bool) -> Table:
    t = Table(title=f"{td.test}: runs by commit ({'range order' if ranged else 'history order'}), "
                    f"worst vm_shutdown_all wait per run (s) against the {td.limit_s:g} s limit",
              title_justify="left")
    t.add_column("#", justify="right")
    if ranged:
        t.add_column("pos", justify="right")
    t.add_column("commit", no_wrap=True)
    t.add_column("subject", max_width=44, no_wrap=True, overflow="ellipsis")
    t.add_column("runs", justify="right")
    for o in OUTCOMES:
        t.add_column(o, justify="right")
    for c in ("p50", "p95", "max", "limit"):
        t.add_column(c, justify="right")
    for c in td.commits:
        mark = c.sha in culprits
        row = [str(c.index)] + ([str(c.position) if c.position is not None else ""] if ranged else [])
        row += [Text(c.short + (" ◀ culprit" if mark else ""), style="bold" if mark else ""), c.subject,
                str(c.runs)]
        row += [_count(o, c.outcomes[o]) for o in OUTCOMES]
        row += [_wait(c.waits[k], c.limit_s, td.slow_threshold_s) for k in ("p50", "p95", "max")]
        row += [str(c.limit_s)]
        t.add_row(*row)
    return t


def hosts_table(td: TestData) -> Table:
    t = Table(title=f"{td.test}: hosts (rates: k/n, mean [90% interval]; compared with the other hosts "
                    "at the same commits)", title_justify="left")
    for c in ("host", "runs", "failures", "near misses", "infra", "flag"):
        t.add_column(c, justify="left" if c in ("host", "flag") else "right")

    def rate(r) -> str:
        return f"{r.k}/{r.n} {r.mean:.2f} [{r.lo:.2f}, {r.hi:.2f}]"

    for h in td.hosts:
        t.add_row(h.host, str(h.runs), rate(h.failure_rate), rate(h.near_miss_rate), rate(h.infra_rate),
                  Text("; ".join(h.flags), style="bold red") if h.flags else Text("-", style="dim"))
    return t


def campaigns_table(rows: list[CampaignSummary]) -> Table:
    t = Table(title="campaigns", title_justify="left")
    for c in ("id", "kind", "test", "range", "status", "verdict", "culprit", "confidence", "runs", "builds",
              "host-h"):
        t.add_column(c, justify="right" if c in ("id", "confidence", "runs", "builds", "host-h") else "left",
                     no_wrap=c in ("range", "culprit"))
    for s in rows:
        verdict_style = {"culprit": "bold red", "no-regression": "green", "inconclusive": "yellow"}.get(
            s.verdict or "", "")
        t.add_row(str(s.id), s.kind, s.test, f"{s.good[:10]}..{s.bad[:10]}", s.status,
                  Text(s.verdict or "-", style=verdict_style),
                  f"{s.culprit[:10]} {s.culprit_subject[:40]}" if s.culprit else "-",
                  f"{s.confidence:.3f}" if s.confidence is not None else "-", str(s.runs), str(s.builds),
                  f"{s.host_minutes / 60:.1f}")
    return t


def campaign_lines(cd: CampaignData, console: Console) -> None:
    s = cd.summary
    head = f"campaign {s.id}: {s.kind} of {s.test} over {s.good[:10]}..{s.bad[:10]} ({len(cd.shas) - 1} commits)"
    console.print(head, highlight=False)
    if s.verdict == "culprit":
        console.print(f"  [bold red]culprit[/] {s.culprit[:10]} {s.culprit_subject} "
                      f"(confidence {s.confidence:.3f})", highlight=False)
    elif s.verdict == "culprit-range" and (cd.result or {}).get("culprit_range"):
        rg = cd.result["culprit_range"]
        console.print(f"  [bold red]culprit range[/] {rg['first'][:10]}..{rg['last'][:10]} "
                      f"({len(rg['commits'])} commits, all but the last untestable; confidence {s.confidence:.3f})",
                      highlight=False)
    elif s.verdict:
        reason = (cd.result or {}).get("reason")
        console.print(f"  verdict: {s.verdict} (confidence {s.confidence:.3f})"
                      + (f": {reason}" if reason and s.verdict == "inconclusive" else ""), highlight=False)
    else:
        console.print(f"  status: {s.status}", highlight=False)
    console.print(f"  {s.runs} runs, {s.builds} builds, {s.host_minutes / 60:.1f} host-hours", highlight=False)
    if cd.posterior is not None:
        t = Table(title="posterior (recomputed from the stored counts)", title_justify="left")
        for c in ("pos", "commit", "P(culprit)", "runs here", "subject"):
            t.add_column(c, justify="right" if c in ("pos", "P(culprit)", "runs here") else "left")
        for i, p in cd.top:
            t.add_row(str(i), cd.shas[i][:10], f"{p:.4f}", str(sum(cd.runs_at[i].values())), cd.subjects[i][:50])
        t.add_row("", "no change", f"{cd.p_no_change:.4f}", "", "")
        console.print(t)
    if cd.untestable:
        t = Table(title=f"untestable commits, skipped ({len(cd.untestable)})", title_justify="left")
        for c in ("pos", "commit", "why", "requests", "subject"):
            t.add_column(c, justify="right" if c in ("pos", "requests") else "left")
        for u in cd.untestable:
            t.add_row(str(u["position"]), u["commit"][:10], u["reason"], str(u["requests"]), u["subject"][:40])
        console.print(t)


def print_report(data: ReportData, console: Console) -> None:
    """Every section of the report, as tables."""
    culprits = {s.culprit for s in data.campaigns if s.culprit and s.verdict == "culprit"}
    if data.campaign is not None:
        campaign_lines(data.campaign, console)
    if not data.tests:
        console.print("no runs recorded" + (" for this selection" if data.test_filter or data.since else ""))
    for td in data.tests:
        console.print(commits_table(td, culprits, ranged=data.campaign is not None))
        if td.hosts:
            console.print(hosts_table(td))
    if data.campaigns:
        console.print(campaigns_table(data.campaigns))
    else:
        console.print("no campaigns")
