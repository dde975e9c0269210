//! HTTP/2 over TLS: an HTTPS listener offers `h2` in ALPN before `http/1.1`;
//! a client that picks it is served by the HTTP/2 front end (the rustls
//! connection of the shard's own handshake, driven through poll functions),
//! with the same plan and streaming as HTTP/1.1 over TLS. curl is the client
//! (skipped when this curl has no HTTP/2).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;

use base64::Engine as _;
use common::pki::TestCa;
use common::*;

fn config(ca: &TestCa, sim: std::net::SocketAddr) -> String {
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: default\nspec:\n  gatewayClassName: shardgate\n  listeners:\n  - name: https\n    protocol: HTTPS\n    port: 8443\n    tls:\n      certificateRefs: [{{name: cert}}]\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: cert\n  namespace: default\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: default\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - matches: [{{headers: [{{name: X-Gateway-Model-Name, value: llama}}]}}]\n    backendRefs: [{{name: pool, port: 8000}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: pool\n  namespace: default\n  labels: {{kubernetes.io/service-name: pool}}\naddressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        b64(&leaf.cert_pem),
        b64(&leaf.key_pem),
        sim.port(),
        sim.ip()
    )
}

fn curl_has_http2() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"))
        .unwrap_or(false)
}

#[test]
fn https_clients_that_offer_h2_get_http2() {
    if !curl_has_http2() {
        eprintln!("skipped: curl without HTTP/2");
        return;
    }
    let ca = TestCa::new();
    let s = sim(&["llama"], |_| {});
    let gw = Gateway::start(&config(&ca, s.addr()), &[]);
    let dir = shardgate_testkit::temp_dir("h2-tls");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let url = |path: &str| format!("https://localhost:{}{path}", gw.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", gw.addr.port());
    let run_on = |path: &str, proto: &str, body: &str, headers: &[&str]| {
        let target = url(path);
        let mut args = vec![
            "-sS",
            proto,
            "--cacert",
            ca_file.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-H",
            "content-type: application/json",
        ];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.extend([
            "-d",
            body,
            "-w",
            "\n%{http_version} %{http_code}",
            "--max-time",
            "10",
            &target,
        ]);
        let out = Command::new("curl").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let run = |proto: &str, body: &str| run_on("/v1/chat/completions", proto, body, &[]);
    // Streaming over HTTP/2 on TLS: every SSE event, then [DONE].
    let body = r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true}"#;
    let out = run("--http2", body);
    assert!(out.ends_with("\n2 200"), "{out}");
    assert!(out.contains("data: [DONE]"), "{out}");
    assert_eq!(out.matches("data: ").count(), 6, "{out}");
    // An unknown model: the OpenAI error, over HTTP/2.
    let out = run("--http2", r#"{"model":"nope","messages":[]}"#);
    assert!(out.ends_with("\n2 404"), "{out}");
    assert!(out.contains("model_not_found"), "{out}");
    // A client that offers only HTTP/1.1 still gets it.
    let out = run("--http1.1", body);
    assert!(out.ends_with("\n1.1 200"), "{out}");
    assert!(out.contains("data: [DONE]"), "{out}");
    // Over either protocol the backend learns that the client came over TLS.
    for (proto, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        // The echo path is no inference API, so the model comes from the header.
        let out = run_on("/sim/echo", proto, "{}", &["x-gateway-model-name: llama"]);
        let (json, status) = out.rsplit_once('\n').unwrap();
        assert_eq!(status, format!("{version} 200"), "{out}");
        let echo: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            echoed_header(&echo, "x-forwarded-proto"),
            ["https"],
            "{proto}: {out}"
        );
    }
}
