//! The exact index: block → endpoints that hold it (and on which tier), fed
//! from each endpoint's event stream, and the read-only snapshot shards score
//! against.
//!
//! **Ownership.** One [`ExactIndex`] lives on the gateway's KV-events thread,
//! which alone mutates it. Every publish interval (default 10 ms) it hands
//! out a [`PreciseSnapshot`]: per endpoint an `Arc` of its block set, cloned
//! only for endpoints whose set changed since the last snapshot (so a publish
//! costs O(blocks of the endpoints that changed), ≈ 1 ms per 100k blocks, and
//! nothing when the cache is quiet). Shards read snapshots through `arc-swap`
//! and never lock.
//!
//! **Sequencing** ([`StreamTracker`]). A batch whose sequence number is the
//! next one is applied; one already applied (a replay overlap) is skipped; a
//! jump ahead is a gap: the caller replays the missing batches through the
//! server's replay socket and applies them first, or, with no replay,
//! [`ExactIndex::resync`] clears what the endpoint held (a missed
//! `BlockRemoved` would otherwise leave a stale entry) and goes on from the
//! new batch. A sequence going back to 0 is a restarted server: its cache is
//! empty, so is its entry.
//!
//! **Liveness.** An endpoint is *live* (its precise matches are used) while
//! its stream is connected and has delivered at least one batch. When the
//! stream is lost (the server closes it or cannot be reached)
//! [`ExactIndex::lose`] marks it not live at once and its entries
//! expire: they are dropped after the `expiry` grace (default 10 s), so a
//! reconnect within it can go on with them (after a replay), and in the
//! meantime the router uses the approximate index for it.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wire::{Batch, BlockKey, Event};

/// Hashes [`BlockKey`]s (already SHA-256 bits) with one multiply.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A set of block keys.
pub type KeySet = HashSet<BlockKey, BuildHasherDefault<KeyHasher>>;
type KeyMap<V> = HashMap<BlockKey, V, BuildHasherDefault<KeyHasher>>;

/// Where a block is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// GPU memory (vLLM's `medium` `"GPU"` or unset).
    Gpu,
    /// CPU memory (an offloading connector's `"CPU"`).
    Cpu,
    /// Anything else (disk, remote).
    Other,
}

impl Tier {
    /// The tier of a `medium` string.
    pub fn of(medium: Option<&str>) -> Self {
        match medium {
            None => Tier::Gpu,
            Some(m) if m.eq_ignore_ascii_case("gpu") => Tier::Gpu,
            Some(m) if m.eq_ignore_ascii_case("cpu") => Tier::Cpu,
            Some(_) => Tier::Other,
        }
    }
}

/// What to do with a batch, by its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// The next one (or the first one seen): apply it.
    Apply,
    /// Already applied (a replay overlap): skip it.
    Duplicate,
    /// Batches `from..seq` are missing: replay them, or resync.
    Gap {
        /// First missing sequence number.
        from: i64,
    },
    /// Sequence 0 after a higher one: the server restarted; clear and apply.
    Restarted,
}

/// Per-endpoint stream counters (`/debug/endpoints`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Batches applied.
    pub batches: u64,
    /// Events applied.
    pub events: u64,
    /// Last sequence number applied.
    pub last_seq: Option<i64>,
    /// Gaps detected.
    pub gaps: u64,
    /// Gaps closed by a replay.
    pub replays: u64,
    /// Gaps that could not be replayed (the endpoint was resynchronised).
    pub resyncs: u64,
    /// Messages rejected as malformed.
    pub malformed: u64,
    /// Server restarts seen (sequence back to 0).
    pub restarts: u64,
}

/// Sequence tracking for one stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamTracker {
    last: Option<i64>,
}

impl StreamTracker {
    /// The verdict on a batch numbered `seq`.
    pub fn check(&self, seq: i64) -> SeqVerdict {
        match self.last {
            None if seq == 0 => SeqVerdict::Apply,
            // Subscribed late: what came before may be in the replay buffer.
            None => SeqVerdict::Gap { from: 0 },
            Some(last) if seq == last.saturating_add(1) => SeqVerdict::Apply,
            Some(last) if seq > last => SeqVerdict::Gap {
                from: last.saturating_add(1),
            },
            Some(last) if seq == 0 && last > 0 => SeqVerdict::Restarted,
            Some(_) => SeqVerdict::Duplicate,
        }
    }

