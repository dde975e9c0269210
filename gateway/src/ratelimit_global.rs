//! Global rate limits across gateway replicas through Redis
//! (`--rate-limit-redis redis://HOST:PORT[/DB]`): a SecurityPolicy's request
//! limit of 10 per minute means 10 for the whole fleet, not 10 per replica.
//!
//! # Design: leases, never a Redis round trip per request
//! A DaemonSet runs one gateway per node. Each replica keeps, per key (policy,
//! client identity, bucket, as in [`crate::ratelimit`]), a [`Lease`]: permits
//! granted by Redis, one atomic counter its shards share (taking one is one
//! CAS; no lock). Redis holds one GCRA cell per key for the fleet;
//! [`GRANT_SCRIPT`] runs GCRA there and grants up to k permits at once
//! ([`grant`] is the same step in Rust, unit-tested on a virtual clock). The
//! lease thread ([`spawn`], a thread of its own with a blocking Redis client)
//! tops leases up: a shard that takes a lease's last permits (or finds it
//! below half) queues the key once (an MPSC channel, one message per refill,
//! not per request), and the thread sends all queued keys' grants to Redis in
//! one pipelined round trip. A request whose lease is empty while a refill is
//! on its way waits for it, polling its lease every [`WAIT_STEP`] (0.5 ms), at
//! most `--rate-limit-redis-timeout` (default 100 ms); other requests on the
//! shard go on meanwhile. With the refill asked for at half a lease, a steady
//! stream of requests does not wait at all; the first request of a key on a
//! replica waits one Redis round trip (about 0.1 ms on a LAN). A key Redis
//! refused (the fleet's budget is spent) is refused locally, with Redis's
//! `Retry-After`, until then: no Redis traffic for a refused client.
//!
//! # Accuracy (stated, and tested against a real redis-server)
//! Redis linearises grants, so the permits granted to the whole fleet follow
//! one GCRA cell exactly. A replica holds at most 1.5·k unused permits (a
//! refill asked for at k/2 adds k), so over any window the fleet admits at
//! most the cell's allowance + 1.5·R·k (R replicas): permits granted earlier
//! and spent inside the window. Permits left in a lease when the key goes idle
//! are spent later or lost with the lease, so under-admission is bounded the
//! same way. [`lease_size`] keeps R·k at most a quarter of the limit (k ≥ 1):
//! 10/minute on 2 replicas gets k = 1 (at most 10 + 3 in a burst), 6000/minute
//! k = min(`--rate-limit-redis-batch`, 750). R is measured, not configured:
//! each replica's lease thread registers in a Redis sorted set every second
//! and counts the replicas seen in the last 3 s.
//! Keys in Redis are a SHA-256 of (policy, identity, bucket, limit) under
//! `--rate-limit-redis-prefix` (replicas must agree; the local keys use
//! per-process random hash keys instead). The script keeps the TAT in ns in a
//! Lua double: exact to 256 ns at today's Unix time, far below the emission
//! interval of any limit under a million requests per second.
//!
//! # Redis down
//! A failed connect, command or timeout marks Redis down (counted in
//! `gateway_rate_limit_redis_errors_total`, `gateway_rate_limit_redis_up` 0)
//! and the thread reconnects every second. While it is down, a request whose
//! lease is empty follows `--rate-limit-redis-failure`:
//! - `open` (the default) falls back to the local per-replica limit
//!   ([`crate::ratelimit`]), so the fleet admits at most R × limit and
//!   inference keeps working (Envoy's global limiter fails open by admitting
//!   everything; this stays bounded);
//! - `closed` refuses with 429 `rate_limit_unavailable`.
//!
//! Either way the request is counted in
//! `gateway_rate_limit_redis_fallback_total{mode}`. Token limits stay local
//! (per replica): they are charged after the answer, from its `usage`.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::ratelimit::{Bucket, Identity, Limit, PassThrough};

/// How often a request waiting for a refill looks at its lease (0.5 ms).
pub const WAIT_STEP: Duration = Duration::from_micros(500);

/// Default `--rate-limit-redis-batch`: the largest lease.
pub const DEFAULT_BATCH: u32 = 100;

