//! The control thread: telemetry scrapes, active health checks, and the scoring
//! snapshot every shard reads.
//!
//! One OS thread with its own monoio runtime, never a shard. Per endpoint it runs
//! a scrape loop (`GET /metrics` every `--scrape-interval`, default 100 ms, ±10 %
//! jitter, bounded by `--scrape-timeout`; at most one scrape in flight per
//! endpoint) and, when an `InferencePolicy` with a `healthCheck` covers the
//! endpoint, a health loop (`interval`/`timeout` from the policy; with
//! `inferenceTest.enabled` a real one-token completion for `inferenceTest.model`,
//! else `GET /health`, or for a GRPCRoute's backends `grpc.health.v1.Health/Check`
//! over HTTP/2, [`crate::h2_upstream::health_check`]). `--unhealthy-after` consecutive failures (default 2)
//! mark an endpoint unhealthy, `--healthy-after` successes (default 1) restore
//! it; transitions are logged. Per endpoint it also polls `GET /v1/models`
//! (every `--models-interval`, default 10 s; [`crate::models_poll`]) for the
//! models and LoRA adapters it serves. Every scrape interval it merges the
//! telemetry store, the health verdicts, the model lists and the in-flight
//! counts the shards report ([`crate::report`], their own channel, not the
//! metrics) into an
//! immutable [`ScoringSnapshot`] and swaps it in (`arc-swap`): shards never block
//! on it and keep using the last one if this thread stalls.
//!
//! With more than one shard it is also the hub of prefix sharing
//! ([`shardgate_routing::scoring::share`]): each shard, once at start, sends the
//! control thread its ends of two SPSC rings (a `std::sync::mpsc` registration,
//! never used again), and every `--prefix-share-interval` (default 5 ms) the
//! control thread moves the prefix records each shard published to every other
//! shard's inbound ring, dropping and counting what does not fit. The counters
//! (records received, forwarded, dropped) are plain atomics that only this
//! thread writes, read by the admin views (`gateway_prefix_share_records_total`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use shardgate_routing::scoring::{EndpointInput, HubLink, ScoringSnapshot, ShareHub, ShareStats};
use shardgate_routing::telemetry::{StoreConfig, TelemetryStore};
use shardgate_routing::RoutingTable;

use crate::report::Reports;
use crate::throttle::Throttle;
use crate::upstream::{Client as Conn, Target};
use crate::upstream_tls::UpstreamTls;

/// Control-plane settings (CLI flags).
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Telemetry scrape interval.
    pub scrape_interval: Duration,
    /// Per-scrape timeout.
    pub scrape_timeout: Duration,
    /// A signal older than this many intervals is stale.
    pub stale_after_intervals: u32,
    /// Consecutive failed checks that make an endpoint unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive passed checks that make it healthy again.
    pub healthy_after: u32,
    /// Whether to scrape at all.
    pub scrape: bool,
    /// `GET /v1/models` poll interval; zero turns polling off (every endpoint
    /// then serves any model).
    pub models_interval: Duration,
    /// Scrapes and model polls in flight at once (`--max-concurrent-scrapes`);
    /// with more endpoints than this, their connections are also closed after
    /// each request instead of kept open.
    pub max_concurrent_scrapes: usize,
}

/// How one endpoint is health-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// Probe interval.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Model for a real one-token completion; `None` probes `GET /health`.
    pub inference_model: Option<String>,
    /// The endpoint serves gRPC (a GRPCRoute's backend): without an inference
    /// test it is probed with `grpc.health.v1.Health/Check` over HTTP/2.
    pub grpc: bool,
    /// The policy it comes from.
    pub policy: String,
}

/// One endpoint's health, as the admin views report it.
#[derive(Debug, Clone, Serialize)]
pub struct HealthStatus {
    /// Current verdict (true until checks say otherwise).
    pub healthy: bool,
    /// Whether an active check covers the endpoint.
    pub checked: bool,
    /// Consecutive failures.
    pub consecutive_failures: u32,
    /// Consecutive successes.
    pub consecutive_successes: u32,
    /// Last failure reason.
    pub last_error: Option<String>,
    /// Checks run.
    pub checks: u64,
    /// Probe used.
    pub probe: Option<String>,
}

