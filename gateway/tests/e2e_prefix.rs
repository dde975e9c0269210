//! End-to-end: prefix affinity across shards. With `--shards 2` every new client
//! connection lands on a shard the kernel picks (`SO_REUSEPORT`); the prefix
//! record of a request routed on one shard must reach the other shard's index
//! (shard → control thread → shard SPSC rings), so the same long prompt sent
//! over fresh connections keeps landing on the one endpoint that holds it.
//!
//! Deterministic: telemetry scrapes are off (`--no-scrape`: the prefix scorer
//! alone decides), requests are sequential, and before each request the test
//! polls `/metrics` until the previous record was forwarded to the other shard
//! (a shard replays its inbound records before it picks). The first request
//! picks one of three idle sims at random; every later one must follow it.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;

/// Value of the first `/metrics` sample whose name and labels are `series`.
fn metric(admin: std::net::SocketAddr, series: &str) -> Option<f64> {
    let text = Client::connect(admin).get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
}

fn requests(sims: &[SimHandle]) -> Vec<u64> {
    sims.iter()
        .map(|s| sim_stats(s.addr())["requests_total"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_prefix_learnt_on_one_shard_routes_requests_on_the_other() {
    let sims: Vec<SimHandle> = (0..3).map(|_| sim(&["m"], |_| {})).collect();
    let addrs = sims.iter().map(|s| s.addr()).collect();
    let gw = Gateway::start(
        &config(&[("m", vec![(1, addrs)])]),
        &["--shards", "2", "--no-scrape"],
    );
    let admin = gw.admin.unwrap();
    // ≈ 9 KiB of system prompt: 140 whole blocks of 64 bytes, all hashed.
    let system: String = (0..900).map(|i| format!("rule{:04} ", i % 1000)).collect();
    let body = format!(r#"{{"model":"m","prompt":"{system}","max_tokens":1}}"#);
    let forwarded = r#"gateway_prefix_share_records_total{result="forwarded"}"#;
    let shard_conns = |i: usize| {
        metric(
            admin,
            &format!("gateway_connections_total{{shard=\"{i}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let mut sent = 0u32;
    // At least 12 requests, and more until both shards have accepted some
    // (the kernel spreads connections by their ports; 12 all on one shard is
    // a 1-in-2,000 event, so the loop practically always stops at 12).
    while sent < 12 || (sent < 48 && (shard_conns(0) == 0.0 || shard_conns(1) == 0.0)) {
        let mut c = gw.connect();
        let r = c.post("/v1/completions", &body, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        sent += 1;
        // The shard recorded and published before answering; wait for the
        // control thread to hand the record to the other shard.
        let got = poll(Duration::from_secs(10), || {
            metric(admin, forwarded).filter(|n| *n >= f64::from(sent))
        });
        assert!(got.is_some(), "record {sent} was not forwarded");
        if sent >= 12 {
            // Shards publish their connection counts every 500 ms.
            poll(Duration::from_secs(5), || {
                (shard_conns(0) + shard_conns(1) >= f64::from(sent)).then_some(())
            })
            .expect("connection counts published");
        }
    }
    assert!(
        shard_conns(0) > 0.0 && shard_conns(1) > 0.0,
        "both shards served requests"
    );
    let per_sim = requests(&sims);
    assert_eq!(per_sim.iter().sum::<u64>(), u64::from(sent));
    assert_eq!(
        per_sim.iter().filter(|n| **n > 0).count(),
        1,
        "every request should follow the prefix to one sim: {per_sim:?}"
    );
    // The sharing counters: two shards attached, nothing dropped.
    let j = Client::connect(admin).get("/debug/endpoints").json();
    assert_eq!(j["prefix_share"]["shards"], 2, "{j}");
    assert_eq!(j["prefix_share"]["dropped"], 0);
    assert_eq!(
        metric(
            admin,
            r#"gateway_prefix_share_records_total{result="dropped"}"#
        ),
        Some(0.0)
    );
}

#[test]
fn with_sharing_off_the_counters_stay_zero() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--shards", "2", "--no-scrape", "--prefix-share-ring", "0"],
    );
    let admin = gw.admin.unwrap();
    let body = format!(
        r#"{{"model":"m","prompt":"{}","max_tokens":1}}"#,
        "x".repeat(2000)
    );
    for _ in 0..4 {
        let r = gw.connect().post("/v1/completions", &body, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let j = Client::connect(admin).get("/debug/endpoints").json();
    assert_eq!(j["prefix_share"]["shards"], 0, "{j}");
    assert_eq!(j["prefix_share"]["received"], 0);
}
