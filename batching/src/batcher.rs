//! Per-core batching queues: a sans-IO state machine on the caller's clock.
//!
//! A shard owns one [`Batcher`]. Requests are [`push`](Batcher::push)ed into their
//! priority queue and, inside it, into the *lane* of their batch key (requests with
//! equal keys can merge). The shard asks [`next_deadline`](Batcher::next_deadline)
//! when to wake up and calls [`poll_ready`](Batcher::poll_ready) until it returns
//! `None` after every push, every timer and every telemetry update.
//!
//! # When a lane flushes ([`FlushReason`])
//! Checked in this order, at every poll, for every non-empty lane of queue *q*:
//! 1. **Full**: the lane holds ≥ `q.max_batch_size` inputs. The batch takes members
//!    in FIFO order while their inputs fit (a single request larger than the limit
//!    goes alone); the rest stays for the next batch.
//! 2. **Deadline**: the oldest member has waited `q.max_latency`
//!    (`now ≥ enqueued + max_latency`).
//! 3. **Adaptive** (policy `adaptive.enabled` only): the target's utilisation `u`
//!    passed to the poll is known and `u < target_utilization` → the backend has
//!    room, flush at once whatever the size. With `u ≥ target` (busy) the lane waits
//!    for Full or Deadline, growing the batch. An unknown utilisation (`None`, or
//!    NaN) is never read as idle: the lane waits as if busy.
//! 4. **Alone**: a request with no batch key (not mergeable) is ready at once.
//!
//! [`poll_drain`](Batcher::poll_drain) flushes everything regardless
//! ([`FlushReason::Drain`], for shutdown).
//!
//! # Which ready batch goes first
//! - Between queues: the highest priority; equal priorities: the oldest head.
//! - Within a queue: the ready lane whose head arrived first (FIFO); within a lane,
//!   members leave in arrival order.
//! - **Starvation bound**: every poll that returns a batch from another queue while
//!   queue *B* has a ready batch increments *B*'s skip count (it resets when *B* is
//!   served or has nothing ready). Queues whose count reached the starvation limit
//!   *L* (default 8) go before all others, the largest count first (ties: higher
//!   priority). Hence, with *Q* queues, a batch that stays ready is returned by one
//!   of the next **L + Q** polls that return a batch: at most *L* skips before its
//!   queue is starved, then every other starved queue is served at most once before
//!   it (once served, a queue's count restarts at 0 and cannot catch up). This only
//!   matters when the caller takes fewer batches than are ready (admission or
//!   connection limits); a caller that drains every poll never starves anyone.
//!
//! # Timeouts
//! A request still queued `q.wait_timeout` after it arrived expires:
//! [`poll_expired`](Batcher::poll_expired) hands it back with [`Reject::Timeout`].
//! Because `wait_timeout > max_latency`, this only happens when the caller stops
//! taking ready batches.
//!
//! # Costs
//! `push` is O(1) amortised (one hash of the key; a new lane allocates its deque).
//! `next_deadline`, `next_expiry` and `poll_*` scan every non-empty lane: O(lanes),
//! no allocation. The one unavoidable allocation is the returned batch's `Vec`;
//! [`poll_ready_into`](Batcher::poll_ready_into) reuses the caller's instead. The
//! batch's key is moved out of its lane when the flush empties it (the usual case)
//! and cloned otherwise. An emptied lane is dropped (one map removal per batch).
//! `cancel` is O(queued).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::merge::BatchKey;
use crate::policy::{BatchPolicy, QueueId, QueuePolicy};
use crate::stats::QueueStats;

/// Why a batch left its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    /// The lane reached `max_batch_size` inputs.
    Full,
    /// The oldest member reached the queue's `max_latency`.
    Deadline,
    /// Adaptive batching: the target was below `target_utilization`.
    Adaptive,
    /// The request is not mergeable and goes by itself.
    Alone,
    /// [`Batcher::poll_drain`] (shutdown).
    Drain,
}

impl FlushReason {
    /// Number of reasons (length of [`QueueStats::flushes`]).
    pub const COUNT: usize = 5;
    /// All reasons, in [`index`](Self::index) order.
    pub const ALL: [FlushReason; Self::COUNT] = [
        FlushReason::Full,
        FlushReason::Deadline,
        FlushReason::Adaptive,
        FlushReason::Alone,
        FlushReason::Drain,
    ];

    /// Position in [`QueueStats::flushes`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Metric label value (`full`, `deadline`, `adaptive`, `alone`, `drain`).
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Full => "full",
            FlushReason::Deadline => "deadline",
            FlushReason::Adaptive => "adaptive",
            FlushReason::Alone => "alone",
            FlushReason::Drain => "drain",
        }
    }
}