/// What the control thread publishes.
pub struct ControlShared {
    /// The scoring snapshot shards pick from.
    pub snapshot: ArcSwap<ScoringSnapshot>,
    /// Health per endpoint.
    pub health: ArcSwap<Vec<HealthStatus>>,
    /// Settings in force.
    pub settings: ControlSettings,
    /// Per shard: its share of `maxConcurrentInferences` (empty when unlimited).
    pub shares: ArcSwap<Vec<u32>>,
    /// The `maxConcurrentInferences` budget (0: unlimited); a reload resizes it.
    budget: std::sync::atomic::AtomicU32,
    /// Prefix sharing between shards: registration and counters.
    prefix_share: PrefixShare,
    /// What every shard reports (in-flight calls per endpoint, admission).
    pub reports: Reports,
    /// When each endpoint last passed an active check (a telemetry scrape or a
    /// health probe): shards end an ejection that began before it.
    pub checks: CheckTimes,
    /// Per endpoint: on the gateway's own node (`gpuAffinity`; empty = none).
    pub locality: ArcSwap<Vec<bool>>,
    /// How many endpoint indices the per-endpoint arrays hold (in-flight
    /// reports, check times, retired flags): [`endpoint_capacity`] of the
    /// start's count. A reload that needs more waits for a restart.
    pub capacity: usize,
    /// Endpoints a reload retired: their loops idle.
    pub retired: Arc<crate::report::Retired>,
    /// Endpoint indices in use (the routing table's count, retired ones too).
    count: std::sync::atomic::AtomicUsize,
    /// Where a reload sends its changes (set when the thread starts).
    adds: arc_swap::ArcSwapOption<mpsc::Sender<ControlMsg>>,
    /// Precise prefix routing: the KV-events thread's exact index and the
    /// tokenizers (#18; empty when `--kv-events` is not given).
    pub precise: Arc<crate::kv_events::Precise>,
}

/// What a reload asks of the running control thread.
pub enum ControlMsg {
    /// Start (or start again) these endpoints' checks.
    Endpoints(Vec<AddedEndpoint>),
    /// Fetch the remote key sets of a new authenticator's providers.
    Jwks(Arc<crate::jwt::Authenticator>),
}

/// An endpoint a reload added, or whose checks it changed: its index, how it
/// is reached, how it is checked.
#[derive(Clone)]
pub struct AddedEndpoint {
    /// Its index in the routing table.
    pub ep: usize,
    /// Its address.
    pub addr: SocketAddr,
    /// Upstream TLS, when a BackendTLSPolicy covers it.
    pub tls: Option<Arc<UpstreamTls>>,
    /// Its port speaks HTTP/2 only ([`shardgate_routing::EndpointInfo::h2`]).
    pub h2: bool,
    /// Its active health check, if any.
    pub spec: Option<HealthSpec>,
}

/// The per-endpoint capacity for a start with `n` endpoints: twice as many,
/// and at least 1,024 more, so that pods coming and going never need a restart
/// in practice (a few bytes per index per shard).
pub fn endpoint_capacity(n: usize) -> usize {
    (n.saturating_mul(2)).max(n + 1024)
}

/// Per endpoint, the instants of its last successful telemetry scrape and
/// its last passed health probe, written by the control thread and read by
/// shards (one `Relaxed` atomic each; nanoseconds since `epoch`, 0 = never).
pub struct CheckTimes {
    epoch: Instant,
    scraped: Box<[AtomicU64]>,
    probed: Box<[AtomicU64]>,
}

