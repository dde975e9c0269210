//! The per-request picking path must not allocate for ≤ 64 candidates:
//! prompt hashing, prefix matching, every profile's pick (with and without
//! the explain output), a session's bounded-load walk of the ring (with the
//! session id found in the body's `user` field) and re-recording known
//! blocks; nor may parsing a scrape allocate per sample. A counting global allocator checks it.
#![allow(clippy::unwrap_used)]
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use shardgate_routing::scoring::{
    session_hash, Candidate, EndpointView, PickOutcome, PickRequest, Picker, PrefixConfig,
    PrefixHashes, PrefixIndex, Profile, ScoreBreakdown, ScoringSnapshot, ServedModels, Session,
    SessionRing,
};
use shardgate_routing::telemetry::{prom, LoraState, SignalKind};
use shardgate_testkit::Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn picking_does_not_allocate() {
    let t0 = Instant::now();
    let views: Vec<EndpointView> = (0..64)
        .map(|i| {
            let mut v = EndpointView::with_signals(
                i,
                t0,
                Duration::from_millis(200),
                &[
                    (SignalKind::Waiting, (i % 4) as f64),
                    (SignalKind::Running, (i % 7) as f64),
                    (SignalKind::KvUsage, 0.1 * (i % 6) as f64),
                    (SignalKind::Ttft, 0.05 + 0.01 * (i % 5) as f64),
                    (SignalKind::GpuUtil, 0.5),
                ],
            );
            v.telemetry.set_lora(
                LoraState {
                    max_lora: 2,
                    running: vec![format!("lora-{}", i % 3)],
                    waiting: vec![],
                },
                t0,
            );
            // The model filter runs on listed models: some endpoints list the
            // adapter, some can load it into a free slot, some serve another model.
            v.models = Some(match i % 8 {
                0 => ServedModels::from_names(&["llama"], &[("lora-1", "llama")]),
                7 => ServedModels::from_names(&["other"], &[]),
                _ => ServedModels::from_names(&["llama"], &[]),
            });
            v
        })
        .collect();
    let snapshot = ScoringSnapshot::from_views(1, t0, views);
    let mut index = PrefixIndex::new(PrefixConfig::default());
    let prompt = vec![b'p'; 64 * 300];
    let warm = index.hash("llama", &prompt);
    for e in 0..64 {
        index.record(e, &warm.as_slice()[..(e % 9) * 20], t0);
    }
    let mut picker = Picker::new(1);
    let mut candidates = [Candidate::default(); 64];
    let local = [0u32; 64];
    let mut explain = [ScoreBreakdown::default(); 64];
    let profiles: Vec<Profile> = [
        "default",
        "least-queue",
        "kv-cache-aware",
        "lora-affinity",
        "latency-optimized",
        "resource-weighted",
        "power-of-two",
        "round-robin",
        "random",
    ]
    .iter()
    .map(|n| Profile::from_name(n, None).unwrap())
    .collect();
    let now = t0 + Duration::from_millis(50);
    let ring = SessionRing::new((0..64).map(|i| (i, format!("10.0.0.{i}:8000"))));
    let body = format!(
        r#"{{"model":"llama","messages":[{{"role":"user","content":"{}"}}],"user":"sess\u00e9-9"}}"#,
        "q".repeat(10_000)
    );

    let (_, n) = Counting::count(|| {
        let hashes = PrefixHashes::compute("llama", &prompt, index.config());
        for (i, c) in candidates.iter_mut().enumerate() {
            *c = Candidate {
                endpoint: i,
                prefix_blocks: index.match_len(i, hashes.as_slice()) as u32,
                held_blocks: 0,
                held_families: 0,
            };
        }
        let req = PickRequest {
            model: Some("llama"),
            adapter: Some("lora-1"),
            prefix_total_blocks: hashes.len() as u32,
            session: None,
        };
        let span = shardgate_routing::model::user_span(body.as_bytes()).unwrap();
        let session = Session {
            ring: &ring,
            hash: session_hash(&body.as_bytes()[span]),
            load_factor: 1.25,
        };
        let sreq = PickRequest {
            session: Some(session),
            ..req
        };
        for p in &profiles {
            for k in [1, 8, 64] {
                let o = picker.pick(p, &snapshot, &sreq, &candidates[..k], &local[..k], now);
                assert!(matches!(
                    o,
                    PickOutcome::Picked(_) | PickOutcome::AllSaturated { .. }
                ));
            }
        }
        for p in &profiles {
            for k in [1, 8, 64] {
                let o = picker.pick(p, &snapshot, &req, &candidates[..k], &local[..k], now);
                assert!(matches!(
                    o,
                    PickOutcome::Picked(_) | PickOutcome::AllSaturated { .. }
                ));
                picker.pick_explained(
                    p,
                    &snapshot,
                    &req,
                    &candidates[..k],
                    &local[..k],
                    now,
                    &mut explain[..k],
                );
            }
        }
        // Re-recording known blocks only relinks.
        index.record(8, &warm.as_slice()[..160], now);
    });
    assert_eq!(n, 0, "allocations on the picking path");
}

#[test]
fn parsing_a_scrape_does_not_allocate() {
    let path = format!(
        "{}/tests/data/vllm-0.32-cpu-under-load-lora.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read(path).unwrap();
    let ((samples, sum), n) = Counting::count(|| {
        let mut sum = 0.0;
        let stats = prom::parse(&text, |s| {
            if s.label("engine").is_some_and(|e| e.eq_str("0")) {
                sum += s.value.min(1e6);
            }
            for l in s.labels() {
                let _ = l.value.get();
            }
        });
        (stats.samples, sum)
    });
    assert!(samples > 400 && sum > 0.0);
    assert_eq!(n, 0, "allocations while parsing");
}
