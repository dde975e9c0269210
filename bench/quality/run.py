#!/usr/bin/env python3
"""Routing-quality benchmark: shardgate's scheduling profiles vs vllm-router.

Starts a heterogeneous pool of `shardgate-sim` backends on 127.0.0.1, then for every
(workload, router, request rate) cell: fresh sims (cold caches), the router under test,
an open-loop Poisson workload of streaming chat completions, and the measurements
(TTFT, end-to-end latency, throughput, prefix-cache hit rate from the sims' /metrics,
error counts). Writes routing-quality.{md,json,png}. See README.md beside this file.

    .venv/bin/python bench/quality/run.py            # full run (~25 min on 2 cores)
    .venv/bin/python bench/quality/run.py --quick    # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

try:
    import aiohttp
except ImportError:  # --help and --report-only work without it
    aiohttp = None

REPO = Path(__file__).resolve().parents[2]
MODEL = "sim-llm"
ADAPTERS = [f"{MODEL}-lora-{i}" for i in range(8)]

# ---------------------------------------------------------------------------------------
# Sim pool: four heterogeneous replicas of one model.
# ---------------------------------------------------------------------------------------

VR_EXTRA: list[str] = []
PREFILL_US = 300  # per uncached prompt token: a 2,000-token miss costs 0.6 s of prefill


@dataclass
class SimSpec:
    name: str
    args: list[str]


SIM_POOL = [
    SimSpec("sim0-base", ["--num-gpu-blocks", "1024"]),
    SimSpec("sim1-slow-decode", ["--num-gpu-blocks", "1024", "--decode-step-us", "16000",
                                 "--decode-step-us-per-seq", "800"]),
    SimSpec("sim2-small-kv", ["--num-gpu-blocks", "640"]),
    SimSpec("sim3-base", ["--num-gpu-blocks", "1024"]),
]
SIM_COMMON = ["--model", MODEL, "--max-num-seqs", "16", "--block-size", "16",
              "--prefill-us-per-token", str(PREFILL_US), "--decode-step-us", "8000",
              "--decode-step-us-per-seq", "400", "--max-loras", "2"]



def sim_flags(spec: SimSpec) -> list[str]:
    """SIM_COMMON with the sim's own flags replacing or adding to it (clap refuses a flag
    given twice)."""
    flags: dict[str, str] = {}
    for lst in (SIM_COMMON, spec.args):
        for k, v in zip(lst[::2], lst[1::2]):
            flags[k] = v
    return [x for kv in flags.items() for x in kv]


# ---------------------------------------------------------------------------------------
# Routers under test.
# ---------------------------------------------------------------------------------------


@dataclass
class RouterSpec:
    key: str  # label in tables and plots
    kind: str  # "shardgate" | "vllm-router"
    policy: str
    shards: int = 2
    pass_saturated: bool = True
    api: str = "chat"  # "chat" or "completions" (same tokens for the sim, see to_completions)
    flags: list = field(default_factory=list)  # extra `shardgate serve` flags (`:name=value`)
    precise: bool = False  # KV-cache events from the sims + the workload's tokenizer (#18)
    replicas: int = 1  # shardgate processes; each request goes to one at random (a DaemonSet)


SHARDGATE_PROFILES = ["round-robin", "least-queue", "prefix-cache-aware", "default",
                      "latency-optimized"]


def router_specs(names: list[str], shards: int) -> list[RouterSpec]:
    out = []
    for n in names:
        parts = n.split(":")
        if parts[0] not in ("shardgate", "vllm-router") or len(parts) < 2:
            raise SystemExit(f"unknown router {n!r} (shardgate:PROFILE[:shards=N][:replicas=N][:strict][:FLAG=V]"
                             "[:completions] or vllm-router:POLICY[:completions])")
        spec = RouterSpec(n, parts[0], parts[1], shards=shards)
        for extra in parts[2:]:
            if extra.startswith("shards=") and spec.kind == "shardgate":
                spec.shards = int(extra.split("=", 1)[1])
            elif extra.startswith("replicas=") and spec.kind == "shardgate":
                spec.replicas = int(extra.split("=", 1)[1])
            elif extra == "strict" and spec.kind == "shardgate":
                spec.pass_saturated = False
            elif extra == "precise" and spec.kind == "shardgate":
                spec.precise = True
            elif extra == "completions":
                spec.api = "completions"
            elif "=" in extra and spec.kind == "shardgate":
                name, value = extra.split("=", 1)
                spec.flags += [f"--{name}", value]
            elif extra == "shim" and spec.kind == "vllm-router":
                raise SystemExit(f"{n}: the render shim is gone; shardgate-sim answers vLLM's "
                                 "render endpoints itself, so use vllm-router:POLICY")
            else:
                raise SystemExit(f"unknown router option {extra!r} in {n}")
        out.append(spec)
    return out


# ---------------------------------------------------------------------------------------
# Process management: every child in its own process group, killed on any exit.
# ---------------------------------------------------------------------------------------

_CHILDREN: list[subprocess.Popen] = []


def spawn(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    f = open(log, "ab")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, env=env)
    f.close()
    _CHILDREN.append(p)
    return p


def stop(p: subprocess.Popen, grace: float = 3.0) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
    else:
        # The leader exited; its group may still hold children.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if p in _CHILDREN:
        _CHILDREN.remove(p)


def stop_all() -> None:
    for p in list(_CHILDREN):
        stop(p, grace=1.0)


def _on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    assert url.startswith("http://127.0.0.1:"), url
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_http(url: str, p: subprocess.Popen, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < end:
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited early with {p.returncode}")
        try:
            code, body = http_get(url, timeout=1.0)
            if code == 200:
                return
            last = f"{code} {body[:200]}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready at {url} after {deadline_s}s: {last}")


# ---------------------------------------------------------------------------------------
# Sims and routers.
# ---------------------------------------------------------------------------------------


class Pool:
    def __init__(self, bins: Path, logdir: Path, kv_events: bool = False):
        self.bins = bins
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []
        self.kv_events = kv_events
        self.kv_ports: list[tuple[int, int]] = []

    def start(self) -> None:
        self.ports = [free_port() for _ in SIM_POOL]
        self.kv_ports = [(free_port(), free_port()) if self.kv_events else (0, 0)
                         for _ in SIM_POOL]
        for i, (spec, port) in enumerate(zip(SIM_POOL, self.ports)):
            cmd = [str(self.bins / "shardgate-sim"), "--host", "127.0.0.1", "--port", str(port),
                   "--seed", str(i), *sim_flags(spec)]
            if self.kv_events:
                pub, replay = self.kv_ports[i]
                cmd += ["--kv-events-port", str(pub), "--kv-events-replay-port", str(replay)]
            for a in ADAPTERS:
                cmd += ["--lora", a]
            self.procs.append(spawn(cmd, self.logdir / f"{spec.name}.log"))
        for p, port, spec in zip(self.procs, self.ports, SIM_POOL):
            wait_http(f"http://127.0.0.1:{port}/health", p, 10, spec.name)

    def stop(self) -> None:
        for p in self.procs:
            stop(p)
        self.procs = []

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def counters(self) -> list[dict]:
        out = []
        for port in self.ports:
            _, text = http_get(f"http://127.0.0.1:{port}/metrics")
            c = {"queries": 0.0, "hits": 0.0}
            for line in text.splitlines():
                if line.startswith("vllm:prefix_cache_queries_total"):
                    c["queries"] += float(line.rsplit(" ", 1)[1])
                elif line.startswith("vllm:prefix_cache_hits_total"):
                    c["hits"] += float(line.rsplit(" ", 1)[1])
            _, stats = http_get(f"http://127.0.0.1:{port}/sim/stats")
            s = json.loads(stats)
            c["finished"] = s.get("requests_finished", 0)
            c["cancelled"] = s.get("requests_cancelled_total", 0)
            out.append(c)
        return out


def shardgate_yaml(ports: list[int], profile: str) -> str:
    docs = ["""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: shardgate
  listeners: [{name: http, protocol: HTTP, port: 8080}]
