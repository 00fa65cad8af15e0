"""The report in a terminal: rich tables from `data.ReportData`.

    from rich.console import Console
    print_report(collect(store), Console())
"""
from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table
from rich.text import Text

from flakebot.model import OUTCOME_LABEL
from flakebot.report.data import OUTCOMES, CampaignData, CampaignSummary, ReportData, TestData
from flakebot.report.table import Col, fitted

OUTCOME_STYLE = {"pass": "green", "slow": "yellow", "timeout": "bold red", "fail": "magenta", "infra": "dim"}


def _wait(v: Optional[float], limit: float, slow: float) -> Text:
    if v is None:
        return Text("-", style="dim")
    style = "bold red" if v >= limit else "yellow" if v >= slow else ""
    return Text(f"{v:.1f}", style=style)


def _count(o: str, n: int) -> Text:
    return Text(str(n), style=OUTCOME_STYLE[o] if n else "dim")


def commits_table(td: TestData, culprits: set[str], ranged: bool, width: int) -> Table:
    cols = [Col("#", drop=2)] + ([Col("pos", drop=3)] if ranged else [])
    cols += [Col("commit", "left"), Col("subject", "left", flex=True), Col("runs")]
    cols += [Col(OUTCOME_LABEL[o]) for o in OUTCOMES]
    cols += [Col(c) for c in ("p50", "p95", "max")] + [Col("limit", drop=1)]
    rows = []
    for c in td.commits:
        mark = c.sha in culprits
        row = [str(c.index)] + ([str(c.position) if c.position is not None else ""] if ranged else [])
        row += [Text(c.short + (" ◀" if mark else ""), style="bold" if mark else ""), c.subject, str(c.runs)]
        row += [_count(o, c.outcomes[o]) for o in OUTCOMES]
        row += [_wait(c.waits[k], c.limit_s, td.slow_threshold_s) for k in ("p50", "p95", "max")]
        row += [str(c.limit_s)]
        rows.append(row)
    return fitted(f"{td.test}: runs by commit ({'range order' if ranged else 'history order'}), worst "
                  f"vm_shutdown_all wait per run (s) against the {td.limit_s:g} s limit", cols, rows, width,
                  caption="◀ culprit" if any(c.sha in culprits for c in td.commits) else None)


def hosts_table(td: TestData, width: int) -> Table:
    def rate(r) -> str:
        return f"{r.k}/{r.n} {r.mean:.2f} [{r.lo:.2f}, {r.hi:.2f}]"

    cols = [Col("host", "left"), Col("runs"), Col("timeouts"), Col("other failures"), Col(OUTCOME_LABEL["slow"] + "es"),
            Col("infra"), Col("flag", "left", flex=True)]
    rows = [[h.host, str(h.runs), rate(h.timeout_rate), rate(h.fail_rate), rate(h.near_miss_rate),
             rate(h.infra_rate), Text("; ".join(h.flags), style="bold red") if h.flags else Text("-", style="dim")]
            for h in td.hosts]
    return fitted(f"{td.test}: hosts (k/n, mean [90% interval]; compared with the other hosts at the same "
                  "commits)", cols, rows, width)


def campaigns_table(rows: list[CampaignSummary], width: int) -> Table:
    cols = [Col("id"), Col("kind", "left", drop=2), Col("test", "left", drop=3), Col("range", "left"),
            Col("status", "left", drop=1), Col("verdict", "left"), Col("culprit", "left"),
            Col("subject", "left", flex=True), Col("confidence"), Col("runs"), Col("builds"), Col("host-h")]
    out = []
    for s in rows:
        verdict_style = {"culprit": "bold red", "no-regression": "green", "inconclusive": "yellow"}.get(
            s.verdict or "", "")
        out.append([str(s.id), s.kind, s.test, f"{s.good[:10]}..{s.bad[:10]}", s.status,
                    Text(s.verdict or "-", style=verdict_style), s.culprit[:10] if s.culprit else "-",
                    s.culprit_subject if s.culprit else "", f"{s.confidence:.3f}" if s.confidence is not None
                    else "-", str(s.runs), str(s.builds), f"{s.host_minutes / 60:.1f}"])
    return fitted("campaigns", cols, out, width)


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
        cols = [Col("pos"), Col("commit", "left"), Col("P(culprit)"), Col("runs here"),
                Col("subject", "left", flex=True)]
        rows = [[str(i), cd.shas[i][:10], f"{p:.4f}", str(sum(cd.runs_at[i].values())), cd.subjects[i]]
                for i, p in cd.top]
        rows.append(["", "no change", f"{cd.p_no_change:.4f}", "", ""])
        console.print(fitted("posterior (recomputed from the stored counts)", cols, rows, console.width))
    if cd.untestable:
        cols = [Col("pos"), Col("commit", "left"), Col("why", "left"), Col("requests"),
                Col("subject", "left", flex=True)]
        rows = [[str(u["position"]), u["commit"][:10], u["reason"], str(u["requests"]), u["subject"]]
                for u in cd.untestable]
        console.print(fitted(f"untestable commits, skipped ({len(cd.untestable)})", cols, rows, console.width))


def print_report(data: ReportData, console: Console) -> None:
    """Every section of the report, as tables."""
    culprits = {s.culprit for s in data.campaigns if s.culprit and s.verdict == "culprit"}
    if data.campaign is not None:
        campaign_lines(data.campaign, console)
    if not data.tests:
        console.print("no runs recorded" + (" for this selection" if data.test_filter or data.since else ""))
    for td in data.tests:
        console.print(commits_table(td, culprits, ranged=data.campaign is not None, width=console.width))
        if td.hosts:
            console.print(hosts_table(td, console.width))
    if data.campaigns:
        console.print(campaigns_table(data.campaigns, console.width))
    else:
        console.print("no campaigns")
