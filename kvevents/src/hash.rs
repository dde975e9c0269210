//! vLLM's reproducible prefix-cache block hashes (`sha256_cbor`).
//!
//! With `--prefix-caching-hash-algo sha256_cbor` a vLLM server hashes a
//! request's token ids in full blocks of `block_size` tokens (16 by default):
//!
//! ```text
//! NONE_HASH  = SHA-256(CBOR(seed))                      seed: PYTHONHASHSEED, else "vllm-none-hash"
//! block[i]   = SHA-256(CBOR([block[i-1] or NONE_HASH,   32 bytes
//!                            [token ids of block i],
//!                            extra_keys]))              null, or [lora_name]
//! ```
//!
//! with CBOR in its canonical (shortest-length) form. Only whole blocks are
//! hashed. The hashes are stable across processes and machines, which is
//! what lets a router recompute them. (Older vLLM releases seeded `NONE_HASH`
//! with random bytes unless `PYTHONHASHSEED` was set: set it on those.) The
//! index keys a block by the last 8 bytes of its hash ([`crate::BlockKey`]),
//! as vLLM's integer event hashes do.
//!
//! **Cost**: one CBOR encoding (≤ 3 bytes per token id below 65,536, ≤ 5
//! above) and one SHA-256 per block, into a reused buffer: ≈ 0.24 µs per
//! 16-token block, 15 µs for a 1k-token prompt, 91 µs for 8k
//! (`bench/benches/kv_hash.rs`, bench/results/micro.md).

use ring::digest::{digest, SHA256};

use crate::wire::{key_of_bytes, BlockKey};

/// vLLM's fixed `NONE_HASH` seed when `PYTHONHASHSEED` is unset (releases that
/// derive it deterministically for SHA-256 hashing).
pub const DEFAULT_SEED: &str = "vllm-none-hash";

/// vLLM's default tokens per block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= 0xff {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// SHA-256 of the CBOR text string `s` (how vLLM derives `NONE_HASH`).
pub fn none_hash(seed: &str) -> [u8; 32] {
    let mut buf = Vec::with_capacity(seed.len() + 9);
    text(&mut buf, seed);
    sha256(&buf)
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = digest(&SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Hashes token ids into vLLM block hashes; reusable, one per thread.
#[derive(Debug, Clone)]
pub struct BlockHasher {
    none: [u8; 32],
    block_size: usize,
    buf: Vec<u8>,
}

impl BlockHasher {
    /// A hasher for `block_size`-token blocks (0 reads as 16) seeded with
    /// `seed` (the server's `PYTHONHASHSEED`, or [`DEFAULT_SEED`]).
    pub fn new(block_size: usize, seed: &str) -> Self {
        Self {
            none: none_hash(seed),
            block_size: if block_size == 0 {
                DEFAULT_BLOCK_SIZE
            } else {
                block_size
            },
            buf: Vec::with_capacity(256),
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// One block's full hash from its parent's (None for the first block).
    pub fn block(
        &mut self,
        parent: Option<&[u8; 32]>,
        tokens: &[u32],
        lora: Option<&str>,
    ) -> [u8; 32] {
        let buf = &mut self.buf;
        buf.clear();
        head(buf, 4, 3);
        head(buf, 2, 32);
        buf.extend_from_slice(parent.unwrap_or(&self.none));
        head(buf, 4, tokens.len() as u64);
        for t in tokens {
            head(buf, 0, u64::from(*t));
        }
        match lora {
            None => buf.push(0xf6),
            Some(name) => {
                head(buf, 4, 1);
                text(buf, name);
            }
        }
        sha256(buf)
    }

    /// The keys of the whole blocks of `tokens` (at most `max_blocks`),
    /// appended to `out`; `lora` names the adapter (its blocks hash apart).
    pub fn keys(
        &mut self,
        tokens: &[u32],
        lora: Option<&str>,
        max_blocks: usize,
        out: &mut Vec<BlockKey>,
    ) {
        let mut parent: Option<[u8; 32]> = None;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let h = self.block(parent.as_ref(), chunk, lora);
            out.push(key_of_bytes(&h));
            parent = Some(h);
        }
    }
}
