//! The compiled routing table and request matching.
//!
//! [`RoutingTable::build`] turns a loaded [`Config`] into an immutable table:
//! listeners (one per Gateway listener), routes attached to them through
//! `parentRefs`, backends resolved to socket addresses through EndpointSlices,
//! InferencePools or the caller's resolver (DNS fallback), and the
//! `ExtensionRef` links to `InferencePolicy` / `BatchingPolicy`. Cross-document
//! references are checked here.
//!
//! Matching follows the Gateway API HTTPRoute rules. For every listener the
//! build precomputes one list of `(hostname, match, route, rule)` entries sorted
//! by precedence; [`RoutingTable::match_request`] walks that list and returns
//! the first entry whose conditions hold, without allocating. Precedence:
//! 1. hostname: exact hostnames (longest first), then wildcards (longest
//!    suffix first), then routes without hostnames;
//! 2. path: `Exact`, then `RegularExpression`, then `PathPrefix` (the spec
//!    leaves regex precedence to the implementation), longer values first
//!    within each;
//! 3. a method match before none; 4. more header matches; 5. more query
//!    matches; 6. route `namespace/name` alphabetically (we have no creation
//!    timestamps); 7. rule order; 8. match order.
//!
//! Details worth knowing:
//! - paths are compared as given (no normalisation or percent-decoding);
//!   `PathPrefix` is element-wise and ignores a trailing `/` of the value;
//!   regular expressions must match the whole path / value;
//! - query parameters are compared undecoded, on the first occurrence of the
//!   name;
//! - header names are case-insensitive, values case-sensitive; when a match
//!   lists the same header (or query) name twice, only the first counts (spec);
//! - several listeners on one port (same protocol) share the socket: the
//!   listener whose hostname matches the request's `Host` most specifically is
//!   used, whichever of them `match_request` was called with;
//! - a request falls through from hostname-specific entries to less specific
//!   ones when no rule of the former matches.
//!
//! Backends and filters:
//! - a `Service` backendRef resolves through the EndpointSlices of its
//!   namespace labelled `kubernetes.io/service-name`; only ready endpoints
//!   (`conditions.ready` absent = ready), first address of each. The port is
//!   the slice port named like the Service port or its `targetPort`, else the
//!   slice port equal to the backendRef port, else the slice's only port, else
//!   the backendRef port. Without any slice the resolver is called with the
//!   backendRef *name* verbatim and its port (once per name and port);
//!   `FQDN` slice addresses go through the resolver too;
//! - an `InferencePool` backendRef resolves through slices labelled
//!   `inference.networking.k8s.io/pool-name: <pool>` or
//!   `kubernetes.io/service-name: <pool>`, on the backendRef port, else the
//!   pool's first target port;
//! - a backend without endpoints keeps its (empty) group and adds a warning;
//!   weight 0 groups are kept and must never be chosen; the same address in
//!   several groups is one [`EndpointInfo`];
//! - cross-namespace backendRefs are allowed with a warning (no
//!   `ReferenceGrant` support in standalone mode);
//! - `ExtensionRef` filters of kind `InferencePolicy` / `BatchingPolicy` are
//!   looked up by name in the route's namespace, then among policies written
//!   *without* a namespace (which match routes of any namespace, as the
//!   seed's do); the match reports the policy's `namespace/name` (`default/…`
//!   for those without one). Anything unresolved makes the rule answer 500
//!   ([`RuleAction::FilterNotFound`]). Other filter types are kept (see
//!   [`RoutingTable::rule_details`]) and reported as not enforced;
//! - `timeouts.request: 0s` means no timeout (`None`), as the spec says.
//!
//! Defaults, priorities and models:
//! - a `BatchingPolicy` with `spec.targetRefs` is the default of every rule of
//!   the targeted `HTTPRoute` (`sectionName`: the rule named so) or of every
//!   route attached to the targeted `Gateway` (`sectionName`: through that
//!   listener) that links no BatchingPolicy itself (an ExtensionRef of kind
//!   `BatchingPolicy`, even an unresolved one, wins). Targets are looked up in
//!   `targetRef.namespace`, else the policy's namespace; a missing target,
//!   listener or rule is an error naming the field. The more specific
//!   attachment wins (rule › route › listener › Gateway); two different
//!   defaults at the same level for one rule are an error;
//! - `InferenceObjective` and `InferenceModel` priorities are resolved into
//!   maps keyed by name at build time (see [`priority`]);
//! - every rule has a dense id ([`RouteMatch::rule_id`], [`RoutingTable::rule`]:
//!   O(1)), and the models it is known to serve ([`RouteMatch::models`]):
//!   `Exact` model-header values of its matches, the `{name}` of KServe v2
//!   paths (`Exact` or `PathPrefix` `/v2/models/{name}…`), and the
//!   `InferenceModel` / `InferenceObjective` names bound to its InferencePools;
//!   [`RouteMatch::model`] is the one model when that is unambiguous (every match
//!   pins the same one, or none pins any and its pools serve exactly one).

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::{
    AddressType, Config, ConfigError, DocMeta, EndpointSlice, FilterType, FromNamespaces, Gateway,
    HttpMethod, HttpRoute, HttpRouteFilter, HttpRouteMatch, InferenceConfig, IntOrString,
    PathMatchType, Resource, Service, ServicePort, StringMatchType, POOL_NAME_LABEL,
    SERVICE_NAME_LABEL,
};
use crate::config::{BatchingPolicy, InferencePolicy, PolicyTargetReference};
use crate::duration::format_duration;

pub mod priority;

use priority::Priorities;
pub use priority::{PriorityEntry, OBJECTIVE_HEADER};

/// Virtual header the gateway sets from the JSON body's `model`.
pub const MODEL_HEADER: &str = "x-gateway-model-name";
/// The seed's model header.
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
    /// Whether shardgate serves it (only `HTTP` for now).
    pub served: bool,
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Socket address.
    pub addr: SocketAddr,
    /// `namespace/name` of the Service (or InferencePool) it was found for
    /// first.
    pub backend: String,
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
    /// Forward, or answer 500.
    pub action: &'a RuleAction,
    /// `timeouts.request` of the rule (`0s` reads as `None`).
    pub request_timeout: Option<Duration>,
    /// Dense id of the rule over all routes (see [`RoutingTable::rule`]).
    pub rule_id: usize,
    /// The one model the rule serves, when unambiguous (see the module docs).
    pub model: Option<&'a str>,
    /// Models the rule is known to serve, sorted (see the module docs).
    pub models: &'a [String],
}

/// What matching needs to know about a request.
pub struct RequestView<'a> {
    /// Method, e.g. `POST`.
    pub method: &'a str,
    /// Path without the query (a `?…` suffix is tolerated and ignored).
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// `Host` header or `:authority` (a port is stripped).
    pub host: Option<&'a str>,
    /// Header lookup: lowercase name in, first value out; includes the virtual
    /// [`MODEL_HEADER`].
    pub headers: &'a dyn Fn(&str) -> Option<&'a [u8]>,
}

/// Wraps a regular expression so it must match the whole input.
pub(crate) fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// A hostname condition.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// Lowercase host.
    Exact(String),
    /// Lowercase suffix including the leading dot (`.example.com`).
    Wildcard(String),
}

