#!/usr/bin/env bash
# spritedisk on s3:// against the raw object store, same server, same run:
# raw parallel PUT/GET of 8 MiB objects (spritedisk store-bench) vs 1 MiB
# sequential write and cold 1 MiB sequential read through NBD; FLUSH latency
# of 4 KiB writes (fio fsync after each) vs one raw PUT of the same size.
# Servers: moto (threaded, as shipped) and s3s-fs, each on a free port.
# Usage: bench/s3.sh OUT    (BENCH_QUICK=1: smaller sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/s3.sh OUT}
BIN=${BIN:-target/release/spritedisk}
if [ "${BENCH_QUICK:-0}" = 1 ]; then SIZE=${SIZE_S3:-128M}; COUNT=16; else SIZE=${SIZE_S3:-512M}; COUNT=64; fi
mkdir -p "$OUT/raw"
WORK=$(mktemp -d /var/tmp/spritedisk-s3.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
unset AWS_CA_BUNDLE
URI="nbd+unix:///?socket=$WORK/nbd.sock"

start_daemon() { # url cache
  "$BIN" attach "$1" --nbd "$WORK/nbd.sock" --cache-dir "$2" >"$WORK/attach.out" 2>"$WORK/attach.log" &
  DPID=$!
  for _ in $(seq 600); do grep -q '^attached' "$WORK/attach.out" 2>/dev/null && return; sleep 0.05; done
  echo "daemon did not attach: $(cat "$WORK/attach.log")" >&2; exit 1
}
stop_daemon() { kill -TERM "$DPID"; wait "$DPID"; }
fiojson() { python3 -c "import json,sys; j=json.load(open(sys.argv[1]))['jobs'][0]; print(eval(sys.argv[2]))" "$@"; }

ROWS=()
for server in moto s3s-fs; do
  port=$(free_port)
  if [ $server = moto ]; then
    moto_server -H 127.0.0.1 -p "$port" >"$WORK/$server.log" 2>&1 & PIDS+=($!)
    wait_port "$port"
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
  fi
  export AWS_ENDPOINT_URL=http://127.0.0.1:$port
  raw=$("$BIN" store-bench "s3://bench/raw" --size 8M --count "$COUNT" --parallel 8)
  echo "$raw" > "$OUT/raw/s3-$server-store.json"
  put=$(echo "$raw" | python3 -c 'import json,sys; print(json.load(sys.stdin)["put_mbps"])')
  get=$(echo "$raw" | python3 -c 'import json,sys; print(json.load(sys.stdin)["get_mbps"])')
  small=$(echo "$raw" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["small_put_p50_us"], d["small_put_p99_us"])')

  vol="s3://bench/vol-$server"
  "$BIN" create "$vol" --size 100G >/dev/null
  start_daemon "$vol" "$WORK/c-$server"
  fio --name=w --ioengine=nbd --uri="$URI" --rw=write --bs=1m --iodepth=8 --size="$SIZE" --end_fsync=1 \
      --output-format=json --output="$OUT/raw/s3-$server-seqwrite.json" >/dev/null
  fio --name=f --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=1 --size=1G --offset=2G --fsync=1 \
      --time_based --runtime=10 --output-format=json --output="$OUT/raw/s3-$server-flush.json" >/dev/null
  stop_daemon
  start_daemon "$vol" "$WORK/cold-$server"
  fio --name=r --ioengine=nbd --uri="$URI" --rw=read --bs=1m --iodepth=1 --size="$SIZE" \
      --output-format=json --output="$OUT/raw/s3-$server-coldread.json" >/dev/null
  stop_daemon
  wr=$(fiojson "$OUT/raw/s3-$server-seqwrite.json" "j['write']['bw_bytes']/1e6")
  rd=$(fiojson "$OUT/raw/s3-$server-coldread.json" "j['read']['bw_bytes']/1e6")
  fl=$(fiojson "$OUT/raw/s3-$server-flush.json" "'%d %d' % (j['sync']['lat_ns']['percentile']['50.000000']/1e3, j['sync']['lat_ns']['percentile']['99.000000']/1e3)")
  ROWS+=("$(python3 - "$server" "$put" "$get" "$wr" "$rd" $small $fl <<'PY'
import sys
s, put, get, wr, rd, sp50, sp99, fp50, fp99 = sys.argv[1], *map(float, sys.argv[2:])
print(f"| {s} | {put:,.0f} / {get:,.0f} MB/s | {wr:,.0f} MB/s ({wr/put:.2f}× PUT) | {rd:,.0f} MB/s ({rd/get:.2f}× GET) | {fp50/1e3:.1f} / {fp99/1e3:.1f} ms | {sp50/1e3:.1f} / {sp99/1e3:.1f} ms | {fp50/sp50:.1f}× |")
PY
)")
  kill "${PIDS[-1]}" 2>/dev/null || true
  echo "  $server done" >&2
done

{
  echo
  echo "## s3:// (servers on 127.0.0.1)"
  echo
  echo "Raw store: 8 MiB objects, 8 in flight (\`spritedisk store-bench\`); spritedisk: NBD, $SIZE written with 1 MiB writes QD8, then read cold (empty cache directory) with 1 MiB reads QD1 and read-ahead; FLUSH: 4 KiB random writes with an fsync after each vs one raw PUT of a 4 KiB segment."
  echo
  echo "| server | raw PUT / GET | spritedisk seq write | spritedisk cold seq read | FLUSH p50 / p99 | raw small PUT p50 / p99 | FLUSH / PUT p50 |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee -a "$OUT/summary.md"
