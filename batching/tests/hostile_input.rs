//! Hostile bodies never panic `classify`, `merge`, `split` or `split_error`: random
//! bytes, and valid requests / responses with bytes flipped, cut or inserted (the
//! poor man's fuzz target for the merge/split parsers).

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use shardgate_batching::merge::{classify, merge, split, split_error};

const REQUESTS: &[&str] = &[
    r#"{"model":"m","input":["a","b\u00e9"],"dimensions":3}"#,
    r#"{"model":"m","prompt":[[1,2],[3]],"max_tokens":4,"stop":{"x":[1,{"y":null}]}}"#,
    r#"{"model":"m","prompt":"p","n":1,"stream":false}"#,
];

const RESPONSES: &[&str] = &[
    r#"{"id":"x","data":[{"index":1,"embedding":[1e-3]},{"index":0,"embedding":[2]},{"index":2}],"usage":{"prompt_tokens":5,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":1}}}"#,
    r#"{"id":"x","choices":[{"index":0,"text":"a\n"},{"index":2,"text":""},{"index":1,"text":"é"}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":9}}"#,
    r#"{"error":{"message":"m","type":"t","code":"c"}}"#,
];

fn mutate(base: &str, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut b = base.as_bytes().to_vec();
    for &(at, kind, byte) in edits {
        if b.is_empty() {
            break;
        }
        let at = at % b.len();
        match kind % 3 {
            0 => b[at] = byte,
            1 => {
                b.remove(at);
            }
            _ => b.insert(at, byte),
        }
    }
    b
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec(
        (
            any::<usize>(),
            any::<u8>(),
            prop_oneof![
                Just(b'"'),
                Just(b'['),
                Just(b'{'),
                Just(b'\\'),
                Just(b'9'),
                any::<u8>()
            ],
        ),
        0..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        for path in ["/v1/embeddings", "/v1/completions"] {
            let _ = classify(path, &bytes);
        }
        let _ = split_error(400, &bytes, 3);
    }

    #[test]
    fn mutated_bodies_never_panic(
        req in 0..REQUESTS.len(),
        resp in 0..RESPONSES.len(),
        e1 in edits(),
        e2 in edits(),
    ) {
        let path = if REQUESTS[req].contains("\"input\"") { "/v1/embeddings" } else { "/v1/completions" };
        let good = REQUESTS[req].as_bytes();
        let bad = mutate(REQUESTS[req], &e1);
        let key = classify(path, good).unwrap().unwrap().key;
        let _ = classify(path, &bad);
        // A mutated member either merges (it still has the key) or is refused.
        let _ = merge(&key, &[good, &bad]);
        let merged = merge(&key, &[good, good]).unwrap();
        let body = mutate(RESPONSES[resp], &e2);
        if let Ok(parts) = split(&body, &merged.plan) {
            prop_assert_eq!(parts.len(), 2);
            for p in parts {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&p).is_ok());
            }
        }
        for e in split_error(500, &body, 2) {
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&e.body).is_ok());
        }
    }
}
