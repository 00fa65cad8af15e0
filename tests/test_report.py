"""Reports: aggregation tables of cases against real SQLite stores, the HTML
page's self-containedness, the terminal tables, and the `report` command's
one-line errors. (The page in a real browser: test_report_browser.py.)"""
from __future__ import annotations

import itertools
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from flakebot.analysis.classes import to_groups
from flakebot.analysis.posterior import posterior
from flakebot.campaigns.bisect import BisectCampaign, BisectParams
from flakebot.cli.report import report
from flakebot.model import Commit, Outcome, Run, RunRequest, Shutdown
from flakebot.report import report_page, write_report, write_reports
from flakebot.report.data import ReportError, collect, make_bins, stratified_pvalue
from flakebot.report.terminal import print_report
from flakebot.store import Store

TEST = "vfio_user_nvme_restart_vm"
SITE_A, SITE_B = "vfio_user_restart_vm.sh@36", "vfio_user_restart_vm.sh@54"
_ids = itertools.count(1)


def sha(n: int) -> str:
    return f"{n:02x}" * 20


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "flakebot.db")
    yield s
    s.close()


def run(outcome: str, *waits, test=TEST, iteration=1) -> Run:
    """A run whose shutdowns waited `waits` seconds (first at SITE_A, second at SITE_B);
    None = no measured wait."""
    sites = [SITE_A, SITE_B, "x.sh@9"]
    sds = [Shutdown(sites[i], w, 90, w is not None and w >= 90) for i, w in enumerate(waits)]
    return Run(test, iteration, Outcome(outcome), shutdowns=sds)


def add(store, commit: str, runs, host="h1", url=None, campaign_id=None, test=TEST) -> int:
    runs = [Run(r.test, i + 1, r.outcome, shutdowns=r.shutdowns) for i, r in enumerate(runs)]
    bid = store.record_submission(RunRequest(f"r{next(_ids)}", commit, (test,), len(runs)), "sim", campaign_id)
    store.update_build(bid, url=url, host=host, finished=True)
    store.ingest_runs(bid, commit, runs, host=host)
    return bid


# ------------------------------------------------------------ aggregation


CASES = [
    # runs at one commit -> outcomes, evidence, timeouts, near misses, p50/max of each run's worst wait
    ([run("pass", 4.0, 5.0), run("pass", 6.0, 3.0)],
     {"pass": 2}, 2, 0, 0, 5.5, 6.0),
    ([run("pass", 4.0, 5.0), run("slow", 4.0, 83.0), run("timeout", 5.0, 91.5)],
     {"pass": 1, "slow": 1, "timeout": 1}, 3, 1, 1, 83.0, 91.5),
    # infra never counts as evidence, but its measured waits are still waits
    ([run("infra", 4.0), run("pass", 3.0, 3.0)],
     {"pass": 1, "infra": 1}, 1, 0, 0, 3.5, 4.0),
    # a fail is evidence but neither a timeout nor a near miss
    ([run("fail", None), run("slow", 61.0, 2.0)],
     {"fail": 1, "slow": 1}, 2, 0, 1, 61.0, 61.0),
]


@pytest.mark.parametrize("runs, outcomes, evidence, timeouts, near, p50, mx", CASES)
def test_commit_stats(store, runs, outcomes, evidence, timeouts, near, p50, mx):
    add(store, sha(1), runs)
    (td,) = collect(store).tests
    (c,) = td.commits
    assert {k: v for k, v in c.outcomes.items() if v} == outcomes
    assert (c.runs, c.evidence, c.timeouts, c.near_misses) == (len(runs), evidence, timeouts, near)
    assert (c.waits["p50"], c.waits["max"]) == (p50, mx)
    assert c.timeout_rate.k == timeouts and c.timeout_rate.n == evidence
    assert c.near_miss_rate.k == near and c.near_miss_rate.n == evidence
    # Jeffreys prior: mean (k + 1/2) / (n + 1), inside its interval
    assert c.timeout_rate.mean == pytest.approx((timeouts + 0.5) / (evidence + 1))
    assert c.timeout_rate.lo <= c.timeout_rate.mean <= c.timeout_rate.hi


