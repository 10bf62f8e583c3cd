#!/usr/bin/env bash
# The monitoring parts against real ones: Debian's Prometheus scrapes an embedded node and the
# local cluster (deploy/local/cluster.sh, one pod per role), and every panel of the Grafana
# dashboard is evaluated on it; promtool checks each node's /metrics, the alert rules and their
# unit tests, and the scrape configuration's local part (Debian's build has no Kubernetes service
# discovery: the Kubernetes job is only parsed, by deploy/check.py).
#
#   scripts/prometheus-check.sh          # run by scripts/test.sh
#
# Ports: the cluster takes 8081-8086 (the local job of deploy/monitoring/prometheus.yml), the
# embedded node 8090, Prometheus 9099, the broker 19092.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
for tool in prometheus promtool curl jq python3; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (scripts/deps.sh installs it)" >&2; exit 1; }
done
python3 -c 'import yaml' 2>/dev/null || { echo "PyYAML is needed (scripts/deps.sh installs python3-yaml)" >&2; exit 1; }
# The ports this check takes must be free: a node or broker left running would answer for ours.
for port in 8081 8082 8083 8084 8085 8086 8090 9099 19092; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use (a cluster or node left running?): stop it first" >&2
    exit 1
  fi
done
MON=deploy/monitoring

echo "== promtool: the alert rules and their tests"
promtool check rules "$MON/alerts.yml"
promtool test rules "$MON/alerts_test.yml"

