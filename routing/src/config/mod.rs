//! The config model: typed Kubernetes resources and their loading.
//!
//! [`load_sources`] takes file contents (never paths: this crate does no I/O),
//! splits each into YAML documents, and turns every non-empty document into a
//! typed [`Resource`] with its [`DocMeta`]. It collects *all* problems before
//! returning, and each [`ConfigError`] names the file, the document (index and
//! `Kind namespace/name`) and the field path (`spec.rules[0].matches[0].path.type`).
//!
//! Rules:
//! - every document needs `apiVersion`, `kind` and `metadata.name`; a kind or
//!   apiVersion shardgate does not know is an error (never silently dropped);
//! - fields are typed; closed sets of values are strict enums; unknown fields
//!   are tolerated (real manifests carry `status`, annotations, newer fields)
//!   and each one under `spec` (or an EndpointSlice's top level) is reported in
//!   [`Config::warnings`];
//! - values are validated here (durations, ports 1..=65535, ratios in 0..=1,
//!   weights ≤ 1,000,000, regular expressions compile, hostnames, unique
//!   listener and priority-queue names, `BatchingPolicy` `targetRefs` of kind
//!   Gateway / HTTPRoute, `poolRef`s of kind InferencePool, InferenceModel
//!   criticality `Critical` / `Standard` / `Sheddable`); references *between*
//!   documents (parents, policies, `targetRefs`, `poolRef`s) are checked by
//!   [`crate::RoutingTable::build`];
//! - two documents with the same kind, namespace and name are an error;
//! - YAML merge keys (`<<`) are applied;
//! - before any parsing, the sources together must stay within
//!   [`LoadLimits::max_bytes`] (64 MiB) and every document within
//!   [`LoadLimits::max_depth`] (64 levels of nesting), see [`load_sources_with`].

mod backend_tls;
mod gateway_api;
mod grpc_route;
mod inference;
mod k8s;
mod limits;
mod rollout;
mod validate;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

pub use backend_tls::*;
pub use gateway_api::*;
pub use inference::*;
pub use k8s::*;
pub use limits::{nesting_depth, LoadLimits};
pub use rollout::*;
pub(crate) use validate::anchored;

/// Kubernetes object metadata (the parts shardgate reads).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    pub name: String,
    /// Namespace as written (`None` when absent; see [`DocMeta::namespace`]
    /// for the effective one).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
}

/// Where a resource came from and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    /// File name as passed to [`load_sources`].
    pub file: String,
    /// 0-based index of the YAML document in the file (empty documents count).
    pub index: usize,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// Effective namespace: as written, else `"default"`; `""` for
    /// cluster-scoped kinds (`GatewayClass`).
    pub namespace: String,
}

impl DocMeta {
    /// `namespace/name`, or just `name` for cluster-scoped objects.
    pub fn key(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }

    /// `Kind namespace/name`, as used in error messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.key())
    }
}

/// A typed resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// `gateway.networking.k8s.io` `GatewayClass`.
    GatewayClass(GatewayClass),
    /// `gateway.networking.k8s.io` `Gateway`.
    Gateway(Gateway),
    /// `gateway.networking.k8s.io` `HTTPRoute`.
    HttpRoute(HttpRoute),
    /// `gateway.networking.k8s.io` `GRPCRoute` (routed as HTTP/2 `POST /Service/Method`).
    GrpcRoute(GrpcRoute),
    /// `discovery.k8s.io/v1` `EndpointSlice`.
    EndpointSlice(EndpointSlice),
    /// `v1` `Service`.
    Service(Service),
    /// `v1` `Secret` (the certificates of `HTTPS` listeners).
    Secret(Secret),
    /// `v1` `ConfigMap` (CA bundles of `BackendTLSPolicy`).
    ConfigMap(ConfigMap),
    /// `gateway.networking.k8s.io` `BackendTLSPolicy` (the endpoints of the
    /// Services it targets are reached over TLS).
    BackendTlsPolicy(BackendTlsPolicy),
    /// `ai.gateway.io/v1alpha1` `InferenceConfig`.
    InferenceConfig(InferenceConfig),
    /// `ai.gateway.io/v1alpha1` `InferencePolicy`.
    InferencePolicy(InferencePolicy),
    /// `ai.gateway.io/v1alpha1` `BatchingPolicy`.
    BatchingPolicy(BatchingPolicy),
    /// The seed's `SecurityPolicy` (JWT authentication and rate limits).
    SecurityPolicy(SecurityPolicy),
    /// `monitoring.coreos.com/v1` `ServiceMonitor` (not enforced).
    ServiceMonitor(ServiceMonitor),
    /// Gateway API Inference Extension `InferencePool`.
    InferencePool(InferencePool),
    /// Gateway API Inference Extension `InferenceObjective`.
    InferenceObjective(InferenceObjective),
    /// Gateway API Inference Extension `InferenceModel` (the older kind).
    InferenceModel(InferenceModel),
    /// Gateway API Inference Extension `InferenceModelRewrite`.
    InferenceModelRewrite(InferenceModelRewrite),
    /// `ai.gateway.io/v1alpha1` `ModelRollout`.
    ModelRollout(ModelRollout),
}

