//! Policy attachment and priorities, resolved at build time so a request
//! reads a key and pays one hash lookup for its priority.
//!
//! - `ExtensionRef` filters of kind `InferencePolicy` / `BatchingPolicy` are
//!   looked up by name in the route's namespace, then among policies written
//!   *without* a namespace (which match routes of any namespace, as the
//!   seed's do); the match reports the policy's `namespace/name` (`default/…`
//!   for those without one). Anything unresolved makes the rule answer 500
//!   ([`RuleAction::FilterNotFound`]). Other filter types are kept (see
//!   [`RoutingTable::rule_details`]) and reported as not enforced.
//! - A `BatchingPolicy` with `spec.targetRefs` is the default of every rule of
//!   the targeted `HTTPRoute` (`sectionName`: the rule named so) or of every
//!   route attached to the targeted `Gateway` (`sectionName`: through that
//!   listener) that links no BatchingPolicy itself (an ExtensionRef of kind
//!   `BatchingPolicy`, even an unresolved one, wins). Targets are looked up in
//!   `targetRef.namespace`, else the policy's namespace; a missing target,
//!   listener or rule is an error naming the field. The more specific
//!   attachment wins (rule › route › listener › Gateway); two different
//!   defaults at the same level for one rule are an error.
//! - `InferenceObjective` and `InferenceModel` priorities are resolved into
//!   maps keyed by name (see [`priority`](super::priority)).
//! - The `InferenceConfig` is the one a Gateway's GatewayClass
//!   `parametersRef` links, else the only one present.

use crate::config::SecurityPolicy;
use std::collections::{HashMap, HashSet};

use crate::config::{
    BatchingPolicy, ConfigError, DocMeta, FilterType, Gateway, HttpRoute, HttpRouteRule,
    InferenceConfig, InferencePolicy, PolicyTargetReference, Resource,
};

use super::build::Builder;
use super::priority::{Priorities, PriorityEntry};
use super::{CompiledRoute, RoutingTable, RuleAction, Warning};
#[cfg(doc)]
use super::{RouteMatch, OBJECTIVE_HEADER};

/// The policies a rule links through its filters.
pub(super) struct RuleLinks {
    /// `namespace/name` of its InferencePolicy.
    pub(super) policy: Option<String>,
    /// `namespace/name` of its BatchingPolicy.
    pub(super) batching: Option<String>,
    /// Whether a filter is an ExtensionRef of kind BatchingPolicy (resolved
    /// or not): such a rule takes no `targetRefs` default.
    pub(super) own_batching_ref: bool,
    /// Forward, or 500 for an unresolved ExtensionRef.
    pub(super) action: RuleAction,
}

/// A rule's default BatchingPolicy while defaults are being resolved.
struct DefaultPick {
    /// 0 Gateway, 1 listener, 2 route, 3 rule: the more specific wins.
    rank: u8,
    policy: String,
    via: String,
}

impl RoutingTable {
    /// The priority of the `InferenceObjective` named `name` (header
    /// [`OBJECTIVE_HEADER`]) for a request matched to rule `rule_id`; `None`
    /// when no objective has that name (the gateway answers 400). No allocation.
    pub fn objective_priority(&self, rule_id: usize, name: &str) -> Option<i32> {
        let entries = self.priorities.objectives.get(name)?;
        self.pick_priority(rule_id, entries)
    }

    /// The priority of requests for `model` matched to rule `rule_id`: its
    /// `InferenceModel`'s criticality, else the `InferenceObjective` named like
    /// the model; `None` when neither exists (priority 0). No allocation.
    pub fn model_priority(&self, rule_id: usize, model: &str) -> Option<i32> {
        let p = &self.priorities;
        let entries = p.models.get(model).or_else(|| p.objectives.get(model))?;
        self.pick_priority(rule_id, entries)
    }

    fn pick_priority(&self, rule_id: usize, entries: &[PriorityEntry]) -> Option<i32> {
        let (pools, namespace): (&[String], &str) = match self.rule(rule_id) {
            Some(r) => (r.pools, r.route.split('/').next().unwrap_or("")),
            None => (&[], ""),
        };
        Priorities::pick(entries, pools, namespace).map(|e| e.priority)
    }

    /// Every `InferenceObjective` (by name) and `InferenceModel` (by model
    /// name) with their priorities, sorted by name (for `check` and debugging).
    pub fn priorities(&self) -> (Vec<NamedPriority<'_>>, Vec<NamedPriority<'_>>) {
        (
            flat_priorities(&self.priorities.objectives),
            flat_priorities(&self.priorities.models),
        )
    }

