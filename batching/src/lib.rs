//! Per-core micro-batching and priority flow control for shardgate (issue 6).
//!
//! Sans-IO: nothing here does I/O or reads a clock. Every call that depends on time
//! takes `now: Instant`, so the whole crate is tested on a virtual clock. A shard
//! owns one [`Batcher`] and one [`Admission`]; nothing is shared between shards
//! except the shares the control thread computes with [`rebalance`].
//!
//! | module | job |
//! |---|---|
//! | [`policy`] | `BatchingPolicy` as plain values: queues, latencies, sizes, adaptive target, priorities |
//! | [`batcher`] | per-shard priority queues and lanes by batch key; flush on full / deadline / adaptive; starvation bound; timeouts |
//! | [`admission`] | `maxConcurrentInferences` shares per shard, admit / queue / shed, `rebalance` |
//! | [`load`] | the adaptive signal: an endpoint's utilisation from KV use, running / capacity, its queue and the gateway's in-flight |
//! | [`merge`](mod@merge) | byte-exact merge and split of `/v1/embeddings` and `/v1/completions` bodies |
//! | [`stats`] | counters and fixed-bucket histograms for the metrics |
//!
//! # Driving it from a shard (integration sketch)
//! ```text
//! on request (path, headers, body):
//!     queue  = batcher.queue_id(header X-Priority)        // Err(UnknownQueue) → 400
//!     admit  = admission.try_acquire(priority, Some(now + queue.wait_timeout))
//!              Shed → 429 + Retry-After;  Queued(t) → park until Granted(t)
//!     class  = merge::classify(path, body)                // Ok(None) / Err → key None
//!     batcher.push(Pending { queue, key, items, payload }, now)  // Err → 429 / 400
//!     drain()
//! drain():
//!     while let Some(b) = batcher.poll_ready(now, utilization_of_target) {   // load::EndpointLoad
//!         merged = merge::merge(b.key?, member bodies)   (key None: send the lone request as is)
//!         send upstream; on 2xx: merge::split(resp, &merged.plan) → one body per member
//!                         on error: merge::split_error(status, body, n)
//!                                   (or resend each member alone if merge::retry_alone(status))
//!         admission.release() once per member when its answer is done
//!     }
//!     while let Some(x) = batcher.poll_expired(now)   { 429 to x.payload }
//!     while let Some(e) = admission.poll_event(now)   { Granted → push; Shed/TimedOut → 429 }
//!     arm one timer at min(batcher.next_deadline(), batcher.next_expiry(), admission.next_deadline())
//! also drain() on every timer, on every release, and when a new telemetry snapshot arrives.
//! ```
//!
//! The batch key covers the body only. If members can differ in anything else the
//! gateway sends upstream (route, target pool, forwarded credentials or adapter
//! headers), use `Batcher<T, (BatchKey, Context)>` so they never share a lane, and
//! pass the `BatchKey` half to `merge`. `tests/shard_loop.rs` runs this recipe on a
//! virtual clock against the fake server.

#![forbid(unsafe_code)]

pub mod admission;
pub mod batcher;
mod json;
pub mod load;
pub mod merge;
pub mod policy;
pub mod stats;

pub use admission::{
    next_shares, rebalance, Admission, AdmissionConfig, AdmissionEvent, Budget, Decision, Shed,
    ShedReason, WaitTicket,
};
pub use batcher::{
    BatchInfo, Batcher, Expired, FlushReason, Pending, ReadyBatch, Reject, Rejected, Ticket,
};
pub use load::{CapacityEstimate, EndpointLoad};
pub use merge::{
    batch_key, classify, merge, retry_alone, split, split_error, BatchKey, Batchable, Endpoint,
    InputForm, MemberError, MergeError, Merged, SplitError, SplitPlan,
};
pub use policy::{Adaptive, BatchPolicy, BatchSpec, PolicyError, QueueId, QueuePolicy, QueueSpec};
