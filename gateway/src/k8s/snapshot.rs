//! From watched objects to the configuration snapshot the file path gets,
//! with bad objects isolated.
//!
//! [`select`] keeps what this controller serves: GatewayClasses whose
//! `controllerName` is ours, Gateways of those classes, HTTPRoutes and
//! GRPCRoutes with a `parentRef` to one of those Gateways, the Secrets those
//! Gateways' listeners (certificates) and the SecurityPolicies
//! (`localJWKS.secretRef`) name, ConfigMaps a BackendTLSPolicy names, the
//! Services those routes' `backendRefs` name and the EndpointSlices of those
//! Services and of InferencePools (so endpoint churn elsewhere in the cluster
//! makes no reload), and every object of the other kinds. Each becomes one YAML document, named
//! `Kind namespace/name`, so an error names the object the way `kubectl` does.
//!
//! [`isolate`] validates the selection exactly as a reload does (the routing
//! crate's loader, then its table build) and, while some error names an
//! object, leaves that object out and validates again (at most
//! [`MAX_ROUNDS`] rounds: leaving a Secret out can make the Gateway that uses
//! it fail next). What is left is valid and goes to the reloader; each object
//! left out keeps its errors for its status condition.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;
use shardgate_routing::config::{POOL_NAME_LABEL, SERVICE_NAME_LABEL};
use shardgate_routing::{Config, LoadLimits, RoutingTable};

use super::kinds::WatchedKind;
use super::store::Store;

/// Rounds of leave-out-and-validate-again before giving up.
pub const MAX_ROUNDS: usize = 16;

/// One object of the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// Index of its kind in the watched list.
    pub kind_index: usize,
    /// `Kind namespace/name` (`Kind name` when cluster-scoped): the source name.
    pub label: String,
    /// `namespace` (`""` when cluster-scoped) and name.
    pub key: (String, String),
    /// The document as JSON.
    pub doc: Value,
}

/// Label of an object as the loader writes it: `Kind name` for cluster-scoped
/// kinds, `Kind namespace/name` (namespace `default` when absent) otherwise.
pub fn label(kind: &str, namespaced: bool, ns: &str, name: &str) -> String {
    if !namespaced {
        format!("{kind} {name}")
    } else if ns.is_empty() {
        format!("{kind} default/{name}")
    } else {
        format!("{kind} {ns}/{name}")
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str()
}

/// The Gateways (`namespace/name`) and classes this controller serves.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Owned {
    /// GatewayClass names with our `controllerName`.
    pub classes: Vec<String>,
    /// Gateways of those classes, `(namespace, name)`.
    pub gateways: Vec<(String, String)>,
}

impl Owned {
    /// Whether a route in `route_ns` with `parentRef` `pr` names one of ours.
    pub fn parent_is_ours(&self, route_ns: &str, pr: &Value) -> bool {
        let kind = str_at(pr, &["kind"]).unwrap_or("Gateway");
        let group = str_at(pr, &["group"]).unwrap_or("gateway.networking.k8s.io");
        if kind != "Gateway" || group != "gateway.networking.k8s.io" {
            return false;
        }
        let ns = str_at(pr, &["namespace"]).unwrap_or(route_ns);
        let name = str_at(pr, &["name"]).unwrap_or("");
        self.gateways.iter().any(|(n, g)| n == ns && g == name)
    }
}

