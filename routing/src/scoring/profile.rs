//! Scheduling profiles: which scorers, with which weights, which picker, and
//! whether the saturation filter applies.
//!
//! Chosen by `InferencePolicy.spec.loadBalancing.algorithm` (linked from a
//! rule's `ExtensionRef`), else by `InferenceConfig.spec.modelRouting.strategy`
//! (when `enabled`), else the default (GAIE's). Names are case-insensitive and
//! `_` reads as `-`.
//!
//! | profile | queue | kv | prefix | running | latency | lora | gpu | memory | picker | saturation filter |
//! |---|---|---|---|---|---|---|---|---|---|---|
//! | `default` | 2 | 2 | 3 | | | 1 | | | max score | yes |
//! | `prefix-cache-aware` (`prefix-aware`) | 2 | 2 | 3 | | | 1 | | | max score | yes |
//! | `least-queue` | 1 | | | | | | | | max score | yes |
//! | `kv-cache-aware` | 1 | 2 | | | | | | | max score | yes |
//! | `lora-affinity` | 1 | 1 | | | | 2 | | | max score | yes |
//! | `latency-optimized` | 2 | 2 | 3 | | tie-break | 1 | | | max score | yes |
//! | `resource-weighted` | | | | | `inferenceLatency` | | `gpuUtilization` | `memoryAvailable` | max score | yes |
//! | `power-of-two` (`p2c`) | waiting + running + local in-flight of two random picks | | | | | | | | P2C | yes |
//! | `round-robin` | | | | | | | | | round robin | no |
//! | `random` | | | | | | | | | uniform | no |
//!
//! - The default has GAIE's weights: queue ×2, KV ×2, prefix ×3, max score
//!   with a random tie-break, but not GAIE's min-max queue (see [`super::pick`]):
//!   the queue scores `k / (k + q)` on a fixed scale ([`Profile::queue_scale`],
//!   default 5 = the saturation threshold), and the prefix score is the matched
//!   fraction of the prompt times that same load factor, so a long prefix
//!   match beats a queue one or two requests longer while an endpoint queued
//!   well beyond the others loses its affinity (measured on the
//!   routing-quality benchmark: with min-max, a one-request difference plus
//!   some KV usage outweighed a 90 % match, and the hit rate fell from 0.72
//!   to 0.55 as load rose).
//! - LoRA affinity ×1 joins for every request of a profile with a LoRA weight
//!   ([`Profile::lora_adapter`]): the request's model is the adapter, and the
//!   scorer stays out (weighs nothing) for a candidate whose telemetry says
//!   that model is its served base model, or for a request without a model.
//! - `latency-optimized` (the seed's `InferenceConfig` strategy) aims at
//!   TTFT, which is queue wait + prefill, and on an LLM pool prefill is what
//!   a cache hit saves: it scores like the default (queue ×2, KV ×2, prefix
//!   ×3, LoRA ×1) and uses the measured TTFT (windowed mean; e2e latency
//!   where no TTFT is exported) only to break ties: among the candidates
//!   whose total is within [`Profile::latency_tie_band`] (0.005) of the
//!   best, the fewest local in-flight come first, and among those the one
//!   with the lowest measured latency wins (then random). 0.005 of the
//!   normalised total is a 1.2 % difference in prefix match or 1.75 % in KV
//!   usage, and less than one request of queue at k = 30 (0.009), so latency
//!   chooses only among cache-equivalent, equally loaded endpoints. Latency
//!   before the local in-flight count (the order until 2026-12-06) let one
//!   endpoint win every tie between two scrapes (twin sims report equal KV
//!   usage) and lost to `default` on the mixed workload at 12 req/s (0.594
//!   against 0.556 s mean TTFT); in-flight first, `latency-optimized` is at
//!   or below `default` in every cell of the routing-quality benchmark
//!   (`bench/results/routing-quality.md`). It was a weighted scorer (queue 2, KV 1, prefix 2, latency
//!   2): `fastest / this` spans 0.02–1 between a cache hit's 60 ms and a
//!   queued miss's seconds, outweighed a full prefix match and pulled traffic
//!   to whichever sims had answered fastest (routing-quality benchmark,
//!   shared prefix at 12 req/s: mean TTFT 3.9 s and hit rate 0.46 against
//!   0.25 s and 0.85 for `prefix-cache-aware`). A band of 0.02 (a 2-request
//!   queue difference) kept the cache but lost to `default` on the mixed and
//!   LoRA workloads (mean TTFT 0.67 against 0.55 s at 12 req/s, median of 3
//!   runs): measured TTFT ignores decode speed and lags, so it sent more to
//!   the slow-decode sim than the KV and queue terms would.
//! - `resource-weighted` uses the policy's `factors` as weights (absent ones
//!   default to ⅓ each; all zero reads as all ⅓). It has no queue term, so
//!   between snapshots a burst spreads only through the tie-break (equal
//!   scores → fewest local in-flight); prefer `default` for LLM pools. vLLM
//!   exports no GPU utilisation: without DCGM that weight is redistributed.
//! - `round-robin` and `random` read no telemetry and shed nothing (telemetry-
//!   free baselines); set [`Profile::saturation`] to change that.
//! - `locality` is in no built-in profile: the gateway adds it to every
//!   max-score profile when `InferenceConfig.resourceManagement.gpuAffinity`
//!   is true and it knows its node (`--node-name`), with weight
//!   `--locality-weight` (default 2). An endpoint whose EndpointSlice
//!   `nodeName` is the gateway's node scores 1, any other (or unknown) 0. With
//!   the default weights (queue 2, KV 2) a queue or KV difference is worth at
//!   most 2 each, so a local endpoint keeps the traffic until the saturation
//!   filter takes it out (more than 5 waiting or 0.8 KV usage by default);
//!   then the remote ones serve. A weight under 2 lets load differences win
//!   earlier.

