#!/usr/bin/env python3
"""Micro-batching benchmark of shardgate (issue 6, "Benchmark").

Many small `/v1/embeddings` requests (1-4 short inputs each) go through the gateway to
one `shardgate-sim` whose engine charges a fixed cost per upstream call and a cost per
input (the cost model, see README.md next to this file). Each scenario is measured with
batching OFF (the rule has no BatchingPolicy) and ON (the same rule linked to the seed's
BatchingPolicy; `X-Priority` picks the queue):

* closed loop: C keep-alive connections, each sending its next request as soon as the
  previous one answered (throughput at saturation, latency under it);
* open loop at fixed rates (requests evenly spaced; latency counted from each request's
  intended start, so a backlog shows up as latency, not as a lower rate);
* mixed: the batch queue saturated by a closed-loop background load while a low-rate
  open-loop stream of `X-Priority: real-time` requests measures its latency.

Every run reads the gateway's /metrics before and after (batch sizes, flush reasons,
queue waits per priority) and the sim's /sim/stats (upstream calls and inputs), and
CPU time of the gateway, the sim and this load generator (the machine is small and they
share it).

Stdlib only (asyncio with a minimal HTTP/1.1 keep-alive client). Usage:

    python3 bench/batching/run.py            # full run (~5 min), writes bench/results/batching.{json,md}
    python3 bench/batching/run.py --quick    # a few seconds, writes to /tmp unless --out is given
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = "emb"
POLICY = "default/smart-batching"
QUEUES = {  # the seed's BatchingPolicy (../shared/examples/seed-manifests.yaml)
    "default": (50, 32),
    "real-time": (10, 4),
    "batch": (100, 64),
}

# ---------------------------------------------------------------------------------------
# processes


CHILDREN: list[subprocess.Popen] = []


def kill_children() -> None:
    for p in CHILDREN:
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(timeout=5)
            except Exception:
                try:
                    p.kill()
                except Exception:
                    pass
    CHILDREN.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_until(what: str, f, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if f():
                return
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what} ({last})")


def system_busy_seconds() -> float:
    """CPU time all cores spent busy (not idle, not iowait), seconds, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


GATEWAY_YAML = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: default
spec:
  gatewayClassName: shardgate
  listeners:
  - name: http
    protocol: HTTP
    port: 8080
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: embeddings
  namespace: default
spec:
  parentRefs:
  - name: gw
  rules:
  - matches:
    - headers:
      - name: X-Gateway-Model-Name
        value: {model}
{filters}    backendRefs:
    - name: emb-svc
      port: 8000
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: emb-svc-0
  namespace: default
  labels:
    kubernetes.io/service-name: emb-svc
addressType: IPv4
ports:
- port: {sim_port}
endpoints:
- addresses: ["127.0.0.1"]
---
apiVersion: ai.gateway.io/v1alpha1
kind: BatchingPolicy
metadata:
  name: smart-batching
  namespace: default
spec:
  maxBatchSize: 32
  maxLatency: 50ms
  adaptiveBatching:
    enabled: {adaptive}
    targetUtilization: 0.8
  priorityQueues:
  - name: real-time
    maxLatency: 10ms
    maxBatchSize: 4
  - name: batch
    maxLatency: 100ms
    maxBatchSize: 64
"""

FILTER = """\
    filters:
    - type: ExtensionRef
      extensionRef:
        group: ai.gateway.io
        kind: BatchingPolicy
        name: smart-batching
