#!/usr/bin/env python3
"""Connection scale: N idle keep-alive client connections held by one gateway.

Starts a fast simulated backend and `shardgate serve --shards 1`, records the
gateway's RSS, opens N client connections that each complete one request
(`GET /v1/models`) and then stay open and idle, records the RSS again, then
measures new requests with `shardgate-load` (open loop) while the N connections
are held, and once more after closing them. Targets 127.0.0.1 only; everything it
starts is killed on exit.

    ulimit -n 65536; python3 bench/connections.py [--conns 10000] [--bin target/release]
"""

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

CONFIG = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: shardgate
  listeners: [{{name: http, protocol: HTTP, port: {gw}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: all, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: sim, port: 8000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: sim, namespace: default, labels: {{kubernetes.io/service-name: sim}}}}
addressType: IPv4
ports: [{{port: {sim}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)  # polling interval of a deadline-bounded poll
    raise RuntimeError(f"port {port} never opened")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def load(bin_dir, port, rate, seconds):
    out = tempfile.mktemp(suffix=".json")
    subprocess.run(
        [f"{bin_dir}/shardgate-load", "--url", f"http://127.0.0.1:{port}/v1/completions", "--rate", str(rate),
         "--duration", f"{seconds}s", "--connections", "16", "--json", out, "-q"],
        check=True, stdout=subprocess.DEVNULL,
    )
    with open(out) as f:
        r = json.load(f)
    os.unlink(out)
    lat = r["latency"]
    return {"rps": round(r["rps"]), "ok": r["ok"], "failed": r["failed"], "p50_us": lat["p50_us"], "p99_us": lat["p99_us"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--gateway-args", default="", help="more flags for shardgate serve, e.g. '--client-hot-conns 0'")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.conns * 2 + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    procs = []
    socks = []
    try:
        sim_port, gw_port = free_port(), free_port()
        procs.append(subprocess.Popen([f"{a.bin}/shardgate-sim", "--port", str(sim_port), "--fast"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(sim_port)
        cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        cfg.write(CONFIG.format(gw=gw_port, sim=sim_port))
        cfg.close()
        gw = subprocess.Popen([f"{a.bin}/shardgate", "serve", "-c", cfg.name, "--shards", "1", "--bind", "127.0.0.1",
                               "--admin-addr", "off", "--no-scrape", *a.gateway_args.split()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gw)
        wait_port(gw_port)
        baseline = load(a.bin, gw_port, a.rate, a.seconds)
        rss_before = rss_kib(gw.pid)
        req = b"GET /v1/models HTTP/1.1\r\nhost: t\r\n\r\n"
        t0 = time.monotonic()
        for i in range(a.conns):
            s = socket.create_connection(("127.0.0.1", gw_port))
            s.sendall(req)
            got = b""
            while b"\r\n\r\n" not in got:
                got += s.recv(4096)
            socks.append(s)
        opened_s = time.monotonic() - t0
        rss_held = rss_kib(gw.pid)
        held = load(a.bin, gw_port, a.rate, a.seconds)
        # Past every hot wait: what the quiet connections hold (up to --client-hot-conns
        # of them kept hot, the rest idle).
        rss_after = rss_kib(gw.pid)
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += 0 if s.recv(1) == b"" else 1
            except BlockingIOError:
                alive += 1
        for s in socks:
            s.close()
        socks.clear()
        result = {
            "connections": a.conns,
            "open_seconds": round(opened_s, 2),
            "still_open_after_load": alive,
            "rss_kib_before": rss_before,
            "rss_kib_with_connections": rss_held,
            "rss_mib_with_connections": round(rss_held / 1024, 1),
            "per_connection_bytes": round((rss_held - rss_before) * 1024 / a.conns),
            "rss_mib_after_load": round(rss_after / 1024, 1),
            "gateway_args": a.gateway_args,
            "load_without": baseline,
            "load_with_connections_held": held,
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        for s in socks:
            s.close()
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
