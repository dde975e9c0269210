//! End-to-end tests of the connection limits and the drain (#12 items 1 and 10):
//! the accept loop backs off at EMFILE instead of spinning and logging, the
//! `--max-connections` cap sheds idle keep-alive connections before it refuses a
//! new one, and a drain refuses new connections at once while in-flight streams
//! finish.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The sum of every sample of `name` whose line contains `filter`.
fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether a connection to `addr` is refused or closed without an answer
/// (the listener is gone or shut), as opposed to served.
fn refused(addr: std::net::SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Err(_) => true,
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            if s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: t\r\n\r\n")
                .is_err()
            {
                return true;
            }
            let mut b = [0u8; 64];
            match s.read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            }
        }
    }
}

#[test]
fn drain_refuses_new_connections_at_once_while_streams_finish() {
    let a = sim(&["m"], |c| {
        c.decode_step_us = 10_000;
    });
    let mut gw = Gateway::launch(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        // One shard: the keep-alive connection must share it with the stream
        // (a shard with nothing in flight ends its drain at once).
        &["--shards", "1"],
        Launch {
            capture_stderr: true,
            rust_log: Some("info"),
            ..Launch::default()
        },
    );
    // A keep-alive connection with one answered request.
    let mut keep = gw.connect();
    assert_eq!(keep.get("/v1/models").status, 200);
    // An in-flight stream (300 tokens of 10 ms).
    let mut c = gw.connect();
    let body = chat("m", true, 300);
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
    // Clients that keep opening connections: once the drain is logged, none of
    // them may be served (the listeners are shut before the line is written).
    let stop = Arc::new(AtomicBool::new(false));
    let logged = Arc::new(AtomicBool::new(false));
    let served_after = Arc::new(AtomicUsize::new(0));
    let addr = gw.addr;
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, logged, served_after) = (stop.clone(), logged.clone(), served_after.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let after = logged.load(Ordering::SeqCst);
                    if !refused(addr) && after {
                        served_after.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    gw.terminate();
    poll(Duration::from_secs(5), || {
        gw.stderr_text()
            .contains("draining: no new connections")
            .then_some(())
    })
    .expect("the drain was not logged");
    logged.store(true, Ordering::SeqCst);
    let refused_at = poll(Duration::from_secs(2), || {
        refused(gw.addr).then(Instant::now)
    })
    .expect("new connections were still served 2 s after SIGTERM");
    let took = refused_at - t0;
    assert!(
        took < Duration::from_millis(200),
        "new connections refused only {took:?} after SIGTERM"
    );
    // Let the clients try for a while (the old accept loop looked every 50 ms).
    poll(Duration::from_millis(300), || None::<()>);
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        served_after.load(Ordering::SeqCst),
        0,
        "connections opened after the drain began were served"
    );
    // A request on the existing keep-alive connection is answered, with close.
    let r = keep.get("/v1/models");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    assert!(keep.is_closed());
    // And new connections stay refused.
    for _ in 0..20 {
        assert!(
            refused(gw.addr),
            "a new connection was served during the drain"
        );
    }
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

/// Whether the gateway closed `c` (EOF or reset seen within 50 ms).
fn closed_now(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut b = [0u8; 256];
    match c.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// Poll the admin `/metrics` until `name` (filtered by `filter`) sums to `want`.
fn wait_metric(gw: &Gateway, name: &str, filter: &str, want: f64) {
    let mut last = 0.0;
    let got = poll(Duration::from_secs(5), || {
        last = metric_sum(&gw.metrics(), name, filter);
        (last == want).then_some(())
    });
    assert!(got.is_some(), "{name}{{{filter}}} = {last}, want {want}");
}

/// A completion through the gateway on a fresh connection, within `deadline`.
fn fresh_request_succeeds(gw: &Gateway, deadline: Duration) -> bool {
    let body = r#"{"model":"m","prompt":"a","max_tokens":1}"#;
    poll(deadline, || {
        let mut s = TcpStream::connect_timeout(&gw.addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut b = [0u8; 12];
        s.read_exact(&mut b).ok()?;
        (&b == b"HTTP/1.1 200").then_some(())
    })
    .is_some()
}

#[test]
fn a_kept_alive_connection_turns_idle_after_its_hot_wait() {
    // The default: a boundary of the 50 ms grid at least 50 ms after the answer.
    turns_idle_after(&[], Duration::from_millis(30));
}

#[test]
fn client_hot_wait_sets_how_long_a_kept_alive_connection_stays_hot() {
    turns_idle_after(&["--client-hot-wait", "400ms"], Duration::from_millis(350));
}

/// At `--max-connections 1`, a new connection is served only once a kept-alive
/// one is idle, and that one is closed to make room. After its answer the
/// kept-alive connection stays hot (reading straight into its buffer) until a
/// boundary of the shard's 50 ms grid at least `--client-hot-wait` later; until
/// then each new connection is closed at once. Checks that it turned idle no
/// sooner than `at_least` after its answer.
fn turns_idle_after(flags: &[&str], at_least: Duration) {
    let a = sim(&["m"], |_| {});
    let mut args = vec!["--max-connections", "1"];
    args.extend_from_slice(flags);
    let gw = Gateway::start(&config(&[("m", vec![(1, vec![a.addr()])])]), &args);
    let mut c = gw.connect();
    let body = r#"{"model":"m","prompt":"a","max_tokens":1}"#;
    assert_eq!(c.post("/v1/completions", body, &[]).status, 200);
    let answered = Instant::now();
    assert!(
        fresh_request_succeeds(&gw, Duration::from_secs(5)),
        "the kept-alive connection never turned idle"
    );
    let took = answered.elapsed();
    assert!(
        took >= at_least,
        "idle after {took:?}, expected {at_least:?} or more"
    );
    assert!(
        poll(Duration::from_secs(5), || closed_now(&mut c.stream)
            .then_some(()))
        .is_some(),
        "the idle connection was not the one closed"
    );
}

#[test]
fn quiet_connections_are_kept_hot_up_to_the_budget_and_served_from_it() {
    let a = sim(&["m"], |_| {});
    // One shard, so the whole budget (2) is one shard's.
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--shards", "1", "--client-hot-conns", "2"],
    );
    let body = r#"{"model":"m","prompt":"a","max_tokens":1}"#;
    let mut clients: Vec<Client> = (0..3).map(|_| gw.connect()).collect();
    for c in &mut clients {
        assert_eq!(c.post("/v1/completions", body, &[]).status, 200);
    }
    // Past their hot wait two stay hot (the budget), the third goes idle; all
    // three are idle ones for the connection cap.
    wait_metric(&gw, "gateway_connections_kept_hot", "", 2.0);
    wait_metric(&gw, "gateway_connections_idle", "", 3.0);
    // Each is served again, kept hot or not, twice.
    for _ in 0..2 {
        for c in &mut clients {
            assert_eq!(c.post("/v1/completions", body, &[]).status, 200);
        }
    }
    wait_metric(&gw, "gateway_connections_kept_hot", "", 2.0);
    // A connection that goes away while kept hot gives its place back.
    drop(clients);
    wait_metric(&gw, "gateway_connections_kept_hot", "", 0.0);
    wait_metric(&gw, "gateway_connections_open", "", 0.0);
}

#[test]
fn client_hot_conns_0_puts_every_quiet_connection_away() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--client-hot-conns", "0"],
    );
    let body = r#"{"model":"m","prompt":"a","max_tokens":1}"#;
    let mut c = gw.connect();
    assert_eq!(c.post("/v1/completions", body, &[]).status, 200);
    wait_metric(&gw, "gateway_connections_idle", "", 1.0);
    assert_eq!(
        metric_sum(&gw.metrics(), "gateway_connections_kept_hot", ""),
        0.0
    );
    assert_eq!(c.post("/v1/completions", body, &[]).status, 200);
}

