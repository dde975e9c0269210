//! Batcher tests on a virtual clock: `t0` is read once, then time only moves by
//! adding durations.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::policy::{Adaptive, BatchPolicy, BatchSpec, QueueSpec};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The seed's policy: real-time (10 ms, 4) › default (50 ms, 32) › batch (100 ms, 64).
fn seed(adaptive: bool) -> BatchPolicy {
    BatchPolicy::from_spec(&BatchSpec {
        max_batch_size: Some(32),
        max_latency: Some(ms(50)),
        adaptive_enabled: adaptive,
        target_utilization: Some(0.8),
        queues: vec![
            QueueSpec {
                name: "real-time".into(),
                max_latency: Some(ms(10)),
                max_batch_size: Some(4),
            },
            QueueSpec {
                name: "batch".into(),
                max_latency: Some(ms(100)),
                max_batch_size: Some(64),
            },
        ],
    })
    .unwrap()
}

const RT: QueueId = QueueId(0);
const DEF: QueueId = QueueId(1);
const BATCH: QueueId = QueueId(2);

fn item(queue: QueueId, key: Option<u32>, payload: u32) -> Pending<u32, u32> {
    Pending {
        queue,
        key,
        items: 1,
        payload,
    }
}

fn push(b: &mut Batcher<u32, u32>, queue: QueueId, key: u32, payload: u32, now: Instant) -> Ticket {
    b.push(item(queue, Some(key), payload), now).unwrap()
}

#[test]
fn flushes_when_full_in_fifo_order() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(false));
    for i in 0..3 {
        push(&mut b, RT, 7, i, t0);
        assert_eq!(b.poll_ready(t0, None), None);
    }
    push(&mut b, RT, 7, 3, t0 + ms(1));
    let r = b.poll_ready(t0 + ms(1), None).unwrap();
    assert_eq!(r.members, [0, 1, 2, 3]);
    assert_eq!(r.info.reason, FlushReason::Full);
    assert_eq!((r.info.queue, r.info.members, r.info.items), (RT, 4, 4));
    assert_eq!(r.info.oldest, t0);
    assert!(b.is_empty());
    assert_eq!(b.next_deadline(), None);
    assert_eq!(b.poll_ready(t0 + ms(1), None), None);
}

#[test]
fn flushes_at_the_oldest_members_deadline() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(false));
    push(&mut b, RT, 1, 0, t0);
    push(&mut b, RT, 1, 1, t0 + ms(8));
    assert_eq!(b.next_deadline(), Some(t0 + ms(10)));
    assert_eq!(b.poll_ready(t0 + ms(9), None), None);
    let r = b.poll_ready(t0 + ms(10), None).unwrap();
    assert_eq!(r.info.reason, FlushReason::Deadline);
    assert_eq!(r.members, [0, 1]);
    let s = b.stats().next().unwrap().1;
    assert_eq!(s.flushes(FlushReason::Deadline), 1);
    // Waits: 10 ms and 2 ms.
    assert_eq!(s.queued_us.sum(), 12_000);
    assert_eq!(s.queued_us.count(), 2);
    assert_eq!(s.batch_size.sum(), 2);
}

#[test]
fn adaptive_flushes_at_once_when_idle_and_waits_when_busy_or_unknown() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(true));
    push(&mut b, DEF, 1, 0, t0);
    // Busy, unknown, NaN and exactly at target: wait.
    for u in [Some(0.9), None, Some(f64::NAN), Some(0.8)] {
        assert_eq!(b.poll_ready(t0, u), None, "{u:?}");
    }
    let r = b.poll_ready(t0 + ms(1), Some(0.5)).unwrap();
    assert_eq!(r.info.reason, FlushReason::Adaptive);
    assert_eq!(r.members, [0]);

    // Busy: the batch grows up to max_batch_size (real-time: 4).
    for i in 0..4 {
        assert_eq!(b.poll_ready(t0, Some(0.95)), None);
        push(&mut b, RT, 2, i, t0);
    }
    let r = b.poll_ready(t0, Some(0.95)).unwrap();
    assert_eq!((r.info.reason, r.members.len()), (FlushReason::Full, 4));

    // Disabled: an idle target changes nothing.
    let mut off = Batcher::new(seed(false));
    push(&mut off, DEF, 1, 0, t0);
    assert_eq!(off.poll_ready(t0, Some(0.0)), None);
}

