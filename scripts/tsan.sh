#!/usr/bin/env bash
# ThreadSanitizer on the scheduler's stress and Miri-sized tests and the `Parallel` layer's tests (std rebuilt with TSan).
# Suppressions: scripts/tsan.supp, crossbeam-deque's deliberate push/steal buffer race only.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
start=$(date +%s)
export RUSTFLAGS="-Zsanitizer=thread"
# allocator_may_return_null: tests ask for allocations no machine has (a `size_hint` claiming
# more than memory) and expect the failure to be reported, not TSan's allocator to abort.
export TSAN_OPTIONS="suppressions=$PWD/scripts/tsan.supp halt_on_error=1 allocator_may_return_null=1"
export CARGO_TARGET_DIR=target-tsan
# The scheduler's stress and Miri-sized tests, then the `Parallel` layer's (the engine, streams,
# the splittable form, user code that panics, limits) and the fork-join tests.
tests=()
for t in miri_smoke stress join scope pool panic_safety parallel parallel_engine parallel_stream \
         user_panics limits; do
  [ -f "tests/$t.rs" ] && tests+=(--test "$t")
done
if cargo +nightly test -q -Zbuild-std --target x86_64-unknown-linux-gnu -p parjob "${tests[@]}"; then
  echo "tsan: ok ($(( $(date +%s) - start ))s)"
else
  echo "tsan: FAILED ($(( $(date +%s) - start ))s)"; exit 1
fi
