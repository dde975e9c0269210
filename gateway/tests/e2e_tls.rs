//! End-to-end tests of TLS termination: `HTTPS` listeners with certificates
//! from `kubernetes.io/tls` Secrets (made here with rcgen, signed by a test
//! CA), checked with a rustls client: completions and SSE streaming over
//! TLS, SNI choosing between two certificates (and the default for an unknown
//! name), plaintext on the TLS port, a stalled handshake, garbage.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};

/// A test CA and leaf certificates signed by it.
#[derive(Clone)]
struct Pki {
    ca_der: CertificateDer<'static>,
    /// `(cert PEM, key PEM, cert DER)` for `a.example.test` (also valid for
    /// `c.example.test`) and for `b.example.test`.
    a: (String, String, Vec<u8>),
    b: (String, String, Vec<u8>),
    /// A renewal of `a` (same names, new key).
    a2: (String, String, Vec<u8>),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let leaf = |names: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    };
    Pki {
        ca_der: ca.der().clone(),
        a: leaf(&["a.example.test", "c.example.test"]),
        b: leaf(&["b.example.test"]),
        a2: leaf(&["a.example.test", "c.example.test"]),
    }
}

/// Two HTTPS listeners on one port (hostnames a. and b.example.test; Secret
/// `a` written with base64 `data`, `b` with `stringData`), one route to `sim`.
fn tls_config(pki: &Pki, sim: SocketAddr) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: default\nspec:\n  gatewayClassName: shardgate\n  listeners:\n  - name: a\n    protocol: HTTPS\n    port: 8443\n    hostname: a.example.test\n    tls:\n      mode: Terminate\n      certificateRefs: [{{kind: Secret, name: a}}]\n  - name: b\n    protocol: HTTPS\n    port: 8443\n    hostname: b.example.test\n    tls:\n      certificateRefs: [{{name: b}}]\n\
---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: a\n  namespace: default\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n\
---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: b\n  namespace: default\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}\
---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw\n  rules:\n  - backendRefs:\n    - name: svc\n      port: 8000\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-0\n  namespace: default\n  labels:\n    kubernetes.io/service-name: svc\naddressType: IPv4\nports:\n- port: {}\nendpoints:\n- addresses: [\"{}\"]\n",
        b64(&pki.a.0),
        b64(&pki.a.1),
        indent(&pki.b.0),
        indent(&pki.b.1),
        sim.port(),
        sim.ip()
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn client_config(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn connect(cfg: &Arc<rustls::ClientConfig>, addr: SocketAddr, sni: &str) -> Tls {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

/// Send a POST and read one response: `(status, head, body)` (a chunked body
/// is returned raw, up to its last chunk).
fn post(s: &mut Tls, path: &str, body: &str) -> (u16, String, String) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: a.example.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s.flush().unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let lower = head.to_ascii_lowercase();
    let done = |b: &[u8]| -> bool {
        if let Some(cl) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            b.len() >= cl
        } else {
            b.ends_with(b"0\r\n\r\n")
        }
    };
    while !done(&buf[head_end..]) {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    (status, head, body)
}

fn peer_cert(s: &Tls) -> Vec<u8> {
    s.conn.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn https_listener_serves_completions_and_streams_with_sni() {
    let pki = pki();
    let backend = sim(&["model-a"], |_| {});
    let gw = Gateway::start(&tls_config(&pki, backend.addr()), &[]);
    let cfg = client_config(&pki);

    // SNI a: certificate a, ALPN http/1.1, two requests on one connection.
    let mut s = connect(&cfg, gw.addr, "a.example.test");
    assert_eq!(peer_cert(&s), pki.a.2);
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, _, body) = post(&mut s, "/v1/chat/completions", &chat("model-a", false, 3));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"model\":\"model-a\""), "{body}");
    // SSE streaming over TLS, on the same connection.
    let (status, head, body) = post(&mut s, "/v1/chat/completions", &chat("model-a", true, 4));
    assert_eq!(status, 200, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("text/event-stream"),
        "{head}"
    );
    assert!(body.matches("data: {").count() >= 4, "{body}");
    assert!(body.contains("data: [DONE]"), "{body}");
    // The backend learns that the client came over TLS.
    let (status, _, body) = post(&mut s, "/sim/echo", r#"{"model":"model-a"}"#);
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echoed_header(&echo, "x-forwarded-proto"),
        ["https"],
        "{body}"
    );

    // SNI b: certificate b.
    let mut s = connect(&cfg, gw.addr, "b.example.test");
    assert_eq!(peer_cert(&s), pki.b.2);
    let (status, _, _) = post(
        &mut s,
        "/v1/completions",
        r#"{"model":"model-a","prompt":"hi","max_tokens":2}"#,
    );
    assert_eq!(status, 200);

    // An unknown SNI gets the port's default (its first listener's first
    // certificate), which here is also valid for that name.
    let s = connect(&cfg, gw.addr, "c.example.test");
    assert_eq!(peer_cert(&s), pki.a.2);

    // A resumed session (TLS 1.3 ticket) works too.
    let mut s = connect(&cfg, gw.addr, "a.example.test");
    let (status, _, _) = post(&mut s, "/v1/chat/completions", &chat("model-a", false, 1));
    assert_eq!(status, 200);
    assert_eq!(
        s.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

/// Read until the gateway closes (or 10 s); what it sent and how long it took.
fn read_until_closed(mut sock: TcpStream) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match sock.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => panic!("not closed in 10 s"),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => panic!("not closed in 10 s"),
            Err(_) => break,
        }
    }
    (got, t.elapsed())
}

