#!/usr/bin/env bash
# host-checks.sh - can this host test these tests at the checked-out SPDK tree?
#
# The one source of truth for "cannot test here" (docs/hosts.md). Sourced by
# run-restart-tests.sh (hc_check_all after the checkout, before the build), run by
# the Jenkins job before the host script, and by `flakebot doctor`:
#
#   host-checks.sh --check [--tsv] [--commit C] TEST...     (SPDK_DIR in the environment)
#
# Everything is decided from the tree, never from commit SHAs (forks and backports
# move them): which script runs the test and under which run_test name, which
# `-device` syntax test/vhost/common.sh hands QEMU (JSON: upstream QEMU >= 10.1;
# `vfio-user-pci,socket=`: the old vfio-user fork), whether the test attaches a
# physical NVMe drive (then SPDK's own get_nvme_bdfs must find one here).
#
# Environment (the host names its pieces; the FLAKEBOT_* paths are also the test
# interface, docs/hosts.md):
#   VFIO_QEMU_BIN          upstream QEMU >= 10.1 with vfio-user-pci (JSON -device)
#   VFIO_QEMU_BIN_LEGACY   the old vfio-user QEMU fork (vfio-user-pci,socket=...)
#   VM_IMAGE               the guest image (root/root ssh)
#   QEMU_IMG_BIN           qemu-img (default: qemu-img on PATH, as SPDK)
#   FLAKEBOT_SUDO          command giving root when not root (default sudo; run with -n)
#   FLAKEBOT_KVM_DEV       the KVM device (default /dev/kvm)
#   FLAKEBOT_MEMINFO       meminfo file for hugepages (default /proc/meminfo)
#   FLAKEBOT_SKIP_SETUP=1  no hugepage check (tests only, as in run-restart-tests.sh)
#
# --check prints one line `flakebot: infra: <what is missing>` (exit 1) or
# `flakebot: host can test ...` (exit 0); --tsv prints every check as
# `ok|missing|note<TAB>check<TAB>found<TAB>fix` instead (a note never makes the
# host unable to test: the QEMU for the other side of a45553b220). Exit 2: bad usage.

# Test name -> script (relative to the tree) and run_test name, newest layout first.
# The old layout (until 2022-09) ran the NVMe test as vfio_user_restart_vm; flakebot
# stores it under its own name (spdklog.RENAMED_TESTS maps the banner).
hc_layouts() { # $1 flakebot test name; prints "script|run_test name|args" per layout
	case $1 in
		vfio_user_nvme_restart_vm)
			echo "test/vfio_user/nvme/vfio_user_restart_vm.sh|vfio_user_nvme_restart_vm|"
			echo "test/vfio_user/vfio_user_restart_vm/vfio_user_restart_vm.sh|vfio_user_restart_vm|"
			;;
		vfio_user_virtio_blk_restart_vm)
			echo "test/vfio_user/virtio/fio_restart_vm.sh|vfio_user_virtio_blk_restart_vm|virtio_blk"
			;;
		vfio_user_virtio_scsi_restart_vm)
			echo "test/vfio_user/virtio/fio_restart_vm.sh|vfio_user_virtio_scsi_restart_vm|virtio_scsi"
			;;
	esac
}

# hc_plan TREE TEST: sets HC_SCRIPT, HC_NAME, HC_ARGS from the first layout the tree has
# (the callers read them).
# shellcheck disable=SC2034
hc_plan() {
	local tree=$1 layout
	HC_SCRIPT='' HC_NAME='' HC_ARGS=''
	while IFS= read -r layout; do
		IFS='|' read -r HC_SCRIPT HC_NAME HC_ARGS <<< "$layout"
		[[ -f $tree/$HC_SCRIPT ]] && return 0
	done < <(hc_layouts "$2")
	HC_SCRIPT='' HC_NAME='' HC_ARGS=''
	return 1
}

# The -device syntax the tree's test/vhost/common.sh gives QEMU: json | legacy | "".
hc_device_syntax() {
	local common=$1/test/vhost/common.sh
	if grep -qF '"driver":"vfio-user-pci"' "$common" 2> /dev/null; then
		echo json
	elif grep -qF 'vfio-user-pci,socket=' "$common" 2> /dev/null; then
		echo legacy
	fi
}

