//! Routing table: attachment, precedence, matching conditions, endpoint
//! resolution, ExtensionRefs and the seed.
#![allow(clippy::unwrap_used)]

use super::build::effective_hosts;
use super::matcher::{normalize_host, PathCond};
use super::*;
use crate::config::load_sources;
use std::net::SocketAddr;

const SEED: &str = include_str!("../../tests/data/seed-manifests.yaml");

/// GatewayClass + Gateway `default/gw` with one HTTP listener `http` on :80
/// accepting routes from all namespaces.
const GW: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: c
spec:
  controllerName: x/y
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  gatewayClassName: c
  listeners:
  - name: http
    protocol: HTTP
    port: 80
    allowedRoutes:
      namespaces:
        from: All
";

fn route(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\nspec:\n  parentRefs:\n  - name: gw\n{spec}"
    )
}

fn config(yaml: &str) -> Config {
    match load_sources(&[("t.yaml".to_owned(), yaml.to_owned())]) {
        Ok(c) => c,
        Err(e) => panic!(
            "{}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn build_with(yaml: &str, resolve: &mut dyn FnMut(&str, u16) -> Vec<SocketAddr>) -> RoutingTable {
    match RoutingTable::build(&config(yaml), resolve) {
        Ok(t) => t,
        Err(e) => panic!(
            "{}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn build(yaml: &str) -> RoutingTable {
    build_with(yaml, &mut |_, _| Vec::new())
}

fn build_err(yaml: &str) -> Vec<ConfigError> {
    RoutingTable::build(&config(yaml), &mut |_, _| Vec::new()).unwrap_err()
}

struct Req<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    host: Option<&'a str>,
    headers: &'a [(&'a str, &'a str)],
}

impl<'a> Req<'a> {
    fn get(path: &'a str) -> Self {
        Req {
            method: "GET",
            path,
            query: None,
            host: None,
            headers: &[],
        }
    }
    fn method(self, method: &'a str) -> Self {
        Req { method, ..self }
    }
    fn host(self, host: &'a str) -> Self {
        Req {
            host: Some(host),
            ..self
        }
    }
    fn query(self, query: &'a str) -> Self {
        Req {
            query: Some(query),
            ..self
        }
    }
    fn headers(self, headers: &'a [(&'a str, &'a str)]) -> Self {
        Req { headers, ..self }
    }
}

/// Matches on listener `l`; returns "route#rule" or "-".
fn on(t: &RoutingTable, l: usize, r: &Req<'_>) -> String {
    let headers = r.headers;
    let lookup = move |name: &str| {
        assert_eq!(
            name,
            name.to_ascii_lowercase(),
            "lookups use lowercase names"
        );
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    };
    let view = RequestView {
        method: r.method,
        path: r.path,
        query: r.query,
        host: r.host,
        headers: &lookup,
        model: None,
    };
    match t.match_request(l, &view) {
        Some(m) => format!("{}#{}", m.route, m.rule),
        None => "-".to_owned(),
    }
}

/// Asserts that some warning of a table matches a pattern (`pat` or
/// `pat if guard`), or that none does (`!` first).
macro_rules! assert_warns {
    ($t:expr, ! $($pat:tt)+) => {
        assert!(
            !$t.warnings().iter().any(|w| matches!(w, $($pat)+)),
            "{:#?}",
            $t.warnings()
        )
    };
    ($t:expr, $($pat:tt)+) => {
        assert!(
            $t.warnings().iter().any(|w| matches!(w, $($pat)+)),
            "{:#?}",
            $t.warnings()
        )
    };
}

fn hit(t: &RoutingTable, r: &Req<'_>) -> String {
    on(t, 0, r)
}

#[test]
fn seed_builds_with_expected_warnings() {
    let t = build(SEED);
    assert_eq!(t.listeners().len(), 2);
    assert_eq!(
        t.listeners()[0],
        ListenerInfo {
            gateway: "ai-workloads/llm-gateway".into(),
            name: "inference-http".into(),
            port: 8080,
            protocol: "HTTP".into(),
            served: true,
            hostname: None,
            tls: Vec::new(),
        }
    );
    // The GRPC listener is served (HTTP/2); it carries GRPCRoutes only.
    assert!(t.listeners()[1].served);
    assert_eq!(t.models(), ["bert-base", "gpt-large"]);
    assert!(t.endpoints().is_empty());
    assert_warns!(t, Warning::ExtensionRefUnresolved { kind, name, .. }
        if kind == "InferencePolicy" && name == "gpu-required");
    for svc in ["gpt-large-service", "bert-service"] {
        assert_warns!(t, Warning::ServiceUnresolved { namespace, name, port: 8080 }
            if namespace == "ai-workloads" && name == svc);
    }
    assert_warns!(t, !Warning::ListenerNotServed { .. });
    assert_warns!(t, !Warning::GatewayClassNotFound { .. });

    let gpt = [("X-Model-Type", "gpt-large")];
    let m = {
        let lookup = |n: &str| (n == "x-model-type").then_some(&b"gpt-large"[..]);
        let view = RequestView {
            method: "POST",
            path: "/v1/chat/completions",
            query: None,
            host: Some("gw.local:8080"),
            headers: &lookup,
            model: None,
        };
        let m = t.match_request(0, &view).unwrap();
        assert_eq!(m.route, "ai-workloads/model-routing");
        assert_eq!(m.rule, 0);
        assert_eq!(m.backends.len(), 1);
        assert_eq!(m.backends[0].name, "ai-workloads/gpt-large-service");
        assert_eq!(m.backends[0].weight, 100);
        assert!(m.backends[0].endpoints.is_empty());
        assert_eq!(m.policy, None);
        m.action.clone()
    };
    assert_eq!(
        m,
        RuleAction::FilterNotFound {
            filter: "InferencePolicy gpu-required".into()
        }
    );
    assert_eq!(
        hit(&t, &Req::get("/").headers(&gpt)),
        "ai-workloads/model-routing#0"
    );
    assert_eq!(
        hit(
            &t,
            &Req::get("/v1/completions").headers(&[("x-model-type", "bert-base")])
        ),
        "ai-workloads/model-routing#1"
    );
    assert_eq!(
        hit(&t, &Req::get("/").headers(&[("x-model-type", "llama")])),
        "-"
    );
    assert_eq!(hit(&t, &Req::get("/")), "-");
    // The gRPC listener carries no HTTPRoute.
    assert_eq!(on(&t, 1, &Req::get("/").headers(&gpt)), "-");
    assert_eq!(on(&t, 7, &Req::get("/").headers(&gpt)), "-");

    let ic = t.inference_config().unwrap();
    assert_eq!(ic.metadata.name, "llm-routing-config");
    assert!(t.inference_policy("resource-aware-lb").is_some());
    assert!(t.inference_policy("default/resource-aware-lb").is_some());
    assert!(t.inference_policy("gpu-required").is_none());
    assert!(t.batching_policy("smart-batching").is_some());
    assert!(!t.needs_model(0));

    let shown = t.to_string();
    assert!(
        shown.contains("listener ai-workloads/llm-gateway inference-http HTTP :8080\n"),
        "{shown}"
    );
    assert!(shown.contains(
        "PathPrefix / + header x-model-type=gpt-large → ai-workloads/gpt-large-service:8080 (w 100) [no endpoints] security=default/ai-security (via Gateway ai-workloads/llm-gateway) → 500 (filter InferencePolicy gpu-required not found)"
    ), "{shown}");
    assert!(
        shown.contains("inference-grpc GRPC :50051\n  (no routes)"),
        "{shown}"
    );
    assert!(shown.contains("warnings:\n  - "), "{shown}");
}

#[test]
fn shared_seed_builds() {
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/examples/seed-manifests.yaml"
    );
    let text = std::fs::read_to_string(shared)
        .unwrap_or_else(|e| panic!("the shared seed manifests {shared}: {e}"));
    let t = build(&text);
    assert_eq!(t.models(), ["bert-base", "gpt-large"]);
}

#[test]
fn precedence_table() {
    let yaml = format!(
        "{GW}{}{}{}",
        route(
            "a",
            "  rules:
  - matches:
    - path: {type: PathPrefix, value: /v1}
  - matches:
    - path: {type: Exact, value: /v1/models}
  - matches:
    - path: {type: PathPrefix, value: /v1/chat}
      headers: [{name: X-Model-Type, value: gpt}]
  - matches:
    - path: {type: PathPrefix, value: /v1/chat}
  - matches:
    - path: {type: PathPrefix, value: /v1/chat}
      method: POST
  - matches:
    - path: {type: PathPrefix, value: /v1/chat}
      headers: [{name: x-model-type, value: gpt}, {name: x-tier, value: gold}]
  - matches:
    - path: {type: PathPrefix, value: /v1/chat}
      headers: [{name: x-model-type, value: gpt}]
      queryParams: [{name: debug, value: '1'}]
  - matches:
    - path: {type: RegularExpression, value: '/v1/models/[^/]+'}
"
        ),
        route(
            "b",
            "  rules:
  - matches:
    - path: {type: PathPrefix, value: /v1}
  - matches:
    - path: {type: PathPrefix, value: /}
"
        ),
        route(
            "0-first",
            "  rules:
  - matches:
    - path: {type: PathPrefix, value: /v1/chat}
      method: POST
"
        ),
    );
    let t = build(&yaml);
    let cases: &[(Req<'_>, &str)] = &[
        // Longest prefix; alphabetical route order on ties (a before b).
        (Req::get("/v1/other"), "default/a#0"),
        (Req::get("/v1"), "default/a#0"),
        (Req::get("/elsewhere"), "default/b#1"),
        // Exact beats a prefix of equal or greater length.
        (Req::get("/v1/models"), "default/a#1"),
        // Regex ranks between Exact and PathPrefix.
        (Req::get("/v1/models/llama"), "default/a#7"),
        (Req::get("/v1/models/llama/x"), "default/a#0"),
        // Method beats headers; then alphabetical route order.
        (
            Req::get("/v1/chat")
                .method("POST")
                .headers(&[("x-model-type", "gpt")]),
            "default/0-first#0",
        ),
        // More headers win.
        (
            Req::get("/v1/chat/x").headers(&[("x-model-type", "gpt"), ("x-tier", "gold")]),
            "default/a#5",
        ),
        // Headers beat query params when header counts differ…
        (
            Req::get("/v1/chat")
                .headers(&[("x-model-type", "gpt"), ("x-tier", "gold")])
                .query("debug=1"),
            "default/a#5",
        ),
        // …and with equal header counts the query match wins.
        (
            Req::get("/v1/chat")
                .headers(&[("x-model-type", "gpt")])
                .query("debug=1"),
            "default/a#6",
        ),
        (
            Req::get("/v1/chat").headers(&[("x-model-type", "gpt")]),
            "default/a#2",
        ),
        (Req::get("/v1/chat"), "default/a#3"),
        (Req::get("/v1/chatty"), "default/a#0"),
    ];
    for (r, want) in cases {
        assert_eq!(
            hit(&t, r),
            *want,
            "{} {} {:?} {:?}",
            r.method,
            r.path,
            r.headers,
            r.query
        );
    }
    // The displayed order is the precedence order.
    let shown = t.to_string();
    let pos = |s: &str| {
        shown
            .find(s)
            .unwrap_or_else(|| panic!("{s} not in {shown}"))
    };
    assert!(pos("Exact /v1/models") < pos("RegularExpression /v1/models/[^/]+"));
    assert!(pos("RegularExpression") < pos("PathPrefix /v1/chat + method POST"));
    assert!(
        pos("PathPrefix /v1/chat + method POST")
            < pos("PathPrefix /v1/chat + header x-model-type=gpt + header x-tier=gold")
    );
    assert!(pos("(default/a rule 0)") < pos("(default/b rule 0)"));
}

#[test]
fn spec_example_hostnames_and_canary_header() {
    // From the Gateway API HTTP routing guide.
    let yaml = format!(
        "{GW}{}{}",
        route(
            "foo-route",
            "  hostnames: [foo.example.com]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /login}
    backendRefs: [{name: foo-svc, port: 8080}]
"
        ),
        route(
            "bar-route",
            "  hostnames: [bar.example.com]
  rules:
  - backendRefs: [{name: bar-svc-v1, port: 8080}]
  - matches:
    - headers:
      - type: Exact
        name: env
        value: canary
    backendRefs: [{name: bar-svc-v2, port: 8080}]
"
        ),
    );
    let t = build(&yaml);
    assert_eq!(
        hit(&t, &Req::get("/login").host("foo.example.com")),
        "default/foo-route#0"
    );
    assert_eq!(
        hit(&t, &Req::get("/login/x").host("FOO.example.com:80")),
        "default/foo-route#0"
    );
    assert_eq!(hit(&t, &Req::get("/").host("foo.example.com")), "-");
    assert_eq!(
        hit(&t, &Req::get("/login").host("bar.example.com")),
        "default/bar-route#0"
    );
    assert_eq!(
        hit(
            &t,
            &Req::get("/x")
                .host("bar.example.com")
                .headers(&[("env", "canary")])
        ),
        "default/bar-route#1"
    );
    assert_eq!(hit(&t, &Req::get("/x").host("baz.example.com")), "-");
    assert_eq!(hit(&t, &Req::get("/login")), "-");
}

#[test]
fn spec_example_matches_are_ored_conditions_anded() {
    let yaml = format!(
        "{GW}{}",
        route(
            "r",
            "  rules:
  - matches:
    - path: {value: /foo}
      headers: [{name: version, value: v2}]
    - path: {value: /v2/foo}
"
        )
    );
    let t = build(&yaml);
    assert_eq!(
        hit(&t, &Req::get("/foo").headers(&[("version", "v2")])),
        "default/r#0"
    );
    assert_eq!(hit(&t, &Req::get("/v2/foo")), "default/r#0");
    assert_eq!(hit(&t, &Req::get("/foo")), "-");
    assert_eq!(
        hit(&t, &Req::get("/foo").headers(&[("version", "v1")])),
        "-"
    );
}

#[test]
fn a_service_only_regex_matches_as_the_regex_does_without_it() {
    let compile = |v: &str| {
        PathCond::regex(
            regex::Regex::new(&crate::config::anchored(v)).expect("valid"),
            v,
        )
    };
    let v = "/inference\\.GRPCInferenceService/[^/]+";
    let fast = compile(v);
    assert!(matches!(fast, PathCond::Service(ref p, _) if p == "/inference.GRPCInferenceService/"));
    let re = regex::Regex::new(&crate::config::anchored(v)).expect("valid");
    for path in [
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/M",
        "/inference.GRPCInferenceService/",
        "/inference.GRPCInferenceService",
        "/inference.GRPCInferenceService/ModelInfer/x",
        "/inferenceXGRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceServiceX/ModelInfer",
        "/x/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/Model\nInfer",
        "/inference.GRPCInferenceService/é",
        "",
        "/",
    ] {
        assert_eq!(fast.matches(path), re.is_match(path), "{path:?}");
    }
    // The same rank as the regular expression it stands for.
    assert_eq!(fast.rank(), (1, v.len()));
    // Anything else stays a regular expression: an unescaped dot, a
    // pattern in the service, a method part other than one element.
    for v in [
        "/inference.GRPCInferenceService/[^/]+",
        "/(?:a|b)/[^/]+",
        "/a\\.B/Check",
        "/[^/]+/Check",
        "/a\\.B/[^/]*",
        "//[^/]+",
    ] {
        assert!(matches!(compile(v), PathCond::Regex(..)), "{v}");
    }
}

#[test]
fn element_wise_prefix() {
    let p = PathCond::Prefix("/v1".into());
    for (path, want) in [
        ("/v1", true),
        ("/v1/", true),
        ("/v1/models", true),
        ("/v1x", false),
        ("/v", false),
        ("/", false),
        ("/v2/v1", false),
    ] {
        assert_eq!(p.matches(path), want, "{path}");
    }
    assert!(PathCond::Prefix("/".into()).matches("/anything"));
    // A trailing slash in the value is ignored; the query never takes part.
    let yaml = format!(
        "{GW}{}",
        route(
            "r",
            "  rules:\n  - matches:\n    - path: {type: PathPrefix, value: /v1/}\n"
        )
    );
    let t = build(&yaml);
    assert_eq!(hit(&t, &Req::get("/v1")), "default/r#0");
    assert_eq!(hit(&t, &Req::get("/v1?x=1")), "default/r#0");
    assert_eq!(hit(&t, &Req::get("/v1/a/b")), "default/r#0");
    assert_eq!(hit(&t, &Req::get("/v1x")), "-");
    assert_eq!(hit(&t, &Req::get("/V1")), "-");
}

#[test]
fn header_matching() {
    let yaml = format!(
        "{GW}{}",
        route(
            "r",
            "  rules:
  - matches:
    - headers:
      - type: RegularExpression
        name: X-Model-Type
        value: 'gpt-(large|small)'
  - matches:
    - headers:
      - name: X-Exact
        value: Yes
      - name: x-exact
        value: ignored-duplicate
"
        )
    );
    let t = build(&yaml);
    for (v, want) in [
        ("gpt-large", "default/r#0"),
        ("gpt-small", "default/r#0"),
        ("xgpt-large", "-"),
        ("gpt-largex", "-"),
        ("gpt-", "-"),
        ("GPT-large", "-"),
    ] {
        assert_eq!(
            hit(&t, &Req::get("/").headers(&[("x-model-type", v)])),
            want,
            "{v}"
        );
    }
    assert_eq!(
        hit(&t, &Req::get("/").headers(&[("X-EXACT", "Yes")])),
        "default/r#1"
    );
    assert_eq!(hit(&t, &Req::get("/").headers(&[("x-exact", "yes")])), "-");
    assert_warns!(t, Warning::DuplicateHeaderMatch { field, header, .. }
        if field == "spec.rules[1].matches[0].headers[1]" && header == "x-exact");
}

#[test]
fn query_param_matching() {
    let yaml = format!(
        "{GW}{}",
        route(
            "r",
            "  rules:
  - matches:
    - queryParams:
      - name: stream
        value: 'true'
  - matches:
    - queryParams:
      - type: RegularExpression
        name: v
        value: '[0-9]+'
"
        )
    );
    let t = build(&yaml);
    let q = |qs: &'static str| hit(&t, &Req::get("/").query(qs));
    assert_eq!(q("stream=true"), "default/r#0");
    assert_eq!(q("a=1&stream=true&b"), "default/r#0");
    assert_eq!(q("stream=false&stream=true"), "-"); // first value only
    assert_eq!(q("Stream=true"), "-"); // names are case-sensitive
    assert_eq!(q("stream"), "-");
    assert_eq!(q("v=42"), "default/r#1");
    assert_eq!(q("v=4a"), "-");
    assert_eq!(q("v="), "-");
    assert_eq!(hit(&t, &Req::get("/")), "-");
    assert_eq!(hit(&t, &Req::get("/x?stream=true")), "default/r#0");
}

#[test]
fn hostname_matching() {
    let yaml = format!(
        "{GW}{}{}{}",
        route(
            "exact",
            "  hostnames: [api.example.com]\n  rules:\n  - {}\n"
        ),
        route("wild", "  hostnames: ['*.example.com']\n  rules:\n  - {}\n"),
        route(
            "any",
            "  rules:\n  - matches:\n    - path: {type: Exact, value: /only}\n"
        ),
    );
    let t = build(&yaml);
    let h = |host: &'static str, path: &'static str| hit(&t, &Req::get(path).host(host));
    assert_eq!(h("api.example.com", "/x"), "default/exact#0");
    assert_eq!(h("API.Example.COM:8443", "/x"), "default/exact#0");
    assert_eq!(h("api.example.com.", "/x"), "default/exact#0");
    // A hostname-specific route wins even over a more specific path.
    assert_eq!(h("api.example.com", "/only"), "default/exact#0");
    assert_eq!(h("foo.example.com", "/x"), "default/wild#0");
    assert_eq!(h("a.b.example.com", "/x"), "default/wild#0");
    assert_eq!(h("example.com", "/x"), "-");
    assert_eq!(h("example.com", "/only"), "default/any#0");
    assert_eq!(h("[::1]:80", "/only"), "default/any#0");
    assert_eq!(hit(&t, &Req::get("/x")), "-");
    assert_eq!(hit(&t, &Req::get("/only")), "default/any#0");
}

#[test]
fn listeners_sharing_a_port_pick_by_hostname() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  gatewayClassName: missing-class
  listeners:
  - name: a
    protocol: HTTP
    port: 80
    hostname: a.example.com
  - name: rest
    protocol: HTTP
    port: 80
  - name: b
    protocol: HTTP
    port: 81
    hostname: '*.example.com'
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: ra
spec:
  parentRefs: [{name: gw, sectionName: a}]
  rules:
  - matches: [{path: {value: /a}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: rrest
spec:
  parentRefs: [{name: gw, sectionName: rest}]
  rules: [{}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: rb
spec:
  parentRefs: [{name: gw, port: 81}]
  hostnames: [x.example.com, other.org, '*.b.example.com']
  rules: [{}]
";
    let t = build(yaml);
    assert_warns!(t, Warning::GatewayClassNotFound { class, .. } if class == "missing-class");
    for l in [0, 1] {
        assert_eq!(
            on(&t, l, &Req::get("/a").host("a.example.com")),
            "default/ra#0"
        );
        // The more specific listener owns a.example.com: no fall-through.
        assert_eq!(on(&t, l, &Req::get("/z").host("a.example.com")), "-");
        assert_eq!(
            on(&t, l, &Req::get("/z").host("c.example.com")),
            "default/rrest#0"
        );
        assert_eq!(on(&t, l, &Req::get("/a")), "default/rrest#0");
    }
    // Route hostnames intersect the listener's `*.example.com`.
    assert_eq!(
        on(&t, 2, &Req::get("/").host("x.example.com")),
        "default/rb#0"
    );
    assert_eq!(
        on(&t, 2, &Req::get("/").host("q.b.example.com")),
        "default/rb#0"
    );
    assert_eq!(on(&t, 2, &Req::get("/").host("y.example.com")), "-");
    assert_eq!(on(&t, 2, &Req::get("/").host("other.org")), "-");
}

#[test]
fn allowed_routes_namespaces() {
    let gw = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: infra
spec:
  gatewayClassName: c
  listeners:
  - name: same
    protocol: HTTP
    port: 80
  - name: sel
    protocol: HTTP
    port: 81
    allowedRoutes:
      namespaces:
        from: Selector
        selector: {matchLabels: {team: a}}
";
    let r = |ns: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: {ns}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  rules: [{{}}]\n"
        )
    };
    let t = build(&format!("{gw}{}{}", r("infra"), r("apps")));
    assert_eq!(on(&t, 0, &Req::get("/")), "infra/r#0");
    assert_eq!(on(&t, 1, &Req::get("/")), "apps/r#0"); // alphabetical: apps < infra
    assert_warns!(t, Warning::SelectorTreatedAsAll { listener, .. } if listener == "sel");
    // apps/r still attaches through `sel`, so no "matches no listener" warning.
    assert_warns!(t, !Warning::ParentRefUnattached { .. });

    let only_same = gw.replace("from: Selector", "from: Same");
    let t = build(&format!("{only_same}{}", r("apps")));
    assert_eq!(on(&t, 0, &Req::get("/")), "-");
    assert_eq!(on(&t, 1, &Req::get("/")), "-");
    assert_warns!(t, Warning::ParentRefUnattached { doc, index: 0, target, reasons }
        if doc == "HTTPRoute apps/r"
            && target == "infra/gw"
            && reasons.iter().any(|r| r.contains("allows routes from namespace infra only")));
}

#[test]
fn cross_reference_errors() {
    let yaml = format!(
        "{GW}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: ai\nspec:\n  parentRefs:\n  - name: gw\n  rules: [{{}}]\n"
    );
    let errs = build_err(&yaml);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "spec.parentRefs[0].name");
    assert_eq!(
        errs[0].to_string(),
        "t.yaml: document 2 (HTTPRoute ai/r): spec.parentRefs[0].name: Gateway ai/gw not found"
    );

    let clash = format!(
        "{GW}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw2\nspec:\n  gatewayClassName: c\n  listeners:\n  - name: ok\n    protocol: HTTP\n    port: 81\n  - name: tls\n    protocol: HTTPS\n    port: 80\n    tls: {{certificateRefs: [{{name: missing}}]}}\n"
    );
    let mut errs = build_err(&clash);
    // The HTTPS listener's Secret is missing too.
    assert_eq!(errs.len(), 2, "{errs:?}");
    errs.retain(|e| e.field == "spec.listeners[1].protocol");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].message.contains(
            "port 80 is used by listener default/gw/http with protocol HTTP and here with HTTPS"
        ),
        "{}",
        errs[0]
    );
    assert_eq!(errs[0].doc.as_deref(), Some("Gateway default/gw2"));

    let missing_section = format!(
        "{GW}{}",
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec:\n  parentRefs: [{name: gw, sectionName: nope}]\n  rules: [{}]\n"
    );
    let t = build(&missing_section);
    assert_warns!(t, Warning::ParentRefUnattached { target, reasons, .. }
        if target == "default/gw/nope" && reasons.is_empty());
}

