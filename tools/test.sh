#!/usr/bin/env bash
# `make test`: every test, each step announced as it starts and ends (with its
# time); a failing step or test binary does not hide the rest; the end lists
# every failure in one place and one summary line. Exits 1 if anything failed.
#
# Steps: build the binaries; `cargo test --workspace` (unit, property, e2e with
# real clients, the VM rig's tests); that every revert the simulation is proved
# against still applies (tools/dst-prove.sh --check); the s3:// pass (moto on 127.0.0.1); the
# fuzz smoke (nightly toolchain; reported as skipped without one).
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
S3_TESTS=${S3_TESTS:-engine cache lease model checkpoint fork gc nbd_clients replica single_writer s3 crash_loop replay remove gc_races durability group_commit} # as in the Makefile
logdir=$(mktemp -d "${TMPDIR:-/tmp}/spritedisk-test.XXXXXX")
t_start=$SECONDS
failures=()   # "step: what failed"
skips=()
passed=0 failed=0 ignored=0

stamp() { printf '[make test %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# count LOG STEP: adds the libtest results in LOG to the totals and the
# failing tests (by test binary) to the failure list.
count() {
  local log=$1 step=$2
  local p f i
  read -r p f i < <(awk '/^test result: /{ for (k = 1; k <= NF; k++) {
      if ($k ~ /^passed;?$/) p += $(k-1); if ($k ~ /^failed;?$/) f += $(k-1); if ($k ~ /^ignored;?$/) i += $(k-1) } }
      END { print p + 0, f + 0, i + 0 }' "$log")
  passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i))
  while IFS= read -r line; do failures+=("$step: $line"); done < <(awk '
    /^ *Running / { bin = $2 }
    /^ *Doc-tests / { bin = "doc-tests " $2 }
    / \.\.\. FAILED$/ { print bin ": " $2 }' "$log")
  # A binary that did not build or crashed has no "test ... FAILED" line.
  while IFS= read -r line; do failures+=("$step: $line"); done < <(grep -E '^error(\[E[0-9]+\])?: ' "$log" | grep -v 'targets\? failed' | sort -u | head -20)
}

# step NAME CMD...: runs CMD with its output in the terminal and in a log.
step() {
  local name=$1; shift
  local log="$logdir/$(echo "$name" | tr -c 'a-zA-Z0-9\n' '-').log" t0=$SECONDS rc
  stamp "start: $name"
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  count "$log" "$name"
  stamp "end:   $name (exit $rc, $((SECONDS - t0)) s)"
  if [ "$rc" != 0 ] && ! grep -q "^$name: " <(printf '%s\n' "${failures[@]}"); then
    failures+=("$name: exit $rc (log: $log)")
  fi
  return 0
}

step "install test dependencies" tools/install-deps.sh test
step "build" $CARGO build --bins
step "cargo test --workspace" $CARGO test --workspace --no-fail-fast
step "simulation reverts apply" tools/dst-prove.sh --check
s3_args=(); for t in $S3_TESTS; do s3_args+=(--test "$t"); done
step "s3:// pass" env SPRITEDISK_TEST_STORE=s3 $CARGO test --workspace --no-fail-fast "${s3_args[@]}"
if $CARGO +nightly --version >/dev/null 2>&1; then
  step "fuzz smoke" tools/fuzz-smoke.sh
else
  skips+=("fuzz smoke: no nightly toolchain (rustup toolchain install nightly); the corpora were replayed on stable by fuzz_corpora")
  stamp "skip:  fuzz smoke (no nightly toolchain)"
fi

echo
total=$((SECONDS - t_start))
if [ ${#failures[@]} -gt 0 ]; then
  echo "FAILURES:"
  printf '  %s\n' "${failures[@]}"
fi
[ ${#skips[@]} -eq 0 ] || { echo "SKIPPED:"; printf '  %s\n' "${skips[@]}"; }
verdict=passed; [ ${#failures[@]} -eq 0 ] || verdict=FAILED
echo "make test $verdict in $((total / 60))m$((total % 60))s: $passed tests passed, $failed failed, $ignored ignored; ${#skips[@]} step(s) skipped; logs in $logdir"
[ $verdict = passed ]
