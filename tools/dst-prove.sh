#!/usr/bin/env bash
# Proves the simulation's power (volume/tests/dst.rs): applies each patch in
# tools/dst-reverts/ (one fix of issue 19 or 20 taken back) to a clean worktree of
# HEAD, runs the simulation (both profiles) with the CI seed budgets, and reports which seeds
# found the bug. A revert the simulation does not find is reported, not
# hidden: the list at the end says which. Reverts it is known not to find
# (and why) are kept in tools/dst-reverts/known-gaps/, which this skips
# unless named.
#
#   tools/dst-prove.sh [PATCH...]      (default: every patch)
#   SPRITEDISK_DST_SEEDS=N tools/dst-prove.sh   (another seed budget)
#   tools/dst-prove.sh --check         (only: every patch still applies;
#                                       `make test` runs it, so a change to
#                                       the code a revert touches must
#                                       refresh the revert)
set -euo pipefail

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
cd "$repo"
if [ "${1:-}" = --check ]; then
    stale=0
    for p in tools/dst-reverts/*.patch tools/dst-reverts/known-gaps/*.patch; do
        if git apply --check "$p" 2>/dev/null; then
            echo "applies: $p"
        else
            echo "error: $p no longer applies to this tree: refresh it (take the same fix back in today's code)"
            stale=1
        fi
    done
    exit $stale
fi
patches=("$@")
if [ ${#patches[@]} -eq 0 ]; then
    patches=(tools/dst-reverts/*.patch)
fi
work=$(mktemp -d /tmp/spritedisk-dst-prove.XXXXXX)
trap 'git -C "$repo" worktree remove --force "$work/tree" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/tree" HEAD >/dev/null
# One target directory for every revert: only the volume crate rebuilds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/dst-prove}"

found=()
missed=()
for p in "${patches[@]}"; do
    name=$(basename "$p" .patch)
    git -C "$work/tree" checkout -q -- .
    git -C "$work/tree" apply "$repo/$p"
    echo "== $name"
    log="$work/$name.log"
    if (cd "$work/tree" && cargo test -q -p spritedisk-volume --test dst simulation -- --nocapture) >"$log" 2>&1; then
        echo "   NOT FOUND within the seed budget"
        missed+=("$name")
    else
        seeds=$(grep -oE '(Mixed|Forks) profile: [0-9]+ of [0-9]+ seeds failed: \[[0-9, ]*\]' "$log" || true)
        if [ -z "$seeds" ]; then
            echo "   the run failed without a seed (build error?):"
            tail -20 "$log" | sed 's/^/   /'
            missed+=("$name")
            continue
        fi
        while IFS= read -r line; do
            echo "   found: $(python3 -c 'import re,sys; p=sys.argv[1].split()[0]; s=[int(x) for x in re.findall(r"\d+", sys.argv[1].split("[")[1])]; print(f"{p} profile: {len(s)} seeds fail, the first: {s[:10]}")' "$line")"
        done <<<"$seeds"
        { grep -m1 -E '(Mixed|Forks) profile, seed [0-9]+:' "$log" || true; } | cut -c1-300 | sed 's/^/   first: /'
        found+=("$name")
    fi
done
echo
echo "found: ${#found[@]} of ${#patches[@]} reverts"
if [ ${#missed[@]} -gt 0 ]; then
    echo "not found: ${missed[*]}"
    exit 1
fi
