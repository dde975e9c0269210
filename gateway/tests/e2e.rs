//! End-to-end tests: the `shardgate` binary in front of in-process simulated vLLM
//! servers, everything on 127.0.0.1 with ephemeral ports.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn routes_by_body_model_and_by_header() {
    let a = sim(&["model-a"], |_| {});
    let b = sim(&["model-b"], |_| {});
    let gw = Gateway::start(
        &config(&[
            ("model-a", vec![(1, vec![a.addr()])]),
            ("model-b", vec![(1, vec![b.addr()])]),
        ]),
        &[],
    );
    let mut c = gw.connect();
    // Body model.
    let r = c.post("/v1/chat/completions", &chat("model-a", false, 3), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "model-a");
    let r = c.post(
        "/v1/completions",
        r#"{"model":"model-b","prompt":"say hi","max_tokens":2}"#,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "model-b");
    // Header model (the seed's X-Model-Type), on a path whose body is not scanned.
    let r = c.post(
        "/v1/chat/completions",
        &chat("model-b", false, 2),
        &[("X-Model-Type", "model-b")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "model-b");
    // A request id is generated and returned when the client sent none, kept otherwise.
    assert!(r.header("x-request-id").is_some_and(|v| v.len() >= 16));
    let r = c.post(
        "/v1/embeddings",
        r#"{"model":"model-a","input":["one","two"]}"#,
        &[("x-request-id", "my-id-123")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("my-id-123"));
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    // /v1/models is the union of what routes serve.
    let r = c.get("/v1/models");
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["model-a", "model-b"]);
}

#[test]
fn unknown_model_and_bad_json_get_openai_errors() {
    let a = sim(&["model-a"], |_| {});
    let gw = Gateway::start(&config(&[("model-a", vec![(1, vec![a.addr()])])]), &[]);
    let mut c = gw.connect();
    let r = c.post("/v1/chat/completions", &chat("nope", false, 3), &[]);
    assert_eq!(r.status, 404);
    let j = r.json();
    assert_eq!(j["error"]["code"], "model_not_found");
    assert!(j["error"]["message"].as_str().unwrap().contains("nope"));
    // The connection stays usable after an error that is not a framing error.
    let r = c.post("/v1/chat/completions", "{\"model\": ", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_json");
    let r = c.get("/nothing/here");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "route_not_found");
}

#[test]
fn weights_split_traffic_between_backend_groups() {
    let heavy = sim(&["m"], |_| {});
    let light = sim(&["m"], |_| {});
    let never = sim(&["m"], |_| {});
    let yaml = config(&[(
        "m",
        vec![
            (80, vec![heavy.addr()]),
            (20, vec![light.addr()]),
            (0, vec![never.addr()]),
        ],
    )]);
    let gw = Gateway::start(&yaml, &[]);
    let mut c = gw.connect();
    let n = 300;
    for _ in 0..n {
        let r = c.post(
            "/v1/completions",
            r#"{"model":"m","prompt":"x","max_tokens":1}"#,
            &[],
        );
        assert_eq!(r.status, 200);
    }
    let h = sim_stats(heavy.addr())["requests_total"].as_u64().unwrap();
    let l = sim_stats(light.addr())["requests_total"].as_u64().unwrap();
    let z = sim_stats(never.addr())["requests_total"].as_u64().unwrap();
    assert_eq!(h + l, n);
    assert_eq!(z, 0, "weight 0 must never be chosen");
    let share = h as f64 / n as f64;
    // Binomial(300, 0.8): sd ≈ 0.023; ±0.12 is over 5 sd.
    assert!((0.68..=0.92).contains(&share), "heavy share {share}");
}

#[test]
fn streaming_reaches_the_client_incrementally() {
    // 40 tokens at ≥ 20 ms per decode step: the backend needs ≥ 800 ms in all.
    let a = sim(&["m"], |c| {
        c.decode_step_us = 20_000;
    });
    let gw = Gateway::start(&config(&[("m", vec![(1, vec![a.addr()])])]), &[]);
    let mut c = gw.connect();
    let body = chat("m", true, 40);
    c.send_raw(format!("POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes());
    let (status, headers) = c.read_head();
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("content-type") && v.contains("text/event-stream")));
    let start = Instant::now();
    let first = c.next_chunk().expect("first chunk");
    let first_at = start.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("data: "));
    let mut all = first;
    while let Some(ch) = c.next_chunk() {
        all.extend_from_slice(&ch);
    }
    let done_at = start.elapsed();
    let text = String::from_utf8_lossy(&all);
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let events = text.matches("data: ").count();
    assert!(events >= 40, "{events} events");
    // The first event arrived long before the stream ended: nothing was buffered.
    assert!(
        done_at > first_at + Duration::from_millis(400),
        "first {first_at:?}, done {done_at:?}"
    );
}

#[test]
fn upstream_keep_alive_connections_are_reused() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        // No telemetry scrapes, no /v1/models polls: the sim counts every
        // connection, the control thread's included.
        &["--shards", "1", "--no-scrape", "--models-interval", "0"],
    );
    for _ in 0..3 {
        let mut c = gw.connect();
        for _ in 0..10 {
            let r = c.post(
                "/v1/completions",
                r#"{"model":"m","prompt":"x","max_tokens":1}"#,
                &[],
            );
            assert_eq!(r.status, 200);
        }
    }
    let s = sim_stats(a.addr());
    assert_eq!(s["requests_total"].as_u64().unwrap(), 30);
    // Connections the sim accepted: the gateway's pooled one, plus this stats query's own.
    let gateway_conns = s["connections_total"].as_u64().unwrap() - 1;
    assert_eq!(
        gateway_conns, 1,
        "one pooled upstream connection for 30 sequential requests: {s}"
    );
}

