//! The compiled routing table: built once per config load, immutable, and
//! matched against every request without allocating.
//!
//! [`RoutingTable::build`] turns a loaded [`Config`] into listeners, routes in
//! Gateway API precedence order, resolved endpoints and linked policies; the
//! parts live in submodules:
//! - `matcher`: the hot path ([`RoutingTable::match_request`]), precedence
//!   and matching rules, [`RequestView`];
//! - `build`: listeners, route attachment, compiled matches;
//! - `backends`: EndpointSlice, InferencePool and DNS resolution;
//! - `policy`: ExtensionRefs, `targetRefs` defaults, InferenceConfig and
//!   priority lookups;
//! - `models`: the models each rule serves;
//! - [`priority`]: `InferenceObjective` / `InferenceModel` priorities;
//! - `split`: model-version splits (`InferenceModel.targetModels`,
//!   `InferenceModelRewrite`, `ModelRollout`);
//! - `warning`: the typed [`Warning`]s of a build;
//! - `display`: what `shardgate check` prints.
//!
//! Every rule has a dense id ([`RouteMatch::rule_id`], [`RoutingTable::rule`]:
//! O(1)) and the models it is known to serve ([`RouteMatch::models`],
//! [`RouteMatch::model`]). `timeouts.request: 0s` means no timeout (`None`),
//! as the spec says.

use crate::config::SecurityPolicy;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{
    BatchingPolicy, Config, ConfigError, HttpRouteFilter, InferenceConfig, InferencePolicy,
};

mod backends;
mod build;
mod display;
mod matcher;
mod models;
mod policy;
pub mod priority;
mod split;
mod warning;
pub use split::{RolloutSpec, SplitEntry, SplitTarget};

pub use matcher::{is_grpc_content_type, RequestView};
use matcher::{CompiledMatch, HostPattern};
pub use models::kserve_model;
pub use policy::NamedPriority;
use priority::Priorities;
pub use priority::{PriorityEntry, OBJECTIVE_HEADER};
pub use warning::Warning;

/// Header that carries the request's model: a route's header match on it
/// reads [`RequestView::model`] (the body's `model`) first.
pub const MODEL_HEADER: &str = "x-gateway-model-name";
/// The seed's model header: a route's header match on it reads the client's
/// header first, else [`RequestView::model`].
pub const MODEL_TYPE_HEADER: &str = "x-model-type";

/// One Gateway listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// Listener name.
    pub name: String,
    /// Port.
    pub port: u16,
    /// Protocol as written (`HTTP`, `HTTPS`, `GRPC`, …).
    pub protocol: String,
    /// Whether shardgate serves it (`HTTP`, `HTTPS`; `GRPC` as HTTP/2).
    pub served: bool,
    /// The listener's hostname as written (SNI selects among the `HTTPS`
    /// listeners of one port by it).
    pub hostname: Option<String>,
    /// An `HTTPS` listener's certificates, in `certificateRefs` order (the
    /// first is its default); empty for other protocols.
    pub tls: Vec<TlsCertificate>,
}

/// One certificate of an `HTTPS` listener, from a `kubernetes.io/tls` Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCertificate {
    /// Where it came from, for messages: `file: document i (Secret ns/name)`.
    pub origin: String,
    /// `tls.crt`: the PEM certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// `tls.key`: the PEM private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsCertificate {
    /// Never shows the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Socket address.
    pub addr: SocketAddr,
    /// `namespace/name` of the Service (or InferencePool) it was found for
    /// first.
    pub backend: String,
    /// The node it runs on (the EndpointSlice endpoint's `nodeName`), when
    /// known: `gpuAffinity` prefers the gateway's own node.
    pub node: Option<String>,
    /// How it is reached over TLS, when a `BackendTLSPolicy` targets the
    /// Service (and port) it was found for; `None` = plaintext. Shared by every
    /// endpoint of the policy.
    pub tls: Option<std::sync::Arc<BackendTls>>,
    /// Every request goes to it over HTTP/2 (h2c with prior knowledge, or
    /// ALPN `h2` under TLS), not only gRPC calls: its Service port, or the
    /// EndpointSlice port it was found on, has an `appProtocol` that
    /// [`crate::config::speaks_h2`] (`kubernetes.io/h2c`, `grpc`, …).
    pub h2: bool,
    /// No backend of this table names it any more: it is kept only so that
    /// endpoint indices stay stable from one table to the next
    /// ([`RoutingTable::build_next`]); no group lists it.
    pub retired: bool,
}