    /// Every InferencePolicy loaded, with its `namespace/name` key.
    pub fn inference_policies(&self) -> impl Iterator<Item = (&str, &InferencePolicy)> + '_ {
        self.policies.iter().map(|(k, p)| (k.as_str(), p))
    }

    /// An InferencePolicy by `namespace/name` (as in [`RouteMatch::policy`])
    /// or by bare name when that is unambiguous.
    pub fn inference_policy(&self, name: &str) -> Option<&InferencePolicy> {
        lookup(&self.policies, name)
    }

    /// A BatchingPolicy by `namespace/name` (as in [`RouteMatch::batching`])
    /// or by bare name when that is unambiguous.
    pub fn batching_policy(&self, name: &str) -> Option<&BatchingPolicy> {
        lookup(&self.batching, name)
    }

    /// Every SecurityPolicy loaded, with its `namespace/name` key.
    pub fn security_policies(&self) -> impl Iterator<Item = (&str, &SecurityPolicy)> + '_ {
        self.security.iter().map(|(k, p)| (k.as_str(), p))
    }

    /// The SecurityPolicy `namespace/name`.
    pub fn security_policy(&self, name: &str) -> Option<&SecurityPolicy> {
        lookup(&self.security, name)
    }
}

/// An objective or model name with one of its entries.
pub type NamedPriority<'a> = (&'a str, &'a PriorityEntry);

/// `(name, entry)` pairs sorted by name and source.
fn flat_priorities(m: &HashMap<String, Vec<PriorityEntry>>) -> Vec<NamedPriority<'_>> {
    let mut v: Vec<NamedPriority<'_>> = m
        .iter()
        .flat_map(|(k, es)| es.iter().map(move |e| (k.as_str(), e)))
        .collect();
    v.sort_by(|a, b| (a.0, &a.1.source).cmp(&(b.0, &b.1.source)));
    v
}

fn lookup<'a, T>(list: &'a [(String, T)], name: &str) -> Option<&'a T> {
    if let Some((_, t)) = list.iter().find(|(k, _)| k == name) {
        return Some(t);
    }
    if name.contains('/') {
        return None;
    }
    let mut found = list
        .iter()
        .filter(|(k, _)| k.rsplit('/').next() == Some(name));
    match (found.next(), found.next()) {
        (Some((_, t)), None) => Some(t),
        _ => None,
    }
}

impl Builder<'_, '_> {
    /// Resolves the `ExtensionRef` filters of rule `rule` (at field `base`) of
    /// HTTPRoute `meta`.
    pub(super) fn rule_links(
        &mut self,
        meta: &DocMeta,
        base: &str,
        rule: &HttpRouteRule,
    ) -> RuleLinks {
        let mut policy = None;
        let mut batching = None;
        let mut action = RuleAction::Forward;
        let own_batching_ref = rule.filters.iter().any(|f| {
            f.filter_type == FilterType::ExtensionRef
                && f.extension_ref
                    .as_ref()
                    .is_some_and(|e| e.kind == "BatchingPolicy")
        });
        for (fi, f) in rule.filters.iter().enumerate() {
            let field = format!("{base}.filters[{fi}]");
            if f.filter_type != FilterType::ExtensionRef {
                self.warn(Warning::FilterNotEnforced {
                    doc: meta.label(),
                    field,
                    filter_type: f.filter_type.as_str().to_owned(),
                });
                continue;
            }
            let Some(ext) = &f.extension_ref else {
                continue;
            };
            let found = match ext.kind.as_str() {
                "InferencePolicy" => self
                    .find_policy(meta, &ext.name, |r| {
                        matches!(r, Resource::InferencePolicy(_))
                    })
                    .map(|k| (&mut policy, k)),
                "BatchingPolicy" => self
                    .find_policy(meta, &ext.name, |r| {
                        matches!(r, Resource::BatchingPolicy(_))
                    })
                    .map(|k| (&mut batching, k)),
                _ => None,
            };
            match found {
                Some((slot, key)) => {
                    if slot.is_some() {
                        self.warn(Warning::DuplicateExtensionRef {
                            doc: meta.label(),
                            field,
                            kind: ext.kind.clone(),
                        });
                    } else {
                        *slot = Some(key);
                    }
                }
                None => {
                    self.warn(Warning::ExtensionRefUnresolved {
                        doc: meta.label(),
                        field,
                        kind: ext.kind.clone(),
                        name: ext.name.clone(),
                    });
                    if action == RuleAction::Forward {
                        action = RuleAction::FilterNotFound {
                            filter: format!("{} {}", ext.kind, ext.name),
                        };
                    }
                }
            }
        }
        RuleLinks {
            policy,
            batching,
            own_batching_ref,
            action,
        }
    }

