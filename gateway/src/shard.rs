//! Per-shard state: the read-only gateway state, this shard's passive health
//! view of every endpoint ([`Outliers`]: ejection with exponential backoff, 5xx
//! streaks), its retry budget, its upstream keep-alive pool, its batching lanes
//! and admission share, its pools of buffers and its RNG, and the picker that
//! chooses an endpoint. Nothing here is shared with other shards; it lives in an
//! `Rc` on the shard's thread and is touched only between `.await`s. The one
//! thing other threads read is the shard's [`crate::report::ShardReport`]
//! (in-flight calls per endpoint, admission numbers), which only this shard writes.
//!
//! The prefix index is per shard but learns every shard's records: with more
//! than one shard, each shard owns the two ends of its SPSC rings
//! ([`shardgate_routing::scoring::share`]; `--prefix-share-ring`, 32,768 words
//! each), hands the other two to the control thread once at start, publishes
//! what it records and replays the others' records (≤ `--prefix-share-drain`
//! 4,096 blocks) before each prefix-scored pick. The same rings carry the
//! precise block keys each shard just sent (the "recently sent" overlay of
//! precise routing), so every shard's overlay covers every shard's sends.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use monoio::time::Instant;
use shardgate_routing::scoring::{
    share_link, Candidate, Pick, PickOutcome, PickRequest, Picker, PrefixConfig, PrefixHashes,
    PrefixIndex, Profile, RecordKind, Scorer, ShardLink,
};
use shardgate_routing::BackendGroup;
use shardgate_runtime::io::READ_CHUNK;
use shardgate_runtime::Shutdown;

use crate::access_log::ShardLog;
use crate::attempt::{OutlierConfig, Outliers, PickFailure, RetryBudget, Verdict};
use crate::bodymem::BodyBudget;
use crate::conns::{per_shard_cap, Conns};
use crate::control::ControlShared;
use crate::error::UpstreamError;
use crate::lanes::PolicyBatcher;
use crate::metrics::{MetricsHub, ShardMetrics};
use crate::report::ShardReport;
use crate::state::{GatewayState, SaturatedAction};
use crate::upstream::{connect, ConnPool, UpstreamConn};

/// Everything one shard owns.
pub struct Shard {
    /// Shard index.
    pub id: usize,
    /// The gateway state in force (swapped by live reloads).
    live: Arc<crate::state::LiveState>,
    /// The revision of [`Self::live`] this shard's per-endpoint state is sized for.
    seen: Cell<u64>,
    /// Limits and timeouts (a reload that changes them waits for a restart).
    pub settings: crate::state::Settings,
    /// Passive health of every endpoint, indexed like `RoutingTable::endpoints()`.
    pub outliers: RefCell<Outliers>,
    /// Idle upstream connections per endpoint.
    pub pool: RefCell<ConnPool>,
    /// Per endpoint, how the pooled connections reach it ([`reach_kind`]):
    /// a reload that changes it (TLS, HTTP/2) drops them.
    reach: RefCell<Vec<u8>>,
    /// Per-shard RNG (weights, tie-breaks, request ids).
    pub rng: RefCell<fastrand::Rng>,
    /// Requests in flight on this shard (drain waits for 0).
    pub in_flight: Cell<usize>,
    /// Request counter, for request ids.
    pub requests: Cell<u64>,
    /// Process-wide stop signal.
    pub shutdown: Shutdown,
    /// This shard's metrics (published to the hub every 500 ms).
    pub metrics: RefCell<ShardMetrics>,
    /// Where metrics are published for the admin thread.
    pub hub: Arc<MetricsHub>,
    /// This shard's access-log buffer, when the log is on.
    pub access_log: Option<RefCell<ShardLog>>,
    /// Scoring snapshot and health published by the control thread.
    pub control: Arc<ControlShared>,
    picker: RefCell<Picker>,
    prefix: RefCell<PrefixIndex>,
    /// This shard's ends of the prefix-sharing rings (None with one shard).
    share: RefCell<Option<ShardLink>>,
    cands: RefCell<Vec<Candidate>>,
    local: RefCell<Vec<u32>>,
    /// Scratch for the warm candidates while some are warming up.
    warm_cands: RefCell<Vec<Candidate>>,
    warm_local: RefCell<Vec<u32>>,
    /// Retries may add at most `--retry-budget` of the requests.
    pub budget: RefCell<RetryBudget>,
    /// Tokens this shard verified (`--jwt-cache-size`).
    pub jwt_cache: RefCell<crate::jwt::TokenCache>,
    /// The authenticator `jwt_cache`'s verdicts came from.
    auth_seen: RefCell<Arc<crate::jwt::Authenticator>>,
    /// This shard's share of `--max-buffered-body-bytes`.
    pub body_budget: BodyBudget,
    /// One batcher per BatchingPolicy of the state in force, plus those a
    /// reload retired until their lanes are empty.
    batchers: RefCell<Vec<Rc<PolicyBatcher>>>,
    /// This shard's share of `maxConcurrentInferences`, made the first time a
    /// budget is set ([`Self::admission`]).
    admission: RefCell<Option<Rc<crate::admit::ShardAdmission>>>,
    /// This shard, for spawning the drivers a reload's new batchers need.
    me: std::rc::Weak<Shard>,
    /// Starts a batcher's driver task (`batch::driver`, handed in by the
    /// shard's wiring so this module does not import the batching one).
    batch_driver: fn(Rc<Shard>, Rc<PolicyBatcher>),
    /// Client connections: this shard's share of `--max-connections`, the open
    /// count and the idle keep-alive connections that can be told to close.
    pub conns: Conns,
    /// Reusable response buffers (taken for one request, returned after).
    out_pool: Pool<Vec<u8>>,
    /// Reusable client read buffers (taken when a connection gets busy, returned
    /// when it goes idle).
    read_pool: Pool<BytesMut>,
    /// Reusable prompt-hash arrays (2 KiB each), so a request's future holds a
    /// pointer instead of moving the array around.
    hash_pool: Pool<Box<PrefixHashes>>,
    /// Precise keys this shard just sent where, until the servers' events
    /// report them (#18).
    pending: RefCell<shardgate_kvevents::Pending>,
}

