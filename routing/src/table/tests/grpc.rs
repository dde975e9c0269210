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

fn call(path: &str) -> Req<'_> {
    Req::get(path).method("POST")
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
    let llama = [("x-gateway-model-name", "llama")];
    let tenant = [("x-tenant", "acme")];
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
    let lookup = |_: &str| None;
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
