#!/usr/bin/env bash
# One life of a guest in the ext4 crash cycle (tests/tests/ublk.rs,
# ext4_survives_guest_kills): attach the volume (from the store alone: the
# cache is on this guest's tmpfs), check what the previous guest left — the
# journal replays, `fsck.ext4 -n -f` is clean, every file it listed as
# fsynced has its checksum — then copy files and fsync each, listing it only
# after the fsync returned, until the host kills this guest's QEMU.
# The store and the list live on the host (a read-write 9p share, cache=none).
#
# SPRITEDISK_VM_CRASH_LOCAL=1: the power cut of --durability local
# (docs/design/0014). The cache directory is on a virtio disk that outlives
# the guest (/dev/vda, ext4; what the host's image file holds is what the
# disk kept), the daemon uploads nothing by itself (no writeback, large
# segments), so the fsynced files are only in its journal when the guest
# dies; the next guest attaches on the same directory and replays it.
set -euo pipefail
B=${SPRITEDISK_BIN:-$PWD/target/debug/spritedisk}
S=${SPRITEDISK_VM_CRASH_DIR:?}
CYCLE=${SPRITEDISK_VM_CRASH_CYCLE:?}
URL=file://$S/store
C=/tmp/cache M=/tmp/mnt
LOCAL=${SPRITEDISK_VM_CRASH_LOCAL:-0}
ARGS=()
if [ "$LOCAL" = 1 ]; then
  P=/tmp/persist; mkdir -p $P
  blkid /dev/vda >/dev/null 2>&1 || mkfs.ext4 -q -F /dev/vda
  mount /dev/vda $P
  C=$P/cache
  ARGS=(--durability local --writeback-delay 3600 --segment-size 64M --dirty-max 256M)
fi
export SPRITEDISK_LOG=info
mkdir -p $M $C
fail() { echo "FAIL: $*"; tail -30 $C/daemon.log 2>/dev/null || true; exit 1; }
echo "== crash cycle $CYCLE"
fresh=0
if [ ! -e "$S/store/volume.json" ]; then $B create "$URL" --size 4G; fresh=1; fi
LOG_BEFORE=$(stat -c %s $C/daemon.log 2>/dev/null || echo 0)
# The previous guest died holding the lease: take it over.
DEV=$($B attach "$URL" --cache-dir $C --force "${ARGS[@]}") || fail "attach"
if [ "$LOCAL" = 1 ] && [ $fresh = 0 ]; then
  # The flushed writes were only in the journal: this attach replayed it.
  tail -c +$((LOG_BEFORE + 1)) $C/daemon.log | grep -q "replayed the acknowledged writes" \
    || fail "the restart replayed no journal: the test did not cut power under a local-durability daemon"
fi
if [ $fresh = 1 ]; then
  mkfs.ext4 -q -F "$DEV"
else
  mount "$DEV" $M || fail "mount (journal replay)"
  umount $M
  fsck.ext4 -n -f "$DEV" > /tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; fail "fsck.ext4 -n -f is not clean"; }
  # Complete lines only: the host may have cut the last one mid-append.
  grep -E '^d[0-9]/f[0-9_]+ [0-9a-f]{64}$' "$S/fsynced" | awk -v m=$M '{print $2 "  " m "/" $1}' > /tmp/sums || true
  mount "$DEV" $M
  n=$(wc -l < /tmp/sums)
  [ "$n" = 0 ] || (cd / && sha256sum --quiet -c /tmp/sums) || fail "a file listed as fsynced is damaged or missing"
  echo "checked: fsck clean, $n fsynced files intact"
  echo "$n" > "$S/checked.$CYCLE"
fi
[ "${SPRITEDISK_VM_CRASH_FINAL:-0}" = 1 ] && { umount $M; $B detach "$DEV"; exit 0; }
echo "== writing until killed"
[ $fresh = 1 ] && mount "$DEV" $M
i=0
while true; do
  i=$((i + 1))
  d=d$((i % 8)); f=$d/f${CYCLE}_$i
  mkdir -p $M/$d
  head -c $(( (RANDOM % 64 + 1) * 4096 + RANDOM )) /dev/urandom > /tmp/buf
  cp /tmp/buf $M/$f
  sync $M/$f $M/$d
  echo "$f $(sha256sum < /tmp/buf | cut -d' ' -f1)" >> "$S/fsynced"
  # Overwrite an old file now and then (not listed again: its old content
  # may be half replaced when the guest dies, so it is no longer checked).
  if [ $((i % 16)) = 0 ]; then
    sed -i "\#^$d/f${CYCLE}_$((i - 8)) #d" "$S/fsynced"
    head -c 8192 /dev/urandom | dd of=$M/$d/f${CYCLE}_$((i - 8)) conv=notrunc status=none 2>/dev/null || true
  fi
done
