# Shared by the bench scripts (sourced): attach a daemon over NBD and wait
# for it, detach it. Expects BIN and WORK; sets PID (the daemon's).

# attach URL CACHE_DIR [ATTACH ARGS...]: serves URL on $WORK/nbd.sock.
# Waits for the "attached" line; a daemon that exits first is reported
# with its log, so a failed attach never shows up later as a fio error.
attach() {
  local url=$1 cache=$2; shift 2
  rm -f "$WORK/nbd.sock"
  "$BIN" attach "$url" --nbd "$WORK/nbd.sock" --cache-dir "$cache" "$@" >"$WORK/attach.out" 2>"$WORK/attach.log" &
  PID=$!
  for _ in $(seq 6000); do
    grep -q '^attached' "$WORK/attach.out" 2>/dev/null && [ -S "$WORK/nbd.sock" ] && return
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.01
  done
  echo "the daemon did not attach $url: $(tail -5 "$WORK/attach.log")" >&2
  exit 1
}

# detach: SIGTERM (a clean detach: flush, ship the metadata) and wait.
detach() {
  kill -TERM "$PID"
  wait "$PID"
  PID=
}