#[test]
fn client_disconnect_cancels_the_upstream_request() {
    let a = sim(&["m"], |c| {
        c.decode_step_us = 20_000;
    });
    let gw = Gateway::start(&config(&[("m", vec![(1, vec![a.addr()])])]), &[]);
    let mut c = gw.connect();
    let body = chat("m", true, 2000);
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
        let s = sim_stats(a.addr());
        (s["requests_cancelled_total"].as_u64().unwrap() == 1
            && s["running"].as_u64().unwrap() == 0)
            .then_some(())
    });
    assert!(
        cancelled.is_some(),
        "the sim never saw the cancellation: {}",
        sim_stats(a.addr())
    );
}

/// The upstream read before the response head watches the client once it has
/// waited `WATCH_AFTER` (the same timer then times the deadline): a client that
/// hangs up while a non-streaming answer is still being generated is noticed,
/// and the upstream request is abandoned rather than waited out.
#[test]
fn a_client_gone_before_the_response_head_abandons_the_upstream_request() {
    let a = sim(&["m"], |c| {
        // Non-streaming: the head comes with the whole answer, 400 x 20 ms later.
        c.decode_step_us = 20_000;
    });
    let gw = Gateway::start(&config(&[("m", vec![(1, vec![a.addr()])])]), &[]);
    let mut c = gw.connect();
    let body = r#"{"model":"m","prompt":"x","max_tokens":400}"#;
    c.send_raw(
        format!(
            "POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    // The request has reached the backend before the client leaves.
    let running = poll(Duration::from_secs(10), || {
        (sim_stats(a.addr())["running"].as_u64() == Some(1)).then_some(())
    });
    assert!(running.is_some(), "{}", sim_stats(a.addr()));
    drop(c);
    let abandoned = poll(Duration::from_secs(3), || {
        let m = gw.metrics();
        let seen = m.lines().any(|l| {
            l.starts_with("gateway_upstream_errors_total{")
                && l.contains(r#"kind="client_cancelled""#)
                && l.ends_with(" 1")
        });
        seen.then_some(())
    });
    assert!(
        abandoned.is_some(),
        "the gateway kept waiting for a client that had gone:\n{}",
        gw.metrics()
    );
}

#[test]
fn dead_backend_gives_502_then_recovers() {
    let a = sim(&["m"], |_| {});
    let addr = a.addr();
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![addr])])]),
        &["--eject-base", "50ms", "--eject-max", "200ms"],
    );
    let req = r#"{"model":"m","prompt":"x","max_tokens":1}"#;
    assert_eq!(gw.connect().post("/v1/completions", req, &[]).status, 200);
    a.shutdown();
    let mut c = gw.connect();
    let r = c.post("/v1/completions", req, &[]);
    // The pooled connection is stale, the fresh one is refused and ejects the only
    // endpoint: the attempt machine answers 502 naming the upstream's failure
    // (attempt.rs: the_only_endpoint_refusing_gives_one_exact_502).
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_failed", "{}", r.text());
    let _back = sim_at(addr, &["m"]);
    let ok = poll(Duration::from_secs(10), || {
        (gw.connect().post("/v1/completions", req, &[]).status == 200).then_some(())
    });
    assert!(
        ok.is_some(),
        "the gateway never recovered after the backend returned"
    );
}

#[test]
fn oversized_head_and_body_are_refused() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--max-header-bytes", "4096", "--max-body-bytes", "1000"],
    );
    let mut c = gw.connect();
    let big = "x".repeat(5000);
    c.send_raw(format!("GET / HTTP/1.1\r\nhost: t\r\nx-big: {big}\r\n\r\n").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"]["code"], "header_too_large");
    assert!(c.is_closed());

    let mut c = gw.connect();
    let body = format!(r#"{{"model":"m","prompt":"{}"}}"#, "y".repeat(2000));
    let r = c.post("/v1/completions", &body, &[]);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "body_too_large");
}

