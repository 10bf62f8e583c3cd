#!/usr/bin/env bash
# Installs what building and testing Causeway needs, skipping whatever is already there:
# a C toolchain (librdkafka and sled's C parts), Chromium and Node.js (the console's browser
# test), Prometheus and promtool (the monitoring check), and Nisshi, the Kafka-protocol broker the tests
# start (see ../shared/kafka-for-tests.md). Sourced by scripts/test.sh and .ci/run.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (Rust stable toolchain)" >&2
  exit 1
fi

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
[ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
# The console's browser test: Debian's Chromium, and Node.js to drive it (playwright-core).
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# The monitoring check: curl, jq and PyYAML (Prometheus itself below, without its recommends).
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# Debian's Prometheus and promtool, without the exporters it recommends (nothing else to start).
if ! command -v promtool >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi

NISSHI_VERSION=0.8.1
if ! { command -v nisshi >/dev/null 2>&1 && nisshi --version 2>/dev/null | grep -q "$NISSHI_VERSION"; }; then
  echo "installing the test broker (nisshi $NISSHI_VERSION; about 15 minutes on 2 cores, once)" >&2
  # nisshi declares a newer rustc than it needs; it builds and runs on this toolchain.
  cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version --quiet
fi
