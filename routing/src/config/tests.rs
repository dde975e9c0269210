//! Loading: the seed, typed fields, and errors that name file, document and
//! field.
#![allow(clippy::unwrap_used)]

use super::*;
use std::time::Duration;

pub(crate) const SEED: &str = include_str!("../../tests/data/seed-manifests.yaml");

fn load(text: &str) -> Result<Config, Vec<ConfigError>> {
    load_sources(&[("test.yaml".to_owned(), text.to_owned())])
}

fn load_err(text: &str) -> Vec<ConfigError> {
    match load(text) {
        Ok(c) => panic!("expected an error, loaded {} docs", c.docs.len()),
        Err(e) => e,
    }
}

/// A minimal valid HTTPRoute document with `rule` spliced into its rules.
fn route_with(rule: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: ns\nspec:\n  parentRefs:\n  - name: gw\n  rules:\n{rule}"
    )
}

#[test]
fn seed_loads_with_all_fields() {
    let c = load_sources(&[("seed.yaml".to_owned(), SEED.to_owned())]).unwrap();
    assert_eq!(c.docs.len(), 8);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let kinds: Vec<&str> = c.docs.iter().map(|(m, _)| m.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "GatewayClass",
            "InferenceConfig",
            "Gateway",
            "HTTPRoute",
            "InferencePolicy",
            "BatchingPolicy",
            "SecurityPolicy",
            "ServiceMonitor"
        ]
    );
    for (i, (m, _)) in c.docs.iter().enumerate() {
        assert_eq!(m.index, i);
        assert_eq!(m.file, "seed.yaml");
    }
    let (m, Resource::GatewayClass(gc)) = &c.docs[0] else {
        panic!()
    };
    assert_eq!(m.namespace, "");
    assert_eq!(
        gc.spec.controller_name,
        "ai.gateway.io/inference-controller"
    );
    let pr = gc.spec.parameters_ref.as_ref().unwrap();
    assert_eq!(
        (pr.group.as_str(), pr.kind.as_str(), pr.name.as_str()),
        ("ai.gateway.io", "InferenceConfig", "llm-routing-config")
    );

    let (m, Resource::InferenceConfig(ic)) = &c.docs[1] else {
        panic!()
    };
    assert_eq!(m.namespace, "default");
    assert_eq!(m.api_version, "ai.gateway.io/v1alpha1");
    let s = &ic.spec;
    let mr = s.model_routing.as_ref().unwrap();
    assert!(mr.enabled);
    assert_eq!(mr.strategy.as_deref(), Some("latency-optimized"));
    let rm = s.resource_management.as_ref().unwrap();
    assert!(rm.gpu_affinity);
    assert_eq!(rm.max_concurrent_inferences, Some(100));
    let t = s.timeout.as_ref().unwrap();
    assert_eq!(t.inference, Some(Duration::from_secs(300)));
    assert_eq!(t.idle, Some(Duration::from_secs(60)));
    let pw = s.model_prewarming.as_ref().unwrap();
    assert!(pw.enabled);
    assert_eq!(pw.models, ["gpt-large", "bert-base"]);
    assert_eq!(pw.replicas_per_model, Some(2));

    let (m, Resource::Gateway(g)) = &c.docs[2] else {
        panic!()
    };
    assert_eq!(m.key(), "ai-workloads/llm-gateway");
    assert_eq!(g.spec.gateway_class_name, "ai-inference-gateway");
    assert_eq!(g.spec.listeners.len(), 2);
    let l0 = &g.spec.listeners[0];
    assert_eq!(
        (l0.name.as_str(), l0.protocol.as_str(), l0.port),
        ("inference-http", "HTTP", 8080)
    );
    assert_eq!(
        l0.allowed_routes
            .as_ref()
            .unwrap()
            .namespaces
            .as_ref()
            .unwrap()
            .from,
        FromNamespaces::All
    );
    let l1 = &g.spec.listeners[1];
    assert_eq!((l1.protocol.as_str(), l1.port), ("GRPC", 50051));
    assert_eq!(
        l1.allowed_routes
            .as_ref()
            .unwrap()
            .namespaces
            .as_ref()
            .unwrap()
            .from,
        FromNamespaces::Same
    );

    let (m, Resource::HttpRoute(r)) = &c.docs[3] else {
        panic!()
    };
    assert_eq!(m.label(), "HTTPRoute ai-workloads/model-routing");
    assert_eq!(r.spec.parent_refs[0].name, "llm-gateway");
    assert_eq!(r.spec.rules.len(), 2);
    let rule = &r.spec.rules[0];
    let h = &rule.matches[0].headers[0];
    assert_eq!(
        (h.match_type, h.name.as_str(), h.value.as_str()),
        (StringMatchType::Exact, "X-Model-Type", "gpt-large")
    );
    assert_eq!(rule.backend_refs[0].name, "gpt-large-service");
    assert_eq!(rule.backend_refs[0].port, Some(8080));
    assert_eq!(rule.backend_refs[0].weight, 100);
    assert_eq!(rule.filters[0].filter_type, FilterType::ExtensionRef);
    let ext = rule.filters[0].extension_ref.as_ref().unwrap();
    assert_eq!(
        (ext.group.as_str(), ext.kind.as_str(), ext.name.as_str()),
        ("ai.gateway.io", "InferencePolicy", "gpu-required")
    );

    let (_, Resource::InferencePolicy(p)) = &c.docs[4] else {
        panic!()
    };
    let lb = p.spec.load_balancing.as_ref().unwrap();
    assert_eq!(lb.algorithm.as_deref(), Some("resource-weighted"));
    let f = lb.factors.as_ref().unwrap();
    assert_eq!(
        (f.gpu_utilization, f.memory_available, f.inference_latency),
        (Some(0.4), Some(0.3), Some(0.3))
    );
    let hc = p.spec.health_check.as_ref().unwrap();
    assert_eq!(hc.interval, Some(Duration::from_secs(10)));
    assert_eq!(hc.timeout, Some(Duration::from_secs(5)));
    let it = hc.inference_test.as_ref().unwrap();
    assert!(it.enabled);
    assert_eq!(it.model.as_deref(), Some("health-check-mini"));
    assert_eq!(p.metadata.namespace, None);

    let (_, Resource::BatchingPolicy(b)) = &c.docs[5] else {
        panic!()
    };
    assert_eq!(b.spec.max_batch_size, Some(32));
    assert_eq!(b.spec.max_latency, Some(Duration::from_millis(50)));
    let ab = b.spec.adaptive_batching.as_ref().unwrap();
    assert!(ab.enabled);
    assert_eq!(ab.target_utilization, Some(0.8));
    let q: Vec<(&str, Option<Duration>, Option<u32>)> = b
        .spec
        .priority_queues
        .iter()
        .map(|q| (q.name.as_str(), q.max_latency, q.max_batch_size))
        .collect();
    assert_eq!(
        q,
        [
            ("real-time", Some(Duration::from_millis(10)), Some(4)),
            ("batch", Some(Duration::from_millis(100)), Some(64))
        ]
    );

    let (m, Resource::SecurityPolicy(sp)) = &c.docs[6] else {
        panic!()
    };
    assert_eq!(m.api_version, "gateway.networking.k8s.io/v1alpha2");
    let tr = sp.spec.target_ref.as_ref().unwrap();
    assert_eq!(
        (tr.kind.as_str(), tr.name.as_str()),
        ("Gateway", "llm-gateway")
    );
    let prov = &sp
        .spec
        .authentication
        .as_ref()
        .unwrap()
        .jwt
        .as_ref()
        .unwrap()
        .providers[0];
    assert_eq!(prov.name, "auth-provider");
    assert_eq!(prov.issuer.as_deref(), Some("https://auth.example.com"));
    assert_eq!(prov.audiences, ["ai-inference"]);
    let rl = sp.spec.rate_limit.as_ref().unwrap();
    assert_eq!(
        rl.default,
        Some(RateLimitValue {
            requests: Some(100),
            tokens: None,
            unit: RateLimitUnit::Minute
        })
    );
    assert_eq!(
        rl.per_model["gpt-large"],
        RateLimitValue {
            requests: Some(10),
            tokens: None,
            unit: RateLimitUnit::Minute
        }
    );

    let (m, Resource::ServiceMonitor(sm)) = &c.docs[7] else {
        panic!()
    };
    assert_eq!(m.namespace, "monitoring");
    assert_eq!(sm.spec.selector.match_labels["app"], "ai-gateway");
    let ep = &sm.spec.endpoints[0];
    assert_eq!(ep.port.as_deref(), Some("metrics"));
    assert_eq!(ep.interval.as_deref(), Some("15s"));
    assert_eq!(ep.path.as_deref(), Some("/metrics"));
    assert_eq!(
        ep.relabelings[0].source_labels,
        ["__meta_kubernetes_pod_label_model"]
    );
    assert_eq!(ep.relabelings[1].target_label.as_deref(), Some("gpu_type"));
}

