#!/usr/bin/env bash
# The console's browser test: headless Chromium (Debian's) driven by playwright-core against a
# real `causeway serve` (tests/ui/console.test.mjs). Installs playwright-core from its lock file
# when it is missing; screenshots go to $CARGO_TARGET_DIR/ui-screenshots.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
if [ ! -d tests/ui/node_modules/playwright-core ]; then
  npm ci --prefix tests/ui --no-audit --no-fund --loglevel=error
fi
cargo build --locked -p causeway --quiet
export CAUSEWAY_BIN="$CARGO_TARGET_DIR/debug/causeway"
export SCREENSHOTS="${SCREENSHOTS:-$CARGO_TARGET_DIR/ui-screenshots}"
node tests/ui/console.test.mjs
