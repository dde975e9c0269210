//! The adaptive-batching signal: how busy one target endpoint is, 0–1.
//!
//! With `adaptiveBatching`, a lane flushes at once while its target's utilisation
//! is below `targetUtilization` and grows towards `maxBatchSize` / `maxLatency`
//! otherwise (see [`crate::batcher`]). KV-cache use alone is not enough: it stays
//! near 0 on embedding and classification servers (a prefill-only request frees its
//! blocks at once), so those would always read idle and never batch.
//! [`EndpointLoad::utilization`] is therefore the **largest** of the signals known:
//! - KV-cache use (0–1) and GPU utilisation (0–1, e.g. from the DCGM exporter);
//! - `busy / capacity` when the server reports its counts (`running`, `waiting`) or
//!   the capacity (requests the server runs at once, vLLM's `max_num_seqs`) is
//!   known, with `busy = max(running + waiting, gateway in-flight)`: the gateway's
//!   own in-flight requests to the endpoint are a live lower bound of what it
//!   holds, fresher than the last scrape. A server that reports its counts but
//!   whose capacity is not known yet is taken to run **one** request at a time,
//!   the smallest limit it can have;
//! - **1.0** when the server reports at least one waiting request: a queue means
//!   no free slot, whatever the other signals say.
//!
//! Values are clamped to 0–1; NaN and negative readings are ignored. With no
//! signal known the utilisation is unknown (`None`), which the batcher never reads
//! as idle.
//!
//! # Telemetry never batches less than no telemetry (issue 12, item 12)
//! A server that reports nothing reads `None`: its lanes always grow to `Full` or
//! `Deadline`. A reported load can only flush a lane *earlier* where it proves
//! room: `busy` under the target share of a capacity that is a **lower bound** of
//! the real one. Before this rule, a server that reported `running = 0, waiting
//! = 0` between bursts but had never queued had no capacity, so neither `running`
//! nor the gateway's in-flight counted: only its ~0 KV use and its empty queue did,
//! and it read **idle** for a whole scrape interval after a burst began. Every
//! request of the burst was then flushed alone (64 clients → 64 one-input calls to
//! a one-at-a-time embeddings server, 1.3 s of queue), while the same server with
//! no `/metrics` got 64-input batches. Now its first scrape makes the capacity at
//! least 1, the first flush puts one call in flight, and that in-flight call reads
//! busy until it returns: the lane grows exactly as it would without telemetry.
//!
//! # Capacity
//! No server family exports its concurrency limit in `/metrics`, so
//! [`CapacityEstimate`] learns it from the scrapes: a server runs at most its
//! limit, so every `running` seen is a lower bound of it (at least 1), and while it
//! reports waiting requests it runs exactly its limit. The estimate is the largest
//! `running` seen, at least 1, from the first scrape that reports it; it never
//! shrinks. Until the server has run at its real limit the estimate is low,
//! which reads as *busier* than it is: lanes then wait for their batch to fill, at
//! most the queue's `maxLatency` — the safe side for a batching gateway, and never
//! less batching than a server without telemetry gets.

/// What the gateway knows about one endpoint's load (all optional).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EndpointLoad {
    /// KV-cache use, 0–1.
    pub kv_usage: Option<f64>,
    /// GPU utilisation, 0–1.
    pub gpu_util: Option<f64>,
    /// Requests the server runs now.
    pub running: Option<f64>,
    /// Requests waiting in the server's queue.
    pub waiting: Option<f64>,
    /// Requests the server can run at once (see [`CapacityEstimate`]).
    pub capacity: Option<f64>,
    /// Requests the gateway has in flight to it (all shards).
    pub gateway_in_flight: Option<u32>,
}

/// A reading usable as a utilisation: finite and not negative, clamped to 1.
fn ratio(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite() && *x >= 0.0).map(|x| x.min(1.0))
}

/// A count: finite and not negative.
fn count(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite() && *x >= 0.0)
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

