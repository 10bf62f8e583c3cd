#!/usr/bin/env bash
# Runs every Causeway test on a fresh machine: installs what the tests need when it is missing
# (a C toolchain, the Nisshi Kafka broker the Kafka tests start, Schemathesis for the API fuzz),
# runs the whole workspace's tests (unit, property, kill -9 crash, Kafka, the sharded cluster
# under faults), then fuzzes the REST API from its OpenAPI document and drives the console in
# headless Chromium. Build output goes outside
# the clone so runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
source scripts/deps.sh

cargo test --workspace --locked "$@"
bash scripts/api-fuzz.sh
bash scripts/ui-test.sh
bash scripts/prometheus-check.sh
