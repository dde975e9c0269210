//! End to end: JWT authentication through the gateway binary. A rule whose
//! SecurityPolicy has `authentication.jwt` answers 401 (with `WWW-Authenticate`
//! and an OpenAI error body) without a token or with a bad one and forwards a
//! good one; keys come from an inline `localJWKS` or from a `remoteJWKS` served
//! by a tiny HTTP server in the test, which counts its fetches (an unknown
//! `kid` refetches at once, a flood of them does not refetch again); an
//! `https://` `remoteJWKS` is verified against `--jwks-ca-file` (a test CA),
//! and without it the unknown CA is refused.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rustls::pki_types::pem::PemObject;
use serde_json::json;

const RSA: &[u8] = include_bytes!("data/jwt/rsa.pem");
const EC: &[u8] = include_bytes!("data/jwt/ec.pem");
const JWKS: &str = include_str!("data/jwt/jwks.json");
const ISS: &str = "https://auth.example.com";

fn token(alg: Algorithm, kid: &str, exp_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC).unwrap(),
        _ => EncodingKey::from_rsa_pem(RSA).unwrap(),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    let claims = json!({"sub": "user-7", "iss": ISS, "aud": "ai-inference", "exp": now + exp_in});
    encode(&h, &claims, &key).unwrap()
}

/// The model `m` served by `backend`, behind a SecurityPolicy on the Gateway
/// with one provider written as `provider` (its keys).
fn yaml(backend: SocketAddr, provider: &str) -> String {
    format!(
        "{}---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata: {{name: sp, namespace: default}}\nspec:\n  targetRef: {{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}\n  authentication:\n    jwt:\n      providers:\n      - name: idp\n        issuer: {ISS}\n        audiences: [ai-inference]\n{provider}",
        config(&[("m", vec![(1, vec![backend])])])
    )
}

fn keys_json(kids: &[&str]) -> String {
    let all: serde_json::Value = serde_json::from_str(JWKS).unwrap();
    let keys: Vec<_> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    serde_json::Value::from(keys).to_string()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn local_jwks_401_without_or_with_a_bad_token_200_with_a_good_one() {
    let backend = sim(&["m"], |_| {});
    let provider = format!(
        "        localJWKS: {{keys: {}}}\n",
        keys_json(&["rsa-1", "ec-1"])
    );
    let gw = Gateway::start(&yaml(backend.addr(), &provider), &[]);
    let mut c = gw.connect();
    let body = chat("m", false, 2);

    let r = c.post("/v1/chat/completions", &body, &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"shardgate\"")
    );
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");

    let expired = token(Algorithm::RS256, "rsa-1", -3600);
    let r = c.post(
        "/v1/chat/completions",
        &body,
        &[("authorization", &bearer(&expired))],
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "invalid_token");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(challenge.contains("expired"), "{challenge}");
    assert!(!r.text().contains(&expired), "the token is not echoed");

    for (alg, kid) in [(Algorithm::RS256, "rsa-1"), (Algorithm::ES256, "ec-1")] {
        let good = token(alg, kid, 600);
        let r = c.post(
            "/v1/chat/completions",
            &body,
            &[("authorization", &bearer(&good))],
        );
        assert_eq!(r.status, 200, "{alg:?}: {}", r.text());
    }
    // GET /v1/models has no rule: no token needed.
    assert_eq!(c.get("/v1/models").status, 200);

    // Shards publish their metrics periodically.
    let counted = poll(Duration::from_secs(10), || {
        let m = gw.metrics();
        (m.contains("gateway_auth_failures_total{reason=\"missing\"} 1")
            && m.contains("gateway_auth_failures_total{reason=\"expired\"} 1"))
        .then_some(())
    });
    assert!(counted.is_some(), "{}", gw.metrics());
    let log = gw.stderr_text();
    assert!(!log.contains(&expired), "a token reached the log");
}

/// A provider with the test's RSA key that sets `X-JWT-Sub` from `sub`.
fn claim_provider() -> String {
    format!(
        "        localJWKS: {{keys: {}}}\n        claimToHeaders: [{{claim: sub, header: X-JWT-Sub}}]\n",
        keys_json(&["rsa-1"])
    )
}

