"""Charts for the HTML report: matplotlib figures rendered to inline SVG.

No pyplot (no global figure state, no GUI backend): each chart builds a
`matplotlib.figure.Figure` and `svg()` serialises it with `svg.fonttype:
none`, so every label is a real SVG <text> element that the browser draws
with a local sans-serif font (nothing is fetched). Output is deterministic
(fixed hash salt, no date, seeded jitter).

Sizes are for a ~1280 px wide laptop screen: figures are 12 in wide and the
page scales them to its column width.
"""
from __future__ import annotations

import io
import re
from typing import Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from flakebot.model import OUTCOME_LABEL, OUTCOME_ORDER
from flakebot.report.data import CampaignData, TestData

WIDTH_IN = 12.0
OUTCOME_COLOURS = {"pass": "#4c9a2a", "slow": "#e69f00", "timeout": "#d7301f", "fail": "#7b3294",
                   "infra": "#9e9e9e"}
LIMIT_COLOUR = "#d7301f"
SLOW_COLOUR = "#e69f00"
CULPRIT_COLOUR = "#333333"
# Call sites: colour-blind friendly (Okabe-Ito without the outcome colours), then tab10.
SITE_COLOURS = ["#0072b2", "#cc79a7", "#009e73", "#56b4e9", "#000000"] + [
    matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]

RC = {
    "svg.fonttype": "none",  # labels as <text>, not paths, not embedded fonts
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "legend.frameon": True,
    "legend.framealpha": 0.9,
    "legend.fontsize": 9,
}


