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

/// The value of header `name` in an HTTP/2 answer's headers.
fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn token_limits_charge_answers_over_h2_and_carry_the_quota_headers() {
    const TOKENS: u64 = 40;
    let s = sim(&["llama"], |_| {});
    let y = config(s.addr()) + &format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata:\n  name: budget\nspec:\n  targetRef:\n    kind: Gateway\n    name: gw\n  rateLimit:\n    perModel:\n      llama: {{requests: 1000, tokens: {TOKENS}, unit: hour}}\n"
    );
    let gw = Gateway::start(&y, &[]);
    let mut c = GrpcClient::connect(gw.addr).unwrap();
    let json = [("content-type", "application/json")];
    let mut charged: Vec<u64> = Vec::new();
    let mut streamed = 0;
    let (status, headers, chunks) = loop {
        // Whole answers (usage in the body) and streams (usage in the last
        // event, with include_usage), by turns.
        let stream = charged.len() % 2 == 1;
        let body = if stream {
            r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}"#
        } else {
            r#"{"model":"llama","messages":[{"role":"user","content":"hello there"}],"max_tokens":5}"#
        };
        let (status, headers, chunks) = c
            .http("POST", "/v1/chat/completions", &json, body.as_bytes())
            .unwrap();
        if status != 200 {
            break (status, headers, chunks);
        }
        assert!(
            charged.len() < 50,
            "never refused: h2 answers are not charged"
        );
        assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), Some("40"));
        assert_eq!(header(&headers, "x-ratelimit-limit-requests"), Some("1000"));
        let before: u64 = charged.iter().sum();
        let remaining: u64 = header(&headers, "x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            remaining <= TOKENS.saturating_sub(before)
                && remaining + 1 >= TOKENS.saturating_sub(before),
            "{remaining} after {before}"
        );
        let text = String::from_utf8_lossy(&chunks.concat()).into_owned();
        let usage = if stream {
            streamed += 1;
            let last = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .rfind(|l| l.contains("\"usage\""))
                .unwrap_or_else(|| panic!("no usage event: {text}"));
            serde_json::from_str::<serde_json::Value>(last).unwrap()["usage"].clone()
        } else {
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["usage"].clone()
        };
        charged.push(usage["total_tokens"].as_u64().unwrap());
    };
    assert_eq!(status, 429, "{headers:?}");
    assert!(streamed >= 1, "{charged:?}");
    let total: u64 = charged.iter().sum();
    assert!(
        total > TOKENS && total - charged.last().unwrap() <= TOKENS,
        "{charged:?}"
    );
    let v: serde_json::Value = serde_json::from_slice(&chunks.concat()).unwrap();
    assert_eq!(v["error"]["type"], "tokens", "{v}");
    assert_eq!(header(&headers, "x-ratelimit-remaining-tokens"), Some("0"));
    let retry: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!(retry > 0, "{headers:?}");
    // The metrics count the tokens and the streams' time to first token.
    let counted = common::poll(std::time::Duration::from_secs(5), || {
        let m = gw.metrics();
        let value = |prefix: &str| {
            m.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let completion = value("gateway_completion_tokens_total{model=\"llama\"}");
        let ttft = value("gateway_time_to_first_token_seconds_count{model=\"llama\"");
        (completion >= 5.0 * charged.len() as f64 && ttft >= streamed as f64).then_some(())
    });
    assert!(
        counted.is_some(),
        "tokens or TTFT of answers over h2 not counted:\n{}",
        gw.metrics()
    );
}

#[test]
fn an_upgrade_to_h2c_is_answered_over_http1_and_not_forwarded() {
    // RFC 9113 §3.1 deprecates the `Upgrade: h2c` mechanism; a server may
    // ignore an Upgrade (RFC 9110 §7.8). curl --http2 on an http:// URL sends
    // one: the answer is plain HTTP/1.1 on a connection that stays usable,
    // and neither Upgrade nor HTTP2-Settings reaches the backend.
    let s = sim(&["llama"], |_| {});
    let gw = Gateway::start(&config(s.addr()), &[]);
    let mut c = Client::connect(gw.addr);
    let upgrade = [
        ("connection", "Upgrade, HTTP2-Settings"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
    ];
    let mut echo = upgrade.to_vec();
    echo.push(("x-gateway-model-name", "llama"));
    let r = c.post("/sim/echo", r#"{"model":"llama"}"#, &echo);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    let names: Vec<String> = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_ascii_lowercase())
        .collect();
    for hop in ["upgrade", "http2-settings", "connection"] {
        assert!(
            !names.iter().any(|n| n == hop),
            "{hop} reached the backend: {names:?}"
        );
    }
    // The connection is still HTTP/1.1 and keeps serving.
    let r = c.post(
        "/v1/completions",
        r#"{"model":"llama","prompt":"hi","max_tokens":2}"#,
        &upgrade,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 2);
}