#[test]
fn shared_seed_copy_loads() {
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/examples/seed-manifests.yaml"
    );
    let text = std::fs::read_to_string(shared)
        .unwrap_or_else(|e| panic!("the shared seed manifests {shared}: {e}"));
    let c = load_sources(&[("seed.yaml".to_owned(), text)]).unwrap();
    assert_eq!(c.docs.len(), 8);
}

#[test]
fn enforcement_report_lists_every_kind() {
    let c = load(SEED).unwrap();
    let report = c.enforcement_report();
    assert_eq!(
        report,
        vec![
            ("GatewayClass".to_owned(), ENFORCED, 1),
            ("Gateway".to_owned(), ENFORCED, 1),
            ("HTTPRoute".to_owned(), ENFORCED, 1),
            ("InferenceConfig".to_owned(), ENFORCED, 1),
            ("InferencePolicy".to_owned(), ENFORCED, 1),
            ("BatchingPolicy".to_owned(), ENFORCED, 1),
            ("SecurityPolicy".to_owned(), ENFORCED, 1),
            ("ServiceMonitor".to_owned(), NOT_ENFORCED, 1),
        ]
    );
    let total: usize = report.iter().map(|r| r.2).sum();
    assert_eq!(total, c.docs.len());
}

#[test]
fn empty_documents_are_skipped_and_counted() {
    let text = format!(
        "---\n# only a comment\n---\n---\n{}\n---\n",
        route_with("  - backendRefs: []\n")
    );
    let c = load(&text).unwrap();
    assert_eq!(c.docs.len(), 1);
    // Two empty documents come before it.
    assert_eq!(c.docs[0].0.index, 2);
    assert!(load("").unwrap().docs.is_empty());
    assert!(load("# nothing\n").unwrap().docs.is_empty());
}

#[test]
fn several_files_and_all_errors_reported() {
    let bad1 = route_with("  - matches:\n    - path:\n        type: Prefix\n        value: /\n");
    let bad2 = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n";
    let errs = load_sources(&[
        ("a.yaml".to_owned(), bad1),
        ("b.yaml".to_owned(), format!("---\n{bad2}")),
        ("c.yaml".to_owned(), SEED.to_owned()),
    ])
    .unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0].file, "a.yaml");
    assert_eq!(errs[1].file, "b.yaml");
    assert_eq!(errs[1].doc_index, Some(0));
}

/// (document, expected field, expected message fragment)
fn check(doc: &str, field: &str, fragment: &str) {
    let errs = load_err(doc);
    let e = &errs[0];
    assert_eq!(e.file, "test.yaml");
    assert_eq!(e.field, field, "{e}");
    assert!(e.message.contains(fragment), "{e}");
    let shown = e.to_string();
    assert!(shown.starts_with("test.yaml: document 0 ("), "{shown}");
    assert!(shown.contains(field), "{shown}");
}

