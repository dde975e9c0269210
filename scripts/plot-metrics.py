#!/usr/bin/env python3
"""Render shardgate's metrics over time as a PNG (docs/metrics.png).

Two sources:

  plot-metrics.py prometheus http://127.0.0.1:9090 [--since 90] -o docs/metrics.png
      queries a Prometheus that scraped the gateway (query_range API);

  plot-metrics.py scrape http://127.0.0.1:9901/metrics snaps/ --seconds 60
  plot-metrics.py snapshots snaps/ -o docs/metrics.png
      saves the gateway's /metrics every second as snaps/<unix time>.prom, then plots
      them without a Prometheus (quantiles computed here as histogram_quantile does).

Panels: inference latency P50/P99 per model, request rate per model (and non-2xx),
time to first token P50/P99 per model, completion tokens/s per model.

Needs matplotlib:  .venv/bin/pip install matplotlib
"""

import argparse
import json
import math
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict

HIDDEN_MODELS = ("other", "none")  # requests naming no served model: not a latency series


# ---------------------------------------------------------------- Prometheus source


def prom_range(base, query, start, end, step):
    url = f"{base.rstrip('/')}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": query, "start": start, "end": end, "step": step}
    )
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"{query}: {body}")
    out = []
    for s in body["data"]["result"]:
        ts = [float(t) for t, _ in s["values"]]
        vs = [float(v) for _, v in s["values"]]
        out.append((s["metric"], ts, vs))
    return out


def from_prometheus(args):
    end = args.end or time.time()
    start = args.start or end - args.since
    w = f"{args.window}s"
    hide = "|".join(HIDDEN_MODELS)
    q = lambda p, m, sel: (  # noqa: E731
        f"histogram_quantile({p}, sum by (le, model) (rate({m}_bucket{{{sel}}}[{w}])))"
    )
    sel = f'model!~"{hide}"'
    panels = {"latency": [], "rate": [], "ttft": [], "tokens": []}
    for p, name in (("0.5", "P50"), ("0.99", "P99")):
        for m, ts, vs in prom_range(args.url, q(p, "gateway_inference_duration_seconds", sel), start, end, args.step):
            panels["latency"].append((f"{m.get('model')} {name}", ts, vs))
        for m, ts, vs in prom_range(args.url, q(p, "gateway_time_to_first_token_seconds", sel), start, end, args.step):
            panels["ttft"].append((f"{m.get('model')} {name}", ts, vs))
    for m, ts, vs in prom_range(args.url, f"sum by (model) (rate(gateway_requests_total{{{sel}}}[{w}]))", start, end, args.step):
        panels["rate"].append((f"{m.get('model')}", ts, vs))
    for m, ts, vs in prom_range(args.url, f'sum(rate(gateway_requests_total{{code!~"2.."}}[{w}]))', start, end, args.step):
        panels["rate"].append(("non-2xx (all models)", ts, vs))
    for m, ts, vs in prom_range(args.url, f"sum by (model) (rate(gateway_completion_tokens_total{{{sel}}}[{w}]))", start, end, args.step):
        panels["tokens"].append((f"{m.get('model')}", ts, vs))
    return panels, f"Prometheus {args.url}, rate window {w}"


# ---------------------------------------------------------------- snapshot source

LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    """{(name, frozenset(labels.items())): value}"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            continue
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def scrape(args):
    os.makedirs(args.dir, exist_ok=True)
    end = time.time() + args.seconds
    n = 0
    while time.time() < end:
        t = time.time()
        with urllib.request.urlopen(args.url, timeout=5) as r:
            text = r.read().decode()
        with open(os.path.join(args.dir, f"{t:.3f}.prom"), "w") as f:
            f.write(text)
        n += 1
        time.sleep(max(0.0, args.every - (time.time() - t)))
    print(f"saved {n} snapshots in {args.dir}")


def quantile(q, buckets):
    """histogram_quantile over [(le, cumulative count)] sorted by le (last: +Inf)."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for i, (le, c) in enumerate(buckets):
        if c >= rank:
            if math.isinf(le):
                return buckets[-2][0] if len(buckets) > 1 else math.nan
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return math.nan


def by_model(sample, name, extra_filter=None):
    """Sum `name` samples per model (and per le for buckets)."""
    acc = defaultdict(float)
    for (n, labels), v in sample.items():
        if n != name:
            continue
        d = dict(labels)
        if d.get("model") in HIDDEN_MODELS or (extra_filter and not extra_filter(d)):
            continue
        le = d.get("le")
        acc[(d.get("model", ""), float(le) if le is not None else None)] += v
    return acc


