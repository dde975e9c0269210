//! Model-version splits, resolved when the table is built: for a requested
//! model and the pool a rule routes to, which model names the requests are
//! sent upstream as, by weight. Three sources, one per (model, pool):
//! - `InferenceModel.spec.targetModels` (`name`, `weight`, default 1);
//! - `InferenceModelRewrite.spec.rules[]` (`matches[].model` Exact →
//!   `targets[] {modelRewrite, weight}`, default 1);
//! - `ModelRollout` (`stable` / `canary`, the canary's weight set at run time
//!   by the gateway's rollout controller: [`SplitEntry::rollout`]).
//!
//! Two sources for one model and pool are a configuration error naming both.
//! Entries are picked for a rule like priorities ([`super::priority`]): the one
//! whose pool the rule routes to, else the one in the route's namespace, else
//! the first. The request path pays one hash lookup ([`RoutingTable::model_split`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::config::{ConfigError, Resource, RolloutAnalysis};

use super::build::Builder;
use super::priority::{Priorities, PriorityEntry};
use super::RoutingTable;

/// One model name requests are sent upstream as, with its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitTarget {
    /// The model name sent upstream.
    pub model: String,
    /// Relative weight.
    pub weight: u32,
}

/// A requested model's split for one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitEntry {
    /// `Kind namespace/name` of the document it came from.
    pub source: String,
    /// Its namespace.
    pub namespace: String,
    /// `namespace/name` of its pool.
    pub pool: String,
    /// Targets and static weights (a rollout's: stable then canary, weights
    /// taken from the controller instead).
    pub targets: Vec<SplitTarget>,
    /// Index into [`RoutingTable::rollouts`] when a `ModelRollout` drives it.
    pub rollout: Option<usize>,
}

/// A `ModelRollout`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    /// `namespace/name`.
    pub key: String,
    /// The model name clients request.
    pub model: String,
    /// `namespace/name` of the pool.
    pub pool: String,
    /// The stable version's model name.
    pub stable: String,
    /// The canary's model name.
    pub canary: String,
    /// Canary weight per step, percent (the last is 100).
    pub steps: Vec<u32>,
    /// Dwell per step, and the comparison window.
    pub step_duration: Duration,
    /// The SLO the canary must hold.
    pub analysis: RolloutAnalysis,
}

/// Splits by requested model, and the rollouts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Splits {
    pub(crate) by_model: HashMap<String, Vec<SplitEntry>>,
    pub(crate) rollouts: Vec<RolloutSpec>,
}

impl Splits {
    /// The requested models each pool's splits make it serve, as priority-like
    /// entries (for the rules' known models).
    pub(super) fn models(&self) -> Priorities {
        let mut p = Priorities::default();
        for (model, entries) in &self.by_model {
            p.models.insert(
                model.clone(),
                entries
                    .iter()
                    .map(|e| PriorityEntry {
                        source: e.source.clone(),
                        namespace: e.namespace.clone(),
                        pool: e.pool.clone(),
                        priority: 0,
                    })
                    .collect(),
            );
        }
        p
    }
}

impl RoutingTable {
    /// The split of `model` for rule `rule_id` (see the module docs), if any.
    pub fn model_split(&self, rule_id: usize, model: &str) -> Option<&SplitEntry> {
        let entries = self.splits.by_model.get(model)?;
        let (pools, namespace): (&[String], &str) = match self.rule(rule_id) {
            Some(r) => (r.pools, r.route.split('/').next().unwrap_or("")),
            None => (&[], ""),
        };
        Priorities::pick_by(entries, pools, namespace, |e| (&e.pool, &e.namespace))
    }

    /// Every `ModelRollout`, in file order (the gateway runs one controller
    /// per entry).
    pub fn rollouts(&self) -> &[RolloutSpec] {
        &self.splits.rollouts
    }

