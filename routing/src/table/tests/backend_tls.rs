//! BackendTLSPolicy: its ConfigMap CA references resolve when the table is
//! built; a missing ConfigMap or a ConfigMap without a PEM `ca.crt` is an
//! error naming the field; the resolved policy lands on the endpoints of the
//! Services (and ports, by `sectionName`) it targets; URI subject names are
//! refused; one address reached in plaintext and over TLS uses TLS and warns.

use super::*;

fn policy(ca_ref: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata:\n  name: p\nspec:\n  targetRefs:\n  - {{group: \"\", kind: Service, name: vllm}}\n  validation:\n    caCertificateRefs:\n    - {{group: \"\", kind: ConfigMap, name: {ca_ref}}}\n    hostname: vllm.internal\n"
    )
}

const CM: &str = "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ca\ndata:\n  ca.crt: |\n    -----BEGIN CERTIFICATE-----\n    MIIB\n    -----END CERTIFICATE-----\n";

#[test]
fn ca_ref_resolves_and_an_unrouted_target_is_a_warning() {
    let t = build(&format!("{GW}{CM}{}", policy("ca")));
    let w: Vec<String> = t.warnings().iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter().any(|w| w
            == "BackendTLSPolicy default/p: no backendRef names Service default/vllm; the target acts on nothing"),
        "{w:?}"
    );
    let t = build(&format!("{GW}{CM}{SERVICES}{}", policy("ca")));
    assert!(
        !t.warnings()
            .iter()
            .any(|w| w.to_string().contains("acts on nothing")),
        "{:?}",
        t.warnings()
    );
}

#[test]
fn missing_config_map_names_the_field() {
    let e = build_err(&format!("{GW}{CM}{}", policy("other")));
    assert_eq!(e.len(), 1, "{e:?}");
    let s = e[0].to_string();
    assert!(s.contains("spec.validation.caCertificateRefs[0]"), "{s}");
    assert!(s.contains("ConfigMap default/other not found"), "{s}");
}

#[test]
fn config_map_without_pem_is_an_error() {
    let cm = "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ca\ndata:\n  other: x\n";
    let e = build_err(&format!("{GW}{cm}{}", policy("ca")));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].to_string()
            .contains("no PEM certificate under data.ca.crt"),
        "{}",
        e[0]
    );
}

/// A Service `vllm` with ports `https` (443) and `metrics` (9000), one ready
/// endpoint on each, and a route to each port; `Service plain` with one
/// endpoint, routed too.
const SERVICES: &str = "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: vllm\nspec:\n  ports:\n  - {name: https, port: 443}\n  - {name: metrics, port: 9000}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: vllm-1\n  labels: {kubernetes.io/service-name: vllm}\naddressType: IPv4\nports:\n- {name: https, port: 8443}\n- {name: metrics, port: 9000}\nendpoints:\n- addresses: [10.0.0.1]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: plain-1\n  labels: {kubernetes.io/service-name: plain}\naddressType: IPv4\nports:\n- {port: 8000}\nendpoints:\n- addresses: [10.0.0.2]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /a}}]\n    backendRefs: [{name: vllm, port: 443}]\n  - matches: [{path: {type: PathPrefix, value: /m}}]\n    backendRefs: [{name: vllm, port: 9000}]\n  - backendRefs: [{name: plain, port: 8000}]\n";

fn tls_of(t: &RoutingTable, addr: &str) -> Option<std::sync::Arc<crate::BackendTls>> {
    let addr: SocketAddr = addr.parse().unwrap();
    t.endpoints()
        .iter()
        .find(|e| e.addr == addr)
        .unwrap_or_else(|| panic!("no endpoint {addr}"))
        .tls
        .clone()
}

#[test]
fn a_policy_marks_the_endpoints_of_its_service_for_tls() {
    let t = build(&format!("{GW}{CM}{SERVICES}{}", policy("ca")));
    let tls = tls_of(&t, "10.0.0.1:8443").expect("TLS");
    assert_eq!(tls.policy, "default/p");
    assert_eq!(tls.hostname, "vllm.internal");
    assert!(!tls.system_roots);
    assert_eq!(tls.ca_bundles.len(), 1);
    assert_eq!(tls.ca_bundles[0].0, "ConfigMap default/ca");
    assert!(tls.ca_bundles[0].1.contains("BEGIN CERTIFICATE"));
    // Every port of the Service (no sectionName), and nothing else.
    assert_eq!(tls_of(&t, "10.0.0.1:9000"), Some(tls));
    assert_eq!(tls_of(&t, "10.0.0.2:8000"), None);
    // `shardgate check` shows it beside the address.
    let shown = t.to_string();
    assert!(
        shown.contains("[10.0.0.1:8443 tls=vllm.internal]"),
        "{shown}"
    );
    assert!(shown.contains("[10.0.0.2:8000]"), "{shown}");
}

#[test]
fn section_name_limits_the_policy_to_one_port() {
    let p = "---\napiVersion: gateway.networking.k8s.io/v1alpha3\nkind: BackendTLSPolicy\nmetadata:\n  name: p\nspec:\n  targetRefs:\n  - {group: \"\", kind: Service, name: vllm, sectionName: https}\n  validation:\n    wellKnownCACertificates: System\n    hostname: API.example.com\n    subjectAltNames:\n    - {type: Hostname, hostname: alt.example.com}\n";
    let t = build(&format!("{GW}{SERVICES}{p}"));
    let tls = tls_of(&t, "10.0.0.1:8443").expect("TLS on the https port");
    assert!(tls.system_roots && tls.ca_bundles.is_empty());
    assert_eq!(tls.hostname, "api.example.com");
    assert_eq!(tls.subject_alt_names, ["alt.example.com"]);
    assert_eq!(
        tls_of(&t, "10.0.0.1:9000"),
        None,
        "metrics port stays plain"
    );
}

#[test]
fn uri_subject_names_are_refused_with_the_field() {
    let p = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata:\n  name: p\nspec:\n  targetRefs:\n  - {group: \"\", kind: Service, name: vllm}\n  validation:\n    wellKnownCACertificates: System\n    hostname: a.example\n    subjectAltNames:\n    - {type: URI, uri: \"spiffe://td/ns/vllm\"}\n";
    let e = build_err(&format!("{GW}{SERVICES}{p}"));
    assert_eq!(e.len(), 1, "{e:?}");
    let s = e[0].to_string();
    assert!(s.contains("spec.validation.subjectAltNames[0]"), "{s}");
    assert!(s.contains("URI names cannot be verified"), "{s}");
}

#[test]
fn plaintext_and_tls_backends_on_one_address_use_tls_and_warn() {
    // Service `other` resolves to vllm's TLS endpoint without a policy.
    let other = "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: other-1\n  labels: {kubernetes.io/service-name: other}\naddressType: IPv4\nports:\n- {port: 8443}\nendpoints:\n- addresses: [10.0.0.1]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: z\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /o}}]\n    backendRefs: [{name: other, port: 8443}]\n";
    let t = build(&format!("{GW}{CM}{SERVICES}{other}{}", policy("ca")));
    assert!(tls_of(&t, "10.0.0.1:8443").is_some());
    let w: Vec<String> = t.warnings().iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter()
            .any(|w| w.contains("endpoint 10.0.0.1:8443") && w.contains("TLS is used")),
        "{w:?}"
    );
}
