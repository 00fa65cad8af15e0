"""A throwaway SPDK-like git repository for the demo and the tests.

    >>> demo = build_demo_repo(tmp_path / "spdk")          # 200 commits, well under a second
    >>> demo.culprit == demo.shas[137]
    True

One commit (the culprit) deletes the namespace removal that comes before the
listener removal in the nvme restart test script, the shape of SPDK issue
#3322; an optional later commit (the fix) restores it. Simulated hosts decide
how a commit behaves by reading that script (`restart_script_healthy`), so the
content contract is exact:

    RESTART_SCRIPT contains REMOVE_NS_LINE, later REMOVE_LISTENER_LINE, later a
    `vm_shutdown_all` line; the culprit deletes REMOVE_NS_LINE (only that line).

In the healthy script the two `vm_shutdown_all` calls are at lines 36 and 54,
as in SPDK (docs/spdk.md); after the culprit the second is at 53. The virtio script
has its calls at 78 and 97.

Every other commit changes other files: lib/, module/, doc/, scripts/, and a
few harmless ones in test/vhost, test/vfio_user and lib/vfio_user, so touched
paths alone do not give the culprit away. Authors, dates (one commit about an
hour from 2024-05-01), subjects, Change-Ids and so the SHAs are a function of
the arguments only. The whole history is written with one `git fast-import`.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

RESTART_SCRIPT = "test/vfio_user/nvme/vfio_user_restart_vm.sh"
VIRTIO_SCRIPT = "test/vfio_user/virtio/fio_restart_vm.sh"
VHOST_COMMON = "test/vhost/common.sh"
REMOVE_NS_LINE = "rpc_cmd nvmf_subsystem_remove_ns nqn.2019-07.io.spdk:cnode1 1"
REMOVE_LISTENER_LINE = (
    "rpc_cmd nvmf_subsystem_remove_listener nqn.2019-07.io.spdk:cnode1 -t vfiouser -a /var/run/vfio-user -s 0"
)
CULPRIT_SUBJECT = "test/vfio_user: drop redundant namespace removal before listener teardown"
FIX_SUBJECT = "test/vfio_user: Clean nvme subsystem properly to not block vm_shutdown_all()"

DEFAULT_N_COMMITS = 200
DEFAULT_CULPRIT_INDEX = 137  # for 200 commits; scaled for other sizes
EPOCH = 1714564800  # 2024-05-01 12:00:00 UTC


def restart_script_healthy(text: str) -> bool:
    """True when the nvme restart script removes the namespace before the listener.

    Lines are compared stripped; a commented-out line does not count.
    """
    ns = listener = None
    for i, line in enumerate(text.splitlines()):
        s = line.strip()
        if s == REMOVE_NS_LINE and ns is None:
            ns = i
        elif s == REMOVE_LISTENER_LINE and listener is None:
            listener = i
    return ns is not None and listener is not None and ns < listener


@dataclass
class DemoRepo:
    """What build_demo_repo made. `shas` is the first-parent chain, oldest first."""

    path: Path
    shas: list[str]
    culprit: str
    fix: Optional[str]
    good: str  # an old healthy commit well before the culprit
    tip: str
    culprit_index: int
    fix_index: Optional[int]
    good_index: int
    merge: Optional[str] = None  # the merge commit on the first-parent chain, if any
    side_shas: list[str] = field(default_factory=list)  # the merged side branch, oldest first
    subjects: dict[str, str] = field(default_factory=dict)  # sha -> subject, every commit

    @property
    def all_shas(self) -> list[str]:
        return self.shas + self.side_shas


# --------------------------------------------------------------------------
# File contents


# The opening both vfio_user restart scripts share (line numbers matter: the
# vm_shutdown_all calls must land on SPDK's lines).
_RESTART_SCRIPT_HEAD = [
    "#!/usr/bin/env bash",
    "#  SPDX-License-Identifier: BSD-3-Clause",
    "#  Copyright (C) 2022 Intel Corporation",
    "#  All rights reserved.",
    "#",
    "",
    "testdir=$(readlink -f $(dirname $0))",
    "rootdir=$(readlink -f $testdir/../../..)",
    "source $rootdir/test/common/autotest_common.sh",
    "source $rootdir/test/vfio_user/common.sh",
    "source $rootdir/test/vfio_user/autotest.config",
    "",
    "bdfs=($(get_nvme_bdfs))",
    'rpc_py="$rootdir/scripts/rpc.py -s $(get_vhost_dir 0)/rpc.sock"',
    "",
]


def _nvme_restart_script() -> list[str]:
    lines = [
        *_RESTART_SCRIPT_HEAD,
        "vhosttestinit",
        "",
        "trap 'clean_vfio_user' EXIT",
        "",
        "vfio_user_run 0",
        "",
        'vm_muser_dir="/var/run/vfio-user"',
        "rm -rf $vm_muser_dir",
        "mkdir -p $vm_muser_dir",
        "",
        "rpc_cmd bdev_nvme_attach_controller -b Nvme0 -t pcie -a ${bdfs[0]}",
        "rpc_cmd nvmf_create_subsystem nqn.2019-07.io.spdk:cnode1 -s SPDK001 -a",
        "rpc_cmd nvmf_subsystem_add_ns nqn.2019-07.io.spdk:cnode1 Nvme0n1",
        "rpc_cmd nvmf_subsystem_add_listener nqn.2019-07.io.spdk:cnode1 -t vfiouser -a /var/run/vfio-user -s 0",
        "",
        'vm_setup --disk-type=vfio_user --force=1 --os=$VM_IMAGE --disks="1"',
        "vm_run 1",
        "vm_wait_for_boot 60 1",
        "",
        'vm_exec 1 "lsblk"',
        "vm_shutdown_all",  # line 36
        "",
        'notice "Restarting VM 1 on the same vfio-user controller"',
        'vm_setup --disk-type=vfio_user --force=1 --os=$VM_IMAGE --disks="1"',
        "vm_run 1",
        "vm_wait_for_boot 60 1",
        "",
        'vm_exec 1 "lsblk"',
        'vm_exec 1 "fio --name=restart --filename=/dev/nvme0n1 --rw=randrw --size=64M --runtime=10"',
        "",
        "# Tear the subsystem down under the running VM.",
        "rpc_cmd nvmf_subsystem_get_controllers nqn.2019-07.io.spdk:cnode1",
        REMOVE_NS_LINE,  # line 48
        REMOVE_LISTENER_LINE,
        "rpc_cmd bdev_nvme_detach_controller Nvme0",
        "",
        'notice "Shutting down VM 1 with the listener gone"',
        "",
        "vm_shutdown_all",  # line 54
        "",
        "vhost_kill 0",
        "",
        "trap - EXIT",
        "vhosttestfini",
    ]
    assert lines[35] == "vm_shutdown_all" and lines[53] == "vm_shutdown_all"
    return lines


def _virtio_restart_script() -> list[str]:
    head = [
        *_RESTART_SCRIPT_HEAD,
        "dev_type=$1",
        'if [[ "$dev_type" != virtio_blk && "$dev_type" != virtio_scsi ]]; then',
        '\terror "Usage: $0 virtio_blk|virtio_scsi [--iso]"',
        "fi",
        "",
        "vhosttestinit",
        "",
        "trap 'clean_vfio_user' EXIT",
        "",
        "vfio_user_run 0",
        "",
        "function create_device() {",
        '\tif [[ "$dev_type" == virtio_blk ]]; then',
        "\t\trpc_cmd vfu_virtio_create_blk_endpoint virtio.0 --bdev-name Nvme0n1 --num-queues=2 \\",
        "\t\t\t--qsize=512 --packed-ring",
        '\telif [[ "$dev_type" == virtio_scsi ]]; then',
        "\t\trpc_cmd vfu_virtio_create_scsi_endpoint virtio.0 --num-io-queues=2 --qsize=512 --packed-ring",
        "\t\trpc_cmd vfu_virtio_scsi_add_target virtio.0 --scsi-target-num=0 --bdev-name Nvme0n1",
        "\tfi",
        "}",
        "",
        "function remove_device() {",
        "\trpc_cmd vfu_virtio_delete_endpoint virtio.0",
        "}",
        "",
        "function fio_in_vm() {",
        "\tlocal vm=$1",
        '\tvm_exec $vm "fio --name=restart --filename=/dev/${disk} --rw=randrw --bs=4k --iodepth=32 \\',
        '\t\t--size=64M --runtime=10 --time_based --verify=crc32c"',
        "}",
        "",
        "rpc_cmd bdev_nvme_attach_controller -b Nvme0 -t pcie -a ${bdfs[0]}",
        "create_device",
        "",
        'vm_setup --disk-type=vfio_user_virtio --force=1 --os=$VM_IMAGE --disks="1"',
        "vm_run 1",
        "vm_wait_for_boot 60 1",
        "",
        'if [[ "$dev_type" == virtio_blk ]]; then',
        "\tdisk=vda",
        "else",
        "\tdisk=sda",
        "fi",
        "",
        "fio_in_vm 1",
    ]
    # pad with short, plausible steps up to the first vm_shutdown_all at line 78
    filler = [
        "",
        "# The first boot checks the device is usable at all.",
        'vm_exec 1 "lsblk"',
        'vm_exec 1 "cat /sys/block/${disk}/queue/nr_requests"',
        'vm_exec 1 "sync"',
        "",
        'notice "VM 1 up with $dev_type, shutting it down"',
    ]
    lines = head + filler
    while len(lines) < 77:
        lines.insert(len(head), "")
    lines.append("vm_shutdown_all")  # line 78
    second = [
        "",
        'notice "Restarting VM 1 on the same virtio endpoint"',
        'vm_setup --disk-type=vfio_user_virtio --force=1 --os=$VM_IMAGE --disks="1"',
        "vm_run 1",
        "vm_wait_for_boot 60 1",
        "",
        "fio_in_vm 1",
        'vm_exec 1 "lsblk"',
        "",
        "# Hot-remove the endpoint under the running VM, then shut it down.",
        "remove_device",
        "rpc_cmd bdev_nvme_detach_controller Nvme0",
        "",
        'notice "Shutting down VM 1 with the endpoint gone"',
        "",
        "",
        "",
        "",
    ]
    lines += second
    lines.append("vm_shutdown_all")  # line 97
    lines += ["", "vhost_kill 0", "", "trap - EXIT", "vhosttestfini"]
    assert lines[77] == "vm_shutdown_all" and lines[96] == "vm_shutdown_all", (len(head), len(lines))
    return lines


def _vhost_common() -> list[str]:
    return """#  SPDX-License-Identifier: BSD-3-Clause