impl Shard {
    /// A fresh shard view over `live`'s state.
    pub fn new(
        id: usize,
        live: Arc<crate::state::LiveState>,
        shutdown: Shutdown,
        hub: Arc<MetricsHub>,
        access_log: Option<ShardLog>,
        control: Arc<ControlShared>,
        batch_driver: fn(Rc<Shard>, Rc<PolicyBatcher>),
    ) -> Rc<Self> {
        let state = live.load_full();
        let n = state.table.endpoints().len();
        let models: Arc<[String]> = state.table.models().to_vec().into();
        // Prefix sharing: keep our ends, hand the control thread its ends.
        let share = if state.settings.shards > 1 {
            share_link(&state.pick.share)
                .and_then(|(mine, theirs)| control.attach_prefix_share(id, theirs).then_some(mine))
        } else {
            None
        };
        Rc::new_cyclic(|me| Shard {
            me: me.clone(),
            batch_driver,
            metrics: RefCell::new(ShardMetrics::new(models)),
            hub,
            access_log: access_log.map(RefCell::new),
            control: control.clone(),
            picker: RefCell::new(Picker::new(fastrand::u64(..))),
            prefix: RefCell::new(PrefixIndex::new(PrefixConfig {
                capacity_per_endpoint: state.settings.prefix_blocks_per_endpoint,
                ..PrefixConfig::default()
            })),
            share: RefCell::new(share),
            pending: RefCell::default(),
            cands: RefCell::new(Vec::with_capacity(64)),
            local: RefCell::new(Vec::with_capacity(64)),
            warm_cands: RefCell::new(Vec::with_capacity(64)),
            warm_local: RefCell::new(Vec::with_capacity(64)),
            budget: RefCell::new(RetryBudget::new(state.settings.retry_budget)),
            auth_seen: RefCell::new(state.auth.clone()),
            jwt_cache: RefCell::new(crate::jwt::TokenCache::new(state.settings.jwt_cache_size)),
            body_budget: BodyBudget::new(BodyBudget::share_of(
                state.settings.max_buffered_body_bytes,
                state.settings.shards,
            )),
            out_pool: Pool::new(OUT_POOL_MAX),
            read_pool: Pool::new(READ_POOL_MAX),
            hash_pool: Pool::new(HASH_POOL_MAX),
            admission: RefCell::new(None),
            conns: Conns::new(
                per_shard_cap(state.settings.max_connections, state.settings.shards, id),
                match state.settings.client_hot_conns {
                    0 => 0,
                    n => per_shard_cap(n, state.settings.shards, id),
                },
            ),
            batchers: RefCell::new(
                state
                    .batch_policies
                    .iter()
                    .map(|(k, p)| Rc::new(PolicyBatcher::new(k.clone(), p.clone())))
                    .collect(),
            ),
            id,
            outliers: RefCell::new(Outliers::new(
                n,
                OutlierConfig {
                    eject_base: state.settings.eject_base,
                    eject_max: state.settings.eject_max,
                    eject_after_5xx: state.settings.eject_after_5xx,
                },
            )),
            pool: RefCell::new(ConnPool::new(
                n,
                state.settings.upstream_idle_per_endpoint,
                state.settings.upstream_idle_timeout,
            )),
            reach: RefCell::new(state.table.endpoints().iter().map(reach_kind).collect()),
            rng: RefCell::new(fastrand::Rng::new()),
            in_flight: Cell::new(0),
            requests: Cell::new(0),
            shutdown,
            seen: Cell::new(live.revision()),
            settings: state.settings.clone(),
            live,
        })
    }

    /// The gateway state in force, for a short read.
    pub fn state(&self) -> arc_swap::Guard<Arc<GatewayState>> {
        self.live.load()
    }

