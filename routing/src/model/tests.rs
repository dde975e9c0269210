//! Model extraction: hand-picked cases plus property tests against serde_json.
#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn model(body: &str) -> std::result::Result<Option<String>, ModelError> {
    extract_model(body.as_bytes()).map(|m| m.map(Cow::into_owned))
}

#[test]
fn simple_and_borrowed() {
    let body = br#"{"model":"gpt-large","prompt":"hi"}"#;
    let m = extract_model(body).unwrap().unwrap();
    assert!(matches!(m, Cow::Borrowed("gpt-large")));
    assert_eq!(
        model(r#"{"prompt":"hi","model":"bert-base"}"#)
            .unwrap()
            .unwrap(),
        "bert-base"
    );
    assert_eq!(
        model(" \n\t{ \"model\" : \"x\" , \"a\": 1 }\n")
            .unwrap()
            .unwrap(),
        "x"
    );
    assert_eq!(
        model("\u{feff}{\"model\":\"bom\"}").unwrap().unwrap(),
        "bom"
    );
    assert_eq!(model(r#"{"model":""}"#).unwrap().unwrap(), "");
}

#[test]
fn absent_model() {
    assert_eq!(model("{}").unwrap(), None);
    assert_eq!(model(" { } ").unwrap(), None);
    assert_eq!(
        model(r#"{"models":"x","Model":"y","mode":"z"}"#).unwrap(),
        None
    );
    assert_eq!(
        model(r#"{"a":[1,2,{"b":null}],"c":true,"d":-1.5e3}"#).unwrap(),
        None
    );
}

#[test]
fn nested_model_keys_ignored() {
    let body = r#"{"messages":[{"role":"user","content":"hi","model":"nested"}],
        "tools":{"model":"deeper","x":[{"model":"deepest"}]},"model":"top"}"#;
    assert_eq!(model(body).unwrap().unwrap(), "top");
    let no_top = r#"{"messages":[{"model":"nested"}],"meta":{"model":"x"}}"#;
    assert_eq!(model(no_top).unwrap(), None);
    // A string value that contains `"model":` is not a key.
    let tricky = r#"{"prompt":"say \"model\": \"evil\"","model":"real"}"#;
    assert_eq!(model(tricky).unwrap().unwrap(), "real");
    let tricky2 = r#"{"prompt":"\\","model":"real2"}"#;
    assert_eq!(model(tricky2).unwrap().unwrap(), "real2");
}

#[test]
fn escapes_decoded() {
    let cases = [
        (r#"{"model":"a\"b"}"#, "a\"b"),
        (r#"{"model":"a\\b"}"#, "a\\b"),
        (r#"{"model":"a\/b"}"#, "a/b"),
        (r#"{"model":"\b\f\n\r\t"}"#, "\u{8}\u{c}\n\r\t"),
        (r#"{"model":"caf\u00e9"}"#, "café"),
        (r#"{"model":"\u4F60\u597d"}"#, "你好"),
        (r#"{"model":"\ud83d\ude00!"}"#, "😀!"),
        (r#"{"model":"raw é 😀"}"#, "raw é 😀"),
        (r#"{"mod\u0065l":"escaped-key"}"#, "escaped-key"),
    ];
    for (body, want) in cases {
        assert_eq!(model(body).unwrap().unwrap(), want, "{body}");
        // serde_json agrees.
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["model"], want);
    }
    assert!(matches!(
        extract_model(br#"{"model":"a\nb"}"#).unwrap().unwrap(),
        Cow::Owned(_)
    ));
}

#[test]
fn bad_escapes_rejected() {
    for body in [
        r#"{"model":"\ud83d"}"#,
        r#"{"model":"\ud83dx"}"#,
        r#"{"model":"\ude00"}"#,
        r#"{"model":"\ud83d\u0041"}"#,
        r#"{"model":"\u12"}"#,
        r#"{"model":"\uZZZZ"}"#,
        r#"{"model":"\x"}"#,
        "{\"model\":\"a\u{1}b\"}",
        "{\"model\":\"tab\tinside\"}",
    ] {
        assert!(
            matches!(model(body), Err(ModelError::InvalidJson(_))),
            "{body}: {:?}",
            model(body)
        );
    }
    assert!(matches!(
        extract_model(b"{\"model\":\"\xff\xfe\"}"),
        Err(ModelError::InvalidJson(_))
    ));
}

#[test]
fn model_after_a_megabyte_prompt() {
    let prompt = "lorem ipsum \\\" dolor ".repeat(1 << 16); // ~1.4 MB with escapes
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{prompt}","model":"no"}}],"stream":true,"model":"after-prompt"}}"#
    );
    assert!(body.len() > 1_000_000);
    assert_eq!(model(&body).unwrap().unwrap(), "after-prompt");
    assert_eq!(
        extract_model_strict(body.as_bytes()).unwrap().unwrap(),
        "after-prompt"
    );
}

#[test]
fn non_string_model() {
    for body in [
        r#"{"model":1}"#,
        r#"{"model":null}"#,
        r#"{"model":["a"]}"#,
        r#"{"model":{"name":"a"}}"#,
        r#"{"model":true}"#,
    ] {
        assert!(matches!(model(body), Err(ModelError::NotAString)), "{body}");
    }
}

#[test]
fn not_an_object() {
    for body in [r#"["model"]"#, r#""model""#, "42", "-1", "true", "null"] {
        assert!(
            matches!(model(body), Err(ModelError::NotAnObject)),
            "{body}"
        );
    }
}

#[test]
fn invalid_json() {
    for body in [
        "",
        "   ",
        "{",
        "{\"model\"",
        "{\"model\":",
        "{\"model\":\"unterminated",
        "{\"a\":}",
        "{\"a\" 1}",
        "{\"a\":1,}",
        "{\"a\":1 \"b\":2}",
        "{a:1}",
        "{\"a\":[1,2}",
        "{\"a\":tru}",
        "{\"a\":nul,\"model\":\"x\"}",
        "{\"a\":\"x\\",
        "{} trailing",
        "<html>",
        "{\"a\":-}",
    ] {
        assert!(
            matches!(model(body), Err(ModelError::InvalidJson(_))),
            "{body:?}: {:?}",
            model(body)
        );
    }
}

#[test]
fn depth_is_bounded() {
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
    assert_eq!(
        model(&deep),
        Err(ModelError::InvalidJson("nesting too deep"))
    );
    let ok = format!(
        "{{\"a\":{}1{},\"model\":\"m\"}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_eq!(model(&ok).unwrap().unwrap(), "m");
}

#[test]
fn strict_rejects_duplicates_and_checks_the_rest() {
    let dup = br#"{"model":"cheap","x":1,"model":"expensive"}"#;
    assert_eq!(extract_model(dup).unwrap().unwrap(), "cheap");
    assert_eq!(
        extract_model_strict(dup),
        Err(ModelError::InvalidJson("duplicate top-level `model` key"))
    );
    // The lenient scan stops early; strict sees the broken tail.
    let tail = br#"{"model":"m", oops"#;
    assert_eq!(extract_model(tail).unwrap().unwrap(), "m");
    assert!(extract_model_strict(tail).is_err());
    assert_eq!(extract_model_strict(b"{}").unwrap(), None);
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        any::<String>().prop_map(serde_json::Value::String),
        // Strings that look like JSON and like the key we hunt for.
        prop_oneof![
            Just("\"model\":\"x\"".to_owned()),
            Just("\\".to_owned()),
            Just("{[\"".to_owned())
        ]
        .prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![any::<String>(), Just("model".to_owned())],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn agrees_with_serde_json(
        fields in prop::collection::vec((any::<String>(), arb_json()), 0..6),
        model_value in prop::option::of(any::<String>()),
        pretty in any::<bool>(),
    ) {
        let mut obj: serde_json::Map<String, serde_json::Value> =
            fields.into_iter().filter(|(k, _)| k != "model").collect();
        if let Some(m) = &model_value {
            obj.insert("model".to_owned(), serde_json::Value::String(m.clone()));
        }
        let value = serde_json::Value::Object(obj);
        let body = if pretty {
            serde_json::to_vec_pretty(&value).unwrap()
        } else {
            serde_json::to_vec(&value).unwrap()
        };
        let got = extract_model(&body).unwrap().map(Cow::into_owned);
        prop_assert_eq!(&got, &model_value);
        let strict = extract_model_strict(&body).unwrap().map(Cow::into_owned);
        prop_assert_eq!(&strict, &model_value);
    }

    #[test]
    fn non_string_models_are_reported(v in arb_json().prop_filter("not a string", |v| !v.is_string())) {
        let body = serde_json::to_vec(&serde_json::json!({"a": 1, "model": v})).unwrap();
        prop_assert_eq!(extract_model(&body), Err(ModelError::NotAString));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = extract_model(&bytes);
        let _ = extract_model_strict(&bytes);
    }

    #[test]
    fn json_ish_bytes_never_panic(
        parts in prop::collection::vec(
            prop_oneof![
                Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just(":"),
                Just("\""), Just("\\"), Just("\\u"), Just("d83d"), Just("model"),
                Just("\"model\""), Just("1"), Just("-"), Just("true"), Just(" "), Just("é"),
            ],
            0..64,
        )
    ) {
        let body: String = parts.concat();
        let _ = extract_model(body.as_bytes());
        let _ = extract_model_strict(body.as_bytes());
    }
}

#[test]
fn model_span_is_the_raw_value_between_its_quotes() {
    let body = br#"{"messages":[{"model":"inner"}], "model" : "llama\u002dv1", "x": 1}"#;
    let span = model_span(body).unwrap().unwrap();
    assert_eq!(&body[span.clone()], br"llama\u002dv1");
    assert_eq!(body[span.start - 1], b'"');
    assert_eq!(body[span.end], b'"');
    assert_eq!(model_span(br#"{"prompt":"x"}"#).unwrap(), None);
    assert_eq!(model_span(br#"{"model":""}"#).unwrap(), Some(10..10));
    assert!(model_span(b"[1]").is_err());
}

fn user(body: &str) -> Option<&str> {
    user_span(body.as_bytes()).map(|r| &body[r])
}

#[test]
fn user_field_span() {
    assert_eq!(user(r#"{"model":"m","user":"alice"}"#), Some("alice"));
    // After a long message list, nested `user` keys and roles never match.
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}","user":"nested"}}],"metadata":{{"user":"x"}},"user":"bob-42"}}"#,
        "a".repeat(100_000)
    );
    assert_eq!(user(&body), Some("bob-42"));
    // Escapes are kept as written (the span is hashed as is).
    assert_eq!(user(r#"{"user":"a\"b"}"#), Some(r#"a\"b"#));
    // An escaped key still spells `user`.
    assert_eq!(user(r#"{"us\u0065r":"carol"}"#), Some("carol"));
    // Absent, not a string, not an object, or broken JSON: no session.
    assert_eq!(user(r#"{"model":"m"}"#), None);
    assert_eq!(user(r#"{"user":null}"#), None);
    assert_eq!(user(r#"{"user":7}"#), None);
    assert_eq!(user(r#"["user"]"#), None);
    assert_eq!(user(r#"{"user":"unterminated}"#), None);
    assert_eq!(user(""), None);
    // The empty string is a span (the caller decides what it means).
    assert_eq!(user(r#"{"user":""}"#), Some(""));
    // The model scanner is unchanged by the user member.
    assert_eq!(
        model(r#"{"user":"u","model":"m"}"#).unwrap().as_deref(),
        Some("m")
    );
}
