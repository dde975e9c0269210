//! Merge compatible OpenAI requests into one upstream call; split the answer back.
//!
//! # What merges
//! `POST /v1/embeddings` (`input`) and non-streaming `POST /v1/completions`
//! (`prompt`), when the endpoint, the `model`, the input form and **every other
//! parameter** are equal ([`BatchKey`]). Input forms:
//! - *text*: a string, or an array of strings;
//! - *tokens*: one token array (`[1,2,3]`, one input), or an array of token arrays.
//!
//! Text and token inputs never share a batch (the API cannot mix them in one array).
//! [`classify`] answers `Ok(None)` (send alone) for anything else: another path (a
//! query string included), no string `model`, an empty input, an empty string or
//! token array, a token outside `u32`, embeddings with `messages`, and completions
//! with `stream` (other than `false`/`null`), `n` or `best_of` (other than `1`/
//! `null`), `echo` (other than `false`/`null`), `logprobs`, `prompt_logprobs` or
//! `prompt_embeds` (non-`null`): those answers are per request, or cannot be told
//! apart. Parameters compare by canonical JSON (object keys sorted, whitespace
//! dropped, `null` treated as absent), so `{"a":1,"b":2}` matches `{"b":2, "a":1}`
//! but `1` does not match `1.0`. Invalid JSON or duplicate keys are an `Err`: send
//! the request alone and let the server answer it.
//!
//! # Byte exactness
//! The merged request is the first member's top-level object with its input
//! replaced by the concatenation of every member's inputs; every other value keeps
//! the first member's bytes (all members' are equal in meaning). [`split`] keeps each
//! response value's bytes (embedding vectors, texts, ids, numbers) and rewrites only
//! `index` and `usage`; the objects it rebuilds (top level, `usage`, each item) come
//! out compact. A batch of one passes through untouched both ways.
//!
//! # Split rules
//! - Items (`data[]` / `choices[]`) go back by their `index` (with `n == 1` a
//!   completion choice's index is its prompt's index), sorted, re-indexed `0..`; the
//!   response must hold each merged index exactly once, or nothing is returned
//!   ([`SplitError`]): a member never sees another member's items.
//! - Top-level scalars (`id`, `object`, `created`, `model`, …) are copied; an
//!   unknown top-level array or object is a [`SplitError`] (it could hold
//!   per-input data).
//! - **Usage** totals add up exactly over the members (largest-remainder
//!   apportionment; ties to the earlier member): `prompt_tokens` in proportion to
//!   each member's input size (tokens for token inputs, UTF-8 bytes for text — exact
//!   for token inputs, an estimate for text when the server does not report per-input
//!   usage), `completion_tokens` in proportion to the UTF-8 bytes of each member's
//!   choice texts (embeddings: like prompts), `total_tokens` = the member's prompt +
//!   completion (+ its share of any excess). Other integers in `usage` (and in its
//!   `*_details` objects) follow the prompt share (`completion*` keys: the
//!   completion share); other scalars are copied. All-zero weights split evenly.
//! - **Errors** for the merged call ([`split_error`]): every member gets the same
//!   status and an OpenAI error body that keeps only the upstream `type` and `code`
//!   (if short identifiers) — never the message, which may quote another member's
//!   input. [`retry_alone`] says when a member should rather be resent by itself
//!   (400, 413, 422: one member's input may have failed the whole batch).

use std::borrow::Cow;
use std::ops::Range;

use serde_json::value::RawValue;
use shardgate_http::write::{openai_error_json_code, ErrorCode};
use thiserror::Error;

use crate::json::{
    canonical, decode_str, first_byte, is_null, write_object, write_str, Piece, RawObject,
};

/// A batchable endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/completions`.
    Completions,
}

impl Endpoint {
    /// The endpoint at `path` (exact match, no query string).
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/completions" => Some(Endpoint::Completions),
            _ => None,
        }
    }

    /// Its path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Completions => "/v1/completions",
        }
    }

    fn input_field(self) -> &'static str {
        match self {
            Endpoint::Embeddings => "input",
            Endpoint::Completions => "prompt",
        }
    }

    fn items_field(self) -> &'static str {
        match self {
            Endpoint::Embeddings => "data",
            Endpoint::Completions => "choices",
        }
    }
}

