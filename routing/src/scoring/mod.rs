//! Telemetry-driven endpoint picking: scorers, filters, profiles, pickers,
//! the immutable scoring snapshot and the per-shard prefix-cache index.
//!
//! Sans-IO and lock-free: the control thread builds a [`ScoringSnapshot`]
//! every scrape round (default 100 ms) and publishes it (`arc-swap`); each
//! shard owns a [`Picker`] and a [`PrefixIndex`] and, per request:
//!
//! 1. hashes the prompt once ([`PrefixIndex::hash`], ≤ 256 blocks of 64 bytes);
//! 2. fills [`Candidate`]s with each endpoint's matched prefix blocks
//!    ([`PrefixIndex::match_len`]);
//! 3. calls [`Picker::pick`] with the profile ([`Profile::resolve`]), the
//!    snapshot, its local in-flight counts and `now`;
//! 4. on [`PickOutcome::Picked`] records the prompt's blocks for the chosen
//!    endpoint ([`PrefixIndex::record`]) and counts the request in flight.
//!
//! See [`pick`] for filters, scorers and the local in-flight rule, [`profile`]
//! for the profile → weights table, [`prefix`] for the index.

pub mod pick;
pub mod prefix;
pub mod profile;
pub mod snapshot;

#[cfg(test)]
mod tests;

pub use pick::{
    is_saturated, lora_score, pick_with, Candidate, CandidateStatus, Pick, PickOutcome,
    PickRequest, Picker, ScoreBreakdown,
};
pub use prefix::{PrefixConfig, PrefixHashes, PrefixIndex};
pub use profile::{
    PickerKind, Profile, ProfileKind, Saturation, Scorer, ScorerSet, UnknownProfile, Weights,
    SCORERS,
};
pub use snapshot::{EndpointInput, EndpointView, ScoringSnapshot};
