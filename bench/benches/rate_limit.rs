//! Rate limiting: the per-request cost of `shardgate::ratelimit`, the step a
//! request on a rule with a SecurityPolicy `rateLimit` takes (README "Rate
//! limits"), against the alternative the issue names.
//!
//! - `key`: the 128-bit keyed hash of (policy, client IP, model) — two SipHash
//!   passes over ~40 bytes;
//! - `check_known_key`: one admission of a known key (map pin + lookup + one
//!   GCRA compare-and-swap), uncontended;
//! - `key_and_check`: both, what a request pays;
//! - `check_contended`: the same admission while another thread admits on the
//!   same key in a loop (the cell's cache line moves between cores, as when two
//!   shards serve one client);
//! - `batch_draw_reference`: per-shard budgets drawn 8 at a time from a shared
//!   atomic (a local decrement, one `fetch_sub` per 8 requests) — the cost floor
//!   of the batched alternative, which is not exact (see the module doc).
//!
//! The limit is u32::MAX per day so every request is admitted (the refusal path
//! is the same work). Numbers: bench/results/micro.md.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::ratelimit::{Bucket, Identity, Limit, RateLimiter, Verdict};
use shardgate_routing::config::RateLimitUnit;

fn limit() -> Limit {
    Limit::new(u32::MAX, RateLimitUnit::Day)
}

fn bench(c: &mut Criterion) {
    let rl = Arc::new(RateLimiter::new(100_000));
    let lim = limit();
    let ip = Identity::Ip(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
    let policy = "default/inference-security";
    let bucket = Bucket::Model("gpt-large");
    // 10,000 other keys, so the lookup is not in an empty table.
    for i in 0..10_000u32 {
        let other = Identity::Ip(IpAddr::V4(Ipv4Addr::from(i)));
        rl.check(rl.key(policy, other, bucket), &lim, 1);
    }
    let key = rl.key(policy, ip, bucket);
    let mut g = c.benchmark_group("rate_limit");
    g.bench_function("key", |b| {
        b.iter(|| black_box(rl.key(black_box(policy), black_box(ip), black_box(bucket))))
    });
    let mut now = 1u64;
    g.bench_function("check_known_key", |b| {
        b.iter(|| {
            now += 1;
            let v = rl.check(black_box(key), &lim, now);
            debug_assert!(matches!(v, Verdict::Allowed(_)));
            black_box(v)
        })
    });
    g.bench_function("key_and_check", |b| {
        b.iter(|| {
            now += 1;
            black_box(rl.check(rl.key(policy, black_box(ip), bucket), &lim, now))
        })
    });
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (rl, stop) = (rl.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut t = 1u64;
            while !stop.load(Ordering::Relaxed) {
                t += 1;
                black_box(rl.check(key, &lim, t));
            }
        })
    };
    g.bench_function("check_contended", |b| {
        b.iter(|| {
            now += 1;
            black_box(rl.check(black_box(key), &lim, now))
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
    let shared = AtomicU64::new(u64::MAX);
    let mut local = 0u64;
    g.bench_function("batch_draw_reference", |b| {
        b.iter(|| {
            if local == 0 {
                shared.fetch_sub(8, Ordering::AcqRel);
                local = 8;
            }
            local -= 1;
            black_box(local)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
