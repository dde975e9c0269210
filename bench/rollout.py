#!/usr/bin/env python3
"""bench/rollout.py: a canary rollout (ModelRollout) with a healthy, a failing and a slow canary.

Two simulated vLLM servers in one InferencePool behind one gateway: the stable version
(`m-v1`) and the canary (`m-v2`); clients ask for `m` with streaming chat completions,
open loop at a fixed rate. The rollout steps the canary through 10, 25, 50, 100 % with
a short dwell. Three runs in one go:

- healthy: the canary is the same server as the stable one: it should walk every step;
- failing: the canary answers 30 % of its requests with a 500: it should roll back at
  the first step, within a fraction of the window, clients seeing at most the canary's
  share of those failures meanwhile;
- slow: the canary stalls 150 ms before answering (TTFT): the p99 TTFT check should
  roll it back.

Reported per run: the outcome, when it happened, the weights seen, requests sent and
failed, requests the canary served, and the controller's reason.

Everything listens on 127.0.0.1 and every process is killed at exit.
Output: bench/results/rollout.md (unless --quick).
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
    print(f"[rollout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)




def gateway_yaml(v1: int, v2: int, step: str) -> str:
    slices = "".join(
        f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: pool-{i}\n"
        f"  labels: {{inference.networking.k8s.io/pool-name: pool}}\naddressType: IPv4\n"
        f"ports: [{{port: {p}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
        for i, p in enumerate((v1, v2)))
    return (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n"
        "  gatewayClassName: shardgate\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\n"
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n"
        "  parentRefs: [{name: gw}]\n"
        "  rules: [{backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: pool}]}]\n---\n"
        "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {name: pool}\n"
        "spec: {targetPorts: [{number: 8000}], selector: {matchLabels: {app: sim}}}\n"
        + slices +
        "---\napiVersion: ai.gateway.io/v1alpha1\nkind: ModelRollout\nmetadata: {name: m-canary}\n"
        "spec:\n  modelName: m\n  poolRef: {name: pool}\n  stable: m-v1\n  canary: m-v2\n"
        f"  steps: [10, 25, 50, 100]\n  stepDuration: {step}\n"
        "  analysis: {minRequests: 20, maxErrorRateIncrease: 0.02, maxTtftP99Ratio: 2.0}\n")


def one_request(port: int, out: list, i: int) -> None:
    body = json.dumps({"model": "m", "stream": True, "max_tokens": 4,
                       "messages": [{"role": "user", "content": f"request {i}"}]})
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        r = c.getresponse()
        model = None
        for line in r:
            if model is None and line.startswith(b"data: {"):
                model = json.loads(line[6:]).get("model")
        out[i] = (r.status, model)
        c.close()
    except (OSError, ValueError):
        out[i] = (0, None)


def run(bins: dict, work: Path, name: str, canary_flags: list[str], rate: float, step: str,
        limit_s: float) -> dict:
    d = work / name
    d.mkdir()
    v1, v2, gw_port = C.free_port(), C.free_port(), C.free_port()
    procs = [C.PROCS.start([bins["shardgate-sim"], "--host", "127.0.0.1", "--port", str(p), "--model", m]
                           + (canary_flags if m == "m-v2" else []), d / f"sim-{m}.log")
             for p, m in ((v1, "m-v1"), (v2, "m-v2"))]
    for p in (v1, v2):
        C.wait_for(f"sim {p}", time.monotonic() + 20,
                 lambda p=p: urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=1).status == 200)
    cfg = d / "gw.yaml"
    cfg.write_text(gateway_yaml(v1, v2, step))
    ready = d / "ready.json"
    procs.append(C.PROCS.start([bins["shardgate"], "serve", "-c", str(cfg), "--shards", "1", "--bind",
                                "127.0.0.1", "--listen-port", str(gw_port), "--admin-addr", "127.0.0.1:0",
                                "--ready-file", str(ready), "--models-interval", "1s"],
                               d / "gw.log", env=dict(C.os.environ, RUST_LOG="warn")))
    admin = C.wait_for("the gateway", time.monotonic() + 20,
                     lambda: ready.exists() and json.loads(ready.read_text()))["admin"]

    def endpoints_known():
        with urllib.request.urlopen(f"http://{admin}/debug/endpoints", timeout=2) as r:
            eps = json.loads(r.read())["endpoints"]
        return len(eps) == 2 and all(e["served_models"] for e in eps)

    def status():
        with urllib.request.urlopen(f"http://{admin}/debug/rollouts", timeout=2) as r:
            return json.loads(r.read())["rollouts"][0]

    C.wait_for("the models polls", time.monotonic() + 20, endpoints_known)
    out: list = [None] * int(rate * limit_s)
    threads = []
    start = time.monotonic()
    weights, ended, final = [status()["canary_weight_percent"]], None, None
    i = 0
    while i < len(out):
        at = start + i / rate
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one_request, args=(gw_port, out, i))
        t.start()
        threads.append(t)
        i += 1
        if i % max(1, int(rate / 10)) == 0:
            s = status()
            if s["canary_weight_percent"] != weights[-1]:
                weights.append(s["canary_weight_percent"])
            if s["state"] != "progressing":
                ended, final = time.monotonic() - start, s
                break
    sent = i
    for t in threads:
        t.join(timeout=60)
    final = final or status()
    for p in procs:
        C.PROCS.stop(p)
    done = [r for r in out[:sent] if r]
    failed = sum(1 for r in done if r[0] != 200)
    canary = sum(1 for r in done if r[1] == "m-v2")
    return dict(name=name, state=final["state"], at=ended, weights=weights, sent=sent, failed=failed,
                canary=canary, reason=final["reason"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run, results not written")
    ap.add_argument("--rate", type=float, default=50, help="requests per second (default 50)")
    ap.add_argument("--step", default="3s", help="the rollout's stepDuration (default 3s)")
    a = ap.parse_args()
    bins = C.build("release")
    work = Path(tempfile.mkdtemp(prefix="shardgate-rollout-"))
    C.WORK["dir"] = work
    runs = [("healthy", []), ("failing (30 % 500s)", ["--error-rate", "0.3"]),
            ("slow (150 ms stall)", ["--stall-ms", "150"])]
    if a.quick:
        runs = runs[1:2]
    rows = []
    for name, flags in runs:
        r = run(bins, work, name.split()[0], flags, a.rate, a.step, 40)
        r["name"] = name
        log(f"{name}: {r['state']} after {r['at'] if r['at'] is None else round(r['at'], 2)} s, weights {r['weights']}, "
            f"{r['failed']} of {r['sent']} failed, canary served {r['canary']}: {r['reason']}")
        rows.append(r)
    lines = ["# Canary rollouts: a healthy, a failing and a slow canary", "",
             f"`bench/rollout.py`, {time.strftime('%Y-%m-%d')}, {C.cpu_model()}: a stable (`m-v1`) and a canary "
             f"(`m-v2`) simulated server in one pool behind one gateway (one shard); streaming chat for `m` at "
             f"{a.rate:.0f} req/s, open loop; `ModelRollout` steps 10 → 25 → 50 → 100 %, `stepDuration: {a.step}`, "
             "`minRequests: 20`, `maxErrorRateIncrease: 0.02`, `maxTtftP99Ratio: 2`. *Failed*: client requests "
             "that did not get a 200, from the start to the outcome.", "",
             "| canary | outcome | after | weights seen (%) | requests | failed | served by the canary | reason |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        at = "–" if r["at"] is None else f"{r['at']:.1f} s"
        lines.append(f"| {r['name']} | {r['state']} | {at} | {' → '.join(map(str, r['weights']))} | {r['sent']} | "
                     f"{r['failed']} | {r['canary']} | {r['reason']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.quick:
        (ROOT / "bench" / "results" / "rollout.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
