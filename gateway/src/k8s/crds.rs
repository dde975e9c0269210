//! The CustomResourceDefinitions of our kinds, as shipped in `deploy/crds/`:
//! `InferenceConfig` (cluster-scoped: a GatewayClass's `parametersRef` names
//! it without a namespace), `InferencePolicy`, `BatchingPolicy`,
//! `ModelRollout` and `SecurityPolicy` under `ai.gateway.io/v1alpha1`, and the
//! seed's `SecurityPolicy` under `gateway.networking.k8s.io/v1alpha2` (a
//! `*.k8s.io` group needs the `api-approved.kubernetes.io` annotation; ours says
//! `unapproved`; Gateway API's admission policy wants its bundle-version and
//! channel annotations too). Six CRDs, each with a `status` subresource holding the
//! conditions the controller writes.
//!
//! The files are generated here, from the watched-kind table the controller
//! uses ([`super::kinds::KINDS`]), and `deploy_crds_are_up_to_date` fails when
//! `deploy/crds/` differs from what this module generates (rewrite them with
//! `SHARDGATE_UPDATE_CRDS=1 cargo test -p shardgate --lib crds`).
//!
//! Schemas: each `spec` schema is generated (schemars, with kube-core's
//! structural rewrites) from the very type the loader parses that kind's spec
//! into (`shardgate_routing::config::InferenceConfigSpec`, …): field names and
//! types, closed sets of values as `enum`s (a rate limit's `unit`, prewarm
//! `mode`, …), durations as strings matching the parser's grammar
//! ([`shardgate_routing::duration::PATTERN`]), documentation as descriptions.
//! So `kubectl apply` refuses a wrong type, an unknown enum value or a
//! malformed duration, as `shardgate check` does; the cross-field and
//! cross-object checks stay in the gateway and show in each object's
//! `Accepted` condition. Unknown fields are pruned by the API server (the
//! loader tolerates and reports them).

use serde_json::{json, Value};

use super::kinds::{split_api_version, KINDS};

/// The Gateway API release whose CRDs ours sit beside (`scripts/k8s-testenv`'s pin).
pub const GATEWAY_API_BUNDLE: &str = "v1.6.3";

/// One CRD: its file name in `deploy/crds/` and its YAML.
pub fn generate() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for w in KINDS {
        for v in w.api_versions {
            let (group, version) = split_api_version(v);
            let ours = group == "ai.gateway.io";
            let seed_security = group == "gateway.networking.k8s.io" && w.kind == "SecurityPolicy";
            if !ours && !seed_security {
                continue;
            }
            let name = format!("{}.{group}", w.plural);
            let singular = w.kind.to_ascii_lowercase();
            let mut metadata = json!({ "name": name });
            if seed_security {
                // Gateway API's `safe-upgrades` ValidatingAdmissionPolicy admits a
                // CRD of its group only with a bundle version of v1.5.0 or later
                // (and, on update, the channel it had): the bundle it sits beside.
                metadata["annotations"] = json!({
                    "api-approved.kubernetes.io": "unapproved, the seed's SecurityPolicy for shardgate (not a Gateway API kind)",
                    "gateway.networking.k8s.io/bundle-version": GATEWAY_API_BUNDLE,
                    "gateway.networking.k8s.io/channel": "standard",
                });
            }
            let schema = json!({
                "type": "object",
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": spec_schema(w.kind),
                    "status": {
                        "type": "object",
                        "properties": {
                            "conditions": {
                                "type": "array",
                                "x-kubernetes-list-type": "map",
                                "x-kubernetes-list-map-keys": ["type"],
                                "items": condition_schema(),
                            }
                        }
                    }
                },
                "required": ["spec"],
            });
            let crd = json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": metadata,
                "spec": {
                    "group": group,
                    "names": {
                        "kind": w.kind,
                        "listKind": format!("{}List", w.kind),
                        "plural": w.plural,
                        "singular": singular,
                        "categories": ["shardgate"],
                    },
                    "scope": if w.namespaced { "Namespaced" } else { "Cluster" },
                    "versions": [{
                        "name": version,
                        "served": true,
                        "storage": true,
                        "subresources": {"status": {}},
                        "additionalPrinterColumns": [
                            {"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"},
                            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        ],
                        "schema": {"openAPIV3Schema": schema},
                    }],
                },
            });
            let yaml = format!(
                "# Generated by shardgate (gateway/src/k8s/crds.rs); do not edit by hand.\n{}",
                serde_yaml_ng::to_string(&crd).unwrap_or_default()
            );
            out.push((format!("{name}.yaml"), yaml));
        }
    }
    out
}