""", """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pool, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    filters:
    - type: ExtensionRef
      extensionRef: {group: ai.gateway.io, kind: InferencePolicy, name: lb}
    backendRefs: [{name: sim-pool, port: 8000}]
""", f"""apiVersion: ai.gateway.io/v1alpha1
kind: InferencePolicy
metadata: {{name: lb, namespace: default}}
spec:
  loadBalancing: {{algorithm: {profile}}}
"""]
    for i, port in enumerate(ports):
        docs.append(f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sim-pool-{i}
  namespace: default
  labels: {{kubernetes.io/service-name: sim-pool}}
addressType: IPv4
ports: [{{port: {port}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
""")
    return "---\n".join(docs)


SIM_TOKENS_RS = REPO / "sim" / "src" / "tokens.rs"


def sim_token_id(word: str) -> int:
    """shardgate-sim's token id of a word (sim/src/tokens.rs): a canonical decimal below
    2**31 is itself, anything else the top 31 bits of its xxh3-64."""
    if word.isdigit() and len(word) <= 10 and not (len(word) > 1 and word[0] == "0") \
            and int(word) < 2**31:
        return int(word)
    import xxhash  # only precise routers need it: .venv/bin/pip install xxhash
    return xxhash.xxh3_64_intdigest(word.encode()) >> 33


def precise_flags(d: Path, pool: "Pool", vocab: list[str]) -> list[str]:
    """The sims' tokenizer as a WordLevel tokenizer.json over the workload's words, the
    sims' output words, the chat roles and 0..999, a chat template rendering role then
    content (the sim's chat prompt), and one --kv-events per sim."""
    out_words = re.findall(r'^\s+"([a-z]+)",$',
                           SIM_TOKENS_RS.read_text().split("const WORDS")[1].split("];")[0],
                           re.M)
    words = set(vocab) | set(out_words) | {"system", "user", "assistant", "group"} \
        | {str(i) for i in range(1000)}
    vocab_ids = {w: sim_token_id(w) for w in sorted(words)}
    vocab_ids["[UNK]"] = 2**31  # outside the sim's ids
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
           "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
           "post_processor": None, "decoder": None,
           "model": {"type": "WordLevel", "vocab": vocab_ids, "unk_token": "[UNK]"}}
    (d / "tokenizer.json").write_text(json.dumps(tok))
    (d / "chat.jinja").write_text(
        "{% for m in messages %}{{ m.role }} {{ m.content }} {% endfor %}")
    flags = ["--kv-tokenizer", f"{MODEL}={d / 'tokenizer.json'}",
             "--kv-chat-template", f"{MODEL}={d / 'chat.jinja'}"]
    for port, (pub, replay) in zip(pool.ports, pool.kv_ports):
        flags += ["--kv-events", f"127.0.0.1:{port}=127.0.0.1:{pub},replay=127.0.0.1:{replay}"]
    return flags


