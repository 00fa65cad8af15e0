#!/usr/bin/env bash
# The body of the fake restart tests (after their VM booted): check the output_dir
# is fresh, pick this iteration's outcome, print SPDK-format output via
# flakebot.demo.hosts without its own banners (run_test prints those).
set -euo pipefail
name=$1
if [[ -z ${output_dir:-} || ! -d $output_dir ]]; then
	echo "fake-spdk: output_dir missing: '${output_dir:-}'" >&2
	exit 2
fi
if [[ -e $output_dir/fake-test.ran ]]; then
	echo "fake-spdk: output_dir reused: $output_dir" >&2
	exit 2
fi
IFS=, read -r -a outcomes <<< "${FAKE_SPDK_OUTCOME:-pass}"
n=0
if [[ -n ${FAKE_SPDK_STATE:-} ]]; then
	counter=$FAKE_SPDK_STATE/count-$name
	n=$(cat "$counter" 2> /dev/null || echo 0)
	echo $((n + 1)) > "$counter"
fi
if ((n >= ${#outcomes[@]})); then
	outcome=${outcomes[-1]}
else
	outcome=${outcomes[n]}
fi
touch "$output_dir/fake-test.ran"
if [[ $outcome == hang ]]; then
	echo "fake-spdk: hanging"
	if [[ -n ${FAKE_SPDK_STATE:-} ]]; then echo $$ > "$FAKE_SPDK_STATE/pid-$name"; fi
	exec sleep 600
fi
"${FAKE_SPDK_PYTHON:-python3}" -m flakebot.demo.hosts --test "$name" --outcome "$outcome" --fmt plain \
	--era "${FAKE_SPDK_ERA:-2024}" --seed "$n" --rc | grep -vE '^\*+$|^(START|END) TEST '
