#!/usr/bin/env bash
# Runs every loom model in loom-tests/ against the shipped code (a plain `--cfg loom` build, no
# mutant site compiled in), then every broken twin: the same model with one protocol line removed.
# One loom build with `--cfg parjob_mutants` compiles every mutant's site, and PARJOB_MUTANT=NAME
# picks the one a process runs (src/sync/mutant.rs). A twin must FAIL: non-zero exit AND loom's
# failure message (deadlock, causality violation, branch limit) or the model's assertion in the
# output, and its banner must name the mutant. Each twin runs as its own process (a loom deadlock
# aborts the test binary). Models run LOOM_JOBS at a time (default: the number of CPUs; loom
# itself is single-threaded). Exits non-zero if any model fails or any twin passes. Preemption
# bounds are set per model in code (printed as "preemption bound"); LOOM_MAX_PREEMPTIONS overrides
# them all. LOOM_MAX_DURATION is never used: it passes silently.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
unset LOOM_MAX_DURATION LOOM_MAX_PERMUTATIONS
start=$(date +%s)
models=(sleep inject latch join scope shutdown handoff publish batch)
[ -f loom-tests/tests/cancel.rs ] && models+=(cancel)
[ -f loom-tests/tests/signal.rs ] && models+=(signal)
[ -f loom-tests/tests/offer.rs ] && models+=(offer)
# mutant | model files it must break (space-separated) | expected failure text (grep -E)
twins=(
  "sleep_skips_fence|sleep inject|deadlock"
  "sleep_skips_recheck|sleep inject|deadlock"
  "publish_skips_fence|sleep inject|deadlock"
  "latch_skips_announce|latch|deadlock"
  "latch_set_relaxed|latch|Causality violation"
  "join_skips_wait_on_panic|join|stolen B finished|Causality violation|deadlock|unexpected object stored at reference|index out of bounds"
  "scope_counts_before_panic|scope|panic was lost|before every task finished|Causality violation"
  "shutdown_skips_drain|shutdown|was lost|leaked"
  "searcher_skips_handoff|handoff|deadlock"
  "publish_skips_notify|publish|deadlock|maximum number of branches"
  "batch_skips_notify|batch|deadlock|maximum number of branches"
)
[ -f loom-tests/tests/cancel.rs ] && twins+=("cancel_check_before_claim|cancel|started after the cancel")
[ -f loom-tests/tests/signal.rs ] && twins+=("signal_notify_skips_fence|signal|deadlock")
[ -f loom-tests/tests/offer.rs ] && twins+=("offer_withdraw_without_cas|offer|Causality violation|ran more than once")
log=$(mktemp -d)
fail=0
rows=()
jobs=${LOOM_JOBS:-$(nproc 2>/dev/null || echo 1)}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "LOOM_JOBS must be a positive number, not '$jobs'"; exit 1; }
# An interrupted run must not leave models running.
trap 'kill $(jobs -p) 2>/dev/null' EXIT INT TERM

echo "== builds: the models (target-loom/), the twins (target-loom-mutants/, one build for all)"
if ! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target-loom cargo test --release -p parjob-loom-tests --no-run -q 2>"$log/build.txt"; then
  cat "$log/build.txt"; echo "loom build failed"; exit 1
fi
mutant_flags="--cfg loom --cfg parjob_mutants"
if ! RUSTFLAGS="$mutant_flags" CARGO_TARGET_DIR=target-loom-mutants cargo test --release -p parjob-loom-tests --no-run -q 2>"$log/build-mutants.txt"; then
  cat "$log/build-mutants.txt"; echo "loom mutants build failed"; exit 1
fi

# Each model is one single-threaded loom process, so up to $jobs run side by side; each writes its
# own row and status file, collected in the models' order below.
run_model() {
  local m=$1 t0 rc secs info status
  t0=$(date +%s.%N)
  RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target-loom timeout 300 \
    cargo test --release -q -p parjob-loom-tests --test "$m" -- --nocapture >"$log/$m.txt" 2>&1
  rc=$?
  secs=$(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")
  info=$(grep -Eo 'preemption bound [^,]*|passed, [0-9]+ iterations' "$log/$m.txt" | tr '\n' ' ')
  if [ $rc -eq 0 ]; then status=ok; else status="FAILED (rc $rc)"; echo 1 >"$log/$m.failed"; fi
  printf '%-10s %-28s %-16s %6ss  %s' model "$m" "$status" "$secs" "$info" >"$log/$m.row"
}

echo "== loom models ($jobs at a time)"
# Longest first, so the last to start is a short one.
by_length=(scope publish join handoff latch)
for m in "${models[@]}"; do [[ " ${by_length[*]} " == *" $m "* ]] || by_length+=("$m"); done
for m in "${by_length[@]}"; do
  [[ " ${models[*]} " == *" $m "* ]] || continue
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  run_model "$m" &
done
wait
for m in "${models[@]}"; do
  # No row: the model's runner itself died before writing it; that fails too.
  if [ ! -f "$log/$m.row" ]; then
    rows+=("$(printf '%-10s %-28s %s' model "$m" "NO RESULT")"); fail=1; continue
  fi
  rows+=("$(cat "$log/$m.row")")
  if [ -f "$log/$m.failed" ]; then
    fail=1; echo "-- model $m failed:"; grep -E "panicked at|deadlock|Causality|exceeded|assertion" -A2 "$log/$m.txt" | head -8
  fi
done

echo "== broken twins (PARJOB_MUTANT=NAME on the mutants build)"
for spec in "${twins[@]}"; do
  IFS='|' read -r mutant files pattern <<<"$spec"
  pattern="${spec#*|*|}"
  for f in $files; do
    t1=$(date +%s.%N)
    PARJOB_MUTANT="$mutant" RUSTFLAGS="$mutant_flags" CARGO_TARGET_DIR=target-loom-mutants timeout 300 \
      cargo test --release -q -p parjob-loom-tests --test "$f" -- --nocapture >"$log/$mutant-$f.txt" 2>&1
    rc=$?
    secs=$(printf '%.1f' "$(echo "$(date +%s.%N) - $t1" | bc)")
    found=$(grep -Eo -m1 "$pattern" "$log/$mutant-$f.txt" | head -1)
    # The banner proves the mutant was on: a twin that ran unmutated must not count as caught.
    if ! grep -qE "mutant ${mutant}\$" "$log/$mutant-$f.txt"; then
      status="MUTANT NOT ACTIVE (rc $rc)"; fail=1
    elif [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ -n "$found" ]; then
      status="caught: $found"
    else
      status="NOT CAUGHT (rc $rc)"; fail=1
    fi
    rows+=("$(printf '%-10s %-28s %-8s %-40s %6ss' twin "$mutant" "$f" "$status" "$secs")")
  done
done

echo
echo "== summary ($(( $(date +%s) - start ))s; logs in $log)"
printf '%s\n' "${rows[@]}"
if [ $fail -ne 0 ]; then echo "loom: FAILED"; exit 1; fi
echo "loom: all models pass, every broken twin is caught"
