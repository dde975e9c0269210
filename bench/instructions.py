#!/usr/bin/env python3
"""bench/instructions.py: the gateway's instructions per request, for A/B comparisons of builds.

Why: on a VM without hardware performance counters (this project's machines: `perf stat`
says `<not supported>` for `instructions`), CPU seconds per request move ±15 % between
runs with the load core's speed, which hides a change of a few per cent. Valgrind's
`cachegrind` counts every instruction the gateway executes (all threads, user space
only; no kernel time, and each iteration of a `rep movsb` copy counts as one), which
repeats to within ~0.5 % from run to run. What it measures is the user-space work per
request, not time: use it to compare two builds of the same code path, and
`bench/h2.py` / `bench/compare` for time.

Method: for each path and each binary, the gateway (`--shards 1 --force-epoll`:
valgrind does not run io_uring) serves `h2load` twice, `--small` and `--large`
requests (default 2,000 and 12,000) in separate processes; the instructions of the
difference divided by the difference of requests is the per-request figure (startup,
configuration and the control thread's periodic work cancel out, as both runs last
about as long under valgrind).

Paths (`--paths`, default all):
  h1    POST /v1/completions over HTTP/1.1 keep-alive, 8 connections (HTTP/1.1 upstream)
  h1c1  the same over 1 connection
  h1cN  the same over N connections (h1c64: more connections' state between two requests of one)
  h2    the same over HTTP/2 with prior knowledge, 8 connections x 16 streams
  grpc  unary KServe v2 ModelInfer over h2c, 8 x 16 (HTTP/2 upstream)

`--cache` also simulates the caches (cachegrind's `--cache-sim=yes`: the first-level
instruction and data caches and the last level, sized from this CPU's CPUID) and reports
misses per request beside the instructions: on a VM without hardware counters, the one way
to see whether a path is slow for its instructions or for the memory they touch. The
simulation is a model (no prefetchers, no TLB), so compare its figures between targets,
not with a real machine's.

`--footprint` measures the code a request runs instead: callgrind (`--dump-instr=yes`)
counts every instruction address, the same two runs are differenced, and an instruction
that ran at least once per two requests is on the request's path. The report gives, per
target, how many distinct 64-byte lines of code those instructions lie in (what the
instruction cache must hold for one request), how full those lines are (bytes of path
instructions ÷ bytes of the lines: the rest is code laid between them that the request
jumps over), and the functions with the most lines. Instruction lengths come from
`objdump -d` of each object. Unlike `--cache` it depends on no cache model: it is the
layout itself, so it says how much a better layout (PGO, BOLT, moving cold code out by
hand) could save, function by function.

`--nginx` adds nginx as a reference on the HTTP/1.1 paths: the same `h2load` runs through
nginx (one process, `master_process off`, the upstream keep-alive configuration of
`bench/compare`), counted the same way, so the table shows how far the gateway's user
space is from nginx's on the same requests.

Usage: bench/instructions.py [--baseline OLD_BINARY] [--nginx] [--bin-dir target/release] [--paths h1,grpc]
       bench/instructions.py --footprint [--baseline OLD_BINARY] [--nginx] [--paths h1c64]
Needs valgrind and h2load (Debian `valgrind`, `nghttp2-client`; installed with apt-get
when missing and root). Prints a markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from compare_module import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("h2bench", os.path.join(ROOT, "bench", "h2.py"))
h2bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h2bench)

# nginx is measured on the HTTP/1.1 paths only (it proxies HTTP/2 and gRPC only to other upstream protocols).
def is_h1(path: str) -> bool:
    """The HTTP/1.1 paths: `h1` (8 connections) and `h1cN` (N connections)."""
    return path == "h1" or (path.startswith("h1c") and path[3:].isdigit() and int(path[3:]) > 0)


def ensure_tools(footprint: bool = False) -> None:
    tools = (("valgrind", "valgrind"), ("h2load", "nghttp2-client")) + ((("objdump", "binutils"),) if footprint else ())
    missing = [p for t, p in tools if not shutil.which(t)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), check=False)
    for t, p in tools:
        if not shutil.which(t):
            sys.exit(f"{t} is missing (apt-get install {p})")


def h2load_args(path: str, tmp: str, http_port: int, grpc_port: int) -> list[str]:
    json_h = ["-H", "content-type: application/json"]
    body = os.path.join(tmp, "completion.json")
    if path == "grpc":
        return ["-c", "8", "-m", "16", "-d", os.path.join(tmp, "infer.bin"), "-H", "content-type: application/grpc",
                "-H", "te: trailers", f"http://127.0.0.1:{grpc_port}/inference.GRPCInferenceService/ModelInfer"]
    if path == "h2":
        return ["-c", "8", "-m", "16", "-d", body, *json_h, f"http://127.0.0.1:{http_port}/v1/completions"]
    conns = path[3:] if path.startswith("h1c") else "8"
    return ["--h1", "-c", conns, "-m", "1", "-d", body, *json_h, f"http://127.0.0.1:{http_port}/v1/completions"]


def proxy_command(binary: str, tmp: str, http_port: int, grpc_port: int, sim_port: int) -> tuple[list[str], list[int]]:
    """The proxy's command line (without valgrind) and the ports it must open before load."""
    if binary == "nginx":
        prefix = os.path.join(tmp, "nginx")
        os.makedirs(prefix, exist_ok=True)
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(compare.nginx_conf(Path(prefix), sim_port, http_port).replace("master_process on;", "master_process off;"))
        return [compare.find_nginx(install=True) or "nginx", "-p", prefix, "-c", conf], [http_port]
    cfg = os.path.join(tmp, "gw.yaml")
    with open(cfg, "w") as f:
        f.write(h2bench.config(http_port, grpc_port, sim_port))
    return [binary, "serve", "-c", cfg, "--shards", "1", "--bind", "127.0.0.1", "--admin-addr", "off",
            "--no-scrape", "--force-epoll"], [http_port, grpc_port]