/// The verification a `BackendTLSPolicy` asks for, resolved when the table is
/// built (ConfigMap bundles read, `URI` names refused): what the gateway turns
/// into one TLS client configuration per policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    /// `namespace/name` of the policy (messages, metrics).
    pub policy: String,
    /// `validation.hostname`: the SNI name, and the name verified when no
    /// `subjectAltNames` are listed.
    pub hostname: String,
    /// CA bundles from `validation.caCertificateRefs`: (`ConfigMap ns/name`,
    /// the PEM text of its `ca.crt`). Empty with system roots.
    pub ca_bundles: Vec<(String, String)>,
    /// `validation.wellKnownCACertificates: System`.
    pub system_roots: bool,
    /// `validation.subjectAltNames` of type `Hostname`: the certificate must
    /// be valid for one of them (instead of `hostname`).
    pub subject_alt_names: Vec<String>,
}

/// The endpoints of one `backendRef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendGroup {
    /// `namespace/name` of the backendRef.
    pub name: String,
    /// Relative weight; 0 = never chosen.
    pub weight: u32,
    /// Indices into [`RoutingTable::endpoints`]; may be empty.
    pub endpoints: Vec<usize>,
}

/// What to do with a matched request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleAction {
    /// Forward to the backends.
    Forward,
    /// An `ExtensionRef` filter could not be resolved: the Gateway API says
    /// answer 500.
    FilterNotFound {
        /// `Kind name` of the missing filter object.
        filter: String,
    },
}

/// The result of matching a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    /// `namespace/name` of the HTTPRoute.
    pub route: &'a str,
    /// Index of the rule in the route.
    pub rule: usize,
    /// The rule's backends (possibly empty, possibly all without endpoints).
    pub backends: &'a [BackendGroup],
    /// `namespace/name` of the linked InferencePolicy (see
    /// [`RoutingTable::inference_policy`]).
    pub policy: Option<&'a str>,
    /// `namespace/name` of the linked BatchingPolicy (see
    /// [`RoutingTable::batching_policy`]).
    pub batching: Option<&'a str>,
    /// `namespace/name` of the SecurityPolicy that applies (its `targetRef`
    /// names the rule's HTTPRoute, or a Gateway or listener it is attached to;
    /// the most specific wins; see [`RoutingTable::security_policy`]).
    pub security: Option<&'a str>,
    /// Forward, or answer 500.
    pub action: &'a RuleAction,
    /// `timeouts.request` of the rule (`0s` reads as `None`).
    pub request_timeout: Option<Duration>,
    /// Dense id of the rule over all routes (see [`RoutingTable::rule`]).
    pub rule_id: usize,
    /// The one model the rule serves, when unambiguous: every match pins the
    /// same one, or none pins any and its pools serve exactly one.
    pub model: Option<&'a str>,
    /// Models the rule is known to serve, sorted: `Exact` model-header values
    /// of its matches, KServe v2 path names, and the `InferenceModel` /
    /// `InferenceObjective` names bound to its InferencePools.
    pub models: &'a [String],
}