impl EndpointLoad {
    /// The endpoint's utilisation, 0–1 (see the module docs); `None` when no
    /// signal is known.
    pub fn utilization(&self) -> Option<f64> {
        let waiting = count(self.waiting);
        let queued = waiting.map(|w| if w >= 1.0 { 1.0 } else { 0.0 });
        let mut u = max_opt(ratio(self.kv_usage), ratio(self.gpu_util));
        u = max_opt(u, queued);
        let server = match (count(self.running), waiting) {
            (None, None) => None,
            (r, w) => Some(r.unwrap_or(0.0) + w.unwrap_or(0.0)),
        };
        // A server that reports its counts runs at least one request at once: with
        // no capacity learned, 1 is the lower bound (reads busier, never idler).
        let capacity = self
            .capacity
            .filter(|c| c.is_finite() && *c >= 1.0)
            .or(server.map(|_| 1.0));
        if let Some(cap) = capacity {
            let busy = max_opt(server, self.gateway_in_flight.map(f64::from));
            u = max_opt(u, busy.map(|b| (b / cap).min(1.0)));
        }
        u
    }
}

/// Learns an endpoint's concurrency limit from its scrapes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CapacityEstimate {
    learned: Option<f64>,
}

impl CapacityEstimate {
    /// Feeds one scrape's `running` (its `waiting` changes nothing: `running` is a
    /// lower bound of the limit whether or not the server queues); idempotent, so
    /// feeding the same scrape again changes nothing.
    pub fn observe(&mut self, running: Option<f64>) {
        let Some(r) = count(running) else {
            return;
        };
        // Whether or not it queues, a server runs at most its limit: `running` is a
        // lower bound of it, and so is 1.
        let r = r.max(1.0);
        self.learned = Some(self.learned.map_or(r, |c| c.max(r)));
    }

