//! End-to-end test of the model filter: one pool of two simulated vLLM servers
//! that serve different models (one with a LoRA adapter), one route sending
//! every model to the pool. Once the gateway's first `GET /v1/models` poll has
//! listed both endpoints, no request may reach a server that does not serve
//! its model (the server would answer 404).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// A Gateway, one HTTPRoute matching every model in `models` (body model or
/// header) to one Service, and one EndpointSlice per address for that Service:
/// one pool of `addrs.len()` endpoints.
fn one_pool(models: &[&str], addrs: &[SocketAddr]) -> String {
    let mut y = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: default\nspec:\n  gatewayClassName: shardgate\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: 8080\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: pool\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw\n  rules:\n  - matches:\n",
    );
    for m in models {
        y.push_str(&format!(
            "    - headers:\n      - name: X-Gateway-Model-Name\n        value: {m}\n"
        ));
    }
    y.push_str("    backendRefs:\n    - name: pool\n      port: 8000\n");
    for (i, a) in addrs.iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: pool-{i}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: pool\naddressType: IPv4\nports:\n- port: {}\nendpoints:\n- addresses: [\"{}\"]\n",
            a.port(),
            a.ip()
        ));
    }
    y
}

/// A chat body whose first prefix block differs per `i`, so that prefix
/// affinity cannot pin a model to the endpoint its first request happened to
/// reach: every pick is a fresh choice between the two endpoints.
fn varied_chat(model: &str, i: usize) -> String {
    format!(
        r#"{{"messages":[{{"role":"user","content":"question {i}: how are you today?"}}],"model":"{model}","max_tokens":1}}"#
    )
}

fn requests_total(addr: SocketAddr) -> u64 {
    sim_stats(addr)["requests_total"].as_u64().unwrap()
}

#[test]
fn requests_only_reach_endpoints_that_serve_their_model() {
    let a = sim(&["model-a"], |c| c.lora = vec!["a-sql".into()]);
    let b = sim(&["model-b"], |_| {});
    // The simulator lists what it serves and refuses what it does not.
    let listed = Client::connect(a.addr()).get("/v1/models").json();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["model-a", "a-sql"]);
    assert_eq!(listed["data"][1]["parent"], "model-a");
    let r = Client::connect(b.addr()).post("/v1/chat/completions", &chat("model-a", false, 1), &[]);
    assert_eq!(r.status, 404, "{}", r.text());

    let gw = Gateway::start(
        &one_pool(
            &["model-a", "model-b", "a-sql", "model-c"],
            &[a.addr(), b.addr()],
        ),
        &[],
    );
    // Wait for the first poll (at start, not after the 10 s interval) to reach
    // the scoring snapshot: /debug/endpoints shows the snapshot's lists.
    let admin = gw.admin.unwrap();
    let served = poll(Duration::from_secs(5), || {
        let j = Client::connect(admin).get("/debug/endpoints").json();
        let eps = j["endpoints"].as_array()?.clone();
        (eps.len() == 2 && eps.iter().all(|e| !e["served_models"].is_null())).then_some(eps)
    })
    .expect("the endpoints' /v1/models were never polled");
    let by_addr = |addr: SocketAddr| {
        served
            .iter()
            .find(|e| e["address"].as_str() == Some(&addr.to_string()))
            .unwrap()["served_models"]
            .clone()
    };
    assert_eq!(by_addr(a.addr())["models"], serde_json::json!(["model-a"]));
    assert_eq!(
        by_addr(a.addr())["adapters"],
        serde_json::json!([{"name": "a-sql", "base": "model-a"}])
    );
    assert_eq!(by_addr(b.addr())["models"], serde_json::json!(["model-b"]));

    let (a0, b0) = (requests_total(a.addr()), requests_total(b.addr()));
    let mut c = gw.connect();
    let mut misrouted = Vec::new();
    let models = ["model-a", "model-b", "a-sql"];
    for i in 0..60 {
        let model = models[i % models.len()];
        let r = c.post("/v1/chat/completions", &varied_chat(model, i), &[]);
        if r.status != 200 || r.json()["model"] != model {
            misrouted.push((model, r.status, r.text()));
        }
    }
    assert!(misrouted.is_empty(), "misrouted: {misrouted:?}");
    // Each server saw exactly the requests for what it serves.
    assert_eq!(requests_total(a.addr()) - a0, 40);
    assert_eq!(requests_total(b.addr()) - b0, 20);
    // A model the route names but no endpoint of the pool serves: 503 from the
    // gateway, nothing sent upstream.
    let r = c.post("/v1/chat/completions", &varied_chat("model-c", 0), &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "no_healthy_endpoint");
    assert_eq!(requests_total(a.addr()) - a0, 40);
    assert_eq!(requests_total(b.addr()) - b0, 20);
}
