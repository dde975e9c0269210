//! Filters → scorers → picker, on a shard, against its current snapshot.
//!
//! 1. **Filters**: the endpoint is known, healthy, serves the request's model
//!    and adapter ([`super::EndpointView::serves`]: a base model it lists, an
//!    adapter loaded there, or an adapter of a base model it serves when a
//!    LoRA slot is free; one whose `/v1/models` was never read serves
//!    anything — see [`super::snapshot`]) and — when the profile has
//!    a [`Saturation`] filter — is not saturated: more than 5 waiting, more
//!    than 0.8 KV usage, or a last scrape older than 200 ms (GAIE's numbers,
//!    configurable). If every healthy, serving candidate is saturated the
//!    outcome is [`PickOutcome::AllSaturated`], carrying the pick the profile
//!    would make among the saturated ones: the caller answers 503 / 429 with
//!    `Retry-After` for sheddable requests and may still send non-sheddable
//!    ones to `fallback` (GAIE's rule).
//! 2. **Scorers** ([`Scorer`]), each in `[0, 1]`, higher = better, combined
//!    as `Σ wₛ·scoreₛ / Σ wₛ` over the scorers *present* for that candidate:
//!    a missing or stale signal is never read as zero — its weight is
//!    redistributed over the present ones and reported in [`Pick::missing`] /
//!    [`ScoreBreakdown::missing`]. A scorer that does not apply to the request
//!    (prefix for a prompt without a whole block, LoRA without an adapter or
//!    for a candidate whose served base model *is* the requested model) weighs
//!    nothing and is not reported missing. A candidate with no scorer present
//!    scores a neutral 0.5.
//!
//!    **Load against affinity, on fixed scales.** With `q` = waiting + local
//!    in-flight and `k` = [`Profile::queue_scale`] (default 5, the saturation
//!    threshold; `--queue-scale`): queue = `k / (k + q)` (1, 0.83, 0.71 for
//!    q = 0, 1, 2; ½ at q = k), and prefix = matched fraction of the prompt ×
//!    `k / (k + q)` (a cache hit saves prefill, which matters less behind a
//!    queue, and a hot prefix must not melt one replica). Under the default
//!    weights (queue 2, KV 2, prefix 3) a 90 % match on an endpoint with
//!    q = 2 scores 3·0.9·0.71 + 2·0.71 = 3.36 against 2 for an idle cold one,
//!    so affinity holds against a 1–2 request difference even with 0.5 more
//!    KV usage; a full match against a cold endpoint with equal KV usage is
//!    lost once `q > 1.5·k + 2.5·q_cold`: q ≥ 8 against an idle one. The min-max queue that GAIE uses
//!    gave one waiting request the whole queue weight. The running scorer
//!    (no built-in profile uses it; batch sizes have no common scale) stays
//!    min-max over the filtered set.
//! 3. **Picker**: max score (a lone member, the usual case of a route to one
//!    endpoint, is picked without being scored; [`Pick::score`] is `None`);
//!    ties (within `tie_epsilon`) go to the fewest local in-flight requests,
//!    then uniformly at random. **A prompt that no candidate holds** (prefix
//!    scored, every match 0) is a new prefix that will stay where it lands:
//!    candidates within [`NEW_PREFIX_BAND`] (0.02, about two requests of queue
//!    at the gateway's queue scale) of the best are tied, and the one holding
//!    the fewest prefix families ([`Candidate::held_families`]: distinct
//!    prompts' first blocks), then the fewest blocks
//!    ([`Candidate::held_blocks`]), wins (the best score among equally placed
//!    ones), instead of wherever the random tie-break would put it: each family
//!    then grows on its own endpoint, spread evenly (a simulation of the
//!    routing-quality benchmark, `bench/results/routing-quality-oracle.md`,
//!    puts this rule at 0.90× of vllm-router's mean TTFT against 0.97× for the
//!    fewest blocks; on the real benchmark the two were not told apart from
//!    run-to-run noise, run G of `routing-quality-precise.md`). A profile with
//!    a [`Profile::latency_tie_band`] (`latency-optimized`: 0.005) ties every
//!    candidate within that band of the best and gives the tie to the lowest
//!    measured latency (TTFT, else e2e) first. Or round robin, random, or power
//!    of two choices. A request with a [`PickRequest::session`] skips the
//!    scorers and the profile's picker: consistent hashing with bounded loads
//!    over the filtered candidates ([`super::affinity`]); the pick says which
//!    decided ([`Pick::decision`]).
//!
//! **Local in-flight (bursts)**: `local_inflight[i]` is this shard's current
//! in-flight count to candidate *i* (increment on dispatch, decrement on
//! completion). The queue scorer and the prefix scorer's load factor use
//! `waiting + local_inflight`, the running scorer `running + local_inflight`,
//! P2C `waiting + running + local`, and the max-score tie-break prefers the
//! smaller local count. A snapshot is up to a
//! scrape interval old; without this, every request of a burst would see the
//! same "best" endpoint. Requests the server already counts are counted twice
//! — a bias towards spreading, small since each shard holds only its share of
//! the traffic. Saturation uses telemetry only.
//!
//! No heap allocation per call for ≤ 64 candidates (stack scratch, ≈ 5 KiB);
//! above that the scratch is a few `Vec`s.

