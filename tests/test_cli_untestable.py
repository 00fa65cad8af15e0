"""`flakebot bisect` over a history whose oldest commits have no restart test
(an era boundary): those commits are skipped, never evidence; the output,
`--json` and `flakebot report` list them with the host's reason."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from flakebot.cli.app import main
from flakebot.demo.hosts import NVME_SCRIPT
from tests.gitrepo import make_repo

TEST = "vfio_user_nvme_restart_vm"
HEALTHY = "vm_setup\nrpc_cmd nvmf_subsystem_remove_ns nqn 1\nrpc_cmd nvmf_subsystem_remove_listener nqn\n"
PRONE = "vm_setup\nrpc_cmd nvmf_subsystem_remove_listener nqn\nrpc_cmd nvmf_subsystem_remove_ns nqn 1\n"
FIRST_WITH_TEST = 10


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("FLAKEBOT_CONFIG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


def _repo(path, culprit, good_end_tested=False):
    """30 commits; the test exists from FIRST_WITH_TEST on (and, with
    good_end_tested, at commit 0 too: a stretch 1..9 without it)."""
    files = {FIRST_WITH_TEST: {NVME_SCRIPT: PRONE if culprit == FIRST_WITH_TEST else HEALTHY}}
    if good_end_tested:
        files.update({0: {NVME_SCRIPT: HEALTHY}, 1: {NVME_SCRIPT: None}})
    if culprit > FIRST_WITH_TEST:
        files[culprit] = {NVME_SCRIPT: PRONE}
    return make_repo(path, 30, files=files)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_culprit_after_the_era_boundary_is_found_and_the_old_commits_listed(tmp_path):
    shas = _repo(tmp_path / "r", 20)
    r = invoke("bisect", "--good", shas[0], "--bad", shas[-1], "--test", TEST, "--repo", tmp_path / "r",
               "--executor", "sim", "--db", tmp_path / "f.db", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert (out["verdict"], out["culprit"]) == ("culprit", shas[20])
    assert {u["commit"] for u in out["untestable"]} <= set(shas[1:FIRST_WITH_TEST])
    assert {u["reason"] for u in out["untestable"]} <= {f"no {NVME_SCRIPT} at this commit"}


def test_culprit_after_a_stretch_without_the_test_is_a_range_in_text_json_and_report(tmp_path):
    shas = _repo(tmp_path / "r", FIRST_WITH_TEST, good_end_tested=True)
    args = ("bisect", "--good", shas[0], "--bad", shas[-1], "--test", TEST, "--repo", tmp_path / "r",
            "--executor", "sim", "--db", tmp_path / "f.db")
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "culprit range" in r.output and f"{shas[FIRST_WITH_TEST][:10]}" in r.output
    assert "cannot be tested here (skipped)" in r.output and "at this commit" in r.output
    out = json.loads(invoke(*args, "--json").output)  # the finished campaign's stored answer
    assert out["verdict"] == "culprit-range" and out["culprit"] is None
    rg = out["culprit_range"]
    assert rg["last"] == shas[FIRST_WITH_TEST] and rg["probability"] >= 0.95
    assert shas.index(rg["first"]) >= 1 and rg["parent"] == shas[shas.index(rg["first"]) - 1]
    # No run at a commit without the test is ever a pass or a failure.
    assert not [c for c in out["commits"] if c["commit"] in shas[1:FIRST_WITH_TEST] and set(c["outcomes"]) - {"infra"}]
    rep = invoke("report", "--campaign", out["campaign_id"], "--db", tmp_path / "f.db")
    assert rep.exit_code == 0 and "untestable commits, skipped" in rep.output and "culprit range" in rep.output
    html = tmp_path / "r.html"
    assert invoke("report", "--campaign", out["campaign_id"], "--db", tmp_path / "f.db", "--html", html).exit_code == 0
    text = html.read_text()
    assert "Culprit range" in text and "cannot be tested here (skipped)" in text


def test_culprit_at_the_era_boundary_is_never_named(tmp_path):
    """The good end has no test either: nothing can tell "the first testable
    commit raised the rate" from "no change"; it says so and stops."""
    shas = _repo(tmp_path / "r", FIRST_WITH_TEST)
    r = invoke("bisect", "--good", shas[0], "--bad", shas[-1], "--test", TEST, "--repo", tmp_path / "r",
               "--executor", "sim", "--db", tmp_path / "f.db", "--json")
    out = json.loads(r.output)
    assert r.exit_code == 3 and out["verdict"] == "inconclusive" and out["culprit"] is None
    assert f"c{FIRST_WITH_TEST}" in out["reason"] and "cannot be tested here" in out["reason"]
    assert shas[0] in {u["commit"] for u in out["untestable"]}


def test_max_builds_must_not_be_negative(tmp_path):
    r = CliRunner().invoke(main, ["bisect", "--good", "a", "--bad", "b", "--test", TEST, "--max-builds", "-1",
                                  "--db", str(tmp_path / "f.db")])
    assert r.exit_code == 2 and "--max-builds must not be negative" in r.output
    assert not (tmp_path / "f.db").exists()
