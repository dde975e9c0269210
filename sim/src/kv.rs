//! KV-cache block pool with a prefix cache (sans-IO, no clock).
//!
//! The pool holds `num_gpu_blocks` blocks of `block_size` tokens. A block is in one of
//! three states:
//! - **in use**: referenced by at least one running sequence (`ref_cnt > 0`); a block that
//!   holds a full prompt block may be shared by several sequences with the same prefix;
//! - **cached free**: no longer referenced but still holding the KV of a full block whose
//!   chained hash is known; it sits in an LRU and can be reused by a later request with
//!   the same prefix, or evicted (oldest first) when a fresh block is needed;
//! - **empty free**: holds nothing useful.
//!
//! The prefix cache is therefore bounded by `num_gpu_blocks − blocks in use`, as in vLLM.
//! Blocks of a finished sequence are released in reverse order, so the tail of a prompt
//! is evicted before its head (vLLM does the same). Usage reported to `/metrics` is
//! `blocks in use / num_gpu_blocks`; cached free blocks count as free.
//!
//! Costs: lookup O(matched blocks), allocation and release O(blocks · log cached).
//!
//! **KV events** ([`KvCache::record_events`], `--kv-events-port`): when on, every block
//! registered under a hash is reported as stored (one event per run of consecutive new
//! blocks of a sequence, with the hash of the block before the run as parent) and every
//! registered block evicted for reuse as removed, in the order they happen, as vLLM's
//! `BlockStored` / `BlockRemoved` (without token ids: the simulator's blocks do not keep
//! them). [`KvCache::take_events`] hands them to the engine task, which publishes one
//! batch per step.

use std::collections::{BTreeMap, HashMap};

/// Index of a block in the pool.
pub type BlockId = u32;

#[derive(Debug, Clone, Default)]
struct Block {
    /// Chained hash of the full block this block holds, when registered in the cache.
    hash: Option<u64>,
    /// Number of running sequences referencing the block.
    ref_cnt: u32,
    /// Position in the LRU while cached free.
    lru_tick: Option<u64>,
}

/// Block pool plus prefix cache.
#[derive(Debug, Clone)]
pub struct KvCache {
    blocks: Vec<Block>,
    /// Free blocks holding nothing.
    empty: Vec<BlockId>,
    /// Free blocks holding a cached full block, oldest tick first.
    lru: BTreeMap<u64, BlockId>,
    /// Hash → block for every registered block (in use or cached free).
    cached: HashMap<u64, BlockId>,
    in_use: usize,
    tick: u64,
    /// Events since the last [`KvCache::take_events`], when recording.
    events: Option<Vec<KvEvent>>,
}

/// A change to the set of registered blocks (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Blocks registered, in chain order, after `parent` (None: from the first block).
    Stored {
        /// The new blocks' hashes.
        hashes: Vec<u64>,
        /// The hash of the block before the first one.
        parent: Option<u64>,
    },
    /// A registered block was evicted.
    Removed(u64),
}

impl KvCache {
    /// A pool of `num_blocks` empty blocks.
    pub fn new(num_blocks: usize) -> Self {
        let n = u32::try_from(num_blocks).unwrap_or(u32::MAX);
        Self {
            blocks: vec![Block::default(); n as usize],
            // Pop from the end: hand out block 0 first.
            empty: (0..n).rev().collect(),
            lru: BTreeMap::new(),
            cached: HashMap::new(),
            in_use: 0,
            tick: 0,
            events: None,
        }
    }

    /// Starts (or stops) recording [`KvEvent`]s.
    pub fn record_events(&mut self, on: bool) {
        self.events = on.then(Vec::new);
    }