/// Default `--rate-limit-redis-timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// Default `--rate-limit-redis-prefix`.
pub const DEFAULT_PREFIX: &str = "shardgate:rl:";

/// How often the lease thread registers its replica and counts the others (1 s).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Replicas not seen for this long are not counted (3 s).
pub const REPLICA_TTL: Duration = Duration::from_secs(3);

/// Refill requests queued at most (a full queue drops the request: the key's
/// `pending` flag is cleared and a later request asks again).
pub const QUEUE: usize = 65_536;

/// What a shard does with an empty lease while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Fall back to the local per-replica limit (the default).
    #[default]
    Open,
    /// Refuse (429).
    Closed,
}

impl FromStr for FailureMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            other => Err(format!(
                "--rate-limit-redis-failure: expected open or closed, got {other:?}"
            )),
        }
    }
}

/// A parsed `--rate-limit-redis redis://HOST:PORT[/DB]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddr {
    /// Host name or address.
    pub host: String,
    /// TCP port (6379 when absent).
    pub port: u16,
    /// Database index (0 when absent).
    pub db: u32,
}

impl FromStr for RedisAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("--rate-limit-redis {s:?}: {why} (expected redis://HOST:PORT[/DB])")
        };
        let rest = s
            .strip_prefix("redis://")
            .ok_or_else(|| bad("scheme must be redis://"))?;
        let (hostport, db) = match rest.split_once('/') {
            Some((hp, "")) => (hp, 0),
            Some((hp, db)) => (hp, db.parse().map_err(|_| bad("bad database index"))?),
            None => (rest, 0),
        };
        if hostport.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| bad("bad port"))?)
            }
            _ => (hostport, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            db,
        })
    }
}

/// The lease size k for a limit of `limit` per period over `replicas`
/// replicas: `R·k <= limit / 4`, `1 <= k <= batch`.
pub fn lease_size(limit: u64, replicas: u32, batch: u32) -> u32 {
    let per = limit / (4 * u64::from(replicas.max(1)));
    per.clamp(1, u64::from(batch.max(1))) as u32
}

/// The result of one grant step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Permits granted (0..=want).
    pub granted: u32,
    /// The key's new TAT.
    pub tat: u64,
}

/// GCRA granting up to `want` permits at once (what [`GRANT_SCRIPT`] runs):
/// each permit advances the TAT by `interval_ns`; permits are granted while
/// `tat' - now <= period_ns`.
pub fn grant(tat: u64, now: u64, interval_ns: u64, period_ns: u64, want: u32) -> Grant {
    let base = tat.max(now);
    let room = (now.saturating_add(period_ns)).saturating_sub(base);
    let fit = room.checked_div(interval_ns).unwrap_or(u64::from(want));
    let granted = fit.min(u64::from(want)) as u32;
    Grant {
        granted,
        tat: base.saturating_add(u64::from(granted).saturating_mul(interval_ns)),
    }
}

/// The Redis side of [`grant`]: `KEYS[1]` the key; ARGV interval_ns, period_ns,
/// want. Uses Redis' clock (`TIME`) so replicas' clocks do not matter; the key
/// expires once idle. Returns {granted, wait_ms (until one more permit, when
/// none was granted), room (permits the fleet has left after this grant),
/// reset_ms (until the cell is full again)}.
pub const GRANT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000000 + tonumber(t[2]) * 1000
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local base = math.max(tat, now)
local fit = math.floor((now + period - base) / interval)
if fit < 0 then fit = 0 end
local granted = math.min(fit, want)
local new = base + granted * interval
if granted > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000000) + 1)
end
local wait = 0
if granted == 0 then wait = math.ceil((base + interval - now - period) / 1000000) end
local room = math.floor((now + period - new) / interval)
if room < 0 then room = 0 end
local reset = math.ceil((new - now) / 1000000)
if reset < 0 then reset = 0 end
return {granted, wait, room, reset}
";

/// Registers a replica and counts the live ones: `KEYS[1]` the set; ARGV the
/// replica id and the TTL in ms.
pub const HEARTBEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
";

/// A replica's permits for one key: one atomic counter its shards share.
#[derive(Debug, Default)]
pub struct Lease(AtomicU32);