def svg(fig: Figure, name: str, label: str) -> str:
    """The figure as an inline <svg> element (no XML prolog), labelled for
    screen readers, with ids unique to `name` so several charts can share a page."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    buf = io.StringIO()
    with matplotlib.rc_context({**RC, "svg.hashsalt": f"flakebot-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches=None,
                    pad_inches=0.08)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<!--.*?-->\s*", "", text, flags=re.S)
    # Make every id (and reference to it) unique to this chart.
    text = re.sub(r'id="([^"]+)"', lambda m: f'id="{name}-{m.group(1)}"', text)
    text = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{name}-{m.group(1)})", text)
    text = re.sub(r'((?:xlink:)?href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{name}-{m.group(2)}"', text)
    safe = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return text.replace("<svg ", f'<svg role="img" aria-label="{safe}" class="chart" data-chart="{name}" ', 1)


def _figure(height: float) -> Figure:
    with matplotlib.rc_context(RC):
        return Figure(figsize=(WIDTH_IN, height), layout="constrained")


def _commit_axis(ax, td: TestData, max_labels: int = 45) -> None:
    n = len(td.commits)
    step = max(1, int(np.ceil(n / max_labels)))
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{td.commits[i].short} ({td.commits[i].evidence})" for i in ticks], rotation=60,
                       ha="right", rotation_mode="anchor", fontsize=8 if n > 15 else 9, family="monospace")
    ax.set_xlim(-0.6, n - 0.4)
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("commit (evidence runs), in history order: oldest left")


def _culprit_lines(ax, td: TestData, y_text: float) -> None:
    index = {c.sha: c.index for c in td.commits}
    for sha, cid in td.culprits:
        x = index[sha] - 0.5
        ax.axvline(x, color=CULPRIT_COLOUR, lw=1.2, ls=(0, (5, 3)), zorder=1)
        ax.text(x + 0.08, y_text, f"culprit {sha[:10]} →\n(campaign {cid})", color=CULPRIT_COLOUR, fontsize=9,
                va="center", ha="left", zorder=6,
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85))


def waits_chart(td: TestData, seed: int = 0) -> Optional[str]:
    """Every vm_shutdown_all wait as a point by commit, coloured by call site,
    with the limit and the slow threshold as labelled lines."""
    if not td.commits:
        return None
    fig = _figure(4.8)
    ax = fig.add_subplot()
    limit, slow = td.limit_s, td.slow_threshold_s
    top = max([limit * 1.12] + [p.waited_s * 1.05 for p in td.points])
    ax.axhspan(slow, limit, color=SLOW_COLOUR, alpha=0.08, lw=0, zorder=0)
    ax.axhspan(limit, top, color=LIMIT_COLOUR, alpha=0.06, lw=0, zorder=0)
    sites = sorted({p.call_site for p in td.points})
    colours = {s: SITE_COLOURS[i % len(SITE_COLOURS)] for i, s in enumerate(sites)}
    rng = np.random.default_rng(seed)
    handles = []
    for s in sites:
        pts = [p for p in td.points if p.call_site == s]
        x = np.array([p.index for p in pts], dtype=float) + rng.uniform(-0.28, 0.28, len(pts))
        y = np.array([p.waited_s for p in pts])
        out = np.array([p.timed_out for p in pts])
        ax.scatter(x[~out], y[~out], s=16, color=colours[s], alpha=0.75, lw=0, zorder=3)
        if out.any():
            ax.scatter(x[out], y[out], s=34, color=colours[s], marker="x", lw=1.6, zorder=4)
        handles.append(Line2D([], [], ls="", marker="o", color=colours[s], label=s))
    if any(p.timed_out for p in td.points):
        handles.append(Line2D([], [], ls="", marker="x", color="#555555", mew=1.6, label="timed out"))
    ax.axhline(limit, color=LIMIT_COLOUR, lw=1.6, zorder=2)
    ax.axhline(slow, color=SLOW_COLOUR, lw=1.4, ls=(0, (6, 3)), zorder=2)
    n = len(td.commits)
    # Line labels just outside the plot, on the right: never on top of points.
    ax.text(n - 0.3, limit, f"limit {limit:g} s", color=LIMIT_COLOUR, fontsize=10, fontweight="bold",
            ha="left", va="center", clip_on=False)
    ax.text(n - 0.3, slow, f"slow {slow:g} s", color="#b07800", fontsize=10, fontweight="bold",
            ha="left", va="center", clip_on=False)
    ax.set_ylim(0, top)
    ax.set_ylabel("vm_shutdown_all wait (s)")
    _commit_axis(ax, td)
    _culprit_lines(ax, td, (slow + 12) / 2)
    if handles:
        ax.legend(handles=handles, loc="upper left", title="call site", title_fontsize=9)
    else:
        ax.text(0.5, 0.5, "no measured waits", transform=ax.transAxes, ha="center", color="#666666")
    ax.set_title(f"{td.test}: every vm_shutdown_all wait, by commit", loc="left", fontsize=11)
    return svg(fig, f"waits-{td.test}", f"{td.test}: shutdown waits by commit against the {limit:g} s limit")


def rates_chart(td: TestData) -> Optional[str]:
    """Timeout and near-miss rates per commit with 90% credible intervals."""
    if not td.commits:
        return None
    fig = _figure(3.9)
    ax = fig.add_subplot()
    x = np.arange(len(td.commits), dtype=float)
    for off, attr, colour, label, marker in (
            (-0.13, "timeout_rate", LIMIT_COLOUR, "timeouts", "s"),
            (0.13, "near_miss_rate", SLOW_COLOUR, f"near misses (passed, wait ≥ {td.slow_threshold_s:g} s)", "o")):
        rates = [getattr(c, attr) for c in td.commits]
        mean = np.array([r.mean for r in rates])
        lo = np.array([r.lo for r in rates])
        hi = np.array([r.hi for r in rates])
        ax.errorbar(x + off, mean, yerr=[mean - lo, hi - mean], fmt=marker, ms=5, color=colour, ecolor=colour,
                    elinewidth=1.4, capsize=2.5, label=label, zorder=3)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("rate per run\n(mean, 90% interval)")
    _commit_axis(ax, td)
    _culprit_lines(ax, td, 0.9)
    ax.legend(loc="upper left", ncols=2)
    ax.set_title(f"{td.test}: timeout and near-miss rates by commit (Beta posterior, Jeffreys prior)",
                 loc="left", fontsize=11)
    return svg(fig, f"rates-{td.test}", f"{td.test}: timeout and near-miss rates by commit")


def campaign_chart(cd: CampaignData) -> Optional[str]:
    """The posterior over the range (top) and the runs spent at each position (bottom)."""
    n = len(cd.shas)
    if n < 2:
        return None
    fig = _figure(5.6)
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1])
    ax, bx = axes
    x = np.arange(n)
    culprit = cd.summary.culprit
    cpos = cd.shas.index(culprit) if culprit in cd.shas else None
    if cd.posterior is not None:
        # A step area, not one bar per commit: ranges have thousands of commits.
        ax.fill_between(np.r_[x - 0.5, n - 0.5], np.r_[cd.posterior, 0.0], step="post", color="#0072b2",
                        lw=0.8, alpha=0.9)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("P(culprit = commit)")
        top = cd.top[:3]
        for i, p in top[:1]:
            ax.annotate(f"{cd.shas[i][:10]}  P = {p:.3f}", (i, p), xytext=(8, -4), textcoords="offset points",
                        fontsize=9, va="top", family="monospace")
        ax.text(0.995, 0.95, f"P(no change in range) = {cd.p_no_change:.2g}", transform=ax.transAxes,
                ha="right", va="top", fontsize=9)
    else:
        ax.text(0.5, 0.5, f"no posterior for a {cd.summary.kind} campaign", transform=ax.transAxes, ha="center")
    ax.set_title(f"campaign {cd.summary.id}: posterior over the range and where runs were spent",
                 loc="left", fontsize=11)
    bottom = np.zeros(n)
    for o in OUTCOME_ORDER:
        v = np.array([r[o] for r in cd.runs_at], dtype=float)
        if v.any():
            nz = v > 0  # only positions with runs: a bar per commit is slow for long ranges
            bx.bar(x[nz], v[nz], bottom=bottom[nz], width=1.0, color=OUTCOME_COLOURS[o], lw=0,
                   label=OUTCOME_LABEL[o])
            bottom += v
    prior = np.array(cd.prior_runs_at, dtype=float)
    if prior.any():
        bx.scatter(x[prior > 0], bottom[prior > 0] + 0.3, marker="v", s=28, color="#555555", zorder=3,
                   label="runs stored before (prior)")
        for i in np.nonzero(prior)[0]:
            bx.text(i, bottom[i] + 0.9, f"+{int(prior[i])}", ha="center", va="bottom", fontsize=8, color="#555555")
    bx.set_ylabel("runs (this campaign)")
    bx.yaxis.set_major_locator(MaxNLocator(integer=True))
    bx.set_ylim(0, max(3.0, (bottom.max() + 2.5) * 1.1))
    bx.legend(loc="upper left", ncols=6, fontsize=8)
    for a in axes:
        a.grid(axis="x", visible=False)
        a.set_xlim(-0.8, n - 0.2)
        if cpos is not None:
            a.axvline(cpos - 0.5, color=CULPRIT_COLOUR, lw=1.0, ls=(0, (5, 3)), zorder=1)
    # Commits by short sha (ranges are long: at most ~40 labels, always both ends and the culprit).
    step = max(1, int(np.ceil(n / 40)))
    ticks = sorted(set(range(0, n, step)) | {0, n - 1} | ({cpos} if cpos is not None else set()))
    bx.set_xticks(ticks)
    bx.set_xticklabels([cd.shas[i][:10] for i in ticks], rotation=60, ha="right", rotation_mode="anchor",
                       fontsize=8 if len(ticks) > 15 else 9, family="monospace")
    bx.set_xlabel(f"commit, in first-parent order from the good end {cd.shas[0][:10]} (left) to the bad end "
                  f"{cd.shas[-1][:10]} (right)")
    return svg(fig, f"campaign-{cd.summary.id}", f"campaign {cd.summary.id}: posterior and runs per commit")
