#!/usr/bin/env bash
# The whole distributed system on one machine: the Kafka-protocol test broker (Nisshi, sqlite
# storage) and `causeway serve --role ...` processes on loopback ports, the same topology as the
# production overlay: N pods of every role, each pod of a role owning its share of the role's
# partitions (order, payment, shipping, saga by order id; inventory by SKU), and N query pods.
#
#   deploy/local/cluster.sh start [--replicas N] [--order N] [--inventory N] [--payment N]
#                                 [--shipping N] [--saga N] [--query N]
#   deploy/local/cluster.sh status    # one line per node: role, index, URL, ready or down
#   deploy/local/cluster.sh stop      # SIGTERM every node (they drain), then the broker
#   deploy/local/cluster.sh logs      # the logs of nodes run from the image, into $CLUSTER_DIR/logs
#
# --replicas sets every role's pod count (default 1); a role's own flag overrides it. The counts
# are recorded in the cluster directory: `status` and `stop` read them, and a second `start`
# on the same directory must use the same counts (a pod refuses another layout than its first).
#
# Settings (environment): CLUSTER_DIR (./causeway-cluster), BASE_PORT (8081: the nodes take
# consecutive ports in the order of `status`), KAFKA_PORT (19092), KAFKA_PARTITIONS (12: the most
# pods any role can have), CAUSEWAY_BIN (default: a release build of this checkout),
# BROKER_STORAGE (sqlite://broker.db; memory://nisshi/ is faster and forgets everything when the
# broker stops), and CAUSEWAY_NODE_ARGS (extra arguments for every node).
#
# CAUSEWAY_IMAGE=causeway:ci runs every node from that container image instead of a binary (the
# image the manifests run; scripts/image-check.sh builds it): one container per node on the
# host's network, its data directory mounted at /data and handed to the image's user (uid
# 10001, recursively: a directory used from the image stays that user's). It needs the Docker
# engine of scripts/docker-engine.sh (root; started when it is not running, and left running:
# `source scripts/docker-engine.sh && engine_stop any` stops it) and passes the nodes RUST_LOG
# and every CAUSEWAY_* and OTEL_* setting of its environment.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
ROLES=(order inventory payment shipping saga query)
DIR="${CLUSTER_DIR:-./causeway-cluster}"
BASE_PORT="${BASE_PORT:-8081}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
PARTITIONS="${KAFKA_PARTITIONS:-12}"
export PATH="$HOME/.cargo/bin:$PATH"
declare -A COUNT

usage() {
  echo "usage: $0 start [--replicas N] [--<role> N ...] | status | stop" >&2
  exit 2
}

positive() { [[ "$1" =~ ^[1-9][0-9]*$ ]] || { echo "$2 must be a positive number, got '$1'" >&2; exit 2; }; }

parse_counts() {
  local replicas=1 role
  declare -A own=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --replicas) [ $# -ge 2 ] || usage; positive "$2" --replicas; replicas="$2"; shift 2 ;;
      --order|--inventory|--payment|--shipping|--saga|--query)
        [ $# -ge 2 ] || usage; positive "$2" "$1"; own["${1#--}"]="$2"; shift 2 ;;
      *) echo "unknown option '$1'" >&2; usage ;;
    esac
  done
  for role in "${ROLES[@]}"; do
    COUNT[$role]="${own[$role]:-$replicas}"
    if [ "$role" != query ] && [ "${COUNT[$role]}" -gt "$PARTITIONS" ]; then
      echo "$role: ${COUNT[$role]} pods need at least as many partitions (KAFKA_PARTITIONS=$PARTITIONS)" >&2
      exit 2
    fi
  done
}

load_counts() {
  local role
  [ -f "$DIR/topology" ] || { for role in "${ROLES[@]}"; do COUNT[$role]=1; done; return; }
  while read -r role n; do COUNT[$role]="$n"; done <"$DIR/topology"
}

# Every node, in order: "role index port".
nodes() {
  local role i port=$BASE_PORT
  for role in "${ROLES[@]}"; do
    for ((i = 0; i < COUNT[$role]; i++)); do
      echo "$role $i $port"
      port=$((port + 1))
    done
  done
}

# A node's pid file holds its pid, or `container <name>` when it runs from the image.
alive() {
  [ -f "$1" ] || return 1
  local what name
  read -r what name <"$1"
  if [ "$what" = container ]; then
    [ "$(d inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" = true ]
  else
    kill -0 "$what" 2>/dev/null
  fi
}

