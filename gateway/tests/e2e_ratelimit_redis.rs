//! Global rate limits through a real Redis (issue #15 section 3): two gateway
//! processes share one `redis-server` (started by the test; Debian's package,
//! installed by `scripts/test`), so a SecurityPolicy limit holds for the fleet
//! within the accuracy `ratelimit_global` states; when Redis is killed,
//! `--rate-limit-redis-failure open` falls back to the per-replica limit and
//! `closed` refuses with 429 `rate_limit_unavailable`, both counted in metrics;
//! when Redis comes back, the limits are global again.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use shardgate_testkit::RedisServer;

fn limited(backend: SocketAddr, per_minute: u32) -> String {
    let mut y = config(&[("big", vec![(1, vec![backend])])]);
    y.push_str(&format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata:\n  name: fleet\nspec:\n  targetRef:\n    kind: Gateway\n    name: gw\n  rateLimit:\n    perModel:\n      big: {{requests: {per_minute}, unit: minute}}\n"
    ));
    y
}

fn ask(c: &mut Client) -> Response {
    c.post(
        "/v1/chat/completions",
        &chat("big", false, 2),
        &[("content-type", "application/json")],
    )
}

/// A gateway sharing limits through `redis`.
fn gateway(yaml: &str, redis: &RedisServer, failure: &str) -> Gateway {
    let url = redis.url();
    Gateway::start(
        yaml,
        &[
            "--rate-limit-redis",
            &url,
            "--rate-limit-redis-failure",
            failure,
            "--rate-limit-redis-timeout",
            "500ms",
        ],
    )
}

fn metric(gw: &Gateway, series: &str) -> Option<f64> {
    gw.metrics().lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.trim().parse::<f64>().ok())
    })
}

/// Polls until the gateway's metric `series` equals `want`.
fn wait_metric(gw: &Gateway, series: &str, want: f64) {
    let seen = poll(Duration::from_secs(15), || {
        (metric(gw, series) == Some(want)).then_some(())
    });
    assert!(
        seen.is_some(),
        "{series} never became {want}:\n{}",
        gw.metrics()
    );
}

#[test]
fn a_limit_holds_for_the_fleet_within_the_stated_accuracy() {
    const LIMIT: u64 = 20;
    let redis = RedisServer::start();
    let b = sim(&["big"], |_| {});
    let yaml = limited(b.addr(), LIMIT as u32);
    let gws = [
        gateway(&yaml, &redis, "open"),
        gateway(&yaml, &redis, "open"),
    ];
    // Both replicas registered: leases are sized for two (k = 20 / 8 = 2).
    for gw in &gws {
        wait_metric(gw, "gateway_rate_limit_redis_replicas ", 2.0);
    }
    let mut clients: Vec<Client> = gws.iter().map(|g| g.connect()).collect();
    let started = Instant::now();
    let (mut ok, mut limited) = (0u64, 0u64);
    for i in 0..60 {
        let r = ask(&mut clients[i % 2]);
        match r.status {
            200 => {
                ok += 1;
                assert_eq!(r.header("x-ratelimit-limit-requests"), Some("20"));
            }
            429 => {
                limited += 1;
                assert_eq!(
                    r.json()["error"]["code"],
                    "rate_limit_exceeded",
                    "{}",
                    r.text()
                );
                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=3).contains(&retry), "retry-after {retry}");
            }
            s => panic!("status {s}: {}", r.text()),
        }
    }
    // One GCRA cell for the fleet: 20, plus one permit per 3 s of the run,
    // less what the two leases still hold (at most 1.5 k = 3 each). Without
    // Redis, each replica would have admitted 20.
    let refilled = started.elapsed().as_secs() / 3 + 1;
    assert!(ok <= LIMIT + refilled, "{ok} admitted (limit {LIMIT})");
    assert!(ok + 6 >= LIMIT, "{ok} admitted (limit {LIMIT})");
    assert_eq!(ok + limited, 60);
    for gw in &gws {
        wait_metric(gw, "gateway_rate_limit_redis_up ", 1.0);
        assert!(metric(gw, "gateway_rate_limit_redis_permits_granted_total ").unwrap() >= 1.0);
        assert!(metric(gw, "gateway_rate_limit_redis_refusals_total ").unwrap() >= 1.0);
    }
}

#[test]
fn when_redis_dies_open_falls_back_to_the_local_limit_and_closed_refuses() {
    const LIMIT: u32 = 40;
    let mut redis = RedisServer::start();
    let b = sim(&["big"], |_| {});
    let yaml = limited(b.addr(), LIMIT);
    let open = gateway(&yaml, &redis, "open");
    let closed = gateway(&yaml, &redis, "closed");
    for gw in [&open, &closed] {
        wait_metric(gw, "gateway_rate_limit_redis_replicas ", 2.0);
    }
    let (mut co, mut cc) = (open.connect(), closed.connect());
    for _ in 0..3 {
        assert_eq!(ask(&mut co).status, 200);
        assert_eq!(ask(&mut cc).status, 200);
    }
    redis.kill();

    // Open: whatever the lease held, then the per-replica limit; nothing refused
    // well under it.
    for i in 0..15 {
        let r = ask(&mut co);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    wait_metric(&open, "gateway_rate_limit_redis_up ", 0.0);
    assert!(
        metric(
            &open,
            "gateway_rate_limit_redis_fallback_total{mode=\"open\"} "
        )
        .unwrap()
            >= 1.0
    );
    assert!(metric(&open, "gateway_rate_limit_redis_errors_total ").unwrap() >= 1.0);

    // Closed: whatever the lease held (at most 1.5 k = 7), then 429.
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let r = ask(&mut cc);
        if r.status == 429 {
            assert_eq!(
                r.json()["error"]["code"],
                "rate_limit_unavailable",
                "{}",
                r.text()
            );
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        statuses.push(r.status);
    }
    let first_refusal = statuses
        .iter()
        .position(|s| *s == 429)
        .expect("closed never refused");
    assert!(first_refusal <= 7, "{statuses:?}");
    assert!(
        statuses[first_refusal..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    assert!(
        metric(
            &closed,
            "gateway_rate_limit_redis_fallback_total{mode=\"closed\"} "
        )
        .unwrap()
            >= 1.0
    );

    // Redis back (empty): the lease thread reconnects within a second and the
    // closed replica serves again.
    redis.restart();
    wait_metric(&closed, "gateway_rate_limit_redis_up ", 1.0);
    let back = poll(Duration::from_secs(10), || {
        (ask(&mut cc).status == 200).then_some(())
    });
    assert!(back.is_some(), "the closed replica never served again");
}
