//! `appProtocol`: an endpoint found on a Service port or an EndpointSlice
//! port that speaks HTTP/2 (`kubernetes.io/h2c`, `grpc`, …) is marked for
//! HTTP/2 on every request; other values and none stay HTTP/1.1; one address
//! marked by one backend and not another is HTTP/2, with a warning.

use super::*;

/// Service `chat` (port `h2`, 80 → 8000, appProtocol from `proto`), its
/// slice with one endpoint, and Service `plain` whose slice port carries
/// `slice_proto`; a route to each.
fn config(proto: &str, slice_proto: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: chat\nspec:\n  ports:\n  - {{name: h2, port: 80, targetPort: 8000{proto}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: chat-1\n  labels: {{kubernetes.io/service-name: chat}}\naddressType: IPv4\nports:\n- {{name: h2, port: 8000}}\nendpoints:\n- addresses: [10.0.0.1]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: plain-1\n  labels: {{kubernetes.io/service-name: plain}}\naddressType: IPv4\nports:\n- {{port: 8001{slice_proto}}}\nendpoints:\n- addresses: [10.0.0.2]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /a}}}}]\n    backendRefs: [{{name: chat, port: 80}}]\n  - backendRefs: [{{name: plain, port: 8001}}]\n"
    )
}

fn h2_of(t: &RoutingTable, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    t.endpoints()
        .iter()
        .find(|e| e.addr == addr)
        .unwrap_or_else(|| panic!("no endpoint {addr}"))
        .h2
}

#[test]
fn an_h2c_service_port_marks_its_endpoints() {
    let t = build(&format!(
        "{GW}{}",
        config(", appProtocol: kubernetes.io/h2c", "")
    ));
    assert!(h2_of(&t, "10.0.0.1:8000"));
    assert!(!h2_of(&t, "10.0.0.2:8001"));
    let shown = t.to_string();
    assert!(shown.contains("[10.0.0.1:8000 h2]"), "{shown}");
    assert!(shown.contains("[10.0.0.2:8001]"), "{shown}");
}

#[test]
fn every_http2_name_counts_and_others_do_not() {
    for (p, want) in [
        ("kubernetes.io/h2c", true),
        ("h2c", true),
        ("HTTP2", true),
        ("grpc", true),
        ("http", false),
        ("kubernetes.io/ws", false),
        ("grpc-web", false),
    ] {
        let t = build(&format!(
            "{GW}{}",
            config(&format!(", appProtocol: {p}"), "")
        ));
        assert_eq!(h2_of(&t, "10.0.0.1:8000"), want, "{p}");
    }
    let t = build(&format!("{GW}{}", config("", "")));
    assert!(!h2_of(&t, "10.0.0.1:8000"));
}

#[test]
fn a_slice_port_app_protocol_marks_its_endpoints() {
    let t = build(&format!("{GW}{}", config("", ", appProtocol: grpc")));
    assert!(h2_of(&t, "10.0.0.2:8001"));
    assert!(!h2_of(&t, "10.0.0.1:8000"));
}

#[test]
fn one_address_marked_by_one_backend_only_is_h2_with_a_warning() {
    // Service `other` reaches chat's endpoint through a port that says nothing.
    let other = "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: other-1\n  labels: {kubernetes.io/service-name: other}\naddressType: IPv4\nports:\n- {port: 8000}\nendpoints:\n- addresses: [10.0.0.1]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: z\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /o}}]\n    backendRefs: [{name: other, port: 8000}]\n";
    let t = build(&format!(
        "{GW}{}{other}",
        config(", appProtocol: kubernetes.io/h2c", "")
    ));
    assert!(h2_of(&t, "10.0.0.1:8000"));
    let w: Vec<String> = t.warnings().iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter().any(|w| w
            == "endpoint 10.0.0.1:8000: default/chat reaches it over HTTP/2 (its port's appProtocol), default/other over HTTP/1.1: HTTP/2 is used"),
        "{w:?}"
    );
}
