#!/usr/bin/env bash
# Runs every test: host unit and property tests of the pure core and the simulator, the
# benchmarks' oracle, lints, a brief fuzz run of the parsers, the end-to-end suite (the real
# Worker in workerd against the simulator on loopback), then the browser suite (the demo page
# in headless Chromium, on another origin than the Worker), then a one-minute soak run
# (./scripts/soak.sh runs the long one). ./scripts/mutants.sh (about 6 minutes, not run here)
# shows that the fault matrix and the soak's ledger catch a lost settlement.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

echo "== host tests (pure core, simulator)"
cargo test --workspace --quiet

echo "== benchmark oracle (the ceiling the overload benchmarks are scored against)"
node --test bench/oracle.test.mjs

echo "== the build's export filter and float printer (scripts/unused-exports.mjs, scripts/float-printer.mjs)"
node --test scripts/unused-exports.test.mjs scripts/float-printer.test.mjs
# The README's benchmark figures are the committed run's, written by bench/report.py.
python3 bench/report.py --check-readme README.md
# Every relative link of the Markdown resolves.
node scripts/check-links.mjs
# No production function over 80 lines, no import cycle between the crate's modules.
python3 scripts/shape.py --check

echo "== wasm tests (JS interop, in Node)"
cargo test --target wasm32-unknown-unknown --test wasm_storage --test wasm_context

echo "== lints"
cargo fmt --all --check
(cd fuzz && cargo fmt --all --check)
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The Worker, and the benchmarks' Rust floor (bench/rust-floor/, WebAssembly-only code).
cargo clippy --lib --target wasm32-unknown-unknown -p breakwater -p breakwater-rust-floor --quiet -- -D warnings

echo "== fuzz smoke (parsers of untrusted input, 3 s per target; ./scripts/fuzz.sh runs libFuzzer)"
./scripts/fuzz.sh --smoke 3

echo "== build"
cargo build --release -p breakwater-sim --quiet
./scripts/build.sh

echo "== deployable (wrangler deploy --dry-run, offline: the configuration as a deploy takes it)"
./scripts/check-deploy.sh

echo "== end-to-end (workerd + simulator)"
node --test --test-concurrency=1 tests/e2e/

echo "== browser (headless Chromium + workerd + simulator)"
node --test --test-concurrency=1 tests/browser/

echo "== soak, 60 s (chaos, ledger, slots, memory; ./scripts/soak.sh for the long run)"
node tests/soak/soak.mjs 60
