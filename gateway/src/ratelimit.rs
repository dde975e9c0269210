//! Local rate limits: `SecurityPolicy.spec.rateLimit` (`default` and `perModel`
//! `{requests, unit}`), per client identity, exact across shards, with no lock on
//! the request path.
//!
//! # What is limited
//! The key is (SecurityPolicy, client identity, model-or-default): a model with
//! its own `perModel` entry has its own bucket; every other model (and a request
//! without a model) shares the policy's `default` bucket. The identity is the
//! authenticated JWT `sub` when there is one, else the client IP: the TCP peer,
//! or — only when the peer is one of `--trusted-proxies` — the rightmost
//! `X-Forwarded-For` address that is not itself a trusted proxy ([`client_ip`]).
//!
//! # The algorithm: one atomic GCRA cell per key
//! GCRA (the generic cell rate algorithm, a token bucket kept as one number): a
//! limit of L requests per period P has an emission interval T = P/L and admits a
//! burst of L. Each key stores its theoretical arrival time (TAT, ns since the
//! limiter's epoch). A request at `now` computes `tat' = max(tat, now) + T` and is
//! admitted iff `tat' - now <= P`; admission stores `tat'` with one
//! compare-and-swap ([`gcra`] is the pure step, unit-tested on a virtual clock).
//! Every shard updates the same cell, so the limit is exact across shards: the
//! CAS linearises all admissions of a key, whichever shard they arrive on.
//!
//! The cells live in one process-wide [`papaya::HashMap`] (lock-free reads and
//! inserts), pre-sized to `--rate-limit-max-keys`, keyed by a 128-bit keyed hash
//! of (policy, identity, bucket) with per-process random keys (a client cannot
//! aim at a collision; with 2^-128 odds per pair none happens by chance). A known
//! key costs one map lookup and one CAS and allocates nothing; a new key
//! allocates its map entry once.
//!
//! Why not per-shard budgets drawn in batches from a shared counter (as
//! `admit` shares `maxConcurrentInferences`): a permit batch held by one
//! shard is unavailable to the others, so a limit of 10/minute reached through two
//! shards would refuse requests while permits sit unused (not exact), and a
//! refill needs a clock-driven refill protocol between shards. The shared GCRA
//! cell is exact by construction. Measured (`bench/benches/rate_limit.rs`,
//! `bench/results/micro.md`, 2-vCPU VM): a known key's admission (map pin +
//! lookup + CAS) 16 ns, 44 ns while another core hammers the same key; the key
//! hash (two SipHash passes) 90 ns; 115 ns per request in all. A batch draw
//! costs under 1 ns, but the difference is noise next to a route match
//! (0.2–3 µs), and only the shared cell is exact.
//!
//! # Memory bound: identities are attacker-controlled
//! At most `--rate-limit-max-keys` keys (default 100,000, about 100 B each) are
//! tracked. A key whose TAT is at or before `now` is idle: its state equals a
//! fresh key's, so forgetting it loses nothing. When the table is full, a new key
//! first sweeps the table for idle keys (at most one sweep per
//! [`SWEEP_EVERY_NS`]); if none is idle the request is refused as over the limit
//! (fail closed: GPUs stay protected; [`Verdict::Full`]). Eviction marks a cell
//! dead ([`DEAD`]) with a CAS before removing it, so a request racing with the
//! eviction either lands before the mark (the cell was not idle any more and the
//! eviction fails) or sees the mark and retries on a fresh entry: exactness holds
//! through eviction too.
//!
//! # Token limits
//! A value may limit `tokens` per unit as well as (or instead of) `requests`
//! (an extension of the seed's `{requests, unit}`). A token cell is the same
//! GCRA cell, charged after the answer with the tokens it used ([`charge`],
//! debt allowed: the response's `usage`, or an estimate, [`tokens_used`]) and
//! only read before a request ([`over_burst`]): a client whose answers used
//! its budget is refused until time has paid the debt back, with the
//! `x-ratelimit-*-tokens` headers. One in-flight request can overshoot by its
//! own size; no request is cut off mid-answer.
//!
//! # Global limits
//! With `--rate-limit-redis`, request limits hold for the fleet of replicas:
//! `ratelimit_global` (leases of permits from one GCRA cell per key
//! in Redis). Token limits stay per replica.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use shardgate_routing::config::{RateLimit, RateLimitUnit, RateLimitValue};

/// A cell evicted from the table: never admits again (racing requests retry).
pub const DEAD: u64 = u64::MAX;

/// At most one full sweep for idle keys per this many ns (100 ms), so a flood of
/// new identities against a full table costs one sweep, not one per request.
pub const SWEEP_EVERY_NS: u64 = 100_000_000;

/// Default `--rate-limit-max-keys`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// One limit (of requests, or of tokens) in the form GCRA uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests (or tokens) per period (≥ 1).
    pub requests: u32,
    /// The period, ns.
    pub period_ns: u64,
    /// The emission interval T = period / requests, ns (≥ 1).
    pub interval_ns: u64,
}

