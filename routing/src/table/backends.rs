//! Backend resolution at build time: each `backendRef` of a rule becomes a
//! [`BackendGroup`] of indices into one deduplicated endpoint list, cached per
//! (kind, namespace, name, port) so the resolver runs once per name and port.
//!
//! - a `Service` backendRef resolves through the EndpointSlices of its
//!   namespace labelled `kubernetes.io/service-name`; only ready endpoints
//!   (`conditions.ready` absent = ready), first address of each. The port is
//!   the slice port named like the Service port or its `targetPort`, else the
//!   slice port equal to the backendRef port, else the slice's only port, else
//!   the backendRef port. Without any slice the resolver is called with the
//!   backendRef *name* verbatim and its port (DNS fallback); `FQDN` slice
//!   addresses go through the resolver too;
//! - an `InferencePool` backendRef resolves through slices labelled
//!   `inference.networking.k8s.io/pool-name: <pool>` or
//!   `kubernetes.io/service-name: <pool>`, on the backendRef port, else the
//!   pool's first target port;
//! - a backend without endpoints keeps its (empty) group and adds a warning;
//!   weight 0 groups are kept and must never be chosen; the same address in
//!   several groups is one [`EndpointInfo`];
//! - a `Service` backend targeted by a `BackendTLSPolicy` (the whole Service,
//!   or with `sectionName` the Service port of that name) gets the resolved
//!   policy on each of its endpoints ([`EndpointInfo::tls`]); InferencePool
//!   backends are not Services and stay plaintext;
//! - an endpoint found on a Service port or an EndpointSlice port whose
//!   `appProtocol` speaks HTTP/2 (`kubernetes.io/h2c`, `h2c`, `http2`,
//!   `grpc`) is marked [`EndpointInfo::h2`]: HTTP requests go to it over
//!   HTTP/2 too. An address marked by one backend and not another is HTTP/2
//!   (one server listens there), with a warning;
//! - cross-namespace backendRefs are allowed with a warning (no
//!   `ReferenceGrant` support in standalone mode).
//!
//! Cost: linear in the config. Slices, Services and pools are found through
//! the builder's hash indexes (never a scan of all slices per backendRef), and
//! a backend's endpoints are deduplicated with a hash set; 80,000 endpoints
//! resolve in milliseconds (`bench/results/config-scale.md`).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::{
    speaks_h2, AddressType, DocMeta, EndpointSlice, HttpRouteRule, IntOrString, ServicePort,
    POOL_NAME_LABEL, SERVICE_NAME_LABEL,
};

use super::build::Builder;
use super::{BackendGroup, BackendTls, EndpointInfo, Warning};

/// The resolved backends of one rule.
pub(super) struct RuleBackends {
    /// One group per backendRef, in order.
    pub(super) groups: Vec<BackendGroup>,
    /// Port of each backendRef, for display.
    pub(super) ports: Vec<Option<u16>>,
    /// `namespace/name` of its InferencePool backendRefs.
    pub(super) pools: Vec<String>,
}

