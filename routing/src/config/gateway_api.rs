//! Gateway API resources (`gateway.networking.k8s.io`): `GatewayClass`,
//! `Gateway`, `HTTPRoute` and `GRPCRoute`.
//!
//! Field names and defaults follow the Gateway API v1 specification. Values
//! with a closed set of spellings (path match type, header match type, HTTP
//! method, filter type, `allowedRoutes.namespaces.from`) are strict enums, so
//! a typo is an error that names the field. Unknown *fields* are tolerated
//! (real manifests carry `status`, annotations, newer fields) and reported as
//! warnings by the loader.

use std::time::Duration;

use serde::Deserialize;

use super::{de_opt_port, de_port, nullable, ObjectMeta};
use crate::duration::serde_optional as opt_duration;

/// `GatewayClass`: names the controller and (for shardgate) links the
/// `InferenceConfig` through `parametersRef`. Cluster-scoped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClass {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    pub spec: GatewayClassSpec,
}

/// `GatewayClass.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// The controller that manages Gateways of this class.
    pub controller_name: String,
    /// Controller-specific parameters (shardgate: an `InferenceConfig`).
    #[serde(default)]
    pub parameters_ref: Option<ParametersReference>,
    /// Free-text description.
    #[serde(default)]
    pub description: Option<String>,
}

/// `GatewayClass.spec.parametersRef`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParametersReference {
    /// API group of the referent (e.g. `ai.gateway.io`).
    #[serde(default)]
    pub group: String,
    /// Kind of the referent (e.g. `InferenceConfig`).
    pub kind: String,
    /// Name of the referent.
    pub name: String,
    /// Namespace of the referent, for namespaced kinds.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `Gateway`: a set of listeners (ports + protocols).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    pub spec: GatewaySpec,
}

/// `Gateway.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The `GatewayClass` this Gateway belongs to.
    pub gateway_class_name: String,
    /// Listeners; at least one.
    #[serde(default, deserialize_with = "nullable")]
    pub listeners: Vec<Listener>,
    /// Requested addresses (accepted, not enforced: shardgate binds all
    /// addresses of the host).
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<serde_json::Value>,
}

/// `Gateway.spec.listeners[]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Listener name, unique within the Gateway (the `sectionName` routes use).
    pub name: String,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP`, `UDP` or an implementation-specific
    /// protocol such as the seed's `GRPC`. `HTTP` and `HTTPS` are served.
    pub protocol: String,
    /// Port, 1..=65535.
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
    /// Optional hostname (exact or `*.` wildcard) requests must match.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Which routes may attach (default: HTTPRoutes from the same namespace).
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
    /// TLS settings: the certificates an `HTTPS` listener terminates with.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
}

/// `Gateway.spec.listeners[].tls`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (the default, the only mode served) or `Passthrough`.
    #[serde(default)]
    pub mode: Option<String>,
    /// The certificates, in order: `Secret`s of type `kubernetes.io/tls`. The
    /// first is the listener's default.
    #[serde(default, deserialize_with = "nullable")]
    pub certificate_refs: Vec<SecretObjectRef>,
    /// Implementation-specific options (accepted, not acted on).
    #[serde(default)]
    pub options: Option<serde_json::Value>,
}

/// A reference to a `Secret` (`tls.certificateRefs[]`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectRef {
    /// API group: `""` (core) or absent.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind: `Secret` or absent.
    #[serde(default)]
    pub kind: Option<String>,
    /// The Secret's name.
    pub name: String,
    /// Its namespace; absent means the Gateway's.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `Gateway.spec.listeners[].allowedRoutes`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    /// Namespaces routes may come from.
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    /// Route kinds allowed (empty = the kinds matching the protocol).
    #[serde(default, deserialize_with = "nullable")]
    pub kinds: Vec<RouteGroupKind>,
}

/// `allowedRoutes.namespaces`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `All`, `Same` (the default) or `Selector`.
    #[serde(default)]
    pub from: FromNamespaces,
    /// Label selector for `from: Selector` (treated as `All`: standalone mode
    /// has no Namespace objects to match).
    #[serde(default)]
    pub selector: Option<serde_json::Value>,
}

/// `allowedRoutes.namespaces.from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum FromNamespaces {
    /// Routes from any namespace.
    All,
    /// Routes from the Gateway's namespace only (Gateway API default).
    #[default]
    Same,
    /// Routes from namespaces matching a selector.
    Selector,
}

/// `allowedRoutes.kinds[]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    /// API group (default `gateway.networking.k8s.io`).
    #[serde(default)]
    pub group: Option<String>,
    /// Route kind, e.g. `HTTPRoute`.
    pub kind: String,
}

/// `HTTPRoute`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    pub spec: HttpRouteSpec,
}