impl Limit {
    /// `amount` per `unit` (0 is refused by validation; it is read as 1 here).
    pub fn new(amount: u32, unit: RateLimitUnit) -> Self {
        let requests = amount.max(1);
        let period_ns = unit.duration().as_nanos() as u64;
        Limit {
            requests,
            period_ns,
            interval_ns: (period_ns / u64::from(requests)).max(1),
        }
    }

    /// The request limit of a policy value (`None` when it limits tokens only).
    pub fn of(v: RateLimitValue) -> Option<Self> {
        v.requests.map(|n| Limit::new(n, v.unit))
    }

    /// The token limit of a policy value (`None` when it limits requests only).
    pub fn tokens_of(v: RateLimitValue) -> Option<Self> {
        v.tokens.map(|n| Limit::new(n, v.unit))
    }
}

/// What a limit counts (it picks the `x-ratelimit-*-requests` or `-tokens`
/// header names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Requests, counted when admitted.
    Requests,
    /// Prompt + completion tokens, charged from the response's `usage`.
    Tokens,
}

/// The limits of one bucket of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule<'a> {
    /// The bucket the request falls in.
    pub bucket: Bucket<'a>,
    /// Its request limit.
    pub requests: Option<Limit>,
    /// Its token limit.
    pub tokens: Option<Limit>,
}

/// Which bucket of a policy a request falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket<'a> {
    /// The model's own `perModel` entry.
    Model(&'a str),
    /// The policy's `default`.
    Default,
}

/// The limits that apply to `model` under `rl`: its `perModel` entry, else
/// `default`, else none.
pub fn rule_for<'a>(rl: &'a RateLimit, model: Option<&'a str>) -> Option<Rule<'a>> {
    let (v, bucket) = match model.and_then(|m| rl.per_model.get_key_value(m)) {
        Some((name, v)) => (*v, Bucket::Model(name.as_str())),
        None => (rl.default?, Bucket::Default),
    };
    Some(Rule {
        bucket,
        requests: Limit::of(v),
        tokens: Limit::tokens_of(v),
    })
}

/// Who a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity<'a> {
    /// The authenticated JWT `sub`.
    Subject(&'a str),
    /// The client IP.
    Ip(IpAddr),
}

impl<'a> Identity<'a> {
    /// The subject when authentication gave one, else the IP.
    pub fn of(subject: Option<&'a str>, ip: IpAddr) -> Self {
        match subject {
            Some(s) => Identity::Subject(s),
            None => Identity::Ip(ip),
        }
    }
}

/// The result of one GCRA step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Admitted: store `tat`.
    Admit {
        /// The new TAT.
        tat: u64,
    },
    /// Over the limit: retry after `wait_ns`.
    Refuse {
        /// Time until one more request would be admitted, ns.
        wait_ns: u64,
    },
}

/// One pure GCRA decision: a request at `now` against stored `tat`.
pub fn gcra(tat: u64, now: u64, limit: &Limit) -> Step {
    let new_tat = tat.max(now).saturating_add(limit.interval_ns);
    let ahead = new_tat - now;
    if ahead <= limit.period_ns {
        Step::Admit { tat: new_tat }
    } else {
        Step::Refuse {
            wait_ns: ahead - limit.period_ns,
        }
    }
}

/// One pure weighted GCRA charge (token limits): `n` units consumed at `now`
/// against stored `tat`, charged after the fact, so debt is allowed:
/// `tat' = max(tat, now) + n*T`. A key in debt is refused by [`over_burst`]
/// until time has paid it back; one in-flight request can therefore overshoot
/// the limit by its own size.
pub fn charge(tat: u64, now: u64, n: u64, limit: &Limit) -> u64 {
    tat.max(now)
        .saturating_add(n.saturating_mul(limit.interval_ns))
}

/// Whether a token cell is over its burst at `now` (`tat - now > period`):
/// the next request on the key is refused before it is sent.
pub fn over_burst(tat: u64, now: u64, limit: &Limit) -> bool {
    tat.saturating_sub(now) > limit.period_ns
}

/// What a request learns from the limiter (the numbers of its
/// `x-ratelimit-*-requests` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted.
    Allowed(Quota),
    /// Over the limit: 429.
    Limited {
        /// What the headers say.
        quota: Quota,
        /// `Retry-After`, ns.
        retry_after_ns: u64,
    },
    /// The table is full of active keys and this is a new one: 429 (fail closed).
    Full,
}

/// The numbers of the `x-ratelimit-*-requests` (or `-tokens`) headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Which headers: requests or tokens.
    pub counted: Counted,
    /// `x-ratelimit-limit-requests`.
    pub limit: u32,
    /// `x-ratelimit-remaining-requests`.
    pub remaining: u32,
    /// `x-ratelimit-reset-requests`: ns until the bucket is full again.
    pub reset_ns: u64,
}

fn quota(tat: u64, now: u64, limit: &Limit) -> Quota {
    quota_of(Counted::Requests, tat, now, limit)
}

fn quota_of(counted: Counted, tat: u64, now: u64, limit: &Limit) -> Quota {
    let used = tat.saturating_sub(now);
    let room = limit.period_ns.saturating_sub(used) / limit.interval_ns;
    Quota {
        counted,
        limit: limit.requests,
        remaining: room.min(u64::from(limit.requests)) as u32,
        reset_ns: used,
    }
}