impl Resource {
    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::GatewayClass(r) => &r.metadata,
            Resource::Gateway(r) => &r.metadata,
            Resource::HttpRoute(r) => &r.metadata,
            Resource::GrpcRoute(r) => &r.metadata,
            Resource::EndpointSlice(r) => &r.metadata,
            Resource::Service(r) => &r.metadata,
            Resource::Secret(r) => &r.metadata,
            Resource::ConfigMap(r) => &r.metadata,
            Resource::BackendTlsPolicy(r) => &r.metadata,
            Resource::InferenceConfig(r) => &r.metadata,
            Resource::InferencePolicy(r) => &r.metadata,
            Resource::BatchingPolicy(r) => &r.metadata,
            Resource::SecurityPolicy(r) => &r.metadata,
            Resource::ServiceMonitor(r) => &r.metadata,
            Resource::InferencePool(r) => &r.metadata,
            Resource::InferenceObjective(r) => &r.metadata,
            Resource::InferenceModel(r) => &r.metadata,
            Resource::InferenceModelRewrite(r) => &r.metadata,
            Resource::ModelRollout(r) => &r.metadata,
        }
    }
}

/// One supported kind: its name, accepted apiVersions, scope, whether the
/// gateway acts on it, and how to parse it.
struct KindSpec {
    kind: &'static str,
    api_versions: &'static [&'static str],
    cluster_scoped: bool,
    enforced: &'static str,
    parse: ParseFn,
}

/// Parses a document's value into a typed resource, pushing ignored field
/// paths; the error is `(field path, message)`.
type ParseFn = fn(serde_yaml_ng::Value, &mut Vec<String>) -> Result<Resource, (String, String)>;

const GATEWAY_API: &[&str] = &[
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1beta1",
];
const GATEWAY_API_GRPC: &[&str] = &[
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1alpha2",
];
const AI_GATEWAY: &[&str] = &["ai.gateway.io/v1alpha1"];
const GAIE_ALPHA: &[&str] = &["inference.networking.x-k8s.io/v1alpha2"];

