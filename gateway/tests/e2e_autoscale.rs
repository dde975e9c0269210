//! End-to-end test of the per-model autoscaling signals: a load through the
//! gateway shows in `GET /autoscale` (the shape KEDA's `metrics-api` scaler
//! reads) and in the `gateway_model_*` metrics: arrival rate, running
//! requests, a measured capacity per replica, desired replicas now and
//! forecast 1–5 minutes ahead.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_load_shows_in_the_autoscaling_signals() {
    let backend = sim(&["m"], |c| c.decode_step_us = 20_000);
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![backend.addr()])])]),
        &["--autoscale-interval", "200ms", "--scrape-interval", "50ms"],
    );
    let admin = gw.admin.unwrap();
    // Four streams running at once (20 ms a token, 400 tokens), kept open
    // while the signals are read.
    let streams: Vec<Client> = (0..4)
        .map(|_| {
            let mut c = gw.connect();
            let body = chat("m", true, 400);
            c.send_raw(
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            assert_eq!(c.read_head().0, 200);
            c
        })
        .collect();
    let mut extra = Vec::new();
    let signals = poll(Duration::from_secs(15), || {
        // A few more short requests so the arrival rate is above 0.
        let r = gw.connect().post(
            "/v1/completions",
            r#"{"model":"m","prompt":"x","max_tokens":1}"#,
            &[],
        );
        extra.push(r.status);
        let j = Client::connect(admin).get("/autoscale").json();
        let m = &j["models"]["m"];
        (m["arrival_rate"].as_f64()? > 0.0
            && m["running"].as_f64()? >= 1.0
            && m["desired_replicas"].as_u64()? >= 1)
            .then(|| j.clone())
    })
    .expect("the load never showed in /autoscale");
    assert!(extra.iter().all(|s| *s == 200));
    let m = &signals["models"]["m"];
    assert_eq!(signals["interval_seconds"], 0.2);
    assert_eq!(m["ready_replicas"], 1);
    assert!(m["capacity_per_replica"].as_f64().unwrap() >= 1.0, "{m}");
    for h in ["1m", "2m", "3m", "4m", "5m"] {
        assert!(
            m["forecast"][h]["arrival_rate"].as_f64().unwrap() >= 0.0,
            "{m}"
        );
        assert!(m["forecast"][h]["desired_replicas"].is_u64(), "{m}");
    }
    let metrics = gw.metrics();
    for name in [
        "gateway_model_arrival_rate{model=\"m\"}",
        "gateway_model_queued{model=\"m\",where=\"backend\"}",
        "gateway_model_capacity_per_replica{model=\"m\"}",
        "gateway_model_desired_replicas{model=\"m\"}",
        "gateway_model_forecast_replicas{model=\"m\",horizon=\"5m\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    drop(streams);
}

#[test]
fn the_signals_can_be_turned_off() {
    let backend = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![backend.addr()])])]),
        &["--autoscale-interval", "0"],
    );
    assert_eq!(
        Client::connect(gw.admin.unwrap()).get("/autoscale").status,
        404
    );
    assert!(!gw.metrics().contains("gateway_model_desired_replicas"));
}
