#!/usr/bin/env bash
# fake test/vfio_user/virtio/fio_restart_vm.sh <virtio_blk|virtio_scsi> [--iso]
rootdir=$(readlink -f "$(dirname "$0")/../../..")
case ${1:-} in
	virtio_blk | virtio_scsi) ;;
	*)
		echo "usage: $0 virtio_blk|virtio_scsi" >&2
		exit 2
		;;
esac
exec "$rootdir/test/fake_test.sh" "vfio_user_${1}_restart_vm"