#[test]
fn typo_in_path_type_names_the_field() {
    let doc = route_with("  - matches:\n    - path:\n        type: Prefix\n        value: /v1\n");
    check(
        &doc,
        "spec.rules[0].matches[0].path.type",
        "unknown variant `Prefix`",
    );
    let e = &load_err(&doc)[0];
    assert_eq!(e.doc.as_deref(), Some("HTTPRoute ns/r"));
    assert_eq!(e.doc_index, Some(0));
    assert_eq!(
        e.to_string(),
        "test.yaml: document 0 (HTTPRoute ns/r): spec.rules[0].matches[0].path.type: unknown variant `Prefix`, expected one of `Exact`, `PathPrefix`, `RegularExpression`"
    );
}

#[test]
fn listener_port_out_of_range() {
    let doc = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  gatewayClassName: c\n  listeners:\n  - name: a\n    protocol: HTTP\n    port: 99999\n";
    check(
        doc,
        "spec.listeners[0].port",
        "port 99999 out of range 1..=65535",
    );
    check(
        &doc.replace("99999", "0"),
        "spec.listeners[0].port",
        "out of range",
    );
    check(
        &doc.replace("99999", "-1"),
        "spec.listeners[0].port",
        "out of range",
    );
    check(
        &doc.replace("99999", "http"),
        "spec.listeners[0].port",
        "invalid type",
    );
}

#[test]
fn bad_durations_name_the_field() {
    let batching = "apiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: b\nspec:\n  maxBatchSize: 32\n  maxLatency: fast\n";
    check(batching, "spec.maxLatency", "invalid duration \"fast\"");
    check(
        &batching.replace("fast", "50"),
        "spec.maxLatency",
        "missing unit",
    );
    check(
        &batching.replace("fast", "-5ms"),
        "spec.maxLatency",
        "negative",
    );
    let queues = "apiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: b\nspec:\n  priorityQueues:\n  - name: a\n    maxLatency: 10 ms\n";
    check(queues, "spec.priorityQueues[0].maxLatency", "unknown unit");
    let ic = "apiVersion: ai.gateway.io/v1alpha1\nkind: InferenceConfig\nmetadata:\n  name: c\nspec:\n  timeout:\n    inference: 5d\n";
    check(ic, "spec.timeout.inference", "unknown unit \"d\"");
    let rt = route_with("  - timeouts:\n      request: soon\n");
    check(&rt, "spec.rules[0].timeouts.request", "invalid duration");
}

#[test]
fn ranges_and_uniqueness() {
    let pol = "apiVersion: ai.gateway.io/v1alpha1\nkind: InferencePolicy\nmetadata:\n  name: p\nspec:\n  loadBalancing:\n    factors:\n      gpuUtilization: 1.4\n";
    check(
        pol,
        "spec.loadBalancing.factors.gpuUtilization",
        "out of range 0..=1",
    );
    check(
        &pol.replace("1.4", "-0.1"),
        "spec.loadBalancing.factors.gpuUtilization",
        "out of range",
    );
    let b = "apiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: b\nspec:\n  adaptiveBatching:\n    targetUtilization: 2\n";
    check(b, "spec.adaptiveBatching.targetUtilization", "out of range");
    let q = "apiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: b\nspec:\n  priorityQueues:\n  - name: rt\n  - name: rt\n";
    check(
        q,
        "spec.priorityQueues[1].name",
        "duplicate priority queue name",
    );
    check(
        &q.replace("- name: rt\n  - name: rt", "- name: \"\""),
        "spec.priorityQueues[0].name",
        "must not be empty",
    );
    check(
        &q.replace("  - name: rt\n  - name: rt\n", "  - maxBatchSize: 3\n"),
        "spec.priorityQueues[0]",
        "missing field `name`",
    );
    let w = route_with("  - backendRefs:\n    - name: s\n      port: 80\n      weight: 2000000\n");
    check(
        &w,
        "spec.rules[0].backendRefs[0].weight",
        "out of range 0..=1000000",
    );
    let neg = route_with("  - backendRefs:\n    - name: s\n      port: 80\n      weight: -1\n");
    check(&neg, "spec.rules[0].backendRefs[0].weight", "invalid value");
    let noport = route_with("  - backendRefs:\n    - name: s\n");
    check(
        &noport,
        "spec.rules[0].backendRefs[0].port",
        "port is required",
    );
    let gw = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  gatewayClassName: c\n  listeners:\n  - name: a\n    protocol: HTTP\n    port: 80\n  - name: a\n    protocol: HTTP\n    port: 81\n";
    check(gw, "spec.listeners[1].name", "duplicate listener name");
    let rl = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata:\n  name: s\nspec:\n  rateLimit:\n    default:\n      requests: 10\n      unit: fortnight\n";
    check(
        rl,
        "spec.rateLimit.default.unit",
        "unknown variant `fortnight`",
    );
    let hc = "apiVersion: ai.gateway.io/v1alpha1\nkind: InferencePolicy\nmetadata:\n  name: p\nspec:\n  healthCheck:\n    interval: 0s\n";
    check(hc, "spec.healthCheck.interval", "greater than 0");
}