impl HostPattern {
    fn parse(h: &str) -> Self {
        let h = h.to_ascii_lowercase();
        match h.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_owned()),
            None => HostPattern::Exact(h),
        }
    }

    fn matches(&self, host: Option<&str>) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(e) => host.is_some_and(|h| h.eq_ignore_ascii_case(e)),
            HostPattern::Wildcard(suffix) => host.is_some_and(|h| {
                h.len() > suffix.len()
                    && h.as_bytes()[h.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }),
        }
    }

    /// Higher is more specific.
    fn specificity(&self) -> (u8, usize) {
        match self {
            HostPattern::Any => (0, 0),
            HostPattern::Wildcard(s) => (1, s.len()),
            HostPattern::Exact(e) => (2, e.len()),
        }
    }

    /// Every host `self` matches is matched by `other`.
    fn within(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (_, HostPattern::Any) => true,
            (HostPattern::Any, _) => false,
            (a, HostPattern::Exact(e)) => matches!(a, HostPattern::Exact(x) if x == e),
            (HostPattern::Exact(e), w @ HostPattern::Wildcard(_)) => w.matches(Some(e)),
            (HostPattern::Wildcard(t), HostPattern::Wildcard(s)) => t.ends_with(s.as_str()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(e) => f.write_str(e),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// Hostnames a route serves on a listener: the intersection of both; empty
/// when they do not intersect.
fn effective_hosts(listener: Option<&HostPattern>, route: &[HostPattern]) -> Vec<HostPattern> {
    let mut out: Vec<HostPattern> = match (listener, route.is_empty()) {
        (None, true) => vec![HostPattern::Any],
        (Some(l), true) => vec![l.clone()],
        (None, false) => route.to_vec(),
        (Some(l), false) => route
            .iter()
            .filter_map(|r| {
                if r.within(l) {
                    Some(r.clone())
                } else if l.within(r) {
                    Some(l.clone())
                } else {
                    None
                }
            })
            .collect(),
    };
    let mut seen = Vec::new();
    out.retain(|h| {
        let new = !seen.contains(h);
        if new {
            seen.push(h.clone());
        }
        new
    });
    out
}

/// Strips a port and a trailing dot from a `Host` value.
fn normalize_host(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    let h = match h.rfind(':') {
        Some(i) if h[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &h[..i],
        _ => h,
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// A compiled path condition.
#[derive(Debug, Clone)]
enum PathCond {
    Exact(String),
    /// Without trailing `/`, except the root prefix `/` itself.
    Prefix(String),
    Regex(regex::Regex, String),
}

impl PathCond {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathCond::Exact(v) => path == v,
            PathCond::Prefix(p) => {
                p == "/"
                    || (path.starts_with(p.as_str())
                        && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/'))
            }
            PathCond::Regex(re, _) => re.is_match(path),
        }
    }

    /// (kind rank: 0 exact, 1 regex, 2 prefix; value length).
    fn rank(&self) -> (u8, usize) {
        match self {
            PathCond::Exact(v) => (0, v.len()),
            PathCond::Regex(_, v) => (1, v.len()),
            PathCond::Prefix(v) => (2, if v == "/" { 1 } else { v.len() }),
        }
    }
}

impl fmt::Display for PathCond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathCond::Exact(v) => write!(f, "Exact {v}"),
            PathCond::Prefix(v) => write!(f, "PathPrefix {v}"),
            PathCond::Regex(_, v) => write!(f, "RegularExpression {v}"),
        }
    }
}

/// A compiled header or query value condition.
#[derive(Debug, Clone)]
enum ValueCond {
    Exact(String),
    Regex(regex::bytes::Regex, String),
}

impl ValueCond {
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            ValueCond::Exact(e) => v == e.as_bytes(),
            ValueCond::Regex(re, _) => re.is_match(v),
        }
    }
}

#[derive(Debug, Clone)]
struct NamedCond {
    /// Lowercase for headers, as written for query parameters.
    name: String,
    value: ValueCond,
}

impl fmt::Display for NamedCond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            ValueCond::Exact(v) => write!(f, "{}={v}", self.name),
            ValueCond::Regex(_, v) => write!(f, "{}~{v}", self.name),
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledMatch {
    path: PathCond,
    method: Option<HttpMethod>,
    headers: Vec<NamedCond>,
    query: Vec<NamedCond>,
}

impl CompiledMatch {
    fn matches(&self, req: &RequestView<'_>, path: &str, query: Option<&str>) -> bool {
        if let Some(m) = self.method {
            if req.method != m.as_str() {
                return false;
            }
        }
        if !self.path.matches(path) {
            return false;
        }
        for h in &self.headers {
            match (req.headers)(&h.name) {
                Some(v) if h.value.matches(v) => {}
                _ => return false,
            }
        }
        for q in &self.query {
            match query.and_then(|qs| query_first(qs, &q.name)) {
                Some(v) if q.value.matches(v.as_bytes()) => {}
                _ => return false,
            }
        }
        true
    }
}

impl fmt::Display for CompiledMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path)?;
        if let Some(m) = self.method {
            write!(f, " + method {}", m.as_str())?;
        }
        for h in &self.headers {
            write!(f, " + header {h}")?;
        }
        for q in &self.query {
            write!(f, " + query {q}")?;
        }
        Ok(())
    }
}

/// The first value of query parameter `name` (undecoded).
fn query_first<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

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

#[derive(Debug, Clone)]
struct CompiledRoute {
    key: String,
    rules: Vec<CompiledRule>,
}

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
    /// Dense rule id (see [`RoutingTable::rule`]).
    pub id: usize,
    /// `namespace/name` of its InferencePool backendRefs.
    pub pools: &'a [String],
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
    warnings: Vec<String>,
    inference_config: Option<InferenceConfig>,
    policies: Vec<(String, InferencePolicy)>,
    batching: Vec<(String, BatchingPolicy)>,
    /// Rule id → (route index, rule index).
    rule_ids: Vec<(usize, usize)>,
    /// Per route: the id of its first rule.
    rule_base: Vec<usize>,
    priorities: Priorities,
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
        Builder::new(config, resolve).build()
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

    /// Finds the rule for a request arriving on `listener` (index into
    /// [`RoutingTable::listeners`]). `None` means 404. Does not allocate.
    pub fn match_request<'a>(
        &'a self,
        listener: usize,
        req: &RequestView<'_>,
    ) -> Option<RouteMatch<'a>> {
        let (path, path_query) = match req.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (req.path, None),
        };
        let query = req.query.or(path_query);
        let host = req.host.map(normalize_host);
        let listener = self.select_listener(listener, host)?;
        for e in &self.entries[listener] {
            if !e.host.matches(host) {
                continue;
            }
            let route = &self.routes[e.route];
            let rule = &route.rules[e.rule];
            if rule.matches[e.matcher].matches(req, path, query) {
                return Some(RouteMatch {
                    route: &route.key,
                    rule: e.rule,
                    backends: &rule.backends,
                    policy: rule.policy.as_deref(),
                    batching: rule.batching.as_deref(),
                    action: &rule.action,
                    request_timeout: rule.request_timeout,
                    rule_id: self.rule_base[e.route] + e.rule,
                    model: rule.model.as_deref(),
                    models: &rule.models,
                });
            }
        }
        None
    }

    fn select_listener(&self, listener: usize, host: Option<&str>) -> Option<usize> {
        let group = &self.port_groups[*self.listener_group.get(listener)?];
        if group.len() == 1 {
            return Some(listener);
        }
        let mut best: Option<(usize, (u8, usize))> = None;
        for &l in group {
            let score = match &self.listener_hosts[l] {
                None => (0, 0),
                Some(p) if p.matches(host) => p.specificity(),
                Some(_) => continue,
            };
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((l, score));
            }
        }
        best.map(|(l, _)| l)
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
    pub fn warnings(&self) -> &[String] {
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
            id,
            pools: &rule.pools,
        })
    }

    /// The priority of the `InferenceObjective` named `name` (header
    /// [`OBJECTIVE_HEADER`]) for a request matched to rule `rule_id`; `None`
    /// when no objective has that name (the gateway answers 400). No allocation.
    pub fn objective_priority(&self, rule_id: usize, name: &str) -> Option<i32> {
        let entries = self.priorities.objectives.get(name)?;
        self.pick_priority(rule_id, entries)
    }

    /// The priority of requests for `model` matched to rule `rule_id`: its
    /// `InferenceModel`'s criticality, else the `InferenceObjective` named like
    /// the model; `None` when neither exists (priority 0). No allocation.
    pub fn model_priority(&self, rule_id: usize, model: &str) -> Option<i32> {
        let p = &self.priorities;
        let entries = p.models.get(model).or_else(|| p.objectives.get(model))?;
        self.pick_priority(rule_id, entries)
    }

    fn pick_priority(&self, rule_id: usize, entries: &[PriorityEntry]) -> Option<i32> {
        let (pools, namespace): (&[String], &str) = match self.rule(rule_id) {
            Some(r) => (r.pools, r.route.split('/').next().unwrap_or("")),
            None => (&[], ""),
        };
        Priorities::pick(entries, pools, namespace).map(|e| e.priority)
    }

    /// Every `InferenceObjective` (by name) and `InferenceModel` (by model
    /// name) with their priorities, sorted by name (for `check` and debugging).
    pub fn priorities(&self) -> (Vec<NamedPriority<'_>>, Vec<NamedPriority<'_>>) {
        (
            flat_priorities(&self.priorities.objectives),
            flat_priorities(&self.priorities.models),
        )
    }

    /// Every InferencePolicy loaded, with its `namespace/name` key.
    pub fn inference_policies(&self) -> impl Iterator<Item = (&str, &InferencePolicy)> + '_ {
        self.policies.iter().map(|(k, p)| (k.as_str(), p))
    }

    /// An InferencePolicy by `namespace/name` (as in [`RouteMatch::policy`])
    /// or by bare name when that is unambiguous.
    pub fn inference_policy(&self, name: &str) -> Option<&InferencePolicy> {
        lookup(&self.policies, name)
    }

    /// A BatchingPolicy by `namespace/name` (as in [`RouteMatch::batching`])
    /// or by bare name when that is unambiguous.
    pub fn batching_policy(&self, name: &str) -> Option<&BatchingPolicy> {
        lookup(&self.batching, name)
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

/// An objective or model name with one of its entries.
pub type NamedPriority<'a> = (&'a str, &'a PriorityEntry);

/// `(name, entry)` pairs sorted by name and source.
fn flat_priorities(m: &HashMap<String, Vec<PriorityEntry>>) -> Vec<NamedPriority<'_>> {
    let mut v: Vec<NamedPriority<'_>> = m
        .iter()
        .flat_map(|(k, es)| es.iter().map(move |e| (k.as_str(), e)))
        .collect();
    v.sort_by(|a, b| (a.0, &a.1.source).cmp(&(b.0, &b.1.source)));
    v
}