const SLICES: &str = "---
apiVersion: v1
kind: Service
metadata:
  name: svc
  namespace: ml
spec:
  ports:
  - name: http
    port: 80
    targetPort: 8000
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-abc
  namespace: ml
  labels:
    kubernetes.io/service-name: svc
addressType: IPv4
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
  conditions: {ready: true}
- addresses: [10.0.0.3]
  conditions: {ready: false}
ports:
- name: http
  port: 8000
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-v6
  namespace: ml
  labels:
    kubernetes.io/service-name: svc
addressType: IPv6
endpoints:
- addresses: ['fd00::1', 'fd00::2']
ports:
- name: http
  port: 8000
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: multi
  namespace: ml
  labels:
    kubernetes.io/service-name: multi
addressType: IPv4
endpoints:
- addresses: [10.0.1.1]
ports:
- {name: a, port: 7000}
- {name: b, port: 9000}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: single
  namespace: ml
  labels:
    kubernetes.io/service-name: single
addressType: IPv4
endpoints:
- addresses: [10.0.0.1]
ports:
- port: 5000
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: byname
  namespace: ml
  labels:
    kubernetes.io/service-name: named
addressType: FQDN
endpoints:
- addresses: [vllm-0.internal]
ports:
- name: api
  port: 8100
---
apiVersion: v1
kind: Service
metadata:
  name: named
  namespace: ml
