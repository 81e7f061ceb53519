#!/usr/bin/env bash
# Write amplification with GC running: random 4 KiB overwrites (fsync every
# 32; half the WORKING set per pass, uniform with repeats), in ROUNDS, with `spritedisk gc` after each round
# (online, through the daemon). Reports bytes PUT as segments (writes and
# compaction's copies) over bytes written by the client, and bytes stored
# over bytes live, per round. Appends a Markdown table to OUT/summary.md.
# Usage: bench/gc.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/gc.sh OUT}
BIN=${BIN:-target/release/spritedisk}
if [ "${BENCH_QUICK:-0}" = 1 ]; then WORKING=${WORKING:-32M} ROUNDS=${ROUNDS:-2}; else WORKING=${WORKING:-256M} ROUNDS=${ROUNDS:-6}; fi
WORK=$(mktemp -d /var/tmp/spritedisk-gc.XXXXXX)
trap '[ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID"; rm -rf "$WORK"' EXIT
URL="file://$WORK/vol"
URI="nbd+unix:///?socket=$WORK/nbd.sock"
"$BIN" create "$URL" --size 100G >/dev/null
. bench/lib.sh
attach "$URL" "$WORK/c"
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=4 --size="$WORKING" --end_fsync=1 >/dev/null
row() {
  "$BIN" stats "$URL" --json --cache-dir "$WORK/c" | python3 -c '
import json, sys
d = json.load(sys.stdin)["durable"]
w, p, s, l = d["client_bytes_written"], d["segment_bytes_put"], d["stored_bytes"], d["live_bytes"]
print(f"{w/2**20:.0f} MiB | {p/max(w,1):.2f} | {s/max(l,1):.2f} | {s/2**20:.0f} MiB |")'
}
ROWS=()
for r in $(seq "$ROUNDS"); do
  # Uniform random with repeats (no random map): half the working set's
  # size per pass, so segments die gradually, as under a database.
  fio --name=over --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --fsync=32 \
      --size="$WORKING" --io_size=$(( $(numfmt --from=iec "$WORKING") / 2 )) --norandommap \
      --randrepeat=0 --end_fsync=1 >/dev/null
  g=$("$BIN" gc "$URL" --cache-dir "$WORK/c" --json)
  copied=$(echo "$g" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(r["segments_compacted"], "compacted,", r["segments_deleted"], "deleted")')
  ROWS+=("| $r | $(row) $copied |")
  echo "  round $r: ${ROWS[-1]}" >&2
done
"$BIN" stats "$URL" --json --cache-dir "$WORK/c" | python3 -c '
import json, sys
d = json.load(sys.stdin)["durable"]
print(d["segment_bytes_put"] / max(d["client_bytes_written"], 1), d["stored_bytes"] / max(d["live_bytes"], 1))' | {
  read -r wa sl
  bench/ratios.py add "$OUT" --group "space" --measure "write amplification after $ROUNDS passes with gc" --value "$wa" \
    --unit "x" --baseline "ideal (each byte PUT once)" --baseline-value 1 --lower-better
  bench/ratios.py add "$OUT" --group "space" --measure "stored / live after $ROUNDS passes with gc" --value "$sl" \
    --unit "x" --baseline "ideal (nothing dead kept)" --baseline-value 1 --lower-better
}
detach
{
  echo
  echo "## Write amplification with GC (random 4 KiB overwrites, half of a $WORKING working set per pass, fsync every 32, \`spritedisk gc\` (compaction below 50% referenced) after each pass; file:// store)"
  echo
  echo "| pass | client bytes written | write amplification (segment bytes PUT / written) | stored / live | stored | gc |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee -a "$OUT/summary.md"
