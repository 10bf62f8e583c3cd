#!/usr/bin/env bash
# Writes the saga fixture log of the current saga definition
# (services/tests/fixtures/saga-log-v<definition>.jsonl): a real embedded node, built from this
# checkout, runs sagas down every path (completed; out of stock; no address; refused by the fraud
# check; card declined; cancelled by the customer; two SKUs; quarantined by a gateway outage,
# then retried by an operator; quarantined, then compensated by an operator), and its whole log is
# exported. services/tests/saga_replay.rs replays every fixture against the current decider: a
# change to the saga that would decide sagas recorded by an earlier definition differently fails
# that test. Run this when a release changes the saga on purpose (a new definition,
# ARCHITECTURE.md "Changing the saga"), and commit the new fixture beside the older ones.
#
#   scripts/saga-fixture.sh            # writes the fixture
#
# The node runs with --step-timeout-ms 400 --step-attempts 2 (the replay uses the same) and a
# fraud limit of 5,000,000 minor units.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build -q --bin causeway
TARGET="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)}"
B="$TARGET/debug/causeway"
DIR="$(mktemp -d)"
trap 'kill "$NODE" 2>/dev/null || true; rm -rf "$DIR"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
H="http://127.0.0.1:$PORT"
TOKEN=fixture-admin-token-0001
SAGA=(--step-timeout-ms 400 --step-attempts 2)
DEFINITION=$(sed -n 's/^pub const DEFINITION: u32 = \([0-9]*\);/\1/p' aggregates/src/saga.rs)
OUT="services/tests/fixtures/saga-log-v$DEFINITION.jsonl"
"$B" serve --data-dir "$DIR/node" --listen "127.0.0.1:$PORT" --admin-token "$TOKEN" "${SAGA[@]}" \
  --fraud-limit-minor 5000000 \
  >"$DIR/node.log" 2>&1 &
NODE=$!
until curl -sf "$H/readyz" >/dev/null; do sleep 0.1; done

post() { # path key body
  curl -sf -X POST "$H$1" -H 'content-type: application/json' -H "Idempotency-Key: $2" -d "$3"
}
admin() { # method path body [key]
  curl -sf -X "$1" "$H$2" -H 'content-type: application/json' -H "authorization: Bearer $TOKEN" \
    ${4:+-H "Idempotency-Key: $4"} -d "$3"
}
ADDR='{"line1":"1 Main St","city":"Berlin","postal_code":"10115","country":"DE"}'
order() { # key items [address]
  post /api/orders "$1" "{\"customer_id\":\"fixture\",\"items\":$2,\"currency\":\"EUR\",\"shipping_address\":${3:-$ADDR}}" |
    jq -r .order_id
}
line() { echo "{\"sku\":\"$1\",\"quantity\":$2,\"unit_price_minor\":$3}"; }
status() { curl -sf "$H/api/sagas/$1" | jq -r .status 2>/dev/null || echo none; }
until_status() { # id status...
  for _ in $(seq 600); do
    s=$(status "$1")
    for want in "${@:2}"; do [ "$s" = "$want" ] && return 0; done
    sleep 0.05
  done
  echo "saga $1 never reached ${*:2} (it is $s)" >&2
  exit 1
}

post /api/products/SKU-1/stock s1 '{"quantity": 100}' >/dev/null
post /api/products/SKU-2/stock s2 '{"quantity": 2}' >/dev/null
until_status "$(order completed "[$(line SKU-1 1 1500)]")" completed
until_status "$(order out-of-stock "[$(line SKU-2 5 1500)]")" compensated
until_status "$(order no-address "[$(line SKU-1 1 1500)]" null)" compensated
until_status "$(order fraud "[$(line SKU-1 1 6000000)]")" compensated
until_status "$(order declined "[$(line SKU-1 1 2000000)]")" compensated
until_status "$(order two-skus "[$(line SKU-1 1 1500),$(line SKU-2 1 700)]")" completed
id=$(order cancelled "[$(line SKU-1 1 1500)]")
post "/api/orders/$id/cancel" cancel '{}' >/dev/null || true
until_status "$id" compensated completed
# A gateway outage: the payment runs out of attempts and the saga is quarantined.
admin PUT /api/admin/simulator/gateway '{"failure_rate": 1}' >/dev/null
retried=$(order retried "[$(line SKU-1 1 1500)]")
aborted=$(order aborted "[$(line SKU-1 2 1500)]")
until_status "$retried" quarantined
until_status "$aborted" quarantined
version=$(curl -sf "$H/api/sagas/$aborted" | jq -r .version)
admin POST "/api/admin/sagas/$aborted/compensate" \
  "{\"operator\":\"fixture\",\"reason\":\"customer gave up\",\"expected_version\":$version}" abort >/dev/null
until_status "$aborted" compensated
admin PUT /api/admin/simulator/gateway '{"failure_rate": 0}' >/dev/null
# Retried until it completes: the breaker, open after the outage, may fail the first retry's
# attempts too, and the saga is quarantined again.
for k in 1 2 3 4 5 6 7 8; do
  admin POST "/api/admin/sagas/$retried/retry" '{"operator":"fixture","reason":"gateway back"}' "retry-$k" >/dev/null
  until_status "$retried" completed quarantined
  [ "$(status "$retried")" = completed ] && break
done
until_status "$retried" completed

kill -TERM "$NODE"
wait "$NODE" || true
"$B" verify --data-dir "$DIR/node" "${SAGA[@]}"
mkdir -p services/tests/fixtures
"$B" events --data-dir "$DIR/node" --json --limit 1000000 >"$OUT"
echo "wrote $OUT ($(wc -l <"$OUT") events)"
