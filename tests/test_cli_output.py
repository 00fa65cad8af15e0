"""What people see: every command's output at 80, 100 and 120 columns shows every
number of its data, and no line is wider than the terminal; every kind of bad input
is one line on stderr, exit 2, and creates nothing."""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

import flakebot.cli.app as cli
from flakebot.cli.review import print_verify_result
from flakebot.demo.repo import build_demo_repo
from flakebot.model import OUTCOME_ORDER
from flakebot.report.data import collect
from flakebot.report.terminal import print_report
from flakebot.store import Store

TEST = "vfio_user_nvme_restart_vm"
WIDTHS = (80, 100, 120)
NUM = re.compile(r"\d+(?:\.\d+)?")


def invoke(*args, env=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False, env=env)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("FLAKEBOT_CONFIG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A demo repo and a database with a run, a finished bisection and a verify."""
    base = tmp_path_factory.mktemp("lab")
    demo = build_demo_repo(base / "spdk", n_commits=40, seed=2)
    db = base / "f.db"
    common = ["--repo", demo.path, "--db", db, "--json"]
    run = json.loads(invoke("run", "--commit", demo.tip, "--test", TEST, "--iterations", 12, *common).output)
    r = invoke("bisect", "--good", demo.good, "--bad", demo.tip, "--test", TEST, "--seed", 1, *common)
    bisect = json.loads(r.output)
    r = invoke("verify", "--patch", demo.tip, "--test", TEST, "--iterations", 8, *common)
    verify = json.loads(r.output)
    return type("Lab", (), dict(demo=demo, db=db, run=run, bisect=bisect, verify=verify))


def printed(fn, width: int, monkeypatch) -> str:
    """What `fn` prints through the CLI's consoles at `width` columns."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, soft_wrap=True)
    monkeypatch.setattr(cli, "out", console)
    fn()
    return buf.getvalue()


def table_line(text: str, key: str) -> str:
    """The one table row whose first cell is `key`."""
    (line,) = [ln for ln in text.splitlines() if ln.split()[:1] == [key]]
    return line


def numbers_after(line: str, key: str) -> list[str]:
    return NUM.findall(line.split(key, 1)[1])


def contains_run(seq: list[str], part: list[str]) -> bool:
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def fit(text: str, width: int) -> None:
    wide = [ln for ln in text.splitlines() if len(ln.rstrip()) > width]
    assert not wide, wide


def w1(v) -> str:
    return "-" if v is None else f"{v:.1f}"


@pytest.mark.parametrize("width", WIDTHS)
def test_run_table(lab, width, monkeypatch):
    text = printed(lambda: cli.print_run_table(lab.run), width, monkeypatch)
    fit(text, width)
    (pt,) = lab.run["tests"]
    assert numbers_after(table_line(text, TEST), TEST) == [str(pt["runs"])] + [
        str(pt["outcomes"].get(o, 0)) for o in OUTCOME_ORDER]
    for ws in pt["waits"]:
        got = numbers_after(table_line(text, ws["call_site"]), ws["call_site"])
        assert got == [str(ws["n"]), w1(ws["p50"]), w1(ws["p95"]), w1(ws["max"]), str(ws["limit_s"]),
                       str(ws["timeouts"])]


@pytest.mark.parametrize("width", WIDTHS)
def test_bisect_result(lab, width, monkeypatch):
    r = lab.bisect
    text = printed(lambda: cli.print_bisect_result(r), width, monkeypatch)
    fit(text, width)
    assert r["culprit"][:10] in text and f"{r['confidence']:.3f}" in text
    rates = text[text.index("failure rates"):text.index("vm_shutdown_all waits")]
    # one row per class and side, in the order timeouts, near misses, other failures
    rows = [ln.split() for ln in rates.splitlines() if ln.split()[-5:-4] in (["before"], ["after"])]
    want = [(side, r["rates"][side][k]) for k in ("timeout", "near_miss", "fail") for side in ("before", "after")]
    assert len(rows) == len(want)
    for row, (side, x) in zip(rows, want):
        assert row[-5:] == [side, f"{x['k']}/{x['n']}", f"{x['rate']:.3f}", f"[{x['lo']:.3f},", f"{x['hi']:.3f}]"]
    assert f"{r['runs']} runs ({r['infra_runs']} infra), {r['builds']} builds" in " ".join(text.split())
    for ws in r["waits"]:
        line = [ln for ln in text.splitlines() if ws["side"] in ln and ws["call_site"] in ln]
        assert len(line) == 1
        assert numbers_after(line[0], ws["call_site"]) == [str(ws["n"]), w1(ws["p50"]), w1(ws["p95"]),
                                                          w1(ws["max"]), str(ws["limit_s"])]


@pytest.mark.parametrize("width", WIDTHS)
def test_verify_result(lab, width, capsys):
    r = lab.verify
    print_verify_result(r)
    text = capsys.readouterr().out
    for side in ("parent", "patch"):
        for k in ("timeout", "near_miss", "fail", "failure"):
            x = r[f"{side}_rates"][k]
            assert f"{x['k']}/{x['n']}, est. {x['rate']:.3f}" in text
    assert f"{r['runs']} runs" in text


@pytest.mark.parametrize("width", WIDTHS)
def test_report(lab, width):
    with Store(lab.db) as store:
        for data in (collect(store), collect(store, campaign_id=lab.bisect["campaign_id"])):
            console = Console(file=io.StringIO(), width=width, color_system=None)
            print_report(data, console)
            text = console.file.getvalue()
            fit(text, width)
            for td in data.tests:
                table = text[text.index(f"{td.test}: runs by commit"):]
                for c in td.commits:
                    line = next(ln for ln in table.splitlines() if c.short in ln.split()[:3])
                    got = numbers_after(line, c.short)
                    want = [str(c.runs)] + [str(c.outcomes[o]) for o in OUTCOME_ORDER] + [
                        w1(c.waits[k]) for k in ("p50", "p95", "max")]
                    assert contains_run(got, want), (c.short, got, want)
                for h in td.hosts:
                    block = text[text.index(h.host):]
                    for rate in (h.timeout_rate, h.fail_rate, h.near_miss_rate, h.infra_rate):
                        assert f"{rate.k}/{rate.n}" in block.splitlines()[0]
            table = text[text.rindex("\ncampaigns"):]
            for s in data.campaigns:
                (line,) = [ln for ln in table.splitlines() if f"{s.good[:10]}.." in ln]
                got = numbers_after(line, f"{s.good[:10]}")
                assert contains_run(got, [f"{s.confidence:.3f}", str(s.runs), str(s.builds),
                                          f"{s.host_minutes / 60:.1f}"]), got
            if data.campaign is not None:
                for i, p in data.campaign.top:
                    assert f"{p:.4f}" in table_line(text, str(i))


@pytest.mark.parametrize("width", WIDTHS)
def test_status(lab, width):
    r = invoke("status", "--db", lab.db, env={"COLUMNS": str(width)})
    assert r.exit_code == 0, r.output
    fit(r.output, width)
    b = lab.bisect
    assert f"{b['campaign_id']} bisect {TEST}" in r.output and b["culprit"][:10] in r.output
    assert f"(confidence {b['confidence']:.3f})" in r.output


@pytest.mark.parametrize("width", WIDTHS)
def test_report_command_honours_columns(lab, width):
    r = invoke("report", "--db", lab.db, env={"COLUMNS": str(width)})
    assert r.exit_code == 0, r.output
    fit(r.output, width)
    assert max(len(ln) for ln in r.output.splitlines()) > width - 10  # it used the room it had


# ------------------------------------------------------------------ bad input


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


BAD = [
    ["run", "--commit", "x", "--iterations", "0"],
    ["run", "--commit", "x", "--iterations", "-1"],
    ["run", "--commit", "x", "--bogus"],
    ["status", "--db", "{tmp}"],  # a directory
    ["status", "--db", "{tmp}/typo/x.db"],
    ["report", "--db", "{tmp}/typo/x.db"],
    ["report", "--db", "{db}", "--html", "/proc/r.html"],
    ["report", "--db", "{db}", "--html", "{tmp}/nonexistent/dir/r.html"],
    ["bisect", "--confidence", "2", "--good", "a", "--bad", "b", "--test", TEST, "--db", "{tmp}/n.db"],
    ["bisect", "--resume", "1", "--db", "{tmp}/typo/x.db"],
    ["bisect", "--abort", "1", "--db", "{tmp}/typo/x.db"],
    ["bisect", "--max-runs", "-3", "--good", "a", "--bad", "b", "--test", TEST],
    ["import-log", "--commit", "a" * 40, "{tmp}/missing.log", "--db", "{tmp}/n.db"],
    ["verify", "--iterations", "0", "--patch", "x"],
    ["nosuchcommand"],
    ["demo", "--seed", "-1"],
    ["status", "--config", "{tmp}/missing.toml"],
]


@pytest.mark.parametrize("argv", BAD, ids=lambda a: " ".join(a)[:60])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(argv, tmp_path, lab):
    work = tmp_path / "w"
    work.mkdir()
    db = work / "copy.db"
    db.write_bytes(Path(lab.db).read_bytes())
    before = listing(work)
    args = [a.format(tmp=work, db=db) for a in argv]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == ""
    assert r.stderr.startswith("flakebot: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert listing(work) == before


def test_config_after_the_subcommand(tmp_path, lab):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\ndb = "{lab.db}"\n')
    for argv in (["--config", cfg, "status"], ["status", "--config", cfg]):
        r = invoke(*argv)
        assert r.exit_code == 0 and str(lab.db) in r.output, r.output


def test_help_shows_defaults():
    r = invoke("run", "--help")
    assert "[default: 10;" in r.output
    r = invoke("bisect", "--help")
    assert "Required unless --resume" in " ".join(r.output.split())
    assert os.linesep.join(invoke("demo", "--help").output.splitlines()).count("--json") == 1
