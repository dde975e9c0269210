//! HTTP/2 limits and hostile clients on a GRPC listener: each limit is a flag,
//! tested at and past it, and each attack ends in a clean RST_STREAM or
//! GOAWAY (never a crash or a hang) while other clients keep being served.
//! Raw frames come from `shardgate_testkit::h2raw`; every wait has a deadline.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Gateway;
use shardgate_sim::grpc::{encode_message, ModelRef};
use shardgate_testkit::grpc::{grpc_config, GrpcClient};
use shardgate_testkit::h2raw::{flag, frame, grpc_request, header_block, ty, RawH2};
use shardgate_testkit::{SimConfig, SimHandle};

const READY: &str = "/inference.GRPCInferenceService/ModelReady";
const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const WAIT: Duration = Duration::from_secs(5);

/// `ENHANCE_YOUR_CALM`, `REFUSED_STREAM`, `PROTOCOL_ERROR`.
const CALM: u32 = 0xb;
const REFUSED: u32 = 0x7;
const PROTOCOL: u32 = 0x1;

fn sim() -> SimHandle {
    shardgate_sim::spawn(SimConfig {
        port: 0,
        model: vec!["m".into()],
        ..SimConfig::default()
    })
    .unwrap()
}

fn gateway(s: &SimHandle, extra: &[&str]) -> Gateway {
    Gateway::start(&grpc_config(&[("m", "svc", s.addr())]), extra)
}

/// A well-behaved client's ModelReady call works and takes less than `bound`.
fn served_within(addr: SocketAddr, bound: Duration) -> Duration {
    let mut c = GrpcClient::connect(addr).unwrap();
    let t0 = Instant::now();
    let r = c
        .unary(
            READY,
            &[],
            &encode_message(&ModelRef {
                name: "m".into(),
                version: String::new(),
            }),
        )
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(took < bound, "a normal call took {took:?}");
    took
}

