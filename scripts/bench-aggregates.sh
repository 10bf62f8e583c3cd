#!/usr/bin/env bash
# The aggregate command path side by side with the cqrs-es + postgres-es peer
# (../shared/peers/cqrs-es-postgres): alternating single runs of the peer and of
# `causeway bench aggregates` on the same workload (1,000 carts x 100 AddItem commands, JSON
# events, fsync), then the medians of each and their ratios.
#
#   scripts/bench-aggregates.sh [runs]      (default 3; the peer installs and starts PostgreSQL)
#
# Raw figures go to $OUT (default /tmp/bench-aggregates), one file per run and side.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
PEER="${PEER_DIR:-$(cd .. && pwd)/shared/peers/cqrs-es-postgres}"
OUT="${OUT:-/tmp/bench-aggregates}"
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/causeway-target}"
mkdir -p "$OUT"
rm -f "$OUT"/*.txt
[ -x "$PEER/run.sh" ] || { echo "no peer at $PEER (set PEER_DIR)" >&2; exit 1; }
CARGO_TARGET_DIR="$TARGET" cargo build --release --quiet -p causeway
for i in $(seq 1 "$RUNS"); do
  echo "# run $i of $RUNS: peer" >&2
  "$PEER/run.sh" --runs 1 > "$OUT/peer-$i.txt" 2> "$OUT/peer-$i.err"
  grep '^# run' "$OUT/peer-$i.err" >&2 || true
  echo "# run $i of $RUNS: causeway" >&2
  "$TARGET/release/causeway" bench aggregates --runs 1 > "$OUT/causeway-$i.txt" 2> "$OUT/causeway-$i.err"
  grep '^# run' "$OUT/causeway-$i.err" >&2 || true
done
python3 - "$OUT" "$RUNS" <<'PY'
import statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def figures(side):
    got = {}
    for i in range(1, runs + 1):
        for line in open(f"{out}/{side}-{i}.txt"):
            name, value = line.split()
            if name.endswith("_median"):
                got.setdefault(name[: -len("_median")], []).append(float(value))
    return got
peer, ours = figures("peer"), figures("causeway")
def cell(v):
    return f"{statistics.median(v):,.0f} ({min(v):,.0f}–{max(v):,.0f})"
rows = [
    ("(a) one command at a time, load by replay", "seq_commands_per_s", "seq_commands_per_s"),
    ("(a) the same, cached state (vs the peer's replay)", "seq_commands_per_s", "cached_seq_commands_per_s"),
    ("(b) 10 tasks, load by replay", "conc10_commands_per_s", "conc10_commands_per_s"),
    ("(b) the same, cached state (vs the peer's replay)", "conc10_commands_per_s", "cached_conc10_commands_per_s"),
    ("(b) the same, no load: the appends' ceiling (vs the peer's replay)", "conc10_commands_per_s", "ceiling_conc10_commands_per_s"),
    ("(c) loads by replay of 100 events", "replay_loads_per_s", "replay_loads_per_s"),
]
print(f"| workload ({runs} alternating runs, median (min–max)) | cqrs-es + postgres-es | Causeway | ratio |")
print("|---|---:|---:|---:|")
for label, p, o in rows:
    if p in peer and o in ours:
        ratio = statistics.median(ours[o]) / statistics.median(peer[p])
        print(f"| {label} | {cell(peer[p])} | {cell(ours[o])} | {ratio:.1f}x |")
for name in ["seq_sync_us", "conc_commands_per_sync", "cached_conc_commands_per_sync",
             "stream_read_one_at_a_time_events_per_s", "stream_read_one_append_events_per_s"]:
    if name in ours:
        print(f"| causeway {name} | | {cell(ours[name])} | |")
PY
