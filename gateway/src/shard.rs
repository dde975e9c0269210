//! Per-shard state: the read-only gateway snapshot, this shard's view of every
//! endpoint (in-flight count, ejection with exponential backoff), its upstream
//! keep-alive pool and its RNG. Nothing here is shared with other shards; it lives
//! in an `Rc` on the shard's thread and is touched only between `.await`s.
//!
//! The prefix index is per shard but learns every shard's records: with more
//! than one shard, each shard owns the two ends of its SPSC rings
//! ([`shardgate_routing::scoring::share`]; `--prefix-share-ring`, 32,768 words
//! each), hands the other two to the control thread once at start, publishes
//! what it records and replays the others' records (≤ `--prefix-share-drain`
//! 4,096 blocks) before each prefix-scored pick.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::net::TcpStream;
use monoio::time::Instant;
use shardgate_routing::{BackendGroup, RoutingTable};
use shardgate_runtime::io::{peer_state, PeerState, READ_CHUNK};
use shardgate_runtime::Shutdown;

use crate::access_log::ShardLog;
use crate::batch::PolicyBatcher;
use crate::control::ControlShared;
use crate::metrics::{MetricsHub, ShardMetrics};
use shardgate_routing::scoring::{
    share_link, Candidate, PickOutcome, PickRequest, Picker, PrefixConfig, PrefixHashes,
    PrefixIndex, Profile, Saturation, ShardLink, ShareConfig,
};

/// Data-path limits and timeouts, resolved from the CLI and the InferenceConfig.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Codec limits.
    pub limits: shardgate_http::Limits,
    /// Whole request must arrive within this once started.
    pub header_timeout: Duration,
    /// Keep-alive idle limit for client connections.
    pub client_idle_timeout: Duration,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Whole upstream exchange deadline.
    pub response_timeout: Duration,
    /// Longest silence between upstream bytes.
    pub stream_idle_timeout: Duration,
    /// Idle upstream connections kept per endpoint per shard.
    pub upstream_idle_per_endpoint: usize,
    /// Pooled upstream connections older than this are dropped.
    pub upstream_idle_timeout: Duration,
    /// Drain deadline on shutdown.
    pub drain_timeout: Duration,
    /// First ejection period.
    pub eject_base: Duration,
    /// Longest ejection period.
    pub eject_max: Duration,
    /// What to do when every candidate is saturated.
    pub saturated_action: SaturatedAction,
    /// Prefix-index capacity per endpoint per shard, in blocks.
    pub prefix_blocks_per_endpoint: usize,
    /// Saturation thresholds for every profile that filters on saturation.
    pub saturation: Saturation,
    /// Consecutive 5xx answers from an endpoint that eject it on a shard (0 = never).
    pub eject_after_5xx: u32,
    /// Retries per request on another endpoint.
    pub retries: u32,
    /// Retries may add at most this fraction of requests (0.2 = 20 %).
    pub retry_budget: f64,
    /// `maxConcurrentInferences` across the gateway (None = unlimited).
    pub max_concurrent: Option<u32>,
    /// Longest wait for an admission permit.
    pub admission_timeout: Duration,
    /// Number of shards.
    pub shards: usize,
}

/// Scoring and prefix-sharing settings (CLI flags), apart from [`Settings`].
#[derive(Debug, Clone, Copy)]
pub struct PickSettings {
    /// Queue scale `k` of the queue scorer and the prefix discount, `k / (k + q)`
    /// (`--queue-scale`); `None` = [`shardgate_routing::scoring::GATEWAY_QUEUE_SCALE`] (30).
    pub queue_scale: Option<f64>,
    /// Ring and drain sizes for sharing prefix records between shards
    /// (`--prefix-share-ring`, `--prefix-share-drain`).
    pub share: ShareConfig,
    /// How often the control thread moves records between the rings
    /// (`--prefix-share-interval`).
    pub share_interval: Duration,
}

impl Default for PickSettings {
    fn default() -> Self {
        Self {
            queue_scale: None,
            share: ShareConfig::default(),
            share_interval: Duration::from_millis(5),
        }
    }
}