impl CheckTimes {
    fn new(endpoints: usize) -> Self {
        CheckTimes {
            epoch: Instant::now(),
            scraped: (0..endpoints).map(|_| AtomicU64::new(0)).collect(),
            probed: (0..endpoints).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn store(&self, slots: &[AtomicU64], ep: usize, at: Instant) {
        if let Some(v) = slots.get(ep) {
            let n = at.saturating_duration_since(self.epoch).as_nanos();
            v.store(
                u64::try_from(n).unwrap_or(u64::MAX).max(1),
                Ordering::Relaxed,
            );
        }
    }

    fn load(&self, slots: &[AtomicU64], ep: usize) -> Option<Instant> {
        let n = slots.get(ep)?.load(Ordering::Relaxed);
        (n > 0).then(|| self.epoch + Duration::from_nanos(n))
    }

    /// `ep`'s telemetry scrape succeeded at `at`.
    pub fn scraped(&self, ep: usize, at: Instant) {
        self.store(&self.scraped, ep, at);
    }

    /// `ep` passed a health probe at `at`.
    pub fn probed(&self, ep: usize, at: Instant) {
        self.store(&self.probed, ep, at);
    }

    /// (last successful scrape, last passed probe) of `ep`.
    pub fn last_ok(&self, ep: usize) -> (Option<Instant>, Option<Instant>) {
        (self.load(&self.scraped, ep), self.load(&self.probed, ep))
    }
}

/// The control thread's side of prefix sharing, as shards and admin views see it.
struct PrefixShare {
    /// Shards send their hub-side ring ends here once, at start.
    register: mpsc::Sender<(usize, HubLink)>,
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    shards: AtomicU64,
}

impl PrefixShare {
    fn new(register: mpsc::Sender<(usize, HubLink)>) -> Self {
        Self {
            register,
            received: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            shards: AtomicU64::new(0),
        }
    }
}

/// The control thread's end of the shards' prefix-sharing registrations; hand
/// it to [`spawn`].
pub struct PrefixShareInbox {
    rx: mpsc::Receiver<(usize, HubLink)>,
    interval: Duration,
}

impl ControlShared {
    /// Initial state: every endpoint healthy, no telemetry.
    pub fn new(
        endpoints: usize,
        settings: ControlSettings,
        specs: &[Option<HealthSpec>],
        budget: Option<u32>,
        shards: usize,
    ) -> Self {
        let now = Instant::now();
        let inputs: Vec<EndpointInput<'_>> = (0..endpoints)
            .map(|id| EndpointInput {
                id,
                healthy: true,
                models: None,
                inflight: 0,
                local: false,
            })
            .collect();
        let store = TelemetryStore::new(store_config(&settings));
        let health = (0..endpoints)
            .map(|i| HealthStatus {
                healthy: true,
                checked: specs.get(i).is_some_and(|s| s.is_some()),
                consecutive_failures: 0,
                consecutive_successes: 0,
                last_error: None,
                checks: 0,
                probe: specs.get(i).and_then(|s| s.as_ref()).map(probe_name),
            })
            .collect();
        ControlShared {
            snapshot: ArcSwap::from_pointee(ScoringSnapshot::build(0, now, &store, inputs)),
            health: ArcSwap::from_pointee(health),
            settings,
            shares: ArcSwap::from_pointee(
                budget
                    .map(|total| shardgate_batching::Budget { total }.initial(shards.max(1)))
                    .unwrap_or_default(),
            ),
            budget: std::sync::atomic::AtomicU32::new(budget.unwrap_or(0)),
            // No hub until `with_prefix_share`: registrations fail, sharing is off.
            prefix_share: PrefixShare::new(mpsc::channel().0),
            reports: Reports::new(shards.max(1), endpoint_capacity(endpoints)),
            checks: CheckTimes::new(endpoint_capacity(endpoints)),
            locality: ArcSwap::from_pointee(Vec::new()),
            capacity: endpoint_capacity(endpoints),
            retired: Arc::new(crate::report::Retired::new(endpoint_capacity(endpoints))),
            count: std::sync::atomic::AtomicUsize::new(endpoints),
            adds: arc_swap::ArcSwapOption::empty(),
            precise: Arc::default(),
        }
    }

    /// With the KV-events thread's shared state (precise prefix routing).
    pub fn with_precise(mut self, precise: Arc<crate::kv_events::Precise>) -> Self {
        self.precise = precise;
        self
    }

    /// Marks the endpoints on the gateway's own node (`gpuAffinity`), indexed
    /// like the routing table's endpoints; every snapshot carries the marks.
    pub fn with_locality(self, local: Vec<bool>) -> Self {
        let mut snap = ScoringSnapshot::clone(&self.snapshot.load());
        for v in &mut snap.endpoints {
            v.local = local.get(v.id).copied().unwrap_or(false);
        }
        self.snapshot.store(Arc::new(snap));
        self.locality.store(Arc::new(local));
        self
    }

    /// The `maxConcurrentInferences` budget in force (None: unlimited).
    pub fn budget(&self) -> Option<u32> {
        Some(self.budget.load(Ordering::Acquire)).filter(|b| *b > 0)
    }

    /// A reload's new `maxConcurrentInferences`: shares move to it on the
    /// next rebalance (never promising more than it while shards hold permits).
    pub fn set_budget(&self, budget: Option<u32>) {
        let old = self.budget();
        if old == budget {
            return;
        }
        if old.is_none() {
            // From unlimited: start from an even split.
            if let Some(total) = budget {
                let shards = self.reports.shards().max(1);
                self.shares.store(Arc::new(
                    shardgate_batching::Budget { total }.initial(shards),
                ));
            }
        }
        self.budget.store(budget.unwrap_or(0), Ordering::Release);
    }

    /// Endpoint indices in use.
    pub fn endpoint_count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// A reload's endpoint changes, before the new state is in force: the new
    /// count and locality, the endpoints that are live (a returning one's
    /// checks resume), and the new endpoints to start checking. Endpoints the
    /// reload retires are retired after the state swap ([`Self::retire`]), so
    /// requests of the old state never find their endpoints gone. False
    /// (nothing changed) when `count` exceeds the capacity or the control
    /// thread is not running.
    pub fn prepare_endpoints(
        &self,
        count: usize,
        retired: &[bool],
        locality: Vec<bool>,
        added: Vec<AddedEndpoint>,
    ) -> bool {
        if count > self.capacity {
            return false;
        }
        let Some(tx) = self.adds.load_full() else {
            return false;
        };
        for (ep, r) in retired.iter().enumerate() {
            if !r {
                self.retired.set(ep, false);
            }
        }
        self.locality.store(Arc::new(locality));
        if !added.is_empty() && tx.send(ControlMsg::Endpoints(added)).is_err() {
            return false;
        }
        self.count.store(count, Ordering::Release);
        true
    }

    /// Start fetching a new authenticator's remote JWK sets (the old one's
    /// loops end once it is dropped). False when the thread is not running.
    pub fn fetch_jwks(&self, auth: &Arc<crate::jwt::Authenticator>) -> bool {
        self.adds
            .load_full()
            .is_some_and(|tx| tx.send(ControlMsg::Jwks(auth.clone())).is_ok())
    }

    /// After the state swap: the endpoints no backend names any more. Their
    /// checks idle and the snapshot reads them as unhealthy.
    pub fn retire(&self, retired: &[bool]) {
        for (ep, r) in retired.iter().enumerate() {
            if *r {
                self.retired.set(ep, true);
            }
        }
    }

    /// Turns prefix sharing on: shards may attach their rings, and the control
    /// thread started with the returned inbox moves records every `interval`.
    pub fn with_prefix_share(mut self, interval: Duration) -> (Self, PrefixShareInbox) {
        let (tx, rx) = mpsc::channel();
        self.prefix_share = PrefixShare::new(tx);
        (self, PrefixShareInbox { rx, interval })
    }

    /// Hands shard `shard`'s hub-side ring ends to the control thread (once, at
    /// shard start). False when sharing is off: the shard then keeps no rings.
    pub fn attach_prefix_share(&self, shard: usize, link: HubLink) -> bool {
        self.prefix_share.register.send((shard, link)).is_ok()
    }

    /// Prefix-sharing counters as of the control thread's last pump.
    pub fn prefix_share_stats(&self) -> ShareStats {
        let p = &self.prefix_share;
        ShareStats {
            received: p.received.load(Ordering::Relaxed),
            forwarded: p.forwarded.load(Ordering::Relaxed),
            dropped: p.dropped.load(Ordering::Relaxed),
            shards: p.shards.load(Ordering::Relaxed),
        }
    }
}

fn store_config(s: &ControlSettings) -> StoreConfig {
    StoreConfig {
        interval: s.scrape_interval,
        stale_after_intervals: s.stale_after_intervals,
    }
}

fn probe_name(s: &HealthSpec) -> String {
    match &s.inference_model {
        Some(m) => format!(
            "POST /v1/completions model={m} max_tokens=1 (policy {})",
            s.policy
        ),
        None if s.grpc => format!("grpc.health.v1.Health/Check (policy {})", s.policy),
        None => format!("GET /health (policy {})", s.policy),
    }
}

/// Per endpoint, with `gpuAffinity` on and `node` known: whether it runs on
/// the gateway's node (`None`: no preference).
pub fn locality(table: &shardgate_routing::RoutingTable, node: Option<&str>) -> Vec<Option<bool>> {
    let n = table.endpoints().len();
    let affinity = table
        .inference_config()
        .and_then(|c| c.spec.resource_management.as_ref())
        .is_some_and(|r| r.gpu_affinity);
    if !affinity {
        return vec![None; n];
    }
    let Some(node) = node else {
        tracing::warn!("InferenceConfig gpuAffinity is on but the gateway's node is unknown (--node-name or NODE_NAME): no node preference");
        return vec![None; n];
    };
    let local: Vec<Option<bool>> = table
        .endpoints()
        .iter()
        .map(|e| Some(e.node.as_deref() == Some(node)))
        .collect();
    tracing::info!(
        node,
        local = local.iter().filter(|l| **l == Some(true)).count(),
        endpoints = n,
        "gpuAffinity: endpoints on this node are preferred"
    );
    local
}

/// Health specs per endpoint: the first InferencePolicy with a `healthCheck`
/// linked (ExtensionRef) from a rule that routes to the endpoint.
pub fn health_specs(table: &RoutingTable) -> Vec<Option<HealthSpec>> {
    let mut specs: Vec<Option<HealthSpec>> = vec![None; table.endpoints().len()];
    for rule in table.rules() {
        let Some(key) = rule.policy else { continue };
        let Some(policy) = table.inference_policy(key) else {
            continue;
        };
        let Some(hc) = policy.spec.health_check.as_ref() else {
            continue;
        };
        let spec = HealthSpec {
            interval: hc.interval.unwrap_or(Duration::from_secs(10)),
            timeout: hc.timeout.unwrap_or(Duration::from_secs(5)),
            inference_model: hc
                .inference_test
                .as_ref()
                .filter(|t| t.enabled)
                .map(|t| t.model.clone().unwrap_or_default()),
            policy: key.to_string(),
            grpc: rule.grpc,
        };
        for group in rule.backends {
            for &ep in &group.endpoints {
                if specs[ep].is_none() {
                    specs[ep] = Some(spec.clone());
                }
            }
        }
    }
    specs
}

/// Start the control thread (the prefix-sharing hub too when `share` is given).
///
/// `endpoints` are scraped, polled and checked over TLS where their
/// [`UpstreamTls`] says so; `jwks_roots` are the roots an `https://`
/// `remoteJWKS` is verified against.
pub fn spawn(
    shared: Arc<ControlShared>,
    endpoints: Vec<Target>,
    specs: Vec<Option<HealthSpec>>,
    share: Option<PrefixShareInbox>,
    auth: Arc<crate::jwt::Authenticator>,
    jwks_roots: Arc<rustls::RootCertStore>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let r = shardgate_runtime::block_on(async move {
                crate::jwks_fetch::spawn_all(&auth, &jwks_roots);
                drop(auth);
                run(shared, endpoints, specs, share, jwks_roots).await
            });
            if let Err(e) = r {
                tracing::error!(error = %e, "control runtime");
            }
        })?;
    Ok(())
}

