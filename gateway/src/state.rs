//! The immutable, process-wide configuration every shard reads: the routing
//! table, the data-path settings (limits, timeouts, retries, ejection), the
//! scheduling profile of every rule, the session affinity of the policies that
//! ask for it with the session ring over every endpoint that is not retired
//! (128 points each, keyed by address, so a reload moves only the sessions
//! of endpoints that came or went; empty when no policy asks), and the validated
//! BatchingPolicies. Built
//! once per configuration by the main thread and shared read-only (`Arc`); the
//! request plan (`plan`) is a pure function of it.

use std::sync::Arc;
use std::time::Duration;

use shardgate_batching::{BatchPolicy, BatchSpec, QueueSpec};
use shardgate_routing::scoring::{
    session_hash, AffinityConfig, PickerKind, Profile, Saturation, Scorer, Session, SessionRing,
    ShareConfig,
};
use shardgate_routing::RoutingTable;

use crate::error::Failure;
use crate::jwt::Authenticator;

/// The gateway state in force, swapped by a live reload (`reload`):
/// shards read it per request (an `arc-swap` load, no lock), requests keep
/// the state they started with, and `revision` tells a shard to grow its
/// per-endpoint state before its next request.
pub struct LiveState {
    current: arc_swap::ArcSwap<GatewayState>,
    revision: std::sync::atomic::AtomicU64,
}