class Router:
    def __init__(self, spec: RouterSpec, pool: Pool, bins: Path, venv_bin: Path, logdir: Path):
        self.spec = spec
        self.pool = pool
        self.bins = bins
        self.venv_bin = venv_bin
        self.logdir = logdir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.admin = 0

    def start(self) -> None:
        s = self.spec
        self.port = free_port()
        tag = re.sub(r"[^A-Za-z0-9_.-]", "_", s.key)
        if s.kind == "shardgate":
            self.admin = free_port()
            d = Path(tempfile.mkdtemp(prefix="sg-", dir=self.logdir))
            (d / "config.yaml").write_text(shardgate_yaml(self.pool.ports, s.policy))
            cmd = [str(self.bins / "shardgate"), "serve", "-c", str(d / "config.yaml"),
                   "--bind", "127.0.0.1", "--listen-port", str(self.port),
                   "--admin-addr", f"127.0.0.1:{self.admin}", "--shards", str(s.shards),
                   "--ready-file", str(d / "ready.json")]
            if s.pass_saturated:
                cmd.append("--pass-saturated")
            if s.precise:
                cmd += precise_flags(d, self.pool, getattr(self, "vocab", []))
            cmd += s.flags
            env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
            self.proc = spawn(cmd, self.logdir / f"router-{tag}.log", env)
            end = time.monotonic() + 20
            while not (d / "ready.json").exists():
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"shardgate did not start (see router-{tag}.log)")
                time.sleep(0.02)
            wait_http(f"http://127.0.0.1:{self.admin}/readyz", self.proc, 20, "shardgate")
            time.sleep(0.3)  # a few telemetry scrapes before the first request
        else:
            # The sims themselves answer the /v1/chat/completions/render and
            # /v1/completions/render calls cache_aware makes for token ids.
            prom = self.prom = free_port()
            workers = self.pool.urls()
            cmd = [str(self.venv_bin / "vllm-router"), "--host", "127.0.0.1",
                   "--port", str(self.port), "--policy", s.policy,
                   "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom),
                   "--log-level", "warning", *VR_EXTRA, "--worker-urls", *workers]
            self.proc = spawn(cmd, self.logdir / f"router-{tag}.log")
            wait_http(f"http://127.0.0.1:{self.port}/health", self.proc, 60, "vllm-router")

    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gateway_metrics(self) -> dict:
        """The router's own counters at the end of a cell: shardgate's status codes and
        upstream errors; vllm-router's prefix-routing decisions (prefix_hit / prefix_miss,
        or missing_tokens when a render call failed) and render calls."""
        if self.spec.kind == "shardgate":
            url = f"http://127.0.0.1:{self.admin}/metrics"
            keep = ("gateway_requests_total", "gateway_upstream_errors_total")
        else:
            url = f"http://127.0.0.1:{self.prom}/metrics"
            keep = ("vllm_router_prefix_routing_decisions_total",
                    "vllm_router_kv_routing_inputs_total")
        try:
            _, text = http_get(url)
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith(keep):
                k, v = line.rsplit(" ", 1)
                if float(v) != 0:
                    out[k] = float(v)
        return out

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


# ---------------------------------------------------------------------------------------
# Workloads. Tokens are whitespace-separated words (the sim's tokenizer).
# ---------------------------------------------------------------------------------------


def make_vocab(rng: random.Random, n: int = 4000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(n)]


def words(rng: random.Random, vocab: list[str], n: int) -> str:
    return " ".join(rng.choices(vocab, k=n))


@dataclass
class Req:
    body: dict
    tag: str  # workload class, e.g. "long", "short", adapter name
    on_done: object = None  # callback(answer_text) for multi-turn state