struct Health {
    status: Vec<HealthStatus>,
}

/// What every per-endpoint loop of the control thread shares.
struct Loops {
    shared: Arc<ControlShared>,
    settings: ControlSettings,
    store: Rc<RefCell<TelemetryStore>>,
    health: Rc<RefCell<Health>>,
    lists: crate::models_poll::ModelLists,
    throttle: Throttle,
    epochs: crate::report::Epochs,
}

impl Loops {
    /// Start endpoint `ep`'s loops: `/v1/models` polls, telemetry scrapes and,
    /// with a spec, health checks. Loops started before for `ep` end.
    fn start(&self, ep: usize, target: Target, spec: Option<HealthSpec>) {
        let epoch = self.epochs.next(ep);
        {
            let mut h = self.health.borrow_mut();
            while h.status.len() <= ep {
                h.status.push(HealthStatus {
                    healthy: true,
                    checked: false,
                    consecutive_failures: 0,
                    consecutive_successes: 0,
                    last_error: None,
                    checks: 0,
                    probe: None,
                });
            }
            if let Some(st) = h.status.get_mut(ep) {
                let probe = spec.as_ref().map(probe_name);
                if st.probe != probe {
                    // Another check (or none): its verdict starts over.
                    st.healthy = true;
                    st.consecutive_failures = 0;
                    st.consecutive_successes = 0;
                    st.last_error = None;
                }
                st.checked = spec.is_some();
                st.probe = probe;
            }
            let mut lists = self.lists.borrow_mut();
            while lists.len() <= ep {
                lists.push(None);
            }
        }
        let settings = &self.settings;
        if !settings.models_interval.is_zero() {
            monoio::spawn(crate::models_poll::poll_loop(
                ep,
                target.clone(),
                settings.models_interval,
                settings.scrape_timeout,
                self.lists.clone(),
                self.throttle.clone(),
                self.shared.retired.clone(),
                epoch.clone(),
            ));
        }
        if settings.scrape {
            monoio::spawn(scrape_loop(
                ep,
                target.clone(),
                settings.clone(),
                self.store.clone(),
                self.shared.clone(),
                self.throttle.clone(),
                epoch.clone(),
            ));
        }
        if let Some(spec) = spec {
            monoio::spawn(health_loop(
                ep,
                target,
                spec,
                settings.clone(),
                self.health.clone(),
                self.shared.clone(),
                epoch,
            ));
        }
    }
}

