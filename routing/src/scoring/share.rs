//! Sharing recorded prefix blocks between shards, without locks.
//!
//! Each shard owns a [`PrefixIndex`] and records the prompts it routes. A
//! client's keep-alive connection stays on one shard, but the users of one
//! system prompt connect to every shard, so with N shards a shard alone sees
//! 1/N of the history: on the routing-quality benchmark (4 sims, 2 shards)
//! the prefix hit rate was 0.55–0.69 against 0.75–0.79 with one shard, and the
//! mean TTFT at 9 req/s 0.47 s against 0.32 s. Here every shard learns every
//! shard's records:
//!
//! ```text
//! shard s ──out ring──▶ control thread (ShareHub::pump) ──in ring──▶ every other shard
//! ```
//!
//! - **Record**: one header word (`endpoint << 32 | kind << 31 | blocks`) and
//!   the chained block hashes (≤ 256, so ≤ 2 KiB), written as one chunk: the
//!   reader sees all of it or none of it. No allocation per record. The kind
//!   ([`RecordKind`]) is an approximate-index record, or the precise block
//!   keys a shard just sent to an endpoint (#18: without them each shard's
//!   "recently sent" overlay saw only its own sends, and a burst on a prefix
//!   no server held yet split between shards; the routing-quality benchmark
//!   measured one shard ahead of two, 0.280 against 0.408 s mean TTFT).
//! - **Rings**: [`rtrb`] wait-free SPSC ring buffers of `u64` words, two per
//!   shard (out and in), [`ShareConfig::ring_words`] each (default 32,768
//!   words = 256 KiB, ≈ 128 records of 256 blocks), allocated once when a
//!   shard starts. Nothing blocks: a record that does not fit is dropped and
//!   counted (a shard's outbound drops, and the hub's per-target drops); a
//!   dropped record costs only a possible cache miss later.
//! - **Shard side** ([`ShardLink`]): [`ShardLink::publish`] after recording
//!   locally; [`ShardLink::drain_into`] replays inbound records into the
//!   shard's index, at most [`ShareConfig::drain_blocks`] blocks per call
//!   (default 4,096; at least one record, so it always progresses). The
//!   gateway drains before each prefix-scored pick: fresh without a timer,
//!   with bounded work on the request path.
//! - **Hub** ([`ShareHub`]): on the control thread, every
//!   `--prefix-share-interval` (default 5 ms) [`ShareHub::pump`] moves every
//!   record from each shard's out ring to every *other* shard's in ring (the
//!   origin already has it). Bounded: one pass reads at most what each ring
//!   held when the pass reached it.
//!
//! **Why through the control thread**: 2N rings instead of N(N−1) shard-to-
//! shard ones (64 shards: 128 rings, 32 MiB at the default size, not 4,032);
//! publishing costs a shard one copy whatever N is; the fan-out runs off the
//! shards. A single shared index would be shared mutable state across cores,
//! and publishing whole index snapshots would copy megabytes per interval.
//! **Cost**: every shard applies every other shard's records, ≈ N − 1 records
//! per request it routes in steady state (each block one hash-map touch).
//! Records from different shards interleave in hub order, so the LRU recency
//! is approximate across shards; only the eviction order depends on it, and
//! [`PrefixIndex::record`] keeps each chain prefix-closed whatever the order.
//! Sharing is off with one shard or a zero ring size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rtrb::{Consumer, Producer, RingBuffer};

use super::prefix::{PrefixIndex, MAX_BLOCKS};

/// Default ring capacity, in 8-byte words.
pub const DEFAULT_RING_WORDS: usize = 32_768;
/// Default blocks applied per drain.
pub const DEFAULT_DRAIN_BLOCKS: usize = 4_096;

/// Ring and drain sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareConfig {
    /// Capacity of each ring in 8-byte words (a record takes 1 + its blocks);
    /// 0 turns sharing off, smaller than one full record (257) reads as 257.
    pub ring_words: usize,
    /// Most blocks a shard applies per [`ShardLink::drain_into`] (at least
    /// one record); 0 reads as the default.
    pub drain_blocks: usize,
}

impl Default for ShareConfig {
    fn default() -> Self {
        Self {
            ring_words: DEFAULT_RING_WORDS,
            drain_blocks: DEFAULT_DRAIN_BLOCKS,
        }
    }
}

impl ShareConfig {
    /// Whether sharing is on.
    pub fn enabled(&self) -> bool {
        self.ring_words > 0
    }
}