impl PickSettings {
    /// `p` with the gateway's saturation thresholds (for profiles that filter
    /// on saturation) and queue scale.
    pub fn tune(&self, p: Profile, settings: &Settings) -> Profile {
        let p = if p.saturation.is_some() {
            p.with_saturation(Some(settings.saturation))
        } else {
            p
        };
        p.with_queue_scale(
            self.queue_scale
                .unwrap_or(shardgate_routing::scoring::GATEWAY_QUEUE_SCALE),
        )
    }
}

/// The immutable, process-wide view every shard reads: routing table and settings.
pub struct GatewayState {
    /// Compiled routes, listeners and endpoints.
    pub table: RoutingTable,
    /// Limits and timeouts.
    pub settings: Settings,
    /// Pre-rendered `GET /v1/models` body.
    pub models_body: Vec<u8>,
    /// Scheduling profile per linked InferencePolicy key.
    profiles: Vec<(String, Profile)>,
    /// Profile of rules without a policy (InferenceConfig strategy or default).
    default_profile: Profile,
    /// BatchingPolicies linked from rules, validated.
    pub batch_policies: Vec<(String, shardgate_batching::BatchPolicy)>,
    /// Scoring and prefix-sharing settings.
    pub pick: PickSettings,
}

impl GatewayState {
    /// Build the shared state: pre-render `/v1/models` and resolve every rule's
    /// scheduling profile (an unknown algorithm name is a configuration error).
    pub fn new(table: RoutingTable, settings: Settings) -> Result<Self, String> {
        Self::with_pick(table, settings, PickSettings::default())
    }

    /// Like [`Self::new`], with scoring and prefix-sharing settings.
    pub fn with_pick(
        table: RoutingTable,
        settings: Settings,
        pick: PickSettings,
    ) -> Result<Self, String> {
        let config = table.inference_config();
        let tune = |p: Profile| pick.tune(p, &settings);
        let default_profile = tune(
            Profile::resolve(None, config)
                .map_err(|e| format!("InferenceConfig spec.modelRouting.strategy: {e}"))?,
        );
        let mut profiles: Vec<(String, Profile)> = Vec::new();
        for (key, policy) in table.inference_policies() {
            let p = Profile::resolve(Some(policy), config)
                .map_err(|e| format!("InferencePolicy {key}: spec.loadBalancing.algorithm: {e}"))?;
            profiles.push((key.to_string(), tune(p)));
        }
        let data: Vec<serde_json::Value> = table
            .models()
            .iter()
            .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "shardgate"}))
            .collect();
        let models_body = serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .unwrap_or_default();
        let batch_policies = crate::batch::policies(&table)?;
        Ok(GatewayState {
            table,
            settings,
            models_body,
            profiles,
            default_profile,
            batch_policies,
            pick,
        })
    }

    /// The scheduling profile for a rule linked to `policy`.
    pub fn profile(&self, policy: Option<&str>) -> &Profile {
        policy
            .and_then(|k| self.profiles.iter().find(|(key, _)| key == k))
            .map_or(&self.default_profile, |(_, p)| p)
    }
}

/// What to do when every healthy endpoint of a route is saturated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaturatedAction {
    /// Sheddable requests (priority < 0) get 429; others go to the best saturated endpoint.
    Shed,
    /// Everyone gets 503 with Retry-After.
    Reject,
    /// Everyone goes to the best saturated endpoint.
    Pass,
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickFailure {
    /// Every endpoint of the route is ejected (connection failures) or was tried.
    NoEndpoint,
    /// Every candidate failed its health checks.
    Unhealthy,
    /// Every healthy candidate is saturated (queue or KV-cache over threshold).
    Saturated,
    /// Every healthy candidate is saturated and the request is sheddable.
    Shed,
}

/// One endpoint as this shard sees it.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests this shard has in flight to the endpoint.
    pub in_flight: Cell<u32>,
    /// Consecutive connection failures.
    pub failures: Cell<u32>,
    /// Ejected until this instant.
    pub ejected_until: Cell<Option<Instant>>,
    /// Consecutive 5xx answers.
    pub errors_5xx: Cell<u32>,
}

/// A pooled upstream connection with its read buffer.
pub struct UpstreamConn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read but not consumed.
    pub buf: BytesMut,
    /// When it went idle (for the pool's idle timeout).
    pub idle_since: Instant,
    /// Whether it has carried a request before (stale-connection retry applies).
    pub reused: bool,
}