/// How a request writes its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputForm {
    /// A string or an array of strings.
    Text,
    /// A token array or an array of token arrays.
    Tokens,
}

/// Everything that must be equal for two requests to merge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchKey {
    endpoint: Endpoint,
    form: InputForm,
    model: String,
    params: String,
}

impl BatchKey {
    /// The endpoint.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The input form.
    pub fn form(&self) -> InputForm {
        self.form
    }

    /// The `model`.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Canonical JSON of every other parameter (sorted `key:value` pairs).
    pub fn params(&self) -> &str {
        &self.params
    }
}

/// A mergeable request: its key and its number of inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batchable {
    /// Its batch key.
    pub key: BatchKey,
    /// Inputs (strings / token arrays) it carries; ≥ 1.
    pub inputs: u32,
}

/// Why requests could not be merged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MergeError {
    /// A body is not a JSON object (or has duplicate keys): send it alone.
    #[error("member {member}: invalid JSON: {detail}")]
    Json {
        /// Member position.
        member: usize,
        /// serde_json's message.
        detail: String,
    },
    /// A member is not mergeable at all.
    #[error("member {member} is not mergeable")]
    NotMergeable {
        /// Member position.
        member: usize,
    },
    /// A member's key differs from the batch's (a caller bug).
    #[error("member {member} has a different batch key")]
    KeyMismatch {
        /// Member position.
        member: usize,
    },
    /// No members.
    #[error("no requests to merge")]
    Empty,
    /// More than `u32::MAX` inputs.
    #[error("too many inputs")]
    TooLarge,
}

/// Why a merged response could not be split (answer 502 to every member).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SplitError {
    /// Not a JSON object (or not the expected shape).
    #[error("invalid JSON in the merged response: {0}")]
    Json(String),
    /// A required field is missing.
    #[error("merged response has no `{0}`")]
    Missing(&'static str),
    /// Item count differs from the merged input count.
    #[error("merged response has {found} items for {expected} inputs")]
    CountMismatch {
        /// Inputs sent.
        expected: usize,
        /// Items received.
        found: usize,
    },
    /// An item has no integer `index`, or one out of range, or a repeated one.
    #[error("merged response item {position} has a missing, out-of-range or repeated index")]
    BadIndex {
        /// Position in the response array.
        position: usize,
    },
    /// A top-level field that could carry per-input data.
    #[error("merged response has an unexpected field `{0}`")]
    UnexpectedField(String),
    /// `usage` is not understood.
    #[error("merged response has an invalid usage field `{0}`")]
    BadUsage(String),
}

/// What [`split`] needs to know about a merged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPlan {
    endpoint: Endpoint,
    spans: Vec<Range<usize>>,
    prompt_weights: Vec<u64>,
}

impl SplitPlan {
    /// Merged input positions of each member, in member order.
    pub fn spans(&self) -> &[Range<usize>] {
        &self.spans
    }

    /// Number of members.
    pub fn members(&self) -> usize {
        self.spans.len()
    }

    /// Number of merged inputs.
    pub fn inputs(&self) -> usize {
        self.spans.last().map_or(0, |s| s.end)
    }

    /// The endpoint.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }
}

/// A merged request body and how to split its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The upstream request body (same path as the members').
    pub body: Vec<u8>,
    /// Member spans and usage weights, for [`split`].
    pub plan: SplitPlan,
}

/// One member's share of an error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberError {
    /// HTTP status.
    pub status: u16,
    /// OpenAI-style error body.
    pub body: Vec<u8>,
}

struct Analysis<'a> {
    key: BatchKey,
    obj: RawObject<'a>,
    /// Raw elements to put in the merged array, with their size (tokens / bytes).
    inputs: Vec<(&'a str, u64)>,
}

/// The batch key and input count of a request, or `None` when it must go alone.
pub fn classify(path: &str, body: &[u8]) -> Result<Option<Batchable>, MergeError> {
    let Some(endpoint) = Endpoint::from_path(path) else {
        return Ok(None);
    };
    let Some(a) = analyze(endpoint, body, 0)? else {
        return Ok(None);
    };
    let Ok(inputs) = u32::try_from(a.inputs.len()) else {
        return Ok(None);
    };
    Ok(Some(Batchable { key: a.key, inputs }))
}

