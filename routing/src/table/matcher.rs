//! The hot path: [`RoutingTable::match_request`] walks one listener's entries,
//! precomputed in precedence order, and returns the first whose conditions
//! hold. No allocation (`routing/tests/no_alloc.rs`); per entry a host check,
//! a path compare and one lookup per header or query condition: ~10 ns for a
//! path-only entry, ~12 ns for a header entry on a 17-field head (100 routes,
//! unknown model: 1.25 µs; `bench/results/micro.md`).
//!
//! Precedence (Gateway API HTTPRoute):
//! 1. hostname: exact hostnames (longest first), then wildcards (longest
//!    suffix first), then routes without hostnames;
//! 2. path: `Exact`, then `RegularExpression`, then `PathPrefix` (the spec
//!    leaves regex precedence to the implementation), longer values first
//!    within each;
//! 3. a method match before none; 4. more header matches; 5. more query
//!    matches; 6. route `namespace/name` alphabetically (we have no creation
//!    timestamps); 7. rule order; 8. match order.
//!
//! GRPCRoute matches (lowered to path matches, `config/grpc_route.rs`) are
//! tried before HTTPRoute ones within a hostname, match gRPC calls only, and
//! are ordered among themselves as GRPCRoute's spec says: more characters of
//! service, then of method, then more header matches (then `Exact` before
//! `RegularExpression`, then 6–8 above).
//!
//! Details worth knowing:
//! - paths are compared as given (no normalisation or percent-decoding);
//!   `PathPrefix` is element-wise and ignores a trailing `/` of the value;
//!   regular expressions must match the whole path / value;
//! - query parameters are compared undecoded, on the first occurrence of the
//!   name;
//! - header names are case-insensitive, values case-sensitive; when a match
//!   lists the same header (or query) name twice, only the first counts (spec);
//! - [`MODEL_HEADER`] reads [`RequestView::model`] (the body's model) when
//!   there is one, else the client's header; [`MODEL_TYPE_HEADER`] reads the
//!   client's header when sent, else `model`; so routes written either way
//!   serve plain OpenAI clients;
//! - several listeners on one port (same protocol) share the socket: the
//!   listener whose hostname matches the request's `Host` most specifically is
//!   used, whichever of them `match_request` was called with;
//! - a request falls through from hostname-specific entries to less specific
//!   ones when no rule of the former matches.

use crate::config::HttpMethod;

use super::{RouteMatch, RoutingTable, MODEL_HEADER, MODEL_TYPE_HEADER};

/// What matching needs to know about a request.
pub struct RequestView<'a> {
    /// Method, e.g. `POST`.
    pub method: &'a str,
    /// Path without the query (a `?…` suffix is tolerated and ignored).
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// `Host` header or `:authority` (a port is stripped).
    pub host: Option<&'a str>,
    /// Header lookup: lowercase name in, first value out, as the client sent it.
    pub headers: &'a dyn Fn(&str) -> Option<&'a [u8]>,
    /// The JSON body's top-level `model`, when the gateway read one: header
    /// matches on [`MODEL_HEADER`] and [`MODEL_TYPE_HEADER`] see it (see the
    /// module docs).
    pub model: Option<&'a str>,
}

/// A hostname condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    Any,
    /// Lowercase host.
    Exact(String),
    /// Lowercase suffix including the leading dot (`.example.com`).
    Wildcard(String),
}

impl HostPattern {
    pub(super) fn parse(h: &str) -> Self {
        let h = h.to_ascii_lowercase();
        match h.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_owned()),
            None => HostPattern::Exact(h),
        }
    }

    pub(super) fn matches(&self, host: Option<&str>) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(e) => host.is_some_and(|h| h.eq_ignore_ascii_case(e)),
            HostPattern::Wildcard(suffix) => host.is_some_and(|h| {
                h.len() > suffix.len()
                    && h.as_bytes()[h.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }),
        }
    }

    /// Higher is more specific.
    pub(super) fn specificity(&self) -> (u8, usize) {
        match self {
            HostPattern::Any => (0, 0),
            HostPattern::Wildcard(s) => (1, s.len()),
            HostPattern::Exact(e) => (2, e.len()),
        }
    }

    /// Every host `self` matches is matched by `other`.
    pub(super) fn within(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (_, HostPattern::Any) => true,
            (HostPattern::Any, _) => false,
            (a, HostPattern::Exact(e)) => matches!(a, HostPattern::Exact(x) if x == e),
            (HostPattern::Exact(e), w @ HostPattern::Wildcard(_)) => w.matches(Some(e)),
            (HostPattern::Wildcard(t), HostPattern::Wildcard(s)) => t.ends_with(s.as_str()),
        }
    }
}

