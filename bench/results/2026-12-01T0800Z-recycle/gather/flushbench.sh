#!/bin/bash
# flushbench.sh OUT BIN_BEFORE BIN_AFTER: flush-4k (QD1) and flush-4k-16 on the raw file and NBD (before, after), twice, alternating.
set -euo pipefail
cd /work/main
OUT=$1; B0=$2; B1=$3; mkdir -p $OUT
export SIZE=${SIZE:-256M} RUNTIME=${RUNTIME:-15}
WORK=$(mktemp -d /var/tmp/flushbench.XXXXXX)
trap '[ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
. bench/lib.sh
truncate -s "$SIZE" "$WORK/raw.img"
for rep in 1 2; do
  for job in flush-4k flush-4k-16; do
    fio --ioengine=libaio --direct=1 --filename=$WORK/raw.img --output-format=json --output=$OUT/$job-raw-$rep.json bench/jobs/$job.fio >/dev/null
    for which in before after; do
      BIN=$B0; [ $which = after ] && BIN=$B1
      rm -rf $WORK/vol $WORK/cache
      "$BIN" create "file://$WORK/vol" --size 100G >/dev/null
      attach "file://$WORK/vol" "$WORK/cache"
      fio --ioengine=nbd "--uri=nbd+unix:///?socket=$WORK/nbd.sock" --output-format=json --output=$OUT/$job-$which-$rep.json bench/jobs/$job.fio >/dev/null
      "$BIN" stats "file://$WORK/vol" --cache-dir "$WORK/cache" --json > $OUT/$job-$which-$rep.stats.json || true
      detach
      echo "$job $which rep $rep done" >&2
    done
  done
done
