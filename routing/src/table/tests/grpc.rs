//! GRPCRoute in the routing table: attachment to GRPC listeners, method and
//! header matching, precedence, weighted backends.

use super::*;

/// A Gateway with a GRPC listener (:50051) and an HTTP one (:80).
const GW_GRPC: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  gatewayClassName: c
  listeners:
  - name: grpc
    protocol: GRPC
    port: 50051
  - name: http
    protocol: HTTP
    port: 80
";

fn grpc_route(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: {name}\nspec:\n  parentRefs:\n  - name: gw\n    sectionName: grpc\n{spec}"
    )
}

const GRPC: [(&str, &str); 1] = [("content-type", "application/grpc")];

/// A gRPC call (POST with a gRPC content type).
fn call(path: &str) -> Req<'_> {
    Req::get(path).method("POST").headers(&GRPC)
}

const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const READY: &str = "/inference.GRPCInferenceService/ModelReady";

#[test]
fn grpc_routes_attach_to_grpc_listeners_and_match_methods() {
    let yaml = format!(
        "{GW_GRPC}{}{}{}{}",
        grpc_route(
            "exact",
            "  rules:\n  - matches:\n    - method: {service: inference.GRPCInferenceService, method: ModelInfer}\n    backendRefs: [{name: a, port: 8001}]\n"
        ),
        grpc_route(
            "svc",
            "  rules:\n  - matches:\n    - method: {service: inference.GRPCInferenceService}\n    backendRefs: [{name: b, port: 8001}]\n"
        ),
        grpc_route(
            "health",
            "  rules:\n  - matches:\n    - method: {method: Check}\n    backendRefs: [{name: c, port: 8001}]\n"
        ),
        grpc_route(
            "re",
            "  rules:\n  - matches:\n    - method: {type: RegularExpression, service: 'my\\.pkg\\..*', method: 'Get.*'}\n    backendRefs: [{name: d, port: 8001}]\n"
        ),
    );
    let t = build(&yaml);
    assert_warns!(t, !Warning::ListenerNotServed { .. });
    assert_eq!(on(&t, 0, &call(INFER)), "default/exact#0");
    assert_eq!(on(&t, 0, &call(READY)), "default/svc#0");
    assert_eq!(
        on(&t, 0, &call("/grpc.health.v1.Health/Check")),
        "default/health#0"
    );
    assert_eq!(
        on(&t, 0, &call("/my.pkg.v1.Store/GetThing")),
        "default/re#0"
    );
    assert_eq!(on(&t, 0, &call("/my.pkg.v1.Store/PutThing")), "-");
    assert_eq!(on(&t, 0, &call("/other.Svc/Method")), "-");
    // The service's dot is literal in an Exact match.
    assert_eq!(
        on(&t, 0, &call("/inferenceXGRPCInferenceService/ModelReady")),
        "-"
    );
    // sectionName grpc: nothing on the HTTP listener.
    assert_eq!(on(&t, 1, &call(INFER)), "-");
}

#[test]
fn grpc_routes_do_not_take_http_routes_onto_grpc_listeners() {
    let yaml = format!(
        "{GW_GRPC}{}",
        route("h", "  rules:\n  - backendRefs: [{name: a, port: 80}]\n")
    );
    let t = build(&yaml);
    assert_eq!(on(&t, 0, &call(INFER)), "-");
    assert_eq!(on(&t, 1, &call(INFER)), "default/h#0");
}

#[test]
fn grpc_precedence_exact_pair_then_headers_then_service() {
    let yaml = format!(
        "{GW_GRPC}{}",
        grpc_route(
            "p",
            "  rules:
  - matches:
    - method: {service: inference.GRPCInferenceService}
    backendRefs: [{name: svc, port: 1}]
  - matches:
    - method: {service: inference.GRPCInferenceService, method: ModelInfer}
    backendRefs: [{name: pair, port: 1}]
  - matches:
    - method: {service: inference.GRPCInferenceService, method: ModelInfer}
      headers: [{name: x-gateway-model-name, value: llama}]
    backendRefs: [{name: llama, port: 1}]
  - matches:
    - headers: [{name: x-tenant, type: RegularExpression, value: 'a.*'}]
    backendRefs: [{name: any, port: 1}]
"
        ),
    );
    let t = build(&yaml);
    let llama = [GRPC[0], ("x-gateway-model-name", "llama")];
    let tenant = [GRPC[0], ("x-tenant", "acme")];
    assert_eq!(on(&t, 0, &call(INFER).headers(&llama)), "default/p#2");
    assert_eq!(on(&t, 0, &call(INFER)), "default/p#1");
    assert_eq!(on(&t, 0, &call(READY)), "default/p#0");
    assert_eq!(on(&t, 0, &call("/x.Y/Z").headers(&tenant)), "default/p#3");
    assert_eq!(on(&t, 0, &call("/x.Y/Z")), "-");
    assert!(t.models().contains(&"llama".to_owned()));
}