#[test]
fn smuggling_attempts_get_400_and_close() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(&config(&[("m", vec![(1, vec![a.addr()])])]), &[]);
    let cases: [&[u8]; 4] = [
        b"POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        b"POST /v1/completions HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\nhost: t\n\n",
    ];
    for raw in cases {
        let mut c = gw.connect();
        c.send_raw(raw);
        let r = c.read_response();
        assert_eq!(
            r.status,
            400,
            "{:?} → {} {}",
            String::from_utf8_lossy(raw),
            r.status,
            r.text()
        );
        assert!(r.json()["error"]["message"].as_str().is_some());
        assert!(
            c.is_closed(),
            "connection left open after {:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn pipelined_requests_are_answered_in_order_and_chunked_bodies_work() {
    let a = sim(&["m1", "m2"], |_| {});
    let gw = Gateway::start(
        &config(&[
            ("m1", vec![(1, vec![a.addr()])]),
            ("m2", vec![(1, vec![a.addr()])]),
        ]),
        &[],
    );
    let mut c = gw.connect();
    let b1 = r#"{"model":"m1","prompt":"a","max_tokens":1}"#;
    let b2 = r#"{"model":"m2","prompt":"b","max_tokens":1}"#;
    let mut raw = String::new();
    raw.push_str(&format!(
        "POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{b1}",
        b1.len()
    ));
    // The second one chunked, in two chunks.
    let (p1, p2) = b2.split_at(10);
    raw.push_str(&format!(
        "POST /v1/completions HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{p1}\r\n{:x}\r\n{p2}\r\n0\r\n\r\n",
        p1.len(),
        p2.len()
    ));
    c.send_raw(raw.as_bytes());
    let r1 = c.read_response();
    let r2 = c.read_response();
    assert_eq!(r1.json()["model"], "m1");
    assert_eq!(r2.json()["model"], "m2");
}

#[test]
fn expect_100_continue_is_answered() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(&config(&[("m", vec![(1, vec![a.addr()])])]), &[]);
    let mut c = gw.connect();
    let body = r#"{"model":"m","prompt":"a","max_tokens":1}"#;
    c.send_raw(format!("POST /v1/completions HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
    let mut buf = [0u8; 25];
    std::io::Read::read_exact(&mut c.stream, &mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send_raw(body.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200);
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let a = sim(&["m"], |c| {
        c.decode_step_us = 10_000;
    });
    let mut gw = Gateway::start(&config(&[("m", vec![(1, vec![a.addr()])])]), &[]);
    let mut c = gw.connect();
    let body = chat("m", true, 60);
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
    gw.terminate();
    let mut rest = Vec::new();
    while let Some(ch) = c.next_chunk() {
        rest.extend_from_slice(&ch);
    }
    assert!(
        String::from_utf8_lossy(&rest).contains("[DONE]"),
        "the in-flight stream was cut"
    );
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("gateway did not exit after drain");
    assert!(status.success(), "{status}");
}

#[test]
fn admin_health_endpoints_answer() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(&config(&[("m", vec![(1, vec![a.addr()])])]), &[]);
    let admin = gw.admin.unwrap();
    assert_eq!(Client::connect(admin).get("/healthz").status, 200);
    assert_eq!(Client::connect(admin).get("/readyz").status, 200);
    let cfg = Client::connect(admin).get("/debug/config").json();
    assert!(
        cfg["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "Gateway"),
        "{cfg}"
    );
    assert!(cfg["documents"].as_array().unwrap().len() >= 3);
}

/// A config whose only route is a catch-all to `addr` (no model match).
fn catch_all(addr: std::net::SocketAddr) -> String {
    config(&[("unused", vec![(1, vec![addr])])]).replace(
        "  - matches:\n    - headers:\n      - name: X-Gateway-Model-Name\n        value: unused\n    - headers:\n      - name: X-Model-Type\n        value: unused\n",
        "  - matches:\n    - path:\n        type: PathPrefix\n        value: /\n",
    )
}

#[test]
fn proxy_headers_are_rewritten_and_hop_by_hop_ones_dropped() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(&catch_all(a.addr()), &[]);
    let mut c = gw.connect();
    c.send_raw(
        b"POST /sim/echo?x=1 HTTP/1.1\r\nhost: api.example\r\nconnection: keep-alive, x-drop-me\r\nx-drop-me: secret\r\nkeep-alive: timeout=5\r\nte: trailers\r\nx-forwarded-for: 10.1.2.3\r\nx-keep: yes\r\ncontent-length: 3\r\n\r\nabc",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["method"], "POST");
    assert_eq!(j["target"], "/sim/echo?x=1");
    assert_eq!(j["body_len"], 3);
    let headers: Vec<(String, String)> = j["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_string(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(get("host").as_deref(), Some("api.example"));
    assert_eq!(get("x-keep").as_deref(), Some("yes"));
    assert_eq!(
        get("x-forwarded-for").as_deref(),
        Some("10.1.2.3, 127.0.0.1")
    );
    assert_eq!(get("x-forwarded-proto").as_deref(), Some("http"));
    assert!(get("x-request-id").is_some_and(|v| v == r.header("x-request-id").unwrap()));
    for dropped in ["x-drop-me", "keep-alive", "te"] {
        assert_eq!(get(dropped), None, "{dropped} was forwarded");
    }
}

/// Byte `i` of the test pattern: no period that divides a socket buffer.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// A TCP socket with a small receive buffer (4 KiB asked), so a peer's
/// writes to it stop short: the window closes after a few KiB.
fn small_window_socket() -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s
}

/// Writes that a socket takes only in parts (short writes, then waits for
/// room): a request body larger than the upstream socket takes at once, to a
/// backend with a small window, and a 4 MiB response to a client with a small
/// window both arrive whole and in order, and both connections carry a second
/// exchange after them.
#[test]
fn writes_larger_than_a_socket_takes_at_once_arrive_whole_and_in_order() {
    const REQ_BODY: usize = 60_000; // sent with the head (at most 64 KiB)
    const RESP_BODY: usize = 4 << 20;
    let backend = small_window_socket();
    backend
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    backend.listen(8).unwrap();
    let baddr = backend.local_addr().unwrap().as_socket().unwrap();
    let listener: std::net::TcpListener = backend.into();
    // The backend: every connection in a thread of its own (the gateway's
    // telemetry scrapes come too); the body of each `POST /blob` goes to the
    // test, and its answer is RESP_BODY bytes of the pattern.
    let (bodies_tx, bodies) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let tx = bodies_tx.clone();
            std::thread::spawn(move || serve_blobs(s, &tx, RESP_BODY));
        }
    });
    let gw = Gateway::start(&catch_all(baddr), &[]);
    let client = small_window_socket();
    client.connect(&gw.addr.into()).unwrap();
    let mut c = Client::over(client.into());
    let body: Vec<u8> = (0..REQ_BODY).map(pattern).collect();
    for _ in 0..2 {
        let mut req = format!(
            "POST /blob HTTP/1.1\r\nhost: test\r\ncontent-type: application/octet-stream\r\ncontent-length: {REQ_BODY}\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(&body);
        c.send_raw(&req);
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), RESP_BODY);
        let first_bad = r
            .body
            .iter()
            .enumerate()
            .position(|(i, b)| *b != pattern(i));
        assert_eq!(first_bad, None, "the response body arrived out of order");
        let got = bodies.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(got == body, "the request body arrived changed");
    }
}

