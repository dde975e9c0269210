//! End-to-end tests of `InferenceConfig` `modelPrewarming`: simulated
//! servers with a cold start (`--cold-start-ms`: the first request for a
//! model pays a load time) behind the gateway. A fresh endpoint is warmed by
//! the gateway before clients reach it; meanwhile a warm one serves them
//! (`preferred`), or clients get a clean 503 when nothing warm is left
//! (`strict`).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

/// Model `m` on Service `svc` (the EndpointSlices in `eps` order), and an
/// InferenceConfig whose `modelPrewarming` has `extra` fields.
fn config(eps: &[SocketAddr], prewarm: Option<&str>) -> String {
    let mut y = String::new();
    if let Some(extra) = prewarm {
        y.push_str(&format!(
            "apiVersion: ai.gateway.io/v1alpha1\nkind: InferenceConfig\nmetadata:\n  name: cfg\n  namespace: default\nspec:\n  modelPrewarming:\n    enabled: true\n    models: [\"m\"]\n{extra}---\n"
        ));
    }
    y.push_str("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: default\nspec:\n  gatewayClassName: shardgate\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: 8080\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw\n  rules:\n  - matches:\n    - headers:\n      - name: X-Gateway-Model-Name\n        value: m\n    backendRefs:\n    - name: svc\n      port: 8000\n");
    for (i, a) in eps.iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: svc\naddressType: IPv4\nports:\n- port: {}\nendpoints:\n- addresses: [\"{}\"]\n",
            a.port(),
            a.ip()
        ));
    }
    y
}

const REQ: &str = r#"{"model":"m","prompt":"hello","max_tokens":1}"#;

fn served(a: SocketAddr) -> u64 {
    sim_stats(a)["requests_total"].as_u64().unwrap()
}

fn warm_gauge(gw: &Gateway, ep: SocketAddr) -> Option<f64> {
    let line = format!("gateway_endpoint_warm{{endpoint=\"{ep}\",model=\"m\"}} ");
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
}

/// A warm replica and a new one with a 3 s cold start: while the gateway
/// warms the new one, every client request goes to the warm one and none
/// pays the cold start; once warm, the new one takes its share.
#[test]
fn a_cold_endpoint_is_warmed_before_clients_reach_it() {
    let fresh = sim(&["m"], |c| c.cold_start_ms = 3_000);
    let warm = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(
            &[fresh.addr(), warm.addr()],
            Some("    replicasPerModel: 2\n"),
        ),
        &[],
    );
    // At start every targeted pair is cold; the warm replica's warm-up takes
    // milliseconds (until then a request may fall back to either, as nothing
    // is warm). This stands for a replica that already served before the new
    // one joined.
    let ready = poll(Duration::from_secs(10), || {
        (warm_gauge(&gw, warm.addr())? == 1.0).then_some(())
    });
    assert!(ready.is_some(), "{}", gw.metrics());
    assert_eq!(warm_gauge(&gw, fresh.addr()), Some(0.0));
    for _ in 0..10 {
        let t = Instant::now();
        let r = gw.connect().post("/v1/completions", REQ, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            t.elapsed() < Duration::from_millis(1_500),
            "a client request paid the cold start: {:?}",
            t.elapsed()
        );
    }
    // The fresh sim saw only the warm-up so far.
    assert_eq!(served(fresh.addr()), 1);
    assert_eq!(
        sim_stats(fresh.addr())["cold_starts_total"].as_u64(),
        Some(1)
    );
    let warmed = poll(Duration::from_secs(15), || {
        (warm_gauge(&gw, fresh.addr())? == 1.0).then_some(())
    });
    assert!(warmed.is_some(), "{}", gw.metrics());
    assert_eq!(warm_gauge(&gw, warm.addr()), Some(1.0));
    assert!(gw
        .metrics()
        .contains("gateway_prewarm_duration_seconds_count 2"));
    // Warm now: it takes a share of the traffic, fast.
    for _ in 0..20 {
        let t = Instant::now();
        let r = gw.connect().post("/v1/completions", REQ, &[]);
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_millis(1_500));
    }
    assert!(served(fresh.addr()) > 1, "the warmed endpoint gets traffic");
}