/// An embedding server: KV use ~0 whatever the load. With the KV signal alone every
/// lane flushed at once; with [`crate::EndpointLoad`] a queue at the server (or the
/// gateway's in-flight over the learned capacity) makes the lane grow.
#[test]
fn adaptive_signal_of_an_embedding_server_batches_while_it_queues() {
    use crate::{CapacityEstimate, EndpointLoad};
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(true));
    let mut cap = CapacityEstimate::default();
    let mut util = |running: f64, waiting: f64, in_flight: u32| {
        cap.observe(Some(running));
        EndpointLoad {
            kv_usage: Some(0.0),
            running: Some(running),
            waiting: Some(waiting),
            capacity: cap.get(),
            gateway_in_flight: Some(in_flight),
            ..EndpointLoad::default()
        }
        .utilization()
    };
    // Idle server: flush at once.
    push(&mut b, DEF, 1, 0, t0);
    let r = b.poll_ready(t0, util(0.0, 0.0, 0)).unwrap();
    assert_eq!(r.info.reason, FlushReason::Adaptive);
    // Queueing (4 running, 2 waiting): the lane waits and grows until its deadline.
    for i in 1..=5 {
        push(&mut b, DEF, 1, i, t0 + ms(i.into()));
        assert_eq!(b.poll_ready(t0 + ms(i.into()), util(4.0, 2.0, 6)), None);
    }
    let r = b.poll_ready(t0 + ms(51), util(4.0, 2.0, 6)).unwrap();
    assert_eq!((r.info.reason, r.members.len()), (FlushReason::Deadline, 5));
    // The queue drained but the gateway still has 4 in flight to a server that runs
    // 4 at once (learned above): still busy.
    push(&mut b, DEF, 1, 9, t0 + ms(60));
    assert_eq!(b.poll_ready(t0 + ms(60), util(1.0, 0.0, 4)), None);
    // Down to 1 of 4: room again, flush at once.
    let r = b.poll_ready(t0 + ms(61), util(1.0, 0.0, 1)).unwrap();
    assert_eq!(
        (r.info.reason, r.members.as_slice()),
        (FlushReason::Adaptive, [9].as_slice())
    );
}

#[test]
fn utilization_is_asked_per_key() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(true));
    push(&mut b, DEF, 1, 10, t0);
    push(&mut b, DEF, 2, 20, t0);
    let util = |k: &u32| if *k == 2 { Some(0.1) } else { Some(0.99) };
    let r = b.poll_ready_with(t0, util).unwrap();
    assert_eq!(r.members, [20]);
    assert_eq!(b.poll_ready_with(t0, util), None);
}

#[test]
fn inputs_count_against_the_batch_size() {
    let t0 = Instant::now();
    let mut b: Batcher<u32, u32> = Batcher::new(seed(false));
    let big = |p, items| Pending {
        queue: RT,
        key: Some(1),
        items,
        payload: p,
    };
    b.push(big(0, 3), t0).unwrap();
    b.push(big(1, 2), t0).unwrap();
    // 5 inputs ≥ 4: full; 3 + 2 does not fit, so the first goes by itself.
    let r = b.poll_ready(t0, None).unwrap();
    assert_eq!((r.members.as_slice(), r.info.items), ([0].as_slice(), 3));
    // The lane stays: its key is cloned.
    assert_eq!(r.key, Some(1));
    assert_eq!(b.poll_ready(t0, None), None);
    // A request larger than the limit goes alone, at once.
    b.push(big(2, 9), t0).unwrap();
    let r = b.poll_ready(t0, None).unwrap();
    // The lane's head (1) is older, and 2 + 9 overflows: 1 alone first.
    assert_eq!(
        (r.members.as_slice(), r.info.reason),
        ([1].as_slice(), FlushReason::Full)
    );
    let r = b.poll_ready(t0, None).unwrap();
    assert_eq!((r.members.as_slice(), r.info.items), ([2].as_slice(), 9));
    // items == 0 counts as one input.
    b.push(big(3, 0), t0).unwrap();
    assert_eq!(b.stats().next().unwrap().1.depth_items, 1);
}