/// Everything one shard owns.
pub struct Shard {
    /// Shard index.
    pub id: usize,
    /// Read-only gateway state.
    pub state: Arc<GatewayState>,
    /// Per-endpoint view, indexed like `RoutingTable::endpoints()`.
    pub endpoints: Vec<EndpointState>,
    /// Idle upstream connections per endpoint (LIFO).
    pool: RefCell<Vec<Vec<UpstreamConn>>>,
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
    /// Retry tokens: each request adds `retry_budget`, each retry takes 1 (cap 10).
    retry_tokens: Cell<f64>,
    /// One batcher per BatchingPolicy.
    pub batchers: Vec<Rc<PolicyBatcher>>,
    /// This shard's share of `maxConcurrentInferences`, when set.
    pub admission: Option<Rc<crate::admit::ShardAdmission>>,
    /// Reusable response buffers (taken for one request, returned after).
    out_pool: Pool<Vec<u8>>,
    /// Reusable client read buffers (taken when a connection gets busy, returned
    /// when it goes idle).
    read_pool: Pool<BytesMut>,
    /// Reusable prompt-hash arrays (2 KiB each), so a request's future holds a
    /// pointer instead of moving the array around.
    hash_pool: Pool<Box<PrefixHashes>>,
}

impl Shard {
    /// A fresh shard view over `state`.
    pub fn new(
        id: usize,
        state: Arc<GatewayState>,
        shutdown: Shutdown,
        hub: Arc<MetricsHub>,
        access_log: Option<ShardLog>,
        control: Arc<ControlShared>,
    ) -> Rc<Self> {
        let n = state.table.endpoints().len();
        let models: Arc<[String]> = state.table.models().to_vec().into();
        // Prefix sharing: keep our ends, hand the control thread its ends.
        let share = if state.settings.shards > 1 {
            share_link(&state.pick.share)
                .and_then(|(mine, theirs)| control.attach_prefix_share(id, theirs).then_some(mine))
        } else {
            None
        };
        Rc::new(Shard {
            metrics: RefCell::new(ShardMetrics::new(models)),
            hub,
            access_log: access_log.map(RefCell::new),
            control,
            picker: RefCell::new(Picker::new(fastrand::u64(..))),
            prefix: RefCell::new(PrefixIndex::new(PrefixConfig {
                capacity_per_endpoint: state.settings.prefix_blocks_per_endpoint,
                ..PrefixConfig::default()
            })),
            share: RefCell::new(share),
            cands: RefCell::new(Vec::with_capacity(64)),
            local: RefCell::new(Vec::with_capacity(64)),
            retry_tokens: Cell::new(1.0),
            out_pool: Pool::new(OUT_POOL_MAX),
            read_pool: Pool::new(READ_POOL_MAX),
            hash_pool: Pool::new(HASH_POOL_MAX),
            admission: state.settings.max_concurrent.map(|total| {
                let shares =
                    shardgate_batching::Budget { total }.initial(state.settings.shards.max(1));
                crate::admit::ShardAdmission::new(
                    shares.get(id).copied().unwrap_or(1),
                    state.settings.admission_timeout,
                )
            }),
            batchers: state
                .batch_policies
                .iter()
                .map(|(k, p)| Rc::new(PolicyBatcher::new(k.clone(), p.clone())))
                .collect(),
            id,
            endpoints: (0..n).map(|_| EndpointState::default()).collect(),
            pool: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            rng: RefCell::new(fastrand::Rng::new()),
            in_flight: Cell::new(0),
            requests: Cell::new(0),
            shutdown,
            state,
        })
    }

    /// Address of endpoint `ep`.
    pub fn addr(&self, ep: usize) -> SocketAddr {
        self.state.table.endpoints()[ep].addr
    }

