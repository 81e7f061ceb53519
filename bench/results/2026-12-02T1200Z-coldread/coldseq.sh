#!/usr/bin/env bash
# cold 1 MiB seq read QD1, alternating two binaries on one moto (+region proxy)
# usage: coldseq.sh OUT BIN_A BIN_B [ROUNDS]
set -euo pipefail
cd /work/main
OUT=$1 A=$2 B=$3 ROUNDS=${4:-2}
mkdir -p "$OUT"
WORK=$(mktemp -d /var/tmp/cs.XXXX)
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p $port > $WORK/moto.log 2>&1 & MP=$!
trap 'kill $MP ${PP:-} 2>/dev/null; rm -rf $WORK' EXIT
sleep 3
python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"PUT /bench HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
assert b" 200 " in s.recv(4096)
PY
for profile in ${PROFILES:-moto region}; do
  ep=http://127.0.0.1:$port
  if [ $profile = region ]; then
    target/release/s3-region-proxy 127.0.0.1:$port --first-byte-ms 20 --stream-mbps 100 > $WORK/proxy.out & PP=$!
    sleep 1; ep=$(cat $WORK/proxy.out)
  fi
  export AWS_ENDPOINT_URL=$ep
  BIN=$A; . bench/lib.sh
  vol=s3://bench/cs-$profile
  $BIN create $vol --size 100G > /dev/null
  attach $vol $WORK/c-$profile
  fio --name=w --ioengine=nbd --uri="nbd+unix:///?socket=$WORK/nbd.sock" --rw=write --bs=1m --iodepth=8 --size=512M --end_fsync=1 --output=/dev/null
  detach
  for r in $(seq $ROUNDS); do
    for which in A B; do
      BIN=${!which}
      attach $vol $WORK/cold-$profile-$r-$which
      fio --name=r --ioengine=nbd --uri="nbd+unix:///?socket=$WORK/nbd.sock" --rw=read --bs=1m --iodepth=1 --size=512M \
        --output-format=json --output=$OUT/$profile-$r-$which.json > /dev/null
      detach
      echo "$profile round $r $which: $(python3 -c "import json;print(round(json.load(open('$OUT/$profile-$r-$which.json'))['jobs'][0]['read']['bw_bytes']/1e6))") MB/s" | tee -a $OUT/log
    done
  done
  [ -n "${PP:-}" ] && kill $PP && PP=
done