/// The objects this controller serves, in watched-kind order (see the module doc).
pub fn select(store: &Store, kinds: &[WatchedKind], controller: &str) -> (Vec<Doc>, Owned) {
    let by_kind = |name: &'static str| {
        kinds
            .iter()
            .enumerate()
            .filter(move |(_, w)| w.kind == name)
            .filter_map(|(i, _)| store.kinds.get(i))
            .flat_map(|k| k.objects.iter())
    };
    let mut owned = Owned::default();
    for ((_, name), o) in by_kind("GatewayClass") {
        if str_at(&o.doc, &["spec", "controllerName"]) == Some(controller) {
            owned.classes.push(name.clone());
        }
    }
    for ((ns, name), o) in by_kind("Gateway") {
        if str_at(&o.doc, &["spec", "gatewayClassName"])
            .is_some_and(|c| owned.classes.iter().any(|x| x == c))
        {
            owned.gateways.push((ns.clone(), name.clone()));
        }
    }
    // ConfigMaps named by a BackendTLSPolicy (CA bundles), `(namespace, name)`.
    let mut config_maps: Vec<(String, String)> = Vec::new();
    for ((ns, _), o) in by_kind("BackendTLSPolicy") {
        let refs = o.doc["spec"]["validation"]["caCertificateRefs"].as_array();
        for r in refs.into_iter().flatten() {
            if str_at(r, &["kind"]).unwrap_or("ConfigMap") == "ConfigMap" {
                if let Some(n) = str_at(r, &["name"]) {
                    config_maps.push((ns.clone(), n.to_string()));
                }
            }
        }
    }
    // Backends (`kind`, namespace, name) the routes we serve name, and every
    // InferencePool (InferenceObjectives and InferenceModels name them too).
    let mut backends: Vec<(String, String, String)> = Vec::new();
    for kind in ["HTTPRoute", "GRPCRoute"] {
        for ((ns, _), o) in by_kind(kind) {
            let prs = o.doc["spec"]["parentRefs"].as_array();
            if !prs.is_some_and(|prs| prs.iter().any(|pr| owned.parent_is_ours(ns, pr))) {
                continue;
            }
            let rules = o.doc["spec"]["rules"].as_array().into_iter().flatten();
            for b in rules.flat_map(|r| r["backendRefs"].as_array().into_iter().flatten()) {
                backends.push((
                    str_at(b, &["kind"]).unwrap_or("Service").to_string(),
                    str_at(b, &["namespace"]).unwrap_or(ns).to_string(),
                    str_at(b, &["name"]).unwrap_or("").to_string(),
                ));
            }
        }
    }
    for ((ns, name), _) in by_kind("InferencePool") {
        backends.push(("InferencePool".into(), ns.clone(), name.clone()));
    }
    let is_backend = |kind: &str, ns: &str, name: &str| {
        backends
            .iter()
            .any(|(k, n, m)| k == kind && n == ns && m == name)
    };
    // Secrets named by our Gateways' listeners (certificates) and by
    // SecurityPolicies (`localJWKS.secretRef`), `(namespace, name)`.
    let mut secrets: Vec<(String, String)> = Vec::new();
    for ((ns, name), o) in by_kind("Gateway") {
        if !owned.gateways.iter().any(|(n, g)| n == ns && g == name) {
            continue;
        }
        let listeners = o.doc["spec"]["listeners"].as_array().into_iter().flatten();
        for r in
            listeners.flat_map(|l| l["tls"]["certificateRefs"].as_array().into_iter().flatten())
        {
            if str_at(r, &["kind"]).unwrap_or("Secret") == "Secret" {
                let rns = str_at(r, &["namespace"]).unwrap_or(ns);
                secrets.push((
                    rns.to_string(),
                    str_at(r, &["name"]).unwrap_or("").to_string(),
                ));
            }
        }
    }
    for ((ns, _), o) in by_kind("SecurityPolicy") {
        let providers = o.doc["spec"]["authentication"]["jwt"]["providers"].as_array();
        for p in providers.into_iter().flatten() {
            let r = &p["localJWKS"]["secretRef"];
            if let Some(name) = str_at(r, &["name"]) {
                let rns = str_at(r, &["namespace"]).unwrap_or(ns);
                secrets.push((rns.to_string(), name.to_string()));
            }
        }
    }
    let mut out = Vec::new();
    for (i, w) in kinds.iter().enumerate() {
        if !w.in_snapshot {
            continue;
        }
        let Some(objs) = store.kinds.get(i) else {
            continue;
        };
        for (key, o) in &objs.objects {
            let (ns, name) = key;
            let keep = match w.kind {
                "GatewayClass" => owned.classes.contains(name),
                "Gateway" => owned.gateways.contains(key),
                "HTTPRoute" | "GRPCRoute" => o.doc["spec"]["parentRefs"]
                    .as_array()
                    .is_some_and(|prs| prs.iter().any(|pr| owned.parent_is_ours(ns, pr))),
                "Secret" => secrets.contains(key),
                "ConfigMap" => config_maps.contains(key),
                "Service" => is_backend("Service", ns, name),
                // A Service's slices, or an InferencePool's (either label).
                "EndpointSlice" => [SERVICE_NAME_LABEL, POOL_NAME_LABEL].iter().any(|l| {
                    str_at(&o.doc, &["metadata", "labels", l]).is_some_and(|owner| {
                        is_backend("Service", ns, owner) || is_backend("InferencePool", ns, owner)
                    })
                }),
                _ => true,
            };
            if keep {
                out.push(Doc {
                    kind_index: i,
                    label: label(w.kind, w.namespaced, ns, name),
                    key: key.clone(),
                    doc: o.doc.clone(),
                });
            }
        }
    }
    (out, owned)
}

