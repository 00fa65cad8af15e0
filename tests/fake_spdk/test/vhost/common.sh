# fake SPDK test/vhost/common.sh
vm_kill_all() {
	echo "fake-spdk: vm_kill_all"
}
