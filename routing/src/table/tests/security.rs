//! SecurityPolicy attachment: `spec.targetRef` to a Gateway, a listener, an
//! HTTPRoute or a rule; the most specific wins; two at one level are an error.

use super::*;

fn policy(name: &str, target: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata:\n  name: {name}\nspec:\n  targetRef: {target}\n  rateLimit:\n    default: {{requests: 10, unit: minute}}\n"
    )
}

fn two_routes() -> String {
    let a = route(
        "a",
        "  rules:\n  - matches: [{path: {value: /a}}]\n  - matches: [{path: {value: /a2}}]\n",
    );
    let b = route("b", "  rules:\n  - matches: [{path: {value: /b}}]\n");
    format!("{GW}{a}{b}")
}

fn security_of(t: &RoutingTable, path: &str) -> Option<String> {
    let lookup = |_: &str| None;
    let view = RequestView {
        method: "GET",
        path,
        query: None,
        host: None,
        model: None,
        headers: &lookup,
    };
    t.match_request(0, &view)
        .and_then(|m| m.security)
        .map(str::to_owned)
}

#[test]
fn a_gateway_policy_covers_every_rule_and_a_route_policy_wins() {
    let yaml = format!(
        "{}{}{}",
        two_routes(),
        policy(
            "gw-wide",
            "{group: gateway.networking.k8s.io, kind: Gateway, name: gw}"
        ),
        policy(
            "route-a",
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: a}"
        ),
    );
    let t = build(&yaml);
    assert_eq!(security_of(&t, "/a").as_deref(), Some("default/route-a"));
    assert_eq!(security_of(&t, "/a2").as_deref(), Some("default/route-a"));
    assert_eq!(security_of(&t, "/b").as_deref(), Some("default/gw-wide"));
    assert!(t.security_policy("default/gw-wide").is_some());
    assert!(t.security_policy("default/nope").is_none());
    let shown = t.to_string();
    assert!(shown.contains("security=default/route-a"), "{shown}");
}

#[test]
fn without_a_policy_no_rule_has_one() {
    let t = build(&two_routes());
    assert_eq!(security_of(&t, "/a"), None);
    assert_eq!(security_of(&t, "/b"), None);
}

#[test]
fn two_policies_on_one_target_are_an_error() {
    let yaml = format!(
        "{}{}{}",
        two_routes(),
        policy(
            "one",
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: b}"
        ),
        policy(
            "two",
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: b}"
        ),
    );
    let errs = build_err(&yaml);
    assert!(
        errs.iter().any(|e| e
            .to_string()
            .contains("two SecurityPolicies at the same level")),
        "{errs:?}"
    );
}

#[test]
fn a_target_that_does_not_exist_is_an_error_naming_the_field() {
    let yaml = format!(
        "{}{}",
        two_routes(),
        policy(
            "lost",
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: ghost}"
        ),
    );
    let errs = build_err(&yaml);
    assert!(
        errs.iter().any(|e| {
            let s = e.to_string();
            s.contains("spec.targetRef") && s.contains("ghost")
        }),
        "{errs:?}"
    );
}

#[test]
fn the_seed_policy_covers_the_seed_routes() {
    let t = build(SEED);
    let rules: Vec<_> = t.rules().collect();
    assert!(!rules.is_empty());
    assert!(
        rules
            .iter()
            .all(|r| r.security == Some("default/ai-security")),
        "{:?}",
        rules
            .iter()
            .map(|r| (r.route, r.security))
            .collect::<Vec<_>>()
    );
}

fn jwks_policy(secret_ref: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata:\n  name: jwt\n  namespace: default\nspec:\n  targetRef: {{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}\n  authentication:\n    jwt:\n      providers:\n      - name: idp\n        issuer: https://idp.example\n        localJWKS:\n          secretRef: {secret_ref}\n"
    )
}

fn opaque_secret(name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: default\ntype: Opaque\n{body}"
    )
}

#[test]
fn a_local_jwks_from_a_secret_is_resolved_into_keys() {
    let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"abc","kid":"k"}]}"#;
    let yaml = format!(
        "{}{}{}",
        two_routes(),
        jwks_policy("{name: idp-keys}"),
        opaque_secret("idp-keys", &format!("stringData:\n  jwks.json: '{jwks}'\n")),
    );
    let t = build(&yaml);
    let sp = t.security_policy("default/jwt").expect("policy");
    let local = sp
        .spec
        .authentication
        .as_ref()
        .unwrap()
        .jwt
        .as_ref()
        .unwrap()
        .providers[0]
        .local_jwks
        .as_ref()
        .unwrap();
    assert_eq!(local.keys.len(), 1);
    assert_eq!(local.keys[0]["kid"], "k");
    assert!(local.secret_ref.is_none());
    // Another data key, named by the ref.
    let yaml = format!(
        "{}{}{}",
        two_routes(),
        jwks_policy("{name: idp-keys, key: keys}"),
        opaque_secret("idp-keys", &format!("stringData:\n  keys: '{jwks}'\n")),
    );
    assert!(build(&yaml).security_policy("default/jwt").is_some());
}

#[test]
fn a_jwks_secret_that_is_missing_or_wrong_is_an_error_naming_the_field() {
    let field = "spec.authentication.jwt.providers[0].localJWKS.secretRef";
    let cases = [
        (jwks_policy("{name: absent}"), "is not in the config"),
        (
            format!(
                "{}{}",
                jwks_policy("{name: s}"),
                opaque_secret("s", "stringData:\n  other: x\n")
            ),
            "has no key `jwks.json`",
        ),
        (
            format!(
                "{}{}",
                jwks_policy("{name: s}"),
                opaque_secret("s", "stringData:\n  jwks.json: 'not json'\n")
            ),
            "is not a JWKS document",
        ),
        (
            format!(
                "{}{}",
                jwks_policy("{name: s}"),
                opaque_secret("s", "stringData:\n  jwks.json: '{\"keys\":[]}'\n")
            ),
            "has no keys",
        ),
    ];
    for (docs, want) in cases {
        let yaml = format!("{}{docs}", two_routes());
        let errs = build_err(&yaml);
        assert!(
            errs.iter()
                .any(|e| e.field == field && e.message.contains(want)),
            "{want}: {errs:?}"
        );
    }
}
