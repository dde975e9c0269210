//! Model-version splits and canary rollouts end to end (issue #17 §3): two
//! simulated servers in one InferencePool, one serving `m-v1`, the other
//! `m-v2`; clients ask for `m`.
//! - `InferenceModel.targetModels` splits requests 3:1 between the versions
//!   (the body's `model` is rewritten, so each server sees its own name);
//! - a `ModelRollout` whose canary is healthy walks every step to 100 %;
//! - one whose canary fails every request rolls back within its window, and
//!   clients see at most the canary's share of failures meanwhile.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

fn pool_config(v1: SocketAddr, v2: SocketAddr, extra: &str) -> String {
    let mut y = String::from(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: shardgate
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: pool}]
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool, namespace: default}
spec:
  targetPorts: [{number: 8000}]
  selector: {matchLabels: {app: sim}}
",
    );
    for (i, a) in [v1, v2].iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: pool-{i}\n  namespace: default\n  labels: {{inference.networking.k8s.io/pool-name: pool}}\naddressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
            a.port(),
            a.ip()
        ));
    }
    y.push_str("---\n");
    y.push_str(extra);
    y
}

fn rollout(steps: &str, step: &str) -> String {
    format!(
        "apiVersion: ai.gateway.io/v1alpha1
kind: ModelRollout
metadata: {{name: m-canary, namespace: default}}
spec:
  modelName: m
  poolRef: {{name: pool}}
  stable: m-v1
  canary: m-v2
  steps: {steps}
  stepDuration: {step}
  analysis: {{minRequests: 10}}
"
    )
}

const REQ: &str = r#"{"model":"m","prompt":"hello","max_tokens":1}"#;

fn served(a: SocketAddr) -> u64 {
    sim_stats(a)["requests_total"].as_u64().unwrap()
}

fn ask(c: &mut Client) -> u16 {
    c.post(
        "/v1/completions",
        REQ,
        &[("content-type", "application/json")],
    )
    .status
}

/// A gateway on `yaml` once it knows which endpoint serves which version
/// (its `/v1/models` polls), so every request reaches its version.
fn start(yaml: &str) -> Gateway {
    let gw = Gateway::start(yaml, &["--models-interval", "200ms"]);
    let admin = gw.admin.unwrap();
    let known = poll(Duration::from_secs(15), || {
        let v = Client::connect(admin).get("/debug/endpoints").json();
        let eps = v["endpoints"].as_array()?.clone();
        (eps.len() == 2 && eps.iter().all(|e| !e["served_models"].is_null())).then_some(())
    });
    assert!(known.is_some(), "models never polled");
    gw
}

fn rollout_status(gw: &Gateway) -> serde_json::Value {
    Client::connect(gw.admin.unwrap())
        .get("/debug/rollouts")
        .json()["rollouts"][0]
        .clone()
}