/// Strips a port and a trailing dot from a `Host` value.
pub(super) fn normalize_host(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    let h = match h.rfind(':') {
        Some(i) if h[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &h[..i],
        _ => h,
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// A compiled path condition.
#[derive(Debug, Clone)]
pub(super) enum PathCond {
    Exact(String),
    /// Without trailing `/`, except the root prefix `/` itself.
    Prefix(String),
    Regex(regex::Regex, String),
    /// A regular expression of the shape `/S/[^/]+` with `S` a literal
    /// (a GRPCRoute's `Exact` service-only match, every method of one
    /// service): `/S/` then one non-empty path element, tested without the
    /// regex engine. Holds `/S/` and the expression as written.
    Service(String, String),
}

impl PathCond {
    /// A compiled regular expression, or the [`PathCond::Service`] equal to it.
    pub(super) fn regex(re: regex::Regex, value: &str) -> PathCond {
        match service_prefix(value) {
            Some(p) => PathCond::Service(p, value.to_owned()),
            None => PathCond::Regex(re, value.to_owned()),
        }
    }

    pub(super) fn matches(&self, path: &str) -> bool {
        match self {
            PathCond::Service(p, _) => path
                .strip_prefix(p.as_str())
                .is_some_and(|m| !m.is_empty() && !m.contains('/')),
            PathCond::Exact(v) => path == v,
            PathCond::Prefix(p) => {
                p == "/"
                    || (path.starts_with(p.as_str())
                        && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/'))
            }
            PathCond::Regex(re, _) => re.is_match(path),
        }
    }

    /// (kind rank: 0 exact, 1 regex, 2 prefix; value length).
    pub(super) fn rank(&self) -> (u8, usize) {
        match self {
            PathCond::Exact(v) => (0, v.len()),
            PathCond::Regex(_, v) | PathCond::Service(_, v) => (1, v.len()),
            PathCond::Prefix(v) => (2, if v == "/" { 1 } else { v.len() }),
        }
    }
}

/// `/S/` when `pattern` is `/S/[^/]+` with `S` a literal service name
/// (letters, digits, `_` and `.`, the dots escaped): then the anchored
/// expression matches exactly the paths `/S/M` with `M` non-empty and
/// free of `/`.
fn service_prefix(pattern: &str) -> Option<String> {
    let escaped = pattern.strip_prefix('/')?.strip_suffix("/[^/]+")?;
    let service = escaped.replace("\\.", ".");
    let literal = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && regex::escape(&service) == escaped;
    literal.then(|| format!("/{service}/"))
}

/// A compiled header or query value condition.
#[derive(Debug, Clone)]
pub(super) enum ValueCond {
    Exact(String),
    Regex(regex::bytes::Regex, String),
}

impl ValueCond {
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            ValueCond::Exact(e) => v == e.as_bytes(),
            ValueCond::Regex(re, _) => re.is_match(v),
        }
    }
}

/// A name and the condition its value must meet.
#[derive(Debug, Clone)]
pub(super) struct NamedCond {
    /// Lowercase for headers, as written for query parameters.
    pub(super) name: String,
    pub(super) value: ValueCond,
}

/// Where a header condition reads its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeaderSource {
    /// The client's header.
    Client,
    /// [`MODEL_HEADER`]: the body's model, else the client's header.
    Model,
    /// [`MODEL_TYPE_HEADER`]: the client's header, else the body's model.
    ModelType,
}

impl HeaderSource {
    /// The source of a header condition on `name` (lowercase).
    pub(super) fn of(name: &str) -> Self {
        match name {
            MODEL_HEADER => HeaderSource::Model,
            MODEL_TYPE_HEADER => HeaderSource::ModelType,
            _ => HeaderSource::Client,
        }
    }
}

/// A header condition.
#[derive(Debug, Clone)]
pub(super) struct HeaderCond {
    pub(super) cond: NamedCond,
    pub(super) source: HeaderSource,
}

impl HeaderCond {
    fn value<'a>(&self, req: &RequestView<'a>) -> Option<&'a [u8]> {
        let client = || (req.headers)(&self.cond.name);
        let model = req.model.map(str::as_bytes);
        match self.source {
            HeaderSource::Client => client(),
            HeaderSource::Model => model.or_else(client),
            HeaderSource::ModelType => client().or(model),
        }
    }
}