class SharedPrefix:
    """inference-perf `shared_prefix`, scaled down: G groups × P users; each group has a
    long system prompt, each request adds a question; a user's next turn appends the
    previous answer and a new question (multi-turn, up to `turns`)."""

    name = "shared-prefix"

    def __init__(self, seed: int, groups=12, users=8, system_words=2000, question_words=200,
                 turns=3, max_tokens=16):
        rng = random.Random(seed)
        self.vocab = make_vocab(rng)
        self.systems = [f"group {g} " + words(rng, self.vocab, system_words) for g in range(groups)]
        self.users = users
        self.turns = turns
        self.qw = question_words
        self.max_tokens = max_tokens
        self.rng = random.Random(seed + 1)
        self.hist: dict[tuple[int, int], list[tuple[str, str]]] = {}
        self.busy: set[tuple[int, int]] = set()
        self.describe = (f"{groups} groups × {users} users, system prompt {system_words} words, "
                         f"question {question_words} words, up to {turns} turns (each follow-up "
                         f"appends the previous answer), max_tokens {max_tokens}")

    def next(self) -> Req:
        g = self.rng.randrange(len(self.systems))
        u = self.rng.randrange(self.users)
        key = (g, u)
        q = words(self.rng, self.vocab, self.qw)
        hist = self.hist.get(key, [])
        if key in self.busy:
            hist, key = [], None  # the user is waiting: a new conversation of the group
        elif len(hist) >= self.turns:
            hist = []
            self.hist[key] = []
        msgs = [{"role": "system", "content": self.systems[g]}]
        for pq, pa in hist:
            msgs += [{"role": "user", "content": pq}, {"role": "assistant", "content": pa}]
        msgs.append({"role": "user", "content": q})
        body = {"model": MODEL, "messages": msgs, "max_tokens": self.max_tokens, "stream": True}
        if key is not None:
            self.busy.add(key)

        def done(answer: str | None, key=key, q=q):
            if key is None:
                return
            self.busy.discard(key)
            if answer is not None:
                self.hist.setdefault(key, []).append((q, answer))

        return Req(body, f"turn{len(hist) + 1}", done)


class Mixed:
    """Mixed short and long prompts, no shared prefixes: 70 % short chat (20–200 words,
    48 output tokens), 30 % long documents (1,500–3,000 words, 16 output tokens)."""

    name = "mixed"

    def __init__(self, seed: int):
        rng = random.Random(seed)
        self.vocab = make_vocab(rng)
        self.rng = random.Random(seed + 1)
        self.describe = ("70 % short (20–200 words, max_tokens 48), 30 % long (1,500–3,000 "
                         "words, max_tokens 16); unique prompts, no shared prefix")

    def next(self) -> Req:
        if self.rng.random() < 0.7:
            n, mt, tag = self.rng.randint(20, 200), 48, "short"
        else:
            n, mt, tag = self.rng.randint(1500, 3000), 16, "long"
        body = {"model": MODEL, "messages": [{"role": "user", "content":
                                              words(self.rng, self.vocab, n)}],
                "max_tokens": mt, "stream": True}
        return Req(body, tag)


class LoraMix:
    """LoRA mix: every request names one of 8 adapters (Zipf-skewed, s = 1.0); every sim
    can load all 8 but runs at most 2 at once (`--max-loras 2`); prompts 100–400 words,
    max_tokens 32."""

    name = "lora"

    def __init__(self, seed: int):
        rng = random.Random(seed)
        self.vocab = make_vocab(rng)
        self.rng = random.Random(seed + 1)
        w = [1.0 / (i + 1) for i in range(len(ADAPTERS))]
        self.weights = [x / sum(w) for x in w]
        self.describe = ("8 LoRA adapters, Zipf(1.0) popularity, each sim `--max-loras 2`; "
                         "prompts 100–400 words, max_tokens 32")

    def next(self) -> Req:
        a = self.rng.choices(ADAPTERS, weights=self.weights)[0]
        body = {"model": a, "messages": [{"role": "user", "content":
                                          words(self.rng, self.vocab, self.rng.randint(100, 400))}],
                "max_tokens": 32, "stream": True}
        return Req(body, a)


WORKLOADS = {"shared-prefix": SharedPrefix, "mixed": Mixed, "lora": LoraMix}

# ---------------------------------------------------------------------------------------
# Open-loop load.
# ---------------------------------------------------------------------------------------


@dataclass
class Result:
    tag: str
    start: float
    ttft: float | None = None
    end: float | None = None
    status: int = 0
    error: str = ""
    tokens: int = 0


def to_completions(body: dict) -> dict:
    """The same request on /v1/completions: the prompt is, per message, the role then the
    content, which is exactly the sim's chat prompt, so the sim sees the same tokens."""
    out = {k: v for k, v in body.items() if k != "messages"}
    prompt = " ".join(f"{m['role']} {m['content']}" for m in body["messages"])
    return {"model": out.pop("model"), "prompt": prompt, **out}


async def one(session: aiohttp.ClientSession, base: str, api: str, req: Req, t0: float,
              timeout_s: float) -> Result:
    r = Result(req.tag, time.perf_counter() - t0)
    answer: list[str] = []
    if api == "completions":
        url, body = base + "/v1/completions", to_completions(req.body)
    else:
        url, body = base + "/v1/chat/completions", req.body
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=body) as resp:
                r.status = resp.status
                if resp.status != 200:
                    await resp.read()
                    r.error = f"http_{resp.status}"
                else:
                    finished = False
                    async for line in resp.content:
                        if not line.startswith(b"data: "):
                            continue
                        data = line[6:].strip()
                        if data == b"[DONE]":
                            finished = True
                            break
                        ev = json.loads(data)
                        ch = ev.get("choices") or []
                        if not ch:
                            continue
                        c = ch[0].get("text") if api == "completions" else \
                            ch[0].get("delta", {}).get("content")
                        if c:
                            if r.ttft is None:
                                r.ttft = time.perf_counter() - t0 - r.start
                            answer.append(c)
                            r.tokens += 1
                    if not finished:
                        r.error = "stream_truncated"
    except TimeoutError:
        r.error = "timeout"
    except aiohttp.ClientError as e:
        r.error = f"client_{type(e).__name__}"
    except asyncio.CancelledError:
        r.error = "cancelled"
    r.end = time.perf_counter() - t0
    if req.on_done is not None:
        req.on_done("".join(answer).strip() if not r.error else None)
    return r


