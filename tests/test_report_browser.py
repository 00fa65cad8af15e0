"""The demo's HTML report in a real browser (headless Chromium).

Generates the report of `flakebot demo`, opens it with Chromium, takes a
screenshot, and checks that the charts rendered: SVG charts present with a
real size, the limit line labelled, text laid out with a font, no page
errors, and nothing fetched from anywhere (the page is self-contained).

Skipped only when no Chromium is installed; CI installs Debian's `chromium`
(.ci/run). To refresh the screenshot in the docs:

    FLAKEBOT_UPDATE_SCREENSHOT=1 .venv/bin/python -m pytest tests/test_report_browser.py
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flakebot.cli.app import main
from flakebot.report import write_reports
from flakebot.store import Store

DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "demo-report.png"
WINDOW = (1280, 2400)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (CI installs it: .ci/run)")


def chromium(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
           f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "LANG": "C.UTF-8"})


@pytest.fixture(scope="module")
def demo_reports(tmp_path_factory):
    """`flakebot demo` end to end, then the reports the demo writes."""
    work = tmp_path_factory.mktemp("demo")
    r = CliRunner().invoke(main, ["demo", "--workdir", str(work), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["found"], "the demo's bisection should name the culprit"
    with Store(work / "flakebot.db") as store:
        cid = store.campaigns()[0]["id"]
        loc = write_reports(store, work / "reports", campaign_id=cid)
    return work / "reports", loc.path, result


# A probe added to a copy of the page (the page itself has no scripts): it
# records errors and console errors from the start, and, at the end of the
# body, what the browser laid out and fetched, as attributes --dump-dom shows.
PROBE_HEAD = """<script>
window.__errors = [];
addEventListener('error', e => __errors.push('error: ' + (e.message || (e.target && (e.target.src || e.target.href)) || 'resource')), true);
addEventListener('unhandledrejection', e => __errors.push('unhandled: ' + e.reason));
const __ce = console.error; console.error = (...a) => { __errors.push('console.error: ' + a.join(' ')); __ce(...a); };
</script>"""
PROBE_TAIL = """<script>
const svgs = [...document.querySelectorAll('svg.chart')];
const texts = [...document.querySelectorAll('svg.chart text')];
document.body.setAttribute('data-probe', JSON.stringify({
  errors: __errors,
  resources: performance.getEntriesByType('resource').map(r => r.name),
  charts: svgs.map(s => { const b = s.getBoundingClientRect();
    return {name: s.dataset.chart, width: b.width, height: b.height,
            shapes: s.querySelectorAll('path, use, rect, line, polyline').length}; }),
  labels: texts.map(t => ({text: t.textContent.trim(), width: t.getComputedTextLength()})),
  scrollWidth: document.documentElement.scrollWidth,
  timeline: [...document.querySelectorAll('tr[class^="event-"]')].map(r => r.innerText),
}));
</script>"""


def probe(tmp_path: Path, page: Path) -> tuple[dict, str]:
    text = page.read_text(encoding="utf-8")
    probed = tmp_path / ("probed-" + page.name)
    probed.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1),
                      encoding="utf-8")
    r = chromium(tmp_path, "--dump-dom", "--virtual-time-budget=3000", probed.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'data-probe="([^"]*)"', r.stdout)
    assert m, "the probe did not run: " + r.stdout[:500]
    return json.loads(html.unescape(m.group(1))), r.stderr


def page_errors(stderr: str) -> list[str]:
    """Chromium's log lines about the page: uncaught errors, console errors, failed loads."""
    return [line for line in stderr.splitlines()
            if re.search(r"Uncaught|CONSOLE[(:]|console\.error|Failed to load resource|net::ERR_", line)]


