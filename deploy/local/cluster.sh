#!/usr/bin/env bash
# The whole distributed system on one machine: the Kafka-protocol test broker (Nisshi, sqlite
# storage) and one `causeway serve --role ...` process per role, on loopback ports.
#
#   deploy/local/cluster.sh start    # build if needed, start, wait until every node is ready
#   deploy/local/cluster.sh status
#   deploy/local/cluster.sh stop     # SIGTERM every node (they drain), then the broker
#
# Settings (environment): CLUSTER_DIR (./causeway-cluster), BASE_PORT (8081: order, then
# inventory, payment, shipping, saga, query = BASE_PORT+5), KAFKA_PORT (19092), CAUSEWAY_BIN
# (default: a release build of this checkout), BROKER_STORAGE (sqlite://broker.db; memory://nisshi/
# is faster and forgets everything when the broker stops).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROLES=(order inventory payment shipping saga query)
DIR="${CLUSTER_DIR:-./causeway-cluster}"
BASE_PORT="${BASE_PORT:-8081}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
export PATH="$HOME/.cargo/bin:$PATH"

port_of() { # role -> port
  local i
  for i in "${!ROLES[@]}"; do
    if [ "${ROLES[$i]}" = "$1" ]; then echo $((BASE_PORT + i)); return; fi
  done
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

ready() { curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1; }

start() {
  mkdir -p "$DIR/pids" "$DIR/logs" "$DIR/broker"
  if alive "$DIR/pids/broker"; then
    echo "already running (deploy/local/cluster.sh stop first)" >&2
    exit 1
  fi
  source scripts/deps.sh
  if [ -z "${CAUSEWAY_BIN:-}" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
    cargo build --release --locked --bin causeway
    CAUSEWAY_BIN="$CARGO_TARGET_DIR/release/causeway"
  fi
  local url="tcp://127.0.0.1:$KAFKA_PORT"
  (cd "$DIR/broker" && NO_COLOR=1 exec nisshi broker --listener-url "$url" --advertised-listener-url "$url" \
      --storage-engine "${BROKER_STORAGE:-sqlite://broker.db}" --group-initial-rebalance-delay 0s >../logs/broker.log 2>&1) &
  echo $! >"$DIR/pids/broker"
  local deadline=$((SECONDS + 60))
  until nisshi topic list --broker "$url" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "the broker did not start; see $DIR/logs/broker.log" >&2; exit 1; }
    sleep 0.1
  done
  for role in "${ROLES[@]}"; do
    local port; port=$(port_of "$role")
    RUST_LOG="${RUST_LOG:-info}" "$CAUSEWAY_BIN" serve --role "$role" --node-id "$role" \
      --data-dir "$DIR/$role" --listen "127.0.0.1:$port" --kafka-bootstrap "127.0.0.1:$KAFKA_PORT" \
      >"$DIR/logs/$role.log" 2>&1 &
    echo $! >"$DIR/pids/$role"
  done
  deadline=$((SECONDS + 120))
  for role in "${ROLES[@]}"; do
    local port; port=$(port_of "$role")
    until ready "$port"; do
      if ! alive "$DIR/pids/$role"; then
        echo "the $role node exited; see $DIR/logs/$role.log" >&2; stop; exit 1
      fi
      [ $SECONDS -lt $deadline ] || { echo "the $role node is not ready; see $DIR/logs/$role.log" >&2; stop; exit 1; }
      sleep 0.1
    done
  done
  echo "causeway cluster ready: REST (query node) http://127.0.0.1:$(port_of query), Kafka 127.0.0.1:$KAFKA_PORT"
}

stop() {
  local failed=0 role pid
  for role in "${ROLES[@]}" broker; do
    local f="$DIR/pids/$role"
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      local deadline=$((SECONDS + 60))
      while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
          echo "$role did not stop in time; killing it" >&2
          kill -KILL "$pid" 2>/dev/null || true
          failed=1
          break
        fi
        sleep 0.1
      done
    fi
    rm -f "$f"
  done
  echo "causeway cluster stopped"
  return $failed
}

status() {
  local role
  for role in "${ROLES[@]}"; do
    local port; port=$(port_of "$role")
    if alive "$DIR/pids/$role" && ready "$port"; then echo "$role: ready on $port"; else echo "$role: down"; fi
  done
  if alive "$DIR/pids/broker"; then echo "broker: running on $KAFKA_PORT"; else echo "broker: down"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