/// One key's cell: its TAT, or [`DEAD`].
#[derive(Debug)]
pub struct Cell {
    tat: AtomicU64,
}

/// Hashes a `u128` key that is already a keyed hash: takes its low 64 bits.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassThrough;

/// The [`PassThrough`] hasher's state.
#[derive(Debug, Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= v as u64;
    }
}

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

/// The process-wide table of GCRA cells, shared by every shard.
pub struct RateLimiter {
    map: papaya::HashMap<u128, Cell, PassThrough>,
    live: AtomicUsize,
    max_keys: usize,
    last_sweep: AtomicU64,
    seeds: [std::collections::hash_map::RandomState; 2],
    epoch: Instant,
}

impl RateLimiter {
    /// A table for at most `max_keys` keys (at least 1), pre-sized so it never
    /// grows while under the cap.
    pub fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        RateLimiter {
            map: papaya::HashMap::builder()
                .capacity(max_keys.saturating_mul(2))
                .hasher(PassThrough)
                .build(),
            live: AtomicUsize::new(0),
            max_keys,
            last_sweep: AtomicU64::new(0),
            seeds: [Default::default(), Default::default()],
            epoch: Instant::now(),
        }
    }

    /// The limiter's clock: ns since it was made.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The 128-bit key of (policy, identity, bucket).
    pub fn key(&self, policy: &str, identity: Identity<'_>, bucket: Bucket<'_>) -> u128 {
        let hash = |s: &std::collections::hash_map::RandomState| {
            let mut h = s.build_hasher();
            policy.hash(&mut h);
            match identity {
                Identity::Subject(sub) => {
                    0u8.hash(&mut h);
                    sub.hash(&mut h);
                }
                Identity::Ip(IpAddr::V4(a)) => {
                    1u8.hash(&mut h);
                    a.octets().hash(&mut h);
                }
                Identity::Ip(IpAddr::V6(a)) => {
                    2u8.hash(&mut h);
                    a.octets().hash(&mut h);
                }
            }
            match bucket {
                Bucket::Model(m) => {
                    0u8.hash(&mut h);
                    m.hash(&mut h);
                }
                Bucket::Default => 1u8.hash(&mut h),
            }
            h.finish()
        };
        (u128::from(hash(&self.seeds[0])) << 64) | u128::from(hash(&self.seeds[1]))
    }

    /// Count one request of `key` under `limit` at `now` (ns on [`Self::now`]'s
    /// clock, or a virtual one in tests).
    pub fn check(&self, key: u128, limit: &Limit, now: u64) -> Verdict {
        let stepped = self.update(key, now, |cur| match gcra(cur, now, limit) {
            Step::Admit { tat } => Ok(tat),
            Step::Refuse { wait_ns } => Err((cur, wait_ns)),
        });
        match stepped {
            None => Verdict::Full,
            Some(Ok(tat)) => Verdict::Allowed(quota(tat, now, limit)),
            Some(Err((cur, wait_ns))) => Verdict::Limited {
                quota: quota(cur, now, limit),
                retry_after_ns: wait_ns,
            },
        }
    }

    /// Whether the token cell `key` admits one more request at `now` (it is
    /// not in debt beyond its burst): the quota, else the quota and the wait.
    /// Reads only; an unknown key has its whole burst.
    pub fn peek_tokens(&self, key: u128, limit: &Limit, now: u64) -> Result<Quota, (Quota, u64)> {
        let tat = match self.map.pin().get(&key) {
            Some(c) => c.tat.load(Ordering::Acquire),
            None => 0,
        };
        let tat = if tat == DEAD { 0 } else { tat };
        let q = quota_of(Counted::Tokens, tat, now, limit);
        if over_burst(tat, now, limit) {
            Err((q, tat - now - limit.period_ns))
        } else {
            Ok(q)
        }
    }

    /// Charge `n` tokens to the token cell `key` at `now` (debt allowed, see
    /// [`charge`]). `false` when the table is full and the key is new (the
    /// tokens go uncounted; the request limit refuses new keys then anyway).
    pub fn charge_tokens(&self, key: u128, limit: &Limit, n: u64, now: u64) -> bool {
        self.update(key, now, |cur| Ok::<u64, ()>(charge(cur, now, n, limit)))
            .is_some()
    }

    /// One CAS-linearised step on `key`'s cell (inserted when new): `step`
    /// maps the current TAT to the one to store (`Ok`), or refuses (`Err`, and
    /// nothing is stored). `None` when the table is full of active keys.
    fn update<R>(
        &self,
        key: u128,
        now: u64,
        mut step: impl FnMut(u64) -> Result<u64, R>,
    ) -> Option<Result<u64, R>> {
        let map = self.map.pin();
        loop {
            let cell = match map.get(&key) {
                Some(c) => c,
                None => {
                    if self.live.load(Ordering::Relaxed) >= self.max_keys {
                        self.sweep_at_most_every(now);
                        if self.live.load(Ordering::Relaxed) >= self.max_keys {
                            return None;
                        }
                    }
                    match map.try_insert(
                        key,
                        Cell {
                            tat: AtomicU64::new(0),
                        },
                    ) {
                        Ok(c) => {
                            self.live.fetch_add(1, Ordering::Relaxed);
                            c
                        }
                        Err(e) => e.current,
                    }
                }
            };
            let mut cur = cell.tat.load(Ordering::Acquire);
            loop {
                if cur == DEAD {
                    // Evicted under us: drop the dead entry (whoever removes it
                    // uncounts it) and start again on a fresh one.
                    if let Ok(Some(_)) =
                        map.remove_if(&key, |_, c| c.tat.load(Ordering::Acquire) == DEAD)
                    {
                        self.live.fetch_sub(1, Ordering::Relaxed);
                    }
                    break;
                }
                match step(cur) {
                    Err(r) => return Some(Err(r)),
                    Ok(tat) => match cell.tat.compare_exchange_weak(
                        cur,
                        tat,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Some(Ok(tat)),
                        Err(actual) => cur = actual,
                    },
                }
            }
        }
    }

    fn sweep_at_most_every(&self, now: u64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < SWEEP_EVERY_NS {
            return;
        }
        if self
            .last_sweep
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.sweep(now);
        }
    }

    /// Forget every idle key (TAT at or before `now`); returns how many went.
    pub fn sweep(&self, now: u64) -> usize {
        let map = self.map.pin();
        let mut freed = 0;
        for (key, cell) in map.iter() {
            let tat = cell.tat.load(Ordering::Acquire);
            if tat == DEAD || tat > now {
                continue;
            }
            if cell
                .tat
                .compare_exchange(tat, DEAD, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            if let Ok(Some(_)) = map.remove_if(key, |_, c| c.tat.load(Ordering::Acquire) == DEAD) {
                self.live.fetch_sub(1, Ordering::Relaxed);
                freed += 1;
            }
        }
        freed
    }
}