use std::time::Instant;

use super::affinity::{bounded_pick, load_cap, Session};
use super::profile::{PickerKind, Profile, Saturation, Scorer, ScorerSet, SCORERS};
use super::snapshot::{EndpointView, ScoringSnapshot};
use crate::telemetry::{LoraState, SignalKind};

/// What the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PickRequest<'a> {
    /// Requested model: a base model or an adapter name (checked with
    /// [`EndpointView::serves`]).
    pub model: Option<&'a str>,
    /// Requested LoRA adapter, if any (enables the LoRA scorer; see
    /// [`super::Profile::lora_adapter`]). A candidate whose served base model
    /// is this name is scored without it.
    pub adapter: Option<&'a str>,
    /// Whole blocks of the prompt ([`super::PrefixHashes::prompt_blocks`]):
    /// the prefix score is matched blocks / this; 0 turns the prefix scorer
    /// off for this request.
    pub prefix_total_blocks: u32,
    /// The request's session, when its rule's policy has session affinity
    /// and the request names one: the endpoint is then chosen by consistent
    /// hashing with bounded loads among the candidates that pass the filters
    /// ([`super::affinity`]), whatever the profile's picker.
    pub session: Option<Session<'a>>,
}

/// What chose the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decision {
    /// The profile's picker (scores, round robin, random, P2C).
    #[default]
    Profile,
    /// Session affinity: the session's first eligible endpoint on the ring.
    SessionHome,
    /// Session affinity: an endpoint further clockwise, the earlier ones
    /// being at the load bound.
    SessionSpilled,
}

impl Decision {
    /// Every decision, in metric-label order.
    pub const ALL: [Decision; 3] = [
        Decision::Profile,
        Decision::SessionHome,
        Decision::SessionSpilled,
    ];

    /// Name for metrics and the debug view.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Profile => "profile",
            Self::SessionHome => "session_home",
            Self::SessionSpilled => "session_spilled",
        }
    }

    /// Index in [`Decision::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One candidate endpoint (plain data, so a shard can keep a reusable
/// buffer of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Candidate {
    /// Endpoint id in the snapshot.
    pub endpoint: usize,
    /// Blocks of the prompt's prefix this endpoint recently served
    /// ([`super::PrefixIndex::match_len`]).
    pub prefix_blocks: u32,
    /// Blocks the endpoint holds in all (the index the prefix match came
    /// from: [`super::PrefixIndex::len`], or the server's own count with
    /// precise routing): where a prompt that no endpoint holds is placed
    /// (see the module docs). 0 when unknown.
    pub held_blocks: u32,
    /// Prefix families the endpoint holds ([`super::PrefixIndex::families`]:
    /// distinct prompts' first blocks): a new prompt goes where the fewest
    /// families live, then the fewest blocks. 0 when unknown.
    pub held_families: u32,
}

/// What the filters said about a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CandidateStatus {
    /// Passed every filter.
    #[default]
    Eligible,
    /// Healthy and serving, but saturated.
    Saturated,
    /// Failed its health checks.
    Unhealthy,
    /// Does not serve the model or adapter.
    NotServing,
    /// Not in the snapshot.
    Unknown,
}