@pytest.mark.parametrize("which", ["campaign", "index"])
def test_report_renders_in_chromium(demo_reports, tmp_path, which):
    folder, campaign_page, _ = demo_reports
    page = campaign_page if which == "campaign" else folder / "index.html"
    data, stderr = probe(tmp_path, page)
    assert data["errors"] == [] and page_errors(stderr) == []
    assert data["resources"] == []  # nothing fetched: no CDN, no fonts, no images
    names = {c["name"] for c in data["charts"]}
    expected = {"waits-vfio_user_nvme_restart_vm", "rates-vfio_user_nvme_restart_vm"}
    if which == "campaign":
        expected.add(f"campaign-{campaign_page.stem.split('-')[1]}")
    assert names == expected
    for c in data["charts"]:
        # Laid out at a readable size on a 1280 px screen, and not empty.
        assert 900 <= c["width"] <= 1280 and c["height"] >= 250, c
        assert c["shapes"] > 20, c
    labels = {t["text"]: t["width"] for t in data["labels"]}
    assert labels.get("limit 90 s", 0) > 20 and labels.get("slow 60 s", 0) > 20  # drawn with a real font
    assert labels.get("vm_shutdown_all wait (s)", 0) > 50
    assert any(t.startswith("culprit ") for t in labels)
    assert data["scrollWidth"] <= WINDOW[0]  # no sideways scrolling on a laptop screen


def test_index_shows_rise_culprit_and_fall_with_commits(demo_reports, tmp_path):
    folder, campaign_page, result = demo_reports
    data, _ = probe(tmp_path, folder / "index.html")
    rises = [r for r in data["timeline"] if "rise" in r]
    falls = [r for r in data["timeline"] if "appears fixed" in r]
    assert len(rises) == 1 and len(falls) == 1, data["timeline"]
    ev = {e["kind"]: e for e in result["events"]}
    for row, e in ((rises[0], ev["rise"]), (falls[0], ev["fall"])):
        assert e["before_sha"][:10] in row and e["after_sha"][:10] in row, row
    assert f"culprit {result['true_culprit'][:10]}" in rises[0]
    # The campaign chart labels commits by short sha (the culprit among them), not by position.
    data, _ = probe(tmp_path, campaign_page)
    labels = {t["text"] for t in data["labels"]}
    assert result["true_culprit"][:10] in labels and result["bisect"]["culprit"][:10] in labels


def test_screenshot(demo_reports, tmp_path):
    _, page, _ = demo_reports
    png = tmp_path / "report.png"
    r = chromium(tmp_path, f"--screenshot={png}", page.as_uri())
    assert r.returncode == 0 and png.is_file(), r.stderr[-2000:]
    assert page_errors(r.stderr) == []
    assert png.stat().st_size > 50_000
    import matplotlib.image

    img = matplotlib.image.imread(str(png))[..., :3]  # floats in [0, 1]
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    assert img.std() > 0.05  # not a blank page
    rgb = (img * 255).round().astype(int)
    colours = {tuple(c) for c in rgb[::7, ::7].reshape(-1, 3)}
    assert len(colours) > 100
    # The limit line's red and the near-miss band's amber are on screen.
    red = np.all(np.abs(rgb - (215, 48, 31)) < 30, axis=-1).sum()
    amber = np.all(np.abs(rgb - (230, 159, 0)) < 30, axis=-1).sum()
    assert red > 500 and amber > 500, (red, amber)
    if os.environ.get("FLAKEBOT_UPDATE_SCREENSHOT"):
        save_docs_screenshot(png, DOCS_SCREENSHOT)


def test_index_screenshot(demo_reports, tmp_path):
    """The index page (the timeline: the rise, the culprit, the fall) renders; its
    top is the docs' second screenshot."""
    folder, _, result = demo_reports
    png = tmp_path / "index.png"
    r = chromium(tmp_path, f"--screenshot={png}", (folder / "index.html").as_uri())
    assert r.returncode == 0 and png.is_file(), r.stderr[-2000:]
    assert page_errors(r.stderr) == []
    import matplotlib.image

    img = matplotlib.image.imread(str(png))[..., :3]
    assert img.shape[:2] == (WINDOW[1], WINDOW[0]) and img.std() > 0.05
    if os.environ.get("FLAKEBOT_UPDATE_SCREENSHOT"):
        save_docs_screenshot(png, DOCS_SCREENSHOT.with_name("demo-index.png"), height=900)


def save_docs_screenshot(png: Path, dest: Path, height: int = 1500) -> None:
    """The top of the page (verdict, waits, posterior), palette PNG: small enough to commit."""
    from PIL import Image

    im = Image.open(png).convert("RGB")
    im = im.crop((0, 0, im.width, min(height, im.height)))
    dest.parent.mkdir(parents=True, exist_ok=True)
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(dest, optimize=True)