#[test]
fn different_keys_never_share_a_batch_and_oldest_ready_lane_goes_first() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(false));
    push(&mut b, DEF, 1, 10, t0);
    push(&mut b, DEF, 2, 20, t0 + ms(1));
    push(&mut b, DEF, 3, 30, t0 + ms(2));
    push(&mut b, DEF, 1, 11, t0 + ms(3));
    let now = t0 + ms(60);
    let got: Vec<Vec<u32>> =
        std::iter::from_fn(|| b.poll_ready(now, None).map(|r| r.members)).collect();
    assert_eq!(got, [vec![10, 11], vec![20], vec![30]]);
}

#[test]
fn emptied_lanes_keep_the_key_index_consistent() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(false));
    // Lanes 1, 2, 3; flushing lane 1 moves lane 3 into its slot.
    push(&mut b, RT, 1, 10, t0);
    push(&mut b, RT, 2, 20, t0 + ms(5));
    push(&mut b, RT, 3, 30, t0 + ms(5));
    assert_eq!(b.poll_ready(t0 + ms(10), None).unwrap().members, [10]);
    for i in 0..3 {
        push(&mut b, RT, 3, 31 + i, t0 + ms(11));
    }
    let r = b.poll_ready(t0 + ms(11), None).unwrap();
    assert_eq!(
        (r.members.as_slice(), r.info.reason),
        ([30, 31, 32, 33].as_slice(), FlushReason::Full)
    );
    assert_eq!(b.poll_ready(t0 + ms(15), None).unwrap().members, [20]);
    assert!(b.is_empty());
}

#[test]
fn unmergeable_requests_go_alone_at_once() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(false));
    b.push(item(BATCH, None, 5), t0).unwrap();
    assert!(b.next_deadline().unwrap() <= t0);
    let r = b.poll_ready(t0, None).unwrap();
    assert_eq!(
        (r.members.as_slice(), r.info.reason),
        ([5].as_slice(), FlushReason::Alone)
    );
}

#[test]
fn higher_priority_first_then_oldest_head() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(false));
    push(&mut b, BATCH, 1, 300, t0);
    push(&mut b, DEF, 1, 200, t0 + ms(1));
    push(&mut b, RT, 1, 100, t0 + ms(2));
    let now = t0 + ms(200);
    let order: Vec<u32> =
        std::iter::from_fn(|| b.poll_ready(now, None).map(|r| r.members[0])).collect();
    assert_eq!(order, [100, 200, 300]);

    // Equal priorities: the older head wins.
    let q = |name: &str| crate::policy::QueuePolicy::new(name, 5, ms(10), 8);
    let p = BatchPolicy::new(vec![q("a"), q("b")], "a", Adaptive::default()).unwrap();
    let mut b: Batcher<u32, u32> = Batcher::new(p);
    push(&mut b, QueueId(1), 1, 1, t0);
    push(&mut b, QueueId(0), 1, 2, t0 + ms(1));
    let order: Vec<u32> =
        std::iter::from_fn(|| b.poll_ready(t0 + ms(20), None).map(|r| r.members[0])).collect();
    assert_eq!(order, [1, 2]);
}

