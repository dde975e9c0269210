//! Inference resources: shardgate's own `ai.gateway.io/v1alpha1` kinds
//! (`InferenceConfig`, `InferencePolicy`, `BatchingPolicy`), the seed's
//! `SecurityPolicy`, and the Gateway API Inference Extension's
//! `InferencePool` (parsed loosely: only what endpoint resolution needs),
//! `InferenceObjective` and the older `InferenceModel` (a request's priority).
//!
//! Durations are [`std::time::Duration`]s parsed with
//! [`crate::parse_duration`]; ratios and weights are `f64`s validated to lie
//! in `0..=1` by the loader.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{de_opt_port, nullable, ObjectMeta};
use crate::duration::serde_optional as opt_duration;

/// `InferenceConfig` (`ai.gateway.io/v1alpha1`): gateway-wide inference
/// settings, linked from `GatewayClass.spec.parametersRef`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferenceConfig {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    #[serde(default)]
    pub spec: InferenceConfigSpec,
}

/// `InferenceConfig.spec`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InferenceConfigSpec {
    /// Model-aware routing switch and strategy.
    #[serde(default)]
    pub model_routing: Option<ModelRouting>,
    /// Admission limits.
    #[serde(default)]
    pub resource_management: Option<ResourceManagement>,
    /// Default timeouts.
    #[serde(default)]
    pub timeout: Option<InferenceTimeouts>,
    /// Models to keep warm.
    #[serde(default)]
    pub model_prewarming: Option<ModelPrewarming>,
}

/// `InferenceConfig.spec.modelRouting`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ModelRouting {
    /// Whether routing looks at the model.
    #[serde(default)]
    pub enabled: bool,
    /// Strategy name, e.g. `latency-optimized`.
    #[serde(default)]
    pub strategy: Option<String>,
}

/// `InferenceConfig.spec.resourceManagement`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ResourceManagement {
    /// Prefer endpoints on the same GPU for a model.
    #[serde(default)]
    pub gpu_affinity: bool,
    /// Admission limit on concurrent inferences (≥ 1).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub max_concurrent_inferences: Option<u32>,
}

/// `InferenceConfig.spec.timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InferenceTimeouts {
    /// Whole inference request timeout.
    #[serde(default, deserialize_with = "opt_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<String>", pattern(crate::duration::PATTERN))
    )]
    pub inference: Option<Duration>,
    /// Idle (no bytes) timeout.
    #[serde(default, deserialize_with = "opt_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<String>", pattern(crate::duration::PATTERN))
    )]
    pub idle: Option<Duration>,
}

/// `InferenceConfig.spec.modelPrewarming`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ModelPrewarming {
    /// Whether prewarming is on.
    #[serde(default)]
    pub enabled: bool,
    /// Models to prewarm.
    #[serde(default, deserialize_with = "nullable")]
    pub models: Vec<String>,
    /// Replicas per model.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub replicas_per_model: Option<u32>,
    /// A prompt (a common system-prompt prefix, say) the warm-up sends, so the
    /// prefix cache is warm too; default: a one-word prompt.
    #[serde(default)]
    pub prompt: Option<String>,
    /// `preferred` (default): an endpoint still warming gets traffic only when
    /// no warm endpoint can take it; `strict`: none at all until it is warm.
    #[serde(default)]
    pub mode: Option<PrewarmMode>,
    /// Longest a warm-up inference may take (default 120 s: a cold start
    /// loads weights).
    #[serde(default, deserialize_with = "opt_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<String>", pattern(crate::duration::PATTERN))
    )]
    pub timeout: Option<Duration>,
    /// Tries per endpoint and model before giving up (default 5; backoff
    /// 1 s, 2 s, 4 s, … at most 30 s between tries).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub max_attempts: Option<u32>,
    /// Warm-ups in flight at once across the gateway (default 4), so a burst
    /// of new pods is not stampeded.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub max_concurrent: Option<u32>,
}

/// `modelPrewarming.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum PrewarmMode {
    /// Cold endpoints serve only when no warm one can.
    #[default]
    Preferred,
    /// Cold endpoints serve nothing.
    Strict,
}

/// `InferencePolicy` (`ai.gateway.io/v1alpha1`): load balancing and health
/// checks for the backends of the rules that reference it via `ExtensionRef`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferencePolicy {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    #[serde(default)]
    pub spec: InferencePolicySpec,
}

/// `InferencePolicy.spec`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InferencePolicySpec {
    /// Load-balancing algorithm and factor weights.
    #[serde(default)]
    pub load_balancing: Option<LoadBalancing>,
    /// Health checks.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
}

