//! Merge/split round trips against a deterministic fake server: for random member
//! requests, `split(server(merge(xs)))` gives every member exactly the bytes the
//! server returns for that member alone; usage totals always add up; a failed merged
//! call never shows one member another's data.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::Value;
use shardgate_batching::merge::{classify, merge, retry_alone, split, split_error, BatchKey};

#[derive(Debug, Clone)]
enum Input {
    Str(String),
    Strs(Vec<String>),
    Toks(Vec<u32>),
    TokArrs(Vec<Vec<u32>>),
}

impl Input {
    fn json(&self) -> Value {
        match self {
            Input::Str(s) => Value::from(s.as_str()),
            Input::Strs(v) => Value::from(v.clone()),
            Input::Toks(t) => Value::from(t.clone()),
            Input::TokArrs(t) => Value::from(t.clone()),
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    model: &'static str,
    input: Input,
    params: Vec<(&'static str, Value)>,
    pretty: bool,
    rotate: usize,
}

impl Member {
    /// The body as a client writes it: keys in some order, maybe spaced out.
    fn body(&self, field: &str) -> Vec<u8> {
        let mut entries: Vec<(&str, Value)> = vec![
            ("model", Value::from(self.model)),
            (field, self.input.json()),
        ];
        entries.extend(self.params.iter().cloned());
        let k = self.rotate % entries.len();
        entries.rotate_left(k);
        let (sep, colon) = if self.pretty {
            (",\n  ", ": ")
        } else {
            (",", ":")
        };
        let parts: Vec<String> = entries
            .iter()
            .map(|(k, v)| {
                let v = if self.pretty {
                    serde_json::to_string_pretty(v).unwrap()
                } else {
                    v.to_string()
                };
                format!("{}{colon}{v}", Value::from(*k))
            })
            .collect();
        format!("{{{}}}", parts.join(sep)).into_bytes()
    }
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 é∂\"\\\\\n\t]{0,8}"
}

fn tokens() -> impl Strategy<Value = Vec<u32>> {
    proptest::collection::vec(0u32..100_000, 0..6)
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        text().prop_map(Input::Str),
        proptest::collection::vec(text(), 0..4).prop_map(Input::Strs),
        tokens().prop_map(Input::Toks),
        proptest::collection::vec(tokens(), 0..4).prop_map(Input::TokArrs),
    ]
}

fn params(embeddings: bool) -> impl Strategy<Value = Vec<(&'static str, Value)>> {
    let pool: Vec<Vec<(&'static str, Value)>> = if embeddings {
        vec![
            vec![],
            vec![("dimensions", Value::from(2))],
            vec![
                ("encoding_format", Value::from("float")),
                ("user", Value::from("u")),
            ],
            vec![
                ("user", Value::from("u")),
                ("encoding_format", Value::from("float")),
            ],
            vec![("user", Value::Null)],
            vec![("messages", Value::from(vec![1]))],
        ]
    } else {
        vec![
            vec![],
            vec![("max_tokens", Value::from(5))],
            vec![
                ("temperature", Value::from(0.5)),
                ("max_tokens", Value::from(5)),
            ],
            vec![
                ("max_tokens", Value::from(5)),
                ("temperature", Value::from(0.5)),
            ],
            vec![("stream", Value::from(false)), ("n", Value::from(1))],
            vec![("stop", serde_json::json!({"b": [1, 2], "a": null}))],
            vec![("stop", serde_json::json!({"a": null, "b": [1, 2]}))],
            vec![("stream", Value::from(true))],
            vec![("n", Value::from(2))],
            vec![("logprobs", Value::from(1))],
            vec![("echo", Value::from(true))],
        ]
    };
    // Mostly the first (plain) set, so that groups get large.
    let n = pool.len();
    (0..n * 3).prop_map(move |i| pool[i.saturating_sub(2 * n)].clone())
}

fn member(embeddings: bool) -> impl Strategy<Value = Member> {
    (
        proptest::sample::select(vec!["m1", "m1", "m1", "m1", "m2"]),
        input(),
        params(embeddings),
        proptest::bool::weighted(0.2),
        0usize..5,
    )
        .prop_map(|(model, input, params, pretty, rotate)| Member {
            model,
            input,
            params,
            pretty,
            rotate,
        })
}

/// Groups members by batch key, in arrival order; unmergeable ones are left out.
fn groups(path: &str, bodies: &[Vec<u8>]) -> Vec<(BatchKey, Vec<usize>)> {
    let mut out: Vec<(BatchKey, Vec<usize>)> = Vec::new();
    let mut at: HashMap<BatchKey, usize> = HashMap::new();
    for (i, b) in bodies.iter().enumerate() {
        if let Ok(Some(c)) = classify(path, b) {
            let g = *at.entry(c.key.clone()).or_insert_with(|| {
                out.push((c.key.clone(), Vec::new()));
                out.len() - 1
            });
            out[g].1.push(i);
        }
    }
    out
}

fn case() -> impl Strategy<Value = (bool, Vec<Member>)> {
    any::<bool>().prop_flat_map(|emb| (Just(emb), proptest::collection::vec(member(emb), 1..16)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn split_of_merged_answer_is_each_members_own_answer((emb, members) in case()) {
        let (path, field) = if emb { ("/v1/embeddings", "input") } else { ("/v1/completions", "prompt") };
        let bodies: Vec<Vec<u8>> = members.iter().map(|m| m.body(field)).collect();
        for (key, idx) in groups(path, &bodies) {
            let items: Vec<&[u8]> = idx.iter().map(|&i| bodies[i].as_slice()).collect();
            let merged = merge(&key, &items).unwrap();
            prop_assert_eq!(merged.plan.members(), idx.len());
            let (status, resp) = support::serve(path, &merged.body);
            prop_assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
            let parts = split(&resp, &merged.plan).unwrap();
            prop_assert_eq!(parts.len(), idx.len());
            for (part, &i) in parts.iter().zip(&idx) {
                let (s, alone) = support::serve(path, &bodies[i]);
                prop_assert_eq!(s, 200);
                prop_assert_eq!(
                    String::from_utf8_lossy(part),
                    String::from_utf8_lossy(&alone),
                    "member {} of {:?}", i, idx
                );
            }
        }
    }

    /// With a tokenizer that is not proportional to bytes, the split usage is an
    /// estimate, but every count still adds up exactly and everything else is exact.
    #[test]
    fn usage_adds_up_with_any_tokenizer((emb, members) in case()) {
        let (path, field) = if emb { ("/v1/embeddings", "input") } else { ("/v1/completions", "prompt") };
        let tok = |b: u64| b.div_ceil(4) + 1;
        let bodies: Vec<Vec<u8>> = members.iter().map(|m| m.body(field)).collect();
        for (key, idx) in groups(path, &bodies) {
            let items: Vec<&[u8]> = idx.iter().map(|&i| bodies[i].as_slice()).collect();
            let merged = merge(&key, &items).unwrap();
            let (_, resp) = support::serve_with(path, &merged.body, tok);
            let whole: Value = serde_json::from_slice(&resp).unwrap();
            let parts = split(&resp, &merged.plan).unwrap();
            let mut sums = [0u64; 3];
            for (part, &i) in parts.iter().zip(&idx) {
                let mut got: Value = serde_json::from_slice(part).unwrap();
                let (_, alone) = support::serve_with(path, &bodies[i], tok);
                let mut want: Value = serde_json::from_slice(&alone).unwrap();
                let u = got["usage"].take();
                want["usage"].take();
                prop_assert_eq!(&got, &want);
                for (k, name) in ["prompt_tokens", "completion_tokens", "total_tokens"].iter().enumerate() {
                    sums[k] += u[name].as_u64().unwrap();
                }
                prop_assert_eq!(
                    u["total_tokens"].as_u64(),
                    Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
                );
            }
            for (k, name) in ["prompt_tokens", "completion_tokens", "total_tokens"].iter().enumerate() {
                prop_assert_eq!(Some(sums[k]), whole["usage"][name].as_u64());
            }
        }
    }
}

#[test]
fn a_failed_merged_call_never_shows_another_members_input() {
    let path = "/v1/completions";
    let bodies: Vec<Vec<u8>> = [
        r#"{"model":"m","prompt":"secret-alice"}"#,
        r#"{"model":"m","prompt":["FAIL secret-bob","x"]}"#,
        r#"{"model":"m","prompt":"secret-carol"}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let items: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let key = classify(path, items[0]).unwrap().unwrap().key;
    let merged = merge(&key, &items).unwrap();
    let (status, resp) = support::serve(path, &merged.body);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&resp).contains("secret-bob"));
    assert!(retry_alone(status));
    let errs = split_error(status, &resp, 3);
    assert_eq!(errs.len(), 3);
    for e in &errs {
        assert_eq!(e.status, 400);
        let text = String::from_utf8_lossy(&e.body);
        assert!(!text.contains("secret"), "{text}");
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["error"]["type"], "BadRequestError");
        assert_eq!(v["error"]["code"], 400);
        assert!(v["error"]["message"].as_str().unwrap().contains("400"));
    }
    // Resent alone, the innocent members succeed and the culprit gets its own error.
    for (i, b) in bodies.iter().enumerate() {
        let (s, r) = support::serve(path, b);
        assert_eq!(s, if i == 1 { 400 } else { 200 });
        if i != 1 {
            assert!(!String::from_utf8_lossy(&r).contains("secret-bob"));
        }
    }
}

#[test]
fn a_broken_merged_answer_gives_nobody_anything() {
    let path = "/v1/embeddings";
    let bodies = [
        br#"{"model":"m","input":["a","b"]}"#.as_slice(),
        br#"{"model":"m","input":"c"}"#.as_slice(),
    ];
    let key = classify(path, bodies[0]).unwrap().unwrap().key;
    let merged = merge(&key, &bodies).unwrap();
    let (_, resp) = support::serve(path, &merged.body);
    let mut v: Value = serde_json::from_slice(&resp).unwrap();
    // Drop one item: the count no longer matches.
    v["data"].as_array_mut().unwrap().pop();
    assert!(split(&serde_json::to_vec(&v).unwrap(), &merged.plan).is_err());
    // Duplicate an index.
    let mut v: Value = serde_json::from_slice(&resp).unwrap();
    v["data"][2]["index"] = Value::from(0);
    assert!(split(&serde_json::to_vec(&v).unwrap(), &merged.plan).is_err());
}