/// Per-candidate detail for the debug view.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScoreBreakdown {
    /// Endpoint id.
    pub endpoint: usize,
    /// Filter verdict.
    pub status: CandidateStatus,
    /// Each scorer's score (index [`Scorer::index`]); `None` when off or
    /// missing.
    pub scores: [Option<f64>; SCORERS],
    /// Weighted total, for max-score profiles and scored candidates.
    pub total: Option<f64>,
    /// Active scorers without data for this candidate (weight redistributed).
    pub missing: ScorerSet,
}

/// The chosen candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    /// Index into the `candidates` slice.
    pub index: usize,
    /// Endpoint id.
    pub endpoint: usize,
    /// Its weighted score (max-score profiles only, and only when there was a
    /// choice: a lone member is picked unscored; [`Picker::pick_explained`]
    /// always scores).
    pub score: Option<f64>,
    /// Active scorers without data for it (weight redistributed; empty when it
    /// was not scored).
    pub missing: ScorerSet,
    /// What chose it.
    pub decision: Decision,
}

/// The result of a pick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PickOutcome {
    /// An eligible endpoint.
    Picked(Pick),
    /// Every healthy, serving candidate is saturated; `fallback` is the pick
    /// among them, for requests that are not sheddable.
    AllSaturated {
        /// The profile's choice among the saturated candidates.
        fallback: Option<Pick>,
    },
    /// No healthy candidate serves the request (503).
    NoCandidate,
}

impl PickOutcome {
    /// The endpoint to use: the pick, or when all are saturated the fallback
    /// if `use_saturated` (non-sheddable requests).
    pub fn endpoint(&self, use_saturated: bool) -> Option<usize> {
        match self {
            Self::Picked(p) => Some(p.endpoint),
            Self::AllSaturated { fallback } if use_saturated => fallback.map(|p| p.endpoint),
            _ => None,
        }
    }
}

/// A shard's picker: its RNG and round-robin cursor.
#[derive(Debug, Clone)]
pub struct Picker {
    rng: fastrand::Rng,
    rr: usize,
}

impl Picker {
    /// A picker with a seeded RNG (seed per shard, e.g. from its index).
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            rr: 0,
        }
    }

    /// Picks an endpoint; see the module docs.
    pub fn pick(
        &mut self,
        profile: &Profile,
        snapshot: &ScoringSnapshot,
        req: &PickRequest<'_>,
        candidates: &[Candidate],
        local_inflight: &[u32],
        now: Instant,
    ) -> PickOutcome {
        let rng = &mut self.rng;
        let mut draw = |n: u32| rng.u32(0..n.max(1));
        pick_with(
            profile,
            snapshot,
            req,
            candidates,
            local_inflight,
            now,
            &mut draw,
            &mut self.rr,
            None,
        )
    }

    /// Like [`Self::pick`], filling `out[i]` for candidate `i` (up to
    /// `out.len()`) with the filter verdict and scores.
    #[allow(clippy::too_many_arguments)]
    pub fn pick_explained(
        &mut self,
        profile: &Profile,
        snapshot: &ScoringSnapshot,
        req: &PickRequest<'_>,
        candidates: &[Candidate],
        local_inflight: &[u32],
        now: Instant,
        out: &mut [ScoreBreakdown],
    ) -> PickOutcome {
        let rng = &mut self.rng;
        let mut draw = |n: u32| rng.u32(0..n.max(1));
        pick_with(
            profile,
            snapshot,
            req,
            candidates,
            local_inflight,
            now,
            &mut draw,
            &mut self.rr,
            Some(out),
        )
    }
}

/// Candidates whose scratch fits the small stack tier (a route's group of a
/// few endpoints: 0.7 KB of scratch).
const SMALL: usize = 8;

/// Candidates whose scratch still lives on the stack (5.3 KB); more are
/// scored in heap scratch.
const STACK: usize = 64;

/// How far below the best a candidate may score and still be tied when the
/// prompt is a new prefix (see the module docs): 0.02 of the normalised
/// total, two requests of queue at a queue scale of 30 under the default
/// weights, or 8 % of KV usage.
pub const NEW_PREFIX_BAND: f64 = 0.02;

/// Marks a scorer that does not apply to a candidate in the raw scratch (raw
/// signals are never negative; NaN marks a missing one).
const NOT_APPLICABLE: f64 = f64::NEG_INFINITY;

