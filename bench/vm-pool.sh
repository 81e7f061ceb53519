#!/usr/bin/env bash
# Runs inside the VM rig (bench/pool.sh starts it): attach-to-first-I/O of
# a volume whose map has EXTENTS extents, cold (a new daemon and device,
# an empty cache directory: a fresh machine) against the warm pool (a
# standby device, its slot emptied since its last volume), ATTACHES times
# each, alternating so that both see the same noise. Writes one time in
# microseconds per line to VM_OUT/{cold,pool,floor}.us (floor: starting
# the command and one read of a loop device, what any attach pays here) and the pool's own
# accounting (bind and open) to VM_OUT/pool-bind.txt.
# Host side: tests/vm/rig/run-in-vm.sh --scratch 8G -- bash bench/vm-pool.sh
set -euo pipefail
B=${SPRITEDISK_BIN:-$PWD/target/release/spritedisk}
OUT=${SPRITEDISK_VM_OUT:?set SPRITEDISK_VM_OUT to a directory of the shared tree}
N=${SPRITEDISK_ATTACHES:-50}
EXTENTS=${SPRITEDISK_EXTENTS:-100000}
W=/tmp/scratch
export SPRITEDISK_CACHE_DIR=$W/cache SPRITEDISK_LOG=warn
URL=file://$W/store/vol
# The binary on the guest's own disk, without debug info, as a host would
# have it (from the 9p share, starting a 190 MB binary costs more than the
# attaches being measured).
strip --strip-debug -o /tmp/spritedisk "$B"
B=/tmp/spritedisk
mkdir -p "$OUT"
: > "$OUT/cold.us"; : > "$OUT/pool.us"; : > "$OUT/floor.us"; : > "$OUT/pool-bind.txt"

$B create $URL >/dev/null
DEV=$($B attach $URL --cache-dir $W/fill --queues 2)
fio --name=fill --filename=$DEV --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
  --iodepth=32 --number_ios=$EXTENTS --norandommap --randrepeat=0 --end_fsync=1 >/dev/null
$B detach $DEV >/dev/null
$B stats $URL --cache-dir $W/fill --json | grep -m1 '"extents"' | tr -dc '0-9' > "$OUT/extents"
echo "map: $(cat "$OUT/extents") extents"

truncate -s 64M $W/floor.img
FLOOR_DEV=$(losetup --direct-io=on --show -f $W/floor.img)
$B pool start --size 2 --queues 2 >/dev/null
# One attach: the time from the command to the first 4 KiB read's end.
once() { # label attach-args...
  local label=$1; shift
  local t0 t1 dev
  t0=$(date +%s%N)
  dev=$($B attach $URL "$@" 2>"$W/attach.err")
  dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000)) >> "$OUT/$label.us"
  if [ "$label" = pool ]; then
    grep -q "from the pool" "$W/attach.err" || { cat "$W/attach.err"; echo "not from the pool"; exit 1; }
    sed -n 's/.*from the pool in \([0-9]*\) ms (volume opened in \([0-9]*\) ms).*/\1 \2/p' "$W/attach.err" >> "$OUT/pool-bind.txt"
  fi
  $B detach "$dev" >/dev/null
}
# What any attach pays in this VM before its own work: starting the
# command, and a 4 KiB direct read of a loop device.
floor() {
  local t0 t1
  t0=$(date +%s%N)
  $B --version >/dev/null
  dd if="$FLOOR_DEV" of=/dev/null bs=4k count=1 iflag=direct status=none
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000)) >> "$OUT/floor.us"
}
for i in $(seq "$N"); do
  once cold --cache-dir $W/cold --queues 2
  rm -rf $W/cold
  once pool --pool
  floor
  [ $((i % 10)) = 0 ] && echo "  $i of $N attaches each"
done
$B pool stop >/dev/null
losetup -d "$FLOOR_DEV"
echo "VM POOL BENCH DONE"
