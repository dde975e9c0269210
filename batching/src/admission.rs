//! Flow control: `maxConcurrentInferences` split into per-shard shares.
//!
//! The gateway-wide budget (`InferenceConfig.spec.resourceManagement.
//! maxConcurrentInferences`, 100 in the seed) is divided among the shards; each
//! shard's [`Admission`] holds `share` permits and decides alone, without locks. The
//! control thread collects every shard's [`Admission::demand`] and calls the pure
//! [`rebalance`] to move shares to where the demand is, then hands each shard its new
//! share ([`Admission::set_share`]).
//!
//! # Decision ([`Admission::try_acquire`])
//! With `priority < sheddable_below` (default **0**: negative priorities are
//! sheddable, as in the Gateway API Inference Extension):
//! 1. endpoints saturated ([`Admission::set_saturated`]) and sheddable → **Shed**;
//! 2. a free permit → **Admit** (waiters exist only when no permit is free);
//! 3. sheddable → **Shed** (sheddable requests never wait);
//! 4. fewer than `max_waiting` (default **1024**) waiters → **Queued**;
//! 5. the wait queue is full: if its lowest-priority, newest waiter has a lower
//!    priority than the newcomer, that waiter is evicted
//!    ([`AdmissionEvent::Shed`]) and the newcomer queued; otherwise → **Shed**.
//!
//! A shed request gets 429 with `Retry-After: retry_after` (default **1 s**); when no
//! endpoint is healthy at all the gateway answers 503 instead (the router's call).
//!
//! # Waiting
//! Waiters are served by priority (higher first), FIFO within a priority. A freed
//! permit ([`Admission::release`]) or a larger share goes straight to the next
//! waiter ([`AdmissionEvent::Granted`]; the permit is already counted as in use). A
//! waiter past its `wait_until` (the queue's wait timeout) leaves with
//! [`AdmissionEvent::TimedOut`] (429 with `Retry-After`).
//!
//! # Shares and the global bound
//! Sum of shares == budget, so the gateway never admits more than the budget while
//! shares are stable. When a share shrinks below the permits in use, the shard
//! admits nothing until it is back under. Publishing [`rebalance`]'s targets at once
//! could let a growing shard admit before a shrinking one has drained (overshoot ≤
//! the sum of the decreases, for about one inference time). [`next_shares`] avoids
//! that: it lowers shares at once and raises them only as far as permits are
//! actually free, so `Σ max(in_use, share) ≤ budget` holds at every tick and the
//! gateway never exceeds the budget; it reaches the targets as soon as every shard
//! has `in_use ≤ target`. Control thread, every tick:
//! `target = rebalance(&demands, budget); shares = next_shares(&shares, &target, &in_use)`,
//! then `set_share` on each shard.
//!
//! # Costs
//! `try_acquire` on a free permit: O(1), no allocation. Queueing, granting, timeouts:
//! O(log waiters) (B-tree). `rebalance`: O(n log n) in the number of shards;
//! `next_shares`: O(n).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// Default priority below which requests are sheddable.
pub const DEFAULT_SHEDDABLE_BELOW: i32 = 0;
/// Default most waiters per shard.
pub const DEFAULT_MAX_WAITING: usize = 1024;
/// Default `Retry-After` hint.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Admission settings for one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Requests with a priority below this are sheddable.
    pub sheddable_below: i32,
    /// Most requests waiting for a permit on this shard.
    pub max_waiting: usize,
    /// `Retry-After` hint for shed requests.
    pub retry_after: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            sheddable_below: DEFAULT_SHEDDABLE_BELOW,
            max_waiting: DEFAULT_MAX_WAITING,
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }
}

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShedReason {
    /// Sheddable while every endpoint is saturated.
    Saturated,
    /// Sheddable while no permit is free.
    Exhausted,
    /// The wait queue is full of requests at least as urgent.
    QueueFull,
    /// Evicted from the wait queue by a more urgent request.
    Evicted,
}

impl ShedReason {
    /// Number of reasons.
    pub const COUNT: usize = 4;

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::Saturated => "saturated",
            ShedReason::Exhausted => "exhausted",
            ShedReason::QueueFull => "queue_full",
            ShedReason::Evicted => "evicted",
        }
    }
}