#[test]
fn match_typos_and_regexes() {
    let hdr = route_with(
        "  - matches:\n    - headers:\n      - type: Regex\n        name: x\n        value: a\n",
    );
    check(
        &hdr,
        "spec.rules[0].matches[0].headers[0].type",
        "unknown variant `Regex`",
    );
    let re = route_with("  - matches:\n    - headers:\n      - type: RegularExpression\n        name: x\n        value: \"gpt-(large\"\n");
    check(
        &re,
        "spec.rules[0].matches[0].headers[0].value",
        "invalid regular expression",
    );
    let pre = route_with(
        "  - matches:\n    - path:\n        type: RegularExpression\n        value: \"/v1/[\"\n",
    );
    check(
        &pre,
        "spec.rules[0].matches[0].path.value",
        "invalid regular expression",
    );
    let qre = route_with("  - matches:\n    - queryParams:\n      - type: RegularExpression\n        name: q\n        value: \"(\"\n");
    check(
        &qre,
        "spec.rules[0].matches[0].queryParams[0].value",
        "invalid regular expression",
    );
    let method = route_with("  - matches:\n    - method: FETCH\n");
    check(
        &method,
        "spec.rules[0].matches[0].method",
        "unknown variant `FETCH`",
    );
    let rel = route_with("  - matches:\n    - path:\n        value: v1\n");
    check(
        &rel,
        "spec.rules[0].matches[0].path.value",
        "must start with `/`",
    );
    let ft = route_with("  - filters:\n    - type: ExtensionReference\n");
    check(
        &ft,
        "spec.rules[0].filters[0].type",
        "unknown variant `ExtensionReference`",
    );
    let missing = route_with("  - filters:\n    - type: ExtensionRef\n");
    check(
        &missing,
        "spec.rules[0].filters[0].extensionRef",
        "required when type is ExtensionRef",
    );
    let host = format!(
        "{}  hostnames: [\"*.*.example.com\"]\n",
        route_with("  - backendRefs: []\n")
    );
    check(&host, "spec.hostnames[0]", "not a valid hostname");
    let to = route_with("  - timeouts:\n      request: 1s\n      backendRequest: 2s\n");
    check(
        &to,
        "spec.rules[0].timeouts.backendRequest",
        "must not exceed request",
    );
}

#[test]
fn endpoint_slice_checks() {
    let s = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  labels:\n    kubernetes.io/service-name: svc\naddressType: IPv4\nendpoints:\n- addresses: [\"10.0.0.300\"]\nports:\n- port: 8000\n";
    check(s, "endpoints[0].addresses[0]", "not a valid IPv4 address");
    check(
        &s.replace("IPv4", "IPv5"),
        "addressType",
        "unknown variant `IPv5`",
    );
    check(&s.replace("8000", "70000"), "ports[0].port", "out of range");
    check(
        &s.replace(
            "- addresses: [\"10.0.0.300\"]",
            "- conditions:\n    ready: maybe\n  addresses: [\"10.0.0.1\"]",
        ),
        "endpoints[0].conditions.ready",
        "invalid type",
    );
}

#[test]
fn documents_without_identity() {
    let e = &load_err("kind: Gateway\nmetadata:\n  name: x\n")[0];
    assert_eq!(e.field, "apiVersion");
    assert!(e.message.contains("missing `apiVersion`"));
    assert_eq!(e.doc.as_deref(), Some("Gateway default/x"));
    let e = &load_err("apiVersion: v1\nmetadata:\n  name: x\n")[0];
    assert_eq!(e.field, "kind");
    let e = &load_err("apiVersion: v1\nkind: Service\nmetadata:\n  namespace: a\n")[0];
    assert_eq!(e.field, "metadata.name");
    assert_eq!(
        e.to_string(),
        "test.yaml: document 0 (Service): metadata.name: missing `metadata.name`"
    );
    let e = &load_err("- just\n- a list\n")[0];
    assert!(e.message.contains("must be a mapping"));
}

#[test]
fn unsupported_kinds_and_versions() {
    let e = &load_err("apiVersion: x/v1\nkind: Foo\nmetadata:\n  name: f\n  namespace: n\n")[0];
    assert_eq!(e.message, "unsupported kind Foo (apiVersion x/v1)");
    assert_eq!(
        e.to_string(),
        "test.yaml: document 0 (Foo n/f): kind: unsupported kind Foo (apiVersion x/v1)"
    );
    let e = &load_err(
        "apiVersion: gateway.networking.k8s.io/v9\nkind: Gateway\nmetadata:\n  name: g\n",
    )[0];
    assert_eq!(e.field, "apiVersion");
    assert!(e
        .message
        .contains("unsupported apiVersion gateway.networking.k8s.io/v9 for kind Gateway"));
}

#[test]
fn yaml_syntax_error_has_line_and_column() {
    let text = format!("{SEED}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: [oops\n");
    let errs = load_err(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    assert_eq!(e.doc_index, Some(8));
    assert!(e.message.starts_with("YAML syntax error"), "{e}");
    assert!(
        e.message.contains("line") && e.message.contains("column"),
        "{e}"
    );
    let e = &load_err("a: b\n c: d\n")[0];
    assert!(e.message.contains("line 2"), "{e}");
}

#[test]
fn duplicates_are_errors() {
    let text = format!("{SEED}\n---\n{}", SEED.split("---").nth(2).unwrap());
    let errs = load_err(&text);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].doc_index, Some(8));
    assert!(
        errs[0]
            .message
            .contains("duplicate Gateway ai-workloads/llm-gateway"),
        "{}",
        errs[0]
    );
    assert!(errs[0].message.contains("test.yaml document 2"));
}

#[test]
fn unknown_fields_warn_but_status_and_metadata_do_not() {
    let text = "apiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: b\n  uid: 123\n  creationTimestamp: now\nspec:\n  maxBatchSiz: 32\n  priorityQueues:\n  - name: a\n    colour: red\nstatus:\n  conditions: []\n";
    let c = load(text).unwrap();
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("unknown field `spec.maxBatchSiz` ignored"),
        "{}",
        c.warnings[0]
    );
    assert!(c.warnings[0].starts_with("test.yaml: document 0 (BatchingPolicy default/b)"));
    assert!(
        c.warnings[1].contains("`spec.priorityQueues[0].colour`"),
        "{}",
        c.warnings[1]
    );
}

