//! The table's non-fatal findings as a typed [`Warning`]: 30 kinds, one
//! variant each, plus the loader's own (unknown fields). `Display` writes the
//! sentence `shardgate check`, the start-up log and `/debug/config` show.
//!
//! Fields hold names as written in messages: `doc` is a document's
//! `Kind namespace/name`, `field` the path of the field inside it
//! (`spec.rules[0].filters[1]`), `backend` a `namespace/name`.

use std::fmt;

use crate::config::{POOL_NAME_LABEL, SERVICE_NAME_LABEL};

/// One non-fatal finding of [`RoutingTable::build`](super::RoutingTable::build).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Warning {
    /// A finding of config loading (an unknown field that was ignored), as the
    /// loader wrote it.
    Loader(String),
    /// A Gateway names a GatewayClass that is not loaded.
    GatewayClassNotFound {
        /// The Gateway.
        doc: String,
        /// The class it names.
        class: String,
    },
    /// Two listeners on one port with the same hostname.
    ListenerConflict {
        /// The Gateway of the later listener.
        doc: String,
        /// The later listener's name.
        listener: String,
        /// The port.
        port: u16,
    },
    /// A listener whose protocol is not served (only `HTTP`, `HTTPS` and `GRPC` are).
    ListenerNotServed {
        /// The Gateway.
        doc: String,
        /// Listener name.
        listener: String,
        /// Its protocol.
        protocol: String,
        /// Its port.
        port: u16,
    },
    /// `allowedRoutes.namespaces.from: Selector`, read as `All`.
    SelectorTreatedAsAll {
        /// The Gateway.
        doc: String,
        /// Listener name.
        listener: String,
    },
    /// An HTTPRoute without `parentRefs`.
    NoParentRefs {
        /// The HTTPRoute.
        doc: String,
    },
    /// A `parentRef` of a kind other than Gateway.
    ParentKindUnsupported {
        /// The HTTPRoute.
        doc: String,
        /// Index in `spec.parentRefs`.
        index: usize,
        /// The kind it names.
        kind: String,
    },
    /// A `parentRef` no listener accepts.
    ParentRefUnattached {
        /// The HTTPRoute.
        doc: String,
        /// Index in `spec.parentRefs`.
        index: usize,
        /// `namespace/name[/section]` of the Gateway it names.
        target: String,
        /// Why each candidate listener refused (empty: none has that
        /// name/port).
        reasons: Vec<String>,
    },
    /// A GatewayClass `parametersRef` names a missing InferenceConfig.
    InferenceConfigNotFound {
        /// The GatewayClass.
        doc: String,
        /// The InferenceConfig name.
        name: String,
    },
    /// Several InferenceConfigs and none linked: none is used.
    InferenceConfigAmbiguous {
        /// How many there are.
        count: usize,
    },
    /// An HTTPRoute without rules.
    NoRules {
        /// The HTTPRoute.
        doc: String,
    },
    /// A filter type other than ExtensionRef (kept, not enforced).
    FilterNotEnforced {
        /// The HTTPRoute.
        doc: String,
        /// `spec.rules[i].filters[j]`.
        field: String,
        /// The filter type as written.
        filter_type: String,
    },
    /// A second InferencePolicy (or BatchingPolicy) ExtensionRef on one rule.
    DuplicateExtensionRef {
        /// The HTTPRoute.
        doc: String,
        /// `spec.rules[i].filters[j]`.
        field: String,
        /// The policy kind.
        kind: String,
    },
    /// An ExtensionRef that resolves to nothing: the rule answers 500.
    ExtensionRefUnresolved {
        /// The HTTPRoute.
        doc: String,
        /// `spec.rules[i].filters[j]`.
        field: String,
        /// The kind it names.
        kind: String,
        /// The name it names.
        name: String,
    },
    /// A backendRef into another namespace (no ReferenceGrant support).
    CrossNamespaceBackend {
        /// The HTTPRoute.
        doc: String,
        /// `spec.rules[i].backendRefs[j]`.
        field: String,
        /// `namespace/name` it names.
        target: String,
    },
    /// backendRef filters (kept, not enforced).
    BackendFiltersNotEnforced {
        /// The HTTPRoute.
        doc: String,
        /// `spec.rules[i].backendRefs[j]`.
        field: String,
    },
    /// A backendRef kind other than Service and InferencePool.
    BackendKindUnsupported {
        /// The HTTPRoute.
        doc: String,
        /// `spec.rules[i].backendRefs[j]`.
        field: String,
        /// Its group (may be empty).
        group: String,
        /// Its kind.
        kind: String,
    },
    /// Every backendRef of a rule has weight 0: the rule answers 500.
    AllWeightsZero {
        /// The HTTPRoute.
        doc: String,
        /// `spec.rules[i]`.
        field: String,
    },
    /// A header match lists one name twice.
    DuplicateHeaderMatch {
        /// The HTTPRoute.
        doc: String,
        /// `spec.rules[i].matches[j].headers[k]`.
        field: String,
        /// The header name as written.
        header: String,
    },
    /// A query match lists one parameter twice.
    DuplicateQueryMatch {
        /// The HTTPRoute.
        doc: String,
        /// `spec.rules[i].matches[j].queryParams[k]`.
        field: String,
        /// The parameter name.
        param: String,
    },
    /// An EndpointSlice with several ports, none of which is known to serve
    /// the backend: skipped.
    SlicePortUnknown {
        /// The EndpointSlice name.
        slice: String,
        /// `namespace/name` of the backend.
        backend: String,
    },
    /// A Service backend without EndpointSlices that the resolver could not
    /// resolve.
    ServiceUnresolved {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The backendRef port.
        port: u16,
    },
    /// A BackendTLSPolicy targets a Service that no backendRef names.
    BackendTlsTargetUnused {
        /// `namespace/name` of the policy.
        policy: String,
        /// `namespace/name` of the Service.
        service: String,
    },
    /// Backends disagree on whether one endpoint address speaks TLS.
    BackendTlsConflict {
        /// The endpoint address.
        endpoint: String,
        /// Who says what, and what is used.
        detail: String,
    },
    /// One endpoint address found through a port whose `appProtocol` speaks
    /// HTTP/2 and through one that does not: HTTP/2 is used.
    AppProtocolConflict {
        /// The endpoint address.
        endpoint: String,
        /// The backend whose port says HTTP/2.
        h2: String,
        /// The backend whose port does not.
        h1: String,
    },
    /// A Service backend whose EndpointSlices list no ready endpoint.
    ServiceNoReadyEndpoints {
        /// `namespace/name`.
        backend: String,
        /// The backendRef port.
        port: u16,
    },
    /// An InferencePool backendRef without an InferencePool document.
    PoolUndefined {
        /// `namespace/name`.
        backend: String,
    },
    /// An InferencePool without EndpointSlices.
    PoolNoSlices {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// An InferencePool whose EndpointSlices list no ready endpoint.
    PoolNoReadyEndpoints {
        /// `namespace/name`.
        backend: String,
    },
    /// A BatchingPolicy `targetRef` whose every rule links its own policy.
    BatchingDefaultUnused {
        /// The BatchingPolicy.
        doc: String,
        /// `spec.targetRefs[i]`.
        field: String,
        /// `Kind namespace/name[ …]` of the target.
        via: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Warning::*;
        match self {
            Loader(message) => f.write_str(message),
            GatewayClassNotFound { doc, class } => write!(
                f,
                "{doc}: GatewayClass {class} not found (standalone mode: ignored)"
            ),
            ListenerConflict {
                doc,
                listener,
                port,
            } => write!(
                f,
                "{doc}: listener {listener} conflicts with another listener on port {port} with the same hostname; the first one wins"
            ),
            ListenerNotServed {
                doc,
                listener,
                protocol,
                port,
            } => write!(
                f,
                "{doc}: listener {listener} ({protocol} :{port}) is accepted but not served yet (only HTTP, HTTPS and GRPC are)"
            ),
            SelectorTreatedAsAll { doc, listener } => write!(
                f,
                "{doc}: listener {listener}: allowedRoutes.namespaces.from Selector is treated as All (no Namespace objects in standalone mode)"
            ),
            NoParentRefs { doc } => write!(
                f,
                "{doc}: no parentRefs, the route attaches to no listener"
            ),
            ParentKindUnsupported { doc, index, kind } => write!(
                f,
                "{doc}: spec.parentRefs[{index}]: parent kind {kind} is not supported, ignored"
            ),
            ParentRefUnattached {
                doc,
                index,
                target,
                reasons,
            } => {
                write!(
                    f,
                    "{doc}: spec.parentRefs[{index}] ({target}) matches no listener that accepts it: "
                )?;
                if reasons.is_empty() {
                    f.write_str("no listener has that name/port")
                } else {
                    f.write_str(&reasons.join("; "))
                }
            }
            InferenceConfigNotFound { doc, name } => write!(
                f,
                "{doc}: spec.parametersRef names InferenceConfig {name} which does not exist"
            ),
            InferenceConfigAmbiguous { count } => write!(
                f,
                "{count} InferenceConfigs and none linked from a GatewayClass parametersRef: none used"
            ),
            NoRules { doc } => write!(f, "{doc}: no rules, matches nothing"),
            FilterNotEnforced {
                doc,
                field,
                filter_type,
            } => write!(
                f,
                "{doc}: {field}: {filter_type} filter accepted, not enforced"
            ),
            DuplicateExtensionRef { doc, field, kind } => write!(
                f,
                "{doc}: {field}: a second {kind} on one rule is ignored"
            ),
            ExtensionRefUnresolved {
                doc,
                field,
                kind,
                name,
            } => {
                let why = if matches!(kind.as_str(), "InferencePolicy" | "BatchingPolicy") {
                    "not found"
                } else {
                    "is not a kind shardgate supports (InferencePolicy, BatchingPolicy)"
                };
                write!(
                    f,
                    "{doc}: {field}: ExtensionRef {kind} {name} {why}; the rule answers 500"
                )
            }
            CrossNamespaceBackend { doc, field, target } => write!(
                f,
                "{doc}: {field}: cross-namespace reference to {target} allowed without a ReferenceGrant (standalone mode)"
            ),
            BackendFiltersNotEnforced { doc, field } => {
                write!(f, "{doc}: {field}.filters accepted, not enforced")
            }
            BackendKindUnsupported {
                doc,
                field,
                group,
                kind,
            } => write!(
                f,
                "{doc}: {field}: backend kind {group}/{kind} is not supported; it gets no traffic"
            ),
            AllWeightsZero { doc, field } => write!(
                f,
                "{doc}: {field}: every backendRef has weight 0; the rule answers 500"
            ),
            DuplicateHeaderMatch { doc, field, header } => write!(
                f,
                "{doc}: {field}: header {header} listed twice, only the first counts"
            ),
            DuplicateQueryMatch { doc, field, param } => write!(
                f,
                "{doc}: {field}: parameter {param} listed twice, only the first counts"
            ),
            SlicePortUnknown { slice, backend } => write!(
                f,
                "EndpointSlice {slice}: cannot tell which of its ports serves {backend}; skipped"
            ),
            ServiceUnresolved {
                namespace,
                name,
                port,
            } => write!(
                f,
                "backend {namespace}/{name}:{port} has no endpoints: no EndpointSlice labelled {SERVICE_NAME_LABEL}={name} in namespace {namespace}, and resolving {name}:{port} gave no address"
            ),
            BackendTlsTargetUnused { policy, service } => write!(
                f,
                "BackendTLSPolicy {policy}: no backendRef names Service {service}; the target acts on nothing"
            ),
            BackendTlsConflict { endpoint, detail } => {
                write!(f, "endpoint {endpoint}: {detail}")
            }
            AppProtocolConflict { endpoint, h2, h1 } => write!(
                f,
                "endpoint {endpoint}: {h2} reaches it over HTTP/2 (its port's appProtocol), {h1} over HTTP/1.1: HTTP/2 is used"
            ),
            ServiceNoReadyEndpoints { backend, port } => write!(
                f,
                "backend {backend}:{port} has no ready endpoints in its EndpointSlices"
            ),
            PoolUndefined { backend } => write!(
                f,
                "InferencePool {backend} is referenced but not defined; looking for its EndpointSlices anyway"
            ),
            PoolNoSlices { namespace, name } => write!(
                f,
                "InferencePool {namespace}/{name} has no endpoints: no EndpointSlice labelled {POOL_NAME_LABEL}={name} (or {SERVICE_NAME_LABEL}={name}) in namespace {namespace}"
            ),
            PoolNoReadyEndpoints { backend } => write!(
                f,
                "InferencePool {backend} has no ready endpoints in its EndpointSlices"
            ),
            BatchingDefaultUnused { doc, field, via } => write!(
                f,
                "{doc}: {field} ({via}): no rule without its own BatchingPolicy ExtensionRef; the default applies nowhere"
            ),
        }
    }
}
