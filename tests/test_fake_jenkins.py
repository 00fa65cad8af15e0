"""The fake Jenkins speaks the REST subset real Jenkins does (as python-jenkins
and plain HTTP clients see it)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jenkins
import pytest
import requests

from tests.fakes.jenkins import DEFAULT_JOB, FakeJenkins, sim_console_factory, split_tests

USER, TOKEN = "bot", "tok-123"
AUTH = (USER, TOKEN)
ROOT = Path(__file__).resolve().parents[1]


def direct_to_loopback(monkeypatch) -> None:
    """Talk to the fake on 127.0.0.1 directly, even where a proxy is configured."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    direct_to_loopback(monkeypatch)


@pytest.fixture
def fake():
    f = FakeJenkins(agents=2, user=USER, token=TOKEN, time_scale=0.002)
    with f:
        yield f


def crumb_headers(url: str) -> dict:
    c = requests.get(url + "crumbIssuer/api/json", auth=AUTH, timeout=5).json()
    assert set(c) >= {"crumb", "crumbRequestField"}
    return {c["crumbRequestField"]: c["crumb"]}


def trigger(url: str, **params) -> requests.Response:
    return requests.post(f"{url}job/{DEFAULT_JOB}/buildWithParameters", params=params, auth=AUTH,
                         headers=crumb_headers(url), timeout=5, allow_redirects=False)