impl Lease {
    /// Takes one permit if there is one; returns the permits left after it.
    pub fn take(&self) -> Option<u32> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
            .ok()
            .map(|before| before - 1)
    }

    /// Adds `permits` granted by Redis.
    pub fn add(&self, permits: u32) {
        self.0.fetch_add(permits, Ordering::AcqRel);
    }

    /// Permits left.
    pub fn left(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// One key's global state on this replica.
#[derive(Debug)]
pub struct GlobalCell {
    /// Permits held.
    pub lease: Lease,
    /// A refill is queued or in flight.
    pending: AtomicBool,
    /// Redis refused: refuse locally until then (ns on the limiter's clock).
    denied_until: AtomicU64,
    /// Permits the fleet had left after the last grant (for the headers).
    room: AtomicU32,
    /// When the fleet's cell is full again, as of the last grant (ns).
    reset_at: AtomicU64,
    /// Last request on the key (ns), for eviction.
    last_used: AtomicU64,
    /// The Redis key.
    redis_key: String,
    /// The limit the key was made with.
    limit: Limit,
}

/// What the global step says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalVerdict {
    /// A permit was taken.
    Allowed(crate::ratelimit::Quota),
    /// Redis refused the fleet more permits until `retry_after_ns` from now.
    Limited {
        /// What the headers say.
        quota: crate::ratelimit::Quota,
        /// `Retry-After`, ns.
        retry_after_ns: u64,
    },
    /// The lease is empty and a refill is on its way: look again in
    /// [`WAIT_STEP`].
    Wait,
    /// Redis is unreachable: follow the failure mode.
    Unavailable(FailureMode),
    /// The key table is full of active keys (429, as the local limiter).
    Full,
}

/// Settings of the global limiter (from the command line).
#[derive(Debug, Clone)]
pub struct GlobalSettings {
    /// Where Redis is.
    pub addr: RedisAddr,
    /// What an empty lease does while Redis is down.
    pub failure: FailureMode,
    /// The largest lease.
    pub batch: u32,
    /// Connect and command timeout, and a request's longest wait for a refill.
    pub timeout: Duration,
    /// Prefix of every Redis key.
    pub prefix: String,
    /// Most keys tracked.
    pub max_keys: usize,
}

/// Counters of the lease thread and the request path.
#[derive(Debug, Default)]
pub struct GlobalStats {
    /// Round trips that succeeded.
    pub round_trips: AtomicU64,
    /// Connect or command failures.
    pub errors: AtomicU64,
    /// Permits granted by Redis.
    pub granted: AtomicU64,
    /// Refill requests answered with no permit (the fleet's budget spent).
    pub refused: AtomicU64,
    /// Requests decided by the failure mode (open: by the local limit;
    /// closed: refused).
    pub fallback: AtomicU64,
    /// Requests that waited for a refill.
    pub waited: AtomicU64,
}

/// The fleet-wide limiter of one replica: leases per key, shared by its shards.
pub struct GlobalLimiter {
    cells: papaya::HashMap<u128, Arc<GlobalCell>, PassThrough>,
    live: AtomicUsize,
    settings: GlobalSettings,
    up: AtomicBool,
    replicas: AtomicU32,
    queue: SyncSender<u128>,
    /// Counters for `/metrics`.
    pub stats: GlobalStats,
    epoch: Instant,
}

impl std::fmt::Debug for GlobalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalLimiter")
            .field("keys", &self.live.load(Ordering::Relaxed))
            .field("up", &self.is_up())
            .finish()
    }
}

