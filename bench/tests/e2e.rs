//! End-to-end runs of the load generator (library API) against the fixed-response
//! test server in `support/`: 0.2-0.5 s each, asserting only that the counts are
//! consistent (every due request ends in exactly one outcome, the server's
//! response count matches), never timings.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use shardgate_bench::{run, Config, Report, RequestSpec, RunError, Template};
use support::TestServer;

fn raw(path: &str) -> RequestSpec {
    RequestSpec {
        template: Template::Raw,
        path: Some(path.into()),
        ..RequestSpec::default()
    }
}

fn go(config: Config) -> Report {
    let mut ticks = 0;
    let report = run(&config, &mut |_| ticks += 1).unwrap();
    // Every request ended in exactly one outcome.
    let e = &report.errors;
    assert_eq!(
        report.failed,
        e.connect
            + e.write
            + e.read
            + e.closed
            + e.protocol
            + e.timeout
            + e.dropped
            + e.http_4xx
            + e.http_5xx,
        "{report:?}"
    );
    assert_eq!(report.requests, report.ok + report.failed, "{report:?}");
    assert_eq!(
        report.status.values().sum::<u64>(),
        report.ok + e.http_4xx + e.http_5xx,
        "{report:?}"
    );
    if let Some(s) = report.scheduled {
        assert_eq!(
            report.requests, s,
            "open loop: every scheduled request is accounted for"
        );
    }
    match &report.latency {
        Some(l) => assert_eq!(l.count, report.ok),
        None => assert_eq!(report.ok, 0),
    }
    report
}

#[test]
fn closed_loop_content_length() {
    let server = TestServer::start();
    let report = go(Config {
        url: server.url(""),
        request: raw("/cl"),
        connections: 4,
        duration: Some(Duration::from_millis(500)),
        ..Config::default()
    });
    assert_eq!(report.mode, "closed");
    assert!(report.ok > 0, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.status.get(&200), Some(&report.ok));
    assert_eq!(report.connects, 4, "keep-alive: one connection each");
    assert_eq!(server.responses(), report.ok);
    assert!(report.rps > 0.0 && report.duration_s > 0.0);
    assert!(report.ttft.is_none());
}

#[test]
fn open_loop_two_threads_chunked_and_content_length() {
    let server = TestServer::start();
    let report = go(Config {
        url: server.url("/alt"),
        request: RequestSpec {
            template: Template::Raw,
            ..RequestSpec::default()
        },
        rate: Some(2000.0),
        duration: Some(Duration::from_millis(500)),
        connections: 4,
        threads: 2,
        ..Config::default()
    });
    assert_eq!(report.mode, "open");
    assert_eq!(report.scheduled, Some(1000));
    assert_eq!(report.requests, 1000);
    assert!(report.ok > 0, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(server.responses(), 1000);
    assert_eq!(report.threads, 2);
}

#[test]
fn streaming_measures_ttft() {
    let server = TestServer::start();
    let report = go(Config {
        url: server.url(""),
        request: RequestSpec {
            template: Template::Completion,
            stream: true,
            ..RequestSpec::default()
        },
        connections: 2,
        requests: Some(200),
        ..Config::default()
    });
    assert_eq!((report.requests, report.ok), (200, 200), "{report:?}");
    let ttft = report.ttft.unwrap();
    assert_eq!(ttft.count, 200);
    let latency = report.latency.unwrap();
    assert!(ttft.min_us <= latency.max_us);
    assert!(report.stream);
}

#[test]
fn request_budget_is_split_exactly_across_threads() {
    let server = TestServer::start();
    let report = go(Config {
        url: server.url("/chunked"),
        request: RequestSpec {
            template: Template::Raw,
            ..RequestSpec::default()
        },
        connections: 3,
        threads: 2,
        requests: Some(101),
        ..Config::default()
    });
    assert_eq!((report.requests, report.ok), (101, 101), "{report:?}");
    assert_eq!(server.responses(), 101);
}

#[test]
fn http_errors_are_counted_per_status_and_fail_the_run() {
    let server = TestServer::start();
    let report = go(Config {
        url: server.url("/status/503"),
        request: RequestSpec {
            template: Template::Raw,
            ..RequestSpec::default()
        },
        connections: 2,
        duration: Some(Duration::from_millis(300)),
        ..Config::default()
    });
    assert!(report.requests > 0);
    assert_eq!(report.ok, 0);
    assert_eq!(report.errors.http_5xx, report.requests);
    assert_eq!(report.status.get(&503), Some(&report.requests));
    assert!(report.all_failed());
    assert!(report.latency.is_none());
}

#[test]
fn connect_errors_when_nothing_listens() {
    // A port that was free a moment ago and has no listener now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let report = go(Config {
        url: format!("http://127.0.0.1:{port}/"),
        request: raw("/"),
        connections: 1,
        duration: Some(Duration::from_millis(200)),
        ..Config::default()
    });
    assert!(report.errors.connect > 0, "{report:?}");
    assert_eq!(report.errors.connect, report.requests);
    assert!(report.all_failed());
}

