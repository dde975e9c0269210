//! Live configuration from files: certificates, JWK sets, endpoints, routes
//! and policies.
//!
//! `serve -c FILE…` watches the directories that hold its files (inotify, in
//! a thread of its own: editors and Kubernetes ConfigMap/Secret volumes
//! replace a file by a rename, or swap a `..data` symlink, so the directory
//! is watched, not the inode) and also reloads on `SIGHUP` and on
//! `POST /admin/reload` (admin listener; answers 202 with the revision). Events are
//! debounced: a reload starts after [`QUIET`] without a new event (at most
//! [`MAX_DELAY`] after the first one).
//!
//! A reload reads every file again and validates the whole configuration
//! exactly as a start does (the same errors: file, document, field) before
//! anything changes:
//! - **invalid**: the running configuration keeps serving. Each error is
//!   logged, counted in `gateway_config_reloads_total{result="error"}` and
//!   shown in `/debug/config` (`reload.last_error`) beside the running revision;
//! - **only `Secret` documents changed** (a certificate renewed by
//!   cert-manager, a rotated JWK set): applied at once, `result="applied"`.
//!   Every port's certificates are replaced for the handshakes that follow
//!   ([`crate::tls::PortTls`]; connections that exist keep theirs) and JWT
//!   providers with a `localJWKS.secretRef` get the new keys (tokens cached
//!   under the old set lapse). All ports are prepared before any is changed:
//!   a Secret that does not parse changes nothing;
//! - **anything else changed** (endpoints, routes, listeners, Services,
//!   pools, policies, the InferenceConfig, rollouts):
//!   applied live, `result="applied"` (`Reloader::apply_live`): the table is
//!   rebuilt keeping every endpoint's index (a gone address stays as a retired
//!   entry, a returning one gets its old index back), so everything kept per
//!   endpoint (upstream pools, telemetry, health, ejections, the prefix index)
//!   carries over, and so do the rate-limit cells and JWT providers unless a
//!   SecurityPolicy changed, and rollout progress unless a ModelRollout did.
//!   The control thread starts checking new endpoints (and again those whose
//!   health check or TLS changed) and resizes `maxConcurrentInferences`; a
//!   scoring snapshot that knows the new endpoints is awaited (at most 1 s);
//!   then the new state is swapped in for the shards (`LiveState`, an
//!   `arc-swap`): requests already running finish on the state they started
//!   with (a batching lane flushes on the state its members were queued
//!   under), the next request of every connection (keep-alive ones included)
//!   routes on the new one, and only then are the gone endpoints retired (their
//!   checks idle, their idle connections closed). About 250 ms from the file
//!   write to the first request on a new endpoint (`e2e_reload`): the 100 ms
//!   debounce plus two scoring snapshots. Per-endpoint arrays have room for
//!   [`crate::control::endpoint_capacity`] of the start's count (twice it,
//!   and at least 1,024 more); beyond it the reload is refused. New endpoints
//!   that a `modelPrewarming` model reaches are cold (warming) before the
//!   swap ([`crate::prewarm::start`]);
//!   Ports that listeners gained or lost are bound before and unbound after
//!   the swap ([`crate::ports`]);
//! - **the port `--listen-port` replaced is removed or switches between
//!   `HTTP` and `HTTPS`**: `result="restart_required"`. The change is named in
//!   the log and in `/debug/config` (`reload.pending_restart`) and takes
//!   effect at the next start;
//! - **nothing changed** (the bytes are the same, or only comments and
//!   formatting differ): `result="unchanged"`, nothing else happens.
//!
//! Each applied change bumps the revision (`gateway_config_revision`, 1 at
//! start; in the log and in `/debug/config` with a hash of the files). The
//! time from the first file event to the new certificates serving is logged
//! (`took_ms`): the debounce (100 ms) plus a parse of the files (about a
//! millisecond for the demo configuration).

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use shardgate_routing::config::Resource;
use shardgate_routing::{Config, LoadLimits};

use crate::jwt::Authenticator;

/// A reload starts once no event came for this long.
pub const QUIET: Duration = Duration::from_millis(100);
/// …or this long after the first event of a burst, whichever is first.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// `result` label values of `gateway_config_reloads_total`.
pub const RESULTS: [&str; 4] = ["applied", "restart_required", "unchanged", "error"];

