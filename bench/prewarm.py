#!/usr/bin/env python3
"""bench/prewarm.py: clients' TTFT when a new replica joins, with and without modelPrewarming.

The scenario, run twice in one go (modelPrewarming off, then on): two simulated vLLM
servers behind one gateway, a warm replica (no cold start) and a new one whose first
request for the model pays a cold start (`shardgate-sim --cold-start-ms`, default 3 s:
weights loading, CUDA graphs). As soon as the gateway serves (with pre-warming: as soon
as the warm replica's own warm-up, a few milliseconds, is done), an open-loop client
sends streaming chat completions at a fixed rate for a few seconds (each prompt
different, so prefix affinity does not pin them all to one replica). Reported per run:
TTFT (time from sending the request to the first SSE `data:` line) p50, p99 and max,
and how many requests waited longer than 1 s.

Without pre-warming, the requests the picker sends to the new replica during its cold
start wait for the load; with it, the gateway warms the new replica itself and keeps
clients on the warm one meanwhile (`mode: preferred`).

Everything listens on 127.0.0.1 and every process is killed at exit.
Output: bench/results/prewarm.md (unless --quick).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import compare_module

C = compare_module.compare  # process helpers (Procs, free ports, build)

ROOT = C.ROOT


def log(msg: str) -> None:
    print(f"[prewarm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def gateway_yaml(warm_port: int, fresh_port: int, prewarm: bool) -> str:
    head = ""
    if prewarm:
        head = ("apiVersion: ai.gateway.io/v1alpha1\nkind: InferenceConfig\nmetadata: {name: cfg}\n"
                "spec:\n  modelPrewarming:\n    enabled: true\n    models: [\"m\"]\n"
                "    replicasPerModel: 2\n---\n")
    slices = "".join(
        f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}\n"
        f"  labels: {{kubernetes.io/service-name: svc}}\naddressType: IPv4\nports: [{{port: {p}}}]\n"
        f"endpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
        for i, p in enumerate((fresh_port, warm_port)))
    return head + (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n"
        "  gatewayClassName: shardgate\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\n"
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n"
        "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: svc, port: 8000}]}]\n") + slices






def one_request(port: int, out: list, i: int) -> None:
    body = json.dumps({"model": "m", "stream": True, "max_tokens": 8,
                       "messages": [{"role": "user", "content": f"request {i}: hello from the benchmark"}]})
    t0 = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        r = c.getresponse()
        ttft = None
        while True:
            line = r.readline()
            if not line:
                break
            if ttft is None and line.startswith(b"data:"):
                ttft = time.monotonic() - t0
        out[i] = (r.status, ttft)
        c.close()
    except OSError as e:
        out[i] = (0, None)
        log(f"request {i}: {e}")


def run(bins: dict, work: Path, prewarm: bool, cold_ms: int, rate: float, secs: float) -> dict:
    d = work / ("on" if prewarm else "off")
    d.mkdir()
    warm_port, fresh_port, gw_port = C.free_port(), C.free_port(), C.free_port()
    sims = []
    for port, cold in ((warm_port, 0), (fresh_port, cold_ms)):
        sims.append(C.PROCS.start([bins["shardgate-sim"], "--host", "127.0.0.1", "--port", str(port),
                                   "--model", "m", "--cold-start-ms", str(cold)], d / f"sim-{port}.log"))
    for port in (warm_port, fresh_port):
        C.wait_for(f"sim {port}", time.monotonic() + 20,
                 lambda port=port: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200)
    cfg = d / "gw.yaml"
    cfg.write_text(gateway_yaml(warm_port, fresh_port, prewarm))
    ready = d / "ready.json"
    gw = C.PROCS.start([bins["shardgate"], "serve", "-c", str(cfg), "--shards", "1", "--bind", "127.0.0.1",
                        "--listen-port", str(gw_port), "--admin-addr", "127.0.0.1:0", "--ready-file", str(ready)],
                       d / "gw.log", env=dict(C.os.environ, RUST_LOG="warn"))
    info = C.wait_for("the gateway", time.monotonic() + 20, lambda: ready.exists() and json.loads(ready.read_text()))
    admin = info["admin"]
    if prewarm:
        C.wait_for("the warm replica's warm-up", time.monotonic() + 20,
                 lambda: C.metric(admin, f'gateway_endpoint_warm{{endpoint="127.0.0.1:{warm_port}",model="m"}}') == 1.0)
    n = int(rate * secs)
    out: list = [None] * n
    threads = []
    start = time.monotonic()
    for i in range(n):
        at = start + i / rate
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one_request, args=(gw_port, out, i))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout=60)
    C.PROCS.stop(gw)
    for s in sims:
        C.PROCS.stop(s)
    ok = sorted(r[1] for r in out if r and r[0] == 200 and r[1] is not None)
    errors = sum(1 for r in out if not r or r[0] != 200 or r[1] is None)
    q = lambda p: ok[min(len(ok) - 1, int(p * len(ok)))] if ok else float("nan")  # noqa: E731
    return dict(mode="on" if prewarm else "off", n=n, errors=errors, p50=q(0.5), p99=q(0.99),
                max=ok[-1] if ok else float("nan"), slow=sum(1 for x in ok if x > 1.0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run, results not written")
    ap.add_argument("--cold-start-ms", type=int, default=3000, help="the new replica's cold start (default 3000)")
    ap.add_argument("--rate", type=float, default=20, help="requests per second (default 20)")
    ap.add_argument("--seconds", type=float, default=8, help="load duration (default 8)")
    a = ap.parse_args()
    secs = 3 if a.quick else a.seconds
    bins = C.build("release")
    work = Path(tempfile.mkdtemp(prefix="shardgate-prewarm-"))
    C.WORK["dir"] = work
    rows = []
    for prewarm in (False, True):
        r = run(bins, work, prewarm, a.cold_start_ms, a.rate, secs)
        log(f"modelPrewarming {r['mode']}: TTFT p50 {r['p50'] * 1e3:.0f} ms, p99 {r['p99'] * 1e3:.0f} ms, "
            f"max {r['max'] * 1e3:.0f} ms, {r['slow']} of {r['n']} over 1 s, {r['errors']} errors")
        rows.append(r)
    lines = ["# Model pre-warming: clients' TTFT when a new replica joins", "",
             f"`bench/prewarm.py`, {time.strftime('%Y-%m-%d')}, {C.cpu_model()}: a warm replica and a new one "
             f"with a {a.cold_start_ms / 1000:.1f} s cold start (`shardgate-sim --cold-start-ms`) behind one "
             f"gateway; streaming chat completions at {a.rate:.0f} req/s for {secs:.0f} s from the moment the "
             "gateway serves (with pre-warming: once the warm replica's own warm-up is done). TTFT = request "
             "sent → first SSE `data:` line.", "",
             "| modelPrewarming | requests | TTFT p50 | TTFT p99 | TTFT max | over 1 s | errors |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['n']} | {r['p50'] * 1e3:.0f} ms | {r['p99'] * 1e3:.0f} ms | "
                     f"{r['max'] * 1e3:.0f} ms | {r['slow']} | {r['errors']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.quick:
        (ROOT / "bench" / "results" / "prewarm.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
