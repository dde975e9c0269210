//! Core Kubernetes kinds shardgate reads: `v1 Service` (for `targetPort`),
//! `discovery.k8s.io/v1 EndpointSlice` (the endpoints of a Service or an
//! InferencePool) and `monitoring.coreos.com/v1 ServiceMonitor` (accepted, not
//! enforced: it configures Prometheus, not the gateway).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{de_opt_port, de_port, nullable, ObjectMeta};

/// The label that ties an `EndpointSlice` to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label that ties an `EndpointSlice` to an `InferencePool` (shardgate
/// convention for standalone mode).
pub const POOL_NAME_LABEL: &str = "inference.networking.k8s.io/pool-name";

/// `discovery.k8s.io/v1 EndpointSlice`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// Object metadata (labels carry the service / pool name).
    pub metadata: ObjectMeta,
    /// Address family of `endpoints[].addresses`.
    pub address_type: AddressType,
    /// Endpoints.
    #[serde(default, deserialize_with = "nullable")]
    pub endpoints: Vec<Endpoint>,
    /// Ports (empty = all ports of the backend reference).
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<EndpointPort>,
}

/// `EndpointSlice.addressType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AddressType {
    /// IPv4 addresses.
    IPv4,
    /// IPv6 addresses.
    IPv6,
    /// Host names, resolved through the build's resolver callback.
    #[serde(rename = "FQDN")]
    Fqdn,
}

/// `EndpointSlice.endpoints[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Addresses; they are fungible, shardgate uses the first.
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<String>,
    /// Readiness.
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
    /// Host name of the endpoint.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Node the endpoint runs on.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Zone.
    #[serde(default)]
    pub zone: Option<String>,
}

impl Endpoint {
    /// `conditions.ready`, where absent means ready.
    pub fn is_ready(&self) -> bool {
        self.conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true)
    }
}

/// `EndpointSlice.endpoints[].conditions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    /// Ready to receive traffic (absent = ready).
    #[serde(default)]
    pub ready: Option<bool>,
    /// Serving (may be true while terminating).
    #[serde(default)]
    pub serving: Option<bool>,
    /// Terminating.
    #[serde(default)]
    pub terminating: Option<bool>,
}

/// `EndpointSlice.ports[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// Port name (the Service port's name).
    #[serde(default)]
    pub name: Option<String>,
    /// Port number.
    #[serde(default, deserialize_with = "de_opt_port")]
    pub port: Option<u16>,
    /// Protocol (`TCP`).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Application protocol.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// `v1 Secret`: the certificates of `HTTPS` listeners (type
/// `kubernetes.io/tls`, keys `tls.crt` and `tls.key`). `data` values are
/// base64, `stringData` values plain text; both are PEM.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// `type`, e.g. `kubernetes.io/tls` or `Opaque`.
    #[serde(default, rename = "type")]
    pub secret_type: Option<String>,
    /// Base64-encoded values.
    #[serde(default, deserialize_with = "nullable")]
    pub data: BTreeMap<String, String>,
    /// Plain-text values (win over `data` for the same key, as in Kubernetes).
    #[serde(default, deserialize_with = "nullable")]
    pub string_data: BTreeMap<String, String>,
    /// `immutable` (accepted, not acted on).
    #[serde(default)]
    pub immutable: Option<bool>,
}

/// The `type` of a TLS Secret.
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";

impl Secret {
    /// The value of `key`: from `stringData` as written, else `data` decoded
    /// from base64 (whitespace ignored). `Ok(None)`: the key is absent; `Err`:
    /// the field path and what is wrong with it.
    pub fn value(&self, key: &str) -> Result<Option<Vec<u8>>, (String, String)> {
        use base64::Engine as _;
        if let Some(v) = self.string_data.get(key) {
            return Ok(Some(v.as_bytes().to_vec()));
        }
        let Some(v) = self.data.get(key) else {
            return Ok(None);
        };
        let compact: String = v.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map(Some)
            .map_err(|e| (format!("data.{key}"), format!("not valid base64: {e}")))
    }
}

/// `v1 Service`: only the ports matter (mapping `port` → `targetPort`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// `Service.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Ports.
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<ServicePort>,
    /// Pod selector.
    #[serde(default, deserialize_with = "nullable")]
    pub selector: BTreeMap<String, String>,
    /// Service type.
    #[serde(default, rename = "type")]
    pub service_type: Option<String>,
    /// Cluster IP.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
}

/// `Service.spec.ports[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name.
    #[serde(default)]
    pub name: Option<String>,
    /// Service port.
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
    /// Port (number or container port name) on the endpoints.
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    /// Protocol.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Application protocol (`kubernetes.io/h2c`, `grpc`, … : see
    /// [`speaks_h2`]).
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// Whether an `appProtocol` names a server that speaks HTTP/2 from the
/// first byte: `kubernetes.io/h2c` (Gateway API GEP-1911), and the names
/// meshes use for it, `h2c`, `http2` and `grpc` (ASCII case ignored).
/// Every request to such a port goes upstream over HTTP/2 (prior knowledge
/// in plaintext, ALPN `h2` under a BackendTLSPolicy); any other value, or
/// none, means HTTP/1.1 for HTTP requests.
pub fn speaks_h2(app_protocol: &str) -> bool {
    ["kubernetes.io/h2c", "h2c", "http2", "grpc"]
        .iter()
        .any(|p| p.eq_ignore_ascii_case(app_protocol))
}

/// Kubernetes `IntOrString` (as used by `targetPort`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A port number.
    Int(u16),
    /// A port name.
    String(String),
}

/// `monitoring.coreos.com/v1 ServiceMonitor` (accepted, not enforced).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitor {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    #[serde(default)]
    pub spec: ServiceMonitorSpec,
}

/// `ServiceMonitor.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Which Services to scrape.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Scrape endpoints.
    #[serde(default, deserialize_with = "nullable")]
    pub endpoints: Vec<MonitorEndpoint>,
    /// Namespaces to look in (kept as written).
    #[serde(default)]
    pub namespace_selector: Option<serde_json::Value>,
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be equal.
    #[serde(default, deserialize_with = "nullable")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements (kept as written).
    #[serde(default, deserialize_with = "nullable")]
    pub match_expressions: Vec<serde_json::Value>,
}

/// `ServiceMonitor.spec.endpoints[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorEndpoint {
    /// Service port name.
    #[serde(default)]
    pub port: Option<String>,
    /// Scrape interval, Prometheus syntax (kept as a string: `1d` is valid
    /// there).
    #[serde(default)]
    pub interval: Option<String>,
    /// Scrape timeout, Prometheus syntax.
    #[serde(default)]
    pub scrape_timeout: Option<String>,
    /// Metrics path.
    #[serde(default)]
    pub path: Option<String>,
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Relabelling rules.
    #[serde(default, deserialize_with = "nullable")]
    pub relabelings: Vec<Relabeling>,
}

/// A Prometheus relabelling rule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relabeling {
    /// Source labels.
    #[serde(default, deserialize_with = "nullable")]
    pub source_labels: Vec<String>,
    /// Target label.
    #[serde(default)]
    pub target_label: Option<String>,
    /// Separator.
    #[serde(default)]
    pub separator: Option<String>,
    /// Regex.
    #[serde(default)]
    pub regex: Option<String>,
    /// Replacement.
    #[serde(default)]
    pub replacement: Option<String>,
    /// Action.
    #[serde(default)]
    pub action: Option<String>,
}