struct Scratch<'s> {
    status: &'s mut [CandidateStatus],
    raw: &'s mut [[f64; SCORERS]],
    totals: &'s mut [f64],
    missing: &'s mut [ScorerSet],
}

/// The pick with an explicit RNG (`rng(n)` returns a uniform value in
/// `0..n`) and round-robin cursor; [`Picker`] wraps it.
#[allow(clippy::too_many_arguments)]
pub fn pick_with<R: FnMut(u32) -> u32>(
    profile: &Profile,
    snapshot: &ScoringSnapshot,
    req: &PickRequest<'_>,
    candidates: &[Candidate],
    local_inflight: &[u32],
    now: Instant,
    rng: &mut R,
    rr_cursor: &mut usize,
    explain: Option<&mut [ScoreBreakdown]>,
) -> PickOutcome {
    let n = candidates.len();
    if n == 0 {
        return PickOutcome::NoCandidate;
    }
    let ctx = Ctx {
        profile,
        snapshot,
        req,
        candidates,
        local_inflight,
        now,
    };
    // Scratch on the stack, sized to the candidates: a route's group usually
    // has a handful of endpoints, and filling 64 candidates' worth (5.3 KB,
    // `raw` alone 4.6 KB of NaN) for one of them was most of a pick's work.
    if n <= SMALL {
        ctx.run_on_stack::<SMALL, R>(rng, rr_cursor, explain)
    } else if n <= STACK {
        ctx.run_on_stack::<STACK, R>(rng, rr_cursor, explain)
    } else {
        let mut status = vec![CandidateStatus::Eligible; n];
        let mut raw = vec![[f64::NAN; SCORERS]; n];
        let mut totals = vec![0.0; n];
        let mut missing = vec![ScorerSet::EMPTY; n];
        ctx.run(
            rng,
            rr_cursor,
            explain,
            Scratch {
                status: &mut status,
                raw: &mut raw,
                totals: &mut totals,
                missing: &mut missing,
            },
        )
    }
}

/// Whether `view` is saturated at `now` under `s` (see the module docs).
pub fn is_saturated(view: &EndpointView, s: &Saturation, now: Instant) -> bool {
    let t = &view.telemetry;
    match t.age(now) {
        None => s.unscraped_is_saturated,
        Some(age) if age > s.max_metrics_age => true,
        Some(_) => {
            t.value_at(SignalKind::Waiting, now)
                .is_some_and(|w| w > s.max_waiting)
                || t.value_at(SignalKind::KvUsage, now)
                    .is_some_and(|k| k > s.max_kv_usage)
        }
    }
}

/// GAIE's LoRA affinity tiers.
pub fn lora_score(state: &LoraState, adapter: &str) -> f64 {
    if state.is_running(adapter) {
        1.0
    } else if state.has_free_slot() {
        0.8
    } else if state.is_waiting(adapter) {
        0.6
    } else {
        0.0
    }
}

struct Ctx<'a, 'r> {
    profile: &'a Profile,
    snapshot: &'a ScoringSnapshot,
    req: &'a PickRequest<'r>,
    candidates: &'a [Candidate],
    local_inflight: &'a [u32],
    now: Instant,
}

#[derive(Default, Clone, Copy)]
struct Range {
    min: f64,
    max: f64,
    seen: bool,
}

impl Range {
    fn add(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        if self.seen {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        } else {
            *self = Range {
                min: v,
                max: v,
                seen: true,
            };
        }
    }

    /// Inverted min-max: the smallest gets 1, the largest 0, all equal 1.
    fn inverted(&self, v: f64) -> f64 {
        let span = self.max - self.min;
        if span > 0.0 {
            ((self.max - v) / span).clamp(0.0, 1.0)
        } else {
            1.0
        }
    }
}

impl Ctx<'_, '_> {
    fn local(&self, i: usize) -> u32 {
        self.local_inflight.get(i).copied().unwrap_or(0)
    }

    fn view(&self, i: usize) -> Option<&EndpointView> {
        self.candidates
            .get(i)
            .and_then(|c| self.snapshot.endpoint(c.endpoint))
    }