/// Supported kinds, in report order.
const KINDS: &[KindSpec] = &[
    KindSpec {
        kind: "GatewayClass",
        api_versions: GATEWAY_API,
        cluster_scoped: true,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::GatewayClass),
    },
    KindSpec {
        kind: "Gateway",
        api_versions: GATEWAY_API,
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::Gateway),
    },
    KindSpec {
        kind: "HTTPRoute",
        api_versions: GATEWAY_API,
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::HttpRoute),
    },
    KindSpec {
        kind: "GRPCRoute",
        api_versions: GATEWAY_API_GRPC,
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::GrpcRoute),
    },
    KindSpec {
        kind: "EndpointSlice",
        api_versions: &["discovery.k8s.io/v1"],
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::EndpointSlice),
    },
    KindSpec {
        kind: "Service",
        api_versions: &["v1"],
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::Service),
    },
    KindSpec {
        kind: "Secret",
        api_versions: &["v1"],
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::Secret),
    },
    KindSpec {
        kind: "ConfigMap",
        api_versions: &["v1"],
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::ConfigMap),
    },
    KindSpec {
        kind: "BackendTLSPolicy",
        api_versions: &[
            "gateway.networking.k8s.io/v1",
            "gateway.networking.k8s.io/v1alpha3",
        ],
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::BackendTlsPolicy),
    },
    KindSpec {
        kind: "InferencePool",
        api_versions: &[
            "inference.networking.k8s.io/v1",
            "inference.networking.x-k8s.io/v1alpha2",
        ],
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::InferencePool),
    },
    KindSpec {
        kind: "InferenceObjective",
        api_versions: GAIE_ALPHA,
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::InferenceObjective),
    },
    KindSpec {
        kind: "InferenceModel",
        api_versions: GAIE_ALPHA,
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::InferenceModel),
    },
    KindSpec {
        kind: "InferenceModelRewrite",
        api_versions: GAIE_ALPHA,
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::InferenceModelRewrite),
    },
    KindSpec {
        kind: "ModelRollout",
        api_versions: AI_GATEWAY,
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::ModelRollout),
    },
    KindSpec {
        kind: "InferenceConfig",
        api_versions: AI_GATEWAY,
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::InferenceConfig),
    },
    KindSpec {
        kind: "InferencePolicy",
        api_versions: AI_GATEWAY,
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::InferencePolicy),
    },
    KindSpec {
        kind: "BatchingPolicy",
        api_versions: AI_GATEWAY,
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::BatchingPolicy),
    },
    KindSpec {
        kind: "SecurityPolicy",
        api_versions: &[
            "gateway.networking.k8s.io/v1alpha2",
            "ai.gateway.io/v1alpha1",
        ],
        cluster_scoped: false,
        enforced: ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::SecurityPolicy),
    },
    KindSpec {
        kind: "ServiceMonitor",
        api_versions: &["monitoring.coreos.com/v1"],
        cluster_scoped: false,
        enforced: NOT_ENFORCED,
        parse: |v, u| typed(v, u).map(Resource::ServiceMonitor),
    },
];

/// Enforcement status string for kinds the gateway acts on.
pub const ENFORCED: &str = "enforced";
/// Enforcement status string for kinds that are parsed and validated only.
pub const NOT_ENFORCED: &str = "accepted, not enforced";

/// Whether shardgate acts on `kind`, wholly or in part (see
/// [`Config::enforcement_report`]); `None` for kinds it does not load at all.
pub fn is_enforced(kind: &str) -> Option<bool> {
    KINDS
        .iter()
        .find(|k| k.kind == kind)
        .map(|k| k.enforced != NOT_ENFORCED)
}

/// All loaded resources, in file and document order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Each resource with where it came from.
    pub docs: Vec<(DocMeta, Resource)>,
    /// Non-fatal findings of loading (unknown fields that were ignored).
    pub warnings: Vec<String>,
}

impl Config {
    /// Per kind present: its enforcement status ([`ENFORCED`] or
    /// [`NOT_ENFORCED`]) and how many documents of
    /// it were loaded, in a fixed kind order. Meant to be logged at start-up so no kind is
    /// silently dropped. `ServiceMonitor` is not enforced.
    pub fn enforcement_report(&self) -> Vec<(String, &'static str, usize)> {
        KINDS
            .iter()
            .filter_map(|spec| {
                let count = self
                    .docs
                    .iter()
                    .filter(|(m, _)| m.kind == spec.kind)
                    .count();
                (count > 0).then(|| (spec.kind.to_owned(), spec.enforced, count))
            })
            .collect()
    }

    /// Iterates the documents of one kind (`"HTTPRoute"`, …).
    pub fn of_kind<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = &'a (DocMeta, Resource)> + 'a {
        self.docs.iter().filter(move |(m, _)| m.kind == kind)
    }
}

