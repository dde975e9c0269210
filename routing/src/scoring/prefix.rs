//! Prefix-cache-aware routing index: which endpoint recently served which
//! prompt prefix, without a tokenizer.
//!
//! **Hashing** ([`PrefixHashes::compute`]): the prompt bytes are cut into
//! fixed blocks of 64 bytes (≈ 16 tokens, GAIE's block) and only whole blocks
//! count; block *i*'s hash is xxh3-64 of its bytes seeded with block *i − 1*'s
//! hash, and block 0 is seeded with xxh3-64 of the model name, so a hash names
//! the whole prefix up to its block and the same text under two models never
//! matches. At most 256 blocks (16 KiB, ≈ 4k tokens) are hashed per request;
//! the result lives on the stack (2 KiB), no allocation.
//!
//! **Index** ([`PrefixIndex`]): per endpoint, an exact LRU of at most 31,250
//! block hashes (GAIE's default; configurable): one `HashMap<(hash, endpoint),
//! slot>` plus a slab of nodes threaded on one intrusive doubly-linked list
//! per endpoint. [`PrefixIndex::record`] and the lookups are O(1) per block;
//! memory is ≈ 50 bytes per (block, endpoint) entry, so a full default LRU is
//! ≈ 1.6 MB per endpoint per shard, allocated as blocks are recorded.
//!
//! **Prefix-closed invariant**: `record` touches a chain's blocks from the
//! last to the first, so within a chain an earlier block is always more
//! recent than a later one and is evicted later. Hence if block *k* of a chain
//! is present, blocks 0..k are too, and [`PrefixIndex::match_len`] finds the
//! longest matched prefix by binary search: ≤ 9 lookups for 256 blocks,
//! instead of one per matched block.
//!
//! **Ownership**: one index per shard, owned by its thread, no locks. A shard
//! learns from the requests it routed and, through [`super::share`], from the
//! records of every other shard (hash lists shipped over SPSC rings via the
//! control thread and replayed with [`PrefixIndex::record`], not the maps):
//! users of one system prompt arrive on every shard, and with N shards a
//! shard alone would see 1/N of the history.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Instant;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Default block size in bytes (≈ 16 tokens).
pub const DEFAULT_BLOCK_BYTES: usize = 64;
/// Most blocks hashed per request.
pub const MAX_BLOCKS: usize = 256;
/// Default LRU capacity per endpoint, in blocks.
pub const DEFAULT_CAPACITY: usize = 31_250;

/// Prefix index settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixConfig {
    /// Bytes per block (default 64; 0 reads as the default).
    pub block_bytes: usize,
    /// Blocks hashed per request (default and maximum 256).
    pub max_blocks: usize,
    /// LRU capacity per endpoint, in blocks (default 31,250; 0 disables
    /// recording).
    pub capacity_per_endpoint: usize,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        Self {
            block_bytes: DEFAULT_BLOCK_BYTES,
            max_blocks: MAX_BLOCKS,
            capacity_per_endpoint: DEFAULT_CAPACITY,
        }
    }
}

/// The chained block hashes of one prompt (on the stack).
#[derive(Clone)]
pub struct PrefixHashes {
    hashes: [u64; MAX_BLOCKS],
    len: usize,
    prompt_blocks: usize,
}

impl std::fmt::Debug for PrefixHashes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Default for PrefixHashes {
    fn default() -> Self {
        Self {
            hashes: [0; MAX_BLOCKS],
            len: 0,
            prompt_blocks: 0,
        }
    }
}

impl PrefixHashes {
    /// Hashes `prompt` in whole blocks of `config.block_bytes`, chained and
    /// seeded with `model` (see the module docs).
    pub fn compute(model: &str, prompt: &[u8], config: &PrefixConfig) -> Self {
        let mut out = Self::default();
        out.compute_into(model, prompt, config);
        out
    }

    /// [`Self::compute`] into `self`, overwriting it: lets a caller keep one
    /// (2 KiB) value in a pool instead of moving a fresh one through its futures.
    pub fn compute_into(&mut self, model: &str, prompt: &[u8], config: &PrefixConfig) {
        let block = if config.block_bytes == 0 {
            DEFAULT_BLOCK_BYTES
        } else {
            config.block_bytes
        };
        let max = config.max_blocks.min(MAX_BLOCKS);
        self.prompt_blocks = prompt.len() / block;
        self.len = 0;
        let mut prev = xxh3_64(model.as_bytes());
        for (slot, chunk) in self
            .hashes
            .iter_mut()
            .zip(prompt.chunks_exact(block).take(max))
        {
            prev = xxh3_64_with_seed(chunk, prev);
            *slot = prev;
            self.len += 1;
        }
    }