async def run_load(base_urls: list[str], api: str, wl, rate: float, duration: float, seed: int,
                   drain_s: float, timeout_s: float) -> tuple[list[Result], float]:
    rng = random.Random(seed)
    # Several replicas (a DaemonSet behind a node-spreading load balancer): each
    # request goes to one of them at random, so a conversation's turns may not meet.
    spread = random.Random(seed + 1)
    arrivals = []
    t = rng.expovariate(rate)
    while t < duration:
        arrivals.append(t)
        t += rng.expovariate(rate)
    conn = aiohttp.TCPConnector(limit=0, force_close=False, keepalive_timeout=30)
    tasks: list[asyncio.Task] = []
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as s:
        t0 = time.perf_counter()
        for a in arrivals:
            delay = a - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            base = base_urls[0] if len(base_urls) == 1 else spread.choice(base_urls)
            tasks.append(asyncio.create_task(one(s, base, api, wl.next(), t0, timeout_s)))
        done, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
        for p in pending:
            p.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        results = [x.result() for x in tasks if x.done() and not x.cancelled()]
        for x in tasks:
            if x.cancelled():
                results.append(Result("?", 0.0, error="cancelled"))
    return results, len(arrivals) / duration


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(results: list[Result], before: list[dict], after: list[dict]) -> dict:
    ok = [r for r in results if not r.error and r.ttft is not None]
    ttft = [r.ttft for r in ok]
    e2e = [r.end - r.start for r in ok]
    span = (max(r.end for r in ok) - min(r.start for r in results)) if ok else 0.0
    codes: dict[str, int] = {}
    for r in results:
        if r.error:
            codes[r.error] = codes.get(r.error, 0) + 1
    per_sim = []
    tq = th = 0.0
    for spec, b, a in zip(SIM_POOL, before, after):
        q, h = a["queries"] - b["queries"], a["hits"] - b["hits"]
        tq, th = tq + q, th + h
        per_sim.append({"sim": spec.name, "finished": a["finished"] - b["finished"],
                        "cancelled": a["cancelled"] - b["cancelled"],
                        "hit_rate": (h / q) if q else None, "prompt_tokens": q})
    s5 = sum(v for k, v in codes.items() if k.startswith("http_5"))
    return {
        "sent": len(results), "ok": len(ok),
        "throughput_rps": (len(ok) / span) if span else 0.0,
        "ttft_mean": (sum(ttft) / len(ttft)) if ttft else None,
        "ttft_p50": pct(ttft, 50), "ttft_p90": pct(ttft, 90), "ttft_p99": pct(ttft, 99),
        "e2e_mean": (sum(e2e) / len(e2e)) if e2e else None,
        "e2e_p50": pct(e2e, 50), "e2e_p90": pct(e2e, 90), "e2e_p99": pct(e2e, 99),
        "hit_rate": (th / tq) if tq else None,
        "errors": codes, "n_5xx": s5, "n_503": codes.get("http_503", 0),
        "n_429": codes.get("http_429", 0),
        "per_sim": per_sim,
        "ttft_by_tag": {t: (sum(v) / len(v)) for t, v in _group(ok).items()},
    }


def _group(ok: list[Result]) -> dict[str, list[float]]:
    g: dict[str, list[float]] = {}
    for r in ok:
        g.setdefault(r.tag, []).append(r.ttft)
    return g


# ---------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------


def fmt(x, nd=3):
    return "–" if x is None else f"{x:.{nd}f}"


def headline(cells: list[dict]) -> dict:
    """Shared-prefix goal check at the two highest rates: prefix-aware mean TTFT vs
    round-robin and vs vllm-router cache_aware; every profile's throughput vs round-robin."""
    sp = [c for c in cells if c["workload"] == "shared-prefix"]
    out: dict = {}
    for rate in sorted({c["rate"] for c in sp})[-2:]:
        by = {c["router"]: c["summary"] for c in sp if c["rate"] == rate}
        pa, rr = by.get("shardgate:prefix-cache-aware"), by.get("shardgate:round-robin")
        h: dict = {"routers": {k: {x: v[x] for x in ("ttft_mean", "ttft_p90", "throughput_rps",
                                                     "hit_rate", "n_5xx", "ok", "sent")}
                               for k, v in by.items()}}

        def ratio(a, b, key="ttft_mean"):
            return (a[key] / b[key]) if a and b and a.get(key) and b.get(key) else None
        h["prefix_vs_rr"] = ratio(pa, rr)
        # Runs from before the sims answered /render put cache_aware behind a shim
        # (`:shim` rows); in those, the shim rows are the cache-aware ones.
        h["prefix_vs_vllm-router:cache_aware"] = ratio(
            pa, by.get("vllm-router:cache_aware:shim") or by.get("vllm-router:cache_aware"))
        h["throughput_vs_rr"] = {k: ratio(v, rr, "throughput_rps") for k, v in by.items()}
        out[str(rate)] = h
    return out


