#!/usr/bin/env bash
# Installs what building the Worker needs and nothing else, at pinned versions, only when
# missing: the wasm target, worker-build, and wasm-bindgen-cli matching Cargo.lock (worker-build
# would otherwise download wasm-bindgen from GitHub). No npm packages, no browser: a deploy
# runs `npm ci` first (see docs/deploy.md), and the test tools come from scripts/setup.sh.
# Portable (bash 3.2, BSD tools): it runs on a deployer's Mac as well as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_BUILD_VERSION=0.8.7

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$bindgen_version" ]; then
  echo "toolchain: wasm-bindgen not found in Cargo.lock" >&2
  exit 1
fi
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $bindgen_version"; then
  # Not --locked: a locked install of this version fails to resolve webpki-roots offline.
  cargo install wasm-bindgen-cli --version "$bindgen_version"
fi
if ! worker-build --version 2>/dev/null | grep -qx "$WORKER_BUILD_VERSION"; then
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked
fi
