#!/usr/bin/env python3
"""Turns bench/run.sh's fio JSON into a Markdown table of ratios and a summary JSON."""
import json, os, platform, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ratios import record

out, rss_kb, hwm_kb, write_total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
raw = os.path.join(out, "raw")

def load(name, target):
    with open(os.path.join(raw, f"{name}-{target}.json")) as f:
        return json.load(f)["jobs"][0]

def metric(job, kind):
    side = job["write"] if job["write"]["io_bytes"] > 0 else job["read"]
    if kind == "bw":
        return side["bw_bytes"] / 1e6, "MB/s"
    return side["iops"], "IOPS"

rows, summary = [], {}
def mixed_iops(job):
    return job["read"]["iops"] + job["write"]["iops"]

def sync_pct(job, p):
    return job["sync"]["lat_ns"]["percentile"][p] / 1e6

HOST = "host NBD, file://"
jobs = [("seqwrite-1m", "bw", "1 MiB seq write QD8"), ("randread-4k-qd1", "iops", "4 KiB rand read QD1, warm"),
        ("randread-4k-qd32", "iops", "4 KiB rand read QD32, warm"),
        ("randwrite-4k-fsync32", "iops", "4 KiB rand write QD1, FLUSH every 32"), ("mix-70-30", "mix", "4 KiB 70/30 read/write QD16")]