/// What the request-level step needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestKey<'a> {
    /// `namespace/name` of the SecurityPolicy of the matched rule
    /// ([`shardgate_routing::RouteMatch::security`]).
    pub policy: Option<&'a str>,
    /// The request's model.
    pub model: Option<&'a str>,
    /// The authenticated JWT `sub`, when JWT authentication gave one.
    pub subject: Option<&'a str>,
    /// The TCP peer.
    pub peer: IpAddr,
    /// The first `X-Forwarded-For` value.
    pub forwarded_for: Option<&'a [u8]>,
}

/// The token cell of a request key: the same keyed hash with a fixed tweak (a
/// bijection, so token and request keys collide no more often than any two
/// keyed hashes).
pub fn token_key(key: u128) -> u128 {
    key ^ 0x746f_6b65_6e73_0000_0000_0000_0000_0001
}

/// What to charge once a request's answer is out: its token cell and limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCharge {
    /// The token cell ([`token_key`]).
    pub key: u128,
    /// The token limit.
    pub limit: Limit,
}

/// An admitted request's quotas (what its success headers say) and the token
/// charge to make when its answer is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Admitted {
    /// `x-ratelimit-*-requests` after this request.
    pub requests: Option<Quota>,
    /// `x-ratelimit-*-tokens` before this request's tokens are charged.
    pub tokens: Option<Quota>,
    /// The token charge to make when the answer is out.
    pub charge: Option<TokenCharge>,
}

/// The rate-limit step's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted.
    Allowed(Admitted),
    /// Over a limit (the quota says which): 429.
    Limited {
        /// What the headers say.
        quota: Quota,
        /// `Retry-After`, ns.
        retry_after_ns: u64,
    },
    /// The table is full of active keys and this is a new one: 429 (fail closed).
    Full,
    /// The fleet's lease for the key is empty and a refill is on its way: ask
    /// again in `ratelimit_global::WAIT_STEP`.
    Wait,
    /// The fleet's limits cannot be checked (Redis unreachable) and
    /// `--rate-limit-redis-failure closed`: 429.
    Unavailable,
}

/// The rate-limit step of a request: `None` when no limit applies (no
/// SecurityPolicy, no `rateLimit`, or no entry for the model and no `default`),
/// else the outcome. The token limit is looked at first (a read: a request
/// refused for tokens takes no request permit), then the request limit counts
/// the request: in this replica's cells, or, with `global`, in the fleet's
/// (`ratelimit_global`). `gave_up`: the request waited for a lease
/// refill as long as it may; the failure mode decides. Allocates nothing for a
/// known key.
pub fn check_request(
    limiter: &RateLimiter,
    global: Option<&dyn FleetLimit>,
    table: &shardgate_routing::RoutingTable,
    proxies: &[IpNet],
    req: &RequestKey<'_>,
    gave_up: bool,
) -> Option<Outcome> {
    let policy = req.policy?;
    let rl = table.security_policy(policy)?.spec.rate_limit.as_ref()?;
    let rule = rule_for(rl, req.model)?;
    let ip = client_ip(req.peer, req.forwarded_for, proxies);
    let identity = Identity::of(req.subject, ip);
    let key = limiter.key(policy, identity, rule.bucket);
    let global = global.map(|g| (g, (policy, identity, rule.bucket)));
    Some(limiter.check_rule(key, &rule, limiter.now(), global, gave_up))
}