/// The batch key of a request, or `None` when it must go alone.
pub fn batch_key(path: &str, body: &[u8]) -> Result<Option<BatchKey>, MergeError> {
    Ok(classify(path, body)?.map(|b| b.key))
}

fn json_err(member: usize) -> impl Fn(serde_json::Error) -> MergeError {
    move |e| MergeError::Json {
        member,
        detail: e.to_string(),
    }
}

fn analyze(
    endpoint: Endpoint,
    body: &[u8],
    member: usize,
) -> Result<Option<Analysis<'_>>, MergeError> {
    let obj = RawObject::parse(body).map_err(json_err(member))?;
    let Some(model) = obj.get("model") else {
        return Ok(None);
    };
    let Some(model) = decode_str(model) else {
        return Ok(None);
    };
    let field = endpoint.input_field();
    let Some(input) = obj.get(field) else {
        return Ok(None);
    };
    let Some((form, inputs)) = read_inputs(input) else {
        return Ok(None);
    };
    if !mergeable_params(endpoint, &obj) {
        return Ok(None);
    }
    let mut params: Vec<(&str, &RawValue)> = obj
        .entries
        .iter()
        .filter(|(k, v)| k != field && k != "model" && !is_null(v))
        .map(|(k, v)| (k.as_ref(), *v))
        .collect();
    params.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut canon = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            canon.push(',');
        }
        let mut key = Vec::new();
        write_str(&mut key, k);
        canon.push_str(&String::from_utf8_lossy(&key));
        canon.push(':');
        canonical(v, &mut canon).map_err(json_err(member))?;
    }
    Ok(Some(Analysis {
        key: BatchKey {
            endpoint,
            form,
            model: model.into_owned(),
            params: canon,
        },
        inputs,
        obj,
    }))
}

/// Per-request answers that a merged call cannot reproduce.
fn mergeable_params(endpoint: Endpoint, obj: &RawObject<'_>) -> bool {
    let absent = |k: &str| obj.get(k).is_none_or(is_null);
    let absent_or = |k: &str, ok: &str| obj.get(k).is_none_or(|v| is_null(v) || v.get() == ok);
    match endpoint {
        Endpoint::Embeddings => absent("messages"),
        Endpoint::Completions => {
            absent_or("stream", "false")
                && absent_or("n", "1")
                && absent_or("best_of", "1")
                && absent_or("echo", "false")
                && absent("logprobs")
                && absent("prompt_logprobs")
                && absent("prompt_embeds")
        }
    }
}

fn token_count(raw: &RawValue) -> Option<u64> {
    let tokens: Vec<u32> = serde_json::from_str(raw.get()).ok()?;
    if tokens.is_empty() {
        return None;
    }
    Some(tokens.len() as u64)
}

fn text_size(raw: &RawValue) -> Option<u64> {
    let s = decode_str(raw)?;
    if s.is_empty() {
        return None;
    }
    Some(s.len() as u64)
}