def wait_item(url: str, qid: int, key: str, timeout: float = 5.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        item = requests.get(f"{url}queue/item/{qid}/api/json", auth=AUTH, timeout=5).json()
        if item.get(key):
            return item
        time.sleep(0.005)
    raise AssertionError(f"queue item {qid} has no {key}")


def wait_build_done(url: str, number: int, timeout: float = 5.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        b = requests.get(f"{url}job/{DEFAULT_JOB}/{number}/api/json", auth=AUTH, timeout=5).json()
        if not b["building"]:
            return b
        time.sleep(0.005)
    raise AssertionError("still building")


def test_listens_on_loopback_only(fake):
    assert fake.url.startswith("http://127.0.0.1:")
    assert fake._httpd.server_address[0] == "127.0.0.1"


def test_auth_required_and_version_header(fake):
    r = requests.get(fake.url + "api/json", timeout=5)
    assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]
    assert requests.get(fake.url + "api/json", auth=(USER, "nope"), timeout=5).status_code == 401
    r = requests.get(fake.url + "api/json", auth=AUTH, timeout=5)
    assert r.status_code == 200 and r.headers["X-Jenkins"]
    assert [j["name"] for j in r.json()["jobs"]] == [DEFAULT_JOB]


def test_post_needs_crumb(fake):
    r = requests.post(f"{fake.url}job/{DEFAULT_JOB}/buildWithParameters?FLAKEBOT_RUN_ID=x", auth=AUTH, timeout=5)
    assert r.status_code == 403 and "crumb" in r.text
    assert trigger(fake.url, FLAKEBOT_RUN_ID="x").status_code == 201


def test_build_with_parameters_queue_then_executable(fake):
    for a in fake.agents.values():
        a.online = False
    r = trigger(fake.url, SPDK_COMMIT="b" * 40, FLAKEBOT_TESTS="vfio_user_nvme_restart_vm",
                FLAKEBOT_ITERATIONS="1", FLAKEBOT_RUN_ID="q1", LABEL="vfio-user")
    assert r.status_code == 201
    loc = r.headers["Location"]
    assert loc.startswith(fake.url + "queue/item/") and loc.endswith("/")
    qid = int(loc.rstrip("/").rsplit("/", 1)[1])
    time.sleep(0.05)
    item = requests.get(loc + "api/json", auth=AUTH, timeout=5).json()
    assert item["why"] and item.get("executable") is None and item["task"]["name"] == DEFAULT_JOB
    q = requests.get(fake.url + "queue/api/json", auth=AUTH, timeout=5).json()["items"]
    assert [i["id"] for i in q] == [qid] and "FLAKEBOT_RUN_ID=q1" in q[0]["params"]
    fake.set_online("agent-1", True)
    item = wait_item(fake.url, qid, "executable")
    assert item["why"] is None and item["cancelled"] is False
    assert item["executable"]["url"] == f"{fake.url}job/{DEFAULT_JOB}/{item['executable']['number']}/"
    b = wait_build_done(fake.url, item["executable"]["number"])
    assert b["result"] in ("SUCCESS", "UNSTABLE") and b["builtOn"] == "agent-1"
    assert b["duration"] > 0 and b["queueId"] == qid
    assert {"name": "FLAKEBOT_RUN_ID", "value": "q1"} in [
        {k: p[k] for k in ("name", "value")} for p in b["actions"][0]["parameters"]]


def test_identical_queued_requests_are_merged(fake):
    for a in fake.agents.values():
        a.online = False
    a = trigger(fake.url, FLAKEBOT_RUN_ID="same", SPDK_COMMIT="c" * 40)
    b = trigger(fake.url, FLAKEBOT_RUN_ID="same", SPDK_COMMIT="c" * 40)
    c = trigger(fake.url, FLAKEBOT_RUN_ID="other", SPDK_COMMIT="c" * 40)
    assert a.headers["Location"] == b.headers["Location"] != c.headers["Location"]


def test_progressive_text_headers_while_building(fake):
    fake.time_scale = 0.05
    r = trigger(fake.url, FLAKEBOT_RUN_ID="p", FLAKEBOT_ITERATIONS="2")
    qid = int(r.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    n = wait_item(fake.url, qid, "executable")["executable"]["number"]
    u = f"{fake.url}job/{DEFAULT_JOB}/{n}/logText/progressiveText"
    first = requests.get(u + "?start=0", auth=AUTH, timeout=5)
    assert first.headers["X-More-Data"] == "true"
    size = int(first.headers["X-Text-Size"])
    assert size == len(first.content)
    rest = requests.get(f"{u}?start={size}", auth=AUTH, timeout=5)
    assert int(rest.headers["X-Text-Size"]) >= size
    wait_build_done(fake.url, n, timeout=10)
    final = requests.get(f"{u}?start=0", auth=AUTH, timeout=5)
    assert "X-More-Data" not in final.headers
    assert final.content.startswith(first.content)
    assert final.text == requests.get(f"{fake.url}job/{DEFAULT_JOB}/{n}/consoleText", auth=AUTH, timeout=5).text
    assert final.text.rstrip("\n").splitlines()[-1].startswith("Finished: ")


def test_stop_answers_302_and_aborts(fake):
    fake.time_scale = 1.0
    r = trigger(fake.url, FLAKEBOT_RUN_ID="s")
    qid = int(r.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    n = wait_item(fake.url, qid, "executable")["executable"]["number"]
    s = requests.post(f"{fake.url}job/{DEFAULT_JOB}/{n}/stop", auth=AUTH, headers=crumb_headers(fake.url),
                      timeout=5, allow_redirects=False)
    assert s.status_code == 302 and s.headers["Location"].endswith(f"/{n}/")
    assert wait_build_done(fake.url, n)["result"] == "ABORTED"


def test_computers_with_labels_and_offline(fake):
    fake.set_online("agent-2", False)
    comps = requests.get(fake.url + "computer/api/json", auth=AUTH, timeout=5).json()["computer"]
    by = {c["displayName"]: c for c in comps}
    assert set(by) == {"Built-In Node", "agent-1", "agent-2"}
    assert {"name": "vfio-user"} in by["agent-1"]["assignedLabels"]
    assert by["agent-1"]["offline"] is False and by["agent-2"]["offline"] is True


def test_python_jenkins_against_the_fake(fake):
    pj = jenkins.Jenkins(fake.url, USER, TOKEN, timeout=5)
    assert pj.get_version() == "2.462.3"
    assert pj.get_whoami()["id"] == USER
    assert pj.get_job_info(DEFAULT_JOB)["name"] == DEFAULT_JOB
    assert {n["name"] for n in pj.get_nodes()} == {"Built-In Node", "agent-1", "agent-2"}
    assert all("assignedLabels" in n for n in pj.get_nodes_with_info())
    for a in fake.agents.values():
        a.online = False
    qid = pj.build_job(DEFAULT_JOB, {"FLAKEBOT_RUN_ID": "pj", "FLAKEBOT_ITERATIONS": "1"})
    assert [i["id"] for i in pj.get_queue_info()] == [qid]
    assert "why" in pj.get_queue_item(qid)
    pj.cancel_queue(qid)
    assert pj.get_queue_item(qid)["cancelled"] is True
    fake.set_online("agent-1", True)
    qid = pj.build_job(DEFAULT_JOB, {"FLAKEBOT_RUN_ID": "pj2", "FLAKEBOT_ITERATIONS": "1"})
    n = wait_item(fake.url, qid, "executable")["executable"]["number"]
    wait_build_done(fake.url, n)
    info = pj.get_build_info(DEFAULT_JOB, n)
    assert info["builtOn"] == "agent-1" and not info["building"]
    assert pj.get_build_console_output(DEFAULT_JOB, n).endswith(f"Finished: {info['result']}\n")
    pj.stop_build(DEFAULT_JOB, n)  # stopping a finished build is harmless (302 to the build page)


def test_queue_items_expire(fake):
    fake.queue_expiry_s = 0.05
    r = trigger(fake.url, FLAKEBOT_RUN_ID="exp")
    qid = int(r.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    wait_item(fake.url, qid, "executable")
    time.sleep(0.15)
    assert requests.get(f"{fake.url}queue/item/{qid}/api/json", auth=AUTH, timeout=5).status_code == 404


def test_faults(fake):
    fake.fail_5xx(2, status=503)
    assert [requests.get(fake.url + "api/json", auth=AUTH, timeout=5).status_code for _ in range(3)] == [503, 503, 200]
    fake.fail_auth(403, count=1)
    assert requests.get(fake.url + "api/json", auth=AUTH, timeout=5).status_code == 403
    assert requests.get(fake.url + "api/json", auth=AUTH, timeout=5).status_code == 200
    fake.slow(0.3)
    with pytest.raises(requests.Timeout):
        requests.get(fake.url + "api/json", auth=AUTH, timeout=0.1)


def test_label_expression_routes_builds(fake):
    fake.add_agent("fedora-1", ("vfio-user", "fedora"))
    r = trigger(fake.url, FLAKEBOT_RUN_ID="lab", LABEL="vfio-user && fedora")
    qid = int(r.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    n = wait_item(fake.url, qid, "executable")["executable"]["number"]
    assert wait_build_done(fake.url, n)["builtOn"] == "fedora-1"
    r = trigger(fake.url, FLAKEBOT_RUN_ID="nolab", LABEL="arm64")
    time.sleep(0.05)
    item = requests.get(r.headers["Location"] + "api/json", auth=AUTH, timeout=5).json()
    assert "no nodes with the label" in item["why"]


def test_sim_console_factory_uses_scenario():
    sim = pytest.importorskip("flakebot.demo.hosts")
    bad = sim.Behaviour(1.0, 0.0)
    scen = sim.Scenario.by_culprit(["a" * 40, "b" * 40], "b" * 40, sim.HEALTHY, bad)
    f = sim_console_factory(scen)
    good = list(f({"SPDK_COMMIT": "a" * 40, "FLAKEBOT_TESTS": "vfio_user_nvme_restart_vm",
                   "FLAKEBOT_ITERATIONS": "2", "FLAKEBOT_RUN_ID": "x"}))
    hung = list(f({"SPDK_COMMIT": "b" * 40, "FLAKEBOT_TESTS": "vfio_user_nvme_restart_vm",
                   "FLAKEBOT_ITERATIONS": "2", "FLAKEBOT_RUN_ID": "x"}))
    assert not any("Not all VMs were shut down" in x for x in good)
    assert any("Not all VMs were shut down" in x for x in hung)
    assert split_tests("a b,c") == ["a", "b", "c"]


def test_cli_starts_standalone():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "tests.fakes.jenkins", "--port", "0", "--agents", "3",
                          "--user", USER, "--token", TOKEN], stdout=subprocess.PIPE, text=True, env=env)
    try:
        first = p.stdout.readline()
        url = first.split()[3]
        assert url.startswith("http://127.0.0.1:")
        comps = requests.get(url + "computer/api/json", auth=AUTH, timeout=5).json()["computer"]
        assert len(comps) == 4
    finally:
        p.terminate()
        p.wait(timeout=5)
