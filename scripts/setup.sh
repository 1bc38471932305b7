#!/usr/bin/env bash
# Installs what building, running and testing need, at pinned versions, only when missing:
# the build's tools (scripts/toolchain.sh), the npm packages, and Chromium for the browser
# tests (Debian's package, driven by the pinned playwright-core). A deploy needs only the
# first two (`npm ci`, then `npx wrangler deploy`, whose build runs scripts/build.sh).
# Usage: scripts/setup.sh [--no-browser]
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/toolchain.sh

# npm packages: reinstall only when the lock file changed since the last install. They include
# the Claude tokenizer's ranks (@anthropic-ai/tokenizer), which the simulator reads at start.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

# Chromium for tests/browser (the system's: playwright-core never downloads a browser here);
# `--no-browser` (scripts/dev.sh) leaves it out.
if [ "${1:-}" = --no-browser ]; then
  exit 0
fi
if [ -z "${CHROMIUM_PATH:-}" ] && ! command -v chromium > /dev/null && ! command -v chromium-browser > /dev/null; then
  if command -v apt-get > /dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
  else
    echo "setup: Chromium not found; the browser tests need it (install it, or set CHROMIUM_PATH)" >&2
  fi
fi