/// A shed request: answer 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// Why.
    pub reason: ShedReason,
    /// `Retry-After` hint.
    pub retry_after: Duration,
}

impl Shed {
    /// HTTP status to answer with.
    pub fn status(self) -> u16 {
        429
    }

    /// `Retry-After` header value in whole seconds (rounded up, at least 1).
    pub fn retry_after_secs(self) -> u64 {
        let s = self.retry_after.as_secs();
        let s = if self.retry_after.subsec_nanos() > 0 {
            s + 1
        } else {
            s
        };
        s.max(1)
    }
}

/// Names a waiting request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaitTicket {
    priority: i32,
    seq: u64,
}

impl WaitTicket {
    /// The priority it waits with.
    pub fn priority(self) -> i32 {
        self.priority
    }
}

/// The answer to [`Admission::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an admitted request holds a permit until `release`"]
pub enum Decision {
    /// Go ahead; call [`Admission::release`] when the inference is over.
    Admit,
    /// Wait for [`AdmissionEvent::Granted`] with this ticket.
    Queued(WaitTicket),
    /// Refuse with 429.
    Shed(Shed),
}

/// Something that happened to a waiter ([`Admission::poll_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionEvent {
    /// It now holds a permit.
    Granted(WaitTicket),
    /// It was evicted by a more urgent request: answer 429.
    Shed(WaitTicket, Shed),
    /// It waited past its `wait_until`: answer 429.
    TimedOut(WaitTicket),
}

/// Admission counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdmissionStats {
    /// Admitted at once.
    pub admitted: u64,
    /// Queued.
    pub queued: u64,
    /// Granted after waiting.
    pub granted: u64,
    /// Shed, by reason (index with `ShedReason as usize`).
    pub shed: [u64; ShedReason::COUNT],
    /// Timed out while waiting.
    pub timed_out: u64,
    /// Cancelled while waiting.
    pub cancelled: u64,
}

/// One shard's permits and wait queue.
#[derive(Debug)]
pub struct Admission {
    cfg: AdmissionConfig,
    share: u32,
    in_use: u32,
    saturated: bool,
    /// (priority desc, arrival) → wait_until.
    waiters: BTreeMap<(Reverse<i32>, u64), Option<Instant>>,
    deadlines: BTreeSet<(Instant, Reverse<i32>, u64)>,
    events: VecDeque<AdmissionEvent>,
    next_seq: u64,
    stats: AdmissionStats,
}

impl Admission {
    /// A shard holding `share` permits.
    pub fn new(share: u32, cfg: AdmissionConfig) -> Self {
        Admission {
            cfg,
            share,
            in_use: 0,
            saturated: false,
            waiters: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            events: VecDeque::new(),
            next_seq: 0,
            stats: AdmissionStats::default(),
        }
    }

