//! Batching policy: the validated, plain-value form of a `BatchingPolicy`.
//!
//! The routing crate owns the YAML (`BatchingPolicy.spec`); it hands the values to
//! [`BatchSpec`] and [`BatchPolicy::from_spec`] turns them into a [`BatchPolicy`]
//! that the [`Batcher`](crate::Batcher) runs. Nothing here parses YAML or reads a
//! clock.
//!
//! # Rules (numbers)
//! - Top-level defaults when the spec leaves them out: `maxBatchSize` **32**,
//!   `maxLatency` **50 ms**, `adaptiveBatching.targetUtilization` **0.8** (the seed's
//!   values).
//! - A queue that leaves out `maxLatency` / `maxBatchSize` inherits the top-level
//!   value.
//! - The **default queue** (requests without `X-Priority`) is the listed queue named
//!   `default` if there is one, otherwise an implicit queue named `default` built from
//!   the top-level values.
//! - **Priorities** ([`BatchPolicy::from_spec`]): queues are ranked by `maxLatency`,
//!   shortest first (a tighter bound is more urgent), ties in listing order with the
//!   implicit default queue last; with `n` queues the most urgent gets priority
//!   `n - 1`, the least urgent `0`. The seed gives `real-time` 2, `default` 1,
//!   `batch` 0. [`BatchPolicy::new`] takes explicit priorities instead.
//! - **Queue by request priority** ([`BatchPolicy::queue_for_priority`]): a request
//!   without `X-Priority` whose resolved priority (`X-Request-Priority`, its
//!   `InferenceObjective` / `InferenceModel`) is above 0 goes to the most urgent
//!   queue, 0 to the default queue, below 0 (sheddable) to the least urgent queue.
//! - **Wait timeout** (a queued request expires with
//!   [`Reject::Timeout`](crate::Reject::Timeout)): default **10 × `maxLatency`**
//!   (at least 1 ms); it must exceed `maxLatency`.
//! - **Queue capacity** per shard and queue: default **4096** requests; a full queue
//!   rejects with [`Reject::QueueFull`](crate::Reject::QueueFull).
//! - **Starvation limit**: default **8** (see [`crate::batcher`]).
//! - At most **64** queues; `maxBatchSize` in `1..=65_536`; `maxLatency` ≤ 1 hour;
//!   wait timeout ≤ 24 hours; `targetUtilization` in `(0, 1]`.

use std::time::Duration;

use thiserror::Error;

/// Default `maxBatchSize` when the spec leaves it out.
pub const DEFAULT_MAX_BATCH_SIZE: u32 = 32;
/// Default `maxLatency` when the spec leaves it out.
pub const DEFAULT_MAX_LATENCY: Duration = Duration::from_millis(50);
/// Default `adaptiveBatching.targetUtilization`.
pub const DEFAULT_TARGET_UTILIZATION: f64 = 0.8;
/// Default per-shard, per-queue capacity.
pub const DEFAULT_MAX_QUEUED: usize = 4096;
/// Default wait timeout as a multiple of the queue's `maxLatency`.
pub const DEFAULT_TIMEOUT_FACTOR: u32 = 10;
/// Default starvation limit (passed-over polls before a lower-priority batch goes next).
pub const DEFAULT_STARVATION_LIMIT: u32 = 8;
/// Name of the implicit default queue.
pub const DEFAULT_QUEUE: &str = "default";
/// Most queues a policy may have.
pub const MAX_QUEUES: usize = 64;
/// Largest accepted `maxBatchSize`.
pub const MAX_BATCH_SIZE_LIMIT: u32 = 65_536;
/// Longest accepted `maxLatency`.
pub const MAX_LATENCY_LIMIT: Duration = Duration::from_secs(3600);
/// Longest accepted wait timeout (keeps `Instant` arithmetic far from overflow).
pub const MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Adaptive batching (`spec.adaptiveBatching`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptive {
    /// Whether the flush follows the target's utilisation.
    pub enabled: bool,
    /// Utilisation (0–1) below which a batch flushes at once.
    pub target_utilization: f64,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            enabled: false,
            target_utilization: DEFAULT_TARGET_UTILIZATION,
        }
    }
}