    /// The events recorded since the last call (empty when not recording).
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn stored(&mut self, pos: usize, hash: u64, hashes: &[u64]) {
        let Some(events) = self.events.as_mut() else {
            return;
        };
        let parent = pos.checked_sub(1).and_then(|p| hashes.get(p)).copied();
        // Extend the previous event when this block follows its last one.
        if let Some(KvEvent::Stored { hashes: run, .. }) = events.last_mut() {
            if run.last().copied() == parent && parent.is_some() {
                run.push(hash);
                return;
            }
        }
        events.push(KvEvent::Stored {
            hashes: vec![hash],
            parent,
        });
    }

    /// Total number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks referenced by running sequences.
    pub fn blocks_in_use(&self) -> usize {
        self.in_use
    }

    /// Free blocks (empty plus cached free).
    pub fn free_blocks(&self) -> usize {
        self.empty.len() + self.lru.len()
    }

    /// Cached free blocks (evictable prefix-cache entries).
    pub fn cached_free_blocks(&self) -> usize {
        self.lru.len()
    }

    /// Fraction of blocks in use, 0..=1.
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            0.0
        } else {
            self.in_use as f64 / self.blocks.len() as f64
        }
    }

    /// Whether a block with this chained hash is held (in use or cached free).
    pub fn contains(&self, hash: u64) -> bool {
        self.cached.contains_key(&hash)
    }

    /// Number of leading `hashes` present in the cache.
    pub fn lookup(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.cached.contains_key(h))
            .count()
    }

    /// Whether `total` blocks can be given to a sequence whose first `hit.len()` blocks are
    /// the cached blocks of `hit` (as returned by [`KvCache::lookup`]).
    pub fn can_allocate(&self, hit: &[u64], total: usize) -> bool {
        let hit_free = hit
            .iter()
            .filter(|h| {
                self.cached
                    .get(h)
                    .is_some_and(|&b| self.blocks[b as usize].ref_cnt == 0)
            })
            .count();
        let available = self.free_blocks() - hit_free;
        total.saturating_sub(hit.len()) <= available
    }

    /// Gives `total` blocks to a new sequence: the first `hit` come from the cache (shared),
    /// the rest are fresh (empty first, then evicted LRU blocks). Fresh blocks at positions
    /// `hit..hashes.len()` hold full prompt blocks and are registered under their hash.
    ///
    /// Call [`KvCache::can_allocate`] first; returns `None` (and changes nothing) when the
    /// pool is too small.
    pub fn allocate(&mut self, hashes: &[u64], hit: usize, total: usize) -> Option<Vec<BlockId>> {
        let hit = hit.min(hashes.len()).min(total);
        if !self.can_allocate(&hashes[..hit], total) {
            return None;
        }
        let mut out = Vec::with_capacity(total);
        for h in &hashes[..hit] {
            let b = *self.cached.get(h)?;
            self.acquire(b);
            out.push(b);
        }
        for pos in hit..total {
            let b = self.take_fresh()?;
            let blk = &mut self.blocks[b as usize];
            blk.ref_cnt = 1;
            self.in_use += 1;
            if let Some(&h) = hashes.get(pos) {
                if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(h) {
                    e.insert(b);
                    self.blocks[b as usize].hash = Some(h);
                    self.stored(pos, h, hashes);
                }
            }
            out.push(b);
        }
        Some(out)
    }

    /// Releases a sequence's blocks (in reverse order, so the tail is evicted first).
    pub fn free(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let blk = &mut self.blocks[b as usize];
            debug_assert!(blk.ref_cnt > 0, "double free of block {b}");
            if blk.ref_cnt == 0 {
                continue;
            }
            blk.ref_cnt -= 1;
            if blk.ref_cnt > 0 {
                continue;
            }
            self.in_use -= 1;
            if blk.hash.is_some() {
                self.tick += 1;
                blk.lru_tick = Some(self.tick);
                self.lru.insert(self.tick, b);
            } else {
                self.empty.push(b);
            }
        }
    }

    fn acquire(&mut self, b: BlockId) {
        let blk = &mut self.blocks[b as usize];
        if blk.ref_cnt == 0 {
            if let Some(t) = blk.lru_tick.take() {
                self.lru.remove(&t);
            }
            self.in_use += 1;
        }
        blk.ref_cnt += 1;
    }

    fn take_fresh(&mut self) -> Option<BlockId> {
        if let Some(b) = self.empty.pop() {
            return Some(b);
        }
        let (_, b) = self.lru.pop_first()?;
        let blk = &mut self.blocks[b as usize];
        blk.lru_tick = None;
        if let Some(h) = blk.hash.take() {
            if self.cached.get(&h) == Some(&b) {
                self.cached.remove(&h);
                if let Some(events) = self.events.as_mut() {
                    events.push(KvEvent::Removed(h));
                }
            }
        }
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shared_prefix_is_reused_and_counted_once() {
        let mut kv = KvCache::new(8);
        let a = kv.allocate(&[1, 2], 0, 3).unwrap();
        assert_eq!(kv.blocks_in_use(), 3);
        assert_eq!(kv.lookup(&[1, 2, 3]), 2);
        let b = kv.allocate(&[1, 2, 9], 2, 4).unwrap();
        assert_eq!(&a[..2], &b[..2]);
        assert_eq!(kv.blocks_in_use(), 5);
        kv.free(&a);
        assert_eq!(kv.blocks_in_use(), 4);
        kv.free(&b);
        assert_eq!(kv.blocks_in_use(), 0);
        // Registered full blocks stay cached: 1, 2, 9.
        assert_eq!(kv.cached_free_blocks(), 3);
        assert_eq!(kv.free_blocks(), 8);
    }

    #[test]
    fn lru_evicts_oldest_and_tail_first() {
        let mut kv = KvCache::new(4);
        let a = kv.allocate(&[1, 2], 0, 2).unwrap();
        kv.free(&a);
        let b = kv.allocate(&[3, 4], 0, 2).unwrap();
        kv.free(&b);
        assert_eq!(kv.cached_free_blocks(), 4);
        // Needs one fresh block: evicts the tail of the oldest sequence (hash 2).
        let c = kv.allocate(&[5], 0, 1).unwrap();
        assert!(kv.contains(1));
        assert!(!kv.contains(2));
        assert!(kv.contains(3) && kv.contains(4));
        kv.free(&c);
        // Touching 3,4 makes them recent: next evictions take 1, then 5.
        let d = kv.allocate(&[3, 4], 2, 2).unwrap();
        kv.free(&d);
        let e = kv.allocate(&[], 0, 2).unwrap();
        assert!(!kv.contains(1) && !kv.contains(5));
        assert!(kv.contains(3) && kv.contains(4));
        kv.free(&e);
    }

    #[test]
    fn events_report_stored_runs_and_evictions() {
        let mut kv = KvCache::new(4);
        kv.record_events(true);
        let a = kv.allocate(&[1, 2, 3], 0, 3).unwrap();
        kv.free(&a);
        assert_eq!(
            kv.take_events(),
            vec![KvEvent::Stored {
                hashes: vec![1, 2, 3],
                parent: None
            }]
        );
        // Reuses 1, 2; stores 9 after 2 (the empty block); one more fresh block
        // evicts 3.
        let b = kv.allocate(&[1, 2, 9], 2, 4).unwrap();
        assert_eq!(
            kv.take_events(),
            vec![
                KvEvent::Stored {
                    hashes: vec![9],
                    parent: Some(2)
                },
                KvEvent::Removed(3),
            ]
        );
        kv.free(&b);
        assert!(kv.take_events().is_empty());
    }

    #[test]
    fn allocation_refuses_when_full() {
        let mut kv = KvCache::new(2);
        let a = kv.allocate(&[], 0, 2).unwrap();
        assert!(!kv.can_allocate(&[], 1));
        assert!(kv.allocate(&[], 0, 1).is_none());
        kv.free(&a);
        assert!(kv.can_allocate(&[], 2));
    }
}