/// The Redis key of (policy, identity, bucket) under `limit`: `prefix` + 32
/// hex digits of a SHA-256, the same on every replica. The limit is part of it:
/// a cell's TAT only means something under the limit it was kept with, so a
/// changed limit starts from a fresh cell instead of one a smaller limit left
/// far in the future.
pub fn redis_key(
    prefix: &str,
    policy: &str,
    identity: Identity<'_>,
    bucket: Bucket<'_>,
    limit: &Limit,
) -> String {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut put = |tag: u8, bytes: &[u8]| {
        h.update(&[tag]);
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    put(0, policy.as_bytes());
    match identity {
        Identity::Subject(s) => put(1, s.as_bytes()),
        Identity::Ip(std::net::IpAddr::V4(a)) => put(2, &a.octets()),
        Identity::Ip(std::net::IpAddr::V6(a)) => put(3, &a.octets()),
    }
    match bucket {
        Bucket::Model(m) => put(4, m.as_bytes()),
        Bucket::Default => put(5, b""),
    }
    put(6, &limit.interval_ns.to_le_bytes());
    put(7, &limit.period_ns.to_le_bytes());
    let d = h.finish();
    let mut key = String::with_capacity(prefix.len() + 32);
    key.push_str(prefix);
    for b in &d.as_ref()[..16] {
        key.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        key.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    key
}

impl GlobalLimiter {
    /// A limiter whose refills go to the returned receiver (the lease thread's).
    pub fn new(settings: GlobalSettings) -> (Arc<Self>, Receiver<u128>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let max = settings.max_keys.max(1);
        let lim = GlobalLimiter {
            cells: papaya::HashMap::builder()
                .capacity(max.saturating_mul(2))
                .hasher(PassThrough)
                .build(),
            live: AtomicUsize::new(0),
            settings,
            up: AtomicBool::new(false),
            replicas: AtomicU32::new(1),
            queue: tx,
            stats: GlobalStats::default(),
            epoch: Instant::now(),
        };
        (Arc::new(lim), rx)
    }

    /// The limiter's clock: ns since it was made.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Whether the last Redis round trip succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Replicas seen at the last heartbeat (≥ 1).
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// The failure mode.
    pub fn failure_mode(&self) -> FailureMode {
        self.settings.failure
    }

    /// A request's longest wait for a refill.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One request of `key` (the local limiter's key of the same triple) under
    /// `limit` at `now`. `who` names the triple for a new key's Redis key.
    pub fn check(
        &self,
        key: u128,
        who: (&str, Identity<'_>, Bucket<'_>),
        limit: &Limit,
        now: u64,
    ) -> GlobalVerdict {
        use crate::ratelimit::{Counted, Quota};
        let map = self.cells.pin();
        let cell = match map.get(&key) {
            Some(c) => c,
            None => {
                if self.live.load(Ordering::Relaxed) >= self.settings.max_keys {
                    self.evict_idle(now, limit.period_ns);
                    if self.live.load(Ordering::Relaxed) >= self.settings.max_keys {
                        return GlobalVerdict::Full;
                    }
                }
                let fresh = Arc::new(GlobalCell {
                    lease: Lease::default(),
                    pending: AtomicBool::new(false),
                    denied_until: AtomicU64::new(0),
                    room: AtomicU32::new(limit.requests),
                    reset_at: AtomicU64::new(now),
                    last_used: AtomicU64::new(now),
                    redis_key: redis_key(&self.settings.prefix, who.0, who.1, who.2, limit),
                    limit: *limit,
                });
                match map.try_insert(key, fresh) {
                    Ok(c) => {
                        self.live.fetch_add(1, Ordering::Relaxed);
                        c
                    }
                    Err(e) => e.current,
                }
            }
        };
        cell.last_used.store(now, Ordering::Relaxed);
        let quota = |left: u32| Quota {
            counted: Counted::Requests,
            limit: limit.requests,
            remaining: cell
                .room
                .load(Ordering::Relaxed)
                .saturating_add(left)
                .min(limit.requests),
            reset_ns: cell.reset_at.load(Ordering::Relaxed).saturating_sub(now),
        };
        if let Some(left) = cell.lease.take() {
            // Ask for more at half a lease, so a steady stream never waits.
            if left
                <= lease_size(
                    u64::from(limit.requests),
                    self.replicas(),
                    self.settings.batch,
                ) / 2
            {
                self.ask(key, cell);
            }
            return GlobalVerdict::Allowed(quota(left));
        }
        if !self.is_up() {
            self.stats.fallback.fetch_add(1, Ordering::Relaxed);
            return GlobalVerdict::Unavailable(self.settings.failure);
        }
        let until = cell.denied_until.load(Ordering::Acquire);
        if until > now {
            return GlobalVerdict::Limited {
                quota: quota(0),
                retry_after_ns: until - now,
            };
        }
        self.ask(key, cell);
        GlobalVerdict::Wait
    }

    /// Queue a refill of `key` unless one is queued already.
    fn ask(&self, key: u128, cell: &GlobalCell) {
        if cell
            .pending
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                self.queue.try_send(key)
            {
                cell.pending.store(false, Ordering::Release);
            }
        }
    }

    /// Forget keys idle for a period or more with no permit held.
    fn evict_idle(&self, now: u64, period_ns: u64) {
        let map = self.cells.pin();
        for (key, cell) in map.iter() {
            let idle = now.saturating_sub(cell.last_used.load(Ordering::Relaxed));
            if idle >= period_ns.max(cell.limit.period_ns)
                && !cell.pending.load(Ordering::Acquire)
                && map.remove(key).is_some()
            {
                self.live.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Apply one grant answer to `key`'s cell (the lease thread).
    fn apply(&self, key: u128, a: Answer, now: u64) {
        let map = self.cells.pin();
        let Some(cell) = map.get(&key) else {
            return;
        };
        cell.room.store(a.room, Ordering::Relaxed);
        cell.reset_at.store(
            now.saturating_add(a.reset_ms.saturating_mul(1_000_000)),
            Ordering::Relaxed,
        );
        if a.granted > 0 {
            self.stats
                .granted
                .fetch_add(u64::from(a.granted), Ordering::Relaxed);
            cell.denied_until.store(0, Ordering::Release);
            cell.lease.add(a.granted);
        } else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            let wait = a.wait_ms.max(1).saturating_mul(1_000_000);
            cell.denied_until
                .store(now.saturating_add(wait), Ordering::Release);
        }
        cell.pending.store(false, Ordering::Release);
    }

    /// Clear the pending flag of `key` (its refill failed).
    fn unpend(&self, key: u128) {
        if let Some(cell) = self.cells.pin().get(&key) {
            cell.pending.store(false, Ordering::Release);
        }
    }

    /// `gateway_rate_limit_redis_*` metrics.
    pub fn render(&self, out: &mut String) {
        use shardgate_promtext::{Kind, PromWriter, Style};
        let mut w = PromWriter::new(out, Style::PLAIN);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        w.family(
            "gateway_rate_limit_redis_up",
            "Whether the last round trip to the global rate-limit Redis succeeded.",
            Kind::Gauge,
        )
        .sample("", &[], u64::from(self.is_up()));
        w.family(
            "gateway_rate_limit_redis_replicas",
            "Gateway replicas sharing the global rate limits (seen in Redis in the last 3 s).",
            Kind::Gauge,
        )
        .sample("", &[], u64::from(self.replicas()));
        w.family(
            "gateway_rate_limit_redis_keys",
            "Global rate-limit keys this replica holds a lease for.",
            Kind::Gauge,
        )
        .sample("", &[], self.len() as u64);
        w.family(
            "gateway_rate_limit_redis_round_trips_total",
            "Pipelined round trips to Redis that succeeded (grants and heartbeats).",
            Kind::Counter,
        )
        .sample("", &[], load(&self.stats.round_trips));
        w.family(
            "gateway_rate_limit_redis_errors_total",
            "Failed connects, commands and timeouts talking to the rate-limit Redis.",
            Kind::Counter,
        )
        .sample("", &[], load(&self.stats.errors));
        w.family(
            "gateway_rate_limit_redis_permits_granted_total",
            "Permits Redis granted this replica's leases.",
            Kind::Counter,
        )
        .sample("", &[], load(&self.stats.granted));
        w.family(
            "gateway_rate_limit_redis_refusals_total",
            "Refills Redis answered with no permit: the fleet's budget for the key was spent.",
            Kind::Counter,
        )
        .sample("", &[], load(&self.stats.refused));
        w.family(
            "gateway_rate_limit_redis_waits_total",
            "Requests that waited for a lease refill.",
            Kind::Counter,
        )
        .sample("", &[], load(&self.stats.waited));
        let mode = match self.settings.failure {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
        };
        w.family("gateway_rate_limit_redis_fallback_total", "Requests decided by --rate-limit-redis-failure while Redis was unreachable (open: by the local per-replica limit; closed: refused).", Kind::Counter)
            .sample("", &[("mode", mode)], load(&self.stats.fallback));
    }
}

impl crate::ratelimit::FleetLimit for GlobalLimiter {
    fn count(
        &self,
        key: u128,
        who: (&str, Identity<'_>, Bucket<'_>),
        limit: &Limit,
        gave_up: bool,
        local: &dyn Fn(&Limit) -> Result<crate::ratelimit::Quota, crate::ratelimit::Outcome>,
    ) -> Result<crate::ratelimit::Quota, crate::ratelimit::Outcome> {
        use crate::ratelimit::Outcome;
        let fallback = || match self.failure_mode() {
            FailureMode::Open => local(limit),
            FailureMode::Closed => Err(Outcome::Unavailable),
        };
        match self.check(key, who, limit, self.now()) {
            GlobalVerdict::Allowed(q) => Ok(q),
            GlobalVerdict::Limited {
                quota,
                retry_after_ns,
            } => Err(Outcome::Limited {
                quota,
                retry_after_ns,
            }),
            GlobalVerdict::Full => Err(Outcome::Full),
            GlobalVerdict::Wait if !gave_up => Err(Outcome::Wait),
            GlobalVerdict::Wait => {
                self.stats.fallback.fetch_add(1, Ordering::Relaxed);
                fallback()
            }
            GlobalVerdict::Unavailable(_) => fallback(),
        }
    }
}

/// One grant's answer from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    granted: u32,
    wait_ms: u64,
    room: u32,
    reset_ms: u64,
}

/// Start the lease thread of `lim` (it ends when the limiter is dropped).
pub fn spawn(lim: &Arc<GlobalLimiter>, rx: Receiver<u128>) -> std::io::Result<()> {
    let weak = Arc::downgrade(lim);
    let id = format!("{:016x}", fastrand::u64(..));
    std::thread::Builder::new()
        .name("rate-limit-redis".into())
        .spawn(move || lease_thread(weak, rx, id))
        .map(|_| ())
}

struct Session {
    con: redis::Connection,
    grant_sha: String,
    heartbeat_sha: String,
}

fn connect(s: &GlobalSettings) -> redis::RedisResult<Session> {
    let host = if s.addr.host.contains(':') {
        format!("[{}]", s.addr.host)
    } else {
        s.addr.host.clone()
    };
    let client = redis::Client::open(format!("redis://{host}:{}/{}", s.addr.port, s.addr.db))?;
    let mut con = client.get_connection_with_timeout(s.timeout)?;
    con.set_read_timeout(Some(s.timeout))?;
    con.set_write_timeout(Some(s.timeout))?;
    let grant_sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(GRANT_SCRIPT)
        .query(&mut con)?;
    let heartbeat_sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(HEARTBEAT_SCRIPT)
        .query(&mut con)?;
    Ok(Session {
        con,
        grant_sha,
        heartbeat_sha,
    })
}

fn lease_thread(weak: Weak<GlobalLimiter>, rx: Receiver<u128>, id: String) {
    let mut session: Option<Session> = None;
    let mut next_heartbeat = Instant::now();
    let mut next_connect = Instant::now();
    let mut keys: Vec<u128> = Vec::new();
    loop {
        let wait = next_heartbeat.saturating_duration_since(Instant::now());
        keys.clear();
        match rx.recv_timeout(wait) {
            Ok(k) => keys.push(k),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while keys.len() < 4096 {
            match rx.try_recv() {
                Ok(k) => keys.push(k),
                Err(_) => break,
            }
        }
        let Some(lim) = weak.upgrade() else {
            return;
        };
        if session.is_none() && Instant::now() >= next_connect {
            match connect(&lim.settings) {
                Ok(s) => session = Some(s),
                Err(e) => {
                    lim.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if lim.up.swap(false, Ordering::AcqRel) || next_heartbeat == next_connect {
                        tracing::warn!(error = %e, redis = %format!("{}:{}", lim.settings.addr.host, lim.settings.addr.port), "rate-limit Redis unreachable; --rate-limit-redis-failure applies");
                    }
                    next_connect = Instant::now() + HEARTBEAT;
                }
            }
        }
        let Some(s) = session.as_mut() else {
            for k in &keys {
                lim.unpend(*k);
            }
            next_heartbeat = Instant::now()
                + HEARTBEAT.min(
                    next_connect
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(10)),
                );
            continue;
        };
        let heartbeat = Instant::now() >= next_heartbeat;
        match round_trip(&lim, s, &keys, heartbeat, &id) {
            Ok(()) => {
                lim.stats.round_trips.fetch_add(1, Ordering::Relaxed);
                if !lim.up.swap(true, Ordering::AcqRel) {
                    tracing::info!("rate-limit Redis reachable; global limits apply");
                }
                if heartbeat {
                    next_heartbeat = Instant::now() + HEARTBEAT;
                }
            }
            Err(e) => {
                lim.stats.errors.fetch_add(1, Ordering::Relaxed);
                if lim.up.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "rate-limit Redis failed; --rate-limit-redis-failure applies");
                }
                for k in &keys {
                    lim.unpend(*k);
                }
                session = None;
                next_connect = Instant::now() + HEARTBEAT;
                next_heartbeat = next_connect;
            }
        }
    }
}