    /// The gateway state in force, for a request to keep (requests finish on
    /// the state they started with). First adopts a newer state: grows the
    /// per-endpoint state to its endpoint count and drops idle connections to
    /// endpoints it retired.
    pub fn state_for_request(&self) -> Arc<GatewayState> {
        // The revision first: a state published after it is at least as new,
        // so the growth below covers what that revision needs.
        let rev = self.live.revision();
        let state = self.live.load_full();
        if rev != self.seen.get() {
            self.seen.set(rev);
            let eps = state.table.endpoints();
            self.outliers.borrow_mut().grow(eps.len());
            let mut pool = self.pool.borrow_mut();
            let mut reach = self.reach.borrow_mut();
            pool.grow(eps.len());
            reach.resize(eps.len(), 0);
            for (i, (e, r)) in eps.iter().zip(reach.iter_mut()).enumerate() {
                let kind = reach_kind(e);
                if e.retired || *r != kind {
                    pool.clear(i);
                }
                *r = kind;
            }
            drop((pool, reach));
            self.adopt_batchers(&state);
            if !Arc::ptr_eq(&self.auth_seen.borrow(), &state.auth) {
                // Other providers or keys: verdicts of the old ones lapse.
                *self.auth_seen.borrow_mut() = state.auth.clone();
                self.jwt_cache.borrow_mut().clear();
            }
        }
        state
    }

    /// A newer state's BatchingPolicies: a batcher for each new or changed
    /// policy (its driver started); those it no longer has are retired (no new
    /// members; their lanes still flush on the state they were planned on).
    fn adopt_batchers(&self, state: &GatewayState) {
        let mut batchers = self.batchers.borrow_mut();
        for b in batchers.iter() {
            let kept = state
                .batch_policies
                .iter()
                .any(|(k, p)| *k == b.key && *p == b.policy);
            if !kept && !b.retired.replace(true) {
                b.wake.notify();
            }
        }
        for (k, p) in &state.batch_policies {
            let have = batchers
                .iter()
                .any(|b| !b.retired.get() && b.key == *k && b.policy == *p);
            if have {
                continue;
            }
            let pb = Rc::new(PolicyBatcher::new(k.clone(), p.clone()));
            if let Some(me) = self.me.upgrade() {
                (self.batch_driver)(me, pb.clone());
            }
            batchers.push(pb);
        }
    }

    /// Every batcher, retired ones included (their drivers start at the
    /// shard's start).
    pub fn batchers(&self) -> Vec<Rc<PolicyBatcher>> {
        self.batchers.borrow().clone()
    }

    /// Forget a retired batcher whose lanes are empty (its driver ends).
    pub fn drop_batcher(&self, pb: &Rc<PolicyBatcher>) {
        self.batchers.borrow_mut().retain(|b| !Rc::ptr_eq(b, pb));
    }

    /// `maxConcurrentInferences` for one request, HTTP/1.1 or HTTP/2: a
    /// permit at `priority` (a wait counted under `model`), to hold until
    /// the answer is out; `None` where the gateway has no budget; `Err` the
    /// 429 or 503 of a refused or timed-out wait.
    pub async fn permit(
        &self,
        priority: i32,
        model: Option<&str>,
    ) -> Result<Option<crate::admit::Permit>, crate::error::Failure> {
        let Some(adm) = self.admission() else {
            return Ok(None);
        };
        let key = self.metrics.borrow().admission_key(priority, model);
        let counted = || crate::metrics::AdmissionWait::start(&self.metrics, key);
        adm.acquire(priority, counted)
            .await
            .map(Some)
            .map_err(|r| r.failure())
    }

    /// This shard's `maxConcurrentInferences` admission, when a budget is set
    /// (made, with its driver, the first time one is: a reload can set it).
    pub fn admission(&self) -> Option<Rc<crate::admit::ShardAdmission>> {
        let total = self.control.budget()?;
        let mut slot = self.admission.borrow_mut();
        if let Some(a) = slot.as_ref() {
            return Some(a.clone());
        }
        let shards = self.settings.shards.max(1);
        let share = match self.control.shares.load().get(self.id) {
            Some(s) => *s,
            None => shardgate_batching::Budget { total }
                .initial(shards)
                .get(self.id)
                .copied()
                .unwrap_or(1),
        };
        let a = crate::admit::ShardAdmission::new(
            share,
            self.settings.admission_timeout,
            self.control.clone(),
            self.id,
        );
        monoio::spawn(a.clone().driver());
        *slot = Some(a.clone());
        Some(a)
    }

    /// The admission made so far, whether or not a budget is set now.
    pub fn admission_made(&self) -> Option<Rc<crate::admit::ShardAdmission>> {
        self.admission.borrow().clone()
    }

    /// Whether some endpoint of `groups` (weight above 0) can take a request
    /// for `model` now: healthy in the scoring snapshot, not ejected on this
    /// shard, and serving the model (or not listing its models yet).
    pub fn model_reachable(&self, groups: &[BackendGroup], model: &str, now: Instant) -> bool {
        let snapshot = self.control.snapshot.load();
        let outliers = self.outliers.borrow();
        groups
            .iter()
            .filter(|g| g.weight > 0)
            .flat_map(|g| g.endpoints.iter())
            .any(|&ep| {
                outliers.available(ep, now.into_std())
                    && snapshot.endpoint(ep).is_some_and(|v| v.healthy)
                    && snapshot.serves(ep, Some(model), None, now.into_std())
            })
    }

