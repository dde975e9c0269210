//! Simulated tokenizer, prefix block hashes, output words and embedding vectors.
//!
//! **Tokens are whitespace-separated words**: `"a  b\nc"` is 3 tokens. A chat prompt is
//! the concatenation, per message, of the role (one token) and the content's words.
//! Token-id prompts (`[1, 2, 3]`) become the words `"1" "2" "3"`.
//!
//! Prefix-cache block hashes are chained xxh3-64 values: block *i*'s hash covers the
//! hash of block *i − 1* and the block's `block_size` words; the chain is seeded with the
//! model name (for a LoRA request, the adapter name, since adapters do not share KV).
//! Only full blocks are hashed, as in vLLM.
//!
//! **Token ids** ([`token_id`], [`Prompt::token_ids`]), as the render and tokenize
//! endpoints report them, are one per word and below 2³¹: a word that is the canonical
//! decimal spelling of a number below 2³¹ is that number (so a token-id prompt renders
//! back to the ids it was given, and the text `"42"` and the id 42 are the same token, as
//! they are for the prefix cache); any other word is the top 31 bits of its xxh3-64. The
//! mapping depends on the word alone, so every simulator (any seed, any model) gives the
//! same ids for the same prompt; distinct words may rarely share an id.
//!
//! Output tokens are pseudo-words from a fixed 64-word list, chosen by
//! `xxh3(seed, prompt fingerprint, choice, position)`: the same prompt, seed and choice
//! always produce the same text. Embeddings are `dim` f32 values drawn from an RNG seeded
//! with `xxh3(model, input)`, L2-normalised.

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Token ids are below this bound (they fit an `i32`, as real vocabularies' do).
pub const TOKEN_ID_LIMIT: u32 = 1 << 31;

/// The id of one token (word); see the module docs.
pub fn token_id(word: &str) -> u32 {
    let canonical = !word.is_empty()
        && word.len() <= 10
        && word.bytes().all(|b| b.is_ascii_digit())
        && !(word.len() > 1 && word.starts_with('0'));
    if canonical {
        if let Ok(n) = word.parse::<u32>() {
            if n < TOKEN_ID_LIMIT {
                return n;
            }
        }
    }
    // The top 31 bits of a 64-bit hash always fit.
    u32::try_from(xxh3_64(word.as_bytes()) >> 33).unwrap_or_default()
}

/// Output vocabulary: short pseudo-words.
const WORDS: [&str; 64] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "enim",
    "ad",
    "minim",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "aliquip",
    "ex",
    "ea",
    "commodo",
    "consequat",
    "duis",
    "aute",
    "irure",
    "in",
    "reprehenderit",
    "voluptate",
    "velit",
    "esse",
    "cillum",
    "fugiat",
    "nulla",
    "pariatur",
    "excepteur",
    "sint",
    "occaecat",
    "cupidatat",
    "non",
    "proident",
    "sunt",
    "culpa",
    "qui",
    "officia",
    "deserunt",
    "mollit",
    "anim",
    "id",
    "est",
    "laborum",
    "vitae",
    "porta",
];

/// A tokenized prompt: its words, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompt {
    /// The prompt's tokens (whitespace-separated words).
    pub words: Vec<String>,
}

impl Prompt {
    /// Tokenizes a text: splits on whitespace.
    pub fn from_text(text: &str) -> Self {
        let mut p = Self::default();
        p.push_text(text);
        p
    }

    /// Token ids become their decimal spelling.
    pub fn from_ids(ids: &[u64]) -> Self {
        Self {
            words: ids.iter().map(u64::to_string).collect(),
        }
    }

    /// Appends the words of `text`.
    pub fn push_text(&mut self, text: &str) {
        self.words
            .extend(text.split_whitespace().map(str::to_owned));
    }