#[test]
fn grpc_backend_weights_carry_over() {
    let yaml = format!(
        "{GW_GRPC}{}",
        grpc_route(
            "w",
            "  rules:\n  - backendRefs:\n    - {name: a, port: 8001, weight: 80}\n    - {name: b, port: 8001, weight: 20}\n"
        ),
    );
    let t = build(&yaml);
    let lookup = |name: &str| (name == "content-type").then_some(&b"application/grpc"[..]);
    let view = RequestView {
        method: "POST",
        path: INFER,
        query: None,
        host: None,
        headers: &lookup,
        model: None,
    };
    let m = t.match_request(0, &view).unwrap();
    let w: Vec<(String, u32)> = m
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.weight))
        .collect();
    assert_eq!(
        w,
        [("default/a".to_owned(), 80), ("default/b".to_owned(), 20)]
    );
}

#[test]
fn a_bad_grpc_regex_is_an_error() {
    let yaml = format!(
        "{GW_GRPC}{}",
        grpc_route(
            "bad",
            "  rules:\n  - matches:\n    - method: {type: RegularExpression, service: '(unclosed'}\n    backendRefs: [{name: a, port: 1}]\n"
        ),
    );
    let errs = build_err(&yaml);
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("invalid regular expression")),
        "{errs:?}"
    );
}

#[test]
fn grpc_precedence_is_service_characters_then_method_characters_then_headers() {
    // The spec's order: a match with more characters of service wins over one
    // with a long method and no service; among equal services the longer
    // method; then header matches; regular expressions count their
    // characters too.
    let yaml = format!(
        "{GW_GRPC}{}",
        grpc_route(
            "p",
            "  rules:
  - matches:
    - method: {method: AVeryLongMethodNameIndeed}
    backendRefs: [{name: method-only, port: 1}]
  - matches:
    - method: {service: a.B}
    backendRefs: [{name: short-service, port: 1}]
  - matches:
    - method: {type: RegularExpression, service: 'a\\..*'}
    backendRefs: [{name: regex-service, port: 1}]
  - matches:
    - method: {service: a.B, method: M}
      headers: [{name: x-tenant, value: t}]
    backendRefs: [{name: pair-header, port: 1}]
  - matches:
    - method: {service: a.B, method: M}
    backendRefs: [{name: pair, port: 1}]
"
        ),
    );
    let t = build(&yaml);
    let tenant = [GRPC[0], ("x-tenant", "t")];
    // a.B (3) beats no service; `a\..*` (4 characters) beats a.B (3).
    assert_eq!(
        on(&t, 0, &call("/a.B/AVeryLongMethodNameIndeed")),
        "default/p#2"
    );
    assert_eq!(
        on(&t, 0, &call("/x.Y/AVeryLongMethodNameIndeed")),
        "default/p#0"
    );
    // The regex (4 service characters) outranks the exact pair (3 + 1).
    assert_eq!(on(&t, 0, &call("/a.B/M")), "default/p#2");
    assert_eq!(on(&t, 0, &call("/a.B/M").headers(&tenant)), "default/p#2");
}

#[test]
fn an_exact_pair_beats_its_service_and_headers_break_ties() {
    let yaml = format!(
        "{GW_GRPC}{}{}",
        grpc_route(
            "b-svc",
            "  rules:\n  - matches:\n    - method: {service: a.B}\n    backendRefs: [{name: s, port: 1}]\n"
        ),
        grpc_route(
            "a-pair",
            "  rules:
  - matches:
    - method: {service: a.B, method: Get}
    backendRefs: [{name: pair, port: 1}]
  - matches:
    - method: {service: a.B, method: Get}
      headers: [{name: x-tenant, value: t}]
    backendRefs: [{name: pair-header, port: 1}]
"
        ),
    );
    let t = build(&yaml);
    let tenant = [GRPC[0], ("x-tenant", "t")];
    assert_eq!(on(&t, 0, &call("/a.B/Get")), "default/a-pair#0");
    assert_eq!(
        on(&t, 0, &call("/a.B/Get").headers(&tenant)),
        "default/a-pair#1"
    );
    assert_eq!(on(&t, 0, &call("/a.B/Put")), "default/b-svc#0");
}

#[test]
fn grpc_routes_match_grpc_calls_only() {
    // On an HTTP listener carrying both kinds: a gRPC call goes by its
    // GRPCRoute, even where an HTTPRoute path would match it too; an OpenAI
    // request never lands on a GRPCRoute (a catch-all one included).
    let yaml = format!(
        "{GW_GRPC}{}{}",
        route(
            "h",
            "  rules:\n  - matches:\n    - path: {type: PathPrefix, value: /a.B}\n    backendRefs: [{name: http, port: 80}]\n  - backendRefs: [{name: http-any, port: 80}]\n"
        ),
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: g\nspec:\n  parentRefs:\n  - name: gw\n    sectionName: http\n  rules:\n  - matches:\n    - method: {service: a.B}\n    backendRefs: [{name: grpc, port: 1}]\n  - backendRefs: [{name: grpc-any, port: 1}]\n",
    );
    let t = build(&yaml);
    assert_eq!(on(&t, 1, &call("/a.B/M")), "default/g#0");
    assert_eq!(on(&t, 1, &call("/x.Y/M")), "default/g#1");
    let json = [("content-type", "application/json")];
    assert_eq!(
        on(&t, 1, &Req::get("/a.B/M").method("POST").headers(&json)),
        "default/h#0"
    );
    assert_eq!(
        on(
            &t,
            1,
            &Req::get("/v1/completions").method("POST").headers(&json)
        ),
        "default/h#1"
    );
    assert_eq!(on(&t, 1, &Req::get("/v1/models")), "default/h#1");
}