spec:
  ports:
  - port: 80
    targetPort: api
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dead
  namespace: ml
  labels:
    kubernetes.io/service-name: dead
addressType: IPv4
endpoints:
- addresses: [10.9.9.9]
  conditions: {ready: false}
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata:
  name: pool
  namespace: ml
spec:
  targetPorts: [{number: 8000}]
  selector: {matchLabels: {app: vllm}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: pool-slice
  namespace: ml
  labels:
    inference.networking.k8s.io/pool-name: pool
addressType: IPv4
endpoints:
- addresses: [10.0.2.1]
- addresses: [10.0.0.1]
ports:
- {name: http, port: 8000}
- {name: metrics, port: 9090}
";

fn ml_route(backends: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: ml\nspec:\n  parentRefs: [{{name: gw, namespace: default}}]\n  rules:\n  - backendRefs:\n{backends}"
    )
}

#[test]
fn endpoint_slice_resolution() {
    let backends = "    - {name: svc, port: 80, weight: 3}
    - {name: multi, port: 9000}
    - {name: single, port: 80, weight: 0}
    - {name: named, port: 80}
    - {name: dead, port: 80}
    - {name: dns, port: 8080}
    - {name: nowhere, port: 8080}
    - {group: inference.networking.k8s.io, kind: InferencePool, name: pool}
    - {name: svc, port: 80}
    - {name: dns, port: 8080}
";
    let mut calls = Vec::new();
    let mut resolve = |host: &str, port: u16| {
        calls.push(format!("{host}:{port}"));
        match host {
            "dns" => vec![SocketAddr::from(([127, 0, 0, 1], port))],
            "vllm-0.internal" => vec![SocketAddr::from(([10, 0, 3, 1], port))],
            _ => Vec::new(),
        }
    };
    let t = build_with(&format!("{GW}{SLICES}{}", ml_route(backends)), &mut resolve);
    // DNS only for services without slices, once per (name, port); FQDN
    // slice addresses go through the resolver too.
    assert_eq!(calls, ["vllm-0.internal:8100", "dns:8080", "nowhere:8080"]);
    let m = {
        let lookup = |_: &str| None;
        let view = RequestView {
            method: "GET",
            path: "/",
            query: None,
            host: None,
            headers: &lookup,
            model: None,
        };
        t.match_request(0, &view).unwrap()
    };
    let addrs = |g: &BackendGroup| -> Vec<String> {
        g.endpoints
            .iter()
            .map(|&i| t.endpoints()[i].addr.to_string())
            .collect()
    };
    let b = m.backends;
    assert_eq!(b.len(), 10);
    assert_eq!(b[0].name, "ml/svc");
    assert_eq!(b[0].weight, 3);
    // ready absent = ready; ready=false excluded; first address of an
    // endpoint only; Service targetPort 8000 picked over backendRef port 80.
    assert_eq!(
        addrs(&b[0]),
        ["10.0.0.1:8000", "10.0.0.2:8000", "[fd00::1]:8000"]
    );
    assert_eq!(addrs(&b[1]), ["10.0.1.1:9000"]);
    assert_eq!(b[2].weight, 0);
    assert_eq!(addrs(&b[2]), ["10.0.0.1:5000"]);
    assert_eq!(addrs(&b[3]), ["10.0.3.1:8100"]);
    assert!(b[4].endpoints.is_empty());
    assert_eq!(addrs(&b[5]), ["127.0.0.1:8080"]);
    assert!(b[6].endpoints.is_empty());
    assert_eq!(addrs(&b[7]), ["10.0.2.1:8000", "10.0.0.1:8000"]);
    assert_eq!(b[8], b[0].clone().with_weight(1));
    assert_eq!(b[9].endpoints, b[5].endpoints);
    // 10.0.0.1:8000 is shared by svc and the pool: one EndpointInfo.
    assert_eq!(b[0].endpoints[0], b[7].endpoints[1]);
    assert_eq!(t.endpoints()[b[0].endpoints[0]].backend, "ml/svc");
    assert_eq!(t.endpoints().len(), 8);

    assert_warns!(t, Warning::ServiceNoReadyEndpoints { backend, port: 80 } if backend == "ml/dead");
    assert_warns!(t, Warning::ServiceUnresolved { namespace, name, port: 8080 }
        if namespace == "ml" && name == "nowhere");
    assert_warns!(t, !Warning::ServiceNoReadyEndpoints { backend, .. } if backend == "ml/svc");
    let shown = t.to_string();
    assert!(
        shown.contains("ml/svc:80 (w 3) [10.0.0.1:8000, 10.0.0.2:8000, [fd00::1]:8000]"),
        "{shown}"
    );
    assert!(
        shown.contains("ml/pool (w 1) [10.0.2.1:8000, 10.0.0.1:8000]"),
        "{shown}"
    );
}

