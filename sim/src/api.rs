//! OpenAI-compatible request parsing and response shapes, as vLLM 0.32 writes them.
//!
//! Requests: `/v1/completions` (`prompt`: string, array of strings, token ids, or arrays
//! of token ids — one choice per prompt; `n` ignored), `/v1/chat/completions` (`messages`
//! with string or text-part content), `/v1/embeddings` (`input` of the same four forms).
//! Unknown fields are ignored, as vLLM does by default.
//!
//! Responses mirror vLLM's field order and nulls: non-streaming bodies carry `usage`
//! (`prompt_tokens`, `total_tokens`, `completion_tokens`, `prompt_tokens_details`);
//! streams are SSE `data: {json}\n\n` chunks (chat: a role chunk, then one `delta.content`
//! per token; completions: one `text` per token), the last token chunk carries
//! `finish_reason`, then an optional usage chunk (`choices: []`), then `data: [DONE]`.
//! Errors are `{"error":{"message","type","param","code"}}`.
//!
//! Rendering (no engine, see [`crate::render`]): `/v1/chat/completions/render` answers
//! one [`Rendered`] (vLLM's `GenerateRequest`: `request_id`, `token_ids`, `features`,
//! `sampling_params`, `model`, `stream`, `stream_options`, `cache_salt`, `priority`,
//! `kv_transfer_params`), `/v1/completions/render` a list of them (one per prompt), and
//! `/tokenize` a [`TokenizeRequest`] → `{count, max_model_len, tokens, token_strs}`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::tokens::{output_word, Prompt};

/// An error answered in OpenAI format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.message`.
    pub message: String,
    /// `error.param`.
    pub param: Option<&'static str>,
}

impl ApiError {
    /// 400 `BadRequestError`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            kind: "BadRequestError",
            message: message.into(),
            param: None,
        }
    }

    /// 404 for a model this server does not serve (vLLM's wording).
    pub fn unknown_model(model: &str) -> Self {
        Self {
            status: 404,
            kind: "NotFoundError",
            message: format!("The model `{model}` does not exist."),
            param: Some("model"),
        }
    }

    /// 500 injected by the `error_rate` fault.
    pub fn injected() -> Self {
        Self {
            status: 500,
            kind: "InternalServerError",
            message: "simulated internal server error (shardgate-sim error_rate fault)".into(),
            param: None,
        }
    }

    /// 503 while the simulated model loads.
    pub fn loading() -> Self {
        Self {
            status: 503,
            kind: "ServiceUnavailableError",
            message: "The model is still loading (shardgate-sim slow start).".into(),
            param: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: u16,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        to_bytes(&Outer {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: self.status,
            },
        })
    }
}