def count(binary: str, sim_bin: str, path: str, n: int, tmp: str, cache: bool = False,
          per_instr: bool = False) -> dict:
    """Instructions (`Ir`) the proxy (a shardgate binary, or "nginx") executed over its life,
    serving n requests of `path`, and with `cache` the simulated misses (`I1mr`, `D1mr`,
    `D1mw`, `ILmr`, `DLmr`, `DLmw`): cachegrind's event totals by name. With `per_instr`,
    callgrind's count for every instruction instead ([`per_instruction`])."""
    sim_port, http_port, grpc_port = h2bench.free_port(), h2bench.free_port(), h2bench.free_port()
    procs: list[subprocess.Popen] = []
    try:
        sim = subprocess.Popen([sim_bin, "--host", "127.0.0.1", "--port", str(sim_port), "--model", "m", "--fast"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(sim)
        h2bench.wait_port(sim_port, sim, "shardgate-sim")
        cmd, ports = proxy_command(binary, tmp, http_port, grpc_port, sim_port)
        out = os.path.join(tmp, "cachegrind.out")
        tool = (["--tool=callgrind", "--dump-instr=yes", f"--callgrind-out-file={out}"] if per_instr else
                ["--tool=cachegrind", f"--cache-sim={'yes' if cache else 'no'}", f"--cachegrind-out-file={out}"])
        gw = subprocess.Popen(["valgrind", *tool, *cmd],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, RUST_LOG="error"), start_new_session=True)
        procs.append(gw)
        # Valgrind starts the proxy slowly: a longer deadline than h2.py's.
        for port in ports:
            h2bench.wait_port(port, gw, f"{os.path.basename(binary)} under valgrind", 120)
        r = subprocess.run(["h2load", "-n", str(n), *h2load_args(path, tmp, http_port, grpc_port)],
                           capture_output=True, text=True, timeout=900).stdout
        ok = re.search(r"(\d+) succeeded, (\d+) failed", r)
        if not ok or int(ok.group(1)) != n:
            sys.exit(f"h2load ({path}, {binary}): not every request succeeded:\n{r}")
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=120)
        if per_instr:
            return per_instruction(out)
        with open(out) as f:
            text = f.read()
        events = re.search(r"^events:\s+(.+)$", text, re.M)
        summary = re.search(r"^summary:\s+(.+)$", text, re.M)
        if not events or not summary:
            sys.exit(f"no cachegrind summary in {out}")
        return dict(zip(events.group(1).split(), (int(v) for v in summary.group(1).split())))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def per_instruction(path: str) -> dict:
    """{(object, function): {address: Ir}} from a callgrind file written with
    `--dump-instr=yes` (name compression and relative addresses resolved; the cost line
    after a `calls=` line is a call's inclusive cost and is skipped)."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    ob = fn = ""
    addr = 0
    skip = False
    costs: dict = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition("=")
            if key in ("ob", "fn", "cob", "cfn", "fl", "fi", "fe", "cfi", "cfl"):
                m = re.match(r"\((\d+)\)(?: (.*))?", rest.strip())
                kind = "ob" if key in ("ob", "cob") else "fn" if key in ("fn", "cfn") else None
                name = rest.strip()
                if m:
                    if m.group(2) and kind:
                        names[kind][m.group(1)] = m.group(2)
                    name = names[kind].get(m.group(1), "?") if kind else name
                if key == "ob":
                    ob = name
                elif key == "fn":
                    fn = name
                continue
            if key == "calls":
                skip = True
                continue
            if not line[:1] or line[0] not in "0123456789+-*":
                continue
            parts = line.split()
            a = parts[0]
            if a.startswith("+"):
                addr += int(a[1:], 0)
            elif a.startswith("-"):
                addr -= int(a[1:], 0)
            elif a != "*":
                addr = int(a, 0)
            if skip:
                skip = False
                continue
            if len(parts) > 2:
                d = costs.setdefault((ob, fn), {})
                d[addr] = d.get(addr, 0) + int(parts[2])
    return costs


def lengths(obj: str, addrs: list[int]) -> dict[int, int]:
    """Instruction lengths in bytes at `addrs` of object file `obj`, from `objdump -d`
    over the ranges the addresses cluster in."""
    out: dict[int, int] = {}
    addrs = sorted(addrs)
    i = 0
    while i < len(addrs):
        j = i
        while j + 1 < len(addrs) and addrs[j + 1] - addrs[j] < 65536:
            j += 1
        r = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={addrs[i]}",
                            f"--stop-address={addrs[j] + 16}", obj], capture_output=True, text=True)
        starts = [int(m.group(1), 16) for m in re.finditer(r"^\s+([0-9a-f]+):", r.stdout, re.M)]
        out.update({a: b - a for a, b in zip(starts, starts[1:])})
        i = j + 1
    return out


def footprint(small: dict, large: dict, n: int, top: int = 12) -> tuple[dict, list]:
    """The request's code: instructions whose count grew by at least n/2 between the two
    runs (n requests apart). Returns totals (lines, bytes, fill) and the functions with
    the most lines: (lines, bytes, name)."""
    per_fn = []
    total_lines: set = set()
    total_bytes = 0
    by_obj: dict[str, list] = {}
    for (ob, fn), d in large.items():
        s = small.get((ob, fn), {})
        hot = [a for a, v in d.items() if v - s.get(a, 0) >= n / 2]
        if hot:
            by_obj.setdefault(ob, []).append((fn, hot))
    for ob, fns in by_obj.items():
        size = lengths(ob, [a for _, hot in fns for a in hot]) if os.path.exists(ob) else {}
        for fn, hot in fns:
            lines: set = set()
            b = 0
            for a in hot:
                length = size.get(a, 4)
                b += length
                lines.update({(ob, a // 64), (ob, (a + length - 1) // 64)})
            total_lines |= lines
            total_bytes += b
            per_fn.append((len(lines), b, fn))
    per_fn.sort(reverse=True)
    return {"lines": len(total_lines), "bytes": total_bytes,
            "fill": total_bytes / (64 * len(total_lines)) if total_lines else 0.0}, per_fn[:top]


def report_footprint(binaries: list, sim_bin: str, paths: list, a, tmp: str) -> None:
    print("The code one request runs (instructions run at least once per two requests; callgrind):\n")
    print("| path | target | code lines (64 B) | KiB | bytes of path code | fill |")
    print("|---|---|---:|---:|---:|---:|")
    tops = []
    for path in paths:
        for name, binary in binaries:
            if name == "nginx" and not is_h1(path):
                continue
            small = count(binary, sim_bin, path, a.small, tmp, per_instr=True)
            large = count(binary, sim_bin, path, a.large, tmp, per_instr=True)
            tot, top = footprint(small, large, a.large - a.small)
            print(f"| {path} | {name} | {tot['lines']:,} | {tot['lines'] * 64 / 1024:,.1f} | {tot['bytes']:,} | {tot['fill']:.2f} |",
                  flush=True)
            tops.append((path, name, top))
    for path, name, top in tops:
        print(f"\n{path}, {name}: the functions with the most lines\n")
        print("| lines | fill | function |")
        print("|---:|---:|---|")
        for lines, b, fn in top:
            print(f"| {lines} | {b / (64 * lines):.2f} | `{fn[:120]}` |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release"))
    ap.add_argument("--baseline", help="another shardgate binary, measured the same way")
    ap.add_argument("--nginx", action="store_true", help="also count nginx on the HTTP/1.1 paths")
    ap.add_argument("--paths", default="h1,h1c1,h2,grpc")
    ap.add_argument("--cache", action="store_true", help="also simulate the caches: misses per request")
    ap.add_argument("--footprint", action="store_true",
                    help="instead of counting: the code lines one request runs, how full they are, and by function")
    ap.add_argument("--small", type=int, default=2_000)
    ap.add_argument("--large", type=int, default=12_000)
    a = ap.parse_args()
    if a.large <= a.small:
        sys.exit("--large must exceed --small")
    ensure_tools(a.footprint)
    sim_bin = os.path.join(a.bin_dir, "shardgate-sim")
    binaries = [("shardgate", os.path.join(a.bin_dir, "shardgate"))]
    if a.baseline:
        binaries.append(("baseline", a.baseline))
    if a.nginx:
        binaries.append(("nginx", "nginx"))
    tmp = tempfile.mkdtemp(prefix="shardgate-instructions-")
    with open(os.path.join(tmp, "infer.bin"), "wb") as f:
        f.write(h2bench.infer_request("m"))
    with open(os.path.join(tmp, "completion.json"), "w") as f:
        f.write('{"model":"m","prompt":"hello there how are you today my friend","max_tokens":8}')
    paths = [p for p in a.paths.split(",") if p]
    for p in paths:
        if p not in ("h2", "grpc") and not is_h1(p):
            sys.exit(f"unknown path {p!r}: h1, h1cN (N connections), h2 or grpc")
    if a.footprint:
        report_footprint(binaries, sim_bin, paths, a, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    rows = []
    misses: list[tuple[str, str, dict[str, float]]] = []
    for path in paths:
        per = {}
        for name, binary in binaries:
            if name == "nginx" and not is_h1(path):
                continue
            small = count(binary, sim_bin, path, a.small, tmp, a.cache)
            large = count(binary, sim_bin, path, a.large, tmp, a.cache)
            diff = {k: (large[k] - small.get(k, 0)) / (a.large - a.small) for k in large}
            per[name] = diff["Ir"]
            if a.cache:
                misses.append((path, name, diff))
            print(f"[instructions] {path} {name}: {per[name]:,.0f} per request", file=sys.stderr, flush=True)
        rows.append((path, per))
    shutil.rmtree(tmp, ignore_errors=True)
    if misses:
        print("Simulated cache misses per request (cachegrind's model of this CPU's caches):\n")
        print("| path | target | instructions | I1 misses | D1 misses (read + write) | last-level misses |")
        print("|---|---|---:|---:|---:|---:|")
        for path, name, d in misses:
            d1 = d.get("D1mr", 0) + d.get("D1mw", 0)
            ll = d.get("ILmr", 0) + d.get("DLmr", 0) + d.get("DLmw", 0)
            print(f"| {path} | {name} | {d['Ir']:,.0f} | {d.get('I1mr', 0):,.1f} | {d1:,.1f} | {ll:,.1f} |")
        print()
    head = "| path | shardgate |" + (" baseline | change |" if a.baseline else "") + (" nginx | shardgate ÷ nginx |" if a.nginx else "")
    print(head)
    print("|---|---:|" + ("---:|---:|" if a.baseline else "") + ("---:|---:|" if a.nginx else ""))
    for path, per in rows:
        line = f"| {path} | {per['shardgate']:,.0f} |"
        if a.baseline:
            line += f" {per['baseline']:,.0f} | {100 * (per['shardgate'] / per['baseline'] - 1):+.1f} % |"
        if a.nginx:
            line += f" {per['nginx']:,.0f} | {per['shardgate'] / per['nginx']:.2f}× |" if "nginx" in per else " – | – |"
        print(line)


if __name__ == "__main__":
    main()
