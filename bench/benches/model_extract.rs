//! Model extraction: the top-level `model` of a JSON request body, by
//! `shardgate_routing::extract_model` (stops right after the model) and
//! `extract_model_strict` (checks the whole body, rejects a duplicate
//! `model`), without building a DOM.
//!
//! Parameters: body size (1 KiB / 64 KiB / 1 MiB chat-completion bodies whose
//! prompt text has escapes: `\n`, `\"`, `\u00e9`) × where `model` sits:
//! - `model-first`: `{"model":…,"messages":[…]}` (curl, most SDKs in JS);
//! - `model-last`: `{"messages":[…],"model":…}` (the `openai` Python client
//!   sends its keyword arguments in this order), so the lax scan must skip
//!   the whole prompt too.
//!
//! Throughput is reported in body bytes. Numbers: bench/results/micro.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardgate_routing::{extract_model, extract_model_strict};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A chat body of exactly `size` bytes with `model` first or last.
fn body(size: usize, model_first: bool) -> Vec<u8> {
    let sentence = r#"The shard-per-core gateway keeps each connection on one core; \"no locks\" on the path.\nCaf\u00e9 prices rose 3.5% in Q2 — see table 4. "#;
    let head_model = format!(r#"{{"model":"{MODEL}","#);
    let tail_model = format!(r#","model":"{MODEL}"}}"#);
    let open = r#""messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":""#;
    let close = r#""}],"temperature":0.7,"max_tokens":256,"stream":false"#;
    let (pre, post) = if model_first {
        (format!("{head_model}{open}"), format!("{close}}}"))
    } else {
        (format!("{{{open}"), format!("{close}{tail_model}"))
    };
    let fill = size.saturating_sub(pre.len() + post.len());
    let mut prompt = String::with_capacity(fill);
    while prompt.len() + sentence.len() <= fill {
        prompt.push_str(sentence);
    }
    while prompt.len() < fill {
        prompt.push('x');
    }
    let mut v = pre.into_bytes();
    v.extend_from_slice(prompt.as_bytes());
    v.extend_from_slice(post.as_bytes());
    v
}

fn bench(c: &mut Criterion) {
    for (label, size) in [("1KiB", 1024), ("64KiB", 64 * 1024), ("1MiB", 1024 * 1024)] {
        let mut g = c.benchmark_group(format!("extract_model/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        for (place, first) in [("model-first", true), ("model-last", false)] {
            let b = body(size, first);
            assert_eq!(b.len(), size);
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&b).expect("valid JSON")["model"],
                MODEL
            );
            assert_eq!(extract_model(&b).ok().flatten().as_deref(), Some(MODEL));
            assert_eq!(
                extract_model_strict(&b).ok().flatten().as_deref(),
                Some(MODEL)
            );
            g.bench_with_input(BenchmarkId::new("lax", place), &b, |bn, b| {
                bn.iter(|| extract_model(black_box(b)).map(|m| m.map(|m| m.len())))
            });
            g.bench_with_input(BenchmarkId::new("strict", place), &b, |bn, b| {
                bn.iter(|| extract_model_strict(black_box(b)).map(|m| m.map(|m| m.len())))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
