#!/usr/bin/env bash
# Checkpoint and restore latency against map size: a volume gets EXTENTS
# scattered 4 KiB writes (default 1k 10k 100k 1M), then `spritedisk
# checkpoint` and `spritedisk restore` run through the attached daemon's
# control socket, then `spritedisk fork` of the checkpoint; each reports the
# time until it is durable in the store.
# Appends a Markdown table to OUT/summary.md. Usage: bench/checkpoint.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/checkpoint.sh OUT}
BIN=${BIN:-target/release/spritedisk}
if [ "${BENCH_QUICK:-0}" = 1 ]; then EXTENTS=${EXTENTS:-"1000 10000"}; SETTLE=2; else EXTENTS=${EXTENTS:-"1000 10000 100000 1000000"}; SETTLE=5; fi
WORK=$(mktemp -d /var/tmp/spritedisk-ckpt.XXXXXX)
trap '[ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
URI="nbd+unix:///?socket=$WORK/nbd.sock"
. bench/lib.sh
ROWS=()
for n in $EXTENTS; do
  rm -rf "$WORK/vol" "$WORK/c"
  "$BIN" create "file://$WORK/vol" --size 100G >/dev/null
  attach "file://$WORK/vol" "$WORK/c"
  fio --name=fill --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 \
      --size=100G --number_ios="$n" --norandommap --randrepeat=0 --end_fsync=1 >/dev/null
  # Let the replica catch up with the fill (and take its snapshot): a
  # checkpoint ships only what changed since the last ship, and right after
  # a burst of random writes that is the burst's dirty pages.
  sleep "$SETTLE"
  ck=$("$BIN" checkpoint "file://$WORK/vol" base --cache-dir "$WORK/c")
  fio --name=more --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 \
      --size=100G --number_ios=1000 --norandommap --randrepeat=0 --end_fsync=1 >/dev/null
  rs=$("$BIN" restore "file://$WORK/vol" base --cache-dir "$WORK/c")
  rm -rf "$WORK/fork" "$WORK/fc"
  fk=$("$BIN" fork "file://$WORK/vol@base" "file://$WORK/fork" --cache-dir "$WORK/fc" 2>/dev/null)
  ext=$(echo "$ck" | sed -E 's/.*: ([0-9]+) extents.*/\1/')
  ck_ms=$(echo "$ck" | sed -E 's/.* in ([0-9]+) ms.*/\1/')
  rs_ms=$(echo "$rs" | sed -E 's/.* in ([0-9]+) ms.*/\1/')
  fk_ms=$(echo "$fk" | sed -E 's/.* in ([0-9]+) ms.*/\1/')
  echo "  $ext extents: checkpoint $ck_ms ms, restore $rs_ms ms, fork $fk_ms ms" >&2
  grep -E "checkpoint taken|restored" "$WORK/attach.log" | sed 's/^/    /' >&2 || true
  ROWS+=("| $ext | $ck_ms ms | $rs_ms ms | $fk_ms ms |")
  for what in checkpoint restore; do
    ms=$ck_ms; [ $what = restore ] && ms=$rs_ms
    bench/ratios.py add "$OUT" --group "checkpoint" --measure "$what, $ext extents, until durable" --value "$((ms > 0 ? ms : 1))" \
      --unit ms --baseline "fork (copies the map)" --baseline-value "$fk_ms" --lower-better --goal-max 1000
  done
  detach
done
{
  echo
  echo "## Checkpoint and restore (file:// store, through the daemon's control socket, until durable)"
  echo
  echo "| extents in the map | checkpoint | restore (1,000 rows changed since) | fork (O(map): the child's first snapshot) |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee -a "$OUT/summary.md"