/// One backend connection: read requests; a `POST /blob`'s body is sent to
/// `bodies` and answered with `resp_len` bytes of [`pattern`], anything else
/// with an empty 404. Ends when the connection does.
fn serve_blobs(
    mut s: std::net::TcpStream,
    bodies: &std::sync::mpsc::Sender<Vec<u8>>,
    resp_len: usize,
) {
    use std::io::{Read, Write};
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let fill = |s: &mut std::net::TcpStream, buf: &mut Vec<u8>| {
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    };
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if !fill(&mut s, &mut buf) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            if !fill(&mut s, &mut buf) {
                return;
            }
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let resp = if head.starts_with("post /blob ") {
            let _ = bodies.send(body);
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {resp_len}\r\n\r\n"
            )
            .into_bytes();
            r.extend((0..resp_len).map(pattern));
            r
        } else {
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec()
        };
        if s.write_all(&resp).is_err() {
            return;
        }
    }
}

#[test]
fn absolute_form_goes_upstream_in_origin_form_and_a_missing_host_is_refused() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(&catch_all(a.addr()), &[]);
    let mut c = gw.connect();
    c.send_raw(b"GET http://evil.example/sim/echo?x=1 HTTP/1.1\r\nhost: a\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["target"], "/sim/echo?x=1");
    assert_eq!(echoed_header(&j, "host"), ["evil.example"]);
    // RFC 9112 §3.2: HTTP/1.1 without Host, or with two, is a 400.
    for raw in [
        &b"GET /sim/echo HTTP/1.1\r\n\r\n"[..],
        b"GET /sim/echo HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
    ] {
        let mut c = gw.connect();
        c.send_raw(raw);
        assert_eq!(c.read_response().status, 400);
    }
}

#[test]
fn seed_style_x_model_type_routes_serve_body_model_requests() {
    let a = sim(&["gpt-large"], |_| {});
    let yaml = config(&[("gpt-large", vec![(1, vec![a.addr()])])]).replace(
        "    - headers:\n      - name: X-Gateway-Model-Name\n        value: gpt-large\n",
        "",
    );
    assert!(!yaml.contains("X-Gateway-Model-Name"));
    let gw = Gateway::start(&yaml, &[]);
    let mut c = gw.connect();
    let r = c.post("/v1/chat/completions", &chat("gpt-large", false, 2), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    // Two top-level `model` keys could route as one model and be served as another.
    let r = c.post(
        "/v1/chat/completions",
        r#"{"model":"gpt-large","model":"other","messages":[]}"#,
        &[],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_json");
}

#[test]
fn slow_client_gets_408() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--header-timeout", "200ms"],
    );
    let mut c = gw.connect();
    c.send_raw(b"POST /v1/completions HTTP/1.1\r\nhost: t\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 408);
    assert_eq!(r.json()["error"]["code"], "request_timeout");
    assert!(c.is_closed());
}

#[test]
fn stalled_upstream_gets_504() {
    let a = sim(&["m"], |c| {
        c.stall_ms = 5_000;
    });
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--response-timeout", "300ms"],
    );
    let r = gw.connect().post(
        "/v1/completions",
        r#"{"model":"m","prompt":"x","max_tokens":1}"#,
        &[],
    );
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
}

#[test]
fn epoll_driver_and_several_shards_serve_too() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--force-epoll", "--shards", "2"],
    );
    assert_eq!(gw.driver, "epoll");
    for _ in 0..20 {
        let mut c = gw.connect();
        let r = c.post(
            "/v1/completions",
            r#"{"model":"m","prompt":"x","max_tokens":1}"#,
            &[],
        );
        assert_eq!(r.status, 200);
    }
    let mut c = gw.connect();
    let body = chat("m", true, 5);
    c.send_raw(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let r = c.read_response();
    assert!(r.text().contains("[DONE]"));
}

#[test]
fn a_pooled_connection_the_backend_closed_is_not_used() {
    let a = sim(&["m"], |_| {});
    let addr = a.addr();
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![addr])])]),
        &["--upstream-idle-timeout", "60s"],
    );
    let req = r#"{"model":"m","prompt":"x","max_tokens":1}"#;
    let mut c = gw.connect();
    assert_eq!(c.post("/v1/completions", req, &[]).status, 200);
    // The backend restarts: the gateway's pooled connection to it is now dead.
    a.shutdown();
    let _b = sim_at(addr, &["m"]);
    let r = c.post("/v1/completions", req, &[]);
    assert_eq!(
        r.status,
        200,
        "a stale pooled connection leaked into a request: {}",
        r.text()
    );
}

