//! SecurityPolicy rate limits end to end (issue #15 section 3): the seed's shape
//! (`default` + `perModel`) with a small per-model limit; the request over it
//! gets 429 `rate_limit_exceeded` with `Retry-After` and the
//! `x-ratelimit-*-requests` headers, other models and other clients (told apart
//! by `X-Forwarded-For` from a `--trusted-proxies` peer) are unaffected, and with
//! two shards and many connections the number admitted is exactly the limit.
//! Successful answers carry the `x-ratelimit-*` headers too. Token limits
//! (`tokens` per unit, an extension of the seed's shape) are charged from the
//! responses' `usage`: the client is refused once its answers have used the
//! budget, with the `x-ratelimit-*-tokens` headers.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;

/// Two models on one Gateway, and a SecurityPolicy on the Gateway written as the
/// seed writes it: `default` 100/minute, `big` `big_limit`/minute.
fn limited_config(backend: SocketAddr, big_limit: u32) -> String {
    let mut y = config(&[
        ("small", vec![(1, vec![backend])]),
        ("big", vec![(1, vec![backend])]),
    ]);
    y.push_str(&format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata:\n  name: inference-security\nspec:\n  targetRef:\n    kind: Gateway\n    name: gw\n  rateLimit:\n    default:\n      requests: 100\n      unit: minute\n    perModel:\n      big:\n        requests: {big_limit}\n        unit: minute\n"
    ));
    y
}

fn ask(c: &mut Client, model: &str, xff: Option<&str>) -> Response {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(x) = xff {
        headers.push(("x-forwarded-for", x));
    }
    c.post("/v1/chat/completions", &chat(model, false, 2), &headers)
}

#[test]
fn the_request_over_a_per_model_limit_gets_429_with_rate_limit_headers() {
    let a = sim(&["small", "big"], |_| {});
    let gw = Gateway::start(
        &limited_config(a.addr(), 3),
        &["--trusted-proxies", "127.0.0.0/8"],
    );
    let mut c = gw.connect();
    let alice = Some("203.0.113.7");
    for i in 0..3 {
        let r = ask(&mut c, "big", alice);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        // Successful answers carry the quota too, as OpenAI's do.
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
        let left = (2 - i).to_string();
        assert_eq!(
            r.header("x-ratelimit-remaining-requests"),
            Some(left.as_str())
        );
        assert!(r.header("x-ratelimit-reset-requests").is_some());
        assert!(
            r.header("x-ratelimit-limit-tokens").is_none(),
            "no token limit"
        );
    }
    let r = ask(&mut c, "big", alice);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    // One request per 20 s comes back: Retry-After 20, the bucket full after 60 s.
    assert_eq!(r.header("retry-after"), Some("20"));
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    let reset = r.header("x-ratelimit-reset-requests").unwrap();
    assert!(reset == "1m0s" || reset == "59s", "{reset}");
    // The connection stays usable; another model (the default bucket) and another
    // client behind the same trusted proxy are unaffected.
    assert_eq!(ask(&mut c, "small", alice).status, 200);
    assert_eq!(ask(&mut c, "big", Some("198.51.100.9")).status, 200);
    // A client-written entry left of the proxy's is not believed: still alice.
    assert_eq!(
        ask(&mut c, "big", Some("198.51.100.10, 203.0.113.7")).status,
        429
    );
    // Shards publish metrics every 500 ms: poll.
    let want = "gateway_rate_limited_total{model=\"big\"} 2";
    let counted = poll(std::time::Duration::from_secs(10), || {
        gw.metrics().contains(want).then_some(())
    });
    assert!(counted.is_some(), "{want} missing:\n{}", gw.metrics());
}

#[test]
fn without_trusted_proxies_forwarded_for_is_ignored() {
    let a = sim(&["small", "big"], |_| {});
    let gw = Gateway::start(&limited_config(a.addr(), 1), &[]);
    let mut c = gw.connect();
    assert_eq!(ask(&mut c, "big", Some("192.0.2.1")).status, 200);
    // Another X-Forwarded-For from the same peer is the same client.
    assert_eq!(ask(&mut c, "big", Some("192.0.2.2")).status, 429);
}

