"""A fake lab host and a fake SPDK git history with one commit per era.

The eras are those a bisection can cross (docs/spdk.md, "Eras"); each commit is
tests/fake_spdk (the newest era) with the edits that take it back to that era.
Oldest first:

    no_test          no test/vfio_user at all (before 2021-11)
    old_path         test/vfio_user/vfio_user_restart_vm/vfio_user_restart_vm.sh, run_test
                     name vfio_user_restart_vm, no virtio test, NVMe drive, legacy -device
    renamed          test/vfio_user/nvme/..., vfio_user_nvme_restart_vm, the virtio test
    no_qemu_default  test/vfio_user/common.sh has no VFIO_QEMU_BIN default
    json_device      test/vhost/common.sh passes -device as JSON (upstream QEMU >= 10.1)
    tip              no NVMe drive needed (malloc/aio bdevs)

The host: fake QEMUs (small scripts printing a version, listing vfio-user-pci and
"booting" a VM -- a process named after the binary -- only with their own -device
syntax and a readable image), qemu-img, sshpass, fio, an image, a meminfo file.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fake_spdk"
ERAS = ("no_test", "old_path", "renamed", "no_qemu_default", "json_device", "tip")
UPSTREAM_QEMU_VERSION = "10.1.1"
FORK_QEMU_VERSION = "7.2.50"  # oracle/qemu vfio-user-p3.0 reports a 7.2 development version

QEMU = """#!/usr/bin/env bash
# fake QEMU {version}: its version, its devices, and a "VM" (a process named after
# this binary) when the -device syntax is its own and the -drive image is readable
version={version}
case ${{1:-}} in
	--version | -version)
		echo "QEMU emulator version $version"
		echo "Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers"
		exit 0
		;;
esac
if [[ ${{1:-}} == -device && ${{2:-}} == help ]]; then
	echo 'Storage devices:'
	{vfio_user_line}
	exit 0
fi
IFS=. read -r major minor _ <<< "$version"
json=0
((major > 10 || (major == 10 && minor >= 1))) && json=1
pidfile=''
while (($# > 0)); do
	case $1 in
		-drive)
			file=${{2#file=}} && file=${{file%%,*}}
			if [[ ! -r $file ]]; then
				echo "qemu-system-x86_64: -drive $2: Could not open '$file': No such file or directory" >&2
				exit 1
			fi
			shift 2
			;;
		-device)
			case $2 in
				'{{"driver":"vfio-user-pci"'*)
					((json)) || {{ echo "qemu-system-x86_64: -device $2: Parameter 'driver' is missing" >&2 && exit 1; }}
					;;
				vfio-user-pci,socket=*)
					((json)) && {{ echo "qemu-system-x86_64: -device $2: Invalid parameter type for 'socket', expected: dict" >&2 && exit 1; }}
					;;
			esac
			shift 2
			;;
		-pidfile)
			pidfile=$2
			shift 2
			;;
		*) shift ;;
	esac
