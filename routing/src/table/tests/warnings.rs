//! Every [`Warning`] variant's text: the sentences `shardgate check`, the log
//! and `/debug/config` show, unchanged from when warnings were strings.

use super::*;

fn s(v: &str) -> String {
    v.to_owned()
}

#[test]
fn every_variant_displays_its_sentence() {
    let doc = || s("HTTPRoute ns/r");
    let cases: Vec<(Warning, &str)> = vec![
        (
            Warning::Loader(s("t.yaml: document 0 (Gateway ns/gw): unknown field `spec.x` ignored")),
            "t.yaml: document 0 (Gateway ns/gw): unknown field `spec.x` ignored",
        ),
        (
            Warning::GatewayClassNotFound { doc: s("Gateway ns/gw"), class: s("c") },
            "Gateway ns/gw: GatewayClass c not found (standalone mode: ignored)",
        ),
        (
            Warning::ListenerConflict { doc: s("Gateway ns/gw"), listener: s("b"), port: 80 },
            "Gateway ns/gw: listener b conflicts with another listener on port 80 with the same hostname; the first one wins",
        ),
        (
            Warning::ListenerNotServed {
                doc: s("Gateway ns/gw"),
                listener: s("g"),
                protocol: s("TCP"),
                port: 50051,
            },
            "Gateway ns/gw: listener g (TCP :50051) is accepted but not served yet (only HTTP, HTTPS and GRPC are)",
        ),
        (
            Warning::SelectorTreatedAsAll { doc: s("Gateway ns/gw"), listener: s("sel") },
            "Gateway ns/gw: listener sel: allowedRoutes.namespaces.from Selector is treated as All (no Namespace objects in standalone mode)",
        ),
        (
            Warning::NoParentRefs { doc: doc() },
            "HTTPRoute ns/r: no parentRefs, the route attaches to no listener",
        ),
        (
            Warning::ParentKindUnsupported { doc: doc(), index: 1, kind: s("Service") },
            "HTTPRoute ns/r: spec.parentRefs[1]: parent kind Service is not supported, ignored",
        ),
        (
            Warning::ParentRefUnattached {
                doc: doc(),
                index: 0,
                target: s("ns/gw/x"),
                reasons: Vec::new(),
            },
            "HTTPRoute ns/r: spec.parentRefs[0] (ns/gw/x) matches no listener that accepts it: no listener has that name/port",
        ),
        (
            Warning::ParentRefUnattached {
                doc: doc(),
                index: 0,
                target: s("ns/gw"),
                reasons: vec![s("listener a: why"), s("listener b: why not")],
            },
            "HTTPRoute ns/r: spec.parentRefs[0] (ns/gw) matches no listener that accepts it: listener a: why; listener b: why not",
        ),
        (
            Warning::InferenceConfigNotFound { doc: s("GatewayClass c"), name: s("ic") },
            "GatewayClass c: spec.parametersRef names InferenceConfig ic which does not exist",
        ),
        (
            Warning::InferenceConfigAmbiguous { count: 3 },
            "3 InferenceConfigs and none linked from a GatewayClass parametersRef: none used",
        ),
        (Warning::NoRules { doc: doc() }, "HTTPRoute ns/r: no rules, matches nothing"),
        (
            Warning::FilterNotEnforced {
                doc: doc(),
                field: s("spec.rules[0].filters[1]"),
                filter_type: s("URLRewrite"),
            },
            "HTTPRoute ns/r: spec.rules[0].filters[1]: URLRewrite filter accepted, not enforced",
        ),
        (
            Warning::DuplicateExtensionRef {
                doc: doc(),
                field: s("spec.rules[0].filters[1]"),
                kind: s("BatchingPolicy"),
            },
            "HTTPRoute ns/r: spec.rules[0].filters[1]: a second BatchingPolicy on one rule is ignored",
        ),
        (
            Warning::ExtensionRefUnresolved {
                doc: doc(),
                field: s("spec.rules[0].filters[0]"),
                kind: s("InferencePolicy"),
                name: s("p"),
            },
            "HTTPRoute ns/r: spec.rules[0].filters[0]: ExtensionRef InferencePolicy p not found; the rule answers 500",
        ),
        (
            Warning::ExtensionRefUnresolved {
                doc: doc(),
                field: s("spec.rules[0].filters[0]"),
                kind: s("Widget"),
                name: s("w"),
            },
            "HTTPRoute ns/r: spec.rules[0].filters[0]: ExtensionRef Widget w is not a kind shardgate supports (InferencePolicy, BatchingPolicy); the rule answers 500",
        ),
        (
            Warning::CrossNamespaceBackend {
                doc: doc(),
                field: s("spec.rules[0].backendRefs[2]"),
                target: s("other/svc"),
            },
            "HTTPRoute ns/r: spec.rules[0].backendRefs[2]: cross-namespace reference to other/svc allowed without a ReferenceGrant (standalone mode)",
        ),
        (
            Warning::BackendFiltersNotEnforced { doc: doc(), field: s("spec.rules[0].backendRefs[0]") },
            "HTTPRoute ns/r: spec.rules[0].backendRefs[0].filters accepted, not enforced",
        ),
        (
            Warning::BackendKindUnsupported {
                doc: doc(),
                field: s("spec.rules[0].backendRefs[1]"),
                group: s("storage.example.com"),
                kind: s("Bucket"),
            },
            "HTTPRoute ns/r: spec.rules[0].backendRefs[1]: backend kind storage.example.com/Bucket is not supported; it gets no traffic",
        ),
        (
            Warning::AllWeightsZero { doc: doc(), field: s("spec.rules[2]") },
            "HTTPRoute ns/r: spec.rules[2]: every backendRef has weight 0; the rule answers 500",
        ),
        (
            Warning::DuplicateHeaderMatch {
                doc: doc(),
                field: s("spec.rules[0].matches[0].headers[1]"),
                header: s("X-A"),
            },
            "HTTPRoute ns/r: spec.rules[0].matches[0].headers[1]: header X-A listed twice, only the first counts",
        ),
        (
            Warning::DuplicateQueryMatch {
                doc: doc(),
                field: s("spec.rules[0].matches[0].queryParams[1]"),
                param: s("q"),
            },
            "HTTPRoute ns/r: spec.rules[0].matches[0].queryParams[1]: parameter q listed twice, only the first counts",
        ),
        (
            Warning::SlicePortUnknown { slice: s("svc-abc"), backend: s("ns/svc") },
            "EndpointSlice svc-abc: cannot tell which of its ports serves ns/svc; skipped",
        ),
        (
            Warning::ServiceUnresolved { namespace: s("ns"), name: s("svc"), port: 8080 },
            "backend ns/svc:8080 has no endpoints: no EndpointSlice labelled kubernetes.io/service-name=svc in namespace ns, and resolving svc:8080 gave no address",
        ),
        (
            Warning::ServiceNoReadyEndpoints { backend: s("ns/svc"), port: 80 },
            "backend ns/svc:80 has no ready endpoints in its EndpointSlices",
        ),
        (
            Warning::PoolUndefined { backend: s("ns/pool") },
            "InferencePool ns/pool is referenced but not defined; looking for its EndpointSlices anyway",
        ),
        (
            Warning::PoolNoSlices { namespace: s("ns"), name: s("pool") },
            "InferencePool ns/pool has no endpoints: no EndpointSlice labelled inference.networking.k8s.io/pool-name=pool (or kubernetes.io/service-name=pool) in namespace ns",
        ),
        (
            Warning::PoolNoReadyEndpoints { backend: s("ns/pool") },
            "InferencePool ns/pool has no ready endpoints in its EndpointSlices",
        ),
        (
            Warning::BatchingDefaultUnused {
                doc: s("BatchingPolicy ns/b"),
                field: s("spec.targetRefs[0]"),
                via: s("HTTPRoute ns/c"),
            },
            "BatchingPolicy ns/b: spec.targetRefs[0] (HTTPRoute ns/c): no rule without its own BatchingPolicy ExtensionRef; the default applies nowhere",
        ),
    ];
    for (w, want) in cases {
        assert_eq!(w.to_string(), want, "{w:?}");
    }
}

#[test]
fn warnings_are_deduplicated_in_discovery_order() {
    // One undefined pool on two ports: each finding is made twice, listed once.
    let yaml = format!(
        "{GW}{}",
        route(
            "r",
            "  rules:
  - backendRefs:
    - {kind: InferencePool, group: inference.networking.k8s.io, name: ghost, port: 8000}
    - {kind: InferencePool, group: inference.networking.k8s.io, name: ghost, port: 9000}
"
        )
    );
    let t = build(&yaml);
    assert!(
        matches!(
            t.warnings(),
            [Warning::PoolUndefined { backend }, Warning::PoolNoSlices { namespace, name }]
                if backend == "default/ghost" && namespace == "default" && name == "ghost"
        ),
        "{:#?}",
        t.warnings()
    );
}
