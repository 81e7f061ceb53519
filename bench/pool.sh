#!/usr/bin/env bash
# Attach to first I/O, cold vs from the warm pool (issue 10), in the VM rig:
# bench/vm-pool.sh there, then p50 / p99 here, into OUT/ratios.jsonl and a
# section of OUT/summary.md. Usage: bench/pool.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/pool.sh OUT}
BIN=${BIN:-target/release/spritedisk}
VM_RUNNER=${SPRITEDISK_VM_RUNNER:-tests/vm/rig/run-in-vm.sh}
if [ "${BENCH_QUICK:-0}" = 1 ]; then N=5 EXTENTS=10000; else N=${POOL_ATTACHES:-50} EXTENTS=${POOL_EXTENTS:-100000}; fi
mkdir -p "$OUT/raw" target
VM_OUT=$(mktemp -d "$PWD/target/bench-pool.XXXXXX")
echo "VM: attach to first I/O, cold vs pool, $N each at $EXTENTS extents (console in $OUT/raw/pool-console.log)" >&2
SPRITEDISK_VM_OUT="$VM_OUT" SPRITEDISK_ATTACHES=$N SPRITEDISK_EXTENTS=$EXTENTS SPRITEDISK_BIN="$(realpath "$BIN")" \
  "$VM_RUNNER" --scratch 8G --timeout 2400 -- bash bench/vm-pool.sh > "$OUT/raw/pool-console.log" 2>&1 ||
  { tail -30 "$OUT/raw/pool-console.log" >&2; echo "the VM pool bench failed" >&2; exit 1; }
rm -rf "$OUT/raw/pool"; mv "$VM_OUT" "$OUT/raw/pool"
python3 - "$OUT" <<'PY'
import os, subprocess, sys
out = sys.argv[1]
raw = os.path.join(out, "raw", "pool")
def ms(name):
    return sorted(int(l) / 1000 for l in open(os.path.join(raw, name)) if l.strip())
def pct(v, p):  # nearest rank
    return v[max(0, min(len(v) - 1, -(-p * len(v) // 100) - 1))]
cold, pool, floor = ms("cold.us"), ms("pool.us"), ms("floor.us")
binds = [tuple(map(int, l.split())) for l in open(os.path.join(raw, "pool-bind.txt")) if l.strip()]
ext = open(os.path.join(raw, "extents")).read().strip() or "?"
rows = []
for p in (50, 99):
    c, q = pct(cold, p), pct(pool, p)
    fl = pct(floor, p)
    rows.append(f"| p{p} | {c:,.0f} ms | {q:,.0f} ms | {c / q:.1f}× | {fl:,.0f} ms | {c - fl:,.0f} ms | {q - fl:,.0f} ms |")
    subprocess.run([sys.executable, "bench/ratios.py", "add", out, "--group", "pool (VM)",
                    "--measure", f"attach to first I/O p{p}, {ext} extents, from the pool",
                    "--value", f"{q:.3f}", "--unit", "ms", "--baseline", "cold attach",
                    "--baseline-value", f"{c:.3f}", "--lower-better", "--goal-max", "100"], check=True)
bind = sorted(b for b, _ in binds); opn = sorted(o for _, o in binds)
with open(os.path.join(out, "summary.md"), "a") as f:
    f.write(f"\n## Warm pool: attach to first I/O (VM rig, emulated; {len(cold)} attaches each, map of {ext} extents)\n\n")
    f.write("Each attach is timed from the command to the end of the first 4 KiB direct read; cold and pool attaches alternate.\n")
    f.write("Cold: a new daemon adds its device and opens the volume with an empty cache directory. Pool: a standby binds it.\n\n")
    f.write("Floor: starting the command and one 4 KiB direct read of a loop device, which every attach here pays (the VM is emulated; the binary, without debug info, is on the guest's tmpfs).\n\n")
    f.write("| | cold attach | from the pool | cold / pool | floor | cold − floor | pool − floor |\n|---|---|---|---|---|---|---|\n")
    f.write("\n".join(rows) + "\n\n")
    if bind:
        f.write(f"Inside the pool's attach (its own accounting), p50: bind {pct(bind, 50)} ms, of which opening the volume {pct(opn, 50)} ms.\n")
print("\n".join(rows), file=sys.stderr)
PY
