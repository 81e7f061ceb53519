#!/usr/bin/env python3
"""Turns bench/vm-ublk.sh's fio JSON (OUT/raw/vm) into ratios and a section
of OUT/summary.md: /dev/ublkbN against a file and a loop device on the same
scratch disk of the same VM run."""
import json, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ratios import record

out = sys.argv[1]
vm = os.path.join(out, "raw", "vm")


def have(job, target):
    return os.path.exists(os.path.join(vm, f"{job}-{target}.json"))


def val(job, target):
    j = json.load(open(os.path.join(vm, f"{job}-{target}.json")))["jobs"][0]
    r, w = j["read"], j["write"]
    if job.startswith("seq"):
        return (w["bw_bytes"] if w["io_bytes"] else r["bw_bytes"]) / 1e6, "MB/s"
    return r["iops"] + w["iops"], "IOPS"


jobs = [("seqwrite-1m", "1 MiB seq write QD8"), ("randread-4k-1", "4 KiB rand read QD1"),
        ("randread-4k-32", "4 KiB rand read QD32"), ("randwrite-4k-fsync32", "4 KiB rand write QD1, FLUSH every 32"),
        ("mix-70-30", "4 KiB 70/30 read/write QD16")]
BEFORE = os.environ.get("BIN_BEFORE_LABEL", "before")
# Issue 21's goals, ublk / loop device.
GOALS = {"seqwrite-1m": 0.5, "randread-4k-1": 0.7, "randread-4k-32": 0.8, "mix-70-30": 0.5}
rows = []
for job, label in jobs:
    if not have(job, "ublk"):  # the quick run skips some jobs
        continue
    f, unit = val(job, "file")
    lo, _ = val(job, "loop")
    u, _ = val(job, "ublk")
    warm = " (warm)" if "read" in job and "write" not in job else ""
    before = ""
    if have(job, "ublk-before"):
        b, _ = val(job, "ublk-before")
        before = f" | {b:,.0f} {unit} ({b / lo:.2f}× of loop)"
        record(out, "VM /dev/ublkb0", label + warm, u, unit, f"ublk, build {BEFORE}", b)
    rows.append(f"| {label}{warm} | {f:,.0f} {unit} | {lo:,.0f} {unit} | {u:,.0f} {unit} | {u / f:.2f}× | {u / lo:.2f}×{before} |")
    record(out, "VM /dev/ublkb0", label + warm, u, unit, "loop device", lo, goal_min=GOALS.get(job))
    record(out, "VM /dev/ublkb0", label + warm, u, unit, "file on the scratch disk", f)
for qd in (1, 32):
    if not have(f"randread-4k-{qd}", "ublk-cold"):
        continue
    f, unit = val(f"randread-4k-{qd}", "file")
    lo, _ = val(f"randread-4k-{qd}", "loop")
    u, _ = val(f"randread-4k-{qd}", "ublk-cold")
    rows.append(f"| 4 KiB rand read QD{qd} (cold cache) | {f:,.0f} {unit} | {lo:,.0f} {unit} | {u:,.0f} {unit} | {u / f:.2f}× | {u / lo:.2f}× |")
    record(out, "VM /dev/ublkb0", f"4 KiB rand read QD{qd} (cold cache)", u, unit, "loop device", lo)
md = [
    "",
    "## /dev/ublkb0 in the VM rig (emulated: ratios only)",
    "",
    "The same job files (bench/jobs) with io_uring and O_DIRECT on a file on the VM's scratch disk, on a loop device "
    "(direct I/O) over a file there, and on /dev/ublkb0 (file:// store and cache on that disk). Warm: the reads follow the "
    "write on the same attach; cold: the cache directory deleted and the volume attached again.",
    "",
    *(["With an older build's ublk numbers from the same VM run (" + BEFORE + ") in the last column.", ""]
      if any(have(j, "ublk-before") for j, _ in jobs) else []),
    "| job | file | loop device | /dev/ublkb0 | ublk / file | ublk / loop | ublk, older build |"
    if any(have(j, "ublk-before") for j, _ in jobs) else "| job | file | loop device | /dev/ublkb0 | ublk / file | ublk / loop |",
    "|---|---|---|---|---|---|---|" if any(have(j, "ublk-before") for j, _ in jobs) else "|---|---|---|---|---|---|",
    *rows,
]
open(os.path.join(out, "summary.md"), "a").write("\n".join(md) + "\n")
print("\n".join(md))

# The daemon's CPU per warm read against rublk's loop target (bench/vm-cpu.sh).
cpu = os.path.join(out, "raw", "vm-cpu", "cpu.jsonl")
if os.path.exists(cpu):
    per = {}
    for line in open(cpu):
        r = json.loads(line)
        per[r["target"]] = r["cpu_secs"] / r["reads"] * 1e6
    if "spritedisk" in per and "rublk-loop" in per:
        us, rb = per["spritedisk"], per["rublk-loop"]
        record(out, "VM /dev/ublkb0", "daemon CPU per warm 4 KiB read, QD32", us, "µs",
               "rublk's loop target", rb, lower_better=True, goal_min=round(1 / 1.5, 2))
        with open(os.path.join(out, "summary.md"), "a") as f:
            f.write("\nDaemon CPU time (utime + stime) per warm 4 KiB random read at QD32 in the same VM "
                    f"(`bench/vm-cpu.sh`): spritedisk {us:.1f} µs, rublk's loop target {rb:.1f} µs "
                    f"({us / rb:.2f}×; goal ≤ 1.5×).\n")
