//! Heap allocations per proxied request, counted with a global allocator.
//!
//! The gateway runs in this process (one shard, no telemetry scrapes); the backend
//! and the client are plain `std::net` loops with fixed buffers, so they allocate
//! nothing per request and every allocation counted while requests flow belongs
//! to the gateway (plus its periodic metrics publication, amortised over many
//! requests). The steady state allocates nothing (measured: 0.01 per request,
//! the metrics publication); the bound guards against regressions and the figure
//! is printed. `SHARDGATE_ALLOC_TRACE=N` prints where the first N allocations of
//! two extra requests come from, to find a regression.
//!
//! Measured twice, one after the other (the counter sees every thread): a plain
//! route, and a route behind a SecurityPolicy with JWT authentication (an
//! ES256 token, verified once, then a cache hit per request) and a rate limit
//! (one CAS on the client's cell, headers on the answer).

#![allow(clippy::unwrap_used, missing_docs)]
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use shardgate_testkit::Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Upper bound on allocations per non-streaming, non-batched proxied request on a
/// busy keep-alive connection. The steady state allocates nothing; what is left is
/// the periodic metrics publication (every 500 ms), amortised over the requests.
const BOUND: f64 = 0.5;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 26\r\n\r\n{\"id\":\"x\",\"object\":\"ok\"}\n\n";

/// A keep-alive backend answering every request with `RESPONSE` (fixed buffers).
fn backend() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut have = 0usize;
                loop {
                    let Ok(n) = s.read(&mut buf[have..]) else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have += n;
                    // One request = head + content-length body; the client sends fixed-size ones.
                    while let Some(end) = request_len(&buf[..have]) {
                        if s.write_all(RESPONSE).is_err() {
                            return;
                        }
                        buf.copy_within(end..have, 0);
                        have -= end;
                    }
                }
            });
        }
    });
    addr
}

/// Length of the first complete request in `b` (head + `content-length` body).
fn request_len(b: &[u8]) -> Option<usize> {
    let head = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&b[..head]).ok()?;
    let len = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    (b.len() >= head + len).then_some(head + len)
}

#[test]
fn proxied_requests_allocate_a_bounded_amount() {
    let plain = per_request("", "");
    println!("allocations per proxied request: {plain:.2}");
    let keys = serde_json::from_str::<serde_json::Value>(JWKS).unwrap()["keys"].to_string();
    let policy = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata: {{name: sp, namespace: default}}\nspec:\n  targetRef: {{kind: Gateway, name: gw}}\n  authentication:\n    jwt:\n      providers:\n      - name: p\n        issuer: {ISS}\n        audiences: [{AUD}]\n        localJWKS: {{keys: {keys}}}\n  rateLimit:\n    default: {{requests: 4000000000, unit: second}}\n"
    );
    let token = mint_es256();
    let secured = per_request(&policy, &format!("authorization: Bearer {token}\r\n"));
    println!("allocations per request with a cached JWT and a rate limit: {secured:.2}");
    assert!(
        plain <= BOUND,
        "{plain:.2} allocations per request (bound {BOUND})"
    );
    assert!(
        secured <= BOUND,
        "{secured:.2} allocations per request with JWT + rate limit (bound {BOUND})"
    );
}

const EC: &[u8] = include_bytes!("data/jwt/ec.pem");
const JWKS: &str = include_str!("data/jwt/jwks.json");
const ISS: &str = "https://auth.example.com";
const AUD: &str = "ai-inference";

fn mint_es256() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"sub": "user-1", "iss": ISS, "aud": AUD, "exp": now + 3600});
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("ec-1".into());
    jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(EC).unwrap(),
    )
    .unwrap()
}

/// Allocations per request on one keep-alive connection, with `policy` YAML
/// appended to the config and `header` lines added to each request.
fn per_request(policy: &str, header: &str) -> f64 {
    let be = backend();
    let mut yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: x\n  listeners: [{{name: http, protocol: HTTP, port: 8080}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - matches:\n    - headers: [{{name: X-Gateway-Model-Name, value: m}}]\n    backendRefs: [{{name: be, port: 8000}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: be, namespace: default, labels: {{kubernetes.io/service-name: be}}}}\naddressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
        be.port()
    );
    yaml.push_str(policy);
    use clap::Parser;
    let cli = shardgate::cli::Cli::try_parse_from([
        "shardgate",
        "serve",
        "-c",
        "unused",
        "--shards",
        "1",
        "--bind",
        "127.0.0.1",
        "--listen-port",
        "0",
        "--admin-addr",
        "off",
        "--no-scrape",
        "--no-pin",
    ])
    .unwrap();
    let shardgate::cli::Command::Serve(args) = cli.command else {
        panic!("not serve")
    };
    let shutdown = shardgate_runtime::Shutdown::new();
    let running =
        shardgate::start(&[("alloc.yaml".into(), yaml)], &args.run, shutdown.clone()).unwrap();
    let addr = running.addrs[0];

    let body = br#"{"model":"m","prompt":"hello world","max_tokens":4}"#;
    let mut req = Vec::new();
    req.extend_from_slice(
        b"POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n",
    );
    req.extend_from_slice(header.as_bytes());
    req.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    req.extend_from_slice(body);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 8192];
    let mut exchange = |c: &mut TcpStream| {
        loop {
            match c.write_all(&req) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("write: {e}"),
            }
        }
        let mut have = 0;
        loop {
            let n = match c.read(&mut buf[have..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("read: {e}"),
            };
            assert!(n > 0, "gateway closed the connection");
            have += n;
            if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                if have >= end + 4 + 26 {
                    assert!(
                        buf.starts_with(b"HTTP/1.1 200"),
                        "{}",
                        String::from_utf8_lossy(&buf[..have])
                    );
                    // The policy did apply: the answer carries the rate-limit quota.
                    assert!(
                        policy.is_empty()
                            || buf[..end]
                                .windows(27)
                                .any(|w| w == b"x-ratelimit-limit-requests:"),
                        "{}",
                        String::from_utf8_lossy(&buf[..have])
                    );
                    return;
                }
            }
        }
    };
    // Warm up: pools, routes, metric series, the upstream connection.
    for _ in 0..2_000 {
        exchange(&mut c);
    }
    let n = 20_000u64;
    let before = Counting::total();
    for _ in 0..n {
        exchange(&mut c);
    }
    let per_request = (Counting::total() - before) as f64 / n as f64;
    let trace: u64 = std::env::var("SHARDGATE_ALLOC_TRACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if trace > 0 {
        Counting::start_trace(trace);
        exchange(&mut c);
        exchange(&mut c);
        for t in Counting::take_traces() {
            println!("--- {t}");
        }
    }
    shutdown.trigger();
    drop(c);
    running.shards.join();
    per_request
}
