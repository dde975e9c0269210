#!/usr/bin/env python3
"""Load for `shardgate demo` (standard library only): chat completions for its two
models, half streamed, with the number of concurrent clients changing in phases so
that latency and rate curves have something to show; ~3% of requests name an
unknown model (404).

  python3 scripts/demo-load.py http://127.0.0.1:8080 [--phases 10:2,15:8,15:32,10:8,10:2]

Each phase is seconds:clients. Prints a summary per phase.
"""

import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse
from collections import Counter

MODELS = [("llama-3-8b", 0.6), ("qwen-2.5-7b", 0.4)]


def worker(host, port, stop, active, idx, stats, lock, seed):
    rng = random.Random(seed)
    conn = None
    while not stop.is_set():
        if idx >= active[0]:
            time.sleep(0.05)  # parked: this phase runs fewer clients
            continue
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=120)
        r = rng.random()
        model = "no-such-model" if r < 0.03 else ("llama-3-8b" if r < 0.6 else "qwen-2.5-7b")
        stream = rng.random() < 0.5
        words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega"]) for _ in range(rng.randint(20, 400)))
        body = {
            "model": model,
            "stream": stream,
            "max_tokens": rng.randint(8, 64),
            "messages": [{"role": "user", "content": words}],
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            code = resp.status
        except (OSError, http.client.HTTPException):
            code = "error"
            conn.close()
            conn = None
        with lock:
            stats[code] += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="gateway base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--phases", default="10:2,15:8,15:32,10:8,10:2", help="seconds:clients,...")
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.url)
    phases = [tuple(int(x) for x in p.split(":")) for p in args.phases.split(",")]
    most = max(c for _, c in phases)
    stop, lock, active = threading.Event(), threading.Lock(), [0]
    stats = Counter()
    threads = [
        threading.Thread(target=worker, args=(u.hostname, u.port or 80, stop, active, i, stats, lock, i), daemon=True)
        for i in range(most)
    ]
    for t in threads:
        t.start()
    for secs, clients in phases:
        active[0] = clients
        with lock:
            before = Counter(stats)
        time.sleep(secs)
        with lock:
            done = stats - before
        print(f"{secs:>4}s with {clients:>3} clients: {sum(done.values())} requests {dict(done)}", flush=True)
    stop.set()
    for t in threads:
        t.join(timeout=130)


if __name__ == "__main__":
    main()