async fn run(
    shared: Arc<ControlShared>,
    endpoints: Vec<Target>,
    specs: Vec<Option<HealthSpec>>,
    share: Option<PrefixShareInbox>,
    jwks_roots: Arc<rustls::RootCertStore>,
) {
    if let Some(inbox) = share {
        monoio::spawn(share_loop(inbox, shared.clone()));
    }
    let (adds_tx, adds) = mpsc::channel::<ControlMsg>();
    shared.adds.store(Some(Arc::new(adds_tx)));
    let settings = shared.settings.clone();
    let loops = Loops {
        store: Rc::new(RefCell::new(TelemetryStore::new(store_config(&settings)))),
        health: Rc::new(RefCell::new(Health {
            status: shared.health.load().as_ref().clone(),
        })),
        lists: Rc::new(RefCell::new(vec![None; endpoints.len()])),
        throttle: Throttle::new(settings.max_concurrent_scrapes, endpoints.len()),
        shared: shared.clone(),
        settings: settings.clone(),
        epochs: crate::report::Epochs::default(),
    };
    for (ep, target) in endpoints.into_iter().enumerate() {
        loops.start(ep, target, specs.get(ep).cloned().flatten());
    }
    let mut generation = 0u64;
    loop {
        monoio::time::sleep(settings.scrape_interval).await;
        // Endpoints a reload added (or changed) start being checked now.
        while let Ok(msg) = adds.try_recv() {
            let batch = match msg {
                ControlMsg::Endpoints(b) => b,
                ControlMsg::Jwks(auth) => {
                    crate::jwks_fetch::spawn_all(&auth, &jwks_roots);
                    continue;
                }
            };
            for a in batch {
                tracing::info!(endpoint = %a.addr, "endpoint added or changed by a reload: checks start");
                loops.start(
                    a.ep,
                    Target {
                        addr: a.addr,
                        tls: a.tls,
                        h2: a.h2,
                    },
                    a.spec,
                );
            }
            shared
                .health
                .store(Arc::new(loops.health.borrow().status.clone()));
        }
        generation += 1;
        let now = Instant::now();
        let inflight = shared.reports.endpoint_in_flight();
        let h = loops.health.borrow();
        let listed = loops.lists.borrow();
        let local = shared.locality.load();
        let retired = &shared.retired;
        let inputs = (0..shared.endpoint_count()).map(|id| EndpointInput {
            id,
            // A retired endpoint is in no group; it reads as unhealthy in case
            // a request of the old configuration still looks at it.
            healthy: !retired.get(id) && h.status.get(id).is_none_or(|s| s.healthy),
            models: listed.get(id).and_then(Option::as_ref),
            inflight: inflight.get(id).copied().unwrap_or(0),
            local: local.get(id).copied().unwrap_or(false),
        });
        let snap = ScoringSnapshot::build(generation, now, &loops.store.borrow(), inputs);
        shared.snapshot.store(Arc::new(snap));
        if let Some(total) = shared.budget() {
            rebalance_shares(&shared, total);
        }
    }
}

