#!/usr/bin/env bash
# The project's VM rig: runs one command as root in a QEMU guest whose kernel
# has the ublk driver (and nbd, loop, ext4, virtio), for hosts without them.
# See tests/vm/rig/README.md.
#
#   tests/vm/rig/run-in-vm.sh [--mem 2G] [--cpus 2] [--timeout 600]
#       [--rw DIR]... [--scratch SIZE] [--drive QEMU_DRIVE_SPEC] [--] CMD [ARG]...
#
# The host's / is the guest's root, read-only; the current directory and each
# --rw DIR are shared read-write at the same paths; /tmp, /run, /var/tmp and
# /dev/shm are fresh tmpfs. --scratch SIZE adds a sparse virtio disk made ext4
# at /tmp/scratch (/dev/vda). --drive adds a disk the guest leaves alone (after
# the scratch disk: /dev/vdb with --scratch, else /dev/vda). Variables named
# SPRITEDISK_*, RUST_*, CARGO_* and AWS_* are passed in. The exit status is the
# command's; 98 when the guest never reported one (timeout, crash), 97 when it
# never booted as far as the command in SPRITEDISK_VM_BOOT_TRIES (3) tries.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../../../tools/lib/apt.sh"

MEM=2G CPUS=2 TIMEOUT=600 SCRATCH=
RW=("$PWD") DRIVES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --mem) MEM=$2; shift 2 ;;
    --cpus) CPUS=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --rw) RW+=("$(realpath "$2")"); shift 2 ;;
    --scratch) SCRATCH=$2; shift 2 ;;
    --drive) DRIVES+=("$2"); shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "run-in-vm: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "run-in-vm: no command given (see --help)" >&2; exit 2; }
log() { echo "run-in-vm: $*" >&2; }

# --- 1. The host's tools (tools/install-deps.sh test installs them too).
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v depmod >/dev/null || missing+=(kmod)
command -v xz >/dev/null || missing+=(xz-utils)
command -v cpio >/dev/null || missing+=(cpio)
if [ ${#missing[@]} -gt 0 ]; then
  log "missing ${missing[*]}: running tools/install-deps.sh test"
  "$HERE/../../../tools/install-deps.sh" test
fi

# --- 2. The guest's kernel and initramfs, built once and cached under
# $SPRITEDISK_VM_CACHE (default /var/cache/spritedisk-vm; about 120 MB), in a
# directory named after the kernel and a hash of guest-init.sh and this list
# of modules, so a change to either builds a new one.
CACHE=${SPRITEDISK_VM_CACHE:-/var/cache/spritedisk-vm}
KVER=${SPRITEDISK_VM_KERNEL:-6.12.95+deb12-amd64} # bookworm-backports: CONFIG_BLK_DEV_UBLK=m
# Load order: dependencies first. Each is a module file of the kernel package.
MODULES="crc16 mbcache jbd2 crc32c_generic libcrc32c ext4 netfs 9pnet 9pnet_virtio 9p virtio_blk ublk_drv nbd loop"
rig_id=$( (cat "$HERE/guest-init.sh"; echo "$MODULES") | sha256sum | cut -c1-12)
KDIR="$CACHE/$KVER-$rig_id"
mkdir -p "$CACHE"
exec 9>"$CACHE/prepare.lock"
flock 9 # one preparation at a time; the others wait and use it
if [ ! -f "$KDIR/initramfs.cpio.gz" ]; then
  log "preparing kernel $KVER and the initramfs in $KDIR (once; about a minute)"
  work=$(mktemp -d "$CACHE/prepare.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && apt_bpo download "linux-image-$KVER" >/dev/null 2>&1); then
    # The pinned kernel left the archive: take backports' current 6.x.
    KVER=$(apt_bpo -s -t bookworm-backports install linux-image-amd64 2>/dev/null |
      sed -n 's/^Inst linux-image-\([0-9][^ ]*-amd64\) .*/\1/p' | head -n 1)
    [ -n "$KVER" ] || { log "no linux-image package found in bookworm-backports"; exit 1; }
    log "the pinned kernel is gone from bookworm-backports; using $KVER"
    KDIR="$CACHE/$KVER-$rig_id"
    (cd "$work" && apt_bpo download "linux-image-$KVER" >/dev/null)
  fi
  dpkg-deb -x "$work"/linux-image-*.deb "$work/pkg"
  mods="$work/pkg/lib/modules/$KVER"
  depmod -b "$work/pkg" "$KVER"
  root="$work/initramfs"
  mkdir -p "$root"/{bin,dev,proc,sys,newroot,ctl,mods}
  cp /bin/busybox "$root/bin/busybox"
  for m in $MODULES; do
    f=$(grep -E "(^|/)$m\.ko(\.xz)?:" "$mods/modules.dep" | cut -d: -f1 | head -n 1)
    [ -n "$f" ] || continue # built into this kernel
    case "$f" in
      *.xz) xz -dc "$mods/$f" >"$root/mods/$m.ko" ;;
      *) cp "$mods/$f" "$root/mods/$m.ko" ;;
    esac
    echo "$m" >>"$root/mods/order"
  done
  cp "$HERE/guest-init.sh" "$root/init"
  chmod +x "$root/init"
  mkdir -p "$KDIR"
  cp "$work/pkg/boot/vmlinuz-$KVER" "$KDIR/vmlinuz"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 >"$KDIR/initramfs.cpio.gz.tmp")
  mv "$KDIR/initramfs.cpio.gz.tmp" "$KDIR/initramfs.cpio.gz"
  rm -rf "$work"
  trap - EXIT