impl BackendGroup {
    fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

#[test]
fn pool_without_slices_and_unknown_backend_kinds_warn() {
    let backends = "    - {kind: InferencePool, group: inference.networking.k8s.io, name: ghost}
    - {kind: Bucket, group: storage.example.com, name: b}
    - {name: svc, namespace: other, port: 80}
";
    let t = build(&format!("{GW}{}", ml_route(backends)));
    assert_warns!(t, Warning::PoolUndefined { backend } if backend == "ml/ghost");
    assert_warns!(t, Warning::PoolNoSlices { namespace, name } if namespace == "ml" && name == "ghost");
    assert_warns!(t, Warning::BackendKindUnsupported { group, kind, .. }
        if group == "storage.example.com" && kind == "Bucket");
    assert_warns!(t, Warning::CrossNamespaceBackend { field, target, .. }
        if field == "spec.rules[0].backendRefs[2]" && target == "other/svc");
}

#[test]
fn extension_refs_link_policies() {
    let policies = "---
apiVersion: ai.gateway.io/v1alpha1
kind: InferencePolicy
metadata:
  name: lb
spec:
  loadBalancing: {algorithm: resource-weighted}
---
apiVersion: ai.gateway.io/v1alpha1
kind: InferencePolicy
metadata:
  name: lb2
  namespace: ml
---
apiVersion: ai.gateway.io/v1alpha1
kind: InferencePolicy
metadata:
  name: lb2
  namespace: elsewhere
---
apiVersion: ai.gateway.io/v1alpha1
kind: BatchingPolicy
metadata:
  name: batch
spec:
  maxBatchSize: 8
";
    let route = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: r
  namespace: ml
spec:
  parentRefs: [{name: gw, namespace: default}]
  rules:
  - matches: [{path: {value: /a}}]
    filters:
    - {type: ExtensionRef, extensionRef: {group: ai.gateway.io, kind: InferencePolicy, name: lb}}
    - {type: ExtensionRef, extensionRef: {group: ai.gateway.io, kind: BatchingPolicy, name: batch}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: b}]}}
    timeouts: {request: 30s, backendRequest: 10s}
  - matches: [{path: {value: /b}}]
    filters:
    - {type: ExtensionRef, extensionRef: {group: ai.gateway.io, kind: InferencePolicy, name: lb2}}
    timeouts: {request: 0s}
  - matches: [{path: {value: /c}}]
    filters:
    - {type: ExtensionRef, extensionRef: {group: ai.gateway.io, kind: InferencePolicy, name: missing}}
  - matches: [{path: {value: /d}}]
    filters:
    - {type: ExtensionRef, extensionRef: {group: example.com, kind: Widget, name: w}}