/// `HTTPRoute.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Gateways (and listeners) this route attaches to.
    #[serde(default, deserialize_with = "nullable")]
    pub parent_refs: Vec<ParentReference>,
    /// Hostnames (exact or `*.` wildcard); empty = any.
    #[serde(default, deserialize_with = "nullable")]
    pub hostnames: Vec<String>,
    /// Rules, in precedence order for ties.
    #[serde(default, deserialize_with = "nullable")]
    pub rules: Vec<HttpRouteRule>,
}

/// `spec.parentRefs[]` of a route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// API group (default `gateway.networking.k8s.io`).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Gateway`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Namespace of the Gateway (default: the route's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Gateway name.
    pub name: String,
    /// Listener name to attach to (default: all listeners).
    #[serde(default)]
    pub section_name: Option<String>,
    /// Listener port to attach to (default: all ports).
    #[serde(default, deserialize_with = "de_opt_port")]
    pub port: Option<u16>,
}

/// `HTTPRoute.spec.rules[]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Optional rule name.
    #[serde(default)]
    pub name: Option<String>,
    /// Match conditions (any of them); empty = `PathPrefix /`.
    #[serde(default, deserialize_with = "nullable")]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters applied to matching requests.
    #[serde(default, deserialize_with = "nullable")]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted backends.
    #[serde(default, deserialize_with = "nullable")]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Request timeouts.
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
}

/// `spec.rules[].matches[]`: all conditions must hold.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Path condition (default `PathPrefix /`).
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    /// Header conditions.
    #[serde(default, deserialize_with = "nullable")]
    pub headers: Vec<HttpHeaderMatch>,
    /// Query parameter conditions.
    #[serde(default, deserialize_with = "nullable")]
    pub query_params: Vec<HttpQueryParamMatch>,
    /// Method condition.
    #[serde(default)]
    pub method: Option<HttpMethod>,
    /// Set on the matches of a GRPCRoute lowered to an HTTPRoute
    /// (`grpc_route.rs`), never read from a document: only gRPC calls match,
    /// and precedence follows GRPCRoute's rules.
    #[serde(skip)]
    pub grpc: Option<GrpcPrecedence>,
}

/// What a GRPCRoute match weighs in precedence (Gateway API: the characters
/// of its service, then of its method; header matches after).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GrpcPrecedence {
    /// Characters of the match's service (0: none).
    pub service_chars: usize,
    /// Characters of the match's method (0: none).
    pub method_chars: usize,
}

/// `matches[].path`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// Match type (default `PathPrefix`).
    #[serde(default, rename = "type")]
    pub match_type: PathMatchType,
    /// Path value (default `/`).
    #[serde(default = "slash")]
    pub value: String,
}

fn slash() -> String {
    "/".to_owned()
}

/// Path match types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum PathMatchType {
    /// The path equals the value.
    Exact,
    /// The path starts with the value, element-wise (`/v1` matches `/v1/x`,
    /// not `/v1x`); a trailing `/` in the value is ignored.
    #[default]
    PathPrefix,
    /// The whole path matches the regular expression (`regex` crate syntax).
    RegularExpression,
}

/// Header / query parameter value match types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum StringMatchType {
    /// The value equals (case-sensitively).
    #[default]
    Exact,
    /// The whole value matches the regular expression.
    RegularExpression,
}

/// `matches[].headers[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderMatch {
    /// Match type (default `Exact`).
    #[serde(default, rename = "type")]
    pub match_type: StringMatchType,
    /// Header name (case-insensitive).
    pub name: String,
    /// Value or pattern.
    pub value: String,
}

/// `matches[].queryParams[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpQueryParamMatch {
    /// Match type (default `Exact`).
    #[serde(default, rename = "type")]
    pub match_type: StringMatchType,
    /// Parameter name (case-sensitive, compared undecoded).
    pub name: String,
    /// Value or pattern (compared with the undecoded first value).
    pub value: String,
}

/// HTTP methods a route can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl HttpMethod {
    /// The method as it appears on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Connect => "CONNECT",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Trace => "TRACE",
            HttpMethod::Patch => "PATCH",
        }
    }
}

/// `spec.rules[].filters[]` (also `backendRefs[].filters[]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// Filter type.
    #[serde(rename = "type")]
    pub filter_type: FilterType,
    /// For `RequestHeaderModifier`.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `ResponseHeaderModifier`.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// For `RequestMirror` (kept as written).
    #[serde(default)]
    pub request_mirror: Option<serde_json::Value>,
    /// For `RequestRedirect` (kept as written).
    #[serde(default)]
    pub request_redirect: Option<serde_json::Value>,
    /// For `URLRewrite` (kept as written).
    #[serde(default)]
    pub url_rewrite: Option<serde_json::Value>,
    /// For `CORS` (kept as written).
    #[serde(default)]
    pub cors: Option<serde_json::Value>,
    /// For `ExternalAuth` (kept as written).
    #[serde(default)]
    pub external_auth: Option<serde_json::Value>,
    /// For `ExtensionRef`.
    #[serde(default)]
    pub extension_ref: Option<LocalObjectReference>,
}

