//! Telemetry-driven endpoint picking: scorers, filters, profiles, pickers,
//! the immutable scoring snapshot, the per-shard prefix-cache index and the
//! rings that share it between shards.
//!
//! Sans-IO and lock-free: the control thread builds a [`ScoringSnapshot`]
//! every scrape round (default 100 ms) and publishes it (`arc-swap`); each
//! shard owns a [`Picker`], a [`PrefixIndex`] and a [`ShardLink`] and, per
//! request:
//!
//! 1. hashes the prompt once ([`PrefixIndex::hash`], ≤ 256 blocks of 64 bytes);
//! 2. replays the other shards' recent records into its index
//!    ([`ShardLink::drain_into`], ≤ 4,096 blocks per call);
//! 3. fills [`Candidate`]s with each endpoint's matched prefix blocks
//!    ([`PrefixIndex::match_len`]);
//! 4. calls [`Picker::pick`] with the profile ([`Profile::resolve`]), the
//!    request (model, the LoRA adapter of [`Profile::lora_adapter`], the
//!    prompt's blocks), the snapshot, its local in-flight counts and `now`;
//! 5. on [`PickOutcome::Picked`] records the prompt's blocks for the chosen
//!    endpoint ([`PrefixIndex::record`]), publishes them to the other shards
//!    ([`ShardLink::publish`]) and counts the request in flight.
//!
//! A request that names a session, on a rule whose policy has session
//! affinity, skips the scorers: [`affinity`] places it by consistent hashing
//! with bounded loads among the candidates that pass the filters.
//!
//! See [`pick`] for filters, scorers (fixed-scale queue, load-discounted
//! prefix affinity) and the local in-flight rule, [`profile`] for the
//! profile → weights table, [`prefix`] for the index, [`share`] for the
//! shard → control thread → shards rings.

pub mod affinity;
pub mod pick;
pub mod prefix;
pub mod profile;
pub mod share;
pub mod snapshot;

#[cfg(test)]
mod tests;

pub use affinity::{session_hash, AffinityConfig, Session, SessionRing};
pub use pick::{
    is_saturated, lora_score, pick_with, Candidate, CandidateStatus, Decision, Pick, PickOutcome,
    PickRequest, Picker, ScoreBreakdown, NEW_PREFIX_BAND,
};
pub use prefix::{PrefixConfig, PrefixHashes, PrefixIndex};
pub use profile::{
    PickerKind, Profile, ProfileKind, Saturation, Scorer, ScorerSet, UnknownProfile, Weights,
    DEFAULT_QUEUE_SCALE, GATEWAY_QUEUE_SCALE, LATENCY_TIE_BAND, SCORERS,
};
pub use share::{
    link as share_link, HubLink, RecordKind, ShardLink, ShareConfig, ShareHub, ShareStats,
};
pub use snapshot::{EndpointInput, EndpointView, ScoringSnapshot, ServedAdapter, ServedModels};
