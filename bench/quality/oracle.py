#!/usr/bin/env python3
"""Discrete-event simulation (DES) of bench/quality/run.py's shared-prefix benchmark, to
ask how low mean TTFT can go for *any* router (issue #18: <= 0.8x vllm-router cache_aware).

What it models (ported from sim/src, same integers):
- the four sims of run.py's SIM_POOL / SIM_COMMON (flags parsed from run.py): engine.rs
  (FIFO waiting queue, max_num_seqs, KV blocks reserved up front for prompt + max_tokens,
  head-of-line blocking on KV, no preemption, no chunked prefill; step time = 300 us x
  uncached prompt tokens admitted this step + decode_step_us + decode_step_us_per_seq x
  running sequences; the first token at the end of the admitting step), kv.rs (chained
  16-token block hashes of the prompt's full blocks, registered at admission, so a request
  admitted later in the same step already hits them; lookup capped at (prompt-1)/16
  blocks; release in reverse order into an LRU; eviction of the oldest cached-free block),
  driver.rs (a step starts when a request reaches an idle engine or when the previous step
  is observed to end, which is also when a request arrives after the step's end but
  before its timer fires; step ends are tokio timers: rounded up to the next 1 ms tick of the
  engine's clock plus a wake-up latency, `--tick-us`, `--wake-us`; the engine phase per
  sim is drawn from the seed).
- the workload: run.py's SharedPrefix class itself (imported), its RNG sequence, its
  conversation state (a user's follow-up turn appends the previous answer; a user still
  waiting starts a fresh conversation) driven by the simulated completion times; the chat
  prompt as the sim renders it (per message: the role word, then the content's words);
  the 16-word answer (the sim's output words; their identity does not matter for the
  cache since output tokens are never registered, only the length does); Poisson
  arrivals from random.Random(seed + int(rate)) as run_load draws them; 20 s per rate.
- routers: vllm-router 0.1.17 `cache_aware` (reimplemented: approximate radix tree per
  worker over the request text, match rate = matched / input characters, > 0.3 -> the
  matched worker, else the worker with the fewest in-flight requests (first of equals in
  the worker order, `vllm-cache-aware:order=0123`), shortest queue when max - min in-flight > 64 and
  max > 1.5 x min; tree eviction every 120 s never runs within a cell), simple baselines,
  and oracles that read every engine's exact state (queue, running sequences, KV blocks,
  LRU order, the step in flight) and the current time, but not future arrivals (see
  ROUTERS below).

What it does not model: the network and HTTP/SSE hops (client -> router -> sim and back:
`--net-us` adds a fixed delay to every TTFT, default 0), the routers' own CPU time (render
calls, tokenizing), the sims' real-time jitter on a loaded 2-vCPU machine beyond the timer
model, retries/errors (none were measured). The DES is deterministic per seed; the measured
spread between runs comes from the machine's timing, which the DES does not reproduce.

Validation, seed 7 (the benchmark's), against bench/results/routing-quality.md and
routing-quality-precise.md. vllm-router breaks ties between equally loaded workers in an
order that varies from one router process to the next (its worker registry order), and
the 24 orders give different group -> sim placements; each measured cell is compared with
the DES under the order that reproduces that cell's per-sim request shares exactly:
  cache_aware  3 req/s: measured 0.304 s, hit 0.69, shares 8/7/31/12;  DES 0.299, 0.690, same
  cache_aware  6 req/s: measured 0.212 s, hit 0.83, shares 42/41/31/19; DES 0.207, 0.829, same
  cache_aware  9 req/s: measured 0.203-0.211 s (16 runs), p90 0.54-0.575, hit 0.85,
               shares 47/50/56/47; DES 0.206, p90 0.570, hit 0.848, same shares
               (all 24 orders: 0.200-0.208)
  cache_aware 12 req/s: measured 0.216-0.239 s (16 runs), p90 0.673-0.682, hit 0.86,
               shares 71/62/65/62; DES 0.222, p90 0.670, hit 0.858, same shares
               (24 orders: 0.213-0.341, median 0.219)
  round_robin 3/6/9/12: measured 0.437/0.714/2.022/5.021 s; DES 0.447/0.670/2.136/5.059
The DES means are 1-3 % below the measured ones where the shares match (no network or
router overhead); the timer model moves them by < 1 % (--tick-us 0 --wake-us 0).

    python3 bench/quality/oracle.py --rates 9,12 --seeds 7 --routers vllm-cache-aware,floor
    python3 bench/quality/oracle.py --list      # routers
    python3 bench/quality/oracle.py --rates 9 --seeds 7 --routers "" --search-partition 100
"""

from __future__ import annotations

import argparse
import heapq
import importlib.util
import itertools
import json
import math
import random
import signal
import sys
import time
from collections import OrderedDict, deque
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------
# run.py (workload, sim pool) without its process-management side effects.
# ---------------------------------------------------------------------------------------


