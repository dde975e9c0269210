//! Admission control: `InferenceConfig.resourceManagement.maxConcurrentInferences`
//! across the whole gateway, without cross-core locks.
//!
//! The budget is split into per-shard shares. Each shard admits up to its share
//! at once; beyond it, requests wait in priority order (higher first, FIFO within
//! a priority) for at most `--admission-timeout`, and a request with a priority
//! below 0 (sheddable) is refused first with 429 + `Retry-After` when the wait
//! queue is full. The control thread moves shares towards each shard's demand
//! every scrape interval (`rebalance` + `next_shares`, never exceeding the budget
//! while a shard still holds permits above its new share).
//!
//! Priority of a request (higher is more important, below 0 sheddable; resolved
//! in the proxy, README "Flow control"): `X-Request-Priority` (an integer), else
//! the priority of the `X-Priority` queue of the rule's BatchingPolicy, else the
//! `InferenceObjective` named by `x-gateway-inference-objective` (unknown → 400),
//! else the request model's `InferenceModel` criticality (`Critical` 1,
//! `Standard` 0, `Sheddable` -1), else the `InferenceObjective` named like the
//! model, else 0. The objectives and models are looked up in maps the routing
//! table builds once ([`shardgate_routing::RoutingTable::model_priority`]).
//!
//! A request that waits is counted, for as long as it waits, by the guard the
//! caller passes to [`ShardAdmission::acquire`] (the proxy counts it in
//! `gateway_queue_depth{queue="admission"}`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_batching::{Admission, AdmissionConfig, AdmissionEvent, Decision, WaitTicket};

use crate::control::ControlShared;
use crate::error::{Failure, Side};
use crate::notify::Notify;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Shed (sheddable and saturated, or the wait queue is full).
    Shed {
        /// `Retry-After` seconds.
        retry_after: u64,
    },
    /// Waited longer than the admission timeout.
    TimedOut,
}

impl Refusal {
    /// The answer for the client: 429 with `Retry-After`.
    pub fn failure(self) -> Failure {
        let (code, message, retry) = match self {
            Refusal::Shed { retry_after } => (
                "admission_shed",
                "The gateway is at its maxConcurrentInferences limit and this request's priority is shed first.".to_string(),
                retry_after,
            ),
            Refusal::TimedOut => (
                "admission_timeout",
                "The request waited too long for a maxConcurrentInferences permit.".to_string(),
                1,
            ),
        };
        let mut f = Failure::with(Side::Gateway, 429, "rate_limit_error", code, message);
        f.retry_after = Some(retry.min(u64::from(u32::MAX)) as u32);
        f
    }
}

/// Where a parked request learns its fate.
type Answer = local_sync::oneshot::Sender<Result<(), Refusal>>;

/// One shard's admission state.
pub struct ShardAdmission {
    adm: RefCell<Admission>,
    /// Where the shard reports its numbers to the control thread.
    control: Arc<ControlShared>,
    shard: usize,
    waiters: RefCell<Vec<(WaitTicket, Answer)>>,
    wake: Notify,
    /// Longest wait for a permit.
    pub timeout: Duration,
}

/// A held permit; dropping it releases it.
pub struct Permit {
    owner: Rc<ShardAdmission>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.owner.adm.borrow_mut().release();
        self.owner.dispatch(Instant::now());
    }
}

impl ShardAdmission {
    /// A shard's admission with `share` permits.
    pub fn new(
        share: u32,
        timeout: Duration,
        control: Arc<ControlShared>,
        shard: usize,
    ) -> Rc<Self> {
        let a = Rc::new(ShardAdmission {
            adm: RefCell::new(Admission::new(share, AdmissionConfig::default())),
            control,
            shard,
            waiters: RefCell::new(Vec::new()),
            wake: Notify::default(),
            timeout,
        });
        a.report();
        a
    }

    /// Publish (share, in use, demand, waiting) to the control thread.
    fn report(&self) {
        if let Some(r) = self.control.reports.shard(self.shard) {
            let a = self.adm.borrow();
            r.set_admission(a.share(), a.in_use(), a.demand(), a.waiting() as u32);
        }
    }

    /// Wait for a permit at `priority`. When the request has to wait, `waiting` is
    /// called once and what it returns is held until the wait ends (the caller
    /// counts the request in `gateway_queue_depth{queue="admission"}` with it).
    pub async fn acquire<G>(
        self: &Rc<Self>,
        priority: i32,
        waiting: impl FnOnce() -> G,
    ) -> Result<Permit, Refusal> {
        let now = Instant::now();
        let decision = self
            .adm
            .borrow_mut()
            .try_acquire(priority, Some(now + self.timeout));
        self.report();
        match decision {
            Decision::Admit => Ok(Permit {
                owner: self.clone(),
            }),
            Decision::Shed(s) => Err(Refusal::Shed {
                retry_after: s.retry_after_secs(),
            }),
            Decision::Queued(ticket) => {
                let (tx, rx) = local_sync::oneshot::channel();
                self.waiters.borrow_mut().push((ticket, tx));
                self.wake.notify();
                let _counted = waiting();
                // The driver task answers every ticket (grant, shed or timeout).
                match rx.await {
                    Ok(Ok(())) => Ok(Permit {
                        owner: self.clone(),
                    }),
                    Ok(Err(r)) => Err(r),
                    Err(_) => Err(Refusal::TimedOut),
                }
            }
        }
    }

    /// Apply a new share from the control thread.
    pub fn set_share(&self, share: u32) {
        self.adm.borrow_mut().set_share(share);
        self.dispatch(Instant::now());
    }

    /// (share, in use, demand = in use + waiting) for the control thread and metrics.
    pub fn numbers(&self) -> (u32, u32, u32) {
        let a = self.adm.borrow();
        (a.share(), a.in_use(), a.demand())
    }

    /// Requests waiting for a permit.
    pub fn waiting(&self) -> usize {
        self.adm.borrow().waiting()
    }

    /// Hand out grants, sheds and timeouts that are due.
    fn dispatch(&self, now: Instant) {
        self.dispatch_events(now);
        self.report();
    }

    fn dispatch_events(&self, now: Instant) {
        loop {
            let ev = self.adm.borrow_mut().poll_event(now);
            let Some(ev) = ev else { break };
            let (ticket, result) = match ev {
                AdmissionEvent::Granted(t) => (t, Ok(())),
                AdmissionEvent::Shed(t, s) => (
                    t,
                    Err(Refusal::Shed {
                        retry_after: s.retry_after_secs(),
                    }),
                ),
                AdmissionEvent::TimedOut(t) => (t, Err(Refusal::TimedOut)),
            };
            let sender = {
                let mut w = self.waiters.borrow_mut();
                w.iter()
                    .position(|(t, _)| *t == ticket)
                    .map(|i| w.swap_remove(i).1)
            };
            // A grant nobody takes (the waiter went away) goes back to the pool.
            let delivered = sender.is_some_and(|tx| tx.send(result).is_ok());
            if !delivered && result.is_ok() {
                self.adm.borrow_mut().release();
            }
        }
    }

    /// The shard's driver: fires wait timeouts on time.
    pub async fn driver(self: Rc<Self>) {
        loop {
            let next = self.adm.borrow().next_deadline();
            match next {
                Some(t) => {
                    let wait = t.saturating_duration_since(Instant::now());
                    monoio::select! {
                        _ = monoio::time::sleep(wait) => {}
                        _ = self.wake.wait() => {}
                    }
                }
                None => self.wake.wait().await,
            }
            self.dispatch(Instant::now());
        }
    }
}
