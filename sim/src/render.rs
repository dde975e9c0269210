//! Prompt rendering without the engine: vLLM's `POST /v1/chat/completions/render`,
//! `POST /v1/completions/render` and `POST /tokenize`, which a router calls to learn a
//! prompt's token ids before it picks a replica (vllm-router's `cache_aware` policy does
//! for every request to an HTTP worker).
//!
//! Each takes the same body as the call it stands for (the chat or completions request,
//! or vLLM's tokenize request) and tokenizes it exactly as the engine will
//! ([`ChatRequest::prompt`], [`api::PromptInput::prompts`], [`crate::tokens`]): the number of
//! ids is the request's `usage.prompt_tokens`, and the ids are the same on every
//! simulator. Validation is the inference call's, so a render fails (400 / 404) exactly
//! when the call would: bad JSON, unknown model, `max_tokens` < 1, prompt plus output
//! longer than the model, no prompt. Nothing is queued, counted in `/metrics` or subject
//! to the injected faults (error rate, stall); only slow start (503) applies, in the
//! server. Pure functions of the body and the configuration (request ids come from the
//! caller), so they are tested without a socket.

use bytes::Bytes;

use crate::api::{
    self, ApiError, ChatRequest, CompletionRequest, Rendered, RenderedSampling, TokenizeRequest,
};
use crate::config::SimConfig;
use crate::tokens::Prompt;

/// 404 unless `model` (when given) is a served model or adapter.
fn check_model(cfg: &SimConfig, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if !cfg.model.iter().chain(&cfg.lora).any(|x| x == m) => {
            Err(ApiError::unknown_model(m))
        }
        _ => Ok(()),
    }
}

/// Validates like the inference call and returns the output tokens it would generate.
fn validate(
    cfg: &SimConfig,
    model: Option<&str>,
    prompts: &[Prompt],
    max_tokens: Option<i64>,
) -> Result<usize, ApiError> {
    check_model(cfg, model)?;
    let max_tokens = api::max_tokens(max_tokens, cfg.max_tokens_default)?;
    api::check_lengths(prompts, max_tokens, cfg.max_model_len())?;
    Ok(max_tokens)
}

/// `/v1/chat/completions/render`: one `GenerateRequest` object, id `chatcmpl-{id()}`.
pub fn chat(cfg: &SimConfig, body: &[u8], id: impl FnOnce() -> u128) -> Result<Bytes, ApiError> {
    let r: ChatRequest = api::parse(body)?;
    let prompt = r.prompt();
    let max_tokens = validate(
        cfg,
        r.model.as_deref(),
        std::slice::from_ref(&prompt),
        r.max_completion_tokens.or(r.max_tokens),
    )?;
    let stream = r.stream == Some(true);
    Ok(api::to_bytes(&rendered(
        format!("chatcmpl-{:032x}", id()),
        &prompt,
        max_tokens,
        r.model.as_deref(),
        r.stream_options.as_ref().filter(|_| stream),
        stream,
    )))
}

/// One `GenerateRequest` for `prompt` (`stream_options` only when it streams).
fn rendered<'a>(
    request_id: String,
    prompt: &Prompt,
    max_tokens: usize,
    model: Option<&'a str>,
    stream_options: Option<&'a api::StreamOptions>,
    stream: bool,
) -> Rendered<'a> {
    Rendered {
        request_id,
        token_ids: prompt.token_ids(),
        features: None,
        sampling_params: RenderedSampling { n: 1, max_tokens },
        model,
        stream,
        stream_options,
        cache_salt: None,
        priority: 0,
        kv_transfer_params: None,
    }
}

/// `/v1/completions/render`: a list of `GenerateRequest`s, one per prompt, ids
/// `cmpl-{id()}`.
pub fn completions(
    cfg: &SimConfig,
    body: &[u8],
    mut id: impl FnMut() -> u128,
) -> Result<Bytes, ApiError> {
    let r: CompletionRequest = api::parse(body)?;
    let prompts = r.prompt.prompts();
    let max_tokens = validate(cfg, r.model.as_deref(), &prompts, r.max_tokens)?;
    let stream = r.stream == Some(true);
    let rendered: Vec<Rendered<'_>> = prompts
        .iter()
        .map(|p| {
            rendered(
                format!("cmpl-{:032x}", id()),
                p,
                max_tokens,
                r.model.as_deref(),
                r.stream_options.as_ref().filter(|_| stream),
                stream,
            )
        })
        .collect();
    Ok(api::to_bytes(&rendered))
}