/// Move each shard's `maxConcurrentInferences` share towards its demand, never
/// promising more than the budget while shards still hold permits.
fn rebalance_shares(shared: &ControlShared, total: u32) {
    let reports = shared.reports.admission();
    if reports.iter().any(|r| r.is_none()) {
        return;
    }
    let current: Vec<u32> = reports.iter().map(|r| r.map_or(0, |r| r.0)).collect();
    let in_use: Vec<u32> = reports.iter().map(|r| r.map_or(0, |r| r.1)).collect();
    let demand: Vec<u32> = reports.iter().map(|r| r.map_or(0, |r| r.2)).collect();
    let target = shardgate_batching::rebalance(&demand, total);
    let published = shared.shares.load();
    let base = if published.len() == current.len() {
        published.as_ref().clone()
    } else {
        current
    };
    let next = shardgate_batching::next_shares(&base, &target, &in_use);
    if next != *published.as_ref() {
        shared.shares.store(Arc::new(next));
    }
}

/// Every `inbox.interval`: attach newly started shards' rings, move every
/// published prefix record to the other shards, publish the counters.
async fn share_loop(inbox: PrefixShareInbox, shared: Arc<ControlShared>) {
    let mut hub = ShareHub::new();
    let interval = inbox.interval.max(Duration::from_micros(100));
    loop {
        monoio::time::sleep(interval).await;
        while let Ok((shard, link)) = inbox.rx.try_recv() {
            hub.attach(shard, link);
        }
        hub.pump();
        let st = hub.stats();
        let p = &shared.prefix_share;
        p.received.store(st.received, Ordering::Relaxed);
        p.forwarded.store(st.forwarded, Ordering::Relaxed);
        p.dropped.store(st.dropped, Ordering::Relaxed);
        p.shards.store(st.shards, Ordering::Relaxed);
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.9 + 0.2 * fastrand::f64())
}