done
(exec -a "$0" sleep 60) > /dev/null 2>&1 &
[[ -z $pidfile ]] || echo $! > "$pidfile"
"""


def write_qemu(path: Path, version: str, vfio_user: bool = True) -> Path:
    line = "echo 'name \"vfio-user-pci\", bus PCI, desc \"VFIO over socket PCI device assignment\"'" \
        if vfio_user else ":"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(QEMU.format(version=version, vfio_user_line=line))
    path.chmod(0o755)
    return path


def _tool(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def fake_host(tmp: Path) -> dict[str, str]:
    """A host that can test every era with an NVMe drive: the environment naming its
    pieces (the host script's and SPDK's own variables; FAKE_SPDK_NVME is the drive)."""
    host = tmp / "host"
    bin_ = host / "bin"
    bin_.mkdir(parents=True, exist_ok=True)
    upstream = write_qemu(host / "qemu-10.1" / "bin" / "qemu-system-x86_64", UPSTREAM_QEMU_VERSION)
    fork = write_qemu(host / "vfio-user-p3.0" / "bin" / "qemu-system-x86_64", FORK_QEMU_VERSION)
    _tool(bin_ / "qemu-img", 'echo "qemu-img version 10.1.1"')
    _tool(bin_ / "sshpass", "exec \"$@\"")
    _tool(bin_ / "fio", 'echo "fio-3.38"')
    image = host / "fedora.qcow2"
    image.write_bytes(b"QFI\xfb fake image\n")
    meminfo = tmp / "meminfo"
    if not meminfo.exists():  # scripts/setup.sh rewrites it
        meminfo.write_text("MemTotal:       16384000 kB\nMemAvailable:    8192000 kB\nHugePages_Total:       0\n"
                           "HugePages_Free:        0\nHugepagesize:       2048 kB\n")
    return {
        "PATH": f"{bin_}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "VFIO_QEMU_BIN": str(upstream),
        "VFIO_QEMU_BIN_LEGACY": str(fork),
        "VM_IMAGE": str(image),
        "VHOST_DIR": str(tmp / "vhost_test"),
        "FLAKEBOT_KVM_DEV": os.devnull,  # a readable, writable character device
        "FLAKEBOT_MEMINFO": str(meminfo),
        "FAKE_SPDK_NVME": "0000:5e:00.0",
    }


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@x", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@x")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) == count, f"{path}: expected {count}x {old!r}"  # the tip changed: update the edits
    path.write_text(text.replace(old, new))


NVME_TEST = "test/vfio_user/nvme/vfio_user_restart_vm.sh"
OLD_NVME_TEST = "test/vfio_user/vfio_user_restart_vm/vfio_user_restart_vm.sh"
VIRTIO_TEST = "test/vfio_user/virtio/fio_restart_vm.sh"
ATTACH = "bdfs=($(get_nvme_bdfs))\nrpc_cmd bdev_nvme_attach_controller -b Nvme0 -t pcie -a ${bdfs[0]}\n"


def _with_nvme(tree: Path) -> None:
    _edit(tree / NVME_TEST, "rpc_cmd bdev_malloc_create -b Malloc0 $MALLOC_BDEV_SIZE $MALLOC_BLOCK_SIZE\n"
          "rpc_cmd nvmf_subsystem_add_ns nqn.2019-07.io.spdk:cnode1 Malloc0\n",
          ATTACH + "rpc_cmd nvmf_subsystem_add_ns nqn.2019-07.io.spdk:cnode1 Nvme0n1\n")
    _edit(tree / VIRTIO_TEST, "rpc_cmd bdev_aio_create $TEST_DIR/aio_file Nvme0n1 4096\n", ATTACH)


def _legacy_device(tree: Path) -> None:
    _edit(tree / "test/vhost/common.sh",
          """printf -v vfio_user_pci '{"driver":"vfio-user-pci","socket":{"path":"%s","type":"unix"}}'""",
          "printf -v vfio_user_pci 'vfio-user-pci,socket=%s'", count=2)


def _no_qemu_default(tree: Path) -> None:
    _edit(tree / "test/vfio_user/common.sh",
          "VFIO_QEMU_BIN=${VFIO_QEMU_BIN:-/usr/local/qemu/vfio-user-latest/bin/qemu-system-x86_64}\n", "")


def _old_path(tree: Path) -> None:
    (tree / OLD_NVME_TEST).parent.mkdir(parents=True)
    (tree / NVME_TEST).rename(tree / OLD_NVME_TEST)
    _edit(tree / OLD_NVME_TEST, "# fake test/vfio_user/nvme/vfio_user_restart_vm.sh",
          f"# fake {OLD_NVME_TEST}")
    shutil.rmtree(tree / "test/vfio_user/nvme")
    shutil.rmtree(tree / "test/vfio_user/virtio")


# era -> the edits that take the tip back to it
_EDITS = {
    "no_test": [_with_nvme, _legacy_device, lambda t: shutil.rmtree(t / "test/vfio_user")],
    "old_path": [_with_nvme, _legacy_device, _old_path],
    "renamed": [_with_nvme, _legacy_device],
    "no_qemu_default": [_with_nvme, _legacy_device, _no_qemu_default],
    "json_device": [_with_nvme],
    "tip": [],
}


def make_era_repo(tmp: Path) -> tuple[Path, dict[str, str]]:
    """tmp/spdk: a git repository with one commit per era, oldest first; returns
    (dir, {era: sha}). The work tree is left at the tip."""
    spdk = tmp / "spdk"
    spdk.mkdir()
    git(spdk, "init", "-q")
    shas = {}
    for era in ERAS:
        for child in spdk.iterdir():
            if child.name != ".git":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        shutil.copytree(FAKE, spdk, dirs_exist_ok=True)
        for edit in _EDITS[era]:
            edit(spdk)
        git(spdk, "add", "-A")
        git(spdk, "commit", "-qm", f"era {era}")
        shas[era] = git(spdk, "rev-parse", "HEAD")
    return spdk, shas