use std::time::Duration;

use crate::config::{InferenceConfig, InferencePolicy, LoadFactors};

/// Which profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProfileKind {
    /// GAIE's default.
    Default,
    /// Prefix-cache-aware (same weights as the default).
    PrefixCacheAware,
    /// Fewest waiting requests.
    LeastQueue,
    /// Most free KV cache.
    KvCacheAware,
    /// Adapter already loaded.
    LoraAffinity,
    /// Lowest expected TTFT.
    LatencyOptimized,
    /// The policy's `factors` over GPU, memory and latency.
    ResourceWeighted,
    /// Power of two choices.
    PowerOfTwo,
    /// Round robin.
    RoundRobin,
    /// Uniformly random.
    Random,
}

impl ProfileKind {
    /// Parses a profile name (see the module table).
    pub fn parse(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        Some(match n.as_str() {
            "" | "default" => Self::Default,
            "prefix-cache-aware" | "prefix-aware" | "prefix-cache" | "cache-aware" => {
                Self::PrefixCacheAware
            }
            "least-queue" | "queue" => Self::LeastQueue,
            "kv-cache-aware" | "kv-aware" | "kv-cache" => Self::KvCacheAware,
            "lora-affinity" | "lora" => Self::LoraAffinity,
            "latency-optimized" | "latency-optimised" | "latency" => Self::LatencyOptimized,
            "resource-weighted" => Self::ResourceWeighted,
            "power-of-two" | "power-of-two-choices" | "p2c" => Self::PowerOfTwo,
            "round-robin" | "roundrobin" => Self::RoundRobin,
            "random" => Self::Random,
            _ => return None,
        })
    }

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::PrefixCacheAware => "prefix-cache-aware",
            Self::LeastQueue => "least-queue",
            Self::KvCacheAware => "kv-cache-aware",
            Self::LoraAffinity => "lora-affinity",
            Self::LatencyOptimized => "latency-optimized",
            Self::ResourceWeighted => "resource-weighted",
            Self::PowerOfTwo => "power-of-two",
            Self::RoundRobin => "round-robin",
            Self::Random => "random",
        }
    }
}

/// How the endpoint is chosen among the filtered candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickerKind {
    /// Highest weighted score; ties → fewest local in-flight → random.
    MaxScore,
    /// Rotate over the candidates.
    RoundRobin,
    /// Uniformly random.
    Random,
    /// Two distinct random candidates; the less loaded wins.
    PowerOfTwo,
}