/// `/tokenize`: `{count, max_model_len, tokens, token_strs}` (no length check, as in
/// vLLM).
pub fn tokenize(cfg: &SimConfig, body: &[u8]) -> Result<Bytes, ApiError> {
    let r: TokenizeRequest = api::parse(body)?;
    check_model(cfg, r.model.as_deref())?;
    let prompt = r.prompt()?;
    Ok(api::tokenize_response(
        &prompt,
        cfg.max_model_len(),
        r.return_token_strs == Some(true),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

    fn cfg() -> SimConfig {
        SimConfig {
            model: vec!["base".into(), "alias".into()],
            lora: vec!["lora-a".into()],
            num_gpu_blocks: 4,
            block_size: 4,
            max_tokens_default: 3,
            ..SimConfig::default()
        }
    }

    fn json(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn chat_render_has_vllm_generate_request_shape() {
        let body = br#"{"model":"lora-a","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi  there"}]}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let b = chat(&cfg(), body, || 0xab).unwrap();
        // vLLM's field order.
        let text = std::str::from_utf8(&b).unwrap();
        let pos: Vec<usize> = [
            "request_id",
            "token_ids",
            "features",
            "sampling_params",
            "model",
            "stream",
            "stream_options",
            "cache_salt",
            "priority",
            "kv_transfer_params",
        ]
        .iter()
        .map(|k| text.find(&format!("\"{k}\":")).unwrap())
        .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{text}");
        let v = json(&b);
        assert_eq!(v["request_id"], format!("chatcmpl-{:032x}", 0xab));
        let want = Prompt::from_text("system be brief user hi there").token_ids();
        let ids: Vec<u32> = serde_json::from_value(v["token_ids"].clone()).unwrap();
        assert_eq!(ids, want);
        assert!(v["features"].is_null());
        assert_eq!(v["sampling_params"]["max_tokens"], 3);
        assert_eq!(v["sampling_params"]["n"], 1);
        assert_eq!(v["model"], "lora-a");
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["priority"], 0);
        // Not streaming: no stream options; the model is echoed as given (absent = null).
        let v = json(&chat(&cfg(), br#"{"messages":[{"role":"user"}],"stream_options":{"include_usage":true},"max_completion_tokens":2,"max_tokens":9}"#, || 1).unwrap());
        assert_eq!(v["stream"], false);
        assert!(v["stream_options"].is_null());
        assert!(v["model"].is_null());
        assert_eq!(v["sampling_params"]["max_tokens"], 2);
        assert_eq!(v["token_ids"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn completions_render_is_one_item_per_prompt() {
        let mut n = 0u128;
        let b = completions(
            &cfg(),
            br#"{"model":"alias","prompt":["a b","c"],"max_tokens":2}"#,
            || {
                n += 1;
                n
            },
        )
        .unwrap();
        let v = json(&b);
        let items = v.as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["request_id"], format!("cmpl-{:032x}", 1));
        assert_eq!(items[1]["request_id"], format!("cmpl-{:032x}", 2));
        assert_eq!(
            items[1]["token_ids"][0],
            Prompt::from_text("c").token_ids()[0]
        );
        assert_eq!(items[0]["token_ids"].as_array().unwrap().len(), 2);
        assert_eq!(items[0]["sampling_params"]["max_tokens"], 2);
        // Token-id prompts render back to their ids.
        let v = json(&completions(&cfg(), br#"{"prompt":[7,8,9]}"#, || 0).unwrap());
        assert_eq!(v[0]["token_ids"], serde_json::json!([7, 8, 9]));
    }

    #[test]
    fn render_fails_where_the_call_would() {
        let c = cfg();
        let cases: [(&[u8], u16); 6] = [
            (b"{nope", 400),
            (br#"{"prompt":"a","model":"other"}"#, 404),
            (br#"{"prompt":"a","max_tokens":0}"#, 400),
            // 14 prompt tokens + 3 default output tokens > 16 (4 blocks of 4).
            (br#"{"prompt":"a a a a a a a a a a a a a a"}"#, 400),
            (br#"{"prompt":[]}"#, 400),
            (br#"{"messages":[]}"#, 400),
        ];
        for (body, status) in cases {
            let e = completions(&c, body, || 0).unwrap_err();
            assert_eq!(e.status, status, "{}", String::from_utf8_lossy(body));
        }
        let e = chat(&c, br#"{"messages":"x"}"#, || 0).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.starts_with("Invalid request body"));
        let e = chat(&c, br#"{"model":"x","messages":[]}"#, || 0).unwrap_err();
        assert_eq!(e.status, 404);
        assert_eq!(tokenize(&c, b"[").unwrap_err().status, 400);
        assert_eq!(
            tokenize(&c, br#"{"model":"x","prompt":"a"}"#)
                .unwrap_err()
                .status,
            404
        );
    }

    #[test]
    fn tokenize_matches_render_and_reports_words() {
        let c = cfg();
        let t =
            json(&tokenize(&c, br#"{"prompt":"one two 42","return_token_strs":true}"#).unwrap());
        assert_eq!(t["count"], 3);
        assert_eq!(t["max_model_len"], 16);
        assert_eq!(t["token_strs"], serde_json::json!(["one", "two", "42"]));
        assert_eq!(t["tokens"][2], 42);
        let r = json(&completions(&c, br#"{"prompt":"one two 42"}"#, || 0).unwrap());
        assert_eq!(t["tokens"], r[0]["token_ids"]);
        let msgs = r#"[{"role":"user","content":"hi there"}]"#;
        let t = json(&tokenize(&c, format!(r#"{{"messages":{msgs}}}"#).as_bytes()).unwrap());
        assert!(t["token_strs"].is_null());
        let r = json(&chat(&c, format!(r#"{{"messages":{msgs}}}"#).as_bytes(), || 0).unwrap());
        assert_eq!(t["tokens"], r["token_ids"]);
        // No length check for /tokenize.
        let long = format!(r#"{{"prompt":"{}"}}"#, "w ".repeat(40));
        assert_eq!(json(&tokenize(&c, long.as_bytes()).unwrap())["count"], 40);
    }
}