/// Keeps every queue constantly ready (one unmergeable request each) and takes one
/// batch per poll: the gap between two services of any queue stays ≤ L + Q.
fn max_gap(limit: u32, queues: usize, polls: usize) -> Vec<usize> {
    let t0 = Instant::now();
    let qs = (0..queues)
        .map(|i| crate::policy::QueuePolicy::new(format!("q{i}"), (queues - i) as i32, ms(10), 4))
        .collect();
    let p = BatchPolicy::new(qs, "q0", Adaptive::default())
        .unwrap()
        .with_starvation_limit(limit);
    let mut b: Batcher<u32, u32> = Batcher::new(p);
    let mut last = vec![0usize; queues];
    let mut gap = vec![0usize; queues];
    for q in 0..queues {
        b.push(item(QueueId(q), None, q as u32), t0).unwrap();
    }
    for poll in 1..=polls {
        let r = b.poll_ready(t0, None).unwrap();
        let q = r.info.queue.0;
        gap[q] = gap[q].max(poll - last[q]);
        last[q] = poll;
        b.push(item(QueueId(q), None, q as u32), t0).unwrap();
    }
    for q in 0..queues {
        gap[q] = gap[q].max(polls + 1 - last[q]);
    }
    gap
}

#[test]
fn starvation_bound_holds() {
    for (limit, queues) in [(1, 3), (2, 3), (8, 3), (3, 5), (8, 8), (1, 2)] {
        let gaps = max_gap(limit, queues, 400);
        let bound = limit as usize + queues;
        assert!(
            gaps.iter().all(|&g| g <= bound),
            "L={limit} Q={queues}: {gaps:?}"
        );
        // The top queue still gets most of the service.
        assert!(gaps[0] <= gaps[queues - 1]);
    }
}

#[test]
fn without_contention_priority_is_strict() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(false));
    // Low queue ready once; high queue refilled 7 times (< L = 8): high always first.
    push(&mut b, BATCH, 1, 999, t0);
    let now = t0 + ms(100);
    for i in 0..7 {
        b.push(item(RT, None, i), now).unwrap();
        assert_eq!(b.poll_ready(now, None).unwrap().members, [i]);
    }
    // The 8th high-priority batch: the low one has been passed over 7 times, not 8.
    b.push(item(RT, None, 7), now).unwrap();
    assert_eq!(b.poll_ready(now, None).unwrap().members, [7]);
    // Now it is starved and goes next even though a real-time batch is ready.
    b.push(item(RT, None, 8), now).unwrap();
    assert_eq!(b.poll_ready(now, None).unwrap().members, [999]);
    assert_eq!(b.poll_ready(now, None).unwrap().members, [8]);
}

#[test]
fn queued_requests_expire_after_the_wait_timeout() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(false));
    let t = push(&mut b, RT, 1, 1, t0);
    push(&mut b, RT, 1, 2, t0 + ms(50));
    b.push(item(BATCH, None, 3), t0).unwrap();
    // real-time: 10 × 10 ms; batch: 10 × 100 ms.
    assert_eq!(b.next_expiry(), Some(t0 + ms(100)));
    assert_eq!(b.poll_expired(t0 + ms(99)), None);
    let x = b.poll_expired(t0 + ms(100)).unwrap();
    assert_eq!(
        (x.ticket, x.payload, x.reason, x.waited),
        (t, 1, Reject::Timeout(RT), ms(100))
    );
    assert_eq!(x.reason.status(), 429);
    assert_eq!(b.poll_expired(t0 + ms(100)), None);
    assert_eq!(b.next_expiry(), Some(t0 + ms(150)));
    assert_eq!(b.depth(RT), 1);
    let x = b.poll_expired(t0 + ms(2000)).unwrap();
    assert_eq!(x.payload, 2);
    assert_eq!(b.poll_expired(t0 + ms(2000)).unwrap().payload, 3);
    assert!(b.is_empty());
    let s: Vec<u64> = b.stats().map(|(_, s)| s.expired).collect();
    assert_eq!(s, [1 + 1, 0, 1]);
}

#[test]
fn rejects_hand_the_request_back() {
    let t0 = Instant::now();
    let mut b: Batcher<u32, u32> = Batcher::new(seed(false).with_max_queued(2));
    push(&mut b, DEF, 1, 1, t0);
    push(&mut b, DEF, 2, 2, t0);
    let e = b.push(item(DEF, Some(1), 3), t0).unwrap_err();
    assert_eq!((e.reason, e.item.payload), (Reject::QueueFull(DEF), 3));
    assert!(e.reason.retryable());
    let e = b.push(item(QueueId(9), Some(1), 4), t0).unwrap_err();
    assert_eq!((e.reason, e.reason.status()), (Reject::UnknownQueue, 400));
    assert_eq!(b.queue_id(Some("real-time")), Ok(RT));
    assert_eq!(b.queue_id(None), Ok(DEF));
    assert_eq!(b.queue_id(Some("urgent")), Err(Reject::UnknownQueue));
    assert_eq!(b.stats().nth(1).unwrap().1.rejected_full, 1);
}