# The image of this start; `status` and `stop` take the one the cluster was started with.
IMAGE="${CAUSEWAY_IMAGE:-}"
if [ "${1:-}" != start ] && [ -f "$DIR/image" ]; then
  IMAGE=$(cat "$DIR/image")
fi
source scripts/docker-engine.sh
[ -n "$IMAGE" ] && export DOCKER_HOST="unix:///run/causeway-docker/docker.sock"

# Runs one node from the image: role index port.
run_container() {
  local role=$1 i=$2 port=$3 name="$1-$2"
  local container
  container="causeway-$(realpath "$DIR" | md5sum | cut -c1-8)-$name"
  mkdir -p "$DIR/$name"
  chown -R 10001:10001 "$DIR/$name"
  d rm -f "$container" >/dev/null 2>&1 || true
  local pass=(-e RUST_LOG -e CAUSEWAY_ADMISSION_TARGET_MS) var
  for var in $(compgen -e); do
    case "$var" in
      CAUSEWAY_BIN|CAUSEWAY_IMAGE|CAUSEWAY_NODE_ARGS|CAUSEWAY_ADMISSION_TARGET_MS) ;;
      CAUSEWAY_*|OTEL_*) pass+=(-e "$var") ;;
    esac
  done
  # shellcheck disable=SC2086 # CAUSEWAY_NODE_ARGS is a list of words
  d run -d --name "$container" --network host -v "$(realpath "$DIR/$name"):/data" "${pass[@]}" "$IMAGE" \
    serve --role "$role" --node-id "$name" \
    --shard-count "${COUNT[$role]}" --shard-index "$i" --kafka-partitions "$PARTITIONS" \
    --data-dir /data --listen "127.0.0.1:$port" --kafka-bootstrap "127.0.0.1:$KAFKA_PORT" \
    ${CAUSEWAY_NODE_ARGS:-} >/dev/null
  echo "container $container" >"$DIR/pids/$name"
}

# A node's log (from its container when it runs from the image).
node_log() {
  local f="$DIR/pids/$1" what name
  if [ -f "$f" ] && read -r what name <"$f" && [ "$what" = container ]; then
    d logs "$name" >"$DIR/logs/$1.log" 2>&1 || true
  fi
  tail -5 "$DIR/logs/$1.log" 2>/dev/null || true
}

ready() { curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1; }

start() {
  parse_counts "$@"
  # A start that fails half-way stops what it started (the broker, the nodes so far).
  trap 'echo "the cluster did not start; stopping what did" >&2; trap - ERR; stop >/dev/null 2>&1 || true' ERR
  mkdir -p "$DIR/pids" "$DIR/logs" "$DIR/broker"
  if alive "$DIR/pids/broker"; then
    echo "already running (deploy/local/cluster.sh stop first)" >&2
    exit 1
  fi
  if [ -f "$DIR/topology" ]; then
    local role n
    while read -r role n; do
      if [ "${COUNT[$role]}" != "$n" ]; then
        echo "$DIR was started with $n $role pod(s), not ${COUNT[$role]}: a pod refuses another layout than its" >&2
        echo "first (see deploy/README.md, \"Changing the pod count\"). Use the same counts, or a new CLUSTER_DIR." >&2
        exit 1
      fi
    done <"$DIR/topology"
  fi
  for role in "${ROLES[@]}"; do echo "$role ${COUNT[$role]}"; done >"$DIR/topology"
  source scripts/deps.sh
  if [ -n "$IMAGE" ]; then
    engine_start "${CAUSEWAY_DOCKER_CACHE:-$HOME/.cache/causeway-docker}"
    d image inspect "$IMAGE" >/dev/null 2>&1 ||
      { echo "no image $IMAGE in the engine (scripts/image-check.sh --keep builds causeway:ci)" >&2; exit 1; }
    echo "$IMAGE" >"$DIR/image"
  else
    rm -f "$DIR/image"
  fi
  if [ -z "$IMAGE" ] && [ -z "${CAUSEWAY_BIN:-}" ]; then
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
  local role i port
  # shellcheck disable=SC2086 # CAUSEWAY_NODE_ARGS is a list of words
  while read -r role i port; do
    local name="$role-$i"
    # Query pods admit sagas that cross Kafka: a wider latency target (as deploy/k8s sets).
    local target="${CAUSEWAY_ADMISSION_TARGET_MS:-}"
    [ "$role" = query ] && target="${target:-3000}"
    if [ -n "$IMAGE" ]; then
      CAUSEWAY_ADMISSION_TARGET_MS="${target:-1000}" RUST_LOG="${RUST_LOG:-info}" run_container "$role" "$i" "$port"
      continue
    fi
    CAUSEWAY_ADMISSION_TARGET_MS="${target:-1000}" \
    RUST_LOG="${RUST_LOG:-info}" "$CAUSEWAY_BIN" serve --role "$role" --node-id "$name" \
      --shard-count "${COUNT[$role]}" --shard-index "$i" --kafka-partitions "$PARTITIONS" \
      --data-dir "$DIR/$name" --listen "127.0.0.1:$port" --kafka-bootstrap "127.0.0.1:$KAFKA_PORT" \
      ${CAUSEWAY_NODE_ARGS:-} >"$DIR/logs/$name.log" 2>&1 &
    echo $! >"$DIR/pids/$name"
  done < <(nodes)
  deadline=$((SECONDS + 180))
  while read -r role i port; do
    local name="$role-$i"
    until ready "$port"; do
      if ! alive "$DIR/pids/$name"; then
        echo "the $name node exited; see $DIR/logs/$name.log:" >&2
        node_log "$name" >&2
        stop; exit 1
      fi
      [ $SECONDS -lt $deadline ] || { echo "the $name node is not ready; see $DIR/logs/$name.log" >&2; stop; exit 1; }
      sleep 0.1
    done
  done < <(nodes)
  local queries=""
  while read -r role i port; do
    [ "$role" = query ] && queries+=" http://127.0.0.1:$port"
  done < <(nodes)
  echo "causeway cluster ready: REST (query nodes)$queries, Kafka 127.0.0.1:$KAFKA_PORT${IMAGE:+, nodes from image $IMAGE}"
}