#[test]
fn timeouts_and_dropped_requests_in_open_loop() {
    let server = TestServer::start();
    let report = go(Config {
        url: server.url("/silent"),
        request: RequestSpec {
            template: Template::Raw,
            ..RequestSpec::default()
        },
        rate: Some(200.0),
        duration: Some(Duration::from_millis(500)),
        connections: 1,
        max_backlog: 2,
        timeout: Duration::from_millis(100),
        ..Config::default()
    });
    assert_eq!(report.scheduled, Some(100));
    assert_eq!(report.ok, 0);
    assert!(report.errors.timeout > 0, "{report:?}");
    assert!(report.errors.dropped > 0, "{report:?}");
    assert_eq!(
        report.errors.timeout + report.errors.dropped,
        100,
        "{report:?}"
    );
}

#[test]
fn warmup_requests_are_not_counted() {
    let server = TestServer::start();
    let report = go(Config {
        url: server.url("/cl"),
        request: RequestSpec {
            template: Template::Raw,
            ..RequestSpec::default()
        },
        connections: 2,
        warmup: Duration::from_millis(200),
        duration: Some(Duration::from_millis(200)),
        ..Config::default()
    });
    assert!(report.ok > 0);
    assert!(
        server.responses() > report.ok,
        "warm-up responses were served but not counted: {} vs {}",
        server.responses(),
        report.ok
    );
    assert!((report.warmup_s - 0.2).abs() < 1e-9);
}

#[test]
fn connection_close_and_read_until_close_bodies() {
    for path in ["/close", "/eof"] {
        let server = TestServer::start();
        let report = go(Config {
            url: server.url(path),
            request: RequestSpec {
                template: Template::Raw,
                ..RequestSpec::default()
            },
            connections: 2,
            requests: Some(50),
            ..Config::default()
        });
        assert_eq!((report.requests, report.ok), (50, 50), "{path}: {report:?}");
        // A new connection per request (the two opened ahead of the start included).
        assert!(report.connects >= 50, "{path}: {report:?}");
    }
}

#[test]
fn foreign_targets_are_refused_before_anything_runs() {
    let err = run(
        &Config {
            url: "http://example.com:80/".into(),
            ..Config::default()
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, RunError::Config(_)));
    assert!(err.to_string().contains("this machine"), "{err}");
}

#[test]
fn progress_is_reported_while_running() {
    let server = TestServer::start();
    let mut lines = Vec::new();
    let report = run(
        &Config {
            url: server.url("/cl"),
            request: RequestSpec {
                template: Template::Raw,
                ..RequestSpec::default()
            },
            connections: 1,
            duration: Some(Duration::from_millis(1300)),
            ..Config::default()
        },
        &mut |p| lines.push(*p),
    )
    .unwrap();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|p| p.ok <= report.ok));
    assert!(lines[0].to_string().contains("rps"));
}
