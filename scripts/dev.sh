#!/usr/bin/env bash
# Runs the proxy locally under wrangler dev (real workerd, Durable Objects persisted under
# .wrangler/state), and the demo chat page (web/) on its own origin. Without ANTHROPIC_API_KEY
# (in the environment or .dev.vars) it starts the built-in simulated upstream and points the
# Worker at it; the page then shows controls that make the simulator misbehave.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8787}"
SIM_PORT="${SIM_PORT:-8788}"
WEB_PORT="${WEB_PORT:-8789}"
MODEL="${MODEL:-claude-sonnet-5-5}"
DEV_KEY="${DEV_CLIENT_KEY:-ck_local_dev_key_0001}"
# A second local caller, of a background tier: the demo page's "noisy neighbour".
NEIGHBOUR_KEY="${DEV_NEIGHBOUR_KEY:-ck_local_dev_key_0002}"
DEV_ADMIN="${DEV_ADMIN_KEY:-adm_local_dev_key_0001}"

./scripts/setup.sh --no-browser
./scripts/build.sh

export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false WRANGLER_HIDE_BANNER=true CI=true

args=(--ip 127.0.0.1 --port "$PORT" --persist-to .wrangler/state)
real_key="${ANTHROPIC_API_KEY:-}"
if [ -z "$real_key" ] && [ -f .dev.vars ] && grep -q '^ANTHROPIC_API_KEY=' .dev.vars; then
  real_key=configured
fi

# Children (and theirs: wrangler runs workerd and build steps) are stopped on any exit.
pids=()
tree() { local child; for child in $(pgrep -P "$1" 2>/dev/null); do tree "$child"; done; echo "$1"; }
cleanup() {
  trap - EXIT INT TERM
  local all=() pid
  for pid in "${pids[@]}"; do all+=($(tree "$pid")); done
  if [ ${#all[@]} -gt 0 ]; then kill "${all[@]}" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "$real_key" ]; then
  cargo build --release -p breakwater-sim --quiet
  ./target/release/breakwater-sim --port "$SIM_PORT" > /dev/null &
  pids+=($!)
  args+=(--var "UPSTREAM_URL:http://127.0.0.1:$SIM_PORT" --var "ANTHROPIC_API_KEY:sim-upstream-key")
  # On the simulator the page's model falls back to another, so "Overload only this model"
  # shows an answer from a fallback model.
  if [ -z "${MODEL_FALLBACKS:-}" ] && ! { [ -f .dev.vars ] && grep -q '^MODEL_FALLBACKS=' .dev.vars; }; then
    fallback_model=claude-haiku-5-5
    [ "$MODEL" = "$fallback_model" ] && fallback_model=claude-sonnet-5-5
    args+=(--var "MODEL_FALLBACKS:{\"$MODEL\": [\"$fallback_model\"]}")
  fi
  upstream="the simulated upstream on http://127.0.0.1:$SIM_PORT"
else
  if [ -n "${ANTHROPIC_API_KEY:-}" ]; then args+=(--var "ANTHROPIC_API_KEY:$ANTHROPIC_API_KEY"); fi
  upstream="https://api.anthropic.com"
fi
configured() { [ -n "${!1:-}" ] || { [ -f .dev.vars ] && grep -q "^$1=" .dev.vars; }; }
page_key="${DEV_CLIENT_KEY:-}"
neighbour_key=""
if ! configured CLIENT_KEYS; then
  rate_limits=""
  if ! configured RATE_LIMITS; then
    # wrangler.toml's tiers plus one for the neighbour: background, with a job's long budget
    # and no caller limits of its own, so only the upstream key's room holds it back.
    rate_limits="$(node -e '
      const toml = require("fs").readFileSync("wrangler.toml", "utf8");
      const m = toml.match(/^RATE_LIMITS = '"'"'(.*)'"'"'$/m);
      if (m) process.stdout.write(JSON.stringify({ ...JSON.parse(m[1]),
        neighbour: { priority: "background", budget_ms: 120000 } }));')"
  fi
  if [ -n "$rate_limits" ]; then
    args+=(--var "RATE_LIMITS:$rate_limits")
    args+=(--var "CLIENT_KEYS:{\"$DEV_KEY\": {\"id\": \"local-dev\"}, \"$NEIGHBOUR_KEY\": {\"id\": \"local-neighbour\", \"tier\": \"neighbour\"}}")
    neighbour_key="$NEIGHBOUR_KEY"
  else
    args+=(--var "CLIENT_KEYS:{\"$DEV_KEY\": {\"id\": \"local-dev\"}}")
  fi
  page_key="$DEV_KEY"
fi

# The operator's view (/proxy/status) for the page's fleet panel: a local ADMIN_KEY, unless
# one is set already (one in .dev.vars reaches the panel through DEV_ADMIN_KEY or ?admin=…).
page_admin="${DEV_ADMIN_KEY:-}"
if [ -z "${ADMIN_KEY:-}" ] && ! { [ -f .dev.vars ] && grep -q '^ADMIN_KEY=' .dev.vars; }; then
  args+=(--var "ADMIN_KEY:$DEV_ADMIN")
  page_admin="$DEV_ADMIN"
elif [ -n "${ADMIN_KEY:-}" ]; then
  args+=(--var "ADMIN_KEY:$ADMIN_KEY")
  page_admin="${DEV_ADMIN_KEY:-$ADMIN_KEY}"
fi

# The demo page lives on its own origin, which the Worker must allow.
page_url="http://127.0.0.1:$WEB_PORT"
origins="${ALLOWED_ORIGINS:-*}"
if [ "$origins" != "*" ]; then
  for origin in "$page_url" "http://localhost:$WEB_PORT"; do
    case ",${origins// /}," in *",$origin,"*) ;; *) origins="$origins,$origin" ;; esac
  done
fi
args+=(--var "ALLOWED_ORIGINS:$origins")

if [ -z "$real_key" ]; then sim_url="http://127.0.0.1:$SIM_PORT"; else sim_url=""; neighbour_key=""; fi
MODEL="$MODEL" PROXY_URL="http://127.0.0.1:$PORT" PAGE_KEY="$page_key" SIM_URL="$sim_url" UPSTREAM="$upstream" \
  PAGE_ADMIN="$page_admin" NEIGHBOUR_KEY="$neighbour_key" \
  node --input-type=module -e '
    import { writeFileSync } from "node:fs";
    import { configModule } from "./web/serve.mjs";
    const e = process.env;
    writeFileSync("web/config.js", configModule({
      proxyURL: e.PROXY_URL, apiKey: e.PAGE_KEY, simURL: e.SIM_URL || null, model: e.MODEL, upstream: e.UPSTREAM,
      adminKey: e.PAGE_ADMIN || "", neighbourKey: e.NEIGHBOUR_KEY || "",
    }));'
node web/serve.mjs --host 127.0.0.1 --port "$WEB_PORT" > /dev/null &
pids+=($!)

cat <<MSG
breakwater on http://127.0.0.1:$PORT  ->  $upstream
try:
  curl http://127.0.0.1:$PORT/v1/messages -H 'x-api-key: $DEV_KEY' -H 'anthropic-version: 2023-06-01' \\
       -H 'content-type: application/json' \\
       -d '{"model":"claude-sonnet-5-5","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]}'
demo chat page: $page_url/
operator's view: curl http://127.0.0.1:$PORT/proxy/status -H 'authorization: Bearer ${page_admin:-<ADMIN_KEY>}'
MSG
node_modules/.bin/wrangler dev "${args[@]}" &
pids+=($!)
wait "${pids[-1]}"