/// `InferencePolicy.spec.loadBalancing`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    /// Algorithm name, e.g. `resource-weighted`.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Weights over normalised signals, each in `0..=1`.
    #[serde(default)]
    pub factors: Option<LoadFactors>,
    /// Sticky routing of a session's requests (consistent hashing with
    /// bounded loads; see `scoring::affinity`). Absent = off.
    #[serde(default)]
    pub session_affinity: Option<SessionAffinity>,
}

/// `loadBalancing.sessionAffinity`: what names a request's session and how
/// far above the average load its endpoint may go before it spills.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    /// Header naming the session (default `x-session-id`).
    #[serde(default)]
    pub header: Option<String>,
    /// Whether the body's top-level `user` string names the session when the
    /// header is absent (default true).
    #[serde(default)]
    pub use_user_field: Option<bool>,
    /// `c = 1 + ε`: an endpoint takes a session's request while its load + 1
    /// ≤ `ceil(c·(total load + 1) / endpoints)` (default 1.25; > 1).
    #[serde(default)]
    pub load_factor: Option<f64>,
}

/// `loadBalancing.factors`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LoadFactors {
    /// Weight of (1 − GPU utilisation).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0, max = 1.0)))]
    pub gpu_utilization: Option<f64>,
    /// Weight of free memory / KV cache.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0, max = 1.0)))]
    pub memory_available: Option<f64>,
    /// Weight of (normalised) inference latency.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0, max = 1.0)))]
    pub inference_latency: Option<f64>,
}

/// `InferencePolicy.spec.healthCheck`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Probe interval (> 0).
    #[serde(default, deserialize_with = "opt_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<String>", pattern(crate::duration::PATTERN))
    )]
    pub interval: Option<Duration>,
    /// Probe timeout.
    #[serde(default, deserialize_with = "opt_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<String>", pattern(crate::duration::PATTERN))
    )]
    pub timeout: Option<Duration>,
    /// Real inference probe.
    #[serde(default)]
    pub inference_test: Option<InferenceTest>,
}

/// `healthCheck.inferenceTest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InferenceTest {
    /// Whether to send a real inference request.
    #[serde(default)]
    pub enabled: bool,
    /// Model used for the probe.
    #[serde(default)]
    pub model: Option<String>,
}

/// `BatchingPolicy` (`ai.gateway.io/v1alpha1`): micro-batching parameters for
/// rules that reference it via `ExtensionRef`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchingPolicy {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    #[serde(default)]
    pub spec: BatchingPolicySpec,
}

/// `BatchingPolicy.spec`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct BatchingPolicySpec {
    /// Largest batch (≥ 1).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub max_batch_size: Option<u32>,
    /// Longest a request waits for a batch to fill.
    #[serde(default, deserialize_with = "opt_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<String>", pattern(crate::duration::PATTERN))
    )]
    pub max_latency: Option<Duration>,
    /// Adaptive batch sizing.
    #[serde(default)]
    pub adaptive_batching: Option<AdaptiveBatching>,
    /// Priority classes, names non-empty and unique.
    #[serde(default, deserialize_with = "nullable")]
    pub priority_queues: Vec<PriorityQueue>,
    /// Policy attachment: the policy is the default of every rule of these
    /// `Gateway`s / `HTTPRoute`s that links no BatchingPolicy itself (kind
    /// `Gateway` or `HTTPRoute`; `sectionName` = listener or rule name).
    #[serde(default, deserialize_with = "nullable")]
    pub target_refs: Vec<PolicyTargetReference>,
}

/// `BatchingPolicy.spec.adaptiveBatching`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AdaptiveBatching {
    /// Whether batch size adapts to load.
    #[serde(default)]
    pub enabled: bool,
    /// Target utilisation in `0..=1`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0, max = 1.0)))]
    pub target_utilization: Option<f64>,
}

/// `BatchingPolicy.spec.priorityQueues[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PriorityQueue {
    /// Queue name (non-empty, unique within the policy).
    pub name: String,
    /// Latency bound for this class.
    #[serde(default, deserialize_with = "opt_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<String>", pattern(crate::duration::PATTERN))
    )]
    pub max_latency: Option<Duration>,
    /// Batch size bound for this class (≥ 1).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub max_batch_size: Option<u32>,
}

/// `SecurityPolicy` (as in the seed, `gateway.networking.k8s.io/v1alpha2`):
/// JWT authentication and rate limits. Accepted, not enforced yet.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicy {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    #[serde(default)]
    pub spec: SecurityPolicySpec,
}

