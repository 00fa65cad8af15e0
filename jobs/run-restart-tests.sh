#!/usr/bin/env bash
# run-restart-tests.sh - flakebot host script: run SPDK's vfio-user restart tests
# N times at one commit on this host and print their console output.
#
# The `local` executor and the Jenkins job both run this script (docs/architecture.md,
# "The host script contract"). Everything it needs comes from the environment:
#
#   FLAKEBOT_COMMIT      commit to test: 40 hex digits, or a ref (e.g. refs/changes/72/22972/3)
#   FLAKEBOT_TESTS       space-separated test names, from:
#                          vfio_user_nvme_restart_vm        test/vfio_user/nvme/vfio_user_restart_vm.sh
#                                                           (before 2022-09: test/vfio_user/vfio_user_restart_vm/
#                                                           vfio_user_restart_vm.sh, run_test name vfio_user_restart_vm)
#                          vfio_user_virtio_blk_restart_vm  test/vfio_user/virtio/fio_restart_vm.sh virtio_blk
#                          vfio_user_virtio_scsi_restart_vm test/vfio_user/virtio/fio_restart_vm.sh virtio_scsi
#   FLAKEBOT_ITERATIONS  iterations per test, 1..1000
#   FLAKEBOT_RUN_ID      request id, printed in the iteration markers ([A-Za-z0-9._-], <= 128)
#   SPDK_DIR             the SPDK git checkout to build and test in
#   VM_IMAGE             the guest image the tests boot
#   VFIO_QEMU_BIN        upstream QEMU >= 10.1 (trees whose test/vhost/common.sh passes -device as JSON)
#   VFIO_QEMU_BIN_LEGACY the old vfio-user QEMU fork (older trees: vfio-user-pci,socket=...); the
#                        script exports the one the tree needs as VFIO_QEMU_BIN for the test
# Optional:
#   FLAKEBOT_CONFIGURE_FLAGS     lab flags after CI's --enable-debug --enable-werror --with-vfio-user
#   FLAKEBOT_SUDO                command giving root when not root (default sudo, run as `sudo -n -E`)
#   FLAKEBOT_KVM_DEV             KVM device to check (default /dev/kvm; tests)
#   FLAKEBOT_ITERATION_TIMEOUT   seconds per test iteration before it is killed (default 900)
#   FLAKEBOT_OUTPUT_BASE         where per-iteration output_dir's go (default $SPDK_DIR/../output/flakebot)
#   FLAKEBOT_SKIP_SETUP=1        skip scripts/setup.sh and the hugepage checks (tests only)
#   FLAKEBOT_MEMINFO             meminfo file to check hugepages in (default /proc/meminfo; tests)
#   FLAKEBOT_USE_RUN_TEST=0      do not wrap the tests in SPDK's run_test (banners, timing)
#
# Before it builds, the script checks that this host can test the checked-out tree
# (jobs/host-checks.sh, docs/hosts.md): the test exists there, the QEMU of the kind the
# tree needs, the image, root, KVM, hugepages, and an NVMe drive when the tree's test
# attaches one. If not: one line `flakebot: infra: <what is missing>`, exit 3, no test.
# Each test runs as SPDK's entry points run it: rootdir set, autotest_common.sh
# sourced, run_test (jobs/spdk-context.sh); SPDK's at_app_exit cleans up after it.
#
# Output: the tests' console output, each iteration between
#   FLAKEBOT-ITERATION-START test=<name> iteration=<i> run_id=<id>
#   FLAKEBOT-ITERATION-END test=<name> iteration=<i> rc=<rc>      (rc 124: iteration timeout)
# Lines of our own start with "flakebot:".
#
# Exit status:
#   0  every iteration of every test passed
#   1  at least one test iteration failed (including an iteration timeout)
#   3  infrastructure problem, no (further) test evidence: bad environment variables,
#      checkout or submodule update failed, this host cannot test this tree (see above),
#      build failed, no free hugepages
#
# Needs root for setup.sh and the tests; uses sudo -n only when not root.

set -euo pipefail
shopt -s inherit_errexit 2> /dev/null || true

readonly EXIT_PASS=0 EXIT_FAIL=1 EXIT_INFRA=3

log() { printf 'flakebot: %s\n' "$*"; }
infra() {
	printf 'flakebot: infra: %s\n' "$*" >&2
	exit "$EXIT_INFRA"
}

jobs_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=jobs/host-checks.sh
source "$jobs_dir/host-checks.sh"
# SPDK CI's build (get_config_params): a debug build with asserts, so assert-type
# flakes reproduce; the lab may add its own flags.
readonly CI_CONFIGURE_FLAGS=(--enable-debug --enable-werror --with-vfio-user)

