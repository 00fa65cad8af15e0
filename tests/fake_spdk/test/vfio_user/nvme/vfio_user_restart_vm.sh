#!/usr/bin/env bash
# fake test/vfio_user/nvme/vfio_user_restart_vm.sh
testdir=$(readlink -f $(dirname $0))
rootdir=$(readlink -f $testdir/../../..)
source $rootdir/test/common/autotest_common.sh
source $rootdir/test/vfio_user/common.sh

rpc_cmd() { :; }

vhosttestinit

rpc_cmd bdev_malloc_create -b Malloc0 $MALLOC_BDEV_SIZE $MALLOC_BLOCK_SIZE
rpc_cmd nvmf_subsystem_add_ns nqn.2019-07.io.spdk:cnode1 Malloc0

vm_setup --disk-type=vfio_user --force=1 --os=$VM_IMAGE --memory=512 --disks="1"
vm_run 1

# the #3322 shape flakebot.demo.hosts's Scenario.from_tree reads:
rpc_cmd nvmf_subsystem_remove_ns nqn.2019-07.io.spdk:cnode1 1
rpc_cmd nvmf_subsystem_remove_listener nqn.2019-07.io.spdk:cnode1 -t vfiouser -a /var/run/vfio-user -s 0
"$rootdir/test/fake_test.sh" vfio_user_nvme_restart_vm

vhosttestfini
