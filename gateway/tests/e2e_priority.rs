//! End-to-end tests of request priority and default batching: the `shardgate`
//! binary in front of in-process simulated vLLM servers on 127.0.0.1.
//!
//! - `InferenceModel` criticality and `InferenceObjective` priority (by the
//!   `x-gateway-inference-objective` header) decide who is shed when every
//!   endpoint is saturated; an unknown objective is a 400;
//! - a route matched by path to an InferencePool labels its metrics with the
//!   models the pool serves (and a KServe path's model), not `other`;
//! - a `BatchingPolicy` attached with `targetRefs` batches a route that links no
//!   policy itself, and the resolved priority picks its queue.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// A Gateway, one route sending everything (and a KServe v2 path) to InferencePool
/// `pool` at `addr`, the pool's models and objectives:
/// `crit` Critical (1), `shed` Sheddable (-1), objectives `urgent` (10), `bulk` (-5).
fn pool_config(addr: SocketAddr) -> String {
    let port = addr.port();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: default
spec:
  gatewayClassName: shardgate
  listeners:
  - name: http
    protocol: HTTP
    port: 8080
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: pool-route
  namespace: default
spec:
  parentRefs:
  - name: gw
  rules:
  - matches:
    - path: {{type: Exact, value: /v2/models/resnet/infer}}
    backendRefs:
    - {{group: inference.networking.k8s.io, kind: InferencePool, name: pool}}
  - matches:
    - path: {{type: PathPrefix, value: /}}
    backendRefs:
    - {{group: inference.networking.k8s.io, kind: InferencePool, name: pool}}
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata:
  name: pool
  namespace: default
spec:
  targetPorts:
  - number: {port}
  selector:
    matchLabels:
      app: sim
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: pool-1
  namespace: default
  labels:
    inference.networking.k8s.io/pool-name: pool
addressType: IPv4
ports:
- port: {port}
endpoints:
- addresses: [\"{ip}\"]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata:
  name: crit
  namespace: default
spec:
  modelName: crit
  criticality: Critical
  poolRef: {{name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata:
  name: shed
  namespace: default
spec:
  modelName: shed
  criticality: Sheddable
  poolRef: {{name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata:
  name: urgent
  namespace: default
spec:
  priority: 10
  poolRef: {{group: inference.networking.k8s.io, kind: InferencePool, name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata:
  name: bulk
  namespace: default
spec:
  priority: -5
  poolRef: {{name: pool}}
",
        ip = addr.ip()
    )
}

fn completion(model: &str) -> String {
    format!(r#"{{"model":"{model}","prompt":"x","max_tokens":1}}"#)
}

/// The value of the first metrics line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn when_saturated_sheddable_models_and_objectives_are_shed_and_critical_ones_served() {
    let a = sim(&["crit", "shed"], |c| {
        c.decode_step_us = 20_000;
        c.max_num_seqs = 1;
    });
    let gw = Gateway::start(
        &pool_config(a.addr()),
        &["--saturation-waiting", "0", "--scrape-interval", "50ms"],
    );
    // Two streams: one runs, one waits in the backend's queue: it is saturated.
    let streams = saturate(&gw, "crit", 2, 60);
    let admin = gw.admin.unwrap();

    // Sheddable by its InferenceModel, and by the objective header (which beats
    // the model's own Critical).
    for (model, headers) in [
        ("shed", vec![]),
        ("crit", vec![("x-gateway-inference-objective", "bulk")]),
    ] {
        let r = gw
            .connect()
            .post("/v1/completions", &completion(model), &headers);
        assert_eq!(r.status, 429, "{model} {headers:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "shed_saturated");
        assert!(r.header("retry-after").is_some());
    }
    // Served while saturated: Critical, a sheddable model lifted by an objective or
    // by X-Request-Priority.
    let addr = gw.addr;
    let served: Vec<_> = [
        ("crit", None),
        ("shed", Some(("x-gateway-inference-objective", "urgent"))),
        ("shed", Some(("x-request-priority", "1"))),
    ]
    .into_iter()
    .map(|(model, header)| {
        std::thread::spawn(move || {
            let headers: Vec<(&str, &str)> = header.into_iter().collect();
            let r = Client::connect(addr).post("/v1/completions", &completion(model), &headers);
            (model, header, r.status, r.text())
        })
    })
    .collect();
    for w in served {
        let (model, header, status, text) = w.join().unwrap();
        assert_eq!(status, 200, "{model} {header:?} must go through: {text}");
    }
    drop(streams);

    // The route matches by path only, yet its pool's models have their own labels.
    let text = poll(Duration::from_secs(10), || {
        let t = Client::connect(admin).get("/metrics").text();
        let shed = metric(
            &t,
            "gateway_requests_total{model=\"shed\",route=\"default/pool-route\",code=\"429\"} ",
        )?;
        let crit = metric(
            &t,
            "gateway_requests_total{model=\"crit\",route=\"default/pool-route\",code=\"200\"} ",
        )?;
        (shed >= 1.0 && crit >= 1.0).then_some(t)
    });
    assert!(text.is_some(), "no per-model labels for the pool's models");
}

#[test]
fn an_unknown_objective_is_a_400_and_a_kserve_path_labels_its_model() {
    let a = sim(&["crit", "shed"], |_| {});
    let gw = Gateway::start(&pool_config(a.addr()), &[]);
    let mut c = gw.connect();
    let r = c.post(
        "/v1/completions",
        &completion("crit"),
        &[("x-gateway-inference-objective", "nightly")],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let j = r.json();
    assert_eq!(j["error"]["code"], "unknown_inference_objective");
    assert_eq!(j["error"]["type"], "invalid_request_error");
    assert!(
        j["error"]["message"].as_str().unwrap().contains("nightly"),
        "{j}"
    );
    // Even with an explicit priority, a wrong name is the client's error.
    let r = c.post(
        "/v1/completions",
        &completion("crit"),
        &[
            ("x-gateway-inference-objective", "nightly"),
            ("x-request-priority", "3"),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // Known objectives go through.
    for name in ["urgent", "bulk"] {
        let r = c.post(
            "/v1/completions",
            &completion("crit"),
            &[("x-gateway-inference-objective", name)],
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
    }
    // A KServe v2 path names its model (the simulator does not serve it: any
    // answer will do, the label is what counts).
    let r = c.post("/v2/models/resnet/infer", r#"{"inputs":[]}"#, &[]);
    assert!(r.status >= 200, "{}", r.text());
    let admin = gw.admin.unwrap();
    let found = poll(Duration::from_secs(10), || {
        let t = Client::connect(admin).get("/metrics").text();
        t.lines()
            .any(|l| {
                l.starts_with(
                    "gateway_requests_total{model=\"resnet\",route=\"default/pool-route\"",
                )
            })
            .then_some(())
    });
    assert!(found.is_some(), "the KServe path's model has no label");
}

#[test]
fn a_target_refs_default_batching_policy_batches_a_route_without_extension_ref() {
    let a = sim(&["emb"], |_| {});
    let base = config(&[("emb", vec![(1, vec![a.addr()])])]);
    assert!(!base.contains("ExtensionRef"));
    let yaml = format!(
        "{base}---
apiVersion: ai.gateway.io/v1alpha1
kind: BatchingPolicy
metadata:
  name: route-default
  namespace: default
spec:
  maxBatchSize: 32
  maxLatency: 50ms
  priorityQueues:
  - name: real-time
    maxLatency: 10ms
    maxBatchSize: 4
  - name: batch
    maxLatency: 100ms
    maxBatchSize: 64
  targetRefs:
  - group: gateway.networking.k8s.io
    kind: HTTPRoute
    name: r0
"
    );
    let gw = Gateway::start(&yaml, &[]);
    let before = sim_stats(a.addr())["requests_total"].as_u64().unwrap();
    let addr = gw.addr;
    let n = 12;
    let workers: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let body = format!(r#"{{"model":"emb","input":["text {i}"]}}"#);
                let r = Client::connect(addr).post("/v1/embeddings", &body, &[]);
                assert_eq!(r.status, 200, "{}", r.text());
                r.json()
            })
        })
        .collect();
    for w in workers {
        let j = w.join().unwrap();
        assert_eq!(j["data"].as_array().unwrap().len(), 1);
    }
    let upstream_calls = sim_stats(a.addr())["requests_total"].as_u64().unwrap() - before;
    assert!(
        upstream_calls < n,
        "{n} requests made {upstream_calls} upstream calls: nothing was batched"
    );
    // Without X-Priority, the resolved priority picks the queue: above 0 the most
    // urgent one, below 0 the least urgent one.
    let mut c = gw.connect();
    for prio in ["5", "-1"] {
        let r = c.post(
            "/v1/embeddings",
            r#"{"model":"emb","input":"x"}"#,
            &[("x-request-priority", prio)],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let admin = gw.admin.unwrap();
    let seen = poll(Duration::from_secs(10), || {
        let t = Client::connect(admin).get("/metrics").text();
        let p = "gateway_batch_size_count{policy=\"default/route-default\",priority=";
        let default = metric(&t, &format!("{p}\"default\"}} "))?;
        let rt = metric(&t, &format!("{p}\"real-time\"}} "))?;
        let batch = metric(&t, &format!("{p}\"batch\"}} "))?;
        (default >= 1.0 && rt >= 1.0 && batch >= 1.0).then_some(())
    });
    assert!(
        seen.is_some(),
        "batches were not counted in the default, real-time and batch queues"
    );
}
