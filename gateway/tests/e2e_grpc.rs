//! gRPC end to end: the simulated backends' KServe v2 gRPC service (direct),
//! then through the gateway's GRPC listener (HTTP/2 with prior knowledge):
//! unary and streaming inference routed by `model_name`, unknown models
//! answered `NOT_FOUND`, trailers passed through. Every wait has a deadline;
//! sims run in process on 127.0.0.1:0, the gateway as a child process.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Gateway;

use shardgate_sim::grpc::{
    decode_message, encode_message, BoolResponse, HealthCheckRequest, HealthCheckResponse,
    ModelInferRequest, ModelInferResponse, ModelRef, ModelStreamInferResponse, Tensor,
};
use shardgate_testkit::grpc::{frame_compressed, grpc_config, incompressible, GrpcClient};
use shardgate_testkit::{SimConfig, SimHandle};

const SVC: &str = "/inference.GRPCInferenceService";

fn sim(models: &[&str]) -> SimHandle {
    shardgate_sim::spawn(SimConfig {
        port: 0,
        model: models.iter().map(|m| (*m).to_owned()).collect(),
        ..SimConfig::default()
    })
    .unwrap()
}

/// An unframed ModelInferRequest for `model` with one BYTES input.
fn infer(model: &str, payload: &[u8]) -> Vec<u8> {
    encode_message(&ModelInferRequest {
        model_name: model.into(),
        model_version: String::new(),
        id: "req-1".into(),
        inputs: vec![Tensor {
            name: "INPUT0".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
        }],
        raw_input_contents: vec![bytes::Bytes::copy_from_slice(payload)],
    })
}

#[test]
fn the_sim_serves_kserve_v2_over_grpc() {
    let s = sim(&["resnet", "bert"]);
    let mut c = GrpcClient::connect(s.addr()).unwrap();

    let r = c
        .unary(&format!("{SVC}/ModelInfer"), &[], &infer("bert", b"hello"))
        .unwrap();
    assert_eq!((r.http_status, r.status), (200, Some(0)), "{r:?}");
    let out: ModelInferResponse = decode_message(&r.messages[0]).unwrap();
    assert_eq!(out.model_name, "bert");
    assert_eq!(out.outputs[0].name, "OUTPUT0");
    assert_eq!(&out.raw_output_contents[0][..], b"hello");

    let r = c
        .unary(&format!("{SVC}/ModelInfer"), &[], &infer("nope", b"x"))
        .unwrap();
    assert_eq!(r.status, Some(5), "{r:?}");
    assert!(r.message.contains("unknown model"), "{r:?}");

    let ready = ModelRef {
        name: "resnet".into(),
        version: String::new(),
    };
    let r = c
        .unary(&format!("{SVC}/ModelReady"), &[], &encode_message(&ready))
        .unwrap();
    let b: BoolResponse = decode_message(&r.messages[0]).unwrap();
    assert!(b.value);

    let r = c
        .unary(
            "/grpc.health.v1.Health/Check",
            &[],
            &encode_message(&HealthCheckRequest {
                service: String::new(),
            }),
        )
        .unwrap();
    let h: HealthCheckResponse = decode_message(&r.messages[0]).unwrap();
    assert_eq!(h.status, 1);

    // Streaming: three requests, three answers, each read before the next is sent.
    let mut call = c.open(&format!("{SVC}/ModelStreamInfer"), &[]).unwrap();
    for i in 0..3u8 {
        c.send(&mut call, &infer("resnet", &[i; 4]), i == 2)
            .unwrap();
        let m = c.recv(&mut call).unwrap().unwrap();
        let a: ModelStreamInferResponse = decode_message(&m).unwrap();
        let a = a.infer_response.unwrap();
        assert_eq!(&a.raw_output_contents[0][..], &[i; 4]);
    }
    assert!(c.recv(&mut call).unwrap().is_none());
    assert_eq!(call.reply.status, Some(0));
}