    /// Address of endpoint `ep`.
    pub fn addr(&self, ep: usize) -> SocketAddr {
        self.state()
            .table
            .endpoints()
            .get(ep)
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |e| e.addr)
    }

    /// This shard's report to the control thread.
    pub fn report(&self) -> Option<&ShardReport> {
        self.control.reports.shard(self.id)
    }

    /// End the failure streak of every endpoint of `groups` that passed an active
    /// check (scrape or health probe) since its ejection began. Free when no
    /// endpoint is failing on this shard.
    fn restore_checked(&self, groups: &[BackendGroup]) {
        if !self.outliers.borrow().any_failing() {
            return;
        }
        let mut outliers = self.outliers.borrow_mut();
        for &ep in groups.iter().flat_map(|g| g.endpoints.iter()) {
            let (scraped, probed) = self.control.checks.last_ok(ep);
            if outliers.restore_checked(ep, scraped, probed) {
                tracing::info!(shard = self.id, endpoint = %self.addr(ep), "endpoint restored: an active check passed");
            }
        }
    }

    /// A connection to `ep` for one try: an idle pooled one when `use_pool`
    /// (the attempt is not a fresh retry) and there is one, else a new one.
    /// `now` ages the pooled ones (a clock reading the caller already has).
    pub async fn upstream_conn(
        &self,
        ep: usize,
        use_pool: bool,
        now: Instant,
    ) -> Result<UpstreamConn, UpstreamError> {
        let pooled = if use_pool {
            self.pool.borrow_mut().take(ep, now)
        } else {
            None
        };
        match pooled {
            Some(c) => Ok(c),
            None => {
                let state = self.state();
                let tls = state.upstream_tls.get(ep).cloned().flatten();
                let h2 = state
                    .table
                    .endpoints()
                    .get(ep)
                    .is_some_and(|e| e.h2)
                    .then_some(&self.settings.h2);
                // Boxed: connecting (and a TLS handshake) is rare next to
                // reusing a pooled connection, and its state machine would
                // otherwise sit inline in every request's future.
                let c = Box::pin(connect(
                    self.addr(ep),
                    self.settings.connect_timeout,
                    tls.as_ref(),
                    h2,
                ))
                .await?;
                if let Some(i) = c.stream.tls_handshake() {
                    if let Some(n) = self.metrics.borrow_mut().upstream_tls_handshakes.get_mut(i) {
                        *n += 1;
                    }
                }
                Ok(c)
            }
        }
    }

    /// Judge one try of `ep` against this shard's outlier state and retry
    /// budget, carry out the verdict's side effects ([`Self::apply`]) and
    /// return what the request does next. The one judging step of every
    /// upstream attempt loop (HTTP/1.1, HTTP/2, gRPC, batches).
    pub fn judge(
        &self,
        attempts: &mut crate::attempt::Attempts,
        ep: usize,
        outcome: crate::attempt::Outcome,
        groups: &[BackendGroup],
    ) -> crate::attempt::Action {
        self.judge_at(attempts, ep, outcome, groups, std::time::Instant::now())
    }

    /// [`Self::judge`] at `now`, a clock reading the caller already has.
    pub fn judge_at(
        &self,
        attempts: &mut crate::attempt::Attempts,
        ep: usize,
        outcome: crate::attempt::Outcome,
        groups: &[BackendGroup],
        now: std::time::Instant,
    ) -> crate::attempt::Action {
        let verdict = attempts.on(
            ep,
            outcome,
            now,
            &mut self.outliers.borrow_mut(),
            &mut self.budget.borrow_mut(),
            groups,
        );
        self.apply(ep, &verdict);
        verdict.action
    }

    /// Carry out the side effects of an attempt verdict on `ep`: count the
    /// error, log and apply an ejection (its pooled connections go), log a
    /// restore.
    pub fn apply(&self, ep: usize, v: &Verdict) {
        if let Some(kind) = v.error_kind {
            self.metrics.borrow_mut().upstream_error(ep, kind);
        }
        if let Some(e) = v.ejection {
            self.pool.borrow_mut().clear(ep);
            tracing::warn!(shard = self.id, endpoint = %self.addr(ep), failures = e.failures, period_ms = e.period.as_millis() as u64, reason = e.reason, "endpoint ejected");
        }
        if v.restored {
            tracing::info!(shard = self.id, endpoint = %self.addr(ep), "endpoint restored");
        }
    }

    /// Pick an endpoint for one attempt of a request.
    ///
    /// 1. A backend group at random in proportion to its weight, among groups
    ///    with an endpoint that this shard has not ejected and that `exclude`
    ///    (endpoints already tried) does not list (Gateway API weights).
    /// 2. Within it, the route's scheduling profile over the control thread's
    ///    latest scoring snapshot: health and saturation filters, then the
    ///    weighted scorers, with this shard's own in-flight counts added so a
    ///    burst does not all land on one "best" endpoint; or, for a request
    ///    naming a session ([`PickRequest::session`]), the session's endpoint
    ///    on the ring under the load bound, among the same filtered candidates
    ///    (ejected, excluded and — when others are warm — warming endpoints
    ///    are not candidates).
    #[allow(clippy::too_many_arguments)]
    pub fn pick(
        &self,
        groups: &[BackendGroup],
        exclude: &[usize],
        now: Instant,
        profile: &Profile,
        req: &PickRequest<'_>,
        prefix: Option<&PrefixHashes>,
        priority: i32,
    ) -> Result<usize, PickFailure> {
        self.pick_precise(groups, exclude, now, profile, req, prefix, None, priority)
    }

    /// [`Self::pick`] with the request's vLLM block keys (precise prefix
    /// routing, #18): an endpoint whose KV-event stream is live is matched on
    /// them ([`shardgate_kvevents::PreciseSnapshot::match_len`], or what this
    /// shard sent it in the last 3 s) instead of the approximate index, the
    /// matched fraction expressed in the approximate index's blocks (what the
    /// prefix scorer divides by). When no live endpoint holds a single block
    /// of the prompt, every candidate is scored by the approximate index.
    #[allow(clippy::too_many_arguments)]
    pub fn pick_precise(
        &self,
        groups: &[BackendGroup],
        exclude: &[usize],
        now: Instant,
        profile: &Profile,
        req: &PickRequest<'_>,
        prefix: Option<&PrefixHashes>,
        precise: Option<&[u64]>,
        priority: i32,
    ) -> Result<usize, PickFailure> {
        self.restore_checked(groups);
        let outliers = self.outliers.borrow();
        let usable = |ep: &usize| !exclude.contains(ep) && outliers.available(*ep, now.into_std());
        let total: u64 = groups
            .iter()
            .filter(|g| g.weight > 0 && g.endpoints.iter().any(usable))
            .map(|g| u64::from(g.weight))
            .sum();
        if total == 0 {
            return Err(PickFailure::NoEndpoint);
        }
        let mut r = self.rng.borrow_mut().u64(0..total);
        let group = groups
            .iter()
            .filter(|g| g.weight > 0 && g.endpoints.iter().any(usable))
            .find(|g| {
                let w = u64::from(g.weight);
                if r < w {
                    true
                } else {
                    r -= w;
                    false
                }
            })
            .ok_or(PickFailure::NoEndpoint)?;
        let mut cands = self.cands.borrow_mut();
        let mut local = self.local.borrow_mut();
        cands.clear();
        local.clear();
        if prefix.is_some() {
            if let Some(link) = self.share.borrow_mut().as_mut() {
                let (mut index, mut pending) =
                    (self.prefix.borrow_mut(), self.pending.borrow_mut());
                let at = now.into_std();
                link.drain(|kind, ep, words| match kind {
                    RecordKind::Prefix => index.record(ep, words, at),
                    RecordKind::Sent => pending.record(ep, words, at),
                });
            }
        }
        let index = self.prefix.borrow();
        let exact = precise
            .filter(|k| !k.is_empty())
            .map(|k| (k, self.control.precise.snapshot.load()));
        let approx = |ep: usize| prefix.map_or(0, |h| index.match_len(ep, h.as_slice()) as u32);
        let approx_held = |ep: usize| u32::try_from(index.len(ep)).unwrap_or(u32::MAX);
        let families = |ep: usize| u32::try_from(index.families(ep)).unwrap_or(u32::MAX);
        let mut any_held = false;
        for &ep in group.endpoints.iter().filter(|ep| usable(ep)) {
            let (prefix_blocks, held_blocks) = match (&exact, prefix) {
                (Some((keys, snap)), Some(h)) if snap.is_live(ep) => {
                    let sent = self.pending.borrow().match_len(ep, keys, now.into_std());
                    let held = snap.match_len(ep, keys).max(sent);
                    any_held |= held > 0;
                    let all = u32::try_from(snap.held(ep)).unwrap_or(u32::MAX);
                    (precise_blocks(held, keys.len(), h.prompt_blocks()), all)
                }
                _ => (approx(ep), approx_held(ep)),
            };
            cands.push(Candidate {
                endpoint: ep,
                prefix_blocks,
                held_blocks,
                held_families: families(ep),
            });
            local.push(self.report().map_or(0, |r| r.in_flight(ep)));
        }
        if exact.is_some() && !any_held {
            // No server holds any of the prompt (evicted everywhere, or new):
            // the approximate history keeps it where it went before, so the
            // prefix is cached again in one place instead of wherever load
            // sends it.
            for c in cands.iter_mut() {
                c.prefix_blocks = approx(c.endpoint);
                c.held_blocks = approx_held(c.endpoint);
            }
        }
        drop(index);
        let snapshot = self.control.snapshot.load();
        // modelPrewarming: endpoints still warming up for this model come
        // after the warm ones (preferred) or not at all (strict).
        let state = self.state();
        let cold = state
            .warmth
            .as_ref()
            .filter(|w| w.any_cold())
            .and_then(|w| {
                let m = w.model_index(req.model?)?;
                cands
                    .iter()
                    .any(|c| w.is_cold(m, c.endpoint))
                    .then_some((w, m))
            });
        if let Some((w, m)) = cold {
            let mut warm = self.warm_cands.borrow_mut();
            let mut warm_local = self.warm_local.borrow_mut();
            warm.clear();
            warm_local.clear();
            for (c, l) in cands.iter().zip(local.iter()) {
                if !w.is_cold(m, c.endpoint) {
                    warm.push(*c);
                    warm_local.push(*l);
                }
            }
            let outcome = self.picker.borrow_mut().pick(
                profile,
                &snapshot,
                req,
                &warm,
                &warm_local,
                now.into_std(),
            );
            if let PickOutcome::Picked(p) = outcome {
                return Ok(self.decided(&p));
            }
            if w.strict() {
                if outcome == PickOutcome::NoCandidate {
                    return Err(PickFailure::Warming);
                }
                return self.settle(outcome, priority);
            }
        }
        let outcome =
            self.picker
                .borrow_mut()
                .pick(profile, &snapshot, req, &cands, &local, now.into_std());
        self.settle(outcome, priority)
    }

    /// The endpoint of a pick, or why there is none (saturation handling:
    /// `--saturated-action`, shedding of negative priorities).
    fn settle(&self, outcome: PickOutcome, priority: i32) -> Result<usize, PickFailure> {
        match outcome {
            PickOutcome::Picked(p) => Ok(self.decided(&p)),
            PickOutcome::AllSaturated { fallback } => {
                match (self.settings.saturated_action, fallback) {
                    (SaturatedAction::Reject, _) | (_, None) => Err(PickFailure::Saturated),
                    (SaturatedAction::Shed, Some(_)) if priority < 0 => Err(PickFailure::Shed),
                    (_, Some(p)) => Ok(self.decided(&p)),
                }
            }
            PickOutcome::NoCandidate => Err(PickFailure::Unhealthy),
        }
    }

    /// Count what chose `p` (`gateway_pick_decisions_total`) and return its endpoint.
    fn decided(&self, p: &Pick) -> usize {
        if let Some(n) = self
            .metrics
            .borrow_mut()
            .pick_decisions
            .get_mut(p.decision.index())
        {
            *n += 1;
        }
        p.endpoint
    }

    /// A response buffer for one request (4 KiB to start), from the pool.
    pub fn take_out_buf(&self) -> Vec<u8> {
        self.out_pool.take(|| Vec::with_capacity(4096))
    }

    /// Return a response buffer; the pool keeps at most [`OUT_POOL_MAX`] of at most
    /// 64 KiB.
    pub fn give_out_buf(&self, mut buf: Vec<u8>) {
        // Not an empty one (a write dropped at its send timeout took the buffer).
        if (1..=64 * 1024).contains(&buf.capacity()) {
            buf.clear();
            self.out_pool.give(buf);
        }
    }

    /// One more call in flight on `ep` (the count picks and the control thread read).
    fn enter_endpoint(&self, ep: usize) {
        if let Some(r) = self.report() {
            r.enter(ep);
        }
    }

    /// One call fewer in flight on `ep`.
    fn leave_endpoint(&self, ep: usize) {
        if let Some(r) = self.report() {
            r.leave(ep);
        }
    }

    /// A client read buffer with [`READ_CHUNK`] bytes of room, from the pool.
    pub fn take_read_buf(&self) -> BytesMut {
        self.read_pool.take(|| BytesMut::with_capacity(READ_CHUNK))
    }

    /// Return an empty client read buffer; the pool keeps at most [`READ_POOL_MAX`]
    /// (busy connections keep their own; the pool only bridges idle spells).
    pub fn give_read_buf(&self, mut buf: BytesMut) {
        if !buf.is_empty() || self.read_pool.is_full() {
            return;
        }
        // Reclaims the whole allocation in place when nothing else references it
        // (the usual case), so the next taker reads without allocating.
        buf.reserve(READ_CHUNK);
        if buf.capacity() <= 4 * READ_CHUNK {
            self.read_pool.give(buf);
        }
    }

    /// This shard's batcher for BatchingPolicy `key` (not a retired one).
    pub fn batcher(&self, key: &str) -> Option<Rc<PolicyBatcher>> {
        self.batchers
            .borrow()
            .iter()
            .find(|b| !b.retired.get() && b.key == key)
            .cloned()
    }

    /// Remember that `ep` now holds the prompt's prefix blocks in its cache, and
    /// tell the other shards (dropped, and counted, when the ring is full).
    pub fn record_prefix(&self, ep: usize, hashes: &PrefixHashes, now: std::time::Instant) {
        self.prefix.borrow_mut().record(ep, hashes.as_slice(), now);
        if let Some(link) = self.share.borrow_mut().as_mut() {
            link.publish(ep, hashes.as_slice());
        }
    }

    /// Remember that `ep` was sent a request with these precise keys (it holds
    /// them as soon as the server schedules it, before its events say so).
    /// The other shards learn it through the share ring, so a burst on a
    /// prefix that no server reports yet stays on one endpoint whichever
    /// shard each request lands on.
    pub fn record_precise(&self, ep: usize, keys: &[u64], now: std::time::Instant) {
        self.pending.borrow_mut().record(ep, keys, now);
        if let Some(link) = self.share.borrow_mut().as_mut() {
            link.publish_sent(ep, keys);
        }
    }

    /// What the prefix-cache scorer matches a request's prompt on, the same for
    /// HTTP/1.1 and HTTP/2: the approximate index's block hashes when the
    /// route's profile weighs the prefix scorer, and the server's block keys
    /// (precise routing, #18) when `model` has a tokenizer and some endpoint's
    /// KV-event stream is live.
    pub async fn prompt_keys(
        &self,
        profile: &Profile,
        model: Option<&str>,
        body: &[u8],
    ) -> (Option<PooledHashes<'_>>, Option<Vec<u64>>) {
        let uses_prefix = profile.weights.get(Scorer::Prefix) > 0.0;
        if !uses_prefix || body.is_empty() {
            return (None, None);
        }
        let hashes = self.prefix_hashes(model.unwrap_or(""), body);
        let precise = match model {
            Some(m) if self.control.precise.active() => {
                // A LoRA adapter's blocks hash with its name (vLLM's extra key).
                let adapter = self
                    .control
                    .snapshot
                    .load()
                    .adapters
                    .iter()
                    .any(|a| a.name == m);
                self.control.precise.keys(m, adapter, body).await
            }
            _ => None,
        };
        (Some(hashes), precise)
    }

    /// Remember where a prompt went: its approximate hashes and its precise
    /// keys (whichever [`Self::prompt_keys`] gave).
    pub fn record_prompt(
        &self,
        ep: usize,
        hashes: Option<&PrefixHashes>,
        precise: Option<&[u64]>,
        now: std::time::Instant,
    ) {
        if let Some(h) = hashes {
            self.record_prefix(ep, h, now);
        }
        if let Some(k) = precise {
            self.record_precise(ep, k, now);
        }
    }

    /// Hash a prompt for the prefix-cache scorer.
    pub fn prefix_hashes(&self, model: &str, prompt: &[u8]) -> PooledHashes<'_> {
        let mut b = self.hash_pool.take(Box::default);
        self.prefix.borrow().hash_into(model, prompt, &mut b);
        PooledHashes {
            shard: self,
            hashes: Some(b),
        }
    }

    /// When a request began, in Unix milliseconds, for the access log; 0 (no
    /// wall-clock read on the request path) when the shard writes none.
    #[inline]
    pub fn log_clock(&self) -> u64 {
        if self.access_log.is_some() {
            crate::access_log::now_ms()
        } else {
            0
        }
    }

    /// A new request id: 32 hex digits (64 random bits, the shard, a counter),
    /// formatted without allocating.
    pub fn request_id(&self) -> [u8; 32] {
        let n = self.requests.get().wrapping_add(1);
        self.requests.set(n);
        let r = self.rng.borrow_mut().u64(..);
        let mut id = [0u8; 32];
        let parts = [(r >> 32) as u32, r as u32, self.id as u32, n as u32];
        for (out, part) in id.chunks_exact_mut(8).zip(parts) {
            out.copy_from_slice(&hex8(part));
        }
        id
    }
}

