# fake SPDK test/common/autotest_common.sh: what the restart tests and the host
# script use of the real one, with its needs: `rootdir` set by the caller (every
# SPDK entry point sets it; this file never does), errexit, nullglob, extglob.
set -e
shopt -s nullglob
shopt -s extglob

if [ -z "${output_dir:-}" ]; then
	mkdir -p "$rootdir/../output"
	export output_dir="$rootdir/../output"
fi
touch "$output_dir/.backtrace.lock"

if [[ -e $rootdir/mk/config.mk ]]; then
	build_config=$(< "$rootdir/mk/config.mk")
	source <(echo "${build_config//\?=/=}")
else
	source "$rootdir/CONFIG"
fi
source "$rootdir/scripts/common.sh"

function timing_enter() { _timing_start=$SECONDS; }
function timing_exit() { echo "autotest;$1 $((SECONDS - _timing_start))" >> "$output_dir/timing.txt"; }

function run_test() {
	if [ $# -le 1 ]; then
		echo "Not enough parameters"
		echo "usage: run_test test_name test_script [script_params]"
		exit 1
	fi
	local test_name="$1" start=$SECONDS
	shift
	echo "************************************"
	echo "START TEST $test_name"
	echo "************************************"
	timing_enter "$test_name"
	"$@"
	timing_exit "$test_name"
	echo "************************************"
	echo "END TEST $test_name (in $((SECONDS - start))s)"
	echo "************************************"
	echo "top_level $test_name" >> "$output_dir/test_completions.txt"
}

# BDFs of the NVMe drives SPDK may use (scripts/gen_nvme.sh), as the real one
function get_nvme_bdfs() {
	local bdfs=()
	bdfs=($("$rootdir/scripts/gen_nvme.sh" | jq -r '.config[].params.traddr'))
	if ((${#bdfs[@]} == 0)); then
		echo "No bdevs found" >&2
		return 1
	fi
	printf '%s\n' "${bdfs[@]}"
}
