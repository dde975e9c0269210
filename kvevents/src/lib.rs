//! shardgate-kvevents: precise prefix-cache routing from vLLM's KV-cache
//! events, without I/O.
//!
//! - [`wire`]: the ZMQ multipart message (topic, 8-byte sequence, payload)
//!   and the msgpack `KVEventBatch` (`BlockStored`, `BlockRemoved`,
//!   `AllBlocksCleared`), decoded from either msgspec struct encoding and
//!   encoded (for the simulator); malformed input is rejected with the
//!   event and field at fault.
//! - [`hash`]: vLLM's reproducible `sha256_cbor` block hashes of token ids,
//!   so the gateway names a prompt's blocks exactly as the server does.
//! - [`index`]: sequence tracking (gaps, replays, restarts), the exact
//!   block → endpoints index, and the read-only [`PreciseSnapshot`] the
//!   shards score against.
//! - [`pending`]: what a shard just sent where, counted as held until the
//!   server's events catch up.
//!
//! The sockets (ZMQ SUB and the replay DEALER) live in the gateway's
//! `kv_events` thread; the simulator publishes with the same encoder.

#![forbid(unsafe_code)]

pub mod hash;
pub mod index;
pub mod pending;
pub mod wire;

#[cfg(test)]
mod tests;

pub use hash::{BlockHasher, DEFAULT_BLOCK_SIZE, DEFAULT_SEED};
pub use index::{
    EndpointBlocks, ExactIndex, PreciseSnapshot, SeqVerdict, StreamStats, StreamTracker, Tier,
};
pub use pending::Pending;
pub use wire::{
    decode_batch, encode_batch, message, Batch, BlockKey, BlockStored, Event, WireError,
};
