//! Model-version traffic splits and canary rollouts:
//! - `InferenceModelRewrite` (`inference.networking.x-k8s.io/v1alpha2`, the
//!   Gateway API Inference Extension's successor to `InferenceModel.targetModels`):
//!   for a pool, rules whose `matches[].model` (Exact) name a requested model and
//!   whose `targets[]` split it by weight over the model names sent upstream;
//! - `ModelRollout` (`ai.gateway.io/v1alpha1`, shardgate's own): a canary
//!   rollout of one model name from a `stable` to a `canary` version in weighted
//!   steps, advanced while the canary's SLO holds against the stable's over the
//!   same window, rolled back at once on a breach.
//!
//! Why a kind of our own for rollouts rather than fields on `InferenceModel` /
//! `InferenceModelRewrite`: those are upstream CRDs whose schemas a cluster
//! validates (extra fields are pruned or refused), they describe a desired
//! split, not a process with state, and an operator can keep both: the rewrite
//! for the steady state, a rollout for the change. A rollout and a static split
//! for the same model and pool are a configuration error (which one wins would
//! be a guess).

use std::time::Duration;

use serde::Deserialize;

use super::{nullable, ObjectMeta, PoolReference};
use crate::duration::serde_optional as opt_duration;

/// `InferenceModelRewrite`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferenceModelRewrite {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    pub spec: InferenceModelRewriteSpec,
}

/// `InferenceModelRewrite.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InferenceModelRewriteSpec {
    /// The pool whose requests it rewrites.
    pub pool_ref: PoolReference,
    /// Rewrite rules, in order (the first rule matching a model wins).
    #[serde(default, deserialize_with = "nullable")]
    pub rules: Vec<RewriteRule>,
}

/// One rule of an `InferenceModelRewrite`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RewriteRule {
    /// Requested models this rule applies to (any of them).
    #[serde(default, deserialize_with = "nullable")]
    pub matches: Vec<RewriteMatch>,
    /// Where the requests go, by weight.
    #[serde(default, deserialize_with = "nullable")]
    pub targets: Vec<RewriteTarget>,
}

/// `rules[].matches[]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RewriteMatch {
    /// The requested model.
    #[serde(default)]
    pub model: Option<ModelMatch>,
}

/// `rules[].matches[].model`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ModelMatch {
    /// Match type: `Exact` (the default; nothing else is supported).
    #[serde(default, rename = "type")]
    pub match_type: Option<String>,
    /// The model name.
    pub value: String,
}

/// `rules[].targets[]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RewriteTarget {
    /// The model name sent upstream.
    pub model_rewrite: String,
    /// Relative weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// `ModelRollout`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRollout {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// Specification.
    pub spec: ModelRolloutSpec,
}

/// Default `steps`: canary weight in percent.
pub const DEFAULT_ROLLOUT_STEPS: [u32; 5] = [1, 5, 25, 50, 100];

/// `ModelRollout.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ModelRolloutSpec {
    /// The model name clients request.
    pub model_name: String,
    /// The pool serving both versions.
    pub pool_ref: PoolReference,
    /// The version serving today (the model name sent upstream).
    pub stable: String,
    /// The new version.
    pub canary: String,
    /// Canary weight per step, percent, increasing, the last 100 (default
    /// 1, 5, 25, 50, 100).
    #[serde(default, deserialize_with = "nullable")]
    pub steps: Vec<u32>,
    /// Each step's dwell, which is also the comparison window (default 5m).
    #[serde(default, deserialize_with = "opt_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<String>", pattern(crate::duration::PATTERN))
    )]
    pub step_duration: Option<Duration>,
    /// The SLO the canary must hold against the stable version.
    #[serde(default)]
    pub analysis: RolloutAnalysis,
}

impl ModelRolloutSpec {
    /// The steps, defaulted.
    pub fn steps(&self) -> Vec<u32> {
        if self.steps.is_empty() {
            DEFAULT_ROLLOUT_STEPS.to_vec()
        } else {
            self.steps.clone()
        }
    }

    /// The step duration, defaulted (5 minutes).
    pub fn step_duration(&self) -> Duration {
        self.step_duration.unwrap_or(Duration::from_secs(300))
    }
}

/// `ModelRollout.spec.analysis`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysis {
    /// Canary requests a window needs before it is judged (default 20).
    #[serde(default)]
    pub min_requests: Option<u32>,
    /// The canary's error rate (5xx and failed requests) may exceed the
    /// stable's by at most this, absolute (default 0.02: two points).
    #[serde(default)]
    pub max_error_rate_increase: Option<f64>,
    /// The canary's p99 TTFT may be at most this times the stable's (default 1.5).
    #[serde(default)]
    pub max_ttft_p99_ratio: Option<f64>,
    /// The canary's p99 time per output token may be at most this times the
    /// stable's (not checked when left out).
    #[serde(default)]
    pub max_tpot_p99_ratio: Option<f64>,
}

impl RolloutAnalysis {
    /// `minRequests`, defaulted.
    pub fn min_requests(&self) -> u32 {
        self.min_requests.unwrap_or(20)
    }

    /// `maxErrorRateIncrease`, defaulted.
    pub fn max_error_rate_increase(&self) -> f64 {
        self.max_error_rate_increase.unwrap_or(0.02)
    }

    /// `maxTtftP99Ratio`, defaulted.
    pub fn max_ttft_p99_ratio(&self) -> f64 {
        self.max_ttft_p99_ratio.unwrap_or(1.5)
    }
}