def load_run_module():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    spec = importlib.util.spec_from_file_location("bench_quality_run", HERE / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    for s, h in saved.items():
        signal.signal(s, h)
    return mod


RUN = load_run_module()


def sim_specs() -> list[dict]:
    out = []
    for spec in RUN.SIM_POOL:
        f = dict(zip(RUN.sim_flags(spec)[::2], RUN.sim_flags(spec)[1::2]))
        out.append({
            "name": spec.name,
            "max_num_seqs": int(f["--max-num-seqs"]),
            "num_blocks": int(f["--num-gpu-blocks"]),
            "block_size": int(f["--block-size"]),
            "prefill_us": int(f["--prefill-us-per-token"]),
            "decode_us": int(f["--decode-step-us"]),
            "decode_per_seq_us": int(f["--decode-step-us-per-seq"]),
        })
    return out


# ---------------------------------------------------------------------------------------
# Tokens and block hashes (sim/src/tokens.rs: words; chained hashes of full blocks).
# Block identities are interned ints: (previous block id, the block's words) -> id.
# ---------------------------------------------------------------------------------------


class Blocks:
    def __init__(self, block_size: int):
        self.bs = block_size
        self.ids: dict = {}

    def hashes(self, words: list[str]) -> list[int]:
        prev, out, bs = 0, [], self.bs
        for i in range(0, len(words) - bs + 1, bs):
            key = (prev, tuple(words[i:i + bs]))
            h = self.ids.get(key)
            if h is None:
                h = self.ids[key] = len(self.ids) + 1
            out.append(h)
            prev = h
        return out


def chat_words(messages: list[dict]) -> list[str]:
    """sim/src/api.rs chat_prompt: per message the role, then the content's words."""
    w: list[str] = []
    for m in messages:
        w.append(m["role"])
        w.extend(m["content"].split())
    return w


# ---------------------------------------------------------------------------------------
# KV cache (sim/src/kv.rs) and engine (sim/src/engine.rs), exact ports.
# ---------------------------------------------------------------------------------------


class KV:
    __slots__ = ("hash", "ref", "tick", "empty", "lru", "cached", "in_use", "tickc")

    def __init__(self, n: int):
        self.hash = [0] * n  # 0 = none
        self.ref = [0] * n
        self.tick = [0] * n
        self.empty = list(range(n - 1, -1, -1))  # pop from the end: block 0 first
        self.lru: OrderedDict = OrderedDict()  # tick -> block, oldest first
        self.cached: dict = {}  # hash -> block
        self.in_use = 0
        self.tickc = 0

    def clone(self) -> "KV":
        k = KV.__new__(KV)
        k.hash, k.ref, k.tick = self.hash[:], self.ref[:], self.tick[:]
        k.empty = self.empty[:]
        k.lru = self.lru.copy()
        k.cached = self.cached.copy()
        k.in_use, k.tickc = self.in_use, self.tickc
        return k

    def num_blocks(self) -> int:
        return len(self.ref)

    def free_blocks(self) -> int:
        return len(self.empty) + len(self.lru)

    def lookup(self, hashes) -> int:
        n = 0
        c = self.cached
        for h in hashes:
            if h in c:
                n += 1
            else:
                break
        return n

    def can_allocate(self, hit_hashes, total: int) -> bool:
        hit_free = 0
        for h in hit_hashes:
            b = self.cached.get(h)
            if b is not None and self.ref[b] == 0:
                hit_free += 1
        return max(0, total - len(hit_hashes)) <= self.free_blocks() - hit_free

    def allocate(self, hashes, hit: int, total: int):
        hit = min(hit, len(hashes), total)
        if not self.can_allocate(hashes[:hit], total):
            return None
        out = []
        for h in hashes[:hit]:
            b = self.cached[h]
            self._acquire(b)
            out.append(b)
        nh = len(hashes)
        for pos in range(hit, total):
            b = self._take_fresh()
            self.ref[b] = 1
            self.in_use += 1
            if pos < nh:
                h = hashes[pos]
                if h not in self.cached:
                    self.cached[h] = b
                    self.hash[b] = h
            out.append(b)
        return out

    def free(self, blocks) -> None:
        for b in reversed(blocks):
            if self.ref[b] == 0:
                continue
            self.ref[b] -= 1
            if self.ref[b] > 0:
                continue
            self.in_use -= 1
            if self.hash[b]:
                self.tickc += 1
                self.tick[b] = self.tickc
                self.lru[self.tickc] = b
            else:
                self.empty.append(b)

    def _acquire(self, b: int) -> None:
        if self.ref[b] == 0:
            t = self.tick[b]
            if t:
                del self.lru[t]
                self.tick[b] = 0
            self.in_use += 1
        self.ref[b] += 1

    def _take_fresh(self) -> int:
        if self.empty:
            return self.empty.pop()
        _, b = self.lru.popitem(last=False)
        self.tick[b] = 0
        h = self.hash[b]
        if h:
            self.hash[b] = 0
            if self.cached.get(h) == b:
                del self.cached[h]
        return b


class Req:
    """One API request (immutable after creation, shared by engine clones)."""
    __slots__ = ("id", "t_send", "words", "prompt_len", "hashes", "max_tokens", "group",
                 "tag", "on_done", "engine", "ttft", "t_done", "cached", "chars")

    def __init__(self, rid, t_send, words, hashes, max_tokens, group, tag, on_done):
        self.id = rid
        self.t_send = t_send
        self.words = words
        self.prompt_len = len(words) if words is not None else 0
        self.hashes = hashes
        self.max_tokens = max_tokens
        self.group = group
        self.tag = tag
        self.on_done = on_done
        self.engine = -1
        self.ttft = None
        self.t_done = None
        self.cached = 0
        self.chars = None


class Seq:
    __slots__ = ("req", "arrival", "blocks", "cached", "generated")

    def __init__(self, req, arrival):
        self.req = req
        self.arrival = arrival
        self.blocks = None
        self.cached = 0
        self.generated = 0

    def copy(self) -> "Seq":
        s = Seq(self.req, self.arrival)
        s.blocks, s.cached, s.generated = self.blocks, self.cached, self.generated
        return s


class Engine:
    def __init__(self, idx: int, spec: dict, phase_us: int, tick_us: int, wake_us: int):
        self.idx = idx
        self.spec = spec
        self.name = spec["name"]
        self.max_num_seqs = spec["max_num_seqs"]
        self.bs = spec["block_size"]
        self.prefill_us = spec["prefill_us"]
        self.decode_us = spec["decode_us"]
        self.decode_per_seq_us = spec["decode_per_seq_us"]
        self.kv = KV(spec["num_blocks"])
        self.waiting: deque = deque()
        self.running: list = []
        self.held: deque = deque()  # held at the router (hold option), not yet sent
        self.in_flight = None  # engine-clock end of the step in flight
        self.step_start = None
        self.wake_at = None  # observed (driver) time of the step's end
        self.phase = phase_us
        self.tick_us = tick_us
        self.wake_us = wake_us
        self.queries = 0
        self.hits = 0
        self.finished = 0
        self.log = None  # step log (start, observed end, prefill tokens, admitted ids)
        self.last_prefill_tokens = 0

    def clone(self) -> "Engine":
        e = Engine.__new__(Engine)
        e.__dict__.update(self.__dict__)
        e.kv = self.kv.clone()
        e.log = None
        e.waiting = deque(s.copy() for s in self.waiting)
        e.held = deque(self.held)
        e.running = [s.copy() for s in self.running]
        return e

    def observed(self, end: int) -> int:
        """When the driver sees a step that ends at `end` (tokio 1 ms timer + wake-up)."""
        if self.tick_us <= 0:
            return end + self.wake_us
        k = -(-(end - self.phase) // self.tick_us)
        return self.phase + k * self.tick_us + self.wake_us

    def blocks_needed(self, prompt_len: int, max_tokens: int) -> int:
        return -(-(prompt_len + max_tokens) // self.bs)

    def add(self, req: Req, now: int) -> None:
        if self.blocks_needed(req.prompt_len, req.max_tokens) > self.kv.num_blocks():
            raise RuntimeError("request larger than the KV pool")
        self.waiting.append(Seq(req, now))

    def idle(self) -> bool:
        return self.in_flight is None and not self.running and not self.waiting

    def step(self, now: int, events: list) -> None:
        """engine.rs Engine::step: completes the step in flight if it ended, then starts
        the next one. Appends (kind, req, index) events; sets self.wake_at."""
        if self.in_flight is not None:
            if now < self.in_flight:
                return
            self.in_flight = None
            self._complete(events)
        d = self._schedule()
        if d is not None:
            self.step_start = now
            self.in_flight = now + d
            self.wake_at = self.observed(self.in_flight)
            if self.log is not None:
                self.log.append((now, self.wake_at, self.last_prefill_tokens,
                                 [s.req.id for s in self.running if s.generated == 0]))
        else:
            self.wake_at = None

    def _schedule(self):
        bs = self.bs
        prefill_tokens = 0
        kv = self.kv
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            r = seq.req
            lookup_n = min(max(r.prompt_len - 1, 0) // bs, len(r.hashes))
            hit = kv.lookup(r.hashes[:lookup_n])
            total = -(-(r.prompt_len + r.max_tokens) // bs)
            blocks = kv.allocate(r.hashes, hit, total)
            if blocks is None:
                break  # head-of-line
            self.waiting.popleft()
            cached = min(hit * bs, r.prompt_len)
            seq.blocks = blocks
            seq.cached = cached
            self.queries += r.prompt_len
            self.hits += cached
            prefill_tokens += r.prompt_len - cached
            self.running.append(seq)
        if not self.running:
            return None
        self.last_prefill_tokens = prefill_tokens
        d = prefill_tokens * self.prefill_us
        decoding = sum(1 for s in self.running if s.req.max_tokens > 0)
        if decoding:
            d += self.decode_us + self.decode_per_seq_us * decoding
        return max(d, 1)

    def _complete(self, events: list) -> None:
        running, self.running = self.running, []
        for seq in running:
            r = seq.req
            if seq.generated < r.max_tokens:
                seq.generated += 1
                events.append(("token", seq, seq.generated - 1))
            if seq.generated >= r.max_tokens:
                events.append(("finished", seq, seq.generated))
                self.kv.free(seq.blocks)
            else:
                self.running.append(seq)

    # -- what-if (oracles) --------------------------------------------------------------

    def first_tokens(self, now: int, extra: Req | None = None, until: set | None = None,
                     horizon_us: int = 30_000_000) -> dict:
        """Simulates a clone of this engine with no further arrivals (plus `extra`, added
        at `now`) until every request id in `until` (default: every waiting request and
        `extra`) has its first token; returns {req id: observed first-token time}."""
        e = self.clone()
        if extra is not None:
            e.waiting.append(Seq(extra, now))
            if e.in_flight is None:
                ev: list = []
                e.step(now, ev)
        if until is None:
            until = {s.req.id for s in e.waiting}
        out: dict = {}
        ev = []
        t = e.wake_at
        while until and t is not None and t - now < horizon_us:
            ev.clear()
            e.step(t, ev)
            for kind, seq, idx in ev:
                if kind == "token" and idx == 0:
                    out[seq.req.id] = t
                    until.discard(seq.req.id)
            t = e.wake_at
        return out

    def work_left(self, now: int) -> int:
        """Rough busy time ahead: the step in flight + prefill of the waiting requests at
        their current cache hits + the running requests' remaining decode steps."""
        w = max(0, (self.in_flight or now) - now)
        for s in self.waiting:
            r = s.req
            lookup_n = min((r.prompt_len - 1) // self.bs, len(r.hashes))
            w += (r.prompt_len - self.kv.lookup(r.hashes[:lookup_n]) * self.bs) * self.prefill_us
        rem = max([s.req.max_tokens - s.generated for s in self.running] + [0])
        n = len(self.running)
        return w + rem * (self.decode_us + self.decode_per_seq_us * max(n, 1))


# ---------------------------------------------------------------------------------------
# Routers. Each is called once per request at its send time with the whole cluster.
# ---------------------------------------------------------------------------------------


class RadixTree:
    """sgl-router / vllm-router approximate tree (src/tree.rs), over tokens with each
    token weighing its characters (+1 for the separator): one tree, nodes labelled with a
    run of tokens, each node remembering which tenants inserted through it."""

    class Node:
        __slots__ = ("children", "label", "tenants")

        def __init__(self, label):
            self.children: dict = {}
            self.label = label
            self.tenants: dict = {}  # tenant -> last access counter

    def __init__(self):
        self.root = RadixTree.Node(())
        self.clock = 0

    def insert(self, toks: tuple, tenant: int) -> None:
        self.clock += 1
        node = self.root
        node.tenants[tenant] = self.clock
        i = 0
        while i < len(toks):
            child = node.children.get(toks[i])
            if child is None:
                leaf = RadixTree.Node(toks[i:])
                leaf.tenants[tenant] = self.clock
                node.children[toks[i]] = leaf
                return
            lab = child.label
            k = 0
            n = min(len(lab), len(toks) - i)
            while k < n and lab[k] == toks[i + k]:
                k += 1
            if k < len(lab):  # split
                mid = RadixTree.Node(lab[:k])
                mid.tenants = dict(child.tenants)
                child.label = lab[k:]
                mid.children[child.label[0]] = child
                node.children[toks[i]] = mid
                child = mid
            child.tenants[tenant] = self.clock
            node = child
            i += k

    def match(self, toks: tuple):
        """(matched tokens, tenant of the deepest node reached, partial match included)."""
        node = self.root
        i = 0
        while i < len(toks):
            child = node.children.get(toks[i])
            if child is None:
                break
            lab = child.label
            k = 0
            n = min(len(lab), len(toks) - i)
            while k < n and lab[k] == toks[i + k]:
                k += 1
            i += k
            node = child
            if k < len(lab):
                break
        tenant = next(iter(node.tenants)) if node.tenants else None
        return i, tenant


class Router:
    name = "?"

    def reset(self, sim: "Sim") -> None:
        self.sim = sim

    def route(self, req: Req, now: int) -> int:
        raise NotImplementedError


class RoundRobin(Router):
    name = "round-robin"

    def reset(self, sim):
        super().reset(sim)
        self.i = -1

    def route(self, req, now):
        self.i = (self.i + 1) % len(self.sim.engines)
        return self.i


class LeastLoad(Router):
    name = "least-load"

    def route(self, req, now):
        return min(range(len(self.sim.engines)), key=lambda i: self.sim.load[i])


class VllmCacheAware(Router):
    """vllm-router 0.1.17 `cache_aware` with run.py's defaults (cache_threshold 0.3,
    balance_abs_threshold 64, balance_rel_threshold 1.5)."""
    name = "vllm-cache-aware"

    def __init__(self, order=None, cache_threshold=0.3, abs_thr=64, rel_thr=1.5):
        self.order = order
        self.cache_threshold = cache_threshold
        self.abs_thr = abs_thr
        self.rel_thr = rel_thr

    def reset(self, sim):
        super().reset(sim)
        self.tree = RadixTree()
        n = len(sim.engines)
        self.workers = list(self.order) if self.order is not None else list(range(n))
        self.decisions = {"prefix_hit": 0, "prefix_miss": 0, "load_imbalance": 0}

    def route(self, req, now):
        load = self.sim.load
        loads = [load[w] for w in self.workers]
        mn, mx = min(loads), max(loads)
        toks = tuple(req.words)
        if mx - mn > self.abs_thr and mx > mn * self.rel_thr:
            w = min(self.workers, key=lambda i: load[i])
            self.tree.insert(toks, w)
            self.decisions["load_imbalance"] += 1
            return w
        k, tenant = self.tree.match(toks)
        chars = self.sim.char_prefix(req)
        rate = chars[k] / chars[-1] if chars[-1] else 0.0
        if rate > self.cache_threshold and tenant is not None:
            w = tenant
            self.decisions["prefix_hit"] += 1
        else:
            w = min(self.workers, key=lambda i: load[i])  # first of equals, worker order
            self.decisions["prefix_miss"] += 1
        self.tree.insert(toks, w)
        return w


class OracleTTFT(Router):
    """Exact state, greedy: the engine where this request's own first token comes first
    (each engine simulated forward with no further arrivals). Ties: fewer in flight."""
    name = "oracle-ttft"

    def route(self, req, now):
        best = None
        for e in self.sim.engines:
            t = e.first_tokens(now, req, {req.id}).get(req.id, math.inf)
            key = (t, self.sim.load[e.idx], e.idx)
            if best is None or key < best:
                best = key
        return best[2]


class OracleMarginal(Router):
    """Exact state, greedy on the total: the engine where adding this request raises the
    sum of first-token times of every request waiting there (itself included) least,
    i.e. its own TTFT plus the delay it causes to requests already queued there."""
    name = "oracle-marginal"

    def route(self, req, now):
        best = None
        for e in self.sim.engines:
            waiting = {s.req.id for s in e.waiting}
            before = e.first_tokens(now, None, set(waiting)) if waiting else {}
            after = e.first_tokens(now, req, waiting | {req.id})
            cost = after.get(req.id, math.inf) - now
            for rid, t in before.items():
                cost += after.get(rid, math.inf) - t
            key = (cost, self.sim.load[e.idx], e.idx)
            if best is None or key < best:
                best = key
        return best[2]


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


class Sticky(Router):
    """A rule family over exact engine state. A request goes to an engine that holds its
    prefix ("holder": the longest prefix in its KV cache or among the requests waiting
    there, covering at least half the prompt); among holders, by `pick`. A request with
    no holder (a group's first request, or a prefix evicted everywhere) is placed by
    `new`. `escape` (s): go to a non-holder instead when that gives a first token that
    much sooner than the best holder (replicating the prefix); default never.

    pick / new: minload (fewest in flight), work (least work ahead), ttft (predicted own
    first token), marginal (own TTFT + delay caused to requests waiting there),
    groups (fewest groups homed there, then work), groupsw (fewest groups per KV block
    and decode speed, then work), blocks (fewest blocks registered in its KV cache, then
    work)."""

    def __init__(self, pick="ttft", new="work", escape=None, label=None, hold=None):
        self.pick = pick
        self.new = new
        self.escape = escape
        self.hold = hold  # hold requests with at least this many uncached tokens
        self.name = label or f"sticky:pick={pick}:new={new}" + (f":escape={escape}" if escape
                                                                 is not None else "")

    def reset(self, sim):
        super().reset(sim)
        self.home: dict = {}  # group -> set of engines it was placed on

    def prefix_blocks(self, e, req) -> int:
        n = min((req.prompt_len - 1) // self.sim.bs, len(req.hashes))
        k = e.kv.lookup(req.hashes[:n])
        for s in itertools.chain(e.waiting, ((Seq(r, 0)) for r in e.held)):
            if k >= n:
                break
            k = max(k, min(n, common_prefix(s.req.hashes, req.hashes)))
        return k

    def score(self, how, e, req, now):
        sim = self.sim
        if how == "minload":
            return (sim.load[e.idx], e.idx)
        if how == "work":
            return (e.work_left(now), sim.load[e.idx], e.idx)
        if how == "ttft":
            return (e.first_tokens(now, req, {req.id}).get(req.id, math.inf), sim.load[e.idx],
                    e.idx)
        if how == "marginal":
            waiting = {s.req.id for s in e.waiting}
            before = e.first_tokens(now, None, set(waiting)) if waiting else {}
            after = e.first_tokens(now, req, waiting | {req.id})
            cost = after.get(req.id, math.inf) - now
            for rid, t in before.items():
                cost += after.get(rid, math.inf) - t
            return (cost, sim.load[e.idx], e.idx)
        if how == "blocks":
            return (len(e.kv.cached), e.work_left(now), e.idx)
        if how in ("groups", "groupsw"):
            ng = sum(1 for g, es in self.home.items() if e.idx in es)
            if how == "groupsw":
                # capacity weight: KV blocks x decode speed relative to sim0
                w = (e.kv.num_blocks() / 1024) * (8000 / e.decode_us)
                ng = (ng + 1) / w
            return (ng, e.work_left(now), e.idx)
        raise ValueError(how)

    def route(self, req, now):
        sim = self.sim
        pb = [self.prefix_blocks(e, req) for e in sim.engines]
        best = max(pb)
        holders = [e for e in sim.engines if pb[e.idx] == best and best * sim.bs * 2 >= req.prompt_len]
        if holders:
            h = min(holders, key=lambda e: self.score(self.pick, e, req, now))
            if self.escape is not None:
                others = [e for e in sim.engines if e not in holders]
                if others:
                    th = h.first_tokens(now, req, {req.id}).get(req.id, math.inf)
                    o = min(others, key=lambda e: self.score("ttft", e, req, now))
                    to = o.first_tokens(now, req, {req.id}).get(req.id, math.inf)
                    if to + self.escape * 1e6 < th:
                        h = o
            choice = h.idx
        else:
            choice = min(sim.engines, key=lambda e: self.score(self.new, e, req, now)).idx
        self.home.setdefault(req.group, set()).add(choice)
        if self.hold is not None:
            e = sim.engines[choice]
            uncached = req.prompt_len - self.prefix_blocks(e, req) * sim.bs
            if uncached >= self.hold:
                return choice, True
        return choice


class Static(Router):
    """A fixed group -> engine map (for the hindsight search); unmapped groups by `new`
    as Sticky does."""

    def __init__(self, mapping: dict, label="static", hold=None):
        self.mapping = dict(mapping)
        self.name = label
        self.hold = hold

    def reset(self, sim):
        super().reset(sim)
        self.home = {}
        self.fallback = Sticky("ttft", "groups")
        self.fallback.reset(sim)
        for g, i in self.mapping.items():
            self.fallback.home.setdefault(g, set()).add(i)

    def route(self, req, now):
        i = self.mapping.get(req.group)
        if i is None:
            i = self.fallback.route(req, now)
            self.mapping[req.group] = i
        if self.hold is not None:
            e = self.sim.engines[i]
            if req.prompt_len - self.fallback.prefix_blocks(e, req) * self.sim.bs >= self.hold:
                return i, True
        return i


class Scripted(Router):
    """Hindsight search helper: request k (in send order) goes to `script[k]` while k <
    len(script); later requests are routed by `after` (a Sticky rule) which learns the
    groups' homes from the scripted part."""

    def __init__(self, script: list, after: "Sticky | None" = None, label="scripted"):
        self.script = list(script)
        self.after = after or Sticky("ttft", "groups")
        self.name = label
        self.taken: list = []

    def reset(self, sim):
        super().reset(sim)
        self.after.reset(sim)
        self.taken = []

    def route(self, req, now):
        k = len(self.taken)
        if k < len(self.script):
            i = self.script[k]
            self.after.home.setdefault(req.group, set()).add(i)
        else:
            i = self.after.route(req, now)
        self.taken.append(i)
        return i


def sequence_search(seed, rate, duration, start: list, n_first: int, budget_s: float, **kw):
    """Hindsight local search over the engine of each of the first `n_first` requests
    (any engine: replicating a prefix is allowed), later requests by Sticky(ttft, groups);
    each candidate scored by a full DES run. Returns (best mean, script)."""
    def score(script):
        return Sim(seed, rate, duration, Scripted(script), **kw).run()["ttft_mean"]
    best_s = list(start[:n_first])
    best = score(best_s)
    n_eng = len(sim_specs())
    t0 = time.perf_counter()
    improved = True
    while improved and time.perf_counter() - t0 < budget_s:
        improved = False
        for k in range(len(best_s)):
            for i in range(n_eng):
                if i == best_s[k] or time.perf_counter() - t0 > budget_s:
                    continue
                cand = best_s[:k] + [i] + best_s[k + 1:]
                v = score(cand)
                if v < best - 1e-9:
                    best, best_s, improved = v, cand, True
    return best, best_s


def partition_search(seed, rate, duration, start: dict, budget_s: float = 90.0, hold=None,
                     **kw):
    """Hindsight local search over static group -> engine maps (moves of one group, swaps
    of two), each candidate scored by a full DES run of the cell: the best assignment a
    sticky router could reach if it knew the whole future. Returns (best mean, map)."""
    def score(m):
        return Sim(seed, rate, duration, Static(m, hold=hold), **kw).run()["ttft_mean"]
    best_m = dict(start)
    best = score(best_m)
    t0 = time.perf_counter()
    groups = sorted(best_m)
    n_eng = len(sim_specs())
    improved = True
    while improved and time.perf_counter() - t0 < budget_s:
        improved = False
        cands = []
        for g in groups:
            for i in range(n_eng):
                if i != best_m[g]:
                    cands.append({**best_m, g: i})
        for a, b in itertools.combinations(groups, 2):
            if best_m[a] != best_m[b]:
                cands.append({**best_m, a: best_m[b], b: best_m[a]})
        for m in cands:
            if time.perf_counter() - t0 > budget_s:
                break
            v = score(m)
            if v < best - 1e-9:
                best, best_m, improved = v, m, True
                break
    return best, best_m


class Rollout(Router):
    """Oracle with lookahead, no future knowledge: exact state of every engine, plus the
    workload's *distribution* (Poisson at the cell's rate, group uniform over the 12).
    Requests with a holder of their prefix go to the holder with the earliest predicted
    first token, unless that is later than `escape_s` (then replicating is evaluated
    too); a request with no holder, and a stuck one, is placed by Monte-Carlo rollout:
    for each candidate engine, `samples` futures of `horizon` seconds are drawn (the same
    ones for every candidate), the cluster is simulated with the sampled arrivals routed
    by the base rule (holder with fewest requests in flight; no holder -> fewest groups
    homed, then least work), and the candidate with the lowest total first-token time
    (this request, every request already waiting anywhere, the sampled ones) wins."""

    def __init__(self, horizon_s=2.0, samples=8, escape_s=None, label=None):
        self.horizon_us = int(horizon_s * 1e6)
        self.samples = samples
        self.escape_us = None if escape_s is None else int(escape_s * 1e6)
        self.name = label or f"oracle-rollout:h={horizon_s}:n={samples}"

    def reset(self, sim):
        super().reset(sim)
        self.rng = random.Random(12345 + sim.seed)
        self.home: dict = {}  # group -> engines it was placed on
        self.rollouts = 0

    @staticmethod
    def _prefix_blocks(e, req, bs) -> int:
        n = min((req.prompt_len - 1) // bs, len(req.hashes))
        k = e.kv.lookup(req.hashes[:n])
        for sq in e.waiting:
            if k >= n:
                break
            k = max(k, min(n, common_prefix(sq.req.hashes, req.hashes)))
        return k

    def _holders(self, engines, req):
        bs = self.sim.bs
        pb = [self._prefix_blocks(e, req, bs) for e in engines]
        best = max(pb)
        if best * bs * 2 < req.prompt_len:
            return []
        return [e for e in engines if pb[e.idx] == best]

    def route(self, req, now):
        sim = self.sim
        holders = self._holders(sim.engines, req)
        cands = None
        if holders:
            own = {e.idx: e.first_tokens(now, req, {req.id}).get(req.id, math.inf)
                   for e in holders}
            h = min(holders, key=lambda e: (own[e.idx], sim.load[e.idx], e.idx)).idx
            if self.escape_us is None or own[h] - now <= self.escape_us:
                self.home.setdefault(req.group, set()).add(h)
                return h
            cands = [h] + [e.idx for e in sim.engines if e.idx not in own]
        else:
            cands = [e.idx for e in sim.engines]
        futures = [self._sample(now) for _ in range(self.samples)]
        best = None
        for i in cands:
            tot = sum(self._rollout(now, req, i, f) for f in futures)
            key = (tot, sim.load[i], i)
            if best is None or key < best:
                best = key
        self.home.setdefault(req.group, set()).add(best[2])
        return best[2]

    def _sample(self, now):
        out, t = [], now
        ng = len(self.sim.wl.systems)
        while True:
            t += int(self.rng.expovariate(self.sim.rate) * 1e6)
            if t > now + self.horizon_us:
                return out
            out.append((t, self.rng.randrange(ng)))

    def _rollout(self, now, req, cand, fut) -> float:
        sim = self.sim
        self.rollouts += 1
        engines = [e.clone() for e in sim.engines]
        home = {g: set(v) for g, v in self.home.items()}
        home.setdefault(req.group, set()).add(cand)
        load = sim.load[:]
        pending = {}
        for e in engines:
            for sq in e.waiting:
                pending[sq.req.id] = sq.req.t_send
        ev: list = []

        def submit(r, i, t):
            e = engines[i]
            e.waiting.append(Seq(r, t))
            load[i] += 1
            pending[r.id] = t
            if e.in_flight is None:
                ev.clear()
                e.step(t, ev)

        submit(req, cand, now)
        arrivals = [sim.synthetic(g, t, k) for k, (t, g) in enumerate(fut)]
        total = 0.0
        ai = 0
        while pending or ai < len(arrivals):
            nxt_wake = min((e.wake_at for e in engines if e.wake_at is not None), default=None)
            if ai < len(arrivals) and (nxt_wake is None or arrivals[ai].t_send <= nxt_wake):
                r = arrivals[ai]
                ai += 1
                hs = self._holders(engines, r)
                if hs:
                    i = min(hs, key=lambda e: (load[e.idx], e.idx)).idx
                else:
                    ng = {e.idx: sum(1 for v in home.values() if e.idx in v) for e in engines}
                    i = min(engines, key=lambda e: (ng[e.idx], e.work_left(r.t_send), e.idx)).idx
                    home.setdefault(r.group, set()).add(i)
                submit(r, i, r.t_send)
                continue
            if nxt_wake is None:
                break
            for e in engines:
                if e.wake_at == nxt_wake:
                    ev.clear()
                    e.step(nxt_wake, ev)
                    for kind, sq, idx in ev:
                        if kind == "token" and idx == 0 and sq.req.id in pending:
                            total += nxt_wake - pending.pop(sq.req.id)
                        elif kind == "finished":
                            load[e.idx] -= 1
        return total + 60e6 * len(pending)


# ---------------------------------------------------------------------------------------
# The cluster simulation.
# ---------------------------------------------------------------------------------------


class Sim:
    def __init__(self, seed: int, rate: float, duration: float, router: Router, *,
                 tick_us=1000, wake_us=100, net_us=0, specs=None, log=False):
        self.seed = seed
        self.rate = rate
        self.duration = duration
        self.router = router
        self.net_us = net_us
        specs = specs or sim_specs()
        self.bs = specs[0]["block_size"]
        prng = random.Random(f"phase-{seed}-{float(rate)}")
        self.engines = [Engine(i, s, prng.randrange(max(tick_us, 1)), tick_us, wake_us)
                        for i, s in enumerate(specs)]
        self.load = [0] * len(self.engines)  # in flight per engine, as a router counts
        if log:
            for e in self.engines:
                e.log = []
        self.blocks = Blocks(self.bs)
        self.wl = RUN.SharedPrefix(seed)
        self.reqs: list[Req] = []
        self._chars_cache: dict = {}
        self._heap: list = []
        self._seq = itertools.count()
        self._group_hashes = {}  # group -> hashes of its system-prompt blocks

    # -- helpers for routers ------------------------------------------------------------

    def char_prefix(self, req: Req) -> list[int]:
        if req.chars is None:
            acc = [0]
            s = 0
            for w in req.words:
                s += len(w) + 1
                acc.append(s)
            req.chars = acc
        return req.chars

    def synthetic(self, g: int, t: int, k: int) -> Req:
        """A sampled future request of group g (for rollouts): the group's system prompt
        blocks, then blocks no one else has (a new question)."""
        sys_h = self._group_hashes[g]
        plen = 1 + len(self.wl.systems[g].split()) + 1 + self.wl.qw
        nfull = plen // self.bs
        hashes = list(sys_h) + [-(10_000_000 * (k + 1) + j) for j in range(nfull - len(sys_h))]
        r = Req(-(k + 1), t, None, hashes, self.wl.max_tokens, g, "future", None)
        r.prompt_len = plen
        return r

    # -- event loop --------------------------------------------------------------------

    def _push(self, t, kind, data):
        heapq.heappush(self._heap, (t, next(self._seq), kind, data))

    def _answer(self, req: Req) -> str:
        # The sim's 16 output words; their identity never reaches the cache (outputs are
        # not registered), so unique placeholder words of the right count stand in.
        return " ".join(f"a{req.id}x{i}" for i in range(req.max_tokens))

    def run(self) -> dict:
        rng = random.Random(self.seed + int(self.rate))  # run_load's arrivals
        arrivals = []
        t = rng.expovariate(self.rate)
        while t < self.duration:
            arrivals.append(t)
            t += rng.expovariate(self.rate)
        for a in arrivals:
            self._push(int(round(a * 1e6)), 0, None)
        for g, s in enumerate(self.wl.systems):
            words = chat_words([{"role": "system", "content": s}])
            self._group_hashes[g] = self.blocks.hashes(words)[: len(words) // self.bs]
        self.router.reset(self)
        t_wall = time.perf_counter()
        heap = self._heap
        while heap:
            t, _, kind, data = heapq.heappop(heap)
            if kind == 0:  # a client sends
                self._send(t)
            elif kind == 1:  # an engine's step is observed to end
                e = data
                if e.wake_at != t:
                    continue  # stale
                self._step(e, t)
            elif kind == 2:  # the client has the whole answer
                req = data
                self.load[req.engine] -= 1
                req.on_done(self._answer(req))
        self.wall_s = time.perf_counter() - t_wall
        return self.summary()

    def _send(self, t: int) -> None:
        wreq = self.wl.next()
        body = wreq.body
        words = chat_words(body["messages"])
        g = int(body["messages"][0]["content"].split()[1])
        req = Req(len(self.reqs), t, words, self.blocks.hashes(words), body["max_tokens"], g,
                  wreq.tag, wreq.on_done)
        self.reqs.append(req)
        i = self.router.route(req, t)
        hold = False
        if isinstance(i, tuple):
            i, hold = i
        req.engine = i
        self.load[i] += 1
        e = self.engines[i]
        if hold:
            e.held.append(req)
        else:
            e.add(req, t)
        # driver.rs steps the engine on every command: a step that has ended but whose
        # timer has not fired yet completes now.
        if e.in_flight is None or t >= e.in_flight:
            self._step(e, t)

    def _step(self, e: Engine, t: int) -> None:
        ev: list = []
        if e.held and not e.waiting and (e.in_flight is None or t >= e.in_flight):
            e.add(e.held.popleft(), t)  # the router sends a held request: queue is empty
        e.step(t, ev)
        for kind, seq, idx in ev:
            r = seq.req
            if kind == "token" and idx == 0:
                r.ttft = t - r.t_send + self.net_us
                r.cached = seq.cached
            elif kind == "finished":
                e.finished += 1
                r.t_done = t + self.net_us
                self._push(r.t_done, 2, r)
        if e.wake_at is not None:
            self._push(e.wake_at, 1, e)

    def summary(self) -> dict:
        ok = [r for r in self.reqs if r.ttft is not None]
        tt = [r.ttft / 1e6 for r in ok]
        q = sum(e.queries for e in self.engines)
        h = sum(e.hits for e in self.engines)
        by_tag: dict = {}
        for r in ok:
            by_tag.setdefault(r.tag, []).append(r.ttft / 1e6)
        cold = sum(1 for r in ok if r.cached == 0)
        return {
            "sent": len(self.reqs), "ok": len(ok),
            "ttft_mean": sum(tt) / len(tt) if tt else None,
            "ttft_p50": RUN.pct(tt, 50), "ttft_p90": RUN.pct(tt, 90), "ttft_p99": RUN.pct(tt, 99),
            "hit_rate": h / q if q else None,
            "share": [e.finished for e in self.engines],
            "cold": cold,
            "ttft_by_tag": {k: sum(v) / len(v) for k, v in sorted(by_tag.items())},
            "windows": windows([(r.t_send, r.ttft / 1e6) for r in ok]),
            "wall_s": round(getattr(self, "wall_s", 0.0), 2),
        }


def breakdown(sim: Sim, cold_tokens: int = 1500) -> dict:
    """Mean TTFT split into: own prefill (its uncached tokens), prefill of others admitted
    in the same step, the step's decode part and timer lag, and the wait before its step
    began, the wait split into time spent behind a step that computed >= `cold_tokens`
    (a cold system prompt) and the rest. Needs the engines' step logs (Sim(log=True))."""
    steps = {}
    for e in sim.engines:
        for st in e.log:
            for rid in st[3]:
                steps[rid] = (e, st)
    tot = {"own_prefill": 0.0, "co_prefill": 0.0, "decode_and_lag": 0.0,
           "wait_behind_cold": 0.0, "wait_other": 0.0}
    n = 0
    for r in sim.reqs:
        if r.ttft is None:
            continue
        e, (start, end, ptok, _) = steps[r.id]
        own = (r.prompt_len - r.cached) * e.prefill_us
        tot["own_prefill"] += own
        tot["co_prefill"] += (ptok * e.prefill_us - own)
        tot["decode_and_lag"] += (end - start) - ptok * e.prefill_us
        wc = 0
        for (s0, s1, pt, _) in e.log:
            if s1 <= r.t_send or s0 >= start:
                continue
            if pt >= cold_tokens:
                wc += min(s1, start) - max(s0, r.t_send)
        tot["wait_behind_cold"] += wc
        tot["wait_other"] += (start - r.t_send) - wc
        n += 1
    return {k: round(v / n / 1e6, 4) for k, v in tot.items()}


# ---------------------------------------------------------------------------------------
# Lower bounds (no router, no queueing).
# ---------------------------------------------------------------------------------------


def floor_run(seed: int, rate: float, duration: float, inflight: bool, *, tick_us=1000,
              wake_us=100, net_us=0, servers: int = 0) -> dict:
    """Every request alone on a fresh engine of the fastest kind (sim0's timing) whose
    cache holds every prompt block of every request sent before it (no capacity limit).
    `inflight`: a block becomes usable only when the step that computes it ends; a
    request whose prefix is still being computed waits for it or computes it again,
    whichever gives the earlier first token. `servers` > 0: a request none of whose
    blocks any earlier request has (a group's first request) must run on one of that many
    engines, first come first served, each busy for that request's whole step; all other
    work takes no engine time. Answers complete after 15 more decode steps of one
    sequence (the conversation state needs completion times)."""
    spec = sim_specs()[0]
    bs = spec["block_size"]
    wl = RUN.SharedPrefix(seed)
    blocks = Blocks(bs)
    rng = random.Random(seed + int(rate))
    arrivals = []
    t = rng.expovariate(rate)
    while t < duration:
        arrivals.append(t)
        t += rng.expovariate(rate)
    avail: dict = {}  # block -> time it is usable
    heap = [(int(round(a * 1e6)), i, 0, None) for i, a in enumerate(arrivals)]
    heapq.heapify(heap)
    cnt = itertools.count(len(heap))
    out, cached_tok, q_tok, cold = [], 0, 0, 0
    sends: list = []
    step_dec = spec["decode_us"] + spec["decode_per_seq_us"]
    free_at = [0] * servers

    def observed(x):
        return x + (tick_us / 2 if tick_us > 0 else 0) + wake_us  # mean timer lag

    while heap:
        t, _, kind, data = heapq.heappop(heap)
        if kind == 1:
            data[0](data[1])
            continue
        w = wl.next()
        words = chat_words(w.body["messages"])
        hs = blocks.hashes(words)
        plen = len(words)
        n = min((plen - 1) // bs, len(hs))
        options = []
        # wait until the prefix blocks available by time x are usable, for each x
        times = sorted({avail[h] for h in hs[:n] if h in avail and avail[h] > t} | {t})
        if servers and not (hs and hs[0] in avail):
            j = min(range(servers), key=lambda i: free_at[i])
            x = max(t, free_at[j])
            step = plen * spec["prefill_us"] + step_dec
            free_at[j] = observed(x + step)
            times = []
            options = [(free_at[j] - t, x, 0, step)]
        for x in times:
            k = 0
            while k < n and hs[k] in avail and avail[hs[k]] <= x:
                k += 1
            if not inflight:
                k = 0
                while k < n and hs[k] in avail:
                    k += 1
            step = (plen - k * bs) * spec["prefill_us"] + step_dec
            options.append((observed(x + step) - t, x, k, step))
            if not inflight:
                break
        ttft, x, k, step = min(options)
        end = t + ttft
        for j, h in enumerate(hs):
            if h not in avail or avail[h] > end:
                avail[h] = end if inflight else t
        q_tok += plen
        cached_tok += k * bs
        cold += k == 0
        out.append((ttft + net_us) / 1e6)
        sends.append(t)
        done = end + (w.body["max_tokens"] - 1) * observed(step_dec) + net_us
        heapq.heappush(heap, (int(done), next(cnt), 1, (w.on_done, "x " * 16)))
    return {"sent": len(out), "ok": len(out), "ttft_mean": sum(out) / len(out),
            "ttft_p50": RUN.pct(out, 50), "ttft_p90": RUN.pct(out, 90),
            "ttft_p99": RUN.pct(out, 99), "hit_rate": cached_tok / q_tok, "share": [],
            "cold": cold, "ttft_by_tag": {}, "wall_s": 0.0,
            "windows": windows(list(zip(sends, out)))}


def windows(pairs, edges=(0, 2, 4, 6, 10, 1e9)) -> list:
    """[(from s, to s, requests, sum of TTFT s)] by send time."""
    out = []
    for a, b in zip(edges, edges[1:]):
        xs = [tt for t, tt in pairs if a * 1e6 <= t < b * 1e6]
        out.append((a, b if b < 1e9 else None, len(xs), round(sum(xs), 2)))
    return out


# ---------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------


def make_router(name: str) -> Router | str:
    """Router names; `:k=v` options (vllm-cache-aware:order=3012)."""
    base, *opts = name.split(":")
    kw = dict(o.split("=", 1) for o in opts)
    if base in ("floor", "floor-inflight", "floor-4"):
        return base
    if base == "round-robin":
        return RoundRobin()
    if base == "least-load":
        return LeastLoad()
    if base == "vllm-cache-aware":
        order = [int(c) for c in kw["order"]] if "order" in kw else None
        r = VllmCacheAware(order=order)
        if order is not None:
            r.name = name
        return r
    if base == "oracle-ttft":
        return OracleTTFT()
    if base == "oracle-marginal":
        return OracleMarginal()
    if base == "static":
        m = {g: int(c) for g, c in enumerate(kw["map"])}
        return Static(m, label=name, hold=int(kw["hold"]) if "hold" in kw else None)
    if base == "sticky":
        esc = float(kw["escape"]) if "escape" in kw else None
        hold = int(kw["hold"]) if "hold" in kw else None
        return Sticky(kw.get("pick", "ttft"), kw.get("new", "work"), esc, label=name, hold=hold)
    if base == "oracle-rollout":
        esc = float(kw["escape"]) if "escape" in kw else None
        return Rollout(float(kw.get("h", 2.0)), int(kw.get("n", 8)), esc, label=name)
    raise SystemExit(f"unknown router {name!r} (see --list)")


ROUTERS = """\
floor               no router, no queueing: each request alone on a sim0-speed engine
                    holding every block of every earlier request (a strict lower bound)
floor-inflight      as floor, but a block is usable only once the step computing it has
                    ended (wait for it or recompute, whichever is sooner)
floor-4             as floor-inflight, and each group's first request (the compulsory
                    cold prefill) must run on one of 4 engines, first come first served;
                    all other work is free (no engine time)
round-robin         baseline
least-load          fewest in-flight requests (first of equals)
vllm-cache-aware    vllm-router 0.1.17 cache_aware (:order=0123 worker order for ties)
sticky              rule family on exact state: holders of the prefix (KV or waiting)
                    first; :pick=, :new= one of minload|work|ttft|marginal|groups|groupsw|
                    blocks;
                    :escape=S replicate when a non-holder is S seconds sooner
                    :hold=N (not routing alone: the router holds a request with >= N
                    uncached tokens until its engine's waiting queue is empty)
static:map=D..D     fixed group -> engine map, one digit per group (the hindsight
                    searches print theirs); :hold=N as sticky
oracle-ttft         exact state, min predicted TTFT of this request
oracle-marginal     exact state, min (own TTFT + delay caused to requests queued there)
oracle-rollout      exact state + sampled futures (Poisson, uniform group): Monte-Carlo
                    lookahead for every placement of a prefix no engine holds
                    :h=SECONDS horizon :n=SAMPLES :escape=S also for requests whose
                    holder's predicted TTFT exceeds S (replication considered)
"""


def fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="9,12")
    ap.add_argument("--seeds", default="7")
    ap.add_argument("--routers", default="floor,floor-inflight,vllm-cache-aware,oracle-ttft,"
                    "oracle-marginal")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--tick-us", type=int, default=1000,
                    help="driver timer resolution (tokio: 1 ms); 0 = exact step ends")
    ap.add_argument("--wake-us", type=int, default=100,
                    help="extra latency from a timer's tick to the engine step (us)")
    ap.add_argument("--net-us", type=int, default=0,
                    help="fixed network/router overhead added to every TTFT and answer (us)")
    ap.add_argument("--search-partition", type=float, metavar="SECONDS",
                    help="per cell: hindsight local search over static group->engine maps, "
                    "from sticky:pick=ttft:new=groups's map, for this many seconds")
    ap.add_argument("--search-sequence", type=float, metavar="SECONDS",
                    help="per cell: hindsight local search over the engines of the first "
                    "--search-n requests (from sticky:pick=ttft:new=groups's choices), later "
                    "requests by that rule, for this many seconds")
    ap.add_argument("--search-n", type=int, default=40)
    ap.add_argument("--search-hold", type=int, metavar="N",
                    help="partition search with the router holding requests of >= N uncached "
                    "tokens (see sticky :hold)")
    ap.add_argument("--start-random", type=int, metavar="K",
                    help="start the partition search from a random map with 3 groups per "
                    "engine drawn with seed K")
    ap.add_argument("--start-map", type=json.loads, metavar="JSON",
                    help='start both searches from this group->engine map, e.g. {"3": 0, ...}')
    ap.add_argument("--json", type=Path, help="write every cell's summary here")
    ap.add_argument("--list", action="store_true", help="list routers")
    ap.add_argument("--breakdown", action="store_true",
                    help="print each cell's mean TTFT split by cause, and the TTFT sums by "
                    "send time (0-2, 2-4, 4-6, 6-10, 10- s)")
    args = ap.parse_args()
    if args.list:
        print(ROUTERS)
        return 0
    rates = [float(x) for x in args.rates.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    names = [x for x in args.routers.split(",") if x]
    cells = []
    print("| router | rate | seed | sent | TTFT mean | p50 | p90 | p99 | hit | cold | share "
          "| wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for name in names:
        for rate in rates:
            for seed in seeds:
                r = make_router(name)
                t0 = time.perf_counter()
                if isinstance(r, str):
                    s = floor_run(seed, rate, args.duration, r != "floor",
                                  tick_us=args.tick_us, wake_us=args.wake_us,
                                  net_us=args.net_us, servers=4 if r == "floor-4" else 0)
                    s["wall_s"] = round(time.perf_counter() - t0, 2)
                    extra = {}
                else:
                    sim = Sim(seed, rate, args.duration, r, tick_us=args.tick_us,
                              wake_us=args.wake_us, net_us=args.net_us, log=args.breakdown)
                    s = sim.run()
                    if args.breakdown:
                        s["breakdown"] = breakdown(sim)
                    extra = getattr(r, "decisions", {})
                    if hasattr(r, "rollouts"):
                        extra = {"rollouts": r.rollouts}
                cell = {"router": name, "rate": rate, "seed": seed, **s}
                if extra:
                    cell["decisions"] = dict(extra)
                cells.append(cell)
                print(f"| {name} | {rate:g} | {seed} | {s['sent']} | {fmt(s['ttft_mean'])} | "
                      f"{fmt(s['ttft_p50'])} | {fmt(s['ttft_p90'])} | {fmt(s['ttft_p99'])} | "
                      f"{fmt(s['hit_rate'], 3)} | {s['cold']} | "
                      f"{'/'.join(map(str, s['share']))} | {s['wall_s']} |", flush=True)
                if args.breakdown:
                    print(f"|   windows (from, to, n, sum TTFT): {s['windows']}")
                if "breakdown" in s:
                    print(f"|   breakdown: {s['breakdown']} by tag {s['ttft_by_tag']}")
    if args.search_partition:
        for rate in rates:
            for seed in seeds:
                st = Sticky("ttft", "groups")
                Sim(seed, rate, args.duration, st, tick_us=args.tick_us, wake_us=args.wake_us,
                    net_us=args.net_us).run()
                start = {g: min(es) for g, es in st.home.items()}
                if args.start_map:
                    start = {int(g): int(i) for g, i in args.start_map.items()}
                if args.start_random is not None:
                    perm = list(range(len(start)))
                    random.Random(args.start_random).shuffle(perm)
                    start = {g: perm[g] % len(sim_specs()) for g in range(len(perm))}
                best, m = partition_search(seed, rate, args.duration, start,
                                           args.search_partition, hold=args.search_hold,
                                           tick_us=args.tick_us,
                                           wake_us=args.wake_us, net_us=args.net_us)
                s = Sim(seed, rate, args.duration, Static(m, hold=args.search_hold),
                        tick_us=args.tick_us, wake_us=args.wake_us, net_us=args.net_us).run()
                label = "hindsight-partition" + (f":hold={args.search_hold}"
                                                 if args.search_hold is not None else "")
                cells.append({"router": label, "rate": rate, "seed": seed,
                              "map": {str(g): i for g, i in m.items()}, **s})
                print(f"| {label} | {rate:g} | {seed} | {s['sent']} | "
                      f"{fmt(s['ttft_mean'])} | {fmt(s['ttft_p50'])} | {fmt(s['ttft_p90'])} | "
                      f"{fmt(s['ttft_p99'])} | {fmt(s['hit_rate'], 3)} | {s['cold']} | "
                      f"{'/'.join(map(str, s['share']))} | static:map="
                      f"{''.join(str(m[g]) for g in sorted(m))} |", flush=True)
    if args.search_sequence:
        for rate in rates:
            for seed in seeds:
                sc = Scripted([])
                if args.start_map:
                    m = {int(g): int(i) for g, i in args.start_map.items()}
                    sc = Scripted([], after=Static(m))
                Sim(seed, rate, args.duration, sc, tick_us=args.tick_us, wake_us=args.wake_us,
                    net_us=args.net_us).run()
                best, script = sequence_search(seed, rate, args.duration, sc.taken,
                                               args.search_n, args.search_sequence,
                                               tick_us=args.tick_us, wake_us=args.wake_us,
                                               net_us=args.net_us)
                s = Sim(seed, rate, args.duration, Scripted(script), tick_us=args.tick_us,
                        wake_us=args.wake_us, net_us=args.net_us).run()
                cells.append({"router": "hindsight-sequence", "rate": rate, "seed": seed,
                              "script": script, **s})
                print(f"| hindsight-sequence:n={args.search_n} | {rate:g} | {seed} | {s['sent']} | "
                      f"{fmt(s['ttft_mean'])} | {fmt(s['ttft_p50'])} | {fmt(s['ttft_p90'])} | "
                      f"{fmt(s['ttft_p99'])} | {fmt(s['hit_rate'], 3)} | {s['cold']} | "
                      f"{'/'.join(map(str, s['share']))} | script {''.join(map(str, script))} |",
                      flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "cells": cells}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