fn lookup<'a, T>(list: &'a [(String, T)], name: &str) -> Option<&'a T> {
    if let Some((_, t)) = list.iter().find(|(k, _)| k == name) {
        return Some(t);
    }
    if name.contains('/') {
        return None;
    }
    let mut found = list
        .iter()
        .filter(|(k, _)| k.rsplit('/').next() == Some(name));
    match (found.next(), found.next()) {
        (Some((_, t)), None) => Some(t),
        _ => None,
    }
}

impl fmt::Display for RoutingTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (li, l) in self.listeners.iter().enumerate() {
            write!(
                f,
                "listener {} {} {} :{}",
                l.gateway, l.name, l.protocol, l.port
            )?;
            if let Some(h) = &self.listener_hosts[li] {
                write!(f, " host {h}")?;
            }
            writeln!(f, "{}", if l.served { "" } else { " (not served)" })?;
            if self.entries[li].is_empty() {
                writeln!(f, "  (no routes)")?;
            }
            for (n, e) in self.entries[li].iter().enumerate() {
                let route = &self.routes[e.route];
                let rule = &route.rules[e.rule];
                write!(f, "  {:>2}. ", n + 1)?;
                if e.host != HostPattern::Any {
                    write!(f, "host {} + ", e.host)?;
                }
                write!(f, "{} →", rule.matches[e.matcher])?;
                if rule.backends.is_empty() {
                    write!(f, " (no backends)")?;
                }
                for (bi, b) in rule.backends.iter().enumerate() {
                    if bi > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, " {}", b.name)?;
                    if let Some(p) = rule.backend_ports[bi] {
                        write!(f, ":{p}")?;
                    }
                    write!(f, " (w {}) [", b.weight)?;
                    if b.endpoints.is_empty() {
                        write!(f, "no endpoints")?;
                    }
                    for (i, &ep) in b.endpoints.iter().take(8).enumerate() {
                        if i > 0 {
                            write!(f, ", ")?;
                        }
                        write!(f, "{}", self.endpoints[ep].addr)?;
                    }
                    if b.endpoints.len() > 8 {
                        write!(f, ", … {} more", b.endpoints.len() - 8)?;
                    }
                    write!(f, "]")?;
                }
                if let Some(p) = &rule.policy {
                    write!(f, " policy={p}")?;
                }
                if let Some(b) = &rule.batching {
                    write!(f, " batching={b}")?;
                    if let Some(t) = &rule.batching_default {
                        write!(f, " (default via {t})")?;
                    }
                }
                if let RuleAction::FilterNotFound { filter } = &rule.action {
                    write!(f, " → 500 (filter {filter} not found)")?;
                }
                if let Some(t) = rule.request_timeout {
                    write!(f, " timeout={}", format_duration(t))?;
                }
                writeln!(f, "  ({} rule {})", route.key, e.rule)?;
            }
        }
        if !self.priorities.is_empty() {
            let (objectives, models) = self.priorities();
            writeln!(f, "priorities:")?;
            for (name, e) in objectives {
                writeln!(
                    f,
                    "  objective {name}: {} (InferenceObjective {}, pool {})",
                    e.priority, e.source, e.pool
                )?;
            }
            for (name, e) in models {
                writeln!(
                    f,
                    "  model {name}: {} (InferenceModel {}, pool {})",
                    e.priority, e.source, e.pool
                )?;
            }
        }
        if !self.warnings.is_empty() {
            writeln!(f, "warnings:")?;
            for w in &self.warnings {
                writeln!(f, "  - {w}")?;
            }
        }
        Ok(())
    }
}

/// Whether a listener protocol carries HTTPRoutes.
fn carries_http_routes(protocol: &str) -> bool {
    protocol.eq_ignore_ascii_case("HTTP") || protocol.eq_ignore_ascii_case("HTTPS")
}

struct Builder<'c, 'r> {
    config: &'c Config,
    resolve: &'r mut dyn FnMut(&str, u16) -> Vec<SocketAddr>,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    endpoints: Vec<EndpointInfo>,
    endpoint_index: HashMap<SocketAddr, usize>,
    /// (kind, namespace, name, port) → endpoint indices.
    backend_cache: HashMap<(String, String, String, Option<u16>), Vec<usize>>,
    slices: Vec<(&'c DocMeta, &'c EndpointSlice)>,
    services: Vec<(&'c DocMeta, &'c Service)>,
    /// `namespace/name` of every InferencePool some backendRef names.
    referenced_pools: HashSet<String>,
}

/// A rule's default BatchingPolicy while defaults are being resolved.
struct DefaultPick {
    /// 0 Gateway, 1 listener, 2 route, 3 rule: the more specific wins.
    rank: u8,
    policy: String,
    via: String,
}

impl<'c, 'r> Builder<'c, 'r> {
    fn new(config: &'c Config, resolve: &'r mut dyn FnMut(&str, u16) -> Vec<SocketAddr>) -> Self {
        let mut slices = Vec::new();
        let mut services = Vec::new();
        for (m, r) in &config.docs {
            match r {
                Resource::EndpointSlice(s) => slices.push((m, s)),
                Resource::Service(s) => services.push((m, s)),
                _ => {}
            }
        }
        Builder {
            config,
            resolve,
            errors: Vec::new(),
            warnings: config.warnings.clone(),
            endpoints: Vec::new(),
            endpoint_index: HashMap::new(),
            backend_cache: HashMap::new(),
            slices,
            services,
            referenced_pools: HashSet::new(),
        }
    }

    fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }

    fn build(mut self) -> Result<RoutingTable, Vec<ConfigError>> {
        let config = self.config;

        // Listeners.
        let classes: Vec<&str> = config
            .docs
            .iter()
            .filter_map(|(m, r)| matches!(r, Resource::GatewayClass(_)).then_some(m.name.as_str()))
            .collect();
        let mut listeners = Vec::new();
        let mut listener_hosts = Vec::new();
        let mut gateways = Vec::new(); // (meta, gateway, first listener index)
        let mut by_port: HashMap<u16, usize> = HashMap::new(); // port → group index
        let mut port_groups: Vec<Vec<usize>> = Vec::new();
        let mut listener_group = Vec::new();
        for (meta, r) in &config.docs {
            let Resource::Gateway(g) = r else { continue };
            if !classes.contains(&g.spec.gateway_class_name.as_str()) {
                self.warn(format!(
                    "{}: GatewayClass {} not found (standalone mode: ignored)",
                    meta.label(),
                    g.spec.gateway_class_name
                ));
            }
            gateways.push((meta, g, listeners.len()));
            for (li, l) in g.spec.listeners.iter().enumerate() {
                let idx = listeners.len();
                let served = l.protocol == "HTTP";
                let host = l.hostname.as_deref().map(HostPattern::parse);
                let group = match by_port.get(&l.port) {
                    Some(&gi) => {
                        let first = port_groups[gi][0];
                        let other: &ListenerInfo = &listeners[first];
                        if !other.protocol.eq_ignore_ascii_case(&l.protocol) {
                            self.errors.push(ConfigError::at(
                                meta,
                                format!("spec.listeners[{li}].protocol"),
                                format!(
                                    "port {} is used by listener {}/{} with protocol {} and here with {}",
                                    l.port, other.gateway, other.name, other.protocol, l.protocol
                                ),
                            ));
                        } else if port_groups[gi].iter().any(|&o| listener_hosts[o] == host) {
                            self.warn(format!(
                                "{}: listener {} conflicts with another listener on port {} with the same hostname; the first one wins",
                                meta.label(),
                                l.name,
                                l.port
                            ));
                        }
                        port_groups[gi].push(idx);
                        gi
                    }
                    None => {
                        by_port.insert(l.port, port_groups.len());
                        port_groups.push(vec![idx]);
                        port_groups.len() - 1
                    }
                };
                listener_group.push(group);
                if !served {
                    self.warn(format!(
                        "{}: listener {} ({} :{}) is accepted but not served yet (only HTTP is)",
                        meta.label(),
                        l.name,
                        l.protocol,
                        l.port
                    ));
                }
                if l.allowed_routes
                    .as_ref()
                    .and_then(|a| a.namespaces.as_ref())
                    .is_some_and(|n| n.from == FromNamespaces::Selector)
                {
                    self.warn(format!(
                        "{}: listener {}: allowedRoutes.namespaces.from Selector is treated as All (no Namespace objects in standalone mode)",
                        meta.label(),
                        l.name
                    ));
                }
                listeners.push(ListenerInfo {
                    gateway: meta.key(),
                    name: l.name.clone(),
                    port: l.port,
                    protocol: l.protocol.clone(),
                    served,
                });
                listener_hosts.push(host);
            }
        }

        // Routes, sorted by namespace/name (the precedence tie-breaker).
        let mut http_routes: Vec<(&DocMeta, &HttpRoute)> = config
            .docs
            .iter()
            .filter_map(|(m, r)| match r {
                Resource::HttpRoute(h) => Some((m, h)),
                _ => None,
            })
            .collect();
        http_routes.sort_by_key(|(m, _)| m.key());
        let mut routes = Vec::new();
        let mut route_listeners: Vec<Vec<usize>> = Vec::new();
        let mut entries: Vec<Vec<Entry>> = vec![Vec::new(); listeners.len()];
        for &(meta, route) in &http_routes {
            let route_idx = routes.len();
            let compiled = self.compile_route(meta, route);
            let route_hosts: Vec<HostPattern> = route
                .spec
                .hostnames
                .iter()
                .map(|h| HostPattern::parse(h))
                .collect();
            // Attachment.
            let mut attached: Vec<usize> = Vec::new();
            if route.spec.parent_refs.is_empty() {
                self.warn(format!(
                    "{}: no parentRefs, the route attaches to no listener",
                    meta.label()
                ));
            }
            for (pi, pr) in route.spec.parent_refs.iter().enumerate() {
                let kind = pr.kind.as_deref().unwrap_or("Gateway");
                if kind != "Gateway" {
                    self.warn(format!(
                        "{}: spec.parentRefs[{pi}]: parent kind {kind} is not supported, ignored",
                        meta.label()
                    ));
                    continue;
                }
                let gns = pr.namespace.as_deref().unwrap_or(&meta.namespace);
                let Some(&(gmeta, g, first)) = gateways
                    .iter()
                    .find(|(gm, _, _)| gm.namespace == gns && gm.name == pr.name)
                else {
                    self.errors.push(ConfigError::at(
                        meta,
                        format!("spec.parentRefs[{pi}].name"),
                        format!("Gateway {gns}/{} not found", pr.name),
                    ));
                    continue;
                };
                let mut reasons = Vec::new();
                let mut hit = false;
                for (li, l) in g.spec.listeners.iter().enumerate() {
                    let idx = first + li;
                    if pr.section_name.as_ref().is_some_and(|s| *s != l.name) {
                        continue;
                    }
                    if pr.port.is_some_and(|p| p != l.port) {
                        continue;
                    }
                    if !carries_http_routes(&l.protocol) {
                        reasons.push(format!(
                            "listener {}: protocol {} does not carry HTTPRoutes",
                            l.name, l.protocol
                        ));
                        continue;
                    }
                    let allowed = l.allowed_routes.clone().unwrap_or_default();
                    let from = allowed.namespaces.map(|n| n.from).unwrap_or_default();
                    if from == FromNamespaces::Same && gmeta.namespace != meta.namespace {
                        reasons.push(format!(
                            "listener {}: allows routes from namespace {} only",
                            l.name, gmeta.namespace
                        ));
                        continue;
                    }
                    if !allowed.kinds.is_empty()
                        && !allowed.kinds.iter().any(|k| {
                            k.kind == "HTTPRoute"
                                && k.group
                                    .as_deref()
                                    .is_none_or(|g| g == "gateway.networking.k8s.io")
                        })
                    {
                        reasons.push(format!(
                            "listener {}: allowedRoutes.kinds excludes HTTPRoute",
                            l.name
                        ));
                        continue;
                    }
                    if effective_hosts(listener_hosts[idx].as_ref(), &route_hosts).is_empty() {
                        reasons.push(format!(
                            "listener {}: hostname {} does not intersect the route's hostnames",
                            l.name,
                            l.hostname.as_deref().unwrap_or("*")
                        ));
                        continue;
                    }
                    hit = true;
                    if !attached.contains(&idx) {
                        attached.push(idx);
                    }
                }
                if !hit {
                    let target = match &pr.section_name {
                        Some(s) => format!("{}/{s}", gmeta.key()),
                        None => gmeta.key(),
                    };
                    let why = if reasons.is_empty() {
                        "no listener has that name/port".to_owned()
                    } else {
                        reasons.join("; ")
                    };
                    self.warn(format!(
                        "{}: spec.parentRefs[{pi}] ({target}) matches no listener that accepts it: {why}",
                        meta.label()
                    ));
                }
            }
            for &l in &attached {
                for host in effective_hosts(listener_hosts[l].as_ref(), &route_hosts) {
                    for (ri, rule) in compiled.rules.iter().enumerate() {
                        for mi in 0..rule.matches.len() {
                            entries[l].push(Entry {
                                host: host.clone(),
                                route: route_idx,
                                rule: ri,
                                matcher: mi,
                            });
                        }
                    }
                }
            }
            routes.push(compiled);
            route_listeners.push(attached);
        }
        let mut rule_base = Vec::with_capacity(routes.len());
        let mut rule_ids = Vec::new();
        for (ri, r) in routes.iter().enumerate() {
            rule_base.push(rule_ids.len());
            rule_ids.extend((0..r.rules.len()).map(|i| (ri, i)));
        }
        let priorities = self.build_priorities();
        rule_models(&mut routes, &priorities);
        self.apply_batching_defaults(
            &mut routes,
            &http_routes,
            &route_listeners,
            &gateways,
            (&rule_base, &rule_ids),
        );
        for list in &mut entries {
            list.sort_by_key(|e| {
                let m = &routes[e.route].rules[e.rule].matches[e.matcher];
                let (hk, hl) = e.host.specificity();
                let (pk, pl) = m.path.rank();
                (
                    Reverse(hk),
                    Reverse(hl),
                    pk,
                    Reverse(pl),
                    m.method.is_none(),
                    Reverse(m.headers.len()),
                    Reverse(m.query.len()),
                    e.route,
                    e.rule,
                    e.matcher,
                )
            });
        }
        let needs_model = entries
            .iter()
            .map(|list| {
                list.iter().any(|e| {
                    routes[e.route].rules[e.rule].matches[e.matcher]
                        .headers
                        .iter()
                        .any(|h| h.name == MODEL_HEADER)
                })
            })
            .collect();

        // Models named by Exact model-header matches, over all routes.
        let mut models: Vec<String> = config
            .docs
            .iter()
            .filter_map(|(_, r)| match r {
                Resource::HttpRoute(h) => Some(h),
                _ => None,
            })
            .flat_map(|h| h.spec.rules.iter())
            .flat_map(|rule| rule.matches.iter())
            .flat_map(|m| m.headers.iter())
            .filter(|h| {
                h.match_type == StringMatchType::Exact
                    && (h.name.eq_ignore_ascii_case(MODEL_HEADER)
                        || h.name.eq_ignore_ascii_case(MODEL_TYPE_HEADER))
            })
            .map(|h| h.value.clone())
            .collect();
        models.sort();
        models.dedup();

        let inference_config = self.find_inference_config();
        let policies = config
            .docs
            .iter()
            .filter_map(|(m, r)| match r {
                Resource::InferencePolicy(p) => Some((m.key(), p.clone())),
                _ => None,
            })
            .collect();
        let batching = config
            .docs
            .iter()
            .filter_map(|(m, r)| match r {
                Resource::BatchingPolicy(p) => Some((m.key(), p.clone())),
                _ => None,
            })
            .collect();
        for (meta, r) in &config.docs {
            if let Resource::GrpcRoute(_) = r {
                self.warn(format!(
                    "{}: GRPCRoute is accepted, not enforced (gRPC is not served yet)",
                    meta.label()
                ));
            }
        }

        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let mut seen = std::collections::HashSet::new();
        let mut warnings = self.warnings;
        warnings.retain(|w| seen.insert(w.clone()));
        Ok(RoutingTable {
            listeners,
            listener_hosts,
            listener_group,
            port_groups,
            entries,
            needs_model,
            routes,
            endpoints: self.endpoints,
            models,
            warnings,
            inference_config,
            policies,
            batching,
            rule_ids,
            rule_base,
            priorities,
        })
    }

    fn find_inference_config(&mut self) -> Option<InferenceConfig> {
        let config = self.config;
        let configs: Vec<(&DocMeta, &InferenceConfig)> = config
            .docs
            .iter()
            .filter_map(|(m, r)| match r {
                Resource::InferenceConfig(c) => Some((m, c)),
                _ => None,
            })
            .collect();
        for (_, r) in &config.docs {
            let Resource::Gateway(g) = r else { continue };
            let Some((cmeta, class)) = config.docs.iter().find_map(|(m, r)| match r {
                Resource::GatewayClass(c) if m.name == g.spec.gateway_class_name => Some((m, c)),
                _ => None,
            }) else {
                continue;
            };
            let Some(pr) = &class.spec.parameters_ref else {
                continue;
            };
            if pr.kind != "InferenceConfig" {
                continue;
            }
            let found = configs.iter().find(|(m, _)| {
                m.name == pr.name && pr.namespace.as_ref().is_none_or(|ns| *ns == m.namespace)
            });
            match found {
                Some((_, c)) => return Some((*c).clone()),
                None => self.warn(format!(
                    "{}: spec.parametersRef names InferenceConfig {} which does not exist",
                    cmeta.label(),
                    pr.name
                )),
            }
        }
        match configs.as_slice() {
            [] => None,
            [(_, c)] => Some((*c).clone()),
            _ => {
                self.warn(format!(
                    "{} InferenceConfigs and none linked from a GatewayClass parametersRef: none used",
                    configs.len()
                ));
                None
            }
        }
    }

    fn compile_route(&mut self, meta: &DocMeta, route: &HttpRoute) -> CompiledRoute {
        let mut rules = Vec::new();
        if route.spec.rules.is_empty() {
            self.warn(format!("{}: no rules, matches nothing", meta.label()));
        }
        for (ri, rule) in route.spec.rules.iter().enumerate() {
            let base = format!("spec.rules[{ri}]");
            let default_match = [HttpRouteMatch::default()];
            let matches: &[HttpRouteMatch] = if rule.matches.is_empty() {
                &default_match
            } else {
                &rule.matches
            };
            let matches = matches
                .iter()
                .enumerate()
                .map(|(mi, m)| self.compile_match(meta, &format!("{base}.matches[{mi}]"), m))
                .collect();

            // Filters.
            let mut policy = None;
            let mut batching = None;
            let mut action = RuleAction::Forward;
            let own_batching_ref = rule.filters.iter().any(|f| {
                f.filter_type == FilterType::ExtensionRef
                    && f.extension_ref
                        .as_ref()
                        .is_some_and(|e| e.kind == "BatchingPolicy")
            });
            for (fi, f) in rule.filters.iter().enumerate() {
                if f.filter_type != FilterType::ExtensionRef {
                    self.warn(format!(
                        "{}: {base}.filters[{fi}]: {} filter accepted, not enforced",
                        meta.label(),
                        f.filter_type.as_str()
                    ));
                    continue;
                }
                let Some(ext) = &f.extension_ref else {
                    continue;
                };
                let found = match ext.kind.as_str() {
                    "InferencePolicy" => self
                        .find_policy(meta, &ext.name, |r| {
                            matches!(r, Resource::InferencePolicy(_))
                        })
                        .map(|k| (&mut policy, k)),
                    "BatchingPolicy" => self
                        .find_policy(meta, &ext.name, |r| {
                            matches!(r, Resource::BatchingPolicy(_))
                        })
                        .map(|k| (&mut batching, k)),
                    _ => None,
                };
                match found {
                    Some((slot, key)) => {
                        if slot.is_some() {
                            self.warn(format!(
                                "{}: {base}.filters[{fi}]: a second {} on one rule is ignored",
                                meta.label(),
                                ext.kind
                            ));
                        } else {
                            *slot = Some(key);
                        }
                    }
                    None => {
                        let filter = format!("{} {}", ext.kind, ext.name);
                        let why =
                            if matches!(ext.kind.as_str(), "InferencePolicy" | "BatchingPolicy") {
                                "not found"
                            } else {
                                "is not a kind shardgate supports (InferencePolicy, BatchingPolicy)"
                            };
                        self.warn(format!(
                            "{}: {base}.filters[{fi}]: ExtensionRef {filter} {why}; the rule answers 500",
                            meta.label()
                        ));
                        if action == RuleAction::Forward {
                            action = RuleAction::FilterNotFound { filter };
                        }
                    }
                }
            }

            // Backends.
            let mut backends = Vec::new();
            let mut backend_ports = Vec::new();
            let mut pools = Vec::new();
            for (bi, b) in rule.backend_refs.iter().enumerate() {
                let ns = b.namespace.as_deref().unwrap_or(&meta.namespace);
                if ns != meta.namespace {
                    self.warn(format!(
                        "{}: {base}.backendRefs[{bi}]: cross-namespace reference to {ns}/{} allowed without a ReferenceGrant (standalone mode)",
                        meta.label(),
                        b.name
                    ));
                }
                if !b.filters.is_empty() {
                    self.warn(format!(
                        "{}: {base}.backendRefs[{bi}].filters accepted, not enforced",
                        meta.label()
                    ));
                }
                let kind = b.kind.as_deref().unwrap_or("Service");
                let group = b.group.as_deref().unwrap_or("");
                let endpoints = match kind {
                    "Service" if group.is_empty() || group == "core" => match b.port {
                        Some(port) => self.service_endpoints(ns, &b.name, port),
                        None => Vec::new(), // rejected by validation
                    },
                    "InferencePool"
                        if matches!(
                            group,
                            "" | "inference.networking.k8s.io" | "inference.networking.x-k8s.io"
                        ) =>
                    {
                        let key = format!("{ns}/{}", b.name);
                        if !pools.contains(&key) {
                            pools.push(key.clone());
                        }
                        self.referenced_pools.insert(key);
                        self.pool_endpoints(ns, &b.name, b.port)
                    }
                    _ => {
                        self.warn(format!(
                            "{}: {base}.backendRefs[{bi}]: backend kind {group}/{kind} is not supported; it gets no traffic",
                            meta.label()
                        ));
                        Vec::new()
                    }
                };
                backends.push(BackendGroup {
                    name: format!("{ns}/{}", b.name),
                    weight: b.weight,
                    endpoints,
                });
                backend_ports.push(b.port);
            }
            if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
                self.warn(format!(
                    "{}: {base}: every backendRef has weight 0; the rule answers 500",
                    meta.label()
                ));
            }
            let timeouts = rule.timeouts.clone().unwrap_or_default();
            let pinned = if rule.matches.is_empty() {
                vec![None]
            } else {
                rule.matches.iter().map(pinned_model).collect()
            };
            rules.push(CompiledRule {
                matches,
                backends,
                backend_ports,
                policy,
                batching,
                own_batching_ref,
                batching_default: None,
                action,
                request_timeout: timeouts.request.filter(|d| !d.is_zero()),
                backend_request_timeout: timeouts.backend_request.filter(|d| !d.is_zero()),
                filters: rule.filters.clone(),
                pools,
                pinned,
                models: Vec::new(),
                model: None,
            });
        }
        CompiledRoute {
            key: meta.key(),
            rules,
        }
    }

    fn compile_match(&mut self, meta: &DocMeta, base: &str, m: &HttpRouteMatch) -> CompiledMatch {
        let path = match &m.path {
            None => PathCond::Prefix("/".to_owned()),
            Some(p) => match p.match_type {
                PathMatchType::Exact => PathCond::Exact(p.value.clone()),
                PathMatchType::PathPrefix => {
                    let v = p.value.trim_end_matches('/');
                    PathCond::Prefix(if v.is_empty() {
                        "/".to_owned()
                    } else {
                        v.to_owned()
                    })
                }
                PathMatchType::RegularExpression => match regex::Regex::new(&anchored(&p.value)) {
                    Ok(re) => PathCond::Regex(re, p.value.clone()),
                    Err(e) => {
                        self.errors.push(ConfigError::at(
                            meta,
                            format!("{base}.path.value"),
                            format!("invalid regular expression: {e}"),
                        ));
                        PathCond::Exact(String::new())
                    }
                },
            },
        };
        let mut headers: Vec<NamedCond> = Vec::new();
        for (hi, h) in m.headers.iter().enumerate() {
            let name = h.name.to_ascii_lowercase();
            if headers.iter().any(|c| c.name == name) {
                self.warn(format!(
                    "{}: {base}.headers[{hi}]: header {} listed twice, only the first counts",
                    meta.label(),
                    h.name
                ));
                continue;
            }
            let value = self.value_cond(
                meta,
                &format!("{base}.headers[{hi}].value"),
                h.match_type,
                &h.value,
            );
            headers.push(NamedCond { name, value });
        }
        let mut query: Vec<NamedCond> = Vec::new();
        for (qi, q) in m.query_params.iter().enumerate() {
            if query.iter().any(|c| c.name == q.name) {
                self.warn(format!(
                    "{}: {base}.queryParams[{qi}]: parameter {} listed twice, only the first counts",
                    meta.label(),
                    q.name
                ));
                continue;
            }
            let value = self.value_cond(
                meta,
                &format!("{base}.queryParams[{qi}].value"),
                q.match_type,
                &q.value,
            );
            query.push(NamedCond {
                name: q.name.clone(),
                value,
            });
        }
        CompiledMatch {
            path,
            method: m.method,
            headers,
            query,
        }
    }

    fn value_cond(
        &mut self,
        meta: &DocMeta,
        field: &str,
        kind: StringMatchType,
        value: &str,
    ) -> ValueCond {
        match kind {
            StringMatchType::Exact => ValueCond::Exact(value.to_owned()),
            StringMatchType::RegularExpression => {
                match regex::bytes::Regex::new(&anchored(value)) {
                    Ok(re) => ValueCond::Regex(re, value.to_owned()),
                    Err(e) => {
                        self.errors.push(ConfigError::at(
                            meta,
                            field,
                            format!("invalid regular expression: {e}"),
                        ));
                        ValueCond::Exact(String::new())
                    }
                }
            }
        }
    }

    /// Finds a policy object by name for a route: in the route's namespace
    /// first, then any policy written without a namespace. Returns its key.
    fn find_policy(
        &self,
        route: &DocMeta,
        name: &str,
        is_kind: impl Fn(&Resource) -> bool,
    ) -> Option<String> {
        let candidates = || {
            self.config
                .docs
                .iter()
                .filter(|(m, r)| is_kind(r) && m.name == name)
        };
        candidates()
            .find(|(m, r)| m.namespace == route.namespace && r.metadata().namespace.is_some())
            .or_else(|| candidates().find(|(_, r)| r.metadata().namespace.is_none()))
            .map(|(m, _)| m.key())
    }

    fn add_endpoint(&mut self, addr: SocketAddr, backend: &str) -> usize {
        if let Some(&i) = self.endpoint_index.get(&addr) {
            return i;
        }
        let i = self.endpoints.len();
        self.endpoints.push(EndpointInfo {
            addr,
            backend: backend.to_owned(),
        });
        self.endpoint_index.insert(addr, i);
        i
    }

    /// Ready endpoint addresses of `slices`, with the port chosen per slice.
    fn slice_addrs(
        &mut self,
        slices: &[&'c EndpointSlice],
        svc_port: Option<&ServicePort>,
        port: Option<u16>,
        backend: &str,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        for s in slices {
            let Some(p) = slice_port(s, svc_port, port) else {
                self.warn(format!(
                    "EndpointSlice {}: cannot tell which of its ports serves {backend}; skipped",
                    s.metadata.name
                ));
                continue;
            };
            for e in &s.endpoints {
                if !e.is_ready() {
                    continue;
                }
                let Some(a) = e.addresses.first() else {
                    continue;
                };
                let addrs: Vec<SocketAddr> = match s.address_type {
                    AddressType::IPv4 | AddressType::IPv6 => match a.parse::<IpAddr>() {
                        Ok(ip) => vec![SocketAddr::new(ip, p)],
                        Err(_) => Vec::new(), // rejected by validation
                    },
                    AddressType::Fqdn => (self.resolve)(a, p),
                };
                for addr in addrs {
                    let i = self.add_endpoint(addr, backend);
                    if !out.contains(&i) {
                        out.push(i);
                    }
                }
            }
        }
        out
    }

    fn service_endpoints(&mut self, ns: &str, name: &str, port: u16) -> Vec<usize> {
        let key = (
            "Service".to_owned(),
            ns.to_owned(),
            name.to_owned(),
            Some(port),
        );
        if let Some(v) = self.backend_cache.get(&key) {
            return v.clone();
        }
        let backend = format!("{ns}/{name}");
        let slices: Vec<&'c EndpointSlice> = self
            .slices
            .iter()
            .filter(|(m, s)| {
                m.namespace == ns
                    && s.metadata
                        .labels
                        .get(SERVICE_NAME_LABEL)
                        .map(String::as_str)
                        == Some(name)
            })
            .map(|(_, s)| *s)
            .collect();
        let svc_port = self
            .services
            .iter()
            .find(|(m, _)| m.namespace == ns && m.name == name)
            .and_then(|(_, s)| s.spec.ports.iter().find(|p| p.port == port));
        let out = if slices.is_empty() {
            let addrs = (self.resolve)(name, port);
            let out: Vec<usize> = addrs
                .into_iter()
                .map(|a| self.add_endpoint(a, &backend))
                .collect();
            if out.is_empty() {
                self.warn(format!(
                    "backend {backend}:{port} has no endpoints: no EndpointSlice labelled {SERVICE_NAME_LABEL}={name} in namespace {ns}, and resolving {name}:{port} gave no address"
                ));
            }
            out
        } else {
            let out = self.slice_addrs(&slices, svc_port, Some(port), &backend);
            if out.is_empty() {
                self.warn(format!(
                    "backend {backend}:{port} has no ready endpoints in its EndpointSlices"
                ));
            }
            out
        };
        self.backend_cache.insert(key, out.clone());
        out
    }

    fn pool_endpoints(&mut self, ns: &str, name: &str, port: Option<u16>) -> Vec<usize> {
        let key = (
            "InferencePool".to_owned(),
            ns.to_owned(),
            name.to_owned(),
            port,
        );
        if let Some(v) = self.backend_cache.get(&key) {
            return v.clone();
        }
        let backend = format!("{ns}/{name}");
        let pool = self.config.docs.iter().find_map(|(m, r)| match r {
            Resource::InferencePool(p) if m.namespace == ns && m.name == name => Some(p),
            _ => None,
        });
        if pool.is_none() {
            self.warn(format!(
                "InferencePool {backend} is referenced but not defined; looking for its EndpointSlices anyway"
            ));
        }
        let port = port.or_else(|| pool.and_then(|p| p.spec.target_port()));
        let slices: Vec<&'c EndpointSlice> = self
            .slices
            .iter()
            .filter(|(m, s)| {
                let labels = &s.metadata.labels;
                m.namespace == ns
                    && (labels.get(POOL_NAME_LABEL).map(String::as_str) == Some(name)
                        || labels.get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name))
            })
            .map(|(_, s)| *s)
            .collect();
        let out = self.slice_addrs(&slices, None, port, &backend);
        if slices.is_empty() {
            self.warn(format!(
                "InferencePool {backend} has no endpoints: no EndpointSlice labelled {POOL_NAME_LABEL}={name} (or {SERVICE_NAME_LABEL}={name}) in namespace {ns}"
            ));
        } else if out.is_empty() {
            self.warn(format!(
                "InferencePool {backend} has no ready endpoints in its EndpointSlices"
            ));
        }
        self.backend_cache.insert(key, out.clone());
        out
    }
}

