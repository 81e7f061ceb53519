#!/usr/bin/env bash
# Boots the rig N times in a row (no retries) and counts the boots that died
# before the command ran: the number README's VM rig section quotes.
#   tests/vm/rig/boot-check.sh [N]    (SPRITEDISK_VM_TCG_THREAD=single|multi)
set -u
n=${1:-20}
here=$(cd "$(dirname "$0")" && pwd)
failed=0 t0=$SECONDS
for i in $(seq 1 "$n"); do
  SPRITEDISK_VM_BOOT_TRIES=1 "$here/run-in-vm.sh" --timeout 300 -- true >/dev/null 2>&1
  rc=$?
  [ "$rc" = 0 ] || { failed=$((failed + 1)); echo "boot $i: exit $rc"; }
done
echo "tcg thread=${SPRITEDISK_VM_TCG_THREAD:-multi}: $failed of $n boots failed before the command; $(( (SECONDS - t0) / n )) s a boot"
