#!/usr/bin/env bash
# ThreadSanitizer on the scheduler's stress and Miri-sized tests (std rebuilt with TSan).
# Suppressions: scripts/tsan.supp, crossbeam-deque's deliberate push/steal buffer race only.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
start=$(date +%s)
export RUSTFLAGS="-Zsanitizer=thread"
export TSAN_OPTIONS="suppressions=$PWD/scripts/tsan.supp halt_on_error=1"
export CARGO_TARGET_DIR=target-tsan
tests=(--test miri_smoke)
[ -f tests/stress.rs ] && tests+=(--test stress)
if cargo +nightly test -q -Zbuild-std --target x86_64-unknown-linux-gnu -p parjob "${tests[@]}"; then
  echo "tsan: ok ($(( $(date +%s) - start ))s)"
else
  echo "tsan: FAILED ($(( $(date +%s) - start ))s)"; exit 1
fi