#[test]
fn target_models_split_requests_by_weight_and_rewrite_the_model() {
    let v1 = sim(&["m-v1"], |_| {});
    let v2 = sim(&["m-v2"], |_| {});
    let gw = start(&pool_config(
        v1.addr(),
        v2.addr(),
        "apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: m, namespace: default}
spec:
  modelName: m
  poolRef: {name: pool}
  targetModels: [{name: m-v1, weight: 3}, {name: m-v2, weight: 1}]
",
    ));
    let (b1, b2) = (served(v1.addr()), served(v2.addr()));
    let mut c = gw.connect();
    for _ in 0..200 {
        let r = c.post(
            "/v1/completions",
            REQ,
            &[("content-type", "application/json")],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // Each server answered for the name it serves: the body was rewritten.
        let model = r.json()["model"].as_str().unwrap().to_string();
        assert!(model == "m-v1" || model == "m-v2", "{model}");
    }
    let (n1, n2) = (served(v1.addr()) - b1, served(v2.addr()) - b2);
    assert_eq!(n1 + n2, 200);
    // 3:1 — 150 expected; ±30 is five standard deviations.
    assert!((120..=180).contains(&n1), "m-v1 got {n1}, m-v2 {n2}");
}

#[test]
fn a_healthy_canary_walks_every_step_to_all_traffic() {
    let v1 = sim(&["m-v1"], |_| {});
    let v2 = sim(&["m-v2"], |_| {});
    let gw = start(&pool_config(
        v1.addr(),
        v2.addr(),
        &rollout("[20, 50, 100]", "1s"),
    ));
    assert_eq!(rollout_status(&gw)["canary_weight_percent"], 20);
    let mut c = gw.connect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut weights = vec![20];
    loop {
        assert_eq!(ask(&mut c), 200);
        let s = rollout_status(&gw);
        let w = s["canary_weight_percent"].as_u64().unwrap();
        if weights.last() != Some(&w) {
            weights.push(w);
        }
        if s["state"] == "succeeded" {
            break;
        }
        assert_eq!(s["state"], "progressing", "{s}");
        assert!(Instant::now() < deadline, "still at {s}");
    }
    assert_eq!(weights, [20, 50, 100]);
    // All traffic to the canary now.
    let (b1, b2) = (served(v1.addr()), served(v2.addr()));
    for _ in 0..20 {
        assert_eq!(ask(&mut c), 200);
    }
    assert_eq!((served(v1.addr()) - b1, served(v2.addr()) - b2), (0, 20));
    let m = gw.metrics();
    assert!(
        m.contains(
            "gateway_rollout_state{rollout=\"default/m-canary\",model=\"m\",state=\"succeeded\"} 1"
        ),
        "{m}"
    );
}

#[test]
fn a_failing_canary_rolls_back_within_its_window_and_the_error_budget() {
    let v1 = sim(&["m-v1"], |_| {});
    let v2 = sim(&["m-v2"], |c| c.error_rate = 1.0);
    let gw = start(&pool_config(
        v1.addr(),
        v2.addr(),
        &rollout("[10, 50, 100]", "30s"),
    ));
    let mut c = gw.connect();
    let started = Instant::now();
    let (mut sent, mut failed) = (0u64, 0u64);
    // A paced client (about 200 requests per second), until the rollback.
    let status = loop {
        let at = started + Duration::from_millis(5 * sent);
        while Instant::now() < at {
            std::hint::spin_loop();
        }
        sent += 1;
        match ask(&mut c) {
            200 => {}
            // The canary's 500s, or 503 once passive health checks have
            // ejected it and no endpoint serves the canary's name.
            500 | 503 => failed += 1,
            s => panic!("status {s}"),
        }
        let s = rollout_status(&gw);
        if s["state"] == "rolled_back" {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never rolled back: {s}"
        );
    };
    println!(
        "rolled back after {:?}: {failed} of {sent} requests failed",
        started.elapsed()
    );
    // Judged once 10 canary answers were in (the first step's window is 30 s:
    // the rollback came long before it ended).
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(failed >= 10, "{failed} failures");
    // Clients saw at most the canary's share (10 %) of failures, plus the
    // judging lag (metrics publish every 500 ms, a tick every 250 ms) and
    // sampling noise.
    assert!(
        failed as f64 <= 0.10 * sent as f64 + 25.0,
        "{failed} of {sent} failed"
    );
    assert_eq!(status["canary_weight_percent"], 0);
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.contains("rolled back at step 1 (10 %)"), "{reason}");
    assert!(reason.contains("error rate 100.0 %"), "{reason}");
    // Everything goes to the stable version now.
    let b2 = served(v2.addr());
    for _ in 0..30 {
        assert_eq!(ask(&mut c), 200);
    }
    assert_eq!(served(v2.addr()), b2);
    let m = gw.metrics();
    assert!(
        m.contains(
            "gateway_rollout_canary_weight_percent{rollout=\"default/m-canary\",model=\"m\"} 0"
        ),
        "{m}"
    );
}

#[test]
fn rate_limits_count_the_requested_model_not_the_split_target() {
    let v1 = sim(&["m-v1"], |_| {});
    let v2 = sim(&["m-v2"], |_| {});
    let gw = start(&pool_config(
        v1.addr(),
        v2.addr(),
        "apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: m, namespace: default}
spec:
  modelName: m
  poolRef: {name: pool}
  targetModels: [{name: m-v1, weight: 1}, {name: m-v2, weight: 1}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: SecurityPolicy
metadata: {name: sp, namespace: default}
spec:
  targetRef: {kind: Gateway, name: gw}
  rateLimit:
    perModel:
      m: {requests: 6, unit: hour}
",
    ));
    let mut c = gw.connect();
    let statuses: Vec<u16> = (0..8).map(|_| ask(&mut c)).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
}

/// A split whose canary no endpoint serves (not deployed yet, or every pod
/// of it down): its share falls back to the stable version instead of 503.
#[test]
fn a_split_target_no_endpoint_serves_falls_back_to_one_that_does() {
    let v1 = sim(&["m-v1"], |_| {});
    let other = sim(&["x"], |_| {});
    let gw = start(&pool_config(
        v1.addr(),
        other.addr(),
        "apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: m, namespace: default}
spec:
  modelName: m
  poolRef: {name: pool}
  targetModels: [{name: m-v1, weight: 1}, {name: m-v2, weight: 1}]
",
    ));
    let mut c = gw.connect();
    for _ in 0..40 {
        let r = c.post(
            "/v1/completions",
            REQ,
            &[("content-type", "application/json")],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["model"], "m-v1");
    }
}
