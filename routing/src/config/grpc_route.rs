//! `GRPCRoute` (Gateway API v1) in terms of HTTPRoute: a gRPC call is an
//! HTTP/2 `POST /package.Service/Method`, so each method match becomes a path
//! match, and the rest (hostnames, header matches, weighted backendRefs,
//! ExtensionRef filters) carries over as it is. The routing table then builds
//! and matches GRPCRoutes with the HTTPRoute machinery, allocation-free.
//!
//! Method matches:
//! | match | service + method | service only | method only |
//! |---|---|---|---|
//! | `Exact` (default) | path `Exact /S/M` | path regex `/S/[^/]+` | path regex `/[^/]+/M` |
//! | `RegularExpression` | path regex `/(?:S)/(?:M)` | `/(?:S)/[^/]+` | `/[^/]+/(?:M)` |
//! No method match (or no matches) matches every call.
//!
//! Only gRPC calls match a GRPCRoute (`content-type: application/grpc…`, as
//! Envoy's `grpc` route match): an OpenAI request on a listener that carries
//! both kinds never lands on a GRPCRoute rule.
//!
//! Precedence, as the spec orders it: hostname, then the characters of the
//! match's service, then of its method (the regular expression's, for
//! `RegularExpression`), then the number of header matches; then route
//! `namespace/name` (no creation timestamps in files) and rule order. Ties
//! of equal characters put `Exact` before `RegularExpression`. Each match
//! carries its weights ([`GrpcPrecedence`]) for the table to sort by; within
//! a hostname, GRPCRoute matches are tried before HTTPRoute ones (a gRPC call
//! that both kinds match goes by its GRPCRoute; the spec does not merge
//! them).
//!
//! Validation (per the CRD): a method match names a service or a method; an
//! `Exact` service is a dotted identifier, an `Exact` method an identifier;
//! a `RegularExpression` compiles (checked when the table is built).

use super::gateway_api::*;

/// Wildcard for one path element.
const ANY: &str = "[^/]+";

fn is_ident(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `a.b.C` (an optional leading `.`, as the CRD allows).
fn is_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty() && s.split('.').all(is_ident)
}

/// Problems of a GRPCRoute that serde's types do not catch, as
/// `(field, message)`.
pub(crate) fn problems(route: &GrpcRoute) -> Vec<(String, String)> {
    let mut p = Vec::new();
    for (ri, rule) in route.spec.rules.iter().enumerate() {
        for (mi, m) in rule.matches.iter().enumerate() {
            let base = format!("spec.rules[{ri}].matches[{mi}]");
            if let Some(mm) = &m.method {
                let kind = mm.match_type.as_deref().unwrap_or("Exact");
                let svc = mm.service.as_deref().filter(|s| !s.is_empty());
                let meth = mm.method.as_deref().filter(|s| !s.is_empty());
                match kind {
                    "Exact" => {
                        if let Some(s) = svc.filter(|s| !is_service(s)) {
                            p.push((
                                format!("{base}.method.service"),
                                format!("`{s}` is not a gRPC service name (a.b.Service)"),
                            ));
                        }
                        if let Some(s) = meth.filter(|s| !is_ident(s)) {
                            p.push((
                                format!("{base}.method.method"),
                                format!("`{s}` is not a gRPC method name"),
                            ));
                        }
                    }
                    "RegularExpression" => {}
                    other => p.push((
                        format!("{base}.method.type"),
                        format!("must be Exact or RegularExpression, not {other}"),
                    )),
                }
                if svc.is_none() && meth.is_none() {
                    p.push((
                        format!("{base}.method"),
                        "names neither a service nor a method".to_owned(),
                    ));
                }
            }
            for (hi, h) in m.headers.iter().enumerate() {
                if let Some(t) = h.match_type.as_deref() {
                    if t != "Exact" && t != "RegularExpression" {
                        p.push((
                            format!("{base}.headers[{hi}].type"),
                            format!("must be Exact or RegularExpression, not {t}"),
                        ));
                    }
                }
            }
        }
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            if b.weight > 1_000_000 {
                p.push((
                    format!("spec.rules[{ri}].backendRefs[{bi}].weight"),
                    "must be at most 1000000".to_owned(),
                ));
            }
        }
    }
    p
}

/// The path condition of one method match.
fn path_match(m: &GrpcMethodMatch) -> HttpPathMatch {
    let svc = m.service.as_deref().filter(|s| !s.is_empty());
    let meth = m.method.as_deref().filter(|s| !s.is_empty());
    let regex = m.match_type.as_deref() == Some("RegularExpression");
    let part = |v: Option<&str>| match v {
        None => ANY.to_owned(),
        Some(v) if regex => format!("(?:{v})"),
        Some(v) => regex::escape(v),
    };
    match (svc, meth, regex) {
        (Some(s), Some(me), false) => HttpPathMatch {
            match_type: PathMatchType::Exact,
            value: format!("/{s}/{me}"),
        },
        (None, None, _) => HttpPathMatch {
            match_type: PathMatchType::PathPrefix,
            value: "/".to_owned(),
        },
        _ => HttpPathMatch {
            match_type: PathMatchType::RegularExpression,
            value: format!("/{}/{}", part(svc), part(meth)),
        },
    }
}

