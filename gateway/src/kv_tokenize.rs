//! A request's token ids and vLLM block keys, computed the way the model server
//! computes them (precise prefix routing, #18).
//!
//! Per model (`--kv-tokenizer MODEL=PATH`, optionally `--kv-chat-template
//! MODEL=PATH`): the model's `tokenizer.json` (Hugging Face `tokenizers`) and
//! its chat template (Jinja, rendered with `minijinja`; without one the
//! tokenizer file's sibling `tokenizer_config.json` `chat_template` is used
//! when present). Per request:
//!
//! - `/v1/completions`: a string `prompt` is encoded with special tokens
//!   (vLLM's default), a token-id `prompt` is taken as is; a list of prompts
//!   is not scored precisely;
//! - `/v1/chat/completions`: `messages` are rendered with the template
//!   (`add_generation_prompt: true`, the tokenizer config's `bos_token` /
//!   `eos_token`) and encoded without adding special tokens (the template
//!   writes them), as vLLM does;
//! - the ids are cut into blocks and hashed with vLLM's `sha256_cbor`
//!   ([`shardgate_kvevents::BlockHasher`], `--kv-block-size`,
//!   `--kv-hash-seed`), at most [`MAX_PRECISE_BLOCKS`] blocks.
//!
//! A model without a tokenizer, a body that does not parse or a template
//! that fails gives `None`: the request is scored by the approximate index.
//! Cost (bench `kv_hash`, bench/results/micro.md): 265 µs for a 1k-token
//! prompt, 2.4 ms for 8k with a word-level tokenizer, ≈ 96 % of it JSON parse
//! and tokenizing; hashing ≈ 0.24 µs per block.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shardgate_kvevents::{BlockHasher, BlockKey};

thread_local! {
    /// One hasher (and its CBOR buffer) per shard thread.
    static HASHER: std::cell::RefCell<Option<BlockHasher>> = const { std::cell::RefCell::new(None) };
}

/// Most blocks hashed per request (16k tokens at 16 per block).
pub const MAX_PRECISE_BLOCKS: usize = 1024;

/// One model's tokenizer and chat template.
pub struct ModelTokenizer {
    tokenizer: tokenizers::Tokenizer,
    template: Option<minijinja::Environment<'static>>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("chat_template", &self.template.is_some())
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct Body {
    #[serde(default)]
    prompt: Option<serde_json::Value>,
    #[serde(default)]
    messages: Option<Vec<serde_json::Value>>,
}

/// The special tokens of a `tokenizer_config.json` (a string, or an
/// `AddedToken` object with `content`).
fn special(cfg: &serde_json::Value, key: &str) -> String {
    match cfg.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_owned(),
        None => String::new(),
    }
}

impl ModelTokenizer {
    /// Loads `tokenizer` and the chat template (`template`, else the sibling
    /// `tokenizer_config.json`'s `chat_template`, if any). Errors name the file.
    pub fn load(tokenizer: &Path, template: Option<&Path>) -> Result<Self, String> {
        let tok = tokenizers::Tokenizer::from_file(tokenizer)
            .map_err(|e| format!("{}: not a tokenizer.json: {e}", tokenizer.display()))?;
        let cfg_path = tokenizer.with_file_name("tokenizer_config.json");
        let cfg: serde_json::Value = std::fs::read(&cfg_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let source = match template {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| format!("{}: cannot read the chat template: {e}", p.display()))?,
            ),
            None => cfg
                .get("chat_template")
                .and_then(|t| t.as_str())
                .map(str::to_owned),
        };
        let template = match source {
            Some(src) => {
                let mut env = minijinja::Environment::new();
                env.add_function(
                    "raise_exception",
                    |msg: String| -> Result<String, minijinja::Error> {
                        Err(minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            msg,
                        ))
                    },
                );
                env.add_template_owned("chat", src).map_err(|e| {
                    let at = template.map_or(cfg_path.clone(), Path::to_path_buf);
                    format!("{}: chat template does not parse: {e}", at.display())
                })?;
                Some(env)
            }
            None => None,
        };
        Ok(Self {
            tokenizer: tok,
            template,
            bos: special(&cfg, "bos_token"),
            eos: special(&cfg, "eos_token"),
        })
    }

    /// The token ids of a completions or chat request body; see the module docs.
    pub fn token_ids(&self, body: &[u8]) -> Option<Vec<u32>> {
        let body: Body = serde_json::from_slice(body).ok()?;
        if let Some(messages) = body.messages {
            let env = self.template.as_ref()?;
            let text = env
                .get_template("chat")
                .ok()?
                .render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => self.bos.as_str(),
                    eos_token => self.eos.as_str(),
                })
                .ok()?;
            return self.encode(&text, false);
        }
        match body.prompt? {
            serde_json::Value::String(s) => self.encode(&s, true),
            serde_json::Value::Array(items) if items.iter().all(|v| v.is_u64()) => items
                .iter()
                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect(),
            _ => None,
        }
    }

    fn encode(&self, text: &str, special: bool) -> Option<Vec<u32>> {
        self.tokenizer
            .encode_fast(text, special)
            .ok()
            .map(|e| e.get_ids().to_vec())
    }
}

/// The configured tokenizers, by model name, and the hashing settings.
#[derive(Debug, Default)]
pub struct Tokenizers {
    models: HashMap<String, Arc<ModelTokenizer>>,
    block_size: usize,
    seed: String,
}

/// `MODEL=PATH` of `--kv-tokenizer` / `--kv-chat-template`.
pub fn model_path(flag: &str, s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((m, p)) if !m.is_empty() && !p.is_empty() => Ok((m.to_owned(), PathBuf::from(p))),
        _ => Err(format!("{flag} {s:?}: expected MODEL=PATH")),
    }
}

