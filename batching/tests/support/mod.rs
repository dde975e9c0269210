//! A deterministic fake OpenAI server for merge/split tests.
//!
//! `serve(path, body)` answers `/v1/embeddings` and `/v1/completions` the way an
//! OpenAI-compatible server does, as a pure function of the request: every input is
//! answered independently of the others (so a merged call answers each input as
//! its own call would), items carry `index`, and `usage` counts tokens with a
//! byte-level tokenizer (a text input costs its UTF-8 bytes, a token array its
//! length; a completion costs its text's bytes). Numbers are written in unusual
//! forms (`1234e-4`, `-0.50`) to catch any re-serialisation. An input containing
//! `FAIL` makes the whole call fail with 400 and a message that quotes it, like
//! servers that echo the offending prompt.

#![allow(dead_code, clippy::unwrap_used)]

use serde_json::{json, Value};

/// FNV-1a, stable across runs.
fn fnv(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One normalised input: its canonical text and token cost.
struct Input {
    repr: String,
    tokens: u64,
    text: Option<String>,
}

fn inputs(v: &Value) -> Option<Vec<Input>> {
    let text = |s: &str| Input {
        repr: format!("s:{s}"),
        tokens: s.len() as u64,
        text: Some(s.to_string()),
    };
    let toks = |a: &[Value]| Input {
        repr: format!("t:{a:?}"),
        tokens: a.len() as u64,
        text: None,
    };
    match v {
        Value::String(s) => Some(vec![text(s)]),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            Some(a.iter().map(|s| text(s.as_str().unwrap())).collect())
        }
        Value::Array(a) if a.iter().all(Value::is_u64) => Some(vec![toks(a)]),
        Value::Array(a) if a.iter().all(Value::is_array) => {
            Some(a.iter().map(|x| toks(x.as_array().unwrap())).collect())
        }
        _ => None,
    }
}

fn error(status: u16, message: &str) -> (u16, Vec<u8>) {
    let body = json!({"error": {"message": message, "type": "BadRequestError", "param": null, "code": status}});
    (status, serde_json::to_vec(&body).unwrap())
}

/// The request's parameters other than the input, as a hashing seed.
fn params_seed(req: &Value, field: &str) -> u64 {
    let mut m = req.as_object().unwrap().clone();
    m.remove(field);
    // `null` means "the default", as in OpenAI-compatible servers.
    m.retain(|_, v| !v.is_null());
    let mut keys: Vec<_> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
    keys.sort();
    fnv(keys.join("&").as_bytes(), 7)
}

/// Answers one request.
pub fn serve(path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    serve_with(path, body, |bytes| bytes)
}

/// Like [`serve`], with a custom token count for text (`tokenize(bytes)`).
pub fn serve_with(path: &str, body: &[u8], tokenize: impl Fn(u64) -> u64) -> (u16, Vec<u8>) {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return error(400, "invalid JSON");
    };
    let field = if path == "/v1/embeddings" {
        "input"
    } else {
        "prompt"
    };
    let model = req["model"].as_str().unwrap_or("?").to_string();
    let Some(ins) = inputs(&req[field]) else {
        return error(400, "bad input");
    };
    if let Some(bad) = ins.iter().find(|i| i.repr.contains("FAIL")) {
        return error(400, &format!("invalid input {:?}", bad.repr));
    }
    let seed = params_seed(&req, field);
    let cost = |i: &Input| {
        if i.text.is_some() {
            tokenize(i.tokens)
        } else {
            i.tokens
        }
    };
    let prompt_tokens: u64 = ins.iter().map(cost).sum();
    let mut out = String::new();
    if path == "/v1/embeddings" {
        let dims = req["dimensions"].as_u64().unwrap_or(3);
        out.push_str(&format!(
            r#"{{"id":"embd-fake","object":"list","created":1700000000,"model":{},"data":["#,
            Value::String(model)
        ));
        for (j, i) in ins.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let nums: Vec<String> = (0..dims)
                .map(|d| {
                    let h = fnv(i.repr.as_bytes(), seed ^ d);
                    if h % 2 == 0 {
                        format!("{}e-4", h % 10_000)
                    } else {
                        format!("-0.{:02}0", h % 100)
                    }
                })
                .collect();
            out.push_str(&format!(
                r#"{{"index":{j},"object":"embedding","embedding":[{}]}}"#,
                nums.join(",")
            ));
        }
        out.push_str(&format!(
            r#"],"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens},"completion_tokens":0,"prompt_tokens_details":null}}}}"#
        ));
    } else {
        const WORDS: &[&str] = &["alpha", "é", "\"q\"", "line\n", "ß∂", "z", "\\", "tab\t"];
        let mut completion_tokens = 0u64;
        let mut choices = Vec::new();
        for (j, i) in ins.iter().enumerate() {
            let h = fnv(i.repr.as_bytes(), seed);
            let n = (h % 5) as usize;
            let text: String = (0..n)
                .map(|k| WORDS[((h >> (8 * k)) % 8) as usize])
                .collect();
            completion_tokens += tokenize(text.len() as u64);
            choices.push(format!(
                r#"{{"index":{j},"text":{},"logprobs":null,"finish_reason":"length","stop_reason":null}}"#,
                Value::String(text)
            ));
        }
        out.push_str(&format!(
            r#"{{"id":"cmpl-fake","object":"text_completion","created":1700000000,"model":{},"choices":[{}],"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{},"completion_tokens":{completion_tokens}}},"kv_transfer_params":null}}"#,
            Value::String(model),
            choices.join(","),
            prompt_tokens + completion_tokens
        ));
    }
    (200, out.into_bytes())
}