async fn scrape_loop(
    ep: usize,
    target: Target,
    settings: ControlSettings,
    store: Rc<RefCell<TelemetryStore>>,
    shared: Arc<ControlShared>,
    throttle: Throttle,
    epoch: crate::report::LoopEpoch,
) {
    let checks = &shared.checks;
    let addr = target.addr;
    let mut conn = target.client();
    let mut failing = false;
    loop {
        if !epoch.current() {
            return;
        }
        if shared.retired.get(ep) {
            // Retired by a reload: idle until it comes back.
            monoio::time::sleep(settings.scrape_interval).await;
            continue;
        }
        let slot = throttle.slots.acquire().await;
        let result = conn.get("/metrics", settings.scrape_timeout).await;
        if !throttle.keep_alive {
            conn = target.client();
        }
        drop(slot);
        match result {
            Ok(r) if r.status == 200 => {
                let now = Instant::now();
                store.borrow_mut().ingest(ep, &r.body, now);
                checks.scraped(ep, now);
                if failing {
                    tracing::info!(endpoint = %addr, "telemetry scrape recovered");
                    failing = false;
                }
            }
            Ok(r) => {
                store.borrow_mut().record_failure(ep, Instant::now());
                if !failing {
                    if let Some(suppressed) = throttle.warn() {
                        tracing::warn!(endpoint = %addr, status = r.status, suppressed, "telemetry scrape failed");
                    }
                    failing = true;
                }
            }
            Err(e) => {
                store.borrow_mut().record_failure(ep, Instant::now());
                if !failing {
                    if let Some(suppressed) = throttle.warn() {
                        tracing::warn!(endpoint = %addr, error = %e, suppressed, "telemetry scrape failed");
                    }
                    failing = true;
                }
            }
        }
        monoio::time::sleep(jittered(settings.scrape_interval)).await;
    }
}

