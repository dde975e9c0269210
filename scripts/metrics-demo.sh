#!/usr/bin/env bash
# Produce docs/metrics.png from a real run: `shardgate demo` (simulated vLLM
# backends), a real Prometheus scraping its admin port every second, ~60 s of load
# from scripts/demo-load.py, then scripts/plot-metrics.py on Prometheus' data.
# Needs: prometheus (apt-get install prometheus), python3, .venv with matplotlib.
# Not part of scripts/test.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/metrics.png}
PHASES=${PHASES:-10:2,15:8,15:32,10:8,10:2}

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check matplotlib
BIN=${SHARDGATE_BIN:-}  # an already built shardgate, to skip the build
if [ -z "$BIN" ]; then
  cargo build --release --locked -p shardgate --bin shardgate
  BIN=target/release/shardgate
fi

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$BIN" demo --bind 127.0.0.1 --listen-port 0 --admin-addr 127.0.0.1:0 \
  --ready-file "$work/ready.json" >"$work/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do [ -s "$work/ready.json" ] && break; sleep 0.1; done
listen=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listen"][0])' "$work/ready.json")
admin=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$work/ready.json")
prom_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
- job_name: shardgate
  static_configs:
  - targets: ['$admin']
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$prom_port/-/ready" >/dev/null && break; sleep 0.1; done

echo "gateway http://$listen, admin http://$admin, prometheus http://127.0.0.1:$prom_port"
start=$(date +%s)
sleep 3  # a few idle scrapes before the load starts
python3 scripts/demo-load.py "http://$listen" --phases "$PHASES"
sleep 3  # let Prometheus scrape the end of the run
end=$(date +%s)
.venv/bin/python scripts/plot-metrics.py prometheus "http://127.0.0.1:$prom_port" \
  --start "$start" --end "$end" --step 1 --window 5 -o "$OUT" \
  --title "shardgate demo: $(date -u +%Y-%m-%d), phases (s:clients) $PHASES"