/// Serializes to JSON bytes (serialization of these plain structs cannot fail).
pub fn to_bytes<T: Serialize>(v: &T) -> Bytes {
    serde_json::to_vec(v).map(Bytes::from).unwrap_or_default()
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StreamOptions {
    /// Emit a usage chunk before `[DONE]`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// A prompt or embedding input in any of its four forms.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One token-id sequence.
    Ids(Vec<u64>),
    /// Several token-id sequences.
    IdBatches(Vec<Vec<u64>>),
}

impl PromptInput {
    /// The tokenized prompts (one per choice / embedding).
    pub fn prompts(&self) -> Vec<Prompt> {
        match self {
            Self::Text(t) => vec![Prompt::from_text(t)],
            Self::Texts(ts) => ts.iter().map(|t| Prompt::from_text(t)).collect(),
            Self::Ids(ids) => vec![Prompt::from_ids(ids)],
            Self::IdBatches(b) => b.iter().map(|ids| Prompt::from_ids(ids)).collect(),
        }
    }
}

/// `POST /v1/completions` body (fields the simulator uses).
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Requested model; absent = the base model.
    #[serde(default)]
    pub model: Option<String>,
    /// The prompt(s).
    pub prompt: PromptInput,
    /// Output tokens.
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// Stream SSE.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Stream options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// Chat message content: a string or a list of parts (text parts are used).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts; only `text` is read.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// Text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// Role (one token of the prompt).
    pub role: String,
    /// Content (its words are tokens of the prompt).
    #[serde(default)]
    pub content: Option<MessageContent>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Requested model; absent = the base model.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Output tokens.
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// Output tokens (newer name; wins over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    /// Stream SSE.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Stream options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

impl ChatRequest {
    /// The prompt: per message, the role then the content's words.
    pub fn prompt(&self) -> Prompt {
        chat_prompt(&self.messages)
    }
}

/// A conversation's prompt: per message, the role then the content's words.
pub fn chat_prompt(messages: &[ChatMessage]) -> Prompt {
    let mut p = Prompt::default();
    for m in messages {
        p.push_word(&m.role);
        match &m.content {
            Some(MessageContent::Text(t)) => p.push_text(t),
            Some(MessageContent::Parts(parts)) => {
                for t in parts.iter().filter_map(|x| x.text.as_deref()) {
                    p.push_text(t);
                }
            }
            None => {}
        }
    }
    p
}

/// `POST /tokenize` body: vLLM's completion form (`prompt`, wins when both are given)
/// or chat form (`messages`). The chat template flags (`add_generation_prompt`, …) are
/// accepted and ignored: the simulator's chat prompt has no template tokens.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    /// Requested model; absent = the base model.
    #[serde(default)]
    pub model: Option<String>,
    /// Completion form: one text (or, beyond vLLM, one token-id sequence).
    #[serde(default)]
    pub prompt: Option<PromptInput>,
    /// Chat form.
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// Also return each token's text.
    #[serde(default)]
    pub return_token_strs: Option<bool>,
}

impl TokenizeRequest {
    /// The one prompt to tokenize; 400 without `prompt` or `messages`, or with several
    /// prompts.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        match (&self.prompt, &self.messages) {
            (Some(PromptInput::Text(t)), _) => Ok(Prompt::from_text(t)),
            (Some(PromptInput::Ids(ids)), _) => Ok(Prompt::from_ids(ids)),
            (Some(_), _) => Err(ApiError::bad_request(
                "`prompt` must be one string to tokenize, not a list of prompts.",
            )),
            (None, Some(m)) => Ok(chat_prompt(m)),
            (None, None) => Err(ApiError::bad_request(
                "Invalid request body: either `prompt` or `messages` is required.",
            )),
        }
    }
}

/// `POST /v1/embeddings` body.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    /// Requested model; absent = the base model.
    #[serde(default)]
    pub model: Option<String>,
    /// Input(s).
    pub input: PromptInput,
}

/// Output tokens of a request: `requested`, or `default` when absent; 400 below 1.
pub fn max_tokens(requested: Option<i64>, default: usize) -> Result<usize, ApiError> {
    match requested {
        None => Ok(default),
        Some(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => Err(ApiError::bad_request(format!(
            "max_tokens must be at least 1, got {n}."
        ))),
    }
}

/// 400 (vLLM's wording) unless there is a prompt and every prompt plus `max_tokens`
/// fits `limit` tokens.
pub fn check_lengths(prompts: &[Prompt], max_tokens: usize, limit: usize) -> Result<(), ApiError> {
    if prompts.is_empty() {
        return Err(ApiError::bad_request(
            "The prompt / input must not be empty.",
        ));
    }
    for p in prompts {
        let asked = p.len().saturating_add(max_tokens);
        if asked > limit {
            return Err(ApiError::bad_request(format!(
                "This model's maximum context length is {limit} tokens. However, you requested {asked} tokens ({} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
                p.len()
            )));
        }
    }
    Ok(())
}

/// Parses a JSON body, mapping errors to 400.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt plus completion tokens.
    pub total_tokens: usize,
    /// Completion tokens.
    pub completion_tokens: usize,
    /// Always null (vLLM without `--enable-prompt-tokens-details`).
    pub prompt_tokens_details: Option<()>,
}

