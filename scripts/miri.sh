#!/usr/bin/env bash
# Miri on the tests that exercise parjob's unsafe code (tests/miri_smoke.rs: stack jobs, the
# outside-join ticket, lifetime-erased scope tasks, panics across threads, shutdown), in two lanes:
#
#  1. the real crossbeam deque:
#     -Zmiri-tree-borrows        crossbeam-epoch 0.9.x is UB under Stacked Borrows (crossbeam#545,
#                                fixed upstream, unreleased); Tree Borrows accepts it and still
#                                checks our own pointer use (a stack-job use-after-free is caught).
#     -Zmiri-preemption-rate=0   crossbeam-deque's buffer read/write race is deliberate ("technically
#                                UB", deque.rs); with preemption Miri reports it. This also hides
#                                races of ours on paths through the deque: lane 2 covers them.
#     -Zmiri-many-seeds=0..16    16 schedules (thread choices and weak-memory outcomes) per test.
#     -Zmiri-ignore-leaks        crossbeam-epoch's global collector is never freed.
#     This lane also runs tests/leaks.rs (the API's values leaked with `mem::forget` or an `Rc`
#     cycle while tasks borrow freed data): its leaks are deliberate, so it is not in lane 2.
#  2. the stand-in deque (--cfg parjob_stand_in_deque: mutex + atomic length, as under loom) with
#     Miri's default preemption on, so races between our own threads are explored; it has no
#     epoch, so leaks are checked too (no -Zmiri-ignore-leaks).
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
start=$(date +%s)
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  echo "miri: installing miri and rust-src for nightly"
  if ! rustup component add --toolchain nightly miri rust-src; then
    echo "miri: FAILED to install the nightly miri/rust-src components (offline?); Miri not run" >&2
    exit 2
  fi
fi
export CARGO_TARGET_DIR=target-miri
fail=0
echo "== miri lane 1: crossbeam deque"
t0=$(date +%s)
MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-preemption-rate=0 -Zmiri-many-seeds=0..16 -Zmiri-ignore-leaks" \
  cargo +nightly miri test -q -p parjob --test miri_smoke --test leaks || fail=1
echo "   lane 1: $(( $(date +%s) - t0 ))s"
echo "== miri lane 2: stand-in deque, preemption on"
t0=$(date +%s)
RUSTFLAGS="--cfg parjob_stand_in_deque" CARGO_TARGET_DIR=target-miri-stand-in \
MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-many-seeds=0..8" \
  cargo +nightly miri test -q -p parjob --test miri_smoke || fail=1
echo "   lane 2: $(( $(date +%s) - t0 ))s"
echo "== miri: $(( $(date +%s) - start ))s"
[ $fail -eq 0 ] && echo "miri: ok" || { echo "miri: FAILED"; exit 1; }