# The kind of a QEMU binary: json (>= 10.1 with vfio-user-pci), legacy (older, with
# vfio-user-pci: the fork), or a sentence saying why it is neither.
hc_qemu_kind() {
	local bin=$1 version help major minor
	[[ -n $bin ]] || { echo "not set"; return; }
	[[ -f $bin && -x $bin ]] || { echo "$bin: not an executable file"; return; }
	# whole outputs, never `| grep -q` (an early exit is SIGPIPE, a failure under pipefail)
	version=$("$bin" --version 2> /dev/null) || true
	if ! [[ $version =~ version\ ([0-9]+)\.([0-9]+) ]]; then
		echo "$bin: --version names no QEMU version"
		return
	fi
	major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
	help=$("$bin" -device help 2> /dev/null) || true
	if [[ $help != *'"vfio-user-pci"'* ]]; then
		echo "$bin: QEMU $major.$minor without vfio-user-pci"
	elif ((major > 10 || (major == 10 && minor >= 1))); then
		echo json
	else
		echo legacy
	fi
}

hc_qemu_version() {
	local v
	v=$("$1" --version 2> /dev/null) || true
	[[ $v =~ version\ [0-9]+\.[0-9]+(\.[0-9]+)? ]] && echo "${BASH_REMATCH[0]}"
	return 0
}

# Rows: status, check, found, fix. HC_MISSING: the missing pieces, "; "-joined.
HC_ROWS=()
HC_MISSING=''
hc_row() {
	HC_ROWS+=("$1"$'\t'"$2"$'\t'"$3"$'\t'"$4")
	if [[ $1 == missing ]]; then
		HC_MISSING+=${HC_MISSING:+; }"$2: $3"
	fi
}

# NVMe drives SPDK's own get_nvme_bdfs finds, in the tree's context (rootdir, its
# build config and helpers), in a subshell so nothing leaks into the caller.
hc_nvme_bdfs() (
	rootdir=$1
	output_dir=$(mktemp -d) || exit 1
	trap 'rm -rf "$output_dir"' EXIT
	export rootdir output_dir
	# shellcheck source=/dev/null
	source "$rootdir/test/common/autotest_common.sh" > /dev/null 2>&1 || exit 1
	get_nvme_bdfs 2> /dev/null
)

hc_hugepages() { # prints "ok|missing<TAB>found"
	local meminfo=${FLAKEBOT_MEMINFO:-/proc/meminfo} size free avail
	if [[ ! -r $meminfo ]]; then
		printf 'missing\t%s unreadable\n' "$meminfo"
		return
	fi
	size=$(awk '$1 == "Hugepagesize:" { print $2; exit }' "$meminfo")
	free=$(awk '$1 == "HugePages_Free:" { print $2; exit }' "$meminfo")
	avail=$(awk '$1 == "MemAvailable:" { print $2; exit }' "$meminfo")
	[[ $free =~ ^[0-9]+$ ]] || free=0
	[[ $avail =~ ^[0-9]+$ ]] || avail=0
	if [[ -z $size ]]; then
		printf 'missing\tno Hugepagesize in %s (kernel without hugetlbfs)\n' "$meminfo"
	elif ((free > 0)); then
		printf 'ok\t%s free\n' "$free"
	elif ((avail >= 2048 * 1024)); then
		# setup.sh reserves HUGEMEM=2048 MB at the start of every run
		printf 'ok\tnone reserved, %s MB available for setup.sh\n' "$((avail / 1024))"
	else
		printf 'missing\tnone free, %s MB available (setup.sh needs 2048)\n' "$((avail / 1024))"
	fi
}