def test_every_wait_is_a_point_with_its_call_site(store):
    add(store, sha(1), [run("pass", 4.0, 5.0), run("timeout", 5.0, 91.5), run("infra", None)])
    (td,) = collect(store).tests
    pts = sorted((p.call_site, p.waited_s, p.timed_out) for p in td.points)
    assert pts == [(SITE_A, 4.0, False), (SITE_A, 5.0, False), (SITE_B, 5.0, False), (SITE_B, 91.5, True)]
    assert td.unmeasured == 1 and td.limit_s == 90 and td.slow_threshold_s == 60.0


def test_history_order_is_commit_date_in_utc_then_first_run(store):
    # sha(1) is later as text but earlier in UTC; sha(3) is not in the store: its first run decides.
    store.upsert_commits([Commit(sha(1), "one", date="2024-05-02T01:00:00+05:00"),
                          Commit(sha(2), "two", date="2024-05-01T21:00:00+00:00")])
    for n in (3, 2, 1):
        add(store, sha(n), [run("pass", 3.0)])
    (td,) = collect(store).tests
    assert [c.sha for c in td.commits] == [sha(1), sha(2), sha(3)]
    assert [c.index for c in td.commits] == [0, 1, 2]
    assert [c.subject for c in td.commits] == ["one", "two", ""]


def test_tests_are_separate_and_filtered(store):
    add(store, sha(1), [run("pass", 3.0)])
    add(store, sha(1), [run("timeout", 91.0, test="vfio_user_virtio_blk_restart_vm")],
        test="vfio_user_virtio_blk_restart_vm")
    assert [t.test for t in collect(store).tests] == ["vfio_user_nvme_restart_vm", "vfio_user_virtio_blk_restart_vm"]
    (td,) = collect(store, test="vfio_user_virtio_blk_restart_vm").tests
    assert td.commits[0].timeouts == 1
    assert collect(store, test="vfio_user_virtio_scsi_restart_vm").tests == []  # known, never run
    with pytest.raises(ReportError, match="unknown test"):
        collect(store, test="nope")


def test_since_filters_runs_and_campaigns(store):
    add(store, sha(1), [run("pass", 3.0)])
    assert len(collect(store, since="2000-01-01").tests) == 1
    assert collect(store, since="2999-01-01").tests == []
    with pytest.raises(ReportError, match="--since"):
        collect(store, since="last week")


def test_build_links(store):
    add(store, sha(1), [run("pass", 3.0)], host="jenkins-7", url="https://ci.example.org/job/x/12/")
    add(store, sha(1), [run("pass", 3.0)], host="sim-host-1", url="sim://sim-host-1/r9")
    (c,) = collect(store).tests[0].commits
    assert [(b.host, b.url, b.linkable) for b in c.builds] == [
        ("jenkins-7", "https://ci.example.org/job/x/12/", True), ("sim-host-1", "sim://sim-host-1/r9", False)]


# ------------------------------------------------------------ hosts


@pytest.mark.parametrize("strata, observed, expected, significant", [
    ([(20, 10, 10)], 5, 5.0, False),           # exactly as expected
    ([(20, 10, 10)], 10, 5.0, True),           # every event on this host
    ([(20, 10, 10)], 0, 5.0, True),            # none on this host
    ([(10, 2, 5), (10, 2, 5)], 2, 2.0, False),
    ([(10, 0, 5)], 0, 0.0, False),             # nothing happened anywhere
    ([(10, 10, 5)], 5, 5.0, False),            # everything failed everywhere
])
def test_stratified_pvalue(strata, observed, expected, significant):
    e, p = stratified_pvalue(strata, observed)
    assert e == pytest.approx(expected)
    assert 0.0 <= p <= 1.0
    assert (p < 0.01) == significant