/// A config problem, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File name as passed to [`load_sources`].
    pub file: String,
    /// 0-based document index in the file, when known.
    pub doc_index: Option<usize>,
    /// `Kind namespace/name` of the document, when known.
    pub doc: Option<String>,
    /// Field path such as `spec.rules[0].matches[0].path.type`; `""` if none.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about a field of a loaded document.
    pub fn at(meta: &DocMeta, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: meta.file.clone(),
            doc_index: Some(meta.index),
            doc: Some(meta.label()),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if !self.file.is_empty() {
            f.write_str(&self.file)?;
            sep = ": ";
        }
        match (self.doc_index, &self.doc) {
            (Some(i), Some(d)) => write!(f, "{sep}document {i} ({d})")?,
            (Some(i), None) => write!(f, "{sep}document {i}")?,
            (None, Some(d)) => write!(f, "{sep}{d}")?,
            (None, None) => {}
        }
        if self.doc_index.is_some() || self.doc.is_some() {
            sep = ": ";
        }
        if !self.field.is_empty() {
            write!(f, "{sep}{}", self.field)?;
            sep = ": ";
        }
        write!(f, "{sep}{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Loads multi-document YAML sources: `(file name for messages, contents)`.
///
/// Empty documents are skipped. Returns every error found, not just the
/// first; a YAML syntax error stops the reading of that file (its message
/// carries line and column) but other files are still read.
pub fn load_sources(sources: &[(String, String)]) -> Result<Config, Vec<ConfigError>> {
    load_sources_with(sources, &LoadLimits::default())
}

/// [`load_sources`] with explicit [`LoadLimits`]: sources whose total size
/// exceeds `max_bytes` are refused whole (the error names the file that
/// crossed the limit), and a file with a document nested deeper than
/// `max_depth` is not parsed (the error names the file and the document).
pub fn load_sources_with(
    sources: &[(String, String)],
    limits: &LoadLimits,
) -> Result<Config, Vec<ConfigError>> {
    let mut config = Config::default();
    let mut errors = Vec::new();
    let mut total = 0usize;
    for (file, text) in sources {
        total = total.saturating_add(text.len());
        if total > limits.max_bytes {
            return Err(vec![ConfigError {
                file: file.clone(),
                doc_index: None,
                doc: None,
                field: String::new(),
                message: format!(
                    "configuration larger than the limit of {} bytes (--max-config-bytes)",
                    limits.max_bytes
                ),
            }]);
        }
    }
    for (file, text) in sources {
        if let Some((index, depth)) = nesting_depth(text, limits.max_depth) {
            errors.push(ConfigError {
                file: file.clone(),
                doc_index: Some(index),
                doc: None,
                field: String::new(),
                message: format!(
                    "nested deeper than the limit of {} levels (reached {depth}; --max-config-depth); the file was not parsed",
                    limits.max_depth
                ),
            });
            continue;
        }
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let mut value = match serde_yaml_ng::Value::deserialize(document) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(ConfigError {
                        file: file.clone(),
                        doc_index: Some(index),
                        doc: None,
                        field: String::new(),
                        message: format!("YAML syntax error: {e}"),
                    });
                    // The parser cannot resynchronise after an error.
                    break;
                }
            };
            if value.is_null() {
                continue;
            }
            if let Err(e) = value.apply_merge() {
                errors.push(ConfigError {
                    file: file.clone(),
                    doc_index: Some(index),
                    doc: None,
                    field: String::new(),
                    message: format!("YAML merge key: {e}"),
                });
                continue;
            }
            match load_document(file, index, value, &mut config.warnings) {
                Ok(doc) => config.docs.push(doc),
                Err(e) => errors.extend(e),
            }
        }
    }
    // Duplicates.
    let mut seen: HashMap<(&str, &str, &str), &DocMeta> = HashMap::new();
    for (meta, _) in &config.docs {
        let key = (
            meta.kind.as_str(),
            meta.namespace.as_str(),
            meta.name.as_str(),
        );
        if let Some(first) = seen.get(&key) {
            errors.push(ConfigError::at(
                meta,
                "metadata.name",
                format!(
                    "duplicate {}: already defined in {} document {}",
                    meta.label(),
                    first.file,
                    first.index
                ),
            ));
        } else {
            seen.insert(key, meta);
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

fn load_document(
    file: &str,
    index: usize,
    value: serde_yaml_ng::Value,
    warnings: &mut Vec<String>,
) -> Result<(DocMeta, Resource), Vec<ConfigError>> {
    let bare = |doc: Option<String>, field: &str, message: String| {
        vec![ConfigError {
            file: file.to_owned(),
            doc_index: Some(index),
            doc,
            field: field.to_owned(),
            message,
        }]
    };
    if !value.is_mapping() {
        return Err(bare(
            None,
            "",
            "a document must be a mapping with apiVersion, kind and metadata".to_owned(),
        ));
    }
    let str_field = |key: &str| value.get(key).and_then(serde_yaml_ng::Value::as_str);
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(serde_yaml_ng::Value::as_str)
        .map(str::to_owned);
    let kind = str_field("kind").map(str::to_owned);
    let api_version = str_field("apiVersion").map(str::to_owned);
    let ns_written = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(serde_yaml_ng::Value::as_str)
        .map(str::to_owned);
    let cluster_scoped = |k: &str| KINDS.iter().any(|s| s.kind == k && s.cluster_scoped);
    let label = match (&kind, &name) {
        (Some(k), Some(n)) => Some(match &ns_written {
            _ if cluster_scoped(k) => format!("{k} {n}"),
            Some(ns) => format!("{k} {ns}/{n}"),
            None => format!("{k} default/{n}"),
        }),
        (Some(k), None) => Some(k.clone()),
        _ => None,
    };
    let Some(kind) = kind else {
        return Err(bare(label, "kind", "missing `kind`".to_owned()));
    };
    let Some(api_version) = api_version else {
        return Err(bare(label, "apiVersion", "missing `apiVersion`".to_owned()));
    };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(bare(
            label,
            "metadata.name",
            "missing `metadata.name`".to_owned(),
        ));
    };
    let Some(spec) = KINDS.iter().find(|k| k.kind == kind) else {
        return Err(bare(
            label,
            "kind",
            format!("unsupported kind {kind} (apiVersion {api_version})"),
        ));
    };
    if !spec.api_versions.contains(&api_version.as_str()) {
        return Err(bare(
            label,
            "apiVersion",
            format!(
                "unsupported apiVersion {api_version} for kind {kind} (supported: {})",
                spec.api_versions.join(", ")
            ),
        ));
    }
    let namespace = if spec.cluster_scoped {
        String::new()
    } else {
        ns_written.unwrap_or_else(|| "default".to_owned())
    };
    let meta = DocMeta {
        file: file.to_owned(),
        index,
        api_version,
        kind,
        name,
        namespace,
    };
    let mut unknown = Vec::new();
    let resource = (spec.parse)(value, &mut unknown)
        .map_err(|(field, message)| vec![ConfigError::at(&meta, field, message)])?;
    for path in unknown {
        warnings.push(format!(
            "{}: document {} ({}): unknown field `{path}` ignored",
            meta.file,
            meta.index,
            meta.label()
        ));
    }
    let problems = validate::validate(&resource);
    if problems.is_empty() {
        Ok((meta, resource))
    } else {
        Err(problems
            .into_iter()
            .map(|(field, message)| ConfigError::at(&meta, field, message))
            .collect())
    }
}

/// Deserializes a typed resource, tracking the field path of an error and
/// collecting ignored (unknown) fields worth a warning.
fn typed<T: DeserializeOwned>(
    value: serde_yaml_ng::Value,
    unknown: &mut Vec<String>,
) -> Result<T, (String, String)> {
    let mut on_ignored = |path: serde_ignored::Path<'_>| {
        let mut s = String::new();
        format_ignored_path(&path, &mut s);
        let top = s.split(['.', '[']).next().unwrap_or("");
        // Metadata beyond name/namespace/labels/annotations, status and the
        // type header are expected on real objects.
        if !matches!(top, "metadata" | "status" | "apiVersion" | "kind") {
            unknown.push(s);
        }
    };
    let de = serde_ignored::Deserializer::new(value, &mut on_ignored);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner().to_string())
    })
}

fn format_ignored_path(path: &serde_ignored::Path<'_>, out: &mut String) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            format_ignored_path(parent, out);
            out.push_str(&format!("[{index}]"));
        }
        Path::Map { parent, key } => {
            format_ignored_path(parent, out);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => {
            format_ignored_path(parent, out);
        }
    }
}

/// `deserialize_with` helper: an explicit YAML `null` reads as the default
/// (Kubernetes treats `null` like an absent field).
pub(crate) fn nullable<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// `deserialize_with` helper: a port number 1..=65535 with a clear message.
pub(crate) fn de_port<'de, D: Deserializer<'de>>(de: D) -> Result<u16, D::Error> {
    let n = i64::deserialize(de)?;
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(serde::de::Error::custom(format!(
            "port {n} out of range 1..=65535"
        ))),
    }
}

/// Optional variant of [`de_port`].
pub(crate) fn de_opt_port<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u16>, D::Error> {
    let n = Option::<i64>::deserialize(de)?;
    match n {
        None => Ok(None),
        Some(n) => match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(Some(p)),
            _ => Err(serde::de::Error::custom(format!(
                "port {n} out of range 1..=65535"
            ))),
        },
    }
}

#[cfg(test)]
mod tests;