/// How a reload ended (an index into [`RESULTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything that changed serves now.
    Applied = 0,
    /// Valid; some changes wait for a restart (Secrets applied when they could be).
    RestartRequired = 1,
    /// Nothing changed.
    Unchanged = 2,
    /// Invalid: the running configuration keeps serving.
    Error = 3,
}

/// What admin and metrics report about the configuration (shared, read at
/// scrape time; written only by reloads).
pub struct ConfigStatus {
    /// Wakes the reload thread (`POST /admin/reload`), once it watches.
    trigger: std::sync::OnceLock<Sender<Instant>>,
    reloads: [AtomicU64; 4],
    /// The `/debug/config` body of the configuration in force.
    base: ArcSwap<serde_json::Value>,
    /// (configuration port, address) of every port served now.
    listening: ArcSwap<Vec<(u16, std::net::SocketAddr)>>,
    report: ArcSwap<Report>,
}

/// The last reload, for `/debug/config`.
#[derive(Default, Clone)]
struct Report {
    /// The revision serving now, stored with the outcome that made it, so a
    /// reader never sees a new revision beside the previous reload's result.
    revision: u64,
    hash: String,
    last_result: Option<&'static str>,
    last_error: Vec<String>,
    pending_restart: Vec<String>,
}

impl ConfigStatus {
    /// Revision 1 of the configuration `base` describes, loaded from `sources`.
    pub fn new(base: serde_json::Value, sources: &[(String, String)]) -> Self {
        ConfigStatus {
            trigger: std::sync::OnceLock::new(),
            reloads: Default::default(),
            base: ArcSwap::from_pointee(base),
            listening: ArcSwap::from_pointee(Vec::new()),
            report: ArcSwap::from_pointee(Report {
                revision: 1,
                hash: hex_hash(sources),
                ..Report::default()
            }),
        }
    }

    /// Ask for a reload of the files (`POST /admin/reload`): false when the
    /// files are not watched (stdin, or `serve` from an embedding program).
    pub fn request_reload(&self) -> bool {
        self.trigger
            .get()
            .is_some_and(|tx| tx.send(Instant::now()).is_ok())
    }

    /// The configuration revision serving now.
    pub fn revision(&self) -> u64 {
        self.report.load().revision
    }

    /// Reloads so far, by [`RESULTS`].
    pub fn reloads(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.reloads[i].load(Ordering::Relaxed))
    }

    fn record(&self, outcome: Outcome, update: impl FnOnce(&mut Report)) {
        let mut r = Report::clone(&self.report.load());
        r.last_result = Some(RESULTS[outcome as usize]);
        if outcome == Outcome::Applied {
            r.revision += 1;
        }
        update(&mut r);
        self.report.store(Arc::new(r));
        self.reloads[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The `/debug/config` body: the loaded resources, the revision and the
    /// last reload's outcome.
    pub fn debug_json(&self) -> Vec<u8> {
        let mut v = serde_json::Value::clone(&self.base.load());
        let r = self.report.load();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("revision".into(), r.revision.into());
            obj.insert("hash".into(), r.hash.clone().into());
            let listen: Vec<serde_json::Value> = self
                .listening
                .load()
                .iter()
                .map(|(port, addr)| serde_json::json!({"port": port, "address": addr.to_string()}))
                .collect();
            obj.insert("listen".into(), listen.into());
            obj.insert(
                "reload".into(),
                serde_json::json!({
                    "last_result": r.last_result,
                    "last_error": r.last_error,
                    "pending_restart": r.pending_restart,
                }),
            );
        }
        serde_json::to_vec_pretty(&v).unwrap_or_default()
    }

    /// `gateway_config_revision` and `gateway_config_reloads_total`, in the
    /// Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use shardgate_promtext::{Kind, PromWriter, Style};
        let mut w = PromWriter::new(out, Style::PLAIN);
        w.family(
            "gateway_config_revision",
            "Configuration revision serving now (1 at start, +1 per applied reload).",
            Kind::Gauge,
        )
        .sample("", &[], self.revision());
        w.family(
            "gateway_config_reloads_total",
            "Configuration reloads (file change, SIGHUP or POST /admin/reload), by result.",
            Kind::Counter,
        );
        for (label, n) in RESULTS.iter().zip(self.reloads()) {
            w.sample("", &[("result", label)], n);
        }
    }
}