";
    let t = build(&format!("{GW}{policies}{route}"));
    let get = |path: &str| {
        let lookup = |_: &str| None;
        let view = RequestView {
            method: "GET",
            path,
            query: None,
            host: None,
            headers: &lookup,
            model: None,
        };
        t.match_request(0, &view).unwrap()
    };
    let a = get("/a");
    assert_eq!(a.policy, Some("default/lb"));
    assert_eq!(a.batching, Some("default/batch"));
    assert_eq!(*a.action, RuleAction::Forward);
    assert_eq!(a.request_timeout, Some(Duration::from_secs(30)));
    assert_eq!(
        t.inference_policy(a.policy.unwrap())
            .unwrap()
            .spec
            .load_balancing
            .as_ref()
            .unwrap()
            .algorithm
            .as_deref(),
        Some("resource-weighted")
    );
    assert_eq!(
        t.batching_policy(a.batching.unwrap())
            .unwrap()
            .spec
            .max_batch_size,
        Some(8)
    );
    let (filters, backend_timeout) = t.rule_details("ml/r", 0).unwrap();
    assert_eq!(filters.len(), 3);
    assert_eq!(backend_timeout, Some(Duration::from_secs(10)));
    let b = get("/b");
    assert_eq!(b.policy, Some("ml/lb2")); // the route's namespace, not `elsewhere`
    assert_eq!(b.request_timeout, None); // 0s = no timeout
    assert!(t.inference_policy("lb2").is_none()); // ambiguous bare name
    assert_eq!(
        *get("/c").action,
        RuleAction::FilterNotFound {
            filter: "InferencePolicy missing".into()
        }
    );
    assert_eq!(
        *get("/d").action,
        RuleAction::FilterNotFound {
            filter: "Widget w".into()
        }
    );
    assert_warns!(t, Warning::FilterNotEnforced { filter_type, .. }
        if filter_type == "RequestHeaderModifier");
    assert_warns!(t, Warning::ExtensionRefUnresolved { kind, name, .. } if kind == "Widget" && name == "w");
    let shown = t.to_string();
    assert!(
        shown.contains("policy=default/lb batching=default/batch"),
        "{shown}"
    );
    assert!(shown.contains("timeout=30s"), "{shown}");
}

