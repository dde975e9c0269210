#!/usr/bin/env python3
"""bench/cores.py: shardgate with N shards against nginx with N workers, N = 1, 2, 4, 8, in one run.

The multi-core half of #13: `bench/scaling.sh` measures shardgate alone; this script puts
nginx beside it at every core count, in alternating rounds, so each ratio comes from one
run on one machine. Layout on an M-core machine (M >= 16 for the full run):

    proxy (shardgate shards or nginx workers): cores 0 .. N-1, one per shard / worker
    backends:        --sims `shardgate-sim --fast`, one core each, from the top
    load generator:  `shardgate-load`, --load-threads threads on the cores between

Both proxies run as a production setup would on those cores: shardgate `--shards N`
(SO_REUSEPORT, a shard pinned per core), nginx `worker_processes N` with
`worker_cpu_affinity` one core per worker and `listen ... reuseport` (the kernel spreads
connections over the workers as it does over the shards), keep-alive to every backend.
Each point is a closed loop (`-c --conns`, default 256) after a warm-up.

Per point: requests per second, p50 / p99, the proxy's CPU (scheduler run time of all its
threads and processes over the measured seconds, in cores) and requests per second per
proxy core. The load side (backends and load generator) caps every target on a machine
where it is smaller than the proxy, so the per-core figure is the one that compares when
neither proxy saturates its cores: the report gives both, and the ratios against nginx.

Targets: shardgate binaries (with flags: `"bench/device-bin/shardgate --force-epoll"`)
and `nginx`, which runs `--nginx` (default: `nginx` on PATH, else /usr/sbin/nginx, installed
with apt-get when missing; on a machine that reaches no registry, the wrapper that
`scripts/device-bundle` carries). Needs shardgate-sim and shardgate-load in `--bin-dir`.

    bench/cores.py --bin-dir bench/device-bin --nginx bench/device-bin/nginx \\
        --targets bench/device-bin/shardgate,nginx --rounds 2 --out bench/results/cores-16core.md
    bench/cores.py --quick                     # this 2-core VM: N = 1, one short round
"""

import argparse
import json
import os
import platform
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


def cpu_list(cores: list[int]) -> str:
    return ",".join(str(c) for c in cores)


def start(a, target: str, work: Path, backend_ports: list[int], cores: list[int]) -> tuple[subprocess.Popen, int]:
    work.mkdir(parents=True, exist_ok=True)
    port = compare.free_port()
    pin = ["taskset", "-c", cpu_list(cores)]
    if target == "nginx":
        conf = work / "nginx.conf"
        # Each worker may keep as many idle upstream connections as there are clients (with
        # `keepalive 64` at 256 clients, nginx served half the requests).
        conf.write_text(compare.nginx_conf(work, backend_ports, port, cores=cores, keepalive=a.conns))
        cmd = pin + [a.nginx, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
    else:
        binary, *flags = target.split()
        cfg = work / "config.yaml"
        cfg.write_text(compare.shardgate_yaml(backend_ports, port))
        cmd = pin + [binary, "serve", "-c", str(cfg), "--shards", str(len(cores)), "--bind", "127.0.0.1",
                     "--listen-port", str(port), "--admin-addr", "off", "--no-scrape", *flags]
    log = work / "log.txt"
    with open(log, "wb") as lf:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=lf, stdin=subprocess.DEVNULL,
                             env={**os.environ, "RUST_LOG": "warn"}, start_new_session=True)
    try:
        compare.wait_ready(target, port, p, 20, log)
    except BaseException:
        stop(p)
        raise
    return p, port