    /// Marks `seq` applied.
    pub fn applied(&mut self, seq: i64) {
        self.last = Some(seq);
    }

    /// Last applied.
    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// Forgets the position (a new subscription).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[derive(Debug, Default)]
struct EndpointEntry {
    blocks: KeyMap<Tier>,
    tracker: StreamTracker,
    stats: StreamStats,
    connected: bool,
    lost_at: Option<Instant>,
    dirty: bool,
    published: Option<Arc<EndpointBlocks>>,
}

/// One endpoint's blocks in a snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointBlocks {
    /// The blocks it holds (any tier).
    pub blocks: KeySet,
    /// Whether its stream is live (precise scoring applies).
    pub live: bool,
    /// Its stream's counters when the snapshot was taken.
    pub stats: StreamStats,
}

/// What shards score against: per endpoint id, its blocks when it has a
/// configured stream.
#[derive(Debug, Clone, Default)]
pub struct PreciseSnapshot {
    /// Increases with every publish.
    pub generation: u64,
    /// Indexed by endpoint id; `None` for endpoints without a stream.
    pub endpoints: Vec<Option<Arc<EndpointBlocks>>>,
}

impl PreciseSnapshot {
    /// Whether endpoint `ep`'s stream is live.
    pub fn is_live(&self, ep: usize) -> bool {
        self.endpoint(ep).is_some_and(|e| e.live)
    }

    fn endpoint(&self, ep: usize) -> Option<&EndpointBlocks> {
        self.endpoints.get(ep).and_then(|e| e.as_deref())
    }

    /// Whether any endpoint is live.
    pub fn any_live(&self) -> bool {
        self.endpoints.iter().flatten().any(|e| e.live)
    }

    /// The blocks endpoint `ep` holds (0 when it is not live).
    pub fn held(&self, ep: usize) -> usize {
        self.endpoint(ep)
            .filter(|e| e.live)
            .map_or(0, |e| e.blocks.len())
    }

    /// The longest run of leading `keys` endpoint `ep` holds (0 when it is not
    /// live): one set lookup per matched block.
    pub fn match_len(&self, ep: usize, keys: &[BlockKey]) -> usize {
        match self.endpoint(ep) {
            Some(e) if e.live => keys.iter().take_while(|k| e.blocks.contains(k)).count(),
            _ => 0,
        }
    }
}

/// The index; see the module docs.
#[derive(Debug)]
pub struct ExactIndex {
    endpoints: Vec<Option<EndpointEntry>>,
    expiry: Duration,
    generation: u64,
}

/// Default grace before a lost stream's entries are dropped.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(10);

impl ExactIndex {
    /// An empty index; a lost stream's entries are dropped after `expiry`.
    pub fn new(expiry: Duration) -> Self {
        Self {
            endpoints: Vec::new(),
            expiry,
            generation: 0,
        }
    }

    fn entry(&mut self, ep: usize) -> &mut EndpointEntry {
        if self.endpoints.len() <= ep {
            self.endpoints.resize_with(ep + 1, || None);
        }
        let slot = &mut self.endpoints[ep];
        slot.get_or_insert_with(|| EndpointEntry {
            dirty: true,
            ..EndpointEntry::default()
        })
    }

    /// Endpoint `ep` has a configured stream (not yet connected).
    pub fn add(&mut self, ep: usize) {
        self.entry(ep);
    }

    /// Endpoint `ep` is gone from the configuration: forget it.
    pub fn remove(&mut self, ep: usize) {
        if let Some(slot) = self.endpoints.get_mut(ep) {
            *slot = None;
        }
    }

    /// Its subscription is up (a new one starts a new sequence position).
    pub fn connected(&mut self, ep: usize) {
        let e = self.entry(ep);
        e.connected = true;
        e.lost_at = None;
        e.tracker.reset();
        e.dirty = true;
    }

    /// Its stream was lost at `now`: not live any more; entries expire.
    pub fn lose(&mut self, ep: usize, now: Instant) {
        let e = self.entry(ep);
        if e.connected || e.lost_at.is_none() {
            e.connected = false;
            e.lost_at = Some(now);
            e.dirty = true;
        }
    }

    /// Drops the entries of streams lost longer than the expiry ago.
    pub fn expire(&mut self, now: Instant) {
        let expiry = self.expiry;
        for e in self.endpoints.iter_mut().flatten() {
            let old = e
                .lost_at
                .is_some_and(|t| now.saturating_duration_since(t) >= expiry);
            if old && !e.blocks.is_empty() {
                e.blocks = KeyMap::default();
                e.dirty = true;
            }
        }
    }