#[test]
fn a_connection_kept_hot_closes_at_the_idle_timeout() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--client-idle-timeout", "1500ms"],
    );
    let body = r#"{"model":"m","prompt":"a","max_tokens":1}"#;
    let mut c = gw.connect();
    assert_eq!(c.post("/v1/completions", body, &[]).status, 200);
    let answered = Instant::now();
    // (Metrics are published every 500 ms.)
    wait_metric(&gw, "gateway_connections_kept_hot", "", 1.0);
    let closed = poll(Duration::from_secs(5), || {
        closed_now(&mut c.stream).then_some(answered.elapsed())
    });
    let took = closed.expect("the kept connection never closed");
    // Kept hot past its 50-100 ms hot wait, it closes at the idle timeout
    // (counted from the answer; the client saw the answer a little before the
    // gateway took it as sent).
    assert!(took >= Duration::from_millis(1450), "closed after {took:?}");
    wait_metric(&gw, "gateway_connections_kept_hot", "", 0.0);
}

#[test]
fn at_the_connection_cap_an_idle_connection_makes_room_else_the_new_one_is_closed() {
    let a = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--max-connections", "4"],
    );
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(gw.addr).unwrap())
        .collect();
    wait_metric(&gw, "gateway_connections_idle", "", 4.0);
    // At the cap, a new client is served: the longest-idle connection makes room.
    let mut fresh = gw.connect();
    let body = r#"{"model":"m","prompt":"a","max_tokens":1}"#;
    assert_eq!(fresh.post("/v1/completions", body, &[]).status, 200);
    let gone = poll(Duration::from_secs(5), || {
        idle.iter_mut().position(closed_now)
    })
    .expect("no idle connection was closed to make room");
    idle.remove(gone);
    for c in &mut idle {
        assert!(!closed_now(c), "more than one idle connection was closed");
    }
    wait_metric(&gw, "gateway_connections_closed_idle_total", "", 1.0);
    // Make every open connection busy (a request head under way): nothing is idle.
    for c in &mut idle {
        c.write_all(b"GET /v1/models HTTP/1.1\r\n").unwrap();
    }
    fresh.send_raw(b"GET /v1/models HTTP/1.1\r\n");
    wait_metric(&gw, "gateway_connections_idle", "", 0.0);
    // The next connection is accepted and closed at once.
    let t0 = Instant::now();
    let mut over = TcpStream::connect(gw.addr).unwrap();
    let closed = poll(Duration::from_secs(2), || {
        closed_now(&mut over).then_some(())
    });
    assert!(
        closed.is_some(),
        "the connection over the cap was not closed"
    );
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    wait_metric(
        &gw,
        "gateway_connections_refused_total",
        "reason=\"cap\"",
        1.0,
    );
    // The busy connections are still served.
    for c in &mut idle {
        c.write_all(b"host: t\r\n\r\n").unwrap();
        let mut b = [0u8; 12];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"HTTP/1.1 200");
    }
}

