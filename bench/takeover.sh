#!/usr/bin/env bash
# A `--force` takeover's time to first I/O (issue 19): a daemon serves the
# volume (file:// store, NBD); a second `attach --force` takes it over, and
# the time runs from starting that command to a 4 KiB read through its NBD
# socket (qemu-io). Baseline, same run: a plain attach of the same volume
# once the first daemon detached (the floor every attach pays). With
# BIN_BEFORE (a binary of an older commit), the same takeover with it too:
# the before/after of a protocol change. N rounds each, alternating.
# Appends a section to OUT/summary.md.
# Usage: bench/takeover.sh OUT   (BENCH_QUICK=1: 3 rounds; default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/takeover.sh OUT}
BIN=${BIN:-target/release/spritedisk}
BIN_BEFORE=${BIN_BEFORE:-}   # and BIN_BEFORE_LABEL, what to call it
if [ "${BENCH_QUICK:-0}" = 1 ]; then N=${N:-3}; else N=${N:-10}; fi
mkdir -p "$OUT/raw"
WORK=$(mktemp -d /var/tmp/spritedisk-takeover.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
now_ms() { date +%s%3N; }

. bench/lib.sh
# serve BIN SOCKET CACHE [ARGS...]: a daemon of BIN on SOCKET, waited for.
serve() {
  local bin=$1 sock=$2 cache=$3; shift 3
  BIN=$bin SOCK=$sock LOG=$sock attach "file://$WORK/vol" "$cache" "$@"
  PIDS+=("$PID")
  SERVED=$PID
}
first_io() { qemu-io -f raw "nbd+unix:///?socket=$1" -c 'read 0 4096' >/dev/null; }
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# one KIND BIN: prints the ms from starting the second attach to its first I/O.
one() {
  local kind=$1 bin=$2
  rm -rf "$WORK/c1" "$WORK/c2"
  serve "$bin" "$WORK/a.sock" "$WORK/c1"
  local a=$SERVED
  qemu-io -f raw "nbd+unix:///?socket=$WORK/a.sock" -c 'write -P 7 0 1M' -c flush >/dev/null
  local force=()
  if [ "$kind" = plain ]; then stop "$a"; else force=(--force); fi
  local t0; t0=$(now_ms)
  serve "$bin" "$WORK/b.sock" "$WORK/c2" "${force[@]}"
  local b=$SERVED
  first_io "$WORK/b.sock"
  local t1; t1=$(now_ms)
  stop "$b"
  [ "$kind" = plain ] || stop "$a"
  echo $((t1 - t0))
}

"$BIN" create "file://$WORK/vol" --size 100G >/dev/null
declare -A MS
kinds="force plain"
[ -n "$BIN_BEFORE" ] && kinds="force plain before"
for i in $(seq "$N"); do
  for k in $kinds; do
    bin=$BIN; kind=$k
    [ "$k" = before ] && { bin=$BIN_BEFORE; kind=force; }
    ms=$(one "$kind" "$bin")
    MS[$k]="${MS[$k]:-} $ms"
    echo "  round $i: $k $ms ms" >&2
  done
done
p50() { python3 -c "import statistics,sys; print(int(statistics.median(int(x) for x in sys.argv[1:])))" $1; }
force=$(p50 "${MS[force]}"); plain=$(p50 "${MS[plain]}")
bench/ratios.py add "$OUT" --group "attach" --measure "--force takeover to first I/O p50 (file://)" \
  --value "$force" --unit ms --baseline "plain attach of a detached volume" --baseline-value "$plain" --lower-better
{
  echo
  echo "## --force takeover to first I/O"
  echo
  echo "From starting \`attach --force\` while another daemon serves the volume to a 4 KiB read through the new daemon (file:// store, $N rounds each, alternating; p50):"
  echo
  echo "| attach | p50 | all (ms) |"
  echo "|---|---|---|"
  echo "| --force takeover | $force ms | ${MS[force]} |"
  echo "| plain attach of a detached volume (floor) | $plain ms | ${MS[plain]} |"
  if [ -n "$BIN_BEFORE" ]; then
    before=$(p50 "${MS[before]}")
    echo "| --force takeover, ${BIN_BEFORE_LABEL:-$BIN_BEFORE} | $before ms | ${MS[before]} |"
  fi
} | tee -a "$OUT/summary.md"
