#!/usr/bin/env bash
# The ublk end-to-end tests. Runs as root inside the VM rig
# (tests/vm/rig/run-in-vm.sh), started by tests/tests/ublk_vm.rs.
set -euo pipefail
B=${SPRITEDISK_BIN:-$PWD/target/debug/spritedisk}
W=/tmp/scratch; [ -d $W ] || W=/tmp
export SPRITEDISK_LOG=info
fail() { echo "FAIL: $*"; for l in $W/cache-*/daemon.log; do echo "--- $l"; tail -20 "$l"; done; exit 1; }
step() { echo "== $*"; }
no_leftovers() {
  if ls /dev/ublkb* /dev/ublkc* 2>/dev/null; then fail "ublk device nodes left behind"; fi
  if pgrep -f "spritedisk attach" >/dev/null; then fail "a daemon is left behind"; fi
  [ -z "$($B list | tail -n +2)" ] || fail "list still shows devices"
}
daemon_pid() { $B list --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -n 1; }
M=$W/mnt; mkdir -p $M

step "1. ext4: a tree of files survives umount, detach and re-attach"
$B create file://$W/store/fs --size 4G
DEV=$($B attach file://$W/store/fs --cache-dir $W/cache-fs) || fail "attach"
[ -b "$DEV" ] || fail "$DEV is not a block device"
mkfs.ext4 -q -F "$DEV"
mount "$DEV" $M
for d in a b c; do mkdir -p $M/tree/$d; done
for i in $(seq 1 60); do
  d=$(printf 'a\nb\nc\n' | sed -n "$((i % 3 + 1))p")
  head -c $(( (i * 7919) % 300000 + 1 )) /dev/urandom > $M/tree/$d/f$i
done
head -c 32M /dev/urandom > $M/tree/big
(cd $M && find tree -type f | sort | xargs sha256sum) > $W/sums
sync
umount $M
$B detach "$DEV" || fail "detach"
no_leftovers
DEV=$($B attach file://$W/store/fs --cache-dir $W/cache-fs) || fail "re-attach"
mount "$DEV" $M
(cd $M && sha256sum --quiet -c $W/sums) || fail "checksums differ after re-attach"
umount $M
$B detach "$DEV"
# And from the store alone (an empty cache directory: another machine).
DEV=$($B attach file://$W/store/fs --cache-dir $W/cache-fs2) || fail "attach from the store alone"
mount "$DEV" $M
(cd $M && sha256sum --quiet -c $W/sums) || fail "checksums differ from the store alone"
umount $M
$B detach "$DEV"
no_leftovers
echo "ok 1"

step "2. fio --verify=crc32c on the raw device: 4 KiB random and 1 MiB writes, QD32, 2 queues"
$B create file://$W/store/raw --size 2G
DEV=$($B attach file://$W/store/raw --cache-dir $W/cache-raw --queues 2) || fail "attach"
[ "$(cat /sys/block/$(basename $DEV)/queue/logical_block_size)" = 4096 ] || fail "logical block size is not 4096"
[ "$(cat /sys/block/$(basename $DEV)/queue/discard_granularity)" = 4096 ] || fail "discard granularity is not 4096"
[ "$(ls /sys/block/$(basename $DEV)/mq | wc -l)" = 2 ] || fail "not 2 hardware queues"
FIO=(--filename="$DEV" --ioengine=io_uring --direct=1 --iodepth=32 --verify=crc32c --verify_fatal=1 --randseed=11)
JOB1=(--name=rand4k --rw=randwrite --bs=4k --size=32M)
JOB2=(--name=seq1m --rw=write --bs=1m --size=128M --offset=1G)
fio "${FIO[@]}" "${JOB1[@]}" --do_verify=1 > $W/fio1.out || { cat $W/fio1.out; fail "fio 4k"; }
fio "${FIO[@]}" "${JOB2[@]}" --do_verify=1 > $W/fio2.out || { cat $W/fio2.out; fail "fio 1m"; }
blkdiscard -o 1536M -l 64M "$DEV" || fail "discard"
[ "$(dd if=$DEV bs=1M skip=1536 count=64 iflag=direct status=none | tr -d '\0' | wc -c)" = 0 ] || fail "discarded range is not zeros"
$B detach "$DEV"
no_leftovers
DEV=$($B attach file://$W/store/raw --cache-dir $W/cache-raw2 --queues 2) || fail "re-attach"
fio "${FIO[@]}" "${JOB1[@]}" --verify_only > $W/fio3.out || { cat $W/fio3.out; fail "fio 4k verify after re-attach"; }
fio "${FIO[@]}" "${JOB2[@]}" --verify_only > $W/fio4.out || { cat $W/fio4.out; fail "fio 1m verify after re-attach"; }
$B detach "$DEV"
no_leftovers
echo "ok 2"

step "3. kill -9 of the daemon during writes; recover; fsck clean; synced files intact"
$B create file://$W/store/crash --size 2G
DEV=$($B attach file://$W/store/crash --cache-dir $W/cache-crash) || fail "attach"
mkfs.ext4 -q -F "$DEV"
mount "$DEV" $M
: > $W/synced
rm -f $W/stop
( i=0
  while [ ! -e $W/stop ]; do
    i=$((i + 1))
    head -c $(( (i * 4099) % 400000 + 4096 )) /dev/urandom > $M/f$i
    sync $M/f$i
    sha256sum $M/f$i >> $W/synced
  done ) &
WRITER=$!
sleep 4
PID=$(daemon_pid)
kill -9 "$PID"
echo "killed daemon $PID after $(wc -l < $W/synced) synced files"
sleep 1
[ -b "$DEV" ] || fail "$DEV disappeared with its daemon"
$B list | grep -q orphaned || fail "list does not show the orphaned device"
$B recover "$DEV" || fail "recover"
sleep 3
touch $W/stop
wait $WRITER
echo "$(wc -l < $W/synced) files synced in all"
umount $M
fsck.ext4 -n -f "$DEV" > $W/fsck.out 2>&1 || { cat $W/fsck.out; fail "fsck.ext4 -n found errors"; }
mount "$DEV" $M
sha256sum --quiet -c $W/synced || fail "a synced file changed"
umount $M
$B detach "$DEV"
no_leftovers
echo "ok 3"

step "4. detach of a device whose daemon died removes it"
DEV=$($B attach file://$W/store/crash --cache-dir $W/cache-crash) || fail "attach"
kill -9 "$(daemon_pid)"
sleep 1
$B detach "$DEV" || fail "detach of an orphaned device"
no_leftovers
echo "ok 4"
echo "ALL OK"
