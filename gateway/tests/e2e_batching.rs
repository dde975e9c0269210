//! End-to-end tests of issue 12's batching items, the `shardgate` binary in front
//! of in-process simulated vLLM servers on 127.0.0.1:
//!
//! - item 12: adaptive batching in front of an embeddings server that runs one
//!   20 ms call at a time (`--max-num-seqs 1 --call-overhead-us 20000`), the
//!   seed's `smart-batching` policy, `X-Priority: batch`, 256 calls from 64
//!   clients. A server that reports `vllm:num_requests_running` / `waiting` must
//!   not be sent more upstream calls than one that exports no `/metrics`;
//! - item 13: `gateway_queue_depth` has zero series for every configured queue and
//!   model from the start, and counts requests waiting for a
//!   `maxConcurrentInferences` permit (`queue="admission"`) with no BatchingPolicy.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 64;
const CALLS_PER_CLIENT: usize = 4;

/// One route for `emb` with the seed's `smart-batching` policy as its default.
fn smart_batching(addr: SocketAddr) -> String {
    let base = config(&[("emb", vec![(1, vec![addr])])]);
    format!(
        "{base}---
apiVersion: ai.gateway.io/v1alpha1
kind: BatchingPolicy
metadata:
  name: smart-batching
  namespace: default
spec:
  maxBatchSize: 32
  maxLatency: 50ms
  adaptiveBatching:
    enabled: true
    targetUtilization: 0.8
  priorityQueues:
  - name: real-time
    maxLatency: 10ms
    maxBatchSize: 4
  - name: batch
    maxLatency: 100ms
    maxBatchSize: 64
  targetRefs:
  - group: gateway.networking.k8s.io
    kind: HTTPRoute
    name: r0
"
    )
}

/// An embeddings server that runs one call at a time, 20 ms each.
fn one_at_a_time(no_metrics: bool) -> SimHandle {
    sim(&["emb"], |c| {
        c.max_num_seqs = 1;
        c.call_overhead_us = 20_000;
        c.embedding_us_per_input = 50;
        c.prefill_us_per_token = 1;
        c.no_metrics = no_metrics;
    })
}

/// Runs the workload through a fresh gateway; returns (upstream calls, time taken).
fn run(no_metrics: bool) -> (u64, Duration) {
    let backend = one_at_a_time(no_metrics);
    let gw = Gateway::start(&smart_batching(backend.addr()), &[]);
    let admin = gw.admin.unwrap();
    // The telemetry case must be one: wait for the first scrape to reach the
    // scoring snapshot. Without metrics the scrapes fail and nothing is known.
    let scraped = poll(Duration::from_secs(10), || {
        let j = Client::connect(admin).get("/debug/endpoints").json();
        let t = &j["endpoints"][0]["telemetry"];
        (t["waiting"].as_f64().is_some() != no_metrics).then_some(())
    });
    assert!(
        scraped.is_some(),
        "no_metrics={no_metrics}: telemetry not as expected"
    );
    let before = sim_stats(backend.addr())["requests_total"]
        .as_u64()
        .unwrap();
    let addr = gw.addr;
    let start = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for j in 0..CALLS_PER_CLIENT {
                    let body = format!(r#"{{"model":"emb","input":"client {i} call {j}"}}"#);
                    let r = c.post("/v1/embeddings", &body, &[("x-priority", "batch")]);
                    assert_eq!(r.status, 200, "{}", r.text());
                    assert_eq!(r.json()["data"].as_array().unwrap().len(), 1);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let took = start.elapsed();
    let calls = sim_stats(backend.addr())["requests_total"]
        .as_u64()
        .unwrap()
        - before;
    (calls, took)
}

#[test]
fn a_backend_that_reports_its_queue_is_batched_no_less_than_one_without_metrics() {
    let (silent, silent_took) = run(true);
    let (honest, honest_took) = run(false);
    eprintln!(
        "{} calls: no metrics → {silent} upstream calls in {silent_took:?}; \
         running/waiting reported → {honest} upstream calls in {honest_took:?}",
        CLIENTS * CALLS_PER_CLIENT
    );
    assert!(
        silent < (CLIENTS * CALLS_PER_CLIENT / 8) as u64,
        "without telemetry the lane should grow: {silent} upstream calls"
    );
    // A tolerance for timing: an idle server gets a burst's first request at once,
    // and a lane may flush when a call returns rather than when it is full. Before
    // the fix: 74–101 calls against 5–10.
    assert!(
        honest <= 2 * silent + 2,
        "telemetry made {honest} upstream calls, no telemetry {silent}"
    );
}

/// `gateway_queue_depth{queue="admission",…}`'s value, or None when absent.
fn admission_depth(text: &str, priority: &str) -> Option<f64> {
    let prefix =
        format!(r#"gateway_queue_depth{{queue="admission",priority="{priority}",model="m"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn queue_depth_counts_requests_waiting_for_admission_without_a_batching_policy() {
    let a = sim(&["m"], |c| {
        c.decode_step_us = 20_000;
    });
    let yaml = format!(
        "{}---\napiVersion: ai.gateway.io/v1alpha1\nkind: InferenceConfig\nmetadata:\n  name: limits\nspec:\n  resourceManagement:\n    maxConcurrentInferences: 1\n",
        config(&[("m", vec![(1, vec![a.addr()])])])
    );
    assert!(!yaml.contains("BatchingPolicy"));
    let gw = Gateway::start(&yaml, &[]);
    let admin = gw.admin.unwrap();
    let scrape = || Client::connect(admin).get("/metrics").text();
    // At start: a zero series per admission priority for the configured model.
    let zeros = poll(Duration::from_secs(10), || {
        let t = scrape();
        ["critical", "standard", "sheddable"]
            .iter()
            .all(|p| admission_depth(&t, p) == Some(0.0))
            .then_some(())
    });
    assert!(zeros.is_some(), "no zero series at start:\n{}", scrape());
    // The only permit is held by a long stream; two requests wait behind it.
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
    let addr = gw.addr;
    // (A sheddable request is refused at once rather than queued.)
    let waiters: Vec<_> = [("x-request-priority", "0"), ("x-request-priority", "3")]
        .into_iter()
        .map(|h| {
            std::thread::spawn(move || {
                Client::connect(addr)
                    .post(
                        "/v1/completions",
                        r#"{"model":"m","prompt":"x","max_tokens":1}"#,
                        &[h],
                    )
                    .status
            })
        })
        .collect();
    let counted = poll(Duration::from_secs(10), || {
        let t = scrape();
        (admission_depth(&t, "standard")? >= 1.0 && admission_depth(&t, "critical")? >= 1.0)
            .then_some(())
    });
    assert!(
        counted.is_some(),
        "waiting requests not counted:\n{}",
        scrape()
    );
    // The stream ends (client gone): the waiters get through and the depth is 0 again.
    drop(long);
    for w in waiters {
        assert_eq!(w.join().unwrap(), 200);
    }
    let back = poll(Duration::from_secs(10), || {
        let t = scrape();
        (admission_depth(&t, "standard")? == 0.0 && admission_depth(&t, "critical")? == 0.0)
            .then_some(())
    });
    assert!(back.is_some(), "depth did not return to 0:\n{}", scrape());
}
