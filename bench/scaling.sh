#!/usr/bin/env bash
# Multi-core scaling of shardgate: throughput with --shards 1, 2, 4, 8 (or $SHARDS),
# each shard count pinned to its own cores, the load generator and the backends on
# other cores. Prints a markdown table and writes it to $OUT/scaling.md.
#
# Layout on an N-core machine (N >= 16 for the full run):
#   gateway shards : cores 0 .. k-1           (k = shard count; shards pin themselves)
#   backends       : $SIMS shardgate-sim --fast, one core each, from the top
#   load generator : $LOAD_THREADS threads on the cores between
# Usage: bench/scaling.sh [--quick]      (BIN=dir with shardgate, shardgate-sim, shardgate-load)
set -euo pipefail
BIN=${BIN:-target/release}
OUT=${OUT:-bench/results}
CORES=$(nproc)
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
if [ "$CORES" -ge 16 ]; then
  SHARDS=${SHARDS:-"1 2 4 8"}; SIMS=${SIMS:-4}; LOAD_THREADS=${LOAD_THREADS:-4}
else
  SHARDS=${SHARDS:-"1"}; SIMS=${SIMS:-1}; LOAD_THREADS=${LOAD_THREADS:-1}
fi
DURATION=${DURATION:-10s}; [ $QUICK = 1 ] && DURATION=2s
CONNS=${CONNS:-256}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# Backends: one fast sim per core from the top.
SLICES=""
for i in $(seq 0 $((SIMS - 1))); do
  core=$((CORES - 1 - i)); port=$(free_port)
  taskset -c "$core" "$BIN/shardgate-sim" --port "$port" --fast >/dev/null 2>&1 & PIDS+=($!)
  wait_port "$port"
  SLICES+="
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sim-$i, namespace: default, labels: {kubernetes.io/service-name: sims}}
addressType: IPv4
ports: [{port: $port}]
endpoints: [{addresses: [\"127.0.0.1\"]}]"
done
GW_PORT=$(free_port)
cat > "$WORK/cfg.yaml" <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: shardgate
  listeners: [{name: http, protocol: HTTP, port: $GW_PORT}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: all, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: sims, port: 8000}]
$SLICES
YAML
LOAD_FIRST=$((CORES - SIMS - LOAD_THREADS)); LOAD_LAST=$((CORES - SIMS - 1))
[ "$LOAD_FIRST" -lt 0 ] && LOAD_FIRST=0
{
echo "# shardgate multi-core scaling"
echo
echo "$(date -u +%F) · $(git rev-parse --short HEAD 2>/dev/null || echo unknown) · $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) · $CORES cores"
echo
echo "Backends: $SIMS × \`shardgate-sim --fast\` (one core each). Load: \`shardgate-load\` closed loop, $CONNS connections, $LOAD_THREADS threads on cores $LOAD_FIRST-$LOAD_LAST, $DURATION per point, \`POST /v1/completions\`."
echo
echo "| shards | gateway cores | rps | p50 | p99 | errors | × 1 shard |"
echo "|---|---|---|---|---|---|---|"
} > "$WORK/table.md"
BASE=""
for k in $SHARDS; do
  taskset -c "0-$((k - 1))" "$BIN/shardgate" serve -c "$WORK/cfg.yaml" --shards "$k" --bind 127.0.0.1 --admin-addr off --no-scrape >"$WORK/gw-$k.log" 2>&1 & GW=$!; PIDS+=($GW)
  wait_port "$GW_PORT"
  taskset -c "$LOAD_FIRST-$LOAD_LAST" "$BIN/shardgate-load" --url "http://127.0.0.1:$GW_PORT/v1/completions" --template completion \
    --threads "$LOAD_THREADS" --connections "$CONNS" --duration "$DURATION" --warmup 1s --json "$WORK/load-$k.json" -q >/dev/null
  read -r RPS P50 P99 ERR < <(python3 - "$WORK/load-$k.json" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))
lat=r.get("latency") or {}
print(f"{r.get('rps',0):.0f} {lat.get('p50_us','?')} {lat.get('p99_us','?')} {r.get('failed',0)}")
PY
)
  [ -z "$BASE" ] && BASE=$RPS
  RATIO=$(python3 -c "print(f'{$RPS/$BASE:.2f}' if $BASE else '-')")
  echo "| $k | 0-$((k - 1)) | $RPS | ${P50} µs | ${P99} µs | $ERR | $RATIO |" >> "$WORK/table.md"
  kill "$GW"; wait "$GW" 2>/dev/null || true
done
cat "$WORK/table.md"
cp "$WORK/table.md" "$OUT/scaling.md"