/// The input's form and its elements as they go into the merged array.
fn read_inputs(raw: &RawValue) -> Option<(InputForm, Vec<(&str, u64)>)> {
    match first_byte(raw) {
        b'"' => Some((InputForm::Text, vec![(raw.get(), text_size(raw)?)])),
        b'[' => {
            let elems: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
            let first = elems.first()?;
            match first_byte(first) {
                b'"' => {
                    let v = elems
                        .iter()
                        .map(|e| Some((e.get(), text_size(e)?)))
                        .collect::<Option<Vec<_>>>()?;
                    Some((InputForm::Text, v))
                }
                b'0'..=b'9' => Some((InputForm::Tokens, vec![(raw.get(), token_count(raw)?)])),
                b'[' => {
                    let v = elems
                        .iter()
                        .map(|e| Some((e.get(), token_count(e)?)))
                        .collect::<Option<Vec<_>>>()?;
                    Some((InputForm::Tokens, v))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Merges requests that share `key` (in order) into one body.
///
/// Every member is re-checked against `key`; a batch of one is passed through
/// unchanged.
pub fn merge(key: &BatchKey, items: &[&[u8]]) -> Result<Merged, MergeError> {
    if items.is_empty() {
        return Err(MergeError::Empty);
    }
    let mut analyses = Vec::with_capacity(items.len());
    for (i, body) in items.iter().enumerate() {
        let Some(a) = analyze(key.endpoint, body, i)? else {
            return Err(MergeError::NotMergeable { member: i });
        };
        if a.key != *key {
            return Err(MergeError::KeyMismatch { member: i });
        }
        analyses.push(a);
    }
    let mut spans = Vec::with_capacity(items.len());
    let mut prompt_weights = Vec::with_capacity(items.len());
    let mut at = 0usize;
    for a in &analyses {
        spans.push(at..at + a.inputs.len());
        at += a.inputs.len();
        prompt_weights.push(a.inputs.iter().map(|&(_, w)| w).sum());
    }
    if u32::try_from(at).is_err() {
        return Err(MergeError::TooLarge);
    }
    let plan = SplitPlan {
        endpoint: key.endpoint,
        spans,
        prompt_weights,
    };
    if let [only] = items {
        return Ok(Merged {
            body: only.to_vec(),
            plan,
        });
    }
    let mut array = Vec::with_capacity(items.iter().map(|b| b.len()).sum());
    array.push(b'[');
    for (i, (raw, _)) in analyses.iter().flat_map(|a| a.inputs.iter()).enumerate() {
        if i > 0 {
            array.push(b',');
        }
        array.extend_from_slice(raw.as_bytes());
    }
    array.push(b']');
    let field = key.endpoint.input_field();
    let mut body = Vec::with_capacity(array.len() + items[0].len());
    let mut array = Some(array);
    write_object(
        &mut body,
        analyses[0].obj.entries.iter().map(|(k, v)| {
            let piece = if k == field {
                Piece::Owned(array.take().unwrap_or_default())
            } else {
                Piece::Raw(v.get())
            };
            (k.as_ref(), piece)
        }),
    );
    Ok(Merged { body, plan })
}

/// Splits the merged call's success body into one body per member (module docs).
pub fn split(response: &[u8], plan: &SplitPlan) -> Result<Vec<Vec<u8>>, SplitError> {
    if plan.members() <= 1 {
        return Ok(vec![response.to_vec()]);
    }
    let jerr = |e: serde_json::Error| SplitError::Json(e.to_string());
    let top = RawObject::parse(response).map_err(jerr)?;
    let items_field = plan.endpoint.items_field();
    let raw_items = top
        .get(items_field)
        .ok_or(SplitError::Missing(items_field))?;
    let elems: Vec<&RawValue> = serde_json::from_str(raw_items.get()).map_err(jerr)?;
    let total = plan.inputs();
    if elems.len() != total {
        return Err(SplitError::CountMismatch {
            expected: total,
            found: elems.len(),
        });
    }
    // Slot each item at its index; every index exactly once.
    let mut slots: Vec<Option<RawObject<'_>>> = (0..total).map(|_| None).collect();
    for (position, e) in elems.iter().enumerate() {
        let obj = RawObject::from_raw(e).map_err(jerr)?;
        let idx = obj
            .get("index")
            .and_then(|v| v.get().parse::<usize>().ok())
            .filter(|&i| i < total)
            .ok_or(SplitError::BadIndex { position })?;
        if slots[idx].is_some() {
            return Err(SplitError::BadIndex { position });
        }
        slots[idx] = Some(obj);
    }
    // Completion weights: bytes of each member's choice texts.
    let completion_weights: Vec<u64> = match plan.endpoint {
        Endpoint::Embeddings => plan.prompt_weights.clone(),
        Endpoint::Completions => plan
            .spans
            .iter()
            .map(|s| {
                slots[s.clone()]
                    .iter()
                    .flatten()
                    .filter_map(|o| o.get("text").and_then(decode_str))
                    .map(|t| t.len() as u64)
                    .sum()
            })
            .collect(),
    };
    let usages = match top.get("usage") {
        Some(u) if !is_null(u) => Some(split_usage(u, &plan.prompt_weights, &completion_weights)?),
        _ => None,
    };
    for (k, v) in &top.entries {
        if k != items_field && k != "usage" && matches!(first_byte(v), b'[' | b'{') {
            return Err(SplitError::UnexpectedField(k.to_string()));
        }
    }
    let mut out = Vec::with_capacity(plan.members());
    for (m, span) in plan.spans.iter().enumerate() {
        let mut arr = Vec::new();
        arr.push(b'[');
        for (i, slot) in slots[span.clone()].iter().enumerate() {
            let Some(obj) = slot else {
                continue;
            };
            if i > 0 {
                arr.push(b',');
            }
            write_object(
                &mut arr,
                obj.entries.iter().map(|(k, v)| {
                    let piece = if k == "index" {
                        Piece::Owned(i.to_string().into_bytes())
                    } else {
                        Piece::Raw(v.get())
                    };
                    (k.as_ref(), piece)
                }),
            );
        }
        arr.push(b']');
        let mut arr = Some(arr);
        let mut usage = usages.as_ref().and_then(|u| u.get(m)).cloned();
        let mut body = Vec::with_capacity(response.len() / plan.members() + 64);
        write_object(
            &mut body,
            top.entries.iter().map(|(k, v)| {
                let piece = if k == items_field {
                    Piece::Owned(arr.take().unwrap_or_default())
                } else if k == "usage" {
                    match usage.take() {
                        Some(u) => Piece::Owned(u),
                        None => Piece::Raw(v.get()),
                    }
                } else {
                    Piece::Raw(v.get())
                };
                (k.as_ref(), piece)
            }),
        );
        out.push(body);
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Family {
    Prompt,
    Completion,
}

/// One `usage` object per member.
fn split_usage(
    raw: &RawValue,
    prompt: &[u64],
    completion: &[u64],
) -> Result<Vec<Vec<u8>>, SplitError> {
    let bad = |k: &str| SplitError::BadUsage(k.to_string());
    let obj = RawObject::from_raw(raw).map_err(|_| bad("usage"))?;
    let n = prompt.len();
    let int = |k: &str| -> Result<Option<u64>, SplitError> {
        match obj.get(k) {
            None => Ok(None),
            Some(v) if is_null(v) => Ok(None),
            Some(v) => v.get().parse::<u64>().map(Some).map_err(|_| bad(k)),
        }
    };
    let p_total = int("prompt_tokens")?;
    let c_total = int("completion_tokens")?;
    let t_total = int("total_tokens")?;
    let p_parts = p_total.map(|t| apportion(t, prompt));
    let c_parts = c_total.map(|t| apportion(t, completion));
    let t_parts = t_total.map(|t| {
        let known = p_total.unwrap_or(0) + c_total.unwrap_or(0);
        match t.checked_sub(known) {
            Some(extra) => {
                let extra = apportion(extra, prompt);
                (0..n)
                    .map(|m| {
                        p_parts.as_ref().map_or(0, |p| p[m])
                            + c_parts.as_ref().map_or(0, |c| c[m])
                            + extra[m]
                    })
                    .collect()
            }
            None => apportion(t, prompt),
        }
    });
    let mut per_key: Vec<Vec<Vec<u8>>> = Vec::with_capacity(obj.entries.len());
    for (k, v) in &obj.entries {
        let parts = match (k.as_ref(), &p_parts, &c_parts, &t_parts) {
            ("prompt_tokens", Some(p), _, _) => ints(p),
            ("completion_tokens", _, Some(c), _) => ints(c),
            ("total_tokens", _, _, Some(t)) => ints(t),
            _ => {
                let fam = if k.starts_with("completion") {
                    Family::Completion
                } else {
                    Family::Prompt
                };
                split_other(v, fam, prompt, completion).ok_or_else(|| bad(k))?
            }
        };
        per_key.push(parts);
    }
    Ok((0..n)
        .map(|m| {
            let mut out = Vec::new();
            write_object(
                &mut out,
                obj.entries
                    .iter()
                    .zip(&per_key)
                    .map(|((k, _), parts)| (k.as_ref(), Piece::Owned(parts[m].clone()))),
            );
            out
        })
        .collect())
}

fn ints(parts: &[u64]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_string().into_bytes()).collect()
}

/// Splits an unknown usage value: integers apportioned, objects recursively, other
/// scalars copied; arrays are refused (`None`).
fn split_other(
    raw: &RawValue,
    fam: Family,
    prompt: &[u64],
    completion: &[u64],
) -> Option<Vec<Vec<u8>>> {
    let n = prompt.len();
    let weights = match fam {
        Family::Prompt => prompt,
        Family::Completion => completion,
    };
    match first_byte(raw) {
        b'[' => None,
        b'{' => {
            let obj = RawObject::from_raw(raw).ok()?;
            let mut per_key = Vec::with_capacity(obj.entries.len());
            for (_, v) in &obj.entries {
                per_key.push(split_other(v, fam, prompt, completion)?);
            }
            Some(
                (0..n)
                    .map(|m| {
                        let mut out = Vec::new();
                        write_object(
                            &mut out,
                            obj.entries.iter().zip(&per_key).map(|((k, _), parts)| {
                                (k.as_ref(), Piece::Owned(parts[m].clone()))
                            }),
                        );
                        out
                    })
                    .collect(),
            )
        }
        _ => match raw.get().parse::<u64>() {
            Ok(t) => Some(ints(&apportion(t, weights))),
            Err(_) => Some(vec![raw.get().as_bytes().to_vec(); n]),
        },
    }
}

/// Splits `total` in proportion to `weights` (largest remainder, ties to the earlier
/// index; all-zero weights split evenly). The parts always sum to `total`.
pub fn apportion(total: u64, weights: &[u64]) -> Vec<u64> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let (weights, sum): (Cow<'_, [u64]>, u128) = if sum == 0 {
        (Cow::Owned(vec![1; n]), n as u128)
    } else {
        (Cow::Borrowed(weights), sum)
    };
    let t = u128::from(total);
    let mut parts = Vec::with_capacity(n);
    let mut rems = Vec::with_capacity(n);
    let mut given: u128 = 0;
    for (i, &w) in weights.iter().enumerate() {
        let exact = t * u128::from(w);
        let part = exact / sum;
        given += part;
        // part ≤ total, so it fits in u64.
        parts.push(u64::try_from(part).unwrap_or(u64::MAX));
        rems.push((exact % sum, i));
    }
    let left = usize::try_from(t - given).unwrap_or(n).min(n);
    rems.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().take(left) {
        parts[i] += 1;
    }
    parts
}

/// The same error for each of `members` members (module docs): a batch of one gets
/// the upstream answer untouched, larger batches a sanitised body.
pub fn split_error(status: u16, body: &[u8], members: usize) -> Vec<MemberError> {
    let status = if (400..=599).contains(&status) {
        status
    } else {
        502
    };
    if members == 1 {
        return vec![MemberError {
            status,
            body: body.to_vec(),
        }];
    }
    let (ty, code) = upstream_type_code(body);
    let code = match code {
        None => ErrorCode::Null,
        Some(raw) => match raw.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
            Some(s) => ErrorCode::Str(s),
            None => raw.parse().map_or(ErrorCode::Null, ErrorCode::Int),
        },
    };
    let ty = ty.unwrap_or(if status >= 500 {
        "server_error"
    } else {
        "upstream_error"
    });
    let message = format!(
        "the batched upstream request failed with HTTP {status}; its details are withheld \
         because the batch carried other requests"
    );
    let mut out = Vec::new();
    openai_error_json_code(&mut out, &message, ty, code);
    vec![MemberError { status, body: out }; members]
}

/// Whether a member of a batch that failed with `status` should be resent alone
/// (its own input may be fine: another member's may have failed the batch).
pub fn retry_alone(status: u16) -> bool {
    matches!(status, 400 | 413 | 422)
}

/// `error.type` / `error.code` of an OpenAI error body, kept only when they are short
/// identifiers (`[A-Za-z0-9_.-]{1,64}`) or integers. The code comes back as raw
/// JSON (a string literal or an integer).
fn upstream_type_code(body: &[u8]) -> (Option<&str>, Option<&str>) {
    let ident = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let Ok(top) = RawObject::parse(body) else {
        return (None, None);
    };
    let Some(err) = top.get("error").and_then(|e| RawObject::from_raw(e).ok()) else {
        return (None, None);
    };
    let ty = err.get("type").and_then(decode_str).and_then(|t| match t {
        Cow::Borrowed(b) if ident(b) => Some(b),
        _ => None,
    });
    let code = err.get("code").and_then(|c| {
        let raw = c.get();
        match first_byte(c) {
            b'"' => decode_str(c)
                .filter(|s| matches!(s, Cow::Borrowed(b) if ident(b)))
                .map(|_| raw),
            b'0'..=b'9' if raw.len() <= 6 && raw.bytes().all(|b| b.is_ascii_digit()) => Some(raw),
            _ => None,
        }
    });
    (ty, code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
