//! shardgate-autoscale: what an autoscaler (KEDA, an HPA on an external
//! metric) needs to size a model's replicas, computed from what the gateway
//! sees. Pure: samples in, numbers out, no clock and no I/O; the gateway's
//! `autoscale` module feeds it once per interval (default 10 s).
//!
//! Per model:
//! - **arrival rate** (requests/s over the last interval);
//! - **queueing**: requests waiting in the backends (their telemetry) and in
//!   the gateway (admission and batching queues);
//! - **capacity per replica** ([`Capacity`]): the concurrency one replica
//!   sustains within the SLO, measured: the highest number of running
//!   requests seen on a replica while nothing waited there and its TTFT was
//!   within the SLO, decaying slowly so that it follows a changed model or
//!   GPU (half-life about an hour at 10 s samples);
//! - **desired replicas now** ([`desired_replicas`]): the concurrency demand
//!   (running + waiting, or arrival rate × latency by Little's law when
//!   larger) over capacity × target utilisation (0.8), rounded up;
//! - **forecast** of desired replicas 1–5 minutes ahead: the arrival rate
//!   forecast by additive Holt-Winters with a daily season and a damped trend
//!   ([`forecast`]), times the mean latency, over the same capacity.

pub mod forecast;
pub mod replay;

pub use forecast::{HoltWinters, Params};

/// Fraction of a replica's measured capacity a scaling decision plans to use.
pub const TARGET_UTILIZATION: f64 = 0.8;

/// Per-sample decay of the measured capacity (half-life ≈ 347 samples:
/// about an hour at 10 s).
pub const CAPACITY_DECAY: f64 = 0.998;

/// The measured capacity of one model's replicas: the concurrency a replica
/// sustained within the SLO (see the crate doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    per_replica: f64,
    fallback: f64,
}

/// One replica's state at a sample (from its telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ReplicaSample {
    /// Requests running.
    pub running: f64,
    /// Requests waiting in its queue.
    pub waiting: f64,
    /// Its recent mean time to first token, seconds, when known.
    pub ttft: Option<f64>,
}

impl Capacity {
    /// No measurement yet; `fallback` (≥ 1) is used until one exists.
    pub fn new(fallback: f64) -> Self {
        Capacity {
            per_replica: 0.0,
            fallback: if fallback.is_finite() {
                fallback.max(1.0)
            } else {
                1.0
            },
        }
    }

    /// Take one sample of every replica: a replica with nothing waiting and
    /// a TTFT within `slo` seconds (or no TTFT known) shows it sustains its
    /// running count.
    pub fn observe(&mut self, replicas: &[ReplicaSample], slo: f64) {
        self.per_replica *= CAPACITY_DECAY;
        for r in replicas {
            let within = r.waiting <= 0.0 && r.ttft.is_none_or(|t| t <= slo);
            if within && r.running.is_finite() && r.running > self.per_replica {
                self.per_replica = r.running;
            }
        }
    }

    /// Requests one replica runs within the SLO: the measurement, else the
    /// fallback (also while the measurement is under 1).
    pub fn per_replica(&self) -> f64 {
        if self.per_replica >= 1.0 {
            self.per_replica
        } else {
            self.fallback
        }
    }

    /// Whether the figure is measured (not the fallback).
    pub fn measured(&self) -> bool {
        self.per_replica >= 1.0
    }
}

/// Replicas needed for `concurrency` requests in the system at `capacity`
/// per replica and [`TARGET_UTILIZATION`]: 0 for no demand, else at least 1.
pub fn desired_replicas(concurrency: f64, capacity: f64) -> u32 {
    if !concurrency.is_finite() || concurrency <= 0.0 {
        return 0;
    }
    let per = (capacity.max(1.0)) * TARGET_UTILIZATION;
    (concurrency / per).ceil().clamp(1.0, f64::from(u32::MAX)) as u32
}

/// Concurrency demand of `rate` requests/s that each spend `latency` seconds
/// in the system (Little's law).
pub fn littles_law(rate: f64, latency: f64) -> f64 {
    if rate.is_finite() && latency.is_finite() {
        (rate * latency).max(0.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_the_running_count_sustained_without_queueing_within_the_slo() {
        let mut c = Capacity::new(4.0);
        assert!(!c.measured());
        assert_eq!(c.per_replica(), 4.0);
        let r = |running, waiting, ttft| ReplicaSample {
            running,
            waiting,
            ttft,
        };
        // A queue, or a TTFT over the SLO, says nothing about capacity.
        c.observe(&[r(20.0, 3.0, Some(0.2)), r(18.0, 0.0, Some(5.0))], 2.0);
        assert!(!c.measured());
        c.observe(&[r(12.0, 0.0, Some(0.3)), r(9.0, 0.0, None)], 2.0);
        assert!(c.measured());
        assert!((c.per_replica() - 12.0).abs() < 1e-9);
        // It decays slowly without new evidence.
        for _ in 0..347 {
            c.observe(&[], 2.0);
        }
        assert!((c.per_replica() - 6.0).abs() < 0.1, "{}", c.per_replica());
    }

    #[test]
    fn desired_replicas_round_up_at_the_target_utilization() {
        assert_eq!(desired_replicas(0.0, 10.0), 0);
        assert_eq!(desired_replicas(0.1, 10.0), 1);
        assert_eq!(desired_replicas(8.0, 10.0), 1);
        assert_eq!(desired_replicas(8.1, 10.0), 2);
        assert_eq!(desired_replicas(f64::NAN, 10.0), 0);
        assert_eq!(desired_replicas(5.0, 0.0), 7, "capacity under 1 reads as 1");
        assert!((littles_law(20.0, 0.5) - 10.0).abs() < 1e-12);
    }
}