def md_headline(hl: dict) -> list[str]:
    L = ["## Headline: shared-prefix near saturation", ""]
    for rate, h in hl.items():
        L += [f"Offered {rate} req/s:", "",
              "| router | TTFT mean | TTFT p90 | thr req/s | thr vs shardgate RR | hit | "
              "5xx | ok/sent |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for k, v in h["routers"].items():
            t = h["throughput_vs_rr"].get(k)
            L.append(f"| {k} | {fmt(v['ttft_mean'])} | {fmt(v['ttft_p90'])} | "
                     f"{v['throughput_rps']:.2f} | {fmt(t, 2)} | {fmt(v['hit_rate'], 2)} | "
                     f"{v['n_5xx']} | {v['ok']}/{v['sent']} |")
        L += ["", f"- prefix-cache-aware / round-robin mean TTFT: **{fmt(h['prefix_vs_rr'], 2)}** "
              "(goal ≤ 0.5)",
              f"- prefix-cache-aware / vllm-router cache_aware mean TTFT: "
              f"**{fmt(h.get('prefix_vs_vllm-router:cache_aware'), 2)}** (goal ≤ 0.9)", ""]
    return L


def md_report(meta: dict, cells: list[dict], plan: dict) -> str:
    L = [f"# Routing-quality benchmark ({meta['date']})", ""]
    L += ["Generated by `bench/quality/run.py`; scenario and sim settings in "
          "[`bench/quality/README.md`](../quality/README.md). Raw numbers: "
          "[`routing-quality.json`](routing-quality.json).", ""]
    L += ["| | |", "|---|---|"]
    for k in ["command", "shardgate", "vllm_router", "python", "cpu", "cores", "kernel",
              "wall_time_s"]:
        L.append(f"| {k} | {meta.get(k)} |")
    L.append("")
    L += ["Sim pool (one model, all 127.0.0.1):", ""]
    L += ["| sim | flags (plus " + " ".join(SIM_COMMON) + ", 8 `--lora` adapters) |", "|---|---|"]
    for s in SIM_POOL:
        L.append(f"| {s.name} | {' '.join(s.args)} |")
    L.append("")
    L += md_headline(headline(cells))
    if meta.get("analysis"):
        L += [meta["analysis"].rstrip(), ""]
    for wname, wplan in plan.items():
        wc = [c for c in cells if c["workload"] == wname]
        if not wc:
            continue
        L += [f"## Workload `{wname}`", "", wplan["describe"], "",
              f"Open loop, Poisson arrivals, {wplan['duration']} s per rate, drain ≤ "
              f"{wplan['drain']} s; fresh sims and router per cell. Times in seconds; "
              "throughput = completed requests / (last completion − first send); hit = "
              "Σ prefix-cache hits / Σ queries over the sims (token-weighted); share = "
              "requests finished per sim (sim0/sim1/sim2/sim3).", ""]
        L += ["| router | rate | sent | ok | thr req/s | TTFT mean | p50 | p90 | p99 | E2E mean "
              "| p50 | p90 | p99 | hit | 5xx | 503 | 429 | other err | share | hit per sim |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
              "|---:|---|---|---|"]
        for c in sorted(wc, key=lambda c: (c["rate"], wplan["routers"].index(c["router"]))):
            s = c["summary"]
            other = {k: v for k, v in s["errors"].items()
                     if not k.startswith("http_5") and k != "http_429"}
            share = "/".join(str(p["finished"]) for p in s["per_sim"])
            hps = "/".join(fmt(p["hit_rate"], 2) for p in s["per_sim"])
            L.append(f"| {c['router']} | {c['rate']:g} | {s['sent']} | {s['ok']} | "
                     f"{s['throughput_rps']:.2f} | {fmt(s['ttft_mean'])} | {fmt(s['ttft_p50'])} | "
                     f"{fmt(s['ttft_p90'])} | {fmt(s['ttft_p99'])} | {fmt(s['e2e_mean'])} | "
                     f"{fmt(s['e2e_p50'])} | {fmt(s['e2e_p90'])} | {fmt(s['e2e_p99'])} | "
                     f"{fmt(s['hit_rate'], 2)} | {s['n_5xx']} | {s['n_503']} | {s['n_429']} | "
                     f"{json.dumps(other) if other else ''} | {share} | {hps} |")
        L.append("")
    return "\n".join(L)


def labels(routers: list[str]) -> dict:
    """Plot labels; runs from before the sims answered /render also had `:shim` rows, and
    their plain cache_aware rows were vllm-router's load-only fallback."""
    if "vllm-router:cache_aware:shim" not in routers:
        return {}
    return {"vllm-router:cache_aware": "vllm-router:cache_aware (no /render: load-only fallback)",
            "vllm-router:cache_aware:shim": "vllm-router:cache_aware + render shim"}


def plot(cells: list[dict], routers: list[str], path: Path, title_extra: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sp = [c for c in cells if c["workload"] == "shared-prefix"]
    if not sp:
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    styles = {"vllm-router": "--", "shardgate": "-"}
    for r in routers:
        rc = sorted([c for c in sp if c["router"] == r], key=lambda c: c["rate"])
        if not rc:
            continue
        xs = [c["rate"] for c in rc]
        ls = styles["vllm-router" if r.startswith("vllm-router") else "shardgate"]
        label = labels(routers).get(r, r)
        for ax, k in zip(axes, ["ttft_mean", "ttft_p90"]):
            ys = [c["summary"][k] for c in rc]
            ax.plot(xs, ys, ls, marker="o", label=label)
    for ax, k in zip(axes, ["mean", "p90"]):
        ax.set_xlabel("offered request rate (req/s, Poisson)")
        ax.set_ylabel(f"{k} TTFT (s, log scale)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{k} time to first token")
    axes[0].legend(fontsize=8)
    fig.suptitle("shared-prefix workload: TTFT vs request rate per router " + title_extra)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions(venv_bin: Path, cmdline: str, bins: Path, bin_rev: str | None) -> dict:
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                  timeout=30).stdout.strip()
        except Exception as e:  # noqa: BLE001 - best effort metadata
            return f"? ({e})"
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vr = sh([str(venv_bin / "python"), "-c",
             "import importlib.metadata as m; print(m.version('vllm-router'))"])
    rev = sh(["git", "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"])
    src = bin_rev or f"git {rev}{' + uncommitted changes' if dirty else ''}"
    import hashlib
    sha = {b: hashlib.sha256((bins / b).read_bytes()).hexdigest()[:12]
           for b in ("shardgate", "shardgate-sim")}
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": cmdline,
        "shardgate": f"{src} ({sh([str(bins / 'shardgate'), '--version'])}, release build; "
                     f"sha256 shardgate {sha['shardgate']}…, shardgate-sim "
                     f"{sha['shardgate-sim']}…)",
        "vllm_router": f"vllm-router {vr} (PyPI)",
        "python": platform.python_version() + f", aiohttp {aiohttp.__version__}",
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
    }


