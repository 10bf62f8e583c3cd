#!/usr/bin/env bash
# A long randomized fault run of the sharded production topology (2 pods of every role, 2 query
# pods, the test broker) on this machine: open-loop orders over every saga path while pods are
# killed with kill -9, the broker is stopped and killed, and pods are paused past their
# deadlines; then every invariant is checked (tests/src/check.rs). Prints the run's row for
# RELIABILITY.md; exits 1 on any violation (the pods' stores and logs are kept then).
#
#   scripts/soak.sh [MINUTES] [SEED]     # default: 10 minutes, a random seed (printed)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
source scripts/deps.sh
cargo build --release --locked --bin causeway --bin cluster-soak
CAUSEWAY_BIN="$CARGO_TARGET_DIR/release/causeway" exec "$CARGO_TARGET_DIR/release/cluster-soak" "${1:-10}" ${2:+"$2"}
