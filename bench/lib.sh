# Shared by the bench scripts (sourced): attach a daemon over NBD and wait
# for it, detach it. Expects BIN and WORK; sets PID (the daemon's).

# attach URL CACHE_DIR [ATTACH ARGS...]: serves URL on $WORK/nbd.sock (or
# $SOCK), its output in $WORK/attach.out and .log (or $LOG.out and .log).
# Waits for the "attached" line; a daemon that exits first is reported
# with its log, so a failed attach never shows up later as a fio error.
attach() {
  local url=$1 cache=$2; shift 2
  local sock=${SOCK:-$WORK/nbd.sock} log=${LOG:-$WORK/attach}
  rm -f "$sock"
  "$BIN" attach "$url" --nbd "$sock" --cache-dir "$cache" "$@" >"$log.out" 2>"$log.log" &
  PID=$!
  for _ in $(seq 6000); do
    grep -q '^attached' "$log.out" 2>/dev/null && [ -S "$sock" ] && return
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.01
  done
  echo "the daemon did not attach $url: $(tail -5 "$log.log")" >&2
  exit 1
}

# detach: SIGTERM (a clean detach: flush, ship the metadata) and wait.
detach() {
  kill -TERM "$PID"
  wait "$PID"
  PID=
}