impl LiveState {
    /// Starts with `state` at revision 0.
    pub fn new(state: Arc<GatewayState>) -> Self {
        LiveState {
            current: arc_swap::ArcSwap::new(state),
            revision: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The state in force, for a short read.
    pub fn load(&self) -> arc_swap::Guard<Arc<GatewayState>> {
        self.current.load()
    }

    /// The state in force, to keep.
    pub fn load_full(&self) -> Arc<GatewayState> {
        self.current.load_full()
    }

    /// How many states have replaced the first.
    pub fn revision(&self) -> u64 {
        self.revision.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Put `state` in force.
    pub fn publish(&self, state: Arc<GatewayState>) {
        self.current.store(state);
        self.revision
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Data-path limits and timeouts, resolved from the CLI and the InferenceConfig.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Codec limits.
    pub limits: shardgate_http::Limits,
    /// Whole request must arrive within this once started.
    pub header_timeout: Duration,
    /// Request-body memory all shards may buffer at once (`--max-buffered-body-bytes`).
    pub max_buffered_body_bytes: u64,
    /// Longest a single write to a client may block (`--send-timeout`).
    pub send_timeout: Duration,
    /// Longest a client's TLS handshake may take (`--tls-handshake-timeout`).
    pub tls_handshake_timeout: Duration,
    /// Keep-alive idle limit for client connections.
    pub client_idle_timeout: Duration,
    /// How long a kept-alive HTTP/1.1 connection stays hot after a request
    /// (`--client-hot-wait`, rounded up to the HTTP/1.1 front end's 50 ms grid).
    pub client_hot_wait: Duration,
    /// Quiet HTTP/1.1 connections kept hot past their hot wait, in total
    /// (`--client-hot-conns`; each shard an even share; 0: none).
    pub client_hot_conns: u64,
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
    /// Clock skew allowed on a JWT's `exp` and `nbf` (`--jwt-leeway`).
    pub jwt_leeway: Duration,
    /// Verified tokens each shard remembers (`--jwt-cache-size`).
    pub jwt_cache_size: usize,
    /// Number of shards.
    pub shards: usize,
    /// Client connections across the gateway (`--max-connections`, or derived
    /// from `RLIMIT_NOFILE` at start), split evenly over the shards.
    pub max_connections: u64,
    /// `--rate-limit-max-keys`.
    pub rate_limit_max_keys: usize,
    /// `--trusted-proxies`: whose `X-Forwarded-For` rate limits believe.
    pub trusted_proxies: Vec<crate::ratelimit::IpNet>,
    /// HTTP/2 limits (`--h2-*`).
    pub h2: crate::h2_io::Limits,
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
    /// Weight of the locality scorer in max-score profiles: `--locality-weight`
    /// when `gpuAffinity` is on and `--node-name` is known, else 0.
    pub locality_weight: f64,
}

impl Default for PickSettings {
    fn default() -> Self {
        Self {
            queue_scale: None,
            share: ShareConfig::default(),
            share_interval: Duration::from_millis(5),
            locality_weight: 0.0,
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
        let p = if self.locality_weight > 0.0 && p.picker == PickerKind::MaxScore {
            let mut w = p.weights;
            w.set(Scorer::Locality, self.locality_weight);
            p.with_weights(w)
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
    /// Session affinity per linked InferencePolicy key that configures it.
    affinities: Vec<(String, AffinityConfig)>,
    /// The session ring over every endpoint of the table, keyed by address
    /// (empty when no policy has session affinity).
    pub session_ring: SessionRing,
    /// Served listeners by port (the configuration's number).
    ports: Vec<(u16, Vec<usize>)>,
    /// BatchingPolicies linked from rules, validated.
    pub batch_policies: Vec<(String, shardgate_batching::BatchPolicy)>,
    /// Scoring and prefix-sharing settings.
    pub pick: PickSettings,
    /// The rate-limit cells every shard shares, when some SecurityPolicy has a
    /// `rateLimit` ([`crate::ratelimit`]).
    pub rate_limiter: Option<Arc<crate::ratelimit::RateLimiter>>,
    /// The fleet-wide request limits through Redis, with
    /// `--rate-limit-redis` ([`crate::ratelimit_global`]).
    pub global_limiter: Option<Arc<crate::ratelimit_global::GlobalLimiter>>,
    /// Canary rollouts' live weights (`ModelRollout`, [`crate::rollout`]).
    pub rollouts: Option<Arc<crate::rollout::Rollouts>>,
    /// JWT providers of the SecurityPolicies rules link (key sets swapped in
    /// by the control thread's fetcher).
    pub auth: Arc<Authenticator>,
    /// Which (model, endpoint) pairs are still warming up, when the
    /// InferenceConfig's `modelPrewarming` is enabled ([`crate::prewarm`]).
    pub warmth: Option<Arc<crate::prewarm::Warmth>>,
    /// Per endpoint (indexed like `table.endpoints()`), the TLS settings of
    /// the `BackendTLSPolicy` that covers it; `None` = plaintext.
    pub upstream_tls: Vec<Option<Arc<crate::upstream_tls::UpstreamTls>>>,
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
        let auth = Arc::new(Authenticator::build(&table, settings.jwt_leeway)?);
        Self::with_auth(table, settings, pick, auth)
    }

    /// Like [`Self::with_pick`], with JWT providers built already ([`Authenticator::build`]).
    pub fn with_auth(
        table: RoutingTable,
        settings: Settings,
        pick: PickSettings,
        auth: Arc<Authenticator>,
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
        let affinities: Vec<(String, AffinityConfig)> = table
            .inference_policies()
            .filter_map(|(key, policy)| {
                Some((key.to_string(), AffinityConfig::from_policy(policy)?))
            })
            .collect();
        let session_ring = if affinities.is_empty() {
            SessionRing::default()
        } else {
            SessionRing::new(
                table
                    .endpoints()
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !e.retired)
                    .map(|(i, e)| (i, e.addr.to_string())),
            )
        };
        let data: Vec<serde_json::Value> = table
            .models()
            .iter()
            .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "shardgate"}))
            .collect();
        let models_body = serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .unwrap_or_default();
        let batch_policies = batch_policies(&table)?;
        let rate_limiter = table
            .security_policies()
            .any(|(_, p)| p.spec.rate_limit.is_some())
            .then(|| {
                Arc::new(crate::ratelimit::RateLimiter::new(
                    settings.rate_limit_max_keys,
                ))
            });
        let upstream_tls = crate::upstream_tls::for_endpoints(table.endpoints())?;
        let ports = crate::ports::served(table.listeners())
            .into_iter()
            .collect();
        Ok(GatewayState {
            ports,
            upstream_tls,
            warmth: None,
            global_limiter: None,
            rollouts: crate::rollout::Rollouts::for_table(&table),
            rate_limiter,
            table,
            settings,
            models_body,
            profiles,
            default_profile,
            affinities,
            session_ring,
            batch_policies,
            pick,
            auth,
        })
    }

    /// The validated BatchingPolicy `key` (`namespace/name`).
    pub fn batch_policy(&self, key: &str) -> Option<&BatchPolicy> {
        self.batch_policies
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, p)| p)
    }

