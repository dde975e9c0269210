//! Request priorities from the Gateway API Inference Extension kinds, resolved
//! once when the table is built so a request pays one hash lookup.
//!
//! - `InferenceObjective` (`spec.priority`, default 0) is found by its
//!   `metadata.name`: from the request header [`OBJECTIVE_HEADER`], and — by
//!   shardgate's convention — for requests whose model equals that name.
//! - `InferenceModel` (`spec.criticality`: `Critical` 1, `Standard` 0,
//!   `Sheddable` -1) is found by `spec.modelName`.
//! - Every `spec.poolRef` must name a known pool: an `InferencePool` document,
//!   or an `InferencePool` backendRef of some HTTPRoute (standalone configs may
//!   define a pool only through its EndpointSlices), in the object's namespace.
//! - One model twice for one pool with different priorities is an error (the
//!   extension lets the oldest win; there are no timestamps here).
//! - Several entries under one name (namespaces, pools): the one whose pool is a
//!   backend of the matched rule, else the one in the route's namespace, else
//!   the first in file order. A lone entry applies whatever the rule's backends
//!   are (the model name means the same everywhere).

use std::collections::HashMap;

/// Header naming the request's `InferenceObjective` (an unknown name is a 400).
pub const OBJECTIVE_HEADER: &str = "x-gateway-inference-objective";

/// One objective or model entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityEntry {
    /// `namespace/name` of the document it came from.
    pub source: String,
    /// Its namespace.
    pub namespace: String,
    /// `namespace/name` of its pool.
    pub pool: String,
    /// Its priority.
    pub priority: i32,
}

/// Objective and model priorities, keyed by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Priorities {
    /// `InferenceObjective`s by `metadata.name`.
    pub(crate) objectives: HashMap<String, Vec<PriorityEntry>>,
    /// `InferenceModel`s by `spec.modelName`.
    pub(crate) models: HashMap<String, Vec<PriorityEntry>>,
}

impl Priorities {
    /// The entry that applies to a rule routing to `pools` in `namespace`.
    pub(crate) fn pick<'a>(
        entries: &'a [PriorityEntry],
        pools: &[String],
        namespace: &str,
    ) -> Option<&'a PriorityEntry> {
        Self::pick_by(entries, pools, namespace, |e| (&e.pool, &e.namespace))
    }

    /// [`Self::pick`] over any per-pool entries; `key` gives an entry's
    /// (pool, namespace): the lone entry, else the one whose pool the rule
    /// routes to, else the one in the route's namespace, else the first.
    pub(crate) fn pick_by<'a, T>(
        entries: &'a [T],
        pools: &[String],
        namespace: &str,
        key: impl Fn(&T) -> (&String, &String),
    ) -> Option<&'a T> {
        match entries {
            [] => None,
            [only] => Some(only),
            _ => entries
                .iter()
                .find(|e| pools.contains(key(e).0))
                .or_else(|| entries.iter().find(|e| key(e).1 == namespace))
                .or(entries.first()),
        }
    }

    /// Whether nothing was declared.
    pub(crate) fn is_empty(&self) -> bool {
        self.objectives.is_empty() && self.models.is_empty()
    }
}