    /// The capacity learned so far (`None` until a scrape reported `running`).
    pub fn get(&self) -> Option<f64> {
        self.learned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(kv: Option<f64>, running: Option<f64>, waiting: Option<f64>) -> EndpointLoad {
        EndpointLoad {
            kv_usage: kv,
            running,
            waiting,
            ..EndpointLoad::default()
        }
    }

    #[test]
    fn nothing_known_is_unknown() {
        assert_eq!(EndpointLoad::default().utilization(), None);
        // A capacity alone says nothing about the load.
        let l = EndpointLoad {
            capacity: Some(8.0),
            ..EndpointLoad::default()
        };
        assert_eq!(l.utilization(), None);
    }

    #[test]
    fn kv_alone_reads_an_embedding_server_as_idle_but_a_queue_reads_full() {
        // An embedding server's KV use stays ~0, but 4 running with no capacity
        // known is 4 over the lower bound 1: busy, not idle.
        assert_eq!(
            load(Some(0.01), Some(4.0), Some(0.0)).utilization(),
            Some(1.0)
        );
        // An idle server (nothing running, nothing waiting) reads idle.
        assert_eq!(
            load(Some(0.01), Some(0.0), Some(0.0)).utilization(),
            Some(0.01)
        );
        // One waiting request: no room, whatever the KV cache says.
        assert_eq!(
            load(Some(0.01), Some(4.0), Some(1.0)).utilization(),
            Some(1.0)
        );
        assert_eq!(load(None, None, Some(3.0)).utilization(), Some(1.0));
        // A fractional average below one request is not a queue, but it is half
        // of the smallest capacity.
        assert_eq!(load(None, None, Some(0.5)).utilization(), Some(0.5));
    }

    #[test]
    fn running_over_capacity_and_the_gateways_in_flight() {
        let mut l = load(Some(0.0), Some(6.0), Some(0.0));
        l.capacity = Some(8.0);
        assert_eq!(l.utilization(), Some(0.75));
        // The gateway knows of more than the (older) scrape shows.
        l.gateway_in_flight = Some(7);
        assert_eq!(l.utilization(), Some(0.875));
        // Over capacity is clamped.
        l.gateway_in_flight = Some(30);
        assert_eq!(l.utilization(), Some(1.0));
        // In-flight counts even when the server reports no counts at all.
        let l = EndpointLoad {
            capacity: Some(4.0),
            gateway_in_flight: Some(1),
            ..EndpointLoad::default()
        };
        assert_eq!(l.utilization(), Some(0.25));
        // A zero capacity is no capacity (no division by zero): the lower bound 1.
        let l = EndpointLoad {
            capacity: Some(0.0),
            running: Some(0.5),
            ..EndpointLoad::default()
        };
        assert_eq!(l.utilization(), Some(0.5));
        // Neither counts nor capacity: the gateway's in-flight alone proves nothing
        // (a server without telemetry stays unknown, never idle).
        let l = EndpointLoad {
            capacity: Some(0.0),
            gateway_in_flight: Some(0),
            ..EndpointLoad::default()
        };
        assert_eq!(l.utilization(), None);
    }

    /// Issue 12, item 12: a one-at-a-time server that reports its counts, between
    /// bursts and before it ever queued, must not read idle while the gateway has
    /// a call in flight to it (no capacity learned yet).
    #[test]
    fn counts_without_a_capacity_use_the_lower_bound_one() {
        let idle_scrape = |in_flight| EndpointLoad {
            kv_usage: Some(0.0),
            running: Some(0.0),
            waiting: Some(0.0),
            gateway_in_flight: Some(in_flight),
            ..EndpointLoad::default()
        };
        assert_eq!(idle_scrape(0).utilization(), Some(0.0), "really idle");
        assert_eq!(
            idle_scrape(1).utilization(),
            Some(1.0),
            "one call in flight fills the smallest capacity"
        );
        // With the capacity learned from the same scrape, the same answers.
        let mut c = CapacityEstimate::default();
        c.observe(Some(0.0));
        assert_eq!(c.get(), Some(1.0));
        let l = EndpointLoad {
            capacity: c.get(),
            ..idle_scrape(1)
        };
        assert_eq!(l.utilization(), Some(1.0));
        // A server known to run 8 at once has room with 1 in flight.
        let l = EndpointLoad {
            capacity: Some(8.0),
            ..idle_scrape(1)
        };
        assert_eq!(l.utilization(), Some(0.125));
    }

    #[test]
    fn the_largest_signal_wins_and_bad_readings_are_ignored() {
        let l = EndpointLoad {
            kv_usage: Some(0.3),
            gpu_util: Some(0.9),
            running: Some(1.0),
            capacity: Some(10.0),
            ..EndpointLoad::default()
        };
        assert_eq!(l.utilization(), Some(0.9));
        let l = EndpointLoad {
            kv_usage: Some(f64::NAN),
            gpu_util: Some(-1.0),
            waiting: Some(f64::INFINITY),
            ..EndpointLoad::default()
        };
        assert_eq!(l.utilization(), None);
        assert_eq!(load(Some(7.0), None, None).utilization(), Some(1.0));
    }

    #[test]
    fn capacity_is_learned_from_scrapes_and_never_shrinks() {
        let mut c = CapacityEstimate::default();
        assert_eq!(c.get(), None, "nothing seen");
        c.observe(Some(3.0));
        assert_eq!(c.get(), Some(3.0), "3 running: the limit is at least 3");
        c.observe(Some(3.0));
        assert_eq!(c.get(), Some(3.0), "idempotent");
        c.observe(Some(0.0));
        assert_eq!(c.get(), Some(3.0), "an idle scrape does not shrink it");
        c.observe(Some(16.0));
        c.observe(Some(2.0));
        assert_eq!(c.get(), Some(16.0));
        c.observe(None);
        c.observe(Some(f64::NAN));
        c.observe(Some(-1.0));
        assert_eq!(c.get(), Some(16.0));
        // An idle scrape proves a limit of at least 1; no scrape proves nothing.
        let mut c = CapacityEstimate::default();
        c.observe(None);
        assert_eq!(c.get(), None);
        c.observe(Some(0.0));
        assert_eq!(c.get(), Some(1.0));
    }
}
