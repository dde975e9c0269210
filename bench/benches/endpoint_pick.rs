//! Endpoint picking: one `shardgate_routing::scoring::Picker::pick` per
//! request, as a shard does it, against a `ScoringSnapshot` of N endpoints.
//!
//! The snapshot is built the way the control thread builds it: a
//! `TelemetryStore` ingests, for every endpoint, the real vLLM 0.32 `/metrics`
//! dump (routing/tests/data/, 452 series, with LoRA info) with that endpoint's
//! own `num_requests_waiting` (0–7), `num_requests_running` (0–15) and
//! `kv_cache_usage_perc` (0.05–0.9) written in, then `ScoringSnapshot::build`.
//! Some endpoints are therefore saturated (> 5 waiting or > 0.8 KV) and
//! filtered out, as in production. Candidates carry random matched prefix
//! blocks (0–32 of a 32-block prompt); local in-flight counts are random 0–3.
//! The request asks for model `tiny` and LoRA adapter `tiny-lora`.
//!
//! Parameters: endpoints 8 / 64 / 512 × profile:
//! - `default`: max-score over queue (2), KV cache (2), prefix (3), LoRA (1)
//!   with the saturation filter (GAIE's default profile);
//! - `power-of-two`: two random candidates, the less loaded wins;
//! - `round-robin`: no scoring, the floor of the picker's cost.
//!
//! The picker works on stack scratch sized to the candidates (tiers of 8 and
//! 64) and on `Vec`s above (so 512 includes those allocations); a lone
//! candidate is not scored (`bench/instructions.py` measures that case on the
//! whole request path, `bench/results/latency.md` section 12). Numbers: bench/results/micro.md.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardgate_routing::scoring::{
    Candidate, PickOutcome, PickRequest, Picker, Profile, ProfileKind, ScoringSnapshot,
};
use shardgate_routing::telemetry::{StoreConfig, TelemetryStore};

const DUMP: &str = include_str!("../../routing/tests/data/vllm-0.32-cpu-under-load-lora.txt");
const PREFIX_BLOCKS: u32 = 32;

/// The real dump with endpoint-specific load signals written in.
fn dump_for(waiting: u32, running: u32, kv: f64) -> String {
    DUMP.lines()
        .map(|line| {
            let value = if line.starts_with("vllm:num_requests_waiting{") {
                Some(format!("{waiting}.0"))
            } else if line.starts_with("vllm:num_requests_running{") {
                Some(format!("{running}.0"))
            } else if line.starts_with("vllm:kv_cache_usage_perc{") {
                Some(format!("{kv}"))
            } else {
                None
            };
            match (value, line.rsplit_once(' ')) {
                (Some(v), Some((series, _))) => format!("{series} {v}\n"),
                _ => format!("{line}\n"),
            }
        })
        .collect()
}

struct Setup {
    snapshot: ScoringSnapshot,
    candidates: Vec<Candidate>,
    local: Vec<u32>,
    now: Instant,
}

fn setup(n: usize) -> Setup {
    let mut rng = fastrand::Rng::with_seed(n as u64);
    let now = Instant::now();
    let mut store = TelemetryStore::new(StoreConfig::default());
    for id in 0..n {
        let text = dump_for(rng.u32(0..8), rng.u32(0..16), 0.05 + 0.85 * rng.f64());
        let stats = store.ingest(id, text.as_bytes(), now);
        assert_eq!(stats.parse.errors, 0);
    }
    let inputs: Vec<shardgate_routing::scoring::EndpointInput<'_>> = (0..n)
        .map(|id| shardgate_routing::scoring::EndpointInput {
            id,
            healthy: true,
            models: None,
            inflight: 0,
            local: false,
        })
        .collect();
    let snapshot = ScoringSnapshot::build(1, now, &store, inputs);
    let candidates = (0..n)
        .map(|endpoint| Candidate {
            endpoint,
            prefix_blocks: rng.u32(0..=PREFIX_BLOCKS),
            held_blocks: 0,
            held_families: 0,
        })
        .collect();
    let local = (0..n).map(|_| rng.u32(0..4)).collect();
    Setup {
        snapshot,
        candidates,
        local,
        now,
    }
}

fn bench(c: &mut Criterion) {
    let req = PickRequest {
        model: Some("tiny"),
        adapter: Some("tiny-lora"),
        prefix_total_blocks: PREFIX_BLOCKS,
        session: None,
    };
    let mut g = c.benchmark_group("pick");
    for n in [8usize, 64, 512] {
        let s = setup(n);
        g.throughput(Throughput::Elements(n as u64));
        for kind in [
            ProfileKind::Default,
            ProfileKind::PowerOfTwo,
            ProfileKind::RoundRobin,
        ] {
            let profile = Profile::new(kind, None);
            let mut picker = Picker::new(7);
            let first = picker.pick(&profile, &s.snapshot, &req, &s.candidates, &s.local, s.now);
            assert!(
                matches!(first, PickOutcome::Picked(_)),
                "{n} {kind:?}: {first:?}"
            );
            g.bench_function(BenchmarkId::new(kind.as_str(), n), |b| {
                b.iter(|| {
                    picker.pick(
                        &profile,
                        black_box(&s.snapshot),
                        black_box(&req),
                        black_box(&s.candidates),
                        black_box(&s.local),
                        s.now,
                    )
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
