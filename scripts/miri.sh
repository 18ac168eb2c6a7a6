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
# The sysroot is built once, before the lanes start: two lanes building it at once would race.
cargo +nightly miri setup >/dev/null 2>&1 || { echo "miri: sysroot setup failed"; cargo +nightly miri setup; exit 1; }
# Miri interprets on one thread, so the two lanes run side by side (one per core of a 2-core
# machine); each writes its own log, printed when both are done.
log=$(mktemp -d)
lane1() {
  MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-preemption-rate=0 -Zmiri-many-seeds=0..16 -Zmiri-ignore-leaks" \
  CARGO_TARGET_DIR=target-miri \
    cargo +nightly miri test -q -p parjob --test miri_smoke --test leaks
}
lane2() {
  RUSTFLAGS="--cfg parjob_stand_in_deque" CARGO_TARGET_DIR=target-miri-stand-in \
  MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-many-seeds=0..8" \
    cargo +nightly miri test -q -p parjob --test miri_smoke
}
fail=0
timed() { local t0; t0=$(date +%s); "$1" >"$log/$1.txt" 2>&1; local rc=$?; echo "$rc $(( $(date +%s) - t0 ))" >"$log/$1.status"; }
# An interrupted run must not leave a lane interpreting on.
trap 'kill $(jobs -p) 2>/dev/null' EXIT INT TERM
timed lane1 &
timed lane2 &
wait
for lane in lane1 lane2; do
  # A lane whose status file is missing died before finishing: a failure, never the other's rc.
  rc=missing; secs='?'
  [ -f "$log/$lane.status" ] && read -r rc secs <"$log/$lane.status"
  case $lane in
    lane1) echo "== miri lane 1: crossbeam deque (${secs}s, rc $rc)";;
    lane2) echo "== miri lane 2: stand-in deque, preemption on (${secs}s, rc $rc)";;
  esac
  cat "$log/$lane.txt"
  [ "$rc" = 0 ] || fail=1
done
echo "== miri: $(( $(date +%s) - start ))s"
[ $fail -eq 0 ] && echo "miri: ok" || { echo "miri: FAILED"; exit 1; }
