#!/usr/bin/env python3
"""bench/reload.py: live endpoint and route reloads under load.

One gateway (one shard) in front of four simulated vLLM servers, A, B, C (model m) and D
(model n). Open-loop completions at a fixed rate, one in five for model n; meanwhile the
config file flips N times (default 50) between two versions: {A, B} serving m, and {B, C}
serving m plus a route for n to D. Each flip is a rename over the file, as editors and
ConfigMap volumes do it, at a fixed interval. The same run first measures a steady phase
of the same length without flips. Halfway through the flips an invalid file is written
once (a route whose backendRef has no port): it must change nothing, and be counted in
gateway_config_reloads_total{result="error"}.

Reported: requests, errors, p50/p99/max latency in the steady phase and during the flips.
An error is a non-200 for m; for n, a 404 is expected while the configuration does not
serve it, so an error for n is any other status, or a 404 while n is served, or a 200
while it is not (requests sent while a reload is being applied may see either). Also:
reloads applied (gateway_config_reloads_total{result="applied"}), and requests that
reached an endpoint after its removal took effect: each sim counts the requests it
served, and the script compares the counts at each flip (an endpoint removed at flip k
must not serve requests sent after that reload was applied: checked by stopping the load
briefly around each flip, so no request of the old configuration is in flight).

Everything listens on 127.0.0.1 and every process is killed at exit.
Output: bench/results/reload.md (unless --quick).
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

C = compare_module.compare  # process helpers (Procs, free ports, build, wait_for, metric)

ROOT = C.ROOT


def log(msg: str) -> None:
    print(f"[reload {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slice_doc(svc: str, p: int) -> str:
    return (f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-{p}\n"
            f"  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\n"
            f"ports: [{{port: {p}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n")


def route(name: str, model: str, svc: str) -> str:
    return ("---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
            f"metadata: {{name: {name}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n"
            f"  - matches: [{{headers: [{{name: X-Gateway-Model-Name, value: {model}}}]}}]\n"
            f"    backendRefs: [{{name: {svc}, port: 8000}}]\n")


def config(gw_port: int, ports: list[int], n_port: int | None) -> str:
    y = ("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n"
         f"  gatewayClassName: shardgate\n  listeners: [{{name: http, protocol: HTTP, port: {gw_port}}}]\n")
    y += route("r", "m", "svc")
    for p in ports:
        y += slice_doc("svc", p)
    if n_port is not None:
        y += route("rn", "n", "svc-n") + slice_doc("svc-n", n_port)
    return y


def served(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/stats", timeout=2) as r:
        return json.loads(r.read())["requests_total"]


class Load:
    """Open-loop completions at `rate`, each on its own connection; pausable."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.rate = port, rate
        # (sent at, status, latency, model, whether n was served when sent: True, False, or
        # None while a reload was being applied)
        self.results: list[tuple[float, int, float, str, bool | None]] = []
        self.n_served: bool | None = False
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.stop = threading.Event()
        self.inflight = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def one(self, i: int) -> None:
        model = "n" if i % 5 == 4 else "m"
        n_served = self.n_served
        body = json.dumps({"model": model, "max_tokens": 1, "prompt": f"{i:08} load"})
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
            self.results.append((t0, status, time.monotonic() - t0, model, n_served))
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
    n_port = C.free_port()
    for p, model in [(p, "m") for p in ports] + [(n_port, "n")]:
        C.PROCS.start([bins["shardgate-sim"], "--host", "127.0.0.1", "--port", str(p), "--model", model],
                      work / f"sim-{p}.log")
    for p in ports + [n_port]:
        C.wait_for(f"sim {p}", time.monotonic() + 20,
                   lambda p=p: urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=1).status == 200)
    gw_port = C.free_port()
    versions = [config(gw_port, ports[:2], None), config(gw_port, ports[1:], n_port)]
    invalid = versions[1].replace("backendRefs: [{name: svc-n, port: 8000}]", "backendRefs: [{name: svc-n}]")
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
    errors0 = C.metric(admin, 'gateway_config_reloads_total{result="error"}') or 0
    invalid_counted = None
    tmp = work / "gw.yaml.tmp"
    flips_from = time.monotonic()
    for k in range(1, flips + 1):
        if k == flips // 2 + 1:
            # An invalid file, under load: nothing changes, the error is counted.
            tmp.write_text(invalid)
            tmp.rename(cfg)
            invalid_counted = C.wait_for("the invalid file's error", time.monotonic() + 10,
                                         lambda: (C.metric(admin, 'gateway_config_reloads_total{result="error"}') or 0)
                                         >= errors0 + 1)
            time.sleep(a.interval)
        new = versions[k % 2]
        gone = ports[0] if k % 2 == 1 else ports[2]
        load.n_served = None
        tmp.write_text(new)
        tmp.rename(cfg)
        C.wait_for(f"reload {k}", time.monotonic() + 10,
                   lambda k=k: (C.metric(admin, 'gateway_config_reloads_total{result="applied"}') or 0) >= applied0 + k)
        # Requests sent before the reload may still be on the gone endpoint:
        # let them finish, then nothing more may reach it.
        load.quiesce(time.monotonic() + 10)
        before = served(gone)
        load.n_served = k % 2 == 1
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

    def error(r: tuple) -> bool:
        _, status, _, model, n_served = r
        if model == "m":
            return status != 200
        if n_served is None:
            return status not in (200, 404)
        return status != (200 if n_served else 404)

    def row(name: str, rs: list) -> str:
        lat = [r[2] for r in rs if r[1] == 200]
        errors = sum(1 for r in rs if error(r))
        unserved = sum(1 for r in rs if r[3] == "n" and r[1] == 404)
        return (f"| {name} | {len(rs)} | {errors} | {unserved} | {pct(lat, 0.5) * 1e3:.2f} ms | "
                f"{pct(lat, 0.99) * 1e3:.2f} ms | {max(lat) * 1e3 if lat else float('nan'):.2f} ms |")

    total_errors = sum(1 for r in steady + during if error(r))
    invalid_note = ('counted in `gateway_config_reloads_total{result="error"}`, nothing changed'
                    if invalid_counted else "not reached")

    lines = ["# Live endpoint and route reloads under load", "",
             f"`bench/reload.py`, {time.strftime('%Y-%m-%d')}, {C.cpu_model()}: one gateway (one shard), four "
             f"simulated servers; open-loop completions at {a.rate:.0f} req/s, one connection each, one in five "
             f"for model n; a steady phase of {phase_len:.0f} s, then {flips} flips of the config file between "
             f"{{A, B}} for m and {{B, C}} for m plus a route for n to D, one every {a.interval:.1f} s (a rename "
             "over the file); halfway, one invalid file. Around each flip the load pauses once the reload is "
             "applied until the requests in flight are done, so a request that reaches the removed endpoint "
             "afterwards is a stray. \"n unserved\" counts the expected 404s for n while no route serves it; "
             "an error is anything else that is not a 200.", "",
             "| phase | requests | errors | n unserved (404) | p50 | p99 | max |",
             "|---|---|---|---|---|---|---|",
             row("steady", steady), row(f"{flips} flips", during), "",
             f"Reloads applied: {applied:.0f} of {flips}. Requests that reached a removed endpoint after its "
             f"reload: {stray}. The invalid file: {invalid_note}."]
    text = "\n".join(lines) + "\n"
    print(text)
    log(f"applied {applied:.0f}/{flips}, stray {stray}, errors {total_errors}")
    if not a.quick:
        (ROOT / "bench" / "results" / "reload.md").write_text(text)
    return 0 if stray == 0 and applied == flips and total_errors == 0 and invalid_counted else 1


if __name__ == "__main__":
    sys.exit(main())
