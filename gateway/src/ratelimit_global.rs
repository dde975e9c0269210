//! Global rate limits across gateway replicas through Redis: the pure parts
//! (configuration values, lease sizing, the grant step the Redis script runs, a
//! lock-free per-key lease). The Redis client thread and the request-path hook
//! are a later step (#15); nothing here touches the network.
//!
//! # Design
//! A DaemonSet runs one gateway per node, so `10 per minute` must hold for the
//! fleet. A shard never waits on Redis: each replica keeps, per key (the same
//! keyed hash as [`crate::ratelimit`]), a [`Lease`] of permits, one atomic
//! counter shared by the replica's shards (exact across shards, no lock). A
//! request takes a permit from the lease; the control side tops leases up by
//! running [`GRANT_SCRIPT`] on the Redis key, which does GCRA on the fleet's
//! budget and grants up to k permits at once ([`grant`] is the same step in
//! Rust, unit-tested on a virtual clock). A request whose lease is empty is
//! refused (429) only when Redis said the fleet budget is exhausted.
//!
//! # Accuracy
//! Redis grants are linearised by the script, so the permits granted to the
//! whole fleet follow one GCRA cell exactly. Over-admission comes only from
//! permits granted before a window and spent inside it: each lease expires
//! [`LEASE_TTL_NS`] after its grant, so at most one lease per replica per key
//! overlaps a window, and the fleet admits at most `limit + R·k` per period (R
//! replicas, k the lease size; leases are per replica, not per shard, so there
//! is no shard factor). [`lease_size`] keeps `R·k` at most a quarter of the
//! limit (and k at least 1): a 10/minute limit on 2 replicas gets k = 1, so the
//! bound is 10 + 2; a limit of 6000/minute gets k = min(batch, 750).
//! Under-admission: permits left in an expired lease are lost for the period
//! (at most R·k as well).
//! The script keeps the TAT in ns in a Lua double: at today's Unix time that is
//! exact to 256 ns, far below the emission interval of any limit under a
//! million requests per second (1 µs). Checked against redis-server 7 by hand (grants 4, 6, 0 for
//! `want` 4, 100, 1 on a fresh 10/minute key, as [`grant`]); the automated test
//! with a real redis-server comes with the client thread.
//!
//! # Redis down
//! `--rate-limit-redis-failure open` (the default) falls back to the local
//! per-replica limit ([`crate::ratelimit`]), so the fleet admits at most R ×
//! limit while Redis is unreachable and inference keeps working; `closed`
//! refuses with 429 once the lease is empty. Open is the default because the
//! fallback is still bounded (unlike Envoy's fail-open, which admits
//! everything) and a Redis outage should not become a gateway outage.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// A lease's permits are usable for this long after their grant (1 s).
pub const LEASE_TTL_NS: u64 = 1_000_000_000;

/// Default `--rate-limit-redis-batch`: the largest lease.
pub const DEFAULT_BATCH: u32 = 100;

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

/// The Redis side of [`grant`]: KEYS[1] the key; ARGV interval_ns, period_ns,
/// want. Uses Redis' clock (`TIME`) so replicas' clocks do not matter; the key
/// expires once idle. Returns the number of permits granted.
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
if granted > 0 then
  local new = base + granted * interval
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000000) + 1)
end
return granted
";

/// A replica's permits for one key: a count and the grant time they expire
/// with, packed in one atomic (permits in the low 16 bits, grant time in ms
/// since the limiter's epoch in the high 48), so taking a permit is one CAS.
#[derive(Debug, Default)]
pub struct Lease(AtomicU64);

impl Lease {
    const PERMITS: u64 = 0xffff;

    /// Takes one permit if the lease holds one that has not expired at `now_ms`.
    pub fn take(&self, now_ms: u64) -> bool {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let permits = cur & Self::PERMITS;
            let at = cur >> 16;
            if permits == 0 || now_ms.saturating_sub(at) * 1_000_000 >= LEASE_TTL_NS {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Replaces the lease with `permits` granted at `now_ms` (what was left is
    /// dropped: it would otherwise outlive [`LEASE_TTL_NS`]).
    pub fn refill(&self, permits: u32, now_ms: u64) {
        let p = u64::from(permits).min(Self::PERMITS);
        self.0.store((now_ms << 16) | p, Ordering::Release);
    }

    /// Permits left (ignoring expiry).
    pub fn left(&self) -> u32 {
        (self.0.load(Ordering::Acquire) & Self::PERMITS) as u32
    }
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
    fn lease_takes_until_empty_or_expired() {
        let l = Lease::default();
        assert!(!l.take(5));
        l.refill(2, 1000);
        assert!(l.take(1000));
        assert!(l.take(1500));
        assert!(!l.take(1500));
        l.refill(3, 2000);
        assert_eq!(l.left(), 3);
        assert!(!l.take(2000 + LEASE_TTL_NS / 1_000_000), "expired");
        l.refill(u32::MAX, 3000);
        assert_eq!(l.left(), 0xffff);
    }
}