/// Sharing counters, monotonic since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShareStats {
    /// Records the hub read from the shards' out rings.
    pub received: u64,
    /// Record copies delivered to other shards' in rings.
    pub forwarded: u64,
    /// Records lost: a shard's full out ring, or a target's full in ring
    /// (counted once per target).
    pub dropped: u64,
    /// Shards attached to the hub.
    pub shards: u64,
}

const LEN_MASK: u64 = 0x7FFF_FFFF;
const SENT_BIT: u64 = 1 << 31;

/// What a shared record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The approximate index's chained prompt hashes ([`PrefixIndex::record`]).
    Prefix,
    /// A request's precise (server) block keys, just sent to the endpoint and
    /// not yet in its KV events: the receiving shard counts them as held for a
    /// few seconds, as the sender does (#18).
    Sent,
}

fn header(endpoint: u32, kind: RecordKind, len: usize) -> u64 {
    let bit = match kind {
        RecordKind::Prefix => 0,
        RecordKind::Sent => SENT_BIT,
    };
    (u64::from(endpoint) << 32) | bit | (len as u64 & LEN_MASK)
}

fn decode(h: u64) -> (usize, RecordKind, usize) {
    let kind = if h & SENT_BIT == 0 {
        RecordKind::Prefix
    } else {
        RecordKind::Sent
    };
    ((h >> 32) as usize, kind, (h & LEN_MASK) as usize)
}

/// A shard's ends: it writes its records out and reads the others' in.
/// `Send`, owned by the shard's thread.
#[derive(Debug)]
pub struct ShardLink {
    out: Producer<u64>,
    inbound: Consumer<u64>,
    dropped_out: Arc<AtomicU64>,
    drain_blocks: usize,
    published: u64,
    applied: u64,
}

/// The control thread's ends of one shard's rings; hand it to
/// [`ShareHub::attach`].
#[derive(Debug)]
pub struct HubLink {
    from: Consumer<u64>,
    to: Producer<u64>,
    dropped_out: Arc<AtomicU64>,
}

/// Creates one shard's two rings; `None` when `config` turns sharing off.
pub fn link(config: &ShareConfig) -> Option<(ShardLink, HubLink)> {
    if !config.enabled() {
        return None;
    }
    let words = config.ring_words.max(MAX_BLOCKS + 1);
    let (out, from) = RingBuffer::new(words);
    let (to, inbound) = RingBuffer::new(words);
    let dropped_out = Arc::new(AtomicU64::new(0));
    let drain_blocks = if config.drain_blocks == 0 {
        DEFAULT_DRAIN_BLOCKS
    } else {
        config.drain_blocks
    };
    Some((
        ShardLink {
            out,
            inbound,
            dropped_out: dropped_out.clone(),
            drain_blocks,
            published: 0,
            applied: 0,
        },
        HubLink {
            from,
            to,
            dropped_out,
        },
    ))
}

impl ShardLink {
    /// Sends "`endpoint` was sent a prompt with these blocks" to the other
    /// shards (at most the first 256 hashes). Returns false when the record
    /// was dropped (out ring full; counted).
    pub fn publish(&mut self, endpoint: usize, hashes: &[u64]) -> bool {
        self.publish_kind(endpoint, RecordKind::Prefix, hashes)
    }

    /// Sends "`endpoint` was just sent a request with these precise block
    /// keys" to the other shards (at most the first 256 keys, 4,096 tokens at
    /// vLLM's block size of 16: a longer prompt's later blocks are left to the
    /// server's events). Returns false when the record was dropped.
    pub fn publish_sent(&mut self, endpoint: usize, keys: &[u64]) -> bool {
        self.publish_kind(endpoint, RecordKind::Sent, keys)
    }