/// A scorer: each maps a candidate to `[0, 1]`, higher = better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scorer {
    /// `k / (k + q)`, q = waiting + local in-flight, k = [`Profile::queue_scale`].
    Queue,
    /// 1 − KV-cache usage.
    KvCache,
    /// Matched prefix blocks / prompt blocks, times the queue's `k / (k + q)`.
    Prefix,
    /// Min-max normalised (running + local in-flight), inverted.
    Running,
    /// Fastest windowed mean latency / this one's (TTFT, else e2e).
    Latency,
    /// 1.0 adapter running, 0.8 free slot, 0.6 adapter waiting, 0 otherwise.
    Lora,
    /// 1 − GPU utilisation.
    Gpu,
    /// 1 − KV-cache usage, else 1 − GPU memory used ratio.
    Memory,
    /// 1 on the gateway's own node, else 0 (`gpuAffinity`; see the module docs).
    Locality,
}

/// Number of scorers.
pub const SCORERS: usize = 9;

impl Scorer {
    /// Every scorer, in index order.
    pub const ALL: [Scorer; SCORERS] = [
        Scorer::Queue,
        Scorer::KvCache,
        Scorer::Prefix,
        Scorer::Running,
        Scorer::Latency,
        Scorer::Lora,
        Scorer::Gpu,
        Scorer::Memory,
        Scorer::Locality,
    ];

    /// Name for the debug view.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::KvCache => "kv_cache",
            Self::Prefix => "prefix",
            Self::Running => "running",
            Self::Latency => "latency",
            Self::Lora => "lora",
            Self::Gpu => "gpu",
            Self::Memory => "memory",
            Self::Locality => "locality",
        }
    }

    /// Index in [`Scorer::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A small set of [`Scorer`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ScorerSet(u16);

impl ScorerSet {
    /// The empty set.
    pub const EMPTY: ScorerSet = ScorerSet(0);

    /// Adds `s`.
    pub fn insert(&mut self, s: Scorer) {
        self.0 |= 1 << s.index();
    }

