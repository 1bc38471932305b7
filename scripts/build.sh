#!/usr/bin/env bash
# Builds the Worker into build/ with worker-build: the [build] step of `wrangler deploy` and
# `wrangler dev`, and of the tests. Installs only the build's own tools when missing
# (scripts/toolchain.sh); wasm-bindgen, wasm-opt and esbuild come from there and from
# node_modules, never from a download. Skips the build when build/ is newer than every source
# file, so `wrangler dev` starts fast. Portable (bash 3.2, no flock): it runs on macOS too.
#
# A test build goes elsewhere: BUILD_FEATURES (cargo features of the worker crate, e.g.
# `fault-drop-settlement`) and BUILD_DIR (default build/, which a feature build may never use)
# build into their own directory and target/features/, leaving build/ and its artifacts alone.
# scripts/mutants.sh builds build-mutant/ this way.
set -euo pipefail
cd "$(dirname "$0")/.."

# One build at a time (wrangler dev's watcher may start several), with a lock that is a
# directory: mkdir is atomic everywhere. A lock whose holder has died is taken over.
mkdir -p target
lock=target/.build.lock.d
waited=0
until mkdir "$lock" 2> /dev/null; do
  holder=$(cat "$lock/pid" 2> /dev/null || true)
  if { [ -n "$holder" ] && ! kill -0 "$holder" 2> /dev/null; } || { [ -z "$holder" ] && [ "$waited" -ge 50 ]; }; then
    echo "build: taking over a stale lock ($lock)" >&2
    rm -rf "$lock"
    continue
  fi
  [ "$waited" = 0 ] && echo "build: waiting for another build to finish" >&2
  waited=$((waited + 1))
  sleep 0.2
done
echo $$ > "$lock/pid"
trap 'rm -rf "$lock"' EXIT

./scripts/toolchain.sh

for tool in wasm-opt esbuild; do
  if [ ! -x "node_modules/.bin/$tool" ]; then
    echo "build: node_modules/.bin/$tool is missing; run \`npm ci\` first" >&2
    exit 1
  fi
done
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "build: package-lock.json changed since the last \`npm ci\`; run it again to build with the pinned tools" >&2
fi

features="${BUILD_FEATURES:-}"
out="${BUILD_DIR:-build}"
out="${out%/}"
out="${out#./}"
extra=()
if [ -n "$features" ]; then
  if [ "$out" = build ]; then
    echo "build: BUILD_FEATURES=$features is a test build; give it its own BUILD_DIR (build/ is what deploys)" >&2
    exit 1
  fi
  extra=(--features "$features" --target-dir target/features)
fi
# The features a directory was built with, so a change of them rebuilds it.
stamp="$out/.features"
if [ -f "$out/index.js" ] && [ -f "$out/index_bg.wasm" ] && \
   [ "$(cat "$stamp" 2> /dev/null || true)" = "$features" ] && \
   [ -z "$(find src Cargo.toml Cargo.lock wrangler.toml scripts/unused-exports.mjs scripts/float-printer.mjs scripts/wasm-leb.mjs -newer "$out/index_bg.wasm" -print | head -n 1)" ]; then
  echo "build: $out/ is up to date"
  exit 0
fi
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen)}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$PWD/node_modules/.bin/wasm-opt}"
export ESBUILD_BIN="${ESBUILD_BIN:-$PWD/node_modules/.bin/esbuild}"
worker-build --release --out-dir "$out" "$@" ${extra[@]+"${extra[@]}"}
# Exports of classes the Worker never makes go first, so that wasm-opt drops their code.
node scripts/unused-exports.mjs "$out/index_bg.wasm"
# The float printer, which nothing can reach with a float, writes a placeholder, so that wasm-opt
# drops its code and tables; the script stops the build if anything else could print a float.
node scripts/float-printer.mjs "$out/index_bg.wasm"
# wasm-opt (Cargo.toml leaves it out of worker-build): `-O` with whole-program type flow
# (`--gufa`), repeated until nothing changes, which measured smaller than `-Oz` once
# compressed; then the functions in order of their names, so that the instances of one
# generic function sit side by side, where gzip finds their likeness (docs/dependencies.md).
# The features are worker-build's own (what workerd runs); the names stay until the strip.
"$WASM_OPT_BIN" "$out/index_bg.wasm" -o "$out/index_bg.opt.wasm" \
  -O --gufa --converge --reorder-functions-by-name --debuginfo \
  --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int \
  --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling
mv "$out/index_bg.opt.wasm" "$out/index_bg.wasm"
# The runtime reads no custom section; a copy with the names stays for the benchmarks.
node scripts/strip-wasm.mjs "$out/index_bg.wasm" "target/wasm-names/$out/index_bg.wasm"
printf '%s' "$features" > "$stamp"