impl Shard {
    /// Copy this shard's metrics (plus endpoint state) into its hub slot.
    pub fn publish_metrics(&self) {
        let mut m = self.metrics.borrow().clone();
        m.connections_idle = self.conns.idle.idle() as u64;
        m.connections_kept_hot = self.conns.kept_hot() as u64;
        m.task_panics = crate::contain::panics();
        m.batch = self
            .batchers
            .borrow()
            .iter()
            .filter(|b| !b.retired.get())
            .map(|b| (b.key.clone(), b.stats()))
            .collect();
        let limited = self.control.budget().is_some();
        m.admission = self
            .admission
            .borrow()
            .as_ref()
            .filter(|_| limited)
            .map(|a| {
                let (share, in_use, demand) = a.numbers();
                (share, in_use, demand, a.waiting() as u32)
            });
        let now = std::time::Instant::now();
        let n = self.state().table.endpoints().len();
        m.endpoint_in_flight = (0..n)
            .map(|ep| self.report().map_or(0, |r| r.in_flight(ep)))
            .collect();
        let outliers = self.outliers.borrow();
        m.endpoint_ejected = (0..n).map(|ep| outliers.ejected(ep, now)).collect();
        m.body_budget = (self.body_budget.used(), self.body_budget.share());
        self.hub.publish(self.id, m);
    }
}

