//! Building the table from a loaded [`Config`]: listeners (one per Gateway
//! listener, grouped by port), routes attached to them through `parentRefs`,
//! each rule's compiled matches, backends and policies, and per listener one
//! entry list sorted by precedence. A reload of 100 routes with their
//! EndpointSlices takes ~5 ms (`bench/results/micro.md`, `build/100`), off
//! the request path. Cross-document references are checked here: hard errors
//! fail the build, the rest become [`Warning`]s.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{
    Config, ConfigError, DocMeta, EndpointSlice, FromNamespaces, Gateway, HttpRoute,
    HttpRouteMatch, InferencePool, PathMatchType, Resource, Service, StringMatchType,
    POOL_NAME_LABEL, SERVICE_NAME_LABEL,
};

use super::matcher::{
    CompiledMatch, HeaderCond, HeaderSource, HostPattern, NamedCond, PathCond, ValueCond,
};
use super::models::{header_models, pinned_model, rule_models, rule_models_add};
use super::{
    BackendTls, CompiledRoute, CompiledRule, EndpointInfo, Entry, ListenerInfo, RoutingTable,
    TlsCertificate, Warning,
};
use crate::config::anchored;

/// Hostnames a route serves on a listener: the intersection of both; empty
/// when they do not intersect.
pub(super) fn effective_hosts(
    listener: Option<&HostPattern>,
    route: &[HostPattern],
) -> Vec<HostPattern> {
    let mut out: Vec<HostPattern> = match (listener, route.is_empty()) {
        (None, true) => vec![HostPattern::Any],
        (Some(l), true) => vec![l.clone()],
        (None, false) => route.to_vec(),
        (Some(l), false) => route
            .iter()
            .filter_map(|r| {
                if r.within(l) {
                    Some(r.clone())
                } else if l.within(r) {
                    Some(l.clone())
                } else {
                    None
                }
            })
            .collect(),
    };
    let mut seen = Vec::new();
    out.retain(|h| {
        let new = !seen.contains(h);
        if new {
            seen.push(h.clone());
        }
        new
    });
    out
}