stop() {
  load_counts
  local failed=0 name pid role i port what container
  local names=()
  while read -r role i port; do names+=("$role-$i"); done < <(nodes)
  # Every node drains at once, then the broker.
  for name in "${names[@]}"; do
    alive "$DIR/pids/$name" || continue
    read -r what container <"$DIR/pids/$name"
    if [ "$what" = container ]; then
      d kill -s TERM "$container" >/dev/null 2>&1 || true
    else
      kill -TERM "$what" 2>/dev/null || true
    fi
  done
  for name in "${names[@]}" broker; do
    local f="$DIR/pids/$name"
    [ -f "$f" ] || continue
    read -r what container <"$f"
    if [ "$what" = container ]; then
      # A node from the image: its exit code says whether it drained cleanly.
      local code
      code=$(timeout 60 /usr/bin/docker wait "$container" 2>/dev/null) || {
        echo "$name did not stop in time; killing it" >&2
        d kill "$container" >/dev/null 2>&1 || true
        code=killed
      }
      if [ "$code" != 0 ]; then
        echo "$name exited with $code" >&2
        failed=1
      fi
      d logs "$container" >"$DIR/logs/$name.log" 2>&1 || true
      d rm -f "$container" >/dev/null 2>&1 || true
      # The pid file is the only record of a container: kept while the engine still has it.
      if d inspect "$container" >/dev/null 2>&1; then
        echo "$name ($container) is still there: is the engine reachable?" >&2
        failed=1
      else
        rm -f "$f"
      fi
      continue
    fi
    pid=$what
    if [ "$name" = broker ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
    fi
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
      if [ $SECONDS -ge $deadline ]; then
        echo "$name did not stop in time; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        failed=1
        break
      fi
      sleep 0.1
    done
    rm -f "$f"
  done
  echo "causeway cluster stopped"
  return $failed
}

status() {
  load_counts
  local role i port
  while read -r role i port; do
    local state=down
    alive "$DIR/pids/$role-$i" && ready "$port" && state=ready
    echo "$role $i http://127.0.0.1:$port $state"
  done < <(nodes)
  if alive "$DIR/pids/broker"; then echo "broker - tcp://127.0.0.1:$KAFKA_PORT running"; else echo "broker - tcp://127.0.0.1:$KAFKA_PORT down"; fi
}

# The logs of the nodes run from the image (binary nodes write theirs as they run).
logs() {
  load_counts
  local role i port what container
  while read -r role i port; do
    local f="$DIR/pids/$role-$i"
    [ -f "$f" ] && read -r what container <"$f" && [ "$what" = container ] || continue
    d logs "$container" >"$DIR/logs/$role-$i.log" 2>&1 || true
  done < <(nodes)
}

case "${1:-}" in
  start) shift; start "$@"; trap - ERR ;;
  logs) logs ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