"""


@dataclass
class Stack:
    """One sim and one gateway (restarted per gateway configuration)."""

    args: argparse.Namespace
    workdir: str
    sim: subprocess.Popen | None = None
    sim_port: int = 0
    gw: subprocess.Popen | None = None
    gw_port: int = 0
    admin_port: int = 0
    gw_mode: str = ""

    def bin(self, name: str) -> str:
        """The run's private copy of target/release/<name> (the target folder is shared:
        a build elsewhere must not swap the binary between two runs)."""
        return os.path.join(self.workdir, "bin", name)

    def copy_binaries(self) -> dict:
        import hashlib
        import shutil

        os.makedirs(os.path.join(self.workdir, "bin"), exist_ok=True)
        out = {}
        for name in ("shardgate", "shardgate-sim"):
            src = os.path.join(ROOT, "target/release", name)
            shutil.copy2(src, self.bin(name))
            with open(src, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()[:12]
            built = datetime.datetime.fromtimestamp(os.path.getmtime(src), datetime.timezone.utc)
            out[name] = {"sha256": digest, "built": built.strftime("%Y-%m-%d %H:%M:%S UTC")}
        return out

    def sim_cmd(self) -> list[str]:
        a = self.args
        return [
            self.bin("shardgate-sim"),
            "--host", "127.0.0.1",
            "--port", str(self.sim_port),
            "--model", MODEL,
            "--call-overhead-us", str(a.call_overhead_us),
            "--embedding-us-per-input", str(a.per_input_us),
            "--prefill-us-per-token", str(a.prefill_us_per_token),
            "--max-num-seqs", str(a.max_num_seqs),
            "--num-gpu-blocks", "8192",
        ]

    def start_sim(self) -> None:
        self.sim_port = free_port()
        log = open(os.path.join(self.workdir, "sim.log"), "w")
        self.sim = subprocess.Popen(self.sim_cmd(), stdout=log, stderr=subprocess.STDOUT)
        CHILDREN.append(self.sim)
        wait_until("the sim", lambda: http_get(f"http://127.0.0.1:{self.sim_port}/health") == b"")

    def gw_cmd(self, cfg: str, ready: str) -> list[str]:
        return [
            self.bin("shardgate"), "serve",
            "-c", cfg,
            "--bind", "127.0.0.1",
            "--listen-port", str(self.gw_port),
            "--admin-addr", f"127.0.0.1:{self.admin_port}",
            "--shards", "1",
            "--ready-file", ready,
        ]

    def start_gateway(self, mode: str) -> None:
        """mode: off (no BatchingPolicy on the rule), on, on-adaptive (seed's adaptive: true)."""
        if self.gw_mode == mode and self.gw and self.gw.poll() is None:
            return
        self.stop_gateway()
        self.gw_port, self.admin_port = free_port(), free_port()
        cfg = os.path.join(self.workdir, f"gateway-{mode}.yaml")
        with open(cfg, "w") as f:
            f.write(
                GATEWAY_YAML.format(
                    model=MODEL,
                    filters="" if mode == "off" else FILTER,
                    sim_port=self.sim_port,
                    adaptive="true" if mode == "on-adaptive" else "false",
                )
            )
        ready = os.path.join(self.workdir, f"ready-{mode}.json")
        if os.path.exists(ready):
            os.unlink(ready)
        log = open(os.path.join(self.workdir, f"gateway-{mode}.log"), "w")
        self.gw = subprocess.Popen(self.gw_cmd(cfg, ready), stdout=log, stderr=subprocess.STDOUT)
        CHILDREN.append(self.gw)
        wait_until("the gateway", lambda: os.path.exists(ready) and os.path.getsize(ready) > 0)
        wait_until(
            "the gateway ready",
            lambda: http_get(f"http://127.0.0.1:{self.admin_port}/readyz") is not None,
        )
        self.gw_mode = mode

    def stop_gateway(self) -> None:
        if self.gw and self.gw.poll() is None:
            self.gw.terminate()
            try:
                self.gw.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.gw.kill()
        self.gw = None
        self.gw_mode = ""

    def sim_stats(self) -> dict:
        return json.loads(http_get(f"http://127.0.0.1:{self.sim_port}/sim/stats"))

    def metrics(self) -> str:
        return http_get(f"http://127.0.0.1:{self.admin_port}/metrics").decode()

    def quiesce(self, timeout: float = 30.0) -> None:
        """Wait until the sim has nothing running or waiting (leftovers of a run)."""

        def idle() -> bool:
            s = self.sim_stats()
            return s["running"] == 0 and s["waiting"] == 0

        wait_until("the sim to go idle", idle, timeout)


# ---------------------------------------------------------------------------------------
# metrics


def parse_prom(text: str) -> dict[tuple[str, tuple], float]:
    out: dict[tuple[str, tuple], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            name_labels, value = line.rsplit(" ", 1)
            v = float(value)
        except ValueError:
            continue
        if "{" in name_labels:
            name, rest = name_labels.split("{", 1)
            labels = []
            for part in rest.rstrip("}").split('",'):
                if "=" in part:
                    k, val = part.split("=", 1)
                    labels.append((k.strip(), val.strip().strip('"')))
            out[(name, tuple(sorted(labels)))] = v
        else:
            out[(name_labels, ())] = v
    return out


def prom_delta(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def batch_summary(delta: dict) -> dict:
    """Per priority queue: batches, mean requests per batch, flush reasons, queue wait."""
    per: dict[str, dict] = {}
    for (name, labels), v in delta.items():
        lab = dict(labels)
        if lab.get("policy") != POLICY:
            continue
        q = per.setdefault(lab["priority"], {"flushes": {}, "wait_buckets": {}})
        if name == "gateway_batch_flushes_total":
            q["flushes"][lab["reason"]] = int(round(v))
        elif name == "gateway_batch_size_sum":
            q["requests_batched"] = int(round(v))
        elif name == "gateway_batch_size_count":
            q["batches"] = int(round(v))
        elif name == "gateway_batch_queue_wait_seconds_sum":
            q["wait_sum_s"] = v
        elif name == "gateway_batch_queue_wait_seconds_count":
            q["wait_count"] = int(round(v))
        elif name == "gateway_batch_queue_wait_seconds_bucket":
            q["wait_buckets"][lab["le"]] = int(round(v))
    out = {}
    for prio, q in per.items():
        if not q.get("batches"):
            continue
        b = q["batches"]
        wc = q.get("wait_count", 0)
        buckets = {}
        for le, n in q["wait_buckets"].items():
            key = "+Inf" if le == "+Inf" else f"{float(le):g}"
            buckets[key] = n
        out[prio] = {
            "batches": b,
            "mean_requests_per_batch": round(q.get("requests_batched", 0) / b, 2),
            "flush_reasons": {k: n for k, n in q["flushes"].items() if n},
            "queue_wait_mean_ms": round(1000 * q.get("wait_sum_s", 0) / wc, 2) if wc else None,
            "queue_wait_le_10ms": round(buckets.get("0.01", 0) / wc, 4) if wc else None,
            "queue_wait_le_25ms": round(buckets.get("0.025", 0) / wc, 4) if wc else None,
        }
    return out


# ---------------------------------------------------------------------------------------
# workload


WORDS = (
    "the quick brown fox jumps over a lazy dog while seven silver GPUs hum under one "
    "gateway that routes every token to the least loaded cache warm replica in under "
    "a millisecond embeddings vectors search ranking query document passage title"
).split()


def make_bodies(n: int, seed: int, min_inputs: int = 1, max_inputs: int = 4) -> list[tuple[bytes, int]]:
    """Request bodies with 1-4 inputs of 4-12 words; a single input is a plain string."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(min_inputs, max_inputs)
        inputs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(k)]
        inp = inputs[0] if k == 1 else inputs
        out.append((json.dumps({"model": MODEL, "input": inp}, separators=(",", ":")).encode(), k))
    return out


def render(port: int, body: bytes, priority: str | None) -> bytes:
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    if priority:
        head += f"X-Priority: {priority}\r\n"
    return head.encode() + b"\r\n" + body


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (Content-Length bodies)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.fut: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.head_end = -1
        self.total = -1
        self.status = 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.fut is None:
            return
        if self.head_end < 0:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(self.buf[:i]).lower()
            self.status = int(head[9:12])
            j = head.find(b"\r\ncontent-length:")
            if j < 0:
                self.fail(ConnectionError("response without content-length"))
                return
            k = head.find(b"\r\n", j + 2)
            clen = int(head[j + 17 : k if k >= 0 else len(head)])
            self.head_end = i + 4
            self.total = i + 4 + clen
        if len(self.buf) >= self.total:
            body = bytes(self.buf[self.head_end : self.total])
            del self.buf[: self.total]
            fut, self.fut = self.fut, None
            self.head_end = self.total = -1
            if not fut.done():
                fut.set_result((self.status, body))

    def fail(self, exc: Exception) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(exc)
        self.fut = None
        if self.transport:
            self.transport.close()

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        self.closed = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError("connection closed"))
        self.fut = None

    def request(self, data: bytes) -> asyncio.Future:
        self.fut = asyncio.get_running_loop().create_future()
        self.head_end = self.total = -1
        assert self.transport is not None
        self.transport.write(data)
        return self.fut


async def connect(port: int) -> Conn:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Conn, "127.0.0.1", port)
    return proto  # type: ignore[return-value]


@dataclass
class Recorder:
    """Latencies (µs) and outcomes of one stream of requests."""

    name: str
    warm_end: float
    end: float
    lat_us: list[float] = field(default_factory=list)
    inputs: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    checked: int = 0
    check_every: int = 25
    seen: int = 0

    def record(self, start: float, done: float, status: int, body: bytes, k: int) -> None:
        if start < self.warm_end or start >= self.end:
            return
        self.seen += 1
        if status != 200:
            key = f"http_{status}"
            self.errors[key] = self.errors.get(key, 0) + 1
            return
        if self.seen % self.check_every == 0:
            # Each client gets exactly its own k embeddings, indexed 0..k-1.
            d = json.loads(body)["data"]
            if [x["index"] for x in d] != list(range(k)):
                self.errors["wrong_answer"] = self.errors.get("wrong_answer", 0) + 1
                return
            self.checked += 1
        self.ok += 1
        self.inputs += k
        self.lat_us.append((done - start) * 1e6)

    def error(self, start: float, kind: str) -> None:
        if self.warm_end <= start < self.end:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def summary(self, duration: float) -> dict:
        lat = sorted(self.lat_us)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] / 1000, 2)

        return {
            "requests_ok": self.ok,
            "errors": self.errors,
            "answers_checked": self.checked,
            "rps": round(self.ok / duration, 1),
            "inputs_per_s": round(self.inputs / duration, 1),
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": round(lat[-1] / 1000, 2) if lat else None,
            "mean_ms": round(sum(lat) / len(lat) / 1000, 2) if lat else None,
        }


async def closed_loop(port, bodies, priority, conns, rec: Recorder, seed: int) -> None:
    loop = asyncio.get_running_loop()
    pre = [(render(port, b, priority), k) for b, k in bodies]

    async def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        c = await connect(port)
        while True:
            data, k = pre[rng.randrange(len(pre))]
            start = loop.time()
            if start >= rec.end:
                break
            try:
                if c.closed:
                    c = await connect(port)
                status, body = await c.request(data)
            except (ConnectionError, OSError):
                rec.error(start, "connection")
                continue
            rec.record(start, loop.time(), status, body, k)
        if c.transport:
            c.transport.close()

    await asyncio.gather(*(worker(w) for w in range(conns)))


async def open_loop(port, bodies, priority, rate, rec: Recorder, t0: float, seed: int,
                    max_conns: int = 512, drain_s: float = 10.0) -> None:
    """Requests at t0 + i / rate until rec.end; latency from the intended start."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    pre = [(render(port, b, priority), k) for b, k in bodies]
    idle: list[Conn] = []
    opened = 0
    waiters: asyncio.Queue[Conn] = asyncio.Queue()
    tasks: set[asyncio.Task] = set()

    async def get_conn() -> Conn:
        nonlocal opened
        while idle:
            c = idle.pop()
            if not c.closed:
                return c
            opened -= 1
        if opened < max_conns:
            opened += 1
            try:
                return await connect(port)
            except OSError:
                opened -= 1
                raise
        return await waiters.get()

    def put_conn(c: Conn) -> None:
        nonlocal opened
        if c.closed:
            opened -= 1
            return
        if waiters._getters:  # type: ignore[attr-defined]  # someone waits: hand over
            waiters.put_nowait(c)
        else:
            idle.append(c)

    async def one(intended: float, data: bytes, k: int) -> None:
        try:
            c = await get_conn()
        except OSError:
            rec.error(intended, "connect")
            return
        try:
            status, body = await c.request(data)
        except (ConnectionError, OSError):
            rec.error(intended, "connection")
            put_conn(c)
            return
        rec.record(intended, loop.time(), status, body, k)
        put_conn(c)

    i = 0
    while True:
        intended = t0 + i / rate
        if intended >= rec.end:
            break
        now = loop.time()
        if intended > now:
            await asyncio.sleep(intended - now)
        data, k = pre[rng.randrange(len(pre))]
        t = asyncio.create_task(one(intended, data, k))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        done, pending = await asyncio.wait(tasks, timeout=drain_s)
        for t in pending:
            t.cancel()
        if pending:
            rec.errors["unfinished"] = rec.errors.get("unfinished", 0) + len(pending)
    for c in idle:
        if c.transport:
            c.transport.close()


# ---------------------------------------------------------------------------------------
# runs


def measure(stack: Stack, name: str, streams: list[dict], warmup: float, duration: float) -> dict:
    """Run streams together: each {kind: closed|open, priority, conns|rate}. Returns results."""
    stack.quiesce()
    bodies = make_bodies(2000, seed=len(name))
    m0 = parse_prom(stack.metrics())
    s0 = stack.sim_stats()
    w0 = time.monotonic()
    pids = {"gateway": stack.gw.pid, "sim": stack.sim.pid, "loadgen": os.getpid()}

    async def main() -> tuple[list[Recorder], dict]:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        recs = []
        coros = []
        for j, s in enumerate(streams):
            rec = Recorder(s["label"], warm_end=t0 + warmup, end=t0 + warmup + duration)
            recs.append(rec)
            if s["kind"] == "closed":
                coros.append(closed_loop(stack.gw_port, bodies, s["priority"], s["conns"], rec, j + 1))
            else:
                coros.append(open_loop(stack.gw_port, bodies, s["priority"], s["rate"], rec, t0, j + 1))

        async def cpu_probe() -> dict:
            await asyncio.sleep(max(0.0, t0 + warmup - loop.time()))
            c0 = {k: cpu_seconds(p) for k, p in pids.items()}
            b0 = system_busy_seconds()
            await asyncio.sleep(duration)
            c1 = {k: cpu_seconds(p) for k, p in pids.items()}
            b1 = system_busy_seconds()
            out = {k: round(100 * (c1[k] - c0[k]) / duration, 1) for k in pids}
            # Everything else the machine did meanwhile (other users' builds, tests, ...).
            out["others"] = round(100 * (b1 - b0) / duration - sum(out.values()), 1)
            return out

        cpu_task = asyncio.create_task(cpu_probe())
        try:
            await asyncio.wait_for(asyncio.gather(*coros), warmup + duration + 60)
        except asyncio.TimeoutError:
            for rec in recs:
                rec.errors["run_timeout"] = 1
        return recs, await cpu_task

    recs, cpu = asyncio.run(main())
    s1 = stack.sim_stats()
    wall = time.monotonic() - w0
    time.sleep(0.7)  # shards publish metrics every 500 ms
    delta = prom_delta(m0, parse_prom(stack.metrics()))
    calls = s1["requests_total"] - s0["requests_total"]
    inputs = s1["requests_finished"] - s0["requests_finished"]
    tokens = s1["prompt_tokens"] - s0["prompt_tokens"]
    a = stack.args
    busy_us = calls * a.call_overhead_us + inputs * a.per_input_us + tokens * a.prefill_us_per_token
    res = {
        "name": name,
        "gateway": stack.gw_mode,
        "warmup_s": warmup,
        "duration_s": duration,
        "streams": [],
        "upstream": {
            "calls": calls,
            "inputs": inputs,
            "mean_inputs_per_call": round(inputs / calls, 2) if calls else None,
            # Engine time the cost model charged / wall time of the run (warm-up and the
            # last requests' drain included): how saturated the simulated backend was
            # (the sim's 1 ms step-end timer rounding is not counted, so ~1 = saturated).
            "engine_busy_est": round(busy_us / 1e6 / wall, 3),
        },
        "batching": batch_summary(delta),
        "cpu_percent_of_one_core": cpu,
    }
    for s, rec in zip(streams, recs):
        res["streams"].append({**{k: v for k, v in s.items()}, **rec.summary(duration)})
    return res


def show(r: dict) -> None:
    for s in r["streams"]:
        load = f"c={s['conns']}" if s["kind"] == "closed" else f"{s['rate']:g}/s"
        errs = "" if not s["errors"] else f" errors={s['errors']}"
        print(
            f"  {r['name']:<28} {s['label']:<10} {load:>8}  rps {s['rps']:>7}  p50 {s['p50_ms']} ms"
            f"  p99 {s['p99_ms']} ms{errs}",
            flush=True,
        )
    b = " ".join(
        f"{q}: {v['mean_requests_per_batch']} req/batch {v['flush_reasons']}" for q, v in r["batching"].items()
    )
    print(
        f"  {'':<28} upstream {r['upstream']['calls']} calls, {r['upstream']['mean_inputs_per_call']} inputs/call;"
        f" cpu {r['cpu_percent_of_one_core']}; {b}",
        flush=True,
    )


def plan(args) -> list[tuple[str, str, list[dict]]]:
    """(name, gateway mode, streams) of every run."""
    C = args.conns
    runs: list[tuple[str, str, list[dict]]] = []
    modes = [("off", "off", None), ("on/default", "on", None), ("on/batch", "on", "batch"),
             ("on/real-time", "on", "real-time")]
    if args.quick:
        modes = [modes[0], modes[2]]
    for label, gw, prio in modes:
        runs.append((f"closed {label}", gw, [
            {"label": prio or "default", "kind": "closed", "priority": prio, "conns": C}]))
    if not args.quick:
        runs.append(("closed on-adaptive/batch", "on-adaptive", [
            {"label": "batch", "kind": "closed", "priority": "batch", "conns": C}]))
    for rate in args.rates:
        for label, gw, prio in modes:
            runs.append((f"open {label}", gw, [
                {"label": prio or "default", "kind": "open", "priority": prio, "rate": rate}]))
    rt = {"label": "real-time", "kind": "open", "priority": "real-time", "rate": args.rt_rate}
    bg = {"label": "batch-bg", "kind": "closed", "priority": "batch", "conns": C}
    runs.append(("mixed: real-time alone", "on", [rt]))
    runs.append(("mixed: real-time + batch", "on", [rt, bg]))
    if not args.quick:
        off_rt = {**rt, "label": "latency", "priority": None}
        off_bg = {**bg, "label": "bulk-bg", "priority": None}
        runs.append(("mixed: off, probe + bulk", "off", [off_rt, off_bg]))
    return runs


def quality_running() -> bool:
    """Whether the CPU-heavy routing benchmark (bench/quality/run.py) runs now."""
    out = subprocess.run(["pgrep", "-f", "quality/run.py"], capture_output=True, text=True).stdout.split()
    return any(int(p) != os.getpid() for p in out)


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_rev": rev + (" (with uncommitted changes)" if dirty else ""),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few seconds: closed off/batch and the mixed run")
    ap.add_argument("--duration", type=float, help="measured seconds per run (full 8, quick 1)")
    ap.add_argument("--warmup", type=float, help="unmeasured seconds per run (full 2, quick 0.5)")
    ap.add_argument("--conns", type=int, default=64, help="closed-loop connections (default 64)")
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                    help="open-loop rates, req/s (full 100,300,1000,2000,3000; quick none)")
    ap.add_argument("--rt-rate", type=float, default=50, help="real-time probe rate of the mixed run, req/s")
    ap.add_argument("--call-overhead-us", type=int, default=2000, help="sim --call-overhead-us (default 2000)")
    ap.add_argument("--per-input-us", type=int, default=50, help="sim --embedding-us-per-input (default 50)")
    ap.add_argument("--prefill-us-per-token", type=int, default=1, help="sim --prefill-us-per-token (default 1)")
    ap.add_argument("--max-num-seqs", type=int, default=1024, help="sim --max-num-seqs (default 1024)")
    ap.add_argument("--out", help="write <out>.json and <out>.md (full default: bench/results/batching)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release first")
    args = ap.parse_args()
    if args.duration is None:
        args.duration = 1.0 if args.quick else 8.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 2.0
    if args.rates is None:
        args.rates = [] if args.quick else [100, 300, 1000, 2000, 3000]
    if args.out is None:
        args.out = (os.path.join(tempfile.gettempdir(), "batching-quick") if args.quick
                    else os.path.join(ROOT, "bench/results/batching"))

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: (kill_children(), sys.exit(130)))
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "shardgate", "-p", "shardgate-sim"],
                       cwd=ROOT, check=True)
    others = quality_running()
    info = machine()
    info["concurrent_quality_benchmark"] = others
    if others:
        print("warning: bench/quality/run.py is running; figures are disturbed", file=sys.stderr)

    workdir = tempfile.mkdtemp(prefix="shardgate-batching-")
    stack = Stack(args, workdir)
    results = []
    t_start = time.monotonic()
    capacity: dict[str, float] = {}  # closed-loop rps per "mode label"
    info["binaries"] = stack.copy_binaries()
    try:
        stack.start_sim()
        for name, mode, streams in plan(args):
            kind, _, label = name.partition(" ")
            if kind == "open" and label in capacity and streams[0]["rate"] > 1.5 * capacity[label]:
                print(f"  {name:<28} {streams[0]['rate']:g}/s skipped: above 1.5 x closed-loop capacity "
                      f"({capacity[label]:g} rps)", flush=True)
                results.append({"name": name, "skipped": f"rate above 1.5 x closed-loop capacity "
                                f"({capacity[label]:g} rps)", "streams": streams})
                continue
            stack.start_gateway(mode)
            r = measure(stack, name, streams, args.warmup, args.duration)
            if quality_running():
                r["disturbed_by_quality_benchmark"] = True
                info["concurrent_quality_benchmark"] = True
            show(r)
            results.append(r)
            if kind == "closed":
                capacity[label] = r["streams"][0]["rps"]
    finally:
        kill_children()
        import shutil

        shutil.rmtree(os.path.join(workdir, "bin"), ignore_errors=True)  # logs and configs stay
    doc = {
        "machine": info,
        "command": " ".join(["python3", "bench/batching/run.py", *sys.argv[1:]]),
        "sim_command": " ".join(["target/release/shardgate-sim", *stack.sim_cmd()[1:]]),
        "cost_model": {
            "call_overhead_us": args.call_overhead_us,
            "embedding_us_per_input": args.per_input_us,
            "prefill_us_per_token": args.prefill_us_per_token,
            "max_num_seqs": args.max_num_seqs,
        },
        "policy": {q: {"max_latency_ms": l, "max_batch_size": n} for q, (l, n) in QUEUES.items()},
        "workload": "1-4 inputs per request (uniform), 4-12 words each; a single input is a plain string",
        "wall_s": round(time.monotonic() - t_start, 1),
        "runs": results,
    }
    doc["summary"] = summarize(doc)
    with open(args.out + ".json", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    keep = ""
    if os.path.exists(args.out + ".md"):
        with open(args.out + ".md") as f:
            old = f.read()
        if NOTES_MARK in old:
            keep = old.split(NOTES_MARK, 1)[1]
    with open(args.out + ".md", "w") as f:
        f.write(markdown(doc, keep))
    print(f"wrote {args.out}.json and {args.out}.md ({doc['wall_s']} s)")
    return 0


# ---------------------------------------------------------------------------------------
# report


def find(doc: dict, name: str, rate: float | None = None) -> dict | None:
    for r in doc["runs"]:
        if r["name"] != name or r.get("skipped"):
            continue
        if rate is None or r["streams"][0].get("rate") == rate:
            return r
    return None


LABELS = ("off", "on/default", "on/batch", "on/real-time", "on-adaptive/batch")


def queue_of(label: str) -> str | None:
    if label == "off":
        return None
    return label.split("/", 1)[1]


def clean(st: dict) -> bool:
    """No errors of any kind in a stream."""
    return not st["errors"]


def summarize(doc: dict) -> dict:
    s: dict = {"closed": {}, "open": {}, "goals": {}}
    off = find(doc, "closed off")
    base_rps = off["streams"][0]["rps"] if off else None
    for label in LABELS:
        r = find(doc, f"closed {label}")
        if not r:
            continue
        st = r["streams"][0]
        s["closed"][label] = {
            "rps": st["rps"],
            "throughput_x": round(st["rps"] / base_rps, 2) if base_rps else None,
            "p50_ms": st["p50_ms"],
            "p99_ms": st["p99_ms"],
            "upstream_inputs_per_call": r["upstream"]["mean_inputs_per_call"],
        }
    rates = sorted({r["streams"][0]["rate"] for r in doc["runs"] if r["name"].startswith("open ")})
    low = find(doc, "open off", rates[0]) if rates else None
    low_p99 = low["streams"][0]["p99_ms"] if low and clean(low["streams"][0]) else None
    for label in LABELS[1:]:
        q = queue_of(label)
        bound = QUEUES[q][0] if q in QUEUES else None
        rows = {}
        best = None
        for rate in rates:
            r = find(doc, f"open {label}", rate)
            if not r:
                continue
            st = r["streams"][0]
            o = find(doc, "open off", rate)
            ost = o["streams"][0] if o else None
            row = {
                "achieved_rps": st["rps"],
                "p50_ms": st["p50_ms"],
                "p99_ms": st["p99_ms"],
                "errors": sum(st["errors"].values()),
                "added_p99_vs_off_same_rate_ms": (
                    round(st["p99_ms"] - ost["p99_ms"], 2)
                    if ost and clean(ost) and clean(st) and st["p99_ms"] is not None else None),
                "added_p99_vs_off_lowest_rate_ms": (
                    round(st["p99_ms"] - low_p99, 2) if low_p99 is not None and clean(st) else None),
            }
            a = row["added_p99_vs_off_lowest_rate_ms"]
            row["within_max_latency"] = a is not None and bound is not None and a <= bound
            if row["within_max_latency"] and st["rps"] >= 0.97 * rate:
                best = rate
            rows[f"{rate:g}"] = row
        if rows:
            s["open"][label] = rows
        c = s["closed"].get(label)
        if c:
            s["goals"][label] = {
                "throughput_x_closed_loop": c["throughput_x"],
                "max_latency_ms": bound,
                "highest_open_rate_within_bound": best,
                "off_capacity_rps": base_rps,
                "x_off_capacity_at_that_rate": round(best / base_rps, 2) if best and base_rps else None,
            }
    alone, mixed = find(doc, "mixed: real-time alone"), find(doc, "mixed: real-time + batch")
    if alone and mixed:
        a, m = alone["streams"][0], mixed["streams"][0]
        bq = mixed["batching"].get("real-time", {})
        s["real-time under saturation"] = {
            "alone_p50_ms": a["p50_ms"],
            "alone_p99_ms": a["p99_ms"],
            "saturated_p50_ms": m["p50_ms"],
            "saturated_p99_ms": m["p99_ms"],
            "added_p99_ms": round(m["p99_ms"] - a["p99_ms"], 2) if m["p99_ms"] and a["p99_ms"] else None,
            "added_p99_vs_off_lowest_rate_ms": round(m["p99_ms"] - low_p99, 2) if low_p99 and m["p99_ms"] else None,
            "gateway_queue_wait_mean_ms": bq.get("queue_wait_mean_ms"),
            "gateway_queue_wait_le_10ms": bq.get("queue_wait_le_10ms"),
            "gateway_queue_wait_le_25ms": bq.get("queue_wait_le_25ms"),
            "background_batch_rps": mixed["streams"][1]["rps"],
            "engine_busy_est": mixed["upstream"]["engine_busy_est"],
            "errors": sum(m["errors"].values()),
        }
    return s


def fmt_batching(r: dict) -> str:
    return "; ".join(
        f"{q}: {v['mean_requests_per_batch']} ({', '.join(f'{k} {n}' for k, n in v['flush_reasons'].items())})"
        for q, v in r["batching"].items()
    ) or "-"


def dash(v) -> str:
    return "-" if v is None else str(v)


def fmt_errors(st: dict) -> str:
    return ", ".join(f"{k} {n}" for k, n in st["errors"].items()) or "0"


NOTES_MARK = "<!-- notes below are kept when run.py rewrites this file -->"


def markdown(doc: dict, keep: str = "") -> str:
    m = doc["machine"]
    cm = doc["cost_model"]
    sm = doc["summary"]
    L = []
    L.append("# Micro-batching benchmark (generated by `bench/batching/run.py`)\n")
    L.append(f"- date: {m['date']}; git rev: `{m['git_rev']}`; CPU: {m['cpu_model']}, {m['cores']} cores;"
             f" kernel {m['kernel']}; Python {m['python']}")
    L.append(f"- command: `{doc['command']}` ({doc['wall_s']} s)")
    L.append("- binaries (copied from target/release at start): " + ", ".join(
        f"`{k}` built {v['built']}, sha256 {v['sha256']}…" for k, v in m.get("binaries", {}).items()))
    L.append(f"- sim: `{doc['sim_command']}`")
    L.append("- gateway: `target/release/shardgate serve -c gateway-<off|on>.yaml --bind 127.0.0.1 "
             "--listen-port P --admin-addr 127.0.0.1:Q --shards 1` (one shard = one core)")
    if m.get("concurrent_quality_benchmark"):
        hit = [r["name"] for r in doc["runs"] if r.get("disturbed_by_quality_benchmark")]
        L.append("- **bench/quality/run.py was running during part of this run: figures are disturbed** "
                 f"(runs: {', '.join(hit) or 'at start'})")
    else:
        L.append("- nothing else ran: bench/quality/run.py was checked before and after every run")
    L.append(f"- cost model: {cm['call_overhead_us']} µs per upstream call + {cm['embedding_us_per_input']} µs per "
             f"input + {cm['prefill_us_per_token']} µs per token, serialized on the sim's engine")
    L.append(f"- workload: {doc['workload']}; {doc['runs'][0]['warmup_s']} s warm-up + "
             f"{doc['runs'][0]['duration_s']} s measured per run")
    L.append("- policy (seed): " + ", ".join(
        f"`{q}` {v['max_latency_ms']} ms / {v['max_batch_size']} inputs" for q, v in doc["policy"].items()) + "\n")

    L.append("## Closed loop\n")
    L.append("| mode | conns | rps | × off | inputs/s | p50 ms | p99 ms | errors | upstream inputs/call | "
             "req/batch (flush reasons) | engine busy | CPU % of a core: gw / sim / loadgen / others |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label in LABELS:
        r = find(doc, f"closed {label}")
        if not r:
            continue
        st = r["streams"][0]
        cpu = r["cpu_percent_of_one_core"]
        x = sm["closed"].get(label, {}).get("throughput_x")
        L.append(f"| {label} | {st['conns']} | {st['rps']} | {x} | {st['inputs_per_s']} | {st['p50_ms']} | "
                 f"{st['p99_ms']} | {fmt_errors(st)} | {r['upstream']['mean_inputs_per_call']} | {fmt_batching(r)} | "
                 f"{r['upstream']['engine_busy_est']} | {cpu['gateway']} / {cpu['sim']} / {cpu['loadgen']} / {cpu.get('others', '-')} |")

    rates = sorted({r["streams"][0]["rate"] for r in doc["runs"] if r["name"].startswith("open ")})
    if rates:
        L.append("\n## Open loop (latency from each request's intended start)\n")
        L.append("| rate | mode | achieved rps | p50 ms | p99 ms | added p99 vs off, same rate | added p99 vs off, "
                 f"{rates[0]:g}/s | queue maxLatency | errors | upstream inputs/call | req/batch (flush reasons) | "
                 "CPU % others |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for rate in rates:
            for label in LABELS:
                r = next((x for x in doc["runs"] if x["name"] == f"open {label}"
                          and x["streams"][0].get("rate") == rate), None)
                if r is None:
                    continue
                if r.get("skipped"):
                    L.append(f"| {rate:g} | {label} | skipped: {r['skipped']} | | | | | | | | | |")
                    continue
                st = r["streams"][0]
                row = sm["open"].get(label, {}).get(f"{rate:g}", {})
                q = queue_of(label)
                bound = f"{QUEUES[q][0]} ms" if q in QUEUES else "-"
                L.append(f"| {rate:g} | {label} | {st['rps']} | {st['p50_ms']} | {st['p99_ms']} | "
                         f"{dash(row.get('added_p99_vs_off_same_rate_ms'))} | "
                         f"{dash(row.get('added_p99_vs_off_lowest_rate_ms'))} | {bound} | {fmt_errors(st)} | "
                         f"{r['upstream']['mean_inputs_per_call']} | {fmt_batching(r)} | "
                         f"{r['cpu_percent_of_one_core'].get('others', '-')} |")

    mixed = [r for r in doc["runs"] if r["name"].startswith("mixed")]
    if mixed:
        L.append("\n## Mixed: real-time probe while the batch queue is saturated\n")
        L.append("| run | stream | load | rps | p50 ms | p90 ms | p99 ms | max ms | errors | "
                 "gateway queue wait: mean ms, ≤ 10 ms, ≤ 25 ms | req/batch (flush reasons) | engine busy | CPU % others |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in mixed:
            for st in r["streams"]:
                load = f"closed c={st['conns']}" if st["kind"] == "closed" else f"open {st['rate']:g}/s"
                q = r["batching"].get(st["priority"] or "default") if r["gateway"] != "off" else None
                wait = (f"{q['queue_wait_mean_ms']}, {100 * q['queue_wait_le_10ms']:.1f} %, "
                        f"{100 * q['queue_wait_le_25ms']:.1f} %") if q else "-"
                L.append(f"| {r['name']} | {st['label']} | {load} | {st['rps']} | {st['p50_ms']} | {st['p90_ms']} | "
                         f"{st['p99_ms']} | {st['max_ms']} | {fmt_errors(st)} | {wait} | {fmt_batching(r)} | "
                         f"{r['upstream']['engine_busy_est']} | {r['cpu_percent_of_one_core'].get('others', '-')} |")

    L.append("\n## Summary (machine-made)\n")
    L.append("```json")
    L.append(json.dumps(sm, indent=1))
    L.append("```\n")
    L.append(NOTES_MARK)
    L.append(keep)
    return "\n".join(L).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