/// Filter types of the Gateway API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FilterType {
    /// Add/set/remove request headers.
    RequestHeaderModifier,
    /// Add/set/remove response headers.
    ResponseHeaderModifier,
    /// Mirror requests to another backend.
    RequestMirror,
    /// Answer with a redirect.
    RequestRedirect,
    /// Rewrite host/path.
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    /// CORS handling.
    #[serde(rename = "CORS")]
    Cors,
    /// External authorization.
    ExternalAuth,
    /// Implementation-specific filter object (shardgate: `InferencePolicy`,
    /// `BatchingPolicy`).
    ExtensionRef,
}

impl FilterType {
    /// The spelling used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterType::RequestHeaderModifier => "RequestHeaderModifier",
            FilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
            FilterType::RequestMirror => "RequestMirror",
            FilterType::RequestRedirect => "RequestRedirect",
            FilterType::UrlRewrite => "URLRewrite",
            FilterType::Cors => "CORS",
            FilterType::ExternalAuth => "ExternalAuth",
            FilterType::ExtensionRef => "ExtensionRef",
        }
    }
}

/// Header modifier filter body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Headers to set (replace).
    #[serde(default, deserialize_with = "nullable")]
    pub set: Vec<HttpHeader>,
    /// Headers to add (append).
    #[serde(default, deserialize_with = "nullable")]
    pub add: Vec<HttpHeader>,
    /// Header names to remove.
    #[serde(default, deserialize_with = "nullable")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HttpHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A reference to an object in the route's namespace (`extensionRef`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LocalObjectReference {
    /// API group (e.g. `ai.gateway.io`).
    #[serde(default)]
    pub group: String,
    /// Kind (`InferencePolicy` or `BatchingPolicy` for shardgate).
    pub kind: String,
    /// Name.
    pub name: String,
}

/// `spec.rules[].backendRefs[]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackendRef {
    /// API group (default core, i.e. `""`).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`; also `InferencePool`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the route's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port; required for `Service`.
    #[serde(default, deserialize_with = "de_opt_port")]
    pub port: Option<u16>,
    /// Relative weight, 0..=1,000,000 (default 1; 0 = never chosen).
    #[serde(default = "one")]
    pub weight: u32,
    /// Per-backend filters (accepted, not enforced).
    #[serde(default, deserialize_with = "nullable")]
    pub filters: Vec<HttpRouteFilter>,
}

fn one() -> u32 {
    1
}

/// `spec.rules[].timeouts`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// Whole-request timeout (`0s` = none).
    #[serde(default, deserialize_with = "opt_duration")]
    pub request: Option<Duration>,
    /// Per upstream attempt timeout (`0s` = none).
    #[serde(default, deserialize_with = "opt_duration")]
    pub backend_request: Option<Duration>,
}

/// `GRPCRoute` (routed through its HTTPRoute equivalent, `grpc_route.rs`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRoute {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    pub spec: GrpcRouteSpec,
}

/// `GRPCRoute.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// Parent Gateways.
    #[serde(default, deserialize_with = "nullable")]
    pub parent_refs: Vec<ParentReference>,
    /// Hostnames.
    #[serde(default, deserialize_with = "nullable")]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default, deserialize_with = "nullable")]
    pub rules: Vec<GrpcRouteRule>,
}

/// `GRPCRoute.spec.rules[]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    /// Matches.
    #[serde(default, deserialize_with = "nullable")]
    pub matches: Vec<GrpcRouteMatch>,
    /// Filters, kept as written.
    #[serde(default, deserialize_with = "nullable")]
    pub filters: Vec<serde_json::Value>,
    /// Backends.
    #[serde(default, deserialize_with = "nullable")]
    pub backend_refs: Vec<GrpcBackendRef>,
}

/// `GRPCRoute.spec.rules[].matches[]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    /// Method match.
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    /// Header matches.
    #[serde(default, deserialize_with = "nullable")]
    pub headers: Vec<GrpcHeaderMatch>,
}

/// `GRPCRoute` method match.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// `Exact` or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub match_type: Option<String>,
    /// Service name.
    #[serde(default)]
    pub service: Option<String>,
    /// Method name.
    #[serde(default)]
    pub method: Option<String>,
}

/// `GRPCRoute` header match.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcHeaderMatch {
    /// `Exact` or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub match_type: Option<String>,
    /// Header name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `GRPCRoute` backend reference.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcBackendRef {
    /// API group.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port.
    #[serde(default, deserialize_with = "de_opt_port")]
    pub port: Option<u16>,
    /// Weight (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Filters, kept as written.
    #[serde(default, deserialize_with = "nullable")]
    pub filters: Vec<serde_json::Value>,
}