/// One `matches[]` entry of a rule: its conditions all hold.
#[derive(Debug, Clone)]
pub(super) struct CompiledMatch {
    pub(super) path: PathCond,
    pub(super) method: Option<HttpMethod>,
    pub(super) headers: Vec<HeaderCond>,
    pub(super) query: Vec<NamedCond>,
    /// A GRPCRoute's match: gRPC calls only; its precedence weights.
    pub(super) grpc: Option<crate::config::GrpcPrecedence>,
}

/// Whether a `content-type` says gRPC (`application/grpc`,
/// `application/grpc+proto`, `application/grpc;…`, any case).
pub fn is_grpc_content_type(ct: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    ct.len() >= GRPC.len()
        && ct[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(ct.get(GRPC.len()), None | Some(b'+' | b';'))
}

impl CompiledMatch {
    fn matches(&self, req: &RequestView<'_>, path: &str, query: Option<&str>) -> bool {
        if self.grpc.is_some() && !(req.headers)("content-type").is_some_and(is_grpc_content_type) {
            return false;
        }
        if let Some(m) = self.method {
            if req.method != m.as_str() {
                return false;
            }
        }
        if !self.path.matches(path) {
            return false;
        }
        for h in &self.headers {
            match h.value(req) {
                Some(v) if h.cond.value.matches(v) => {}
                _ => return false,
            }
        }
        for q in &self.query {
            match query.and_then(|qs| query_first(qs, &q.name)) {
                Some(v) if q.value.matches(v.as_bytes()) => {}
                _ => return false,
            }
        }
        true
    }
}

/// The first value of query parameter `name` (undecoded).
fn query_first<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

impl RoutingTable {
    /// Finds the rule for a request arriving on `listener` (index into
    /// [`RoutingTable::listeners`]). `None` means 404. Does not allocate.
    pub fn match_request<'a>(
        &'a self,
        listener: usize,
        req: &RequestView<'_>,
    ) -> Option<RouteMatch<'a>> {
        let (path, path_query) = match req.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (req.path, None),
        };
        let query = req.query.or(path_query);
        let host = req.host.map(normalize_host);
        let listener = self.select_listener(listener, host)?;
        for e in &self.entries[listener] {
            if !e.host.matches(host) {
                continue;
            }
            let route = &self.routes[e.route];
            let rule = &route.rules[e.rule];
            if rule.matches[e.matcher].matches(req, path, query) {
                return Some(RouteMatch {
                    route: &route.key,
                    rule: e.rule,
                    backends: &rule.backends,
                    policy: rule.policy.as_deref(),
                    batching: rule.batching.as_deref(),
                    security: rule.security.as_ref().map(|(k, _)| k.as_str()),
                    action: &rule.action,
                    request_timeout: rule.request_timeout,
                    rule_id: self.rule_base[e.route] + e.rule,
                    model: rule.model.as_deref(),
                    models: &rule.models,
                });
            }
        }
        None
    }

    /// Among the listeners sharing `listener`'s port, the one whose hostname
    /// matches `host` most specifically.
    fn select_listener(&self, listener: usize, host: Option<&str>) -> Option<usize> {
        let group = &self.port_groups[*self.listener_group.get(listener)?];
        if group.len() == 1 {
            return Some(listener);
        }
        let mut best: Option<(usize, (u8, usize))> = None;
        for &l in group {
            let score = match &self.listener_hosts[l] {
                None => (0, 0),
                Some(p) if p.matches(host) => p.specificity(),
                Some(_) => continue,
            };
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((l, score));
            }
        }
        best.map(|(l, _)| l)
    }
}