/// One priority queue, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// Queue name (the `X-Priority` header value); non-empty, unique.
    pub name: String,
    /// Higher is served first when several queues have a ready batch.
    pub priority: i32,
    /// Longest the oldest member of a batch waits before the batch flushes.
    pub max_latency: Duration,
    /// Most inputs in one batch (a single larger request still goes, alone).
    pub max_batch_size: u32,
    /// Most requests queued on one shard; more are rejected with `QueueFull`.
    pub max_queued: usize,
    /// A request still queued this long after it arrived expires (`Timeout`).
    pub wait_timeout: Duration,
}

impl QueuePolicy {
    /// A queue with the given bounds, default capacity and default wait timeout
    /// (10 × `max_latency`, at least 1 ms).
    pub fn new(
        name: impl Into<String>,
        priority: i32,
        max_latency: Duration,
        max_batch_size: u32,
    ) -> Self {
        QueuePolicy {
            name: name.into(),
            priority,
            max_latency,
            max_batch_size,
            max_queued: DEFAULT_MAX_QUEUED,
            wait_timeout: default_timeout(max_latency),
        }
    }
}

fn default_timeout(max_latency: Duration) -> Duration {
    max_latency
        .saturating_mul(DEFAULT_TIMEOUT_FACTOR)
        .max(Duration::from_millis(1))
}

/// `spec.priorityQueues[]` as written (all optional but the name).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// `maxLatency`, inherits the top-level value when `None`.
    pub max_latency: Option<Duration>,
    /// `maxBatchSize`, inherits the top-level value when `None`.
    pub max_batch_size: Option<u32>,
}

/// `BatchingPolicy.spec` as written, in plain values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchSpec {
    /// `maxBatchSize` (default 32).
    pub max_batch_size: Option<u32>,
    /// `maxLatency` (default 50 ms).
    pub max_latency: Option<Duration>,
    /// `adaptiveBatching.enabled`.
    pub adaptive_enabled: bool,
    /// `adaptiveBatching.targetUtilization` (default 0.8).
    pub target_utilization: Option<f64>,
    /// `priorityQueues`.
    pub queues: Vec<QueueSpec>,
}

/// A validated batching policy: the queues a shard's [`Batcher`](crate::Batcher) runs.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPolicy {
    queues: Vec<QueuePolicy>,
    default_queue: usize,
    adaptive: Adaptive,
    starvation_limit: u32,
}

/// Why a policy is invalid; `field` is the manifest path (`spec.priorityQueues[1].maxBatchSize`).
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{field}: {problem}")]
pub struct PolicyError {
    /// Manifest field path.
    pub field: String,
    /// What is wrong, in words.
    pub problem: String,
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        problem: problem.into(),
    }
}

impl BatchPolicy {
    /// Builds the policy from the manifest's values (defaults, inheritance and
    /// priorities as the module docs say), then validates it.
    pub fn from_spec(spec: &BatchSpec) -> Result<Self, PolicyError> {
        let top_size = spec.max_batch_size.unwrap_or(DEFAULT_MAX_BATCH_SIZE);
        let top_latency = spec.max_latency.unwrap_or(DEFAULT_MAX_LATENCY);
        check_size(top_size, "spec.maxBatchSize")?;
        check_latency(top_latency, "spec.maxLatency")?;
        let target = spec
            .target_utilization
            .unwrap_or(DEFAULT_TARGET_UTILIZATION);
        let mut queues: Vec<QueuePolicy> = Vec::with_capacity(spec.queues.len() + 1);
        for (i, q) in spec.queues.iter().enumerate() {
            let size = q.max_batch_size.unwrap_or(top_size);
            let latency = q.max_latency.unwrap_or(top_latency);
            check_size(size, &format!("spec.priorityQueues[{i}].maxBatchSize"))?;
            check_latency(latency, &format!("spec.priorityQueues[{i}].maxLatency"))?;
            queues.push(QueuePolicy::new(q.name.clone(), 0, latency, size));
        }
        let default_name = DEFAULT_QUEUE;
        if !queues.iter().any(|q| q.name == default_name) {
            queues.push(QueuePolicy::new(default_name, 0, top_latency, top_size));
        }
        // Rank by latency, ties in listing order (the sort is stable; the implicit
        // default queue was pushed last).
        // Listed queue i stays at index i, so errors from `new` name spec paths.
        let mut order: Vec<usize> = (0..queues.len()).collect();
        order.sort_by_key(|&i| queues[i].max_latency);
        let n = queues.len();
        for (rank, &i) in order.iter().enumerate() {
            // n ≤ MAX_QUEUES + 1 is checked by `new`; clamp so the cast cannot wrap.
            queues[i].priority = i32::try_from(n - 1 - rank).unwrap_or(i32::MAX);
        }
        BatchPolicy::new(
            queues,
            default_name,
            Adaptive {
                enabled: spec.adaptive_enabled,
                target_utilization: target,
            },
        )
    }