impl Usage {
    /// Usage from the two counts.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            completion_tokens,
            prompt_tokens_details: None,
        }
    }
}

impl std::ops::Add for Usage {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self::new(
            self.prompt_tokens + o.prompt_tokens,
            self.completion_tokens + o.completion_tokens,
        )
    }
}

/// `sampling_params` of a [`Rendered`] prompt, reduced to what the simulator models.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RenderedSampling {
    /// Choices per prompt (always 1: the simulator ignores `n`).
    pub n: u32,
    /// Output tokens the request would generate (`max_tokens`, or the server default).
    pub max_tokens: usize,
}

/// One rendered prompt: vLLM's `GenerateRequest`, field for field (multimodal
/// `features`, `cache_salt` and `kv_transfer_params` always null, `priority` 0).
#[derive(Debug, Clone, Serialize)]
pub struct Rendered<'a> {
    /// `chatcmpl-…` / `cmpl-…`.
    pub request_id: String,
    /// The prompt's token ids ([`Prompt::token_ids`]).
    pub token_ids: Vec<u32>,
    /// Multimodal features (none).
    pub features: Option<()>,
    /// Sampling parameters.
    pub sampling_params: RenderedSampling,
    /// The requested model, as given (null when absent).
    pub model: Option<&'a str>,
    /// Whether the request streams.
    pub stream: bool,
    /// The request's `stream_options` when it streams.
    pub stream_options: Option<&'a StreamOptions>,
    /// Prefix-cache salt (not modelled).
    pub cache_salt: Option<()>,
    /// Scheduling priority.
    pub priority: i32,
    /// Disaggregated-serving parameters (none).
    pub kv_transfer_params: Option<()>,
}

/// `/tokenize` response body: `token_strs` only when asked for.
pub fn tokenize_response(prompt: &Prompt, max_model_len: usize, token_strs: bool) -> Bytes {
    #[derive(Serialize)]
    struct Resp<'a> {
        count: usize,
        max_model_len: usize,
        tokens: Vec<u32>,
        token_strs: Option<&'a [String]>,
    }
    to_bytes(&Resp {
        count: prompt.len(),
        max_model_len,
        tokens: prompt.token_ids(),
        token_strs: token_strs.then_some(prompt.words.as_slice()),
    })
}

/// Which OpenAI endpoint a response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/completions`.
    Completion,
    /// `/v1/chat/completions`.
    Chat,
}

/// Identity of one response: id, creation time, echoed model, output seed.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// Endpoint.
    pub kind: Kind,
    /// `id` (`cmpl-…` / `chatcmpl-…`).
    pub id: String,
    /// `created`, unix seconds.
    pub created: u64,
    /// Echoed model name.
    pub model: String,
    /// Output seed (`--seed`).
    pub seed: u64,
    /// Prompt fingerprint per choice.
    pub fingerprints: Vec<u64>,
}

impl ResponseMeta {
    /// The text of output token `index` of `choice` (with its leading space, except for
    /// the first chat token).
    pub fn token_text(&self, choice: u32, index: u32) -> String {
        let fp = self
            .fingerprints
            .get(choice as usize)
            .copied()
            .unwrap_or_default();
        let w = output_word(self.seed, fp, choice, index);
        if self.kind == Kind::Chat && index == 0 {
            w.to_owned()
        } else {
            format!(" {w}")
        }
    }

    /// The full text of `count` output tokens of `choice`.
    pub fn text(&self, choice: u32, count: usize) -> String {
        (0..count)
            .map(|i| self.token_text(choice, u32::try_from(i).unwrap_or(u32::MAX)))
            .collect()
    }

