//! HTTP requests to a backend whose Service port says `appProtocol:
//! kubernetes.io/h2c`: the gateway reaches it over HTTP/2 (the simulated
//! backend is started HTTP/2-only, so an HTTP/1.1 request to it would fail)
//! for HTTP/1.1 and HTTP/2 clients alike — whole and streamed answers, a body
//! larger than what goes with the head, the forwarded headers, telemetry
//! scrapes — while a backend on a plain port still gets HTTP/1.1; a client
//! that leaves mid-stream cancels the request on the HTTP/2 backend.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use shardgate_testkit::grpc::GrpcClient;

/// Model `llama` (and `/sim/…`) to Service `chat`, whose port is h2c; model
/// `plain` to Service `plain` on an ordinary port.
fn config(h2: SocketAddr, plain: SocketAddr) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: default\nspec:\n  gatewayClassName: shardgate\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: 8080\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw\n  rules:\n  - matches:\n    - headers:\n      - name: X-Gateway-Model-Name\n        value: llama\n    - path: {{type: PathPrefix, value: /sim/}}\n    backendRefs:\n    - name: chat\n      port: 80\n  - matches:\n    - headers:\n      - name: X-Gateway-Model-Name\n        value: plain\n    backendRefs:\n    - name: plain\n      port: 8000\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: chat\n  namespace: default\nspec:\n  ports:\n  - name: h2\n    port: 80\n    targetPort: {hp}\n    appProtocol: kubernetes.io/h2c\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: chat-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: chat\naddressType: IPv4\nports:\n- name: h2\n  port: {hp}\nendpoints:\n- addresses: [\"{hi}\"]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: plain-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: plain\naddressType: IPv4\nports:\n- port: {pp}\nendpoints:\n- addresses: [\"{pi}\"]\n",
        hp = h2.port(),
        hi = h2.ip(),
        pp = plain.port(),
        pi = plain.ip(),
    )
}

/// `/sim/stats` of an HTTP/2-only backend (asked over HTTP/2).
fn h2_stats(addr: SocketAddr) -> serde_json::Value {
    let mut c = GrpcClient::connect(addr).unwrap();
    let r = c.http("GET", "/sim/stats", &[], b"").unwrap();
    assert_eq!(r.0, 200);
    serde_json::from_slice(&r.2.concat()).unwrap()
}

#[test]
fn http_requests_reach_an_h2c_backend_over_http2() {
    let h2 = sim(&["llama"], |c| c.http2_only = true);
    let plain = sim(&["plain"], |_| {});
    let mut gw = Gateway::start(&config(h2.addr(), plain.addr()), &[]);

    // An HTTP/1.1 request to the HTTP/2-only backend fails: the flag matters.
    let mut direct = Client::connect(h2.addr());
    direct.send_raw(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut got = [0u8; 64];
    let n = std::io::Read::read(&mut direct.stream, &mut got).unwrap_or(0);
    assert!(
        !got[..n].starts_with(b"HTTP/1.1 200"),
        "the backend must refuse HTTP/1.1"
    );

    // The control thread scrapes its telemetry over HTTP/2.
    let admin = gw.admin.unwrap();
    let scraped = poll(Duration::from_secs(10), || {
        let j = Client::connect(admin).get("/debug/endpoints").json();
        let eps = j["endpoints"].as_array()?;
        let e = eps.iter().find(|e| e["address"] == h2.addr().to_string())?;
        let t = &e["telemetry"];
        (t["last_scrape_ms_ago"].is_u64() && t["consecutive_scrape_failures"] == 0).then_some(())
    });
    assert!(scraped.is_some(), "no telemetry from the h2c backend");

    // HTTP/1.1 client: a whole completion (the backend's content-length).
    let mut c = gw.connect();
    let r = c.post(
        "/v1/completions",
        r#"{"model":"llama","prompt":"hello there","max_tokens":3}"#,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);

    // A streamed chat completion on the same connection: chunked to the
    // client, every event through, then [DONE].
    let r = c.post("/v1/chat/completions", &chat("llama", true, 6), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let text = r.text();
    assert_eq!(text.matches("data: ").count(), 8, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // An error answer passes through with its status and body.
    let r = c.post(
        "/v1/completions",
        r#"{"model":"llama","prompt":"x","max_tokens":0}"#,
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // A body larger than what goes out with the head (64 KiB), and the
    // headers the gateway forwards, seen by the backend.
    let big = "y".repeat(200_000);
    let r = c.post(
        "/sim/echo?q=1",
        &big,
        &[("x-request-id", "rid-7"), ("x-custom", "kept")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["body_len"], 200_000);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["target"], "http://test/sim/echo?q=1", "{v}");
    let header = |name: &str| {
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_owned())
    };
    assert_eq!(header("x-request-id").as_deref(), Some("rid-7"));
    assert_eq!(header("x-custom").as_deref(), Some("kept"));
    assert_eq!(header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(header("content-length").as_deref(), Some("200000"));
    assert_eq!(header("connection"), None);
    assert_eq!(header("host"), None, "the authority is :authority");

    // HTTP/2 client: a streamed chat completion.
    let mut h = GrpcClient::connect(gw.addr).unwrap();
    let json = [("content-type", "application/json")];
    let (status, _, chunks) = h
        .http(
            "POST",
            "/v1/chat/completions",
            &json,
            chat("llama", true, 4).as_bytes(),
        )
        .unwrap();
    assert_eq!(status, 200);
    let text: String = chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Every one of those reached the backend over HTTP/2 (scrapes not counted).
    let s = h2_stats(h2.addr());
    assert!(s["http2_requests_total"].as_u64().unwrap() >= 5, "{s}");

    // The backend on a plain port still gets HTTP/1.1.
    let r = c.post(
        "/v1/completions",
        r#"{"model":"plain","prompt":"a","max_tokens":1}"#,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let s = sim_stats(plain.addr());
    assert_eq!(s["http2_requests_total"], 0, "{s}");
    assert!(s["requests_total"].as_u64().unwrap() >= 1, "{s}");

    // Further requests reuse the pooled HTTP/2 connection: 20 of them open
    // none (the one new connection is the stats request's own).
    let before = h2_stats(h2.addr())["connections_total"].as_u64().unwrap();
    for _ in 0..20 {
        let r = c.post(
            "/v1/completions",
            r#"{"model":"llama","prompt":"a","max_tokens":1}"#,
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let after = h2_stats(h2.addr())["connections_total"].as_u64().unwrap();
    assert_eq!(after, before + 1, "connections were opened for requests");

    // A graceful stop with a pooled HTTP/2 connection exits cleanly.
    drop(c);
    gw.stop_cleanly(Duration::from_secs(15));
}

#[test]
fn a_client_leaving_mid_stream_cancels_the_h2c_request() {
    let h2 = sim(&["llama"], |c| {
        c.http2_only = true;
        c.decode_step_us = 20_000;
    });
    let plain = sim(&["plain"], |_| {});
    let gw = Gateway::start(&config(h2.addr(), plain.addr()), &[]);
    let mut c = gw.connect();
    let body = chat("llama", true, 2000);
    c.send_raw(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    assert!(c.next_chunk().is_some());
    drop(c);
    let cancelled = poll(Duration::from_secs(10), || {
        let s = h2_stats(h2.addr());
        (s["requests_cancelled_total"].as_u64()? == 1).then_some(())
    });
    assert!(cancelled.is_some(), "{}", h2_stats(h2.addr()));
}