/// The OpenAPI v3 schema of `T`, as Kubernetes takes it: inlined, structural
/// (kube-core's rewrites), `nullable` for options, and free-form values
/// (`serde_json::Value` fields) marked `x-kubernetes-preserve-unknown-fields`.
fn schema_of<T: schemars::JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube_core::schema::StructuralSchemaRewriter)
        .with_transform(kube_core::schema::OptionalEnum)
        .into_generator();
    let mut v = serde_json::to_value(generator.into_root_schema_for::<T>()).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("title");
        o.remove("$schema");
    }
    free_form(&mut v);
    v
}

/// Mark schemas that say nothing (`true`, or no type and no alternatives) as
/// free-form objects, which a structural schema must spell out.
fn free_form(v: &mut Value) {
    if *v == Value::Bool(true) {
        *v = json!({"x-kubernetes-preserve-unknown-fields": true});
        return;
    }
    let Some(o) = v.as_object_mut() else { return };
    let says_something = [
        "type",
        "anyOf",
        "oneOf",
        "allOf",
        "enum",
        "properties",
        "items",
        "$ref",
    ]
    .iter()
    .any(|k| o.contains_key(*k));
    if !says_something {
        o.insert(
            "x-kubernetes-preserve-unknown-fields".into(),
            Value::Bool(true),
        );
    }
    if let Some(Value::Object(props)) = o.get_mut("properties") {
        for p in props.values_mut() {
            free_form(p);
        }
    }
    for k in ["items", "additionalProperties"] {
        if let Some(x) = o.get_mut(k) {
            if x.is_object() || *x == Value::Bool(true) {
                free_form(x);
            }
        }
    }
    for k in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(xs)) = o.get_mut(k) {
            for x in xs {
                free_form(x);
            }
        }
    }
}

/// The `spec` schema of one of our kinds, from the type the loader parses it into.
fn spec_schema(kind: &str) -> Value {
    use shardgate_routing::config as c;
    match kind {
        "InferenceConfig" => schema_of::<c::InferenceConfigSpec>(),
        "InferencePolicy" => schema_of::<c::InferencePolicySpec>(),
        "BatchingPolicy" => schema_of::<c::BatchingPolicySpec>(),
        "ModelRollout" => schema_of::<c::ModelRolloutSpec>(),
        "SecurityPolicy" => schema_of::<c::SecurityPolicySpec>(),
        _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    }
}

fn condition_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "status", "lastTransitionTime", "reason", "message"],
        "properties": {
            "type": {"type": "string", "maxLength": 316},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string", "maxLength": 1024},
            "message": {"type": "string", "maxLength": 32768},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn deploy_crds_are_up_to_date() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        let update = std::env::var_os("SHARDGATE_UPDATE_CRDS").is_some();
        if update {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let generated = generate();
        assert_eq!(generated.len(), 6);
        for (file, yaml) in &generated {
            let path = dir.join(file);
            if update {
                std::fs::write(&path, yaml).unwrap();
                continue;
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == *yaml,
                "deploy/crds/{file} is out of date with gateway/src/k8s/crds.rs: run SHARDGATE_UPDATE_CRDS=1 cargo test -p shardgate --lib crds"
            );
        }
        // Nothing else in the folder claims to be generated.
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(
                generated.iter().any(|(f, _)| *f == name),
                "deploy/crds/{name} is not generated by crds.rs"
            );
        }
    }
}
