#!/usr/bin/env bash
# Installs what building, running and testing need, at pinned versions, only when missing:
# the wasm target, worker-build, wasm-bindgen-cli matching Cargo.lock, the npm packages, and
# Chromium for the browser tests (Debian's package, driven by the pinned playwright-core).
# worker-build would otherwise download wasm-bindgen, wasm-opt and esbuild from GitHub; the
# build script points it at these local copies instead.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_BUILD_VERSION=0.8.7

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$bindgen_version" ]; then
  echo "setup: wasm-bindgen not found in Cargo.lock" >&2
  exit 1
fi
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $bindgen_version"; then
  # Not --locked: a locked install of this version fails to resolve webpki-roots offline.
  cargo install wasm-bindgen-cli --version "$bindgen_version"
fi
if ! worker-build --version 2>/dev/null | grep -qx "$WORKER_BUILD_VERSION"; then
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked
fi

# npm packages: reinstall only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

# Chromium for tests/browser (the system's: playwright-core never downloads a browser here).
if [ -z "${CHROMIUM_PATH:-}" ] && ! command -v chromium > /dev/null && ! command -v chromium-browser > /dev/null; then
  if command -v apt-get > /dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
  else
    echo "setup: Chromium not found; the browser tests need it (install it, or set CHROMIUM_PATH)" >&2
  fi
fi