#[test]
fn nulls_merge_keys_and_loose_kinds() {
    let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  labels:\nspec:\n  hostnames:\n  rules:\n  - matches:\n    filters: ~\n    backendRefs:\n    - &b\n      name: s\n      port: 80\n    - <<: *b\n      name: t\n";
    let c = load(text).unwrap();
    let Resource::HttpRoute(r) = &c.docs[0].1 else {
        panic!()
    };
    assert!(r.spec.hostnames.is_empty());
    assert_eq!(r.spec.rules[0].backend_refs[1].name, "t");
    assert_eq!(r.spec.rules[0].backend_refs[1].port, Some(80));
    assert_eq!(r.spec.rules[0].backend_refs[1].weight, 1);

    let pool = "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  targetPorts:\n  - number: 8000\n  selector:\n    matchLabels:\n      app: vllm\n  endpointPickerRef:\n    name: epp\n    port:\n      number: 9002\n";
    let c = load(pool).unwrap();
    let Resource::InferencePool(p) = &c.docs[0].1 else {
        panic!()
    };
    assert_eq!(p.spec.target_port(), Some(8000));
    assert_eq!(p.spec.match_labels()["app"], "vllm");
    let old = "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\nmetadata:\n  name: p\nspec:\n  targetPortNumber: 8001\n  selector:\n    app: old\n  extensionRef:\n    name: epp\n";
    let c = load(old).unwrap();
    let Resource::InferencePool(p) = &c.docs[0].1 else {
        panic!()
    };
    assert_eq!(p.spec.target_port(), Some(8001));
    assert_eq!(p.spec.match_labels()["app"], "old");

    let grpc = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: g\nspec:\n  parentRefs:\n  - name: gw\n    sectionName: inference-grpc\n  rules:\n  - matches:\n    - method:\n        service: inference.Predict\n        method: Infer\n    backendRefs:\n    - name: triton\n      port: 8001\n";
    let c = load(grpc).unwrap();
    let Resource::GrpcRoute(g) = &c.docs[0].1 else {
        panic!()
    };
    assert_eq!(g.spec.rules[0].backend_refs[0].port, Some(8001));
    assert_eq!(
        c.enforcement_report(),
        vec![("GRPCRoute".to_owned(), ENFORCED, 1)]
    );
    // Method matches name a service or a method, with valid names.
    check(
        &grpc.replace(
            "service: inference.Predict\n        method: Infer",
            "type: Exact",
        ),
        "spec.rules[0].matches[0].method",
        "names neither a service nor a method",
    );
    check(
        &grpc.replace("service: inference.Predict", "service: inference/Predict"),
        "spec.rules[0].matches[0].method.service",
        "is not a gRPC service name",
    );
    check(
        &grpc.replace("method: Infer", "method: In-fer"),
        "spec.rules[0].matches[0].method.method",
        "is not a gRPC method name",
    );
    check(
        &grpc.replace("method: Infer", "method: Infer\n        type: Prefix"),
        "spec.rules[0].matches[0].method.type",
        "must be Exact or RegularExpression",
    );

    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n  - name: http\n    port: 80\n    targetPort: http-alt\n  - port: 81\n    targetPort: 8081\n";
    let c = load(svc).unwrap();
    let Resource::Service(s) = &c.docs[0].1 else {
        panic!()
    };
    assert_eq!(
        s.spec.ports[0].target_port,
        Some(IntOrString::String("http-alt".into()))
    );
    assert_eq!(s.spec.ports[1].target_port, Some(IntOrString::Int(8081)));
}

#[test]
fn error_display_omits_missing_parts() {
    let e = ConfigError {
        file: "f.yaml".into(),
        doc_index: None,
        doc: None,
        field: String::new(),
        message: "boom".into(),
    };
    assert_eq!(e.to_string(), "f.yaml: boom");
    let e = ConfigError {
        doc_index: Some(3),
        ..e
    };
    assert_eq!(e.to_string(), "f.yaml: document 3: boom");
    let e = ConfigError {
        field: "spec.x".into(),
        ..e
    };
    assert_eq!(e.to_string(), "f.yaml: document 3: spec.x: boom");
    let e = ConfigError {
        file: String::new(),
        doc_index: None,
        doc: Some("Gateway a/b".into()),
        ..e
    };
    assert_eq!(e.to_string(), "Gateway a/b: spec.x: boom");
}

const OBJECTIVE: &str = "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\nmetadata:\n  name: urgent\n  namespace: ml\nspec:\n  priority: 5\n  poolRef:\n    group: inference.networking.k8s.io\n    kind: InferencePool\n    name: pool\n";

const INFERENCE_MODEL: &str = "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\nmetadata:\n  name: chat\n  namespace: ml\nspec:\n  modelName: llama-3\n  criticality: Sheddable\n  poolRef:\n    name: pool\n  targetModels:\n  - name: llama-3-v1\n    weight: 90\n  - name: llama-3-v2\n    weight: 10\n";

#[test]
fn inference_objective_and_model_load_with_their_priorities() {
    let c = load(&format!("{OBJECTIVE}---\n{INFERENCE_MODEL}")).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let (m, Resource::InferenceObjective(o)) = &c.docs[0] else {
        panic!()
    };
    assert_eq!(m.key(), "ml/urgent");
    assert_eq!(o.spec.priority(), 5);
    assert_eq!(o.spec.pool_ref.name, "pool");
    let (_, Resource::InferenceModel(im)) = &c.docs[1] else {
        panic!()
    };
    assert_eq!(im.spec.model_name, "llama-3");
    assert_eq!(im.spec.priority(), -1);
    assert_eq!(im.spec.target_models.len(), 2);
    assert_eq!(im.spec.target_models[1].weight, Some(10));
    assert_eq!(
        c.enforcement_report(),
        vec![
            ("InferenceObjective".to_owned(), ENFORCED, 1),
            ("InferenceModel".to_owned(), ENFORCED, 1),
        ]
    );
    assert_eq!(is_enforced("InferenceModel"), Some(true));
    // Defaults: priority 0, criticality Standard.
    let bare = OBJECTIVE.replace("  priority: 5\n", "");
    let Resource::InferenceObjective(o) = &load(&bare).unwrap().docs[0].1 else {
        panic!()
    };
    assert_eq!(o.spec.priority(), 0);
    for (crit, prio) in [("Critical", 1), ("Standard", 0), ("Sheddable", -1)] {
        let doc = INFERENCE_MODEL.replace("Sheddable", crit);
        let Resource::InferenceModel(im) = &load(&doc).unwrap().docs[0].1 else {
            panic!()
        };
        assert_eq!(im.spec.priority(), prio, "{crit}");
    }
    let plain = INFERENCE_MODEL.replace("  criticality: Sheddable\n", "");
    let Resource::InferenceModel(im) = &load(&plain).unwrap().docs[0].1 else {
        panic!()
    };
    assert_eq!(im.spec.priority(), 0);
}

