#!/usr/bin/env bash
# All the concurrency checks: loom models and their broken twins, Miri, then (with --tsan)
# ThreadSanitizer. See docs/verification.md.
set -uo pipefail
cd "$(dirname "$0")"
fail=0
./loom.sh || fail=1
./miri.sh || fail=1
if [ "${1:-}" = "--tsan" ]; then ./tsan.sh || fail=1; fi
exit $fail