    /// Appends one token.
    pub fn push_word(&mut self, word: &str) {
        self.words.push(word.to_owned());
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the prompt has no tokens.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Chained hashes of the prompt's full blocks of `block_size` tokens, seeded with
    /// `seed_name` (the model or adapter name). `block_size` 0 yields no blocks.
    pub fn block_hashes(&self, seed_name: &str, block_size: usize) -> Vec<u64> {
        if block_size == 0 {
            return Vec::new();
        }
        let mut prev = xxh3_64(seed_name.as_bytes());
        self.words
            .chunks_exact(block_size)
            .map(|block| {
                let mut h = Xxh3::new();
                h.update(&prev.to_le_bytes());
                for w in block {
                    h.update(w.as_bytes());
                    h.update(b" ");
                }
                prev = h.digest();
                prev
            })
            .collect()
    }

    /// The id of each token, in order ([`token_id`]): as many as [`Prompt::len`].
    pub fn token_ids(&self) -> Vec<u32> {
        self.words.iter().map(|w| token_id(w)).collect()
    }

    /// A hash of all the prompt's words (used to seed the output words).
    pub fn fingerprint(&self) -> u64 {
        let mut h = Xxh3::new();
        for w in &self.words {
            h.update(w.as_bytes());
            h.update(b" ");
        }
        h.digest()
    }
}

/// The output token at `position` (0-based) for a prompt fingerprint and choice index.
pub fn output_word(seed: u64, fingerprint: u64, choice: u32, position: u32) -> &'static str {
    let mut buf = [0u8; 24];
    buf[..8].copy_from_slice(&seed.to_le_bytes());
    buf[8..16].copy_from_slice(&fingerprint.to_le_bytes());
    buf[16..20].copy_from_slice(&choice.to_le_bytes());
    buf[20..].copy_from_slice(&position.to_le_bytes());
    let idx = (xxh3_64(&buf) % WORDS.len() as u64) as usize;
    WORDS[idx]
}

/// A deterministic unit-length embedding of `dim` values for `input` under `model`.
pub fn embedding(model: &str, input: &Prompt, dim: usize) -> Vec<f32> {
    let seed = xxh3_64(model.as_bytes()) ^ input.fingerprint();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v: Vec<f32> = (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_on_whitespace() {
        assert_eq!(Prompt::from_text(" a  b\n\tc ").len(), 3);
        assert!(Prompt::from_text("   ").is_empty());
        assert_eq!(Prompt::from_ids(&[7, 8]).words, vec!["7", "8"]);
    }

    #[test]
    fn block_hashes_are_chained_and_seeded() {
        let a = Prompt::from_text("a b c d e f g");
        let b = Prompt::from_text("a b c d x y z");
        let ha = a.block_hashes("m", 2);
        let hb = b.block_hashes("m", 2);
        assert_eq!(ha.len(), 3);
        assert_eq!(ha[..2], hb[..2]);
        assert_ne!(ha[2], hb[2]);
        assert_ne!(a.block_hashes("other", 2)[0], ha[0]);
        // Same block content after a different prefix hashes differently.
        let c = Prompt::from_text("x y c d");
        assert_ne!(c.block_hashes("m", 2)[1], ha[1]);
    }

    #[test]
    fn token_ids_are_per_word_stable_and_round_trip_numbers() {
        let p = Prompt::from_text("system be brief 42 007 2147483648 4294967296");
        let ids = p.token_ids();
        assert_eq!(ids.len(), p.len());
        assert_eq!(ids, Prompt::from_text(&p.words.join("  ")).token_ids());
        assert!(ids.iter().all(|&id| id < TOKEN_ID_LIMIT));
        // Canonical numbers below the limit are their own id; the rest are hashed.
        assert_eq!(ids[3], 42);
        assert_ne!(ids[4], 7);
        assert_eq!(token_id("0"), 0);
        assert_eq!(token_id("2147483647"), 2_147_483_647);
        assert_eq!(ids[5], token_id("2147483648"));
        assert_ne!(ids[5], 0);
        // A token-id prompt renders back to its ids.
        assert_eq!(Prompt::from_ids(&[5, 9, 0]).token_ids(), vec![5, 9, 0]);
        // Different words, different ids (for these).
        assert_ne!(token_id("be"), token_id("brief"));
        assert_ne!(token_id("+5"), 5);
        assert_ne!(token_id(""), token_id(" "));
    }

    #[test]
    fn outputs_and_embeddings_are_deterministic() {
        let p = Prompt::from_text("hello world");
        let f = p.fingerprint();
        assert_eq!(output_word(1, f, 0, 3), output_word(1, f, 0, 3));
        let e = embedding("m", &p, 16);
        assert_eq!(e.len(), 16);
        assert_eq!(e, embedding("m", &p, 16));
        let norm: f32 = e.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
