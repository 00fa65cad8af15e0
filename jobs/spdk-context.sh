#!/usr/bin/env bash
# spdk-context.sh - run one SPDK test, or clean up after one, in SPDK's own test
# context, as SPDK's entry points (autotest.sh, test/vfio_user/vfio_user.sh) do:
# `rootdir` set, test/common/autotest_common.sh sourced (errexit, extglob, the
# build config, run_test and its START/END TEST banners).
#
#   rootdir=SPDK output_dir=DIR spdk-context.sh run NAME SCRIPT [ARGS...]
#   rootdir=SPDK spdk-context.sh cleanup
#
# Called by run-restart-tests.sh (under timeout and sudo), never by hand.
set -e
rootdir=$(readlink -f "${rootdir:?rootdir must name the SPDK tree}")
export rootdir
# shellcheck source=/dev/null
source "$rootdir/test/common/autotest_common.sh"

# Kill every VM and vhost app the test left, with SPDK's own at_app_exit
# (vm_kill_all, vhost_kill), in a subshell as autotest_cleanup's vhost_reap does.
# extglob again: trees before 2023-08 did not enable it in autotest_common.sh, and
# test/vhost/common.sh does not parse without it.
reap_vms() (
	shopt -s extglob
	# shellcheck source=/dev/null
	source "$rootdir/test/vhost/common.sh" &> /dev/null || exit 0
	if declare -F at_app_exit > /dev/null; then at_app_exit; else vm_kill_all; fi
)

case ${1:-} in
	run)
		shift
		trap reap_vms EXIT
		run_test "$@"
		;;
	cleanup) reap_vms ;;
	*)
		echo "usage: spdk-context.sh run NAME SCRIPT [ARGS...] | cleanup" >&2
		exit 2
		;;
esac
