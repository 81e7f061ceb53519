#!/bin/bash
# flushbench.sh OUT BIN_BEFORE BIN_AFTER: flush-4k (QD1) and flush-4k-16 on the
# raw file (fsync per write) and on NBD (before, after), alternating.
# Knobs (defaults: what this run used): REPS (2), JOBS ("flush-4k flush-4k-16"),
# ORDER ("before after"), ATTACH_ARGS (e.g. "--durability local"), RAW (1: also
# the raw file), SIZE (256M), RUNTIME (15). The journal's files are listed
# beside each result (OUT/JOB-WHICH-REP.wlog.txt).
set -euo pipefail
cd /work/main
OUT=$1; B0=$2; B1=$3; mkdir -p $OUT
export SIZE=${SIZE:-256M} RUNTIME=${RUNTIME:-15}
REPS=${REPS:-2} JOBS=${JOBS:-"flush-4k flush-4k-16"} ORDER=${ORDER:-"before after"} RAW=${RAW:-1}
read -r -a EXTRA <<<"${ATTACH_ARGS:-}"
WORK=$(mktemp -d /var/tmp/flushbench.XXXXXX)
trap '[ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
. bench/lib.sh
truncate -s "$SIZE" "$WORK/raw.img"
for rep in $(seq 1 "$REPS"); do
  for job in $JOBS; do
    [ "$RAW" = 1 ] && fio --ioengine=libaio --direct=1 --filename=$WORK/raw.img --output-format=json --output=$OUT/$job-raw-$rep.json bench/jobs/$job.fio >/dev/null
    for which in $ORDER; do
      BIN=$B0; [ $which = after ] && BIN=$B1
      rm -rf $WORK/vol $WORK/cache
      "$BIN" create "file://$WORK/vol" --size 100G >/dev/null
      attach "file://$WORK/vol" "$WORK/cache" "${EXTRA[@]}"
      fio --ioengine=nbd "--uri=nbd+unix:///?socket=$WORK/nbd.sock" --output-format=json --output=$OUT/$job-$which-$rep.json bench/jobs/$job.fio >/dev/null
      "$BIN" stats "file://$WORK/vol" --cache-dir "$WORK/cache" --json > $OUT/$job-$which-$rep.stats.json || true
      ls -l $WORK/cache/wlog > $OUT/$job-$which-$rep.wlog.txt 2>/dev/null || true
      detach
      echo "$job $which rep $rep done" >&2
    done
  done
done