#[test]
fn metrics_are_scraped_after_real_traffic_with_bounded_labels() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--shards", "2"],
    );
    let mut c = gw.connect();
    let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":4,"messages":[{"role":"user","content":"one two three"}]}"#;
    let r = c.post("/v1/chat/completions", body, &[]);
    assert_eq!(r.status, 200);
    let r = c.post(
        "/v1/completions",
        r#"{"model":"m","prompt":"a b c","max_tokens":3}"#,
        &[],
    );
    assert_eq!(r.status, 200);
    for i in 0..50 {
        let r = c.post(
            "/v1/completions",
            &format!(r#"{{"model":"random-{i}","prompt":"x"}}"#),
            &[],
        );
        assert_eq!(r.status, 404);
    }
    let admin = gw.admin.unwrap();
    let text = poll(Duration::from_secs(10), || {
        let t = Client::connect(admin).get("/metrics").text();
        t.contains(r#"gateway_requests_total{model="other",route="none",code="404"} 50"#)
            .then_some(t)
    })
    .expect("metrics never showed the traffic");
    for needle in [
        r#"gateway_requests_total{model="m",route="default/r0",code="200"} 2"#,
        r#"gateway_inference_duration_seconds_count{model="m",route="default/r0",status_class="2xx"} 2"#,
        r#"gateway_time_to_first_token_seconds_count{model="m",route="default/r0"} 1"#,
        r#"gateway_time_per_output_token_seconds_count{model="m"} 1"#,
        r#"gateway_completion_tokens_total{model="m"} 7"#,
        "# TYPE gateway_inference_duration_seconds histogram",
        "gateway_build_info{",
        "gateway_connections_total{shard=",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert!(!text.contains("random-"), "a client minted a label value");
}

#[test]
fn access_log_lines_are_json_with_the_request_facts() {
    let a = sim(&["m"], |_| {});
    let log = std::env::temp_dir().join(format!("shardgate-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--access-log", log.to_str().unwrap()],
    );
    let r = gw.connect().post(
        "/v1/completions",
        r#"{"model":"m","prompt":"a b","max_tokens":2}"#,
        &[("x-request-id", "log-me-1")],
    );
    assert_eq!(r.status, 200);
    let line = poll(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .find(|l| l.contains("log-me-1"))
            .map(|l| l.to_string())
    })
    .expect("no access-log line");
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["status"], 200);
    assert_eq!(j["model"], "m");
    assert_eq!(j["route"], "default/r0");
    assert_eq!(j["endpoint"], a.addr().to_string());
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/v1/completions");
    assert_eq!(j["completion_tokens"], 2);
    assert!(j["bytes"].as_u64().unwrap() > 0);
    assert!(j["duration_ms"].as_f64().unwrap() > 0.0);
    drop(gw);
    let _ = std::fs::remove_file(&log);
}

/// Two sims behind one route, with an InferencePolicy (ExtensionRef) whose health
/// check runs a real one-token completion every 100 ms.
fn policy_config(a: std::net::SocketAddr, b: std::net::SocketAddr, algorithm: &str) -> String {
    let base = config(&[("m", vec![(1, vec![a, b])])]);
    let base = base.replace(
        "    backendRefs:\n",
        "    filters:\n    - type: ExtensionRef\n      extensionRef:\n        group: ai.gateway.io\n        kind: InferencePolicy\n        name: lb\n    backendRefs:\n",
    );
    format!(
        "{base}---\napiVersion: ai.gateway.io/v1alpha1\nkind: InferencePolicy\nmetadata:\n  name: lb\n  namespace: default\nspec:\n  loadBalancing:\n    algorithm: {algorithm}\n  healthCheck:\n    interval: 100ms\n    timeout: 2s\n    inferenceTest:\n      enabled: true\n      model: m\n"
    )
}

