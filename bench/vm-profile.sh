#!/usr/bin/env bash
# Runs inside the VM rig: where the daemon's CPU goes on /dev/ublkb0 under
# two fio jobs (1 MiB sequential write QD8, then 4 KiB random read QD32,
# warm), with `perf record -g` on the daemon; folded stacks and a text
# report per job into VM_OUT; bench/flame.sh runs it and makes the SVGs.
# Host side: tests/vm/rig/run-in-vm.sh --scratch 8G -- bash bench/vm-profile.sh
set -euo pipefail
B=${SPRITEDISK_BIN:-$PWD/target/release/spritedisk}
OUT=${SPRITEDISK_VM_OUT:?set SPRITEDISK_VM_OUT to a directory of the shared tree}
W=/tmp/scratch
export SIZE=${SPRITEDISK_SIZE:-128M} RUNTIME=${SPRITEDISK_RUNTIME:-10}
mkdir -p "$OUT"
$B create file://$W/store --size 100G >/dev/null
DEV=$($B attach file://$W/store --cache-dir $W/cache --queues 2)
PID=$(pgrep -f "spritedisk.*file://$W/store" | head -1)
prof() { # name job [VAR=value...]
  local name=$1 j=$2; shift 2
  perf record -F 499 -g -p "$PID" -o "$W/$name.data" -- sleep "$RUNTIME" >/dev/null 2>&1 &
  local P=$!
  env "$@" fio --filename="$DEV" --ioengine=io_uring --direct=1 --output-format=json \
    --output="$OUT/$name.json" --time_based=1 --runtime="$RUNTIME" "bench/jobs/$j.fio" >/dev/null
  wait $P || true
  perf report -i "$W/$name.data" --no-children --stdio --percent-limit 1.5 2>/dev/null | head -400 > "$OUT/$name-report.txt"
  perf script -i "$W/$name.data" 2>/dev/null > "$OUT/$name.perf-script"
  echo "  $name profiled"
}
prof seqwrite-1m seqwrite-1m
prof randread-4k-32 randread-4k QD=32
$B detach "$DEV" >/dev/null
echo "VM PROFILE OK"
