#!/usr/bin/env bash
# Fuzzes the REST API from its own OpenAPI document with Schemathesis: a node (embedded, admin
# routes on) gets stock and orders, then every documented operation is called with generated
# requests, valid and invalid. It fails on any 5xx, any status code, content type or body the
# document does not describe. Run by scripts/test.sh after the Rust tests.
#
#   scripts/api-fuzz.sh [EXAMPLES]      # generated cases per operation (default 40)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$HOME/.local/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
EXAMPLES="${1:-40}"
SCHEMATHESIS_VERSION=4.32.5

if ! { command -v st >/dev/null 2>&1 && st --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; }; then
  python3 -m pip install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
B="$CARGO_TARGET_DIR/debug/causeway"
[ -x "$B" ] || cargo build --locked --bin causeway
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TOKEN="fuzz-admin-token-$(date +%s%N)"
H="http://127.0.0.1:$PORT"
CAUSEWAY_ADMIN_TOKEN="$TOKEN" RUST_LOG=warn "$B" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
  >"$WORK/node.log" 2>&1 &
NODE=$!
cleanup() {
  kill -TERM "$NODE" 2>/dev/null && wait "$NODE" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 1 300); do
  curl -fsS "$H/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$H/readyz" >/dev/null || { echo "the node did not become ready:"; cat "$WORK/node.log"; exit 1; }
# A node with orders in it: stock, then orders over every path (some undeliverable: compensated).
for sku in 0 1 2 3; do
  curl -fsS -X POST "$H/api/products/SKU-$sku/stock" -H 'content-type: application/json' -d '{"quantity": 1000}' >/dev/null
done
"$B" load --target "$H" --orders 40 --rate 40 --skus 4 --undeliverable 0.2 >/dev/null
# The live feed is an endless stream: it has its own tests. The checks: no 5xx, and nothing the
# document does not describe (status codes, content types, bodies).
st run "$H/api/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /api/events/live \
  -H "Authorization: Bearer $TOKEN" \
  --max-examples "$EXAMPLES" --seed 20261202 --request-timeout 10 --no-color
if grep -q "panicked" "$WORK/node.log"; then
  echo "the node panicked:"; cat "$WORK/node.log"; exit 1
fi