/// `SecurityPolicy.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicySpec {
    /// The object the policy applies to.
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Authentication.
    #[serde(default)]
    pub authentication: Option<Authentication>,
    /// Rate limits.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// A policy's `targetRef`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group.
    #[serde(default)]
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Listener name.
    #[serde(default)]
    pub section_name: Option<String>,
}

/// `SecurityPolicy.spec.authentication`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// JWT authentication.
    #[serde(default)]
    pub jwt: Option<JwtAuthentication>,
}

/// `authentication.jwt`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct JwtAuthentication {
    /// Token issuers.
    #[serde(default, deserialize_with = "nullable")]
    pub providers: Vec<JwtProvider>,
}

/// `authentication.jwt.providers[]`: who issues tokens and where their keys are.
///
/// Keys come from `localJWKS` (an inline JWK set) or `remoteJWKS.uri`; with
/// neither, from `<issuer>/.well-known/jwks.json` (README "JWT authentication").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// Provider name.
    pub name: String,
    /// Expected `iss`; with several providers, a token's `iss` picks its provider.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values (a token must name one of them when any are set).
    #[serde(default, deserialize_with = "nullable")]
    pub audiences: Vec<String>,
    /// A JWK set fetched over HTTP.
    #[serde(default, rename = "remoteJWKS", alias = "remoteJwks")]
    pub remote_jwks: Option<RemoteJwks>,
    /// A JWK set written in the policy.
    #[serde(default, rename = "localJWKS", alias = "localJwks")]
    pub local_jwks: Option<LocalJwks>,
    /// Claims copied into request headers for the backend.
    #[serde(default, deserialize_with = "nullable")]
    pub claim_to_headers: Vec<ClaimToHeader>,
}

/// `providers[].remoteJWKS`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RemoteJwks {
    /// `http://` or `https://` URL of the JWK set.
    pub uri: String,
    /// How long a fetched set is used before it is fetched again.
    #[serde(default, deserialize_with = "opt_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<String>", pattern(crate::duration::PATTERN))
    )]
    pub cache_duration: Option<Duration>,
}

/// `providers[].localJWKS`: `{keys: [JWK, …]}`, as a JWKS document writes it,
/// or `{secretRef: {name, namespace?, key?}}`: a JWKS document held in a
/// Secret of the config (key `jwks.json` unless named), which the routing
/// table resolves into `keys`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LocalJwks {
    /// The JWKs, kept as written (parsed by the gateway).
    #[serde(default, deserialize_with = "nullable")]
    pub keys: Vec<serde_json::Value>,
    /// The Secret holding the JWK set instead.
    #[serde(default)]
    pub secret_ref: Option<JwksSecretRef>,
}

/// `localJWKS.secretRef`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JwksSecretRef {
    /// The Secret's name.
    pub name: String,
    /// Its namespace; absent means the SecurityPolicy's.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The data key holding the JWKS JSON (default [`JWKS_SECRET_KEY`]).
    #[serde(default)]
    pub key: Option<String>,
}

/// Default data key of a `localJWKS.secretRef` Secret.
pub const JWKS_SECRET_KEY: &str = "jwks.json";

/// `providers[].claimToHeaders[]`: copy claim `claim` (a string or number) of a
/// valid token into request header `header` (a client's own copy is dropped).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// Claim name, e.g. `sub`.
    pub claim: String,
    /// Header name, e.g. `x-jwt-sub`.
    pub header: String,
}

/// `SecurityPolicy.spec.rateLimit`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Limit for every model without its own.
    #[serde(default)]
    pub default: Option<RateLimitValue>,
    /// Per model name.
    #[serde(default, deserialize_with = "nullable")]
    pub per_model: BTreeMap<String, RateLimitValue>,
}

/// A number of requests, and/or of tokens, per time unit: the seed's
/// `{requests, unit}`, extended with `tokens` (prompt + completion tokens,
/// charged from the response's `usage`). At least one of the two is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RateLimitValue {
    /// Requests allowed per unit (≥ 1).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub requests: Option<u32>,
    /// Tokens (prompt + completion) allowed per unit (≥ 1).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub tokens: Option<u32>,
    /// The unit.
    pub unit: RateLimitUnit,
}

/// Rate limit time unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum RateLimitUnit {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
    /// Per day.
    Day,
}

impl RateLimitUnit {
    /// The unit's length.
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            RateLimitUnit::Second => 1,
            RateLimitUnit::Minute => 60,
            RateLimitUnit::Hour => 3600,
            RateLimitUnit::Day => 86_400,
        })
    }
}

/// `InferencePool` (`inference.networking.k8s.io/v1`, also the older
/// `inference.networking.x-k8s.io/v1alpha2`), parsed loosely.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferencePool {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    #[serde(default)]
    pub spec: InferencePoolSpec,
}