#[test]
fn inference_objective_and_model_errors_name_their_field() {
    check(
        &OBJECTIVE.replace("  priority: 5\n", "  priority: high\n"),
        "spec.priority",
        "invalid type",
    );
    check(
        &OBJECTIVE.replace("  priority: 5\n", "  priority: 99999999999\n"),
        "spec.priority",
        "invalid value",
    );
    check(
        &OBJECTIVE.replace("    name: pool\n", ""),
        "spec.poolRef",
        "missing field `name`",
    );
    check(
        &OBJECTIVE.replace("    name: pool\n", "    name: \"\"\n"),
        "spec.poolRef.name",
        "must not be empty",
    );
    check(
        &OBJECTIVE.replace("kind: InferencePool", "kind: Service"),
        "spec.poolRef.kind",
        "only InferencePool",
    );
    check(
        &OBJECTIVE.replace("group: inference.networking.k8s.io", "group: apps"),
        "spec.poolRef.group",
        "not an InferencePool group",
    );
    let no_pool = "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\nmetadata:\n  name: o\nspec:\n  priority: 1\n";
    check(no_pool, "spec", "missing field `poolRef`");
    check(
        &OBJECTIVE.replace(
            "inference.networking.x-k8s.io/v1alpha2",
            "inference.networking.k8s.io/v1",
        ),
        "apiVersion",
        "unsupported apiVersion",
    );
    check(
        &INFERENCE_MODEL.replace("Sheddable", "Sometimes"),
        "spec.criticality",
        "unknown variant `Sometimes`",
    );
    check(
        &INFERENCE_MODEL.replace("modelName: llama-3", "modelName: \"\""),
        "spec.modelName",
        "must not be empty",
    );
    check(
        &INFERENCE_MODEL.replace("  modelName: llama-3\n", ""),
        "spec",
        "missing field `modelName`",
    );
    check(
        &INFERENCE_MODEL.replace("weight: 90", "weight: 2000000"),
        "spec.targetModels[0].weight",
        "out of range 0..=1000000",
    );
    check(
        &INFERENCE_MODEL.replace("name: llama-3-v2", "name: \"\""),
        "spec.targetModels[1].name",
        "must not be empty",
    );
}

#[test]
fn batching_policy_target_refs_are_typed() {
    let b = "apiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: b\nspec:\n  maxBatchSize: 8\n  targetRefs:\n  - group: gateway.networking.k8s.io\n    kind: HTTPRoute\n    name: r\n  - group: gateway.networking.k8s.io\n    kind: Gateway\n    name: gw\n    sectionName: http\n";
    let c = load(b).unwrap();
    let Resource::BatchingPolicy(p) = &c.docs[0].1 else {
        panic!()
    };
    assert_eq!(p.spec.target_refs.len(), 2);
    assert_eq!(p.spec.target_refs[1].section_name.as_deref(), Some("http"));
    check(
        &b.replace("kind: HTTPRoute", "kind: GRPCRoute"),
        "spec.targetRefs[0].kind",
        "targets a Gateway or an HTTPRoute",
    );
    check(
        &b.replace(
            "group: gateway.networking.k8s.io\n    kind: Gateway",
            "group: example.com\n    kind: Gateway",
        ),
        "spec.targetRefs[1].group",
        "is not gateway.networking.k8s.io",
    );
    check(
        &b.replace("    name: r\n", "    name: \"\"\n"),
        "spec.targetRefs[0].name",
        "must not be empty",
    );
    check(
        &b.replace("sectionName: http", "sectionName: \"\""),
        "spec.targetRefs[1].sectionName",
        "must not be empty",
    );
    check(
        &b.replace("    kind: HTTPRoute\n", ""),
        "spec.targetRefs[0]",
        "missing field `kind`",
    );
}

#[test]
fn a_document_nested_too_deep_is_refused_before_parsing_naming_file_and_document() {
    let ok = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n";
    let deep = format!(
        "{ok}---\nx: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let e = load_sources(&[("deep.yaml".into(), deep)]).unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    let text = e[0].to_string();
    assert!(
        text.starts_with("deep.yaml: document 1: nested deeper than the limit of 64 levels"),
        "{text}"
    );
    assert!(text.contains("--max-config-depth"), "{text}");
    // A tighter limit refuses what the default allows, and names the limit.
    let limits = LoadLimits {
        max_depth: 2,
        ..LoadLimits::default()
    };
    let e = load_sources_with(&[("ok.yaml".into(), ok.into())], &limits).unwrap_err();
    assert!(e[0].to_string().contains("limit of 2 levels"), "{}", e[0]);
    assert!(load_sources(&[("ok.yaml".into(), ok.into())]).is_ok());
}

#[test]
fn sources_over_the_size_limit_are_refused_naming_the_file() {
    let doc = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n";
    let limits = LoadLimits {
        max_bytes: doc.len() + 10,
        ..LoadLimits::default()
    };
    let sources = [
        ("a.yaml".to_owned(), doc.to_owned()),
        ("b.yaml".to_owned(), "# padding\n".repeat(2)),
    ];
    let e = load_sources_with(&sources, &limits).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].to_string(),
        format!(
            "b.yaml: configuration larger than the limit of {} bytes (--max-config-bytes)",
            doc.len() + 10
        )
    );
    assert!(load_sources_with(&sources[..1], &limits).is_ok());
}