/// Why a request was refused or dropped by the batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Reject {
    /// No queue with that name or id: the client's fault, 400.
    #[error("unknown priority queue")]
    UnknownQueue,
    /// The shard's queue is at capacity: 429 with `Retry-After`, retry allowed.
    #[error("priority queue {0:?} is full")]
    QueueFull(QueueId),
    /// The request waited longer than its queue's wait timeout: 429 with
    /// `Retry-After`, retry allowed.
    #[error("timed out waiting in priority queue {0:?}")]
    Timeout(QueueId),
}

impl Reject {
    /// HTTP status the gateway answers with.
    pub fn status(self) -> u16 {
        match self {
            Reject::UnknownQueue => 400,
            Reject::QueueFull(_) | Reject::Timeout(_) => 429,
        }
    }

    /// Whether the client may retry the same request.
    pub fn retryable(self) -> bool {
        !matches!(self, Reject::UnknownQueue)
    }
}

/// A request to batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending<T, K = BatchKey> {
    /// Its priority queue.
    pub queue: QueueId,
    /// Its batch key; `None` = not mergeable (flushes alone, at once).
    pub key: Option<K>,
    /// Inputs it carries (embedding inputs / prompts); counted against
    /// `max_batch_size`; 0 counts as 1.
    pub items: u32,
    /// What the caller needs back with the batch (body, reply channel…).
    pub payload: T,
}

/// A refused push: the reason and the request, handed back.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected<T, K = BatchKey> {
    /// Why.
    pub reason: Reject,
    /// The request, untouched.
    pub item: Pending<T, K>,
}

/// Names a queued request (for [`Batcher::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket {
    queue: QueueId,
    seq: u64,
}

impl Ticket {
    /// The queue it waits in.
    pub fn queue(self) -> QueueId {
        self.queue
    }
}

/// What a flushed batch is, besides its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Queue it came from.
    pub queue: QueueId,
    /// Why it flushed.
    pub reason: FlushReason,
    /// Number of members (requests).
    pub members: usize,
    /// Sum of the members' inputs.
    pub items: u64,
    /// Arrival of the oldest member.
    pub oldest: Instant,
}

/// A flushed batch: members in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyBatch<T, K = BatchKey> {
    /// Queue, reason and sizes.
    pub info: BatchInfo,
    /// The members' batch key (`None` for a lone unmergeable request); pass it to
    /// [`merge::merge`](crate::merge::merge).
    pub key: Option<K>,
    /// The members' payloads, oldest first.
    pub members: Vec<T>,
}

/// A request that waited past its queue's wait timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct Expired<T> {
    /// Its ticket.
    pub ticket: Ticket,
    /// Always [`Reject::Timeout`].
    pub reason: Reject,
    /// How long it waited.
    pub waited: Duration,
    /// Its payload.
    pub payload: T,
}

#[derive(Debug)]
struct Member<T> {
    seq: u64,
    enqueued: Instant,
    items: u32,
    payload: T,
}

#[derive(Debug)]
struct Lane<T, K> {
    key: K,
    members: VecDeque<Member<T>>,
    items: u64,
}

#[derive(Debug)]
struct Queue<T, K> {
    lanes: Vec<Lane<T, K>>,
    index: HashMap<K, usize>,
    alone: VecDeque<Member<T>>,
    skipped: u32,
    stats: QueueStats,
}

/// Where a queue's best ready batch is.
#[derive(Debug, Clone, Copy)]
enum Source {
    Lane(usize),
    Alone,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    source: Source,
    reason: FlushReason,
    head_seq: u64,
}

/// One shard's batching queues (see the module docs for the rules).
///
/// `T` is the caller's per-request payload, `K` the batch key
/// ([`BatchKey`] from [`merge::classify`](crate::merge::classify) by default).
#[derive(Debug)]
pub struct Batcher<T, K = BatchKey> {
    policy: BatchPolicy,
    queues: Vec<Queue<T, K>>,
    next_seq: u64,
}

impl<T, K: Hash + Eq + Clone> Batcher<T, K> {
    /// Empty queues for `policy`.
    pub fn new(policy: BatchPolicy) -> Self {
        let queues = policy
            .queues()
            .iter()
            .map(|_| Queue {
                lanes: Vec::new(),
                index: HashMap::new(),
                alone: VecDeque::new(),
                skipped: 0,
                stats: QueueStats::default(),
            })
            .collect();
        Batcher {
            policy,
            queues,
            next_seq: 0,
        }
    }