def from_snapshots(args):
    files = sorted(
        (float(f[: -len(".prom")]), os.path.join(args.dir, f))
        for f in os.listdir(args.dir)
        if f.endswith(".prom")
    )
    if len(files) < 2:
        raise SystemExit(f"{args.dir}: fewer than two <unix time>.prom snapshots")
    snaps = [(t, parse_exposition(open(p).read())) for t, p in files]
    w = max(1, int(round(args.window / max(1e-9, (snaps[-1][0] - snaps[0][0]) / (len(snaps) - 1)))))
    series = defaultdict(lambda: ([], []))

    def add(label, t, v):
        series[label][0].append(t)
        series[label][1].append(v)

    for i in range(w, len(snaps)):
        (t0, a), (t1, b) = snaps[i - w], snaps[i]
        dt = t1 - t0
        for metric, panel in (
            ("gateway_inference_duration_seconds_bucket", "latency"),
            ("gateway_time_to_first_token_seconds_bucket", "ttft"),
        ):
            d0, d1 = by_model(a, metric), by_model(b, metric)
            models = sorted({m for m, _ in d1})
            for model in models:
                buckets = sorted(
                    (le, d1[(model, le)] - d0.get((model, le), 0.0)) for (m, le) in d1 if m == model
                )
                for q, name in ((0.5, "P50"), (0.99, "P99")):
                    add((panel, f"{model} {name}"), t1, quantile(q, buckets))
        r0, r1 = by_model(a, "gateway_requests_total"), by_model(b, "gateway_requests_total")
        for (model, _), v in sorted(r1.items()):
            add(("rate", model), t1, (v - r0.get((model, None), 0.0)) / dt)
        err = lambda s: sum(  # noqa: E731
            v for (n, l), v in s.items() if n == "gateway_requests_total" and not dict(l).get("code", "").startswith("2")
        )
        add(("rate", "non-2xx (all models)"), t1, (err(b) - err(a)) / dt)
        k0, k1 = by_model(a, "gateway_completion_tokens_total"), by_model(b, "gateway_completion_tokens_total")
        for (model, _), v in sorted(k1.items()):
            add(("tokens", model), t1, (v - k0.get((model, None), 0.0)) / dt)
    panels = {"latency": [], "rate": [], "ttft": [], "tokens": []}
    for (panel, label), (ts, vs) in sorted(series.items()):
        panels[panel].append((label, ts, vs))
    return panels, f"{len(snaps)} snapshots in {args.dir}, window {args.window:g}s"


# ---------------------------------------------------------------- plotting


def plot(panels, source, out, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min((ts[0] for p in panels.values() for _, ts, _ in p if ts), default=0.0)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    spec = [
        ("latency", "Inference latency P50 / P99 per model", "seconds"),
        ("rate", "Request rate", "requests / s"),
        ("ttft", "Time to first token P50 / P99 (streamed)", "seconds"),
        ("tokens", "Completion tokens / s", "tokens / s"),
    ]
    colors = {}
    for ax, (key, name, unit) in zip(axes.flat, spec):
        for label, ts, vs in panels[key]:
            model = label.split(" ")[0]
            color = colors.setdefault(model, f"C{len(colors)}")
            style = "--" if label.endswith("P99") else "-"
            if label.startswith("non-2xx"):
                color, style = "red", ":"
            ax.plot([t - t0 for t in ts], vs, style, color=color, label=label, linewidth=1.6)
        ax.set_title(name)
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if panels[key]:
            ax.legend(fontsize=8, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[1]:
        ax.set_xlabel("time since start of the run (s)")
    fig.suptitle(title, fontsize=14)
    fig.text(0.99, 0.005, source, ha="right", va="bottom", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prometheus", help="plot from a Prometheus server")
    p.add_argument("url", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    p.add_argument("--since", type=float, default=120, help="seconds before --end (default 120)")
    p.add_argument("--start", type=float, help="unix time of the first point")
    p.add_argument("--end", type=float, help="unix time of the last point (default: now)")
    p.add_argument("--step", type=float, default=1, help="seconds between points (default 1)")
    p.add_argument("--window", type=int, default=10, help="rate window in seconds (default 10)")
    s = sub.add_parser("snapshots", help="plot from a directory of <unix time>.prom scrapes")
    s.add_argument("dir")
    s.add_argument("--window", type=float, default=10, help="rate window in seconds (default 10)")
    for x in (p, s):
        x.add_argument("-o", "--out", default="metrics.png")
        x.add_argument("--title", default="shardgate: metrics from a real run")
    c = sub.add_parser("scrape", help="save a gateway's /metrics periodically as <unix time>.prom")
    c.add_argument("url", help="e.g. http://127.0.0.1:9901/metrics")
    c.add_argument("dir")
    c.add_argument("--every", type=float, default=1)
    c.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    if args.cmd == "scrape":
        return scrape(args)
    panels, source = from_prometheus(args) if args.cmd == "prometheus" else from_snapshots(args)
    if not any(panels.values()):
        sys.exit("no gateway metrics in the source")
    plot(panels, source, args.out, args.title)


if __name__ == "__main__":
    main()