/// What the running configuration is, as far as a reload compares it.
struct Running {
    /// Hash of the bytes last read (identical bytes: nothing to do).
    seen: u64,
    /// Every document but the Secrets, in order.
    others: Named,
    /// The Secrets serving now.
    secrets: Named,
}

/// What a live reload changed (for the log).
struct Applied {
    added: usize,
    rechecked: usize,
    retired: usize,
    live: usize,
    rules: usize,
    models: usize,
    ports_added: usize,
    ports_removed: usize,
}

/// What a reload needs to apply endpoint changes to the running gateway
/// (handed over once it runs: [`Reloader::attach`]).
pub struct LiveHandles {
    /// The state shards read.
    pub live: Arc<crate::state::LiveState>,
    /// The control thread's shared state (per-endpoint loops and arrays).
    pub control: Arc<crate::control::ControlShared>,
    /// Metrics, for the endpoint labels.
    pub hub: Arc<crate::metrics::MetricsHub>,
    /// `--node-name`, for `gpuAffinity`.
    pub node: Option<String>,
    /// What `/debug/endpoints` and `/readyz` list.
    pub views: Arc<ArcSwap<crate::endpoints_view::EndpointLists>>,
}

/// Reloads the configuration from its files (see the module doc).
pub struct Reloader {
    live: Option<LiveHandles>,
    /// The CLI's limits (settings are derived from them and the InferenceConfig).
    run_limits: crate::cli::LimitArgs,
    max_bytes: usize,
    limits: LoadLimits,
    jwt_leeway: Duration,
    ports: crate::ports::Ports,
    auth: Arc<Authenticator>,
    status: Arc<ConfigStatus>,
    running: Running,
}

/// Named resources (`Kind namespace/name`), in document order.
type Named = Vec<(String, Resource)>;

/// (every document but the Secrets, the Secrets).
fn split(config: &Config) -> (Named, Named) {
    config
        .docs
        .iter()
        .map(|(m, r)| (format!("{} {}", m.kind, m.key()), r.clone()))
        .partition(|(_, r)| !matches!(r, Resource::Secret(_)))
}

/// The documents of `kind` in `named`, in order.
fn of_kind<'a>(named: &'a Named, kind: &str) -> Vec<&'a (String, Resource)> {
    named
        .iter()
        .filter(|(n, _)| n.split(' ').next() == Some(kind))
        .collect()
}

fn hash_sources(sources: &[(String, String)]) -> u64 {
    let mut h = DefaultHasher::new();
    sources.hash(&mut h);
    h.finish()
}

fn hex_hash(sources: &[(String, String)]) -> String {
    format!("{:016x}", hash_sources(sources))
}

/// The resources (`Kind namespace/name`) that differ between `old` and
/// `new`, each with `added`, `removed` or `changed`, in `new`'s order then
/// the removed ones. Empty when only the order of unrelated documents moved.
pub fn changed_resources(old: &[(String, Resource)], new: &[(String, Resource)]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, r) in new {
        match old.iter().find(|(n, _)| n == name) {
            None => out.push(format!("{name} (added)")),
            Some((_, o)) if o != r => out.push(format!("{name} (changed)")),
            Some(_) => {}
        }
    }
    for (name, _) in old {
        if !new.iter().any(|(n, _)| n == name) {
            out.push(format!("{name} (removed)"));
        }
    }
    if out.is_empty() && old != new {
        // Same resources in another order: rule order can matter.
        out.push("document order (changed)".to_string());
    }
    out
}

