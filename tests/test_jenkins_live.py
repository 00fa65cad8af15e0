"""Against a real Jenkins, only when asked to (skipped otherwise):

    FLAKEBOT_TEST_JENKINS_URL=https://jenkins.example.org/
    FLAKEBOT_TEST_JENKINS_USER=flakebot
    FLAKEBOT_TEST_JENKINS_TOKEN=<API token>
    FLAKEBOT_TEST_JENKINS_JOB=flakebot-vfio-user-restart      (default)
    FLAKEBOT_TEST_JENKINS_LABEL=vfio-user                     (default)
    FLAKEBOT_TEST_JENKINS_SUBMIT=1        also run one build (iterations=1): takes a host
    FLAKEBOT_TEST_JENKINS_COMMIT=<sha or ref>                 (default master)
    FLAKEBOT_TEST_JENKINS_WAIT_MINUTES=180                    (default)
    FLAKEBOT_TEST_JENKINS_POLL_SECONDS=15                     (default)

    .venv/bin/pytest tests/test_jenkins_live.py -v
"""
from __future__ import annotations

import os
import time
import uuid

import pytest

from flakebot.executors.jenkins import DEFAULT_JOB, DEFAULT_LABEL, Handle, JenkinsExecutor
from flakebot.model import BuildState, RunRequest

ENV = os.environ
NEEDED = ("FLAKEBOT_TEST_JENKINS_URL", "FLAKEBOT_TEST_JENKINS_USER", "FLAKEBOT_TEST_JENKINS_TOKEN")

pytestmark = pytest.mark.skipif(
    not all(ENV.get(k) for k in NEEDED),
    reason="live Jenkins test: set " + ", ".join(NEEDED) + " (and FLAKEBOT_TEST_JENKINS_JOB)",
)


@pytest.fixture(scope="module")
def ex() -> JenkinsExecutor:
    return JenkinsExecutor(
        ENV.get("FLAKEBOT_TEST_JENKINS_URL", ""),
        ENV.get("FLAKEBOT_TEST_JENKINS_USER", ""),
        ENV.get("FLAKEBOT_TEST_JENKINS_TOKEN", ""),
        ENV.get("FLAKEBOT_TEST_JENKINS_JOB") or DEFAULT_JOB,
        ENV.get("FLAKEBOT_TEST_JENKINS_LABEL", DEFAULT_LABEL),
        timeout=30.0, retries=3, poll_seconds=float(ENV.get("FLAKEBOT_TEST_JENKINS_POLL_SECONDS", "15")),
    )


def test_server_version(ex):
    version = ex.version()
    assert version, "no X-Jenkins header: is this URL a Jenkins?"
    print(f"Jenkins {version} at {ex.safe_url}")


def test_node_capacity(ex):
    agents = ex.agents()
    print(f"online agents with label {ex.label!r}: {agents}; slots={ex.slots()}")
    assert ex.slots() == min(ex.max_parallel, len(agents))


def test_job_is_reachable_and_scannable(ex):
    # Reads the queue and the job's recent builds (Job/Read, Overall/Read).
    assert ex.find_by_run_id(f"flakebot-live-none-{uuid.uuid4().hex[:8]}") is None


@pytest.mark.skipif(ENV.get("FLAKEBOT_TEST_JENKINS_SUBMIT") != "1",
                    reason="set FLAKEBOT_TEST_JENKINS_SUBMIT=1 to run one real build")
def test_one_build(ex):
    from flakebot.evidence import spdklog

    run_id = f"flakebot-live-{uuid.uuid4().hex[:12]}"
    request = RunRequest(run_id, ENV.get("FLAKEBOT_TEST_JENKINS_COMMIT", "master"),
                         ("vfio_user_nvme_restart_vm",), 1)
    handle = ex.submit(request)
    assert Handle.decode(ex.find_by_run_id(run_id) or "", ex.job).run_id == run_id
    deadline = time.time() + 60 * float(ENV.get("FLAKEBOT_TEST_JENKINS_WAIT_MINUTES", "180"))
    try:
        while True:
            status = ex.poll(handle)
            handle = status.external_id or handle
            if status.state in (BuildState.DONE, BuildState.LOST):
                break
            assert time.time() < deadline, f"build still {status.state.value}: {status.url}"
            time.sleep(ex.poll_seconds)
    except BaseException:
        ex.cancel(handle)
        raise
    print(f"{status.state.value} {status.result} on {status.host}: {status.url}")
    assert status.host and status.url
    runs = list(spdklog.parse_lines(ex.console(handle)))
    print([(r.test, r.iteration, r.outcome.value, r.worst_wait_s) for r in runs])
    assert status.state is BuildState.LOST or runs or status.result == "FAILURE"
