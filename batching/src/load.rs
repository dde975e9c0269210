//! The adaptive-batching signal: how busy one target endpoint is, 0–1.
//!
//! With `adaptiveBatching`, a lane flushes at once while its target's utilisation
//! is below `targetUtilization` and grows towards `maxBatchSize` / `maxLatency`
//! otherwise (see [`crate::batcher`]). KV-cache use alone is not enough: it stays
//! near 0 on embedding and classification servers (a prefill-only request frees its
//! blocks at once), so those would always read idle and never batch.
//! [`EndpointLoad::utilization`] is therefore the **largest** of the signals known:
//! - KV-cache use (0–1) and GPU utilisation (0–1, e.g. from the DCGM exporter);
//! - `busy / capacity` when the capacity (requests the server runs at once, vLLM's
//!   `max_num_seqs`) is known, with `busy = max(running + waiting, gateway
//!   in-flight)`: the gateway's own in-flight requests to the endpoint are a live
//!   lower bound of what it holds, fresher than the last scrape;
//! - **1.0** when the server reports at least one waiting request: a queue means
//!   no free slot, whatever the other signals say.
//!
//! Values are clamped to 0–1; NaN and negative readings are ignored. With no
//! signal known the utilisation is unknown (`None`), which the batcher never reads
//! as idle.
//!
//! # Capacity
//! No server family exports its concurrency limit in `/metrics`, so
//! [`CapacityEstimate`] learns it from the scrapes: while a server reports waiting
//! requests it runs as many as it can, so the estimate is the largest `running`
//! seen together with `waiting ≥ 1` (at least 1). It never shrinks. Until the
//! server has queued at its real limit the estimate is low, which reads as *busier*
//! than it is: lanes then wait for their batch to fill, at most the queue's
//! `maxLatency` — the safe side for a batching gateway.

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
        if let Some(cap) = self.capacity.filter(|c| c.is_finite() && *c >= 1.0) {
            let server = match (count(self.running), waiting) {
                (None, None) => None,
                (r, w) => Some(r.unwrap_or(0.0) + w.unwrap_or(0.0)),
            };
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
    /// Feeds one scrape's `running` and `waiting`; idempotent, so feeding the same
    /// scrape again changes nothing.
    pub fn observe(&mut self, running: Option<f64>, waiting: Option<f64>) {
        let (Some(r), Some(w)) = (count(running), count(waiting)) else {
            return;
        };
        if w >= 1.0 {
            let r = r.max(1.0);
            self.learned = Some(self.learned.map_or(r, |c| c.max(r)));
        }
    }

    /// The capacity learned so far (`None` until the server first queued).
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
        // The old signal: an embedding server's KV use stays ~0.
        assert_eq!(
            load(Some(0.01), Some(4.0), Some(0.0)).utilization(),
            Some(0.01)
        );
        // One waiting request: no room, whatever the KV cache says.
        assert_eq!(
            load(Some(0.01), Some(4.0), Some(1.0)).utilization(),
            Some(1.0)
        );
        assert_eq!(load(None, None, Some(3.0)).utilization(), Some(1.0));
        // A fractional average below one request is not a queue.
        assert_eq!(load(None, None, Some(0.5)).utilization(), Some(0.0));
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
        // A zero capacity is no capacity (no division by zero).
        let l = EndpointLoad {
            capacity: Some(0.0),
            running: Some(3.0),
            ..EndpointLoad::default()
        };
        assert_eq!(l.utilization(), None);
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
    fn capacity_is_learned_from_queued_scrapes_and_never_shrinks() {
        let mut c = CapacityEstimate::default();
        c.observe(Some(5.0), Some(0.0));
        assert_eq!(c.get(), None, "no queue, no evidence of the limit");
        c.observe(Some(3.0), Some(2.0));
        assert_eq!(c.get(), Some(3.0));
        c.observe(Some(3.0), Some(2.0));
        assert_eq!(c.get(), Some(3.0), "idempotent");
        c.observe(Some(16.0), Some(1.0));
        c.observe(Some(2.0), Some(9.0));
        assert_eq!(c.get(), Some(16.0));
        c.observe(None, Some(4.0));
        c.observe(Some(f64::NAN), Some(4.0));
        assert_eq!(c.get(), Some(16.0));
        // A queue with nothing running still proves a limit of at least 1.
        let mut c = CapacityEstimate::default();
        c.observe(Some(0.0), Some(1.0));
        assert_eq!(c.get(), Some(1.0));
    }
}