def test_host_far_from_the_rest_is_flagged_and_commit_mix_is_not_blamed(store):
    bad, good = sha(1), sha(2)
    for n in (1, 2):
        store.upsert_commits([Commit(sha(n), date=f"2024-05-0{n}T00:00:00+00:00")])
    # At the good commit: three hosts all pass, h-flaky fails 12 of 15.
    for h in ("h1", "h2", "h3"):
        add(store, good, [run("pass", 3.0)] * 15, host=h)
    add(store, good, [run("timeout", 91.0)] * 12 + [run("pass", 3.0)] * 3, host="h-flaky")
    # h-busy only ran the bad commit (where everything fails): nobody to compare with there...
    add(store, bad, [run("timeout", 91.0)] * 10, host="h-busy")
    (td,) = collect(store).tests
    hosts = {h.host: h for h in td.hosts}
    assert hosts["h-flaky"].flagged and "more failures" in hosts["h-flaky"].flags[0]
    assert hosts["h-flaky"].failure_rate.k == 12
    assert not hosts["h1"].flagged and not hosts["h2"].flagged
    # ... so its 100% failure rate is not held against it.
    assert hosts["h-busy"].comparable == 0 and not hosts["h-busy"].flagged
    assert hosts["h-busy"].failure_rate.k == 10


def test_host_with_many_infra_runs_is_flagged(store):
    for h in ("h1", "h2", "h3"):
        add(store, sha(1), [run("pass", 3.0)] * 12, host=h)
    add(store, sha(1), [run("infra", None)] * 10 + [run("pass", 3.0)] * 2, host="h4")
    hosts = {h.host: h for h in collect(store).tests[0].hosts}
    assert any("infra" in f for f in hosts["h4"].flags)
    assert hosts["h4"].infra_rate.k == 10 and hosts["h4"].evidence == 2


# ------------------------------------------------------------ campaigns


@pytest.fixture
def campaign(store):
    """A finished bisection over sha(0)..sha(7); the culprit is sha(4)."""
    shas = [sha(n) for n in range(8)]
    store.upsert_commits([Commit(s, f"subject {i}", date=f"2024-05-0{i + 1}T00:00:00+00:00")
                          for i, s in enumerate(shas)])
    params = BisectParams(seed=3)
    cid = store.create_campaign("bisect", TEST, shas[0], shas[-1], shas, params.to_json())
    for i in (0, 2, 3, 4, 5, 7):
        bad = i >= 4
        runs = ([run("timeout", 4.0, 91.5)] * 3 + [run("slow", 4.0, 84.0)] * 3) if bad else [run("pass", 4.0, 5.0)] * 6
        add(store, shas[i], runs, host=f"h{i % 2}", url=f"https://ci.example.org/job/t/{i}/", campaign_id=cid)
    store.finish_campaign(cid, "culprit", shas[4], 0.99, {"culprit_info": {"subject": "subject 4"},
                                                         "command": "flakebot bisect --good x --bad y"})
    return cid, shas


def test_campaign_range_order_and_posterior_from_the_store(store, campaign):
    cid, shas = campaign
    add(store, sha(9), [run("pass", 3.0)])  # outside the range: not in the campaign report
    data = collect(store, campaign_id=cid)
    (td,) = data.tests
    assert [c.sha for c in td.commits] == [shas[i] for i in (0, 2, 3, 4, 5, 7)]
    assert [c.position for c in td.commits] == [0, 2, 3, 4, 5, 7]
    assert td.culprits == [(shas[4], cid)]
    cd = data.campaign
    assert cd.summary.verdict == "culprit" and cd.summary.culprit == shas[4]
    assert cd.summary.runs == 36 and cd.summary.builds == 6 and cd.summary.range_size == 8
    assert cd.posterior[0] == 0.0
    assert cd.posterior.sum() + cd.p_no_change == pytest.approx(1.0)
    assert cd.top[0][0] == 4
    # Exactly the engine's posterior over the campaign's own counts and prior.
    camp = BisectCampaign(store, None, cid)
    st = camp.settings()
    expected = posterior(to_groups(camp.counts(), st.bins), st.prior, None, groups=True)
    np.testing.assert_allclose(cd.posterior, expected.culprit)
    assert [sum(r.values()) for r in cd.runs_at] == [6, 0, 6, 6, 6, 6, 0, 6]
    assert cd.builds_at == [1, 0, 1, 1, 1, 1, 0, 1]