#[test]
fn bad_clients_on_the_tls_port_get_clean_outcomes() {
    let pki = pki();
    let backend = sim(&["model-a"], |_| {});
    let mut gw = Gateway::start(
        &tls_config(&pki, backend.addr()),
        &["--tls-handshake-timeout", "300ms"],
    );

    // Plaintext HTTP: a 400 that says so, then close.
    let mut sock = TcpStream::connect(gw.addr).unwrap();
    sock.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (got, _) = read_until_closed(sock);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("tls_required"), "{text}");

    // A stalled handshake (nothing, or half a ClientHello) is closed after the timeout.
    let sock = TcpStream::connect(gw.addr).unwrap();
    let (got, took) = read_until_closed(sock);
    assert!(got.is_empty());
    assert!(took >= Duration::from_millis(250), "{took:?}");
    let mut sock = TcpStream::connect(gw.addr).unwrap();
    sock.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let (_, took) = read_until_closed(sock);
    assert!(took >= Duration::from_millis(250), "{took:?}");

    // Garbage that claims to be TLS: an alert, then close.
    let mut sock = TcpStream::connect(gw.addr).unwrap();
    let mut junk = vec![0x16, 0x03, 0x03, 0x00, 0x20];
    junk.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    sock.write_all(&junk).unwrap();
    let (got, _) = read_until_closed(sock);
    assert!(
        got.first().is_none_or(|b| *b == 0x15),
        "an alert or nothing: {got:?}"
    );

    // The gateway still serves.
    let cfg = client_config(&pki);
    let mut s = connect(&cfg, gw.addr, "a.example.test");
    let (status, _, _) = post(&mut s, "/v1/chat/completions", &chat("model-a", false, 1));
    assert_eq!(status, 200);
    assert!(gw.exited().is_none());
}

#[test]
fn a_missing_secret_or_a_bad_certificate_refuses_to_start() {
    let pki = pki();
    let good = tls_config(&pki, "127.0.0.1:9".parse().unwrap());
    // The listener names a Secret that is not there.
    let missing = good.replacen("name: b}", "name: nope}", 1);
    let out = check(&missing);
    assert!(
        out.contains("spec.listeners[1].tls.certificateRefs[0]")
            && out.contains("Secret default/nope is not in the config"),
        "{out}"
    );
    // A key that does not match the certificate.
    let swapped = good.replacen(
        &indent_key(&pki.b.1),
        &indent_key(&KeyPair::generate().unwrap().serialize_pem()),
        1,
    );
    let out = serve_error(&swapped);
    assert!(out.contains("Secret default/b"), "{out}");
}