    /// Finds a policy object by name for a route: in the route's namespace
    /// first, then any policy written without a namespace. Returns its key.
    fn find_policy(
        &self,
        route: &DocMeta,
        name: &str,
        is_kind: impl Fn(&Resource) -> bool,
    ) -> Option<String> {
        let candidates = || {
            self.config
                .docs
                .iter()
                .filter(|(m, r)| is_kind(r) && m.name == name)
        };
        candidates()
            .find(|(m, r)| m.namespace == route.namespace && r.metadata().namespace.is_some())
            .or_else(|| candidates().find(|(_, r)| r.metadata().namespace.is_none()))
            .map(|(m, _)| m.key())
    }

    /// The `InferenceConfig` a GatewayClass `parametersRef` links, else the
    /// only one present.
    pub(super) fn find_inference_config(&mut self) -> Option<InferenceConfig> {
        let config = self.config;
        let configs: Vec<(&DocMeta, &InferenceConfig)> = config
            .docs
            .iter()
            .filter_map(|(m, r)| match r {
                Resource::InferenceConfig(c) => Some((m, c)),
                _ => None,
            })
            .collect();
        for (_, r) in &config.docs {
            let Resource::Gateway(g) = r else { continue };
            let Some((cmeta, class)) = config.docs.iter().find_map(|(m, r)| match r {
                Resource::GatewayClass(c) if m.name == g.spec.gateway_class_name => Some((m, c)),
                _ => None,
            }) else {
                continue;
            };
            let Some(pr) = &class.spec.parameters_ref else {
                continue;
            };
            if pr.kind != "InferenceConfig" {
                continue;
            }
            let found = configs.iter().find(|(m, _)| {
                m.name == pr.name && pr.namespace.as_ref().is_none_or(|ns| *ns == m.namespace)
            });
            match found {
                Some((_, c)) => return Some((*c).clone()),
                None => self.warn(Warning::InferenceConfigNotFound {
                    doc: cmeta.label(),
                    name: pr.name.clone(),
                }),
            }
        }
        match configs.as_slice() {
            [] => None,
            [(_, c)] => Some((*c).clone()),
            _ => {
                self.warn(Warning::InferenceConfigAmbiguous {
                    count: configs.len(),
                });
                None
            }
        }
    }

    /// `InferenceObjective` and `InferenceModel` priorities by name; a
    /// `poolRef` that names no known pool, or one model twice for one pool
    /// with different priorities, is an error (see [`priority`](super::priority)).
    pub(super) fn build_priorities(&mut self) -> Priorities {
        let config = self.config;
        let known = self.known_pools();
        let mut out = Priorities::default();
        for (meta, r) in &config.docs {
            let (pool_ref, name, priority, is_model) = match r {
                Resource::InferenceObjective(o) => {
                    (&o.spec.pool_ref, &meta.name, o.spec.priority(), false)
                }
                Resource::InferenceModel(m) => (
                    &m.spec.pool_ref,
                    &m.spec.model_name,
                    m.spec.priority(),
                    true,
                ),
                _ => continue,
            };
            let Some(pool) = self.known_pool(&known, meta, &pool_ref.name) else {
                continue;
            };
            let map = if is_model {
                &mut out.models
            } else {
                &mut out.objectives
            };
            let entries = map.entry(name.clone()).or_default();
            if let Some(other) = entries.iter().find(|e| e.pool == pool) {
                if other.priority != priority {
                    self.errors.push(ConfigError::at(
                        meta,
                        "spec.modelName",
                        format!(
                            "model {name} of pool {pool} already has priority {} (InferenceModel {}); one model, one criticality per pool",
                            other.priority, other.source
                        ),
                    ));
                }
                continue;
            }
            entries.push(PriorityEntry {
                source: meta.key(),
                namespace: meta.namespace.clone(),
                pool,
                priority,
            });
        }
        out
    }

    /// `namespace/name` of the pool a `poolRef` in `meta`'s namespace names,
    /// when it is one of `known`; else an error on `spec.poolRef.name`.
    pub(super) fn known_pool(
        &mut self,
        known: &HashSet<String>,
        meta: &crate::config::DocMeta,
        name: &str,
    ) -> Option<String> {
        let pool = format!("{}/{}", meta.namespace, name);
        if known.contains(&pool) {
            return Some(pool);
        }
        self.errors.push(ConfigError::at(
            meta,
            "spec.poolRef.name",
            format!(
                "InferencePool {pool} not found: define it, or name it in an HTTPRoute backendRef"
            ),
        ));
        None
    }

