#!/usr/bin/env bash
# The main job on the embedded default store: create a file:// volume,
# attach it over NBD, write and read it with a real client (qemu-io), detach,
# re-attach from the store alone, checkpoint and restore, fork, gc, and show
# stats and verify.
set -euo pipefail
BIN=${BIN:-target/release/spritedisk}
DIR=${DEMO_DIR:-/tmp/spritedisk-demo}
command -v qemu-io >/dev/null || { echo "demo needs qemu-io: apt-get install qemu-utils" >&2; exit 1; }
rm -rf "$DIR" && mkdir -p "$DIR"
URL="file://$DIR/volume"
SOCK="$DIR/nbd.sock"

attach() { # $1 = cache dir
  "$BIN" attach "$URL" --nbd "$SOCK" --cache-dir "$1" > "$DIR/attach.out" 2> "$DIR/attach.log" &
  PID=$!
  # Up to a minute: a loaded machine (a build next to it) is slow to start.
  for _ in $(seq 600); do
    grep -q '^attached' "$DIR/attach.out" 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || { cat "$DIR/attach.log" >&2; exit 1; }
    sleep 0.1
  done
  cat "$DIR/attach.out"
}
detach() { kill -TERM "$PID"; wait "$PID"; PID=; tail -n 1 "$DIR/attach.out"; }
PID=
trap '[ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null' EXIT

echo "== create"
"$BIN" create "$URL" --size 100G
echo "== attach and write 8 MiB with qemu-io"
attach "$DIR/cache"
qemu-io -f raw "nbd+unix:///?socket=$SOCK" -c 'write -P 0x5d 0 4M' -c 'write -P 0xc3 1G 4M' -c flush | grep -v '^[0-9]'
detach
echo "== attach from the store alone (empty cache dir) and read it back"
attach "$DIR/cache-fresh"
qemu-io -f raw "nbd+unix:///?socket=$SOCK" -c 'read -P 0x5d 0 4M' -c 'read -P 0xc3 1G 4M' -c 'read -P 0 2G 4M' | grep -v '^[0-9]'
echo "== checkpoint, overwrite, restore (through the attached daemon)"
"$BIN" checkpoint "$URL" before --cache-dir "$DIR/cache-fresh"
qemu-io -f raw "nbd+unix:///?socket=$SOCK" -c 'write -P 0xee 0 4M' -c flush | grep -v '^[0-9]'
"$BIN" restore "$URL" before --cache-dir "$DIR/cache-fresh"
qemu-io -f raw "nbd+unix:///?socket=$SOCK" -c 'read -P 0x5d 0 4M' | grep -v '^[0-9]'
"$BIN" checkpoints "$URL" --cache-dir "$DIR/cache-fresh"
echo "== fork the checkpoint as a second volume (no data copied), collect garbage"
"$BIN" fork "$URL@before" "file://$DIR/fork" --cache-dir "$DIR/cache-fork"
"$BIN" gc "$URL" --cache-dir "$DIR/cache-fresh"
detach
echo "== stats"
"$BIN" stats "$URL" --cache-dir "$DIR/cache-fresh"
echo "== verify"
"$BIN" verify "$URL" --cache-dir "$DIR/cache-fresh"
echo "== the fork reads as the checkpoint"
URL="file://$DIR/fork"
attach "$DIR/cache-fork"
qemu-io -f raw "nbd+unix:///?socket=$SOCK" -c 'read -P 0x5d 0 4M' -c 'read -P 0xc3 1G 4M' | grep -v '^[0-9]'
detach