/// The fleet's limiter and the (policy, identity, bucket) a key stands for.
pub type Global<'a> = (&'a dyn FleetLimit, (&'a str, Identity<'a>, Bucket<'a>));

/// A request limit kept for a fleet of replicas (implemented by the Redis
/// leases of `ratelimit_global`; a trait so that this module does not import
/// it).
pub trait FleetLimit {
    /// Count one request of `key` (the triple `who`) under `limit`: the quota,
    /// or the outcome to answer (`Outcome::Wait` while a refill is on its
    /// way, unless `gave_up`). `local` is this replica's own cell, for the
    /// failure mode that falls back to it.
    fn count(
        &self,
        key: u128,
        who: (&str, Identity<'_>, Bucket<'_>),
        limit: &Limit,
        gave_up: bool,
        local: &dyn Fn(&Limit) -> Result<Quota, Outcome>,
    ) -> Result<Quota, Outcome>;
}

impl RateLimiter {
    /// [`check_request`] once the key is known.
    pub fn check_rule(
        &self,
        key: u128,
        rule: &Rule<'_>,
        now: u64,
        global: Option<Global<'_>>,
        gave_up: bool,
    ) -> Outcome {
        let mut tokens = None;
        let mut charge = None;
        if let Some(limit) = rule.tokens {
            let tkey = token_key(key);
            match self.peek_tokens(tkey, &limit, now) {
                Ok(q) => tokens = Some(q),
                Err((quota, retry_after_ns)) => {
                    return Outcome::Limited {
                        quota,
                        retry_after_ns,
                    }
                }
            }
            charge = Some(TokenCharge { key: tkey, limit });
        }
        let local = |limit: &Limit| match self.check(key, limit, now) {
            Verdict::Allowed(q) => Ok(q),
            Verdict::Limited {
                quota,
                retry_after_ns,
            } => Err(Outcome::Limited {
                quota,
                retry_after_ns,
            }),
            Verdict::Full => Err(Outcome::Full),
        };
        let requests = match (rule.requests, global) {
            (None, _) => None,
            (Some(limit), None) => match local(&limit) {
                Ok(q) => Some(q),
                Err(o) => return o,
            },
            (Some(limit), Some((g, who))) => match g.count(key, who, &limit, gave_up, &local) {
                Ok(q) => Some(q),
                Err(o) => return o,
            },
        };
        Outcome::Allowed(Admitted {
            requests,
            tokens,
            charge,
        })
    }
}

/// The tokens a finished request is charged: the response's `usage` when it
/// reported one, else an estimate (prompt: the request body's bytes / 4;
/// completion: the SSE events streamed, else the response body's bytes / 4).
pub fn tokens_used(
    prompt: Option<u64>,
    completion: Option<u64>,
    request_bytes: u64,
    events: u32,
    response_bytes: u64,
) -> u64 {
    let prompt = prompt.unwrap_or(request_bytes.div_ceil(4));
    let completion = completion.unwrap_or(if events > 0 {
        u64::from(events)
    } else {
        response_bytes.div_ceil(4)
    });
    prompt.saturating_add(completion)
}

/// An IP network of `--trusted-proxies`: an address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parse `10.0.0.0/8`, `fd00::/8` or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|e| format!("`{s}`: not an IP address ({e})"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0–{max}"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(ip))
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:80`,
/// `[::1]:80`).
fn parse_forwarded(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// The client IP a request is limited under: the peer, unless the peer is a
/// trusted proxy; then the rightmost `X-Forwarded-For` entry that is not a
/// trusted proxy (entries further left were written by the client and are not
/// believed). An unreadable entry stops the walk at the last trusted hop.
/// Allocates nothing.
pub fn client_ip(peer: IpAddr, xff: Option<&[u8]>, proxies: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted(peer, proxies) {
        return peer;
    }
    let Some(list) = xff.and_then(|v| std::str::from_utf8(v).ok()) else {
        return peer;
    };
    let mut hop = peer;
    for entry in list.rsplit(',') {
        match parse_forwarded(entry) {
            Some(ip) => {
                let ip = ip.to_canonical();
                hop = ip;
                if !trusted(ip, proxies) {
                    break;
                }
            }
            None => break,
        }
    }
    hop
}

impl Counted {
    /// The word for what is counted (`requests`, `tokens`).
    pub fn noun(self) -> &'static str {
        match self {
            Counted::Requests => "requests",
            Counted::Tokens => "tokens",
        }
    }
}

/// The `x-ratelimit-{limit,remaining,reset}-*` header names for `counted`.
pub fn header_names(counted: Counted) -> [&'static str; 3] {
    match counted {
        Counted::Requests => [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        Counted::Tokens => [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    }
}

/// Append the three `x-ratelimit-*` headers of `q` to a response head being
/// written (no allocation).
pub fn write_quota_headers(out: &mut Vec<u8>, q: &Quota) {
    quota_headers(q, |name, value| {
        shardgate_http::write::header(out, name, value)
    });
}

/// Hands the three `x-ratelimit-*` headers of `q` (name, value) to `put`, for
/// an HTTP/1.1 head ([`write_quota_headers`]) or an HTTP/2 header map.
pub fn quota_headers(q: &Quota, mut put: impl FnMut(&'static str, &[u8])) {
    let names = header_names(q.counted);
    let mut num = itoa::Buffer::new();
    put(names[0], num.format(q.limit).as_bytes());
    put(names[1], num.format(q.remaining).as_bytes());
    let mut reset = [0u8; 32];
    let z = fmt_reset(q.reset_ns, &mut reset);
    put(names[2], &reset[..z]);
}

/// Write a duration as OpenAI's reset headers do (`1s`, `6m0s`, `1h2m3s`),
/// rounded up to the second; returns the bytes used of `buf`.
pub fn fmt_reset(ns: u64, buf: &mut [u8; 32]) -> usize {
    let secs = ns.div_ceil(1_000_000_000);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut n = 0;
    let mut put = |v: u64, unit: u8, buf: &mut [u8; 32]| {
        let mut tmp = [0u8; 20];
        let mut k = 0;
        let mut v = v;
        loop {
            tmp[k] = b'0' + (v % 10) as u8;
            k += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for i in 0..k {
            buf[n + i] = tmp[k - 1 - i];
        }
        buf[n + k] = unit;
        n += k + 1;
    };
    if h > 0 {
        put(h, b'h', buf);
    }
    if h > 0 || m > 0 {
        put(m, b'm', buf);
    }
    put(s, b's', buf);
    n
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use shardgate_routing::config::RateLimitUnit;

    const SEC: u64 = 1_000_000_000;

    fn per_minute(n: u32) -> Limit {
        Limit::new(n, RateLimitUnit::Minute)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn units_and_intervals() {
        let day = Limit::new(1000, RateLimitUnit::Day);
        assert_eq!(day.period_ns, 86_400 * SEC);
        assert_eq!(day.interval_ns, 86_400 * SEC / 1000);
        let sec = Limit::of(RateLimitValue {
            requests: Some(4),
            tokens: None,
            unit: RateLimitUnit::Second,
        })
        .unwrap();
        assert_eq!(sec.interval_ns, SEC / 4);
        assert_eq!(per_minute(10).interval_ns, 6 * SEC);
    }

    #[test]
    fn burst_then_refill_on_a_virtual_clock() {
        let rl = RateLimiter::new(16);
        let lim = per_minute(3);
        let key = rl.key("ns/p", Identity::Ip(ip("10.0.0.1")), Bucket::Default);
        let t0 = 1000 * SEC;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            match rl.check(key, &lim, t0) {
                Verdict::Allowed(q) => remaining.push(q.remaining),
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(remaining, [2, 1, 0]);
        let Verdict::Limited {
            quota,
            retry_after_ns,
        } = rl.check(key, &lim, t0)
        else {
            panic!()
        };
        assert_eq!(retry_after_ns, 20 * SEC, "one interval (60s/3) to wait");
        assert_eq!((quota.limit, quota.remaining), (3, 0));
        assert_eq!(quota.reset_ns, 60 * SEC);
        // Just before the interval: still refused; at it: one more.
        assert!(matches!(
            rl.check(key, &lim, t0 + 20 * SEC - 1),
            Verdict::Limited { .. }
        ));
        assert!(matches!(
            rl.check(key, &lim, t0 + 20 * SEC),
            Verdict::Allowed(Quota { remaining: 0, .. })
        ));
        // A full period later the whole burst is back.
        let later = t0 + 200 * SEC;
        for want in [2, 1, 0] {
            assert_eq!(
                rl.check(key, &lim, later),
                Verdict::Allowed(Quota {
                    counted: Counted::Requests,
                    limit: 3,
                    remaining: want,
                    reset_ns: (3 - u64::from(want)) * 20 * SEC
                })
            );
        }
    }

    #[test]
    fn per_model_overrides_default_and_buckets_are_separate() {
        let spec: RateLimit = serde_yaml_ng::from_str(
            "default: {requests: 100, unit: minute}\nperModel:\n  gpt-large: {requests: 10, unit: minute}\n",
        )
        .unwrap();
        let r = rule_for(&spec, Some("gpt-large")).unwrap();
        assert_eq!(
            (r.requests.unwrap().requests, r.bucket, r.tokens),
            (10, Bucket::Model("gpt-large"), None)
        );
        let r = rule_for(&spec, Some("bert")).unwrap();
        assert_eq!(
            (r.requests.unwrap().requests, r.bucket),
            (100, Bucket::Default)
        );
        assert_eq!(rule_for(&spec, None).unwrap().bucket, Bucket::Default);
        let only_model: RateLimit =
            serde_yaml_ng::from_str("perModel:\n  a: {requests: 1, unit: second}\n").unwrap();
        assert!(rule_for(&only_model, Some("b")).is_none());

        let rl = RateLimiter::new(16);
        let who = Identity::Ip(ip("10.0.0.1"));
        let r = rule_for(&spec, Some("gpt-large")).unwrap();
        let (large, bl) = (r.requests.unwrap(), r.bucket);
        let r = rule_for(&spec, Some("bert")).unwrap();
        let (dflt, bd) = (r.requests.unwrap(), r.bucket);
        let k_large = rl.key("ns/p", who, bl);
        let k_dflt = rl.key("ns/p", who, bd);
        assert_ne!(k_large, k_dflt);
        for _ in 0..10 {
            assert!(matches!(
                rl.check(k_large, &large, SEC),
                Verdict::Allowed(_)
            ));
        }
        assert!(matches!(
            rl.check(k_large, &large, SEC),
            Verdict::Limited { .. }
        ));
        // The default bucket and another client are untouched.
        assert!(matches!(
            rl.check(k_dflt, &dflt, SEC),
            Verdict::Allowed(Quota { remaining: 99, .. })
        ));
        let other = rl.key("ns/p", Identity::Ip(ip("10.0.0.2")), bl);
        assert!(matches!(
            rl.check(other, &large, SEC),
            Verdict::Allowed(Quota { remaining: 9, .. })
        ));
        // The same subject string and another policy are other keys too.
        assert_ne!(rl.key("ns/q", who, bl), k_large);
        assert_ne!(rl.key("ns/p", Identity::Subject("10.0.0.1"), bl), k_large);
    }

    #[test]
    fn many_keys_are_capped_and_idle_ones_evicted() {
        let rl = RateLimiter::new(100);
        let lim = per_minute(2);
        let t0 = 10 * SEC;
        for i in 0..100u32 {
            let k = rl.key("p", Identity::Subject(&i.to_string()), Bucket::Default);
            assert!(matches!(rl.check(k, &lim, t0), Verdict::Allowed(_)));
        }
        assert_eq!(rl.len(), 100);
        // Full of active keys: a new one is refused, a known one still counted.
        let new = rl.key("p", Identity::Subject("new"), Bucket::Default);
        assert_eq!(rl.check(new, &lim, t0), Verdict::Full);
        let k0 = rl.key("p", Identity::Subject("0"), Bucket::Default);
        assert!(matches!(rl.check(k0, &lim, t0), Verdict::Allowed(_)));
        assert!(matches!(rl.check(k0, &lim, t0), Verdict::Limited { .. }));
        // Once they idle (one interval later, 30 s), the sweep frees them; key 0
        // used its whole burst, so it is still active and kept.
        let t1 = t0 + 31 * SEC;
        assert!(matches!(rl.check(new, &lim, t1), Verdict::Allowed(_)));
        assert_eq!(rl.len(), 2);
        assert!(matches!(rl.check(k0, &lim, t1), Verdict::Allowed(_)));
        assert!(matches!(rl.check(k0, &lim, t1), Verdict::Limited { .. }));
        // A swept key comes back fresh: same state as if it had stayed.
        let k5 = rl.key("p", Identity::Subject("5"), Bucket::Default);
        assert!(matches!(
            rl.check(k5, &lim, t1),
            Verdict::Allowed(Quota { remaining: 1, .. })
        ));
    }

    #[test]
    fn exact_across_threads() {
        let rl = std::sync::Arc::new(RateLimiter::new(1000));
        let lim = per_minute(1000);
        let key = rl.key("p", Identity::Subject("s"), Bucket::Default);
        let allowed = std::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (rl, allowed) = (rl.clone(), allowed.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if let Verdict::Allowed(_) = rl.check(key, &lim, SEC) {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                        // Evictions racing with admissions must not lose counts.
                        rl.sweep(SEC);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(allowed.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = [
            IpNet::parse("10.0.0.0/8").unwrap(),
            IpNet::parse("::1").unwrap(),
        ];
        let xff = Some(&b"6.6.6.6, 1.2.3.4, 10.1.1.1"[..]);
        // An untrusted peer's header is ignored.
        assert_eq!(client_ip(ip("8.8.8.8"), xff, &proxies), ip("8.8.8.8"));
        // Through trusted hops: the rightmost untrusted entry, not the spoofable left one.
        assert_eq!(client_ip(ip("10.0.0.9"), xff, &proxies), ip("1.2.3.4"));
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.9"), Some(b"[2001:db8::1]:443"), &proxies),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(ip("::1"), Some(b"5.5.5.5:80"), &proxies),
            ip("5.5.5.5")
        );
        // No header, or garbage at the right: the trusted hop itself.
        assert_eq!(client_ip(ip("10.0.0.9"), None, &proxies), ip("10.0.0.9"));
        assert_eq!(
            client_ip(ip("10.0.0.9"), Some(b"1.2.3.4, junk"), &proxies),
            ip("10.0.0.9")
        );
        // Nothing trusted by default.
        assert_eq!(client_ip(ip("10.0.0.9"), xff, &[]), ip("10.0.0.9"));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("nope").is_err());
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("9.9.9.9")));
        assert!(!IpNet::parse("0.0.0.0/0").unwrap().contains(ip("::2")));
    }

    #[test]
    fn weighted_charge_allows_debt_and_refuses_until_repaid() {
        // 1000 tokens per minute: T = 60 ms per token.
        let l = per_minute(1000);
        let mut tat = 0;
        let now = 1_000_000_000;
        tat = charge(tat, now, 600, &l);
        assert!(!over_burst(tat, now, &l));
        // One response overshoots: debt of 200 tokens beyond the burst.
        tat = charge(tat, now, 600, &l);
        assert_eq!(tat - now, 1200 * l.interval_ns);
        assert!(over_burst(tat, now, &l));
        // Refused until 200 tokens' worth of time has passed.
        assert!(over_burst(tat, now + 200 * l.interval_ns - 1, &l));
        assert!(!over_burst(tat, now + 200 * l.interval_ns, &l));
        // An idle key starts from now, not from its old TAT.
        let later = tat + 10 * l.period_ns;
        assert_eq!(charge(tat, later, 1, &l), later + l.interval_ns);
    }

    #[test]
    fn token_limits_refuse_once_in_debt_and_requests_then_count_nothing() {
        let spec: RateLimit = serde_yaml_ng::from_str(
            "perModel:\n  m: {requests: 100, tokens: 1000, unit: minute}\n  t: {tokens: 50, unit: second}\n",
        )
        .unwrap();
        let rl = RateLimiter::new(16);
        let who = Identity::Subject("alice");
        let rule = rule_for(&spec, Some("m")).unwrap();
        let key = rl.key("ns/p", who, rule.bucket);
        let t0 = 100 * SEC;
        let Outcome::Allowed(a) = rl.check_rule(key, &rule, t0, None, false) else {
            panic!()
        };
        let tq = a.tokens.unwrap();
        assert_eq!(
            (tq.counted, tq.limit, tq.remaining),
            (Counted::Tokens, 1000, 1000)
        );
        assert_eq!(a.requests.unwrap().remaining, 99);
        let c = a.charge.unwrap();
        assert_eq!(c.key, token_key(key));
        // The answer used 1,200 tokens: 200 in debt, the next request is refused
        // for tokens (and takes no request permit).
        assert!(rl.charge_tokens(c.key, &c.limit, 1200, t0));
        let Outcome::Limited {
            quota,
            retry_after_ns,
        } = rl.check_rule(key, &rule, t0, None, false)
        else {
            panic!()
        };
        assert_eq!((quota.counted, quota.remaining), (Counted::Tokens, 0));
        assert_eq!(retry_after_ns, 200 * c.limit.interval_ns);
        // The refused request took no request permit.
        let Verdict::Allowed(q) = rl.check(key, &rule.requests.unwrap(), t0) else {
            panic!()
        };
        assert_eq!(q.remaining, 98);
        // Once repaid, admitted again.
        let Outcome::Allowed(a) = rl.check_rule(key, &rule, t0 + retry_after_ns, None, false)
        else {
            panic!()
        };
        assert_eq!(a.tokens.unwrap().remaining, 0);
        // A tokens-only rule counts no requests.
        let rule = rule_for(&spec, Some("t")).unwrap();
        assert!(rule.requests.is_none());
        let key = rl.key("ns/p", who, rule.bucket);
        let Outcome::Allowed(a) = rl.check_rule(key, &rule, t0, None, false) else {
            panic!()
        };
        assert!(a.requests.is_none());
        assert_eq!(a.tokens.unwrap().limit, 50);
    }

    #[test]
    fn tokens_used_prefers_usage_and_estimates_otherwise() {
        assert_eq!(tokens_used(Some(10), Some(5), 999, 9, 999), 15);
        assert_eq!(tokens_used(None, Some(5), 40, 0, 0), 15);
        assert_eq!(tokens_used(Some(3), None, 0, 7, 500), 10, "SSE events");
        assert_eq!(tokens_used(Some(3), None, 0, 0, 41), 14, "body bytes / 4");
    }

    #[test]
    fn quota_headers_name_what_is_counted() {
        let mut out = Vec::new();
        let q = Quota {
            counted: Counted::Tokens,
            limit: 1000,
            remaining: 250,
            reset_ns: 45 * SEC,
        };
        write_quota_headers(&mut out, &q);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("x-ratelimit-limit-tokens: 1000\r\n"),
            "{text}"
        );
        assert!(
            text.contains("x-ratelimit-remaining-tokens: 250\r\n"),
            "{text}"
        );
        assert!(text.contains("x-ratelimit-reset-tokens: 45s\r\n"), "{text}");
    }

    #[test]
    fn reset_is_written_like_openai() {
        let f = |ns| {
            let mut b = [0u8; 32];
            let n = fmt_reset(ns, &mut b);
            String::from_utf8(b[..n].to_vec()).unwrap()
        };
        assert_eq!(f(0), "0s");
        assert_eq!(f(1), "1s");
        assert_eq!(f(6 * SEC), "6s");
        assert_eq!(f(360 * SEC), "6m0s");
        assert_eq!(f(86_400 * SEC), "24h0m0s");
        assert_eq!(f(u64::MAX), "5124095h34m34s");
    }
}
