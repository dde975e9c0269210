//! OpenAI-compatible HTTP over HTTP/2 with prior knowledge on a plain HTTP
//! listener: the same plan, route, picker and errors as HTTP/1.1, the
//! backends reached over HTTP/1.1; a streaming chat completion arrives as
//! DATA frames, one per SSE event batch, with HTTP/1.1 clients on the same
//! port unaffected. `curl --http2-prior-knowledge` too, when curl is there.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use shardgate_testkit::grpc::GrpcClient;

fn config(addr: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: default\nspec:\n  gatewayClassName: shardgate\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: 8080\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw\n  rules:\n  - matches:\n    - headers:\n      - name: X-Gateway-Model-Name\n        value: llama\n    backendRefs:\n    - name: pool\n      port: 8000\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: pool\n  namespace: default\n  labels:\n    kubernetes.io/service-name: pool\naddressType: IPv4\nports:\n- port: {}\nendpoints:\n- addresses: [\"{}\"]\n",
        addr.port(),
        addr.ip()
    )
}

#[test]
fn openai_requests_over_h2_prior_knowledge() {
    let s = sim(&["llama"], |_| {});
    let gw = Gateway::start(&config(s.addr()), &[]);
    let mut c = GrpcClient::connect(gw.addr).unwrap();
    let json = [("content-type", "application/json")];

    // A whole completion.
    let body = r#"{"model":"llama","prompt":"hello there","max_tokens":3}"#;
    let (status, headers, chunks) = c
        .http("POST", "/v1/completions", &json, body.as_bytes())
        .unwrap();
    assert_eq!(status, 200, "{headers:?}");
    let all: Vec<u8> = chunks.iter().flat_map(|b| b.to_vec()).collect();
    let v: serde_json::Value = serde_json::from_slice(&all).unwrap();
    assert_eq!(v["model"], "llama");
    assert_eq!(v["usage"]["completion_tokens"], 3);

    // A streaming chat completion: SSE events come as DATA frames, ending in [DONE].
    let body = r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"max_tokens":6,"stream":true}"#;
    let (status, headers, chunks) = c
        .http("POST", "/v1/chat/completions", &json, body.as_bytes())
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")),
        "{headers:?}"
    );
    assert!(chunks.len() >= 2, "{chunks:?}");
    let text: String = chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(text.matches("data: ").count(), 8, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // The gateway's own answers: /v1/models, an unknown model (404, OpenAI JSON).
    let (status, _, chunks) = c.http("GET", "/v1/models", &[], b"").unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&chunks.concat()).contains("llama"));
    let body = r#"{"model":"nope","prompt":"x"}"#;
    let (status, _, chunks) = c
        .http("POST", "/v1/completions", &json, body.as_bytes())
        .unwrap();
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_slice(&chunks.concat()).unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");

    // HTTP/1.1 on the same port still works.
    let r = gw.connect().post(
        "/v1/completions",
        r#"{"model":"llama","prompt":"a","max_tokens":1}"#,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // curl, as a user would run it (skipped when curl lacks HTTP/2).
    let curl = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"max_tokens":2,"stream":true}"#,
            &format!("http://{}/v1/chat/completions", gw.addr),
        ])
        .output();
    if let Ok(out) = curl {
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
        }
    }
}

#[test]
fn bodies_over_h2_are_charged_to_the_body_budget() {
    let s = sim(&["llama"], |_| {});
    let gw = Gateway::start(&config(s.addr()), &["--max-buffered-body-bytes", "4096"]);
    let mut c = GrpcClient::connect(gw.addr).unwrap();
    let json = [("content-type", "application/json")];
    let prompt = "x".repeat(8000);
    let body = format!(r#"{{"model":"llama","prompt":"{prompt}","max_tokens":1}}"#);
    let (status, _, chunks) = c
        .http("POST", "/v1/completions", &json, body.as_bytes())
        .unwrap();
    assert_eq!(status, 413);
    let v: serde_json::Value = serde_json::from_slice(&chunks.concat()).unwrap();
    assert_eq!(v["error"]["code"], "body_too_large", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-buffered-body-bytes"),
        "{v}"
    );
    // A body within the share goes through.
    let body = r#"{"model":"llama","prompt":"small","max_tokens":1}"#;
    let (status, _, _) = c
        .http("POST", "/v1/completions", &json, body.as_bytes())
        .unwrap();
    assert_eq!(status, 200);
}

#[test]
fn batchable_requests_over_h2_are_batched_like_http1_ones() {
    let s = sim(&["llama"], |_| {});
    let yaml = format!(
        "{}---\napiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: b\n  namespace: default\nspec:\n  maxBatchSize: 8\n  maxLatency: 300ms\n  targetRefs:\n  - group: gateway.networking.k8s.io\n    kind: HTTPRoute\n    name: r\n",
        config(s.addr())
    );
    let gw = Gateway::start(&yaml, &[]);
    let before = sim_stats(s.addr())["requests_total"].as_u64().unwrap();
    let addr = gw.addr;
    let clients: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = GrpcClient::connect(addr).unwrap();
                let body = format!(r#"{{"model":"llama","input":["text {i}"]}}"#);
                let (status, _, chunks) = c
                    .http(
                        "POST",
                        "/v1/embeddings",
                        &[("content-type", "application/json")],
                        body.as_bytes(),
                    )
                    .unwrap();
                let v: serde_json::Value = serde_json::from_slice(&chunks.concat()).unwrap();
                (status, v["data"].as_array().map_or(0, Vec::len))
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), (200, 1));
    }
    let calls = sim_stats(s.addr())["requests_total"].as_u64().unwrap() - before;
    assert!(
        calls < 8,
        "8 batchable requests made {calls} upstream calls"
    );
}