    /// Asks for a permit (module docs for the rules). `wait_until` bounds the wait
    /// if the request is queued (`None`: no bound).
    pub fn try_acquire(&mut self, priority: i32, wait_until: Option<Instant>) -> Decision {
        let sheddable = priority < self.cfg.sheddable_below;
        if sheddable && self.saturated {
            return self.shed(ShedReason::Saturated);
        }
        if self.in_use < self.share && self.waiters.is_empty() {
            self.in_use += 1;
            self.stats.admitted += 1;
            return Decision::Admit;
        }
        if sheddable {
            return self.shed(ShedReason::Exhausted);
        }
        if self.waiters.len() >= self.cfg.max_waiting.max(1) {
            let last = self.waiters.last_key_value().map(|(&k, _)| k);
            match last {
                Some(k) if k.0 .0 < priority => {
                    self.remove_waiter(k);
                    let shed = self.shed_value(ShedReason::Evicted);
                    self.events.push_back(AdmissionEvent::Shed(
                        WaitTicket {
                            priority: k.0 .0,
                            seq: k.1,
                        },
                        shed,
                    ));
                }
                _ => return self.shed(ShedReason::QueueFull),
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.waiters.insert((Reverse(priority), seq), wait_until);
        if let Some(at) = wait_until {
            self.deadlines.insert((at, Reverse(priority), seq));
        }
        self.stats.queued += 1;
        Decision::Queued(WaitTicket { priority, seq })
    }

    /// Returns a permit (an admitted or granted request finished); the permit goes
    /// to the next waiter if there is one ([`AdmissionEvent::Granted`]).
    pub fn release(&mut self) {
        debug_assert!(self.in_use > 0, "release without a permit");
        self.in_use = self.in_use.saturating_sub(1);
        self.grant();
    }

    /// Withdraws a waiter (client gone); `false` if it is no longer waiting. A
    /// ticket already granted holds a permit: `release` it instead.
    pub fn cancel(&mut self, ticket: WaitTicket) -> bool {
        let removed = self.remove_waiter((Reverse(ticket.priority), ticket.seq));
        if removed {
            self.stats.cancelled += 1;
        }
        removed
    }

    /// Sets this shard's share (from [`rebalance`]); a larger share wakes waiters.
    pub fn set_share(&mut self, share: u32) {
        self.share = share;
        self.grant();
    }

    /// Whether every endpoint is saturated (from the routing snapshot); sheddable
    /// requests are refused while it is so.
    pub fn set_saturated(&mut self, saturated: bool) {
        self.saturated = saturated;
    }

    /// The next event: grants and evictions first, then timeouts due at `now`.
    pub fn poll_event(&mut self, now: Instant) -> Option<AdmissionEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        let &(at, prio, seq) = self.deadlines.first()?;
        if at > now {
            return None;
        }
        self.remove_waiter((prio, seq));
        self.stats.timed_out += 1;
        Some(AdmissionEvent::TimedOut(WaitTicket {
            priority: prio.0,
            seq,
        }))
    }

    /// The earliest waiter timeout (for the shard's timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _, _)| at)
    }

    /// Permits in use plus requests waiting: what [`rebalance`] distributes by.
    pub fn demand(&self) -> u32 {
        let waiting = u32::try_from(self.waiters.len()).unwrap_or(u32::MAX);
        self.in_use.saturating_add(waiting)
    }

    /// This shard's share.
    pub fn share(&self) -> u32 {
        self.share
    }

    /// Permits in use.
    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Requests waiting with exactly this priority (`gateway_queue_depth{priority}`).
    pub fn waiting_at(&self, priority: i32) -> usize {
        self.waiters
            .range((Reverse(priority), 0)..=(Reverse(priority), u64::MAX))
            .count()
    }

    /// Counters.
    pub fn stats(&self) -> &AdmissionStats {
        &self.stats
    }

    fn shed_value(&mut self, reason: ShedReason) -> Shed {
        self.stats.shed[reason as usize] += 1;
        Shed {
            reason,
            retry_after: self.cfg.retry_after,
        }
    }

    fn shed(&mut self, reason: ShedReason) -> Decision {
        Decision::Shed(self.shed_value(reason))
    }

    fn remove_waiter(&mut self, key: (Reverse<i32>, u64)) -> bool {
        match self.waiters.remove(&key) {
            Some(deadline) => {
                if let Some(at) = deadline {
                    self.deadlines.remove(&(at, key.0, key.1));
                }
                true
            }
            None => false,
        }
    }

    fn grant(&mut self) {
        while self.in_use < self.share {
            let Some(((prio, seq), deadline)) = self.waiters.pop_first() else {
                break;
            };
            if let Some(at) = deadline {
                self.deadlines.remove(&(at, prio, seq));
            }
            self.in_use += 1;
            self.stats.granted += 1;
            self.events.push_back(AdmissionEvent::Granted(WaitTicket {
                priority: prio.0,
                seq,
            }));
        }
    }
}

/// The gateway-wide budget (`maxConcurrentInferences`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Total permits across shards.
    pub total: u32,
}

impl Budget {
    /// Shares before any demand is known: an even split, the remainder to the first
    /// shards.
    pub fn initial(self, shards: usize) -> Vec<u32> {
        rebalance(&vec![0; shards], self.total)
    }

    /// [`rebalance`] of this budget.
    pub fn rebalance(self, demands: &[u32]) -> Vec<u32> {
        rebalance(demands, self.total)
    }
}