/// One rule, compiled.
#[derive(Debug, Clone)]
struct CompiledRule {
    matches: Vec<CompiledMatch>,
    backends: Vec<BackendGroup>,
    /// Port of each backendRef, for display.
    backend_ports: Vec<Option<u16>>,
    policy: Option<String>,
    batching: Option<String>,
    /// Whether a filter of the rule is an ExtensionRef of kind BatchingPolicy.
    own_batching_ref: bool,
    /// `Kind namespace/name[/section]` of the target that made `batching` this
    /// rule's default (None: linked by ExtensionRef, or no policy).
    batching_default: Option<String>,
    /// The SecurityPolicy that applies, and the target it came through.
    security: Option<(String, String)>,
    action: RuleAction,
    request_timeout: Option<Duration>,
    backend_request_timeout: Option<Duration>,
    filters: Vec<HttpRouteFilter>,
    /// `namespace/name` of its InferencePool backendRefs.
    pools: Vec<String>,
    /// The models its matches pin (one per match; None = that match pins none).
    pinned: Vec<Option<String>>,
    /// Models it is known to serve, sorted.
    models: Vec<String>,
    /// The one model it serves, when unambiguous.
    model: Option<String>,
}

/// One HTTPRoute, compiled.
#[derive(Debug, Clone)]
struct CompiledRoute {
    key: String,
    rules: Vec<CompiledRule>,
    /// A GRPCRoute (its backends speak gRPC).
    grpc: bool,
}

/// One `(hostname, match)` a listener tries, in precedence order.
#[derive(Debug, Clone)]
struct Entry {
    host: HostPattern,
    route: usize,
    rule: usize,
    matcher: usize,
}

/// One rule, as [`RoutingTable::rules`] lists it.
#[derive(Debug, Clone, Copy)]
pub struct RuleSummary<'a> {
    /// `namespace/name` of the HTTPRoute.
    pub route: &'a str,
    /// Rule index in the route.
    pub rule: usize,
    /// Its backends.
    pub backends: &'a [BackendGroup],
    /// Linked InferencePolicy key.
    pub policy: Option<&'a str>,
    /// Linked BatchingPolicy key (by ExtensionRef or as a default).
    pub batching: Option<&'a str>,
    /// When `batching` is a default (`targetRefs`): `Kind namespace/name` of
    /// the target it came through.
    pub batching_default: Option<&'a str>,
    /// The SecurityPolicy that applies.
    pub security: Option<&'a str>,
    /// Dense rule id (see [`RoutingTable::rule`]).
    pub id: usize,
    /// `namespace/name` of its InferencePool backendRefs.
    pub pools: &'a [String],
    /// The rule is a GRPCRoute's: its backends speak gRPC (health-checked
    /// through `grpc.health.v1`).
    pub grpc: bool,
}

/// The immutable routing table built from a [`Config`].
#[derive(Debug, Clone)]
pub struct RoutingTable {
    listeners: Vec<ListenerInfo>,
    listener_hosts: Vec<Option<HostPattern>>,
    /// Per listener: index into `port_groups`.
    listener_group: Vec<usize>,
    /// Listeners sharing a port.
    port_groups: Vec<Vec<usize>>,
    /// Per listener: entries in precedence order.
    entries: Vec<Vec<Entry>>,
    /// Per listener: whether some match reads [`MODEL_HEADER`].
    needs_model: Vec<bool>,
    routes: Vec<CompiledRoute>,
    endpoints: Vec<EndpointInfo>,
    models: Vec<String>,
    warnings: Vec<Warning>,
    inference_config: Option<InferenceConfig>,
    policies: Vec<(String, InferencePolicy)>,
    batching: Vec<(String, BatchingPolicy)>,
    security: Vec<(String, SecurityPolicy)>,
    /// Rule id → (route index, rule index).
    rule_ids: Vec<(usize, usize)>,
    /// Per route: the id of its first rule.
    rule_base: Vec<usize>,
    priorities: Priorities,
    splits: split::Splits,
}

impl RoutingTable {
    /// Builds the table. `resolve(host, port)` is called for Service
    /// backendRefs that no EndpointSlice covers (host = the backendRef name,
    /// verbatim) and for `FQDN` EndpointSlice addresses; it returns addresses
    /// or nothing. Hard errors (a route's parent Gateway missing, two
    /// listeners on one port with different protocols, an invalid regular
    /// expression) fail the build; everything else becomes a warning.
    pub fn build(
        config: &Config,
        resolve: &mut dyn FnMut(&str, u16) -> Vec<SocketAddr>,
    ) -> Result<RoutingTable, Vec<ConfigError>> {
        build::Builder::new(config, resolve).build()
    }

