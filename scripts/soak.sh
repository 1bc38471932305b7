#!/usr/bin/env bash
# Soak and chaos run with a ledger check (tests/soak/soak.mjs): six callers at and above their
# limits, every upstream fault the simulator has, clients that go away, a Worker restart in the
# middle; each caller's buckets are compared with a replay of the simulator's log every 15 s,
# across the restart and after the traffic, every concurrency slot must come back, no
# settlement may fail and workerd's memory must stay flat.
# Figures go to stdout and artifacts/soak/summary.json.
#
#   ./scripts/soak.sh [seconds]     (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
./scripts/setup.sh >/dev/null
cargo build --release -p breakwater-sim --quiet
./scripts/build.sh >/dev/null
exec node tests/soak/soak.mjs "$seconds"