#[test]
fn tls_secrets_and_https_listeners_are_checked_naming_the_field() {
    let secret = |body: &str| {
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: n}}\ntype: kubernetes.io/tls\n{body}")
    };
    // stringData wins over data; data is base64 (whitespace ignored).
    let c = load(&secret(
        "data: {tls.crt: 'Y2Vy\n dA==', tls.key: a2V5}\nstringData: {tls.key: plain}\n",
    ))
    .unwrap();
    let Resource::Secret(s) = &c.docs[0].1 else {
        panic!("not a Secret")
    };
    assert_eq!(s.value("tls.crt").unwrap().as_deref(), Some(&b"cert"[..]));
    assert_eq!(s.value("tls.key").unwrap().as_deref(), Some(&b"plain"[..]));
    assert_eq!(s.value("other").unwrap(), None);

    let e = load_err(&secret("data: {tls.crt: '!!notbase64', tls.key: a2V5}\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].field, "data.tls.crt");
    assert!(e[0].message.contains("base64"), "{}", e[0]);
    let e = load_err(&secret("stringData: {tls.crt: x}\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].field, "data.tls.key");

    let gw = |tls: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: g}}\nspec:\n  gatewayClassName: c\n  listeners:\n  - {{name: h, protocol: HTTPS, port: 443{tls}}}\n")
    };
    let e = load_err(&gw(""));
    assert_eq!(e[0].field, "spec.listeners[0].tls");
    let e = load_err(&gw(
        ", tls: {mode: Passthrough, certificateRefs: [{name: s}]}",
    ));
    assert_eq!(e[0].field, "spec.listeners[0].tls.mode");
    let e = load_err(&gw(
        ", tls: {certificateRefs: [{kind: ConfigMap, name: s}]}",
    ));
    assert_eq!(e[0].field, "spec.listeners[0].tls.certificateRefs[0]");
    assert!(load(&gw(", tls: {certificateRefs: [{name: s}]}")).is_ok());
}

const SP_HEAD: &str = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata: {name: sp}\nspec:\n  authentication:\n    jwt:\n      providers:\n";