def test_campaign_errors(store, campaign):
    cid, _ = campaign
    with pytest.raises(ReportError, match="no campaign 99"):
        collect(store, campaign_id=99)
    with pytest.raises(ReportError, match="is about"):
        collect(store, campaign_id=cid, test="vfio_user_virtio_blk_restart_vm")


def test_bins_always_contain_the_slow_threshold():
    assert make_bins(90, 60).edges == (20.0, 60.0, 80.0)
    assert make_bins(90, 70).edges == (20.0, 60.0, 70.0, 80.0)
    assert make_bins(50, 30).edges == (20.0, 30.0)


# ------------------------------------------------------------ HTML


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self.texts: list[str] = []
        self._in_text = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_text = tag == "text"
        for k, v in attrs:
            if k in ("src", "href", "xlink:href", "srcset", "data", "action", "poster") and v is not None:
                self.refs.append((tag, k, v))

    def handle_endtag(self, tag):
        if tag == "text":
            self._in_text = False

    def handle_data(self, data):
        if self._in_text:
            self.texts.append(data.strip())


def parse(page: str) -> _Refs:
    p = _Refs()
    p.feed(page)
    return p


def test_page_is_self_contained(store, campaign):
    cid, _ = campaign
    add(store, sha(1), [run("pass", 3.0)], url="http://jenkins.local/job/y/3/")
    for page in (report_page(store, now="2026-01-01T00:00:00+00:00"),
                 report_page(store, campaign_id=cid, now="2026-01-01T00:00:00+00:00")):
        p = parse(page)
        external = [(t, k, v) for t, k, v in p.refs if re.match(r"(?i)\s*(https?:)?//", v)]
        builds = {f"https://ci.example.org/job/t/{i}/" for i in range(8)} | {"http://jenkins.local/job/y/3/"}
        assert external and all(t == "a" and k == "href" and v in builds for t, k, v in external), external
        assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags and "img" not in p.tags
        assert "@import" not in page and not re.search(r"url\(\s*['\"]?(https?:)?//", page)
        # Internal references stay internal: in-page ids or sibling pages.
        for t, k, v in p.refs:
            assert v.startswith(("#", "http://", "https://")) or re.fullmatch(r"campaign-\d+\.html", v), v


def test_page_charts_are_svg_with_text_labels(store, campaign):
    cid, _ = campaign
    page = report_page(store, campaign_id=cid)
    p = parse(page)
    assert page.count("<svg") == 3  # waits, campaign (posterior + runs), rates
    assert {"limit 90 s", "slow 60 s"} <= set(p.texts)
    assert "vm_shutdown_all wait (s)" in p.texts
    assert "P(culprit = commit)" in p.texts and "runs (this campaign)" in p.texts
    assert any(t.startswith("culprit " + sha(4)[:10]) for t in p.texts)
    assert SITE_A in p.texts and SITE_B in p.texts  # legend: coloured by call site
    # Each chart's ids are its own, and every reference resolves inside the page.
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    for ref in re.findall(r'href="#([^"]+)"', page) + re.findall(r"url\(#([^)]+)\)", page):
        assert ref in ids


def test_page_links_campaign_pages_and_build_urls(store, campaign):
    cid, shas = campaign
    page = report_page(store, campaign_href=lambda i: f"campaign-{i}.html")
    assert f'href="campaign-{cid}.html"' in page
    assert 'href="https://ci.example.org/job/t/4/"' in page
    assert "sim://" not in page or 'href="sim://' not in page
    assert "(culprit)" in page and "subject 4" in page


def test_empty_store_page(store):
    page = report_page(store)
    assert "No runs recorded" in page and "No campaigns" in page


def test_write_report_and_write_reports(store, campaign, tmp_path):
    cid, _ = campaign
    out = write_report(store, tmp_path / "one.html", campaign_id=cid)
    assert out.read_text().startswith("<!DOCTYPE html>")
    folder = tmp_path / "reports"
    loc = write_reports(store, folder)
    assert loc.path == folder / "index.html" and loc.url is None
    assert sorted(p.name for p in folder.iterdir()) == ["campaign-1.html", "index.html"]
    loc = write_reports(store, folder, base_url="https://ci.example.org/flakebot/", campaign_id=cid)
    assert loc.path == folder / f"campaign-{cid}.html"
    assert loc.url == f"https://ci.example.org/flakebot/campaign-{cid}.html"
    # A finished campaign's page is not redrawn unless asked for.
    page = folder / f"campaign-{cid}.html"
    page.write_text("kept")
    write_reports(store, folder)
    assert page.read_text() == "kept"
    write_reports(store, folder, campaign_id=cid)
    assert page.read_text() != "kept"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left