    /// `namespace/name` of every pool: InferencePool documents, and pools some
    /// HTTPRoute backendRef names.
    pub(super) fn known_pools(&self) -> HashSet<String> {
        let mut known: HashSet<String> = self
            .config
            .docs
            .iter()
            .filter(|(_, r)| matches!(r, Resource::InferencePool(_)))
            .map(|(m, _)| m.key())
            .collect();
        known.extend(self.referenced_pools.iter().cloned());
        known
    }

    /// Makes `targetRefs` BatchingPolicies the defaults of the rules without a
    /// BatchingPolicy ExtensionRef (see the module docs).
    pub(super) fn apply_batching_defaults(
        &mut self,
        routes: &mut [CompiledRoute],
        route_docs: &[(&DocMeta, &HttpRoute)],
        route_listeners: &[Vec<usize>],
        gateways: &[(&DocMeta, &Gateway, usize)],
        (rule_base, rule_ids): (&[usize], &[(usize, usize)]),
    ) {
        let config = self.config;
        let mut picks: Vec<Option<DefaultPick>> = (0..rule_ids.len()).map(|_| None).collect();
        for (pmeta, r) in &config.docs {
            let Resource::BatchingPolicy(bp) = r else {
                continue;
            };
            let policy = pmeta.key();
            for (ti, t) in bp.spec.target_refs.iter().enumerate() {
                let base = format!("spec.targetRefs[{ti}]");
                let Some((rank, via, ids)) = self.default_target(
                    pmeta,
                    &base,
                    t,
                    routes,
                    route_docs,
                    route_listeners,
                    gateways,
                    rule_base,
                    false,
                ) else {
                    continue;
                };
                let mut applied = 0usize;
                for id in ids {
                    let Some(&(ri, i)) = rule_ids.get(id) else {
                        continue;
                    };
                    if routes[ri].rules[i].own_batching_ref {
                        continue;
                    }
                    applied += 1;
                    match &picks[id] {
                        Some(p) if p.rank > rank || (p.rank == rank && p.policy == policy) => {}
                        Some(p) if p.rank == rank => {
                            self.errors.push(ConfigError::at(
                                pmeta,
                                base.clone(),
                                format!(
                                    "{via}: rule {i} of HTTPRoute {} already has BatchingPolicy {} as its default (through {}); two defaults at the same level for one rule",
                                    routes[ri].key, p.policy, p.via
                                ),
                            ));
                            break;
                        }
                        _ => {
                            picks[id] = Some(DefaultPick {
                                rank,
                                policy: policy.clone(),
                                via: via.clone(),
                            })
                        }
                    }
                }
                if applied == 0 {
                    self.warn(Warning::BatchingDefaultUnused {
                        doc: pmeta.label(),
                        field: base,
                        via,
                    });
                }
            }
        }
        for (id, pick) in picks.into_iter().enumerate() {
            let (Some(p), Some(&(ri, i))) = (pick, rule_ids.get(id)) else {
                continue;
            };
            let rule = &mut routes[ri].rules[i];
            rule.batching = Some(p.policy);
            rule.batching_default = Some(p.via);
        }
    }

    /// Attaches every SecurityPolicy to the rules its `targetRef` reaches: a
    /// Gateway (every rule attached to it), one of its listeners
    /// (`sectionName`), an HTTPRoute (every rule), or one of its rules. The
    /// most specific target wins; two different policies at the same level for
    /// one rule are an error.
    pub(super) fn apply_security_policies(
        &mut self,
        routes: &mut [CompiledRoute],
        route_docs: &[(&DocMeta, &HttpRoute)],
        route_listeners: &[Vec<usize>],
        gateways: &[(&DocMeta, &Gateway, usize)],
        (rule_base, rule_ids): (&[usize], &[(usize, usize)]),
    ) {
        let config = self.config;
        let mut picks: Vec<Option<DefaultPick>> = (0..rule_ids.len()).map(|_| None).collect();
        for (pmeta, r) in &config.docs {
            let Resource::SecurityPolicy(sp) = r else {
                continue;
            };
            let Some(t) = &sp.spec.target_ref else {
                continue;
            };
            let policy = pmeta.key();
            let base = "spec.targetRef";
            let any_namespace = sp.metadata.namespace.is_none() && t.namespace.is_none();
            let Some((rank, via, ids)) = self.default_target(
                pmeta,
                base,
                t,
                routes,
                route_docs,
                route_listeners,
                gateways,
                rule_base,
                any_namespace,
            ) else {
                continue;
            };
            for id in ids {
                let Some(&(ri, i)) = rule_ids.get(id) else {
                    continue;
                };
                match &picks[id] {
                    Some(p) if p.rank > rank || (p.rank == rank && p.policy == policy) => {}
                    Some(p) if p.rank == rank => {
                        self.errors.push(ConfigError::at(
                            pmeta,
                            base,
                            format!(
                                "{via}: rule {i} of HTTPRoute {} already has SecurityPolicy {} (through {}); two SecurityPolicies at the same level for one rule",
                                routes[ri].key, p.policy, p.via
                            ),
                        ));
                        break;
                    }
                    _ => {
                        picks[id] = Some(DefaultPick {
                            rank,
                            policy: policy.clone(),
                            via: via.clone(),
                        })
                    }
                }
            }
        }
        for (id, pick) in picks.into_iter().enumerate() {
            let (Some(p), Some(&(ri, i))) = (pick, rule_ids.get(id)) else {
                continue;
            };
            routes[ri].rules[i].security = Some((p.policy, p.via));
        }
    }

