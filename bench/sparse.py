#!/usr/bin/env python3
"""bench/sparse.py: the sparse keep-alive case, A/B, in alternating rounds.

Many keep-alive connections, each quiet between its requests (default 64 connections at
300 rps: a request per connection every 213 ms), everything on one core (backend, load
generator and proxy on `--core`), as `bench/compare --sparse` runs it. That run gives three
rounds per target among many other runs; this one gives only this case, more rounds, and
alternates the targets in each round so that drift of the VM falls on all of them.

Any other open-loop case runs the same way: `--conns`, `--rate`, and `--proxy-core` to put the
proxy on a core of its own (`bench/compare`'s open-loop layout: `--proxy-core 0 --core 1
--conns 64 --rate 2000`). Each round also measures direct-to-backend, so the added p50 and
p99 (the target's minus direct's in the same round) are reported beside the raw ones; the
p99 of a few rounds on a shared VM is noise-bound, so tail comparisons want many rounds.

Per run: the proxy's CPU per request from the scheduler's run time of all its threads
(`/proc/<pid>/task/<tid>/schedstat`, ns) over the measured seconds, the load generator's
p50, and with `--ops` also the io_uring submissions, `io_uring_enter` calls and context
switches per request (`perf stat` tracepoints, in a separate run of each target: counting
tracepoints costs CPU per event, so it would favour the target with fewer of them).

Targets: a shardgate binary with optional flags (`"target/release/shardgate --client-hot-conns 0"`),
or `nginx` / `nginx-fwd` (Debian's nginx, `bench/compare`'s configurations). Needs release
binaries of shardgate-sim and shardgate-load (`--bin-dir`, default target/release).

    bench/sparse.py --targets "target/release/shardgate,/tmp/base/shardgate,nginx" --rounds 10
"""

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare_module import compare

ROOT = Path(__file__).resolve().parent.parent

MODEL = compare.MODEL


def start(target: str, work: Path, backend_port: int, core: str) -> tuple[subprocess.Popen | None, int]:
    work.mkdir(parents=True, exist_ok=True)
    if target == "direct":
        return None, backend_port
    port = compare.free_port()
    pin = ["taskset", "-c", core]
    if target in ("nginx", "nginx-fwd"):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = work / "nginx.conf"
        conf.write_text(compare.nginx_conf(work, backend_port, port, forwarded=target == "nginx-fwd"))
        cmd = pin + [nginx, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
    else:
        binary, *flags = target.split()
        cfg = work / "config.yaml"
        cfg.write_text(compare.shardgate_yaml(backend_port, port))
        cmd = pin + [binary, "serve", "-c", str(cfg), "--shards", "1", "--bind", "127.0.0.1",
                     "--listen-port", str(port), "--admin-addr", "off", "--no-scrape", *flags]
    log = work / "log.txt"
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                         env={**os.environ, "RUST_LOG": "warn"}, start_new_session=True)
    compare.wait_ready(target, port, p, 20, log)
    return p, port


def group_pids(pgid: int) -> list[str]:
    return [pid for pid, _ in compare.group_stats(pgid)]