    /// The hashes, block 0 first.
    pub fn as_slice(&self) -> &[u64] {
        self.hashes.get(..self.len).unwrap_or(&[])
    }

    /// Number of blocks hashed (at most `max_blocks`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whole blocks in the prompt, hashed or not: the denominator of the
    /// prefix score ([`super::PickRequest::prefix_total_blocks`]), so that a
    /// match covers the fraction of the prompt it saves even beyond the
    /// hashed 256 blocks.
    pub fn prompt_blocks(&self) -> usize {
        self.prompt_blocks.max(self.len)
    }

    /// Whether the prompt had no whole block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    hash: u64,
    endpoint: u32,
    prev: u32,
    next: u32,
    /// A prompt's block 0: the root of a prefix family.
    root: bool,
}

#[derive(Debug, Clone, Copy)]
struct Lru {
    head: u32,
    tail: u32,
    len: usize,
    /// Block-0 hashes among the held blocks: prefix families.
    roots: usize,
    last_record: Option<Instant>,
}

impl Default for Lru {
    fn default() -> Self {
        Self {
            head: NIL,
            tail: NIL,
            len: 0,
            roots: 0,
            last_record: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key(u64, u32);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
        state.write_u32(self.1);
    }
}

/// The keys are already xxh3 outputs: a multiply-rotate mix is enough and
/// costs a few cycles instead of SipHash's tens.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(26) ^ v).wrapping_mul(MIX);
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 31)
    }
}

/// Per-shard index of recently served prompt blocks, per endpoint.
#[derive(Debug, Clone, Default)]
pub struct PrefixIndex {
    config: PrefixConfig,
    map: HashMap<Key, u32, BuildHasherDefault<KeyHasher>>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    lrus: Vec<Lru>,
}