#[test]
fn models_and_needs_model() {
    let yaml = format!(
        "{GW}{}",
        route(
            "r",
            "  rules:
  - matches:
    - headers: [{name: X-Gateway-Model-Name, value: llama-3}]
    - headers: [{name: x-model-type, value: gpt-large}]
    - headers: [{type: RegularExpression, name: x-model-type, value: 'mistral-.*'}]
    - headers: [{name: x-other, value: not-a-model}]
  - matches:
    - headers: [{name: x-model-type, value: gpt-large}]
"
        )
    );
    let t = build(&yaml);
    assert_eq!(t.models(), ["gpt-large", "llama-3"]);
    assert!(t.needs_model(0));
    assert!(!t.needs_model(5));
    assert_eq!(
        hit(&t, &Req::get("/").headers(&[(MODEL_HEADER, "llama-3")])),
        "default/r#0"
    );
}

#[test]
fn inference_config_selection() {
    let two = "---
apiVersion: ai.gateway.io/v1alpha1
kind: InferenceConfig
metadata:
  name: one
---
apiVersion: ai.gateway.io/v1alpha1
kind: InferenceConfig
metadata:
  name: two
";
    let t = build(&format!("{GW}{two}"));
    assert!(t.inference_config().is_none());
    assert_warns!(t, Warning::InferenceConfigAmbiguous { count: 2 });
    let linked = GW.replace(
        "controllerName: x/y",
        "controllerName: x/y\n  parametersRef: {group: ai.gateway.io, kind: InferenceConfig, name: two}",
    );
    let t = build(&format!("{linked}{two}"));
    assert_eq!(t.inference_config().unwrap().metadata.name, "two");
    let t = build(&format!("{GW}---{}", two.split("---").nth(1).unwrap()));
    assert_eq!(t.inference_config().unwrap().metadata.name, "one");
}

#[test]
fn host_pattern_algebra() {
    let p = HostPattern::parse;
    assert!(p("a.example.com").within(&p("*.example.com")));
    assert!(p("*.a.example.com").within(&p("*.example.com")));
    assert!(!p("*.example.com").within(&p("*.a.example.com")));
    assert!(!p("example.com").within(&p("*.example.com")));
    assert!(p("x.org").within(&HostPattern::Any));
    assert!(!HostPattern::Any.within(&p("x.org")));
    assert_eq!(
        effective_hosts(
            Some(&p("*.example.com")),
            &[p("a.example.com"), p("b.org"), HostPattern::Any]
        ),
        [p("a.example.com"), p("*.example.com")]
    );
    assert_eq!(normalize_host("a.b:8080"), "a.b");
    assert_eq!(normalize_host("a.b."), "a.b");
    assert_eq!(normalize_host("[::1]:80"), "[::1]");
    assert_eq!(normalize_host("plain"), "plain");
}

/// A match on listener 0 (panics when nothing matches).
fn matched<'t>(t: &'t RoutingTable, path: &str, headers: &[(&str, &str)]) -> RouteMatch<'t> {
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    };
    let view = RequestView {
        method: "POST",
        path,
        query: None,
        host: None,
        headers: &lookup,
        model: None,
    };
    t.match_request(0, &view)
        .unwrap_or_else(|| panic!("no match for {path}"))
}