/// `strict`: with only a cold endpoint, a client gets 503 `model_warming`
/// with `Retry-After` instead of waiting out the cold start; once warm, 200.
#[test]
fn strict_mode_answers_503_until_an_endpoint_is_warm() {
    let fresh = sim(&["m"], |c| c.cold_start_ms = 3_000);
    let gw = Gateway::start(&config(&[fresh.addr()], Some("    mode: strict\n")), &[]);
    let r = gw.connect().post("/v1/completions", REQ, &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_warming");
    assert_eq!(r.header("retry-after"), Some("1"));
    let ok = poll(Duration::from_secs(15), || {
        let r = gw.connect().post("/v1/completions", REQ, &[]);
        (r.status == 200).then_some(())
    });
    assert!(ok.is_some(), "never served once warm");
    assert_eq!(warm_gauge(&gw, fresh.addr()), Some(1.0));
}

/// A warm-up that keeps failing is given up after `maxAttempts`, and the
/// endpoint serves as if warm (no endpoint is hidden for good).
#[test]
fn a_failing_warm_up_is_given_up_and_the_endpoint_serves() {
    let broken = sim(&["m"], |c| c.error_rate = 1.0);
    let gw = Gateway::start(
        &config(
            &[broken.addr()],
            Some("    mode: strict\n    maxAttempts: 2\n    timeout: 2s\n"),
        ),
        &[],
    );
    // Two tries, 1 s apart, then given up: requests reach the endpoint (and
    // get its 500s, retried and answered by the gateway as upstream errors).
    let reached = poll(Duration::from_secs(15), || {
        let r = gw.connect().post("/v1/completions", REQ, &[]);
        (r.status != 503 || r.json()["error"]["code"] != "model_warming").then_some(r.status)
    });
    assert!(reached.is_some());
    assert!(
        served(broken.addr()) >= 3,
        "two warm-ups and a client request"
    );
    assert_eq!(warm_gauge(&gw, broken.addr()), Some(0.0));
}

/// Without `modelPrewarming` nothing is sent before clients come, and the
/// first client request pays the cold start (the baseline of the test above).
#[test]
fn without_prewarming_the_first_request_pays_the_cold_start() {
    let fresh = sim(&["m"], |c| c.cold_start_ms = 1_000);
    let gw = Gateway::start(&config(&[fresh.addr()], None), &[]);
    assert_eq!(served(fresh.addr()), 0);
    let t = Instant::now();
    let r = gw.connect().post("/v1/completions", REQ, &[]);
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(1_000),
        "{:?}",
        t.elapsed()
    );
    assert!(!gw.metrics().contains("gateway_endpoint_warm"));
}

/// Scale-up by a live reload: the endpoint that appears has a 2 s cold
/// start; the gateway warms it before the reload's state routes to it, so
/// no client request pays the load time, and it serves once warm.
#[test]
fn an_endpoint_a_reload_adds_is_warmed_before_clients_reach_it() {
    let warm = sim(&["m"], |_| {});
    let fresh = sim(&["m"], |c| c.cold_start_ms = 2_000);
    let gw = Gateway::start(&config(&[warm.addr()], Some("")), &[]);
    let ready = poll(Duration::from_secs(10), || {
        (warm_gauge(&gw, warm.addr())? == 1.0).then_some(())
    });
    assert!(ready.is_some(), "{}", gw.metrics());
    let dir = gw.process.dir().unwrap();
    let tmp = dir.join("config.yaml.tmp");
    std::fs::write(&tmp, config(&[warm.addr(), fresh.addr()], Some(""))).unwrap();
    std::fs::rename(&tmp, dir.join("config.yaml")).unwrap();
    let cold = poll(Duration::from_secs(10), || {
        (warm_gauge(&gw, fresh.addr())? == 0.0).then_some(())
    });
    assert!(
        cold.is_some(),
        "the new endpoint is not warming:\n{}",
        gw.metrics()
    );
    let mut c = gw.connect();
    for _ in 0..10 {
        let t = Instant::now();
        let r = c.post("/v1/completions", REQ, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            t.elapsed() < Duration::from_millis(1_000),
            "a client request paid the cold start: {:?}",
            t.elapsed()
        );
    }
    let warmed = poll(Duration::from_secs(15), || {
        (warm_gauge(&gw, fresh.addr())? == 1.0).then_some(())
    });
    assert!(warmed.is_some(), "{}", gw.metrics());
    // Once warm it takes its share (its only request so far was the warm-up).
    let got = poll(Duration::from_secs(10), || {
        let r = c.post("/v1/completions", REQ, &[]);
        assert_eq!(r.status, 200);
        (served(fresh.addr()) >= 2).then_some(())
    });
    assert!(got.is_some(), "the warmed endpoint never served");
}
