#!/usr/bin/env bash
# The main job on the embedded default (one process, one sled store, no Kafka): run 2,000 orders
# through every service and the saga, print throughput and latency, then verify the log and the
# invariants. Data goes to ./causeway-data (reused by later runs; delete it to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
cargo build --release --locked --bin causeway
B="$CARGO_TARGET_DIR/release/causeway"
DATA="${CAUSEWAY_DATA_DIR:-./causeway-data}"
"$B" load --orders "${ORDERS:-2000}" --undeliverable 0.05 --data-dir "$DATA"
"$B" verify --data-dir "$DATA"
