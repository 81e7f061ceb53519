#!/usr/bin/env bash
# spritedisk on s3:// against the raw object store, same server, same run:
# raw parallel PUT/GET of 8 MiB objects (spritedisk store-bench) vs 1 MiB
# sequential write and cold 1 MiB sequential read through NBD; FLUSH latency
# of 4 KiB writes (fio fsync after each) vs one raw PUT of the same size;
# cold 4 KiB reads at QD32, one in each 64 KiB piece (each fetches the piece
# around it) vs random ranged GETs of 64 KiB, 32 in flight, on raw objects.
# Profiles: moto (threaded, as shipped) and s3s-fs on loopback, each on a
# free port, and moto behind s3-region-proxy (REGION_FIRST_BYTE_MS=20 to the
# first byte of every answer, REGION_STREAM_MBPS=100 per connection), as a
# real region is: a 1 ms loopback server flatters every design.
# The peer on the same servers: s3backer (Debian package, FUSE).
# Usage: bench/s3.sh OUT    (BENCH_QUICK=1: smaller sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/s3.sh OUT}
BIN=${BIN:-target/release/spritedisk}
if [ "${BENCH_QUICK:-0}" = 1 ]; then SIZE=${SIZE_S3:-32M}; COUNT=8; PROFILES=${PROFILES:-"moto region"}; FLUSH_SECS=2; RANGED=256
else SIZE=${SIZE_S3:-512M}; COUNT=64; PROFILES=${PROFILES:-"moto s3s-fs region"}; FLUSH_SECS=10; RANGED=2048; fi
PROXY=${PROXY:-$(dirname "$BIN")/s3-region-proxy}
REGION_FIRST_BYTE_MS=${REGION_FIRST_BYTE_MS:-20} REGION_STREAM_MBPS=${REGION_STREAM_MBPS:-100}
mkdir -p "$OUT/raw"
WORK=$(mktemp -d /var/tmp/spritedisk-s3.XXXXXX)
PIDS=()
trap '[ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; umount "$WORK"/s3b-* 2>/dev/null || true; rm -rf "$WORK"' EXIT
command -v s3backer >/dev/null || { apt-get install -y -qq s3backer >/dev/null || { echo "s3backer is not installed: apt-get install s3backer" >&2; exit 1; }; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
unset AWS_CA_BUNDLE
URI="nbd+unix:///?socket=$WORK/nbd.sock"

. bench/lib.sh
start_daemon() { attach "$1" "$2"; }
stop_daemon() { detach; }
fiojson() { python3 -c "import json,sys; j=json.load(open(sys.argv[1]))['jobs'][0]; print(eval(sys.argv[2]))" "$@"; }

ROWS=() ROWS_PEER=()
for profile in $PROFILES; do
  server=$profile; [ $profile = region ] && server=moto
  port=$(free_port)
  if [ $server = moto ]; then
    moto_server -H 127.0.0.1 -p "$port" >"$WORK/$server.log" 2>&1 & PIDS+=($!)
    wait_port "$port"
    kill -0 "${PIDS[-1]}" 2>/dev/null || { echo "$server did not start on $port: $(tail -3 "$WORK/$server.log")" >&2; exit 1; }
    python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"PUT /bench HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
assert b" 200 " in s.recv(4096)
PY
  else
    mkdir -p "$WORK/s3s/bench"
    s3s-fs --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$WORK/s3s" >"$WORK/$server.log" 2>&1 & PIDS+=($!)
    wait_port "$port"
    kill -0 "${PIDS[-1]}" 2>/dev/null || { echo "$server did not start on $port: $(tail -3 "$WORK/$server.log")" >&2; exit 1; }
  fi
  endpoint=http://127.0.0.1:$port
  if [ $profile = region ]; then
    "$PROXY" "127.0.0.1:$port" --first-byte-ms "$REGION_FIRST_BYTE_MS" --stream-mbps "$REGION_STREAM_MBPS" >"$WORK/proxy.out" & PIDS+=($!)
    for _ in $(seq 100); do [ -s "$WORK/proxy.out" ] && break; sleep 0.05; done
    endpoint=$(cat "$WORK/proxy.out")
    [ -n "$endpoint" ] || { echo "s3-region-proxy ($PROXY) did not start: cargo build --bins builds it" >&2; exit 1; }
  fi
  export AWS_ENDPOINT_URL=$endpoint
  server=$profile
  raw=$("$BIN" store-bench "s3://bench/raw" --size 8M --count "$COUNT" --parallel 8 \
          --ranged-size 64K --ranged-count "$RANGED" --ranged-parallel 32)
  echo "$raw" > "$OUT/raw/s3-$server-store.json"
  put=$(echo "$raw" | python3 -c 'import json,sys; print(json.load(sys.stdin)["put_mbps"])')
  get=$(echo "$raw" | python3 -c 'import json,sys; print(json.load(sys.stdin)["get_mbps"])')
  small=$(echo "$raw" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["small_put_p50_us"], d["small_put_p99_us"])')
  ranged=$(echo "$raw" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ranged_gets_per_s"])')

  vol="s3://bench/vol-$server"
  "$BIN" create "$vol" --size 100G >/dev/null
  start_daemon "$vol" "$WORK/c-$server"
  fio --name=w --ioengine=nbd --uri="$URI" --rw=write --bs=1m --iodepth=8 --size="$SIZE" --end_fsync=1 \
      --output-format=json --output="$OUT/raw/s3-$server-seqwrite.json" >/dev/null
  fio --name=f --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=1 --size=1G --offset=2G --fsync=1 \
      --time_based --runtime=$FLUSH_SECS --output-format=json --output="$OUT/raw/s3-$server-flush.json" >/dev/null
  # Group commit (issue 22): 16 connections, each a 4 KiB write and a FLUSH
  # at QD1; their FLUSHes share rounds (docs/design/0013).
  fio --name=f16 --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=1 --numjobs=16 --group_reporting \
      --size=64M --offset=3G --fsync=1 --time_based --runtime=$FLUSH_SECS \
      --output-format=json --output="$OUT/raw/s3-$server-flush16.json" >/dev/null
  stop_daemon
  start_daemon "$vol" "$WORK/cold-$server"
  fio --name=r --ioengine=nbd --uri="$URI" --rw=read --bs=1m --iodepth=1 --size="$SIZE" \
      --output-format=json --output="$OUT/raw/s3-$server-coldread.json" >/dev/null
  stop_daemon
  # Cold scattered reads: one 4 KiB read in each 64 KiB piece (read 4k,
  # skip 60k), 32 in flight, from an empty cache: every read misses and
  # needs its own GET, not sequential, so no read-ahead, as a random read.
  # (fio's random offsets cannot be piece-aligned and each used once:
  # blockalign turns its random map off, and repeats would hit the cache.)
  start_daemon "$vol" "$WORK/coldrand-$server"
  fio --name=cr --ioengine=nbd --uri="$URI" --rw=read:60k --bs=4k --iodepth=32 --size="$SIZE" \
      --output-format=json --output="$OUT/raw/s3-$server-coldrand.json" >/dev/null
  stop_daemon
  # The peer: s3backer (Debian 1.5.4, FUSE) on the same server, 1 MiB
  # blocks. Flags from docs/reference/benchmarking.md: no MD5 cache
  # and no write delay against a strongly consistent store. Its fsync
  # returns before anything is in the store, so "durable" here is the
  # write plus the unmount that uploads its dirty blocks.
  B3=(s3backer --baseURL="$endpoint/" --accessId=bench --accessKey=benchsecret
      --size="$SIZE" --blockSize=1M --md5CacheSize=0 --md5CacheTime=0 --minWriteDelay=0
      --prefix="s3backer-$server/" bench "$WORK/s3b-$server")
  mkdir -p "$WORK/s3b-$server"
  # Unmounting asks s3backer to upload its dirty blocks; it exits when done.
  s3b_umount() {
    umount "$WORK/s3b-$server"
    while pgrep -f "s3backer.*s3b-$server" >/dev/null; do sleep 0.05; done
  }
  t0=$(date +%s.%N)
  "${B3[@]}" && fio --name=w --ioengine=psync --filename="$WORK/s3b-$server/file" --rw=write --bs=1m \
      --size="$SIZE" --end_fsync=1 --output-format=json --output="$OUT/raw/s3backer-$server-seqwrite.json" >/dev/null
  s3b_umount
  s3b_wr=$(python3 -c "import sys; print($(numfmt --from=iec "$SIZE") / 1e6 / ($(date +%s.%N) - $t0))")
  "${B3[@]}" && fio --name=r --ioengine=psync --filename="$WORK/s3b-$server/file" --rw=read --bs=1m \
      --size="$SIZE" --output-format=json --output="$OUT/raw/s3backer-$server-coldread.json" >/dev/null
  s3b_umount
  s3b_rd=$(fiojson "$OUT/raw/s3backer-$server-coldread.json" "j['read']['bw_bytes']/1e6")
  ROWS_PEER+=("| $server | $(printf '%.0f' "$s3b_wr") MB/s | $(printf '%.0f' "$s3b_rd") MB/s |")
  echo "{\"server\": \"$server\", \"s3backer_seqwrite_durable_mbps\": $s3b_wr, \"s3backer_cold_seqread_mbps\": $s3b_rd}" > "$OUT/raw/s3backer-$server.json"

  wr=$(fiojson "$OUT/raw/s3-$server-seqwrite.json" "j['write']['bw_bytes']/1e6")
  rd=$(fiojson "$OUT/raw/s3-$server-coldread.json" "j['read']['bw_bytes']/1e6")
  crd=$(fiojson "$OUT/raw/s3-$server-coldrand.json" "j['read']['iops']")
  fl=$(fiojson "$OUT/raw/s3-$server-flush.json" "'%d %d' % (j['sync']['lat_ns']['percentile']['50.000000']/1e3, j['sync']['lat_ns']['percentile']['99.000000']/1e3)")
  fl16=$(fiojson "$OUT/raw/s3-$server-flush16.json" "'%d %d' % (j['sync']['lat_ns']['percentile']['50.000000']/1e3, j['write']['iops'])")
  ROWS+=("$(python3 - "$server" "$put" "$get" "$wr" "$rd" $small $fl $fl16 "$ranged" "$crd" <<'PY'
import sys
s, put, get, wr, rd, sp50, sp99, fp50, fp99, f16p50, f16iops, rg, crd = sys.argv[1], *map(float, sys.argv[2:])
print(f"| {s} | {put:,.0f} / {get:,.0f} MB/s | {wr:,.0f} MB/s ({wr/put:.2f}× PUT) | {rd:,.0f} MB/s ({rd/get:.2f}× GET) | {crd:,.0f} / {rg:,.0f} ({crd/rg:.2f}×) | {fp50/1e3:.1f} / {fp99/1e3:.1f} ms | {sp50/1e3:.1f} / {sp99/1e3:.1f} ms | {fp50/sp50:.1f}× | {f16p50/1e3:.1f} ms ({f16p50/sp50:.1f}× PUT), {f16iops:,.0f} commits/s |")
PY
)")
  G="s3: $profile"; [ $profile = region ] && G="s3: moto + ${REGION_FIRST_BYTE_MS} ms, ${REGION_STREAM_MBPS} MB/s per stream"
  R=(bench/ratios.py add "$OUT" --group "$G")
  "${R[@]}" --measure "seq write until durable" --value "$wr" --unit MB/s --baseline "raw parallel PUT" --baseline-value "$put"
  "${R[@]}" --measure "cold seq read QD1" --value "$rd" --unit MB/s --baseline "raw parallel GET" --baseline-value "$get" --goal-min 0.8
  "${R[@]}" --measure "cold 4 KiB read QD32, one per piece" --value "$crd" --unit IOPS --baseline "ranged GETs of 64 KiB, 32 in flight" --baseline-value "$ranged" --goal-min 0.8
  read -r sp50 sp99 <<<"$small"; read -r fp50 fp99 <<<"$fl"
  "${R[@]}" --measure "FLUSH p50 (4 KiB)" --value "$fp50" --unit µs --baseline "one small PUT" --baseline-value "$sp50" --lower-better
  "${R[@]}" --measure "FLUSH p99 (4 KiB)" --value "$fp99" --unit µs --baseline "one small PUT" --baseline-value "$sp99" --lower-better
  read -r f16p50 _ <<<"$fl16"
  "${R[@]}" --measure "FLUSH p50, 16 flushers (4 KiB)" --value "$f16p50" --unit µs --baseline "one small PUT" --baseline-value "$sp50" --lower-better
  "${R[@]}" --measure "seq write until durable" --value "$wr" --unit MB/s --baseline "s3backer" --baseline-value "$s3b_wr"
  "${R[@]}" --measure "cold seq read QD1" --value "$rd" --unit MB/s --baseline "s3backer" --baseline-value "$s3b_rd"
  kill "${PIDS[@]}" 2>/dev/null || true
  wait "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
  echo "  $server done" >&2
done

{
  echo
  echo "## s3:// (servers on 127.0.0.1; region = moto behind s3-region-proxy: ${REGION_FIRST_BYTE_MS} ms to the first byte of each answer, ${REGION_STREAM_MBPS} MB/s per connection)"
  echo
  echo "Raw store: 8 MiB objects, 8 in flight (\`spritedisk store-bench\`); spritedisk: NBD, $SIZE written with 1 MiB writes QD8, then read cold (empty cache directory) with 1 MiB reads QD1 and read-ahead; cold scattered: one 4 KiB read per 64 KiB piece at QD32 from an empty cache, so each read needs its own GET (reads/s) vs random ranged GETs of 64 KiB at 32 in flight on the raw objects (GETs/s); FLUSH: 4 KiB random writes with an fsync after each vs one raw PUT of a 4 KiB segment; 16 flushers: the same on 16 connections at once (group commit, issue 22)."
  echo
  echo "| server | raw PUT / GET | spritedisk seq write | spritedisk cold seq read | cold 4 KiB reads QD32, one per piece / ranged GETs of 64 KiB QD32, per s | FLUSH p50 / p99 | raw small PUT p50 / p99 | FLUSH / PUT p50 | 16 flushers: FLUSH p50, commits/s |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "The peer on the same servers: s3backer (FUSE, 1 MiB blocks), $SIZE written with 1 MiB writes until durable (the write, fsync and the unmount that uploads its dirty blocks: its fsync alone does not reach the store), then read cold after a remount. Compare with the spritedisk columns above."
  echo
  echo "| server | s3backer seq write until durable | s3backer cold seq read |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS_PEER[@]}"
} | tee -a "$OUT/summary.md"