fn indent_key(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

/// `shardgate check` on `yaml`: its output (it must fail).
fn check(yaml: &str) -> String {
    let dir = shardgate_testkit::temp_dir("tls-check");
    let path = dir.join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `shardgate serve` on `yaml`: its error output (it must exit with an error).
fn serve_error(yaml: &str) -> String {
    let dir = shardgate_testkit::temp_dir("tls-serve");
    let path = dir.join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["serve", "-c"])
        .arg(&path)
        .args([
            "--listen-port",
            "0",
            "--bind",
            "127.0.0.1",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args(["--shards", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = poll(Duration::from_secs(20), || child.try_wait().unwrap());
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve did not exit on a bad certificate");
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!exited.unwrap().success());
    err
}

/// `--tls-unknown-sni reject`: a name no listener has gets a TLS alert and no
/// certificate; the listeners' own names still work.
#[test]
fn an_unknown_sni_can_be_refused_with_an_alert() {
    let pki = pki();
    let backend = sim(&["model-a"], |_| {});
    let gw = Gateway::start(
        &tls_config(&pki, backend.addr()),
        &["--tls-unknown-sni", "reject"],
    );
    let cfg = client_config(&pki);
    let s = connect(&cfg, gw.addr, "b.example.test");
    assert_eq!(peer_cert(&s), pki.b.2);

    let sock = TcpStream::connect(gw.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let name = ServerName::try_from("c.example.test".to_string()).unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    let mut outcome = Ok(());
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            outcome = Err(e);
            break;
        }
    }
    let err = outcome.expect_err("the handshake for an unknown name must fail");
    assert!(
        err.to_string().contains("alert") || err.to_string().contains("Alert"),
        "{err}"
    );
    assert!(s.conn.peer_certificates().is_none());
}

/// Replace the gateway's config file the way editors and ConfigMap volumes
/// do: write a sibling, rename it over.
fn replace_config(gw: &Gateway, yaml: &str) {
    let dir = gw.process.dir().unwrap();
    let tmp = dir.join("config.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join("config.yaml")).unwrap();
}

fn debug_config(gw: &Gateway) -> serde_json::Value {
    Client::connect(gw.admin.unwrap())
        .get("/debug/config")
        .json()
}

/// A renewed certificate in the Secret serves new handshakes without a
/// restart; the connection that exists keeps its certificate and keeps
/// working. An invalid edit changes nothing; a route change is valid but
/// waits for a restart; SIGHUP reloads too. All counted and shown.
#[test]
fn a_renewed_certificate_serves_without_a_restart() {
    let pki = pki();
    let backend = sim(&["model-a"], |_| {});
    let gw = Gateway::start(&tls_config(&pki, backend.addr()), &[]);
    let cfg = client_config(&pki);
    let mut old = connect(&cfg, gw.addr, "a.example.test");
    assert_eq!(peer_cert(&old), pki.a.2);
    assert_eq!(
        post(&mut old, "/v1/chat/completions", &chat("model-a", false, 1)).0,
        200
    );
    assert_eq!(debug_config(&gw)["revision"], 1);

    // The renewal: Secret `a` gets a2.
    let renewed = Pki {
        a: pki.a2.clone(),
        ..pki.clone()
    };
    let t = Instant::now();
    replace_config(&gw, &tls_config(&renewed, backend.addr()));
    // A fresh client config each time: no resumed session hides the certificate.
    let served = poll(Duration::from_secs(10), || {
        let s = connect(&client_config(&pki), gw.addr, "a.example.test");
        (peer_cert(&s) == pki.a2.2).then_some(())
    });
    assert!(served.is_some(), "the renewed certificate never served");
    eprintln!(
        "file replaced -> renewed certificate served: {:?}",
        t.elapsed()
    );
    // The other listener's certificate is untouched.
    assert_eq!(
        peer_cert(&connect(&cfg, gw.addr, "b.example.test")),
        pki.b.2
    );
    // The connection from before keeps its certificate and its keep-alive.
    assert_eq!(peer_cert(&old), pki.a.2);
    assert_eq!(
        post(&mut old, "/v1/chat/completions", &chat("model-a", false, 1)).0,
        200
    );
    let m = gw.metrics();
    assert_eq!(sample(&m, "gateway_config_revision "), Some(2.0), "{m}");
    assert_eq!(
        sample(&m, "gateway_config_reloads_total{result=\"applied\"}"),
        Some(1.0),
        "{m}"
    );
    // Shards publish their counters periodically.
    let counted = poll(Duration::from_secs(10), || {
        let m = gw.metrics();
        (sample(&m, "gateway_tls_handshakes_total{result=\"full\"}")? >= 3.0).then_some(())
    });
    assert!(counted.is_some(), "{}", gw.metrics());

    // An invalid edit (a key that is not PEM): the renewed certificate keeps serving.
    let broken = Pki {
        a: (pki.a2.0.clone(), "not a key".into(), pki.a2.2.clone()),
        ..pki.clone()
    };
    replace_config(&gw, &tls_config(&broken, backend.addr()));
    let errored = poll(Duration::from_secs(10), || {
        let m = gw.metrics();
        (sample(&m, "gateway_config_reloads_total{result=\"error\"}")? >= 1.0).then_some(())
    });
    assert!(errored.is_some(), "the invalid edit was not reported");
    let dbg = debug_config(&gw);
    assert_eq!(dbg["revision"], 2, "{dbg}");
    let err = dbg["reload"]["last_error"].to_string();
    assert!(err.contains("Secret") && err.contains("tls.key"), "{err}");
    let s = connect(&client_config(&pki), gw.addr, "a.example.test");
    assert_eq!(peer_cert(&s), pki.a2.2);

    // A valid change to a route: applied live (a new revision), the
    // certificates and keep-alive connections stay.
    let moved = tls_config(&renewed, backend.addr()).replace(
        "  rules:\n  - backendRefs:",
        "  rules:\n  - matches: [{path: {type: PathPrefix, value: /v1}}]\n    backendRefs:",
    );
    replace_config(&gw, &moved);
    let applied = poll(Duration::from_secs(10), || {
        let dbg = debug_config(&gw);
        (dbg["revision"] == 3).then_some(dbg)
    })
    .expect("the route change was not applied");
    assert_eq!(applied["reload"]["last_result"], "applied", "{applied}");
    // The running routes still serve.
    let mut s = connect(&cfg, gw.addr, "a.example.test");
    assert_eq!(
        post(&mut s, "/v1/chat/completions", &chat("model-a", false, 1)).0,
        200
    );

    // SIGHUP with nothing new on disk: unchanged.
    let before = sample(
        &gw.metrics(),
        "gateway_config_reloads_total{result=\"unchanged\"}",
    )
    .unwrap_or(0.0);
    gw.process.signal(libc::SIGHUP);
    let hup = poll(Duration::from_secs(10), || {
        let n = sample(
            &gw.metrics(),
            "gateway_config_reloads_total{result=\"unchanged\"}",
        )?;
        (n > before).then_some(())
    });
    assert!(hup.is_some(), "SIGHUP did not reload");

    // POST /admin/reload does the same; GET is refused.
    let r = Client::connect(gw.admin.unwrap()).post("/admin/reload", "", &[]);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["revision"], 3);
    let posted = poll(Duration::from_secs(10), || {
        let n = sample(
            &gw.metrics(),
            "gateway_config_reloads_total{result=\"unchanged\"}",
        )?;
        (n > before + 1.0).then_some(())
    });
    assert!(posted.is_some(), "POST /admin/reload did not reload");
    assert_eq!(
        Client::connect(gw.admin.unwrap())
            .get("/admin/reload")
            .status,
        405
    );

    // `shardgate reload` sends that POST from the command line.
    let admin = gw.admin.unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["reload", "--admin-addr", &admin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["reload"], "requested");
    let reloaded = poll(Duration::from_secs(10), || {
        let n = sample(
            &gw.metrics(),
            "gateway_config_reloads_total{result=\"unchanged\"}",
        )?;
        (n > before + 2.0).then_some(())
    });
    assert!(reloaded.is_some(), "shardgate reload did not reload");
    // Nobody listening: a clear failure.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap().to_string();
    drop(free);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["reload", "--admin-addr", &dead])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the admin listener"), "{err}");
}
