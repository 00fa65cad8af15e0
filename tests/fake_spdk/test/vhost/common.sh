# fake SPDK test/vhost/common.sh: the parts the restart tests and SPDK's cleanup
# use, with the real one's needs: `rootdir` (sources by it), extglob (vm_list_all
# does not parse without it), QEMU_BIN and qemu-img present, the image.

: ${VHOST_DIR="$HOME/vhost_test"}
: ${QEMU_BIN:="/usr/local/qemu/vhost-latest/bin/qemu-system-x86_64"}
: ${QEMU_IMG_BIN="qemu-img"}

TEST_DIR=$(readlink -f $rootdir/..)
VM_DIR=$VHOST_DIR/vms
TARGET_DIR=$VHOST_DIR/vhost

VM_IMAGE=${VM_IMAGE:-"$DEPENDENCY_DIR/vhost/spdk_test_image.qcow2"}

WORKDIR=$(readlink -f "$(dirname "$0")")

if ! hash $QEMU_IMG_BIN $QEMU_BIN; then
	echo 'ERROR: QEMU is not installed on this system. Unable to run vhost tests.' >&2
	return 1
fi

mkdir -p $VHOST_DIR
mkdir -p $VM_DIR
mkdir -p $TARGET_DIR

source $rootdir/test/vhost/common/autotest.config

function vhosttestinit() {
	if [[ ! -f $VM_IMAGE ]]; then
		echo "$VM_IMAGE is missing" >&2
		return 1
	fi
}

function vhosttestfini() { :; }

function message() {
	local verbose_out=""
	local msg_type="$1"
	shift
	echo -e "${msg_type}${verbose_out}: $*"
}

function error() {
	echo "==========="
	message "ERROR" "$@"
	echo "==========="
	return 1
}

function warning() { message "WARN" "$@"; }
function notice() { message "INFO" "$@"; }

function vm_kill() {
	local vm_dir="$VM_DIR/$1" vm_pid
	[[ -r $vm_dir/qemu.pid ]] || return 0
	vm_pid="$(cat $vm_dir/qemu.pid)"
	notice "Killing virtual machine $vm_dir (pid=$vm_pid)"
	if /bin/kill $vm_pid 2> /dev/null; then
		notice "process $vm_pid killed"
	fi
	rm -rf $vm_dir
}

function vm_list_all() {
	local vms=()
	vms=("$VM_DIR"/+([0-9]))
	if ((${#vms[@]} > 0)); then
		basename --multiple "${vms[@]}"
	fi
}

function vm_kill_all() {
	local vm
	for vm in $(vm_list_all); do
		vm_kill $vm
	done
	rm -rf $VM_DIR
}

# vm_setup --disk-type=vfio_user|vfio_user_virtio --os=IMAGE --disks=N [--force=N] [--memory=M]
function vm_setup() {
	local optchar OPTIND os="" disk_type="" disks=() vm_num="" vfio_user_pci
	while getopts ':-:' optchar; do
		case "$OPTARG" in
			os=*) os="${OPTARG#*=}" ;;
			disk-type=*) disk_type="${OPTARG#*=}" ;;
			disks=*) IFS=":" read -ra disks <<< "${OPTARG#*=}" ;;
			force=*) vm_num=${OPTARG#*=} ;;
			memory=*) ;;
			*)
				error "unknown argument $OPTARG"
				return 1
				;;
		esac
	done
	local vm_dir=$VM_DIR/$vm_num
	mkdir -p "$vm_dir"
	local cmd=("$QEMU_BIN" -m 1024 -enable-kvm -drive "file=$os,if=none,id=os_disk" -pidfile "$vm_dir/qemu.pid" -daemonize)
	local disk
	for disk in "${disks[@]}"; do
		case $disk_type in
			vfio_user)
				notice "using socket $VM_DIR/$vm_num/domain/muser$disk/$disk/cntrl"
				printf -v vfio_user_pci '{"driver":"vfio-user-pci","socket":{"path":"%s","type":"unix"}}' \
					"$VM_DIR/$vm_num/muser/domain/muser$disk/$disk/cntrl"
				cmd+=(-device "$vfio_user_pci")
				;;
			vfio_user_virtio)
				notice "using socket $VM_DIR/vfu_tgt/virtio.$disk"
				printf -v vfio_user_pci '{"driver":"vfio-user-pci","socket":{"path":"%s","type":"unix"}}' \
					"$VM_DIR/vfu_tgt/virtio.$disk"
				cmd+=(-device "$vfio_user_pci")
				;;
			*)
				error "unknown mode '$disk_type'"
				return 1
				;;
		esac
	done
	notice "Saving to $vm_dir/run.sh"
	{
		echo '#!/bin/bash'
		printf '%q ' "${cmd[@]}"
		echo
	} > "$vm_dir/run.sh"
	chmod +x "$vm_dir/run.sh"
}

function vm_run() {
	local vm=$1
	notice "running $VM_DIR/$vm/run.sh"
	if ! "$VM_DIR/$vm/run.sh"; then
		error "FAILED to run vm $vm"
		return 1
	fi
}

function at_app_exit() {
	notice "APP EXITING"
	notice "killing all VMs"
	vm_kill_all
	notice "EXIT DONE"
}
