#!/usr/bin/env bash
# Builds the Worker into build/ with worker-build, offline: wasm-bindgen, wasm-opt and esbuild
# come from scripts/setup.sh, never from a download.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen)}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$PWD/node_modules/.bin/wasm-opt}"
export ESBUILD_BIN="${ESBUILD_BIN:-$PWD/node_modules/.bin/esbuild}"
exec worker-build --release "$@"
