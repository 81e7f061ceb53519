#!/usr/bin/env python3
"""bench/engine.sh's JSON (OUT/raw/engine-*.json) as ratios and a section of
OUT/summary.md: a sequential write against a plain file in the same
directory, with the time of each stage of the write pipeline; warm reads/s
by concurrent readers, read-only connections against locked lookups in the
same run, and how the rate scales with readers (2 cores: up to 2)."""
import json, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ratios import record

out = sys.argv[1]
load = lambda n: json.load(open(os.path.join(out, "raw", f"engine-{n}.json")))
locked, nomemo, readers = load("locked"), load("nomemo"), load("readers")
by = lambda j: {s["readers"]: s for s in j["steps"]}
L, N, R = by(locked), by(nomemo), by(readers)
G = "engine alone"
rows = []
for n in sorted(R):
    r, m, l = R[n], N[n], L[n]
    rows.append(f"| {n} | {l['reads_per_sec']:,.0f} | {l['lookup_us']:.1f} µs | {l['lock_wait_us_per_read']:.2f} µs "
                f"| {m['reads_per_sec']:,.0f} | {m['lookup_us']:.1f} µs | {m['lock_wait_us_per_read']:.2f} µs "
                f"| {m['reads_per_sec'] / l['reads_per_sec']:.2f}× "
                f"| {r['reads_per_sec']:,.0f} | {r.get('memo_hits_per_read', 0):.2f} "
                f"| {r['reads_per_sec'] / m['reads_per_sec']:.2f}× |")
    record(out, G, f"warm 4 KiB reads/s, {n} concurrent readers, read-only connections", m["reads_per_sec"], "reads/s",
           "lookups under the metadata lock", l["reads_per_sec"])
    record(out, G, f"warm 4 KiB reads/s, {n} concurrent readers, lookup memo", r["reads_per_sec"], "reads/s",
           "every lookup in SQLite", m["reads_per_sec"])
if 1 in R and 2 in R:
    record(out, G, "warm 4 KiB reads/s, 2 readers", R[2]["reads_per_sec"], "reads/s",
           "1 reader (2 cores: ideal 2×)", R[1]["reads_per_sec"])
md = ["", "## The engine alone (no frontend)", "",
      f"`spritedisk engine-bench`: a file:// volume of {readers['data_bytes'] >> 20} MiB written sequentially and then a quarter "
      f"of its blocks overwritten one by one ({readers['extents']:,} extents), flushed and read once, so every read is a warm "
      f"cache hit; then warm 4 KiB random reads for {readers['seconds']} s per step by N tasks on {readers['worker_threads']} "
      "runtime threads. Locked: map lookups on the writer's connection under the metadata lock (before docs/design/0011); "
      "read-only: on read-only connections, every lookup in SQLite (before docs/design/0018); memo: lookups remembered "
      "until the map changes (hits: the share of reads it answered). Lookup: time per SQLite lookup (including any wait); "
      "lock wait: time a read waited for an engine-wide lock (the state lock, and the metadata lock when locked).", "",
      "| readers | locked: reads/s | lookup | lock wait | read-only: reads/s | lookup | lock wait | read-only / locked "
      "| memo: reads/s | hits | memo / read-only |",
      "|---|---|---|---|---|---|---|---|---|---|---|", *rows]
# The sequential write (both runs write the same way; the second is reported).
w = readers.get("seq_write")
if w:
    record(out, G, "1 MiB seq write QD8 until FLUSH", w["volume_mb_per_sec"], "MB/s",
           "a plain file in the same directory, fsync at the end", w["raw_file_mb_per_sec"])
    st = w["ms_per_mib"]
    md += ["", f"Sequential write: {w['bytes'] >> 20} MiB in 1 MiB writes, {w['queue_depth']} in flight, then FLUSH, "
           "against a plain file in the same directory written the same way with one fsync at the end. With the "
           "file:// store and the cache on the same disk each byte is written three times (write log, store, "
           "cache): the floor is about 1/3. Stage times in ms per MiB, summed over concurrent work.", "",
           "| engine MB/s | plain file MB/s | ratio | room wait | admit | seal | PUT | cache fill | apply |",
           "|---|---|---|---|---|---|---|---|---|",
           f"| {w['volume_mb_per_sec']:,.0f} | {w['raw_file_mb_per_sec']:,.0f} | {w['ratio']:.2f}× "
           + " ".join(f"| {st[k]:.2f}" for k in ["room_wait", "admit", "seal", "put", "cache_fill", "apply"]) + " |"]
open(os.path.join(out, "summary.md"), "a").write("\n".join(md) + "\n")
print("\n".join(md))
