#!/usr/bin/env python3
"""bench/tls.py: TLS termination, shardgate against nginx, one core each, in one run.

What is measured, for each certificate key type (ECDSA P-256 and RSA 2048; the same
certificate and key for both servers):
  - full handshakes per second: `shardgate-tls-load --mode handshake` (bench/src/bin/
    tls_load.rs): every request opens a new TCP connection, does a full TLS handshake
    (client resumption off) and sends `Connection: close`. (`wrk` is not used: it
    resumes sessions on reconnect, so its "handshakes" are abbreviated ones.)
  - keep-alive requests per second: `--mode keepalive`, long-lived TLS connections;
  - the server's CPU seconds during each run (utime + stime of its process group), so
    the table also gives CPU per handshake / per request.

Both servers answer `GET /v1/models` from memory with the same JSON bytes: shardgate
answers it itself (the models its routes serve); nginx is configured with
`return 200` and the body shardgate sent. The comparison is therefore TLS + HTTP/1.1
handling, not proxying. The negotiated protocol, cipher suite and key exchange group
are forced by the client (TLS 1.3, TLS_AES_256_GCM_SHA384, X25519), reported by it
for both servers and printed in the table: the run fails if they differ.

Pinning (`taskset`, 2-core machine): the server alone on core 0 (shardgate
`--shards 1`, nginx `worker_processes 1`), the load generator on core 1. Both TLS stacks get
TLS 1.3 and 1.2; rustls uses `ring`, nginx the system OpenSSL.

Every process runs in its own process group and is killed on exit. Everything listens
on 127.0.0.1. Output: bench/results/tls.md (unless --quick). Needs Debian `nginx`
(installed with apt-get when missing and allowed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import compare_module

C = compare_module.compare  # process helpers (Procs, CPU accounting, apt, nginx lookup)

ROOT = C.ROOT


def log(msg: str) -> None:
    print(f"[tls {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_cert(d: Path, kind: str) -> tuple[Path, Path]:
    key, crt = d / f"{kind}.key", d / f"{kind}.crt"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if kind == "ecdsa-p256" \
        else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return crt, key


def indent(text: str, n: int) -> str:
    return "".join(" " * n + line + "\n" for line in text.strip().splitlines())


def shardgate_yaml(port: int, backend_port: int, crt: Path, key: Path) -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: shardgate
  listeners:
  - name: https
    protocol: HTTPS
    port: {port}
    tls:
      certificateRefs: [{{name: cert}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: default}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{indent(crt.read_text(), 4)}  tls.key: |
{indent(key.read_text(), 4)}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: all, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches:
    - headers: [{{name: X-Gateway-Model-Name, value: {C.MODEL}}}]
    backendRefs: [{{name: backend, port: 8000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-1
  namespace: default
  labels: {{kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{{port: {backend_port}}}]
endpoints:
- addresses: ["127.0.0.1"]
"""


def nginx_conf(prefix: Path, port: int, crt: Path, key: Path, body: bytes) -> str:
    text = body.decode()
    if "'" in text or "$" in text:
        raise SystemExit("the /v1/models body cannot be inlined in nginx.conf")
    return f"""worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_tickets on;
  ssl_session_cache shared:SSL:10m;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    location = /v1/models {{
      default_type application/json;
      return 200 '{text}';
    }}
  }}
}}
"""


def get_models(port: int, ctx) -> bytes | None:
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/v1/models", context=ctx, timeout=2) as r:
            return r.read()
    except OSError:
        return None


def wait_https(name: str, port: int, proc, ctx, limit: float = 30) -> bytes:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}")
        body = get_models(port, ctx)
        if body:
            return body
        time.sleep(0.05)  # polling interval of a deadline-bounded wait
    raise SystemExit(f"{name} did not answer https://127.0.0.1:{port}/v1/models within {limit:.0f}s")


