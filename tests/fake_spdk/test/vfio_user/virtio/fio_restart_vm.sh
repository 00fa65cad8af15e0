#!/usr/bin/env bash
# fake test/vfio_user/virtio/fio_restart_vm.sh <virtio_blk|virtio_scsi>
testdir=$(readlink -f $(dirname $0))
rootdir=$(readlink -f $testdir/../../..)
source $rootdir/test/common/autotest_common.sh
source $rootdir/test/vfio_user/common.sh

rpc_cmd() { :; }

virtio_type=$1
case $virtio_type in
	virtio_blk | virtio_scsi) ;;
	*)
		echo "usage: $0 virtio_blk|virtio_scsi" >&2
		exit 2
		;;
esac

vhosttestinit

rpc_cmd bdev_aio_create $TEST_DIR/aio_file Nvme0n1 4096

vm_setup --disk-type=vfio_user_virtio --force=1 --os=$VM_IMAGE --disks="1"
vm_run 1

"$rootdir/test/fake_test.sh" "vfio_user_${virtio_type}_restart_vm"

vhosttestfini
