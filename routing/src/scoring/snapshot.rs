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
//!
//! **What an endpoint serves** ([`EndpointView::serves`]). The control thread
//! polls each endpoint's `GET /v1/models` (default every 10 s) into a
//! [`ServedModels`]: base models, and LoRA adapters (entries with a `parent`,
//! as vLLM lists them). An endpoint never listed successfully serves anything
//! (the filter is off for it); a failed poll keeps the last list. Once listed,
//! an endpoint serves a name when
//!
//! 1. it is a base model: listed, or its telemetry's `model_name` label;
//! 2. it is an adapter loaded there: listed, or running / waiting in fresh
//!    `vllm:lora_requests_info`;
//! 3. it is an adapter some endpoint lists (the snapshot's
//!    [`ScoringSnapshot::adapters`] gives its base model), this endpoint
//!    serves that base model and its fresh LoRA state has a free slot
//!    ([`crate::telemetry::LoraState::has_free_slot`]: distinct running and
//!    waiting adapters fewer than `max_lora`): vLLM can load it.
//!
//! The lists live in the snapshot, built by the control thread; the check per
//! request compares strings and allocates nothing.

use std::time::Instant;

use crate::telemetry::{FreshView, SignalKind, TelemetryStore};

/// A LoRA adapter an endpoint lists in `GET /v1/models` (an entry with a
/// `parent`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServedAdapter {
    /// Adapter name (what a request's `model` names).
    pub name: String,
    /// Its base model (the entry's `parent`).
    pub base: String,
}

/// What an endpoint's `GET /v1/models` listed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServedModels {
    /// Base models (entries without a `parent`).
    pub models: Vec<String>,
    /// LoRA adapters.
    pub adapters: Vec<ServedAdapter>,
}

impl ServedModels {
    /// A list from names (tests, fakes): base models, and `(adapter, base)`.
    pub fn from_names(models: &[&str], adapters: &[(&str, &str)]) -> Self {
        Self {
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            adapters: adapters
                .iter()
                .map(|(name, base)| ServedAdapter {
                    name: (*name).to_owned(),
                    base: (*base).to_owned(),
                })
                .collect(),
        }
    }

    /// Whether `name` is a listed base model.
    pub fn has_model(&self, name: &str) -> bool {
        self.models.iter().any(|m| m == name)
    }

    /// The base model of listed adapter `name`.
    pub fn adapter_base(&self, name: &str) -> Option<&str> {
        adapter_base(&self.adapters, name)
    }
}

fn adapter_base<'a>(adapters: &'a [ServedAdapter], name: &str) -> Option<&'a str> {
    adapters
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.base.as_str())
}

/// What the control thread knows about one endpoint besides telemetry.
#[derive(Debug, Clone, Copy)]
pub struct EndpointInput<'a> {
    /// Endpoint id (index in the routing table's endpoints).
    pub id: usize,
    /// Health-check verdict (active and passive).
    pub healthy: bool,
    /// Its last successful `GET /v1/models` list; `None` (never listed)
    /// serves anything.
    pub models: Option<&'a ServedModels>,
    /// In-flight requests to it, summed over shards at the last report.
    pub inflight: u32,
    /// On the gateway's own node (the locality scorer).
    pub local: bool,
}

/// One endpoint in a snapshot.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EndpointView {
    /// Endpoint id (= position in [`ScoringSnapshot::endpoints`]).
    pub id: usize,
    /// Health verdict.
    pub healthy: bool,
    /// Its last successful `GET /v1/models` list; `None` (never listed)
    /// serves anything (see the module docs).
    pub models: Option<ServedModels>,
    /// Telemetry as of [`ScoringSnapshot::built_at`], stale signals removed.
    pub telemetry: FreshView,
    /// In-flight requests to it over all shards at the last report.
    pub inflight: u32,
    /// On the gateway's own node (EndpointSlice `nodeName` = `--node-name`).
    pub local: bool,
}

impl EndpointView {
    /// Whether it serves `model` and `adapter` at `now` (a `None` asks
    /// nothing; an endpoint never listed serves anything). `known` lists the
    /// adapters any endpoint lists, for their base models
    /// ([`ScoringSnapshot::adapters`]). See the module docs for the rules.
    pub fn serves(
        &self,
        model: Option<&str>,
        adapter: Option<&str>,
        known: &[ServedAdapter],
        now: Instant,
    ) -> bool {
        if self.models.is_none() {
            return true;
        }
        let serves = |n: Option<&str>| n.is_none_or(|n| self.serves_name(n, known, now));
        serves(model) && (adapter == model || serves(adapter))
    }

    /// Whether it serves `name` (a base model or an adapter) at `now`; see
    /// [`Self::serves`].
    pub fn serves_name(&self, name: &str, known: &[ServedAdapter], now: Instant) -> bool {
        let Some(listed) = &self.models else {
            return true;
        };
        if self.serves_base(name) || listed.adapter_base(name).is_some() {
            return true;
        }
        let lora = self.telemetry.lora_at(now);
        if lora.is_some_and(|l| l.is_running(name) || l.is_waiting(name)) {
            return true;
        }
        adapter_base(known, name)
            .is_some_and(|base| self.serves_base(base) && lora.is_some_and(|l| l.has_free_slot()))
    }

    /// Whether `name` is a base model it serves: listed by `/v1/models` or its
    /// telemetry's `model_name`. False when never listed.
    pub fn serves_base(&self, name: &str) -> bool {
        self.models.as_ref().is_some_and(|m| m.has_model(name))
            || self.telemetry.served_model.as_deref() == Some(name)
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
            models: None,
            telemetry: FreshView::with_signals(at, max_age, values),
            inflight: 0,
            local: false,
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
    /// Every adapter the endpoints list, once per name (the first listing's
    /// base model): where an adapter not loaded on an endpoint comes from.
    pub adapters: Vec<ServedAdapter>,
}

impl ScoringSnapshot {
    /// An empty snapshot (before the first scrape round).
    pub fn empty(now: Instant) -> Self {
        Self {
            generation: 0,
            built_at: now,
            endpoints: Vec::new(),
            adapters: Vec::new(),
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
                    models: input.models.cloned(),
                    telemetry: store.fresh(input.id, now),
                    inflight: input.inflight,
                    local: input.local,
                };
            }
        }
        let adapters = known_adapters(&endpoints);
        Self {
            generation,
            built_at: now,
            endpoints,
            adapters,
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
        let adapters = known_adapters(&endpoints);
        Self {
            generation,
            built_at,
            endpoints,
            adapters,
        }
    }

    /// The view of endpoint `id`.
    pub fn endpoint(&self, id: usize) -> Option<&EndpointView> {
        self.endpoints.get(id)
    }

    /// Whether endpoint `id` serves `model` and `adapter` at `now`
    /// ([`EndpointView::serves`] with this snapshot's adapters); false for an
    /// id it does not hold.
    pub fn serves(
        &self,
        id: usize,
        model: Option<&str>,
        adapter: Option<&str>,
        now: Instant,
    ) -> bool {
        self.endpoint(id)
            .is_some_and(|v| v.serves(model, adapter, &self.adapters, now))
    }
}

/// The adapters the views list, first listing per name.
fn known_adapters(endpoints: &[EndpointView]) -> Vec<ServedAdapter> {
    let mut out: Vec<ServedAdapter> = Vec::new();
    for a in endpoints
        .iter()
        .filter_map(|v| v.models.as_ref())
        .flat_map(|m| &m.adapters)
    {
        if !out.iter().any(|x| x.name == a.name) {
            out.push(a.clone());
        }
    }
    out
}