    /// The policy it runs.
    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Resolves an `X-Priority` value (`None`: the default queue).
    pub fn queue_id(&self, name: Option<&str>) -> Result<QueueId, Reject> {
        match name {
            None => Ok(self.policy.default_queue()),
            Some(n) => self.policy.queue_id(n).ok_or(Reject::UnknownQueue),
        }
    }

    /// Queues a request that arrived at `now`.
    pub fn push(&mut self, item: Pending<T, K>, now: Instant) -> Result<Ticket, Rejected<T, K>> {
        let qid = item.queue;
        let (Some(qp), Some(q)) = (self.policy.queues().get(qid.0), self.queues.get_mut(qid.0))
        else {
            return Err(Rejected {
                reason: Reject::UnknownQueue,
                item,
            });
        };
        if q.stats.depth >= qp.max_queued {
            q.stats.rejected_full += 1;
            return Err(Rejected {
                reason: Reject::QueueFull(qid),
                item,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let items = item.items.max(1);
        let member = Member {
            seq,
            enqueued: now,
            items,
            payload: item.payload,
        };
        match item.key {
            None => q.alone.push_back(member),
            Some(key) => {
                let at = match q.index.get(&key) {
                    Some(&at) => at,
                    None => {
                        let at = q.lanes.len();
                        q.index.insert(key.clone(), at);
                        q.lanes.push(Lane {
                            key,
                            members: VecDeque::new(),
                            items: 0,
                        });
                        at
                    }
                };
                let lane = &mut q.lanes[at];
                lane.items += u64::from(items);
                lane.members.push_back(member);
            }
        }
        q.stats.depth += 1;
        q.stats.depth_items += u64::from(items);
        q.stats.pushed += 1;
        Ok(Ticket { queue: qid, seq })
    }

    /// Removes a queued request (client gone); `None` if it already left.
    pub fn cancel(&mut self, ticket: Ticket) -> Option<T> {
        let q = self.queues.get_mut(ticket.queue.0)?;
        if let Some(i) = q.alone.iter().position(|m| m.seq == ticket.seq) {
            let m = q.alone.remove(i)?;
            note_gone(&mut q.stats, &m);
            q.stats.cancelled += 1;
            return Some(m.payload);
        }
        for li in 0..q.lanes.len() {
            let lane = &mut q.lanes[li];
            if let Some(i) = lane.members.iter().position(|m| m.seq == ticket.seq) {
                let m = lane.members.remove(i)?;
                lane.items -= u64::from(m.items);
                note_gone(&mut q.stats, &m);
                q.stats.cancelled += 1;
                q.drop_lane_if_empty(li);
                return Some(m.payload);
            }
        }
        None
    }

    /// The earliest instant at which a batch is or becomes ready without a new push
    /// or a utilisation change: a lane's head arrival + `max_latency`, or an
    /// instant ≤ now when a batch is already ready (full or alone). `None` when
    /// empty. A caller that cannot take batches (out of permits) should sleep until
    /// [`next_expiry`](Self::next_expiry) or a permit instead.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut best: Option<Instant> = None;
        for (q, qp) in self.queues.iter().zip(self.policy.queues()) {
            if let Some(m) = q.alone.front() {
                best = min_opt(best, m.enqueued);
            }
            for lane in &q.lanes {
                let Some(head) = lane.members.front() else {
                    continue;
                };
                let at = if lane.items >= u64::from(qp.max_batch_size) {
                    head.enqueued
                } else {
                    head.enqueued + qp.max_latency
                };
                best = min_opt(best, at);
            }
        }
        best
    }

    /// The earliest instant a queued request expires; `None` when empty.
    pub fn next_expiry(&self) -> Option<Instant> {
        let mut best: Option<Instant> = None;
        for (q, qp) in self.queues.iter().zip(self.policy.queues()) {
            let heads = q
                .alone
                .front()
                .into_iter()
                .chain(q.lanes.iter().filter_map(|l| l.members.front()));
            for m in heads {
                best = min_opt(best, m.enqueued + qp.wait_timeout);
            }
        }
        best
    }

    /// Hands back one request that waited past its queue's `wait_timeout`, most urgent
    /// queue first; call until `None`.
    pub fn poll_expired(&mut self, now: Instant) -> Option<Expired<T>> {
        for (qi, (q, qp)) in self.queues.iter_mut().zip(self.policy.queues()).enumerate() {
            let expired = |m: &Member<T>| m.enqueued + qp.wait_timeout <= now;
            let found = if q.alone.front().is_some_and(expired) {
                q.alone.pop_front()
            } else if let Some(li) = q
                .lanes
                .iter()
                .position(|l| l.members.front().is_some_and(expired))
            {
                let lane = &mut q.lanes[li];
                let m = lane.members.pop_front();
                if let Some(m) = &m {
                    lane.items -= u64::from(m.items);
                }
                q.drop_lane_if_empty(li);
                m
            } else {
                None
            };
            if let Some(m) = found {
                note_gone(&mut q.stats, &m);
                q.stats.expired += 1;
                let qid = QueueId(qi);
                return Some(Expired {
                    ticket: Ticket {
                        queue: qid,
                        seq: m.seq,
                    },
                    reason: Reject::Timeout(qid),
                    waited: now.saturating_duration_since(m.enqueued),
                    payload: m.payload,
                });
            }
        }
        None
    }

    /// The next ready batch, one utilisation for every key (`None`: unknown, never
    /// read as idle). Call until it returns `None`.
    pub fn poll_ready(
        &mut self,
        now: Instant,
        utilization: Option<f64>,
    ) -> Option<ReadyBatch<T, K>> {
        self.poll_ready_with(now, |_| utilization)
    }

    /// The next ready batch, asking `utilization` for each lane's key (the key names
    /// the model, hence the target pool).
    pub fn poll_ready_with(
        &mut self,
        now: Instant,
        utilization: impl FnMut(&K) -> Option<f64>,
    ) -> Option<ReadyBatch<T, K>> {
        let mut members = Vec::new();
        let (info, key) = self.poll_ready_into(now, utilization, &mut members)?;
        Some(ReadyBatch { info, key, members })
    }

    /// Like [`poll_ready_with`](Self::poll_ready_with), appending the members to
    /// `out` (clear it between calls) so the caller can reuse one buffer; returns
    /// the batch's info and key.
    pub fn poll_ready_into(
        &mut self,
        now: Instant,
        mut utilization: impl FnMut(&K) -> Option<f64>,
        out: &mut Vec<T>,
    ) -> Option<(BatchInfo, Option<K>)> {
        let adaptive = self.policy.adaptive();
        let limit = self.policy.starvation_limit();
        // Queues with a ready batch, as a bitmask (a policy has ≤ 64 queues).
        let mut ready: u64 = 0;
        // (queue, candidate, starved, skip count)
        let mut best: Option<(usize, Candidate, bool, u32)> = None;
        for (qi, (q, qp)) in self.queues.iter().zip(self.policy.queues()).enumerate() {
            let Some(c) = q.candidate(qp, now, adaptive, &mut utilization) else {
                continue;
            };
            ready |= 1 << qi;
            let starved = q.skipped >= limit;
            let better = match best {
                None => true,
                Some((bi, bc, bstarved, bskipped)) => {
                    if starved != bstarved {
                        starved
                    } else if starved {
                        // Most-skipped first; ties: higher priority (earlier index).
                        q.skipped > bskipped
                    } else {
                        // Queues are sorted by priority: a later one wins only on an
                        // equal priority with an older head.
                        qp.priority == self.policy.queues()[bi].priority && c.head_seq < bc.head_seq
                    }
                }
            };
            if better {
                best = Some((qi, c, starved, q.skipped));
            }
        }
        let (qi, c, _, _) = best?;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if i != qi && ready & (1 << i) != 0 {
                q.skipped = q.skipped.saturating_add(1);
            } else {
                q.skipped = 0;
            }
        }
        let qp = &self.policy.queues()[qi];
        Some(self.queues[qi].take(qi, qp, c, now, out))
    }

    /// Flushes everything queued, one batch per call (reason
    /// [`FlushReason::Drain`], still bounded by `max_batch_size`), most urgent queue
    /// first; for shutdown.
    pub fn poll_drain(&mut self, now: Instant) -> Option<ReadyBatch<T, K>> {
        for (qi, (q, qp)) in self.queues.iter_mut().zip(self.policy.queues()).enumerate() {
            let source = if let Some(m) = q.alone.front() {
                Some((Source::Alone, m.seq))
            } else {
                q.lanes
                    .iter()
                    .enumerate()
                    .find_map(|(i, l)| l.members.front().map(|m| (Source::Lane(i), m.seq)))
            };
            if let Some((source, head_seq)) = source {
                let c = Candidate {
                    source,
                    reason: FlushReason::Drain,
                    head_seq,
                };
                let mut members = Vec::new();
                let (info, key) = q.take(qi, qp, c, now, &mut members);
                return Some(ReadyBatch { info, key, members });
            }
        }
        None
    }

    /// Requests queued in one queue (`gateway_queue_depth{priority}`).
    pub fn depth(&self, queue: QueueId) -> usize {
        self.queues.get(queue.0).map_or(0, |q| q.stats.depth)
    }

    /// Requests queued in all queues.
    pub fn len(&self) -> usize {
        self.queues.iter().map(|q| q.stats.depth).sum()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters of every queue, most urgent first, with its policy.
    pub fn stats(&self) -> impl Iterator<Item = (&QueuePolicy, &QueueStats)> {
        self.policy
            .queues()
            .iter()
            .zip(self.queues.iter().map(|q| &q.stats))
    }
}

fn min_opt(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn note_gone<T>(stats: &mut QueueStats, m: &Member<T>) {
    stats.depth -= 1;
    stats.depth_items -= u64::from(m.items);
}

impl<T, K: Hash + Eq + Clone> Queue<T, K> {
    /// This queue's best ready batch: the oldest head among ready lanes.
    fn candidate(
        &self,
        qp: &QueuePolicy,
        now: Instant,
        adaptive: crate::policy::Adaptive,
        utilization: &mut impl FnMut(&K) -> Option<f64>,
    ) -> Option<Candidate> {
        let mut best = self.alone.front().map(|m| Candidate {
            source: Source::Alone,
            reason: FlushReason::Alone,
            head_seq: m.seq,
        });
        for (li, lane) in self.lanes.iter().enumerate() {
            let Some(head) = lane.members.front() else {
                continue;
            };
            if best.is_some_and(|b| b.head_seq < head.seq) {
                continue;
            }
            let reason = if lane.items >= u64::from(qp.max_batch_size) {
                FlushReason::Full
            } else if now >= head.enqueued + qp.max_latency {
                FlushReason::Deadline
            } else if adaptive.enabled
                && utilization(&lane.key).is_some_and(|u| u < adaptive.target_utilization)
            {
                FlushReason::Adaptive
            } else {
                continue;
            };
            best = Some(Candidate {
                source: Source::Lane(li),
                reason,
                head_seq: head.seq,
            });
        }
        best
    }

    /// Removes the candidate's batch, updating counters.
    fn take(
        &mut self,
        qi: usize,
        qp: &QueuePolicy,
        c: Candidate,
        now: Instant,
        out: &mut Vec<T>,
    ) -> (BatchInfo, Option<K>) {
        let max = u64::from(qp.max_batch_size);
        let mut key = None;
        let mut items: u64 = 0;
        let mut members = 0usize;
        let mut oldest = now;
        let stats = &mut self.stats;
        let mut emit = |m: Member<T>, items: &mut u64| {
            *items += u64::from(m.items);
            if members == 0 {
                oldest = m.enqueued;
            }
            members += 1;
            let waited = now.saturating_duration_since(m.enqueued);
            stats
                .queued_us
                .record(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX));
            note_gone(stats, &m);
            out.push(m.payload);
        };
        match c.source {
            Source::Alone => {
                if let Some(m) = self.alone.pop_front() {
                    emit(m, &mut items);
                }
            }
            Source::Lane(li) => {
                let lane = &mut self.lanes[li];
                while let Some(m) = lane.members.front() {
                    let fits = items + u64::from(m.items) <= max;
                    if !fits && items > 0 {
                        break;
                    }
                    let Some(m) = lane.members.pop_front() else {
                        break;
                    };
                    lane.items -= u64::from(m.items);
                    emit(m, &mut items);
                }
                // Move the key out of an emptied lane; clone it from a lane that stays.
                key = match self.drop_lane_if_empty(li) {
                    Some(k) => Some(k),
                    None => Some(self.lanes[li].key.clone()),
                };
            }
        }
        self.stats.flushes[c.reason.index()] += 1;
        self.stats.batch_size.record(members as u64);
        let info = BatchInfo {
            queue: QueueId(qi),
            reason: c.reason,
            members,
            items,
            oldest,
        };
        (info, key)
    }

    /// Drops lane `li` if it is empty, returning its key.
    fn drop_lane_if_empty(&mut self, li: usize) -> Option<K> {
        if !self.lanes[li].members.is_empty() {
            return None;
        }
        let lane = self.lanes.swap_remove(li);
        self.index.remove(&lane.key);
        if let Some(moved) = self.lanes.get(li) {
            if let Some(at) = self.index.get_mut(&moved.key) {
                *at = li;
            }
        }
        Some(lane.key)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