#[test]
fn the_limit_is_exact_across_two_shards_and_many_connections() {
    const LIMIT: usize = 25;
    let a = sim(&["small", "big"], |_| {});
    let gw = Gateway::start(&limited_config(a.addr(), LIMIT as u32), &["--shards", "2"]);
    let addr = gw.addr;
    let (ok, limited) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (ok, limited) = (ok.clone(), limited.clone());
            std::thread::spawn(move || {
                // Several connections per thread, so the kernel spreads them over
                // both shards.
                for _ in 0..2 {
                    let mut c = Client::connect(addr);
                    for _ in 0..3 {
                        match ask(&mut c, "big", None).status {
                            200 => ok.fetch_add(1, Ordering::Relaxed),
                            429 => limited.fetch_add(1, Ordering::Relaxed),
                            s => panic!("unexpected status {s}"),
                        };
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), LIMIT);
    assert_eq!(limited.load(Ordering::Relaxed), 16 * 6 - LIMIT);
}

#[test]
fn token_limits_are_charged_from_usage_and_refuse_with_token_headers() {
    const TOKENS: u64 = 40;
    let a = sim(&["small", "big"], |_| {});
    let mut y = config(&[("big", vec![(1, vec![a.addr()])])]);
    y.push_str(&format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata:\n  name: budget\nspec:\n  targetRef:\n    kind: Gateway\n    name: gw\n  rateLimit:\n    perModel:\n      big: {{requests: 1000, tokens: {TOKENS}, unit: hour}}\n"
    ));
    let gw = Gateway::start(&y, &[]);
    let mut c = gw.connect();
    let mut charged = Vec::new();
    let refused = loop {
        let r = ask(&mut c, "big", None);
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(charged.len() < 100, "never refused");
        // Before this answer's tokens: the limit less what earlier ones used.
        assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("40"));
        let before: u64 = charged.iter().sum();
        let remaining: u64 = r
            .header("x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            remaining <= TOKENS.saturating_sub(before),
            "{remaining} after {before}"
        );
        assert!(
            remaining + 1 >= TOKENS.saturating_sub(before),
            "{remaining} after {before}"
        );
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("1000"));
        charged.push(r.json()["usage"]["total_tokens"].as_u64().unwrap());
    };
    // Admitted while the usage so far was within the budget; refused once over.
    let total: u64 = charged.iter().sum();
    let last = *charged.last().unwrap();
    assert!(total > TOKENS, "{charged:?}");
    assert!(total - last <= TOKENS, "{charged:?}");
    assert_eq!(refused.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(refused.json()["error"]["type"], "tokens");
    assert_eq!(refused.header("x-ratelimit-limit-tokens"), Some("40"));
    assert_eq!(refused.header("x-ratelimit-remaining-tokens"), Some("0"));
    assert!(refused.header("x-ratelimit-limit-requests").is_none());
    // The debt is repaid at 40 tokens per hour: 90 s per token.
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    let debt = total - TOKENS;
    assert!(
        retry.abs_diff(debt * 90) <= 1,
        "retry-after {retry} for a debt of {debt}"
    );
}

#[test]
fn micro_batched_answers_carry_the_rate_limit_headers_too() {
    let a = sim(&["emb"], |_| {});
    let mut y = config(&[("emb", vec![(1, vec![a.addr()])])]);
    y.push_str("---\napiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: b\n  namespace: default\nspec:\n  maxBatchSize: 8\n  maxLatency: 5ms\n  targetRefs:\n  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: r0}\n---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata:\n  name: sp\nspec:\n  targetRef: {kind: Gateway, name: gw}\n  rateLimit:\n    default: {requests: 50, tokens: 100000, unit: minute}\n");
    let gw = Gateway::start(&y, &[]);
    let mut c = gw.connect();
    let r = c.post(
        "/v1/embeddings",
        r#"{"model":"emb","input":["a","b"]}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("50"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("49"));
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("100000"));
    // It did go through the batcher (shards publish metrics every 500 ms).
    let flushed = poll(std::time::Duration::from_secs(10), || {
        gw.metrics()
            .lines()
            .any(|l| l.starts_with("gateway_batch_size_count") && !l.ends_with(" 0"))
            .then_some(())
    });
    assert!(flushed.is_some(), "{}", gw.metrics());
}