fn settings_value(f: &shardgate_testkit::h2raw::Frame, id: u16) -> Option<u32> {
    f.payload.chunks(6).find_map(|c| {
        (c.len() == 6 && u16::from_be_bytes([c[0], c[1]]) == id)
            .then(|| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
    })
}

#[test]
fn rapid_reset_is_cut_off_and_others_stay_served() {
    let s = sim();
    let gw = gateway(&s, &["--h2-max-pending-resets", "10"]);
    // Under the limit: 5 streams opened and reset at once; the connection lives.
    let mut c = RawH2::connect(gw.addr, &[]).unwrap();
    let mut burst = Vec::new();
    for i in 0..5u32 {
        let id = 2 * i + 1;
        burst.extend(frame(
            ty::HEADERS,
            flag::END_HEADERS,
            id,
            &grpc_request(INFER, &[]),
        ));
        burst.extend(frame(ty::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    c.send(&burst).unwrap();
    assert!(
        c.alive(WAIT),
        "5 resets under a limit of 10 closed the connection"
    );

    // Past it: 5,000 open-and-reset pairs, written as fast as possible.
    let mut c = RawH2::connect(gw.addr, &[]).unwrap();
    let mut flood = Vec::new();
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        flood.extend(frame(
            ty::HEADERS,
            flag::END_HEADERS,
            id,
            &grpc_request(INFER, &[]),
        ));
        flood.extend(frame(ty::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let t0 = Instant::now();
    let _ = c.send(&flood);
    // Other clients are served meanwhile, fast.
    served_within(gw.addr, Duration::from_secs(1));
    let goaway = c.wait_for(WAIT, |f| f.ty == ty::GOAWAY);
    let goaway = goaway.expect("no GOAWAY after a reset flood");
    assert_eq!(goaway.error_code(), Some(CALM), "{goaway:?}");
    assert!(t0.elapsed() < WAIT);
    served_within(gw.addr, Duration::from_secs(1));
}

#[test]
fn concurrent_streams_are_capped() {
    let s = sim();
    let gw = gateway(&s, &["--h2-max-concurrent-streams", "2"]);
    let mut c = RawH2::connect(gw.addr, &[]).unwrap();
    let settings = c
        .wait_for(WAIT, |f| f.ty == ty::SETTINGS && f.flags & flag::ACK == 0)
        .unwrap();
    assert_eq!(settings_value(&settings, 3), Some(2), "{settings:?}");
    // Two streams that wait for their first message: at the limit, accepted.
    for id in [1, 3] {
        c.send(&frame(
            ty::HEADERS,
            flag::END_HEADERS,
            id,
            &grpc_request(INFER, &[]),
        ))
        .unwrap();
    }
    assert!(c.alive(WAIT));
    // A third: refused, the connection stays.
    c.send(&frame(
        ty::HEADERS,
        flag::END_HEADERS,
        5,
        &grpc_request(INFER, &[]),
    ))
    .unwrap();
    let f = c
        .wait_for(WAIT, |f| f.ty == ty::RST_STREAM || f.ty == ty::GOAWAY)
        .expect("the third stream was not refused");
    assert_eq!((f.ty, f.stream), (ty::RST_STREAM, 5), "{f:?}");
    assert!(matches!(f.error_code(), Some(REFUSED | PROTOCOL)), "{f:?}");
    assert!(c.alive(WAIT));
}

#[test]
fn header_lists_are_capped_and_continuation_floods_cut() {
    let s = sim();
    let gw = gateway(&s, &["--h2-max-header-list-bytes", "2048"]);
    let mut c = RawH2::connect(gw.addr, &[]).unwrap();
    // Under the limit: answered (a trailers-only status for an empty body).
    let small = "a".repeat(1000);
    c.send(&frame(
        ty::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &grpc_request(READY, &[("x-pad", &small)]),
    ))
    .unwrap();
    let f = c
        .wait_for(WAIT, |f| {
            f.stream == 1 && (f.ty == ty::HEADERS || f.ty == ty::RST_STREAM)
        })
        .unwrap();
    assert_eq!(f.ty, ty::HEADERS, "{f:?}");
    // Past it: the stream gets no request through; the connection may stay.
    let big = "a".repeat(4000);
    c.send(&frame(
        ty::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        3,
        &grpc_request(READY, &[("x-pad", &big)]),
    ))
    .unwrap();
    let f = c
        .wait_for(WAIT, |f| {
            (f.stream == 3 && (f.ty == ty::HEADERS || f.ty == ty::RST_STREAM)) || f.ty == ty::GOAWAY
        })
        .expect("an oversized header list got no answer");
    if f.ty == ty::HEADERS {
        // h2 answers 431 itself.
        assert!(f.payload.windows(3).any(|w| w == b"431") || !f.payload.is_empty());
    }
    // A CONTINUATION flood: one header block of 16 MiB in 16 KiB pieces.
    let mut c = RawH2::connect(gw.addr, &[]).unwrap();
    let _ = c.send(&frame(ty::HEADERS, 0, 1, &grpc_request(INFER, &[])));
    let piece = header_block(&[("x-flood", &"b".repeat(16_000))]);
    let t0 = Instant::now();
    let mut cut = false;
    for _ in 0..1_000 {
        if c.send(&frame(ty::CONTINUATION, 0, 1, &piece)).is_err() {
            cut = true;
            break;
        }
    }
    let closed = cut
        || c.wait_for(WAIT, |f| f.ty == ty::GOAWAY || f.ty == ty::RST_STREAM)
            .is_some();
    assert!(closed, "a CONTINUATION flood was not cut off");
    assert!(t0.elapsed() < Duration::from_secs(10));
    served_within(gw.addr, Duration::from_secs(1));
}

#[test]
fn bad_prefaces_settings_and_ping_floods_end_cleanly() {
    let s = sim();
    let gw = gateway(&s, &[]);
    // Not HTTP/2 at all: closed (or GOAWAY) at once.
    let mut c = std::net::TcpStream::connect(gw.addr).unwrap();
    use std::io::{Read, Write};
    c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = Vec::new();
    let t0 = Instant::now();
    let _ = c.read_to_end(&mut buf);
    assert!(t0.elapsed() < WAIT, "a bad preface was not closed");
    // A SETTINGS flood and a PING flood from a client that never reads: the
    // gateway stops reading it (bounded memory) and serves others.
    let mut flood = RawH2::connect(gw.addr, &[]).unwrap();
    flood
        .sock
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut bytes = Vec::new();
    for i in 0..20_000u32 {
        bytes.extend(frame(ty::SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]));
        bytes.extend(frame(ty::PING, 0, 0, &u64::from(i).to_be_bytes()));
    }
    let _ = flood.send(&bytes);
    served_within(gw.addr, Duration::from_secs(1));
    drop(flood);
    served_within(gw.addr, Duration::from_secs(1));
}

#[test]
fn a_client_that_never_opens_its_window_is_reset_after_the_send_timeout() {
    let s = sim();
    let gw = gateway(&s, &["--send-timeout", "300ms"]);
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: the answer's DATA can never go out.
    let mut c = RawH2::connect(gw.addr, &[(4, 0)]).unwrap();
    let msg = shardgate_testkit::grpc::frame(&encode_message(&ModelRef {
        name: "m".into(),
        version: String::new(),
    }));
    c.send(&frame(
        ty::HEADERS,
        flag::END_HEADERS,
        1,
        &grpc_request(READY, &[]),
    ))
    .unwrap();
    c.send(&frame(ty::DATA, flag::END_STREAM, 1, &msg)).unwrap();
    let t0 = Instant::now();
    let f = c
        .wait_for(WAIT, |f| f.stream == 1 && f.ty == ty::RST_STREAM)
        .expect("a zero-window stream was never reset");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert!(c.alive(WAIT));
    let _ = f;
    served_within(gw.addr, Duration::from_secs(1));
}

#[test]
fn a_stream_that_never_sends_its_first_message_times_out_and_streams_cost_little_memory() {
    let s = sim();
    let mut gw = gateway(&s, &["--header-timeout", "1s"]);
    let pid = gw.process.child().id();
    let rss = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    // 10 connections x 100 streams, each waiting for its first message.
    let rss0 = rss();
    let mut conns: Vec<RawH2> = (0..10)
        .map(|_| RawH2::connect(gw.addr, &[]).unwrap())
        .collect();
    for c in &mut conns {
        let mut b = Vec::new();
        for i in 0..100u32 {
            b.extend(frame(
                ty::HEADERS,
                flag::END_HEADERS,
                2 * i + 1,
                &grpc_request(INFER, &[]),
            ));
        }
        c.send(&b).unwrap();
        assert!(c.alive(WAIT));
    }
    let per_stream = rss().saturating_sub(rss0) * 1024 / 1000;
    eprintln!("gateway memory per open stream: {per_stream} bytes");
    assert!(per_stream < 64 * 1024, "{per_stream} bytes per open stream");
    // Past --header-timeout each is answered DEADLINE_EXCEEDED (trailers-only).
    let t0 = Instant::now();
    let f = conns[0]
        .wait_for(WAIT, |f| f.ty == ty::HEADERS && f.stream == 1)
        .expect("an idle stream got no answer");
    assert!(t0.elapsed() < WAIT);
    assert_ne!(
        f.flags & flag::END_STREAM,
        0,
        "not a trailers-only answer: {f:?}"
    );
    served_within(gw.addr, Duration::from_secs(1));
}

#[test]
fn an_idle_connection_gets_goaway_after_the_client_idle_timeout_and_a_busy_one_does_not() {
    let s = sim();
    let gw = gateway(&s, &["--client-idle-timeout", "600ms"]);
    let ready = shardgate_testkit::grpc::frame(&encode_message(&ModelRef {
        name: "m".into(),
        version: String::new(),
    }));
    // A connection whose one call ended: GOAWAY once it has had no open
    // stream for the timeout (checked on a 100 ms tick), not before.
    let mut idle = RawH2::connect(gw.addr, &[]).unwrap();
    idle.send(&frame(
        ty::HEADERS,
        flag::END_HEADERS,
        1,
        &grpc_request(READY, &[]),
    ))
    .unwrap();
    idle.send(&frame(ty::DATA, flag::END_STREAM, 1, &ready))
        .unwrap();
    idle.wait_for(WAIT, |f| {
        f.stream == 1 && f.ty == ty::HEADERS && f.flags & flag::END_STREAM != 0
    })
    .expect("the call was not answered");
    // A connection that keeps a stream open (its first message never comes,
    // and --header-timeout is 10 s) is not idle, however long that takes.
    let mut busy = RawH2::connect(gw.addr, &[]).unwrap();
    busy.send(&frame(
        ty::HEADERS,
        flag::END_HEADERS,
        1,
        &grpc_request(INFER, &[]),
    ))
    .unwrap();
    let t0 = Instant::now();
    idle.wait_for(WAIT, |f| f.ty == ty::GOAWAY)
        .expect("an idle connection got no GOAWAY");
    let after = t0.elapsed();
    assert!(
        after >= Duration::from_millis(400),
        "GOAWAY came {after:?} after the last stream ended"
    );
    assert!(
        busy.wait_for(Duration::from_millis(1500), |f| f.ty == ty::GOAWAY)
            .is_none(),
        "a connection with an open stream was closed as idle"
    );
    served_within(gw.addr, Duration::from_secs(1));
}