impl<'c> Builder<'c, '_> {
    /// Resolves the backendRefs of rule `rule` (at field `base`) of HTTPRoute
    /// `meta`.
    pub(super) fn rule_backends(
        &mut self,
        meta: &DocMeta,
        base: &str,
        rule: &HttpRouteRule,
    ) -> RuleBackends {
        let mut groups = Vec::new();
        let mut ports = Vec::new();
        let mut pools = Vec::new();
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let field = format!("{base}.backendRefs[{bi}]");
            let ns = b.namespace.as_deref().unwrap_or(&meta.namespace);
            if ns != meta.namespace {
                self.warn(Warning::CrossNamespaceBackend {
                    doc: meta.label(),
                    field: field.clone(),
                    target: format!("{ns}/{}", b.name),
                });
            }
            if !b.filters.is_empty() {
                self.warn(Warning::BackendFiltersNotEnforced {
                    doc: meta.label(),
                    field: field.clone(),
                });
            }
            let kind = b.kind.as_deref().unwrap_or("Service");
            let group = b.group.as_deref().unwrap_or("");
            let endpoints = match kind {
                "Service" if group.is_empty() || group == "core" => match b.port {
                    Some(port) => self.service_endpoints(ns, &b.name, port),
                    None => Vec::new(), // rejected by validation
                },
                "InferencePool"
                    if matches!(
                        group,
                        "" | "inference.networking.k8s.io" | "inference.networking.x-k8s.io"
                    ) =>
                {
                    let key = format!("{ns}/{}", b.name);
                    if !pools.contains(&key) {
                        pools.push(key.clone());
                    }
                    self.referenced_pools.insert(key);
                    self.pool_endpoints(ns, &b.name, b.port)
                }
                _ => {
                    self.warn(Warning::BackendKindUnsupported {
                        doc: meta.label(),
                        field,
                        group: group.to_owned(),
                        kind: kind.to_owned(),
                    });
                    Vec::new()
                }
            };
            groups.push(BackendGroup {
                name: format!("{ns}/{}", b.name),
                weight: b.weight,
                endpoints,
            });
            ports.push(b.port);
        }
        if !groups.is_empty() && groups.iter().all(|b| b.weight == 0) {
            self.warn(Warning::AllWeightsZero {
                doc: meta.label(),
                field: base.to_owned(),
            });
        }
        RuleBackends {
            groups,
            ports,
            pools,
        }
    }

    /// The index of `addr` in the endpoint list, adding it (found for
    /// `backend`, on `node` when known, over `tls` when a BackendTLSPolicy
    /// covers the backend) when new; a node learnt later fills in an unknown
    /// one. One address speaks one protocol: when backends disagree on TLS,
    /// TLS wins (a plaintext request to a TLS port cannot work, and sending a
    /// request in plaintext where a policy asks for TLS must not happen) and
    /// the disagreement is a warning.
    fn add_endpoint(
        &mut self,
        addr: SocketAddr,
        backend: &str,
        node: Option<&str>,
        tls: Option<&Arc<BackendTls>>,
        h2: bool,
    ) -> usize {
        if let Some(&i) = self.endpoint_index.get(&addr) {
            let mut conflict = None;
            let mut proto_conflict = None;
            if let Some(e) = self.endpoints.get_mut(i) {
                if e.retired {
                    // Seeded from the previous table: live again, described
                    // by this configuration.
                    *e = EndpointInfo {
                        addr,
                        backend: backend.to_owned(),
                        node: node.map(str::to_owned),
                        tls: tls.cloned(),
                        h2,
                        retired: false,
                    };
                    return i;
                }
                if let Some(n) = node {
                    e.node.get_or_insert_with(|| n.to_owned());
                }
                if e.h2 != h2 {
                    // One server listens on one address: the port that says
                    // HTTP/2 describes it (an HTTP/1.1 request to an h2c-only
                    // server fails, an HTTP/2 one to a server that speaks
                    // both does not).
                    let (by_h2, by_h1) = if e.h2 {
                        (e.backend.clone(), backend.to_owned())
                    } else {
                        (backend.to_owned(), e.backend.clone())
                    };
                    proto_conflict = Some(Warning::AppProtocolConflict {
                        endpoint: addr.to_string(),
                        h2: by_h2,
                        h1: by_h1,
                    });
                    e.h2 = true;
                }
                match (&e.tls, tls) {
                    (None, None) => {}
                    (Some(a), Some(b)) if a == b => {}
                    (None, Some(b)) => {
                        conflict = Some(format!(
                            "{} reaches it in plaintext, {backend} over TLS (BackendTLSPolicy {}): TLS is used",
                            e.backend, b.policy
                        ));
                        e.tls = Some(b.clone());
                    }
                    (Some(a), None) => {
                        conflict = Some(format!(
                            "{} reaches it over TLS (BackendTLSPolicy {}), {backend} in plaintext: TLS is used",
                            e.backend, a.policy
                        ));
                    }
                    (Some(a), Some(b)) => {
                        conflict = Some(format!(
                            "BackendTLSPolicies {} and {} both cover it: {} is used",
                            a.policy, b.policy, a.policy
                        ));
                    }
                }
            }
            if let Some(detail) = conflict {
                self.warn(Warning::BackendTlsConflict {
                    endpoint: addr.to_string(),
                    detail,
                });
            }
            if let Some(w) = proto_conflict {
                self.warn(w);
            }
            return i;
        }
        let i = self.endpoints.len();
        self.endpoints.push(EndpointInfo {
            addr,
            backend: backend.to_owned(),
            node: node.map(str::to_owned),
            tls: tls.cloned(),
            h2,
            retired: false,
        });
        self.endpoint_index.insert(addr, i);
        i
    }

    /// The BackendTLSPolicy that covers Service `ns/name` on its port named
    /// `port_name`: one whose `sectionName` is that port's name before one
    /// without `sectionName`; among equals the first by `namespace/name`.
    fn service_tls(
        &self,
        ns: &str,
        name: &str,
        port_name: Option<&str>,
    ) -> Option<Arc<BackendTls>> {
        let list = self.backend_tls.get(&(ns.to_owned(), name.to_owned()))?;
        let by_section = list
            .iter()
            .find(|(s, _)| s.is_some() && s.as_deref() == port_name);
        by_section
            .or_else(|| list.iter().find(|(s, _)| s.is_none()))
            .map(|(_, t)| t.clone())
    }

    /// Ready endpoint addresses of `slices`, with the port chosen per slice.
    fn slice_addrs(
        &mut self,
        slices: &[&'c EndpointSlice],
        svc_port: Option<&ServicePort>,
        port: Option<u16>,
        backend: &str,
        tls: Option<&Arc<BackendTls>>,
    ) -> Vec<usize> {
        let svc_h2 = svc_port
            .and_then(|p| p.app_protocol.as_deref())
            .is_some_and(speaks_h2);
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for s in slices {
            self.work += 1;
            let Some(p) = slice_port(s, svc_port, port) else {
                self.warn(Warning::SlicePortUnknown {
                    slice: s.metadata.name.clone(),
                    backend: backend.to_owned(),
                });
                continue;
            };
            let h2 = svc_h2
                || s.ports
                    .iter()
                    .find(|sp| sp.port == Some(p))
                    .and_then(|sp| sp.app_protocol.as_deref())
                    .is_some_and(speaks_h2);
            for e in &s.endpoints {
                self.work += 1;
                if !e.is_ready() {
                    continue;
                }
                let Some(a) = e.addresses.first() else {
                    continue;
                };
                let addrs: Vec<SocketAddr> = match s.address_type {
                    AddressType::IPv4 | AddressType::IPv6 => match a.parse::<IpAddr>() {
                        Ok(ip) => vec![SocketAddr::new(ip, p)],
                        Err(_) => Vec::new(), // rejected by validation
                    },
                    AddressType::Fqdn => (self.resolve)(a, p),
                };
                for addr in addrs {
                    let i = self.add_endpoint(addr, backend, e.node_name.as_deref(), tls, h2);
                    if seen.insert(i) {
                        out.push(i);
                    }
                }
            }
        }
        out
    }

    /// The slices of namespace `ns` with any of `labels` equal to `value`, in
    /// config order, each once (from the builder's index: no scan).
    fn labelled_slices(
        &mut self,
        ns: &str,
        labels: &[&'static str],
        value: &str,
    ) -> Vec<&'c EndpointSlice> {
        let mut idx: Vec<usize> = labels
            .iter()
            .filter_map(|l| self.slices_by_label.get(&(ns, *l, value)))
            .flatten()
            .copied()
            .collect();
        if labels.len() > 1 {
            idx.sort_unstable();
            idx.dedup();
        }
        idx.into_iter().map(|i| self.slices[i].1).collect()
    }

    /// Endpoint indices of Service `ns/name` on backendRef port `port`.
    fn service_endpoints(&mut self, ns: &str, name: &str, port: u16) -> Vec<usize> {
        self.referenced_services
            .insert((ns.to_owned(), name.to_owned()));
        let key = (
            "Service".to_owned(),
            ns.to_owned(),
            name.to_owned(),
            Some(port),
        );
        if let Some(v) = self.backend_cache.get(&key) {
            return v.clone();
        }
        let backend = format!("{ns}/{name}");
        let slices = self.labelled_slices(ns, &[SERVICE_NAME_LABEL], name);
        let svc_port = self
            .services
            .get(&(ns, name))
            .and_then(|s| s.spec.ports.iter().find(|p| p.port == port));
        let tls = self.service_tls(ns, name, svc_port.and_then(|p| p.name.as_deref()));
        let out = if slices.is_empty() {
            let addrs = (self.resolve)(name, port);
            let h2 = svc_port
                .and_then(|p| p.app_protocol.as_deref())
                .is_some_and(speaks_h2);
            let out: Vec<usize> = addrs
                .into_iter()
                .map(|a| self.add_endpoint(a, &backend, None, tls.as_ref(), h2))
                .collect();
            if out.is_empty() {
                self.warn(Warning::ServiceUnresolved {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                    port,
                });
            }
            out
        } else {
            let out = self.slice_addrs(&slices, svc_port, Some(port), &backend, tls.as_ref());
            if out.is_empty() {
                self.warn(Warning::ServiceNoReadyEndpoints {
                    backend: backend.clone(),
                    port,
                });
            }
            out
        };
        self.backend_cache.insert(key, out.clone());
        out
    }

    /// Endpoint indices of InferencePool `ns/name` on backendRef port `port`.
    fn pool_endpoints(&mut self, ns: &str, name: &str, port: Option<u16>) -> Vec<usize> {
        let key = (
            "InferencePool".to_owned(),
            ns.to_owned(),
            name.to_owned(),
            port,
        );
        if let Some(v) = self.backend_cache.get(&key) {
            return v.clone();
        }
        let backend = format!("{ns}/{name}");
        let pool = self.pools.get(&(ns, name)).copied();
        if pool.is_none() {
            self.warn(Warning::PoolUndefined {
                backend: backend.clone(),
            });
        }
        let port = port.or_else(|| pool.and_then(|p| p.spec.target_port()));
        let slices = self.labelled_slices(ns, &[POOL_NAME_LABEL, SERVICE_NAME_LABEL], name);
        let out = self.slice_addrs(&slices, None, port, &backend, None);
        if slices.is_empty() {
            self.warn(Warning::PoolNoSlices {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            });
        } else if out.is_empty() {
            self.warn(Warning::PoolNoReadyEndpoints { backend });
        }
        self.backend_cache.insert(key, out.clone());
        out
    }
}

/// Which port of an EndpointSlice serves a backendRef port.
///
/// In order: the Service port's name, the Service's `targetPort` (name or
/// number), the slice port equal to the wanted port, the slice's only port,
/// the wanted port.
fn slice_port(
    slice: &EndpointSlice,
    svc_port: Option<&ServicePort>,
    want: Option<u16>,
) -> Option<u16> {
    let named = |n: &str| {
        slice
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == n)
            .and_then(|p| p.port)
    };
    if let Some(sp) = svc_port {
        if let Some(p) = named(sp.name.as_deref().unwrap_or("")) {
            return Some(p);
        }
        match &sp.target_port {
            Some(IntOrString::Int(t)) => return Some(*t),
            Some(IntOrString::String(n)) => {
                if let Some(p) = named(n) {
                    return Some(p);
                }
            }
            None => {}
        }
    }
    if let Some(w) = want {
        if slice.ports.iter().any(|p| p.port == Some(w)) {
            return Some(w);
        }
    }
    let mut numbered = slice.ports.iter().filter_map(|p| p.port);
    match (numbered.next(), numbered.next()) {
        (Some(only), None) => Some(only),
        _ => want,
    }
}