/// The (source name, YAML) pairs of `docs`, as the reloader takes them.
pub fn sources(docs: &[Doc]) -> Vec<(String, String)> {
    docs.iter()
        .map(|d| {
            let yaml = serde_yaml_ng::to_string(&d.doc).unwrap_or_default();
            (d.label.clone(), yaml)
        })
        .collect()
}

/// The outcome of [`isolate`].
pub struct Isolated {
    /// The objects left in, valid together.
    pub docs: Vec<Doc>,
    /// Their sources (what the reloader gets).
    pub sources: Vec<(String, String)>,
    /// Objects left out, by label, with every error that named them.
    pub rejected: BTreeMap<String, Vec<String>>,
    /// The loaded configuration and table of what is left in.
    pub config: Config,
    /// The table of what is left in (resolved without DNS: Service backends
    /// without EndpointSlices stay unresolved here).
    pub table: RoutingTable,
}

fn no_dns(_: &str, _: u16) -> Vec<SocketAddr> {
    Vec::new()
}

/// Validate `docs`, leaving out each object an error names (see the module
/// doc). `Err` holds the errors that name no object (a size limit), or those
/// still left after [`MAX_ROUNDS`].
pub fn isolate(mut docs: Vec<Doc>, limits: &LoadLimits) -> Result<Isolated, Vec<String>> {
    let mut rejected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..MAX_ROUNDS {
        let srcs = sources(&docs);
        let errors = match shardgate_routing::load_sources_with(&srcs, limits) {
            Ok(config) => match RoutingTable::build(&config, &mut no_dns) {
                Ok(table) => {
                    return Ok(Isolated {
                        docs,
                        sources: srcs,
                        rejected,
                        config,
                        table,
                    })
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        let mut unplaced = Vec::new();
        let mut named = Vec::new();
        for e in errors {
            if docs.iter().any(|d| d.label == e.file) {
                named.push(e.file.clone());
                // The message without the source name (the label is the key).
                let mut e2 = e.clone();
                e2.file = String::new();
                rejected.entry(e.file).or_default().push(e2.to_string());
            } else {
                unplaced.push(e.to_string());
            }
        }
        if !unplaced.is_empty() {
            return Err(unplaced);
        }
        docs.retain(|d| !named.contains(&d.label));
    }
    Err(vec![format!(
        "the configuration is still invalid after leaving out {} object(s) in {MAX_ROUNDS} rounds",
        rejected.len()
    )])
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::k8s::kinds::KINDS;
    use kube::runtime::watcher::Event;

    pub(crate) fn store_of(objs: &[Value]) -> Store {
        let types = KINDS
            .iter()
            .map(|k| (k.api_versions[0].to_string(), k.kind.to_string()))
            .collect();
        let mut s = Store::new(types);
        for (i, w) in KINDS.iter().enumerate() {
            s.apply(i, Event::Init);
            for o in objs {
                let (v, k) = (
                    o["apiVersion"].as_str().unwrap(),
                    o["kind"].as_str().unwrap(),
                );
                if w.kind == k && w.api_versions[0] == v {
                    s.apply(
                        i,
                        Event::InitApply(serde_json::from_value(o.clone()).unwrap()),
                    );
                }
            }
            s.apply(i, Event::InitDone);
        }
        s
    }

    fn yaml_objs(y: &str) -> Vec<Value> {
        use serde::Deserialize;
        serde_yaml_ng::Deserializer::from_str(y)
            .map(|d| serde_json::to_value(serde_yaml_ng::Value::deserialize(d).unwrap()).unwrap())
            .collect()
    }

    const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ours}
spec: {controllerName: ai.gateway.io/inference-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: theirs}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: a}
spec:
  gatewayClassName: ours
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: a}
spec:
  gatewayClassName: theirs
  listeners: [{name: http, protocol: HTTP, port: 9090}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: a}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: svc, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: foreign, namespace: a}
