//! The models each rule is known to serve, computed once at build time so a
//! matched request reads them as slices ([`RouteMatch::models`],
//! [`RouteMatch::model`]).
//!
//! A rule serves: the `Exact` model-header values ([`MODEL_HEADER`] or
//! [`MODEL_TYPE_HEADER`]) of its matches, the `{name}` of KServe v2 paths
//! (`Exact` or `PathPrefix` `/v2/models/{name}…`), and the `InferenceModel` /
//! `InferenceObjective` names bound to its InferencePools. Its one model is
//! set when that is unambiguous: every match pins the same one, or none pins
//! any and its pools serve exactly one `InferenceModel`.

use crate::config::{Config, HttpRouteMatch, PathMatchType, Resource, StringMatchType};

use super::priority::Priorities;
use super::CompiledRoute;
#[cfg(doc)]
use super::RouteMatch;
use super::{MODEL_HEADER, MODEL_TYPE_HEADER};

/// Whether a header match names a model: `Exact` on either model header.
fn names_model(match_type: StringMatchType, name: &str) -> bool {
    match_type == StringMatchType::Exact
        && (name.eq_ignore_ascii_case(MODEL_HEADER) || name.eq_ignore_ascii_case(MODEL_TYPE_HEADER))
}

/// Sorted, deduplicated `Exact` model-header values over all routes (what
/// [`RoutingTable::models`](super::RoutingTable::models) lists).
pub(super) fn header_models(config: &Config) -> Vec<String> {
    let mut models: Vec<String> = config
        .docs
        .iter()
        .flat_map(|(_, r)| {
            let http: Vec<(StringMatchType, &str, &str)> = match r {
                Resource::HttpRoute(h) => h
                    .spec
                    .rules
                    .iter()
                    .flat_map(|rule| rule.matches.iter())
                    .flat_map(|m| m.headers.iter())
                    .map(|h| (h.match_type, h.name.as_str(), h.value.as_str()))
                    .collect(),
                Resource::GrpcRoute(g) => g
                    .spec
                    .rules
                    .iter()
                    .flat_map(|rule| rule.matches.iter())
                    .flat_map(|m| m.headers.iter())
                    .filter(|h| h.match_type.as_deref().is_none_or(|t| t == "Exact"))
                    .map(|h| (StringMatchType::Exact, h.name.as_str(), h.value.as_str()))
                    .collect(),
                _ => Vec::new(),
            };
            http
        })
        .filter(|(t, name, _)| names_model(*t, name))
        .map(|(_, _, v)| v.to_owned())
        .collect();
    models.sort();
    models.dedup();
    models
}

/// The model a match pins: an `Exact` model-header value, else the `{name}`
/// of an `Exact` / `PathPrefix` KServe v2 path `/v2/models/{name}…`.
pub(super) fn pinned_model(m: &HttpRouteMatch) -> Option<String> {
    if let Some(h) = m
        .headers
        .iter()
        .find(|h| names_model(h.match_type, &h.name))
    {
        return Some(h.value.clone());
    }
    let path = m.path.as_ref()?;
    if path.match_type == PathMatchType::RegularExpression {
        return None;
    }
    kserve_model(&path.value).map(str::to_owned)
}

/// `{name}` of a KServe v2 path `/v2/models/{name}[/…]`.
pub fn kserve_model(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/models/")?;
    let name = rest.split('/').next().unwrap_or("");
    (!name.is_empty()).then_some(name)
}

/// Fills each rule's known models and its single model.
pub(super) fn rule_models(routes: &mut [CompiledRoute], priorities: &Priorities) {
    for rule in routes.iter_mut().flat_map(|r| r.rules.iter_mut()) {
        let mut served: Vec<String> = Vec::new();
        let mut named: Vec<String> = Vec::new();
        for pool in &rule.pools {
            for (name, entries) in &priorities.models {
                if entries.iter().any(|e| e.pool == *pool) {
                    served.push(name.clone());
                }
            }
            for (name, entries) in &priorities.objectives {
                if entries.iter().any(|e| e.pool == *pool) {
                    named.push(name.clone());
                }
            }
        }
        served.sort();
        served.dedup();
        let first = rule.pinned.first().cloned().flatten();
        rule.model = if first.is_some() && rule.pinned.iter().all(|p| *p == first) {
            first
        } else if rule.pinned.iter().all(Option::is_none) && served.len() == 1 {
            served.first().cloned()
        } else {
            None
        };
        let mut models: Vec<String> = rule.pinned.iter().flatten().cloned().collect();
        models.extend(served);
        models.extend(named);
        models.sort();
        models.dedup();
        rule.models = models;
    }
}

/// Adds to each rule's known models those `extra` entries give its pools (the
/// requested models of splits); a rule's single model is left as it is.
pub(super) fn rule_models_add(routes: &mut [CompiledRoute], extra: &Priorities) {
    for rule in routes.iter_mut().flat_map(|r| r.rules.iter_mut()) {
        for (name, entries) in &extra.models {
            if rule
                .pools
                .iter()
                .any(|p| entries.iter().any(|e| e.pool == *p))
                && !rule.models.contains(name)
            {
                rule.models.push(name.clone());
            }
        }
        rule.models.sort();
    }
}