#[test]
fn jwt_provider_key_sources_and_claim_headers_parse() {
    let doc = format!(
        "{SP_HEAD}      - name: a\n        issuer: https://a.example\n        remoteJWKS: {{uri: 'http://127.0.0.1:9/jwks', cacheDuration: 60s}}\n        claimToHeaders: [{{claim: sub, header: x-jwt-sub}}]\n      - name: b\n        issuer: https://b.example\n        localJWKS: {{keys: [{{kty: OKP, crv: Ed25519, x: abc}}]}}\n"
    );
    let c = load(&doc).unwrap();
    let Resource::SecurityPolicy(sp) = &c.docs[0].1 else {
        panic!("not a SecurityPolicy")
    };
    let p = &sp
        .spec
        .authentication
        .as_ref()
        .unwrap()
        .jwt
        .as_ref()
        .unwrap()
        .providers;
    let r = p[0].remote_jwks.as_ref().unwrap();
    assert_eq!(r.uri, "http://127.0.0.1:9/jwks");
    assert_eq!(r.cache_duration, Some(Duration::from_secs(60)));
    assert_eq!(p[0].claim_to_headers[0].header, "x-jwt-sub");
    assert_eq!(p[1].local_jwks.as_ref().unwrap().keys.len(), 1);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn jwt_provider_problems_name_the_field() {
    let field = "spec.authentication.jwt.providers[0]";
    check(
        &format!("{SP_HEAD}      - name: a\n        issuer: not-a-url\n"),
        field,
        "no keys",
    );
    check(
        &format!("{SP_HEAD}      - name: a\n        remoteJWKS: {{uri: 'ftp://x/jwks'}}\n"),
        &format!("{field}.remoteJWKS.uri"),
        "not an http",
    );
    check(
        &format!("{SP_HEAD}      - name: a\n        issuer: https://a\n        claimToHeaders: [{{claim: sub, header: 'x y'}}]\n"),
        &format!("{field}.claimToHeaders[0].header"),
        "not a valid header name",
    );
    check(
        &format!("{SP_HEAD}      - name: a\n        localJWKS: {{keys: []}}\n      - name: b\n        issuer: https://b\n"),
        &format!("{field}.issuer"),
        "several providers",
    );
    check(
        &format!("{SP_HEAD}      - name: a\n        localJWKS: {{keys: []}}\n        remoteJWKS: {{uri: 'http://x/'}}\n"),
        field,
        "not both",
    );
}

/// A BackendTLSPolicy with `validation` spliced in.
fn backend_tls(version: &str, validation: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/{version}\nkind: BackendTLSPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  targetRefs:\n  - {{group: \"\", kind: Service, name: vllm, sectionName: https}}\n  validation:\n{validation}"
    )
}

#[test]
fn backend_tls_policy_and_config_map_parse() {
    let text = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ca\n  namespace: ns\ndata:\n  ca.crt: pem\n---\n{}---\n{}",
        backend_tls(
            "v1",
            "    caCertificateRefs:\n    - {group: \"\", kind: ConfigMap, name: ca}\n    hostname: vllm.internal\n    subjectAltNames:\n    - {type: Hostname, hostname: alt.internal}\n    - {type: URI, uri: \"spiffe://td/ns/vllm\"}\n"
        ),
        backend_tls("v1alpha3", "    wellKnownCACertificates: System\n    hostname: api.example.com\n")
            .replace("name: p\n", "name: q\n"),
    );
    let c = load(&text).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let Resource::ConfigMap(cm) = &c.docs[0].1 else {
        panic!()
    };
    assert_eq!(cm.data[CA_CERT_KEY], "pem");
    let Resource::BackendTlsPolicy(p) = &c.docs[1].1 else {
        panic!()
    };
    assert_eq!(p.spec.target_refs[0].section_name.as_deref(), Some("https"));
    assert_eq!(p.spec.validation.hostname, "vllm.internal");
    assert_eq!(p.spec.validation.subject_alt_names.len(), 2);
    let Resource::BackendTlsPolicy(p) = &c.docs[2].1 else {
        panic!()
    };
    assert_eq!(
        p.spec.validation.well_known_ca_certificates.as_deref(),
        Some("System")
    );
}

#[test]
fn backend_tls_policy_errors_name_the_field() {
    let cases = [
        ("    hostname: a.b\n", "spec.validation", "needs caCertificateRefs"),
        (
            "    wellKnownCACertificates: System\n    caCertificateRefs: [{kind: ConfigMap, name: ca}]\n    hostname: a.b\n",
            "spec.validation",
            "mutually exclusive",
        ),
        (
            "    wellKnownCACertificates: Mozilla\n    hostname: a.b\n",
            "spec.validation.wellKnownCACertificates",
            "not supported",
        ),
        (
            "    caCertificateRefs: [{kind: Secret, name: ca}]\n    hostname: a.b\n",
            "spec.validation.caCertificateRefs[0]",
            "only core ConfigMaps",
        ),
        (
            "    wellKnownCACertificates: System\n    hostname: \"bad host!\"\n",
            "spec.validation.hostname",
            "",
        ),
        (
            "    wellKnownCACertificates: System\n    hostname: a.b\n    subjectAltNames: [{type: IP, hostname: x}]\n",
            "spec.validation.subjectAltNames[0].type",
            "not supported",
        ),
        (
            "    wellKnownCACertificates: System\n    hostname: a.b\n    subjectAltNames: [{type: URI, hostname: x}]\n",
            "spec.validation.subjectAltNames[0]",
            "only uri",
        ),
    ];
    for (validation, field, msg) in cases {
        let e = load_err(&backend_tls("v1", validation));
        let s = e[0].to_string();
        assert!(s.contains(field) && s.contains(msg), "{validation}: {s}");
        assert!(s.contains("test.yaml"), "{s}");
    }
    let e = load_err(
        &backend_tls(
            "v1",
            "    wellKnownCACertificates: System\n    hostname: a.b\n",
        )
        .replace("kind: Service", "kind: Pod"),
    );
    assert!(e[0].to_string().contains("spec.targetRefs[0]"), "{}", e[0]);
}

#[test]
fn rate_limit_values_need_requests_or_tokens() {
    let doc = |rl: &str| {
        format!("apiVersion: ai.gateway.io/v1alpha1\nkind: SecurityPolicy\nmetadata:\n  name: s\nspec:\n  rateLimit:\n{rl}")
    };
    let c = load(&doc("    default: {tokens: 20000, unit: minute}\n    perModel:\n      m: {requests: 5, tokens: 100, unit: second}\n")).unwrap();
    let (_, Resource::SecurityPolicy(sp)) = &c.docs[0] else {
        panic!()
    };
    let rl = sp.spec.rate_limit.as_ref().unwrap();
    assert_eq!(rl.default.unwrap().tokens, Some(20000));
    assert_eq!(rl.default.unwrap().requests, None);
    assert_eq!(rl.per_model["m"].requests, Some(5));
    let errs = load_err(&doc(
        "    default: {unit: minute}\n    perModel:\n      m: {requests: 0, tokens: 0, unit: hour}\n",
    ));
    let text = format!("{errs:?}");
    assert!(
        text.contains("spec.rateLimit.default")
            && text.contains("must set requests, tokens or both"),
        "{text}"
    );
    assert!(
        text.contains("spec.rateLimit.perModel.m.requests"),
        "{text}"
    );
    assert!(text.contains("spec.rateLimit.perModel.m.tokens"), "{text}");
}

#[test]
fn session_affinity_loads_with_defaults_and_names_bad_fields() {
    use crate::scoring::affinity::AffinityConfig;
    let pol = "apiVersion: ai.gateway.io/v1alpha1\nkind: InferencePolicy\nmetadata:\n  name: p\nspec:\n  loadBalancing:\n    sessionAffinity:\n      header: X-Conversation\n      useUserField: false\n      loadFactor: 1.5\n";
    let policy = |text: &str| match &load(text).unwrap().docs[0] {
        (_, Resource::InferencePolicy(p)) => p.clone(),
        _ => panic!("not a policy"),
    };
    let p = &policy(pol);
    let a = AffinityConfig::from_policy(p).unwrap();
    assert_eq!(a.header, "x-conversation");
    assert!(!a.use_user_field);
    assert_eq!(a.load_factor, 1.5);
    // An empty block turns it on with the defaults.
    let empty = "apiVersion: ai.gateway.io/v1alpha1\nkind: InferencePolicy\nmetadata:\n  name: p\nspec:\n  loadBalancing:\n    sessionAffinity: {}\n";
    assert_eq!(
        AffinityConfig::from_policy(&policy(empty)).unwrap(),
        AffinityConfig::default()
    );
    assert_eq!(AffinityConfig::default().header, "x-session-id");
    // No block: off.
    let off = "apiVersion: ai.gateway.io/v1alpha1\nkind: InferencePolicy\nmetadata:\n  name: p\nspec:\n  loadBalancing:\n    algorithm: default\n";
    assert!(AffinityConfig::from_policy(&policy(off)).is_none());
    check(
        &pol.replace("1.5", "1.0"),
        "spec.loadBalancing.sessionAffinity.loadFactor",
        "must be greater than 1",
    );
    check(
        &pol.replace("1.5", "-2"),
        "spec.loadBalancing.sessionAffinity.loadFactor",
        "must be greater than 1",
    );
    check(
        &pol.replace("X-Conversation", "\"x session\""),
        "spec.loadBalancing.sessionAffinity.header",
        "is not an HTTP header name",
    );
    check(
        &pol.replace("X-Conversation", "\"\""),
        "spec.loadBalancing.sessionAffinity.header",
        "is not an HTTP header name",
    );
}