/// `InferencePool.spec`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// Pod selector, as written: v1 `{matchLabels: {...}}`, v1alpha2 a plain
    /// label map. See [`InferencePoolSpec::match_labels`].
    #[serde(default)]
    pub selector: Option<serde_json::Value>,
    /// v1: ports the model servers listen on.
    #[serde(default, deserialize_with = "nullable")]
    pub target_ports: Vec<PoolPort>,
    /// v1alpha2: the port the model servers listen on.
    #[serde(default, deserialize_with = "de_opt_port")]
    pub target_port_number: Option<u16>,
    /// v1: the endpoint picker (kept as written; shardgate picks itself).
    #[serde(default)]
    pub endpoint_picker_ref: Option<serde_json::Value>,
    /// v1alpha2: the endpoint picker (kept as written).
    #[serde(default)]
    pub extension_ref: Option<serde_json::Value>,
}

/// `InferencePool.spec.targetPorts[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PoolPort {
    /// Port number.
    #[serde(deserialize_with = "super::de_port")]
    pub number: u16,
}

impl InferencePoolSpec {
    /// The first target port (v1 `targetPorts[0].number` or v1alpha2
    /// `targetPortNumber`).
    pub fn target_port(&self) -> Option<u16> {
        self.target_ports
            .first()
            .map(|p| p.number)
            .or(self.target_port_number)
    }

    /// The selector's label map, whichever version wrote it.
    pub fn match_labels(&self) -> BTreeMap<String, String> {
        let Some(sel) = &self.selector else {
            return BTreeMap::new();
        };
        let map = sel.get("matchLabels").unwrap_or(sel);
        map.as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The Gateway API Inference Extension's `poolRef` (of `InferenceObjective` and
/// `InferenceModel`): the `InferencePool` in the same namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolReference {
    /// API group (default `inference.networking.k8s.io`).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `InferencePool`; nothing else is accepted).
    #[serde(default)]
    pub kind: Option<String>,
    /// Pool name (required, non-empty).
    pub name: String,
}

/// `InferenceObjective` (`inference.networking.x-k8s.io/v1alpha2`): the
/// priority of the requests that name it (header
/// `x-gateway-inference-objective`) or, by shardgate's convention, of the
/// requests for the model its `metadata.name` equals.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferenceObjective {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification (required: `poolRef` is).
    pub spec: InferenceObjectiveSpec,
}

/// `InferenceObjective.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InferenceObjectiveSpec {
    /// Higher is more important; below 0 is sheddable; default 0.
    #[serde(default)]
    pub priority: Option<i32>,
    /// The pool whose requests it describes.
    pub pool_ref: PoolReference,
}

impl InferenceObjectiveSpec {
    /// `priority`, 0 when left out.
    pub fn priority(&self) -> i32 {
        self.priority.unwrap_or(0)
    }
}

/// `InferenceModel` (`inference.networking.x-k8s.io/v1alpha2`, the
/// predecessor of `InferenceObjective`): a model name served by a pool, with
/// its criticality.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferenceModel {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification (required: `modelName` and `poolRef` are).
    pub spec: InferenceModelSpec,
}

/// `InferenceModel.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InferenceModelSpec {
    /// The model name requests carry (`model` of the body).
    pub model_name: String,
    /// Criticality (default `Standard`).
    #[serde(default)]
    pub criticality: Option<Criticality>,
    /// The pool that serves it.
    pub pool_ref: PoolReference,
    /// Traffic split over model versions; accepted, not acted on (requests
    /// keep the model they name).
    #[serde(default, deserialize_with = "nullable")]
    pub target_models: Vec<TargetModel>,
}

impl InferenceModelSpec {
    /// The priority its criticality stands for (`Standard` when left out).
    pub fn priority(&self) -> i32 {
        self.criticality.unwrap_or(Criticality::Standard).priority()
    }
}

/// `InferenceModel.spec.criticality`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Criticality {
    /// Priority 1.
    Critical,
    /// Priority 0.
    Standard,
    /// Priority -1: shed first.
    Sheddable,
}

impl Criticality {
    /// 1, 0 or -1.
    pub fn priority(self) -> i32 {
        match self {
            Criticality::Critical => 1,
            Criticality::Standard => 0,
            Criticality::Sheddable => -1,
        }
    }
}

/// `InferenceModel.spec.targetModels[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TargetModel {
    /// Model version name (non-empty).
    pub name: String,
    /// Relative weight (≤ 1,000,000).
    #[serde(default)]
    pub weight: Option<u32>,
}