impl PrefixIndex {
    /// An empty index.
    pub fn new(config: PrefixConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The settings.
    pub fn config(&self) -> &PrefixConfig {
        &self.config
    }

    /// Hashes a prompt with this index's settings.
    pub fn hash(&self, model: &str, prompt: &[u8]) -> PrefixHashes {
        PrefixHashes::compute(model, prompt, &self.config)
    }

    /// [`Self::hash`] into an existing value.
    pub fn hash_into(&self, model: &str, prompt: &[u8], out: &mut PrefixHashes) {
        out.compute_into(model, prompt, &self.config);
    }

    fn contains(&self, endpoint: u32, hash: u64) -> bool {
        self.map.contains_key(&Key(hash, endpoint))
    }

    /// Longest prefix of `hashes` (in blocks) that `endpoint` recently
    /// served: binary search over the prefix-closed chain (≤ 9 lookups).
    pub fn match_len(&self, endpoint: usize, hashes: &[u64]) -> usize {
        let Ok(e) = u32::try_from(endpoint) else {
            return 0;
        };
        if self.lrus.get(endpoint).is_none_or(|l| l.len == 0) {
            return 0;
        }
        // Largest k in 0..=len with block k-1 present.
        let (mut lo, mut hi) = (0usize, hashes.len());
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if hashes.get(mid - 1).is_some_and(|h| self.contains(e, *h)) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// Longest matched prefix by a linear walk from block 0 (the reference
    /// for [`Self::match_len`]; one lookup per matched block).
    pub fn match_len_linear(&self, endpoint: usize, hashes: &[u64]) -> usize {
        let Ok(e) = u32::try_from(endpoint) else {
            return 0;
        };
        hashes.iter().take_while(|h| self.contains(e, **h)).count()
    }

    /// Records that `endpoint` was sent a request with these block hashes:
    /// touches them last block first (see the invariant in the module docs),
    /// inserting missing ones and evicting the endpoint's least recent
    /// blocks beyond its capacity. `now` is kept as the endpoint's last
    /// record time.
    pub fn record(&mut self, endpoint: usize, hashes: &[u64], now: Instant) {
        let Ok(e) = u32::try_from(endpoint) else {
            return;
        };
        if self.config.capacity_per_endpoint == 0 || hashes.is_empty() || e == NIL {
            return;
        }
        if self.lrus.len() <= endpoint {
            self.lrus.resize_with(endpoint + 1, Lru::default);
        }
        for (i, &h) in hashes.iter().enumerate().rev() {
            self.touch(e, h, i == 0);
        }
        if let Some(l) = self.lrus.get_mut(endpoint) {
            l.last_record = Some(now);
        }
    }

    fn touch(&mut self, e: u32, hash: u64, root: bool) {
        let key = Key(hash, e);
        if let Some(&slot) = self.map.get(&key) {
            self.unlink(e, slot);
            self.push_front(e, slot);
            return;
        }
        let full = self
            .lrus
            .get(e as usize)
            .is_some_and(|l| l.len >= self.config.capacity_per_endpoint);
        if full {
            self.evict_tail(e);
        }
        let node = Node {
            hash,
            endpoint: e,
            prev: NIL,
            next: NIL,
            root,
        };
        let slot = if let Some(slot) = self.free.pop() {
            match self.nodes.get_mut(slot as usize) {
                Some(n) => *n = node,
                None => return,
            }
            slot
        } else {
            let Ok(slot) = u32::try_from(self.nodes.len()) else {
                return;
            };
            if slot == NIL {
                return;
            }
            self.nodes.push(node);
            slot
        };
        self.push_front(e, slot);
        self.map.insert(key, slot);
        if root {
            if let Some(l) = self.lrus.get_mut(e as usize) {
                l.roots += 1;
            }
        }
    }

    fn evict_tail(&mut self, e: u32) {
        let Some(tail) = self.lrus.get(e as usize).map(|l| l.tail) else {
            return;
        };
        let Some(node) = self.nodes.get(tail as usize).copied() else {
            return;
        };
        self.unlink(e, tail);
        self.map.remove(&Key(node.hash, node.endpoint));
        self.free.push(tail);
        if node.root {
            if let Some(l) = self.lrus.get_mut(e as usize) {
                l.roots = l.roots.saturating_sub(1);
            }
        }
    }

    fn unlink(&mut self, e: u32, slot: u32) {
        let Some(Node { prev, next, .. }) = self.nodes.get(slot as usize).copied() else {
            return;
        };
        if let Some(p) = self.nodes.get_mut(prev as usize) {
            p.next = next;
        }
        if let Some(n) = self.nodes.get_mut(next as usize) {
            n.prev = prev;
        }
        if let Some(l) = self.lrus.get_mut(e as usize) {
            if l.head == slot {
                l.head = next;
            }
            if l.tail == slot {
                l.tail = prev;
            }
            l.len = l.len.saturating_sub(1);
        }
        if let Some(n) = self.nodes.get_mut(slot as usize) {
            n.prev = NIL;
            n.next = NIL;
        }
    }

    fn push_front(&mut self, e: u32, slot: u32) {
        let Some(l) = self.lrus.get_mut(e as usize) else {
            return;
        };
        let old_head = l.head;
        l.head = slot;
        if l.tail == NIL {
            l.tail = slot;
        }
        l.len += 1;
        if let Some(h) = self.nodes.get_mut(old_head as usize) {
            h.prev = slot;
        }
        if let Some(n) = self.nodes.get_mut(slot as usize) {
            n.prev = NIL;
            n.next = old_head;
        }
    }

    /// Forgets everything about `endpoint` (removed from the config).
    pub fn remove_endpoint(&mut self, endpoint: usize) {
        let Ok(e) = u32::try_from(endpoint) else {
            return;
        };
        while self.lrus.get(endpoint).is_some_and(|l| l.len > 0) {
            self.evict_tail(e);
        }
        if let Some(l) = self.lrus.get_mut(endpoint) {
            *l = Lru::default();
        }
    }

    /// Blocks held for `endpoint`.
    pub fn len(&self, endpoint: usize) -> usize {
        self.lrus.get(endpoint).map_or(0, |l| l.len)
    }

    /// Prefix families held for `endpoint`: prompts' block-0 hashes (one per
    /// distinct system prompt, say), however many blocks each grew.
    pub fn families(&self, endpoint: usize) -> usize {
        self.lrus.get(endpoint).map_or(0, |l| l.roots)
    }

    /// Blocks held over all endpoints.
    pub fn total_len(&self) -> usize {
        self.map.len()
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// When `endpoint` was last recorded.
    pub fn last_record(&self, endpoint: usize) -> Option<Instant> {
        self.lrus.get(endpoint).and_then(|l| l.last_record)
    }

    /// `endpoint`'s block hashes, most recent first (for a control-thread
    /// merge or the debug view).
    pub fn recent(&self, endpoint: usize) -> impl Iterator<Item = u64> + '_ {
        let (mut slot, len) = self
            .lrus
            .get(endpoint)
            .map_or((NIL, 0), |l| (l.head, l.len));
        std::iter::from_fn(move || {
            let n = self.nodes.get(slot as usize)?;
            slot = n.next;
            Some(n.hash)
        })
        .take(len)
    }
}