impl Reloader {
    /// A reloader for the configuration `config` (whose bytes were
    /// `sources`) served through `ports` and `auth`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        limits: &crate::cli::ConfigLimitArgs,
        run_limits: &crate::cli::LimitArgs,
        jwt_leeway: Duration,
        sources: &[(String, String)],
        config: &Config,
        ports: crate::ports::Ports,
        auth: Arc<Authenticator>,
        status: Arc<ConfigStatus>,
    ) -> Self {
        let (others, secrets) = split(config);
        status.listening.store(Arc::new(ports.listening()));
        Reloader {
            live: None,
            run_limits: run_limits.clone(),
            max_bytes: limits.max_config_bytes,
            limits: limits.limits(),
            jwt_leeway,
            ports,
            auth,
            status,
            running: Running {
                seen: hash_sources(sources),
                others,
                secrets,
            },
        }
    }

    /// Apply endpoint changes live from now on (the gateway runs).
    pub fn attach(&mut self, handles: LiveHandles) {
        self.live = Some(handles);
    }

    /// Put a valid configuration in force on the running gateway (the
    /// listeners laid out as before): a table rebuilt with every endpoint's
    /// index kept ([`shardgate_routing::RoutingTable::build_next`]), a new
    /// gateway state that carries over what did not change (rate-limit cells
    /// unless a SecurityPolicy changed, JWT providers and their fetched keys,
    /// warm-up and rollout state unless the ModelRollouts changed, upstream TLS
    /// and its session caches), the control thread told which endpoints are
    /// new or checked differently (their checks start) and the new
    /// `maxConcurrentInferences`, a scoring snapshot that knows the new
    /// endpoints awaited, then the state swapped for the shards; the gone
    /// endpoints are retired last. `security_changed`: a SecurityPolicy
    /// differs. Returns what changed, for the log.
    fn apply_live(
        &mut self,
        config: &Config,
        security_changed: bool,
        secrets_changed: bool,
    ) -> Result<Applied, String> {
        let h = self
            .live
            .as_ref()
            .ok_or_else(|| "the gateway is not running yet".to_string())?;
        let cur = h.live.load_full();
        let table = shardgate_routing::RoutingTable::build_next(
            config,
            &mut crate::load::resolve_dns,
            &cur.table,
        )
        .map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        // New ports bound (and kept ports' certificates checked) first: a
        // port that cannot be served changes nothing.
        let ports = self.ports.plan(table.listeners())?;
        let n = table.endpoints().len();
        if n > h.control.capacity {
            return Err(format!(
                "{n} endpoint addresses (retired ones included) exceed the {} the gateway made room for at start",
                h.control.capacity
            ));
        }
        let old_n = cur.table.endpoints().len();
        let fresh_tls = crate::upstream_tls::for_endpoints(table.endpoints())?;
        let upstream_tls: Vec<_> = fresh_tls
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                // Keep a surviving endpoint's TLS settings (and session cache).
                match (cur.table.endpoints().get(i), table.endpoints().get(i)) {
                    (Some(a), Some(b)) if a.tls == b.tls => {
                        cur.upstream_tls.get(i).cloned().flatten()
                    }
                    _ => t,
                }
            })
            .collect();
        let specs = crate::control::health_specs(&table);
        let old_specs = crate::control::health_specs(&cur.table);
        // New endpoints, and live ones whose health check or TLS changed:
        // their checks start (again).
        let checks: Vec<crate::control::AddedEndpoint> = (0..n)
            .filter_map(|ep| {
                let e = table.endpoints().get(ep)?;
                let spec = specs.get(ep).cloned().flatten();
                let tls = upstream_tls.get(ep).cloned().flatten();
                let changed = ep >= old_n
                    || (!e.retired
                        && (old_specs.get(ep).cloned().flatten() != spec
                            || cur.table.endpoints().get(ep).map(|o| (&o.tls, o.h2))
                                != Some((&e.tls, e.h2))));
                changed.then_some(crate::control::AddedEndpoint {
                    ep,
                    addr: e.addr,
                    tls,
                    h2: e.h2,
                    spec,
                })
            })
            .collect();
        let added = (old_n..n).count();
        let rechecked = checks.len() - added;
        let retired: Vec<bool> = table.endpoints().iter().map(|e| e.retired).collect();
        let locality: Vec<bool> = crate::control::locality(&table, h.node.as_deref())
            .into_iter()
            .map(|l| l == Some(true))
            .collect();
        let lists = crate::endpoints_view::EndpointLists::of(&table);
        let labels: Vec<String> = table
            .endpoints()
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        // Settings from the CLI and the new InferenceConfig (timeouts,
        // maxConcurrentInferences); what was derived at start stays.
        let mut settings = crate::load::settings(&self.run_limits, &table);
        settings.shards = cur.settings.shards;
        settings.max_connections = cur.settings.max_connections;
        let auth = if security_changed {
            let a = Arc::new(Authenticator::build(&table, self.jwt_leeway)?);
            // Providers that stay keep the key sets fetched so far.
            a.carry_remote_keys(&cur.auth);
            a
        } else {
            if secrets_changed {
                // A `localJWKS.secretRef` may name a changed Secret.
                cur.auth
                    .adopt_local_keys(&Authenticator::build(&table, self.jwt_leeway)?);
            }
            cur.auth.clone()
        };
        let rollouts_same = cur.table.rollouts() == table.rollouts();
        let mut st = crate::state::GatewayState::with_auth(table, settings, cur.pick, auth)?;
        if !security_changed {
            st.rate_limiter = cur.rate_limiter.clone();
        }
        st.global_limiter = match &cur.global_limiter {
            Some(g) => Some(g.clone()),
            None => crate::ratelimit_global::start(
                crate::load::global_limit_settings(&self.run_limits),
                &st.table,
            )?,
        };
        if rollouts_same {
            st.rollouts = cur.rollouts.clone();
        } else if let Some(r) = &st.rollouts {
            crate::rollout::spawn(r, h.hub.clone())
                .map_err(|e| format!("cannot start the rollout controller: {e}"))?;
        }
        // modelPrewarming: the same models and mode keep every pair's state
        // and warm the endpoints that appeared; otherwise start over. The
        // new pairs are cold before the state that routes to them is in force.
        st.warmth = match (&cur.warmth, crate::prewarm::spec_of(&st.table)) {
            (Some(w), Some(spec)) if w.follows(spec) => {
                w.set_endpoints(labels.clone());
                Some(w.clone())
            }
            (_, Some(_)) => crate::prewarm::Warmth::for_table(&st.table, h.control.capacity),
            (_, None) => None,
        };
        let appeared: Vec<usize> = (old_n..n).collect();
        if let Some(w) = &st.warmth {
            let fresh = !cur.warmth.as_ref().is_some_and(|c| Arc::ptr_eq(c, w));
            let only = (!fresh).then_some(appeared.as_slice());
            crate::prewarm::start(w, &st.table, only)
                .map_err(|e| format!("cannot start the model warm-up: {e}"))?;
        }
        st.upstream_tls = upstream_tls;
        let lists = lists.with_profile(*st.profile(None));
        if !h.control.prepare_endpoints(n, &retired, locality, checks) {
            return Err("the control thread did not take the new endpoints".to_string());
        }
        if security_changed && !h.control.fetch_jwks(&st.auth) {
            return Err("the control thread did not take the new JWT providers".to_string());
        }
        h.control.set_budget(st.settings.max_concurrent);
        h.hub.set_endpoints(labels);
        h.views.store(Arc::new(lists));
        // The shards pick from the control thread's scoring snapshot: wait (at
        // most a second) for one built after the change, so a returning or new
        // endpoint is not read as unknown by the first requests of the state.
        let g0 = h.control.snapshot.load().generation;
        let deadline = Instant::now() + Duration::from_secs(1);
        while h.control.snapshot.load().generation < g0 + 2 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                tracing::warn!("config reload: the control thread built no scoring snapshot in 1 s; the new endpoints are used anyway");
                break;
            };
            std::thread::park_timeout(left.min(Duration::from_millis(5)));
        }
        let retired_n = retired.iter().filter(|r| **r).count();
        let applied = Applied {
            added,
            rechecked,
            retired: retired_n,
            live: n - retired_n,
            rules: st.table.rules().count(),
            models: st.table.models().len(),
            ports_added: 0,
            ports_removed: 0,
        };
        h.live.publish(Arc::new(st));
        let (ports_added, ports_removed) = self.ports.apply(ports);
        self.status
            .listening
            .store(Arc::new(self.ports.listening()));
        h.control.retire(&retired);
        Ok(Applied {
            ports_added,
            ports_removed,
            ..applied
        })
    }

    /// Read `paths` again and reload from them.
    pub fn reload_files(&mut self, paths: &[PathBuf]) -> Outcome {
        match crate::load::read_sources(paths, self.max_bytes) {
            Ok(sources) => self.reload(&sources),
            Err(errors) => self.failed(errors),
        }
    }

    fn failed(&self, errors: Vec<String>) -> Outcome {
        for e in &errors {
            tracing::error!(error = %e, revision = self.status.revision(), "config reload rejected; the running configuration keeps serving");
        }
        self.status
            .record(Outcome::Error, |r| r.last_error = errors);
        Outcome::Error
    }

    /// The authenticator in force (the running state's once attached).
    fn auth(&self) -> Arc<Authenticator> {
        match &self.live {
            Some(h) => h.live.load().auth.clone(),
            None => self.auth.clone(),
        }
    }

    /// Validate `sources` as a whole and apply what can be applied live.
    pub fn reload(&mut self, sources: &[(String, String)]) -> Outcome {
        let seen = hash_sources(sources);
        if seen == self.running.seen {
            self.status.record(Outcome::Unchanged, |_| {});
            return Outcome::Unchanged;
        }
        let started = Instant::now();
        let loaded = match crate::load::load_with(sources, &self.limits) {
            Ok(l) => l,
            Err(errors) => return self.failed(errors),
        };
        let (others, secrets) = split(&loaded.config);
        let mut pending = changed_resources(&self.running.others, &others);
        let secrets_changed = secrets != self.running.secrets;
        let listeners = loaded.table.listeners();
        let mut applied = false;
        if let Some(why) = self.ports.restart_needed(listeners) {
            pending.push(why);
        } else if pending.is_empty() && secrets_changed {
            // Only Secrets: prepare everything first (an unusable Secret
            // changes nothing), then rotate.
            let certs = match self.ports.prepare_certs(listeners) {
                Ok(c) => c,
                Err(e) => return self.failed(vec![e]),
            };
            let auth = match Authenticator::build(&loaded.table, self.jwt_leeway) {
                Ok(a) => a,
                Err(e) => return self.failed(vec![e]),
            };
            self.ports.install_certs(certs);
            let providers = self.auth().adopt_local_keys(&auth);
            self.running.secrets = secrets;
            let revision = self.status.revision() + 1;
            tracing::info!(
                revision,
                hash = %hex_hash(sources),
                tls_ports = self.ports.tls_ports(),
                jwt_providers = providers,
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "config reload: Secrets applied (certificates rotate for new handshakes)"
            );
            self.status
                .base
                .store(Arc::new(crate::load::debug_config_value(&loaded, sources)));
            applied = true;
        } else if !pending.is_empty() {
            // Anything else: a new state (and the ports it serves).
            let security_changed = of_kind(&self.running.others, "SecurityPolicy")
                != of_kind(&others, "SecurityPolicy");
            match self.apply_live(&loaded.config, security_changed, secrets_changed) {
                Ok(a) => {
                    let revision = self.status.revision() + 1;
                    tracing::info!(
                        revision,
                        hash = %hex_hash(sources),
                        changes = %pending.join(", "),
                        endpoints_added = a.added,
                        endpoints_rechecked = a.rechecked,
                        endpoints_retired = a.retired,
                        endpoints_live = a.live,
                        rules = a.rules,
                        models = a.models,
                        ports_bound = a.ports_added,
                        ports_unbound = a.ports_removed,
                        took_ms = started.elapsed().as_secs_f64() * 1e3,
                        "config reload: applied"
                    );
                    self.running.others = others;
                    self.running.secrets = secrets;
                    self.status
                        .base
                        .store(Arc::new(crate::load::debug_config_value(&loaded, sources)));
                    pending.clear();
                    applied = true;
                }
                Err(why) => {
                    // Valid, but it cannot be put in force: the running
                    // configuration keeps serving.
                    return self.failed(vec![format!(
                        "the configuration is valid but cannot be applied live: {why}"
                    )]);
                }
            }
        }
        self.running.seen = seen;
        let hash = hex_hash(sources);
        if pending.is_empty() {
            let outcome = if applied {
                Outcome::Applied
            } else {
                Outcome::Unchanged
            };
            self.status.record(outcome, |r| {
                r.hash = hash;
                r.last_error.clear();
                r.pending_restart.clear();
            });
            return outcome;
        }
        tracing::warn!(
            revision = self.status.revision(),
            changes = %pending.join(", "),
            "config reload: valid, but it takes a restart: these changes take effect at the next start"
        );
        self.status.record(Outcome::RestartRequired, |r| {
            r.hash = hash;
            r.last_error.clear();
            r.pending_restart = pending;
        });
        Outcome::RestartRequired
    }

    /// Watch the files' directories and `SIGHUP`, reloading on each burst of
    /// events, on threads of their own, for the life of the process.
    pub fn watch(mut self, paths: Vec<PathBuf>) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<Instant>();
        watch_files(&paths, tx.clone())?;
        let _ = self.status.trigger.set(tx.clone());
        watch_sighup(tx)?;
        std::thread::Builder::new()
            .name("config-reload".into())
            .spawn(move || reload_loop(&mut self, &paths, &rx))?;
        Ok(())
    }
}