    /// A policy from fully resolved queues; `default_queue` names one of them.
    /// Validates names (non-empty, unique), sizes, latencies, timeouts, capacities
    /// and the adaptive target.
    pub fn new(
        queues: Vec<QueuePolicy>,
        default_queue: &str,
        adaptive: Adaptive,
    ) -> Result<Self, PolicyError> {
        if queues.is_empty() {
            return Err(err("spec.priorityQueues", "at least one queue is needed"));
        }
        if queues.len() > MAX_QUEUES {
            return Err(err(
                "spec.priorityQueues",
                format!("{} queues, at most {MAX_QUEUES}", queues.len()),
            ));
        }
        let t = adaptive.target_utilization;
        if !(t > 0.0 && t <= 1.0) {
            return Err(err(
                "spec.adaptiveBatching.targetUtilization",
                format!("{t} is outside (0, 1]"),
            ));
        }
        for (i, q) in queues.iter().enumerate() {
            let at = |f: &str| format!("spec.priorityQueues[{i}].{f}");
            if q.name.is_empty() {
                return Err(err(at("name"), "must not be empty"));
            }
            if queues[..i].iter().any(|p| p.name == q.name) {
                return Err(err(
                    at("name"),
                    format!("duplicate priority queue name {:?}", q.name),
                ));
            }
            check_size(q.max_batch_size, &at("maxBatchSize"))?;
            check_latency(q.max_latency, &at("maxLatency"))?;
            if q.max_queued == 0 {
                return Err(err(at("maxQueued"), "must be at least 1"));
            }
            check_timeout(q.wait_timeout, q.max_latency, &at("waitTimeout"))?;
        }
        let Some(default_idx) = queues.iter().position(|q| q.name == default_queue) else {
            return Err(err(
                "defaultQueue",
                format!("{default_queue:?} is not one of the queues"),
            ));
        };
        // Store most urgent first: the batcher scans in this order. Stable, so equal
        // priorities keep their given order.
        let default_name = queues[default_idx].name.clone();
        let mut queues = queues;
        queues.sort_by_key(|q| std::cmp::Reverse(q.priority));
        let default_queue = queues
            .iter()
            .position(|q| q.name == default_name)
            .unwrap_or(0);
        Ok(BatchPolicy {
            queues,
            default_queue,
            adaptive,
            starvation_limit: DEFAULT_STARVATION_LIMIT,
        })
    }

    /// Sets the starvation limit (≥ 1): how many polls may pass over a ready batch
    /// of a lower-priority queue before it goes next.
    pub fn with_starvation_limit(mut self, limit: u32) -> Self {
        self.starvation_limit = limit.max(1);
        self
    }

    /// Replaces every queue's capacity.
    pub fn with_max_queued(mut self, max_queued: usize) -> Self {
        for q in &mut self.queues {
            q.max_queued = max_queued.max(1);
        }
        self
    }

    /// Sets one queue's wait timeout (must exceed its `max_latency`).
    pub fn with_wait_timeout(
        mut self,
        queue: &str,
        timeout: Duration,
    ) -> Result<Self, PolicyError> {
        let Some(q) = self.queues.iter_mut().find(|q| q.name == queue) else {
            return Err(err("waitTimeout", format!("no queue named {queue:?}")));
        };
        check_timeout(timeout, q.max_latency, "waitTimeout")?;
        q.wait_timeout = timeout;
        Ok(self)
    }

    /// Queues, most urgent (highest priority) first; a [`QueueId`] indexes this slice.
    pub fn queues(&self) -> &[QueuePolicy] {
        &self.queues
    }

    /// The queue a request without `X-Priority` goes to.
    pub fn default_queue(&self) -> QueueId {
        QueueId(self.default_queue)
    }

