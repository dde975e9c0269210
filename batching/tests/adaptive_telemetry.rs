//! Issue 12, item 12 on a virtual clock: adaptive batching in front of an
//! embeddings server that runs one call at a time (20 ms each), the seed's
//! `smart-batching` policy, `X-Priority: batch`, 64 closed-loop clients making 256
//! one-input calls. The server either reports `running` / `waiting` (scraped
//! every 100 ms, stale in between) or exports nothing. Reporting its queue
//! honestly must never make the gateway batch less: no more upstream calls, and
//! no longer to finish, than with no telemetry.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shardgate_batching::{
    BatchPolicy, BatchSpec, Batcher, CapacityEstimate, EndpointLoad, Pending, QueueSpec,
};

const CLIENTS: usize = 64;
const CALLS_PER_CLIENT: usize = 4;
/// One upstream call's cost on the server, whatever its size (the cost model of
/// `shardgate-sim --call-overhead-us 20000`), plus 50 µs per input.
const CALL: Duration = Duration::from_millis(20);
const PER_INPUT: Duration = Duration::from_micros(50);
const SCRAPE: Duration = Duration::from_millis(100);
/// The virtual clock's tick; a client's next request arrives one tick after its
/// answer.
const TICK: Duration = Duration::from_micros(250);

fn smart_batching() -> BatchPolicy {
    BatchPolicy::from_spec(&BatchSpec {
        max_batch_size: Some(32),
        max_latency: Some(Duration::from_millis(50)),
        adaptive_enabled: true,
        target_utilization: Some(0.8),
        queues: vec![
            QueueSpec {
                name: "real-time".into(),
                max_latency: Some(Duration::from_millis(10)),
                max_batch_size: Some(4),
            },
            QueueSpec {
                name: "batch".into(),
                max_latency: Some(Duration::from_millis(100)),
                max_batch_size: Some(64),
            },
        ],
    })
    .unwrap()
}

/// What the gateway's lane sees of the server.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Telemetry {
    /// `/metrics` answers 404: nothing is known.
    None,
    /// vLLM's gauges, as of the last scrape (KV use ~0: an embeddings server).
    Counts,
}

#[derive(Debug)]
struct Run {
    upstream_calls: usize,
    finished: Duration,
    largest_batch: usize,
}

/// Runs the workload; the shard drains after every push and every tick.
fn run(telemetry: Telemetry) -> Run {
    let t0 = Instant::now();
    let mut batcher: Batcher<usize, u8> = Batcher::new(smart_batching());
    let queue = batcher.queue_id(Some("batch")).unwrap();
    let mut capacity = CapacityEstimate::default();
    // The server: calls in arrival order (member count), the head running.
    let mut server: VecDeque<Vec<usize>> = VecDeque::new();
    let mut head_done: Option<Instant> = None;
    let mut scraped = (0.0, 0.0);
    let mut next_scrape = t0;
    // Per client: calls left and when it sends the next one.
    let mut left = [CALLS_PER_CLIENT; CLIENTS];
    let mut send_at: Vec<Option<Instant>> = vec![Some(t0); CLIENTS];
    let mut upstream_calls = 0;
    let mut largest_batch = 0;
    let mut now = t0;
    let answered = |left: &[usize], send_at: &[Option<Instant>]| {
        left.iter().all(|l| *l == 0) && send_at.iter().all(Option::is_none)
    };
    while !answered(&left, &send_at) || !server.is_empty() {
        assert!(now - t0 < Duration::from_secs(30), "the run did not finish");
        // The server finishes its head call and starts the next one.
        if head_done.is_some_and(|d| d <= now) {
            for client in server.pop_front().unwrap() {
                if left[client] > 0 {
                    send_at[client] = Some(now + TICK);
                }
            }
            head_done = None;
        }
        if head_done.is_none() {
            if let Some(next) = server.front() {
                head_done = Some(now + CALL + PER_INPUT * next.len() as u32);
            }
        }
        if telemetry == Telemetry::Counts && now >= next_scrape {
            let running = if server.is_empty() { 0.0 } else { 1.0 };
            let waiting = server.len().saturating_sub(1) as f64;
            scraped = (running, waiting);
            next_scrape = now + SCRAPE;
        }
        // The lane's signal, as `gateway/src/batch.rs::drain` computes it: the last
        // scrape, the capacity learned from it, and the gateway's own calls to the
        // server (here all it holds), counted from the moment they are flushed.
        let mut signal = |server: &VecDeque<Vec<usize>>| {
            let in_flight = u32::try_from(server.len()).unwrap();
            match telemetry {
                Telemetry::None => EndpointLoad {
                    gateway_in_flight: Some(in_flight),
                    ..EndpointLoad::default()
                }
                .utilization(),
                Telemetry::Counts => {
                    capacity.observe(Some(scraped.0));
                    EndpointLoad {
                        kv_usage: Some(0.0),
                        running: Some(scraped.0),
                        waiting: Some(scraped.1),
                        capacity: capacity.get(),
                        gateway_in_flight: Some(in_flight),
                        ..EndpointLoad::default()
                    }
                    .utilization()
                }
            }
        };
        let mut flush = |batcher: &mut Batcher<usize, u8>,
                         server: &mut VecDeque<Vec<usize>>,
                         u: Option<f64>| {
            while let Some(b) = batcher.poll_ready(now, u) {
                upstream_calls += 1;
                largest_batch = largest_batch.max(b.members.len());
                server.push_back(b.members);
            }
        };
        // Clients whose time has come send; the shard drains after each push.
        for client in 0..CLIENTS {
            if send_at[client].is_some_and(|t| t <= now) {
                send_at[client] = None;
                left[client] -= 1;
                let item = Pending {
                    queue,
                    key: Some(0),
                    items: 1,
                    payload: client,
                };
                batcher.push(item, now).unwrap();
                let u = signal(&server);
                flush(&mut batcher, &mut server, u);
            }
        }
        let u = signal(&server);
        flush(&mut batcher, &mut server, u);
        now += TICK;
    }
    Run {
        upstream_calls,
        finished: now - t0,
        largest_batch,
    }
}

#[test]
fn a_server_that_reports_its_queue_is_batched_no_less_than_one_that_reports_nothing() {
    let silent = run(Telemetry::None);
    let honest = run(Telemetry::Counts);
    // Without telemetry the lane grows to 64 inputs or 100 ms: a handful of calls.
    assert!(
        silent.upstream_calls <= 12 && silent.largest_batch == 64,
        "{silent:?}"
    );
    // An idle server gets the burst's first request at once (the point of adaptive
    // batching): at most two more, smaller calls, and their time, than without
    // telemetry. Before the fix: 80 calls in 1.6 s against 4 in 95 ms.
    assert!(
        honest.upstream_calls <= silent.upstream_calls + 2,
        "telemetry {honest:?} vs none {silent:?}"
    );
    let full_call = CALL + PER_INPUT * 64;
    assert!(
        honest.finished <= silent.finished + 2 * full_call,
        "telemetry {honest:?} vs none {silent:?}"
    );
}

/// The regression itself: with its first scrape idle, the server must not read
/// idle to the lane while the gateway has a call in flight to it.
#[test]
fn an_idle_scrape_does_not_flush_a_burst_one_by_one() {
    let honest = run(Telemetry::Counts);
    assert!(
        honest.upstream_calls < CLIENTS / 2,
        "a burst of {CLIENTS} was flushed in {} calls",
        honest.upstream_calls
    );
}