/// Counts a client connection as open for as long as it lives.
pub struct ConnGauge {
    shard: Rc<Shard>,
}

impl ConnGauge {
    /// Count a new connection.
    pub fn new(shard: &Rc<Shard>) -> Self {
        shard.conns.open.set(shard.conns.open.get() + 1);
        let mut m = shard.metrics.borrow_mut();
        m.connections_open += 1;
        m.connections_total += 1;
        ConnGauge {
            shard: shard.clone(),
        }
    }
}

impl Drop for ConnGauge {
    fn drop(&mut self) {
        let open = &self.shard.conns.open;
        open.set(open.get().saturating_sub(1));
        let mut m = self.shard.metrics.borrow_mut();
        m.connections_open = m.connections_open.saturating_sub(1);
    }
}

/// Keeps `Shard::in_flight` and an endpoint's in-flight count right on every exit path.
pub struct InFlight {
    shard: Rc<Shard>,
    ep: Option<usize>,
}

impl InFlight {
    /// Count a request on the shard.
    pub fn new(shard: &Rc<Shard>) -> Self {
        shard.in_flight.set(shard.in_flight.get() + 1);
        InFlight {
            shard: shard.clone(),
            ep: None,
        }
    }

    /// Move the request's endpoint count to `ep`.
    pub fn set_endpoint(&mut self, ep: usize) {
        self.clear_endpoint();
        self.shard.enter_endpoint(ep);
        self.ep = Some(ep);
    }