    /// Whether `s` is in the set.
    pub fn contains(self, s: Scorer) -> bool {
        self.0 & (1 << s.index()) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Members in [`Scorer::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Scorer> {
        Scorer::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

/// Scorer weights (0 = scorer off).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Weights(pub [f64; SCORERS]);

impl Weights {
    /// A scorer's weight.
    pub fn get(&self, s: Scorer) -> f64 {
        self.0.get(s.index()).copied().unwrap_or(0.0)
    }

    /// Sets a scorer's weight (negative or NaN reads as 0).
    pub fn set(&mut self, s: Scorer, w: f64) -> &mut Self {
        if let Some(slot) = self.0.get_mut(s.index()) {
            *slot = if w.is_finite() && w > 0.0 { w } else { 0.0 };
        }
        self
    }

    /// Builds from `(scorer, weight)` pairs.
    pub fn of(pairs: &[(Scorer, f64)]) -> Self {
        let mut w = Weights::default();
        for (s, v) in pairs {
            w.set(*s, *v);
        }
        w
    }

    /// Scorers with a positive weight.
    pub fn active(&self) -> ScorerSet {
        let mut set = ScorerSet::EMPTY;
        for s in Scorer::ALL {
            if self.get(s) > 0.0 {
                set.insert(s);
            }
        }
        set
    }
}

/// The saturation filter (GAIE's numbers by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Saturation {
    /// Saturated above this many waiting requests (default 5).
    pub max_waiting: f64,
    /// Saturated above this KV-cache usage (default 0.8).
    pub max_kv_usage: f64,
    /// Saturated when the last successful scrape is older (default 200 ms).
    pub max_metrics_age: Duration,
    /// Whether an endpoint never scraped counts as saturated (default false:
    /// telemetry may be off for the pool, or the endpoint just appeared; the
    /// health filter covers dead ones).
    pub unscraped_is_saturated: bool,
}

impl Default for Saturation {
    fn default() -> Self {
        Self {
            max_waiting: 5.0,
            max_kv_usage: 0.8,
            max_metrics_age: Duration::from_millis(200),
            unscraped_is_saturated: false,
        }
    }
}

/// A profile name that is not in the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown load-balancing algorithm {0:?}; known: default, prefix-cache-aware, least-queue, kv-cache-aware, lora-affinity, latency-optimized, resource-weighted, power-of-two, round-robin, random")]
pub struct UnknownProfile(pub String);

/// A scheduling profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Which profile.
    pub kind: ProfileKind,
    /// The picker.
    pub picker: PickerKind,
    /// Scorer weights (for [`PickerKind::MaxScore`]).
    pub weights: Weights,
    /// The saturation filter; `None` = off.
    pub saturation: Option<Saturation>,
    /// Scores within this of the best tie (default 1e-9).
    pub tie_epsilon: f64,
    /// The queue length `k` at which the queue scorer gives ½ and a prefix
    /// match counts half (`k / (k + q)`); default [`DEFAULT_QUEUE_SCALE`]
    /// (GAIE's saturation threshold). Not finite or ≤ 0 reads as the default.
    pub queue_scale: f64,
    /// Measured latency as a tie-break: when > 0, candidates whose weighted
    /// total is within this of the best are tied, and the lowest measured
    /// latency (TTFT, else e2e) among them wins before the local in-flight
    /// and random tie-breaks. [`LATENCY_TIE_BAND`] for `latency-optimized`,
    /// 0 (off) for the others.
    pub latency_tie_band: f64,
}

/// [`Profile::latency_tie_band`] of `latency-optimized`: 0.005 of the
/// normalised total (a 1.2 % prefix-match or 1.75 % KV-usage difference,
/// less than one request of queue at the gateway's queue scale of 30; see
/// the module docs).
pub const LATENCY_TIE_BAND: f64 = 0.005;

/// Library default of [`Profile::queue_scale`]: 5 requests (GAIE's saturation
/// threshold). The gateway passes its own (`--queue-scale`, default
/// [`GATEWAY_QUEUE_SCALE`]).
pub const DEFAULT_QUEUE_SCALE: f64 = 5.0;

/// The gateway's default queue scale: 30 requests. On the routing-quality benchmark
/// (4 sims of 16 sequences each, shared-prefix workload at 12 req/s) k = 5 let a hot
/// prompt spill about 8 deep and lose its cache under load (mean TTFT 0.36–2.6 s
/// across runs), k = 30 kept affinity (0.27–0.31 s, hit rate 0.82–0.85). The
/// saturation filter still caps how deep any endpoint gets, so a hot prefix cannot
/// melt one replica.
pub const GATEWAY_QUEUE_SCALE: f64 = 30.0;

impl Default for Profile {
    fn default() -> Self {
        Self::new(ProfileKind::Default, None)
    }
}

impl Profile {
    /// The profile of `kind`; `factors` matter only for
    /// [`ProfileKind::ResourceWeighted`].
    pub fn new(kind: ProfileKind, factors: Option<&LoadFactors>) -> Self {
        use Scorer::*;
        let max = |pairs: &[(Scorer, f64)]| (PickerKind::MaxScore, Weights::of(pairs));
        let (picker, weights) = match kind {
            ProfileKind::Default | ProfileKind::PrefixCacheAware => {
                max(&[(Queue, 2.0), (KvCache, 2.0), (Prefix, 3.0), (Lora, 1.0)])
            }
            ProfileKind::LeastQueue => max(&[(Queue, 1.0)]),
            ProfileKind::KvCacheAware => max(&[(Queue, 1.0), (KvCache, 2.0)]),
            ProfileKind::LoraAffinity => max(&[(Queue, 1.0), (KvCache, 1.0), (Lora, 2.0)]),
            ProfileKind::LatencyOptimized => {
                max(&[(Queue, 2.0), (KvCache, 2.0), (Prefix, 3.0), (Lora, 1.0)])
            }
            ProfileKind::ResourceWeighted => {
                let f = |v: Option<f64>| v.filter(|x| x.is_finite() && *x >= 0.0);
                let (mut g, mut m, mut l) = match factors {
                    Some(fs) => (
                        f(fs.gpu_utilization).unwrap_or(1.0 / 3.0),
                        f(fs.memory_available).unwrap_or(1.0 / 3.0),
                        f(fs.inference_latency).unwrap_or(1.0 / 3.0),
                    ),
                    None => (1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0),
                };
                if g + m + l <= 0.0 {
                    (g, m, l) = (1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0);
                }
                max(&[(Gpu, g), (Memory, m), (Latency, l)])
            }
            ProfileKind::PowerOfTwo => (PickerKind::PowerOfTwo, Weights::default()),
            ProfileKind::RoundRobin => (PickerKind::RoundRobin, Weights::default()),
            ProfileKind::Random => (PickerKind::Random, Weights::default()),
        };
        let saturation = match kind {
            ProfileKind::RoundRobin | ProfileKind::Random => None,
            _ => Some(Saturation::default()),
        };
        let latency_tie_band = match kind {
            ProfileKind::LatencyOptimized => LATENCY_TIE_BAND,
            _ => 0.0,
        };
        Self {
            kind,
            picker,
            weights,
            saturation,
            tie_epsilon: 1e-9,
            queue_scale: DEFAULT_QUEUE_SCALE,
            latency_tie_band,
        }
    }

    /// The profile named `name` (see the module table).
    pub fn from_name(name: &str, factors: Option<&LoadFactors>) -> Result<Self, UnknownProfile> {
        ProfileKind::parse(name)
            .map(|k| Self::new(k, factors))
            .ok_or_else(|| UnknownProfile(name.to_owned()))
    }

    /// The profile for a rule: the policy's `loadBalancing.algorithm` if set,
    /// else the `InferenceConfig`'s `modelRouting.strategy` if routing is
    /// enabled, else the default. An unknown name is an error (report it and
    /// fall back to `Profile::default()`).
    pub fn resolve(
        policy: Option<&InferencePolicy>,
        config: Option<&InferenceConfig>,
    ) -> Result<Self, UnknownProfile> {
        let lb = policy.and_then(|p| p.spec.load_balancing.as_ref());
        let factors = lb.and_then(|l| l.factors.as_ref());
        if let Some(alg) = lb.and_then(|l| l.algorithm.as_deref()) {
            return Self::from_name(alg, factors);
        }
        let strategy = config
            .and_then(|c| c.spec.model_routing.as_ref())
            .filter(|r| r.enabled)
            .and_then(|r| r.strategy.as_deref());
        match strategy {
            Some(s) => Self::from_name(s, factors),
            None => Ok(Self::new(ProfileKind::Default, factors)),
        }
    }

    /// This profile with another saturation filter.
    pub fn with_saturation(mut self, saturation: Option<Saturation>) -> Self {
        self.saturation = saturation;
        self
    }

    /// This profile with other weights.
    pub fn with_weights(mut self, weights: Weights) -> Self {
        self.weights = weights;
        self
    }

    /// This profile with another latency tie band (see
    /// [`Self::latency_tie_band`]; 0 = off).
    pub fn with_latency_tie_band(mut self, band: f64) -> Self {
        self.latency_tie_band = band;
        self
    }

    /// This profile with another queue scale (see [`Self::queue_scale`]).
    pub fn with_queue_scale(mut self, k: f64) -> Self {
        self.queue_scale = k;
        self
    }

    /// The queue scale in force: [`Self::queue_scale`] if finite and
    /// positive, else [`DEFAULT_QUEUE_SCALE`].
    pub fn effective_queue_scale(&self) -> f64 {
        if self.queue_scale.is_finite() && self.queue_scale > 0.0 {
            self.queue_scale
        } else {
            DEFAULT_QUEUE_SCALE
        }
    }

    /// The adapter to score for a request naming `model`: the model itself
    /// when this profile weighs LoRA affinity, else `None`. On a vLLM server
    /// an adapter is addressed by its own model name; the picker tells a base
    /// model from an adapter per endpoint (its telemetry's served model), so
    /// every request of a LoRA-weighing profile can pass its model here.
    pub fn lora_adapter<'a>(&self, model: Option<&'a str>) -> Option<&'a str> {
        model.filter(|m| !m.is_empty() && self.weights.get(Scorer::Lora) > 0.0)
    }
}