    fn publish_kind(&mut self, endpoint: usize, kind: RecordKind, words: &[u64]) -> bool {
        let Ok(e) = u32::try_from(endpoint) else {
            return false;
        };
        let words = words.get(..MAX_BLOCKS).unwrap_or(words);
        if words.is_empty() {
            return true;
        }
        match self.out.write_chunk_uninit(words.len() + 1) {
            Ok(chunk) => {
                let head = std::iter::once(header(e, kind, words.len()));
                chunk.fill_from_iter(head.chain(words.iter().copied()));
                self.published += 1;
                true
            }
            Err(_) => {
                // Only this shard writes the counter; the hub reads it.
                self.dropped_out.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Replays inbound [`RecordKind::Prefix`] records into `index` (stamped
    /// `now`) and skips [`RecordKind::Sent`] ones; see [`ShardLink::drain`].
    pub fn drain_into(&mut self, index: &mut PrefixIndex, now: Instant) -> usize {
        self.drain(|kind, endpoint, words| {
            if kind == RecordKind::Prefix {
                index.record(endpoint, words, now);
            }
        })
    }

    /// Hands inbound records to `apply(kind, endpoint, words)`, oldest first,
    /// until the ring is empty or the block budget is spent (at least one
    /// record per call). Returns the records applied.
    pub fn drain(&mut self, mut apply: impl FnMut(RecordKind, usize, &[u64])) -> usize {
        let mut budget = self.drain_blocks;
        let mut applied = 0;
        while let Ok(&h) = self.inbound.peek() {
            let (endpoint, kind, len) = decode(h);
            if len == 0 || len > MAX_BLOCKS {
                // Never written by `publish`; skip the word to resynchronise.
                let _ = self.inbound.pop();
                continue;
            }
            if applied > 0 && len > budget {
                break;
            }
            let Ok(chunk) = self.inbound.read_chunk(len + 1) else {
                break;
            };
            let (a, b) = chunk.as_slices();
            match (a.get(1..), b.is_empty()) {
                (Some(body), true) => apply(kind, endpoint, body),
                _ => {
                    let mut buf = [0u64; MAX_BLOCKS];
                    for (dst, src) in buf.iter_mut().zip(a.iter().chain(b).skip(1)) {
                        *dst = *src;
                    }
                    apply(kind, endpoint, buf.get(..len).unwrap_or(&[]));
                }
            }
            chunk.commit_all();
            applied += 1;
            budget = budget.saturating_sub(len);
            if budget == 0 {
                break;
            }
        }
        self.applied += applied as u64;
        applied
    }

    /// Records published so far.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Records applied from other shards so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Records dropped because the out ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped_out.load(Ordering::Relaxed)
    }
}

/// The control thread's side: every shard's rings, by shard id.
#[derive(Debug, Default)]
pub struct ShareHub {
    from: Vec<Option<Consumer<u64>>>,
    to: Vec<Option<Producer<u64>>>,
    dropped_out: Vec<Arc<AtomicU64>>,
    received: u64,
    forwarded: u64,
    dropped_in: u64,
}

impl ShareHub {
    /// A hub with no shard attached.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches shard `shard`'s rings (replacing any earlier ones).
    pub fn attach(&mut self, shard: usize, link: HubLink) {
        if self.from.len() <= shard {
            self.from.resize_with(shard + 1, || None);
            self.to.resize_with(shard + 1, || None);
        }
        if let (Some(f), Some(t)) = (self.from.get_mut(shard), self.to.get_mut(shard)) {
            *f = Some(link.from);
            *t = Some(link.to);
        }
        self.dropped_out.push(link.dropped_out);
    }

    /// Moves every record waiting in each shard's out ring to every other
    /// attached shard's in ring (dropping, and counting, where one is full).
    /// Returns the records read.
    pub fn pump(&mut self) -> u64 {
        let mut read = 0;
        for s in 0..self.from.len() {
            let Some(Some(from)) = self.from.get_mut(s) else {
                continue;
            };
            // Bounded: only what the ring held when this pass reached it.
            let mut left = from.slots();
            while left > 0 {
                let Ok(&h) = from.peek() else { break };
                let (_, _, len) = decode(h);
                if len == 0 || len > MAX_BLOCKS {
                    let _ = from.pop();
                    left -= 1;
                    continue;
                }
                let Ok(chunk) = from.read_chunk(len + 1) else {
                    break;
                };
                let (a, b) = chunk.as_slices();
                for (t, to) in self.to.iter_mut().enumerate() {
                    let Some(to) = to.as_mut().filter(|_| t != s) else {
                        continue;
                    };
                    match to.write_chunk_uninit(len + 1) {
                        Ok(w) => {
                            w.fill_from_iter(a.iter().chain(b).copied());
                            self.forwarded += 1;
                        }
                        Err(_) => self.dropped_in += 1,
                    }
                }
                chunk.commit_all();
                read += 1;
                left = left.saturating_sub(len + 1);
            }
        }
        self.received += read;
        read
    }

    /// Counters so far.
    pub fn stats(&self) -> ShareStats {
        let out: u64 = self
            .dropped_out
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .sum();
        ShareStats {
            received: self.received,
            forwarded: self.forwarded,
            dropped: self.dropped_in + out,
            shards: self.from.iter().filter(|f| f.is_some()).count() as u64,
        }
    }
}