# ---------------------------------------------------------------- validate input
commit=${FLAKEBOT_COMMIT:-}
tests_raw=${FLAKEBOT_TESTS:-}
iterations=${FLAKEBOT_ITERATIONS:-}
run_id=${FLAKEBOT_RUN_ID:-}
spdk_dir=${SPDK_DIR:-}
iter_timeout=${FLAKEBOT_ITERATION_TIMEOUT:-900}
meminfo=${FLAKEBOT_MEMINFO:-/proc/meminfo}
skip_setup=${FLAKEBOT_SKIP_SETUP:-0}
use_run_test=${FLAKEBOT_USE_RUN_TEST:-1}

is_ref_safe() {
	local ref=$1
	[[ $ref =~ ^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$ ]] || return 1
	[[ $ref != *..* && $ref != *//* && $ref != */ && $ref != *.lock && $ref != */.* && $ref != *.  ]]
}

[[ $commit =~ ^[0-9a-fA-F]{40}$ ]] || is_ref_safe "$commit" \
	|| infra "FLAKEBOT_COMMIT must be 40 hex digits or a plain ref, got '${commit}'"
[[ $run_id =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]] \
	|| infra "FLAKEBOT_RUN_ID must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}, got '${run_id}'"
if ! [[ $iterations =~ ^[0-9]{1,4}$ ]] || ((10#$iterations < 1 || 10#$iterations > 1000)); then
	infra "FLAKEBOT_ITERATIONS must be 1..1000, got '${iterations}'"
fi
iterations=$((10#$iterations))
if ! [[ $iter_timeout =~ ^[0-9]{1,6}$ ]] || ((10#$iter_timeout < 1)); then
	infra "FLAKEBOT_ITERATION_TIMEOUT must be a whole number of seconds, got '${iter_timeout}'"
fi
iter_timeout=$((10#$iter_timeout))

read -r -a tests <<< "$tests_raw"
((${#tests[@]} > 0)) || infra "FLAKEBOT_TESTS is empty"
known_tests="vfio_user_nvme_restart_vm vfio_user_virtio_blk_restart_vm vfio_user_virtio_scsi_restart_vm"
for t in "${tests[@]}"; do
	[[ $t =~ ^[A-Za-z0-9_]+$ && " $known_tests " == *" $t "* ]] \
		|| infra "unknown test '${t}' in FLAKEBOT_TESTS (known: ${known_tests})"
done
read -r -a lab_flags <<< "${FLAKEBOT_CONFIGURE_FLAGS:-}"
for f in "${lab_flags[@]}"; do
	[[ $f =~ ^--[A-Za-z0-9][A-Za-z0-9_-]*(=[A-Za-z0-9_.,:/+=-]*)?$ ]] \
		|| infra "FLAKEBOT_CONFIGURE_FLAGS: '${f}' is not a --flag[=value]"
done

[[ -n $spdk_dir && -d $spdk_dir ]] || infra "SPDK_DIR is not a directory: '${spdk_dir}'"
spdk_dir=$(cd "$spdk_dir" && pwd -P)
git -C "$spdk_dir" rev-parse --git-dir > /dev/null 2>&1 || infra "SPDK_DIR is not a git checkout: ${spdk_dir}"
output_base=${FLAKEBOT_OUTPUT_BASE:-$spdk_dir/../output/flakebot}

SUDO=()
if ((EUID != 0)); then
	read -r -a SUDO <<< "${FLAKEBOT_SUDO:-sudo}"
	command -v "${SUDO[0]}" > /dev/null || infra "not root and ${SUDO[0]} is missing"
	SUDO+=(-n -E)
fi

# ---------------------------------------------------------------- checkout
log "run ${run_id}: commit ${commit}, tests ${tests[*]}, ${iterations} iteration(s), host ${HOSTNAME:-unknown}"
cd "$spdk_dir"

sha=$(git rev-parse --verify --quiet "${commit}^{commit}" || true)
if [[ -z $sha ]]; then
	log "fetching ${commit}"
	git fetch --quiet origin "$commit" || infra "cannot fetch ${commit}"
	sha=$(git rev-parse --verify --quiet "FETCH_HEAD^{commit}") || infra "cannot resolve ${commit}"
fi
git checkout --quiet --force --detach "$sha" || infra "checkout of ${sha} failed"
# sync first: submodule URLs move (xnvme, 2024-05), and update alone keeps the old one
git submodule --quiet sync --recursive || infra "submodule sync at ${sha} failed"
git submodule --quiet update --init --recursive --force || infra "submodule update at ${sha} failed"
log "checked out ${sha}"

# ---------------------------------------------------------------- can this host test this tree?
hc_check_all "$spdk_dir" "${tests[@]}" || infra "$HC_MISSING"
export VFIO_QEMU_BIN=$HC_QEMU VM_IMAGE
# test/vhost/common.sh needs QEMU_BIN to exist (SPDK's own cleanup too); the vfio-user
# tests set it to VFIO_QEMU_BIN themselves
export QEMU_BIN=$HC_QEMU
log "QEMU for this tree: ${VFIO_QEMU_BIN}"

# ---------------------------------------------------------------- build once per commit
git_dir=$(git rev-parse --absolute-git-dir)
stamp=$git_dir/flakebot-built-commit
configure_flags=("${CI_CONFIGURE_FLAGS[@]}" "${lab_flags[@]}")
built="$sha ${configure_flags[*]}"
if [[ -f $stamp && $(< "$stamp") == "$built" ]]; then
	log "build of ${sha} is current, skipping build"
else
	rm -f "$stamp"
	log "building ${sha}"
	{ ./configure "${configure_flags[@]}" && make -j"$(nproc)"; } || infra "build of ${sha} failed"
	printf '%s\n' "$built" > "$stamp"
fi

# ---------------------------------------------------------------- hugepages
hugepages_free() {
	local free
	free=$(awk '$1 == "HugePages_Free:" { print $2; exit }' "$meminfo" 2> /dev/null || true)
	[[ $free =~ ^[0-9]+$ ]] || free=0
	printf '%s\n' "$free"
}

check_hugepages() {
	[[ $skip_setup == 1 ]] && return 0
	local free
	free=$(hugepages_free)
	((free > 0)) || infra "no free hugepages ($1; HugePages_Free=${free} in ${meminfo})"
}

if [[ $skip_setup != 1 ]]; then
	"${SUDO[@]}" env HUGEMEM=2048 HUGENODE=0 ./scripts/setup.sh || infra "scripts/setup.sh failed"
	check_hugepages "after setup.sh"
fi

# ---------------------------------------------------------------- cleanup between iterations
mkdir -p "$output_base" || infra "cannot create ${output_base}"
cleanup_leftovers() {
	# SPDK's own at_app_exit (vm_kill_all, vhost_kill) in SPDK's context
	"${SUDO[@]}" env rootdir="$spdk_dir" output_dir="$output_base" "$jobs_dir/spdk-context.sh" cleanup || true
	# anything still running from this tree or the vfio-user QEMU (patterns are full paths)
	"${SUDO[@]}" pkill -KILL -f -- "^${VFIO_QEMU_BIN}( |$)" 2> /dev/null || true
	"${SUDO[@]}" pkill -KILL -f -- "^${spdk_dir}/build/bin/" 2> /dev/null || true
}

# ---------------------------------------------------------------- run
# `timeout` puts the test in its own process group, so a signal to ours (the
# executor's cancel/timeout) would miss it: forward it, clean up, stop.
child=0
# shellcheck disable=SC2317,SC2329  # invoked by the trap
on_signal() {
	trap - TERM INT HUP
	log "interrupted, stopping the running test"
	if ((child > 0)); then
		kill -TERM "$child" 2> /dev/null || true
		wait "$child" 2> /dev/null || true
	fi
	cleanup_leftovers
	exit "$EXIT_INFRA"
}
trap on_signal TERM INT HUP

run_one() { # $1 test name, $2 output_dir; prints the test's output; returns its status
	local name=$1 dir=$2 status=0
	hc_plan "$spdk_dir" "$name" || infra "${name} vanished from the tree"
	local -a argv=("$spdk_dir/$HC_SCRIPT")
	[[ -z $HC_ARGS ]] || argv+=("$HC_ARGS")
	if [[ $use_run_test == 1 ]]; then
		# as SPDK's entry points: run_test prints the START/END TEST banners (under the
		# tree's own name: spdklog maps old ones) and writes timing.txt
		argv=("$jobs_dir/spdk-context.sh" run "$HC_NAME" "${argv[@]}")
	fi
	timeout --kill-after=30 "$iter_timeout" "${SUDO[@]}" env rootdir="$spdk_dir" output_dir="$dir" \
		"${argv[@]}" < /dev/null 2>&1 &
	child=$!
	wait "$child" || status=$?
	child=0
	return "$status"
}

overall=$EXIT_PASS
for name in "${tests[@]}"; do
	for ((i = 1; i <= iterations; i++)); do
		dir=$output_base/$run_id/$name/$i
		rm -rf "$dir"
		mkdir -p "$dir" || infra "cannot create output_dir ${dir}"
		echo "FLAKEBOT-ITERATION-START test=${name} iteration=${i} run_id=${run_id}"
		rc=0
		run_one "$name" "$dir" || rc=$?
		echo "FLAKEBOT-ITERATION-END test=${name} iteration=${i} rc=${rc}"
		((rc == 0)) || overall=$EXIT_FAIL
		cleanup_leftovers
		check_hugepages "after ${name} iteration ${i}"
	done
done

log "run ${run_id} finished, exit ${overall}"
exit "$overall"