def one_run(a, target: str, work: Path, backend_port: int, ops: bool) -> dict:
    proc, port = start(target, work, backend_port, a.proxy_core or a.core)
    try:
        out = work / "load.json"
        load_log = open(work / "load.log", "wb")
        load = subprocess.Popen(
            ["taskset", "-c", a.core, str(a.bin_dir / "shardgate-load"), "--url",
             f"http://127.0.0.1:{port}", "--template", "completion", "--model", MODEL,
             "-c", str(a.conns), "-t", "1", "--warmup", "1s", "--duration", f"{a.seconds + 1}s",
             "--rate", str(a.rate), "--json", str(out), "-q"],
            stdout=subprocess.DEVNULL, stderr=load_log)
        load_log.close()
        time.sleep(1.5)
        row: dict = {}
        pid = proc.pid if proc else None
        c0, t0 = (compare.group_cpu_seconds(pid) if pid else 0.0), time.monotonic()
        if ops and pid:
            perf = subprocess.run(
                ["perf", "stat", "-x,", "-e",
                 "io_uring:io_uring_submit_req,syscalls:sys_enter_io_uring_enter,"
                 "syscalls:sys_enter_epoll_wait,sched:sched_switch",
                 "-p", ",".join(group_pids(pid)), "--", "sleep", str(a.seconds)],
                capture_output=True, text=True)
            for line in perf.stderr.splitlines():
                f = line.split(",")
                if len(f) > 2 and f[0].isdigit():
                    row[f[2].split(":")[-1]] = int(f[0])
        else:
            time.sleep(a.seconds)
        wall = time.monotonic() - t0
        row["cpu_us"] = (compare.group_cpu_seconds(pid) - c0) / (a.rate * wall) * 1e6 if pid else None
        for k in [k for k in row if k != "cpu_us"]:
            row[k] = row[k] / (a.rate * wall)
        if load.wait(timeout=a.seconds + 30) != 0:
            sys.exit(f"shardgate-load failed against {target}: {(work / 'load.log').read_text()[-2000:]}")
        rep = json.loads(out.read_text())
        row["p50_us"] = (rep.get("latency") or {}).get("p50_us")
        row["p99_us"] = (rep.get("latency") or {}).get("p99_us")
        errs = rep.get("failed", 0)
        if errs:
            sys.exit(f"{errs} failed requests against {target}")
        return row
    finally:
        if proc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", required=True, help="comma list: shardgate binaries (with flags) or nginx / nginx-fwd")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--core", default="1", help="taskset CPU list for the backend, the load generator and the proxy")
    ap.add_argument("--proxy-core", help="taskset CPU list for the proxy alone (default: --core)")
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--ops", action="store_true", help="one more run per target counting io_uring operations")
    ap.add_argument("--reference", help="the target the others are paired against, round by round (default: "
                    "nginx when named, else the last target)")
    a = ap.parse_args()
    targets = [t.strip() for t in a.targets.split(",") if t.strip() and t.strip() != "direct"]
    # direct-to-backend runs in every round, for the added latency of each target.
    targets = ["direct"] + targets
    work = Path(tempfile.mkdtemp(prefix="shardgate-sparse-"))
    bport = compare.free_port()
    be_log = work / "backend.log"
    be = subprocess.Popen(["taskset", "-c", a.core, str(a.bin_dir / "shardgate-sim"), "--host", "127.0.0.1",
                           "--port", str(bport), "--fast", "--model", MODEL],
                          stdout=subprocess.DEVNULL, stderr=open(be_log, "wb"), start_new_session=True)
    rows: dict[str, list[dict]] = {t: [] for t in targets}
    ops: dict[str, dict] = {}
    try:
        compare.wait_ready("shardgate-sim", bport, be, 20, be_log)
        for r in range(a.rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for t in order:
                row = one_run(a, t, work / f"r{r}-{targets.index(t)}", bport, False)
                rows[t].append(row)
                cpu = "–" if row["cpu_us"] is None else f"{row['cpu_us']:.1f} µs"
                print(f"round {r + 1}: {t}: {cpu} CPU per request, p50 {row['p50_us']} µs, "
                      f"p99 {row['p99_us']} µs", flush=True)
        if a.ops:
            for t in targets[1:]:
                ops[t] = one_run(a, t, work / f"ops-{targets.index(t)}", bport, True)
    finally:
        os.killpg(be.pid, signal.SIGKILL)
        be.wait()
        shutil.rmtree(work, ignore_errors=True)
    layout = f"proxy on core {a.proxy_core}, the rest on {a.core}" if a.proxy_core else "same core"
    print(f"\n{a.conns} connections at {a.rate:g} rps, {layout}, {a.rounds} alternating rounds of "
          f"{a.seconds:g} s; added = the target's minus direct's in the same round\n")
    head = ("| target | CPU per request, median | sorted | p50 | p99 | added p50 | added p99 | "
            "added p99, sorted |")
    sep = "|---|---:|---|---:|---:|---:|---:|---|"
    if ops:
        head += " io_uring submissions | `io_uring_enter` | `epoll_wait` | context switches |"
        sep += "---:|---:|---:|---:|"
    print(head)
    print(sep)

    def med(xs: list) -> str:
        xs = [x for x in xs if x is not None]
        return f"{statistics.median(xs):.1f} µs" if xs else "–"

    for t in targets:
        rs = rows[t]
        cpu = [x["cpu_us"] for x in rs if x["cpu_us"] is not None]
        added = {k: [x[k] - d[k] for x, d in zip(rs, rows["direct"])
                     if x[k] is not None and d[k] is not None] for k in ("p50_us", "p99_us")}
        direct = t == "direct"
        line = (f"| `{t}` | {med(cpu)} | {' / '.join(f'{c:.1f}' for c in sorted(cpu)) or '–'} | "
                f"{med([x['p50_us'] for x in rs])} | {med([x['p99_us'] for x in rs])} | "
                f"{'–' if direct else med(added['p50_us'])} | {'–' if direct else med(added['p99_us'])} | "
                f"{'–' if direct else ' / '.join(f'{v:.0f}' for v in sorted(added['p99_us']))} |")
        if ops:
            o = ops.get(t, {})
            line += " " + " | ".join(f"{o.get(k, 0):.2f}" if not direct else "–" for k in
                                     ("io_uring_submit_req", "sys_enter_io_uring_enter",
                                      "sys_enter_epoll_wait", "sched_switch")) + " |"
        print(line)
    ref = a.reference or ("nginx" if "nginx" in targets else targets[-1])
    if ref not in rows:
        print(f"--reference {ref} is not a target", file=sys.stderr)
        return 2
    print(f"\nPaired by round against `{ref}` (the targets alternate within each round, so the VM's drift "
          "between rounds falls on both): the median of the per-round ratios, and in how many rounds the "
          "target was lower, with the two-sided sign-test p-value of that count (ties left out)\n")
    print("| target | added p50 ÷ ref | lower in | p | added p99 ÷ ref | lower in | p | CPU ÷ ref | lower in | p |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        if t in ("direct", ref):
            continue
        cells = [f"`{t}`"]
        for key, added in (("p50_us", True), ("p99_us", True), ("cpu_us", False)):
            cells += paired(rows[t], rows[ref], rows["direct"], key, added)
        print("| " + " | ".join(cells) + " |")
    return 0


def paired(mine: list[dict], ref: list[dict], direct: list[dict], key: str, added: bool) -> list[str]:
    """Round-by-round comparison of `key` (less direct's, when `added`) between two targets: the
    median ratio, the rounds where `mine` was lower, and the sign test's p-value."""
    pairs = []
    for m, r, d in zip(mine, ref, direct):
        if m[key] is None or r[key] is None or (added and d[key] is None):
            continue
        base = d[key] if added else 0.0
        pairs.append((m[key] - base, r[key] - base))
    ratios = [x / y for x, y in pairs if y > 0]
    lower = sum(1 for x, y in pairs if x < y)
    n = sum(1 for x, y in pairs if x != y)
    return [f"{statistics.median(ratios):.2f}×" if ratios else "–", f"{lower} of {n}",
            f"{sign_test(lower, n):.2f}" if n else "–"]


def sign_test(k: int, n: int) -> float:
    """Two-sided p-value of `k` successes in `n` fair coin flips (exact binomial)."""
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


if __name__ == "__main__":
    sys.exit(main())