    fn status(&self, i: usize) -> CandidateStatus {
        let (Some(c), Some(v)) = (self.candidates.get(i), self.view(i)) else {
            return CandidateStatus::Unknown;
        };
        if v.id != c.endpoint {
            CandidateStatus::Unknown
        } else if !v.healthy {
            CandidateStatus::Unhealthy
        } else if !v.serves(
            self.req.model,
            self.req.adapter,
            &self.snapshot.adapters,
            self.now,
        ) {
            CandidateStatus::NotServing
        } else if self
            .profile
            .saturation
            .is_some_and(|s| is_saturated(v, &s, self.now))
        {
            CandidateStatus::Saturated
        } else {
            CandidateStatus::Eligible
        }
    }

    /// q = waiting (if fresh) + local in-flight: the queue scorer's load,
    /// and the load session affinity bounds.
    fn queue_load(&self, i: usize) -> f64 {
        let waiting = self
            .view(i)
            .and_then(|v| v.telemetry.value_at(SignalKind::Waiting, self.now))
            .filter(|w| w.is_finite())
            .map_or(0.0, |w| w.max(0.0));
        waiting + f64::from(self.local(i))
    }

    /// `k / (k + q)` with q = [`Self::queue_load`]: the queue score, and the
    /// factor a prefix match is discounted by.
    fn load_factor(&self, i: usize) -> f64 {
        let k = self.profile.effective_queue_scale();
        k / (k + self.queue_load(i))
    }

    /// Whether scorer `s` applies to candidate `i` for this request (see the
    /// module docs); one that does not weighs nothing and is not missing.
    fn applies(&self, s: Scorer, i: usize) -> bool {
        match s {
            Scorer::Prefix => self.req.prefix_total_blocks > 0,
            Scorer::Lora => self.req.adapter.is_some_and(|a| {
                self.view(i)
                    .and_then(|v| v.telemetry.served_model.as_deref())
                    .is_none_or(|base| base != a)
            }),
            _ => true,
        }
    }

    fn raw_signal(&self, s: Scorer, i: usize) -> Option<f64> {
        let v = self.view(i)?;
        let c = self.candidates.get(i)?;
        let t = &v.telemetry;
        let now = self.now;
        let val = |k| t.value_at(k, now).filter(|x: &f64| x.is_finite());
        let local = f64::from(self.local(i));
        let inv = |x: f64| 1.0 - x.clamp(0.0, 1.0);
        match s {
            Scorer::Queue => val(SignalKind::Waiting).map(|w| w.max(0.0) + local),
            Scorer::Running => val(SignalKind::Running).map(|r| r.max(0.0) + local),
            Scorer::KvCache => val(SignalKind::KvUsage).map(inv),
            Scorer::Latency => val(SignalKind::Ttft)
                .or_else(|| val(SignalKind::E2eLatency))
                .map(|l| l.max(0.0)),
            Scorer::Prefix => {
                let total = self.req.prefix_total_blocks;
                (total > 0).then(|| f64::from(c.prefix_blocks.min(total)) / f64::from(total))
            }
            Scorer::Lora => {
                let adapter = self.req.adapter?;
                t.lora_at(now).map(|l| lora_score(l, adapter))
            }
            Scorer::Gpu => val(SignalKind::GpuUtil).map(inv),
            Scorer::Memory => val(SignalKind::KvUsage)
                .or_else(|| val(SignalKind::GpuMemUsed))
                .map(inv),
            Scorer::Locality => Some(if v.local { 1.0 } else { 0.0 }),
        }
    }

    /// [`Self::run`] with scratch for up to `N` candidates on the stack.
    fn run_on_stack<const N: usize, R: FnMut(u32) -> u32>(
        &self,
        rng: &mut R,
        rr: &mut usize,
        explain: Option<&mut [ScoreBreakdown]>,
    ) -> PickOutcome {
        let n = self.candidates.len().min(N);
        let mut status = [CandidateStatus::Eligible; N];
        let mut raw = [[f64::NAN; SCORERS]; N];
        let mut totals = [0.0; N];
        let mut missing = [ScorerSet::EMPTY; N];
        self.run(
            rng,
            rr,
            explain,
            Scratch {
                status: &mut status[..n],
                raw: &mut raw[..n],
                totals: &mut totals[..n],
                missing: &mut missing[..n],
            },
        )
    }

