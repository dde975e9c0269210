//! Precise prefix routing's per-request cost (#18): a completions body of 1k and
//! 8k tokens turned into vLLM block keys, as the proxy does for a model with a
//! tokenizer — JSON parse, `tokenizers` encode (the test WordLevel tokenizer in
//! `gateway/tests/data/kv/`, whitespace split: a lower bound next to a BPE
//! vocabulary), `sha256_cbor` over 16-token blocks — and the hashing alone from
//! token ids, plus one precise match over a 4-endpoint snapshot.
//! Results: bench/results/micro.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shardgate::kv_tokenize::Tokenizers;
use shardgate_kvevents::{Batch, BlockHasher, BlockStored, Event, ExactIndex};

fn body(tokens: usize) -> String {
    let words: Vec<String> = (0..tokens).map(|i| ((i * 31) % 2000).to_string()).collect();
    format!(
        r#"{{"model":"m","prompt":"{}","max_tokens":16}}"#,
        words.join(" ")
    )
}

fn bench(c: &mut Criterion) {
    let tok = format!(
        "m={}/../gateway/tests/data/kv/tokenizer.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let tokenizers = Tokenizers::load(&[tok], &[], 16, "vllm-none-hash").expect("tokenizer");
    let mut g = c.benchmark_group("kv_keys");
    for tokens in [1024usize, 8192] {
        let b = body(tokens);
        g.bench_with_input(BenchmarkId::new("tokenize+hash", tokens), &b, |bench, b| {
            bench.iter(|| tokenizers.keys("m", None, b.as_bytes()).map(|k| k.len()))
        });
        let ids: Vec<u32> = (0..tokens as u32).map(|i| (i * 31) % 2000).collect();
        let mut hasher = BlockHasher::new(16, "vllm-none-hash");
        let mut out = Vec::with_capacity(tokens / 16);
        g.bench_with_input(BenchmarkId::new("hash", tokens), &ids, |bench, ids| {
            bench.iter(|| {
                out.clear();
                hasher.keys(ids, None, 1024, &mut out);
                out.len()
            })
        });
        // Match against 4 live endpoints, one holding the whole prompt.
        let mut keys = Vec::new();
        hasher.keys(&ids, None, 1024, &mut keys);
        let mut ix = ExactIndex::new(std::time::Duration::from_secs(10));
        for ep in 0..4 {
            ix.connected(ep);
            let held = if ep == 2 {
                &keys[..]
            } else {
                &keys[..keys.len() / 4]
            };
            let batch = Batch {
                ts: 0.0,
                events: vec![Event::Stored(BlockStored {
                    block_hashes: held.to_vec(),
                    block_size: 16,
                    ..BlockStored::default()
                })],
                dp_rank: None,
            };
            ix.apply(ep, 0, &batch);
        }
        let snap = ix.snapshot();
        g.bench_with_input(
            BenchmarkId::new("match_4_endpoints", tokens),
            &keys,
            |bench, k| bench.iter(|| (0..4).map(|ep| snap.match_len(ep, k)).sum::<usize>()),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