#[test]
fn traffic_shifts_away_from_a_slow_loaded_backend() {
    let slow = sim(&["m"], |c| {
        c.decode_step_us = 40_000;
        c.max_num_seqs = 2;
    });
    let fast = sim(&["m"], |c| {
        c.decode_step_us = 1_000;
    });
    let gw = Gateway::start(
        &policy_config(slow.addr(), fast.addr(), "least-queue"),
        &["--pass-saturated"],
    );
    let before_slow = sim_stats(slow.addr())["requests_finished"]
        .as_u64()
        .unwrap();
    let before_fast = sim_stats(fast.addr())["requests_finished"]
        .as_u64()
        .unwrap();
    let addr = gw.addr;
    let workers: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..12 {
                    let r = c.post(
                        "/v1/completions",
                        r#"{"model":"m","prompt":"a b c","max_tokens":8}"#,
                        &[],
                    );
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // Health-check probes also land on both; they are the same on each, about.
    let s = sim_stats(slow.addr())["requests_finished"]
        .as_u64()
        .unwrap()
        - before_slow;
    let f = sim_stats(fast.addr())["requests_finished"]
        .as_u64()
        .unwrap()
        - before_fast;
    let share = s as f64 / (s + f) as f64;
    assert!(
        share < 0.3,
        "the slow backend still got {s} of {} requests ({share:.2})",
        s + f
    );
}

#[test]
fn failing_inference_test_ejects_then_restores_an_endpoint() {
    let a = sim(&["m"], |_| {});
    let b = sim(&["m"], |_| {});
    let gw = Gateway::start(&policy_config(a.addr(), b.addr(), "default"), &[]);
    let admin = gw.admin.unwrap();
    let healthy = |want: bool| {
        poll(Duration::from_secs(10), || {
            let j = Client::connect(admin).get("/debug/endpoints").json();
            let ep = j["endpoints"]
                .as_array()?
                .iter()
                .find(|e| e["address"] == a.addr().to_string())?
                .clone();
            // The scoring snapshot (what shards pick from) must agree, not just the health table.
            let in_snapshot = ep["scores"]["status"].as_str()?.contains("Unhealthy") != want;
            (ep["health"]["healthy"] == want && ep["health"]["checks"].as_u64()? > 0 && in_snapshot)
                .then_some(ep)
        })
    };
    assert!(healthy(true).is_some());
    // The backend starts failing every request: its inference test fails, it is ejected.
    let mut c = Client::connect(a.addr());
    assert_eq!(
        c.post("/sim/faults", r#"{"error_rate":1.0}"#, &[]).status,
        200
    );
    let ep = healthy(false).expect("never ejected");
    assert!(
        ep["health"]["last_error"].as_str().unwrap().contains("500"),
        "{ep}"
    );
    // While it is out, traffic goes to the other one only (a request to it would fail).
    for _ in 0..20 {
        let r = gw.connect().post(
            "/v1/completions",
            r#"{"model":"m","prompt":"x","max_tokens":1}"#,
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Readiness holds: the model still has a healthy endpoint.
    assert_eq!(Client::connect(admin).get("/readyz").status, 200);
    let metrics = Client::connect(admin).get("/metrics").text();
    assert!(
        metrics.contains(&format!(
            "gateway_endpoint_healthy{{endpoint=\"{}\"}} 0",
            a.addr()
        )),
        "{metrics}"
    );
    // It recovers: restored.
    assert_eq!(
        c.post("/sim/faults", r#"{"error_rate":0.0}"#, &[]).status,
        200
    );
    assert!(healthy(true).is_some(), "never restored");
}

#[test]
fn readyz_follows_the_only_endpoint_down_and_up() {
    let a = sim(&["m"], |_| {});
    let addr = a.addr();
    let gw = Gateway::start(&policy_config(addr, addr, "default"), &[]);
    let admin = gw.admin.unwrap();
    let status = |want: u16| {
        poll(Duration::from_secs(10), || {
            (Client::connect(admin).get("/readyz").status == want).then_some(())
        })
    };
    assert!(status(200).is_some());
    a.shutdown();
    assert!(
        status(503).is_some(),
        "/readyz stayed ready with the only endpoint down"
    );
    let _back = sim_at(addr, &["m"]);
    assert!(status(200).is_some(), "/readyz never recovered");
    // Telemetry from the restarted server shows up in the debug view.
    let t = poll(Duration::from_secs(10), || {
        let j = Client::connect(admin).get("/debug/endpoints").json();
        let t = j["endpoints"][0]["telemetry"].clone();
        (t["server"] == "vllm" && t["kv_usage"].is_number()).then_some(t)
    });
    assert!(t.is_some(), "no vLLM telemetry in /debug/endpoints");
}

/// One sim behind a rule linked to the seed's BatchingPolicy.
fn batching_config(addr: std::net::SocketAddr) -> String {
    let base = config(&[("emb", vec![(1, vec![addr])])]);
    let base = base.replace(
        "    backendRefs:\n",
        "    filters:\n    - type: ExtensionRef\n      extensionRef:\n        group: ai.gateway.io\n        kind: BatchingPolicy\n        name: smart-batching\n    backendRefs:\n",
    );
    format!(
        "{base}---\napiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: smart-batching\n  namespace: default\nspec:\n  maxBatchSize: 32\n  maxLatency: 50ms\n  adaptiveBatching:\n    enabled: false\n  priorityQueues:\n  - name: real-time\n    maxLatency: 10ms\n    maxBatchSize: 4\n  - name: batch\n    maxLatency: 100ms\n    maxBatchSize: 64\n"
    )
}

#[test]
fn embeddings_are_micro_batched_and_each_client_gets_its_own_answer() {
    let a = sim(&["emb"], |_| {});
    let gw = Gateway::start(&batching_config(a.addr()), &[]);
    let before = sim_stats(a.addr())["requests_total"].as_u64().unwrap();
    let addr = gw.addr;
    let n = 16;
    let workers: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let body = format!(r#"{{"model":"emb","input":["text number {i}","second {i}"]}}"#);
                let r =
                    Client::connect(addr).post("/v1/embeddings", &body, &[("x-priority", "batch")]);
                assert_eq!(r.status, 200, "{}", r.text());
                (i, r.json())
            })
        })
        .collect();
    let answers: Vec<(usize, serde_json::Value)> =
        workers.into_iter().map(|w| w.join().unwrap()).collect();
    let upstream_calls = sim_stats(a.addr())["requests_total"].as_u64().unwrap() - before;
    assert!(
        upstream_calls < n as u64,
        "{n} requests made {upstream_calls} upstream calls: nothing was batched"
    );
    // Byte-exact for clients: each answer equals what the server says for that request alone.
    for (i, got) in answers {
        let body = format!(r#"{{"model":"emb","input":["text number {i}","second {i}"]}}"#);
        let alone = Client::connect(a.addr())
            .post("/v1/embeddings", &body, &[])
            .json();
        assert_eq!(
            got["data"], alone["data"],
            "request {i} got someone else's embeddings"
        );
        assert_eq!(got["data"][1]["index"], 1);
        assert_eq!(
            got["usage"]["prompt_tokens"], alone["usage"]["prompt_tokens"],
            "request {i}"
        );
    }
    let admin = gw.admin.unwrap();
    let text = poll(Duration::from_secs(10), || {
        let t = Client::connect(admin).get("/metrics").text();
        let value = |prefix: &str| -> Option<f64> { t.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse().ok()) };
        let flushed = value("gateway_batch_flushes_total{policy=\"default/smart-batching\",priority=\"batch\",reason=\"deadline\"} ")?;
        let batched = value("gateway_batch_size_count{policy=\"default/smart-batching\",priority=\"batch\"} ")?;
        (flushed > 0.0 && batched == flushed).then_some(t)
    })
    .expect("no batch metrics");
    assert!(
        text.contains("gateway_queue_depth{queue=\"batching\",priority=\"batch\",model=\"emb\"} 0"),
        "{text}"
    );
}

#[test]
fn an_unknown_priority_queue_is_a_400() {
    let a = sim(&["emb"], |_| {});
    let gw = Gateway::start(&batching_config(a.addr()), &[]);
    let r = gw.connect().post(
        "/v1/embeddings",
        r#"{"model":"emb","input":"x"}"#,
        &[("x-priority", "urgent")],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unknown_priority_queue");
    // The default queue serves requests without X-Priority; streaming completions are never batched.
    let r = gw
        .connect()
        .post("/v1/embeddings", r#"{"model":"emb","input":"x"}"#, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.connect().post(
        "/v1/completions",
        r#"{"model":"emb","prompt":"a b","max_tokens":2,"stream":true}"#,
        &[],
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("[DONE]"));
}

#[test]
fn a_503_before_any_byte_is_retried_on_another_endpoint() {
    // `loading` answers 503 to every inference request (a model still loading).
    let loading = sim(&["m"], |c| {
        c.slow_start_ms = 60_000;
    });
    let ready = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![loading.addr(), ready.addr()])])]),
        &[
            "--retry-budget",
            "1.0",
            "--eject-after-5xx",
            "0",
            "--no-scrape",
        ],
    );
    let mut c = gw.connect();
    for _ in 0..12 {
        let r = c.post(
            "/v1/completions",
            r#"{"model":"m","prompt":"x","max_tokens":1}"#,
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let admin = gw.admin.unwrap();
    let retried = poll(Duration::from_secs(10), || {
        let t = Client::connect(admin).get("/metrics").text();
        t.lines()
            .find(|l| {
                l.starts_with("gateway_upstream_errors_total{")
                    && l.contains("kind=\"http_503_retried\"")
            })
            .map(|l| l.to_string())
    });
    assert!(retried.is_some(), "no request was retried after a 503");
}

fn with_max_concurrent(yaml: String, n: u32) -> String {
    format!("{yaml}---\napiVersion: ai.gateway.io/v1alpha1\nkind: InferenceConfig\nmetadata:\n  name: limits\nspec:\n  resourceManagement:\n    maxConcurrentInferences: {n}\n")
}

#[test]
fn max_concurrent_inferences_queues_then_times_out_with_429() {
    let a = sim(&["m"], |c| {
        c.decode_step_us = 20_000;
    });
    let yaml = with_max_concurrent(config(&[("m", vec![(1, vec![a.addr()])])]), 1);
    let gw = Gateway::start(&yaml, &["--admission-timeout", "300ms"]);
    // The only permit is held by a long stream.
    let mut long = gw.connect();
    let body = chat("m", true, 200);
    long.send_raw(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let (status, _) = long.read_head();
    assert_eq!(status, 200);
    assert!(long.next_chunk().is_some());
    // The next request waits for it, then gives up with 429 and Retry-After.
    let r = gw.connect().post(
        "/v1/completions",
        r#"{"model":"m","prompt":"x","max_tokens":1}"#,
        &[],
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "admission_timeout");
    assert!(r.header("retry-after").is_some());
    drop(long);
    // Once the permit is back (the client left, the stream was cancelled), requests flow.
    let ok = poll(Duration::from_secs(10), || {
        (gw.connect()
            .post(
                "/v1/completions",
                r#"{"model":"m","prompt":"x","max_tokens":1}"#,
                &[],
            )
            .status
            == 200)
            .then_some(())
    });
    assert!(ok.is_some());
}

/// Requests waiting for a `maxConcurrentInferences` permit, summed over the shards
/// (the admin listener's `gateway_admission_waiting` gauges, published every 500 ms).
fn admission_waiting(admin: SocketAddr) -> u64 {
    Client::connect(admin)
        .get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with("gateway_admission_waiting{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn max_concurrent_inferences_lets_waiting_requests_through_in_turn() {
    let a = sim(&["m"], |c| {
        c.decode_step_us = 10_000;
    });
    let yaml = with_max_concurrent(config(&[("m", vec![(1, vec![a.addr()])])]), 2);
    let gw = Gateway::start(&yaml, &["--shards", "2"]);
    let addr = gw.addr;
    let admin = gw.admin.unwrap();
    // Six requests of 150 tokens (1.5 s each) and a budget of 2: at least two rounds
    // (3 s) of requests wait for a permit, several times the 500 ms at which the
    // shards publish their admission gauges.
    let workers: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                Client::connect(addr)
                    .post(
                        "/v1/completions",
                        r#"{"model":"m","prompt":"x","max_tokens":150}"#,
                        &[],
                    )
                    .status
            })
        })
        .collect();
    // The sim never has more than 2 requests (the budget), and the gateway reports
    // requests waiting for a permit.
    let mut max_running = 0;
    let mut sample = || {
        let s = sim_stats(a.addr());
        max_running =
            max_running.max(s["running"].as_u64().unwrap() + s["waiting"].as_u64().unwrap());
    };
    let waited = poll(Duration::from_secs(10), || {
        sample();
        let w = admission_waiting(admin);
        (w > 0).then_some(w)
    });
    assert!(
        waited.is_some(),
        "no request ever waited for a permit with 6 requests and a budget of 2"
    );
    while workers.iter().any(|w| !w.is_finished()) {
        sample();
    }
    for w in workers {
        assert_eq!(w.join().unwrap(), 200);
    }
    assert!(
        max_running <= 2,
        "the sim saw {max_running} concurrent requests with a budget of 2"
    );
    let drained = poll(Duration::from_secs(5), || {
        (admission_waiting(admin) == 0).then_some(())
    });
    assert!(drained.is_some(), "requests still waiting at the end");
}

