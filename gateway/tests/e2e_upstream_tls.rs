//! End to end: upstream TLS through a `BackendTLSPolicy`. Simulated backends
//! serve HTTPS (`--tls-cert`/`--tls-key`) with certificates from a test CA
//! (rcgen); the policy trusts that CA through a ConfigMap. Completions,
//! streaming, keep-alive reuse of the upstream TLS connection (counted by the
//! backend's accepted connections), telemetry scrapes, health checks and
//! batched calls work over TLS, and so do gRPC calls and gRPC health checks
//! (ALPN `h2`); a certificate for another name, one from an unknown CA, a plaintext backend
//! under a policy and a TLS backend without a policy each fail fast with a 502
//! that says why, and the `tls` error kind is counted.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::pki::{client_config, https_get, TestCa};
use common::*;
use shardgate_testkit::temp_dir;

/// The name every policy verifies.
const HOST: &str = "vllm.internal";

/// One route per `(model, backend, policy?)` (service `svc-{i}-0`), and a
/// BackendTLSPolicy verifying [`HOST`] with `ca_pem` (ConfigMap `ca`) for the
/// backends marked `true`.
fn yaml(ca_pem: &str, backends: &[(&str, SocketAddr, bool)]) -> String {
    let routes: Vec<(&str, Vec<Group>)> = backends
        .iter()
        .map(|(m, a, _)| (*m, vec![(1, vec![*a])]))
        .collect();
    let mut y = config(&routes);
    let pem: String = ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    y.push_str(&format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca, namespace: default}}\ndata:\n  ca.crt: |\n{pem}"
    ));
    for (i, (_, _, tls)) in backends.iter().enumerate() {
        if *tls {
            y.push_str(&format!(
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: tls-{i}, namespace: default}}\nspec:\n  targetRefs:\n  - {{group: \"\", kind: Service, name: svc-{i}-0}}\n  validation:\n    caCertificateRefs:\n    - {{group: \"\", kind: ConfigMap, name: ca}}\n    hostname: {HOST}\n"
            ));
        }
    }
    y
}

