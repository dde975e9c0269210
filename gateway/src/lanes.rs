//! A shard's batching lanes: one [`PolicyBatcher`] per `BatchingPolicy`, the
//! sans-IO [`shardgate_batching::Batcher`] with its queues and lanes (same
//! model, parameters, route rule and credentials), the driver's wake-up, and
//! the capacity learned per endpoint for the adaptive signal. The shard owns
//! these; `batch` carries out their flushes.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use shardgate_batching::{BatchKey, BatchPolicy, Batcher, CapacityEstimate, FlushReason, QueueId};

use crate::metrics::QueueMetrics;
use crate::notify::Notify;
use crate::state::GatewayState;

/// What a member gets back.
#[derive(Debug)]
pub struct Reply {
    /// Status for the client.
    pub status: u16,
    /// JSON body for the client.
    pub body: Vec<u8>,
}

/// The gateway state a lane's members were planned on, compared by identity:
/// members of one lane share it, so a lane flushes on the configuration its
/// members started with, and a reload's new lanes never mix with old ones.
#[derive(Clone)]
pub struct LaneState(pub Arc<GatewayState>);

impl PartialEq for LaneState {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for LaneState {}

impl std::hash::Hash for LaneState {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), h);
    }
}

impl std::fmt::Debug for LaneState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LaneState({:p})", Arc::as_ptr(&self.0))
    }
}

/// What separates lanes beyond the body's batch key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaneCtx {
    /// The gateway state the members were planned on (`rule_id` indexes its table).
    pub state: LaneState,
    /// Dense rule id ([`shardgate_routing::RoutingTable::rule`]).
    pub rule_id: usize,
    /// Request path.
    pub path: String,
    /// Model.
    pub model: String,
    /// `Authorization` value.
    pub auth: Option<Vec<u8>>,
}

/// A waiting request.
pub struct Member {
    /// Request body.
    pub body: Bytes,
    /// Resolved priority.
    pub priority: i32,
    /// Where the reply goes.
    pub tx: local_sync::oneshot::Sender<Reply>,
}

/// A lane: the body's batch key and the request context.
pub type Lane = (BatchKey, LaneCtx);

/// One policy's batcher on one shard.
pub struct PolicyBatcher {
    /// `namespace/name` of the BatchingPolicy.
    pub key: String,
    /// The policy as configured (a reload that changes it makes a new batcher).
    pub policy: BatchPolicy,
    /// Replaced or removed by a reload: takes no new member, and its driver
    /// ends once its lanes are empty.
    pub retired: Cell<bool>,
    pub(crate) batcher: RefCell<Batcher<Member, Lane>>,
    pub(crate) wake: Notify,
    /// Queue names by [`QueueId`].
    queue_names: Vec<String>,
    /// Per endpoint id: its learned capacity (grown on demand).
    pub(crate) capacity: RefCell<Vec<CapacityEstimate>>,
    /// Per rule id: batches flushed whose upstream call is not counted in flight
    /// yet (picking, connecting); grown on demand. See [`Dispatching`].
    dispatching: RefCell<Vec<u32>>,
}

/// A flushed batch on its way to an endpoint: until its upstream call counts as
/// in flight (`shard::EndpointInFlight`), it counts here, so the lanes
/// of its rule do not read the target idle in between (a burst would otherwise
/// flush every request alone before the first call is counted). Dropping it
/// uncounts it.
pub struct Dispatching {
    pb: Rc<PolicyBatcher>,
    rule: usize,
}

impl Dispatching {
    /// Count one batch of `rule` as dispatching.
    pub fn start(pb: &Rc<PolicyBatcher>, rule: usize) -> Self {
        {
            let mut d = pb.dispatching.borrow_mut();
            if d.len() <= rule {
                d.resize(rule + 1, 0);
            }
            if let Some(n) = d.get_mut(rule) {
                *n += 1;
            }
        }
        Dispatching {
            pb: pb.clone(),
            rule,
        }
    }
}

impl Drop for Dispatching {
    fn drop(&mut self) {
        if let Some(n) = self.pb.dispatching.borrow_mut().get_mut(self.rule) {
            *n = n.saturating_sub(1);
        }
    }
}

impl PolicyBatcher {
    /// A batcher for `policy`.
    pub fn new(key: String, policy: BatchPolicy) -> Self {
        let queue_names = policy.queues().iter().map(|q| q.name.clone()).collect();
        PolicyBatcher {
            key,
            retired: Cell::new(false),
            batcher: RefCell::new(Batcher::new(policy.clone())),
            policy,
            wake: Notify::default(),
            queue_names,
            capacity: RefCell::new(Vec::new()),
            dispatching: RefCell::new(Vec::new()),
        }
    }

    /// Batches of rule `rule` flushed but not yet counted in flight.
    pub fn dispatching(&self, rule: usize) -> u32 {
        self.dispatching.borrow().get(rule).copied().unwrap_or(0)
    }

    /// The name of queue `id` (`"default"` for an id of another policy).
    pub fn queue_name(&self, id: QueueId) -> &str {
        self.queue_names
            .get(id.0)
            .map_or(shardgate_batching::policy::DEFAULT_QUEUE, String::as_str)
    }

    /// The admission priority of queue `name` (higher is more important).
    pub fn priority_of(&self, name: &str) -> Option<i32> {
        let b = self.batcher.borrow();
        let id = b.policy().queue_id(name)?;
        b.policy().queues().get(id.0).map(|q| q.priority)
    }

    /// Requests waiting per queue: (queue name, depth).
    pub fn depths(&self) -> Vec<(String, usize)> {
        let b = self.batcher.borrow();
        b.policy()
            .queues()
            .iter()
            .enumerate()
            .map(|(i, q)| (q.name.clone(), b.depth(shardgate_batching::QueueId(i))))
            .collect()
    }

    /// Per queue: flushes by reason, batch-size and wait histograms (for metrics).
    pub fn stats(&self) -> Vec<QueueMetrics> {
        let b = self.batcher.borrow();
        b.stats()
            .map(|(q, s)| QueueMetrics {
                queue: q.name.clone(),
                depth: s.depth as u64,
                flushes: FLUSH_REASONS
                    .iter()
                    .map(|r| (flush_name(*r), s.flushes(*r)))
                    .collect(),
                batch_size: s.batch_size.buckets().collect(),
                batch_size_sum: s.batch_size.sum(),
                queued_us: s.queued_us.buckets().collect(),
                queued_us_sum: s.queued_us.sum(),
                expired: s.expired,
                rejected_full: s.rejected_full,
            })
            .collect()
    }
}

const FLUSH_REASONS: [FlushReason; 5] = [
    FlushReason::Full,
    FlushReason::Deadline,
    FlushReason::Adaptive,
    FlushReason::Alone,
    FlushReason::Drain,
];

fn flush_name(r: FlushReason) -> &'static str {
    match r {
        FlushReason::Full => "full",
        FlushReason::Deadline => "deadline",
        FlushReason::Adaptive => "adaptive",
        FlushReason::Alone => "alone",
        FlushReason::Drain => "drain",
    }
}