/// One pipelined round trip: the heartbeat (when due) and one grant per key.
fn round_trip(
    lim: &GlobalLimiter,
    s: &mut Session,
    keys: &[u128],
    heartbeat: bool,
    id: &str,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    if heartbeat {
        pipe.cmd("EVALSHA")
            .arg(&s.heartbeat_sha)
            .arg(1)
            .arg(format!("{}replicas", lim.settings.prefix))
            .arg(id)
            .arg(REPLICA_TTL.as_millis() as u64);
    }
    let replicas = lim.replicas();
    let mut sent: Vec<u128> = Vec::with_capacity(keys.len());
    {
        let map = lim.cells.pin();
        for k in keys {
            let Some(cell) = map.get(k) else {
                continue;
            };
            let want = lease_size(u64::from(cell.limit.requests), replicas, lim.settings.batch);
            pipe.cmd("EVALSHA")
                .arg(&s.grant_sha)
                .arg(1)
                .arg(&cell.redis_key)
                .arg(cell.limit.interval_ns)
                .arg(cell.limit.period_ns)
                .arg(want);
            sent.push(*k);
        }
    }
    if !heartbeat && sent.is_empty() {
        return Ok(());
    }
    let replies: Vec<redis::Value> = pipe.query(&mut s.con)?;
    let now = lim.now();
    let mut it = replies.into_iter();
    if heartbeat {
        if let Some(v) = it.next() {
            let n: u32 = redis::from_redis_value(v)?;
            lim.replicas.store(n.max(1), Ordering::Relaxed);
        }
    }
    for (k, v) in sent.iter().zip(it) {
        let (granted, wait_ms, room, reset_ms): (u32, u64, u32, u64) = redis::from_redis_value(v)?;
        lim.apply(
            *k,
            Answer {
                granted,
                wait_ms,
                room,
                reset_ms,
            },
            now,
        );
    }
    Ok(())
}