#[test]
fn when_saturated_sheddable_requests_get_429_and_others_go_through() {
    let a = sim(&["m"], |c| {
        c.decode_step_us = 20_000;
        c.max_num_seqs = 1;
    });
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--saturation-waiting", "0", "--scrape-interval", "50ms"],
    );
    // Three streams: one runs, two wait in the backend's queue: it is saturated.
    let streams = saturate(&gw, "m", 3, 30);
    let req = r#"{"model":"m","prompt":"x","max_tokens":1}"#;
    let r = gw
        .connect()
        .post("/v1/completions", req, &[("x-request-priority", "-1")]);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "shed_saturated");
    assert!(r.header("retry-after").is_some());
    let r = gw.connect().post("/v1/completions", req, &[]);
    assert_eq!(
        r.status,
        200,
        "a standard-priority request must still go through: {}",
        r.text()
    );
    drop(streams);
}

/// Shards report in-flight calls on their own channel (`gateway/src/report.rs`),
/// not in the metrics published every 500 ms: a request that starts streaming
/// shows in `/debug/endpoints` within 100 ms, and its end too.
#[test]
fn in_flight_shows_within_100ms() {
    let a = sim(&["m"], |c| {
        c.decode_step_us = 20_000;
    });
    let gw = Gateway::start(&config(&[("m", vec![(1, vec![a.addr()])])]), &[]);
    let admin = gw.admin.expect("admin listener");
    let in_flight = || -> u64 {
        let j = Client::connect(admin).get("/debug/endpoints").json();
        j["endpoints"][0]["in_flight"].as_u64().unwrap_or(0)
    };
    assert_eq!(in_flight(), 0);
    let mut c = gw.connect();
    let body = chat("m", true, 40);
    c.send_raw(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let seen = poll(Duration::from_secs(5), || {
        (in_flight() == 1).then(|| started.elapsed())
    });
    let lag = seen.expect("the streaming request never showed as in flight");
    assert!(
        lag < Duration::from_millis(100),
        "in_flight showed after {lag:?}"
    );
    // Drain the stream; the count drops as promptly.
    while c.next_chunk().is_some() {}
    let ended = std::time::Instant::now();
    let gone = poll(Duration::from_secs(5), || {
        (in_flight() == 0).then(|| ended.elapsed())
    });
    let lag = gone.expect("the finished request still shows as in flight");
    assert!(
        lag < Duration::from_millis(100),
        "in_flight cleared after {lag:?}"
    );
}

/// A backend killed under load and started again gets traffic back within 2 s of
/// its return: concurrent failures escalate its ejection once (not to
/// `--eject-max` at once), and a telemetry scrape that succeeds again ends the
/// ejection early.
#[test]
fn a_killed_backend_gets_traffic_within_2s_of_its_return() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let a = sim(&["m"], |_| {});
    let b = sim(&["m"], |_| {});
    let (addr_a, addr_b) = (a.addr(), b.addr());
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![addr_a, addr_b])])]),
        &["--eject-max", "30s", "--shards", "2"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let req = r#"{"model":"m","prompt":"x","max_tokens":1}"#;
    let load: Vec<_> = (0..24)
        .map(|_| {
            let (stop, addr) = (stop.clone(), gw.addr);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = std::panic::catch_unwind(|| {
                        Client::connect(addr)
                            .post("/v1/completions", req, &[])
                            .status
                    });
                    assert!(matches!(r, Ok(200 | 502 | 503)), "{r:?}");
                }
            })
        })
        .collect();
    let served = |addr| sim_stats(addr)["requests_total"].as_u64().unwrap_or(0);
    assert!(
        poll(Duration::from_secs(10), || (served(addr_a) > 50)
            .then_some(()))
        .is_some(),
        "a never got traffic"
    );
    a.shutdown();
    // The outage lasts while b serves 1,500 more requests (about 1-3 s here).
    let mark = served(addr_b);
    assert!(
        poll(Duration::from_secs(20), || (served(addr_b) > mark + 1500)
            .then_some(()))
        .is_some(),
        "b did not take the load"
    );
    let back = sim_at(addr_a, &["m"]);
    let returned = Instant::now();
    let took = poll(Duration::from_secs(10), || {
        (served(addr_a) > 10).then(|| returned.elapsed())
    });
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let took = took.expect("the returned backend got no traffic within 10 s");
    assert!(
        took < Duration::from_secs(2),
        "traffic came back after {took:?}"
    );
    drop(back);
}

