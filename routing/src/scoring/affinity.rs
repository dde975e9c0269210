//! Session affinity: consistent hashing with bounded loads.
//!
//! A request that names a session (a header, default `x-session-id`, or the
//! OpenAI body's `user` field; see [`AffinityConfig`]) goes to the first
//! endpoint clockwise on a hash ring from the session's hash whose load is
//! under the bound, so a multi-turn conversation keeps hitting the KV cache of
//! its earlier turns without any prefix index, and a hot session cannot melt
//! one replica:
//!
//! - **Ring** ([`SessionRing`]): [`RING_POINTS`] (128) points per endpoint,
//!   each `xxh3(endpoint key, seed = point number)`, the key being the
//!   endpoint's address, so a point does not depend on the endpoint's position
//!   in the table. Adding or removing one of N endpoints moves only the
//!   sessions whose first point changes owner: about 1/N of them. Built once
//!   per routing-table revision (32 KiB for 16 endpoints), read-only after.
//! - **Bound** ([`load_cap`]): with `n` eligible endpoints carrying a total
//!   load `L`, an endpoint may take the request when its load + 1 ≤
//!   `ceil(c·(L + 1) / n)`, `c` = `loadFactor` (default 1.25, i.e. ε = 0.25).
//!   Since `c > 1` the caps sum to more than `L + 1`, so some endpoint is
//!   always under its cap, and no endpoint is ever sent past it. The load is
//!   the queue scorer's: waiting requests (fresh telemetry) + this shard's
//!   requests in flight there, so a burst between two scrapes spills at once.
//! - **Filters first**: only candidates that pass the profile's filters
//!   (healthy, not ejected, serving the model, warm, not saturated) are on
//!   the walk, so a session's endpoint that cannot take the request is skipped
//!   like a saturated one and the session continues clockwise; when every
//!   candidate is saturated the walk runs over the saturated ones (the
//!   fallback that non-sheddable requests may use).
//!
//! Per pick: a binary search (log₂ 2,048 = 11 steps for 16 endpoints) and a
//! walk that stops at the first endpoint under the cap; no allocation, no
//! lock.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::config::InferencePolicy;

/// Default session header.
pub const DEFAULT_SESSION_HEADER: &str = "x-session-id";

/// Default `loadFactor` `c = 1 + ε`: 1.25.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;

/// Points per endpoint on the ring: 128 (about ±9 % spread of the sessions'
/// shares between endpoints).
pub const RING_POINTS: u32 = 128;

/// Seed of the session hash (a fixed constant so every shard and every
/// gateway replica maps a session to the same point).
const SESSION_SEED: u64 = 0x5e55_1011_a77f_1417;

/// Session affinity of an `InferencePolicy`
/// (`spec.loadBalancing.sessionAffinity`), with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityConfig {
    /// Request header naming the session, lower case (default
    /// [`DEFAULT_SESSION_HEADER`]).
    pub header: String,
    /// Whether the body's top-level `user` string names the session when the
    /// header is absent (default true).
    pub use_user_field: bool,
    /// `c = 1 + ε` of the bound (default [`DEFAULT_LOAD_FACTOR`]; validated
    /// > 1).
    pub load_factor: f64,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        Self {
            header: DEFAULT_SESSION_HEADER.to_owned(),
            use_user_field: true,
            load_factor: DEFAULT_LOAD_FACTOR,
        }
    }
}

impl AffinityConfig {
    /// The policy's session affinity, when it has a `sessionAffinity` block.
    /// Values the validator rejects read as the defaults here.
    pub fn from_policy(policy: &InferencePolicy) -> Option<Self> {
        let sa = policy
            .spec
            .load_balancing
            .as_ref()?
            .session_affinity
            .as_ref()?;
        let d = Self::default();
        Some(Self {
            header: sa
                .header
                .as_deref()
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map_or(d.header, str::to_ascii_lowercase),
            use_user_field: sa.use_user_field.unwrap_or(d.use_user_field),
            load_factor: sa
                .load_factor
                .filter(|c| c.is_finite() && *c > 1.0)
                .unwrap_or(d.load_factor),
        })
    }
}

/// A session's position on the ring: xxh3-64 of its id with a fixed seed.
pub fn session_hash(id: &[u8]) -> u64 {
    xxh3_64_with_seed(id, SESSION_SEED)
}

/// The hash ring: [`RING_POINTS`] points per endpoint, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRing {
    /// `(point, endpoint id)`, sorted by point.
    points: Vec<(u64, u32)>,
}

impl SessionRing {
    /// A ring over `(endpoint id, key)` pairs; the key (the endpoint's
    /// address) places the endpoint's points.
    pub fn new<K: AsRef<[u8]>>(endpoints: impl IntoIterator<Item = (usize, K)>) -> Self {
        let mut points = Vec::new();
        for (id, key) in endpoints {
            let Ok(id) = u32::try_from(id) else { continue };
            let base = xxh3_64(key.as_ref());
            for p in 0..RING_POINTS {
                points.push((xxh3_64_with_seed(key.as_ref(), base ^ u64::from(p)), id));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Endpoint ids clockwise from `hash`, one lap (an endpoint appears once
    /// per point it owns).
    pub fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|&(p, _)| p < hash);
        let (before, after) = self.points.split_at(start.min(self.points.len()));
        after.iter().chain(before).map(|&(_, id)| id as usize)
    }

    /// The first endpoint clockwise from `hash` for which `eligible` holds:
    /// plain consistent hashing, without the bound.
    pub fn owner(&self, hash: u64, mut eligible: impl FnMut(usize) -> bool) -> Option<usize> {
        self.walk(hash).find(|&ep| eligible(ep))
    }
}

/// The bound: an endpoint may take one more request while its load + 1 ≤
/// this, with `total` the load of the `members` eligible endpoints and `c`
/// the load factor (`ceil(c·(total + 1) / members)`; see the module docs).
pub fn load_cap(total: f64, members: usize, c: f64) -> f64 {
    let n = members.max(1) as f64;
    let c = if c.is_finite() && c >= 1.0 {
        c
    } else {
        DEFAULT_LOAD_FACTOR
    };
    (c * (total.max(0.0) + 1.0) / n).ceil()
}

/// Where a session went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The endpoint.
    pub endpoint: usize,
    /// Whether an eligible endpoint earlier on the walk (the session's home)
    /// was over its cap.
    pub spilled: bool,
}

/// Consistent hashing with bounded loads: the first endpoint clockwise from
/// `hash` whose `load(ep)` is `Some(l)` (an eligible endpoint) with
/// `l + 1 ≤ cap`. `None` when no eligible endpoint is on the ring or every
/// one is at its cap (impossible with the cap of [`load_cap`] over the same
/// loads).
pub fn bounded_pick(
    ring: &SessionRing,
    hash: u64,
    cap: f64,
    mut load: impl FnMut(usize) -> Option<f64>,
) -> Option<Placement> {
    let mut spilled = false;
    for ep in ring.walk(hash) {
        let Some(l) = load(ep) else { continue };
        if l + 1.0 <= cap {
            return Some(Placement {
                endpoint: ep,
                spilled,
            });
        }
        spilled = true;
    }
    None
}

/// A request's session, as the picker needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Session<'a> {
    /// The ring of the routing table.
    pub ring: &'a SessionRing,
    /// [`session_hash`] of the session id.
    pub hash: u64,
    /// `c` of the bound.
    pub load_factor: f64,
}