impl Builder<'_, '_> {
    /// `InferenceObjective` and `InferenceModel` priorities by name; a
    /// `poolRef` that names no known pool, or one model twice for one pool
    /// with different priorities, is an error (see [`priority`]).
    fn build_priorities(&mut self) -> Priorities {
        let config = self.config;
        let mut known: HashSet<String> = config
            .docs
            .iter()
            .filter(|(_, r)| matches!(r, Resource::InferencePool(_)))
            .map(|(m, _)| m.key())
            .collect();
        known.extend(self.referenced_pools.iter().cloned());
        let mut out = Priorities::default();
        for (meta, r) in &config.docs {
            let (pool_ref, name, priority, is_model) = match r {
                Resource::InferenceObjective(o) => {
                    (&o.spec.pool_ref, &meta.name, o.spec.priority(), false)
                }
                Resource::InferenceModel(m) => (
                    &m.spec.pool_ref,
                    &m.spec.model_name,
                    m.spec.priority(),
                    true,
                ),
                _ => continue,
            };
            let pool = format!("{}/{}", meta.namespace, pool_ref.name);
            if !known.contains(&pool) {
                self.errors.push(ConfigError::at(
                    meta,
                    "spec.poolRef.name",
                    format!(
                        "InferencePool {pool} not found: define it, or name it in an HTTPRoute backendRef"
                    ),
                ));
                continue;
            }
            let map = if is_model {
                &mut out.models
            } else {
                &mut out.objectives
            };
            let entries = map.entry(name.clone()).or_default();
            if let Some(other) = entries.iter().find(|e| e.pool == pool) {
                if other.priority != priority {
                    self.errors.push(ConfigError::at(
                        meta,
                        "spec.modelName",
                        format!(
                            "model {name} of pool {pool} already has priority {} (InferenceModel {}); one model, one criticality per pool",
                            other.priority, other.source
                        ),
                    ));
                }
                continue;
            }
            entries.push(PriorityEntry {
                source: meta.key(),
                namespace: meta.namespace.clone(),
                pool,
                priority,
            });
            if let Resource::InferenceModel(m) = r {
                if !m.spec.target_models.is_empty() {
                    self.warn(format!(
                        "{}: spec.targetModels accepted, not acted on (requests keep the model they name)",
                        meta.label()
                    ));
                }
            }
        }
        out
    }