    /// The listeners served on `port` (the configuration's number); empty
    /// for a port this state does not serve.
    pub fn listeners_on(&self, port: u16) -> &[usize] {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(&[], |(_, ls)| ls.as_slice())
    }

    /// The session affinity of a rule linked to `policy`, when its
    /// InferencePolicy has `loadBalancing.sessionAffinity`.
    pub fn affinity(&self, policy: Option<&str>) -> Option<&AffinityConfig> {
        let k = policy?;
        self.affinities
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, a)| a)
    }

    /// The session of a request on a rule linked to `policy`, when that
    /// policy has session affinity and the request names one: the
    /// configured header, else (with `useUserField`) the body's top-level
    /// `user` string; an empty id names no session. Hashes the id's bytes as
    /// sent; allocates nothing.
    pub fn session<'h>(
        &self,
        policy: Option<&str>,
        header: impl Fn(&str) -> Option<&'h [u8]>,
        body: &[u8],
    ) -> Option<Session<'_>> {
        let a = self.affinity(policy)?;
        let hash = match header(&a.header).filter(|h| !h.is_empty()) {
            Some(id) => session_hash(id),
            None if a.use_user_field => {
                let id = shardgate_routing::user_span(body).and_then(|r| body.get(r))?;
                if id.is_empty() {
                    return None;
                }
                session_hash(id)
            }
            None => return None,
        };
        Some(Session {
            ring: &self.session_ring,
            hash,
            load_factor: a.load_factor,
        })
    }

    /// The scheduling profile for a rule linked to `policy`.
    pub fn profile(&self, policy: Option<&str>) -> &Profile {
        policy
            .and_then(|k| self.profiles.iter().find(|(key, _)| key == k))
            .map_or(&self.default_profile, |(_, p)| p)
    }
}