cargo build --locked -p causeway --quiet
B="$CARGO_TARGET_DIR/debug/causeway"
WORK="$(mktemp -d)"
NODE=""
PROM=""
cleanup() {
  for pid in $PROM $NODE; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  CLUSTER_DIR="$WORK/cluster" deploy/local/cluster.sh stop >/dev/null 2>&1 || true
  rm -rf "$WORK" || true
}
trap cleanup EXIT
fail() {
  echo "prometheus check failed: $*" >&2
  [ -f "$WORK/prometheus.log" ] && tail -20 "$WORK/prometheus.log" >&2
  # Nodes run from the image keep their logs in their containers until asked.
  CLUSTER_DIR="$WORK/cluster" deploy/local/cluster.sh logs >/dev/null 2>&1 || true
  for log in "$WORK"/node.log "$WORK"/cluster/logs/*.log; do
    [ -f "$log" ] && { echo "--- $log" >&2; grep -v rdkafka "$log" | tail -10 >&2; }
  done
  exit 1
}

echo "== an embedded node and the local cluster"
"$B" serve --data-dir "$WORK/node" --listen 127.0.0.1:8090 >"$WORK/node.log" 2>&1 &
NODE=$!
# From the binary (CI runs the cluster test's nodes from the image: both ways are run).
CAUSEWAY_IMAGE="" CLUSTER_DIR="$WORK/cluster" CAUSEWAY_BIN="$B" KAFKA_PARTITIONS=2 BROKER_STORAGE=memory://nisshi/ RUST_LOG=warn \
  deploy/local/cluster.sh start >"$WORK/cluster.log" 2>&1 || { cat "$WORK/cluster.log" >&2; fail "the cluster did not start"; }
tail -1 "$WORK/cluster.log"
for _ in $(seq 200); do
  kill -0 "$NODE" 2>/dev/null || fail "the embedded node exited"
  curl -sf http://127.0.0.1:8090/readyz >/dev/null && break
  sleep 0.1
done
curl -sf http://127.0.0.1:8090/readyz >/dev/null || fail "the embedded node is not ready"

ORDER='{"customer_id":"prometheus","items":[{"sku":"SKU-P","quantity":1,"unit_price_minor":1500}],"currency":"EUR","shipping_address":{"line1":"1 Main St","city":"Berlin","postal_code":"10115","country":"DE"}}'
# An order through the embedded node and one through the cluster's query node, each to its end.
orders() { # round
  for H in http://127.0.0.1:8090 http://127.0.0.1:8086; do
    curl -sf -X POST "$H/api/products/SKU-P/stock" -H 'content-type: application/json' -H "Idempotency-Key: p-stock-$1" \
      -d '{"quantity": 10}' >/dev/null || fail "adding stock on $H"
    for _ in $(seq 300); do curl -sf "$H/api/products/SKU-P/stock" >/dev/null && break; sleep 0.1; done
    id=$(curl -sf -X POST "$H/api/orders" -H 'content-type: application/json' -H "Idempotency-Key: p-order-$1" -d "$ORDER" |
      jq -r .order_id) || fail "placing an order on $H"
    status=""
    for _ in $(seq 600); do
      status=$(curl -sf "$H/api/sagas/$id" | jq -r .status 2>/dev/null || true)
      [ "$status" = completed ] && break
      sleep 0.1
    done
    [ "$status" = completed ] || fail "the order's saga on $H is '$status', not completed"
  done
}
orders 1

echo "== promtool: every node's /metrics"
for port in 8090 8081 8082 8083 8084 8085 8086; do
  curl -sf "http://127.0.0.1:$port/metrics" >"$WORK/metrics-$port.txt" || fail "no /metrics on $port"
  promtool check metrics <"$WORK/metrics-$port.txt" || fail "promtool check metrics on $port"
done

echo "== Prometheus on loopback, with the local part of the production scrape config"
python3 - "$MON/prometheus.yml" "$WORK/prometheus.yml" "$PWD/$MON" <<'PY'
import os, sys, yaml
src, dst, mon = sys.argv[1:4]
config = yaml.safe_load(open(src))
# The jobs that need no Kubernetes service discovery, as written, each target labelled with the
# pod and role names the Kubernetes relabelling gives (the dashboard groups by them); then the
# embedded node.
roles = ["order", "inventory", "payment", "shipping", "saga", "query"]
jobs = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" not in j]
assert jobs, "the scrape config has no local job"
for job in jobs:
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    job["static_configs"] = [
        {"targets": [t], "labels": {"pod": f"{roles[i % 6]}-{i // 6}", "role": roles[i % 6]}}
        for i, t in enumerate(targets)
    ]
jobs.append({"job_name": "causeway-embedded", "static_configs": [
    {"targets": ["127.0.0.1:8090"], "labels": {"pod": "embedded", "role": "all"}}]})
config["scrape_configs"] = jobs
config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
# The rule files the config names, next to it.
config["rule_files"] = [os.path.join(mon, f) for f in config.get("rule_files", [])]
assert config["rule_files"], "the scrape config loads no alert rules"
yaml.safe_dump(config, open(dst, "w"))
PY
promtool check config "$WORK/prometheus.yml" || fail "promtool check config"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address=127.0.0.1:9099 >"$WORK/prometheus.log" 2>&1 &
PROM=$!
P=http://127.0.0.1:9099
for _ in $(seq 300); do curl -sf "$P/-/ready" >/dev/null && break; sleep 0.1; done
curl -sf "$P/-/ready" >/dev/null || fail "Prometheus is not ready"

query() { curl -sf "$P/api/v1/query" --data-urlencode "query=$1" || echo '{"data":{"result":[]}}'; }
# Every node scraped: seven targets up.
up=""
for _ in $(seq 300); do
  up=$(query 'sum(up{job=~"causeway.*"} == 1)' | jq -r '.data.result[0].value[1] // "0"' || echo 0)
  [ "$up" = 7 ] && break
  sleep 0.2
done
[ "$up" = 7 ] || { query 'up' >&2; fail "$up of 7 nodes are up"; }
echo "7 nodes up"
# Traffic while Prometheus watches, so that the rates and quantiles have something to show.
orders 2

# Every expression of every dashboard panel returns data: a value that is a number (not NaN), and
# one series per pod where the panel groups by pod (rates need two samples: wait for them).
python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
for p in d["panels"]:
    for t in p.get("targets", []):
        print(p["title"] + "\t" + t["expr"])
' "$MON/grafana-dashboard.json" >"$WORK/panels.tsv"
while IFS=$'\t' read -r title expr; do
  want=1
  case "$expr" in *"by (pod)"*) want=2 ;; esac
  n=0
  for _ in $(seq 150); do
    n=$(query "$expr" | jq '[.data.result[] | select(.value[1] != "NaN")] | length' 2>/dev/null || echo 0)
    [ "$n" -ge "$want" ] && break
    sleep 0.2
  done
  [ "$n" -ge "$want" ] || fail "the panel '$title' has $n series with a value (want $want): $expr"
  echo "panel '$title': $n series"
done <"$WORK/panels.tsv"

# The alert rules are loaded and evaluate without errors.
rules=$(curl -sf "$P/api/v1/rules" | jq '[.data.groups[].rules[]] | length' || echo 0)
[ "$rules" = 8 ] || fail "$rules alert rules loaded, not 8"
for _ in $(seq 50); do
  bad=$(curl -sf "$P/api/v1/rules" | jq '[.data.groups[].rules[] | select(.health != "ok")] | length' || echo 1)
  [ "$bad" = 0 ] && break
  sleep 0.2
done
[ "$bad" = 0 ] || { curl -sf "$P/api/v1/rules" | jq '.data.groups[].rules[] | {name, health, lastError}' >&2; fail "alert rules in error"; }
echo "prometheus check passed: 7 nodes scraped, every panel has data, 8 alert rules healthy"