def run_load(tool: str, port: int, seconds: float, threads: int, mode: str) -> dict:
    cmd = ["taskset", "-c", "1", tool, "--addr", f"127.0.0.1:{port}", "--mode", mode,
           "--threads", str(threads), "--duration", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    try:
        r = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SystemExit(f"cannot read shardgate-tls-load's output:\n{out.stdout}{out.stderr}")
    r["rps"] = r["requests"] / r["seconds"]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a second per run, results not written")
    ap.add_argument("--duration", type=float, default=10, help="seconds per load run (default 10)")
    ap.add_argument("--connections", type=int, default=16, help="load connections/threads (default 16)")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install")
    args = ap.parse_args()
    secs = 1 if args.quick else args.duration
    nginx = C.find_nginx(not args.no_install)
    if not nginx:
        raise SystemExit("bench/tls.py needs nginx (apt-get install nginx)")
    bins = C.build("release")
    r = subprocess.run(["cargo", "build", "-q", "--release", "-p", "shardgate-bench", "--bin",
                        "shardgate-tls-load"], cwd=ROOT)
    if r.returncode:
        raise SystemExit("cannot build shardgate-tls-load")
    tool = str(ROOT / "target" / "release" / "shardgate-tls-load")
    work = Path(tempfile.mkdtemp(prefix="shardgate-tls-"))
    C.WORK["dir"] = work
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the bench's own self-signed certificate

    backend_port = C.free_port()
    C.PROCS.start(["taskset", "-c", "1", bins["shardgate-sim"], "--host", "127.0.0.1", "--fast", "--port", str(backend_port),
                   "--model", C.MODEL], work / "sim.log")
    rows = []
    for kind in ("ecdsa-p256", "rsa-2048"):
        crt, key = make_cert(work, kind)
        body = None
        for name in ("shardgate", "nginx"):
            d = work / f"{name}-{kind}"
            d.mkdir()
            port = C.free_port()
            if name == "shardgate":
                cfg = d / "gw.yaml"
                cfg.write_text(shardgate_yaml(port, backend_port, crt, key))
                cmd = ["taskset", "-c", "0", bins["shardgate"], "serve", "-c", str(cfg), "--shards", "1",
                       "--bind", "127.0.0.1", "--admin-addr", "off", "--max-connections", "100000"]
            else:
                conf = d / "nginx.conf"
                conf.write_text(nginx_conf(d, port, crt, key, body or b"{}"))
                cmd = ["taskset", "-c", "0", nginx, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")]
            p = C.PROCS.start(cmd, d / "log", env=dict(C.os.environ, RUST_LOG="warn"))
            got = wait_https(name, port, p, ctx)
            if name == "shardgate":
                body = got
            elif got != body:
                raise SystemExit("nginx's /v1/models body differs from shardgate's")
            for mode, tool_mode in (("full handshakes", "handshake"), ("keep-alive", "keepalive")):
                cpu0 = C.group_cpu_seconds(p.pid)
                r = run_load(tool, port, secs, args.connections, tool_mode)
                cpu = C.group_cpu_seconds(p.pid) - cpu0
                rows.append(dict(kind=kind, name=name, mode=mode, rps=r["rps"], total=r["requests"],
                                 errors=r["errors"], cpu=cpu, secs=r["seconds"], suite=r["negotiated"]))
                log(f"{kind} {name} {mode}: {r['rps']:,.0f}/s, {r['errors']} errors, server CPU {cpu:.2f}s "
                    f"of {r['seconds']:.1f}s, {r['negotiated']}")
            C.PROCS.stop(p)
    for kind in ("ecdsa-p256", "rsa-2048"):
        suites = {r["suite"] for r in rows if r["kind"] == kind}
        if len(suites) != 1:
            raise SystemExit(f"{kind}: the servers negotiated different parameters: {suites}")
    lines = ["# TLS termination: shardgate vs nginx", "",
             f"`bench/tls.py`, {time.strftime('%Y-%m-%d')}, {C.cpu_model()}; server on core 0, "
             f"`shardgate-tls-load --threads {args.connections}` on core 1, {secs:.0f} s per run. "
             "`GET /v1/models` answered from memory by both (same bytes). Full handshakes: a new "
             "connection and a full handshake (no resumption) per request, `Connection: close`.", "",
             "When the server's CPU share is under 100 %, the load generator's core was the limit: "
             "then `per server core` (requests ÷ server CPU seconds) is the capacity figure to compare.", "",
             "| key | negotiated | mode | shardgate /s | nginx /s | shardgate CPU | nginx CPU "
             "| shardgate per server core | nginx per server core | per core, shardgate ÷ nginx "
             "| errors (sg/nginx) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind in ("ecdsa-p256", "rsa-2048"):
        for mode in ("full handshakes", "keep-alive"):
            sg = next(r for r in rows if (r["kind"], r["name"], r["mode"]) == (kind, "shardgate", mode))
            ng = next(r for r in rows if (r["kind"], r["name"], r["mode"]) == (kind, "nginx", mode))
            per = lambda r: r["total"] / r["cpu"] if r["cpu"] else float("nan")  # noqa: E731
            share = lambda r: r["cpu"] / r["secs"] * 100  # noqa: E731
            lines.append(f"| {kind} | {sg['suite']} | {mode} | {sg['rps']:,.0f} | {ng['rps']:,.0f} | "
                         f"{share(sg):.0f} % | {share(ng):.0f} % | {per(sg):,.0f} | {per(ng):,.0f} | "
                         f"{per(sg) / per(ng):.2f}× | {sg['errors']}/{ng['errors']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        (ROOT / "bench" / "results" / "tls.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