spec:
  parentRefs: [{name: other}]
  rules: [{backendRefs: [{name: svc, port: 80}]}]
---
apiVersion: v1
kind: Secret
metadata: {name: token, namespace: a}
type: kubernetes.io/service-account-token
---
apiVersion: v1
kind: Secret
metadata: {name: jwks, namespace: a}
type: Opaque
stringData: {jwks.json: '{"keys": [{"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "RgNMLMSPhJ-WPDJ_uscnZsrHnR94kpiY72NmlKdR0_A", "y": "fCWcQaQ-G9OcXhINruAIuu7AETd-TqimdGcowRjGkac"}]}'}
---
apiVersion: ai.gateway.io/v1alpha1
kind: SecurityPolicy
metadata: {name: auth, namespace: a}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}
  authentication:
    jwt:
      providers:
      - name: p
        localJWKS: {secretRef: {name: jwks}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-1
  namespace: a
  labels: {kubernetes.io/service-name: svc}
addressType: IPv4
ports: [{port: 8000}]
endpoints: [{addresses: ["10.0.0.1"]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: unrelated-1
  namespace: a
  labels: {kubernetes.io/service-name: unrelated}
addressType: IPv4
endpoints: [{addresses: ["10.0.0.9"]}]
---
apiVersion: v1
kind: Service
metadata: {name: unrelated, namespace: a}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: a}
spec: {ports: [{port: 80, targetPort: 8000}]}
"#;

    #[test]
    fn only_our_classes_gateways_and_their_routes_are_selected() {
        let s = store_of(&yaml_objs(BASE));
        let (docs, owned) = select(&s, KINDS, "ai.gateway.io/inference-controller");
        let labels: Vec<&str> = docs.iter().map(|d| d.label.as_str()).collect();
        assert_eq!(
            labels,
            vec![
                "GatewayClass ours",
                "Gateway a/gw",
                "HTTPRoute a/good",
                "Service a/svc",
                "EndpointSlice a/svc-1",
                "Secret a/jwks",
                "SecurityPolicy a/auth"
            ]
        );
        assert_eq!(owned.gateways, vec![("a".to_string(), "gw".to_string())]);
        // Another controller name serves the other class.
        let (docs, _) = select(&s, KINDS, "example.com/other");
        assert!(docs.iter().any(|d| d.label == "HTTPRoute a/foreign"));
        assert!(!docs.iter().any(|d| d.label == "HTTPRoute a/good"));
        let iso = isolate(docs, &LoadLimits::default()).unwrap();
        // Their route serves; our SecurityPolicy's target is not theirs.
        let rejected: Vec<&String> = iso.rejected.keys().collect();
        assert_eq!(rejected, vec!["SecurityPolicy a/auth"]);
        // Ours loads whole.
        let (docs, _) = select(&s, KINDS, "ai.gateway.io/inference-controller");
        let iso = isolate(docs, &LoadLimits::default()).unwrap();
        assert!(iso.rejected.is_empty(), "{:?}", iso.rejected);
    }

    #[test]
    fn a_bad_route_is_left_out_and_the_rest_loads() {
        let bad = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-regex, namespace: a}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "(("}}]
    backendRefs: [{name: svc, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-field, namespace: a}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: Bogus, value: /}}]
    backendRefs: [{name: svc, port: 80}]
"#;
        let s = store_of(&yaml_objs(&format!("{BASE}{bad}")));
        let (docs, _) = select(&s, KINDS, "ai.gateway.io/inference-controller");
        assert_eq!(docs.len(), 9);
        let iso = isolate(docs, &LoadLimits::default()).unwrap();
        let left_out: Vec<&String> = iso.rejected.keys().collect();
        assert_eq!(
            left_out,
            vec!["HTTPRoute a/bad-field", "HTTPRoute a/bad-regex"]
        );
        assert!(
            iso.rejected["HTTPRoute a/bad-regex"][0].contains("invalid regular expression"),
            "{:?}",
            iso.rejected
        );
        assert!(
            iso.rejected["HTTPRoute a/bad-field"][0].contains("spec.rules[0].matches[0].path.type"),
            "{:?}",
            iso.rejected
        );
        assert_eq!(iso.sources.len(), 7);
        assert_eq!(iso.table.listeners().len(), 1);
    }
}
