#!/usr/bin/env bash
# The engine alone (no frontend): a 1 MiB sequential write at QD8 until
# FLUSH against a plain file in the same directory, with the time of each
# stage of the write pipeline (docs/design/0012); warm 4 KiB random reads/s with 1, 2, 4 and
# 8 concurrent readers, map lookups on read-only connections (docs/design/
# 0011) against the same run with lookups on the writer's connection under
# its lock (the path before 0011, and the one metadata in memory takes),
# and with every lookup in SQLite (before docs/design/0018's memo);
# lookup time and lock wait per read. `spritedisk engine-bench` prints the
# JSON; bench/engine-report.py makes the ratios and a section of summary.md.
#   bench/engine.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1
BIN=${BIN:-target/release/spritedisk}
if [ "${BENCH_QUICK:-0}" = 1 ]; then ESIZE=64M ESECS=1; else ESIZE=256M ESECS=5; fi
W=$(mktemp -d /var/tmp/spritedisk-engine-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT/raw"
"$BIN" engine-bench "$W/locked" --size $ESIZE --seconds $ESECS --locked-lookups --no-lookup-memo > "$OUT/raw/engine-locked.json"
"$BIN" engine-bench "$W/nomemo" --size $ESIZE --seconds $ESECS --no-lookup-memo > "$OUT/raw/engine-nomemo.json"
"$BIN" engine-bench "$W/readers" --size $ESIZE --seconds $ESECS > "$OUT/raw/engine-readers.json"
python3 bench/engine-report.py "$OUT"
