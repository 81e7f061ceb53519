#!/usr/bin/env bash
# `make bench`: every measurement against a baseline from the same run, as
# ratios (bench/ratios.py): the fio jobs of bench/jobs through the NBD
# frontend (fio's nbd engine, file:// store) vs a raw local file (libaio,
# O_DIRECT); the daemon's RSS; the read cache; attach, checkpoint and GC
# (replica.sh, takeover.sh, checkpoint.sh, gc.sh); s3:// vs the raw store and s3backer,
# on loopback and with a region's latency (s3.sh); /dev/ublkb0 in the VM rig
# vs a file and a loop device (vm-ublk.sh); attach from the warm pool vs
# cold (pool.sh, in the VM). Output: bench/results/DATE/
# summary.md (table, then one section per part), summary.json, plot.png.
# BENCH_QUICK=1: small sizes and short runs (a smoke run, ~3 min);
# BENCH_VM=0: skip the VM.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/spritedisk}
if [ "${BENCH_QUICK:-0}" = 1 ]; then SIZE=${SIZE:-128M} RUNTIME=${RUNTIME:-2} WRITE_TOTAL=${WRITE_TOTAL:-256M} SIZE_COLD_LATENCY=${SIZE_COLD_LATENCY:-32M}
else SIZE=${SIZE:-1G} RUNTIME=${RUNTIME:-20} WRITE_TOTAL=${WRITE_TOTAL:-4G} SIZE_COLD_LATENCY=${SIZE_COLD_LATENCY:-256M}; fi
export SIZE RUNTIME
OUT=${BENCH_OUT:-bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)}
PROXY=${PROXY:-$(dirname "$BIN")/s3-region-proxy}
export BIN PROXY
mkdir -p "$OUT/raw"
WORK=$(mktemp -d /var/tmp/spritedisk-bench.XXXXXX)
trap '[ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT

. bench/lib.sh
start_daemon() { attach "file://$WORK/vol" "$WORK/cache" "$@"; }
stop_daemon() { detach; }

NBD=(--ioengine=nbd "--uri=nbd+unix:///?socket=$WORK/nbd.sock")
RAW=(--ioengine=libaio --direct=1 "--filename=$WORK/raw.img")

run() { # name target job [env...]
  local name=$1 target=$2 job=$3; shift 3
  local args; if [ "$target" = nbd ]; then args=("${NBD[@]}"); else args=("${RAW[@]}"); fi
  env "$@" fio "${args[@]}" --output-format=json --output="$OUT/raw/$name-$target.json" "bench/jobs/$job.fio" >/dev/null
  echo "  $name on $target done" >&2
}

"$BIN" create "file://$WORK/vol" --size 100G >/dev/null
truncate -s "$SIZE" "$WORK/raw.img"
start_daemon
for t in raw nbd; do
  run seqwrite-1m $t seqwrite-1m
  run randread-4k-qd1 $t randread-4k QD=1
  run randread-4k-qd32 $t randread-4k QD=32
  run randwrite-4k-fsync32 $t randwrite-4k-fsync32
  run mix-70-30 $t mix-70-30
  run flush-4k $t flush-4k
  run flush-4k-16 $t flush-4k-16
done
stop_daemon
# --durability local (docs/design/0014): the same FLUSH jobs, a FLUSH
# returning at the write journal's fdatasync.
start_daemon --durability local
run flush-4k-local nbd flush-4k
run flush-4k-16-local nbd flush-4k-16
stop_daemon
# Cold random reads: the same volume, its cache deleted, against the raw
# file's numbers above (O_DIRECT: it is never cached either).
for qd in 1 32; do
  rm -rf "$WORK/cache/cache"
  start_daemon
  run randread-4k-qd$qd-cold nbd randread-4k QD=$qd
  stop_daemon
done

# Memory: write WRITE_TOTAL through a fresh daemon, then read its RSS.
rm -rf "$WORK/cache"
start_daemon
SIZE=$WRITE_TOTAL fio "${NBD[@]}" --name=fill --rw=write --bs=1m --iodepth=8 --size="$WRITE_TOTAL" --end_fsync=1 --output-format=json --output="$OUT/raw/fill.json" >/dev/null
RSS_KB=$(awk '/^VmRSS/ {print $2}' /proc/$PID/status)
HWM_KB=$(awk '/^VmHWM/ {print $2}' /proc/$PID/status)
"$BIN" stats "file://$WORK/vol" --cache-dir "$WORK/cache" --json > "$OUT/raw/stats.json"
stop_daemon

# Cache: the volume written above is detached cleanly, so its cache is warm.
# (1) 4 KiB random reads QD32 on the warm cache vs the same job on the cache
# file itself (the lines sit at its start); (2) 1 MiB sequential reads cold
# (cache deleted) vs warm, and cold without read-ahead; GETs counted by the
# daemon's live stats.
gets() { sleep 2.5; "$BIN" stats "file://$WORK/vol" --cache-dir "$WORK/cache" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["live"]["session_gets"])'; }
start_daemon
run warmup nbd seqread-1m  # the fill may have pushed the first lines out
run randread-4k-qd32-warm nbd randread-4k QD=32
stop_daemon
RAW=(--ioengine=libaio --direct=1 "--filename=$WORK/cache/cache/cache.data")
run randread-4k-qd32-warm cachefile randread-4k QD=32
# Cold reads on the store as it is (loopback file://) and with 20 ms added
# to every GET, as from a remote region; SIZE_COLD_LATENCY bounds the latter.
for lat in 0 20; do
  for mode in readahead noreadahead; do
    rm -rf "$WORK/cache/cache"
    EXTRA=(); [ $mode = noreadahead ] && EXTRA+=(--prefetch-window 0)
    [ $lat != 0 ] && EXTRA+=(--simulate-get-latency-ms $lat)
    start_daemon "${EXTRA[@]}"
    name=seqread-1m-cold-$mode-${lat}ms
    if [ $lat = 0 ]; then run $name nbd seqread-1m; else run $name nbd seqread-1m SIZE=$SIZE_COLD_LATENCY; fi
    gets > "$OUT/raw/$name.gets"
    if [ $mode = readahead ] && [ $lat = 0 ]; then run seqread-1m-warm nbd seqread-1m; fi
    stop_daemon
  done