    /// Makes `targetRefs` BatchingPolicies the defaults of the rules without a
    /// BatchingPolicy ExtensionRef (see the module docs).
    fn apply_batching_defaults(
        &mut self,
        routes: &mut [CompiledRoute],
        route_docs: &[(&DocMeta, &HttpRoute)],
        route_listeners: &[Vec<usize>],
        gateways: &[(&DocMeta, &Gateway, usize)],
        (rule_base, rule_ids): (&[usize], &[(usize, usize)]),
    ) {
        let config = self.config;
        let mut picks: Vec<Option<DefaultPick>> = (0..rule_ids.len()).map(|_| None).collect();
        for (pmeta, r) in &config.docs {
            let Resource::BatchingPolicy(bp) = r else {
                continue;
            };
            let policy = pmeta.key();
            for (ti, t) in bp.spec.target_refs.iter().enumerate() {
                let base = format!("spec.targetRefs[{ti}]");
                let Some((rank, via, ids)) = self.default_target(
                    pmeta,
                    &base,
                    t,
                    routes,
                    route_docs,
                    route_listeners,
                    gateways,
                    rule_base,
                ) else {
                    continue;
                };
                let mut applied = 0usize;
                for id in ids {
                    let Some(&(ri, i)) = rule_ids.get(id) else {
                        continue;
                    };
                    if routes[ri].rules[i].own_batching_ref {
                        continue;
                    }
                    applied += 1;
                    match &picks[id] {
                        Some(p) if p.rank > rank || (p.rank == rank && p.policy == policy) => {}
                        Some(p) if p.rank == rank => {
                            self.errors.push(ConfigError::at(
                                pmeta,
                                base.clone(),
                                format!(
                                    "{via}: rule {i} of HTTPRoute {} already has BatchingPolicy {} as its default (through {}); two defaults at the same level for one rule",
                                    routes[ri].key, p.policy, p.via
                                ),
                            ));
                            break;
                        }
                        _ => {
                            picks[id] = Some(DefaultPick {
                                rank,
                                policy: policy.clone(),
                                via: via.clone(),
                            })
                        }
                    }
                }
                if applied == 0 {
                    self.warn(format!(
                        "{}: {base} ({via}): no rule without its own BatchingPolicy ExtensionRef; the default applies nowhere",
                        pmeta.label()
                    ));
                }
            }
        }
        for (id, pick) in picks.into_iter().enumerate() {
            let (Some(p), Some(&(ri, i))) = (pick, rule_ids.get(id)) else {
                continue;
            };
            let rule = &mut routes[ri].rules[i];
            rule.batching = Some(p.policy);
            rule.batching_default = Some(p.via);
        }
    }