    /// One `targetRef`'s (rank, description, rule ids); `None` after an error.
    #[allow(clippy::too_many_arguments)]
    fn default_target(
        &mut self,
        pmeta: &DocMeta,
        base: &str,
        t: &PolicyTargetReference,
        routes: &[CompiledRoute],
        route_docs: &[(&DocMeta, &HttpRoute)],
        route_listeners: &[Vec<usize>],
        gateways: &[(&DocMeta, &Gateway, usize)],
        rule_base: &[usize],
        any_namespace: bool,
    ) -> Option<(u8, String, Vec<usize>)> {
        let ns = t.namespace.as_deref().unwrap_or(&pmeta.namespace);
        // A policy written without a namespace, naming its target without one,
        // matches a target of that name in any namespace (as the seed's do).
        let in_ns = |m: &DocMeta| (any_namespace || m.namespace == ns) && m.name == t.name;
        let mut fail = |field: &str, message: String| {
            self.errors
                .push(ConfigError::at(pmeta, format!("{base}.{field}"), message));
            None
        };
        match t.kind.as_str() {
            "HTTPRoute" => {
                let Some(ri) = route_docs.iter().position(|(m, _)| in_ns(m)) else {
                    return fail("name", format!("HTTPRoute {ns}/{} not found", t.name));
                };
                let all = rule_base[ri]..rule_base[ri] + routes[ri].rules.len();
                match &t.section_name {
                    None => Some((
                        2,
                        format!("HTTPRoute {}/{}", route_docs[ri].0.namespace, t.name),
                        all.collect(),
                    )),
                    Some(sec) => {
                        let rules = &route_docs[ri].1.spec.rules;
                        match rules.iter().position(|r| r.name.as_deref() == Some(sec)) {
                            Some(i) => Some((
                                3,
                                format!(
                                    "HTTPRoute {}/{} rule {sec}",
                                    route_docs[ri].0.namespace, t.name
                                ),
                                vec![rule_base[ri] + i],
                            )),
                            None => fail(
                                "sectionName",
                                format!(
                                    "HTTPRoute {}/{} has no rule named {sec:?}",
                                    route_docs[ri].0.namespace, t.name
                                ),
                            ),
                        }
                    }
                }
            }
            "Gateway" => {
                let Some(&(gm, g, first)) = gateways.iter().find(|(m, _, _)| in_ns(m)) else {
                    return fail("name", format!("Gateway {ns}/{} not found", t.name));
                };
                let (rank, via, wanted) = match &t.section_name {
                    None => (
                        0,
                        format!("Gateway {}/{}", gm.namespace, t.name),
                        (first..first + g.spec.listeners.len()).collect::<Vec<_>>(),
                    ),
                    Some(sec) => match g.spec.listeners.iter().position(|l| l.name == *sec) {
                        Some(li) => (
                            1,
                            format!("Gateway {}/{} listener {sec}", gm.namespace, t.name),
                            vec![first + li],
                        ),
                        None => {
                            return fail(
                                "sectionName",
                                format!(
                                    "Gateway {}/{} has no listener named {sec:?}",
                                    gm.namespace, t.name
                                ),
                            )
                        }
                    },
                };
                let ids = route_listeners
                    .iter()
                    .enumerate()
                    .filter(|(_, ls)| ls.iter().any(|l| wanted.contains(l)))
                    .flat_map(|(ri, _)| rule_base[ri]..rule_base[ri] + routes[ri].rules.len())
                    .collect();
                Some((rank, via, ids))
            }
            // Rejected when the document was loaded.
            _ => None,
        }
    }
}