done

python3 bench/report.py "$OUT" "$RSS_KB" "$HWM_KB" "$WRITE_TOTAL"
# The engine alone: warm reads by concurrent readers, lookups with and without the metadata lock.
bench/engine.sh "$OUT"
# Metadata replica: attach-to-first-I/O by map size, LTX bytes per FLUSH.
bench/replica.sh "$OUT"
# A --force takeover's attach to first I/O (BIN_BEFORE: also an older binary's).
bench/takeover.sh "$OUT"
# Checkpoint and restore latency by map size.
bench/checkpoint.sh "$OUT"
# Write amplification and space with GC running.
bench/gc.sh "$OUT"
# s3://: raw store vs spritedisk vs s3backer, loopback and a region profile.
bench/s3.sh "$OUT"
# /dev/ublkbN in the VM rig against a file and a loop device there.
VM_RUNNER=${SPRITEDISK_VM_RUNNER:-tests/vm/rig/run-in-vm.sh}
if [ "${BENCH_VM:-1}" = 1 ]; then
  [ -x "$VM_RUNNER" ] || { echo "$VM_RUNNER is missing (set SPRITEDISK_VM_RUNNER, or BENCH_VM=0 to skip the VM)" >&2; exit 1; }
  if [ "${BENCH_QUICK:-0}" = 1 ]; then VM_SIZE=64M VM_RUNTIME=2; else VM_SIZE=512M VM_RUNTIME=15; fi
  echo "VM: /dev/ublkb0 vs a file and a loop device (console in $OUT/raw/vm-console.log)" >&2
  # The guest writes only under the shared tree: its results land in target/ first.
  mkdir -p target; VM_OUT=$(mktemp -d "$PWD/target/bench-vm.XXXXXX")
  # The guest sees the host's / read-only but its own /tmp and /var/tmp:
  # an older binary from there is copied into the shared tree first.
  if [ -n "${BIN_BEFORE:-}" ]; then cp "$BIN_BEFORE" "$VM_OUT/spritedisk-before"; BIN_BEFORE=$VM_OUT/spritedisk-before; fi
  SPRITEDISK_VM_OUT="$VM_OUT" SPRITEDISK_SIZE=$VM_SIZE SPRITEDISK_RUNTIME=$VM_RUNTIME SPRITEDISK_BIN="$(realpath "$BIN")" \
    SPRITEDISK_BIN_BEFORE="${BIN_BEFORE:+$(realpath "$BIN_BEFORE")}" \
    SPRITEDISK_QUICK=${BENCH_QUICK:-0} "$VM_RUNNER" --scratch 8G --timeout 1500 -- bash bench/vm-ublk.sh > "$OUT/raw/vm-console.log" 2>&1 ||
    { tail -30 "$OUT/raw/vm-console.log" >&2; echo "the VM bench failed" >&2; exit 1; }
  rm -f "$VM_OUT/spritedisk-before"
  mv "$VM_OUT" "$OUT/raw/vm"
  # The daemon's CPU per warm read against rublk's loop target (issue 21),
  # in its own boot: rublk from PATH, or installed once (a few minutes).
  if [ "${BENCH_QUICK:-0}" != 1 ]; then
    RUBLK=${RUBLK:-$(command -v rublk || true)}
    if [ -z "$RUBLK" ]; then
      echo "VM CPU: installing rublk (cargo install rublk)" >&2
      cargo install rublk --locked >&2 ||
        { echo "could not install rublk (its build needs libclang-dev); BENCH_VM=0 skips the VM parts" >&2; exit 1; }
      RUBLK=$(command -v rublk || echo "$HOME/.cargo/bin/rublk")
    fi
    VM_CPU=$(mktemp -d "$PWD/target/bench-vm-cpu.XXXXXX")
    SPRITEDISK_VM_OUT="$VM_CPU" SPRITEDISK_RUBLK="$RUBLK" SPRITEDISK_BIN="$(realpath "$BIN")" SPRITEDISK_SIZE=256M \
      SPRITEDISK_RUNTIME=$VM_RUNTIME "$VM_RUNNER" --scratch 8G --timeout 900 -- bash bench/vm-cpu.sh > "$OUT/raw/vm-cpu-console.log" 2>&1 ||
      { tail -30 "$OUT/raw/vm-cpu-console.log" >&2; echo "the VM CPU bench failed" >&2; exit 1; }
    mv "$VM_CPU" "$OUT/raw/vm-cpu"
  fi
  python3 bench/vm-report.py "$OUT"
  # Attach to first I/O, cold vs from the warm pool (50 each at 100k extents).
  bench/pool.sh "$OUT"
fi
bench/ratios.py finish "$OUT"
echo "results in $OUT" >&2