    fn run<R: FnMut(u32) -> u32>(
        &self,
        rng: &mut R,
        rr: &mut usize,
        explain: Option<&mut [ScoreBreakdown]>,
        mut s: Scratch<'_>,
    ) -> PickOutcome {
        let n = self.candidates.len();
        let (mut ok, mut eligible) = (0usize, 0usize);
        for i in 0..n {
            let st = self.status(i);
            if let Some(slot) = s.status.get_mut(i) {
                *slot = st;
            }
            ok += usize::from(matches!(
                st,
                CandidateStatus::Eligible | CandidateStatus::Saturated
            ));
            eligible += usize::from(st == CandidateStatus::Eligible);
        }
        let all_saturated = eligible == 0;
        let members = if all_saturated { ok } else { eligible };
        let is_member = |st: CandidateStatus| {
            st == CandidateStatus::Eligible || (all_saturated && st == CandidateStatus::Saturated)
        };
        let choice = if members == 0 {
            None
        } else if members == 1
            && explain.is_none()
            && self.req.session.is_none()
            && self.profile.picker == PickerKind::MaxScore
        {
            // One member (a route to one endpoint, or one left by the
            // filters): nothing to rank it against, so it is not scored
            // (~1,300 instructions per request, `bench/results/latency.md`
            // section 12).
            nth_member(s.status, &is_member, 0).map(|i| self.plain(i))
        } else if let Some(session) = self.req.session {
            self.session_pick(&session, &is_member, s.status)
        } else {
            match self.profile.picker {
                PickerKind::MaxScore => self.max_score(rng, &is_member, &mut s),
                PickerKind::RoundRobin => {
                    let k = *rr % members;
                    *rr = rr.wrapping_add(1);
                    nth_member(s.status, &is_member, k).map(|i| self.plain(i))
                }
                PickerKind::Random => {
                    let k = draw(rng, members);
                    nth_member(s.status, &is_member, k).map(|i| self.plain(i))
                }
                PickerKind::PowerOfTwo => self.p2c(rng, &is_member, s.status, members),
            }
        };
        if let Some(out) = explain {
            for (i, o) in out.iter_mut().enumerate().take(n) {
                let status = s.status.get(i).copied().unwrap_or_default();
                let scored = self.profile.picker == PickerKind::MaxScore
                    && self.req.session.is_none()
                    && is_member(status);
                let mut scores = [None; SCORERS];
                if scored {
                    if let Some(raw) = s.raw.get(i) {
                        for (dst, src) in scores.iter_mut().zip(raw) {
                            *dst = (!src.is_nan()).then_some(*src);
                        }
                    }
                }
                *o = ScoreBreakdown {
                    endpoint: self.candidates.get(i).map_or(0, |c| c.endpoint),
                    status,
                    scores,
                    total: if scored {
                        s.totals.get(i).copied()
                    } else {
                        None
                    },
                    missing: s.missing.get(i).copied().unwrap_or_default(),
                };
            }
        }
        if ok == 0 {
            PickOutcome::NoCandidate
        } else if all_saturated {
            PickOutcome::AllSaturated { fallback: choice }
        } else {
            choice.map_or(PickOutcome::NoCandidate, PickOutcome::Picked)
        }
    }

    fn plain(&self, i: usize) -> Pick {
        Pick {
            index: i,
            endpoint: self.candidates.get(i).map_or(0, |c| c.endpoint),
            score: None,
            missing: ScorerSet::EMPTY,
            decision: Decision::Profile,
        }
    }

    /// Session affinity: consistent hashing with bounded loads over the
    /// members, with the queue scorer's load (see [`super::affinity`]);
    /// the least loaded member if none is on the ring.
    fn session_pick(
        &self,
        session: &Session<'_>,
        is_member: &impl Fn(CandidateStatus) -> bool,
        status: &[CandidateStatus],
    ) -> Option<Pick> {
        let members =
            || (0..status.len()).filter(|&i| status.get(i).is_some_and(|st| is_member(*st)));
        let (mut total, mut n) = (0.0, 0usize);
        for i in members() {
            total += self.queue_load(i);
            n += 1;
        }
        let cap = load_cap(total, n, session.load_factor);
        let index_of = |ep: usize| {
            members().find(|&i| self.candidates.get(i).is_some_and(|c| c.endpoint == ep))
        };
        let placed = bounded_pick(session.ring, session.hash, cap, |ep| {
            index_of(ep).map(|i| self.queue_load(i))
        });
        let (i, decision) = match placed {
            Some(p) => (
                index_of(p.endpoint)?,
                if p.spilled {
                    Decision::SessionSpilled
                } else {
                    Decision::SessionHome
                },
            ),
            None => (
                members().min_by(|&a, &b| self.queue_load(a).total_cmp(&self.queue_load(b)))?,
                Decision::SessionSpilled,
            ),
        };
        Some(Pick {
            decision,
            ..self.plain(i)
        })
    }