    /// The queue for a request without `X-Priority`, by its resolved priority: above
    /// 0 the most urgent queue, 0 the default queue, below 0 the least urgent one.
    pub fn queue_for_priority(&self, priority: i32) -> QueueId {
        match priority.cmp(&0) {
            std::cmp::Ordering::Greater => QueueId(0),
            std::cmp::Ordering::Equal => self.default_queue(),
            std::cmp::Ordering::Less => QueueId(self.queues.len().saturating_sub(1)),
        }
    }

    /// Looks a queue up by name (`X-Priority` value); `None` → the gateway answers 400.
    pub fn queue_id(&self, name: &str) -> Option<QueueId> {
        self.queues.iter().position(|q| q.name == name).map(QueueId)
    }

    /// The queue behind an id, if the id belongs to this policy.
    pub fn queue(&self, id: QueueId) -> Option<&QueuePolicy> {
        self.queues.get(id.0)
    }

    /// Adaptive settings.
    pub fn adaptive(&self) -> Adaptive {
        self.adaptive
    }

    /// Starvation limit (see [`crate::batcher`]).
    pub fn starvation_limit(&self) -> u32 {
        self.starvation_limit
    }
}

/// Index of a queue in [`BatchPolicy::queues`] (most urgent first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub usize);

fn check_size(size: u32, field: &str) -> Result<(), PolicyError> {
    if size == 0 || size > MAX_BATCH_SIZE_LIMIT {
        return Err(err(
            field,
            format!("{size} is outside 1..={MAX_BATCH_SIZE_LIMIT}"),
        ));
    }
    Ok(())
}

fn check_timeout(timeout: Duration, latency: Duration, field: &str) -> Result<(), PolicyError> {
    if timeout <= latency {
        return Err(err(
            field,
            format!("{timeout:?} must exceed maxLatency {latency:?}"),
        ));
    }
    if timeout > MAX_WAIT_TIMEOUT {
        return Err(err(
            field,
            format!("{timeout:?} is longer than {MAX_WAIT_TIMEOUT:?}"),
        ));
    }
    Ok(())
}

