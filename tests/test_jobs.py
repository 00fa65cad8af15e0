"""jobs/: the Jenkins Job Builder YAML renders to the job flakebot expects, and
the Jenkinsfile says the same."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "jobs" / "flakebot-jobs.yaml"
JENKINSFILE = ROOT / "jobs" / "Jenkinsfile"
JOB = "flakebot-vfio-user-restart"
PARAMS = ["SPDK_COMMIT", "FLAKEBOT_TESTS", "FLAKEBOT_ITERATIONS", "FLAKEBOT_RUN_ID", "LABEL"]


def _jenkins_jobs() -> list[str]:
    exe = Path(sys.executable).with_name("jenkins-jobs")
    if exe.exists():
        return [str(exe)]
    pytest.importorskip("jenkins_jobs")
    return [sys.executable, "-m", "jenkins_jobs.cli.entry"]


@pytest.fixture(scope="module")
def xml(tmp_path_factory) -> ET.Element:
    tmp = tmp_path_factory.mktemp("jjb")
    conf = tmp / "jenkins_jobs.ini"
    conf.write_text("[job_builder]\nignore_cache=True\n")
    env = dict(os.environ, HOME=str(tmp), XDG_CACHE_HOME=str(tmp / "cache"))
    out = tmp / "out"
    subprocess.run(_jenkins_jobs() + ["--conf", str(conf), "-l", "error", "test", str(YAML), "-o", str(out)],
                   check=True, env=env, capture_output=True, text=True, timeout=60)
    files = sorted(p.name for p in out.iterdir())
    assert files == [JOB]
    return ET.parse(out / JOB).getroot()


def test_freestyle_concurrent_on_label(xml):
    assert xml.tag == "project"  # freestyle
    assert xml.findtext("concurrentBuild") == "true"
    assert xml.findtext("assignedNode") == "vfio-user"
    assert xml.findtext("canRoam") == "false"


def test_parameters(xml):
    defs = xml.find("properties/hudson.model.ParametersDefinitionProperty/parameterDefinitions")
    names = [d.findtext("name") for d in defs]
    assert names == PARAMS
    kinds = {d.findtext("name"): d.tag for d in defs}
    assert all(kinds[n] == "hudson.model.StringParameterDefinition" for n in PARAMS[:4])
    assert kinds["LABEL"].endswith("nodelabelparameter.LabelParameterDefinition")
    label = next(d for d in defs if d.findtext("name") == "LABEL")
    assert label.findtext("defaultValue") == "vfio-user"


def test_command_maps_the_host_script_contract(xml):
    shell = xml.find("builders/hudson.tasks.Shell")
    cmd = shell.findtext("command")
    assert 'export FLAKEBOT_COMMIT="$SPDK_COMMIT"' in cmd
    assert "export FLAKEBOT_TESTS FLAKEBOT_ITERATIONS FLAKEBOT_RUN_ID" in cmd
    assert re.search(r'export SPDK_DIR="\$\{SPDK_DIR:-\$WORKSPACE/spdk\}"', cmd)
    assert cmd.rstrip().endswith('exec "$WORKSPACE/flakebot/jobs/run-restart-tests.sh"')
    expansions = ("${SPDK_DIR:-$WORKSPACE/spdk}", "^{commit}", "${tests[@]}")
    rest = cmd
    for e in expansions:
        assert e in rest
        rest = rest.replace(e, "")
    assert "{" not in rest  # no unexpanded template vars
    assert shell.findtext("unstableReturn") == "1"  # exit 1 (a test failed) -> UNSTABLE
    assert (ROOT / "jobs" / "run-restart-tests.sh").exists()


def run_job_command(xml, tmp: Path, era: str, **over) -> subprocess.CompletedProcess:
    """The job's rendered shell step, run as Jenkins would on an agent whose
    workspace holds this flakebot checkout, against the fake SPDK history."""
    from tests.fake_eras import make_era_repo
    from tests.test_host_script import fake_env

    spdk, shas = make_era_repo(tmp)
    ws = tmp / "ws"
    ws.mkdir()
    (ws / "flakebot").symlink_to(ROOT)
    env = dict(os.environ, **fake_env(tmp, **over), WORKSPACE=str(ws), SPDK_DIR=str(spdk), SPDK_COMMIT=shas[era],
               FLAKEBOT_TESTS="vfio_user_nvme_restart_vm", FLAKEBOT_ITERATIONS="1", FLAKEBOT_RUN_ID="job-1")
    script = tmp / "step.sh"
    script.write_text(xml.find("builders/hudson.tasks.Shell").findtext("command"))
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)


def test_job_checks_the_agent_first(xml, tmp_path):
    """An agent that cannot test the commit answers infra from the check, before
    the host script fetches, checks out or builds anything."""
    p = run_job_command(xml, tmp_path, "old_path", FAKE_SPDK_NVME="")
    assert p.returncode == 3, p.stdout + p.stderr
    assert p.stdout == "flakebot: infra: NVMe drive (this era): get_nvme_bdfs finds none\n"
    assert "flakebot: run job-1" not in p.stdout + p.stderr  # the host script never started


def test_job_runs_the_host_script_when_the_agent_can(xml, tmp_path):
    p = run_job_command(xml, tmp_path, "tip")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "START TEST vfio_user_nvme_restart_vm" in p.stdout
    assert "FLAKEBOT-ITERATION-END test=vfio_user_nvme_restart_vm iteration=1 rc=0" in p.stdout


def test_timestamper_timeout_and_discarder(xml):
    wrappers = xml.find("buildWrappers")
    assert wrappers.find("hudson.plugins.timestamper.TimestamperBuildWrapper") is not None
    to = wrappers.find("hudson.plugins.build__timeout.BuildTimeoutWrapper")
    assert to.find("strategy").get("class").endswith("AbsoluteTimeOutStrategy")
    assert to.findtext("strategy/timeoutMinutes") == "240"
    assert to.find("operationList/hudson.plugins.build__timeout.operations.AbortOperation") is not None
    rot = xml.find("properties/jenkins.model.BuildDiscarderProperty/strategy")
    assert rot.get("class") == "hudson.tasks.LogRotator"
    assert int(rot.findtext("numToKeep")) >= 500 and int(rot.findtext("daysToKeep")) > 0


def test_checks_out_flakebot_for_the_script(xml):
    scm = xml.find("scm")
    assert scm.get("class") == "hudson.plugins.git.GitSCM"
    assert xml.findtext("scm/extensions/hudson.plugins.git.extensions.impl.RelativeTargetDirectory/"
                        "relativeTargetDir") == "flakebot"


def test_jenkinsfile_is_equivalent():
    text = JENKINSFILE.read_text()
    for name in PARAMS:
        assert f"string(name: '{name}'" in text
    assert "agent { label \"${params.LABEL ?: 'vfio-user'}\" }" in text
    assert "timestamps()" in text
    assert "timeout(time: 240, unit: 'MINUTES')" in text
    assert "buildDiscarder(logRotator(" in text
    assert "disableConcurrentBuilds" not in text.replace("no disableConcurrentBuilds()", "")
    assert 'export FLAKEBOT_COMMIT="$SPDK_COMMIT"' in text
    assert 'exec "$WORKSPACE/jobs/run-restart-tests.sh"' in text
    check = '"$WORKSPACE/jobs/host-checks.sh" --check --commit "$SPDK_COMMIT" "${tests[@]}" || exit 3'
    assert check in text and text.index(check) < text.index('exec "$WORKSPACE/jobs/run-restart-tests.sh"')
    assert "unstable(" in text and "rc == 1" in text
    assert text.count("{") == text.count("}")