    fn max_score<R: FnMut(u32) -> u32>(
        &self,
        rng: &mut R,
        is_member: &impl Fn(CandidateStatus) -> bool,
        s: &mut Scratch<'_>,
    ) -> Option<Pick> {
        let Scratch {
            status,
            raw,
            totals,
            missing,
        } = s;
        let status: &[CandidateStatus] = status;
        let weights = self.profile.weights;
        let active = weights.active();
        let mut running = Range::default();
        let mut fastest = f64::INFINITY;
        for (i, st) in status.iter().enumerate() {
            if !is_member(*st) {
                continue;
            }
            let Some(row) = raw.get_mut(i) else { continue };
            for sc in active.iter() {
                let v = if self.applies(sc, i) {
                    self.raw_signal(sc, i).unwrap_or(f64::NAN)
                } else {
                    NOT_APPLICABLE
                };
                if let Some(cell) = row.get_mut(sc.index()) {
                    *cell = v;
                }
                match sc {
                    Scorer::Running => running.add(v),
                    Scorer::Latency if v > 0.0 => fastest = fastest.min(v),
                    _ => {}
                }
            }
        }
        let mut best = f64::NEG_INFINITY;
        for (i, st) in status.iter().enumerate() {
            if !is_member(*st) {
                continue;
            }
            let Some(row) = raw.get_mut(i) else { continue };
            let (mut num, mut den, mut miss) = (0.0, 0.0, ScorerSet::EMPTY);
            for sc in active.iter() {
                let Some(cell) = row.get_mut(sc.index()) else {
                    continue;
                };
                let v = *cell;
                if v == NOT_APPLICABLE {
                    *cell = f64::NAN;
                    continue;
                }
                if v.is_nan() {
                    miss.insert(sc);
                    continue;
                }
                let score = match sc {
                    Scorer::Queue => {
                        let k = self.profile.effective_queue_scale();
                        k / (k + v.max(0.0))
                    }
                    Scorer::Prefix => v.clamp(0.0, 1.0) * self.load_factor(i),
                    Scorer::Running => running.inverted(v),
                    Scorer::Latency => {
                        if v <= 0.0 || !fastest.is_finite() {
                            1.0
                        } else {
                            (fastest / v).clamp(0.0, 1.0)
                        }
                    }
                    _ => v.clamp(0.0, 1.0),
                };
                *cell = score;
                let w = weights.get(sc);
                num += w * score;
                den += w;
            }
            let total = if den > 0.0 { num / den } else { 0.5 };
            if let Some(t) = totals.get_mut(i) {
                *t = total;
            }
            if let Some(m) = missing.get_mut(i) {
                *m = miss;
            }
            best = best.max(total);
        }
        let eps = self.profile.tie_epsilon.max(0.0);
        let lat_band = self.profile.latency_tie_band;
        let lat_tie = lat_band.is_finite() && lat_band > 0.0;
        let total = |i: usize| totals.get(i).copied().unwrap_or(f64::NEG_INFINITY);
        let within = |i: usize, band: f64| {
            status.get(i).is_some_and(|st| is_member(*st)) && best - total(i) <= band
        };
        // Latency tie-break: within the band, the lowest measured latency;
        // candidates without a measurement lose to one with, and when none
        // has one the band is tied as a whole.
        let latency = |i: usize| {
            if lat_tie {
                self.raw_signal(Scorer::Latency, i).filter(|l| *l > 0.0)
            } else {
                None
            }
        };
        let lat_band = lat_band.max(eps);
        let band = if lat_tie { lat_band } else { eps };
        let tied = |i: usize| within(i, band);
        // A new prefix (scored, held by no member): among the near-best, the
        // least cached; among those, the best score (equal caches give no
        // score away).
        let fresh = self.req.prefix_total_blocks > 0
            && weights.get(Scorer::Prefix) > 0.0
            && status.iter().enumerate().all(|(i, st)| {
                !is_member(*st) || self.candidates.get(i).is_none_or(|c| c.prefix_blocks == 0)
            });
        let near = |i: usize| within(i, NEW_PREFIX_BAND.max(eps));
        let held = |i: usize| {
            self.candidates
                .get(i)
                .map_or((0, 0), |c| (c.held_families, c.held_blocks))
        };
        let min_held = (0..status.len()).filter(|&i| near(i)).map(held).min();
        let least_cached = |i: usize| near(i) && Some(held(i)) == min_held;
        let best_placed = (0..status.len())
            .filter(|&i| least_cached(i))
            .map(total)
            .fold(f64::NEG_INFINITY, f64::max);
        let placed = |i: usize| {
            if fresh {
                least_cached(i) && best_placed - total(i) <= eps
            } else {
                tied(i)
            }
        };
        let min_local = (0..status.len())
            .filter(|&i| placed(i))
            .map(|i| self.local(i))
            .min()?;
        let least_local = |i: usize| placed(i) && self.local(i) == min_local;
        // Then, among the tied with the fewest requests in flight from this
        // shard (fresh; the measured latency lags a scrape), the lowest
        // latency: latency first let one endpoint win every tie between two
        // scrapes and herded traffic onto it.
        let best_lat = (0..status.len())
            .filter(|&i| !fresh && least_local(i))
            .filter_map(latency)
            .fold(f64::INFINITY, f64::min);
        let win = |i: usize| {
            least_local(i) && (!best_lat.is_finite() || latency(i).is_some_and(|l| l <= best_lat))
        };
        let winners = (0..status.len()).filter(|&i| win(i)).count();
        let k = draw(rng, winners);
        let i = (0..status.len()).filter(|&i| win(i)).nth(k)?;
        Some(Pick {
            index: i,
            endpoint: self.candidates.get(i).map_or(0, |c| c.endpoint),
            score: totals.get(i).copied(),
            missing: missing.get(i).copied().unwrap_or_default(),
            decision: Decision::Profile,
        })
    }