# ------------------------------------------------------------ terminal


def terminal(data) -> str:
    console = Console(record=True, width=220, color_system=None)
    print_report(data, console)
    return " ".join(console.export_text().split())  # titles wrap at the table's width


def test_terminal_output(store, campaign):
    cid, shas = campaign
    text = terminal(collect(store))
    assert "runs by commit (history order)" in text
    assert "worst vm_shutdown_all wait per run (s) against the 90 s limit" in text
    assert f"{shas[4][:10]} ◀" in text and "◀ culprit" in text  # the mark and its caption
    positions = [text.index(s[:10]) for s in (shas[0], shas[2], shas[3], shas[4], shas[5], shas[7])]
    assert positions == sorted(positions)
    assert "91.5" in text and "87.8" in text  # max, and the median of 84.0 and 91.5 waits
    assert "campaigns" in text and "culprit" in text and "0.990" in text
    assert "hosts" in text


def test_terminal_campaign(store, campaign):
    cid, shas = campaign
    text = terminal(collect(store, campaign_id=cid))
    assert f"campaign {cid}: bisect of {TEST}" in text
    assert "posterior (recomputed from the stored counts)" in text
    assert "no change" in text and "range order" in text


# ------------------------------------------------------------ command


def invoke(*args):
    return CliRunner().invoke(report, [str(a) for a in args], obj={})


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("FLAKEBOT_CONFIG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--campaign", 99], "flakebot: error: no campaign 99 in "),
    (["--test", "nope"], "flakebot: error: unknown test 'nope'"),
    (["--since", "yesterday"], "flakebot: error: --since: expected a date"),
    (["--campaign", 1, "--test", "vfio_user_virtio_blk_restart_vm"], "flakebot: error: campaign 1 is about"),
])
def test_cli_errors_are_one_line_exit_2(store, campaign, args, message):
    r = invoke("--db", store.path, *args)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr


def test_cli_missing_database(tmp_path):
    r = invoke("--db", tmp_path / "none.db")
    assert r.exit_code == 2 and r.stderr.startswith("flakebot: error: no database at")
    assert not (tmp_path / "none.db").exists()  # a report never creates a database


def test_cli_bad_config(tmp_path):
    (tmp_path / "flakebot.toml").write_text("[bisect]\nconfidance = 1\n")
    r = invoke("--db", tmp_path / "x.db")
    assert r.exit_code == 2 and r.stderr.startswith("flakebot: error: config: unknown key")


def test_cli_tables_and_html(store, campaign, tmp_path):
    cid, shas = campaign
    r = invoke("--db", store.path)
    assert r.exit_code == 0, r.output
    assert f"{shas[4][:10]} ◀" in r.stdout and "◀ culprit" in r.stdout and "campaigns" in r.stdout
    r = invoke("--db", store.path, "--campaign", cid, "--html", tmp_path / "c.html")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str((tmp_path / "c.html").resolve())
    assert "limit 90 s" in (tmp_path / "c.html").read_text()


def test_demo_posterior_is_reproduced_from_the_store(tmp_path):
    """The report's posterior for a real campaign (the demo's) is the one its verdict came from."""
    import json

    from flakebot.cli.app import main

    r = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo"), "--iterations", "20", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)["bisect"]
    with Store(tmp_path / "demo" / "flakebot.db") as store:
        cd = collect(store, campaign_id=result["campaign_id"]).campaign
    top, p = cd.top[0]
    assert cd.shas[top] == result["candidates"][0]["commit"]
    assert p == pytest.approx(result["confidence"], abs=1e-6)
    assert cd.p_no_change == pytest.approx(result["p_no_change"], abs=1e-6)