/// Start global limits with `settings` (from `--rate-limit-redis`) when
/// `table` has a SecurityPolicy with a `rateLimit`: the limiter and its
/// Redis thread. None when either is missing.
pub fn start(
    settings: Option<GlobalSettings>,
    table: &shardgate_routing::RoutingTable,
) -> Result<Option<Arc<GlobalLimiter>>, String> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    if !table
        .security_policies()
        .any(|(_, p)| p.spec.rate_limit.is_some())
    {
        tracing::warn!("--rate-limit-redis is set but no SecurityPolicy has a rateLimit");
        return Ok(None);
    }
    let (lim, rx) = GlobalLimiter::new(settings);
    spawn(&lim, rx).map_err(|e| format!("cannot start the rate-limit Redis thread: {e}"))?;
    Ok(Some(lim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_mode_parses() {
        assert_eq!("open".parse::<FailureMode>(), Ok(FailureMode::Open));
        assert_eq!("closed".parse::<FailureMode>(), Ok(FailureMode::Closed));
        assert!("Open".parse::<FailureMode>().is_err());
        assert_eq!(FailureMode::default(), FailureMode::Open);
    }

    #[test]
    fn redis_addr_parses() {
        let a: RedisAddr = "redis://127.0.0.1:6380/2".parse().expect("valid address");
        assert_eq!((a.host.as_str(), a.port, a.db), ("127.0.0.1", 6380, 2));
        let a: RedisAddr = "redis://cache".parse().expect("valid address");
        assert_eq!((a.host.as_str(), a.port, a.db), ("cache", 6379, 0));
        let a: RedisAddr = "redis://[::1]:7000".parse().expect("valid address");
        assert_eq!((a.host.as_str(), a.port), ("::1", 7000));
        for bad in [
            "http://x:1",
            "redis://:1",
            "redis://x:99999",
            "redis://x:1/db",
            "redis://u:p@x:1",
        ] {
            assert!(bad.parse::<RedisAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lease_size_keeps_overshoot_within_a_quarter() {
        assert_eq!(lease_size(10, 2, 100), 1);
        assert_eq!(lease_size(20, 2, 100), 2);
        assert_eq!(lease_size(6000, 2, 100), 100);
        assert_eq!(lease_size(6000, 2, 1000), 750);
        assert_eq!(lease_size(1, 0, 0), 1);
        for limit in [4u64, 10, 40, 1000, 100_000] {
            for r in [1u32, 2, 8, 64] {
                let k = lease_size(limit, r, 1000);
                assert!(k >= 1);
                assert!(u64::from(k) * u64::from(r) <= (limit / 4).max(u64::from(r)));
            }
        }
    }

    #[test]
    fn grant_follows_one_gcra_cell() {
        // 10 per 60 s: T = 6 s, burst 10.
        let (t, p) = (6_000_000_000u64, 60_000_000_000u64);
        let g = grant(0, p, t, p, 4);
        assert_eq!(g.granted, 4);
        let g = grant(g.tat, p, t, p, 100);
        assert_eq!(g.granted, 6, "the burst is the limit");
        let g2 = grant(g.tat, p, t, p, 1);
        assert_eq!(g2.granted, 0);
        assert_eq!(g2.tat, g.tat);
        // One interval later, one more permit.
        let g3 = grant(g.tat, p + t, t, p, 5);
        assert_eq!(g3.granted, 1);
        // Over a long run, grants never exceed burst + elapsed / T.
        let mut tat = 0;
        let mut total = 0u64;
        for step in 0..10_000u64 {
            let now = p + step * 100_000_000; // every 100 ms
            let g = grant(tat, now, t, p, 3);
            tat = g.tat;
            total += u64::from(g.granted);
        }
        let elapsed = 9_999 * 100_000_000u64;
        assert!(total <= 10 + elapsed / t, "{total}");
        assert!(total >= elapsed / t, "{total}");
    }

    #[test]
    fn lease_takes_until_empty() {
        let l = Lease::default();
        assert_eq!(l.take(), None);
        l.add(2);
        assert_eq!(l.take(), Some(1));
        assert_eq!(l.take(), Some(0));
        assert_eq!(l.take(), None);
        l.add(3);
        assert_eq!(l.left(), 3);
    }

    #[test]
    fn redis_keys_are_the_same_on_every_replica_and_tell_triples_apart() {
        use shardgate_routing::config::RateLimitUnit;
        let ip = Identity::Ip("10.0.0.1".parse().expect("an address"));
        let l = Limit::new(10, RateLimitUnit::Minute);
        let a = redis_key("p:", "ns/pol", ip, Bucket::Default, &l);
        assert_eq!(a, redis_key("p:", "ns/pol", ip, Bucket::Default, &l));
        assert_eq!(a.len(), 2 + 32);
        assert!(a.starts_with("p:"));
        assert_ne!(a, redis_key("p:", "ns/pol", ip, Bucket::Model("m"), &l));
        let sub = Identity::Subject("10.0.0.1");
        assert_ne!(a, redis_key("p:", "ns/pol", sub, Bucket::Default, &l));
        assert_ne!(a, redis_key("p:", "ns/po", ip, Bucket::Default, &l));
        // Another limit, another cell.
        let l2 = Limit::new(10, RateLimitUnit::Hour);
        assert_ne!(a, redis_key("p:", "ns/pol", ip, Bucket::Default, &l2));
        // Length-prefixed fields: moving bytes between fields changes the key.
        assert_ne!(
            redis_key("p:", "a", Identity::Subject("bc"), Bucket::Default, &l),
            redis_key("p:", "ab", Identity::Subject("c"), Bucket::Default, &l)
        );
    }
}
