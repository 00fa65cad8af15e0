#!/usr/bin/env bash
# fake SPDK scripts/setup.sh: "reserves" hugepages by writing a fake meminfo
echo "fake-spdk: setup.sh HUGEMEM=${HUGEMEM:-} HUGENODE=${HUGENODE:-}"
echo "0000:00:04.0 (8086 0953): nvme -> vfio-pci"
if [[ -n ${FLAKEBOT_MEMINFO:-} && $FLAKEBOT_MEMINFO != /proc/* ]]; then
	printf 'MemAvailable:    8192000 kB\nHugePages_Total:    1024\nHugePages_Free:     %s\nHugepagesize:       2048 kB\n' \
		"${FAKE_HUGEPAGES_FREE:-1024}" > "$FLAKEBOT_MEMINFO"
fi
