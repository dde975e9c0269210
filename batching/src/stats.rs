//! Counters and fixed-bucket histograms for the batching metrics.
//!
//! Plain integers updated in place (no allocation, no atomics: each shard owns its
//! [`Batcher`](crate::Batcher)); the gateway reads them at scrape time and sums
//! shards. Buckets are Prometheus-style upper bounds (`le`), cumulative on export:
//! - batch size (members per batch): 1, 2, 4, …, 1024, +Inf (11 bounds);
//! - time queued (µs, per member, enqueue → flush): 100 µs … 1 s, +Inf (13 bounds).

use crate::FlushReason;

/// Upper bounds of the batch-size histogram (members per batch).
pub const BATCH_SIZE_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
/// Upper bounds (µs) of the time-queued histogram (12 and 15 ms resolve the seed's
/// 10 ms real-time queue plus timer slack).
pub const QUEUED_US_BOUNDS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 12_000, 15_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000,
];

const MAX_BUCKETS: usize = 16;

/// A histogram over fixed upper bounds (at most 15 bounds plus +Inf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    bounds: &'static [u64],
    counts: [u64; MAX_BUCKETS],
    sum: u64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending; at most 15, extra ones are ignored).
    pub fn new(bounds: &'static [u64]) -> Self {
        let bounds = &bounds[..bounds.len().min(MAX_BUCKETS - 1)];
        Histogram {
            bounds,
            counts: [0; MAX_BUCKETS],
            sum: 0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn record(&mut self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(value);
        self.count += 1;
    }

    /// `(le, cumulative count)` per bucket, `le == None` for +Inf (Prometheus order).
    pub fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let mut acc = 0;
        (0..=self.bounds.len()).map(move |i| {
            acc += self.counts[i];
            (self.bounds.get(i).copied(), acc)
        })
    }

    /// Sum of all observations.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Per-queue counters of one shard's batcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// Requests waiting now (`gateway_queue_depth{priority}`).
    pub depth: usize,
    /// Inputs waiting now (a request may carry several).
    pub depth_items: u64,
    /// Batches flushed, by [`FlushReason`] (index with [`FlushReason::index`]).
    pub flushes: [u64; FlushReason::COUNT],
    /// Members per flushed batch.
    pub batch_size: Histogram,
    /// Microseconds each member waited, enqueue → flush.
    pub queued_us: Histogram,
    /// Requests accepted.
    pub pushed: u64,
    /// Requests rejected because the queue was full.
    pub rejected_full: u64,
    /// Requests that expired ([`Reject::Timeout`](crate::Reject::Timeout)).
    pub expired: u64,
    /// Requests cancelled by the caller.
    pub cancelled: u64,
}

impl Default for QueueStats {
    fn default() -> Self {
        QueueStats {
            depth: 0,
            depth_items: 0,
            flushes: [0; FlushReason::COUNT],
            batch_size: Histogram::new(BATCH_SIZE_BOUNDS),
            queued_us: Histogram::new(QUEUED_US_BOUNDS),
            pushed: 0,
            rejected_full: 0,
            expired: 0,
            cancelled: 0,
        }
    }
}

impl QueueStats {
    /// Flushes counted for one reason.
    pub fn flushes(&self, reason: FlushReason) -> u64 {
        self.flushes[reason.index()]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_inf_last() {
        let mut h = Histogram::new(&[1, 4, 16]);
        for v in [0, 1, 2, 4, 5, 100] {
            h.record(v);
        }
        let b: Vec<_> = h.buckets().collect();
        assert_eq!(b, [(Some(1), 2), (Some(4), 4), (Some(16), 5), (None, 6)]);
        assert_eq!((h.sum(), h.count()), (112, 6));
    }
}
