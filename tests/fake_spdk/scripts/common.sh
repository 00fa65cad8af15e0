# fake SPDK scripts/common.sh: the NVMe drives of this "host" (FAKE_SPDK_NVME,
# BDFs separated by spaces), as nvme_in_userspace would find them
function nvme_in_userspace() {
	local bdf
	for bdf in ${FAKE_SPDK_NVME:-}; do
		echo "$bdf"
	done
}
