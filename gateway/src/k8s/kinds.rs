//! The kinds controller mode watches: 20 entries, each with the apiVersions it
//! may be served under (the first one the API server serves is watched), its
//! plural, its scope, and whether its objects go into the configuration
//! snapshot. Every apiVersion listed here is one the routing crate's loader
//! accepts, so an object read from the API loads exactly as the same object
//! written in a file does.

/// One watched kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchedKind {
    /// `kind`.
    pub kind: &'static str,
    /// apiVersions to try, best first.
    pub api_versions: &'static [&'static str],
    /// The resource's plural (its URL segment).
    pub plural: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether objects go into the snapshot (`ReferenceGrant`: watched for
    /// RBAC and status completeness, but the routing table refuses
    /// cross-namespace references anyway).
    pub in_snapshot: bool,
}

const GW: &[&str] = &[
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1beta1",
];
const GAIE_ALPHA: &[&str] = &["inference.networking.x-k8s.io/v1alpha2"];
const OURS: &[&str] = &["ai.gateway.io/v1alpha1"];

const fn k(
    kind: &'static str,
    api_versions: &'static [&'static str],
    plural: &'static str,
    namespaced: bool,
) -> WatchedKind {
    WatchedKind {
        kind,
        api_versions,
        plural,
        namespaced,
        in_snapshot: true,
    }
}

/// Every watched kind, in snapshot order (classes and Gateways first, so a
/// snapshot reads like a hand-written file).
pub const KINDS: &[WatchedKind] = &[
    k("GatewayClass", GW, "gatewayclasses", false),
    k("Gateway", GW, "gateways", true),
    k("HTTPRoute", GW, "httproutes", true),
    k(
        "GRPCRoute",
        &[
            "gateway.networking.k8s.io/v1",
            "gateway.networking.k8s.io/v1alpha2",
        ],
        "grpcroutes",
        true,
    ),
    WatchedKind {
        in_snapshot: false,
        ..k(
            "ReferenceGrant",
            &[
                "gateway.networking.k8s.io/v1",
                "gateway.networking.k8s.io/v1beta1",
            ],
            "referencegrants",
            true,
        )
    },
    k(
        "BackendTLSPolicy",
        &[
            "gateway.networking.k8s.io/v1",
            "gateway.networking.k8s.io/v1alpha3",
        ],
        "backendtlspolicies",
        true,
    ),
    k("Service", &["v1"], "services", true),
    k(
        "EndpointSlice",
        &["discovery.k8s.io/v1"],
        "endpointslices",
        true,
    ),
    k("Secret", &["v1"], "secrets", true),
    k("ConfigMap", &["v1"], "configmaps", true),
    k(
        "InferencePool",
        &[
            "inference.networking.k8s.io/v1",
            "inference.networking.x-k8s.io/v1alpha2",
        ],
        "inferencepools",
        true,
    ),
    k(
        "InferenceObjective",
        GAIE_ALPHA,
        "inferenceobjectives",
        true,
    ),
    k("InferenceModel", GAIE_ALPHA, "inferencemodels", true),
    k(
        "InferenceModelRewrite",
        GAIE_ALPHA,
        "inferencemodelrewrites",
        true,
    ),
    // Cluster-scoped: a GatewayClass's parametersRef names it without a namespace.
    k("InferenceConfig", OURS, "inferenceconfigs", false),
    k("InferencePolicy", OURS, "inferencepolicies", true),
    k("BatchingPolicy", OURS, "batchingpolicies", true),
    k("ModelRollout", OURS, "modelrollouts", true),
    // The seed's SecurityPolicy is written under gateway.networking.k8s.io/v1alpha2;
    // ours is the same kind under ai.gateway.io. Both are watched when served.
    k(
        "SecurityPolicy",
        &["gateway.networking.k8s.io/v1alpha2"],
        "securitypolicies",
        true,
    ),
    k("SecurityPolicy", OURS, "securitypolicies", true),
];

/// `group` and `version` of an apiVersion (`v1` is the core group, `""`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Whether `kind` (as the routing crate names it) is one of ours
/// (`ai.gateway.io`, with a status of plain conditions).
pub fn has_condition_status(kind: &str, api_version: &str) -> bool {
    api_version.starts_with("ai.gateway.io/") || kind == "SecurityPolicy"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_is_one_the_loader_accepts() {
        for w in KINDS {
            for v in w.api_versions {
                if !w.in_snapshot {
                    continue;
                }
                let (group, _) = split_api_version(v);
                let mut yaml =
                    format!("apiVersion: {v}\nkind: {}\nmetadata: {{name: x}}\n", w.kind);
                if group.is_empty() && w.kind == "Secret" {
                    yaml.push_str("type: Opaque\n");
                }
                let r = shardgate_routing::load_sources(&[("t".into(), yaml)]);
                // Loading may fail on required fields, never on the apiVersion.
                if let Err(errs) = r {
                    for e in errs {
                        assert_ne!(e.field, "apiVersion", "{v} {}: {e}", w.kind);
                        assert_ne!(e.field, "kind", "{v} {}: {e}", w.kind);
                    }
                }
            }
        }
    }
}
