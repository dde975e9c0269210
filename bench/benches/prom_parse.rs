//! Prometheus text parsing of a model server's `/metrics` scrape, which the
//! control thread does for every endpoint every 100 ms.
//!
//! Input: the real vLLM 0.32 dump in routing/tests/data/ (50 KiB, 452
//! series incl. histograms and LoRA info), cut after its first 300 series
//! (`300-series`, with their `# HELP` / `# TYPE` lines) or whole (`452-series`).
//!
//! Parameters:
//! - `parse`: `telemetry::prom::parse`, the zero-copy line parser, counting
//!   samples in the callback;
//! - `decode`: `telemetry::decode`, parse plus the vLLM mapping to
//!   queue / running / KV / LoRA / TTFT signals.
//!
//! Throughput is reported in input bytes. Numbers: bench/results/micro.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardgate_routing::telemetry::{decode, prom};

const DUMP: &str = include_str!("../../routing/tests/data/vllm-0.32-cpu-under-load-lora.txt");

/// The dump up to and including its `series`-th sample line.
fn first_series(series: usize) -> String {
    let mut out = String::new();
    let mut seen = 0;
    for line in DUMP.lines() {
        if seen == series {
            break;
        }
        if !line.starts_with('#') && !line.trim().is_empty() {
            seen += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("prometheus");
    for (label, text) in [
        ("300-series", first_series(300)),
        ("452-series", DUMP.to_string()),
    ] {
        let want = if label == "300-series" { 300 } else { 452 };
        let stats = prom::parse(text.as_bytes(), |_| {});
        assert_eq!((stats.samples, stats.errors), (want, 0), "{label}");
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("parse", label), &text, |b, t| {
            b.iter(|| {
                let mut values = 0.0;
                let stats = prom::parse(black_box(t.as_bytes()), |s| values += s.value);
                (stats.samples, values)
            })
        });
        g.bench_with_input(BenchmarkId::new("decode", label), &text, |b, t| {
            b.iter(|| decode(black_box(t.as_bytes())).1.used)
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
