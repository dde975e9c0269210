//! [`RequestView::model`]: the body's model as seen by header matches on
//! [`MODEL_HEADER`] (model first) and [`MODEL_TYPE_HEADER`] (client first).

use super::*;

/// `default/r`: rule 0 on `X-Gateway-Model-Name: llama`, rule 1 on
/// `X-Model-Type: gpt`, rule 2 on `x-tenant: a`.
fn table() -> RoutingTable {
    build(&format!(
        "{GW}{}",
        route(
            "r",
            "  rules:
  - matches: [{headers: [{name: X-Gateway-Model-Name, value: llama}]}]
  - matches: [{headers: [{name: X-Model-Type, value: gpt}]}]
  - matches: [{headers: [{name: x-tenant, value: a}]}]
"
        )
    ))
}

/// Matches `POST /v1/chat/completions` with client `headers` and body `model`;
/// returns "route#rule" or "-".
fn post(t: &RoutingTable, headers: &[(&str, &str)], model: Option<&str>) -> String {
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    };
    let view = RequestView {
        method: "POST",
        path: "/v1/chat/completions",
        query: None,
        host: None,
        headers: &lookup,
        model,
    };
    match t.match_request(0, &view) {
        Some(m) => format!("{}#{}", m.route, m.rule),
        None => "-".to_owned(),
    }
}

#[test]
fn body_model_matches_a_model_header_rule() {
    let t = table();
    assert_eq!(post(&t, &[], Some("llama")), "default/r#0");
    assert_eq!(post(&t, &[], Some("mistral")), "-");
    // The body's model also answers for X-Model-Type when the client sent none.
    assert_eq!(post(&t, &[], Some("gpt")), "default/r#1");
    // Other headers come from the client only.
    assert_eq!(post(&t, &[], Some("a")), "-");
    assert_eq!(
        post(&t, &[("x-tenant", "a")], Some("mistral")),
        "default/r#2"
    );
}

#[test]
fn body_model_overrides_a_client_model_header() {
    let t = table();
    assert_eq!(
        post(&t, &[("X-Gateway-Model-Name", "llama")], Some("mistral")),
        "-"
    );
    assert_eq!(
        post(&t, &[("X-Gateway-Model-Name", "mistral")], Some("llama")),
        "default/r#0"
    );
}

#[test]
fn client_model_type_wins_over_the_body_model() {
    let t = table();
    assert_eq!(
        post(&t, &[("X-Model-Type", "gpt")], Some("phi")),
        "default/r#1"
    );
    assert_eq!(post(&t, &[("X-Model-Type", "phi")], Some("gpt")), "-");
}

#[test]
fn without_a_model_header_rules_see_only_headers() {
    let t = table();
    assert_eq!(post(&t, &[], None), "-");
    assert_eq!(
        post(&t, &[("X-Gateway-Model-Name", "llama")], None),
        "default/r#0"
    );
    assert_eq!(post(&t, &[("X-Model-Type", "gpt")], None), "default/r#1");
    assert_eq!(post(&t, &[("X-Model-Type", "llama")], None), "-");
}
