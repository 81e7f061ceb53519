#!/usr/bin/env bash
# Runs inside the VM rig (bench/run.sh starts it): the committed fio jobs
# (bench/jobs) on /dev/ublkbN (spritedisk, file:// store and cache on the
# scratch disk) and, as baselines in the same VM run, on a file on that
# scratch disk (O_DIRECT) and on a loop device over such a file. Reads on
# ublk run warm (after the write) and cold (cache directory deleted and the
# volume attached again). The VM is emulated: read the ratios, not the numbers.
# Writes fio JSON to VM_OUT (a directory of the shared tree).
# SPRITEDISK_BIN_BEFORE: also an older build on ublk (its own volume).
# Host side: tests/vm/rig/run-in-vm.sh --scratch 8G -- bash bench/vm-ublk.sh
set -euo pipefail
B=${SPRITEDISK_BIN:-$PWD/target/release/spritedisk}
OUT=${SPRITEDISK_VM_OUT:?set SPRITEDISK_VM_OUT to a directory of the shared tree}
W=/tmp/scratch
export SIZE=${SPRITEDISK_SIZE:-512M} RUNTIME=${SPRITEDISK_RUNTIME:-15}
mkdir -p "$OUT"
job() { # target-name device job [VAR=value...]
  local t=$1 dev=$2 j=$3 name=$3; shift 3
  for kv in "$@"; do name=$name-${kv#*=}; done
  env "$@" fio --filename="$dev" --ioengine=io_uring --direct=1 --output-format=json \
    --output="$OUT/$name-$t.json" "bench/jobs/$j.fio" >/dev/null
  echo "  $name on $t done"
}
suite() { # target-name device
  job "$1" "$2" seqwrite-1m
  job "$1" "$2" randread-4k QD=32
  job "$1" "$2" mix-70-30
  [ "${SPRITEDISK_QUICK:-0}" = 1 ] && return  # the smoke run: three jobs
  job "$1" "$2" randread-4k QD=1
  job "$1" "$2" randwrite-4k-fsync32
}

truncate -s "$SIZE" $W/raw.img
suite file $W/raw.img
truncate -s "$SIZE" $W/loop.img
LOOP=$(losetup --direct-io=on --show -f $W/loop.img)
suite loop "$LOOP"
losetup -d "$LOOP"

$B create file://$W/store --size 100G >/dev/null
DEV=$($B attach file://$W/store --cache-dir $W/cache --queues 2)
suite ublk "$DEV"
$B detach "$DEV" >/dev/null
# An older build's ublk numbers in the same VM run (what a change bought).
if [ -n "${SPRITEDISK_BIN_BEFORE:-}" ]; then
  BB=$SPRITEDISK_BIN_BEFORE
  $BB create file://$W/store-before --size 100G >/dev/null
  DEV=$($BB attach file://$W/store-before --cache-dir $W/cache-before --queues 2)
  suite ublk-before "$DEV"
  $BB detach "$DEV" >/dev/null
  rm -rf $W/store-before $W/cache-before
fi
QDS="1 32"; [ "${SPRITEDISK_QUICK:-0}" = 1 ] && QDS=32
for qd in $QDS; do
  rm -rf $W/cache
  DEV=$($B attach file://$W/store --cache-dir $W/cache --queues 2)
  job ublk-cold "$DEV" randread-4k QD=$qd
  $B detach "$DEV" >/dev/null
done
echo "VM BENCH OK"
