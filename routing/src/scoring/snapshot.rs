//! The immutable scoring snapshot that the control thread publishes to every
//! shard.
//!
//! Every scrape round (default 100 ms) the control thread builds a
//! [`ScoringSnapshot`] from the [`TelemetryStore`] (fresh views), the health
//! checker's verdicts and the in-flight totals the shards report (summed, not
//! per request), and publishes it with `arc-swap`. It is plain owned data
//! (`Send + Sync`, no interior mutability), so an `Arc<ScoringSnapshot>` swap
//! is all a publish costs; shards read it lock-free and keep using the last one
//! if the control thread stalls. Each view keeps its signals' scrape stamps, so
//! a pick on an old snapshot still drops signals that went stale since.
//!
//! Endpoints sit at their id: `endpoints[id].id == id`, the id being the
//! index in [`crate::RoutingTable::endpoints`]. Ids the control thread did not
//! list are filled with unhealthy placeholders.

use std::time::Instant;

use crate::telemetry::{FreshView, SignalKind, TelemetryStore};

/// What the control thread knows about one endpoint besides telemetry.
#[derive(Debug, Clone, Copy)]
pub struct EndpointInput<'a> {
    /// Endpoint id (index in the routing table's endpoints).
    pub id: usize,
    /// Health-check verdict (active and passive).
    pub healthy: bool,
    /// Models and adapters the endpoint serves; empty = any.
    pub models: &'a [String],
    /// In-flight requests to it, summed over shards at the last report.
    pub inflight: u32,
}

/// One endpoint in a snapshot.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EndpointView {
    /// Endpoint id (= position in [`ScoringSnapshot::endpoints`]).
    pub id: usize,
    /// Health verdict.
    pub healthy: bool,
    /// Models and adapters it serves; empty = any.
    pub models: Vec<String>,
    /// Telemetry as of [`ScoringSnapshot::built_at`], stale signals removed.
    pub telemetry: FreshView,
    /// In-flight requests to it over all shards at the last report.
    pub inflight: u32,
}

impl EndpointView {
    /// Whether it serves `model` and `adapter` (an empty model list serves
    /// anything; a `None` asks nothing).
    pub fn serves(&self, model: Option<&str>, adapter: Option<&str>) -> bool {
        if self.models.is_empty() {
            return true;
        }
        let has = |m: Option<&str>| m.is_none_or(|m| self.models.iter().any(|x| x == m));
        has(model) && has(adapter)
    }

    /// A view with the given fresh signals (tests, benches, fakes).
    pub fn with_signals(
        id: usize,
        at: Instant,
        max_age: std::time::Duration,
        values: &[(SignalKind, f64)],
    ) -> Self {
        Self {
            id,
            healthy: true,
            models: Vec::new(),
            telemetry: FreshView::with_signals(at, max_age, values),
            inflight: 0,
        }
    }
}

/// What every shard scores against; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringSnapshot {
    /// Increases with every publish.
    pub generation: u64,
    /// When the control thread built it.
    pub built_at: Instant,
    /// Endpoint views, indexed by id.
    pub endpoints: Vec<EndpointView>,
}

impl ScoringSnapshot {
    /// An empty snapshot (before the first scrape round).
    pub fn empty(now: Instant) -> Self {
        Self {
            generation: 0,
            built_at: now,
            endpoints: Vec::new(),
        }
    }

    /// Builds a snapshot at `now` from the store and the control thread's
    /// per-endpoint facts.
    pub fn build<'a>(
        generation: u64,
        now: Instant,
        store: &TelemetryStore,
        inputs: impl IntoIterator<Item = EndpointInput<'a>>,
    ) -> Self {
        let mut endpoints: Vec<EndpointView> = Vec::new();
        for input in inputs {
            if endpoints.len() <= input.id {
                let start = endpoints.len();
                endpoints.extend((start..=input.id).map(|id| EndpointView {
                    id,
                    telemetry: store.fresh(id, now),
                    ..EndpointView::default()
                }));
            }
            if let Some(v) = endpoints.get_mut(input.id) {
                *v = EndpointView {
                    id: input.id,
                    healthy: input.healthy,
                    models: input.models.to_vec(),
                    telemetry: store.fresh(input.id, now),
                    inflight: input.inflight,
                };
            }
        }
        Self {
            generation,
            built_at: now,
            endpoints,
        }
    }

    /// Assembles a snapshot from views (tests, benches); views are placed at
    /// their ids.
    pub fn from_views(generation: u64, built_at: Instant, views: Vec<EndpointView>) -> Self {
        let mut endpoints: Vec<EndpointView> = Vec::new();
        for v in views {
            if endpoints.len() <= v.id {
                let start = endpoints.len();
                endpoints.extend((start..=v.id).map(|id| EndpointView {
                    id,
                    ..EndpointView::default()
                }));
            }
            let id = v.id;
            if let Some(slot) = endpoints.get_mut(id) {
                *slot = v;
            }
        }
        Self {
            generation,
            built_at,
            endpoints,
        }
    }

    /// The view of endpoint `id`.
    pub fn endpoint(&self, id: usize) -> Option<&EndpointView> {
        self.endpoints.get(id)
    }
}