/// A simulated HTTPS backend serving `model` with `leaf` (written under `dir`).
fn https_sim(model: &str, leaf: &common::pki::Leaf, dir: &Path, name: &str) -> SimHandle {
    let (cert, key) = leaf.write(dir, name);
    sim(&[model], |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
}

/// `/sim/stats` of an HTTPS backend.
fn stats(ca: &TestCa, addr: SocketAddr) -> serde_json::Value {
    let body = https_get(&client_config(ca), addr, HOST, "/sim/stats");
    serde_json::from_slice(&body).unwrap()
}

/// The `gateway_upstream_errors_total` samples of kind `kind`, summed.
fn upstream_errors(gw: &Gateway, kind: &str) -> u64 {
    let label = format!("kind=\"{kind}\"");
    gw.metrics()
        .lines()
        .filter(|l| l.starts_with("gateway_upstream_errors_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn backend_tls_policy_carries_completions_streams_and_scrapes_over_tls() {
    let ca = TestCa::new();
    let dir = temp_dir("shardgate-uptls");
    let backend = https_sim("m", &ca.leaf(&[HOST]), &dir, "good");
    let gw = Gateway::start(&yaml(&ca.pem(), &[("m", backend.addr(), true)]), &[]);
    let mut c = gw.connect();

    let r = c.post("/v1/chat/completions", &chat("m", false, 3), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "m", "{}", r.text());

    // SSE streaming over the upstream TLS connection.
    let r = c.post("/v1/chat/completions", &chat("m", true, 4), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.text();
    assert!(body.matches("data: {").count() >= 4, "{body}");
    assert!(body.contains("data: [DONE]"), "{body}");

    // Telemetry scraped over TLS shows in the debug view, with the policy.
    let admin = gw.admin.unwrap();
    let j = Client::connect(admin).get("/debug/endpoints").json();
    assert_eq!(
        j["endpoints"][0]["tls"],
        serde_json::json!({"policy": "default/tls-0", "hostname": HOST})
    );
    let t = poll(Duration::from_secs(10), || {
        let j = Client::connect(admin).get("/debug/endpoints").json();
        let t = j["endpoints"][0]["telemetry"].clone();
        (t["server"] == "vllm" && t["kv_usage"].is_number()).then_some(t)
    });
    assert!(t.is_some(), "no telemetry scraped over TLS");

    // Keep-alive: five more requests open no new upstream connection (the
    // stats call itself is one).
    let before = stats(&ca, backend.addr())["connections_total"]
        .as_u64()
        .unwrap();
    for _ in 0..5 {
        let r = c.post("/v1/chat/completions", &chat("m", false, 1), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let s = stats(&ca, backend.addr());
    let opened = s["connections_total"].as_u64().unwrap() - before;
    assert!(
        opened <= 2,
        "{opened} connections for 5 requests: the upstream TLS connection was not reused"
    );
    assert_eq!(s["tls_handshake_failures_total"], 0, "{s}");
    assert_eq!(upstream_errors(&gw, "tls"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One request to `model`: its status and body, and how long it took.
fn fails(gw: &Gateway, model: &str) -> (u16, String, Duration) {
    let t = Instant::now();
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat(model, false, 1), &[]);
    (r.status, r.text(), t.elapsed())
}

#[test]
fn certificates_that_do_not_verify_fail_fast_with_a_502_that_says_why() {
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let dir = temp_dir("shardgate-uptls");
    let wrong_name = https_sim("name", &ca.leaf(&["other.internal"]), &dir, "name");
    let unknown_ca = https_sim("ca", &other_ca.leaf(&[HOST]), &dir, "ca");
    let gw = Gateway::start(
        &yaml(
            &ca.pem(),
            &[
                ("name", wrong_name.addr(), true),
                ("ca", unknown_ca.addr(), true),
            ],
        ),
        &[],
    );
    for (model, why) in [
        ("name", "TLS: certificate not valid for the name"),
        ("ca", "TLS: certificate signed by an unknown CA"),
    ] {
        let (status, body, took) = fails(&gw, model);
        assert!(matches!(status, 502 | 503), "{model}: {status} {body}");
        assert!(body.contains(why), "{model}: {body}");
        assert!(took < Duration::from_secs(5), "{model}: took {took:?}");
    }
    let counted = poll(Duration::from_secs(10), || {
        (upstream_errors(&gw, "tls") >= 2).then_some(())
    });
    assert!(counted.is_some(), "{}", gw.metrics());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plaintext_backend_under_a_policy_and_a_tls_backend_without_one_both_fail() {
    let ca = TestCa::new();
    let dir = temp_dir("shardgate-uptls");
    let plain = sim(&["plain"], |_| {});
    let tls = https_sim("tls", &ca.leaf(&[HOST]), &dir, "tls");
    let gw = Gateway::start(
        &yaml(
            &ca.pem(),
            &[("plain", plain.addr(), true), ("tls", tls.addr(), false)],
        ),
        &[],
    );
    // A plaintext server answers the ClientHello with HTTP, or closes.
    let (status, body, took) = fails(&gw, "plain");
    assert!(matches!(status, 502 | 503), "{status} {body}");
    assert!(
        body.contains("TLS: handshake failed (does the backend speak TLS?)"),
        "{body}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(sim_stats(plain.addr())["requests_total"], 0);

    // No policy: the gateway speaks plaintext, which the TLS server refuses;
    // nothing is served, nothing hangs.
    let (status, body, took) = fails(&gw, "tls");
    assert!(matches!(status, 502 | 503), "{status} {body}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let j = Client::connect(gw.admin.unwrap())
        .get("/debug/endpoints")
        .json();
    assert!(j["endpoints"][1]["tls"].is_null(), "{j}");
    let s = stats(&ca, tls.addr());
    assert_eq!(s["requests_total"], 0, "{s}");
    assert!(
        s["tls_handshake_failures_total"].as_u64().unwrap() >= 1,
        "{s}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn batched_calls_go_over_tls_too() {
    let ca = TestCa::new();
    let dir = temp_dir("shardgate-uptls");
    let backend = https_sim("emb", &ca.leaf(&[HOST]), &dir, "emb");
    let base = yaml(&ca.pem(), &[("emb", backend.addr(), true)]);
    let linked = base.replacen(
        "    backendRefs:\n",
        "    filters:\n    - type: ExtensionRef\n      extensionRef: {group: ai.gateway.io, kind: BatchingPolicy, name: b}\n    backendRefs:\n",
        1,
    );
    let cfg = format!(
        "{linked}---\napiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata: {{name: b, namespace: default}}\nspec:\n  maxBatchSize: 32\n  maxLatency: 300ms\n  adaptiveBatching: {{enabled: false}}\n"
    );
    let gw = Gateway::start(&cfg, &[]);
    let before = stats(&ca, backend.addr())["requests_total"]
        .as_u64()
        .unwrap();
    let addr = gw.addr;
    let n = 8;
    let workers: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let body = format!(r#"{{"model":"emb","input":["text {i}","more {i}"]}}"#);
                let r = Client::connect(addr).post("/v1/embeddings", &body, &[]);
                assert_eq!(r.status, 200, "{}", r.text());
                r.json()["data"].as_array().map_or(0, Vec::len)
            })
        })
        .collect();
    for w in workers {
        assert_eq!(w.join().unwrap(), 2, "each client gets its own two vectors");
    }
    let calls = stats(&ca, backend.addr())["requests_total"]
        .as_u64()
        .unwrap()
        - before;
    assert!(
        (1..n as u64).contains(&calls),
        "{calls} upstream calls for {n} requests: not batched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rule 0 of `yaml` linked to an InferencePolicy whose health check is an
/// inference test request every 100 ms.
fn with_health_check(yaml: &str) -> String {
    let linked = yaml.replacen(
        "    backendRefs:\n",
        "    filters:\n    - type: ExtensionRef\n      extensionRef: {group: ai.gateway.io, kind: InferencePolicy, name: hc}\n    backendRefs:\n",
        1,
    );
    format!(
        "{linked}---\napiVersion: ai.gateway.io/v1alpha1\nkind: InferencePolicy\nmetadata: {{name: hc, namespace: default}}\nspec:\n  healthCheck:\n    interval: 100ms\n    timeout: 2s\n    inferenceTest: {{enabled: true, model: m}}\n"
    )
}

/// The health entry of endpoint 0 in `/debug/endpoints` once `ok` holds for it.
fn health_when(gw: &Gateway, ok: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
    let admin = gw.admin.unwrap();
    poll(Duration::from_secs(10), || {
        let j = Client::connect(admin).get("/debug/endpoints").json();
        let h = j["endpoints"][0]["health"].clone();
        ok(&h).then_some(h)
    })
}

#[test]
fn health_checks_run_over_tls_and_fail_on_a_certificate_that_does_not_verify() {
    let ca = TestCa::new();
    let dir = temp_dir("shardgate-uptls");
    let good = https_sim("m", &ca.leaf(&[HOST]), &dir, "good");
    let gw = Gateway::start(
        &with_health_check(&yaml(&ca.pem(), &[("m", good.addr(), true)])),
        &[],
    );
    let h = health_when(&gw, |h| h["checks"].as_u64() >= Some(2));
    let h = h.expect("no health checks ran");
    assert_eq!(h["healthy"], true, "{h}");
    assert_eq!(h["consecutive_failures"], 0, "{h}");
    drop(gw);

    let bad = https_sim("m", &ca.leaf(&["other.internal"]), &dir, "bad");
    let gw = Gateway::start(
        &with_health_check(&yaml(&ca.pem(), &[("m", bad.addr(), true)])),
        &[],
    );
    let h = health_when(&gw, |h| h["healthy"] == false);
    let h = h.expect("a backend failing verification stayed healthy");
    let why = h["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("TLS: certificate not valid for the name"),
        "{h}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fresh_upstream_connections_resume_the_tls_session() {
    let ca = TestCa::new();
    let dir = temp_dir("shardgate-uptls");
    let backend = https_sim("m", &ca.leaf(&[HOST]), &dir, "good");
    // No pooling: every request opens (and handshakes) a connection.
    let gw = Gateway::start(
        &yaml(&ca.pem(), &[("m", backend.addr(), true)]),
        &["--upstream-idle-per-endpoint", "0"],
    );
    for _ in 0..3 {
        let r = gw
            .connect()
            .post("/v1/chat/completions", &chat("m", false, 1), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let sample = |m: &str, result: &str| -> u64 {
        let key = format!("gateway_upstream_tls_handshakes_total{{result=\"{result}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let counted = poll(Duration::from_secs(10), || {
        let m = gw.metrics();
        (sample(&m, "full") + sample(&m, "resumed") >= 3).then_some(m)
    });
    let m = counted.expect("three upstream handshakes not counted");
    // The first full handshake may be the control thread's (a scrape): the
    // session cache is one per policy, shared with the shards.
    assert!(
        sample(&m, "resumed") >= 2,
        "later connections did not resume: {m}"
    );
    // The control thread's scrapes and model polls reach it over TLS too,
    // counted on their own.
    let control = poll(Duration::from_secs(10), || {
        let m = gw.metrics();
        let key = "gateway_control_tls_handshakes_total{result=\"";
        let n: u64 = m
            .lines()
            .filter(|l| l.starts_with(key))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        (n >= 1).then_some(())
    });
    assert!(control.is_some(), "{}", gw.metrics());
    let _ = std::fs::remove_dir_all(&dir);
}

/// [`shardgate_testkit::grpc::grpc_config`] for `backends` (model, address,
/// under the policy?), with the BackendTLSPolicy documents of [`yaml`] and a
/// gRPC health check on every backend.
fn grpc_yaml(ca_pem: &str, backends: &[(&str, SocketAddr, bool)]) -> String {
    let routes: Vec<(&str, String, SocketAddr)> = backends
        .iter()
        .enumerate()
        .map(|(i, (m, a, _))| (*m, format!("svc-{i}-0"), *a))
        .collect();
    let refs: Vec<(&str, &str, SocketAddr)> = routes
        .iter()
        .map(|(m, s, a)| (*m, s.as_str(), *a))
        .collect();
    // The first model's rule health-checks its backend (gRPC health, 100 ms).
    let mut y = shardgate_testkit::grpc::grpc_config(&refs).replacen(
        "    backendRefs:\n    - name: svc-",
        "    filters:\n    - {type: ExtensionRef, extensionRef: {group: ai.gateway.io, kind: InferencePolicy, name: hc}}\n    backendRefs:\n    - name: svc-",
        1,
    );
    y.push_str("---\napiVersion: ai.gateway.io/v1alpha1\nkind: InferencePolicy\nmetadata:\n  name: hc\n  namespace: default\nspec:\n  healthCheck:\n    interval: 100ms\n    timeout: 1s\n");
    // The policy documents of the HTTP config, without its routes.
    let http = yaml(ca_pem, backends);
    let from = http.find("---\napiVersion: v1\nkind: ConfigMap").unwrap();
    y.push('\n');
    y.push_str(&http[from..]);
    y
}

#[test]
fn grpc_backends_under_a_policy_are_called_over_tls_with_alpn_h2() {
    use shardgate_sim::grpc::{decode_message, encode_message, ModelInferRequest};
    use shardgate_sim::grpc::{ModelInferResponse, Tensor};
    use shardgate_testkit::grpc::GrpcClient;
    let infer = |model: &str, payload: &[u8]| {
        encode_message(&ModelInferRequest {
            model_name: model.into(),
            model_version: String::new(),
            id: "tls-1".into(),
            inputs: vec![Tensor {
                name: "INPUT0".into(),
                datatype: "BYTES".into(),
                shape: vec![1],
            }],
            raw_input_contents: vec![bytes::Bytes::copy_from_slice(payload)],
        })
    };
    const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
    let ca = TestCa::new();
    let other = TestCa::new();
    let dir = temp_dir("shardgate-grpc-tls");
    let good = https_sim("resnet", &ca.leaf(&[HOST]), &dir, "good");
    let stranger = https_sim("bert", &other.leaf(&[HOST]), &dir, "stranger");
    let gw = Gateway::start(
        &grpc_yaml(
            &ca.pem(),
            &[
                ("resnet", good.addr(), true),
                ("bert", stranger.addr(), true),
            ],
        ),
        &[],
    );
    let mut c = GrpcClient::connect(gw.addr).unwrap();
    // gRPC health checks run over TLS too: the good backend is healthy.
    let admin = gw.admin.unwrap();
    let health = |i: usize| {
        Client::connect(admin).get("/debug/endpoints").json()["endpoints"][i]["health"].clone()
    };
    let h = poll(Duration::from_secs(10), || {
        let h = health(0);
        let passed = h["consecutive_successes"].as_u64().unwrap_or(0) >= 2;
        (h["probe"].is_string() && h["healthy"] == true && passed).then_some(h)
    });
    assert!(h.is_some(), "{:?}", health(0));
    // Unary and streaming calls over one pooled TLS connection: once a first
    // call opened it (and the control thread its keep-alive connections for
    // checks and scrapes), six more calls open none.
    let r = c.unary(INFER, &[], &infer("resnet", b"warm")).unwrap();
    assert_eq!(r.status, Some(0), "{r:?}");
    let before = stats(&ca, good.addr())["connections_total"]
        .as_u64()
        .unwrap();
    for i in 0..5u8 {
        let r = c.unary(INFER, &[], &infer("resnet", &[i; 4])).unwrap();
        assert_eq!((r.http_status, r.status), (200, Some(0)), "{r:?}");
        let out: ModelInferResponse = decode_message(&r.messages[0]).unwrap();
        assert_eq!(&out.raw_output_contents[0][..], &[i; 4]);
    }
    let mut call = c
        .open("/inference.GRPCInferenceService/ModelStreamInfer", &[])
        .unwrap();
    for i in 0..3u8 {
        c.send(&mut call, &infer("resnet", &[i; 2]), i == 2)
            .unwrap();
        assert!(c.recv(&mut call).unwrap().is_some());
    }
    assert!(c.recv(&mut call).unwrap().is_none());
    assert_eq!(call.reply.status, Some(0));
    let s = stats(&ca, good.addr());
    let opened = s["connections_total"].as_u64().unwrap() - before;
    // The stats call itself is one.
    assert!(opened <= 2, "{opened} connections for 6 calls: {s}");
    assert_eq!(s["tls_handshake_failures_total"], 0, "{s}");
    // A certificate from a CA the policy does not trust: UNAVAILABLE that
    // says why, fast, and nothing reaches the backend's service.
    let t0 = Instant::now();
    let r = c.unary(INFER, &[], &infer("bert", b"x")).unwrap();
    assert_eq!(r.status, Some(14), "{r:?}");
    assert!(r.message.contains("unknown CA"), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(stats(&other, stranger.addr())["requests_total"], 0);
    // Counted like an HTTP/1.1 handshake failure (shards publish their
    // metrics every 100 ms or so).
    assert!(
        poll(Duration::from_secs(5), || (upstream_errors(&gw, "tls")
            >= 1)
            .then_some(()))
        .is_some(),
        "gateway_upstream_errors_total{{kind=\"tls\"}} did not count the failed handshake"
    );
}