/// Every value of `name` in a list of (name, value) pairs.
fn values(list: &[(String, String)], name: &str) -> Vec<String> {
    list.iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

/// Headers a client may try to forge: the claim header, the forwarding
/// headers, and its own request id `rid`.
fn forged<'a>(auth: &'a str, rid: &'a str) -> [(&'a str, &'a str); 5] {
    [
        ("authorization", auth),
        ("x-jwt-sub", "admin"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-request-id", rid),
    ]
}

#[test]
fn claim_headers_replace_a_clients_copies_over_http1_and_http2() {
    let backend = sim(&["m"], |_| {});
    let gw = Gateway::start(&yaml(backend.addr(), &claim_provider()), &[]);
    let auth = bearer(&token(Algorithm::RS256, "rsa-1", 600));
    let body = "{}";
    // What the backend got: the token's `sub`, the gateway's forwarding
    // headers after the client's list, the client's request id.
    let check = |echo: &serde_json::Value, rid: &str| {
        assert_eq!(echoed_header(echo, "x-jwt-sub"), ["user-7"], "{echo}");
        assert_eq!(echoed_header(echo, "x-forwarded-proto"), ["http"], "{echo}");
        assert_eq!(
            echoed_header(echo, "x-forwarded-for"),
            ["203.0.113.9, 127.0.0.1"],
            "{echo}"
        );
        assert_eq!(echoed_header(echo, "x-request-id"), [rid], "{echo}");
    };

    // `/sim/echo` takes no body model: the route is picked by the header.
    let mut headers = forged(&auth, "rid-h1").to_vec();
    headers.push(("x-gateway-model-name", "m"));
    let r = gw.connect().post("/sim/echo", body, &headers);
    assert_eq!(r.status, 200, "{}", r.text());
    check(&r.json(), "rid-h1");
    assert_eq!(r.header("x-request-id"), Some("rid-h1"));

    let mut h2 = shardgate_testkit::grpc::GrpcClient::connect(gw.addr).unwrap();
    let mut headers = forged(&auth, "rid-h2").to_vec();
    headers.push(("x-gateway-model-name", "m"));
    headers.push(("content-type", "application/json"));
    let (status, answer, chunks) = h2
        .http("POST", "/sim/echo", &headers, body.as_bytes())
        .unwrap();
    let text = String::from_utf8(chunks.concat()).unwrap();
    assert_eq!(status, 200, "{text}");
    check(&serde_json::from_str(&text).unwrap(), "rid-h2");
    assert_eq!(values(&answer, "x-request-id"), ["rid-h2"]);

    // A refusal over HTTP/2 carries the request id too: the client's, else
    // one the gateway made (and logged).
    let (status, answer, _) = h2
        .http(
            "POST",
            "/sim/echo",
            &[("x-gateway-model-name", "m"), ("x-request-id", "rid-401")],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(status, 401);
    assert_eq!(values(&answer, "x-request-id"), ["rid-401"]);
    let model = [("x-gateway-model-name", "m")];
    let (status, answer, _) = h2
        .http("POST", "/sim/echo", &model, body.as_bytes())
        .unwrap();
    assert_eq!(status, 401);
    let own = values(&answer, "x-request-id");
    assert!(
        own.len() == 1 && own[0].len() == 32 && own[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "{answer:?}"
    );
}

#[test]
fn a_grpc_call_carries_the_claim_and_forwarding_headers_of_an_http_request() {
    use shardgate_sim::grpc::{encode_message, ModelInferRequest, Tensor};
    let backend = shardgate_sim::spawn(shardgate_testkit::SimConfig {
        port: 0,
        model: vec!["bert".into()],
        ..shardgate_testkit::SimConfig::default()
    })
    .unwrap();
    let config = shardgate_testkit::grpc::grpc_config(&[("bert", "svc-b", backend.addr())]);
    let policy = yaml(backend.addr(), &claim_provider());
    let policy = &policy[policy.find("kind: SecurityPolicy").unwrap()..];
    let gw = Gateway::start(
        &format!("{config}---\napiVersion: gateway.networking.k8s.io/v1alpha2\n{policy}"),
        &[],
    );
    let msg = encode_message(&ModelInferRequest {
        model_name: "bert".into(),
        model_version: String::new(),
        id: "1".into(),
        inputs: vec![Tensor {
            name: "INPUT0".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
        }],
        raw_input_contents: vec![bytes::Bytes::from_static(b"x")],
    });
    let call = "/inference.GRPCInferenceService/ModelInfer";
    let metadata = || -> Vec<(String, String)> {
        let v = &sim_stats(backend.addr())["grpc_last_metadata"];
        serde_json::from_value(v.clone()).unwrap()
    };
    let auth = bearer(&token(Algorithm::RS256, "rsa-1", 600));
    let mut c = shardgate_testkit::grpc::GrpcClient::connect(gw.addr).unwrap();

    let r = c.unary(call, &forged(&auth, "rid-grpc"), &msg).unwrap();
    assert_eq!(r.status, Some(0), "{r:?}");
    let md = metadata();
    assert_eq!(values(&md, "x-jwt-sub"), ["user-7"], "{md:?}");
    assert_eq!(values(&md, "x-forwarded-proto"), ["http"], "{md:?}");
    assert_eq!(
        values(&md, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"],
        "{md:?}"
    );
    assert_eq!(values(&md, "x-request-id"), ["rid-grpc"], "{md:?}");
    assert_eq!(values(&md, "authorization"), [auth.as_str()], "{md:?}");
    assert_eq!(values(&md, "x-gateway-model-name"), ["bert"], "{md:?}");

    // A request id that is not usable (over 200 bytes) is replaced.
    let long = "r".repeat(201);
    let r = c
        .unary(
            call,
            &[("authorization", &auth), ("x-request-id", &long)],
            &msg,
        )
        .unwrap();
    assert_eq!(r.status, Some(0), "{r:?}");
    let md = metadata();
    let rid = values(&md, "x-request-id");
    assert!(rid.len() == 1 && rid[0].len() == 32, "{md:?}");
    assert_eq!(values(&md, "x-forwarded-for"), ["127.0.0.1"], "{md:?}");

    // Without a token: UNAUTHENTICATED, and the backend saw nothing new.
    let r = c.unary(call, &[("x-jwt-sub", "admin")], &msg).unwrap();
    assert_eq!(r.status, Some(16), "{r:?}");
}

/// A JWKS server: serves the RSA key until `rotated`, then the RSA and EC keys;
/// counts requests.
struct JwksServer {
    addr: SocketAddr,
    fetches: Arc<AtomicUsize>,
    rotated: Arc<AtomicBool>,
}

fn jwks_server() -> JwksServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let rotated = Arc::new(AtomicBool::new(false));
    let (f, r) = (fetches.clone(), rotated.clone());
    let v1 = format!("{{\"keys\":{}}}", keys_json(&["rsa-1"]));
    let v2 = format!("{{\"keys\":{}}}", keys_json(&["rsa-1", "ec-1"]));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            f.fetch_add(1, Ordering::SeqCst);
            let body = if r.load(Ordering::SeqCst) { &v2 } else { &v1 };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    JwksServer {
        addr,
        fetches,
        rotated,
    }
}

#[test]
fn remote_jwks_is_fetched_refetched_on_an_unknown_kid_and_not_flooded() {
    let backend = sim(&["m"], |_| {});
    let jwks = jwks_server();
    let provider = format!(
        "        remoteJWKS: {{uri: 'http://{}/jwks.json', cacheDuration: 1h}}\n",
        jwks.addr
    );
    let gw = Gateway::start(&yaml(backend.addr(), &provider), &[]);
    let mut c = gw.connect();
    let body = chat("m", false, 2);
    let rs = token(Algorithm::RS256, "rsa-1", 600);
    let ok = poll(Duration::from_secs(10), || {
        let r = c.post(
            "/v1/chat/completions",
            &body,
            &[("authorization", &bearer(&rs))],
        );
        (r.status == 200).then_some(())
    });
    assert!(
        ok.is_some(),
        "the first fetch never made the RSA key usable"
    );
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);

    // Key rotation: the EC key appears; its first token asks for a refetch.
    jwks.rotated.store(true, Ordering::SeqCst);
    let es = token(Algorithm::ES256, "ec-1", 600);
    let ok = poll(Duration::from_secs(10), || {
        let r = c.post(
            "/v1/chat/completions",
            &body,
            &[("authorization", &bearer(&es))],
        );
        (r.status == 200).then_some(())
    });
    assert!(ok.is_some(), "an unknown kid did not refetch the set");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);

    // A flood of unknown kids: every one 401, no further fetch within 10 s.
    for i in 0..200 {
        let t = token(Algorithm::RS256, &format!("flood-{i}"), 600);
        let r = c.post(
            "/v1/chat/completions",
            &body,
            &[("authorization", &bearer(&t))],
        );
        assert_eq!(r.status, 401);
    }
    let extra = poll(Duration::from_millis(500), || {
        (jwks.fetches.load(Ordering::SeqCst) > 2).then_some(())
    });
    assert!(extra.is_none(), "the flood refetched the JWKS");
    let counted = poll(Duration::from_secs(10), || {
        let m = gw.metrics();
        let n: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("gateway_auth_failures_total{reason=\"unknown_kid\"} "))?
            .parse()
            .ok()?;
        // The flood, plus the EC token's tries before the refetch landed.
        (n > 200).then_some(())
    });
    assert!(counted.is_some(), "{}", gw.metrics());
}