#[test]
fn idle_connections_beyond_the_descriptor_limit_leave_the_gateway_responsive() {
    // The issue's reproduction: `ulimit -n 256`, 400 idle connections, default
    // flags (the cap is derived from the limit).
    let a = sim(&["m"], |_| {});
    let gw = Gateway::launch(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &[],
        Launch {
            nofile: Some(256),
            capture_stderr: true,
            ..Launch::default()
        },
    );
    let idle: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(gw.addr).unwrap())
        .collect();
    assert!(
        fresh_request_succeeds(&gw, Duration::from_secs(10)),
        "a new client was not served next to 400 idle connections"
    );
    // (Metrics are published every 500 ms.)
    let mut m = String::new();
    let shed = poll(Duration::from_secs(5), || {
        m = gw.metrics();
        (metric_sum(&m, "gateway_connections_closed_idle_total", "") > 0.0).then_some(())
    });
    assert!(shed.is_some(), "{m}");
    assert!(
        metric_sum(&m, "gateway_connections_open", "") < 256.0,
        "{m}"
    );
    let log = gw.stderr_text();
    assert!(log.len() < 8 * 1024, "{} bytes of log:\n{log}", log.len());
    drop(idle);
}

#[test]
fn out_of_descriptors_the_accept_loop_backs_off_quietly_and_recovers() {
    let a = sim(&["m"], |_| {});
    let mut gw = Gateway::launch(
        &config(&[("m", vec![(1, vec![a.addr()])])]),
        &["--max-connections", "100000", "--header-timeout", "60s"],
        Launch {
            nofile: Some(256),
            capture_stderr: true,
            ..Launch::default()
        },
    );
    // 300 connections each part-way through a request head: none is idle, so
    // none can be closed to make room, and descriptors stay exhausted.
    let mut busy = Vec::new();
    for _ in 0..300 {
        let mut c = TcpStream::connect(gw.addr).unwrap();
        c.write_all(b"GET /v1/models HTTP/1.1\r\n").unwrap();
        busy.push(c);
    }
    poll(Duration::from_secs(10), || {
        gw.stderr_text().contains("accept failed").then_some(())
    })
    .expect("descriptors never ran out");
    // Over one second at EMFILE: little CPU and at most a few log lines.
    let (cpu0, log0) = (gw.cpu_time(), gw.stderr_text().len());
    poll(Duration::from_secs(1), || None::<()>);
    let (cpu, log) = (gw.cpu_time() - cpu0, gw.stderr_text().len() - log0);
    assert!(
        cpu < Duration::from_millis(300),
        "{cpu:?} of CPU in 1 s at EMFILE"
    );
    assert!(log < 2048, "{log} bytes of log in 1 s at EMFILE");
    // Once the clients go, a new one is served within the longest pause.
    drop(busy);
    assert!(
        fresh_request_succeeds(&gw, Duration::from_secs(10)),
        "the gateway did not recover after descriptors were freed"
    );
    let mut m = String::new();
    let counted = poll(Duration::from_secs(5), || {
        m = gw.metrics();
        (metric_sum(&m, "gateway_connections_refused_total", "reason=\"emfile\"") > 0.0)
            .then_some(())
    });
    assert!(counted.is_some(), "{m}");
}
