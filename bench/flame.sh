#!/usr/bin/env bash
# Profiles the daemon on /dev/ublkb0 in the VM rig (bench/vm-profile.sh:
# perf record -g under a 1 MiB sequential write and a warm 4 KiB random
# read QD32) and makes a flame graph of each with inferno
# (`cargo install inferno` if it is missing). Output: OUT/profile-vm/
# (JOB.svg, JOB.folded, JOB-report.txt, the fio JSON).
#   bench/flame.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/flame.sh OUT}
BIN=${BIN:-target/release/spritedisk}
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
mkdir -p target "$OUT/profile-vm"
P=$(mktemp -d "$PWD/target/prof-vm.XXXXXX")
SPRITEDISK_VM_OUT="$P" SPRITEDISK_BIN="$(realpath "$BIN")" \
  tests/vm/rig/run-in-vm.sh --scratch 8G --timeout 1200 -- bash bench/vm-profile.sh > "$OUT/profile-vm/console.log" 2>&1
for j in seqwrite-1m randread-4k-32; do
  inferno-collapse-perf "$P/$j.perf-script" > "$OUT/profile-vm/$j.folded"
  inferno-flamegraph --title "spritedisk daemon, VM rig: $j" "$OUT/profile-vm/$j.folded" > "$OUT/profile-vm/$j.svg"
  cp "$P/$j-report.txt" "$P/$j.json" "$OUT/profile-vm/"
done
rm -rf "$P"
echo "flame graphs in $OUT/profile-vm" >&2