/// A method match's weight in precedence: the characters of its service and
/// method (of the regular expressions, for `RegularExpression`).
fn precedence(m: Option<&GrpcMethodMatch>) -> GrpcPrecedence {
    let len = |v: Option<&String>| v.map_or(0, String::len);
    m.map_or(GrpcPrecedence::default(), |m| GrpcPrecedence {
        service_chars: len(m.service.as_ref()),
        method_chars: len(m.method.as_ref()),
    })
}

fn string_match(t: Option<&str>) -> StringMatchType {
    match t {
        Some("RegularExpression") => StringMatchType::RegularExpression,
        _ => StringMatchType::Exact,
    }
}

/// A filter as an HTTPRoute filter (a GRPCRoute filter has the same shape);
/// one that does not parse is dropped (reported by [`problems`]' caller as a
/// filter the table does not know).
fn filter(v: &serde_json::Value) -> Option<HttpRouteFilter> {
    serde_json::from_value(v.clone()).ok()
}

impl GrpcRoute {
    /// This route as the HTTPRoute that routes the same calls (module docs).
    pub fn to_http_route(&self) -> HttpRoute {
        let rules = self
            .spec
            .rules
            .iter()
            .map(|r| HttpRouteRule {
                name: None,
                matches: if r.matches.is_empty() {
                    // Every call, but only gRPC calls.
                    vec![HttpRouteMatch {
                        grpc: Some(GrpcPrecedence::default()),
                        ..HttpRouteMatch::default()
                    }]
                } else {
                    r.matches
                        .iter()
                        .map(|m| HttpRouteMatch {
                            grpc: Some(precedence(m.method.as_ref())),
                            path: m.method.as_ref().map(path_match),
                            headers: m
                                .headers
                                .iter()
                                .map(|h| HttpHeaderMatch {
                                    match_type: string_match(h.match_type.as_deref()),
                                    name: h.name.clone(),
                                    value: h.value.clone(),
                                })
                                .collect(),
                            query_params: Vec::new(),
                            method: None,
                        })
                        .collect()
                },
                filters: r.filters.iter().filter_map(filter).collect(),
                backend_refs: r
                    .backend_refs
                    .iter()
                    .map(|b| HttpBackendRef {
                        group: b.group.clone(),
                        kind: b.kind.clone(),
                        name: b.name.clone(),
                        namespace: b.namespace.clone(),
                        port: b.port,
                        weight: b.weight,
                        filters: b.filters.iter().filter_map(filter).collect(),
                    })
                    .collect(),
                timeouts: None,
            })
            .collect();
        HttpRoute {
            metadata: self.metadata.clone(),
            spec: HttpRouteSpec {
                parent_refs: self.spec.parent_refs.clone(),
                hostnames: self.spec.hostnames.clone(),
                rules,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mm(t: Option<&str>, s: Option<&str>, m: Option<&str>) -> GrpcMethodMatch {
        GrpcMethodMatch {
            match_type: t.map(str::to_owned),
            service: s.map(str::to_owned),
            method: m.map(str::to_owned),
        }
    }

    #[test]
    fn method_matches_become_paths() {
        let p = |m| {
            let h = path_match(&m);
            (h.match_type, h.value)
        };
        assert_eq!(
            p(mm(
                None,
                Some("inference.GRPCInferenceService"),
                Some("ModelInfer")
            )),
            (
                PathMatchType::Exact,
                "/inference.GRPCInferenceService/ModelInfer".into()
            )
        );
        assert_eq!(
            p(mm(Some("Exact"), Some("a.B"), None)),
            (PathMatchType::RegularExpression, "/a\\.B/[^/]+".into())
        );
        assert_eq!(
            p(mm(None, None, Some("Check"))),
            (PathMatchType::RegularExpression, "/[^/]+/Check".into())
        );
        assert_eq!(
            p(mm(
                Some("RegularExpression"),
                Some("inference\\..*"),
                Some("Model.*")
            )),
            (
                PathMatchType::RegularExpression,
                "/(?:inference\\..*)/(?:Model.*)".into()
            )
        );
        assert_eq!(
            p(mm(
                Some("RegularExpression"),
                None,
                Some("Model(Ready|Infer)")
            )),
            (
                PathMatchType::RegularExpression,
                "/[^/]+/(?:Model(Ready|Infer))".into()
            )
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(is_service("inference.GRPCInferenceService"));
        assert!(is_service(".grpc.health.v1.Health"));
        assert!(!is_service("a..b"));
        assert!(!is_service("a/b"));
        assert!(!is_service("1a"));
        assert!(is_ident("ModelInfer"));
        assert!(!is_ident("Model-Infer"));
        assert!(!is_ident(""));
    }
}
