#!/usr/bin/env bash
# A bounded run of every cargo-fuzz target (fuzz/): FUZZ_SECONDS each
# (default 20), starting from the committed corpus; a crash fails the run
# and leaves the input under fuzz/artifacts/. Needs a nightly toolchain
# (libFuzzer's sanitizer flags); without one it says so and stops, the
# corpora having been replayed on stable by `cargo test` (fuzz_corpora).
# Built with --dev (debug assertions, sanitizer, no optimisation): the
# release build took 13 of CI's 90 minutes, --dev takes 3; a 20 s smoke
# run needs coverage feedback, not speed. Long campaigns: `cargo +nightly
# fuzz run -O <target>`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${FUZZ_SECONDS:-20}
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz smoke: no nightly toolchain here; corpora were replayed on stable only" >&2
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build --dev
for t in $(cargo +nightly fuzz list); do
  echo "== fuzz $t for ${SECONDS_EACH}s" >&2
  # A scratch copy of the corpus: what a smoke run finds is not committed.
  work=$(mktemp -d)
  cp -r "corpus/$t/." "$work/"
  cargo +nightly fuzz run --dev "$t" "$work" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 2>&1 | grep -E "^#[0-9]+ *DONE|Done [0-9]+ runs|ERROR|SUMMARY|panicked" || true
  rm -rf "$work"
  if ls artifacts/"$t"/crash-* artifacts/"$t"/timeout-* artifacts/"$t"/oom-* >/dev/null 2>&1; then
    echo "fuzz $t found a failing input: fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
