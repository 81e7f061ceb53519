#!/usr/bin/env bash
# Runs inside the VM rig: the daemon's CPU time per warm 4 KiB random read
# (QD32, io_uring, O_DIRECT) on /dev/ublkbN, spritedisk against rublk's
# loop target (`cargo install rublk`) over a file on the same scratch disk,
# the same fio job, the same VM. CPU time: utime + stime of the daemon's
# process (/proc/PID/stat) across the job, divided by the reads done.
# Writes cpu.json to VM_OUT.
# Host side: SPRITEDISK_RUBLK=$(command -v rublk) tests/vm/rig/run-in-vm.sh --scratch 8G -- bash bench/vm-cpu.sh
set -euo pipefail
B=${SPRITEDISK_BIN:-$PWD/target/release/spritedisk}
R=${SPRITEDISK_RUBLK:?set SPRITEDISK_RUBLK to the rublk binary}
OUT=${SPRITEDISK_VM_OUT:?set SPRITEDISK_VM_OUT to a directory of the shared tree}
W=/tmp/scratch
export SIZE=${SPRITEDISK_SIZE:-256M} RUNTIME=${SPRITEDISK_RUNTIME:-15}
TCK=$(getconf CLK_TCK)
mkdir -p "$OUT"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() { # name device pid
  local name=$1 dev=$2 pid=$3
  # Written once, so that every read after is warm (spritedisk: cached).
  fio --name=fill --filename="$dev" --ioengine=io_uring --direct=1 --rw=write --bs=1m \
    --iodepth=8 --size="$SIZE" --end_fsync=1 >/dev/null
  local t0; t0=$(ticks "$pid")
  QD=32 fio --filename="$dev" --ioengine=io_uring --direct=1 --output-format=json \
    --output="$OUT/$name.json" bench/jobs/randread-4k.fio >/dev/null
  local t1; t1=$(ticks "$pid")
  local ios; ios=$(python3 -c "import json; print(json.load(open('$OUT/$name.json'))['jobs'][0]['read']['total_ios'])")
  echo "{\"target\": \"$name\", \"cpu_secs\": $(python3 -c "print(($t1 - $t0) / $TCK)"), \"reads\": $ios}" >> "$OUT/cpu.jsonl"
  echo "  $name: $(( t1 - t0 )) ticks for $ios reads"
}
rm -f "$OUT/cpu.jsonl"
$B create file://$W/store --size "$SIZE" >/dev/null
DEV=$($B attach file://$W/store --cache-dir $W/cache --queues 2)
PID=$(pgrep -f "spritedisk.*file://$W/store" | head -1)
measure spritedisk "$DEV" "$PID"
$B detach "$DEV" >/dev/null
truncate -s "$SIZE" $W/rublk.img
"$R" add loop -f $W/rublk.img -q 2 >"$OUT/rublk-add.json"
RDEV=$(ls -t /dev/ublkb* | head -1)
RPID=$(pgrep -f "rublk" | head -1)
measure rublk-loop "$RDEV" "$RPID"
"$R" del -a >/dev/null 2>&1 || true
echo "VM CPU OK"