#  Copyright (C) 2017 Intel Corporation
#  All rights reserved.
#

: ${SPDK_VHOST_VERBOSE=false}
: ${VHOST_DIR="$HOME/vhost_test"}
: ${QEMU_BIN:="qemu-system-x86_64"}
: ${QEMU_IMG_BIN="qemu-img"}

TEST_DIR=$(readlink -f $rootdir/..)
VM_DIR=$VHOST_DIR/vms
TARGET_DIR=$VHOST_DIR/vhost
VM_PASSWORD="root"

function message() {
	local verbose_out
	if ! $SPDK_VHOST_VERBOSE; then
		verbose_out=""
	elif [[ ${FUNCNAME[2]} == "source" ]]; then
		verbose_out=" (file $(basename ${BASH_SOURCE[1]}):${BASH_LINENO[1]})"
	else
		verbose_out=" (function ${FUNCNAME[2]}:${BASH_LINENO[1]})"
	fi

	local msg_type="$1"
	shift
	echo -e "${msg_type}${verbose_out}: $*"
}

function fail() {
	echo "===========" >&2
	message "FAIL" "$@" >&2
	echo "===========" >&2
	exit 1
}

function error() {
	echo "===========" >&2
	message "ERROR" "$@" >&2
	echo "===========" >&2
	# Don't 'return 1' since the stack trace will be incomplete (why?) missing upper command.
	false
}