    /// One `targetRef`'s (rank, description, rule ids); `None` after an error.
    #[allow(clippy::too_many_arguments)]
    fn default_target(
        &mut self,
        pmeta: &DocMeta,
        base: &str,
        t: &PolicyTargetReference,
        routes: &[CompiledRoute],
        route_docs: &[(&DocMeta, &HttpRoute)],
        route_listeners: &[Vec<usize>],
        gateways: &[(&DocMeta, &Gateway, usize)],
        rule_base: &[usize],
    ) -> Option<(u8, String, Vec<usize>)> {
        let ns = t.namespace.as_deref().unwrap_or(&pmeta.namespace);
        let mut fail = |field: &str, message: String| {
            self.errors
                .push(ConfigError::at(pmeta, format!("{base}.{field}"), message));
            None
        };
        match t.kind.as_str() {
            "HTTPRoute" => {
                let Some(ri) = route_docs
                    .iter()
                    .position(|(m, _)| m.namespace == ns && m.name == t.name)
                else {
                    return fail("name", format!("HTTPRoute {ns}/{} not found", t.name));
                };
                let all = rule_base[ri]..rule_base[ri] + routes[ri].rules.len();
                match &t.section_name {
                    None => Some((2, format!("HTTPRoute {ns}/{}", t.name), all.collect())),
                    Some(sec) => {
                        let rules = &route_docs[ri].1.spec.rules;
                        match rules.iter().position(|r| r.name.as_deref() == Some(sec)) {
                            Some(i) => Some((
                                3,
                                format!("HTTPRoute {ns}/{} rule {sec}", t.name),
                                vec![rule_base[ri] + i],
                            )),
                            None => fail(
                                "sectionName",
                                format!("HTTPRoute {ns}/{} has no rule named {sec:?}", t.name),
                            ),
                        }
                    }
                }
            }
            "Gateway" => {
                let Some(&(_, g, first)) = gateways
                    .iter()
                    .find(|(m, _, _)| m.namespace == ns && m.name == t.name)
                else {
                    return fail("name", format!("Gateway {ns}/{} not found", t.name));
                };
                let (rank, via, wanted) = match &t.section_name {
                    None => (
                        0,
                        format!("Gateway {ns}/{}", t.name),
                        (first..first + g.spec.listeners.len()).collect::<Vec<_>>(),
                    ),
                    Some(sec) => match g.spec.listeners.iter().position(|l| l.name == *sec) {
                        Some(li) => (
                            1,
                            format!("Gateway {ns}/{} listener {sec}", t.name),
                            vec![first + li],
                        ),
                        None => {
                            return fail(
                                "sectionName",
                                format!("Gateway {ns}/{} has no listener named {sec:?}", t.name),
                            )
                        }
                    },
                };
                let ids = route_listeners
                    .iter()
                    .enumerate()
                    .filter(|(_, ls)| ls.iter().any(|l| wanted.contains(l)))
                    .flat_map(|(ri, _)| rule_base[ri]..rule_base[ri] + routes[ri].rules.len())
                    .collect();
                Some((rank, via, ids))
            }
            // Rejected when the document was loaded.
            _ => None,
        }
    }
}