/// Redistributes `total` permits over shards with the given demands
/// ([`Admission::demand`]).
///
/// Rules: the shares sum to `total`; with `total ≥ shards` every shard keeps ≥ 1
/// (with fewer permits, the busiest shards get one each). Above that floor, permits
/// are **water-filled** (max-min fair): every shard gets its demand if they all fit;
/// otherwise shards below a common level get their demand and the others the level,
/// so one flooded shard cannot take the permits a moderately busy shard needs. Permits
/// left once every demand is met are spread evenly, so idle shards keep headroom for
/// a burst. Leftover single permits go to the busiest shards first (ties: lower
/// index). A busier shard never gets a smaller share.
pub fn rebalance(demands: &[u32], total: u32) -> Vec<u32> {
    let n = demands.len();
    let mut shares = vec![0u64; n];
    if n == 0 {
        return Vec::new();
    }
    // Busiest first, ties by index.
    let mut busiest: Vec<usize> = (0..n).collect();
    busiest.sort_by(|&a, &b| demands[b].cmp(&demands[a]).then(a.cmp(&b)));
    let total64 = u64::from(total);
    let n64 = n as u64;
    if total64 < n64 {
        for &i in busiest.iter().take(n.min(total as usize)) {
            shares[i] = 1;
        }
        return to_u32(shares);
    }
    shares.fill(1);
    let mut left = total64 - n64;
    let extra = |i: usize| u64::from(demands[i].saturating_sub(1));
    // Ascending demand: satisfy shards while their demand is under the level.
    let ascending: Vec<usize> = busiest.iter().rev().copied().collect();
    let mut unmet = n64;
    let mut k = 0;
    while k < n {
        let i = ascending[k];
        let e = extra(i);
        if e.saturating_mul(unmet) > left {
            break;
        }
        shares[i] += e;
        left -= e;
        unmet -= 1;
        k += 1;
    }
    if k < n {
        // The rest share what is left evenly; remainders to the busiest.
        let level = left / unmet;
        let rem = left % unmet;
        for (j, &i) in ascending[k..].iter().rev().enumerate() {
            shares[i] += level + u64::from((j as u64) < rem);
        }
    } else {
        let each = left / n64;
        let rem = left % n64;
        for (j, &i) in busiest.iter().enumerate() {
            shares[i] += each + u64::from((j as u64) < rem);
        }
    }
    to_u32(shares)
}

/// The shares to publish now on the way from `current` to `target` (a
/// [`rebalance`] result; its sum is the budget), given each shard's permits in use
/// ([`Admission::in_use`]).
///
/// Decreases apply at once; increases only as far as the budget has room:
/// with `held_i = max(in_use_i, share_i)`, raising a share costs the part above
/// `held_i`, and the costs never exceed `budget − Σ held`. Hence if
/// `Σ max(in_use, current) ≤ budget` before, `Σ max(in_use, result) ≤ budget` after
/// (no shard can admit past the budget), and the result equals `target` whenever
/// every `in_use_i ≤ target_i`. Room is handed out in shard order. Slices of
/// different lengths are read up to the shortest.
pub fn next_shares(current: &[u32], target: &[u32], in_use: &[u32]) -> Vec<u32> {
    let n = current.len().min(target.len()).min(in_use.len());
    let budget: u64 = target[..n].iter().map(|&t| u64::from(t)).sum();
    let mut shares: Vec<u64> = (0..n)
        .map(|i| u64::from(current[i].min(target[i])))
        .collect();
    let held = |i: usize, s: u64| s.max(u64::from(in_use[i]));
    let committed: u64 = (0..n).map(|i| held(i, shares[i])).sum();
    let mut free = budget.saturating_sub(committed);
    for i in 0..n {
        let want = u64::from(target[i]);
        if want <= shares[i] {
            continue;
        }
        let h = held(i, shares[i]);
        let reach = want.min(h + free);
        free -= reach.saturating_sub(h);
        shares[i] = shares[i].max(reach);
    }
    to_u32(shares)
}

fn to_u32(shares: Vec<u64>) -> Vec<u32> {
    // Every share is ≤ total, a u32.
    shares
        .into_iter()
        .map(|s| u32::try_from(s).unwrap_or(u32::MAX))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
