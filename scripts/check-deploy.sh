#!/usr/bin/env bash
# Checks that the Worker deploys as configured, offline and without a login: `wrangler deploy
# --dry-run` runs the [build] step, validates wrangler.toml (placement, observability, bindings,
# migrations) and bundles the Worker as a deploy would, uploading nothing. A configuration
# warning fails the check too: a field wrangler does not know is silently left out of a deploy.
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false WRANGLER_HIDE_BANNER=true CI=true NO_COLOR=1 FORCE_COLOR=0

if ! node_modules/.bin/wrangler deploy --dry-run --outdir "$out/bundle" > "$out/log" 2>&1; then
  cat "$out/log" >&2
  echo "check-deploy: wrangler deploy --dry-run failed" >&2
  exit 1
fi
if grep -q "Processing .*configuration" "$out/log"; then
  grep -A 12 "Processing .*configuration" "$out/log" >&2
  echo "check-deploy: wrangler warns about the configuration" >&2
  exit 1
fi
if [ ! -s "$out/bundle/index.js" ] || ! ls "$out"/bundle/*.wasm > /dev/null 2>&1; then
  echo "check-deploy: the dry run wrote no bundle" >&2
  exit 1
fi
echo "check-deploy: ok, $(du -sk "$out/bundle" | cut -f1) KiB bundled, nothing uploaded"