/// Runs `shardgate serve` on `yaml` at `port` with `extra` flags until it
/// exits (its code and stderr) or serves (its ready file appears: it is killed
/// and the answer is `None`).
fn second_instance(yaml: &str, port: u16, extra: &[&str]) -> Option<(i32, String)> {
    use std::process::{Command, Stdio};
    let base = std::env::temp_dir().join(format!("shardgate-second-{}-{port}", std::process::id()));
    let cfg = base.with_extension("yaml");
    let ready = base.with_extension("ready");
    let _ = std::fs::remove_file(&ready);
    std::fs::write(&cfg, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["serve", "-c", cfg.to_str().unwrap(), "--bind", "127.0.0.1"])
        .args([
            "--listen-port",
            &port.to_string(),
            "--admin-addr",
            "off",
            "--shards",
            "2",
        ])
        .args(["--ready-file", ready.to_str().unwrap()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let outcome = poll(Duration::from_secs(20), || {
        if let Some(s) = child.try_wait().ok().flatten() {
            return Some(Some(s));
        }
        ready.exists().then_some(None)
    })
    .expect("the second instance neither exited nor served");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&cfg);
    let _ = std::fs::remove_file(&ready);
    outcome.map(|s| {
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        (s.code().unwrap_or(-1), err)
    })
}

#[test]
fn a_second_instance_on_the_same_port_exits_2_unless_asked_to_share() {
    let a = sim(&["m"], |_| {});
    let yaml = config(&[("m", vec![(1, vec![a.addr()])])]);
    let gw = Gateway::start(&yaml, &["--shards", "2"]);
    let port = gw.addr.port();
    let (code, err) = second_instance(&yaml, port, &[])
        .expect("a second instance served on a port another gateway holds");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("--reuse-port-with-other-processes"), "{err}");
    // The first one still serves.
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("m", false, 2), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    // With the flag (a zero-downtime upgrade) the second one starts and serves.
    assert_eq!(
        second_instance(&yaml, port, &["--reuse-port-with-other-processes"]),
        None,
        "the second instance with the flag did not serve"
    );
}