fi
exec 9>&-

# --- 3. What the guest runs, handed over in a shared control directory.
ctl=$(mktemp -d)
trap 'rm -rf "$ctl"' EXIT
printf '%s\n' "${RW[@]}" >"$ctl/rw"
{
  echo "export PATH='$PATH' HOME=/tmp TERM=dumb"
  for v in $(compgen -e | grep -E '^(SPRITEDISK_|RUST_|CARGO_|AWS_)'); do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  printf 'cd %q || exit 97\n' "$PWD"
  printf '%q ' "$@"; echo
} >"$ctl/cmd.sh"

# Software emulation unless SPRITEDISK_VM_ACCEL=kvm: nested KVM on the
# development machines cannot run a stock kernel. Single-threaded TCG
# (SPRITEDISK_VM_TCG_THREAD=single) trades speed for fewer boot oopses; see
# README.md for the measured boot failure rate of each.
case "${SPRITEDISK_VM_ACCEL:-tcg}" in
  kvm) accel=(-enable-kvm -cpu host) ;;
  *) accel=(-accel "tcg,thread=${SPRITEDISK_VM_TCG_THREAD:-multi}" -cpu max) ;;
esac
disks=()
if [ -n "$SCRATCH" ]; then
  touch "$ctl/scratch" # the guest makes /dev/vda ext4 at /tmp/scratch
  disks+=(-drive "file=$ctl/scratch.img,if=virtio,format=raw,cache=unsafe")
fi
for d in "${DRIVES[@]}"; do disks+=(-drive "$d"); done
shares=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
        -virtfs "local,path=$ctl,mount_tag=ctl,security_model=none")
i=0
for d in "${RW[@]}"; do
  shares+=(-virtfs "local,path=$d,mount_tag=rw$i,security_model=none,multidevs=remap"); i=$((i + 1))
done

# --- 4. Boot. Under TCG the guest kernel sometimes oopses while it boots
# (an int3 left by its live code patching); the guest never reached the
# command then, and is booted again. A command that started is never re-run.
# A boot also hangs sometimes (seen once on a loaded host: SeaBIOS's
# "Booting from ROM" and nothing after, until the whole timeout): one that
# has not started the command within SPRITEDISK_VM_BOOT_TIMEOUT seconds (a
# boot takes 10-15 s) is killed and counts as a failed boot.
tries=${SPRITEDISK_VM_BOOT_TRIES:-3}
boot_timeout=${SPRITEDISK_VM_BOOT_TIMEOUT:-180}
rc=0
for try in $(seq 1 "$tries"); do
  rm -f "$ctl/started" "$ctl/status"
  [ -z "$SCRATCH" ] || { rm -f "$ctl/scratch.img"; truncate -s "$SCRATCH" "$ctl/scratch.img"; }
  rc=0
  timeout --foreground "$TIMEOUT" qemu-system-x86_64 "${accel[@]}" -m "$MEM" -smp "$CPUS" \
    -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
    -kernel "$KDIR/vmlinuz" -initrd "$KDIR/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
    "${shares[@]}" "${disks[@]}" </dev/null &
  qemu=$!
  hung=0
  for _ in $(seq "$boot_timeout"); do
    [ -f "$ctl/started" ] && break
    kill -0 "$qemu" 2>/dev/null || break
    sleep 1
  done
  if [ ! -f "$ctl/started" ] && kill -0 "$qemu" 2>/dev/null; then
    hung=1
    kill -TERM "$qemu" 2>/dev/null || true
  fi
  wait "$qemu" || rc=$?
  [ -f "$ctl/started" ] && break
  if [ "$hung" = 1 ]; then
    log "the guest did not start the command within ${boot_timeout}s (boot $try of $tries): killed"
  else
    [ "$rc" = 124 ] && { log "the guest did not boot within ${TIMEOUT}s"; exit 98; }
    log "the guest died before the command started (boot $try of $tries, qemu exit $rc)"
  fi
  [ "$try" -lt "$tries" ] || exit 97
done
[ -f "$ctl/status" ] || { log "the guest gave no exit status (qemu exit $rc; 124 = timeout)"; exit 98; }
exit "$(cat "$ctl/status")"
