#!/bin/bash
# VM ublk suite: now (/tmp/sd-memo) vs before (/tmp/sd-base), one VM run.
set -euo pipefail
cd /work/main
OUT=$1
VM_OUT=$(mktemp -d "$PWD/target/bench-vm.XXXXXX")
cp /tmp/sd-base "$VM_OUT/spritedisk-before"
cp ${NOW:-/tmp/sd-memo} "$VM_OUT/spritedisk-now"
SPRITEDISK_VM_OUT="$VM_OUT" SPRITEDISK_SIZE=512M SPRITEDISK_RUNTIME=15 SPRITEDISK_BIN="$VM_OUT/spritedisk-now" \
  SPRITEDISK_BIN_BEFORE="$VM_OUT/spritedisk-before" SPRITEDISK_QUICK=0 \
  tests/vm/rig/run-in-vm.sh --scratch 8G --timeout 2400 -- bash bench/vm-ublk.sh > $OUT.console.log 2>&1
rm -f "$VM_OUT/spritedisk-before" "$VM_OUT/spritedisk-now"
mv "$VM_OUT" "$OUT"
