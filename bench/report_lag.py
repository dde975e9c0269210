#!/usr/bin/env python3
"""bench/report_lag.py: how long a streaming request takes to show as in flight.

Measures, for one or more `shardgate` binaries, the time from the moment a
streaming completion's response head reaches the client until `/debug/endpoints`
reports `in_flight == 1` for its endpoint, and from the end of the stream until it
reports 0 again. Before shard reports (issue #11) the count came from the metrics
each shard published every 500 ms; since, from the shard's own report slot.

    bench/report_lag.py --sim target/release/shardgate-sim \
        BINARY [BINARY ...] [--runs 20]

Prints one line per binary: median / max of both lags over `--runs` requests
(each a 100-token stream at 20 ms a token, so a request lasts about 2 s).
Everything listens on 127.0.0.1; every child is killed on exit. Polls every 2 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.002)
    raise RuntimeError(f"timed out waiting for {what}")


def in_flight(admin: int) -> int:
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    c.request("GET", "/debug/endpoints")
    j = json.loads(c.getresponse().read())
    c.close()
    return j["endpoints"][0].get("in_flight") or 0


def measure(binary: str, sim_port: int, runs: int) -> tuple[list[float], list[float]]:
    d = Path(tempfile.mkdtemp(prefix="shardgate-lag-"))
    port, admin = free_port(), free_port()
    cfg = d / "config.yaml"
    cfg.write_text(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\n"
        "spec:\n  gatewayClassName: shardgate\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n"
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: default}\n"
        "spec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: sim, port: 8000}]\n"
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: sim-1\n"
        "  namespace: default\n  labels: {kubernetes.io/service-name: sim}\naddressType: IPv4\n"
        f"ports: [{{port: {sim_port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
    )
    ready = d / "ready.json"
    gw = subprocess.Popen(
        [binary, "serve", "-c", str(cfg), "--shards", "1", "--bind", "127.0.0.1",
         "--listen-port", str(port), "--admin-addr", f"127.0.0.1:{admin}", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    up, down = [], []
    try:
        wait_for(ready.exists, 30, "the gateway")
        body = json.dumps({"model": "m", "stream": True, "max_tokens": 100,
                           "messages": [{"role": "user", "content": "hello"}]})
        for _ in range(runs):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            r = c.getresponse()
            t0 = time.monotonic()
            wait_for(lambda: in_flight(admin) == 1, 5, "in_flight 1")
            up.append(time.monotonic() - t0)
            r.read()
            t1 = time.monotonic()
            wait_for(lambda: in_flight(admin) == 0, 5, "in_flight 0")
            down.append(time.monotonic() - t1)
            c.close()
    finally:
        gw.kill()
        gw.wait()
        shutil.rmtree(d, ignore_errors=True)
    return up, down


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--sim", required=True, help="shardgate-sim binary")
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    sim_port = free_port()
    sim = subprocess.Popen([a.sim, "--host", "127.0.0.1", "--port", str(sim_port), "--model", "m",
                            "--decode-step-us", "20000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def sim_up():
            try:
                socket.create_connection(("127.0.0.1", sim_port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(sim_up, 30, "the sim")
        for b in a.binaries:
            up, down = measure(b, sim_port, a.runs)
            ms = lambda xs: f"median {statistics.median(xs) * 1000:.1f} ms, max {max(xs) * 1000:.1f} ms"
            print(f"{b}: shows in flight: {ms(up)}; clears: {ms(down)} ({a.runs} requests)")
    finally:
        sim.kill()
        sim.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
