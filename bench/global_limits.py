#!/usr/bin/env python3
"""bench/global_limits.py: how exactly a fleet of gateways holds one rate limit through Redis.

R gateway processes (default 2, one shard each) share a real `redis-server`
(`--rate-limit-redis`); one SecurityPolicy limits model `m` per client, and every
request comes from 127.0.0.1, so all of them count against one key. Closed-loop
clients (several keep-alive connections per gateway) send chat completions as fast
as they can for a few seconds, spread evenly over the gateways. For each limit the
run is made twice: with Redis (fleet-wide) and without (each replica limits alone).

Reported per run: requests admitted (200) across the fleet, the ideal (what one GCRA
cell admits over the run: the burst, the limit, plus one per emission interval of the
run's length), the error against it, the bound `ratelimit_global` states (the ideal
+ 1.5·R·k, k the lease size), and Redis round trips per admitted request.

Everything listens on 127.0.0.1 and every process is killed at exit.
Output: bench/results/global-limits.md (unless --quick).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import compare_module

C = compare_module.compare  # process helpers (Procs, free ports, build)

ROOT = C.ROOT
PERIOD = {"second": 1, "minute": 60, "hour": 3600}


def log(msg: str) -> None:
    print(f"[global-limits {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)






def gateway_yaml(sim_port: int, limit: int, unit: str) -> str:
    return (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n"
        "  gatewayClassName: shardgate\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\n"
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n"
        "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: svc, port: 8000}]}]\n---\n"
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-0\n"
        "  labels: {kubernetes.io/service-name: svc}\naddressType: IPv4\n"
        f"ports: [{{port: {sim_port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n---\n"
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata: {name: fleet}\n"
        "spec:\n  targetRef: {kind: Gateway, name: gw}\n"
        f"  rateLimit:\n    perModel:\n      m: {{requests: {limit}, unit: {unit}}}\n")


def lease_size(limit: int, replicas: int, batch: int = 100) -> int:
    return max(1, min(batch, limit // (4 * replicas)))


def hammer(port: int, stop_at: float, counts: dict, lock: threading.Lock) -> None:
    body = json.dumps({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    ok = limited = other = 0
    while time.monotonic() < stop_at:
        try:
            c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            r = c.getresponse()
            r.read()
        except OSError:
            other += 1
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            continue
        if r.status == 200:
            ok += 1
        elif r.status == 429:
            limited += 1
        else:
            other += 1
    c.close()
    with lock:
        counts["ok"] += ok
        counts["limited"] += limited
        counts["other"] += other


def run(bins: dict, work: Path, redis_port: int | None, limit: int, unit: str, replicas: int,
        secs: float, conns: int) -> dict:
    tag = f"{limit}-{unit}-{'redis' if redis_port else 'local'}"
    d = work / tag
    d.mkdir()
    sim_port = C.free_port()
    procs = [C.PROCS.start([bins["shardgate-sim"], "--host", "127.0.0.1", "--port", str(sim_port),
                            "--model", "m"], d / "sim.log")]
    C.wait_for("the sim", time.monotonic() + 20,
             lambda: urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/health", timeout=1).status == 200)
    cfg = d / "gw.yaml"
    cfg.write_text(gateway_yaml(sim_port, limit, unit))
    gws = []
    for i in range(replicas):
        port = C.free_port()
        ready = d / f"ready-{i}.json"
        cmd = [bins["shardgate"], "serve", "-c", str(cfg), "--shards", "1", "--bind", "127.0.0.1",
               "--listen-port", str(port), "--admin-addr", "127.0.0.1:0", "--ready-file", str(ready)]
        if redis_port:
            cmd += ["--rate-limit-redis", f"redis://127.0.0.1:{redis_port}"]
        procs.append(C.PROCS.start(cmd, d / f"gw-{i}.log", env=dict(C.os.environ, RUST_LOG="warn")))
        info = C.wait_for(f"gateway {i}", time.monotonic() + 20,
                        lambda ready=ready: ready.exists() and json.loads(ready.read_text()))
        gws.append((port, info["admin"]))
    if redis_port:
        for _, admin in gws:
            C.wait_for("the replicas' heartbeats", time.monotonic() + 20,
                     lambda admin=admin: (C.metric(admin, "gateway_rate_limit_redis_replicas ") or 0) == replicas)
    counts = {"ok": 0, "limited": 0, "other": 0}
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + secs
    threads = [threading.Thread(target=hammer, args=(port, stop_at, counts, lock))
               for port, _ in gws for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    trips = sum((C.metric(a, "gateway_rate_limit_redis_round_trips_total ") or 0) for _, a in gws)
    waits = sum((C.metric(a, "gateway_rate_limit_redis_waits_total ") or 0) for _, a in gws)
    for p in procs:
        C.PROCS.stop(p)
    period = PERIOD[unit]
    ideal = limit + int(elapsed * limit / period)
    k = lease_size(limit, replicas)
    r = dict(limit=f"{limit}/{unit}", mode="Redis" if redis_port else "per replica", replicas=replicas,
             secs=elapsed, sent=counts["ok"] + counts["limited"] + counts["other"], ok=counts["ok"],
             other=counts["other"], ideal=ideal, k=k, bound=ideal + (3 * replicas * k + 1) // 2,
             trips=trips, waits=waits)
    r["error"] = (r["ok"] - ideal) / ideal
    log(f"{r['limit']} {r['mode']}: {r['ok']} admitted of {r['sent']} in {elapsed:.1f} s "
        f"(ideal {ideal}, error {r['error'] * 100:+.1f} %, bound {r['bound']}), "
        f"{trips:.0f} Redis round trips, {waits:.0f} waits, {r['other']} other")
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run, results not written")
    ap.add_argument("--replicas", type=int, default=2, help="gateway processes (default 2)")
    ap.add_argument("--seconds", type=float, default=6, help="load per run (default 6)")
    ap.add_argument("--conns", type=int, default=4, help="client connections per gateway (default 4)")
    a = ap.parse_args()
    redis = shutil.which("redis-server")
    if not redis:
        raise SystemExit("redis-server is missing (Debian: apt-get install redis-server)")
    secs = 2 if a.quick else a.seconds
    bins = C.build("release")
    work = Path(tempfile.mkdtemp(prefix="shardgate-global-limits-"))
    C.WORK["dir"] = work
    redis_port = C.free_port()
    C.PROCS.start([redis, "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                   "--appendonly", "no", "--dir", str(work)], work / "redis.log")
    C.wait_for("redis-server", time.monotonic() + 20,
             lambda: C.socket.create_connection(("127.0.0.1", redis_port), timeout=1).close() or True)
    limits = [(10, "minute"), (600, "minute"), (100, "second")]
    if a.quick:
        limits = limits[:2]
    rows = []
    for limit, unit in limits:
        for port in (redis_port, None):
            rows.append(run(bins, work, port, limit, unit, a.replicas, secs, a.conns))
    lines = ["# Global rate limits through Redis: accuracy across a fleet", "",
             f"`bench/global_limits.py`, {time.strftime('%Y-%m-%d')}, {C.cpu_model()}: {a.replicas} gateway "
             f"processes (one shard each) and one `redis-server` on 127.0.0.1; {a.conns} closed-loop "
             f"keep-alive clients per gateway for {secs:.0f} s, every request from one client (one key). "
             "*Ideal*: what one GCRA cell admits over the run (the limit as a burst, plus one per emission "
             "interval). *Bound*: the ideal + 1.5·R·k, the over-admission `ratelimit_global` states "
             "(k: the lease size). Without Redis each replica limits alone.", "",
             "| limit | limits kept | requests sent | admitted | ideal | error | bound | k | Redis round trips | requests that waited |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        redis_cols = (f"{r['trips']:.0f} | {r['waits']:.0f}" if r["mode"] == "Redis" else "– | –")
        lines.append(f"| {r['limit']} | {r['mode']} | {r['sent']} | {r['ok']} | {r['ideal']} | "
                     f"{r['error'] * 100:+.1f} % | {r['bound'] if r['mode'] == 'Redis' else '–'} | "
                     f"{r['k'] if r['mode'] == 'Redis' else '–'} | {redis_cols} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.quick:
        (ROOT / "bench" / "results" / "global-limits.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
