"""`flakebot doctor`: jobs/host-checks.sh's checks for a commit, as a table."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_eras import make_era_repo
from tests.test_host_script import NVME, fake_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def eras(tmp_path_factory):
    return make_era_repo(tmp_path_factory.mktemp("eras"))


def doctor(tmp: Path, *args: str, columns: int = 200, tests=(NVME,), **over) -> subprocess.CompletedProcess:
    env = {**os.environ, **fake_env(tmp, **over), "COLUMNS": str(columns)}
    env.pop("FLAKEBOT_CONFIG", None)
    argv = [sys.executable, "-m", "flakebot", "doctor", *(a for t in tests for a in ("--test", t)), *args]
    return subprocess.run(argv, env=env, cwd=tmp, capture_output=True, text=True, timeout=120)


def rows(out: str) -> dict[str, str]:
    """check -> its status column (ok / NO), from the table's first lines of each row."""
    found = {}
    for line in out.splitlines():
        if line[:4].strip() in ("ok", "NO"):
            found[line[5:].split("  ")[0].strip()] = line[:4].strip()
    return found


def test_testable_commit_exits_0(tmp_path, eras):
    spdk, shas = eras
    p = doctor(tmp_path, "--commit", shas["tip"], "--spdk-dir", str(spdk), FAKE_SPDK_NVME="")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "this host can test it" in p.stdout
    got = rows(p.stdout)
    assert got["QEMU >= 10.1 (JSON -device)"] == "ok" and "NVMe drive (this era)" not in got
    assert set(got.values()) == {"ok"}
    # the fork is for the other side of a45553b220: a note, not a reason
    assert "--   VFIO_QEMU_BIN_LEGACY" in p.stdout


def test_untestable_commit_exits_1_with_the_fix(tmp_path, eras):
    spdk, shas = eras
    p = doctor(tmp_path, "--commit", shas["old_path"], "--spdk-dir", str(spdk), FAKE_SPDK_NVME="",
               VFIO_QEMU_BIN_LEGACY="")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "2 missing, cannot test it here" in p.stdout
    got = rows(p.stdout)
    assert got["NVMe drive (this era)"] == "NO" and got["QEMU vfio-user fork"] == "NO"
    assert got["VM_IMAGE"] == "ok" and got[f"test {NVME}"] == "ok"
    assert "set VFIO_QEMU_BIN_LEGACY" in p.stdout and "a spare NVMe drive" in p.stdout


def test_fits_80_columns(tmp_path, eras):
    spdk, shas = eras
    tests = (NVME, "vfio_user_virtio_blk_restart_vm")  # long names, long paths, two missing rows
    p = doctor(tmp_path, "--commit", shas["old_path"], "--spdk-dir", str(spdk), columns=80, tests=tests,
               FAKE_SPDK_NVME="")
    assert p.returncode == 1 and "NVMe drive" in p.stdout and "not in this tree" in p.stdout, p.stdout + p.stderr
    assert max(len(l) for l in p.stdout.splitlines()) <= 80, p.stdout


def test_default_is_the_checkout_as_it_is(tmp_path, eras):
    spdk, shas = eras
    cfg = tmp_path / "flakebot.toml"
    cfg.write_text(f'[executor]\nspdk_dir = "{spdk}"\n')
    p = doctor(tmp_path, FAKE_SPDK_NVME="")  # ./flakebot.toml names the clone, at its tip
    assert p.returncode == 0 and "the checkout" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("args, says", [
    (["--commit", "no-such-ref"], "cannot read commit no-such-ref"),
    (["--commit", "--upload-pack=x"], "bad commit"),
    (["--test", "nope"], "unknown test"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, eras, args, says):
    spdk, _ = eras
    p = doctor(tmp_path, "--spdk-dir", str(spdk), *args)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stdout == "" and p.stderr.count("\n") == 1 and says in p.stderr, p.stderr


def test_no_clone_is_one_line_exit_2(tmp_path):
    p = doctor(tmp_path)
    assert p.returncode == 2 and "no SPDK clone" in p.stderr and p.stderr.count("\n") == 1