fn check_latency(latency: Duration, field: &str) -> Result<(), PolicyError> {
    if latency > MAX_LATENCY_LIMIT {
        return Err(err(
            field,
            format!("{latency:?} is longer than {MAX_LATENCY_LIMIT:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The seed's `smart-batching` document.
    pub(crate) fn seed() -> BatchSpec {
        BatchSpec {
            max_batch_size: Some(32),
            max_latency: Some(ms(50)),
            adaptive_enabled: true,
            target_utilization: Some(0.8),
            queues: vec![
                QueueSpec {
                    name: "real-time".into(),
                    max_latency: Some(ms(10)),
                    max_batch_size: Some(4),
                },
                QueueSpec {
                    name: "batch".into(),
                    max_latency: Some(ms(100)),
                    max_batch_size: Some(64),
                },
            ],
        }
    }

    #[test]
    fn seed_resolves_with_latency_ranked_priorities() {
        let p = BatchPolicy::from_spec(&seed()).unwrap();
        let names: Vec<(&str, i32, u32)> = p
            .queues()
            .iter()
            .map(|q| (q.name.as_str(), q.priority, q.max_batch_size))
            .collect();
        assert_eq!(
            names,
            [("real-time", 2, 4), ("default", 1, 32), ("batch", 0, 64)]
        );
        assert_eq!(p.queue(p.default_queue()).unwrap().name, "default");
        assert_eq!(p.queue_id("batch"), Some(QueueId(2)));
        assert_eq!(p.queue_id("bulk"), None);
        let rt = p.queue(QueueId(0)).unwrap();
        assert_eq!(rt.max_latency, ms(10));
        assert_eq!(rt.wait_timeout, ms(100));
        assert!(p.adaptive().enabled);
    }

    #[test]
    fn request_priority_picks_the_queue() {
        let p = BatchPolicy::from_spec(&seed()).unwrap();
        let name = |prio| p.queue(p.queue_for_priority(prio)).unwrap().name.as_str();
        assert_eq!(name(1), "real-time");
        assert_eq!(name(i32::MAX), "real-time");
        assert_eq!(name(0), "default");
        assert_eq!(name(-1), "batch");
        assert_eq!(name(i32::MIN), "batch");
        // One queue serves every priority.
        let one = BatchPolicy::from_spec(&BatchSpec::default()).unwrap();
        for prio in [-5, 0, 5] {
            assert_eq!(one.queue_for_priority(prio), QueueId(0));
        }
    }

    #[test]
    fn empty_spec_has_one_default_queue() {
        let p = BatchPolicy::from_spec(&BatchSpec::default()).unwrap();
        assert_eq!(p.queues().len(), 1);
        let q = &p.queues()[0];
        assert_eq!(
            (q.name.as_str(), q.max_batch_size, q.max_latency),
            ("default", 32, ms(50))
        );
        assert!(!p.adaptive().enabled);
    }

    #[test]
    fn listed_default_queue_is_used_and_inherits() {
        let spec = BatchSpec {
            max_batch_size: Some(8),
            queues: vec![QueueSpec {
                name: "default".into(),
                max_latency: Some(ms(5)),
                max_batch_size: None,
            }],
            ..BatchSpec::default()
        };
        let p = BatchPolicy::from_spec(&spec).unwrap();
        assert_eq!(p.queues().len(), 1);
        assert_eq!(p.queues()[0].max_batch_size, 8);
        assert_eq!(p.queues()[0].max_latency, ms(5));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let mut s = seed();
        s.queues[1].max_batch_size = Some(0);
        let e = BatchPolicy::from_spec(&s).unwrap_err();
        assert_eq!(e.field, "spec.priorityQueues[1].maxBatchSize");

        let mut s = seed();
        s.queues[1].name = "real-time".into();
        let e = BatchPolicy::from_spec(&s).unwrap_err();
        assert_eq!(e.field, "spec.priorityQueues[1].name");
        assert!(e.problem.contains("duplicate"), "{e}");

        let mut s = seed();
        s.queues[0].name = String::new();
        assert_eq!(
            BatchPolicy::from_spec(&s).unwrap_err().field,
            "spec.priorityQueues[0].name"
        );

        for t in [0.0, -0.1, 1.5, f64::NAN] {
            let mut s = seed();
            s.target_utilization = Some(t);
            assert_eq!(
                BatchPolicy::from_spec(&s).unwrap_err().field,
                "spec.adaptiveBatching.targetUtilization"
            );
        }

        let mut s = seed();
        s.max_batch_size = Some(0);
        assert_eq!(
            BatchPolicy::from_spec(&s).unwrap_err().to_string(),
            "spec.maxBatchSize: 0 is outside 1..=65536"
        );

        let mut s = seed();
        s.max_latency = Some(Duration::from_secs(7200));
        assert_eq!(
            BatchPolicy::from_spec(&s).unwrap_err().field,
            "spec.maxLatency"
        );
    }

    #[test]
    fn explicit_policy_checks_default_and_timeouts() {
        let q = QueuePolicy::new("a", 0, ms(10), 4);
        assert!(BatchPolicy::new(vec![q.clone()], "b", Adaptive::default()).is_err());
        assert!(BatchPolicy::new(vec![], "a", Adaptive::default()).is_err());
        let mut bad = q.clone();
        bad.wait_timeout = ms(10);
        assert_eq!(
            BatchPolicy::new(vec![bad], "a", Adaptive::default())
                .unwrap_err()
                .field,
            "spec.priorityQueues[0].waitTimeout"
        );
        let p = BatchPolicy::new(vec![q], "a", Adaptive::default()).unwrap();
        assert!(p.clone().with_wait_timeout("a", ms(5)).is_err());
        assert!(p.clone().with_wait_timeout("zz", ms(50)).is_err());
        assert!(p.clone().with_wait_timeout("a", Duration::MAX).is_err());
        let p = p.with_wait_timeout("a", ms(50)).unwrap();
        assert_eq!(p.queues()[0].wait_timeout, ms(50));
        let many: Vec<QueuePolicy> = (0..65)
            .map(|i| QueuePolicy::new(format!("q{i}"), i, ms(1), 1))
            .collect();
        assert!(BatchPolicy::new(many, "q0", Adaptive::default()).is_err());
    }

    #[test]
    fn zero_latency_queue_gets_a_positive_timeout() {
        let q = QueuePolicy::new("now", 0, Duration::ZERO, 4);
        assert_eq!(q.wait_timeout, ms(1));
        assert!(BatchPolicy::new(vec![q], "now", Adaptive::default()).is_ok());
    }
}