    fn p2c<R: FnMut(u32) -> u32>(
        &self,
        rng: &mut R,
        is_member: &impl Fn(CandidateStatus) -> bool,
        status: &[CandidateStatus],
        members: usize,
    ) -> Option<Pick> {
        let a = draw(rng, members);
        let b = if members > 1 {
            let b = draw(rng, members - 1);
            if b >= a {
                b + 1
            } else {
                b
            }
        } else {
            a
        };
        let ia = nth_member(status, is_member, a)?;
        let ib = nth_member(status, is_member, b)?;
        let telemetry_load = |i: usize| {
            let t = &self.view(i)?.telemetry;
            let w = t.value_at(SignalKind::Waiting, self.now)?;
            let r = t.value_at(SignalKind::Running, self.now)?;
            Some(w.max(0.0) + r.max(0.0))
        };
        let inflight = |i: usize| f64::from(self.view(i).map_or(0, |v| v.inflight));
        let local = |i: usize| f64::from(self.local(i));
        let (la, lb) = match (telemetry_load(ia), telemetry_load(ib)) {
            (Some(x), Some(y)) => (x + local(ia), y + local(ib)),
            _ => (inflight(ia) + local(ia), inflight(ib) + local(ib)),
        };
        Some(self.plain(if lb < la { ib } else { ia }))
    }
}

fn draw<R: FnMut(u32) -> u32>(rng: &mut R, n: usize) -> usize {
    let n32 = u32::try_from(n).unwrap_or(u32::MAX).max(1);
    (rng(n32) % n32) as usize
}

fn nth_member(
    status: &[CandidateStatus],
    is_member: &impl Fn(CandidateStatus) -> bool,
    k: usize,
) -> Option<usize> {
    status
        .iter()
        .enumerate()
        .filter(|(_, st)| is_member(**st))
        .nth(k)
        .map(|(i, _)| i)
}
