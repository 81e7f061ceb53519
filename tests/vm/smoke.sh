set -x
B=$PWD/target/debug/spritedisk
$B create file:///tmp/store/vol --size 1G
DEV=$($B attach file:///tmp/store/vol --cache-dir /tmp/cache --queues 2) || { cat /tmp/cache/daemon.log; exit 1; }
dd if=/dev/urandom of=/tmp/a bs=1M count=8 status=none
dd if=/tmp/a of=$DEV bs=1M oflag=direct conv=fsync status=none
PID=$($B list --json | grep '"pid"' | tr -dc 0-9)
kill -9 $PID
sleep 1
$B list
( dd if=$DEV of=/tmp/b bs=1M count=8 iflag=direct status=none; echo READ_DONE ) &
sleep 1
$B recover $DEV || { cat /tmp/cache/daemon.log; exit 1; }
wait
cmp /tmp/a /tmp/b && echo SAME
$B detach $DEV
ls /dev/ublk*
tail -5 /tmp/cache/daemon.log
