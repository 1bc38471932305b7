#!/usr/bin/env bash
# Runs the proxy locally under wrangler dev (real workerd, Durable Objects persisted under
# .wrangler/state). Without ANTHROPIC_API_KEY (in the environment or .dev.vars) it starts the
# built-in simulated upstream and points the Worker at it.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8787}"
SIM_PORT="${SIM_PORT:-8788}"
DEV_KEY="${DEV_CLIENT_KEY:-ck_local_dev_key_0001}"

./scripts/setup.sh
./scripts/build.sh

export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false WRANGLER_HIDE_BANNER=true CI=true

args=(--ip 127.0.0.1 --port "$PORT" --persist-to .wrangler/state)
real_key="${ANTHROPIC_API_KEY:-}"
if [ -z "$real_key" ] && [ -f .dev.vars ] && grep -q '^ANTHROPIC_API_KEY=' .dev.vars; then
  real_key=configured
fi

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

if [ -z "$real_key" ]; then
  cargo build --release -p breakwater-sim --quiet
  ./target/release/breakwater-sim --port "$SIM_PORT" > /dev/null &
  pids+=($!)
  args+=(--var "UPSTREAM_URL:http://127.0.0.1:$SIM_PORT" --var "ANTHROPIC_API_KEY:sim-upstream-key")
  upstream="the simulated upstream on http://127.0.0.1:$SIM_PORT"
else
  if [ -n "${ANTHROPIC_API_KEY:-}" ]; then args+=(--var "ANTHROPIC_API_KEY:$ANTHROPIC_API_KEY"); fi
  upstream="https://api.anthropic.com"
fi
if [ -z "${CLIENT_KEYS:-}" ] && ! { [ -f .dev.vars ] && grep -q '^CLIENT_KEYS=' .dev.vars; }; then
  args+=(--var "CLIENT_KEYS:{\"$DEV_KEY\": {\"id\": \"local-dev\"}}")
fi
args+=(--var "ALLOWED_ORIGINS:${ALLOWED_ORIGINS:-*}")

cat <<MSG
breakwater on http://127.0.0.1:$PORT  ->  $upstream
try:
  curl http://127.0.0.1:$PORT/v1/messages -H 'x-api-key: $DEV_KEY' -H 'anthropic-version: 2023-06-01' \\
       -H 'content-type: application/json' \\
       -d '{"model":"claude-sonnet-4-6","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]}'
MSG
npx wrangler dev "${args[@]}" &
pids+=($!)
wait "${pids[-1]}"