for name, kind, label in jobs:
    if kind == "mix":
        r, n, unit = mixed_iops(load(name, "raw")), mixed_iops(load(name, "nbd")), "IOPS"
    else:
        r, unit = metric(load(name, "raw"), kind)
        n, _ = metric(load(name, "nbd"), kind)
    job = load(name, "nbd")
    side = job["write"] if job["write"]["io_bytes"] > 0 else job["read"]
    p99 = side.get("clat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1e3
    syncs = job.get("sync", {}).get("total_ios", 0)
    rows.append(f"| {name} | {r:,.0f} {unit} | {n:,.0f} {unit} | {n / r:.2f}× | {p99:,.0f} µs |")
    summary[name] = {"raw": r, "nbd": n, "ratio": n / r, "unit": unit, "nbd_p99_us": p99, "nbd_syncs": syncs}
    record(out, HOST, label, n, unit, "raw file", r, goal_min=0.5 if name == "seqwrite-1m" else None)
# FLUSH latency: fio's sync latency, 4 KiB write + FLUSH at QD1, vs fsync of the raw file.
for p, label in (("50.000000", "p50"), ("99.000000", "p99")):
    r, n = sync_pct(load("flush-4k", "raw"), p), sync_pct(load("flush-4k", "nbd"), p)
    rows.append(f"| flush-4k {label} | {r:,.2f} ms | {n:,.2f} ms | {r / n:.2f}× | |")
    summary[f"flush-4k-{label}"] = {"raw_ms": r, "nbd_ms": n}
    record(out, HOST, f"FLUSH latency {label} (4 KiB write + FLUSH, QD1)", n, "ms", "fsync of the raw file", r, lower_better=True)
# Group commit: 16 writers each writing 4 KiB then FLUSHing (commits/s).
r, n = metric(load("flush-4k-16", "raw"), "iops")[0], metric(load("flush-4k-16", "nbd"), "iops")[0]
rp50, np50 = sync_pct(load("flush-4k-16", "raw"), "50.000000"), sync_pct(load("flush-4k-16", "nbd"), "50.000000")
rows.append(f"| flush-4k-16 (16 writers, write + FLUSH each) | {r:,.0f} IOPS, p50 {rp50:,.2f} ms | {n:,.0f} IOPS, p50 {np50:,.2f} ms | {n / r:.2f}× | |")
summary["flush-4k-16"] = {"raw": r, "nbd": n, "ratio": n / r, "raw_p50_ms": rp50, "nbd_p50_ms": np50}
record(out, HOST, "4 KiB write + FLUSH, 16 writers (group commit)", n, "IOPS", "raw file, fsync per write", r, goal_min=0.3)
# --durability local: the same two jobs, a FLUSH at the journal's fdatasync (0014).
r, n = metric(load("flush-4k", "raw"), "iops")[0], metric(load("flush-4k-local", "nbd"), "iops")[0]
rp50, np50 = sync_pct(load("flush-4k", "raw"), "50.000000"), sync_pct(load("flush-4k-local", "nbd"), "50.000000")
rows.append(f"| flush-4k, --durability local | {r:,.0f} IOPS, p50 {rp50:,.2f} ms | {n:,.0f} IOPS, p50 {np50:,.2f} ms | {n / r:.2f}× | |")
summary["flush-4k-local"] = {"raw": r, "nbd": n, "ratio": n / r, "raw_p50_ms": rp50, "nbd_p50_ms": np50}
record(out, HOST, "4 KiB write + FLUSH QD1, --durability local", n, "IOPS", "raw file, fsync per write", r, goal_min=0.5)
r, n = metric(load("flush-4k-16", "raw"), "iops")[0], metric(load("flush-4k-16-local", "nbd"), "iops")[0]
rp50, np50 = sync_pct(load("flush-4k-16", "raw"), "50.000000"), sync_pct(load("flush-4k-16-local", "nbd"), "50.000000")
rows.append(f"| flush-4k-16, --durability local | {r:,.0f} IOPS, p50 {rp50:,.2f} ms | {n:,.0f} IOPS, p50 {np50:,.2f} ms | {n / r:.2f}× | |")
summary["flush-4k-16-local"] = {"raw": r, "nbd": n, "ratio": n / r, "raw_p50_ms": rp50, "nbd_p50_ms": np50}
record(out, HOST, "4 KiB write + FLUSH, 16 writers, --durability local", n, "IOPS", "raw file, fsync per write", r)
for qd in (1, 32):
    r, n = metric(load(f"randread-4k-qd{qd}", "raw"), "iops")[0], metric(load(f"randread-4k-qd{qd}-cold", "nbd"), "iops")[0]
    rows.append(f"| randread-4k-qd{qd}, cold cache | {r:,.0f} IOPS | {n:,.0f} IOPS | {n / r:.2f}× | |")
    summary[f"randread-4k-qd{qd}-cold"] = {"raw": r, "nbd": n}
    record(out, HOST, f"4 KiB rand read QD{qd}, cold cache", n, "IOPS", "raw file", r)

# Cache: warm random reads vs the cache file itself; cold vs warm sequential reads.
def bw(name, target):
    return metric(load(name, target), "bw")[0]
def gets(name):
    return int(open(os.path.join(raw, f"{name}.gets")).read())
def secs(name, target):
    return load(name, target)["read"]["runtime"] / 1e3
warm, cachefile = metric(load("randread-4k-qd32-warm", "nbd"), "iops")[0], metric(load("randread-4k-qd32-warm", "cachefile"), "iops")[0]
warm_seq = bw("seqread-1m-warm", "nbd")
cold = {}
for lat in (0, 20):
    for mode in ("readahead", "noreadahead"):
        name = f"seqread-1m-cold-{mode}-{lat}ms"
        cold[(lat, mode)] = {"mbps": bw(name, "nbd"), "gets": gets(name), "secs": secs(name, "nbd")}
def cell(c):
    return f"{c['mbps']:,.0f} MB/s, {c['gets']:,} GETs, {c['secs']:.1f} s"
cache_rows = [
    f"| 4 KiB random read QD32, warm cache | {warm:,.0f} IOPS | fio on the cache file: {cachefile:,.0f} IOPS | {warm / cachefile:.2f}× (goal ≥ 0.8×) |",
    f"| 1 MiB sequential read QD1, warm | {warm_seq:,.0f} MB/s | cold (loopback store, read-ahead): {cold[(0, 'readahead')]['mbps']:,.0f} MB/s | warm/cold {warm_seq / cold[(0, 'readahead')]['mbps']:.2f}× |",
]
for lat, what in ((0, "loopback store"), (20, "20 ms per GET")):
    ra, nora = cold[(lat, "readahead")], cold[(lat, "noreadahead")]
    cache_rows.append(f"| 1 MiB sequential read QD1, cold, {what}, read-ahead 4 MiB | {cell(ra)} | no read-ahead: {cell(nora)} | {ra['mbps'] / nora['mbps']:.2f}× |")
record(out, "cache", "4 KiB rand read QD32, warm cache", warm, "IOPS", "fio on the cache file", cachefile, goal_min=0.8)
record(out, "cache", "1 MiB seq read QD1, warm", warm_seq, "MB/s", "cold, loopback store", cold[(0, "readahead")]["mbps"])
for lat in (0, 20):
    record(out, "cache", f"1 MiB seq read QD1, cold, {lat} ms per GET: read-ahead", cold[(lat, "readahead")]["mbps"], "MB/s",
           "no read-ahead", cold[(lat, "noreadahead")]["mbps"])
summary["cache"] = {
    "randread_4k_qd32_warm_iops": warm, "randread_4k_qd32_cachefile_iops": cachefile, "ratio": warm / cachefile,
    "seqread_1m_warm_mbps": warm_seq,
    "seqread_1m_cold": {f"{lat}ms_{mode}": v for (lat, mode), v in cold.items()},
}

stats = json.load(open(os.path.join(raw, "stats.json")))["durable"]
summary["memory"] = {"written": write_total, "rss_kib": rss_kb, "peak_rss_kib": hwm_kb}
summary["write_amplification"] = stats["stored_bytes"] / max(1, stats["client_bytes_written"])
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
md = [
    f"# spritedisk NBD vs raw file — {os.path.basename(out)}",
    "",
    f"Machine: {platform.node()}, {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}. "
    "spritedisk: release build, file:// store on the same disk, NBD over a Unix socket, fio nbd engine; "
    "raw: the same fio job on a local file with libaio and O_DIRECT. Read jobs run after the write job on the same daemon, so they read a warm cache (written data is cached once durable).",
    "",
    "| job | raw file | spritedisk (NBD) | ratio | NBD p99 latency |",
    "|---|---|---|---|---|",
    *rows,
    "",
    "## Read cache",
    "",
    "Same file:// store and volume; the cache file is the daemon's own (`CACHE_DIR/cache/cache.data`), read by fio with libaio and O_DIRECT while the daemon is detached. Cold = cache directory deleted before attach.",
    "",
    "| measure | spritedisk | baseline | ratio |",
    "|---|---|---|---|",
    *cache_rows,
    "",
    f"Daemon RSS after writing {write_total} through it: {rss_kb / 1024:.0f} MiB (peak {hwm_kb / 1024:.0f} MiB). "
    f"Write amplification (bytes stored / bytes written): {summary['write_amplification']:.3f}.",
]
open(os.path.join(out, "summary.md"), "w").write("\n".join(md) + "\n")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print("\n".join(md))