impl GatewayState {
    /// The SecurityPolicy `policy`'s rate limits on one request
    /// ([`crate::ratelimit::check_request`] over this state's limiters, routes
    /// and trusted proxies), for HTTP/1.1 and HTTP/2 alike: the quotas of an
    /// admitted request (for its success headers and token charge), or the 429
    /// (503 when the fleet-wide store cannot be reached) to answer. `None`: a
    /// fleet-wide limit waits for its lease; ask again, with `gave_up` once
    /// `--rate-limit-redis-timeout` has passed. `forwarded_for` is asked for
    /// the `X-Forwarded-For` header only when proxies are trusted.
    #[allow(clippy::too_many_arguments)]
    pub fn rate_limit<'h>(
        &self,
        limiter: &crate::ratelimit::RateLimiter,
        policy: &str,
        model: Option<&str>,
        subject: Option<&str>,
        peer: std::net::IpAddr,
        forwarded_for: impl FnOnce() -> Option<&'h [u8]>,
        gave_up: bool,
    ) -> Option<Result<crate::ratelimit::Admitted, Failure>> {
        use crate::ratelimit::{check_request, FleetLimit, Outcome, RequestKey};
        let key = RequestKey {
            policy: Some(policy),
            model,
            subject,
            peer,
            forwarded_for: if self.settings.trusted_proxies.is_empty() {
                None
            } else {
                forwarded_for()
            },
        };
        let global = self.global_limiter.as_deref().map(|g| g as &dyn FleetLimit);
        let verdict = check_request(
            limiter,
            global,
            &self.table,
            &self.settings.trusted_proxies,
            &key,
            gave_up,
        );
        Some(match verdict {
            None => Ok(Default::default()),
            Some(Outcome::Allowed(a)) => Ok(a),
            Some(Outcome::Limited {
                quota,
                retry_after_ns,
            }) => Err(Failure::rate_limited(model, retry_after_ns, Some(quota))),
            Some(Outcome::Full) => Err(Failure::rate_limited(
                model,
                crate::ratelimit::SWEEP_EVERY_NS,
                None,
            )),
            Some(Outcome::Unavailable) => Err(Failure::rate_limit_unavailable()),
            Some(Outcome::Wait) => return None,
        })
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

/// Build a shard's batchers, one per BatchingPolicy (errors name the policy and field).
pub fn batch_policies(table: &RoutingTable) -> Result<Vec<(String, BatchPolicy)>, String> {
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for rule in table.rules() {
        let Some(key) = rule.batching else { continue };
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let Some(p) = table.batching_policy(key) else {
            continue;
        };
        let spec = BatchSpec {
            max_batch_size: p.spec.max_batch_size,
            max_latency: p.spec.max_latency,
            adaptive_enabled: p.spec.adaptive_batching.as_ref().is_some_and(|a| a.enabled),
            target_utilization: p
                .spec
                .adaptive_batching
                .as_ref()
                .and_then(|a| a.target_utilization),
            queues: p
                .spec
                .priority_queues
                .iter()
                .map(|q| QueueSpec {
                    name: q.name.clone(),
                    max_latency: q.max_latency,
                    max_batch_size: q.max_batch_size,
                })
                .collect(),
        };
        let policy =
            BatchPolicy::from_spec(&spec).map_err(|e| format!("BatchingPolicy {key}: {e}"))?;
        out.push((key.to_string(), policy));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use clap::Parser;
    use shardgate_routing::scoring::session_hash;

    use super::*;

    const CONFIG: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: shardgate
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: svc, port: 8000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-a
  namespace: default
  labels: {kubernetes.io/service-name: svc}
addressType: IPv4
ports: [{port: 8000}]
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
- addresses: [10.0.0.3]
---
apiVersion: ai.gateway.io/v1alpha1
kind: InferencePolicy
metadata: {name: header-only, namespace: default}
spec:
  loadBalancing:
    sessionAffinity: {header: X-Conv, useUserField: false, loadFactor: 2}
---
apiVersion: ai.gateway.io/v1alpha1
kind: InferencePolicy
metadata: {name: defaults, namespace: default}
spec:
  loadBalancing:
    sessionAffinity: {}
---
apiVersion: ai.gateway.io/v1alpha1
kind: InferencePolicy
metadata: {name: plain, namespace: default}
spec:
  loadBalancing: {algorithm: least-queue}
";

    fn state() -> GatewayState {
        let loaded = crate::load::load(&[("state.yaml".into(), CONFIG.into())]).expect("config");
        let cli = crate::cli::Cli::try_parse_from(["shardgate", "serve", "-c", "state.yaml"])
            .expect("cli");
        let crate::cli::Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let settings = crate::load::settings(&args.run.limits, &loaded.table);
        GatewayState::new(loaded.table, settings).expect("state")
    }

    #[test]
    fn a_session_comes_from_the_header_else_the_user_field() {
        let st = state();
        assert_eq!(st.session_ring.len(), 3 * 128);
        let body = br#"{"model":"m","messages":[],"user":"u-1"}"#;
        let none = |_: &str| None;
        let conv = |h: &str| (h == "x-conv").then_some(&b"c-9"[..]);
        let sid = |h: &str| (h == "x-session-id").then_some(&b"s-7"[..]);
        let hash = |s: Option<Session<'_>>| s.map(|s| s.hash);
        // The configured header (lower-cased), without the user field.
        let hdr = Some("default/header-only");
        assert_eq!(
            hash(st.session(hdr, conv, body)),
            Some(session_hash(b"c-9"))
        );
        assert_eq!(st.session(hdr, conv, body).unwrap().load_factor, 2.0);
        assert_eq!(hash(st.session(hdr, none, body)), None);
        assert_eq!(hash(st.session(hdr, sid, body)), None);
        // Defaults: x-session-id, else `user`; an empty id names no session.
        let def = Some("default/defaults");
        assert_eq!(hash(st.session(def, sid, body)), Some(session_hash(b"s-7")));
        assert_eq!(
            hash(st.session(def, none, body)),
            Some(session_hash(b"u-1"))
        );
        let empty = |h: &str| (h == "x-session-id").then_some(&b""[..]);
        assert_eq!(
            hash(st.session(def, empty, body)),
            Some(session_hash(b"u-1"))
        );
        assert_eq!(hash(st.session(def, none, br#"{"user":""}"#)), None);
        assert_eq!(hash(st.session(def, none, b"not json")), None);
        // No sessionAffinity, or no policy: no session.
        assert_eq!(hash(st.session(Some("default/plain"), sid, body)), None);
        assert_eq!(hash(st.session(None, sid, body)), None);
    }
}
