#!/usr/bin/env bash
# Shows that the tests which prove settlement catch a lost one. Builds the Worker with the
# `fault-drop-settlement` feature (the shell skips every settlement) into build-mutant/, leaving
# build/ alone, then runs the fault matrix and a short soak against it. Succeeds only if both
# FAIL for the right reason: every row of the fault matrix (each proves its own settlement) and
# the soak's ledger (figures outside the replay's range). Takes about 6 minutes, so
# scripts/test.sh does not run it. Output goes to artifacts/mutants/.
#
#   ./scripts/mutants.sh [soak seconds]     (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
./scripts/setup.sh > /dev/null
cargo build --release -p breakwater-sim --quiet
BUILD_DIR=build-mutant BUILD_FEATURES=fault-drop-settlement ./scripts/build.sh
export BREAKWATER_BUILD_DIR=build-mutant
out=artifacts/mutants
mkdir -p "$out"
caught=0

echo "== fault matrix against the build that drops settlements: every row must fail"
if node --test --test-concurrency=1 --test-reporter=tap tests/e2e/faults.test.mjs > "$out/faults.tap" 2>&1; then
  echo "mutants: the fault matrix passed against a build that drops every settlement" >&2
else
  # The two tests after the matrix look at slots and a cooldown, not at settlement.
  survived=$(grep -E '^ *ok [0-9]+ - ' "$out/faults.tap" | sed -E 's/^ *ok [0-9]+ - //' |
    grep -vE '^(after the matrix|durability|tests/)' || true)
  failed=$(grep -cE '^ *not ok [0-9]+ - ' "$out/faults.tap" || true)
  if [ -n "$survived" ]; then
    echo "mutants: these rows of the fault matrix passed without a settlement:" >&2
    echo "$survived" | sed 's/^/  /' >&2
  else
    echo "mutants: caught by the fault matrix ($failed failing tests, no row passed)"
    caught=$((caught + 1))
  fi
fi

echo "== soak ($seconds s) against the build that drops settlements: the ledger must fail"
if node tests/soak/soak.mjs "$seconds" > "$out/soak.log" 2> "$out/soak.err"; then
  echo "mutants: the soak passed against a build that drops every settlement" >&2
elif grep -q 'remaining, the replay' "$out/soak.log"; then
  echo "mutants: caught by the soak's ledger ($(grep -c 'remaining, the replay' "$out/soak.log") figures outside the replay)"
  caught=$((caught + 1))
else
  echo "mutants: the soak failed, but not on its ledger:" >&2
  sed -n '/^FAILED/,$p' "$out/soak.log" | head -n 20 >&2
fi

if [ "$caught" -ne 2 ]; then
  echo "mutants: a dropped settlement went unnoticed (see $out/)" >&2
  exit 1
fi
echo "mutants: a dropped settlement is caught by both"