/// The model a match pins: an `Exact` model-header value, else the `{name}`
/// of an `Exact` / `PathPrefix` KServe v2 path `/v2/models/{name}…`.
fn pinned_model(m: &HttpRouteMatch) -> Option<String> {
    let header = m.headers.iter().find(|h| {
        h.match_type == StringMatchType::Exact
            && (h.name.eq_ignore_ascii_case(MODEL_HEADER)
                || h.name.eq_ignore_ascii_case(MODEL_TYPE_HEADER))
    });
    if let Some(h) = header {
        return Some(h.value.clone());
    }
    let path = m.path.as_ref()?;
    if path.match_type == PathMatchType::RegularExpression {
        return None;
    }
    kserve_model(&path.value).map(str::to_owned)
}

/// `{name}` of a KServe v2 path `/v2/models/{name}[/…]`.
pub fn kserve_model(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/models/")?;
    let name = rest.split('/').next().unwrap_or("");
    (!name.is_empty()).then_some(name)
}

/// Fills each rule's known models and its single model (see the module docs).
fn rule_models(routes: &mut [CompiledRoute], priorities: &Priorities) {
    for rule in routes.iter_mut().flat_map(|r| r.rules.iter_mut()) {
        let mut served: Vec<String> = Vec::new();
        let mut named: Vec<String> = Vec::new();
        for pool in &rule.pools {
            for (name, entries) in &priorities.models {
                if entries.iter().any(|e| e.pool == *pool) {
                    served.push(name.clone());
                }
            }
            for (name, entries) in &priorities.objectives {
                if entries.iter().any(|e| e.pool == *pool) {
                    named.push(name.clone());
                }
            }
        }
        served.sort();
        served.dedup();
        let first = rule.pinned.first().cloned().flatten();
        rule.model = if first.is_some() && rule.pinned.iter().all(|p| *p == first) {
            first
        } else if rule.pinned.iter().all(Option::is_none) && served.len() == 1 {
            served.first().cloned()
        } else {
            None
        };
        let mut models: Vec<String> = rule.pinned.iter().flatten().cloned().collect();
        models.extend(served);
        models.extend(named);
        models.sort();
        models.dedup();
        rule.models = models;
    }
}

/// Which port of an EndpointSlice serves a backendRef port.
///
/// In order: the Service port's name, the Service's `targetPort` (name or
/// number), the slice port equal to the wanted port, the slice's only port,
/// the wanted port.
fn slice_port(
    slice: &EndpointSlice,
    svc_port: Option<&ServicePort>,
    want: Option<u16>,
) -> Option<u16> {
    let named = |n: &str| {
        slice
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == n)
            .and_then(|p| p.port)
    };
    if let Some(sp) = svc_port {
        if let Some(p) = named(sp.name.as_deref().unwrap_or("")) {
            return Some(p);
        }
        match &sp.target_port {
            Some(IntOrString::Int(t)) => return Some(*t),
            Some(IntOrString::String(n)) => {
                if let Some(p) = named(n) {
                    return Some(p);
                }
            }
            None => {}
        }
    }
    if let Some(w) = want {
        if slice.ports.iter().any(|p| p.port == Some(w)) {
            return Some(w);
        }
    }
    let mut numbered = slice.ports.iter().filter_map(|p| p.port);
    match (numbered.next(), numbered.next()) {
        (Some(only), None) => Some(only),
        _ => want,
    }
}

#[cfg(test)]
mod tests;
