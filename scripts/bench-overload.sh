#!/usr/bin/env bash
# Open-loop overload, side by side in one run: the node's capacity is measured first (closed
# loop), then orders are offered for DURATION seconds at 0.5x, 1x, 2x and 5x of it, each on a
# fresh node, through `causeway load --target` (which counts 429/503 answers and whether they
# carry Retry-After). After each run the node's RSS is read, the node stopped, and
# `causeway verify` checks every accepted saga ended and the invariants hold (on the cluster, on
# every pod's store, each for what its role's log answers for).
#
#   scripts/bench-overload.sh embedded [DURATION]     # default 60 s per run
#   scripts/bench-overload.sh cluster  [DURATION]     # the local cluster, 1 pod per role
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
MODE="${1:-embedded}"
DURATION="${2:-60}"
cargo build --release --locked --bin causeway >&2
BIN="$CARGO_TARGET_DIR/release/causeway"
PORT=18480

rss_of() { # total RSS in MiB of the given pids
  local total=0
  for p in "$@"; do
    kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + kb))
  done
  echo $((total / 1024))
}

start_node() { # sets TARGET, PIDS, DATA
  if [ "$MODE" = embedded ]; then
    DATA="$(mktemp -d)"
    "$BIN" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" >"$DATA.log" 2>&1 &
    PIDS="$!"
    TARGET="http://127.0.0.1:$PORT"
    for _ in $(seq 1 100); do
      curl -fs "$TARGET/readyz" >/dev/null 2>&1 && return 0
      sleep 0.2
    done
    echo "the node did not become ready" >&2; cat "$DATA.log" >&2; exit 1
  else
    DATA="$(mktemp -d)"
    export CAUSEWAY_BIN="$BIN" BROKER_STORAGE=memory://nisshi/ CLUSTER_DIR="$DATA"
    deploy/local/cluster.sh start --replicas 1 >"$DATA/start.log" 2>&1
    TARGET="$(deploy/local/cluster.sh status | awk '$1 == "query" && $2 == 0 { print $3 }')"
    PIDS="$(pgrep -f "causeway serve" | tr '\n' ' ')"
  fi
}

stop_node() { # prints the verify outcome
  if [ "$MODE" = embedded ]; then
    kill -TERM $PIDS 2>/dev/null || true
    wait $PIDS 2>/dev/null || true
    if "$BIN" verify --data-dir "$DATA" >"$DATA.verify" 2>&1; then echo "verify OK"; else echo "verify FAILED: $(tail -3 "$DATA.verify" | tr '\n' ' ')"; fi
    rm -rf "$DATA" "$DATA.log" "$DATA.verify"
  else
    # The query pod's replica reads each topic on its own: let it take in what the other pods
    # published (its head stays put for 3 s, 60 s at most) before everything stops.
    local last=-1 same=0 head
    for _ in $(seq 1 60); do
      head="$(curl -fs "$TARGET/readyz" 2>/dev/null | sed -n 's/.*"head":\([0-9]*\).*/\1/p')"
      if [ -n "$head" ] && [ "$head" = "$last" ]; then same=$((same + 1)); else same=0; fi
      [ "$same" -ge 3 ] && break
      last="$head"
      sleep 1
    done
    deploy/local/cluster.sh stop >/dev/null 2>&1 || true
    local pods=0 failed=""
    for d in "$DATA"/*/; do
      [ -e "$d/db" ] || continue
      pods=$((pods + 1))
      "$BIN" verify --data-dir "$d" >"$d.verify" 2>&1 || failed="$failed $(basename "$d"): $( { grep -m2 -E 'problem|unfinished|rror' "$d.verify" || tail -2 "$d.verify"; } | tr '\n' ' ' || true)"
    done
    if [ "$pods" -eq 0 ]; then echo "verify FAILED: no pod store found"
    elif [ -z "$failed" ]; then echo "verify OK ($pods pods)"
    else echo "verify FAILED:$failed"; fi
    rm -rf "$DATA"
  fi
}

field() { # the value column of a load report row
  grep -F "| $1" | head -1 | awk -F'|' '{ print $3 }' | sed 's/^ *//; s/ *$//'
}

start_node
cap_out="$("$BIN" load --target "$TARGET" --orders 6000 --concurrency 256 2>&1 | tail -30)"
stop_node >/dev/null
CAP="$(echo "$cap_out" | field "sagas/s")"
echo "$MODE: capacity (closed loop, 256 in flight): $CAP sagas/s"
echo
echo "| offered | x | accepted/s | refused/s | no Retry-After | goodput/s | p50 | p99 | RSS at end | not ended | verify |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for x in 0.5 1 2 5; do
  rate="$(python3 -c "print(round($CAP * $x, 1))")"
  start_node
  out="$("$BIN" load --target "$TARGET" --rate "$rate" --duration "$DURATION" --concurrency 1000000 --drain-secs 120 2>&1 | tail -30)"
  rss="$(rss_of $PIDS)"
  verdict="$(stop_node)"
  acc="$(echo "$out" | field "accepted" | sed 's/.*(\(.*\)\/s)/\1/')"
  ref="$(echo "$out" | field "refused" | sed 's/.*(\(.*\)\/s).*/\1/')"
  noretry="$(echo "$out" | field "refusals without")"
  good="$(echo "$out" | field "completed while" | sed 's/.*(\(.*\)\/s)/\1/')"
  p50="$(echo "$out" | field "p50 completion")"
  p99="$(echo "$out" | field "p99 completion")"
  left="$(echo "$out" | field "accepted, not ended")"
  echo "| $rate/s | ${x}x | $acc | $ref | $noretry | $good | $p50 | $p99 | $rss MiB | $left | $verdict |"
done