/// An HTTPS JWKS server for `127.0.0.1` with a certificate from `ca`: serves
/// the RSA key; counts the requests it answered.
fn jwks_https_server(ca: &common::pki::TestCa) -> (SocketAddr, Arc<AtomicUsize>) {
    let leaf = ca.leaf(&["127.0.0.1"]);
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    let body = format!("{{\"keys\":{}}}", keys_json(&["rsa-1"]));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(sock) = conn else { continue };
            let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(tls) = rustls::ServerConnection::new(cfg.clone()) else {
                continue;
            };
            let mut s = rustls::StreamOwned::new(tls, sock);
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            if !got.windows(4).any(|w| w == b"\r\n\r\n") {
                continue; // the handshake failed (an unverified client)
            }
            f.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.flush();
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    });
    (addr, fetches)
}

#[test]
fn https_remote_jwks_is_verified_against_the_jwks_ca_file() {
    let backend = sim(&["m"], |_| {});
    let ca = common::pki::TestCa::new();
    let (addr, fetches) = jwks_https_server(&ca);
    let dir = shardgate_testkit::temp_dir("shardgate-jwks-ca");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let provider =
        format!("        remoteJWKS: {{uri: 'https://{addr}/jwks.json', cacheDuration: 1h}}\n");
    let body = chat("m", false, 2);
    let rs = token(Algorithm::RS256, "rsa-1", 600);

    // Trusting the test CA: the set is fetched over TLS and the token passes.
    let gw = Gateway::start(
        &yaml(backend.addr(), &provider),
        &["--jwks-ca-file", ca_file.to_str().unwrap()],
    );
    let mut c = gw.connect();
    let ok = poll(Duration::from_secs(10), || {
        let r = c.post(
            "/v1/chat/completions",
            &body,
            &[("authorization", &bearer(&rs))],
        );
        (r.status == 200).then_some(())
    });
    assert!(ok.is_some(), "the https JWKS never made the key usable");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    drop(gw);

    // System roots only: the server's certificate does not verify, no set is
    // fetched, tokens are refused.
    let gw = Gateway::launch(
        &yaml(backend.addr(), &provider),
        &[],
        Launch {
            capture_stderr: true,
            ..Launch::default()
        },
    );
    let logged = poll(Duration::from_secs(10), || {
        gw.stderr_text()
            .contains("certificate signed by an unknown CA")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", gw.stderr_text());
    let r = gw.connect().post(
        "/v1/chat/completions",
        &body,
        &[("authorization", &bearer(&rs))],
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
