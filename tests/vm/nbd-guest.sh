#!/usr/bin/env bash
# Boots a QEMU guest whose virtio disk (/dev/vda) is a spritedisk volume
# served over NBD, as a user gives a VM its disk:
#   -drive file=nbd+unix:///?socket=SOCKET,format=raw,if=virtio
# and runs GUEST_SCRIPT in it as root. Host side, for tests/tests/qemu_guest.rs.
#
#   nbd-guest.sh SOCKET CTL_DIR GUEST_SCRIPT
#
# The guest's root is the host's (9p, read-only), so host tools (mkfs.ext4,
# sha256sum) are there; CTL_DIR is shared read-write at /tmp/ctl. The kernel
# and its modules are the VM rig's (../shared/ublk-vm, prepared on first
# use); the init here differs from the rig's in leaving /dev/vda alone.
# Exit status: the script's; 98 when the guest never reported one.
set -euo pipefail
SOCK=$1 CTL=$(realpath "$2") SCRIPT=$3
HERE=$(cd "$(dirname "$0")" && pwd)
RUNNER=${SPRITEDISK_VM_RUNNER:-$HERE/../../../shared/ublk-vm/run-in-vm.sh}
CACHE=${SPRITEDISK_VM_CACHE:-/var/cache/spritedisk-vm}
KDIR=$(ls -d "$CACHE"/*-rig*/ 2>/dev/null | sort | tail -n 1 || true)
if [ -z "$KDIR" ] || [ ! -f "$KDIR/initramfs.cpio.gz" ]; then
  "$RUNNER" --timeout 300 -- true >/dev/null   # prepares the kernel once
  KDIR=$(ls -d "$CACHE"/*-rig*/ | sort | tail -n 1)
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The rig's initramfs (busybox, modules), with this init.
mkdir "$WORK/root"
(cd "$WORK/root" && gzip -dc "$KDIR/initramfs.cpio.gz" | cpio -id --quiet)
cat > "$WORK/root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m.ko 2>/dev/null; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro hostroot /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=none ctl /ctl
for d in dev proc sys; do mount --bind /$d /newroot/$d; done
for d in tmp run var/tmp; do mount -t tmpfs tmpfs /newroot/$d; done
mkdir -p /newroot/tmp/ctl; mount --bind /ctl /newroot/tmp/ctl
chroot /newroot /bin/bash /tmp/ctl/guest.sh
echo $? > /ctl/status
sync
poweroff -f
EOF
chmod +x "$WORK/root/init"
(cd "$WORK/root" && find . | cpio -o -H newc --quiet | gzip -1 > "$WORK/initramfs.cpio.gz")

cp "$SCRIPT" "$CTL/guest.sh"
rm -f "$CTL/status"
accel=(-accel tcg,thread=multi -cpu max)
[ "${SPRITEDISK_VM_ACCEL:-tcg}" = kvm ] && accel=(-enable-kvm -cpu host)
timeout --foreground "${SPRITEDISK_VM_TIMEOUT:-600}" qemu-system-x86_64 "${accel[@]}" -m 1G -smp 2 \
  -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
  -kernel "$KDIR/vmlinuz" -initrd "$WORK/initramfs.cpio.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
  -virtfs "local,path=$CTL,mount_tag=ctl,security_model=none" \
  -drive "file=nbd+unix:///?socket=$SOCK,format=raw,if=virtio,cache=none" || true
[ -f "$CTL/status" ] || { echo "nbd-guest: the guest gave no exit status" >&2; exit 98; }
exit "$(cat "$CTL/status")"
