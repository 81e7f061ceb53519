set -x
B=$PWD/target/debug/spritedisk
$B create file:///tmp/store/vol --size 1G
DEV=$($B attach file:///tmp/store/vol --cache-dir /tmp/cache) || { cat /tmp/cache/daemon.log; exit 1; }
echo "DEV=$DEV"
$B list
dd if=/dev/urandom of=/tmp/a bs=1M count=8 status=none
dd if=/tmp/a of=$DEV bs=1M oflag=direct status=none
sync
dd if=$DEV of=/tmp/b bs=1M count=8 iflag=direct status=none
cmp /tmp/a /tmp/b && echo SAME
$B detach $DEV
ls /dev/ublk*
cat /tmp/cache/daemon.log | tail -5
