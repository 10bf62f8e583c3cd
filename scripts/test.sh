#!/usr/bin/env bash
# Runs every Causeway test on a fresh machine: installs what the tests need when it is missing
# (a C toolchain, the Nisshi Kafka broker the Kafka tests start), then runs the whole workspace's
# tests. Build output goes outside the clone so runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
source scripts/deps.sh

cargo test --workspace --locked "$@"
