#!/usr/bin/env bash
# Runs inside the VM rig: the same fio jobs on /dev/ublkbN (spritedisk,
# file:// store on the scratch disk) and on a plain file on that scratch disk
# (O_DIRECT), in one run. Emulated VM: read the ratios, not the numbers.
# Host side: ../shared/ublk-vm/run-in-vm.sh --scratch 8G -- bash bench/vm-ublk.sh
set -euo pipefail
B=${SPRITEDISK_BIN:-$PWD/target/release/spritedisk}
W=/tmp/scratch
SIZE=${SIZE:-512M}
RUNTIME=${RUNTIME:-15}
$B create file://$W/store --size 4G >/dev/null
DEV=$($B attach file://$W/store --cache-dir $W/cache --queues 2)
truncate -s $SIZE $W/raw.img
job() { # target name args...
  local t=$1 n=$2; shift 2
  fio --name=$n --filename=$t --ioengine=io_uring --direct=1 --size=$SIZE "$@" --output-format=json | python3 -c '
import json,sys; j=json.load(sys.stdin)["jobs"][0]; s=j["write"] if j["write"]["io_bytes"] else j["read"]
print("%s %.0f %.1f" % (sys.argv[1], s["iops"], s["bw_bytes"]/1e6))' "$n"
}
for t in $W/raw.img $DEV; do
  echo "# target $t"
  job $t seqwrite-1m --rw=write --bs=1m --iodepth=8 --end_fsync=1
  job $t randread-4k-qd32 --rw=randread --bs=4k --iodepth=32 --time_based --runtime=$RUNTIME
  job $t randread-4k-qd1 --rw=randread --bs=4k --iodepth=1 --time_based --runtime=$RUNTIME
  job $t randwrite-4k-fsync32 --rw=randwrite --bs=4k --iodepth=1 --fsync=32 --time_based --runtime=$RUNTIME
done
$B detach $DEV >/dev/null
