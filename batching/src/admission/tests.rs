//! Admission and rebalance tests on a virtual clock.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ticket(d: Decision) -> WaitTicket {
    match d {
        Decision::Queued(t) => t,
        other => panic!("expected Queued, got {other:?}"),
    }
}

fn events(a: &mut Admission, now: Instant) -> Vec<AdmissionEvent> {
    std::iter::from_fn(|| a.poll_event(now)).collect()
}

#[test]
fn admits_up_to_the_share_then_queues() {
    let mut a = Admission::new(2, AdmissionConfig::default());
    assert_eq!(a.try_acquire(0, None), Decision::Admit);
    assert_eq!(a.try_acquire(5, None), Decision::Admit);
    let t = ticket(a.try_acquire(0, None));
    assert_eq!((a.in_use(), a.waiting(), a.demand()), (2, 1, 3));
    a.release();
    let t0 = Instant::now();
    assert_eq!(events(&mut a, t0), [AdmissionEvent::Granted(t)]);
    assert_eq!((a.in_use(), a.waiting()), (2, 0));
    a.release();
    a.release();
    assert_eq!(a.in_use(), 0);
    assert_eq!(a.stats().admitted, 2);
    assert_eq!(a.stats().granted, 1);
}

#[test]
fn waiters_go_by_priority_then_fifo() {
    let t0 = Instant::now();
    let mut a = Admission::new(1, AdmissionConfig::default());
    assert_eq!(a.try_acquire(0, None), Decision::Admit);
    let low1 = ticket(a.try_acquire(0, None));
    let high1 = ticket(a.try_acquire(10, None));
    let low2 = ticket(a.try_acquire(0, None));
    let high2 = ticket(a.try_acquire(10, None));
    let mid = ticket(a.try_acquire(5, None));
    assert_eq!(
        (a.waiting_at(10), a.waiting_at(0), a.waiting_at(5)),
        (2, 2, 1)
    );
    let mut order = Vec::new();
    for _ in 0..5 {
        a.release();
        for e in events(&mut a, t0) {
            match e {
                AdmissionEvent::Granted(t) => order.push(t),
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(order, [high1, high2, mid, low1, low2]);
    assert_eq!(high1.priority(), 10);
}

#[test]
fn sheddable_requests_are_rejected_first() {
    let mut a = Admission::new(1, AdmissionConfig::default());
    // A free permit admits a sheddable request unless endpoints are saturated.
    a.set_saturated(true);
    let Decision::Shed(s) = a.try_acquire(-1, None) else {
        panic!("sheddable must be shed while saturated");
    };
    assert_eq!(
        (s.reason, s.status(), s.retry_after_secs()),
        (ShedReason::Saturated, 429, 1)
    );
    // Non-sheddable still goes through while saturated.
    assert_eq!(a.try_acquire(0, None), Decision::Admit);
    a.set_saturated(false);
    // Out of permits: sheddable never waits, others do.
    let Decision::Shed(s) = a.try_acquire(-5, None) else {
        panic!("sheddable must not queue");
    };
    assert_eq!(s.reason, ShedReason::Exhausted);
    assert!(matches!(a.try_acquire(0, None), Decision::Queued(_)));
    a.release();
    a.release();
    assert_eq!(a.try_acquire(-1, None), Decision::Admit);
    assert_eq!(a.stats().shed[ShedReason::Saturated as usize], 1);
    assert_eq!(a.stats().shed[ShedReason::Exhausted as usize], 1);
}

#[test]
fn a_full_wait_queue_evicts_the_least_urgent_newest_waiter() {
    let t0 = Instant::now();
    let cfg = AdmissionConfig {
        max_waiting: 3,
        retry_after: ms(2500),
        ..AdmissionConfig::default()
    };
    let mut a = Admission::new(1, cfg);
    assert_eq!(a.try_acquire(1, None), Decision::Admit);
    let _old_low = ticket(a.try_acquire(1, None));
    let new_low = ticket(a.try_acquire(1, None));
    let _high = ticket(a.try_acquire(9, None));
    // Same priority as the least urgent: the newcomer is refused.
    let Decision::Shed(s) = a.try_acquire(1, None) else {
        panic!("expected shed");
    };
    assert_eq!((s.reason, s.retry_after_secs()), (ShedReason::QueueFull, 3));
    // More urgent: the newest least-urgent waiter is evicted.
    let urgent = ticket(a.try_acquire(5, None));
    assert_eq!(
        events(&mut a, t0),
        [AdmissionEvent::Shed(
            new_low,
            Shed {
                reason: ShedReason::Evicted,
                retry_after: ms(2500)
            }
        )]
    );
    assert_eq!(a.waiting(), 3);
    a.release();
    a.release();
    let granted: Vec<_> = events(&mut a, t0);
    assert_eq!(granted.len(), 2);
    assert_eq!(granted[1], AdmissionEvent::Granted(urgent));
}

#[test]
fn waiters_time_out_and_cancel() {
    let t0 = Instant::now();
    let mut a = Admission::new(1, AdmissionConfig::default());
    assert_eq!(a.try_acquire(0, None), Decision::Admit);
    let slow = ticket(a.try_acquire(0, Some(t0 + ms(100))));
    let fast = ticket(a.try_acquire(0, Some(t0 + ms(10))));
    let forever = ticket(a.try_acquire(0, None));
    assert_eq!(a.next_deadline(), Some(t0 + ms(10)));
    assert_eq!(events(&mut a, t0 + ms(9)), []);
    assert_eq!(
        events(&mut a, t0 + ms(10)),
        [AdmissionEvent::TimedOut(fast)]
    );
    assert!(a.cancel(slow));
    assert!(!a.cancel(slow));
    assert_eq!(a.next_deadline(), None);
    assert_eq!(events(&mut a, t0 + ms(1000)), []);
    a.release();
    assert_eq!(
        events(&mut a, t0 + ms(1000)),
        [AdmissionEvent::Granted(forever)]
    );
    assert_eq!((a.stats().timed_out, a.stats().cancelled), (1, 1));
}

#[test]
fn share_changes_wake_waiters_or_hold_admission() {
    let t0 = Instant::now();
    let mut a = Admission::new(2, AdmissionConfig::default());
    assert_eq!(a.try_acquire(0, None), Decision::Admit);
    assert_eq!(a.try_acquire(0, None), Decision::Admit);
    let w1 = ticket(a.try_acquire(0, None));
    let w2 = ticket(a.try_acquire(0, None));
    a.set_share(3);
    assert_eq!(events(&mut a, t0), [AdmissionEvent::Granted(w1)]);
    // Shrink below the permits in use: nothing is admitted until back under.
    a.set_share(1);
    a.release();
    a.release();
    assert_eq!(events(&mut a, t0), []);
    assert_eq!(a.in_use(), 1);
    a.release();
    assert_eq!(events(&mut a, t0), [AdmissionEvent::Granted(w2)]);
    assert_eq!(a.share(), 1);
}

#[test]
fn budget_splits_evenly_before_demand_is_known() {
    assert_eq!(
        Budget { total: 100 }.initial(8),
        [13, 13, 13, 13, 12, 12, 12, 12]
    );
    assert_eq!(Budget { total: 3 }.initial(4), [1, 1, 1, 0]);
    assert_eq!(Budget { total: 0 }.initial(2), [0, 0]);
    assert_eq!(rebalance(&[], 10), Vec::<u32>::new());
}

#[test]
fn rebalance_water_fills() {
    // Everyone fits: demands met, the rest spread evenly (busiest first).
    assert_eq!(rebalance(&[3, 0, 0, 0], 100), [27, 25, 24, 24]);
    // Over-subscribed: the small demand is met, the big ones share the rest.
    assert_eq!(rebalance(&[1000, 5, 1000, 0], 100), [47, 5, 47, 1]);
    // Fewer permits than shards: the busiest get one.
    assert_eq!(rebalance(&[0, 9, 4], 2), [0, 1, 1]);
    assert_eq!(Budget { total: 10 }.rebalance(&[10, 10]), [5, 5]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rebalance_properties(
        demands in proptest::collection::vec(0u32..2000, 0..40),
        total in 0u32..5000,
    ) {
        let s = rebalance(&demands, total);
        prop_assert_eq!(s.len(), demands.len());
        if demands.is_empty() {
            return Ok(());
        }
        let sum: u64 = s.iter().map(|&x| u64::from(x)).sum();
        prop_assert_eq!(sum, u64::from(total));
        let n = demands.len() as u64;
        if u64::from(total) >= n {
            prop_assert!(s.iter().all(|&x| x >= 1));
        }
        // Every demand is met when they all fit.
        let need: u64 = demands.iter().map(|&d| u64::from(d.max(1))).sum();
        if u64::from(total) >= need {
            for (d, x) in demands.iter().zip(&s) {
                prop_assert!(x >= d);
            }
        }
        // A busier shard never gets less.
        for i in 0..demands.len() {
            for j in 0..demands.len() {
                if demands[i] > demands[j] {
                    prop_assert!(s[i] >= s[j], "{:?} -> {:?}", demands, s);
                }
            }
        }
    }

    /// Random admission traffic: permits in use never exceed the share, waiters
    /// only exist when the share is used up, every request ends exactly once.
    #[test]
    fn admission_invariants(
        ops in proptest::collection::vec((0u8..5, -2i32..3, 0u64..30), 1..200),
        share in 0u32..5,
    ) {
        let t0 = Instant::now();
        let cfg = AdmissionConfig { max_waiting: 4, ..AdmissionConfig::default() };
        let mut a = Admission::new(share, cfg);
        let mut now = t0;
        let mut holding = 0u32;
        let mut waiting: Vec<WaitTicket> = Vec::new();
        for (op, prio, d) in ops {
            match op {
                0 | 1 => match a.try_acquire(prio, Some(now + Duration::from_millis(d))) {
                    Decision::Admit => holding += 1,
                    Decision::Queued(t) => {
                        prop_assert!(prio >= 0);
                        waiting.push(t);
                    }
                    Decision::Shed(_) => {}
                },
                2 => if holding > 0 {
                    a.release();
                    holding -= 1;
                },
                3 => now += Duration::from_millis(d),
                _ => a.set_share(prio.unsigned_abs()),
            }
            while let Some(e) = a.poll_event(now) {
                match e {
                    AdmissionEvent::Granted(t) => {
                        waiting.retain(|w| *w != t);
                        holding += 1;
                    }
                    AdmissionEvent::Shed(t, _) | AdmissionEvent::TimedOut(t) => {
                        let before = waiting.len();
                        waiting.retain(|w| *w != t);
                        prop_assert_eq!(waiting.len() + 1, before);
                    }
                }
            }
            prop_assert_eq!(a.in_use(), holding);
            prop_assert_eq!(a.waiting(), waiting.len());
            prop_assert!(a.waiting() <= 4);
            if a.waiting() > 0 {
                prop_assert!(a.in_use() >= a.share());
            }
        }
    }
}

#[test]
fn next_shares_waits_for_shrinking_shards() {
    // Budget 10: shard 0 holds 6 of its 6, target moves 4 permits to shard 1.
    let s = next_shares(&[6, 4], &[2, 8], &[6, 1]);
    assert_eq!(s, [2, 4]);
    // Shard 0 finished 3: room for 3 more on shard 1.
    let s = next_shares(&s, &[2, 8], &[3, 4]);
    assert_eq!(s, [2, 7]);
    let s = next_shares(&s, &[2, 8], &[2, 7]);
    assert_eq!(s, [2, 8]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Shards under random load with a control thread rebalancing every few steps:
    /// the permits in use across the gateway never exceed the budget.
    #[test]
    fn gateway_never_exceeds_the_budget(
        steps in proptest::collection::vec((0u8..4, 0usize..4), 1..300),
        budget in 4u32..20,
    ) {
        let t0 = Instant::now();
        let shards = 4;
        let mut shares = Budget { total: budget }.initial(shards);
        let mut adm: Vec<Admission> = shares
            .iter()
            .map(|&s| Admission::new(s, AdmissionConfig::default()))
            .collect();
        for (op, shard) in steps {
            match op {
                0 | 1 => {
                    let _ = adm[shard].try_acquire(0, None);
                }
                2 => {
                    if adm[shard].in_use() > 0 {
                        adm[shard].release();
                    }
                }
                _ => {
                    let demands: Vec<u32> = adm.iter().map(Admission::demand).collect();
                    let in_use: Vec<u32> = adm.iter().map(Admission::in_use).collect();
                    let target = rebalance(&demands, budget);
                    shares = next_shares(&shares, &target, &in_use);
                    prop_assert!(shares.iter().sum::<u32>() <= budget);
                    for (a, &s) in adm.iter_mut().zip(&shares) {
                        a.set_share(s);
                    }
                }
            }
            for a in &mut adm {
                while a.poll_event(t0).is_some() {}
            }
            let used: u32 = adm.iter().map(Admission::in_use).sum();
            prop_assert!(used <= budget, "{} > {}", used, budget);
        }
    }

    #[test]
    fn next_shares_properties(
        rows in proptest::collection::vec((0u32..20, 0u32..20, 0u32..30), 1..8),
    ) {
        let current: Vec<u32> = rows.iter().map(|r| r.0).collect();
        let demands: Vec<u32> = rows.iter().map(|r| r.2).collect();
        let budget: u32 = current.iter().sum::<u32>().max(1);
        let target = rebalance(&demands, budget);
        // In-use permits consistent with the current shares' bound.
        let in_use: Vec<u32> = rows.iter().map(|r| r.1.min(r.0)).collect();
        let held = |s: &[u32]| -> u32 { s.iter().zip(&in_use).map(|(&s, &u)| s.max(u)).sum() };
        prop_assume!(held(&current) <= budget);
        let next = next_shares(&current, &target, &in_use);
        prop_assert!(held(&next) <= budget);
        for i in 0..next.len() {
            prop_assert!(next[i] <= target[i].max(current[i].min(target[i])));
        }
        if in_use.iter().zip(&target).all(|(u, t)| u <= t) {
            prop_assert_eq!(&next, &target);
        }
    }
}