    /// Non-streaming body; `completions[i]` = output tokens of choice `i`.
    pub fn full_response(&self, completions: &[usize], usage: Usage) -> Bytes {
        match self.kind {
            Kind::Completion => {
                #[derive(Serialize)]
                struct Choice {
                    index: usize,
                    text: String,
                    logprobs: Option<()>,
                    finish_reason: &'static str,
                    stop_reason: Option<()>,
                    prompt_logprobs: Option<()>,
                }
                #[derive(Serialize)]
                struct Resp<'a> {
                    id: &'a str,
                    object: &'static str,
                    created: u64,
                    model: &'a str,
                    choices: Vec<Choice>,
                    usage: Usage,
                    kv_transfer_params: Option<()>,
                }
                to_bytes(&Resp {
                    id: &self.id,
                    object: "text_completion",
                    created: self.created,
                    model: &self.model,
                    choices: completions
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| Choice {
                            index: i,
                            text: self.text(choice_u32(i), n),
                            logprobs: None,
                            finish_reason: "length",
                            stop_reason: None,
                            prompt_logprobs: None,
                        })
                        .collect(),
                    usage,
                    kv_transfer_params: None,
                })
            }
            Kind::Chat => {
                #[derive(Serialize)]
                struct Message {
                    role: &'static str,
                    reasoning_content: Option<()>,
                    content: String,
                    tool_calls: [(); 0],
                }
                #[derive(Serialize)]
                struct Choice {
                    index: usize,
                    message: Message,
                    logprobs: Option<()>,
                    finish_reason: &'static str,
                    stop_reason: Option<()>,
                }
                #[derive(Serialize)]
                struct Resp<'a> {
                    id: &'a str,
                    object: &'static str,
                    created: u64,
                    model: &'a str,
                    choices: Vec<Choice>,
                    usage: Usage,
                    prompt_logprobs: Option<()>,
                    kv_transfer_params: Option<()>,
                }
                to_bytes(&Resp {
                    id: &self.id,
                    object: "chat.completion",
                    created: self.created,
                    model: &self.model,
                    choices: completions
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| Choice {
                            index: i,
                            message: Message {
                                role: "assistant",
                                reasoning_content: None,
                                content: self.text(choice_u32(i), n),
                                tool_calls: [],
                            },
                            logprobs: None,
                            finish_reason: "length",
                            stop_reason: None,
                        })
                        .collect(),
                    usage,
                    prompt_logprobs: None,
                    kv_transfer_params: None,
                })
            }
        }
    }

    /// SSE event for output token `index` of `choice`; `last` adds `finish_reason`.
    pub fn token_chunk(&self, choice: u32, index: u32, last: bool) -> Bytes {
        let text = self.token_text(choice, index);
        let finish = last.then_some("length");
        match self.kind {
            Kind::Completion => {
                #[derive(Serialize)]
                struct Choice<'a> {
                    index: u32,
                    text: &'a str,
                    logprobs: Option<()>,
                    finish_reason: Option<&'static str>,
                    stop_reason: Option<()>,
                }
                self.sse(&[Choice {
                    index: choice,
                    text: &text,
                    logprobs: None,
                    finish_reason: finish,
                    stop_reason: None,
                }])
            }
            Kind::Chat => self.chat_chunk(choice, None, &text, finish),
        }
    }

    /// SSE event opening a chat choice: `delta: {role: assistant, content: ""}`.
    pub fn role_chunk(&self, choice: u32) -> Bytes {
        self.chat_chunk(choice, Some("assistant"), "", None)
    }

    fn chat_chunk(
        &self,
        choice: u32,
        role: Option<&'static str>,
        content: &str,
        finish: Option<&'static str>,
    ) -> Bytes {
        #[derive(Serialize)]
        struct Delta<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            role: Option<&'static str>,
            content: &'a str,
        }
        #[derive(Serialize)]
        struct Choice<'a> {
            index: u32,
            delta: Delta<'a>,
            logprobs: Option<()>,
            finish_reason: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            stop_reason: Option<Option<()>>,
        }
        self.sse(&[Choice {
            index: choice,
            delta: Delta { role, content },
            logprobs: None,
            finish_reason: finish,
            stop_reason: finish.map(|_| None),
        }])
    }

    /// SSE usage event (`choices: []`).
    pub fn usage_chunk(&self, usage: Usage) -> Bytes {
        #[derive(Serialize)]
        struct Chunk<'a> {
            id: &'a str,
            object: &'static str,
            created: u64,
            model: &'a str,
            choices: [(); 0],
            usage: Usage,
        }
        sse_event(&to_bytes(&Chunk {
            id: &self.id,
            object: self.chunk_object(),
            created: self.created,
            model: &self.model,
            choices: [],
            usage,
        }))
    }

    fn chunk_object(&self) -> &'static str {
        match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        }
    }

    fn sse<C: Serialize>(&self, choices: &[C]) -> Bytes {
        #[derive(Serialize)]
        struct Chunk<'a, C> {
            id: &'a str,
            object: &'static str,
            created: u64,
            model: &'a str,
            choices: &'a [C],
        }
        sse_event(&to_bytes(&Chunk {
            id: &self.id,
            object: self.chunk_object(),
            created: self.created,
            model: &self.model,
            choices,
        }))
    }
}