function warning() {
	message "WARN" "$@" >&2
}

function notice() {
	message "INFO" "$@"
}

function vm_num_is_valid() {
	[[ "$1" =~ ^[0-9]+$ ]] && return 0

	error "Invalid or missing parameter: vm number '$1'"
	return 1
}

function vm_os_booted() {
	vm_num_is_valid $1 || return 1
	local vm_dir="$VM_DIR/$1"

	if [[ ! -r $vm_dir/qemu.pid ]]; then
		error "VM $1 is not running"
		return 1
	fi

	if ! VM_SSH_OPTIONS="-o ControlMaster=no" vm_exec $1 "true" 2> /dev/null; then
		# Shutdown existing master. Ignore errors as it might not exist.
		VM_SSH_OPTIONS="-O exit" vm_exec $1 "true" 2> /dev/null
		return 1
	fi

	return 0
}

function vm_shutdown() {
	vm_num_is_valid $1 || return 1
	local vm_dir="$VM_DIR/$1"
	if [[ ! -d "$vm_dir" ]]; then
		error "VM$1 ($vm_dir) not exist - setup it first"
		return 1
	fi

	if ! vm_is_running $1; then
		notice "VM$1 ($vm_dir) is not running"
		return 0
	fi

	# Temporarily disabling exit flag for next ssh command, since it will
	# "fail" due to shutdown
	notice "Shutting down virtual machine $vm_dir"
	set +e
	vm_exec $1 "nohup sh -c 'shutdown -h -P now'" || true
	notice "VM$1 is shutting down - wait a while to complete"
	set -e
}

function vm_kill_all() {
	local vm
	for vm in $(vm_list_all); do
		vm_kill $vm
	done

	rm -rf $VM_DIR
}