fn requests_total(addr: SocketAddr) -> u64 {
    common::sim_stats(addr)["requests_total"].as_u64().unwrap()
}

#[test]
fn grpc_calls_are_routed_by_model_name_through_the_gateway() {
    let a = sim(&["resnet"]);
    let b = sim(&["bert"]);
    let dir = shardgate_testkit::temp_dir("grpc-log");
    let log = dir.join("access.log");
    let mut gw = Gateway::start(
        &grpc_config(&[("resnet", "svc-a", a.addr()), ("bert", "svc-b", b.addr())]),
        &["--access-log", log.to_str().unwrap()],
    );
    let mut c = GrpcClient::connect(gw.addr).unwrap();
    let (a0, b0) = (requests_total(a.addr()), requests_total(b.addr()));
    for i in 0..10u8 {
        let model = if i % 2 == 0 { "resnet" } else { "bert" };
        let r = c
            .unary(&format!("{SVC}/ModelInfer"), &[], &infer(model, &[i; 3]))
            .unwrap();
        assert_eq!((r.http_status, r.status), (200, Some(0)), "{r:?}");
        let out: ModelInferResponse = decode_message(&r.messages[0]).unwrap();
        assert_eq!(out.model_name, model);
        assert_eq!(&out.raw_output_contents[0][..], &[i; 3]);
    }
    assert_eq!(requests_total(a.addr()) - a0, 5);
    assert_eq!(requests_total(b.addr()) - b0, 5);
    // Counted by protocol (the shard publishes its metrics every 100 ms or so).
    let counted = common::poll(Duration::from_secs(5), || {
        let m = gw.metrics();
        let line = m
            .lines()
            .find(|l| l.starts_with("gateway_h2_requests_total{kind=\"grpc\"}"))?;
        let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (v >= 10.0).then_some(())
    });
    assert!(
        counted.is_some(),
        "gateway_h2_requests_total{{kind=grpc}} did not count the calls"
    );
    // And in the access log, with the endpoint that served each call.
    let lines = common::poll(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (lines.len() >= 10).then_some(lines)
    })
    .expect("no access-log lines for the gRPC calls");
    let first = &lines[0];
    assert_eq!(first["path"], format!("{SVC}/ModelInfer"), "{first}");
    assert_eq!(first["model"], "resnet", "{first}");
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(first["endpoint"], a.addr().to_string(), "{first}");

    // A model no route names: NOT_FOUND from the gateway, nothing upstream.
    let r = c
        .unary(&format!("{SVC}/ModelInfer"), &[], &infer("llama", b"x"))
        .unwrap();
    assert_eq!(r.status, Some(5), "{r:?}");
    assert!(r.message.contains("llama"), "{r:?}");
    // A method no route names: UNIMPLEMENTED.
    let r = c.unary("/other.Service/Call", &[], b"").unwrap();
    assert_eq!(r.status, Some(12), "{r:?}");
    // A malformed first message: INVALID_ARGUMENT.
    let r = c
        .unary(&format!("{SVC}/ModelInfer"), &[], &[0x0a, 0x7f, b'a'])
        .unwrap();
    assert_eq!(r.status, Some(3), "{r:?}");
    // ModelReady and the health service pass through.
    let ready = ModelRef {
        name: "bert".into(),
        version: String::new(),
    };
    let r = c
        .unary(&format!("{SVC}/ModelReady"), &[], &encode_message(&ready))
        .unwrap();
    let ok: BoolResponse = decode_message(&r.messages[0]).unwrap();
    assert!(ok.value, "{r:?}");
    let r = c
        .unary(
            "/grpc.health.v1.Health/Check",
            &[],
            &encode_message(&HealthCheckRequest {
                service: String::new(),
            }),
        )
        .unwrap();
    let h: HealthCheckResponse = decode_message(&r.messages[0]).unwrap();
    assert_eq!(h.status, 1);

    // Bidirectional streaming through the gateway, message by message.
    let mut call = c.open(&format!("{SVC}/ModelStreamInfer"), &[]).unwrap();
    for i in 0..5u8 {
        c.send(&mut call, &infer("bert", &[i; 8]), i == 4).unwrap();
        let m = c.recv(&mut call).unwrap().unwrap();
        let a: ModelStreamInferResponse = decode_message(&m).unwrap();
        assert_eq!(
            &a.infer_response.unwrap().raw_output_contents[0][..],
            &[i; 8]
        );
    }
    assert!(c.recv(&mut call).unwrap().is_none());
    assert_eq!(call.reply.status, Some(0));

    // A graceful stop with pooled HTTP/2 connections to the backends exits
    // cleanly (their handles dropped at thread exit, outside the runtime,
    // aborted the process).
    drop(c);
    gw.stop_cleanly(Duration::from_secs(15));
}

