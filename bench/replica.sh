#!/usr/bin/env bash
# Metadata replica: (1) attach-to-first-I/O on a fresh machine (empty cache
# directory) for maps of EXTENTS (default 10k 100k 1M extents), restoring the
# metadata from the replica vs rolling forward over every segment (replica
# moved aside); (2) LTX bytes shipped per FLUSH under 4 KiB random writes
# with a FLUSH after each. Appends a Markdown section to OUT/summary.md.
# Usage: bench/replica.sh OUT   (BENCH_QUICK=1: 10k extents only)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/replica.sh OUT}
BIN=${BIN:-target/release/spritedisk}
if [ "${BENCH_QUICK:-0}" = 1 ]; then EXTENTS=${EXTENTS:-10000}; LTX_SECS=3; else EXTENTS=${EXTENTS:-"10000 100000 1000000"}; LTX_SECS=10; fi
mkdir -p "$OUT/raw"
WORK=$(mktemp -d /var/tmp/spritedisk-replica.XXXXXX)
trap '[ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
URI="nbd+unix:///?socket=$WORK/nbd.sock"

. bench/lib.sh
start() { attach "file://$WORK/vol" "$1"; }
stop() { detach; }
now_ms() { date +%s%3N; }
live() { # field of the live stats
  sleep 2.5
  "$BIN" stats "file://$WORK/vol" --cache-dir "$1" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['live']['$2'])"
}

ROWS=()
for n in $EXTENTS; do
  rm -rf "$WORK/vol" "$WORK/c"
  "$BIN" create "file://$WORK/vol" --size 100G >/dev/null
  start "$WORK/c"
  # n scattered 4 KiB writes over 100 GiB: almost every one its own extent.
  fio --name=fill --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 \
      --size=100G --number_ios="$n" --norandommap --randrepeat=0 --end_fsync=1 >/dev/null
  ext=$(live "$WORK/c" extents)
  stop
  for mode in replica segments; do
    rm -rf "$WORK/fresh"
    [ $mode = segments ] && mv "$WORK/vol/meta" "$WORK/meta.aside"
    t0=$(now_ms)
    start "$WORK/fresh"
    qemu-io -f raw "$URI" -c 'read 0 4096' >/dev/null
    t1=$(now_ms)
    stop
    [ $mode = segments ] && { rm -rf "$WORK/vol/meta"; mv "$WORK/meta.aside" "$WORK/vol/meta"; }
    eval "ms_$mode=$((t1 - t0))"
    echo "  $n writes ($ext extents): first I/O after $((t1 - t0)) ms ($mode)" >&2
  done
  ROWS+=("| $ext | $ms_replica ms | $ms_segments ms | $(python3 -c "print(f'{$ms_segments/$ms_replica:.1f}')")× |")
  bench/ratios.py add "$OUT" --group "attach" --measure "fresh machine, first I/O from the replica, $ext extents" \
    --value "$ms_replica" --unit ms --baseline "roll-forward over segments" --baseline-value "$ms_segments" --lower-better --goal-max 1000
done

# LTX bytes per FLUSH: 4 KiB random writes, a FLUSH after each, LTX_SECS.
rm -rf "$WORK/vol" "$WORK/c"
"$BIN" create "file://$WORK/vol" --size 100G >/dev/null
start "$WORK/c"
fio --name=sync --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=1 --size=100G \
    --fsync=1 --time_based --runtime="$LTX_SECS" --norandommap >/dev/null
flushes=$(live "$WORK/c" session_flushes)
ltx=$("$BIN" stats "file://$WORK/vol" --cache-dir "$WORK/c" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['live']['session_replica_bytes'])")
files=$("$BIN" stats "file://$WORK/vol" --cache-dir "$WORK/c" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['live']['session_replica_files'])")
stop

{
  echo
  echo "## Metadata replica"
  echo
  echo "Attach to first I/O on a fresh machine (empty cache directory; process start, lease, metadata, roll-forward, a 4 KiB read through qemu-io), same store, same run:"
  echo
  echo "| extents in the map | restored from the replica | rolled forward from segments | ratio |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "4 KiB random writes with a FLUSH after each (${LTX_SECS} s): $flushes flushes, $files LTX files, $ltx bytes shipped: $((ltx / (flushes > 0 ? flushes : 1))) bytes of LTX per FLUSH (files are shipped once a second, not per FLUSH)."
} | tee -a "$OUT/summary.md"