function vm_shutdown_all() {
	local timeo=${1:-90} vms vm

	vms=($(vm_list_all))

	for vm in "${vms[@]}"; do
		vm_shutdown "$vm"
	done

	notice "Waiting for VMs to shutdown..."
	while ((timeo-- > 0 && ${#vms[@]} > 0)); do
		for vm in "${!vms[@]}"; do
			vm_is_running "${vms[vm]}" || unset -v "vms[vm]"
		done
		sleep 1
	done

	if ((${#vms[@]} == 0)); then
		notice "All VMs successfully shut down"
		return 0
	fi

	warning "Not all VMs were shut down. Leftovers: ${#vms[@]}"

	for vm in "${vms[@]}"; do
		vm_print_logs $vm
	done

	return 1
}

function vm_wait_for_boot() {
	assert_number $1

	xtrace_disable

	local all_booted=false
	local timeout_time=$1
	[[ $timeout_time -lt 10 ]] && timeout_time=10
	local timeout_time
	timeout_time=$(date -d "+$timeout_time seconds" +%s)

	notice "Waiting for VMs to boot"
	shift
	for vm in "$@"; do
		while ! vm_os_booted $vm; do
			if ! vm_is_running $vm; then
				warning "VM $vm is not running"
				xtrace_restore
				return 1
			fi
			sleep 1
		done
		# Guest shutdown must not hang on stuck units forever.
		vm_exec $vm "mkdir -p /etc/systemd/system.conf.d"
		vm_exec $vm "echo -e '[Manager]\\nDefaultTimeoutStopSec=10' > /etc/systemd/system.conf.d/timeout.conf"
		notice "VM$vm ready"
	done

	xtrace_restore
	return 0
}
""".splitlines()


def _vfio_user_common() -> list[str]:
    return """#  SPDX-License-Identifier: BSD-3-Clause
#  Copyright (C) 2022 Intel Corporation
#  All rights reserved.
#

: ${MALLOC_BDEV_SIZE=256}
: ${MALLOC_BLOCK_SIZE=512}

source "$rootdir/test/vhost/common.sh"

function clean_vfio_user() {
	trap - ERR
	print_backtrace
	set +e
	error "Error on $1 $2"
	vm_kill_all
	vhost_kill 0
	exit 1
}

function vfio_user_run() {
	local vhost_name=$1
	local vfio_user_app="$SPDK_BIN_DIR/spdk_tgt"

	notice "starting vfio-user target $vhost_name"
	"$vfio_user_app" -r "$(get_vhost_dir $vhost_name)/rpc.sock" -m 0x1 &
	vfiouserpid=$!
	echo $vfiouserpid > "$(get_vhost_dir $vhost_name)/vhost.pid"
	waitforlisten "$vfiouserpid" "$(get_vhost_dir $vhost_name)/rpc.sock"

	rpc_cmd nvmf_create_transport -t VFIOUSER
}
""".splitlines()


def _vfio_user_sh() -> list[str]:
    return """#!/usr/bin/env bash
#  SPDX-License-Identifier: BSD-3-Clause
#  Copyright (C) 2022 Intel Corporation
#  All rights reserved.
#

testdir=$(readlink -f $(dirname $0))
rootdir=$(readlink -f $testdir/../..)
source $rootdir/test/common/autotest_common.sh

echo "Running SPDK vfio-user fio autotest..."

run_test "vfio_user_nvme_fio" $WORKDIR/nvme/vfio_user_fio.sh
run_test "vfio_user_nvme_restart_vm" $WORKDIR/nvme/vfio_user_restart_vm.sh
run_test "vfio_user_virtio_blk_restart_vm" $WORKDIR/virtio/fio_restart_vm.sh virtio_blk
run_test "vfio_user_virtio_scsi_restart_vm" $WORKDIR/virtio/fio_restart_vm.sh virtio_scsi
""".splitlines()


# C sources: path -> (function prefix, header name)
_C_FILES = {
    "lib/nvmf/ctrlr.c": ("nvmf_ctrlr", "nvmf"),
    "lib/nvmf/subsystem.c": ("nvmf_subsystem", "nvmf"),
    "lib/nvmf/transport.c": ("nvmf_transport", "nvmf_transport"),
    "lib/nvmf/tcp.c": ("nvmf_tcp", "nvmf_transport"),
    "lib/nvmf/rdma.c": ("nvmf_rdma", "nvmf_transport"),
    "lib/nvmf/vfio_user.c": ("nvmf_vfio_user", "nvmf_transport"),
    "lib/nvmf/nvmf_rpc.c": ("rpc_nvmf", "rpc"),
    "lib/vfio_user/host/vfio_user.c": ("vfio_user_dev", "vfio_user_spec"),
    "lib/vfio_user/host/vfio_user_pci.c": ("vfio_pci", "vfio_user_pci"),
    "lib/nvme/nvme_ctrlr.c": ("nvme_ctrlr", "nvme"),
    "lib/nvme/nvme_qpair.c": ("nvme_qpair", "nvme"),
    "lib/nvme/nvme_pcie.c": ("nvme_pcie", "nvme"),
    "lib/bdev/bdev.c": ("bdev", "bdev_module"),
    "module/bdev/nvme/bdev_nvme.c": ("bdev_nvme", "bdev_module"),
    "module/bdev/nvme/bdev_nvme_rpc.c": ("rpc_bdev_nvme", "rpc"),
    "lib/thread/thread.c": ("spdk_thread", "thread"),
    "lib/accel/accel.c": ("accel", "accel"),
    "lib/blob/blobstore.c": ("blob", "blob"),
    "lib/vhost/vhost_blk.c": ("vhost_blk", "vhost"),
    "lib/vfu_tgt/tgt_endpoint.c": ("vfu_tgt", "vfu_target"),
}

_DEFINE_NAMES = ("MAX_QUEUE_DEPTH", "DEFAULT_TIMEOUT_MS", "POLL_PERIOD_US", "MAX_IO_SIZE", "RETRY_COUNT")


def _c_file(path: str) -> list[str]:
    prefix, header = _C_FILES[path]
    up = prefix.upper()
    values = (128, 30000, 1000, 131072, 4)
    return [
        "/*   SPDX-License-Identifier: BSD-3-Clause",
        " *   Copyright (C) 2024 The flakebot demo authors.",
        " *   All rights reserved.",
        " */",
        "",
        '#include "spdk/stdinc.h"',
        f'#include "spdk/{header}.h"',
        '#include "spdk/log.h"',
        "",
        *(f"#define {up}_{name} {value}" for name, value in zip(_DEFINE_NAMES, values)),
        "",
        "static int",
        f"{prefix}_init(void)",
        "{",
        f'\tSPDK_DEBUGLOG({prefix.split("_")[0]}, "init\\n");',
        "\treturn 0;",
        "}",
    ]


_DOC_FILES = ("doc/nvmf.md", "doc/vhost.md", "doc/bdev.md", "doc/jsonrpc.md", "doc/vfio_user.md")
_SH_FILES = ("test/vhost/common.sh", "test/vfio_user/common.sh", "scripts/common.sh",
             "test/common/autotest_common.sh", "scripts/pkgdep/common.sh")


def _initial_tree() -> dict[str, list[str]]:
    tree: dict[str, list[str]] = {
        "README.md": ["# SPDK (flakebot demo tree)", "",
                      "A small SPDK-shaped repository built by `flakebot demo`. Not SPDK."],
        "CHANGELOG.md": ["# Changelog", "", "## v24.09: (Upcoming Release)", ""],
        RESTART_SCRIPT: _nvme_restart_script(),
        VIRTIO_SCRIPT: _virtio_restart_script(),
        VHOST_COMMON: _vhost_common(),
        "test/vfio_user/common.sh": _vfio_user_common(),
        "test/vfio_user/vfio_user.sh": _vfio_user_sh(),
        "test/vfio_user/autotest.config": ["vhost_0_reactor_mask=\"[0-3]\"", "vhost_0_main_core=0", "",
                                           "VM_0_qemu_mask=4-5", "VM_0_qemu_numa_node=0"],
        "python/spdk/rpc/nvmf.py": ["from spdk.rpc.helpers import deprecated_alias", "", "",
                                    "def nvmf_subsystem_add_ns(client, nqn, bdev_name, nsid=None):",
                                    "    params = {'nqn': nqn, 'namespace': {'bdev_name': bdev_name}}",
                                    "    if nsid:", "        params['namespace']['nsid'] = nsid",
                                    "    return client.call('nvmf_subsystem_add_ns', params)"],
    }
    for p in _C_FILES:
        tree[p] = _c_file(p)
    for p in _DOC_FILES:
        name = p.split("/")[1].removesuffix(".md")
        tree[p] = [f"# {name} {{#{name}}}", "", "This page describes the demo tree's " + name + " module.", ""]
    for p in _SH_FILES:
        if p not in tree:
            tree[p] = ["#!/usr/bin/env bash", "#  SPDX-License-Identifier: BSD-3-Clause",
                       "#  All rights reserved.", "", "set -e", ""]
    return tree


# --------------------------------------------------------------------------
# The commits


# area -> (files it touches, subjects). Subjects are used at most once.
_AREAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "nvmf": (("lib/nvmf/ctrlr.c", "lib/nvmf/subsystem.c", "lib/nvmf/transport.c"), (
        "nvmf: fix use-after-free of the ctrlr in the disconnect path",
        "nvmf: reject Identify with an unsupported CNS",
        "nvmf: make the keep-alive timeout check per poll group",
        "nvmf: remove unused nvmf_ctrlr_async_event_ns_notice argument",
        "nvmf: log the host NQN when a connect is rejected",
        "nvmf: add nvmf_subsystem_get_qpairs listener filter",
        "nvmf: fix ANA state reporting for inactive namespaces",
        "nvmf: don't abort admin commands twice on controller reset",
        "nvmf: move subsystem state change callbacks to a helper",
        "nvmf: limit the number of outstanding AERs per controller",
        "nvmf: clean up namespace masking on subsystem destroy",
        "nvmf: use spdk_nvme_ctrlr_data_get_vid() helper",
        "nvmf: report max_zone_append_size in Identify Controller",
        "nvmf: account queued requests in qpair statistics",
    )),
    "nvmf/tcp": (("lib/nvmf/tcp.c",), (
        "nvmf/tcp: fix PDU header digest check for R2T",
        "nvmf/tcp: release the socket on a failed icreq",
        "nvmf/tcp: add sock_priority to the transport dump",
        "nvmf/tcp: don't leak the request on a zero-length H2C",
        "nvmf/tcp: simplify the receive state machine",
        "nvmf/tcp: count control messages in poll group stats",
    )),
    "nvmf/rdma": (("lib/nvmf/rdma.c",), (
        "nvmf/rdma: fix SRQ resize on device removal",
        "nvmf/rdma: honour no_wr_batching in the send path",
        "nvmf/rdma: drop the legacy IB event handler",
        "nvmf/rdma: report the active device in transport stats",
    )),
    "nvmf/vfio-user": (("lib/nvmf/vfio_user.c",), (
        "nvmf/vfio-user: fix doorbell buffer size check",
        "nvmf/vfio-user: log the region when a BAR access fails",
        "nvmf/vfio-user: use spdk_interrupt_register_for_events",
        "nvmf/vfio-user: move migration state helpers together",
        "nvmf/vfio-user: add comment on shadow doorbell ordering",
    )),
    "vfio_user": (("lib/vfio_user/host/vfio_user.c", "lib/vfio_user/host/vfio_user_pci.c"), (
        "vfio_user: fix error code when the socket path is too long",
        "vfio_user: print the region index in the mmap failure log",
        "vfio_user: remove the unused dev_attach wrapper",
        "vfio_user: check the reply header version",
    )),
    "vfu_tgt": (("lib/vfu_tgt/tgt_endpoint.c",), (
        "vfu_tgt: validate the endpoint cpumask",
        "vfu_tgt: log the endpoint name on quiesce",
    )),
    "nvme": (("lib/nvme/nvme_ctrlr.c", "lib/nvme/nvme_qpair.c", "lib/nvme/nvme_pcie.c"), (
        "nvme: fix timeout of the admin queue during reset",
        "nvme: print the status of failed Get Log Page commands",
        "nvme: add spdk_nvme_ctrlr_get_max_sges()",
        "nvme/pcie: don't read CSTS after surprise removal",
        "nvme: remove the deprecated nvme_ctrlr_get_ref_count",
        "nvme: abort queued requests when the qpair is disconnected",
        "nvme: honour CRTO for the enable timeout",
        "nvme: fix completion of fused commands on qpair failure",
        "nvme/pcie: map the CMB with write-combining",
        "nvme: add missing unlock on the keep-alive error path",
    )),
    "bdev/nvme": (("module/bdev/nvme/bdev_nvme.c", "module/bdev/nvme/bdev_nvme_rpc.c"), (
        "bdev/nvme: fix failover when the alternate path is not ready",
        "bdev/nvme: add ctrlr_loss_timeout_sec to bdev_nvme_get_controllers",
        "bdev/nvme: retry I/O on ANA inaccessible only with multipath",
        "bdev/nvme: don't reset a controller that is being deleted",
        "bdev/nvme: release the nvme_ns reference on namespace removal",
        "bdev/nvme: reduce log noise on admin queue timeouts",
        "bdev/nvme: make bdev_nvme_detach_controller idempotent",
        "bdev/nvme: report io_path stats per namespace",
        "bdev/nvme: fix reconnect delay after a failed reset",
    )),
    "bdev": (("lib/bdev/bdev.c",), (
        "bdev: fix QoS rate limit rounding",
        "bdev: add spdk_bdev_get_nvme_nsid()",
        "bdev: unregister io_device after the last channel is gone",
        "bdev: count reset failures in I/O statistics",
        "bdev: don't split copy requests below the optimal boundary",
        "bdev: move memory domain checks to a helper",
        "bdev: simplify the bdev_io completion callback chain",
    )),
    "thread": (("lib/thread/thread.c",), (
        "thread: fix poller unregister while paused",
        "thread: add spdk_thread_get_interrupt_fd_group()",
        "thread: warn about long-running pollers",
        "thread: remove redundant thread state check",
    )),
    "accel": (("lib/accel/accel.c",), (
        "accel: fix sequence reversal for decompress",
        "accel: add a crc32c fallback for unaligned buffers",
        "accel: report per-module operation counts",
        "accel: remove unused accel_task flags",
    )),
    "blob": (("lib/blob/blobstore.c",), (
        "blob: fix clone of a thin-provisioned snapshot",
        "blob: persist the extent table after resize",
        "blob: check cluster count before shallow copy",
        "blob: remove legacy md page allocation path",
    )),
    "vhost": (("lib/vhost/vhost_blk.c",), (
        "vhost: fix virtqueue kick after live migration",
        "vhost_blk: report discard alignment in config space",
        "vhost: drop unused session flags",
    )),
    "test/vhost": (("test/vhost/common.sh",), (
        "test/vhost: print the QEMU command line when a VM fails to start",
        "test/vhost: add vm_check_nvme_location helper",
        "test/vhost: quote VM directory paths",
        "test/vhost: add vm_dump_console helper for debugging",
    )),
    "test/vfio_user": (("test/vfio_user/common.sh",), (
        "test/vfio_user: kill the target with its process group",
        "test/vfio_user: add a helper to list vfio-user endpoints",
        "test/vfio_user: log the transport options at start",
    )),
    "test": (("test/common/autotest_common.sh",), (
        "test/common: print the hugepage state on failure",
        "test/common: add xtrace_restore to waitforlisten",
        "autotest: collect core dumps from the VM directory",
        "test/common: make rpc_cmd report the failing method",
    )),
    "scripts": (("scripts/common.sh", "scripts/pkgdep/common.sh"), (
        "scripts/common: skip PCI devices bound to vfio-pci by the user",
        "scripts/pkgdep: install libvfio-user build dependencies",
        "scripts/common: cache the lspci output",
        "pkgdep: bump the meson requirement",
    )),
    "doc": (_DOC_FILES, (
        "doc: describe the vfio-user transport options",
        "doc: fix typos in the NVMe-oF target guide",
        "doc: document bdev_nvme_set_options multipath settings",
        "doc: add vfio-user virtio example",
        "doc: update the jsonrpc page for nvmf_subsystem_add_listener",
        "doc: mention DefaultTimeoutStopSec in the vhost test guide",
        "doc: clarify the bdev QoS units",
        "doc: fix broken links in the vhost guide",
    )),
    "CHANGELOG": (("CHANGELOG.md",), (
        "CHANGELOG: add the nvmf ANA reporting change",
        "CHANGELOG: note the removed nvme deprecated API",
        "CHANGELOG: describe new accel statistics",
    )),
}

_SIDE_FILES = ("lib/nvmf/nvmf_rpc.c", "python/spdk/rpc/nvmf.py")
_SIDE_SUBJECTS = (
    "nvmf: add hide_metadata option to nvmf_subsystem_add_ns",
    "python/rpc: expose hide_metadata in nvmf_subsystem_add_ns",
)
_MERGE_SUBJECT = 'Merge changes from topic "nvmf-ns-hide-metadata"'

_AUTHORS = (
    ("Anna Nowak", "anna.nowak@example.com", "+0200"),
    ("Piotr Wiśniewski", "piotr.wisniewski@example.com", "+0200"),
    ("Marta Kowalczyk", "marta.kowalczyk@example.com", "+0200"),
    ("Jim Harrow", "jim.harrow@example.com", "-0700"),
    ("Chen Wei", "chen.wei@example.com", "+0800"),
    ("Rajesh Iyer", "rajesh.iyer@example.com", "+0530"),
    ("Sofia Lindqvist", "sofia.lindqvist@example.com", "+0200"),
    ("Daniel Okafor", "daniel.okafor@example.com", "+0100"),
)
_MAINTAINERS = (
    ("Tomas Zielinski", "tomas.zielinski@example.com", "+0200"),
    ("Kate Brennan", "kate.brennan@example.com", "-0700"),
)
_CI = "SPDK Automated Test System <ci@example.com>"

_WORDS_V = ("check", "drain", "flush", "reset", "update", "release", "validate", "track", "dump", "complete")
_WORDS_N = ("qpair", "admin_queue", "namespace", "listener", "request", "stats", "state", "buffer", "timer",
            "event", "poller", "region")


_TEMPLATES = (
    "{p}: fix memory leak in {fn}()",
    "{p}: add missing error check in {fn}()",
    "{p}: handle -ENOMEM from {fn}()",
    "{p}: make {fn}() static",
    "{p}: don't log at ERROR level in {fn}()",
    "{p}: rename {fn}() for consistency",
    "{p}: simplify {fn}()",
    "{p}: add a debug log to {fn}()",
)
_SH_TEMPLATES = (
    "{p}: quote arguments in {fn}",
    "{p}: add xtrace_disable to {fn}",
    "{p}: use local variables in {fn}",
    "{p}: fix shellcheck warnings in {fn}",
)
_DOC_TEMPLATES = (
    "doc: fix the {fn} example",
    "doc: describe {fn} parameters",
    "doc: reword the {fn} section",
)


def _subject_pool(area: str, rng: random.Random, curated: bool = True, extra: int = 8) -> list[str]:
    """Curated subjects of an area plus generated ones in the same style, shuffled."""
    files, subjects = _AREAS[area]
    pool = list(subjects) if curated else []
    seen = set(pool)
    for _ in range(extra * 4):
        if len(pool) >= len(subjects) * curated + extra:
            break
        path = rng.choice(files)
        word = f"{rng.choice(_WORDS_V)}_{rng.choice(_WORDS_N)}"
        if path.endswith(".c"):
            s = rng.choice(_TEMPLATES).format(p=area, fn=f"{_C_FILES[path][0]}_{word}")
        elif path.endswith(".sh"):
            s = rng.choice(_SH_TEMPLATES).format(p=area, fn=f"vm_{word}" if "vhost" in path else word)
        else:
            s = rng.choice(_DOC_TEMPLATES).format(fn=word.replace("_", " "))
        if s not in seen:
            seen.add(s)
            pool.append(s)
    rng.shuffle(pool)
    return pool


@dataclass
class _Commit:
    subject: str
    body: str
    changes: dict[str, list[str]]  # path -> new content (lines)
    author: tuple[str, str, str]
    committer: tuple[str, str, str]
    when: int
    change_id: str
    mark: int = 0
    parent: int = 0  # mark of the first parent (0 = none)
    merge: int = 0  # mark of the second parent (0 = none)
    ref: str = "refs/heads/master"


def _slug(rng: random.Random, used: set[str]) -> str:
    for _ in range(50):
        s = f"{rng.choice(_WORDS_V)}_{rng.choice(_WORDS_N)}"
        if s not in used:
            used.add(s)
            return s
    s = f"{rng.choice(_WORDS_V)}_{rng.choice(_WORDS_N)}_{len(used)}"
    used.add(s)
    return s


def _mutate(path: str, lines: list[str], subject: str, rng: random.Random, used: set[str]) -> list[str]:
    """A small, harmless change to one file, in the style of the file."""
    out = list(lines)
    what = subject.split(": ", 1)[-1]
    if path.endswith(".c"):
        prefix = _C_FILES[path][0]
        defines = [i for i, l in enumerate(out) if l.startswith("#define ")]
        if defines and rng.random() < 0.35:
            i = rng.choice(defines)
            name, value = out[i].rsplit(" ", 1)
            v = int(value)
            out[i] = f"{name} {max(1, v * 2 if rng.random() < 0.5 else v // 2 or v + 1)}"
        else:
            named = re.search(r"\b(\w+)\(\)", subject)
            if named and named.group(1).startswith(prefix + "_") and named.group(1) not in used:
                fn = named.group(1)
                used.add(fn)
            else:
                fn = f"{prefix}_{_slug(rng, used)}"
            out += ["", f"/* {what[:1].upper() + what[1:]}. */", "static int", f"{fn}(void *ctx)", "{",
                    "\tif (ctx == NULL) {", "\t\treturn -EINVAL;", "\t}", "", "\treturn 0;", "}"]
    elif path.endswith(".sh"):
        fn = _slug(rng, used)
        out += ["", f"# {what}", f"function {fn}() {{", f'\tnotice "{fn.replace("_", " ")}: $*"', "}"]
    elif path.endswith(".md"):
        if path == "CHANGELOG.md":
            out.insert(4, f"- {what[:1].upper() + what[1:]}.")
        else:
            out += [f"{what[:1].upper() + what[1:]}.", ""]
    elif path.endswith(".py"):
        out += ["", "", f"def {_slug(rng, used)}(client):", f"    return client.call('{what.split()[0]}')"]
    else:
        out.append(f"# {what}")
    return out


_BODIES = (
    "Found while looking at CI failures in the per-patch pool.",
    "No functional change intended.",
    "This makes the behaviour match the specification.",
    "The old code path was only hit under heavy load.",
    "Follow-up to the review comments on the previous series.",
    "Reported by the nightly tests.",
    "Makes debugging CI failures easier.",
    "Keeps the code consistent with the other transports.",
)


def _change_id(seed: int, key: str) -> str:
    return "I" + hashlib.sha1(f"flakebot-demo:{seed}:{key}".encode()).hexdigest()


def _message(c: _Commit) -> str:
    name, email, _ = c.author
    number = 20000 + int(c.change_id[1:7], 16) % 9000
    trailers = [
        f"Change-Id: {c.change_id}",
        f"Signed-off-by: {name} <{email}>",
        f"Reviewed-on: https://review.example.org/c/spdk/spdk/+/{number}",
        f"Tested-by: {_CI}",
        f"Reviewed-by: {c.committer[0]} <{c.committer[1]}>",
    ]
    return f"{c.subject}\n\n{c.body}\n\n" + "\n".join(trailers) + "\n"


def _plan(n_commits: int, culprit_index: int, fix_index: Optional[int], seed: int,
          merge_index: Optional[int]) -> list[_Commit]:
    rng = random.Random(f"flakebot-demo:{seed}")
    tree = _initial_tree()
    used: set[str] = set()
    pool = {area: _subject_pool(area, rng) for area in _AREAS}
    commits: list[_Commit] = []
    mark = 0

    def who() -> tuple[tuple[str, str, str], tuple[str, str, str]]:
        return rng.choice(_AUTHORS), rng.choice(_MAINTAINERS)

    def when(i: float) -> int:
        return EPOCH + int(i * 3600) + rng.randint(-900, 900)

    def new(subject, body, changes, t, parent, ref="refs/heads/master", merge=0) -> _Commit:
        nonlocal mark
        mark += 1
        author, committer = who()
        c = _Commit(subject, body, changes, author, committer, when(t),
                    _change_id(seed, f"{mark}:{subject}"), mark, parent, merge, ref)
        commits.append(c)
        return c

    side_tips: list[_Commit] = []
    fork_state: dict[str, list[str]] = {}
    main_tip = 0
    for i in range(n_commits):
        if i == 0:
            c = new("Initial import of the demo SPDK tree",
                    "A small SPDK-shaped tree for flakebot's demo: the vfio-user restart tests,\n"
                    "test/vhost/common.sh and a few libraries.", dict(tree), 0, 0)
        elif i == culprit_index:
            script = [l for l in tree[RESTART_SCRIPT] if l != REMOVE_NS_LINE]
            tree[RESTART_SCRIPT] = script
            c = new(CULPRIT_SUBJECT,
                    "nvmf_subsystem_remove_listener disconnects the controller anyway, so\n"
                    "removing the namespace first is redundant and only adds an RPC round trip\n"
                    "to every restart iteration.", {RESTART_SCRIPT: script}, i, main_tip)
        elif fix_index is not None and i == fix_index:
            script = list(tree[RESTART_SCRIPT])
            at = script.index(REMOVE_LISTENER_LINE)
            script.insert(at, REMOVE_NS_LINE)
            tree[RESTART_SCRIPT] = script
            c = new(FIX_SUBJECT,
                    "Removing the listener while the namespace is still attached leaves the\n"
                    "guest's NVMe controller dead; lvm2-monitor then blocks on the stale\n"
                    "nvme0n1 at guest shutdown and vm_shutdown_all waits up to its limit.\n"
                    "Remove the namespace first, as before.\n\nFixes #3322",
                    {RESTART_SCRIPT: script}, i, main_tip)
        elif merge_index is not None and i == merge_index - 2:
            # fork the side branch here (from the current tip), then go on with master
            fork_state = {p: tree[p] for p in _SIDE_FILES}
            fork_mark = main_tip
            side_parent = fork_mark
            for k, subject in enumerate(_SIDE_SUBJECTS):
                path = _SIDE_FILES[k]
                fork_state[path] = _mutate(path, fork_state[path], subject, rng, used)
                sc = new(subject, rng.choice(_BODIES), {path: fork_state[path]}, i - 0.5 + k * 0.2,
                         side_parent, ref="refs/heads/topic/nvmf-ns-hide-metadata")
                side_parent = sc.mark
                side_tips.append(sc)
            c = _ordinary(i, tree, rng, used, pool, new, main_tip)
        elif merge_index is not None and i == merge_index:
            for p in _SIDE_FILES:
                tree[p] = fork_state[p]
            c = new(_MERGE_SUBJECT, "* changes:\n  python/rpc: expose hide_metadata in nvmf_subsystem_add_ns\n"
                    "  nvmf: add hide_metadata option to nvmf_subsystem_add_ns",
                    {p: fork_state[p] for p in _SIDE_FILES}, i, main_tip, merge=side_tips[-1].mark)
        else:
            c = _ordinary(i, tree, rng, used, pool, new, main_tip)
        main_tip = c.mark
    return commits


def _ordinary(i, tree, rng, used, pool, new, parent) -> _Commit:
    areas = [a for a, subjects in pool.items() if subjects]
    if not areas:  # a very long history: more generated subjects
        for area in _AREAS:
            pool[area] = _subject_pool(area, rng, curated=False, extra=20)
        areas = list(pool)
    # test/vhost, test/vfio_user and lib/vfio_user are rarer, like upstream
    weights = [0.5 if a in ("test/vhost", "test/vfio_user", "vfio_user", "vfu_tgt") else
               0.6 if a == "CHANGELOG" else 1.0 for a in areas]
    area = rng.choices(areas, weights)[0]
    subject = pool[area].pop()
    files = [p for p in _AREAS[area][0] if p not in _SIDE_FILES]
    chosen = [rng.choice(files)]
    if len(files) > 1 and rng.random() < 0.2:
        other = rng.choice(files)
        if other not in chosen:
            chosen.append(other)
    changes = {}
    for path in chosen:
        tree[path] = _mutate(path, tree[path], subject, rng, used)
        changes[path] = tree[path]
    return new(subject, rng.choice(_BODIES), changes, i, parent)


# --------------------------------------------------------------------------
# Writing it


def _stream(commits: list[_Commit]) -> bytes:
    out: list[bytes] = []
    for c in commits:
        msg = _message(c).encode()
        name, email, tz = c.author
        cname, cemail, ctz = c.committer
        out.append(f"commit {c.ref}\nmark :{c.mark}\n".encode())
        out.append(f"author {name} <{email}> {c.when} {tz}\n".encode())
        out.append(f"committer {cname} <{cemail}> {c.when + 600} {ctz}\n".encode())
        out.append(b"data %d\n" % len(msg) + msg)
        if c.parent:
            out.append(f"from :{c.parent}\n".encode())
        if c.merge:
            out.append(f"merge :{c.merge}\n".encode())
        for path, lines in sorted(c.changes.items()):
            data = ("\n".join(lines) + "\n").encode()
            mode = "100755" if path.endswith(".sh") and lines[:1] == ["#!/usr/bin/env bash"] else "100644"
            out.append(f"M {mode} inline {path}\n".encode() + b"data %d\n" % len(data) + data)
        out.append(b"\n")
    return b"".join(out)


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return env


def _git(path: Path, *args: str, input: Optional[bytes] = None) -> str:
    proc = subprocess.run(["git", *args], cwd=path, input=input, env=_git_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"git {args[0]} failed: {err[-1] if err else proc.returncode}")
    return proc.stdout.decode()


def build_demo_repo(path: Path | str, *, n_commits: int = DEFAULT_N_COMMITS,
                    culprit_index: Optional[int] = None, fix_index: Optional[int] = None,
                    seed: int = 0, with_merge: bool = False,
                    good_index: Optional[int] = None) -> DemoRepo:
    """Create the demo repository at `path` (absent or an empty directory).

    culprit_index, fix_index and good_index index the first-parent chain
    (`DemoRepo.shas`; 0 is the initial import). Defaults: culprit 137 of
    200 (scaled to n_commits), no fix, good = culprit_index // 4.
    with_merge puts a `--no-ff` merge of a two-commit side branch on the
    chain, halfway between good and culprit; its side commits are extra
    (`side_shas`), so the repository then has n_commits + 2 commits.
    """
    path = Path(path)
    if n_commits < 4:
        raise ValueError(f"n_commits must be at least 4 (got {n_commits})")
    if culprit_index is None:
        culprit_index = max(2, min(n_commits - 1, n_commits * DEFAULT_CULPRIT_INDEX // DEFAULT_N_COMMITS))
    if not 1 <= culprit_index < n_commits:
        raise ValueError(f"culprit_index must be in 1..{n_commits - 1} (got {culprit_index})")
    if fix_index is not None and not culprit_index < fix_index < n_commits:
        raise ValueError(f"fix_index must be in {culprit_index + 1}..{n_commits - 1} (got {fix_index})")
    if good_index is None:
        good_index = culprit_index // 4
    if not 0 <= good_index < culprit_index:
        raise ValueError(f"good_index must be in 0..{culprit_index - 1} (got {good_index})")
    merge_index = None
    if with_merge:
        merge_index = (good_index + culprit_index + 1) // 2
        if merge_index - 2 < 1 or merge_index >= culprit_index:
            merge_index = culprit_index - 1
        if merge_index - 2 < 1:
            raise ValueError("with_merge needs at least 3 commits before the culprit")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{path} exists and is not an empty directory")
    path.mkdir(parents=True, exist_ok=True)

    commits = _plan(n_commits, culprit_index, fix_index, seed, merge_index)
    _git(path, "init", "-q")
    _git(path, "symbolic-ref", "HEAD", "refs/heads/master")
    with tempfile.TemporaryDirectory(prefix="flakebot-demo-") as tmp:
        marks_file = Path(tmp) / "marks"
        _git(path, "fast-import", "--quiet", "--force", f"--export-marks={marks_file}",
             input=_stream(commits))
        marks = {}
        for line in marks_file.read_text().splitlines():
            mark, sha = line.split()
            marks[int(mark[1:])] = sha
    _git(path, "update-ref", "-d", "refs/heads/topic/nvmf-ns-hide-metadata")
    _git(path, "reset", "-q", "--hard", "master")

    main = [c for c in commits if c.ref == "refs/heads/master"]
    side = [c for c in commits if c.ref != "refs/heads/master"]
    shas = [marks[c.mark] for c in main]
    assert len(shas) == n_commits
    return DemoRepo(
        path=path,
        shas=shas,
        culprit=shas[culprit_index],
        fix=shas[fix_index] if fix_index is not None else None,
        good=shas[good_index],
        tip=shas[-1],
        culprit_index=culprit_index,
        fix_index=fix_index,
        good_index=good_index,
        merge=shas[merge_index] if merge_index is not None else None,
        side_shas=[marks[c.mark] for c in side],
        subjects={marks[c.mark]: c.subject for c in commits},
    )


def script_at(repo_path: Path | str, sha: str, script: str = RESTART_SCRIPT) -> str:
    """The text of `script` at commit `sha` (e.g. for a simulated host)."""
    return _git(Path(repo_path), "show", f"{sha}:{script}")
