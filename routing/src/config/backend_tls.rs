//! Upstream TLS configuration: the Gateway API `BackendTLSPolicy`
//! (`gateway.networking.k8s.io/v1` and `v1alpha3`) and the core `v1 ConfigMap`
//! that holds its CA bundles (key `ca.crt`, PEM).
//!
//! A policy targets Services (`group ""`, `kind Service`, optional
//! `sectionName` = port name) and says how to verify them: either CA bundles
//! from ConfigMaps or the system roots (`wellKnownCACertificates: System`),
//! never both, never neither; `hostname` is the SNI name and the name verified
//! unless `subjectAltNames` lists others. Per-document checks live in
//! `validate.rs`; ConfigMap references resolve when the routing table is built.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{nullable, ObjectMeta};

/// The ConfigMap key that holds a PEM CA bundle.
pub const CA_CERT_KEY: &str = "ca.crt";

/// `v1 ConfigMap`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Text values.
    #[serde(default, deserialize_with = "nullable")]
    pub data: BTreeMap<String, String>,
    /// Base64 values (accepted, not read).
    #[serde(default, deserialize_with = "nullable")]
    pub binary_data: BTreeMap<String, String>,
    /// `immutable` (accepted, not acted on).
    #[serde(default)]
    pub immutable: Option<bool>,
}

/// `gateway.networking.k8s.io` `BackendTLSPolicy`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTlsPolicy {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: BackendTlsPolicySpec,
}

/// `BackendTLSPolicy.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTlsPolicySpec {
    /// The Services (and ports) whose endpoints are reached over TLS.
    #[serde(default, deserialize_with = "nullable")]
    pub target_refs: Vec<PolicyTargetRef>,
    /// How the backend's certificate is verified.
    pub validation: BackendTlsValidation,
    /// `options` (accepted, not acted on).
    #[serde(default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
}

/// `LocalPolicyTargetReferenceWithSectionName`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// API group; `""` (core) for a Service.
    #[serde(default)]
    pub group: String,
    /// Kind; `Service`.
    pub kind: String,
    /// Name of the target in the policy's namespace.
    pub name: String,
    /// Port name of the Service; absent = every port.
    #[serde(default)]
    pub section_name: Option<String>,
}

/// `BackendTLSPolicy.spec.validation`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTlsValidation {
    /// ConfigMaps (key `ca.crt`) holding the trusted CA bundle.
    #[serde(default, deserialize_with = "nullable")]
    pub ca_certificate_refs: Vec<CaCertificateRef>,
    /// `System`: trust the platform's roots.
    #[serde(default, rename = "wellKnownCACertificates")]
    pub well_known_ca_certificates: Option<String>,
    /// SNI name and the name the certificate must carry.
    pub hostname: String,
    /// Names to verify instead of `hostname`.
    #[serde(default, deserialize_with = "nullable")]
    pub subject_alt_names: Vec<SubjectAltName>,
}

/// `LocalObjectReference` to a CA bundle.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaCertificateRef {
    /// API group; `""` for a ConfigMap.
    #[serde(default)]
    pub group: String,
    /// Kind; `ConfigMap`.
    pub kind: String,
    /// Name in the policy's namespace.
    pub name: String,
}

/// One entry of `subjectAltNames`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectAltName {
    /// `Hostname` or `URI`.
    #[serde(rename = "type")]
    pub san_type: String,
    /// The DNS name, for `Hostname`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The URI, for `URI`.
    #[serde(default)]
    pub uri: Option<String>,
}