# hc_check_all TREE TEST...: fill HC_ROWS/HC_MISSING; export the QEMU the tree needs
# as HC_QEMU (the host script passes it on as VFIO_QEMU_BIN). 0: testable here.
hc_check_all() {
	local tree=$1 t syntax kind bin var candidates=() need_nvme=0 need_fio=0 found
	shift
	HC_ROWS=() HC_MISSING='' HC_QEMU=''
	for t in "$@"; do
		if hc_plan "$tree" "$t"; then
			hc_row ok "test $t" "$HC_SCRIPT" ""
			grep -q 'get_nvme_bdfs' "$tree/$HC_SCRIPT" && need_nvme=1
			[[ $HC_SCRIPT == */virtio/* ]] && need_fio=1
		else
			hc_row missing "test $t" "not in this tree" "test a commit that has it (docs/hosts.md, eras)"
		fi
	done

	syntax=$(hc_device_syntax "$tree")
	case $syntax in
		json) candidates=(VFIO_QEMU_BIN) ;;
		legacy) candidates=(VFIO_QEMU_BIN_LEGACY VFIO_QEMU_BIN) ;;
	esac
	if [[ -z $syntax ]]; then
		hc_row missing "QEMU" "test/vhost/common.sh passes no vfio-user-pci device" \
			"a tree with SPDK's vfio-user tests"
	else
		found=''
		# the variables the host sets, then SPDK's default path
		for var in "${candidates[@]}" default; do
			if [[ $var == default ]]; then
				bin=/usr/local/qemu/vfio-user-latest/bin/qemu-system-x86_64
				[[ -e $bin ]] || continue
			else
				bin=${!var:-}
				[[ -n $bin ]] || { found+=${found:+, }"$var not set" && continue; }
			fi
			kind=$(hc_qemu_kind "$bin")
			if [[ $kind == "$syntax" ]]; then
				HC_QEMU=$bin
				break
			fi
			[[ $kind == json || $kind == legacy ]] && kind="$bin: $(hc_qemu_version "$bin") ($kind -device)"
			found+=${found:+, }$kind
		done
		if [[ $syntax == json ]]; then
			if [[ -n $HC_QEMU ]]; then
				hc_row ok "QEMU >= 10.1 (JSON -device)" "$HC_QEMU $(hc_qemu_version "$HC_QEMU")" ""
			else
				hc_row missing "QEMU >= 10.1 (JSON -device)" "$found" \
					"install QEMU >= 10.1, set VFIO_QEMU_BIN"
			fi
		elif [[ -n $HC_QEMU ]]; then
			hc_row ok "QEMU vfio-user fork" "$HC_QEMU $(hc_qemu_version "$HC_QEMU")" ""
		else
			hc_row missing "QEMU vfio-user fork" "$found" \
				"build oracle/qemu vfio-user-p3.0, set VFIO_QEMU_BIN_LEGACY"
		fi
	fi

	# the QEMU this tree does not need: a note (a bisection may cross a45553b220)
	local other=VFIO_QEMU_BIN want=json
	[[ $syntax == json ]] && other=VFIO_QEMU_BIN_LEGACY want=legacy
	if [[ -n $syntax ]]; then
		bin=${!other:-}
		if [[ -z $bin ]]; then
			found="not set"
		else
			kind=$(hc_qemu_kind "$bin")
			[[ $kind == json || $kind == legacy ]] && kind="$bin $(hc_qemu_version "$bin") ($kind -device)"
			found=$kind
		fi
		hc_row note "$other (other trees)" "$found" "$want -device: trees on the other side of a45553b220"
	fi

	local qemu_img=${QEMU_IMG_BIN:-qemu-img}
	if found=$(command -v "$qemu_img"); then
		hc_row ok "qemu-img" "$found" ""
	else
		hc_row missing "qemu-img" "$qemu_img not found" "install qemu-img (SPDK pkgdep)"
	fi
	if [[ -z ${VM_IMAGE:-} ]]; then
		hc_row missing "VM_IMAGE" "not set" "set VM_IMAGE to the guest image"
	elif [[ -f $VM_IMAGE && -r $VM_IMAGE ]]; then
		hc_row ok "VM_IMAGE" "$VM_IMAGE" ""
	else
		hc_row missing "VM_IMAGE" "$VM_IMAGE unreadable" "set VM_IMAGE to the guest image"
	fi
	if found=$(command -v sshpass); then
		hc_row ok "sshpass" "$found" ""
	else
		hc_row missing "sshpass" "not found" "install sshpass (SPDK pkgdep)"
	fi
	if ((need_fio)); then
		if found=$(command -v "${FIO_BIN:-fio}"); then
			hc_row ok "fio" "$found" ""
		else
			hc_row missing "fio" "not found" "install fio, or set FIO_BIN"
		fi
	fi

	local sudo_cmd=${FLAKEBOT_SUDO:-sudo}
	if ((EUID == 0)); then
		hc_row ok "root" "running as root" ""
	elif $sudo_cmd -n true > /dev/null 2>&1; then
		hc_row ok "root" "$sudo_cmd -n works" ""
	else
		hc_row missing "root" "not root, $sudo_cmd -n fails" "a NOPASSWD sudoers line (docs/hosts.md)"
	fi
	local kvm=${FLAKEBOT_KVM_DEV:-/dev/kvm}
	if [[ -r $kvm && -w $kvm ]]; then
		hc_row ok "KVM" "$kvm" ""
	else
		hc_row missing "KVM" "$kvm not usable" "enable virtualisation, load kvm"
	fi
	if [[ ${FLAKEBOT_SKIP_SETUP:-0} != 1 ]]; then
		local st
		IFS=$'\t' read -r st found < <(hc_hugepages)
		local fix=''
		[[ $st == ok ]] || fix="free memory, or reserve: HUGEMEM=2048 scripts/setup.sh"
		hc_row "$st" "hugepages" "$found" "$fix"
	fi
	if ((need_nvme)); then
		local bdfs
		bdfs=$(hc_nvme_bdfs "$tree" | tr '\n' ' ') || true
		if [[ -n ${bdfs// /} ]]; then
			hc_row ok "NVMe drive (this era)" "${bdfs% }" ""
		else
			hc_row missing "NVMe drive (this era)" "get_nvme_bdfs finds none" \
				"a spare NVMe drive; trees from 1ffe4671ca need none"
		fi
	fi
	[[ -z $HC_MISSING ]]
}

hc_main() {
	local tsv=0 commit='' tree rc=0 row
	while (($# > 0)); do
		case $1 in
			--check) shift ;;
			--tsv) tsv=1 && shift ;;
			--commit)
				commit=${2:-}
				shift 2 || { echo "host-checks.sh: --commit needs a value" >&2 && return 2; }
				;;
			--*) echo "host-checks.sh: unknown option $1" >&2 && return 2 ;;
			*) break ;;
		esac
	done
	(($# > 0)) || { echo "usage: host-checks.sh --check [--tsv] [--commit C] TEST..." >&2 && return 2; }
	local spdk=${SPDK_DIR:-}
	[[ -n $spdk && -d $spdk ]] || { echo "flakebot: infra: SPDK_DIR is not a directory: '$spdk'" && return 1; }
	tree=$spdk
	if [[ -n $commit ]]; then
		if ! [[ $commit =~ ^[A-Za-z0-9][A-Za-z0-9._/^~-]{0,199}$ && $commit != *..* ]]; then
			echo "host-checks.sh: bad commit '$commit'" >&2
			return 2
		fi
		tree=$(mktemp -d) || return 1
		# shellcheck disable=SC2064  # expand now: the trap outlives this function
		trap "rm -rf '$tree'" EXIT
		if ! git -C "$spdk" archive --format=tar "$commit^{commit}" 2> /dev/null | tar -x -C "$tree"; then
			echo "flakebot: infra: cannot read commit $commit in $spdk"
			return 1
		fi
	fi
	hc_check_all "$tree" "$@" || rc=1
	if ((tsv)); then
		for row in "${HC_ROWS[@]}"; do printf '%s\n' "$row"; done
	elif ((rc)); then
		echo "flakebot: infra: $HC_MISSING"
	else
		echo "flakebot: host can test $* here (QEMU $HC_QEMU)"
	fi
	return "$rc"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	set -uo pipefail
	hc_main "$@"
	exit $?
fi
