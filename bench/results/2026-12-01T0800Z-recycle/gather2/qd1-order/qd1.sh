#!/bin/bash
# QD1 store-mode FLUSH, after first then before, three rounds: is the gap
# of round 1 in flushbench.sh the order or the change?
set -euo pipefail
cd /work/main
OUT=$1; B0=$2; B1=$3
export SIZE=256M RUNTIME=10
WORK=$(mktemp -d /var/tmp/qd1.XXXXXX)
trap '[ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
. bench/lib.sh
for rep in 1 2 3; do
  for which in after before; do
    BIN=$B0; [ $which = after ] && BIN=$B1
    rm -rf $WORK/vol $WORK/cache
    "$BIN" create "file://$WORK/vol" --size 100G >/dev/null
    attach "file://$WORK/vol" "$WORK/cache"
    fio --ioengine=nbd "--uri=nbd+unix:///?socket=$WORK/nbd.sock" --output-format=json --output=$OUT/flush-4k-$which-$rep.json bench/jobs/flush-4k.fio >/dev/null
    detach
    python3 -c "import json; j=json.load(open('$OUT/flush-4k-$which-$rep.json'))['jobs'][0]; print('$which $rep', round(j['write']['iops']), j['sync']['lat_ns']['percentile']['50.000000']/1e3)"
  done
done