#[test]
fn cancel_removes_one_request() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(false));
    let a = push(&mut b, RT, 1, 1, t0);
    let c = push(&mut b, RT, 1, 2, t0);
    let alone = b.push(item(RT, None, 3), t0).unwrap();
    assert_eq!(b.cancel(c), Some(2));
    assert_eq!(b.cancel(c), None);
    assert_eq!(b.cancel(alone), Some(3));
    assert_eq!(b.cancel(a), Some(1));
    assert!(b.is_empty());
    assert_eq!(b.next_deadline(), None);
    assert_eq!(b.stats().next().unwrap().1.cancelled, 3);
}

#[test]
fn drain_flushes_everything_within_batch_limits() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(false));
    for i in 0..6 {
        push(&mut b, RT, 1, i, t0);
    }
    push(&mut b, BATCH, 1, 100, t0);
    let got: Vec<(Vec<u32>, FlushReason)> =
        std::iter::from_fn(|| b.poll_drain(t0).map(|r| (r.members, r.info.reason))).collect();
    assert_eq!(
        got,
        [
            (vec![0, 1, 2, 3], FlushReason::Drain),
            (vec![4, 5], FlushReason::Drain),
            (vec![100], FlushReason::Drain)
        ]
    );
}

#[test]
fn next_deadline_reports_ready_batches_and_reuse_buffer_works() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(false));
    push(&mut b, BATCH, 1, 1, t0);
    push(&mut b, DEF, 1, 2, t0 + ms(10));
    assert_eq!(b.next_deadline(), Some(t0 + ms(60)));
    for i in 0..4 {
        push(&mut b, RT, 9, i, t0 + ms(20));
    }
    // A full lane is ready now: its deadline is its head's arrival.
    assert_eq!(b.next_deadline(), Some(t0 + ms(20)));
    let mut buf = Vec::with_capacity(8);
    let (info, key) = b.poll_ready_into(t0 + ms(20), |_| None, &mut buf).unwrap();
    assert_eq!((info.members, buf.len(), key), (4, 4, Some(9)));
    assert_eq!(b.next_deadline(), Some(t0 + ms(60)));
}

#[test]
fn stats_count_batches_by_reason_and_size() {
    let t0 = Instant::now();
    let mut b = Batcher::new(seed(true));
    for i in 0..4 {
        push(&mut b, RT, 1, i, t0);
    }
    push(&mut b, RT, 2, 9, t0);
    b.push(item(RT, None, 10), t0).unwrap();
    assert_eq!(b.depth(RT), 6);
    while b.poll_ready(t0 + ms(10), None).is_some() {}
    let s = b.stats().next().unwrap().1;
    assert_eq!(s.depth, 0);
    assert_eq!(s.pushed, 6);
    let by: Vec<(&str, u64)> = FlushReason::ALL
        .iter()
        .map(|r| (r.as_str(), s.flushes(*r)))
        .collect();
    assert_eq!(
        by,
        [
            ("full", 1),
            ("deadline", 1),
            ("adaptive", 0),
            ("alone", 1),
            ("drain", 0)
        ]
    );
    let sizes: Vec<_> = s.batch_size.buckets().take(3).collect();
    assert_eq!(sizes, [(Some(1), 2), (Some(2), 2), (Some(4), 3)]);
}

