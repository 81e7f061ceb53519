#!/usr/bin/env bash
# The main job on the embedded default store: create a file:// volume,
# attach it over NBD, write and read it with a real client (qemu-io), detach,
# re-attach from the store alone, checkpoint and restore, fork, gc, and show
# stats and verify. Every read is checked against the pattern written there
# (qemu-io's `read -P`), and the demo stops at the first mismatch.
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

qio() { qemu-io -f raw "nbd+unix:///?socket=$SOCK" "$@"; }
# write OFFSET PATTERN: 4 MiB of PATTERN at OFFSET, then FLUSH.
write() {
  qio -c "write -P $2 $1 4M" -c flush >/dev/null
  echo "wrote 4 MiB of $2 at $1 and flushed"
}
# check OFFSET PATTERN WHAT: reads 4 MiB at OFFSET and checks every byte is PATTERN.
check() {
  local out
  out=$(qio -c "read -P $2 $1 4M" 2>&1) || true
  if grep -q 'Pattern verification failed' <<<"$out"; then
    echo "MISMATCH: 4 MiB at $1 is not all $2 ($3)" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "checked: 4 MiB at $1 reads back as $2, $3"
}

echo "== create"
"$BIN" create "$URL" --size 100G
echo "== attach and write 8 MiB with qemu-io"
attach "$DIR/cache"
write 0 0x5d
write 1G 0xc3
detach
echo "== attach from the store alone (empty cache dir) and read it back"
attach "$DIR/cache-fresh"
check 0 0x5d "as written before the detach"
check 1G 0xc3 "as written before the detach"
check 2G 0 "never written: zeros"
echo "== checkpoint, overwrite, restore (through the attached daemon)"
"$BIN" checkpoint "$URL" before --cache-dir "$DIR/cache-fresh"
write 0 0xee
check 0 0xee "the overwrite"
"$BIN" restore "$URL" before --cache-dir "$DIR/cache-fresh"
check 0 0x5d "checkpoint 'before' again, the overwrite undone"
"$BIN" checkpoints "$URL" --cache-dir "$DIR/cache-fresh"
echo "== fork the checkpoint as a second volume (no data copied)"
"$BIN" fork "$URL@before" "file://$DIR/fork" --cache-dir "$DIR/cache-fork"
echo "== collect garbage: the overwritten 0xee segment is referenced by nothing now"
# GC never deletes the newest segment (it is the chain's anchor), so write
# something new first: then the 0xee segment is garbage it can prove.
write 2G 0x77
"$BIN" gc "$URL" --cache-dir "$DIR/cache-fresh"
check 0 0x5d "still checkpoint 'before' after gc"
check 2G 0x77 "written after the restore"
detach
echo "== stats"
"$BIN" stats "$URL" --cache-dir "$DIR/cache-fresh"
echo "== verify (every extent's piece against its crc32c, in the store)"
"$BIN" verify "$URL" --cache-dir "$DIR/cache-fresh"
echo "== the fork reads as the checkpoint"
URL="file://$DIR/fork"
attach "$DIR/cache-fork"
check 0 0x5d "checkpoint 'before' of the parent"
check 1G 0xc3 "checkpoint 'before' of the parent"
detach