    fn clear_endpoint(&mut self) {
        if let Some(ep) = self.ep.take() {
            self.shard.leave_endpoint(ep);
        }
    }
}

/// Counts one call in flight on endpoint `ep` of this shard while it lives, without
/// counting a client request (a batch's merged upstream call: its members are
/// counted by their own [`InFlight`]).
pub struct EndpointInFlight<'s> {
    shard: &'s Shard,
    ep: usize,
}

impl<'s> EndpointInFlight<'s> {
    /// Start counting.
    pub fn new(shard: &'s Shard, ep: usize) -> Self {
        shard.enter_endpoint(ep);
        EndpointInFlight { shard, ep }
    }
}

impl Drop for EndpointInFlight<'_> {
    fn drop(&mut self) {
        self.shard.leave_endpoint(self.ep);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.clear_endpoint();
        self.shard
            .in_flight
            .set(self.shard.in_flight.get().saturating_sub(1));
    }
}

/// Most client read buffers a shard's pool keeps: 128 (2 MiB).
pub const READ_POOL_MAX: usize = 128;
/// Most response buffers a shard's pool keeps: 1,024.
pub const OUT_POOL_MAX: usize = 1024;
/// Most prompt-hash arrays a shard's pool keeps: 256 (512 KiB).
pub const HASH_POOL_MAX: usize = 256;

