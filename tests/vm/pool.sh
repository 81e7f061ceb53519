#!/usr/bin/env bash
# The warm pool in the VM rig (started by tests/tests/ublk.rs):
# a pool of 2, three volumes attached from it (two at once, the third
# after a refill or cold), a detach that returns the device and a re-use
# that shows nothing of the previous volume (data, page cache, partitions),
# a kill -9 of a standby that is replaced, a volume of another size that
# attaches cold, a kill -9 of a daemon serving a volume that `recover`
# resumes, and `pool stop` leaving nothing behind.
set -euo pipefail
B=${SPRITEDISK_BIN:-$PWD/target/debug/spritedisk}
W=/tmp/scratch; [ -d $W ] || W=/tmp
export SPRITEDISK_LOG=info SPRITEDISK_CACHE_DIR=$W/cache
S=$W/store
fail() {
  # The test prints the console's last lines: the cause goes last.
  for l in $W/cache/pool/*.log; do echo "--- $l"; grep -v INFO "$l" | tail -5; done
  $B pool status || true; $B list || true
  echo "FAIL: $*"
  exit 1
}
step() { echo "== $*"; }
ready_count() { $B pool status | awk '$3 == "ready"' | wc -l; }
ready_devices() { $B pool status | awk '$3 == "ready" { print $1 }'; }
wait_ready() { # N: until exactly N standbys are ready (30 s)
  for _ in $(seq 300); do [ "$(ready_count)" = "$1" ] && return 0; sleep 0.1; done
  fail "the pool did not settle at $1 ready standbys"
}
# same DEV SKIP_MIB COUNT_MIB FILE [direct]: the range reads as FILE (the
# guest has no /dev/fd for process substitution).
same() {
  dd if=$1 of=$W/readback bs=1M skip=$2 count=$3 ${5:+iflag=direct} status=none
  cmp -s $W/readback $4
}
devices() { ls /dev/ | grep -E '^ublkb[0-9]+$' | sort || true; }
M=$W/mnt; mkdir -p $M

step "1. pool start --size 2"
$B pool start --size 2 --queues 1 --queue-depth 16 2>$W/err || fail "pool start: $(cat $W/err)"
[ "$(ready_count)" = 2 ] || fail "not 2 ready after pool start"
[ "$(devices | wc -l)" = 2 ] || fail "not 2 devices: $(devices)"
$B pool start --size 1 2>$W/err && fail "a second pool started"
grep -q "already running" $W/err || fail "second start: $(cat $W/err)"
echo "ok 1"

step "2. three volumes from a pool of 2: two at once, then a third"
for v in v1 v2 v3; do $B create file://$S/$v >/dev/null; done
D1=$($B attach file://$S/v1 --pool 2>$W/a1) || fail "attach v1: $(cat $W/a1)"
grep -q "from the pool" $W/a1 || fail "v1 did not come from the pool: $(cat $W/a1)"
$B attach file://$S/v2 --pool --pool-wait 60 >$W/d2 2>$W/a2 & P2=$!
$B attach file://$S/v3 --pool --pool-wait 60 >$W/d3 2>$W/a3 & P3=$!
wait $P2 || fail "attach v2: $(cat $W/a2)"
wait $P3 || fail "attach v3: $(cat $W/a3)"
D2=$(cat $W/d2); D3=$(cat $W/d3)
grep -q "from the pool" $W/a2 || fail "v2 did not come from the pool: $(cat $W/a2)"
grep -q "from the pool" $W/a3 || fail "v3 did not come from the pool: $(cat $W/a3)"
echo "v1 at $D1; v2 at $D2 ($(tail -1 $W/a2)); v3 at $D3 ($(tail -1 $W/a3))"
for d in $D1 $D2 $D3; do [ -b $d ] || fail "$d is not a block device"; done
[ "$D1" != "$D2" ] && [ "$D2" != "$D3" ] && [ "$D1" != "$D3" ] || fail "two volumes on one device"
[ "$($B list | grep -c running)" = 3 ] || fail "list does not show 3 devices"
wait_ready 2
echo "ok 2"

step "3. each device serves its own volume; checkpoint finds the pool daemon"
# 4 KiB sectors: the partition spans 1-5 MiB, below the data at 16 MiB.
echo 'start=256, size=1024' | sfdisk -q $D1 || fail "sfdisk"
[ -b ${D1}p1 ] || fail "${D1}p1 did not appear"
i=0
for d in $D1 $D2 $D3; do
  i=$((i + 1))
  head -c 8M /dev/urandom > $W/data$i
  dd if=$W/data$i of=$d bs=1M seek=16 oflag=direct conv=fsync status=none
done
# Left in v1's daemon (no FLUSH): the detach must make it durable.
head -c 1M /dev/urandom > $W/late1
dd if=$W/late1 of=$D1 bs=1M seek=64 oflag=direct status=none
i=0
for d in $D1 $D2 $D3; do
  i=$((i + 1))
  # Buffered: v1's pages stay in the device's page cache.
  same $d 16 8 $W/data$i || fail "$d does not read its own data"
done
$B checkpoint file://$S/v1 c1 >/dev/null 2>$W/err || fail "checkpoint of a pool-bound volume: $(cat $W/err)"
echo "ok 3"

step "4. detach refuses a mounted device and flushes; the device returns to the pool"
mkfs.ext4 -q -F $D3
mount $D3 $M
$B detach $D3 2>$W/err && fail "detach of a mounted device succeeded"
grep -q "in use ($(basename $D3) mounted at $M)" $W/err || fail "detach while mounted: $(cat $W/err)"
[ -e $M/lost+found ] || fail "the filesystem went away after a refused detach"
umount $M
# A mounted partition, and a process holding the device open, keep it too.
mkfs.ext4 -q -F ${D1}p1
mount ${D1}p1 $M
$B detach $D1 2>$W/err && fail "detach with a mounted partition succeeded"
grep -q "in use ($(basename $D1)p1 mounted at $M)" $W/err || fail "detach with a mounted partition: $(cat $W/err)"
umount $M
sleep 600 < $D1 & HOLDER=$!
for _ in $(seq 100); do [ "$(readlink /proc/$HOLDER/fd/0)" = $D1 ] && break; sleep 0.1; done
$B detach $D1 2>$W/err && fail "detach of an open device succeeded"
grep -q "in use (open in process $HOLDER)" $W/err || fail "detach while open: $(cat $W/err)"
kill $HOLDER; wait $HOLDER 2>/dev/null || true
$B detach $D1 2>$W/err | tee $W/out; [ "${PIPESTATUS[0]}" = 0 ] || fail "detach v1: $(cat $W/err)"
grep -q "back in the pool" $W/out || fail "not returned: $(cat $W/out)"
ready_devices | grep -qx $D1 || fail "$D1 is not a ready standby after its detach"
wait_ready 2
ready_devices | grep -qx $D1 || fail "$D1 was retired instead of kept"
echo "ok 4"

step "5. re-use: nothing of the previous volume is readable"
# v4 has its own data where v1 had its own (written elsewhere first): a
# read cache line or page left from v1 would show instead.
$B create file://$S/v4 >/dev/null
D4=$($B attach file://$S/v4 --cache-dir $W/fill-v4 2>$W/a4) || fail "attach v4 cold: $(cat $W/a4)"
head -c 8M /dev/urandom > $W/data4
dd if=$W/data4 of=$D4 bs=1M seek=16 oflag=direct conv=fsync status=none
$B detach $D4 >/dev/null
D4=$($B attach file://$S/v4 --pool 2>$W/a4) || fail "attach v4: $(cat $W/a4)"
[ "$D4" = "$D1" ] || fail "v4 got $D4, not the returned $D1"
[ -e ${D4}p1 ] && fail "v1's partition ${D4}p1 is still there"
# Buffered (the page cache that held v1's pages) and direct, twice (the
# second read comes from the slot's read cache).
head -c 16M /dev/zero > $W/zeros
for mode in "" direct; do
  for pass in 1 2; do
    same $D4 16 8 $W/data4 $mode || fail "$D4 ($mode pass $pass) does not read v4's data"
    same $D4 0 16 $W/zeros $mode || fail "$D4 ($mode pass $pass) shows data of the previous volume at 0-16M"
    same $D4 64 16 $W/zeros $mode || fail "$D4 ($mode pass $pass) shows data of the previous volume at 64M"
  done
done
echo "ok 5"

step "5b. a failed final flush: the detach says so and the slot keeps the write log"
$B create file://$S/ff >/dev/null
DF=$($B attach file://$S/ff --pool --flush-timeout 2 --writeback-delay 60 2>$W/err) || fail "attach ff: $(cat $W/err)"
head -c 1M /dev/urandom > $W/data-ff
dd if=$W/data-ff of=$DF bs=1M seek=4 oflag=direct status=none
chattr -R +i $S/ff
$B detach $DF 2>$W/err && fail "detach succeeded with a store that refuses writes"
grep -q "write log stays in" $W/err || fail "the failed detach does not say where the write log is: $(cat $W/err)"
SLOT=$(sed -n 's/.*write log stays in \([^ ]*\) .*/\1/p' $W/err)
[ -d "$SLOT" ] || fail "the slot $SLOT was not kept"
for _ in $(seq 100); do [ -b $DF ] || break; sleep 0.1; done
[ -b $DF ] && fail "$DF stayed after its standby left"
chattr -R -i $S/ff
DF=$($B attach file://$S/ff --cache-dir $SLOT 2>$W/err) || fail "attach ff from the kept slot: $(cat $W/err)"
same $DF 4 1 $W/data-ff direct || fail "the write that was not flushed at the failed detach is lost"
$B detach $DF >/dev/null 2>$W/err || fail "detach ff: $(cat $W/err)"
wait_ready 2
echo "ok 5b"

step "6. v1 elsewhere (cold, another cache): everything it wrote, the unflushed MiB too"
D1c=$($B attach file://$S/v1 --cache-dir $W/cold-v1 2>$W/err) || fail "cold attach of v1: $(cat $W/err)"
same $D1c 16 8 $W/data1 direct || fail "v1's data"
same $D1c 64 1 $W/late1 direct || fail "v1's unflushed write was lost at detach"
[ -b ${D1c}p1 ] || fail "v1's partition is missing"
$B checkpoints file://$S/v1 | grep -q c1 || fail "checkpoint c1 of v1"
$B detach $D1c >/dev/null 2>$W/err || fail "detach cold v1: $(cat $W/err)"
echo "ok 6"

step "7. kill -9 of a standby: noticed and replaced"
VICTIM=$($B pool status | awk '$3 == "ready" { print $2; exit }')
VDEV=$($B pool status | awk '$3 == "ready" { print $1; exit }')
kill -9 $VICTIM
for _ in $(seq 300); do
  $B pool status | awk '$3 == "ready" { print $2 }' | grep -qx $VICTIM || [ "$(ready_count)" != 2 ] || break
  sleep 0.1
done
wait_ready 2
$B pool status | awk '$3 == "ready" { print $2 }' | grep -qx $VICTIM && fail "the killed standby is still listed"
# v2, v3, v4 and 2 standbys: the dead one's device did not stay behind.
[ "$(devices | wc -l)" = 5 ] || fail "devices after the replacement: $(devices | tr '\n' ' ')"
echo "killed $VICTIM ($VDEV); ready now: $(ready_devices | tr '\n' ' ')"
echo "ok 7"

step "8. a volume of another size attaches cold, and says so"
$B create file://$S/small --size 1G >/dev/null
DS=$($B attach file://$S/small --pool 2>$W/err) || fail "attach small: $(cat $W/err)"
grep -q "attaching cold" $W/err && grep -q "1.0 GiB" $W/err || fail "no cold notice: $(cat $W/err)"
[ "$(blockdev --getsize64 $DS)" = $((1 << 30)) ] || fail "$DS is not 1 GiB"
$B detach $DS >/dev/null
wait_ready 2
echo "ok 8"

step "9. kill -9 of a daemon serving a volume: recover resumes the same device"
P2=$($B list | awk -v d=$D2 '$1 == d { print $2 }')
kill -9 $P2
for _ in $(seq 100); do kill -0 $P2 2>/dev/null || break; sleep 0.1; done
$B list | grep -q "$D2 .* orphaned" || fail "$D2 is not shown orphaned: $($B list)"
$B recover $D2 >/dev/null 2>$W/err || fail "recover $D2: $(cat $W/err)"
same $D2 16 8 $W/data2 direct || fail "v2 after recover"
wait_ready 2
echo "ok 9"

step "10. pool stop: standbys go, served volumes stay until detached"
$B pool stop || fail "pool stop"
[ "$(devices | wc -l)" = 3 ] || fail "devices after pool stop: $(devices | tr '\n' ' ')"
same $D2 16 8 $W/data2 direct || fail "v2 after pool stop"
for d in $D2 $D3 $D4; do $B detach $d >/dev/null 2>$W/err || fail "detach $d: $(cat $W/err)"; done
for _ in $(seq 100); do [ -z "$(devices)" ] && break; sleep 0.1; done
[ -z "$(devices)" ] || fail "devices left: $(devices | tr '\n' ' ')"
pgrep -f "spritedisk (attach|pool)" && fail "a daemon is left behind"
[ -z "$($B list | tail -n +2)" ] || fail "list still shows devices"
echo "ok 10"

# Not in CI yet: it failed once there (under the load of four VMs) with an
# error the console's tail did not keep; it passes alone and under load
# here. `make vm-pool-s3` runs it.
if [ "${SPRITEDISK_POOL_S3:-0}" = 1 ]; then
step "11. s3://: standbys connect to the pool's store ahead of the attach (s3s-fs on 127.0.0.1)"
S3S=${SPRITEDISK_S3S_FS:-$(command -v s3s-fs || echo $HOME/.cargo/bin/s3s-fs)}
[ -x "$S3S" ] || fail "s3s-fs is missing (tools/install-deps.sh installs it)"
ip link set lo up 2>/dev/null || true
mkdir -p $W/s3/pool-test
$S3S --host 127.0.0.1 --port 9123 --access-key test --secret-key test $W/s3 > $W/s3s.log 2>&1 &
S3PID=$!
export AWS_ENDPOINT_URL=http://127.0.0.1:9123 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
for _ in $(seq 300); do $B store-bench s3://pool-test/probe --size 4K --count 1 --parallel 1 >/dev/null 2>&1 && break; sleep 0.2; done
$B create s3://pool-test/vols/s1 >/dev/null 2>$W/err || fail "create on s3s-fs: $(cat $W/err)"
$B pool start --size 1 --store s3://pool-test/vols --queues 1 --queue-depth 16 >/dev/null 2>$W/err || fail "pool start --store: $(cat $W/err)"
grep -l "cannot reach the pool's store" $W/cache/pool/slot-*.log && fail "a standby could not reach the store"
DS3=$($B attach s3://pool-test/vols/s1 --pool 2>$W/err) || fail "attach s3 --pool: $(cat $W/err)"
grep -q "from the pool" $W/err || fail "not from the pool: $(cat $W/err)"
head -c 4M /dev/urandom > $W/data-s3
dd if=$W/data-s3 of=$DS3 bs=1M seek=8 oflag=direct conv=fsync status=none
$B detach $DS3 >/dev/null 2>$W/err || fail "detach s3: $(cat $W/err)"
$B pool stop >/dev/null
DS3=$($B attach s3://pool-test/vols/s1 --cache-dir $W/cold-s3 2>$W/err) || fail "cold attach s3: $(cat $W/err)"
same $DS3 8 4 $W/data-s3 direct || fail "the s3 volume's data after detach from the pool"
$B detach $DS3 >/dev/null 2>$W/err || fail "detach cold s3: $(cat $W/err)"
kill $S3PID
echo "ok 11"
fi
echo "ALL OK"
