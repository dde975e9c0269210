#!/usr/bin/env python3
"""Buffered request-body memory under many large uploads (issue #12 item 2).

Starts a simulated backend and `shardgate serve` (default flags unless given),
then runs two scenarios against 127.0.0.1 and prints the gateway's RSS:

* hold: N connections (default 40) each send the head of a 32 MiB body and
  31 MiB of it, then hold. Before the budget this took the gateway to 1.28 GB.
  With it, requests beyond the shard's share get 503 `body_budget_exhausted` at
  once (their connections close); RSS is read while the others hold.
* flood: M connections (default 1,000) each send a whole large body (default
  4 MiB) to `/sim/echo` as fast as the sockets take it; each gets 200 or 503.
  Peak RSS (VmHWM) must stay under the budget plus a stated overhead.

Everything it starts is killed on exit; it only talks to 127.0.0.1.

    python3 bench/body_budget.py [--bin target/release] [--hold 40] [--flood 1000]
        [--flood-body 4194304] [--gateway-flag=--max-buffered-body-bytes=...]
"""

import argparse
import json
import resource
import selectors
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

MIB = 1024 * 1024


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)  # polling interval of a deadline-bounded poll
    raise RuntimeError(f"port {port} never opened")


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) // 1024  # MiB
    return out


def head(length):
    return (f"POST /sim/echo HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n\r\n").encode()


def run_conns(port, n, length, send, deadline):
    """Open n connections, each sending the head of a `length`-byte body and the
    first `send` bytes of it (non-blocking, all at once). Returns the sockets and
    a dict of the status codes answered so far by the time all sends finished or
    were refused, or `deadline` passed."""
    sel = selectors.DefaultSelector()
    chunk = b"a" * (256 * 1024)
    conns = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        st = {"sock": s, "head": head(length), "left": send, "got": b"", "status": None, "done": False}
        conns.append(st)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
    pending = n
    end = time.monotonic() + deadline
    while pending and time.monotonic() < end:
        for key, ev in sel.select(timeout=0.5):
            st = key.data
            s = st["sock"]
            if ev & selectors.EVENT_READ:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                st["got"] += data
                if st["status"] is None and b"\r\n" in st["got"]:
                    st["status"] = int(st["got"].split(b" ", 2)[1])
                if not data or st["status"] is not None:
                    if not st["done"]:
                        st["done"] = True
                        pending -= 1
                    sel.unregister(s)
                    continue
            if ev & selectors.EVENT_WRITE and not st["done"]:
                try:
                    if st["head"]:
                        k = s.send(st["head"])
                        st["head"] = st["head"][k:]
                    elif st["left"] > 0:
                        k = s.send(chunk[: min(len(chunk), st["left"])])
                        st["left"] -= k
                    if not st["head"] and st["left"] == 0 and send < length:
                        # Holding: sent what it meant to, waits for nothing.
                        st["done"] = True
                        pending -= 1
                        sel.modify(s, selectors.EVENT_READ, st)
                    elif not st["head"] and st["left"] == 0:
                        sel.modify(s, selectors.EVENT_READ, st)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    st["done"] = True
                    pending -= 1
                    sel.unregister(s)
    codes = {}
    for st in conns:
        codes[str(st["status"])] = codes.get(str(st["status"]), 0) + 1
    sel.close()
    return conns, codes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--hold", type=int, default=40)
    ap.add_argument("--flood", type=int, default=1000)
    ap.add_argument("--flood-body", type=int, default=4 * MIB)
    ap.add_argument("--gateway-flag", action="append", default=[])
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.flood * 2 + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    procs = []
    try:
        sim_port, gw_port = free_port(), free_port()
        procs.append(subprocess.Popen([f"{a.bin}/shardgate-sim", "--port", str(sim_port), "--fast"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(sim_port)
        cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        cfg.write(CONFIG.format(gw=gw_port, sim=sim_port))
        cfg.close()
        gw = subprocess.Popen([f"{a.bin}/shardgate", "serve", "-c", cfg.name, "--shards", str(a.shards),
                               "--bind", "127.0.0.1", "--admin-addr", "off", "--no-scrape", *a.gateway_flag],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gw)
        wait_port(gw_port)
        idle = status(gw.pid)

        # hold: 40 × 31 MiB of a 32 MiB body.
        t0 = time.monotonic()
        conns, codes = run_conns(gw_port, a.hold, 32 * MIB, 31 * MIB, deadline=60)
        time.sleep(0.5)  # let the last reads land before reading RSS
        held = status(gw.pid)
        hold_s = time.monotonic() - t0
        for st in conns:
            st["sock"].close()
        time.sleep(0.5)

        # flood: 1,000 whole bodies at once.
        t0 = time.monotonic()
        conns, fcodes = run_conns(gw_port, a.flood, a.flood_body, a.flood_body, deadline=120)
        flood_s = time.monotonic() - t0
        after = status(gw.pid)
        for st in conns:
            st["sock"].close()
        result = {
            "shards": a.shards,
            "gateway_flags": a.gateway_flag,
            "idle_rss_mib": idle["VmRSS"],
            "hold": {"connections": a.hold, "body_mib": 32, "sent_mib": 31, "answers": codes,
                     "rss_mib_while_held": held["VmRSS"], "peak_rss_mib": held["VmHWM"],
                     "seconds": round(hold_s, 1)},
            "flood": {"connections": a.flood, "body_bytes": a.flood_body, "answers": fcodes,
                      "peak_rss_mib": after["VmHWM"], "rss_mib_after": after["VmRSS"],
                      "seconds": round(flood_s, 1)},
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