/// Operations for the model-based property test.
#[derive(Debug, Clone)]
enum Op {
    Push {
        queue: usize,
        key: Option<u8>,
        items: u32,
    },
    Advance(u64),
    Poll(Option<u8>),
    Expire,
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, proptest::option::weighted(0.8, 0..3u8), 1..6u32)
            .prop_map(|(queue, key, items)| Op::Push { queue, key, items }),
        2 => (0..40u64).prop_map(Op::Advance),
        3 => proptest::option::of(0..10u8).prop_map(Op::Poll),
        1 => Just(Op::Expire),
        1 => (0..64usize).prop_map(Op::Cancel),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every request leaves exactly once; batches respect keys, sizes, FIFO and the
    /// flush rules; the depth counters agree.
    #[test]
    fn batcher_invariants(ops in proptest::collection::vec(op(), 1..120)) {
        let t0 = Instant::now();
        let policy = seed(true);
        let mut b: Batcher<u32, u8> = Batcher::new(policy.clone());
        let mut now = t0;
        // payload → (queue, key, items, arrival, ticket)
        let mut live: HashMap<u32, (usize, Option<u8>, u32, Instant, Ticket)> = HashMap::new();
        let mut order: Vec<u32> = Vec::new();
        let mut next = 0u32;
        let mut last_out: HashMap<(usize, Option<u8>), u32> = HashMap::new();
        for op in ops {
            match op {
                Op::Push { queue, key, items } => {
                    let t = b.push(Pending { queue: QueueId(queue), key, items, payload: next }, now).unwrap();
                    live.insert(next, (queue, key, items, now, t));
                    order.push(next);
                    next += 1;
                }
                Op::Advance(d) => now += ms(d),
                Op::Poll(u) => {
                    let util = u.map(|u| f64::from(u) / 10.0);
                    while let Some(r) = b.poll_ready(now, util) {
                        let qp = &policy.queues()[r.info.queue.0];
                        let first = live[&r.members[0]];
                        prop_assert_eq!(r.key, first.1);
                        let mut items = 0u64;
                        for m in &r.members {
                            let (q, k, it, _, _) = live.remove(m).unwrap();
                            prop_assert_eq!((q, k), (first.0, first.1));
                            prop_assert_eq!(q, r.info.queue.0);
                            items += u64::from(it);
                            // FIFO within a lane.
                            if let Some(prev) = last_out.insert((q, k), *m) {
                                prop_assert!(prev < *m);
                            }
                        }
                        prop_assert_eq!(items, r.info.items);
                        prop_assert!(items <= u64::from(qp.max_batch_size) || r.members.len() == 1);
                        prop_assert_eq!(r.info.oldest, first.3);
                        match r.info.reason {
                            FlushReason::Deadline => prop_assert!(now >= first.3 + qp.max_latency),
                            FlushReason::Adaptive => prop_assert!(util.is_some_and(|u| u < 0.8)),
                            FlushReason::Alone => prop_assert!(first.1.is_none() && r.members.len() == 1),
                            FlushReason::Full => {}
                            FlushReason::Drain => prop_assert!(false),
                        }
                    }
                    // Nothing left is ready under the rules.
                    for &(q, k, _, at, _) in live.values() {
                        if k.is_some() {
                            prop_assert!(now < at + policy.queues()[q].max_latency);
                        }
                    }
                }
                Op::Expire => {
                    while let Some(x) = b.poll_expired(now) {
                        let (q, _, _, at, t) = live.remove(&x.payload).unwrap();
                        prop_assert_eq!(t, x.ticket);
                        prop_assert!(now >= at + policy.queues()[q].wait_timeout);
                    }
                }
                Op::Cancel(i) => {
                    if let Some(&p) = order.get(i) {
                        let was = live.remove(&p);
                        let got = was.and_then(|(_, _, _, _, t)| b.cancel(t));
                        prop_assert_eq!(got, was.map(|_| p));
                    }
                }
            }
            prop_assert_eq!(b.len(), live.len());
            let deadline = b.next_deadline();
            prop_assert_eq!(deadline.is_some(), !live.is_empty());
        }
        while let Some(r) = b.poll_drain(now) {
            for m in r.members {
                prop_assert!(live.remove(&m).is_some());
            }
        }
        prop_assert!(live.is_empty());
    }
}