    /// The verdict on batch `seq` of endpoint `ep`. After a (re)subscription
    /// a first batch numbered 0 while blocks are still held (kept through a
    /// short loss) is a restarted server: [`SeqVerdict::Restarted`].
    pub fn check(&mut self, ep: usize, seq: i64) -> SeqVerdict {
        let e = self.entry(ep);
        if e.tracker.last().is_none() && seq == 0 && !e.blocks.is_empty() {
            return SeqVerdict::Restarted;
        }
        let v = e.tracker.check(seq);
        if let SeqVerdict::Gap { .. } = v {
            e.stats.gaps += 1;
        }
        v
    }

    /// Applies batch `seq` (the caller checked it: Apply, or after a replay or
    /// a resync).
    pub fn apply(&mut self, ep: usize, seq: i64, batch: &Batch) {
        let e = self.entry(ep);
        for ev in &batch.events {
            match ev {
                Event::Stored(s) => {
                    let tier = Tier::of(s.medium.as_deref());
                    for k in &s.block_hashes {
                        e.blocks.insert(*k, tier);
                    }
                }
                Event::Removed {
                    block_hashes,
                    medium,
                } => {
                    let tier = Tier::of(medium.as_deref());
                    for k in block_hashes {
                        // Removed from one tier: keep it if another holds it.
                        if e.blocks.get(k) == Some(&tier) {
                            e.blocks.remove(k);
                        }
                    }
                }
                Event::AllCleared => e.blocks.clear(),
            }
        }
        e.tracker.applied(seq);
        e.stats.batches += 1;
        e.stats.events += batch.events.len() as u64;
        e.stats.last_seq = Some(seq);
        e.dirty = true;
    }

    /// A gap was closed by replaying through the server's replay socket.
    pub fn replayed(&mut self, ep: usize) {
        self.entry(ep).stats.replays += 1;
    }

    /// A gap could not be replayed, or the server restarted: forget what it
    /// held, so that no stale block survives; batch `seq` is applied next.
    pub fn resync(&mut self, ep: usize, restarted: bool) {
        let e = self.entry(ep);
        e.blocks.clear();
        e.tracker.reset();
        if restarted {
            e.stats.restarts += 1;
        } else {
            e.stats.resyncs += 1;
        }
        e.dirty = true;
    }

    /// A malformed message from `ep`.
    pub fn malformed(&mut self, ep: usize) {
        self.entry(ep).stats.malformed += 1;
    }

    /// Counters of `ep`'s stream.
    pub fn stats(&self, ep: usize) -> Option<StreamStats> {
        self.endpoints.get(ep)?.as_ref().map(|e| e.stats)
    }

    /// Whether `ep`'s stream is live.
    pub fn is_live(&self, ep: usize) -> bool {
        self.endpoints
            .get(ep)
            .and_then(|e| e.as_ref())
            .is_some_and(|e| e.connected && e.stats.batches > 0)
    }

    /// Blocks held for `ep`.
    pub fn len(&self, ep: usize) -> usize {
        self.endpoints
            .get(ep)
            .and_then(|e| e.as_ref())
            .map_or(0, |e| e.blocks.len())
    }

    /// Whether nothing is held for any endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.iter().flatten().all(|e| e.blocks.is_empty())
    }

    /// Whether a snapshot would differ from the last one.
    pub fn dirty(&self) -> bool {
        self.endpoints.iter().flatten().any(|e| e.dirty)
    }

    /// A snapshot for the shards (endpoints unchanged since the last one share
    /// their sets with it).
    pub fn snapshot(&mut self) -> PreciseSnapshot {
        self.generation += 1;
        let mut out = Vec::with_capacity(self.endpoints.len());
        for slot in &mut self.endpoints {
            let Some(e) = slot else {
                out.push(None);
                continue;
            };
            let live = e.connected && e.stats.batches > 0;
            if e.dirty || e.published.is_none() {
                e.published = Some(Arc::new(EndpointBlocks {
                    blocks: e.blocks.keys().copied().collect(),
                    live,
                    stats: e.stats,
                }));
                e.dirty = false;
            }
            out.push(e.published.clone());
        }
        PreciseSnapshot {
            generation: self.generation,
            endpoints: out,
        }
    }
}
