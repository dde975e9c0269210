//! Blocks a gateway shard has just sent to an endpoint, before the server's
//! events can say so.
//!
//! A server reports a request's blocks when it schedules the request: a few
//! milliseconds after it arrives when idle, seconds later when it queues.
//! Until then the exact index does not know them, and a burst sharing a new
//! prefix would scatter. Each shard keeps the keys of its last
//! [`DEFAULT_CAPACITY`] (64) routed requests for [`DEFAULT_TTL`] (3 s) and
//! counts a match against them as held, like the approximate index does for
//! everything it routed. One `VecDeque` per shard, O(entries × matched
//! blocks) per candidate; the gateway feeds it the other shards' sends too
//! (through the prefix share rings), so the 64 entries cover the whole
//! gateway's last requests, about 5 s of traffic at 12 req/s.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::BlockKey;

/// Requests remembered per shard.
pub const DEFAULT_CAPACITY: usize = 64;
/// How long a sent request's blocks count as held.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);

/// Recently sent requests' keys, per endpoint; see the module docs.
#[derive(Debug, Clone)]
pub struct Pending {
    entries: VecDeque<(Instant, usize, Vec<BlockKey>)>,
    capacity: usize,
    ttl: Duration,
}

impl Default for Pending {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_TTL)
    }
}

impl Pending {
    /// Remembers at most `capacity` requests for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity,
            ttl,
        }
    }

    /// `keys` were sent to endpoint `ep` at `now`.
    pub fn record(&mut self, ep: usize, keys: &[BlockKey], now: Instant) {
        if self.capacity == 0 || keys.is_empty() {
            return;
        }
        self.expire(now);
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((now, ep, keys.to_vec()));
    }

    fn expire(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) >= self.ttl)
        {
            self.entries.pop_front();
        }
    }

    /// The longest leading run of `keys` sent to `ep` within the TTL.
    pub fn match_len(&self, ep: usize, keys: &[BlockKey], now: Instant) -> usize {
        self.entries
            .iter()
            .filter(|(t, e, _)| *e == ep && now.saturating_duration_since(*t) < self.ttl)
            .map(|(_, _, k)| k.iter().zip(keys).take_while(|(a, b)| a == b).count())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_sends_match_until_they_expire() {
        let t0 = Instant::now();
        let mut p = Pending::new(2, Duration::from_secs(3));
        p.record(1, &[1, 2, 3], t0);
        assert_eq!(p.match_len(1, &[1, 2, 9], t0), 2);
        assert_eq!(p.match_len(0, &[1, 2, 9], t0), 0);
        p.record(1, &[1, 2, 3, 4], t0 + Duration::from_secs(1));
        assert_eq!(
            p.match_len(1, &[1, 2, 3, 4, 5], t0 + Duration::from_secs(1)),
            4
        );
        // Capacity: the oldest goes.
        p.record(2, &[7], t0 + Duration::from_secs(1));
        assert_eq!(p.match_len(1, &[1, 2, 3], t0 + Duration::from_secs(1)), 3);
        // TTL.
        assert_eq!(p.match_len(1, &[1, 2, 3], t0 + Duration::from_secs(4)), 0);
    }
}
