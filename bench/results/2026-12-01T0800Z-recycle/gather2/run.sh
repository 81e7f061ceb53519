#!/bin/bash
# The gathering rounds (docs/design/0016), before (3b9b50f) and after, in one
# window: bench/s3.sh's region profile with each binary, then the file://
# FLUSH jobs (flushbench.sh of 2026-12-01T0035Z-groupcommit) alternating.
set -euo pipefail
cd /work/main
R=$1; B0=$2; B1=$3
PROXY=$(realpath target/release/s3-region-proxy)
for w in before after; do
  BIN=$B0; [ $w = after ] && BIN=$B1
  BIN=$BIN PROXY=$PROXY PROFILES=region SIZE_S3=64M bench/s3.sh $R/s3-region-$w > $R/s3-region-$w.log 2>&1
done
bench/results/2026-12-01T0035Z-groupcommit/flushbench.sh $R $B0 $B1
