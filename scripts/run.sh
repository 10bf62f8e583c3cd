#!/usr/bin/env bash
# The main job on the embedded default (one process, one sled store, no Kafka).
# Until the order runtime lands this runs the event store benchmark in its quick form.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
exec cargo run --release --locked --bin causeway -- bench store --quick "$@"
