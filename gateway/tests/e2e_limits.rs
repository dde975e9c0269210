//! Limits that protect the gateway from its clients and report its backends'
//! failures (issue #12 items 2, 3 and 7): the buffered-body budget
//! (`--max-buffered-body-bytes`: 503 `body_budget_exhausted` at once while other
//! bodies hold it, 413 above a shard's whole share, budget back when a request
//! ends), the send timeout (`--send-timeout`: a client that never reads is closed
//! and its upstream request cancelled), and the outcome of cut streams (an SSE
//! error event, `aborted_mid_stream`, the access log's `outcome`).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use shardgate_testkit::Launch;

fn metrics(admin: SocketAddr) -> String {
    Client::connect(admin).get("/metrics").text()
}

/// Poll `/metrics` until it contains every needle.
fn wait_metrics(admin: SocketAddr, needles: &[&str]) -> String {
    let mut last = String::new();
    let found = poll(Duration::from_secs(10), || {
        last = metrics(admin);
        needles.iter().all(|n| last.contains(n)).then_some(())
    });
    assert!(found.is_some(), "missing one of {needles:?} in:\n{last}");
    last
}

/// Poll the access log until a line satisfies `f`; returns the lines.
fn wait_log(path: &PathBuf, f: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    let found = poll(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(path).ok()?;
        lines = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect::<Vec<serde_json::Value>>();
        lines.iter().any(&f).then_some(())
    });
    assert!(found.is_some(), "no matching access-log line in {lines:?}");
    lines
}

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "shardgate-limits-{name}-{}.log",
        std::process::id()
    ))
}

/// A JSON body of exactly `len` bytes naming model `m`.
fn body_of(len: usize) -> Vec<u8> {
    let head = br#"{"model":"m","pad":""#;
    let tail = br#""}"#;
    let mut b = head.to_vec();
    b.resize(len - tail.len(), b'a');
    b.extend_from_slice(tail);
    b
}

fn echo_head(len: usize) -> String {
    format!(
        "POST /sim/echo HTTP/1.1\r\nhost: t\r\nx-model-type: m\r\ncontent-length: {len}\r\n\r\n"
    )
}

