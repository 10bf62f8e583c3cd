#!/usr/bin/env bash
# Runs every Causeway test on a fresh machine: installs what the tests need when it is missing,
# then runs the whole workspace's tests. Build output goes outside the clone so runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (Rust stable toolchain)" >&2
  exit 1
fi
# A C compiler for crates with C parts.
if ! command -v cc >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq build-essential pkg-config
fi

cargo test --workspace --locked "$@"
