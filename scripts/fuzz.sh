#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input (upstream retry hints, SSE streams, configuration,
# tokens, request bodies, credentials, routes) with libFuzzer through cargo-fuzz, each target
# for a set time, and prints executions per target. The targets and what each asserts are
# in fuzz/src/.
#
#   ./scripts/fuzz.sh [seconds-per-target] [target...]          libFuzzer, default 60 s each
#   ./scripts/fuzz.sh --smoke [seconds-per-target] [target...]  the stable-toolchain smoke run
#                                                               (no libFuzzer; scripts/test.sh)
#
# libFuzzer runs on the stable toolchain without a sanitizer (`-s none`): the crate forbids
# unsafe code, so AddressSanitizer would mostly check dependencies at a 20-30x slowdown.
# FUZZ_SANITIZER=address uses it anyway (through RUSTC_BOOTSTRAP=1, as sanitizers are a
# nightly flag). New inputs go to fuzz/corpus/<target> (kept between runs, not committed);
# crashes to fuzz/artifacts/<target>/. A crash that was fixed belongs in
# fuzz/regressions/<target>/, which every run replays.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

TARGETS=(retry_after sse config token body credential request_head)
CARGO_FUZZ_VERSION=0.13.2

smoke=false
if [ "${1:-}" = "--smoke" ]; then
  smoke=true
  shift
fi
seconds=${1:-60}
shift || true
if [ $# -gt 0 ]; then
  TARGETS=("$@")
fi

if $smoke; then
  cargo build --release --quiet --no-default-features --features smoke --bin smoke
  exec ./target/release/smoke "$seconds" "${TARGETS[@]}"
fi

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

sanitizer=${FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ]; then
  export RUSTC_BOOTSTRAP=1
fi
cargo fuzz build -s "$sanitizer"

mkdir -p logs
failed=()
summary=()
for target in "${TARGETS[@]}"; do
  mkdir -p "corpus/$target"
  dirs=("corpus/$target")
  for extra in "seeds/$target" "regressions/$target"; do
    [ -d "$extra" ] && dirs+=("$extra")
  done
  args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048)
  [ -f "dict/$target.dict" ] && args+=(-dict="dict/$target.dict")
  log="logs/$target.log"
  echo "== $target (${seconds} s)"
  if cargo fuzz run -s "$sanitizer" "$target" "${dirs[@]}" -- "${args[@]}" >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    failed+=("$target")
    grep -E "panicked at|assertion|Test unit written|SUMMARY" "$log" | head -8 || tail -20 "$log"
  fi
  runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log" | tail -1)
  rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+)/\1/p' "$log" | tail -1)
  took=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log" | tail -1)
  corpus=$(find "corpus/$target" -type f | wc -l)
  summary+=("$(printf '%-13s %12s %6s %10s %8s  %s' "$target" "${runs:-?}" "${took:-?}" "${rate:-?}" "$corpus" "$result")")
done

echo
printf '%-13s %12s %6s %10s %8s  %s\n' target executions s exec/s corpus result
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/logs/)" >&2
  exit 1
fi