/// Read whatever the server still sends until it closes (EOF or reset).
fn closes(c: &mut Client) -> bool {
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tmp = [0u8; 65536];
    loop {
        match c.stream.read(&mut tmp) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn body_budget_refuses_at_once_and_comes_back_when_the_request_ends() {
    let s = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![s.addr()])])]),
        &["--max-buffered-body-bytes", "1000000"],
    );
    let admin = gw.admin.unwrap();
    const LEN: usize = 600_000;
    let body = body_of(LEN);

    // A holds 600,000 of the 1,000,000 bytes: its head is in, its body half sent.
    let mut a = gw.connect();
    a.send_raw(echo_head(LEN).as_bytes());
    a.send_raw(&body[..LEN / 2]);
    wait_metrics(
        admin,
        &[r#"gateway_buffered_body_bytes{shard="0",state="used"} 600000"#],
    );

    // B does not fit now: 503 at once, before its body, with Retry-After, and closed.
    let mut b = gw.connect();
    b.send_raw(echo_head(LEN).as_bytes());
    let r = b.read_response();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["code"], "body_budget_exhausted");
    assert!(closes(&mut b), "a refused connection must close");

    // A chunked body is granted as it grows: refused once it outgrows what is left.
    let mut c = gw.connect();
    c.send_raw(b"POST /sim/echo HTTP/1.1\r\nhost: t\r\nx-model-type: m\r\ntransfer-encoding: chunked\r\n\r\n");
    for piece in body.chunks(100_000) {
        let _ = c
            .stream
            .write_all(format!("{:x}\r\n", piece.len()).as_bytes());
        let _ = c.stream.write_all(piece);
        let _ = c.stream.write_all(b"\r\n");
    }
    let r = c.read_response();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "body_budget_exhausted");

    // Larger than the whole share: 413, whatever else is buffered.
    let mut d = gw.connect();
    d.send_raw(echo_head(2_000_000).as_bytes());
    let r = d.read_response();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "body_too_large");

    // A finishes and succeeds.
    a.send_raw(&body[LEN / 2..]);
    let r = a.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], LEN);

    // Its budget came back: the same body fits again, on A's connection and on a new one.
    let r = a.post(
        "/sim/echo",
        std::str::from_utf8(&body).unwrap(),
        &[("x-model-type", "m")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut e = gw.connect();
    let r = e.post(
        "/sim/echo",
        std::str::from_utf8(&body).unwrap(),
        &[("x-model-type", "m")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    e.send_raw(b"POST /sim/echo HTTP/1.1\r\nhost: t\r\nx-model-type: m\r\ntransfer-encoding: chunked\r\n\r\n");
    for piece in body.chunks(100_000) {
        e.send_raw(format!("{:x}\r\n", piece.len()).as_bytes());
        e.send_raw(piece);
        e.send_raw(b"\r\n");
    }
    e.send_raw(b"0\r\n\r\n");
    let r = e.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], LEN);

    wait_metrics(
        admin,
        &[
            r#"gateway_body_budget_refused_total{reason="exhausted"} 2"#,
            r#"gateway_body_budget_refused_total{reason="over_share"} 1"#,
            r#"gateway_buffered_body_bytes{shard="0",state="used"} 0"#,
            r#"gateway_buffered_body_bytes{shard="0",state="share"} 1000000"#,
        ],
    );
}

#[test]
fn a_client_that_never_reads_is_closed_at_the_send_timeout_and_its_request_cancelled() {
    // A fast, long stream: far more than the sockets' buffers hold.
    let s = sim(&["m"], |c| {
        c.decode_step_us = 20;
        c.decode_step_us_per_seq = 0;
        c.num_gpu_blocks = 8192;
    });
    let log = log_path("send-timeout");
    let _ = std::fs::remove_file(&log);
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![s.addr()])])]),
        &[
            "--send-timeout",
            "500ms",
            "--access-log",
            log.to_str().unwrap(),
        ],
    );
    let mut c = gw.connect();
    let body = chat("m", true, 100_000);
    let started = Instant::now();
    c.send_raw(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    // Never read: the gateway's writes block, the send timeout fires, the
    // upstream connection is dropped and the sim cancels the request.
    let cancelled = poll(Duration::from_secs(30), || {
        (sim_stats(s.addr())["requests_cancelled_total"].as_u64()? >= 1).then_some(())
    });
    assert!(
        cancelled.is_some(),
        "the sim never saw the request cancelled"
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(25), "took {waited:?}");
    assert!(closes(&mut c), "the gateway kept the connection open");
    let admin = gw.admin.unwrap();
    wait_metrics(
        admin,
        &[r#"gateway_client_aborts_total{reason="send_timeout"} 1"#],
    );
    let lines = wait_log(&log, |l| l["outcome"] == "send_timeout");
    let line = lines
        .iter()
        .find(|l| l["outcome"] == "send_timeout")
        .unwrap();
    assert_eq!(line["status"], 200);
}

fn stream_request(c: &mut Client, model: &str, max_tokens: u32) {
    let body = chat(model, true, max_tokens);
    c.send_raw(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

#[test]
fn a_stream_the_upstream_cuts_ends_with_an_error_event_and_is_counted() {
    let s = sim(&["m"], |c| c.close_mid_stream_rate = 1.0);
    let slow = sim(&["m2"], |c| c.decode_step_us = 50_000);
    let log = log_path("aborted");
    let _ = std::fs::remove_file(&log);
    let gw = Gateway::start(
        &config(&[
            ("m", vec![(1, vec![s.addr()])]),
            ("m2", vec![(1, vec![slow.addr()])]),
        ]),
        &["--access-log", log.to_str().unwrap()],
    );
    let mut c = gw.connect();
    stream_request(&mut c, "m", 40);
    let (status, headers) = c.read_head();
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")));
    let mut text = Vec::new();
    while let Some(chunk) = c.next_chunk() {
        text.extend_from_slice(&chunk);
    }
    // The body ended cleanly (last chunk) with a parseable error event, after
    // whole token events, and the connection closes.
    let text = String::from_utf8(text).unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    let last = events.last().unwrap().trim();
    let json = last
        .strip_prefix("data: ")
        .unwrap_or_else(|| panic!("{text}"));
    let err: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(err["error"]["code"], "aborted_mid_stream", "{text}");
    assert_eq!(err["error"]["type"], "upstream_error");
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(events.len() >= 2, "no token event before the cut: {text}");
    for e in &events[..events.len() - 1] {
        let data = e.trim().strip_prefix("data: ").unwrap();
        let _: serde_json::Value = serde_json::from_str(data).unwrap();
    }
    assert!(closes(&mut c));

    // A client that leaves mid-stream: counted on the client's side.
    let mut gone = gw.connect();
    stream_request(&mut gone, "m2", 1000);
    let (status, _) = gone.read_head();
    assert_eq!(status, 200);
    drop(gone);

    let admin = gw.admin.unwrap();
    let upstream = format!(
        r#"gateway_upstream_errors_total{{endpoint="{}",kind="aborted_mid_stream"}} 1"#,
        s.addr()
    );
    wait_metrics(
        admin,
        &[
            &upstream,
            r#"gateway_client_aborts_total{reason="closed"} 1"#,
        ],
    );
    let lines = wait_log(&log, |l| l["outcome"] == "aborted_client");
    let cut: Vec<_> = lines
        .iter()
        .filter(|l| l["outcome"] == "aborted_upstream")
        .collect();
    assert_eq!(cut.len(), 1, "{lines:?}");
    assert_eq!(cut[0]["status"], 200);
    assert_eq!(cut[0]["model"], "m");
    assert!(lines
        .iter()
        .any(|l| l["outcome"] == "aborted_client" && l["model"] == "m2"));
}

/// Everything the server sends on `c` until it closes, or `None` if it did
/// not close within 10 s.
fn read_until_closed(c: &mut Client) -> Option<Vec<u8>> {
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        match c.stream.read(&mut tmp) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(got),
        }
    }
}

#[test]
fn a_panic_ends_its_connection_or_stream_only_and_the_shard_serves_on() {
    // Debug builds panic on a request for `SHARDGATE_DEBUG_PANIC_PATH`
    // (`gateway/src/contain.rs`); one shard, so every connection below shares
    // the shard the panics happen on.
    let backend = sim(&["m"], |_| {});
    let mut gw = Gateway::launch(
        &config(&[("m", vec![(1, vec![backend.addr()])])]),
        &[],
        Launch {
            capture_stderr: true,
            env: &[("SHARDGATE_DEBUG_PANIC_PATH", "/boom")],
            ..Launch::default()
        },
    );
    let body = chat("m", false, 2);
    let mut kept = gw.connect();
    assert_eq!(kept.post("/v1/chat/completions", &body, &[]).status, 200);

    // HTTP/1.1: the connection whose request panicked closes without an answer.
    let mut c = gw.connect();
    c.stream
        .write_all(b"GET /boom HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_until_closed(&mut c), Some(Vec::new()));
    // The shard serves on: a connection opened before, and a new one.
    assert_eq!(kept.post("/v1/chat/completions", &body, &[]).status, 200);
    assert_eq!(
        gw.connect().post("/v1/chat/completions", &body, &[]).status,
        200
    );

    // HTTP/2: the stream is reset; its connection serves the next request.
    let mut h2 = shardgate_testkit::grpc::GrpcClient::connect(gw.addr).unwrap();
    let r = h2.http("GET", "/boom", &[], b"");
    assert!(r.is_err(), "{r:?}");
    let (status, _, _) = h2
        .http(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(status, 200);

    wait_metrics(
        gw.admin.unwrap(),
        &[
            "gateway_task_panics_total{shard=\"0\",task=\"connection\"} 1",
            "gateway_task_panics_total{shard=\"0\",task=\"stream\"} 1",
            "gateway_connections_open{shard=\"0\"} 2",
        ],
    );
    // The drain ends as usual, with status 0.
    gw.stop_cleanly(Duration::from_secs(10));
    let log = gw.stderr_text();
    assert!(log.contains("injected panic at /boom"), "{log}");
    assert!(log.contains("a task panicked"), "{log}");
}