/// Wait for a trigger, let the burst settle, reload; forever (until every
/// sender is gone).
fn reload_loop(reloader: &mut Reloader, paths: &[PathBuf], rx: &Receiver<Instant>) {
    while let Ok(first) = rx.recv() {
        loop {
            let left = MAX_DELAY.saturating_sub(first.elapsed());
            match rx.recv_timeout(QUIET.min(left)) {
                Ok(_) if !left.is_zero() => continue,
                Ok(_) | Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let outcome = reloader.reload_files(paths);
        tracing::info!(
            result = RESULTS[outcome as usize],
            took_ms = first.elapsed().as_millis() as u64,
            revision = reloader.status.revision(),
            "config reload"
        );
    }
}

/// The inotify thread: an event on one of `paths` (by name in its
/// directory), or on a `..`-prefixed entry (a ConfigMap volume's `..data`
/// swap), sends the time it was seen.
fn watch_files(paths: &[PathBuf], tx: Sender<Instant>) -> std::io::Result<()> {
    use inotify::{Inotify, WatchMask};
    let mut inotify = Inotify::init()?;
    let mut dirs: Vec<(inotify::WatchDescriptor, Vec<OsString>)> = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            continue;
        }
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some(name) = p.file_name() else { continue };
        // No MODIFY: it fires on every write to any file of the directory,
        // and a log written beside the configuration (an access log, a load
        // generator's output) woke this thread thousands of times a second
        // (5 % of the gateway's core under `bench/h2.py`). A write to a
        // configuration file ends with its close (CLOSE_WRITE) or a rename.
        let wd = inotify.watches().add(
            &dir,
            WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::DELETE,
        )?;
        match dirs.iter_mut().find(|(w, _)| *w == wd) {
            Some((_, names)) => names.push(name.to_os_string()),
            None => dirs.push((wd, vec![name.to_os_string()])),
        }
    }
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let events = match inotify.read_events_blocking(&mut buf) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "config watch stopped (SIGHUP still reloads)");
                        return;
                    }
                };
                let relevant = events.into_iter().any(|ev| {
                    let Some(name) = ev.name else { return false };
                    dirs.iter().any(|(wd, names)| {
                        *wd == ev.wd
                            && (names.iter().any(|n| n == name)
                                || name.as_encoded_bytes().starts_with(b".."))
                    })
                });
                if relevant && tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