#[cfg(test)]
thread_local! {
    /// The [`Builder::work`] of this thread's last build (tests only).
    pub(super) static LAST_WORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Whether a listener protocol carries routes of `kind` (`HTTPRoute`:
/// `HTTP` and `HTTPS`; `GRPCRoute`: those and `GRPC`, served as HTTP/2).
fn carries_routes(kind: &str, protocol: &str) -> bool {
    protocol.eq_ignore_ascii_case("HTTP")
        || protocol.eq_ignore_ascii_case("HTTPS")
        || (kind == "GRPCRoute" && protocol.eq_ignore_ascii_case("GRPC"))
}

/// The listeners of all Gateways.
struct Listeners<'c> {
    listeners: Vec<ListenerInfo>,
    /// Per listener: its hostname, if any.
    hosts: Vec<Option<HostPattern>>,
    /// (meta, gateway, index of its first listener).
    gateways: Vec<(&'c DocMeta, &'c Gateway, usize)>,
    /// Listeners sharing a port.
    port_groups: Vec<Vec<usize>>,
    /// Per listener: index into `port_groups`.
    listener_group: Vec<usize>,
}

/// The BackendTLSPolicies that target one Service: (`sectionName`, policy).
pub(super) type PolicyTargets = Vec<(Option<String>, Arc<BackendTls>)>;

/// The state of one build: what it found so far, and the config's endpoint
/// sources indexed once.
pub(super) struct Builder<'c, 'r> {
    pub(super) config: &'c Config,
    pub(super) resolve: &'r mut dyn FnMut(&str, u16) -> Vec<SocketAddr>,
    pub(super) errors: Vec<ConfigError>,
    warnings: Vec<Warning>,
    pub(super) endpoints: Vec<EndpointInfo>,
    pub(super) endpoint_index: HashMap<SocketAddr, usize>,
    /// (kind, namespace, name, port) → endpoint indices.
    pub(super) backend_cache: HashMap<(String, String, String, Option<u16>), Vec<usize>>,
    pub(super) slices: Vec<(&'c DocMeta, &'c EndpointSlice)>,
    /// (namespace, label, label value) → indices into `slices`, for the
    /// `kubernetes.io/service-name` and pool-name labels: a backendRef finds
    /// its slices without scanning them all.
    pub(super) slices_by_label: HashMap<(&'c str, &'static str, &'c str), Vec<usize>>,
    /// (namespace, name) → Service.
    pub(super) services: HashMap<(&'c str, &'c str), &'c Service>,
    /// (namespace, name) → InferencePool.
    pub(super) pools: HashMap<(&'c str, &'c str), &'c InferencePool>,
    /// `namespace/name` of every InferencePool some backendRef names.
    pub(super) referenced_pools: HashSet<String>,
    /// (namespace, Service name) → the BackendTLSPolicies that target it:
    /// (`sectionName`, the resolved policy), policies in `namespace/name` order.
    pub(super) backend_tls: HashMap<(String, String), PolicyTargets>,
    /// (namespace, name) of every Service some backendRef names.
    pub(super) referenced_services: HashSet<(String, String)>,
    /// Steps of endpoint resolution (slices and endpoints visited): what the
    /// scaling test counts to prove resolution linear.
    pub(super) work: u64,
}

impl<'c, 'r> Builder<'c, 'r> {
    /// A builder over `config`, with its EndpointSlices and Services indexed.
    pub(super) fn new(
        config: &'c Config,
        resolve: &'r mut dyn FnMut(&str, u16) -> Vec<SocketAddr>,
    ) -> Self {
        let mut slices = Vec::new();
        let mut slices_by_label: HashMap<_, Vec<usize>> = HashMap::new();
        let mut services = HashMap::new();
        let mut pools = HashMap::new();
        for (m, r) in &config.docs {
            match r {
                Resource::EndpointSlice(s) => {
                    for label in [SERVICE_NAME_LABEL, POOL_NAME_LABEL] {
                        if let Some(v) = s.metadata.labels.get(label) {
                            slices_by_label
                                .entry((m.namespace.as_str(), label, v.as_str()))
                                .or_default()
                                .push(slices.len());
                        }
                    }
                    slices.push((m, s));
                }
                Resource::Service(s) => {
                    // The first of duplicates wins (duplicates are a load error).
                    services
                        .entry((m.namespace.as_str(), m.name.as_str()))
                        .or_insert(s);
                }
                Resource::InferencePool(p) => {
                    pools
                        .entry((m.namespace.as_str(), m.name.as_str()))
                        .or_insert(p);
                }
                _ => {}
            }
        }
        Builder {
            config,
            resolve,
            errors: Vec::new(),
            warnings: config
                .warnings
                .iter()
                .cloned()
                .map(Warning::Loader)
                .collect(),
            endpoints: Vec::new(),
            endpoint_index: HashMap::new(),
            backend_cache: HashMap::new(),
            slices,
            slices_by_label,
            services,
            pools,
            referenced_pools: HashSet::new(),
            backend_tls: HashMap::new(),
            referenced_services: HashSet::new(),
            work: 0,
        }
    }

    /// Start from `prev`'s endpoints, all retired until a backend of this
    /// configuration names them again ([`RoutingTable::build_next`]).
    pub(super) fn seed_endpoints(&mut self, prev: &[EndpointInfo]) {
        for e in prev {
            self.endpoint_index.insert(e.addr, self.endpoints.len());
            self.endpoints.push(EndpointInfo {
                retired: true,
                ..e.clone()
            });
        }
    }

    /// Records a finding (deduplicated when the table is made).
    pub(super) fn warn(&mut self, w: Warning) {
        self.warnings.push(w);
    }

    /// The table, or every hard error found.
    pub(super) fn build(mut self) -> Result<RoutingTable, Vec<ConfigError>> {
        let config = self.config;

        let Listeners {
            listeners,
            hosts: listener_hosts,
            gateways,
            port_groups,
            listener_group,
        } = self.build_listeners();
        self.resolve_backend_tls();

        // GRPCRoutes route as their HTTPRoute equivalents (`grpc_route.rs`).
        let lowered: Vec<(&DocMeta, HttpRoute)> = config
            .docs
            .iter()
            .filter_map(|(m, r)| match r {
                Resource::GrpcRoute(g) => Some((m, g.to_http_route())),
                _ => None,
            })
            .collect();
        // Routes, sorted by namespace/name (the precedence tie-breaker).
        let mut http_routes: Vec<(&DocMeta, &HttpRoute)> = config
            .docs
            .iter()
            .filter_map(|(m, r)| match r {
                Resource::HttpRoute(h) => Some((m, h)),
                _ => None,
            })
            .chain(lowered.iter().map(|(m, h)| (*m, h)))
            .collect();
        http_routes.sort_by_key(|(m, _)| (m.key(), m.kind.clone()));
        let mut routes = Vec::new();
        let mut route_listeners: Vec<Vec<usize>> = Vec::new();
        let mut entries: Vec<Vec<Entry>> = vec![Vec::new(); listeners.len()];
        for &(meta, route) in &http_routes {
            let route_idx = routes.len();
            let compiled = self.compile_route(meta, route);
            let route_hosts: Vec<HostPattern> = route
                .spec
                .hostnames
                .iter()
                .map(|h| HostPattern::parse(h))
                .collect();
            let attached = self.attach(meta, route, &route_hosts, &gateways, &listener_hosts);
            for &l in &attached {
                for host in effective_hosts(listener_hosts[l].as_ref(), &route_hosts) {
                    for (ri, rule) in compiled.rules.iter().enumerate() {
                        for mi in 0..rule.matches.len() {
                            entries[l].push(Entry {
                                host: host.clone(),
                                route: route_idx,
                                rule: ri,
                                matcher: mi,
                            });
                        }
                    }
                }
            }
            routes.push(compiled);
            route_listeners.push(attached);
        }
        let mut rule_base = Vec::with_capacity(routes.len());
        let mut rule_ids = Vec::new();
        for (ri, r) in routes.iter().enumerate() {
            rule_base.push(rule_ids.len());
            rule_ids.extend((0..r.rules.len()).map(|i| (ri, i)));
        }
        self.warn_unused_backend_tls();
        let priorities = self.build_priorities();
        let splits = self.build_splits(&self.known_pools());
        rule_models(&mut routes, &priorities);
        rule_models_add(&mut routes, &splits.models());
        self.apply_batching_defaults(
            &mut routes,
            &http_routes,
            &route_listeners,
            &gateways,
            (&rule_base, &rule_ids),
        );
        self.apply_security_policies(
            &mut routes,
            &http_routes,
            &route_listeners,
            &gateways,
            (&rule_base, &rule_ids),
        );
        for list in &mut entries {
            list.sort_by_key(|e| {
                let m = &routes[e.route].rules[e.rule].matches[e.matcher];
                let (hk, hl) = e.host.specificity();
                let (pk, pl) = m.path.rank();
                // GRPCRoute matches first, by their own rules (the matcher's
                // module docs); HTTPRoute ones have no gRPC weights.
                let g = m.grpc.map(|g| (g.service_chars, g.method_chars));
                let (gs, gm) = g.unwrap_or((0, 0));
                (
                    Reverse(hk),
                    Reverse(hl),
                    (
                        g.is_none(),
                        Reverse(gs),
                        Reverse(gm),
                        Reverse(if g.is_some() { m.headers.len() } else { 0 }),
                    ),
                    pk,
                    Reverse(pl),
                    m.method.is_none(),
                    Reverse(m.headers.len()),
                    Reverse(m.query.len()),
                    e.route,
                    e.rule,
                    e.matcher,
                )
            });
        }
        let needs_model = entries
            .iter()
            .map(|list| {
                list.iter().any(|e| {
                    routes[e.route].rules[e.rule].matches[e.matcher]
                        .headers
                        .iter()
                        .any(|h| h.source == HeaderSource::Model)
                })
            })
            .collect();

        // Models named by Exact model-header matches, over all routes.
        let models = header_models(config);

        let inference_config = self.find_inference_config();
        let policies = config
            .docs
            .iter()
            .filter_map(|(m, r)| match r {
                Resource::InferencePolicy(p) => Some((m.key(), p.clone())),
                _ => None,
            })
            .collect();
        let batching = config
            .docs
            .iter()
            .filter_map(|(m, r)| match r {
                Resource::BatchingPolicy(p) => Some((m.key(), p.clone())),
                _ => None,
            })
            .collect();
        let security = config
            .docs
            .iter()
            .filter_map(|(m, r)| match r {
                Resource::SecurityPolicy(p) => Some((m.key(), self.resolve_jwks_secrets(m, p))),
                _ => None,
            })
            .collect();

        #[cfg(test)]
        LAST_WORK.with(|w| w.set(self.work));
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let mut seen = HashSet::new();
        let mut warnings = self.warnings;
        warnings.retain(|w| seen.insert(w.clone()));
        Ok(RoutingTable {
            listeners,
            listener_hosts,
            listener_group,
            port_groups,
            entries,
            needs_model,
            routes,
            endpoints: self.endpoints,
            models,
            warnings,
            inference_config,
            policies,
            batching,
            security,
            rule_ids,
            rule_base,
            priorities,
            splits,
        })
    }

    /// Every Gateway listener, in config order, grouped by port.
    fn build_listeners(&mut self) -> Listeners<'c> {
        let config = self.config;
        let classes: Vec<&str> = config
            .docs
            .iter()
            .filter_map(|(m, r)| matches!(r, Resource::GatewayClass(_)).then_some(m.name.as_str()))
            .collect();
        let mut listeners = Vec::new();
        let mut listener_hosts = Vec::new();
        let mut gateways = Vec::new(); // (meta, gateway, first listener index)
        let mut by_port: HashMap<u16, usize> = HashMap::new(); // port → group index
        let mut port_groups: Vec<Vec<usize>> = Vec::new();
        let mut listener_group = Vec::new();
        for (meta, r) in &config.docs {
            let Resource::Gateway(g) = r else { continue };
            if !classes.contains(&g.spec.gateway_class_name.as_str()) {
                self.warn(Warning::GatewayClassNotFound {
                    doc: meta.label(),
                    class: g.spec.gateway_class_name.clone(),
                });
            }
            gateways.push((meta, g, listeners.len()));
            for (li, l) in g.spec.listeners.iter().enumerate() {
                let idx = listeners.len();
                let served = l.protocol == "HTTP" || l.protocol == "HTTPS" || l.protocol == "GRPC";
                let tls = if l.protocol == "HTTPS" {
                    self.listener_certificates(meta, li, l)
                } else {
                    Vec::new()
                };
                let host = l.hostname.as_deref().map(HostPattern::parse);
                let group = match by_port.get(&l.port) {
                    Some(&gi) => {
                        let first = port_groups[gi][0];
                        let other: &ListenerInfo = &listeners[first];
                        if !other.protocol.eq_ignore_ascii_case(&l.protocol) {
                            self.errors.push(ConfigError::at(
                                meta,
                                format!("spec.listeners[{li}].protocol"),
                                format!(
                                    "port {} is used by listener {}/{} with protocol {} and here with {}",
                                    l.port, other.gateway, other.name, other.protocol, l.protocol
                                ),
                            ));
                        } else if port_groups[gi].iter().any(|&o| listener_hosts[o] == host) {
                            self.warn(Warning::ListenerConflict {
                                doc: meta.label(),
                                listener: l.name.clone(),
                                port: l.port,
                            });
                        }
                        port_groups[gi].push(idx);
                        gi
                    }
                    None => {
                        by_port.insert(l.port, port_groups.len());
                        port_groups.push(vec![idx]);
                        port_groups.len() - 1
                    }
                };
                listener_group.push(group);
                if !served {
                    self.warn(Warning::ListenerNotServed {
                        doc: meta.label(),
                        listener: l.name.clone(),
                        protocol: l.protocol.clone(),
                        port: l.port,
                    });
                }
                if l.allowed_routes
                    .as_ref()
                    .and_then(|a| a.namespaces.as_ref())
                    .is_some_and(|n| n.from == FromNamespaces::Selector)
                {
                    self.warn(Warning::SelectorTreatedAsAll {
                        doc: meta.label(),
                        listener: l.name.clone(),
                    });
                }
                listeners.push(ListenerInfo {
                    gateway: meta.key(),
                    name: l.name.clone(),
                    port: l.port,
                    protocol: l.protocol.clone(),
                    served,
                    hostname: l.hostname.clone(),
                    tls,
                });
                listener_hosts.push(host);
            }
        }
        Listeners {
            listeners,
            hosts: listener_hosts,
            gateways,
            port_groups,
            listener_group,
        }
    }

    /// `sp` with every `localJWKS.secretRef` replaced by the keys of the JWKS
    /// document its Secret holds; a missing Secret or key, or a value that is
    /// not a JWKS document, is an error naming the field.
    fn resolve_jwks_secrets(
        &mut self,
        meta: &DocMeta,
        sp: &crate::config::SecurityPolicy,
    ) -> crate::config::SecurityPolicy {
        let mut sp = sp.clone();
        let config = self.config;
        let Some(jwt) = sp.spec.authentication.as_mut().and_then(|a| a.jwt.as_mut()) else {
            return sp;
        };
        for (i, prov) in jwt.providers.iter_mut().enumerate() {
            let Some(local) = prov.local_jwks.as_mut() else {
                continue;
            };
            let Some(r) = local.secret_ref.take() else {
                continue;
            };
            let field = format!("spec.authentication.jwt.providers[{i}].localJWKS.secretRef");
            let ns = r.namespace.as_deref().unwrap_or(&meta.namespace);
            let key = r.key.as_deref().unwrap_or(crate::config::JWKS_SECRET_KEY);
            let found = config.docs.iter().find_map(|(m, res)| match res {
                Resource::Secret(s) if m.name == r.name && m.namespace == ns => Some(s),
                _ => None,
            });
            let Some(secret) = found else {
                self.errors.push(ConfigError::at(
                    meta,
                    field,
                    format!("Secret {ns}/{} is not in the config", r.name),
                ));
                continue;
            };
            let value = match secret.value(key) {
                Ok(Some(v)) => v,
                Ok(None) => {
                    self.errors.push(ConfigError::at(
                        meta,
                        field,
                        format!("Secret {ns}/{} has no key `{key}`", r.name),
                    ));
                    continue;
                }
                // Per-document validation reported the bad base64 already.
                Err(_) => continue,
            };
            match serde_json::from_slice::<crate::config::LocalJwks>(&value) {
                Ok(set) if !set.keys.is_empty() => local.keys = set.keys,
                Ok(_) => self.errors.push(ConfigError::at(
                    meta,
                    field,
                    format!(
                        "Secret {ns}/{} key `{key}`: the JWK set has no keys",
                        r.name
                    ),
                )),
                Err(e) => self.errors.push(ConfigError::at(
                    meta,
                    field,
                    format!(
                        "Secret {ns}/{} key `{key}` is not a JWKS document: {e}",
                        r.name
                    ),
                )),
            }
        }
        sp
    }

    /// Every `BackendTLSPolicy`, resolved: each CA reference names a ConfigMap
    /// of the config that holds a `ca.crt` PEM bundle, `URI` subject names are
    /// refused (the verifier checks DNS names only); the policies that pass are
    /// indexed by the Services they target, for the backends to pick up.
    fn resolve_backend_tls(&mut self) {
        let config = self.config;
        let mut policies: Vec<(&DocMeta, &crate::config::BackendTlsPolicy)> = config
            .docs
            .iter()
            .filter_map(|(m, r)| match r {
                Resource::BackendTlsPolicy(b) => Some((m, b)),
                _ => None,
            })
            .collect();
        policies.sort_by_key(|(m, _)| m.key());
        for (meta, b) in policies {
            let ns = &meta.namespace;
            let v = &b.spec.validation;
            let mut ok = true;
            let mut ca_bundles = Vec::new();
            for (j, r) in v.ca_certificate_refs.iter().enumerate() {
                let field = format!("spec.validation.caCertificateRefs[{j}]");
                let found = config.docs.iter().find_map(|(m, res)| match res {
                    Resource::ConfigMap(c) if m.name == r.name && &m.namespace == ns => Some(c),
                    _ => None,
                });
                let Some(cm) = found else {
                    self.errors.push(ConfigError::at(
                        meta,
                        field,
                        format!("ConfigMap {ns}/{} not found", r.name),
                    ));
                    ok = false;
                    continue;
                };
                let key = crate::config::CA_CERT_KEY;
                match cm.data.get(key) {
                    Some(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => {
                        ca_bundles.push((format!("ConfigMap {ns}/{}", r.name), pem.clone()));
                    }
                    _ => {
                        self.errors.push(ConfigError::at(
                            meta,
                            field,
                            format!(
                                "ConfigMap {ns}/{} has no PEM certificate under data.{key}",
                                r.name
                            ),
                        ));
                        ok = false;
                    }
                }
            }
            let mut subject_alt_names = Vec::new();
            for (j, san) in v.subject_alt_names.iter().enumerate() {
                match (san.san_type.as_str(), &san.hostname) {
                    ("Hostname", Some(h)) => subject_alt_names.push(h.to_ascii_lowercase()),
                    _ => {
                        self.errors.push(ConfigError::at(
                            meta,
                            format!("spec.validation.subjectAltNames[{j}]"),
                            "only Hostname subject names are supported (URI names cannot be verified)",
                        ));
                        ok = false;
                    }
                }
            }
            if !ok {
                continue;
            }
            let tls = Arc::new(BackendTls {
                policy: format!("{ns}/{}", meta.name),
                hostname: v.hostname.to_ascii_lowercase(),
                ca_bundles,
                system_roots: v.well_known_ca_certificates.is_some(),
                subject_alt_names,
            });
            for t in &b.spec.target_refs {
                self.backend_tls
                    .entry((ns.clone(), t.name.clone()))
                    .or_default()
                    .push((t.section_name.clone(), tls.clone()));
            }
        }
    }

    /// A BackendTLSPolicy target that no backendRef names acts on nothing:
    /// a warning per (policy, Service), in policy order.
    fn warn_unused_backend_tls(&mut self) {
        let mut unused: Vec<(String, String)> = Vec::new();
        for ((ns, name), list) in &self.backend_tls {
            if self
                .referenced_services
                .contains(&(ns.clone(), name.clone()))
            {
                continue;
            }
            for (_, t) in list {
                unused.push((t.policy.clone(), format!("{ns}/{name}")));
            }
        }
        unused.sort();
        unused.dedup();
        for (policy, service) in unused {
            self.warn(Warning::BackendTlsTargetUnused { policy, service });
        }
    }

    /// An `HTTPS` listener's certificates, resolved from its `certificateRefs`
    /// (a Secret of type `kubernetes.io/tls` in the config, in the Gateway's
    /// namespace unless the ref names one); each unresolved ref is an error.
    fn listener_certificates(
        &mut self,
        meta: &DocMeta,
        li: usize,
        l: &crate::config::Listener,
    ) -> Vec<TlsCertificate> {
        let config = self.config;
        let mut certs = Vec::new();
        let refs = l.tls.as_ref().map(|t| t.certificate_refs.as_slice());
        for (j, r) in refs.unwrap_or_default().iter().enumerate() {
            let field = format!("spec.listeners[{li}].tls.certificateRefs[{j}]");
            let ns = r.namespace.as_deref().unwrap_or(&meta.namespace);
            let found = config.docs.iter().find_map(|(m, res)| match res {
                Resource::Secret(s) if m.name == r.name && m.namespace == ns => Some((m, s)),
                _ => None,
            });
            let Some((sm, secret)) = found else {
                self.errors.push(ConfigError::at(
                    meta,
                    field,
                    format!("Secret {ns}/{} is not in the config", r.name),
                ));
                continue;
            };
            if secret.secret_type.as_deref() != Some(crate::config::SECRET_TYPE_TLS) {
                self.errors.push(ConfigError::at(
                    meta,
                    field,
                    format!(
                        "Secret {ns}/{} has type {:?}, not {}",
                        r.name,
                        secret.secret_type.as_deref().unwrap_or(""),
                        crate::config::SECRET_TYPE_TLS
                    ),
                ));
                continue;
            }
            // Per-document validation has reported missing keys and bad base64.
            if let (Ok(Some(cert_pem)), Ok(Some(key_pem))) =
                (secret.value("tls.crt"), secret.value("tls.key"))
            {
                certs.push(TlsCertificate {
                    origin: format!("{}: document {} ({})", sm.file, sm.index, sm.label()),
                    cert_pem,
                    key_pem,
                });
            }
        }
        certs
    }

    /// The listeners (indices) HTTPRoute `meta` attaches to through its
    /// `parentRefs`; a parentRef no listener accepts is a warning naming why.
    fn attach(
        &mut self,
        meta: &DocMeta,
        route: &HttpRoute,
        route_hosts: &[HostPattern],
        gateways: &[(&DocMeta, &Gateway, usize)],
        listener_hosts: &[Option<HostPattern>],
    ) -> Vec<usize> {
        let mut attached: Vec<usize> = Vec::new();
        if route.spec.parent_refs.is_empty() {
            self.warn(Warning::NoParentRefs { doc: meta.label() });
        }
        for (pi, pr) in route.spec.parent_refs.iter().enumerate() {
            let kind = pr.kind.as_deref().unwrap_or("Gateway");
            if kind != "Gateway" {
                self.warn(Warning::ParentKindUnsupported {
                    doc: meta.label(),
                    index: pi,
                    kind: kind.to_owned(),
                });
                continue;
            }
            let gns = pr.namespace.as_deref().unwrap_or(&meta.namespace);
            let Some(&(gmeta, g, first)) = gateways
                .iter()
                .find(|(gm, _, _)| gm.namespace == gns && gm.name == pr.name)
            else {
                self.errors.push(ConfigError::at(
                    meta,
                    format!("spec.parentRefs[{pi}].name"),
                    format!("Gateway {gns}/{} not found", pr.name),
                ));
                continue;
            };
            let mut reasons = Vec::new();
            let mut hit = false;
            for (li, l) in g.spec.listeners.iter().enumerate() {
                let idx = first + li;
                if pr.section_name.as_ref().is_some_and(|s| *s != l.name) {
                    continue;
                }
                if pr.port.is_some_and(|p| p != l.port) {
                    continue;
                }
                if !carries_routes(&meta.kind, &l.protocol) {
                    reasons.push(format!(
                        "listener {}: protocol {} does not carry {}s",
                        l.name, l.protocol, meta.kind
                    ));
                    continue;
                }
                let allowed = l.allowed_routes.clone().unwrap_or_default();
                let from = allowed.namespaces.map(|n| n.from).unwrap_or_default();
                if from == FromNamespaces::Same && gmeta.namespace != meta.namespace {
                    reasons.push(format!(
                        "listener {}: allows routes from namespace {} only",
                        l.name, gmeta.namespace
                    ));
                    continue;
                }
                if !allowed.kinds.is_empty()
                    && !allowed.kinds.iter().any(|k| {
                        k.kind == meta.kind
                            && k.group
                                .as_deref()
                                .is_none_or(|g| g == "gateway.networking.k8s.io")
                    })
                {
                    reasons.push(format!(
                        "listener {}: allowedRoutes.kinds excludes {}",
                        l.name, meta.kind
                    ));
                    continue;
                }
                if effective_hosts(listener_hosts[idx].as_ref(), route_hosts).is_empty() {
                    reasons.push(format!(
                        "listener {}: hostname {} does not intersect the route's hostnames",
                        l.name,
                        l.hostname.as_deref().unwrap_or("*")
                    ));
                    continue;
                }
                hit = true;
                if !attached.contains(&idx) {
                    attached.push(idx);
                }
            }
            if !hit {
                let target = match &pr.section_name {
                    Some(s) => format!("{}/{s}", gmeta.key()),
                    None => gmeta.key(),
                };
                self.warn(Warning::ParentRefUnattached {
                    doc: meta.label(),
                    index: pi,
                    target,
                    reasons,
                });
            }
        }
        attached
    }

    /// Compiles one HTTPRoute's rules: matches, linked policies, backends.
    fn compile_route(&mut self, meta: &DocMeta, route: &HttpRoute) -> CompiledRoute {
        let mut rules = Vec::new();
        if route.spec.rules.is_empty() {
            self.warn(Warning::NoRules { doc: meta.label() });
        }
        for (ri, rule) in route.spec.rules.iter().enumerate() {
            let base = format!("spec.rules[{ri}]");
            let default_match = [HttpRouteMatch::default()];
            let matches: &[HttpRouteMatch] = if rule.matches.is_empty() {
                &default_match
            } else {
                &rule.matches
            };
            let matches = matches
                .iter()
                .enumerate()
                .map(|(mi, m)| self.compile_match(meta, &format!("{base}.matches[{mi}]"), m))
                .collect();

            let links = self.rule_links(meta, &base, rule);
            let backends = self.rule_backends(meta, &base, rule);
            let timeouts = rule.timeouts.clone().unwrap_or_default();
            let pinned = if rule.matches.is_empty() {
                vec![None]
            } else {
                rule.matches.iter().map(pinned_model).collect()
            };
            rules.push(CompiledRule {
                matches,
                backends: backends.groups,
                backend_ports: backends.ports,
                policy: links.policy,
                batching: links.batching,
                security: None,
                own_batching_ref: links.own_batching_ref,
                batching_default: None,
                action: links.action,
                request_timeout: timeouts.request.filter(|d| !d.is_zero()),
                backend_request_timeout: timeouts.backend_request.filter(|d| !d.is_zero()),
                filters: rule.filters.clone(),
                pools: backends.pools,
                pinned,
                models: Vec::new(),
                model: None,
            });
        }
        CompiledRoute {
            key: meta.key(),
            rules,
            grpc: meta.kind == "GRPCRoute",
        }
    }

    /// Compiles one `matches[]` entry (at field `base`).
    fn compile_match(&mut self, meta: &DocMeta, base: &str, m: &HttpRouteMatch) -> CompiledMatch {
        let path = match &m.path {
            None => PathCond::Prefix("/".to_owned()),
            Some(p) => match p.match_type {
                PathMatchType::Exact => PathCond::Exact(p.value.clone()),
                PathMatchType::PathPrefix => {
                    let v = p.value.trim_end_matches('/');
                    PathCond::Prefix(if v.is_empty() {
                        "/".to_owned()
                    } else {
                        v.to_owned()
                    })
                }
                PathMatchType::RegularExpression => match regex::Regex::new(&anchored(&p.value)) {
                    Ok(re) => PathCond::regex(re, &p.value),
                    Err(e) => {
                        self.errors.push(ConfigError::at(
                            meta,
                            format!("{base}.path.value"),
                            format!("invalid regular expression: {e}"),
                        ));
                        PathCond::Exact(String::new())
                    }
                },
            },
        };
        let mut headers: Vec<HeaderCond> = Vec::new();
        for (hi, h) in m.headers.iter().enumerate() {
            let name = h.name.to_ascii_lowercase();
            if headers.iter().any(|c| c.cond.name == name) {
                self.warn(Warning::DuplicateHeaderMatch {
                    doc: meta.label(),
                    field: format!("{base}.headers[{hi}]"),
                    header: h.name.clone(),
                });
                continue;
            }
            let value = self.value_cond(
                meta,
                &format!("{base}.headers[{hi}].value"),
                h.match_type,
                &h.value,
            );
            headers.push(HeaderCond {
                source: HeaderSource::of(&name),
                cond: NamedCond { name, value },
            });
        }
        let mut query: Vec<NamedCond> = Vec::new();
        for (qi, q) in m.query_params.iter().enumerate() {
            if query.iter().any(|c| c.name == q.name) {
                self.warn(Warning::DuplicateQueryMatch {
                    doc: meta.label(),
                    field: format!("{base}.queryParams[{qi}]"),
                    param: q.name.clone(),
                });
                continue;
            }
            let value = self.value_cond(
                meta,
                &format!("{base}.queryParams[{qi}].value"),
                q.match_type,
                &q.value,
            );
            query.push(NamedCond {
                name: q.name.clone(),
                value,
            });
        }
        CompiledMatch {
            path,
            method: m.method,
            headers,
            query,
            grpc: m.grpc,
        }
    }

    /// Compiles a header or query value condition (at field `field`).
    fn value_cond(
        &mut self,
        meta: &DocMeta,
        field: &str,
        kind: StringMatchType,
        value: &str,
    ) -> ValueCond {
        match kind {
            StringMatchType::Exact => ValueCond::Exact(value.to_owned()),
            StringMatchType::RegularExpression => {
                match regex::bytes::Regex::new(&anchored(value)) {
                    Ok(re) => ValueCond::Regex(re, value.to_owned()),
                    Err(e) => {
                        self.errors.push(ConfigError::at(
                            meta,
                            field,
                            format!("invalid regular expression: {e}"),
                        ));
                        ValueCond::Exact(String::new())
                    }
                }
            }
        }
    }
}
