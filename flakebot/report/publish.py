"""Reports written where people find them: a folder of pages, optionally served.

The service calls `write_reports` after each nightly cycle and each finished
campaign, and `flakebot demo` at its end:

    loc = write_reports(store, cfg.report_dir(), base_url=cfg.report.base_url or None)
    loc.path   # folder/index.html
    loc.url    # base_url + "/index.html", or None

    loc = write_reports(store, folder, base_url, campaign_id=cid)
    loc.path   # folder/campaign-<cid>.html (index.html is refreshed too)

Pages: `index.html` (every test in history order, every campaign, linked) and
`campaign-<id>.html` (one campaign's range, posterior and spending). Each
file is written atomically. A campaign page is (re)written when asked for,
when it is missing, or when the campaign is still open; finished campaigns
do not change, so their pages are not redrawn every night.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from flakebot.report.html import atomic_write, report_page

INDEX = "index.html"


def campaign_file(campaign_id: int) -> str:
    return f"campaign-{int(campaign_id)}.html"


@dataclass(frozen=True)
class ReportLocation:
    path: Path
    url: Optional[str]

    def __str__(self) -> str:
        return self.url or str(self.path)


def page_url(base_url: Optional[str], name: str) -> Optional[str]:
    """`base_url` joined with a page name, or None without a base URL.

        >>> page_url("https://ci.example.org/flakebot/", "index.html")
        'https://ci.example.org/flakebot/index.html'
        >>> page_url(None, "index.html") is None
        True
    """
    if not base_url:
        return None
    return base_url.rstrip("/") + "/" + name


def write_reports(store, folder, base_url: Optional[str] = None, *, campaign_id: Optional[int] = None,
                  now: Optional[str] = None) -> ReportLocation:
    """Write index.html and the campaign pages into `folder`; return where the
    page of interest is: the campaign's page when `campaign_id` is given, else
    the index (with its URL when `base_url` is configured)."""
    folder = Path(folder)
    now = now or datetime.now(timezone.utc).isoformat(timespec="seconds")
    href = campaign_file
    for row in store.campaigns():
        cid = row["id"]
        target = folder / campaign_file(cid)
        if cid == campaign_id or row["status"] == "open" or not target.exists():
            atomic_write(target, report_page(store, campaign_id=cid, now=now, campaign_href=href))
    index = folder / INDEX
    atomic_write(index, report_page(store, now=now, campaign_href=href))
    name = campaign_file(campaign_id) if campaign_id is not None else INDEX
    return ReportLocation(folder / name, page_url(base_url, name))