    /// Like [`Self::build`], for a configuration that replaces `prev`'s: every
    /// endpoint of `prev` keeps its index (an address that is gone stays as a
    /// retired entry, [`EndpointInfo::retired`], in no group; one that comes
    /// back is live again under its old index), and new addresses come after
    /// them. State kept per endpoint index (pools, telemetry, health,
    /// ejections, prefix index) therefore stays valid across a reload; it only
    /// grows. Retired entries are never dropped while the process runs (one
    /// `EndpointInfo` per address ever seen).
    pub fn build_next(
        config: &Config,
        resolve: &mut dyn FnMut(&str, u16) -> Vec<SocketAddr>,
        prev: &RoutingTable,
    ) -> Result<RoutingTable, Vec<ConfigError>> {
        let mut b = build::Builder::new(config, resolve);
        b.seed_endpoints(&prev.endpoints);
        b.build()
    }

    /// All Gateway listeners, in config order; `match_request` takes an index
    /// into this slice.
    pub fn listeners(&self) -> &[ListenerInfo] {
        &self.listeners
    }

    /// All endpoints; [`BackendGroup::endpoints`] index into this slice. An
    /// address appears once even when several backends share it.
    pub fn endpoints(&self) -> &[EndpointInfo] {
        &self.endpoints
    }

    /// Whether some rule reachable from `listener` matches on
    /// [`MODEL_HEADER`], i.e. the gateway must read the body's `model` before
    /// matching.
    pub fn needs_model(&self, listener: usize) -> bool {
        let Some(&g) = self.listener_group.get(listener) else {
            return false;
        };
        self.port_groups[g].iter().any(|&l| self.needs_model[l])
    }

    /// Sorted, deduplicated `Exact` header-match values on [`MODEL_HEADER`] or
    /// [`MODEL_TYPE_HEADER`] over all routes.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Non-fatal findings (unresolved ExtensionRefs, backends without
    /// endpoints, routes that attach nowhere, filters not enforced, unknown
    /// fields, …), deduplicated, in discovery order.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The `InferenceConfig` linked from a Gateway's GatewayClass
    /// `parametersRef`, else the only one present.
    pub fn inference_config(&self) -> Option<&InferenceConfig> {
        self.inference_config.as_ref()
    }

    /// Every rule of every route with its backends and linked policies, in
    /// route and rule order, i.e. in rule id order (for the control plane:
    /// which InferencePolicy health-checks which endpoints, which profile a
    /// rule uses).
    pub fn rules(&self) -> impl Iterator<Item = RuleSummary<'_>> + '_ {
        (0..self.rule_ids.len()).filter_map(|id| self.rule(id))
    }

    /// The rule with dense id `id` ([`RouteMatch::rule_id`]); O(1).
    pub fn rule(&self, id: usize) -> Option<RuleSummary<'_>> {
        let &(ri, i) = self.rule_ids.get(id)?;
        let route = self.routes.get(ri)?;
        let rule = route.rules.get(i)?;
        Some(RuleSummary {
            route: &route.key,
            rule: i,
            backends: &rule.backends,
            policy: rule.policy.as_deref(),
            batching: rule.batching.as_deref(),
            batching_default: rule.batching_default.as_deref(),
            security: rule.security.as_ref().map(|(k, _)| k.as_str()),
            id,
            pools: &rule.pools,
            grpc: route.grpc,
        })
    }

    /// The filters of a rule as written (including those not enforced), and
    /// the rule's `timeouts.backendRequest`.
    pub fn rule_details(
        &self,
        route: &str,
        rule: usize,
    ) -> Option<(&[HttpRouteFilter], Option<Duration>)> {
        let r = self
            .routes
            .iter()
            .find(|r| r.key == route)?
            .rules
            .get(rule)?;
        Some((&r.filters, r.backend_request_timeout))
    }
}

#[cfg(test)]
mod tests;