fn gaie(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

/// Pools `pool-a` (a document) and `pool-b` (only a backendRef), models and
/// objectives bound to them.
fn priorities_yaml() -> String {
    let routes = route(
        "r",
        "  rules:
  - matches: [{path: {type: Exact, value: /v2/models/resnet/infer}}]
    backendRefs: [{kind: InferencePool, group: inference.networking.k8s.io, name: pool-a, port: 8000}]
  - matches: [{path: {value: /b}}]
    backendRefs: [{kind: InferencePool, name: pool-b, port: 8000}]
  - matches: [{path: {value: /c}, headers: [{name: X-Gateway-Model-Name, value: gpt}]}]
    backendRefs: [{name: svc, port: 80}]
  - backendRefs: [{kind: InferencePool, name: pool-a, port: 8000}]
",
    );
    let pool = "---\napiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata:\n  name: pool-a\nspec:\n  targetPorts: [{number: 8000}]\n  selector: {matchLabels: {app: a}}\n";
    format!(
        "{GW}{routes}{pool}{}{}{}{}{}{}",
        gaie("InferenceModel", "m1", "  modelName: llama\n  criticality: Critical\n  poolRef: {name: pool-a}\n"),
        gaie("InferenceModel", "m2", "  modelName: llama\n  criticality: Sheddable\n  poolRef: {name: pool-b}\n  targetModels: [{name: llama-v2, weight: 1}]\n"),
        gaie("InferenceModel", "m3", "  modelName: mistral\n  criticality: Sheddable\n  poolRef: {name: pool-a}\n"),
        gaie("InferenceObjective", "urgent", "  priority: 7\n  poolRef: {name: pool-a}\n"),
        gaie("InferenceObjective", "llama", "  priority: 3\n  poolRef: {name: pool-a}\n"),
        gaie("InferenceObjective", "phi", "  priority: -2\n  poolRef: {name: pool-b, kind: InferencePool}\n"),
    )
}

#[test]
fn priorities_resolve_from_objectives_and_models() {
    let t = build(&priorities_yaml());
    let kserve = matched(&t, "/v2/models/resnet/infer", &[]);
    let b = matched(&t, "/b", &[]);
    let c = matched(&t, "/c", &[(MODEL_HEADER, "gpt")]);
    let any = matched(&t, "/v1/embeddings", &[]);
    assert_eq!((kserve.rule, b.rule, c.rule, any.rule), (0, 1, 2, 3));
    // The objective header: by name; an unknown name is None (the gateway's 400).
    assert_eq!(t.objective_priority(any.rule_id, "urgent"), Some(7));
    assert_eq!(t.objective_priority(any.rule_id, "phi"), Some(-2));
    assert_eq!(t.objective_priority(any.rule_id, "nope"), None);
    // Models: the InferenceModel first (llama: Critical on pool-a, Sheddable on
    // pool-b, picked by the rule's pool), then an objective named like the model.
    assert_eq!(t.model_priority(any.rule_id, "llama"), Some(1));
    assert_eq!(t.model_priority(b.rule_id, "llama"), Some(-1));
    // A rule routing to neither pool: the first in file order.
    assert_eq!(t.model_priority(c.rule_id, "llama"), Some(1));
    assert_eq!(t.model_priority(any.rule_id, "mistral"), Some(-1));
    assert_eq!(t.model_priority(any.rule_id, "phi"), Some(-2));
    assert_eq!(t.model_priority(any.rule_id, "gpt"), None);
    assert_eq!(t.model_priority(usize::MAX, "phi"), Some(-2));
    // Models each rule is known to serve, and its single model.
    assert_eq!(kserve.model, Some("resnet"));
    assert_eq!(kserve.models, ["llama", "mistral", "resnet", "urgent"]);
    assert_eq!(any.model, None, "pool-a serves llama and mistral");
    assert_eq!(any.models, ["llama", "mistral", "urgent"]);
    assert_eq!(b.model, Some("llama"), "pool-b serves llama only");
    assert_eq!(b.models, ["llama", "phi"]);
    assert_eq!(
        (c.model, c.models),
        (Some("gpt"), ["gpt".to_owned()].as_slice())
    );
    // The routes' model-header list is unchanged (it feeds /v1/models).
    assert_eq!(t.models(), ["gpt"]);
    // m2's targetModels split llama for pool-b.
    let b_rule = (0..8)
        .find(|id| {
            t.rule(*id)
                .is_some_and(|r| r.pools.contains(&"default/pool-b".to_string()))
        })
        .expect("a rule of pool-b");
    let split = t
        .model_split(b_rule, "llama")
        .expect("llama is split for pool-b");
    assert_eq!(split.source, "InferenceModel default/m2");
    assert_eq!(
        split.targets,
        [SplitTarget {
            model: "llama-v2".into(),
            weight: 1
        }]
    );
    let shown = t.to_string();
    assert!(shown.contains("priorities:\n  objective llama: 3 (InferenceObjective default/llama, pool default/pool-a)\n"), "{shown}");
    assert!(
        shown.contains("  model llama: -1 (InferenceModel default/m2, pool default/pool-b)\n"),
        "{shown}"
    );
}

#[test]
fn priority_cross_reference_errors_name_the_field() {
    let ghost = format!(
        "{}{}",
        priorities_yaml(),
        gaie(
            "InferenceObjective",
            "lost",
            "  priority: 1\n  poolRef: {name: ghost}\n"
        )
    );
    let errs = build_err(&ghost);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "spec.poolRef.name");
    assert_eq!(
        errs[0].doc.as_deref(),
        Some("InferenceObjective default/lost")
    );
    assert!(
        errs[0]
            .message
            .contains("InferencePool default/ghost not found"),
        "{}",
        errs[0]
    );
    // A pool is looked up in the object's own namespace.
    let elsewhere = format!(
        "{}{}",
        priorities_yaml(),
        "---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\nmetadata:\n  name: x\n  namespace: other\nspec:\n  modelName: x\n  poolRef: {name: pool-a}\n"
    );
    assert_eq!(build_err(&elsewhere)[0].field, "spec.poolRef.name");
    // One model, two criticalities, one pool.
    let twice = format!(
        "{}{}",
        priorities_yaml(),
        gaie(
            "InferenceModel",
            "m4",
            "  modelName: mistral\n  criticality: Critical\n  poolRef: {name: pool-a}\n"
        )
    );
    let errs = build_err(&twice);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "spec.modelName");
    assert!(
        errs[0]
            .message
            .contains("model mistral of pool default/pool-a already has priority -1 (InferenceModel default/m3)"),
        "{}",
        errs[0]
    );
    // The same criticality again is harmless.
    let same = format!(
        "{}{}",
        priorities_yaml(),
        gaie(
            "InferenceModel",
            "m5",
            "  modelName: mistral\n  criticality: Sheddable\n  poolRef: {name: pool-a}\n"
        )
    );
    build(&same);
}

/// Gateway `gw` with listeners `http` (:80) and `alt` (:81); route `a` on
/// `http` (rule `first`, then a rule with its own BatchingPolicy), route `b`
/// on `alt`; BatchingPolicy `own` plus `extra`.
fn defaults_yaml(extra: &str) -> String {
    let gw = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  gatewayClassName: c\n  listeners:\n  - {name: http, protocol: HTTP, port: 80}\n  - {name: alt, protocol: HTTP, port: 81}\n";
    let a = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: a\nspec:\n  parentRefs: [{name: gw, sectionName: http}]\n  rules:\n  - name: first\n    matches: [{path: {value: /a0}}]\n  - matches: [{path: {value: /a1}}]\n    filters:\n    - {type: ExtensionRef, extensionRef: {group: ai.gateway.io, kind: BatchingPolicy, name: own}}\n";
    let b = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: b\nspec:\n  parentRefs: [{name: gw, sectionName: alt}]\n  rules:\n  - matches: [{path: {value: /b}}]\n";
    format!("{gw}{a}{b}{}{extra}", batching("own", ""))
}

fn batching(name: &str, targets: &str) -> String {
    let refs = if targets.is_empty() {
        String::new()
    } else {
        format!("  targetRefs:\n{targets}")
    };
    format!("---\napiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: {name}\nspec:\n  maxBatchSize: 8\n{refs}")
}

fn target(kind: &str, name: &str, section: Option<&str>) -> String {
    let s = section.map_or(String::new(), |s| format!(", sectionName: {s}"));
    format!("  - {{group: gateway.networking.k8s.io, kind: {kind}, name: {name}{s}}}\n")
}

/// `route#rule → batching (default via …)` for every rule.
fn batching_of(t: &RoutingTable) -> Vec<String> {
    t.rules()
        .map(|r| {
            format!(
                "{}#{} → {} {}",
                r.route,
                r.rule,
                r.batching.unwrap_or("-"),
                r.batching_default.unwrap_or("")
            )
            .trim_end()
            .to_owned()
        })
        .collect()
}

