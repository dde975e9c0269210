//! shardgate-routing: the config model (Gateway API + inference resources),
//! route matching and model extraction.
//!
//! The crate does no I/O: callers pass file contents to [`load_sources`] and
//! a resolver callback to [`RoutingTable::build`]; matching and model
//! extraction are pure functions over borrowed request data.
//!
//! - [`config`]: typed Kubernetes resources, multi-document YAML loading and
//!   per-document validation; errors name file, document and field.
//! - [`table`]: the compiled, immutable routing table (listeners, routes in
//!   Gateway API precedence order, resolved endpoints) and request matching
//!   without per-request allocation.
//! - [`model`]: the top-level `model` of a JSON body, found by a scanner that
//!   skips a megabyte prompt in tens of microseconds instead of building a DOM.
//! - [`duration`]: Go / Gateway API duration strings (`300s`, `1h30m`, `2.5s`).
//! - [`telemetry`]: Prometheus text parsing, the per-family mapping of
//!   model-server metrics to one model, and the per-endpoint store with
//!   staleness.
//! - [`scoring`]: scorers, filters, scheduling profiles and pickers over an
//!   immutable scoring snapshot, plus the per-shard prefix-cache index and the
//!   SPSC rings through which shards share what they record in it.

#![forbid(unsafe_code)]

pub mod config;
pub mod duration;
pub mod model;
pub mod scoring;
pub mod table;
pub mod telemetry;

pub use config::{
    load_sources, load_sources_with, Config, ConfigError, DocMeta, LoadLimits, Resource,
};
pub use duration::parse_duration;
pub use model::{extract_model, extract_model_strict, model_span, user_span, ModelError};
pub use table::{
    is_grpc_content_type, BackendGroup, BackendTls, EndpointInfo, ListenerInfo, RequestView,
    RolloutSpec, RouteMatch, RoutingTable, RuleAction, RuleSummary, SplitEntry, SplitTarget,
    TlsCertificate, Warning, MODEL_HEADER, MODEL_TYPE_HEADER,
};
