//! BackendTLSPolicy: its ConfigMap CA references resolve when the table is
//! built; a missing ConfigMap or a ConfigMap without a PEM `ca.crt` is an
//! error naming the field.

use super::*;

fn policy(ca_ref: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata:\n  name: p\nspec:\n  targetRefs:\n  - {{group: \"\", kind: Service, name: vllm}}\n  validation:\n    caCertificateRefs:\n    - {{group: \"\", kind: ConfigMap, name: {ca_ref}}}\n    hostname: vllm.internal\n"
    )
}

const CM: &str = "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ca\ndata:\n  ca.crt: |\n    -----BEGIN CERTIFICATE-----\n    MIIB\n    -----END CERTIFICATE-----\n";

#[test]
fn ca_ref_resolves() {
    build(&format!("{GW}{CM}{}", policy("ca")));
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