    /// Every split, sorted by requested model (for `check`).
    pub fn splits(&self) -> Vec<(&str, &SplitEntry)> {
        let mut out: Vec<(&str, &SplitEntry)> = self
            .splits
            .by_model
            .iter()
            .flat_map(|(m, es)| es.iter().map(move |e| (m.as_str(), e)))
            .collect();
        out.sort_by(|a, b| (a.0, &a.1.pool).cmp(&(b.0, &b.1.pool)));
        out
    }
}

impl Builder<'_, '_> {
    /// Every split of the config; `priorities` supplies the pools known.
    pub(super) fn build_splits(&mut self, known_pools: &HashSet<String>) -> Splits {
        let config = self.config;
        let mut out = Splits::default();
        for (meta, r) in &config.docs {
            let mut add: Vec<(String, String, Vec<SplitTarget>, Option<RolloutSpec>)> = Vec::new();
            let pool_ref = match r {
                Resource::InferenceModel(m) if !m.spec.target_models.is_empty() => {
                    add.push((
                        m.spec.model_name.clone(),
                        "spec.targetModels".into(),
                        m.spec
                            .target_models
                            .iter()
                            .map(|t| SplitTarget {
                                model: t.name.clone(),
                                weight: t.weight.unwrap_or(1),
                            })
                            .collect(),
                        None,
                    ));
                    &m.spec.pool_ref
                }
                Resource::InferenceModelRewrite(rw) => {
                    for (i, rule) in rw.spec.rules.iter().enumerate() {
                        let targets: Vec<SplitTarget> = rule
                            .targets
                            .iter()
                            .map(|t| SplitTarget {
                                model: t.model_rewrite.clone(),
                                weight: t.weight.unwrap_or(1),
                            })
                            .collect();
                        for m in rule.matches.iter().filter_map(|m| m.model.as_ref()) {
                            add.push((
                                m.value.clone(),
                                format!("spec.rules[{i}]"),
                                targets.clone(),
                                None,
                            ));
                        }
                    }
                    &rw.spec.pool_ref
                }
                Resource::ModelRollout(ro) => {
                    let s = &ro.spec;
                    let pool = format!("{}/{}", meta.namespace, s.pool_ref.name);
                    add.push((
                        s.model_name.clone(),
                        "spec.modelName".into(),
                        vec![
                            SplitTarget {
                                model: s.stable.clone(),
                                weight: 100,
                            },
                            SplitTarget {
                                model: s.canary.clone(),
                                weight: 0,
                            },
                        ],
                        Some(RolloutSpec {
                            key: meta.key(),
                            model: s.model_name.clone(),
                            pool,
                            stable: s.stable.clone(),
                            canary: s.canary.clone(),
                            steps: s.steps(),
                            step_duration: s.step_duration(),
                            analysis: s.analysis.clone(),
                        }),
                    ));
                    &s.pool_ref
                }
                _ => continue,
            };
            let Some(pool) = self.known_pool(known_pools, meta, &pool_ref.name) else {
                continue;
            };
            let source = meta.label();
            for (model, field, targets, rollout) in add {
                let entries = out.by_model.entry(model.clone()).or_default();
                if let Some(other) = entries.iter().find(|e| e.pool == pool) {
                    // A second rule of the same rewrite for the same model is
                    // shadowed (the first rule wins), as in the extension.
                    if other.source != source {
                        self.errors.push(ConfigError::at(
                            meta,
                            &field,
                            format!(
                                "model {model} of pool {pool} is already split by {}; one split (InferenceModel targetModels, InferenceModelRewrite or ModelRollout) per model and pool",
                                other.source
                            ),
                        ));
                    }
                    continue;
                }
                let index = rollout.map(|r| {
                    out.rollouts.push(r);
                    out.rollouts.len() - 1
                });
                entries.push(SplitEntry {
                    source: source.clone(),
                    namespace: meta.namespace.clone(),
                    pool: pool.clone(),
                    targets,
                    rollout: index,
                });
            }
        }
        out
    }
}