# ---------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------


def default_plan(quick: bool) -> dict:
    if quick:
        return {"shared-prefix": {"rates": [4, 10], "duration": 5, "drain": 15,
                                  "routers": ["shardgate:round-robin",
                                              "shardgate:prefix-cache-aware"]}}
    sg = [f"shardgate:{p}" for p in SHARDGATE_PROFILES]
    return {
        "shared-prefix": {"rates": [3, 6, 9, 12], "duration": 20, "drain": 40,
                          "routers": sg + ["shardgate:prefix-cache-aware:shards=1",
                                           "vllm-router:round_robin", "vllm-router:cache_aware"]},
        "mixed": {"rates": [6, 12], "duration": 15, "drain": 30,
                  "routers": sg + ["vllm-router:round_robin", "vllm-router:cache_aware"]},
        "lora": {"rates": [10, 20], "duration": 15, "drain": 30,
                 "routers": ["shardgate:round-robin", "shardgate:least-queue",
                             "shardgate:default", "shardgate:lora-affinity",
                             "vllm-router:round_robin", "vllm-router:cache_aware"]},
    }


def write_reports(data: dict, out: Path) -> None:
    meta, plan, cells = data["meta"], data["plan"], data["cells"]
    (out / "routing-quality.md").write_text(md_report(meta, cells, plan))
    all_routers: list[str] = []
    for w in plan.values():
        for r in w["routers"]:
            if r not in all_routers:
                all_routers.append(r)
    plot(cells, all_routers, out / "routing-quality.png",
         f"({len(SIM_POOL)} heterogeneous sims, {meta['date']})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="one workload, two rates, ~5 s each, two routers (smoke test)")
    ap.add_argument("--workloads", help="comma list of " + ",".join(WORKLOADS))
    ap.add_argument("--routers", help="comma list overriding every workload's routers, e.g. "
                    "shardgate:round-robin,vllm-router:cache_aware; shardgate options: :shards=N, "
                    ":replicas=N (N gateways, each request to one at random), :precise, :strict, "
                    ":completions, :FLAG=VALUE")
    ap.add_argument("--rates", help="comma list overriding every workload's rates (req/s)")
    ap.add_argument("--duration", type=float, help="seconds per rate (override)")
    ap.add_argument("--shards", type=int, default=2, help="shardgate --shards (default 2)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    ap.add_argument("--max-minutes", type=float, default=45.0,
                    help="skip the remaining cells once this much time has passed")
    ap.add_argument("--out", type=Path, help="output folder (default bench/results, or "
                    "bench/results/tmp with --quick)")
    ap.add_argument("--report-only", type=Path, metavar="JSON",
                    help="regenerate the .md and .png next to JSON from its raw numbers")
    ap.add_argument("--notes", type=Path, metavar="MD",
                    help="with --report-only: store this Markdown in the JSON as the analysis "
                    "and render it after the headline")
    ap.add_argument("--bin-rev", help="what the binaries were built from, for the report "
                    "(default: this checkout's git rev, + uncommitted changes if any)")
    ap.add_argument("--bin-dir", type=Path, default=REPO / "target" / "release",
                    help="where shardgate and shardgate-sim are (cargo build --release "
                    "-p shardgate -p shardgate-sim)")
    args = ap.parse_args()
    if args.report_only:
        data = json.loads(args.report_only.read_text())
        if args.notes:
            data["meta"]["analysis"] = args.notes.read_text()
            args.report_only.write_text(json.dumps(data, indent=1))
        write_reports(data, args.report_only.parent)
        return 0

    if aiohttp is None:
        raise SystemExit("aiohttp missing: run with .venv/bin/python (see README.md)")
    out = args.out or (REPO / "bench" / "results" / ("tmp" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "vllm-router").exists() and shutil.which("vllm-router"):
        venv_bin = Path(shutil.which("vllm-router")).parent
    plan = default_plan(args.quick)
    if args.workloads:
        plan = {w: plan.get(w) or default_plan(False)[w] for w in args.workloads.split(",")}
    for w in plan.values():
        if args.routers:
            w["routers"] = args.routers.split(",")
        if args.rates:
            w["rates"] = [float(x) for x in args.rates.split(",")]
        if args.duration:
            w["duration"] = args.duration
    for w in plan.values():
        router_specs(w["routers"], args.shards)  # reject unknown names before starting
    needs_vr = any(r.startswith("vllm-router") for w in plan.values() for r in w["routers"])
    if needs_vr and not (venv_bin / "vllm-router").exists():
        raise SystemExit("vllm-router not found: .venv/bin/pip install vllm-router")

    # Private copies of the binaries: a concurrent `cargo build` must not swap them mid-run.
    work = Path(tempfile.mkdtemp(prefix="routing-quality-"))
    bins = work / "bin"
    bins.mkdir()
    for b in ["shardgate", "shardgate-sim"]:
        src = args.bin_dir / b
        if not src.exists():
            raise SystemExit(f"{src} missing: cargo build --release -p shardgate -p shardgate-sim")
        shutil.copy2(src, bins / b)
    logdir = work / "logs"
    logdir.mkdir()
    cmdline = "python bench/quality/run.py " + " ".join(sys.argv[1:])
    meta = versions(venv_bin, cmdline.strip(), bins, args.bin_rev)
    print(f"logs in {logdir}", flush=True)

    t_start = time.monotonic()
    cells: list[dict] = []
    jpath = out / "routing-quality.json"
    try:
        for wname, w in plan.items():
            specs = router_specs(w["routers"], args.shards)
            for spec in specs:
                for rate in w["rates"]:
                    if (time.monotonic() - t_start) / 60 > args.max_minutes:
                        print(f"time budget spent: skipping {wname} {spec.key} {rate}",
                              flush=True)
                        continue
                    wl = WORKLOADS[wname](args.seed)
                    w["describe"] = wl.describe
                    pool = Pool(bins, logdir, kv_events=spec.precise)
                    routers = [Router(spec, pool, bins, venv_bin, logdir)
                               for _ in range(max(1, spec.replicas))]
                    router = routers[0]
                    for r in routers:
                        r.vocab = getattr(wl, "vocab", [])
                    try:
                        pool.start()
                        for r in routers:
                            r.start()
                        before = pool.counters()
                        tc = time.monotonic()
                        results, offered = asyncio.run(run_load(
                            [r.base_url() for r in routers], spec.api, wl, rate, w["duration"],
                            args.seed + int(rate), w["drain"], args.timeout))
                        after = pool.counters()
                        s = summarize(results, before, after)
                        cell = {"workload": wname, "router": spec.key, "rate": rate,
                                "offered_rps": offered, "wall_s": time.monotonic() - tc,
                                "summary": s, "gateway_metrics": router.gateway_metrics(),
                                "router_alive": all(r.proc is not None and r.proc.poll() is None
                                                    for r in routers),
                                "loadavg_1m_after": round(os.getloadavg()[0], 2)}
                    finally:
                        for r in routers:
                            r.stop()
                        pool.stop()
                    cells.append(cell)
                    print(f"[{(time.monotonic() - t_start) / 60:5.1f} min] {wname:13s} "
                          f"{spec.key:40s} rate {rate:5g}: ok {s['ok']}/{s['sent']} "
                          f"thr {s['throughput_rps']:.2f} ttft mean {fmt(s['ttft_mean'])} "
                          f"p90 {fmt(s['ttft_p90'])} hit {fmt(s['hit_rate'], 2)} "
                          f"err {s['errors'] or ''} share "
                          f"{'/'.join(str(p['finished']) for p in s['per_sim'])}", flush=True)
                    meta["wall_time_s"] = round(time.monotonic() - t_start)
                    jpath.write_text(json.dumps({"meta": meta, "plan": plan, "cells": cells},
                                                indent=1))
    finally:
        stop_all()
    meta["wall_time_s"] = round(time.monotonic() - t_start)
    data = {"meta": meta, "plan": plan, "headline": headline(cells), "cells": cells}
    jpath.write_text(json.dumps(data, indent=1))
    write_reports(data, out)
    print(f"wrote {out}/routing-quality.{{md,json,png}} in {meta['wall_time_s']} s", flush=True)
    shutil.rmtree(work / "bin", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
