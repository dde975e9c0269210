//! Merge/split examples with exact bytes (the round-trip property test against a
//! fake server is in `tests/merge_roundtrip.rs`).

use super::*;

const EMB: &str = "/v1/embeddings";
const CMPL: &str = "/v1/completions";

fn key(path: &str, body: &str) -> BatchKey {
    batch_key(path, body.as_bytes()).unwrap().unwrap()
}

fn s(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap()
}

#[test]
fn keys_match_on_model_form_and_every_parameter() {
    let a = key(
        EMB,
        r#"{"model":"m","input":"x","dimensions":8,"user":{"a":1,"b":[1,2]}}"#,
    );
    let b = key(
        EMB,
        r#"{ "user" : {"b":[1, 2],"a":1}, "input":["y","z"], "dimensions":8, "model":"m" }"#,
    );
    assert_eq!(a, b);
    assert_eq!(
        (a.endpoint(), a.form(), a.model()),
        (Endpoint::Embeddings, InputForm::Text, "m")
    );
    assert_eq!(a.params(), r#""dimensions":8,"user":{"a":1,"b":[1,2]}"#);
    // null is absent.
    assert_eq!(
        key(EMB, r#"{"model":"m","input":"x","user":null}"#),
        key(EMB, r#"{"model":"m","input":"x"}"#)
    );
    let differ = [
        r#"{"model":"m2","input":"x","dimensions":8,"user":{"a":1,"b":[1,2]}}"#,
        r#"{"model":"m","input":"x","dimensions":8.0,"user":{"a":1,"b":[1,2]}}"#,
        r#"{"model":"m","input":"x","dimensions":8,"user":{"a":1,"b":[2,1]}}"#,
        r#"{"model":"m","input":[1,2],"dimensions":8,"user":{"a":1,"b":[1,2]}}"#,
    ];
    for d in differ {
        assert_ne!(key(EMB, d), a, "{d}");
    }
    assert_ne!(
        key(CMPL, r#"{"model":"m","prompt":"x"}"#),
        key(EMB, r#"{"model":"m","input":"x"}"#)
    );
    // Token forms: one array and an array of arrays share a key.
    assert_eq!(
        key(EMB, r#"{"model":"m","input":[1,2]}"#),
        key(EMB, r#"{"model":"m","input":[[3],[4,5]]}"#)
    );
}

#[test]
fn classify_counts_inputs() {
    let c = |p: &str, b: &str| classify(p, b.as_bytes()).unwrap().map(|c| c.inputs);
    assert_eq!(c(EMB, r#"{"model":"m","input":"x"}"#), Some(1));
    assert_eq!(c(EMB, r#"{"model":"m","input":["x","y","z"]}"#), Some(3));
    assert_eq!(c(EMB, r#"{"model":"m","input":[1,2,3]}"#), Some(1));
    assert_eq!(c(CMPL, r#"{"model":"m","prompt":[[1],[2,3]]}"#), Some(2));
}

#[test]
fn unmergeable_requests_go_alone() {
    let none = [
        (EMB, r#"{"input":"x"}"#),
        (EMB, r#"{"model":5,"input":"x"}"#),
        (EMB, r#"{"model":"m"}"#),
        (EMB, r#"{"model":"m","input":""}"#),
        (EMB, r#"{"model":"m","input":[]}"#),
        (EMB, r#"{"model":"m","input":["a",""]}"#),
        (EMB, r#"{"model":"m","input":[[1],[]]}"#),
        (EMB, r#"{"model":"m","input":["a",[1]]}"#),
        (EMB, r#"{"model":"m","input":[1,"a"]}"#),
        (EMB, r#"{"model":"m","input":[1.5]}"#),
        (EMB, r#"{"model":"m","input":[-1]}"#),
        (EMB, r#"{"model":"m","input":[4294967296]}"#),
        (EMB, r#"{"model":"m","input":{"a":1}}"#),
        (EMB, r#"{"model":"m","input":"x","messages":[]}"#),
        (CMPL, r#"{"model":"m","prompt":"x","stream":true}"#),
        (CMPL, r#"{"model":"m","prompt":"x","n":2}"#),
        (CMPL, r#"{"model":"m","prompt":"x","n":1.0}"#),
        (CMPL, r#"{"model":"m","prompt":"x","best_of":3}"#),
        (CMPL, r#"{"model":"m","prompt":"x","echo":true}"#),
        (CMPL, r#"{"model":"m","prompt":"x","logprobs":0}"#),
        (CMPL, r#"{"model":"m","prompt":"x","prompt_logprobs":1}"#),
        (CMPL, r#"{"model":"m","prompt":"x","prompt_embeds":"AAAA"}"#),
        ("/v1/chat/completions", r#"{"model":"m","messages":[]}"#),
        ("/v1/embeddings?x=1", r#"{"model":"m","input":"x"}"#),
    ];
    for (p, b) in none {
        assert_eq!(classify(p, b.as_bytes()), Ok(None), "{p} {b}");
    }
    for ok in [
        r#"{"model":"m","prompt":"x","stream":false,"n":1,"best_of":null,"echo":false,"logprobs":null}"#,
        r#"{"model":"m","prompt":"x","seed":3,"max_tokens":7}"#,
    ] {
        assert!(classify(CMPL, ok.as_bytes()).unwrap().is_some(), "{ok}");
    }
    for bad in [
        r#"{"model":"m","input":"x""#,
        r#"{"model":"m","model":"n","input":"x"}"#,
        "[1]",
        "",
    ] {
        assert!(
            matches!(classify(EMB, bad.as_bytes()), Err(MergeError::Json { .. })),
            "{bad}"
        );
    }
}

#[test]
fn merge_concatenates_inputs_in_member_order_keeping_bytes() {
    let a = r#"{"input": "h\u00e9llo", "model":"m", "encoding_format" : "float"}"#;
    let b = r#"{"model":"m","encoding_format":"float","input":["x", "y"]}"#;
    let c = r#"{"model":"m","encoding_format":"float","input":"z"}"#;
    let k = key(EMB, a);
    let m = merge(&k, &[a.as_bytes(), b.as_bytes(), c.as_bytes()]).unwrap();
    assert_eq!(
        s(&m.body),
        r#"{"input":["h\u00e9llo","x","y","z"],"model":"m","encoding_format":"float"}"#
    );
    assert_eq!(m.plan.spans(), [0..1, 1..3, 3..4]);
    assert_eq!((m.plan.members(), m.plan.inputs()), (3, 4));
    assert_eq!(m.plan.endpoint(), Endpoint::Embeddings);

    let t1 = r#"{"model":"m","prompt":[1, 2, 3]}"#;
    let t2 = r#"{"model":"m","prompt":[[4],[5,6]]}"#;
    let m = merge(&key(CMPL, t1), &[t1.as_bytes(), t2.as_bytes()]).unwrap();
    assert_eq!(
        s(&m.body),
        r#"{"model":"m","prompt":[[1, 2, 3],[4],[5,6]]}"#
    );
    assert_eq!(m.plan.spans(), [0..1, 1..3]);
}

#[test]
fn merge_of_one_is_a_passthrough_and_checks_keys() {
    let a = r#"{ "model":"m", "input":"x" }"#;
    let k = key(EMB, a);
    let m = merge(&k, &[a.as_bytes()]).unwrap();
    assert_eq!(m.body, a.as_bytes());
    let resp = br#"{"whatever": [1]}"#;
    assert_eq!(split(resp, &m.plan).unwrap(), [resp.to_vec()]);

    let other = r#"{"model":"n","input":"x"}"#;
    assert_eq!(
        merge(&k, &[a.as_bytes(), other.as_bytes()]),
        Err(MergeError::KeyMismatch { member: 1 })
    );
    let streaming = r#"{"model":"m","prompt":"x","stream":true}"#;
    assert_eq!(
        merge(
            &key(CMPL, r#"{"model":"m","prompt":"x"}"#),
            &[streaming.as_bytes()]
        ),
        Err(MergeError::NotMergeable { member: 0 })
    );
    assert_eq!(merge(&k, &[]), Err(MergeError::Empty));
}

fn plan(path: &str, bodies: &[&str]) -> SplitPlan {
    let items: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
    merge(&key(path, bodies[0]), &items).unwrap().plan
}

#[test]
fn split_embeddings_by_index_with_usage_apportioned() {
    let p = plan(
        EMB,
        &[
            r#"{"model":"m","input":[[1,2,3],[4]]}"#,
            r#"{"model":"m","input":[5,6,7,8]}"#,
        ],
    );
    // Items out of order; odd number formats must survive.
    let resp = br#"{"object":"list","data":[{"object":"embedding","index":2,"embedding":[1e-3, -0.50]},{"object":"embedding","index":0,"embedding":[0.10]},{"object":"embedding","index":1,"embedding":"AAA="}],"model":"m","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let parts = split(resp, &p).unwrap();
    assert_eq!(
        s(&parts[0]),
        r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.10]},{"object":"embedding","index":1,"embedding":"AAA="}],"model":"m","usage":{"prompt_tokens":4,"total_tokens":4}}"#
    );
    assert_eq!(
        s(&parts[1]),
        r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[1e-3, -0.50]}],"model":"m","usage":{"prompt_tokens":4,"total_tokens":4}}"#
    );
}

#[test]
fn split_completions_with_details_and_excess_total() {
    let p = plan(
        CMPL,
        &[
            r#"{"model":"m","prompt":"aaa"}"#,
            r#"{"model":"m","prompt":["b","cccccc"]}"#,
        ],
    );
    let resp = br#"{"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"xx","finish_reason":"length"},{"index":1,"text":"","finish_reason":"stop"},{"index":2,"text":"yyyy","finish_reason":"length"}],"usage":{"prompt_tokens":10,"completion_tokens":6,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":5,"note":"x"},"completion_tokens_details":null,"cost":0.5}}"#;
    let parts = split(resp, &p).unwrap();
    // Prompt weights 3 : 7 → 3 : 7; completion weights 2 : 4 → 2 : 4; excess 1 → prompt share.
    assert_eq!(
        s(&parts[0]),
        r#"{"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"xx","finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":2,"note":"x"},"completion_tokens_details":null,"cost":0.5}}"#
    );
    assert_eq!(
        s(&parts[1]),
        r#"{"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"","finish_reason":"stop"},{"index":1,"text":"yyyy","finish_reason":"length"}],"usage":{"prompt_tokens":7,"completion_tokens":4,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":3,"note":"x"},"completion_tokens_details":null,"cost":0.5}}"#
    );
}

#[test]
fn split_without_usage_and_with_null_usage() {
    let p = plan(
        EMB,
        &[
            r#"{"model":"m","input":"a"}"#,
            r#"{"model":"m","input":"b"}"#,
        ],
    );
    let parts = split(br#"{"data":[{"index":1},{"index":0}]}"#, &p).unwrap();
    assert_eq!(
        parts,
        [
            br#"{"data":[{"index":0}]}"#.to_vec(),
            br#"{"data":[{"index":0}]}"#.to_vec()
        ]
    );
    let parts = split(
        br#"{"data":[{"index":0,"v":0},{"index":1,"v":1}],"usage":null}"#,
        &p,
    )
    .unwrap();
    assert_eq!(s(&parts[1]), r#"{"data":[{"index":0,"v":1}],"usage":null}"#);
}

#[test]
fn split_refuses_anything_it_cannot_attribute() {
    let p = plan(
        EMB,
        &[
            r#"{"model":"m","input":"a"}"#,
            r#"{"model":"m","input":["b","c"]}"#,
        ],
    );
    let cases: &[(&str, SplitError)] = &[
        ("not json", SplitError::Json(String::new())),
        (r#"{"object":"list"}"#, SplitError::Missing("data")),
        (r#"{"data":{}}"#, SplitError::Json(String::new())),
        (
            r#"{"data":[{"index":0},{"index":1}]}"#,
            SplitError::CountMismatch {
                expected: 3,
                found: 2,
            },
        ),
        (
            r#"{"data":[{"index":0},{"index":1},{"index":1}]}"#,
            SplitError::BadIndex { position: 2 },
        ),
        (
            r#"{"data":[{"index":0},{"index":1},{"index":3}]}"#,
            SplitError::BadIndex { position: 2 },
        ),
        (
            r#"{"data":[{"index":0},{"index":1},{"index":"2"}]}"#,
            SplitError::BadIndex { position: 2 },
        ),
        (
            r#"{"data":[{"index":0},{"index":1},{}]}"#,
            SplitError::BadIndex { position: 2 },
        ),
        (
            r#"{"data":[{"index":0},{"index":1},5]}"#,
            SplitError::Json(String::new()),
        ),
        (
            r#"{"data":[{"index":0},{"index":1},{"index":2}],"extra":["a","b","c"]}"#,
            SplitError::UnexpectedField("extra".into()),
        ),
        (
            r#"{"data":[{"index":0},{"index":1},{"index":2}],"usage":{"prompt_tokens":-1}}"#,
            SplitError::BadUsage("prompt_tokens".into()),
        ),
        (
            r#"{"data":[{"index":0},{"index":1},{"index":2}],"usage":{"x":[1]}}"#,
            SplitError::BadUsage("x".into()),
        ),
        (
            r#"{"data":[{"index":0},{"index":1},{"index":2}],"usage":7}"#,
            SplitError::BadUsage("usage".into()),
        ),
    ];
    for (body, want) in cases {
        let got = split(body.as_bytes(), &p).unwrap_err();
        match (want, &got) {
            (SplitError::Json(_), SplitError::Json(_)) => {}
            _ => assert_eq!(&got, want, "{body}"),
        }
    }
    let cp = plan(
        CMPL,
        &[
            r#"{"model":"m","prompt":"a"}"#,
            r#"{"model":"m","prompt":"b"}"#,
        ],
    );
    assert_eq!(
        split(br#"{"data":[]}"#, &cp),
        Err(SplitError::Missing("choices"))
    );
}

#[test]
fn apportion_adds_up_and_breaks_ties_to_the_earlier_member() {
    assert_eq!(apportion(10, &[1, 1, 1]), [4, 3, 3]);
    assert_eq!(apportion(7, &[0, 0]), [4, 3]);
    assert_eq!(apportion(5, &[0, 3]), [0, 5]);
    assert_eq!(apportion(0, &[3, 4]), [0, 0]);
    assert_eq!(
        apportion(u64::MAX, &[u64::MAX, 1])
            .iter()
            .map(|&x| u128::from(x))
            .sum::<u128>(),
        u128::from(u64::MAX)
    );
    assert_eq!(apportion(3, &[]), Vec::<u64>::new());
}

#[test]
fn errors_are_sanitised_for_batches_and_passed_through_alone() {
    let body =
        br#"{"error":{"message":"prompt 'secret' too long","type":"BadRequestError","code":400}}"#;
    assert_eq!(
        split_error(400, body, 1),
        [MemberError {
            status: 400,
            body: body.to_vec()
        }]
    );
    let e = split_error(400, body, 2);
    assert_eq!(e.len(), 2);
    assert_eq!(
        s(&e[0].body),
        r#"{"error":{"message":"the batched upstream request failed with HTTP 400; its details are withheld because the batch carried other requests","type":"BadRequestError","param":null,"code":400}}"#
    );
    // Types / codes that are not short identifiers are dropped; odd statuses become 502.
    let odd = br#"{"error":{"message":"x","type":"has secret spaces","code":"also secret!"}}"#;
    let e = split_error(503, odd, 3);
    assert!(
        s(&e[2].body).ends_with(r#""type":"server_error","param":null,"code":null}}"#),
        "{}",
        s(&e[2].body)
    );
    assert_eq!(split_error(200, b"garbage", 2)[0].status, 502);
    let e = split_error(
        429,
        br#"{"error":{"type":"rate_limit","code":"rate_limit_exceeded"}}"#,
        2,
    );
    assert!(s(&e[0].body)
        .ends_with(r#""type":"rate_limit","param":null,"code":"rate_limit_exceeded"}}"#));
    assert!(retry_alone(400) && retry_alone(413) && retry_alone(422));
    assert!(!retry_alone(500) && !retry_alone(429) && !retry_alone(404));
}