    fn available(&self, ep: usize, now: Instant) -> bool {
        match self.endpoints[ep].ejected_until.get() {
            Some(t) => t <= now,
            None => true,
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
    ///    burst does not all land on one "best" endpoint.
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
        let usable = |ep: &usize| !exclude.contains(ep) && self.available(*ep, now);
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
                link.drain_into(&mut self.prefix.borrow_mut(), now.into_std());
            }
        }
        let index = self.prefix.borrow();
        for &ep in group.endpoints.iter().filter(|ep| usable(ep)) {
            let prefix_blocks = prefix.map_or(0, |h| index.match_len(ep, h.as_slice()) as u32);
            cands.push(Candidate {
                endpoint: ep,
                prefix_blocks,
            });
            local.push(self.endpoints[ep].in_flight.get());
        }
        drop(index);
        let snapshot = self.control.snapshot.load();
        let outcome =
            self.picker
                .borrow_mut()
                .pick(profile, &snapshot, req, &cands, &local, now.into_std());
        match outcome {
            PickOutcome::Picked(p) => Ok(p.endpoint),
            PickOutcome::AllSaturated { fallback } => {
                match (self.state.settings.saturated_action, fallback) {
                    (SaturatedAction::Reject, _) | (_, None) => Err(PickFailure::Saturated),
                    (SaturatedAction::Shed, Some(_)) if priority < 0 => Err(PickFailure::Shed),
                    (_, Some(p)) => Ok(p.endpoint),
                }
            }
            PickOutcome::NoCandidate => Err(PickFailure::Unhealthy),
        }
    }

    /// Whether some endpoint of `groups` is neither ejected here nor in `tried`.
    pub fn has_alternative(&self, groups: &[BackendGroup], tried: &[usize], now: Instant) -> bool {
        groups
            .iter()
            .filter(|g| g.weight > 0)
            .flat_map(|g| g.endpoints.iter())
            .any(|ep| !tried.contains(ep) && self.available(*ep, now))
    }

    /// A response buffer for one request (4 KiB to start), from the pool.
    pub fn take_out_buf(&self) -> Vec<u8> {
        self.out_pool.take(|| Vec::with_capacity(4096))
    }

    /// Return a response buffer; the pool keeps at most [`OUT_POOL_MAX`] of at most
    /// 64 KiB.
    pub fn give_out_buf(&self, mut buf: Vec<u8>) {
        if buf.capacity() <= 64 * 1024 {
            buf.clear();
            self.out_pool.give(buf);
        }
    }

    /// One more call in flight on `ep` (the count picks and the snapshot read).
    fn enter_endpoint(&self, ep: usize) {
        if let Some(e) = self.endpoints.get(ep) {
            e.in_flight.set(e.in_flight.get().saturating_add(1));
        }
    }

    /// One call fewer in flight on `ep`.
    fn leave_endpoint(&self, ep: usize) {
        if let Some(e) = self.endpoints.get(ep) {
            e.in_flight.set(e.in_flight.get().saturating_sub(1));
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

    /// This shard's batcher for BatchingPolicy `key`.
    pub fn batcher(&self, key: &str) -> Option<&Rc<PolicyBatcher>> {
        self.batchers.iter().find(|b| b.key == key)
    }

    /// Credit the retry budget for one request.
    pub fn earn_retry(&self) {
        let t = self.retry_tokens.get() + self.state.settings.retry_budget;
        self.retry_tokens.set(t.min(10.0));
    }

    /// Take a retry token, if the budget allows one.
    pub fn take_retry(&self) -> bool {
        let t = self.retry_tokens.get();
        if t >= 1.0 {
            self.retry_tokens.set(t - 1.0);
            true
        } else {
            false
        }
    }

    /// Count a 5xx answer from `ep`; enough in a row eject it like a refused connection.
    pub fn upstream_5xx(&self, ep: usize, now: Instant) {
        let limit = self.state.settings.eject_after_5xx;
        if limit == 0 {
            return;
        }
        let st = &self.endpoints[ep];
        let n = st.errors_5xx.get() + 1;
        st.errors_5xx.set(n);
        if n >= limit {
            st.errors_5xx.set(0);
            self.eject(ep, now, "consecutive 5xx responses");
        }
    }

    /// Remember that `ep` now holds the prompt's prefix blocks in its cache, and
    /// tell the other shards (dropped, and counted, when the ring is full).
    pub fn record_prefix(&self, ep: usize, hashes: &PrefixHashes) {
        self.prefix
            .borrow_mut()
            .record(ep, hashes.as_slice(), std::time::Instant::now());
        if let Some(link) = self.share.borrow_mut().as_mut() {
            link.publish(ep, hashes.as_slice());
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

    /// The endpoint refused or dropped a connection: eject it for an exponentially
    /// growing period (`eject_base × 2^(failures-1)`, capped at `eject_max`).
    pub fn eject(&self, ep: usize, now: Instant, why: &str) {
        let st = &self.endpoints[ep];
        let failures = st.failures.get().saturating_add(1);
        st.failures.set(failures);
        let s = &self.state.settings;
        let factor = 1u32 << (failures - 1).min(16);
        let period = s.eject_base.saturating_mul(factor).min(s.eject_max);
        st.ejected_until.set(Some(now + period));
        self.pool.borrow_mut()[ep].clear();
        tracing::warn!(shard = self.id, endpoint = %self.addr(ep), failures, period_ms = period.as_millis() as u64, reason = why, "endpoint ejected");
    }

    /// `ep` answered without a server error: clear any ejection and 5xx streak.
    pub fn restore(&self, ep: usize) {
        let st = &self.endpoints[ep];
        st.errors_5xx.set(0);
        if st.failures.get() > 0 {
            st.failures.set(0);
            st.ejected_until.set(None);
            tracing::info!(shard = self.id, endpoint = %self.addr(ep), "endpoint restored");
        }
    }

    /// Take an idle pooled connection to `ep`, dropping expired or dead ones.
    pub fn take_conn(&self, ep: usize, now: Instant) -> Option<UpstreamConn> {
        let mut pool = self.pool.borrow_mut();
        let idle = &mut pool[ep];
        while let Some(c) = idle.pop() {
            if now.saturating_duration_since(c.idle_since)
                >= self.state.settings.upstream_idle_timeout
            {
                continue;
            }
            // An idle upstream must have nothing to say: data or EOF means it is stale.
            // Checked (one syscall) only on connections idle long enough for a
            // server's keep-alive timer to matter; a busy connection that turns out
            // stale is retried once on a fresh one anyway.
            if now.saturating_duration_since(c.idle_since) >= PEEK_AFTER_IDLE
                && peer_state(&c.stream) != PeerState::Idle
            {
                continue;
            }
            return Some(c);
        }
        None
    }

    /// Return a connection whose exchange completed cleanly to the pool.
    pub fn put_conn(&self, ep: usize, mut conn: UpstreamConn, now: Instant) {
        if self.shutdown.is_draining() || !conn.buf.is_empty() {
            return;
        }
        let mut pool = self.pool.borrow_mut();
        let idle = &mut pool[ep];
        if idle.len() >= self.state.settings.upstream_idle_per_endpoint {
            idle.remove(0);
        }
        conn.idle_since = now;
        conn.reused = true;
        idle.push(conn);
    }

    /// A new request id: 32 hex digits (64 random bits, the shard, a counter),
    /// formatted without allocating.
    pub fn request_id(&self) -> [u8; 32] {
        let n = self.requests.get().wrapping_add(1);
        self.requests.set(n);
        let r = self.rng.borrow_mut().u64(..);
        let mut id = [0u8; 32];
        hex_into(&mut id[..16], r);
        hex_into(&mut id[16..24], u64::from(self.id as u32));
        hex_into(&mut id[24..], u64::from(n as u32));
        id
    }
}

impl Shard {
    /// Copy this shard's metrics (plus endpoint state) into its hub slot.
    pub fn publish_metrics(&self) {
        let mut m = self.metrics.borrow().clone();
        m.batch = self
            .batchers
            .iter()
            .map(|b| (b.key.clone(), b.stats()))
            .collect();
        m.admission = self.admission.as_ref().map(|a| {
            let (share, in_use, demand) = a.numbers();
            (share, in_use, demand, a.waiting() as u32)
        });
        let now = Instant::now();
        m.endpoint_in_flight = self.endpoints.iter().map(|e| e.in_flight.get()).collect();
        m.endpoint_ejected = self
            .endpoints
            .iter()
            .map(|e| e.ejected_until.get().is_some_and(|t| t > now))
            .collect();
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

/// Pooled upstream connections idle at least this long are peeked at (1 s) before
/// reuse; see [`Shard::take_conn`].
pub const PEEK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Write the low `out.len()` hex digits of `v` into `out` (lower case).
fn hex_into(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
    }
}
