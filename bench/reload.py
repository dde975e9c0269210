#!/usr/bin/env python3
"""bench/reload.py: live endpoint reloads under load.

One gateway (one shard) in front of three simulated vLLM servers, A, B and C. Open-loop
completions at a fixed rate; meanwhile the config file flips N times (default 50) between
two versions: {A, B} and {B, C}, each flip a rename over the file, as editors and
ConfigMap volumes do it, at a fixed interval. The same run first measures a steady phase
of the same length without flips.

Reported: requests, errors (anything but a 200), p50/p99/max latency in the steady phase
and during the flips; reloads applied (gateway_config_reloads_total{result="applied"});
and requests that reached an endpoint after its removal took effect: each sim counts the
requests it served, and the script compares the counts at each flip (an endpoint removed
at flip k must not serve requests sent after that reload was applied: checked by stopping
the load briefly around each flip, so no request of the old configuration is in flight).

Everything listens on 127.0.0.1 and every process is killed at exit.
Output: bench/results/reload.md (unless --quick).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.machinery
import importlib.util
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
_loader = importlib.machinery.SourceFileLoader("bench_compare", str(HERE / "compare"))
_spec = importlib.util.spec_from_loader("bench_compare", _loader)
C = importlib.util.module_from_spec(_spec)
_loader.exec_module(C)  # process helpers (Procs, free ports, build, wait_for, metric)

ROOT = C.ROOT


def log(msg: str) -> None:
    print(f"[reload {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def config(gw_port: int, ports: list[int]) -> str:
    y = ("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n"
         f"  gatewayClassName: shardgate\n  listeners: [{{name: http, protocol: HTTP, port: {gw_port}}}]\n---\n"
         "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n"
         "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: svc, port: 8000}]}]\n")
    for i, p in enumerate(ports):
        y += (f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{p}\n"
              "  labels: {kubernetes.io/service-name: svc}\naddressType: IPv4\n"
              f"ports: [{{port: {p}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n")
    return y


def served(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/stats", timeout=2) as r:
        return json.loads(r.read())["requests_total"]


class Load:
    """Open-loop completions at `rate`, each on its own connection; pausable."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.rate = port, rate
        self.results: list[tuple[float, int, float]] = []  # (sent at, status, latency)
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.stop = threading.Event()
        self.inflight = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def one(self, i: int) -> None:
        body = json.dumps({"model": "m", "max_tokens": 1, "prompt": f"{i:08} load"})
        t0 = time.monotonic()
        status = 0
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            c.request("POST", "/v1/completions", body, {"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            status = r.status
            c.close()
        except OSError:
            pass
        with self.lock:
            self.results.append((t0, status, time.monotonic() - t0))
            self.inflight -= 1

    def run(self) -> None:
        i = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.running.wait()
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at = max(next_at + 1 / self.rate, time.monotonic() - 1)
            with self.lock:
                self.inflight += 1
            threading.Thread(target=self.one, args=(i,), daemon=True).start()
            i += 1

    def quiesce(self, deadline: float) -> None:
        """Pause and wait for every request in flight to finish."""
        self.running.clear()
        C.wait_for("in-flight requests", deadline, lambda: self.inflight == 0 or None)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run, results not written")
    ap.add_argument("--flips", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.4, help="seconds between flips (default 0.4)")
    ap.add_argument("--rate", type=float, default=200, help="requests per second (default 200)")
    a = ap.parse_args()
    flips = 6 if a.quick else a.flips
    bins = C.build("release")
    work = Path(tempfile.mkdtemp(prefix="shardgate-reload-"))
    C.WORK["dir"] = work
    ports = [C.free_port() for _ in range(3)]
    for p in ports:
        C.PROCS.start([bins["shardgate-sim"], "--host", "127.0.0.1", "--port", str(p), "--model", "m"],
                      work / f"sim-{p}.log")
    for p in ports:
        C.wait_for(f"sim {p}", time.monotonic() + 20,
                   lambda p=p: urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=1).status == 200)
    gw_port = C.free_port()
    versions = [config(gw_port, ports[:2]), config(gw_port, ports[1:])]
    cfg = work / "gw.yaml"
    cfg.write_text(versions[0])
    ready = work / "ready.json"
    C.PROCS.start([bins["shardgate"], "serve", "-c", str(cfg), "--shards", "1", "--bind", "127.0.0.1",
                   "--admin-addr", "127.0.0.1:0", "--ready-file", str(ready)],
                  work / "gw.log", env=dict(C.os.environ, RUST_LOG="warn"))
    admin = C.wait_for("the gateway", time.monotonic() + 20,
                       lambda: ready.exists() and json.loads(ready.read_text()))["admin"]
    load = Load(gw_port, a.rate)
    load.thread.start()
    phase_len = flips * a.interval
    # Steady phase.
    load.running.set()
    steady_from = time.monotonic()
    time.sleep(phase_len)
    steady_to = time.monotonic()
    # Flips: [A, B] -> [B, C] -> [A, B] ...
    stray = 0
    applied0 = C.metric(admin, 'gateway_config_reloads_total{result="applied"}') or 0
    flips_from = time.monotonic()
    for k in range(1, flips + 1):
        new = versions[k % 2]
        gone = ports[0] if k % 2 == 1 else ports[2]
        tmp = work / "gw.yaml.tmp"
        tmp.write_text(new)
        tmp.rename(cfg)
        C.wait_for(f"reload {k}", time.monotonic() + 10,
                   lambda k=k: (C.metric(admin, 'gateway_config_reloads_total{result="applied"}') or 0) >= applied0 + k)
        # Requests sent before the reload may still be on the gone endpoint:
        # let them finish, then nothing more may reach it.
        load.quiesce(time.monotonic() + 10)
        before = served(gone)
        load.running.set()
        time.sleep(max(0.0, a.interval - 0.05))
        load.quiesce(time.monotonic() + 10)
        stray += served(gone) - before
        load.running.set()
    flips_to = time.monotonic()
    load.stop.set()
    load.running.set()
    time.sleep(0.5)
    with load.lock:
        res = list(load.results)
    steady = [r for r in res if steady_from <= r[0] < steady_to]
    during = [r for r in res if flips_from <= r[0] < flips_to]
    applied = (C.metric(admin, 'gateway_config_reloads_total{result="applied"}') or 0) - applied0

    def row(name: str, rs: list) -> str:
        lat = [r[2] for r in rs if r[1] == 200]
        errors = sum(1 for r in rs if r[1] != 200)
        return (f"| {name} | {len(rs)} | {errors} | {pct(lat, 0.5) * 1e3:.2f} ms | {pct(lat, 0.99) * 1e3:.2f} ms | "
                f"{max(lat) * 1e3 if lat else float('nan'):.2f} ms |")

    lines = ["# Live endpoint reloads under load", "",
             f"`bench/reload.py`, {time.strftime('%Y-%m-%d')}, {C.cpu_model()}: one gateway (one shard), three "
             f"simulated servers; open-loop completions at {a.rate:.0f} req/s, one connection each; a steady phase "
             f"of {phase_len:.0f} s, then {flips} flips of the config file between {{A, B}} and {{B, C}}, one every "
             f"{a.interval:.1f} s (a rename over the file). Around each flip the load pauses until the reload is "
             "applied and the requests in flight are done, so a request that reaches the removed endpoint "
             "afterwards is a stray.", "",
             "| phase | requests | errors | p50 | p99 | max |", "|---|---|---|---|---|---|",
             row("steady", steady), row(f"{flips} flips", during), "",
             f"Reloads applied: {applied:.0f} of {flips}. Requests that reached a removed endpoint after its "
             f"reload: {stray}."]
    text = "\n".join(lines) + "\n"
    print(text)
    log(f"applied {applied:.0f}/{flips}, stray {stray}")
    if not a.quick:
        (ROOT / "bench" / "results" / "reload.md").write_text(text)
    return 0 if stray == 0 and applied == flips else 1


if __name__ == "__main__":
    sys.exit(main())