/// A shard's free list of reusable values, capped (single-threaded: it lives in
/// the shard's `Rc`).
struct Pool<T> {
    items: RefCell<Vec<T>>,
    max: usize,
}

impl<T> Pool<T> {
    fn new(max: usize) -> Self {
        Pool {
            items: RefCell::new(Vec::new()),
            max,
        }
    }

    /// A pooled value, or a fresh one from `make`.
    fn take(&self, make: impl FnOnce() -> T) -> T {
        self.items.borrow_mut().pop().unwrap_or_else(make)
    }

    fn is_full(&self) -> bool {
        self.items.borrow().len() >= self.max
    }

    /// Keep `item` for a later [`Pool::take`] unless the pool is full.
    fn give(&self, item: T) {
        let mut items = self.items.borrow_mut();
        if items.len() < self.max {
            items.push(item);
        }
    }
}

/// A request's prompt hashes, borrowed from the shard's pool (returned on drop;
/// the pool keeps at most 256).
pub struct PooledHashes<'a> {
    shard: &'a Shard,
    hashes: Option<Box<PrefixHashes>>,
}

impl std::ops::Deref for PooledHashes<'_> {
    type Target = PrefixHashes;
    fn deref(&self) -> &PrefixHashes {
        // Always `Some` until dropped.
        self.hashes.as_deref().unwrap_or(&EMPTY_HASHES)
    }
}

impl Drop for PooledHashes<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.hashes.take() {
            self.shard.hash_pool.give(b);
        }
    }
}

static EMPTY_HASHES: std::sync::LazyLock<PrefixHashes> =
    std::sync::LazyLock::new(PrefixHashes::default);

/// `v` as 8 lower-case hex digits, most significant first, computed on all
/// eight at once (the request id's 32 digits were ~5 instructions each one by
/// one): the nibbles are spread one per byte, then each byte becomes its digit
/// by adding `'0'`, plus 39 more (`'a'` − `'0'` − 10) where the nibble is 10 or
/// more, which `nibble + 6` overflowing into bit 4 tells.
fn hex8(v: u32) -> [u8; 8] {
    let x = u64::from(v);
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

/// `matched` of `keyed` precise blocks, as approximate blocks of a prompt of
/// `total` (rounded; a non-zero match counts at least one).
fn precise_blocks(matched: usize, keyed: usize, total: usize) -> u32 {
    if matched == 0 || keyed == 0 {
        return 0;
    }
    let scaled = (matched * total + keyed / 2) / keyed;
    u32::try_from(scaled.max(1)).unwrap_or(u32::MAX)
}

/// How an endpoint is reached, as a connection to it was made: bit 0 TLS,
/// bit 1 HTTP/2.
fn reach_kind(e: &shardgate_routing::EndpointInfo) -> u8 {
    u8::from(e.tls.is_some()) | u8::from(e.h2) << 1
}

#[cfg(test)]
mod precise_tests {
    use super::{hex8, precise_blocks};

    #[test]
    fn hex8_writes_what_format_writes() {
        let mut v: u32 = 0x9e37_79b9;
        let edges = [0, 9, 10, 15, 16, 0x0909_0909, 0xa0a0_a0a0, 0xdead_beef];
        for edge in edges.into_iter().chain([u32::MAX]) {
            assert_eq!(hex8(edge), format!("{edge:08x}").as_bytes(), "{edge:#x}");
        }
        for _ in 0..100_000 {
            v = v.wrapping_mul(0x2c1b_3c6d).wrapping_add(0x297a_2d39);
            assert_eq!(hex8(v), format!("{v:08x}").as_bytes(), "{v:#x}");
        }
        // Every nibble value at every position.
        for pos in 0..8 {
            for nibble in 0..16u32 {
                let v = nibble << (4 * pos);
                assert_eq!(hex8(v), format!("{v:08x}").as_bytes(), "{v:#x}");
            }
        }
    }

    #[test]
    fn precise_matches_scale_to_approximate_blocks() {
        assert_eq!(precise_blocks(0, 10, 40), 0);
        assert_eq!(precise_blocks(5, 10, 40), 20);
        assert_eq!(precise_blocks(10, 10, 40), 40);
        // A non-zero match counts at least one block.
        assert_eq!(precise_blocks(1, 100, 3), 1);
        assert_eq!(precise_blocks(3, 0, 3), 0);
    }
}
