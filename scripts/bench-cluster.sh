#!/usr/bin/env bash
# The local cluster with 1 pod of every role against 2 pods of every role, side by side in one
# run: alternating starts on a fresh memory broker each, the same open-loop offered rate through
# the first query pod, release builds. Prints one line per run (sagas/s, latency quantiles) from
# `causeway load --target`.
#
#   scripts/bench-cluster.sh [RATE] [ORDERS] [ROUNDS]     # default: 50 orders/s, 1500, 2 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
RATE="${1:-50}"
ORDERS="${2:-1500}"
ROUNDS="${3:-2}"
cargo build --release --locked --bin causeway
BIN="$CARGO_TARGET_DIR/release/causeway"
export CAUSEWAY_BIN="$BIN" BROKER_STORAGE=memory://nisshi/
for round in $(seq 1 "$ROUNDS"); do
  for replicas in 1 2; do
    dir="$(mktemp -d)"
    export CLUSTER_DIR="$dir"
    deploy/local/cluster.sh start --replicas "$replicas" >"$dir/start.log" 2>&1
    query="$(deploy/local/cluster.sh status | awk '$1 == "query" && $2 == 0 { print $3 }')"
    out="$("$BIN" load --target "$query" --orders "$ORDERS" --rate "$RATE" --concurrency 5000 2>&1 | tail -20)"
    deploy/local/cluster.sh stop >/dev/null 2>&1 || true
    echo "round $round, $replicas pod(s) per role, $RATE orders/s offered:"
    echo "$out" | grep -Ei "sagas/s|p50|p95|p99|ended|errors|refused" || echo "$out"
    rm -rf "$dir"
  done
done
