#!/usr/bin/env bash
# Times `shardgate check` on generated configurations (#12 item 11): one
# Service whose endpoints are spread over EndpointSlices of 100, for each
# endpoint count given, and a 200 KB document nested 100,000 levels deep.
# Prints one Markdown table row per case: wall seconds, max RSS, exit code.
#
#   bench/config-scale.sh [path/to/shardgate] [endpoint counts...]
#   bench/config-scale.sh target/release/shardgate 10000 80000 500000
set -euo pipefail
bin=${1:-target/release/shardgate}
shift || true
counts=${*:-10000 80000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

gen() { # $1 = endpoints
python3 - "$1" <<'PY'
import sys
n = int(sys.argv[1])
out = sys.stdout
out.write("""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: c}
spec: {controllerName: x/y}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: c
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: big, port: 8000}]}]
""")
for s in range((n + 99) // 100):
    out.write(f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: big-{s}\n  labels: {{kubernetes.io/service-name: big}}\naddressType: IPv4\nports: [{{port: 8000}}]\nendpoints:\n")
    for e in range(s * 100, min(n, s * 100 + 100)):
        out.write(f"- addresses: [\"10.{e >> 16 & 255}.{e >> 8 & 255}.{e & 255}\"]\n")
PY
}

run() { # $1 = label, $2 = file
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$dir/rss" timeout 300 "$bin" check -c "$2" >/dev/null 2>"$dir/err" || rc=$?
  t1=$(date +%s.%N)
  printf '| %s | %s | %.2f | %d MB | %d |\n' "$1" "$(du -h "$2" | cut -f1)" \
    "$(echo "$t1 - $t0" | bc)" "$(( $(tail -1 "$dir/rss") / 1024 ))" "$rc"
}

echo '| case | file | seconds | max RSS | exit |'
echo '|---|---|---|---|---|'
for n in $counts; do
  gen "$n" > "$dir/c$n.yaml"
  run "$n endpoints" "$dir/c$n.yaml"
done
python3 -c 'import sys; n=100000; sys.stdout.write("a: " + "["*n + "]"*n + "\n")' > "$dir/deep.yaml"
run "nested 100k deep" "$dir/deep.yaml"