async fn probe(conn: &mut Conn, addr: SocketAddr, spec: &HealthSpec) -> Result<(), String> {
    if spec.grpc && spec.inference_model.is_none() {
        return crate::h2_upstream::health_check(addr, conn.tls(), spec.timeout).await;
    }
    let reply = match &spec.inference_model {
        Some(model) => {
            let body = serde_json::json!({"model": model, "prompt": "health check", "max_tokens": 1, "temperature": 0});
            conn.post_json("/v1/completions", body.to_string().as_bytes(), spec.timeout)
                .await
                .map_err(|e| e.to_string())?
        }
        None => conn
            .get("/health", spec.timeout)
            .await
            .map_err(|e| e.to_string())?,
    };
    if reply.status == 200 {
        Ok(())
    } else {
        let snippet: String = String::from_utf8_lossy(&reply.body)
            .chars()
            .take(160)
            .collect();
        Err(format!("status {}: {snippet}", reply.status))
    }
}

async fn health_loop(
    ep: usize,
    target: Target,
    spec: HealthSpec,
    settings: ControlSettings,
    health: Rc<RefCell<Health>>,
    shared: Arc<ControlShared>,
    epoch: crate::report::LoopEpoch,
) {
    let addr = target.addr;
    let mut conn = target.client();
    loop {
        if !epoch.current() {
            return;
        }
        if shared.retired.get(ep) {
            monoio::time::sleep(spec.interval).await;
            continue;
        }
        let result = probe(&mut conn, addr, &spec).await;
        {
            let mut h = health.borrow_mut();
            let Some(st) = h.status.get_mut(ep) else {
                return;
            };
            st.checks += 1;
            match result {
                Ok(()) => {
                    shared.checks.probed(ep, Instant::now());
                    st.consecutive_failures = 0;
                    st.consecutive_successes += 1;
                    if !st.healthy && st.consecutive_successes >= settings.healthy_after {
                        st.healthy = true;
                        tracing::info!(endpoint = %addr, policy = %spec.policy, "health check passed: endpoint restored");
                    }
                }
                Err(e) => {
                    st.consecutive_successes = 0;
                    st.consecutive_failures += 1;
                    if st.healthy && st.consecutive_failures >= settings.unhealthy_after {
                        st.healthy = false;
                        tracing::warn!(endpoint = %addr, policy = %spec.policy, error = %e, "health check failed: endpoint ejected");
                    }
                    st.last_error = Some(e);
                }
            }
            shared.health.store(Arc::new(h.status.clone()));
        }
        monoio::time::sleep(jittered(spec.interval)).await;
    }
}
