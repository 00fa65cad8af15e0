#!/usr/bin/env bash
# fake test/vfio_user/nvme/vfio_user_restart_vm.sh
rootdir=$(readlink -f "$(dirname "$0")/../../..")
rpc_cmd() { :; }
# the #3322 shape flakebot.sim's Scenario.from_tree reads:
rpc_cmd nvmf_subsystem_remove_ns nqn.2019-07.io.spdk:cnode1 1
rpc_cmd nvmf_subsystem_remove_listener nqn.2019-07.io.spdk:cnode1 -t vfiouser -a /var/run/vfio-user -s 0
exec "$rootdir/test/fake_test.sh" vfio_user_nvme_restart_vm
