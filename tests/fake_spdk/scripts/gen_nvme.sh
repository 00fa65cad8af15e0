#!/usr/bin/env bash
# fake SPDK scripts/gen_nvme.sh: the bdev JSON config for the local NVMe drives
set -e
rootdir=$(readlink -f "$(dirname "$0")")/..
source "$rootdir/scripts/common.sh"
bdfs=($(nvme_in_userspace))
cfg=()
for i in "${!bdfs[@]}"; do
	cfg+=("{\"method\": \"bdev_nvme_attach_controller\", \"params\": {\"trtype\": \"PCIe\", \"name\": \"Nvme$i\", \"traddr\": \"${bdfs[i]}\"}}")
done
IFS=,
echo "{\"subsystem\": \"bdev\", \"config\": [${cfg[*]}]}"