fn watch_sighup(tx: Sender<Instant>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                tracing::info!("SIGHUP: reloading the configuration");
                if tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn docs(yaml: &str) -> (Named, Named) {
        let config = shardgate_routing::load_sources(&[("c.yaml".into(), yaml.into())]).unwrap();
        split(&config)
    }

    const BASE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  gatewayClassName: x\n  listeners: [{name: http, protocol: HTTP, port: 80}]\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: Opaque\nstringData: {a: one}\n";

    #[test]
    fn a_secret_change_is_no_resource_change() {
        let (o1, s1) = docs(BASE);
        let (o2, s2) = docs(&BASE.replace("one", "two"));
        assert!(changed_resources(&o1, &o2).is_empty());
        assert_ne!(s1, s2);
        assert_eq!(s1.len(), 1);
    }

    #[test]
    fn comments_and_formatting_change_nothing() {
        let (o1, s1) = docs(BASE);
        let (o2, s2) = docs(&format!(
            "# a comment\n{}",
            BASE.replace("{a: one}", "\n  a: one")
        ));
        assert!(changed_resources(&o1, &o2).is_empty());
        assert_eq!(s1, s2);
    }

    #[test]
    fn other_changes_are_named() {
        let (o1, _) = docs(BASE);
        let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: svc, port: 80}]}]\n";
        let (o2, _) = docs(&format!(
            "{}{route}",
            BASE.replace("port: 80}", "port: 81}")
        ));
        assert_eq!(
            changed_resources(&o1, &o2),
            vec![
                "Gateway default/gw (changed)".to_string(),
                "HTTPRoute default/r (added)".to_string()
            ]
        );
        assert_eq!(
            changed_resources(&o2, &o1),
            vec![
                "Gateway default/gw (changed)".to_string(),
                "HTTPRoute default/r (removed)".to_string()
            ]
        );
    }
}