impl Tokenizers {
    /// Loads every `--kv-tokenizer` (with its `--kv-chat-template`).
    pub fn load(
        tokenizers: &[String],
        templates: &[String],
        block_size: usize,
        seed: &str,
    ) -> Result<Self, String> {
        let mut tpl = HashMap::new();
        for t in templates {
            let (m, p) = model_path("--kv-chat-template", t)?;
            tpl.insert(m, p);
        }
        let mut models = HashMap::new();
        for t in tokenizers {
            let (m, p) = model_path("--kv-tokenizer", t)?;
            let tok = ModelTokenizer::load(&p, tpl.remove(&m).as_deref())
                .map_err(|e| format!("--kv-tokenizer {m}: {e}"))?;
            models.insert(m, Arc::new(tok));
        }
        if let Some(m) = tpl.keys().next() {
            return Err(format!(
                "--kv-chat-template {m}: no --kv-tokenizer for this model"
            ));
        }
        Ok(Self {
            models,
            block_size: if block_size == 0 {
                shardgate_kvevents::DEFAULT_BLOCK_SIZE
            } else {
                block_size
            },
            seed: seed.to_owned(),
        })
    }

    /// Whether no model has a tokenizer.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The tokenizer of `model`.
    pub fn get(&self, model: &str) -> Option<&Arc<ModelTokenizer>> {
        self.models.get(model)
    }

    /// A hasher with the configured block size and seed.
    pub fn hasher(&self) -> BlockHasher {
        BlockHasher::new(self.block_size, &self.seed)
    }

    /// The block keys of a request body for `model` (`lora`: the adapter whose
    /// blocks hash apart); `None` when the request cannot be keyed (no
    /// tokenizer for the model, a body that does not parse).
    pub fn keys(&self, model: &str, lora: Option<&str>, body: &[u8]) -> Option<Vec<BlockKey>> {
        let ids = self.get(model)?.token_ids(body)?;
        let mut out =
            Vec::with_capacity((ids.len() / self.block_size.max(1)).min(MAX_PRECISE_BLOCKS));
        HASHER.with(|h| {
            let mut h = h.borrow_mut();
            let hasher = h.get_or_insert_with(|| self.hasher());
            if hasher.block_size() != self.block_size {
                *hasher = self.hasher();
            }
            hasher.keys(&ids, lora, MAX_PRECISE_BLOCKS, &mut out);
        });
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn data(name: &str) -> String {
        format!("{}/tests/data/kv/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn tokenizers() -> Tokenizers {
        Tokenizers::load(
            &[format!("m={}", data("tokenizer.json"))],
            &[format!("m={}", data("chat_template.jinja"))],
            4,
            shardgate_kvevents::DEFAULT_SEED,
        )
        .unwrap()
    }

    #[test]
    fn completions_chat_and_token_id_prompts() {
        let t = tokenizers();
        let m = t.get("m").unwrap();
        assert_eq!(
            m.token_ids(br#"{"model":"m","prompt":"5 6  7\n8"}"#),
            Some(vec![5, 6, 7, 8])
        );
        assert_eq!(m.token_ids(br#"{"prompt":[1,2,3]}"#), Some(vec![1, 2, 3]));
        // The chat template renders role then content (the simulator's prompt).
        let user = 1_290_913_001;
        assert_eq!(
            m.token_ids(br#"{"messages":[{"role":"user","content":"9 10"}]}"#),
            Some(vec![user, 9, 10])
        );
        // Not keyable: several prompts, no prompt, not JSON.
        assert_eq!(m.token_ids(br#"{"prompt":["1","2"]}"#), None);
        assert_eq!(m.token_ids(br#"{"model":"m"}"#), None);
        assert_eq!(m.token_ids(b"nope"), None);
    }

    #[test]
    fn keys_are_the_servers_block_hashes() {
        let t = tokenizers();
        // 9 tokens, blocks of 4: two keys, equal to hashing the ids directly.
        let keys = t
            .keys("m", None, br#"{"prompt":"1 2 3 4 5 6 7 8 9"}"#)
            .unwrap();
        let mut want = Vec::new();
        BlockHasher::new(4, shardgate_kvevents::DEFAULT_SEED).keys(
            &[1, 2, 3, 4, 5, 6, 7, 8, 9],
            None,
            MAX_PRECISE_BLOCKS,
            &mut want,
        );
        assert_eq!(keys, want);
        assert_eq!(keys.len(), 2);
        // An adapter's blocks hash apart; an unknown model is not keyed.
        let lora = t.keys("m", Some("a"), br#"{"prompt":"1 2 3 4"}"#).unwrap();
        assert_ne!(lora.first(), keys.first());
        assert!(t.keys("other", None, br#"{"prompt":"1 2 3 4"}"#).is_none());
    }

    #[test]
    fn load_errors_name_the_flag_and_file() {
        let e = Tokenizers::load(&["m".into()], &[], 16, "s").unwrap_err();
        assert!(
            e.contains("--kv-tokenizer") && e.contains("MODEL=PATH"),
            "{e}"
        );
        let e =
            Tokenizers::load(&["m=/nonexistent/tokenizer.json".into()], &[], 16, "s").unwrap_err();
        assert!(e.contains("/nonexistent/tokenizer.json"), "{e}");
        let e = Tokenizers::load(
            &[],
            &[format!("x={}", data("chat_template.jinja"))],
            16,
            "s",
        )
        .unwrap_err();
        assert!(e.contains("no --kv-tokenizer"), "{e}");
    }
}