fn choice_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Wraps a JSON payload as `data: …\n\n`.
pub fn sse_event(json: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(json.len() + 8);
    v.extend_from_slice(b"data: ");
    v.extend_from_slice(json);
    v.extend_from_slice(b"\n\n");
    Bytes::from(v)
}

/// The stream terminator.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// `/v1/embeddings` response body.
pub fn embeddings_response(
    id: &str,
    created: u64,
    model: &str,
    vectors: &[Vec<f32>],
    usage: Usage,
) -> Bytes {
    #[derive(Serialize)]
    struct Item<'a> {
        index: usize,
        object: &'static str,
        embedding: &'a [f32],
    }
    #[derive(Serialize)]
    struct Resp<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        data: Vec<Item<'a>>,
        usage: Usage,
    }
    to_bytes(&Resp {
        id,
        object: "list",
        created,
        model,
        data: vectors
            .iter()
            .enumerate()
            .map(|(index, v)| Item {
                index,
                object: "embedding",
                embedding: v,
            })
            .collect(),
        usage,
    })
}

/// `/v1/models` response body: base models (first is the root of the others) then LoRA
/// adapters (parent = the base model).
pub fn models_response(
    models: &[String],
    loras: &[String],
    created: u64,
    max_model_len: usize,
) -> Bytes {
    #[derive(Serialize)]
    struct Permission {
        id: String,
        object: &'static str,
        created: u64,
        allow_create_engine: bool,
        allow_sampling: bool,
        allow_logprobs: bool,
        allow_search_indices: bool,
        allow_view: bool,
        allow_fine_tuning: bool,
        organization: &'static str,
        group: Option<()>,
        is_blocking: bool,
    }
    #[derive(Serialize)]
    struct Card<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
        root: &'a str,
        parent: Option<&'a str>,
        max_model_len: Option<usize>,
        permission: Vec<Permission>,
    }
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Card<'a>>,
    }
    let base = models.first().map(String::as_str).unwrap_or_default();
    let perm = |i: usize| Permission {
        id: format!("modelperm-{created:x}{i:04x}"),
        object: "model_permission",
        created,
        allow_create_engine: false,
        allow_sampling: true,
        allow_logprobs: true,
        allow_search_indices: false,
        allow_view: true,
        allow_fine_tuning: false,
        organization: "*",
        group: None,
        is_blocking: false,
    };
    let mut data: Vec<Card<'_>> = models
        .iter()
        .enumerate()
        .map(|(i, m)| Card {
            id: m,
            object: "model",
            created,
            owned_by: "vllm",
            root: base,
            parent: None,
            max_model_len: Some(max_model_len),
            permission: vec![perm(i)],
        })
        .collect();
    data.extend(loras.iter().enumerate().map(|(i, l)| Card {
        id: l,
        object: "model",
        created,
        owned_by: "vllm",
        root: l,
        parent: Some(base),
        max_model_len: None,
        permission: vec![perm(models.len() + i)],
    }));
    to_bytes(&List {
        object: "list",
        data,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn meta(kind: Kind) -> ResponseMeta {
        ResponseMeta {
            kind,
            id: "x".into(),
            created: 1,
            model: "m".into(),
            seed: 0,
            fingerprints: vec![7],
        }
    }

    #[test]
    fn prompt_forms_parse() {
        let r: CompletionRequest = parse(br#"{"prompt":["a b","c"],"max_tokens":3}"#).unwrap();
        assert_eq!(r.prompt.prompts().len(), 2);
        let r: CompletionRequest = parse(br#"{"prompt":[1,2,3]}"#).unwrap();
        assert_eq!(r.prompt.prompts()[0].len(), 3);
        let r: EmbeddingRequest = parse(br#"{"input":[[1,2],[3]]}"#).unwrap();
        assert_eq!(r.input.prompts().len(), 2);
        let e = parse::<CompletionRequest>(b"{nope").unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn chat_prompt_is_role_plus_content() {
        let r: ChatRequest = parse(
            br#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi there"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.prompt().words,
            vec!["system", "be", "brief", "user", "hi", "there"]
        );
    }

    #[test]
    fn tokenize_request_forms() {
        let r: TokenizeRequest = parse(br#"{"prompt":"a b  c"}"#).unwrap();
        assert_eq!(r.prompt().unwrap().len(), 3);
        let r: TokenizeRequest = parse(
            br#"{"messages":[{"role":"user","content":"hi there"}],"add_generation_prompt":true}"#,
        )
        .unwrap();
        assert_eq!(r.prompt().unwrap().words, vec!["user", "hi", "there"]);
        let r: TokenizeRequest = parse(br#"{"prompt":"x","messages":[]}"#).unwrap();
        assert_eq!(r.prompt().unwrap().words, vec!["x"]);
        let r: TokenizeRequest = parse(br#"{"prompt":[4,5]}"#).unwrap();
        assert_eq!(r.prompt().unwrap().token_ids(), vec![4, 5]);
        for bad in [&br#"{"prompt":["a","b"]}"#[..], br#"{"model":"m"}"#] {
            let r: TokenizeRequest = parse(bad).unwrap();
            assert_eq!(r.prompt().unwrap_err().status, 400);
        }
    }

    #[test]
    fn limits_and_max_tokens() {
        assert_eq!(max_tokens(None, 7), Ok(7));
        assert_eq!(max_tokens(Some(3), 7), Ok(3));
        assert_eq!(max_tokens(Some(0), 7).unwrap_err().status, 400);
        let p = Prompt::from_text("a b c");
        assert!(check_lengths(std::slice::from_ref(&p), 2, 5).is_ok());
        assert_eq!(check_lengths(&[p], 3, 5).unwrap_err().status, 400);
        assert_eq!(check_lengths(&[], 1, 5).unwrap_err().status, 400);
    }

    #[test]
    fn chunks_have_vllm_shape() {
        let m = meta(Kind::Chat);
        let role = m.role_chunk(0);
        assert!(role.starts_with(b"data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\""));
        assert!(std::str::from_utf8(&role).unwrap().contains(
            r#""delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}"#
        ));
        let last = m.token_chunk(0, 3, true);
        let v: serde_json::Value = serde_json::from_slice(&last[6..last.len() - 2]).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert!(v["choices"][0]["stop_reason"].is_null());
        let u = meta(Kind::Completion).usage_chunk(Usage::new(3, 4));
        let v: serde_json::Value = serde_json::from_slice(&u[6..u.len() - 2]).unwrap();
        assert_eq!(v["usage"]["total_tokens"], 7);
        assert_eq!(v["choices"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn error_body_matches_vllm() {
        let b = ApiError::unknown_model("x").body();
        assert_eq!(
            &b[..],
            br#"{"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":"model","code":404}}"#
        );
    }
}
