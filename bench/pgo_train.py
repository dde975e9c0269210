#!/usr/bin/env python3
"""bench/pgo_train.py: the training run of a profile-guided build (`scripts/pgo-build`).

Drives an instrumented gateway (built with `-Cprofile-generate`) through the paths a
deployment serves most, so that the profile it writes at exit tells the optimizing build
which code is hot: completions over HTTP/1.1 at 8 connections and at 1, over HTTP/2,
unary gRPC `ModelInfer`, streamed (SSE) completions and chat completions, and 64 sparse
keep-alive connections (each quiet between its requests, so the hot wait's end and the
kept-hot path run). One shard on the default driver (io_uring where the kernel has it),
a `shardgate-sim --fast` backend, everything on 127.0.0.1; about half a minute.

The instrumented binary writes its profile when it exits normally, so the gateway is
stopped with SIGTERM (a drain) and must exit with status 0.

    bench/pgo_train.py --gateway target/pgo-gen/release/shardgate [--bin-dir target/release]

`--quick` (what `scripts/test` runs against the debug build, so the training run keeps
working as the gateway changes) sends a twentieth of the requests for a second each.
"""

import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("h2bench", os.path.join(ROOT, "bench", "h2.py"))
h2bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h2bench)


def h2load(n: int, args: list[str]) -> None:
    r = subprocess.run(["h2load", "-n", str(n), *args], capture_output=True, text=True, timeout=300)
    ok = re.search(r"(\d+) succeeded, (\d+) failed", r.stdout)
    if not ok or int(ok.group(1)) != n:
        sys.exit(f"h2load {' '.join(args)}: not every request succeeded:\n{r.stdout}\n{r.stderr}")


def load(bin_dir: str, port: int, args: list[str]) -> None:
    cmd = [os.path.join(bin_dir, "shardgate-load"), "--url", f"http://127.0.0.1:{port}", "--model", "m", "-q", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gateway", required=True, help="the instrumented shardgate binary")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"),
                    help="where shardgate-sim and shardgate-load are")
    ap.add_argument("--quick", action="store_true", help="a twentieth of the requests, one second per load run")
    a = ap.parse_args()
    n = (lambda k: k // 20) if a.quick else (lambda k: k)
    secs = "1s" if a.quick else None
    if not shutil.which("h2load"):
        sys.exit("h2load is missing (Debian: apt-get install nghttp2-client)")
    tmp = tempfile.mkdtemp(prefix="shardgate-pgo-")
    procs: list[subprocess.Popen] = []
    try:
        body = os.path.join(tmp, "completion.json")
        with open(body, "w") as f:
            f.write('{"model":"m","prompt":"hello there how are you today my friend","max_tokens":8}')
        infer = os.path.join(tmp, "infer.bin")
        with open(infer, "wb") as f:
            f.write(h2bench.infer_request("m"))
        sim_port, http_port, grpc_port = h2bench.free_port(), h2bench.free_port(), h2bench.free_port()
        sim = subprocess.Popen([os.path.join(a.bin_dir, "shardgate-sim"), "--host", "127.0.0.1", "--port", str(sim_port),
                                "--model", "m", "--fast"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        procs.append(sim)
        h2bench.wait_port(sim_port, sim, "shardgate-sim")
        cfg = os.path.join(tmp, "gw.yaml")
        with open(cfg, "w") as f:
            f.write(h2bench.config(http_port, grpc_port, sim_port))
        gw = subprocess.Popen([a.gateway, "serve", "-c", cfg, "--shards", "1", "--bind", "127.0.0.1",
                               "--admin-addr", "off", "--no-scrape"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, RUST_LOG="error"), start_new_session=True)
        procs.append(gw)
        for port in (http_port, grpc_port):
            h2bench.wait_port(port, gw, "the instrumented gateway")
        url = f"http://127.0.0.1:{http_port}/v1/completions"
        json_h = ["-H", "content-type: application/json"]
        steps = [
            ("HTTP/1.1, 8 connections", lambda: h2load(n(40_000), ["--h1", "-c", "8", "-m", "1", "-d", body, *json_h, url])),
            ("HTTP/1.1, 1 connection", lambda: h2load(n(10_000), ["--h1", "-c", "1", "-m", "1", "-d", body, *json_h, url])),
            ("HTTP/2", lambda: h2load(n(40_000), ["-c", "8", "-m", "16", "-d", body, *json_h, url])),
            ("gRPC ModelInfer", lambda: h2load(n(40_000), [
                "-c", "8", "-m", "16", "-d", infer, "-H", "content-type: application/grpc", "-H", "te: trailers",
                f"http://127.0.0.1:{grpc_port}/inference.GRPCInferenceService/ModelInfer"])),
            ("streamed completions", lambda: load(a.bin_dir, http_port, ["--template", "completion", "--stream",
                                                                          "-c", "16", "--duration", secs or "3s"])),
            ("chat completions", lambda: load(a.bin_dir, http_port, ["--template", "chat", "-c", "16", "--duration", secs or "3s"])),
            ("64 sparse connections", lambda: load(a.bin_dir, http_port, ["--template", "completion", "-c", "64",
                                                                           "--rate", "300", "--duration", secs or "4s"])),
        ]
        for name, step in steps:
            print(f"[pgo-train] {name}", flush=True)
            step()
        gw.send_signal(signal.SIGTERM)
        code = gw.wait(timeout=60)
        if code != 0:
            sys.exit(f"the instrumented gateway exited with {code}: no profile written")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