#[test]
fn an_unreachable_backend_is_unavailable_and_a_deadline_is_deadline_exceeded() {
    let slow = shardgate_sim::spawn(SimConfig {
        port: 0,
        model: vec!["slow".into()],
        stall_ms: 2_000,
        ..SimConfig::default()
    })
    .unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let gw = Gateway::start(
        &grpc_config(&[
            ("slow", "svc-slow", slow.addr()),
            ("gone", "svc-gone", dead_addr),
        ]),
        &[],
    );
    let mut c = GrpcClient::connect(gw.addr).unwrap();
    let r = c
        .unary(&format!("{SVC}/ModelInfer"), &[], &infer("gone", b"x"))
        .unwrap();
    assert_eq!(r.status, Some(14), "{r:?}");
    let t0 = std::time::Instant::now();
    let r = c
        .unary(
            &format!("{SVC}/ModelInfer"),
            &[("grpc-timeout", "200m")],
            &infer("slow", b"x"),
        )
        .unwrap();
    assert_eq!(r.status, Some(4), "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        t0.elapsed()
    );
    // A malformed grpc-timeout: INVALID_ARGUMENT.
    let r = c
        .unary(
            &format!("{SVC}/ModelInfer"),
            &[("grpc-timeout", "soon")],
            &infer("slow", b"x"),
        )
        .unwrap();
    assert_eq!(r.status, Some(3), "{r:?}");
}

