#!/usr/bin/env bash
# Builds the Worker into build/ with worker-build, offline: wasm-bindgen, wasm-opt and esbuild
# come from scripts/setup.sh, never from a download. Skips the build when build/ is newer than
# every source file, so `wrangler dev` (whose [build] step calls this) starts fast.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# One build at a time: wrangler dev's watcher may start several.
mkdir -p target
exec 9>target/.build.lock
flock 9
if [ -f build/index.js ] && [ -f build/index_bg.wasm ] && \
   [ -z "$(find src Cargo.toml Cargo.lock wrangler.toml -newer build/index_bg.wasm -print -quit)" ]; then
  echo "build: build/ is up to date"
  exit 0
fi
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen)}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$PWD/node_modules/.bin/wasm-opt}"
export ESBUILD_BIN="${ESBUILD_BIN:-$PWD/node_modules/.bin/esbuild}"
worker-build --release "$@"