def stop(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def one_point(a, target: str, work: Path, backend_ports: list[int], cores: list[int],
              load_cores: list[int]) -> dict:
    proc, port = start(a, target, work, backend_ports, cores)
    try:
        out = work / "load.json"
        with open(work / "load.log", "wb") as load_log:
            load = subprocess.Popen(
                ["taskset", "-c", cpu_list(load_cores), str(a.bin_dir / "shardgate-load"), "--url",
                 f"http://127.0.0.1:{port}", "--template", "completion", "--model", MODEL,
                 "-c", str(a.conns), "-t", str(len(load_cores)), "--warmup", f"{a.warmup:g}s",
                 "--duration", f"{a.seconds + 0.5:g}s", "--json", str(out), "-q"],
                stdout=subprocess.DEVNULL, stderr=load_log, stdin=subprocess.DEVNULL,
                start_new_session=True)
        try:
            # Measure the proxy's CPU inside the load's measured window (after its warm-up,
            # before its end), over `seconds`.
            time.sleep(a.warmup + 0.25)
            c0, t0 = compare.group_cpu_seconds(proc.pid), time.monotonic()
            time.sleep(a.seconds)
            cpu = (compare.group_cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
            rc = load.wait(timeout=a.warmup + a.seconds + 60)
        except BaseException:
            stop(load)
            raise
        if rc != 0:
            sys.exit(f"shardgate-load failed against {target}: {(work / 'load.log').read_text()[-2000:]}")
        rep = json.loads(out.read_text())
        if rep.get("failed", 0):
            sys.exit(f"{rep['failed']} failed requests against {target} at {len(cores)} core(s)")
        lat = rep.get("latency") or {}
        return {"rps": rep.get("rps", 0.0), "p50": lat.get("p50_us"), "p99": lat.get("p99_us"), "cpu": cpu}
    finally:
        stop(proc)


def layout(m: int, n_max: int, sims: int, load_threads: int) -> tuple[list[list[int]], list[int]]:
    """Backend cores (one per simulator, from the top) and load-generator cores (below them)."""
    sim_cores = [[m - 1 - i] for i in range(sims)]
    load_cores = list(range(m - sims - load_threads, m - sims))
    if load_cores and load_cores[0] < n_max:
        # Too few cores for separate sides: share what is above the proxy's cores.
        load_cores = list(range(n_max, m)) or [m - 1]
        sim_cores = [load_cores for _ in range(sims)]
    return sim_cores, load_cores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = os.cpu_count() or 1
    big = m >= 16
    ap.add_argument("--targets", default=f"{ROOT / 'target' / 'release' / 'shardgate'},nginx",
                    help="comma list: shardgate binaries (with flags) and/or nginx")
    ap.add_argument("--n", default="1,2,4,8" if big else "1", help="core counts (shards / workers)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--conns", type=int, default=256)
    ap.add_argument("--sims", type=int, default=4 if big else 1, help="backends, one core each")
    ap.add_argument("--load-threads", type=int, default=4 if big else 1)
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release",
                    help="holds shardgate-sim and shardgate-load")
    ap.add_argument("--nginx", help="nginx binary (default: on PATH or /usr/sbin/nginx, installed with "
                    "apt-get when missing and root)")
    ap.add_argument("--out", type=Path, help="also write the report here (markdown)")
    ap.add_argument("--quick", action="store_true", help="one round of 2 s per point (a smoke run)")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.seconds, a.warmup = 1, 2.0, 0.5
    ns = [int(x) for x in a.n.split(",") if x.strip()]
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    sim_cores, load_cores = layout(m, max(ns), a.sims, a.load_threads)
    if max(ns) > m - 1:
        sys.exit(f"N = {max(ns)} needs more than {m} cores (the load side needs at least one)")
    if "nginx" in targets:
        a.nginx = a.nginx or compare.find_nginx(install=True)
        if not a.nginx or not (Path(a.nginx).exists() or shutil.which(a.nginx)):
            sys.exit(f"no nginx{' at ' + a.nginx if a.nginx else ''} (--nginx)")
    work = Path(tempfile.mkdtemp(prefix="shardgate-cores-"))
    sims: list[subprocess.Popen] = []
    rows: dict[tuple[str, int], list[dict]] = {}
    t_start = time.monotonic()
    try:
        ports = []
        for i, cores in enumerate(sim_cores):
            port = compare.free_port()
            log = work / f"sim-{i}.log"
            with open(log, "wb") as lf:
                p = subprocess.Popen(["taskset", "-c", cpu_list(cores), str(a.bin_dir / "shardgate-sim"),
                                      "--host", "127.0.0.1", "--port", str(port), "--fast", "--model", MODEL],
                                     stdout=subprocess.DEVNULL, stderr=lf, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
            sims.append(p)
            compare.wait_ready("shardgate-sim", port, p, 20, log)
            ports.append(port)
        # One unmeasured point first: the first run after the backends start measured up to a
        # third slower than the same binary later in the same run (page cache, the backends'
        # first connections), whichever target it was.
        one_point(a, targets[0], work / "warm", ports, list(range(ns[0])), load_cores)
        for r in range(a.rounds):
            for n in ns:
                # Alternate which target goes first at each point and round.
                k = (r + ns.index(n)) % len(targets)
                for t in targets[k:] + targets[:k]:
                    row = one_point(a, t, work / f"r{r}-n{n}-{targets.index(t)}", ports, list(range(n)), load_cores)
                    rows.setdefault((t, n), []).append(row)
                    print(f"round {r + 1}, N = {n}: {t}: {row['rps']:,.0f} rps, proxy CPU "
                          f"{row['cpu']:.2f} cores, p50 {row['p50']} µs, p99 {row['p99']} µs", flush=True)
    finally:
        for p in sims:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)
    report = render(a, m, ns, targets, rows, sim_cores, load_cores, time.monotonic() - t_start)
    print("\n" + report)
    if a.out:
        a.out.write_text(report)
    return 0


def render(a, m: int, ns: list[int], targets: list[str], rows: dict, sim_cores, load_cores, wall: float) -> str:
    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    cpu_model = compare.cpu_model()
    sims = sorted({c for cs in sim_cores for c in cs})
    lines = [
        "# shardgate with N shards against nginx with N workers",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {cpu_model} · {m} cores · "
        f"kernel {platform.release()} · `bench/cores.py`, {a.rounds} round(s) of {a.seconds:g} s per point, "
        f"medians; {wall:.0f} s in all",
        "",
        f"Proxy on cores 0..N-1; {len(sim_cores)} × `shardgate-sim --fast` on core(s) {cpu_list(sims)}; "
        f"`shardgate-load` closed loop, {a.conns} connections, {len(load_cores)} thread(s) on core(s) "
        f"{cpu_list(load_cores)}; `POST /v1/completions`. nginx: {a.nginx}.",
        "",
        "| N | target | rps | vs nginx | p50 | p99 | proxy CPU (cores) | rps per proxy core | vs nginx |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in ns:
        ng = rows.get(("nginx", n), [])
        ng_rps = med([x["rps"] for x in ng])
        ng_pc = med([x["rps"] / x["cpu"] for x in ng if x["cpu"] > 0])
        for t in targets:
            rs = rows.get((t, n), [])
            rps = med([x["rps"] for x in rs])
            pc = med([x["rps"] / x["cpu"] for x in rs if x["cpu"] > 0])
            cpu = med([x["cpu"] for x in rs])
            p50, p99 = med([x["p50"] for x in rs]), med([x["p99"] for x in rs])

            def ratio(v, base):
                return "–" if t == "nginx" or not v or not base else f"{v / base:.2f}×"

            lines.append(
                f"| {n} | `{t}` | {rps:,.0f} | {ratio(rps, ng_rps)} | "
                f"{'–' if p50 is None else f'{p50:,.0f} µs'} | {'–' if p99 is None else f'{p99:,.0f} µs'} | "
                f"{cpu:.2f} | {'–' if pc is None else f'{pc:,.0f}'} | {ratio(pc, ng_pc)} |")
    lines += [
        "",
        "- **proxy CPU**: the proxy's CPU time (all its threads and processes) over the measured "
        "seconds; N cores is all of them. Below N, the load side (backends and load generator) was "
        "the limit, not the proxy.",
        "- **rps per proxy core**: rps ÷ proxy CPU, what one fully used proxy core would serve at "
        "this load.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