#[test]
fn a_client_gone_mid_stream_cancels_the_upstream_stream() {
    let s = sim(&["bert"]);
    let gw = Gateway::start(&grpc_config(&[("bert", "svc-b", s.addr())]), &[]);
    let cancelled = |addr| {
        common::sim_stats(addr)["grpc_cancelled_total"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(cancelled(s.addr()), 0);
    let mut c = GrpcClient::connect(gw.addr).unwrap();
    let mut call = c.open(&format!("{SVC}/ModelStreamInfer"), &[]).unwrap();
    c.send(&mut call, &infer("bert", b"one"), false).unwrap();
    assert!(c.recv(&mut call).unwrap().is_some());
    // The client process dies: its connection closes with the stream open.
    drop(call);
    drop(c);
    let seen = common::poll(Duration::from_secs(5), || {
        (cancelled(s.addr()) == 1).then_some(())
    });
    assert!(seen.is_some(), "the backend's stream was not cancelled");
}

#[test]
fn grpc_backends_are_health_checked_through_grpc_health_v1() {
    // NOT_SERVING while it loads (slow start), SERVING after.
    let s = shardgate_sim::spawn(SimConfig {
        port: 0,
        model: vec!["bert".into()],
        slow_start_ms: 1_500,
        ..SimConfig::default()
    })
    .unwrap();
    let yaml = grpc_config(&[("bert", "svc-b", s.addr())]).replace(
        "    backendRefs:\n    - name: svc-b\n      port: 8000\n  - matches:",
        "    filters:\n    - {type: ExtensionRef, extensionRef: {group: ai.gateway.io, kind: InferencePolicy, name: hc}}\n    backendRefs:\n    - name: svc-b\n      port: 8000\n  - matches:",
    ) + "---\napiVersion: ai.gateway.io/v1alpha1\nkind: InferencePolicy\nmetadata:\n  name: hc\n  namespace: default\nspec:\n  healthCheck:\n    interval: 100ms\n    timeout: 1s\n";
    let gw = Gateway::start(&yaml, &[]);
    let admin = gw.admin.unwrap();
    let health = || {
        let j = common::Client::connect(admin)
            .get("/debug/endpoints")
            .json();
        j["endpoints"][0]["health"].clone()
    };
    let h = health();
    assert!(
        h["probe"]
            .as_str()
            .unwrap_or("")
            .starts_with("grpc.health.v1.Health/Check"),
        "{h}"
    );
    let down = common::poll(Duration::from_secs(5), || {
        let h = health();
        (h["healthy"] == false).then_some(h)
    })
    .expect("a NOT_SERVING backend stayed healthy");
    assert!(
        down["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("serving status 2"),
        "{down}"
    );
    common::poll(Duration::from_secs(10), || {
        (health()["healthy"] == true).then_some(())
    })
    .expect("a SERVING backend was not restored");
    // Calls go through again once the scoring snapshot has the verdict
    // (published every scrape interval).
    let mut c = GrpcClient::connect(gw.addr).unwrap();
    common::poll(Duration::from_secs(5), || {
        let r = c
            .unary(&format!("{SVC}/ModelInfer"), &[], &infer("bert", b"x"))
            .ok()?;
        (r.status == Some(0)).then_some(())
    })
    .expect("calls did not go through after the backend was restored");
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_client_that_does_not_read_slows_the_backend_and_gateway_memory_stays_bounded() {
    let s = sim(&["bert"]);
    let mut gw = Gateway::start(&grpc_config(&[("bert", "svc-b", s.addr())]), &[]);
    let pid = gw.process.child().id();
    let mut c = GrpcClient::connect(gw.addr).unwrap();
    let mut call = c.open(&format!("{SVC}/ModelStreamInfer"), &[]).unwrap();
    let rss0 = rss_kib(pid);
    let before = requests_total(s.addr());
    // 500 requests of 64 KiB (32 MiB), each echoed back as 64 KiB; the client
    // reads nothing yet.
    let payload = vec![7u8; 64 * 1024];
    for _ in 0..500 {
        c.send(&mut call, &infer("bert", &payload), false).unwrap();
    }
    // The backend's progress stops once every window on the way is full:
    // its count stays the same for 300 ms (polled, with a deadline).
    let mut last = (u64::MAX, std::time::Instant::now());
    let settled = common::poll(Duration::from_secs(10), || {
        let now = requests_total(s.addr()) - before;
        if now != last.0 {
            last = (now, std::time::Instant::now());
            None
        } else {
            (last.1.elapsed() >= Duration::from_millis(300)).then_some(now)
        }
    })
    .expect("the backend never stopped");
    eprintln!("backend answered {settled} of 500 unread calls");
    assert!(
        settled < 200,
        "the backend answered {settled} of 500 unread calls"
    );
    let grown = rss_kib(pid).saturating_sub(rss0);
    assert!(grown < 16 * 1024, "the gateway grew by {grown} KiB");
    // Reading resumes the flow: every answer arrives, in order.
    c.send(&mut call, &infer("bert", b"last"), true).unwrap();
    let mut n = 0;
    while let Some(m) = c.recv(&mut call).unwrap() {
        let a: ModelStreamInferResponse = decode_message(&m).unwrap();
        let raw = &a.infer_response.unwrap().raw_output_contents[0];
        assert_eq!(raw.len(), if n == 500 { 4 } else { 64 * 1024 });
        n += 1;
    }
    assert_eq!(n, 501);
    assert_eq!(call.reply.status, Some(0));
}

/// A unary ModelInfer call whose one message is `framed` (compressed), sent
/// with `grpc-encoding: header`.
fn infer_framed(
    c: &mut GrpcClient,
    header: &str,
    framed: bytes::Bytes,
) -> shardgate_testkit::grpc::Reply {
    let mut call = c
        .open(&format!("{SVC}/ModelInfer"), &[("grpc-encoding", header)])
        .unwrap();
    c.send_framed(&mut call, framed, true).unwrap();
    c.finish(call).unwrap()
}

#[test]
fn compressed_calls_are_routed_by_the_model_in_their_inflated_first_message() {
    let a = sim(&["resnet"]);
    let b = sim(&["bert"]);
    let gw = Gateway::start(
        &grpc_config(&[("resnet", "svc-a", a.addr()), ("bert", "svc-b", b.addr())]),
        &[],
    );
    let mut c = GrpcClient::connect(gw.addr).unwrap();
    let (a0, b0) = (requests_total(a.addr()), requests_total(b.addr()));
    for (i, enc) in ["gzip", "deflate", "gzip", "deflate"].iter().enumerate() {
        let model = if i < 2 { "resnet" } else { "bert" };
        // A 1 MiB tensor: its model is read from the first inflated bytes,
        // the message goes upstream compressed as it came.
        let payload = incompressible(1 << 20, i as u32 + 7);
        let r = infer_framed(&mut c, enc, frame_compressed(&infer(model, &payload), enc));
        assert_eq!((r.http_status, r.status), (200, Some(0)), "{enc}: {r:?}");
        let out: ModelInferResponse = decode_message(&r.messages[0]).unwrap();
        assert_eq!(out.model_name, model);
        assert!(
            out.raw_output_contents[0][..] == payload[..],
            "{enc}: echo differs"
        );
    }
    assert_eq!(requests_total(a.addr()) - a0, 2);
    assert_eq!(requests_total(b.addr()) - b0, 2);
    // Streaming infer, every message compressed.
    let mut call = c
        .open(
            &format!("{SVC}/ModelStreamInfer"),
            &[("grpc-encoding", "gzip")],
        )
        .unwrap();
    for i in 0..3u8 {
        c.send_framed(
            &mut call,
            frame_compressed(&infer("bert", &[i; 64]), "gzip"),
            i == 2,
        )
        .unwrap();
        let m = c.recv(&mut call).unwrap().unwrap();
        let a: ModelStreamInferResponse = decode_message(&m).unwrap();
        assert_eq!(
            &a.infer_response.unwrap().raw_output_contents[0][..],
            &[i; 64]
        );
    }
    assert!(c.recv(&mut call).unwrap().is_none());
    assert_eq!(call.reply.status, Some(0));
    assert_eq!(requests_total(b.addr()) - b0, 5);
    // A model no route names, compressed: NOT_FOUND, as uncompressed.
    let r = infer_framed(
        &mut c,
        "deflate",
        frame_compressed(&infer("llama", b"x"), "deflate"),
    );
    assert_eq!(r.status, Some(5), "{r:?}");
    assert!(r.message.contains("llama"), "{r:?}");
    // A stream that does not inflate with its grpc-encoding: INVALID_ARGUMENT
    // from the gateway, nothing upstream.
    let before = requests_total(a.addr()) + requests_total(b.addr());
    let r = infer_framed(
        &mut c,
        "deflate",
        frame_compressed(&infer("resnet", b"x"), "gzip"),
    );
    assert_eq!(r.status, Some(3), "{r:?}");
    // An encoding the gateway does not inflate: routed by its headers only
    // (here none names a model, so no route matches).
    let r = infer_framed(
        &mut c,
        "snappy",
        frame_compressed(&infer("resnet", b"x"), "gzip"),
    );
    assert_eq!(r.status, Some(12), "{r:?}");
    assert_eq!(requests_total(a.addr()) + requests_total(b.addr()), before);
}