#[test]
fn target_refs_make_a_batching_policy_the_default_of_rules_without_one() {
    // Without defaults, only the ExtensionRef links a policy.
    let t = build(&defaults_yaml(""));
    assert_eq!(
        batching_of(&t),
        [
            "default/a#0 → -",
            "default/a#1 → default/own",
            "default/b#0 → -"
        ]
    );
    // A Gateway default covers every route attached to it; a listener default is
    // more specific, a route default more still; ExtensionRefs always win.
    let yaml = defaults_yaml(&format!(
        "{}{}{}",
        batching("gwdef", &target("Gateway", "gw", None)),
        batching("routedef", &target("HTTPRoute", "a", None)),
        batching("listenerdef", &target("Gateway", "gw", Some("alt"))),
    ));
    let t = build(&yaml);
    assert_eq!(
        batching_of(&t),
        [
            "default/a#0 → default/routedef HTTPRoute default/a",
            "default/a#1 → default/own",
            "default/b#0 → default/listenerdef Gateway default/gw listener alt",
        ]
    );
    let m = matched(&t, "/a0", &[]);
    assert_eq!(m.batching, Some("default/routedef"));
    let shown = t.to_string();
    assert!(
        shown.contains("batching=default/routedef (default via HTTPRoute default/a)"),
        "{shown}"
    );
    // Only the Gateway-wide default: both routes get it, but not the linked rule.
    let t = build(&defaults_yaml(&batching(
        "gwdef",
        &target("Gateway", "gw", None),
    )));
    assert_eq!(
        batching_of(&t),
        [
            "default/a#0 → default/gwdef Gateway default/gw",
            "default/a#1 → default/own",
            "default/b#0 → default/gwdef Gateway default/gw",
        ]
    );
    // A rule by its name.
    let t = build(&defaults_yaml(&batching(
        "one",
        &target("HTTPRoute", "a", Some("first")),
    )));
    assert_eq!(
        batching_of(&t)[0],
        "default/a#0 → default/one HTTPRoute default/a rule first"
    );
    assert_eq!(batching_of(&t)[2], "default/b#0 → -");
    // A target whose every rule links its own policy: a warning.
    let yaml = format!(
        "{}{}",
        defaults_yaml(""),
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: c\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {value: /c}}]\n    filters:\n    - {type: ExtensionRef, extensionRef: {group: ai.gateway.io, kind: BatchingPolicy, name: own}}\n"
    );
    let t = build(&format!(
        "{yaml}{}",
        batching("idle", &target("HTTPRoute", "c", None))
    ));
    assert_warns!(t, Warning::BatchingDefaultUnused { doc, field, via }
        if doc == "BatchingPolicy default/idle" && field == "spec.targetRefs[0]" && via == "HTTPRoute default/c");
    // Rule ids are dense and O(1) to look up.
    for (id, r) in t.rules().enumerate() {
        assert_eq!(r.id, id);
        let again = t.rule(id).unwrap();
        assert_eq!((again.route, again.rule), (r.route, r.rule));
    }
    assert!(t.rule(t.rules().count()).is_none());
}

#[test]
fn target_ref_errors_name_the_field() {
    let one = |targets: &str| {
        let errs = build_err(&defaults_yaml(&batching("p", targets)));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].doc.as_deref(), Some("BatchingPolicy default/p"));
        errs[0].clone()
    };
    let e = one(&target("HTTPRoute", "nope", None));
    assert_eq!(e.field, "spec.targetRefs[0].name");
    assert_eq!(e.message, "HTTPRoute default/nope not found");
    let e = one(&format!(
        "{}{}",
        target("HTTPRoute", "a", None),
        target("Gateway", "gw2", None)
    ));
    assert_eq!(e.field, "spec.targetRefs[1].name");
    assert_eq!(e.message, "Gateway default/gw2 not found");
    let e = one(&target("Gateway", "gw", Some("tls")));
    assert_eq!(e.field, "spec.targetRefs[0].sectionName");
    assert_eq!(
        e.message,
        "Gateway default/gw has no listener named \"tls\""
    );
    let e = one(&target("HTTPRoute", "a", Some("second")));
    assert_eq!(e.field, "spec.targetRefs[0].sectionName");
    assert_eq!(
        e.message,
        "HTTPRoute default/a has no rule named \"second\""
    );
    // Targets live in the policy's namespace unless the ref names another.
    let e =
        one("  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: a, namespace: ml}\n");
    assert_eq!(e.message, "HTTPRoute ml/a not found");
    // Two defaults at the same level for one rule.
    let yaml = defaults_yaml(&format!(
        "{}{}",
        batching("p1", &target("HTTPRoute", "a", None)),
        batching("p2", &target("Gateway", "gw", Some("alt"))),
    ));
    build(&yaml);
    let clash = format!("{yaml}{}", batching("p3", &target("HTTPRoute", "a", None)));
    let errs = build_err(&clash);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "spec.targetRefs[0]");
    assert_eq!(errs[0].doc.as_deref(), Some("BatchingPolicy default/p3"));
    assert!(
        errs[0].message.contains("rule 0 of HTTPRoute default/a already has BatchingPolicy default/p1 as its default (through HTTPRoute default/a); two defaults at the same level"),
        "{}",
        errs[0]
    );
    // The same policy twice, or at different levels, is fine.
    build(&format!(
        "{yaml}{}",
        batching("p4", &target("Gateway", "gw", None))
    ));
    build(&defaults_yaml(&batching(
        "p5",
        &format!(
            "{}{}",
            target("HTTPRoute", "a", None),
            target("HTTPRoute", "a", None)
        ),
    )));
}

#[test]
fn seed_rules_have_ids_and_no_defaults() {
    let t = build(SEED);
    let rules: Vec<RuleSummary<'_>> = t.rules().collect();
    assert_eq!(rules.len(), 2);
    assert!(rules
        .iter()
        .all(|r| r.batching.is_none() && r.batching_default.is_none()));
    let m = matched(&t, "/", &[("x-model-type", "bert-base")]);
    assert_eq!(
        (m.rule_id, m.model, m.models),
        (1, Some("bert-base"), ["bert-base".to_owned()].as_slice())
    );
}

mod app_protocol;
mod backend_tls;
mod grpc;
mod model;
mod security;
mod stable_endpoints;
mod warnings;

/// A config of `services` Services, each with `slices` EndpointSlices of 100
/// ready endpoints, all named by one route's backendRefs.
fn scaled(services: usize, slices: usize) -> String {
    let mut y = String::from(GW);
    let refs: String = (0..services)
        .map(|s| format!("    - name: svc{s}\n      port: 8000\n"))
        .collect();
    y.push_str(&route("r", &format!("  rules:\n  - backendRefs:\n{refs}")));
    for s in 0..services {
        for k in 0..slices {
            y.push_str(&format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc{s}-{k}\n  labels:\n    kubernetes.io/service-name: svc{s}\naddressType: IPv4\nports:\n- port: 8000\nendpoints:\n"
            ));
            for e in 0..100 {
                let n = (s * slices + k) * 100 + e;
                y.push_str(&format!(
                    "- addresses: [\"10.{}.{}.{}\"]\n",
                    n >> 16,
                    (n >> 8) & 255,
                    n & 255
                ));
            }
        }
    }
    y
}

/// Endpoint resolution is linear: four times the endpoints (as four times
/// the Services, or four times the slices of each) costs four times the
/// steps, not sixteen. Counts steps, not time (timings live in
/// `bench/results/config-scale.md`).
#[test]
fn endpoint_resolution_work_is_linear_in_the_endpoints() {
    let work = |services, slices| {
        let t = build(&scaled(services, slices));
        assert_eq!(t.endpoints().len(), services * slices * 100);
        super::build::LAST_WORK.with(std::cell::Cell::get)
    };
    let base = work(5, 2);
    assert!(base >= 1_000, "{base}");
    for (services, slices) in [(20, 2), (5, 8)] {
        let w = work(services, slices);
        assert!(
            w <= base * 4 + base / 4,
            "{services}×{slices}: {w} steps vs {base} for a quarter"
        );
    }
}
