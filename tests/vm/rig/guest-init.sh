#!/bin/busybox sh
# The guest's /init (tests/vm/rig/run-in-vm.sh): modules, the host's / as the
# read-only root, fresh tmpfs, the shared directories, then the command. Its
# exit status goes to /ctl/status; /ctl/started says the boot got this far.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod "/mods/$m.ko" 2>/dev/null; done
ip link set lo up
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro hostroot /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=none ctl /ctl
for d in dev proc sys; do mount --bind "/$d" "/newroot/$d"; done
mount -t devpts devpts /newroot/dev/pts 2>/dev/null
for d in tmp run var/tmp dev/shm; do mount -t tmpfs tmpfs "/newroot/$d" 2>/dev/null; done
i=0
while read -r dir; do
  mkdir -p "/newroot$dir" 2>/dev/null
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=none "rw$i" "/newroot$dir"
  i=$((i + 1))
done </ctl/rw
if [ -f /ctl/scratch ]; then
  chroot /newroot mkfs.ext4 -q -F /dev/vda && mkdir -p /newroot/tmp/scratch &&
    mount /dev/vda /newroot/tmp/scratch
fi
# The control directory last, so that no shared directory hides it.
mkdir -p /newroot/run/rig
mount --bind /ctl /newroot/run/rig
touch /ctl/started
chroot /newroot /bin/bash /run/rig/cmd.sh
echo $? >/ctl/status
sync
poweroff -f
