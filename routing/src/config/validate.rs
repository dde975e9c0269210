//! Per-document value checks that serde's types cannot express: ranges,
//! uniqueness, regular expressions that must compile, hostnames. Each problem
//! is `(field path, message)`; the loader adds file and document.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

type Problems = Vec<(String, String)>;

/// Largest backend weight the Gateway API allows.
pub(crate) const MAX_WEIGHT: u32 = 1_000_000;

/// Checks one resource.
pub(crate) fn validate(resource: &Resource) -> Problems {
    let mut p = Problems::new();
    match resource {
        Resource::Gateway(g) => gateway(g, &mut p),
        Resource::HttpRoute(r) => http_route(r, &mut p),
        Resource::GrpcRoute(r) => {
            for (i, h) in r.spec.hostnames.iter().enumerate() {
                hostname(h, format!("spec.hostnames[{i}]"), &mut p);
            }
            p.extend(super::grpc_route::problems(r));
        }
        Resource::EndpointSlice(s) => endpoint_slice(s, &mut p),
        Resource::InferenceConfig(c) => {
            if let Some(rm) = &c.spec.resource_management {
                if rm.max_concurrent_inferences == Some(0) {
                    p.push((
                        "spec.resourceManagement.maxConcurrentInferences".into(),
                        "must be at least 1".into(),
                    ));
                }
            }
            if let Some(pw) = &c.spec.model_prewarming {
                for (field, v) in [
                    ("replicasPerModel", pw.replicas_per_model),
                    ("maxAttempts", pw.max_attempts),
                    ("maxConcurrent", pw.max_concurrent),
                ] {
                    if v == Some(0) {
                        p.push((
                            format!("spec.modelPrewarming.{field}"),
                            "must be at least 1".into(),
                        ));
                    }
                }
                if pw.timeout.is_some_and(|t| t.is_zero()) {
                    p.push((
                        "spec.modelPrewarming.timeout".into(),
                        "must be more than 0".into(),
                    ));
                }
            }
        }
        Resource::InferencePolicy(pol) => inference_policy(pol, &mut p),
        Resource::BatchingPolicy(b) => batching_policy(b, &mut p),
        Resource::SecurityPolicy(s) => security_policy(s, &mut p),
        Resource::InferenceObjective(o) => pool_ref(&o.spec.pool_ref, &mut p),
        Resource::InferenceModel(m) => inference_model(m, &mut p),
        Resource::InferenceModelRewrite(r) => model_rewrite(r, &mut p),
        Resource::ModelRollout(r) => model_rollout(r, &mut p),
        Resource::Secret(s) => secret(s, &mut p),
        Resource::BackendTlsPolicy(b) => backend_tls_policy(b, &mut p),
        Resource::GatewayClass(_)
        | Resource::Service(_)
        | Resource::ServiceMonitor(_)
        | Resource::ConfigMap(_)
        | Resource::InferencePool(_) => {}
    }
    p
}

fn gateway(g: &Gateway, p: &mut Problems) {
    if g.spec.listeners.is_empty() {
        p.push((
            "spec.listeners".into(),
            "a Gateway needs at least one listener".into(),
        ));
    }
    let mut names = HashSet::new();
    for (i, l) in g.spec.listeners.iter().enumerate() {
        if l.name.is_empty() {
            p.push((
                format!("spec.listeners[{i}].name"),
                "must not be empty".into(),
            ));
        } else if !names.insert(l.name.as_str()) {
            p.push((
                format!("spec.listeners[{i}].name"),
                format!("duplicate listener name {:?}", l.name),
            ));
        }
        if l.protocol.is_empty() {
            p.push((
                format!("spec.listeners[{i}].protocol"),
                "must not be empty".into(),
            ));
        }
        if let Some(h) = &l.hostname {
            hostname(h, format!("spec.listeners[{i}].hostname"), p);
        }
        if l.protocol == "HTTPS" {
            listener_tls(l.tls.as_ref(), i, p);
        }
    }
}

/// An `HTTPS` listener terminates TLS with at least one certificate from a
/// `Secret`.
fn listener_tls(tls: Option<&ListenerTls>, i: usize, p: &mut Problems) {
    let Some(tls) = tls else {
        p.push((
            format!("spec.listeners[{i}].tls"),
            "an HTTPS listener needs tls.certificateRefs".into(),
        ));
        return;
    };
    if let Some(mode) = tls.mode.as_deref().filter(|m| *m != "Terminate") {
        p.push((
            format!("spec.listeners[{i}].tls.mode"),
            format!("{mode:?} is not supported on an HTTPS listener (only Terminate)"),
        ));
    }
    if tls.certificate_refs.is_empty() {
        p.push((
            format!("spec.listeners[{i}].tls.certificateRefs"),
            "an HTTPS listener needs at least one certificate".into(),
        ));
    }
    for (j, r) in tls.certificate_refs.iter().enumerate() {
        let kind_ok = r.kind.as_deref().is_none_or(|k| k == "Secret");
        let group_ok = r.group.as_deref().is_none_or(str::is_empty);
        if !kind_ok || !group_ok {
            p.push((
                format!("spec.listeners[{i}].tls.certificateRefs[{j}]"),
                "only core Secrets are supported (group \"\", kind Secret)".into(),
            ));
        }
    }
}

/// A `kubernetes.io/tls` Secret has `tls.crt` and `tls.key`, and every `data`
/// value is base64.
fn secret(s: &Secret, p: &mut Problems) {
    for key in s.data.keys() {
        if let Err(e) = s.value(key) {
            if !s.string_data.contains_key(key) {
                p.push(e);
            }
        }
    }
    if s.secret_type.as_deref() == Some(SECRET_TYPE_TLS) {
        for key in ["tls.crt", "tls.key"] {
            if matches!(s.value(key), Ok(None)) {
                p.push((
                    format!("data.{key}"),
                    format!("a {SECRET_TYPE_TLS} Secret needs {key}"),
                ));
            }
        }
    }
}

/// `BackendTLSPolicy`: core Service targets, ConfigMap CA refs or `System`
/// roots (exactly one of the two), a valid `hostname`, typed SANs.
fn backend_tls_policy(b: &BackendTlsPolicy, p: &mut Problems) {
    if b.spec.target_refs.is_empty() {
        p.push((
            "spec.targetRefs".into(),
            "a BackendTLSPolicy needs at least one target".into(),
        ));
    }
    for (i, t) in b.spec.target_refs.iter().enumerate() {
        if !t.group.is_empty() || t.kind != "Service" {
            p.push((
                format!("spec.targetRefs[{i}]"),
                "only core Services are supported (group \"\", kind Service)".into(),
            ));
        }
    }
    let v = &b.spec.validation;
    for (i, r) in v.ca_certificate_refs.iter().enumerate() {
        if !r.group.is_empty() || r.kind != "ConfigMap" {
            p.push((
                format!("spec.validation.caCertificateRefs[{i}]"),
                "only core ConfigMaps are supported (group \"\", kind ConfigMap)".into(),
            ));
        }
    }
    match (
        &v.well_known_ca_certificates,
        v.ca_certificate_refs.is_empty(),
    ) {
        (Some(w), _) if w != "System" => p.push((
            "spec.validation.wellKnownCACertificates".into(),
            format!("{w:?} is not supported (only \"System\")"),
        )),
        (Some(_), false) => p.push((
            "spec.validation".into(),
            "caCertificateRefs and wellKnownCACertificates are mutually exclusive".into(),
        )),
        (None, true) => p.push((
            "spec.validation".into(),
            "needs caCertificateRefs or wellKnownCACertificates".into(),
        )),
        _ => {}
    }
    hostname(&v.hostname, "spec.validation.hostname".into(), p);
    for (i, san) in v.subject_alt_names.iter().enumerate() {
        let field = format!("spec.validation.subjectAltNames[{i}]");
        match (san.san_type.as_str(), &san.hostname, &san.uri) {
            ("Hostname", Some(h), None) => hostname(h, format!("{field}.hostname"), p),
            ("URI", None, Some(u)) if u.contains("://") => {}
            ("URI", None, Some(u)) => {
                p.push((format!("{field}.uri"), format!("{u:?} is not a URI")))
            }
            ("Hostname" | "URI", _, _) => p.push((
                field,
                "type Hostname takes only hostname, type URI only uri".into(),
            )),
            (t, _, _) => p.push((
                format!("{field}.type"),
                format!("{t:?} is not supported (Hostname or URI)"),
            )),
        }
    }
}

fn http_route(r: &HttpRoute, p: &mut Problems) {
    for (i, h) in r.spec.hostnames.iter().enumerate() {
        hostname(h, format!("spec.hostnames[{i}]"), p);
    }
    for (ri, rule) in r.spec.rules.iter().enumerate() {
        let base = format!("spec.rules[{ri}]");
        for (mi, m) in rule.matches.iter().enumerate() {
            let mb = format!("{base}.matches[{mi}]");
            if let Some(path) = &m.path {
                match path.match_type {
                    PathMatchType::Exact | PathMatchType::PathPrefix => {
                        if !path.value.starts_with('/') {
                            p.push((
                                format!("{mb}.path.value"),
                                format!("path {:?} must start with `/`", path.value),
                            ));
                        } else if path.value.contains("//") {
                            p.push((
                                format!("{mb}.path.value"),
                                format!("path {:?} must not contain `//`", path.value),
                            ));
                        }
                    }
                    PathMatchType::RegularExpression => {
                        regex(&path.value, format!("{mb}.path.value"), p);
                    }
                }
            }
            for (hi, h) in m.headers.iter().enumerate() {
                if !is_token(&h.name) {
                    p.push((
                        format!("{mb}.headers[{hi}].name"),
                        format!("{:?} is not a valid header name", h.name),
                    ));
                }
                if h.match_type == StringMatchType::RegularExpression {
                    regex(&h.value, format!("{mb}.headers[{hi}].value"), p);
                }
            }
            for (qi, q) in m.query_params.iter().enumerate() {
                if q.name.is_empty() {
                    p.push((
                        format!("{mb}.queryParams[{qi}].name"),
                        "must not be empty".into(),
                    ));
                }
                if q.match_type == StringMatchType::RegularExpression {
                    regex(&q.value, format!("{mb}.queryParams[{qi}].value"), p);
                }
            }
        }
        for (fi, f) in rule.filters.iter().enumerate() {
            filter(f, &format!("{base}.filters[{fi}]"), p);
        }
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let bb = format!("{base}.backendRefs[{bi}]");
            if b.weight > MAX_WEIGHT {
                p.push((
                    format!("{bb}.weight"),
                    format!("weight {} out of range 0..={MAX_WEIGHT}", b.weight),
                ));
            }
            let kind = b.kind.as_deref().unwrap_or("Service");
            let group = b.group.as_deref().unwrap_or("");
            if kind == "Service" && (group.is_empty() || group == "core") && b.port.is_none() {
                p.push((
                    format!("{bb}.port"),
                    "port is required for a Service backend".into(),
                ));
            }
            if b.name.is_empty() {
                p.push((format!("{bb}.name"), "must not be empty".into()));
            }
            for (fi, f) in b.filters.iter().enumerate() {
                filter(f, &format!("{bb}.filters[{fi}]"), p);
            }
        }
        if let Some(t) = &rule.timeouts {
            if let (Some(req), Some(be)) = (t.request, t.backend_request) {
                if !req.is_zero() && (be.is_zero() || be > req) {
                    p.push((
                        format!("{base}.timeouts.backendRequest"),
                        format!(
                            "backendRequest ({}) must not exceed request ({})",
                            crate::duration::format_duration(be),
                            crate::duration::format_duration(req)
                        ),
                    ));
                }
            }
        }
    }
}

fn filter(f: &HttpRouteFilter, base: &str, p: &mut Problems) {
    let (present, field) = match f.filter_type {
        FilterType::RequestHeaderModifier => {
            (f.request_header_modifier.is_some(), "requestHeaderModifier")
        }
        FilterType::ResponseHeaderModifier => (
            f.response_header_modifier.is_some(),
            "responseHeaderModifier",
        ),
        FilterType::RequestMirror => (f.request_mirror.is_some(), "requestMirror"),
        FilterType::RequestRedirect => (f.request_redirect.is_some(), "requestRedirect"),
        FilterType::UrlRewrite => (f.url_rewrite.is_some(), "urlRewrite"),
        FilterType::Cors => (f.cors.is_some(), "cors"),
        FilterType::ExternalAuth => (f.external_auth.is_some(), "externalAuth"),
        FilterType::ExtensionRef => (f.extension_ref.is_some(), "extensionRef"),
    };
    if !present {
        p.push((
            format!("{base}.{field}"),
            format!("required when type is {}", f.filter_type.as_str()),
        ));
    }
    for (key, m) in [
        ("requestHeaderModifier", &f.request_header_modifier),
        ("responseHeaderModifier", &f.response_header_modifier),
    ] {
        let Some(m) = m else { continue };
        for (list, headers) in [("set", &m.set), ("add", &m.add)] {
            for (i, h) in headers.iter().enumerate() {
                if !is_token(&h.name) {
                    p.push((
                        format!("{base}.{key}.{list}[{i}].name"),
                        format!("{:?} is not a valid header name", h.name),
                    ));
                }
            }
        }
    }
}

fn endpoint_slice(s: &EndpointSlice, p: &mut Problems) {
    for (ei, e) in s.endpoints.iter().enumerate() {
        if e.addresses.is_empty() {
            p.push((
                format!("endpoints[{ei}].addresses"),
                "an endpoint needs at least one address".into(),
            ));
        }
        for (ai, a) in e.addresses.iter().enumerate() {
            let ok = match s.address_type {
                AddressType::IPv4 => a.parse::<Ipv4Addr>().is_ok(),
                AddressType::IPv6 => a.parse::<Ipv6Addr>().is_ok(),
                AddressType::Fqdn => !a.is_empty() && !a.contains([':', '/', ' ']),
            };
            if !ok {
                p.push((
                    format!("endpoints[{ei}].addresses[{ai}]"),
                    format!("{a:?} is not a valid {:?} address", s.address_type),
                ));
            }
        }
    }
}

fn ratio(v: Option<f64>, field: &str, p: &mut Problems) {
    if let Some(v) = v {
        if !(0.0..=1.0).contains(&v) {
            p.push((field.into(), format!("{v} out of range 0..=1")));
        }
    }
}

fn inference_policy(pol: &InferencePolicy, p: &mut Problems) {
    if let Some(f) = pol
        .spec
        .load_balancing
        .as_ref()
        .and_then(|lb| lb.factors.as_ref())
    {
        let base = "spec.loadBalancing.factors";
        ratio(f.gpu_utilization, &format!("{base}.gpuUtilization"), p);
        ratio(f.memory_available, &format!("{base}.memoryAvailable"), p);
        ratio(f.inference_latency, &format!("{base}.inferenceLatency"), p);
    }
    if let Some(sa) = pol
        .spec
        .load_balancing
        .as_ref()
        .and_then(|lb| lb.session_affinity.as_ref())
    {
        let base = "spec.loadBalancing.sessionAffinity";
        if let Some(h) = &sa.header {
            if h.is_empty() || !h.bytes().all(is_tchar) {
                p.push((
                    format!("{base}.header"),
                    format!("{h:?} is not an HTTP header name"),
                ));
            }
        }
        if let Some(c) = sa.load_factor {
            if !(c.is_finite() && c > 1.0) {
                p.push((
                    format!("{base}.loadFactor"),
                    format!("{c} must be greater than 1 (it is 1 + ε; 1.25 allows 25 % above the average load)"),
                ));
            }
        }
    }
    if let Some(hc) = &pol.spec.health_check {
        if hc.interval.is_some_and(|d| d.is_zero()) {
            p.push((
                "spec.healthCheck.interval".into(),
                "must be greater than 0".into(),
            ));
        }
        if hc.timeout.is_some_and(|d| d.is_zero()) {
            p.push((
                "spec.healthCheck.timeout".into(),
                "must be greater than 0".into(),
            ));
        }
    }
}

fn batching_policy(b: &BatchingPolicy, p: &mut Problems) {
    if b.spec.max_batch_size == Some(0) {
        p.push(("spec.maxBatchSize".into(), "must be at least 1".into()));
    }
    if let Some(a) = &b.spec.adaptive_batching {
        ratio(
            a.target_utilization,
            "spec.adaptiveBatching.targetUtilization",
            p,
        );
    }
    for (i, t) in b.spec.target_refs.iter().enumerate() {
        let base = format!("spec.targetRefs[{i}]");
        if !matches!(t.kind.as_str(), "Gateway" | "HTTPRoute") {
            p.push((
                format!("{base}.kind"),
                format!(
                    "a BatchingPolicy targets a Gateway or an HTTPRoute, not {:?}",
                    t.kind
                ),
            ));
        }
        if !matches!(t.group.as_str(), "" | GATEWAY_GROUP) {
            p.push((
                format!("{base}.group"),
                format!("{:?} is not {GATEWAY_GROUP}", t.group),
            ));
        }
        if t.name.is_empty() {
            p.push((format!("{base}.name"), "must not be empty".into()));
        }
        if t.section_name.as_deref() == Some("") {
            p.push((format!("{base}.sectionName"), "must not be empty".into()));
        }
    }
    let mut names = HashSet::new();
    for (i, q) in b.spec.priority_queues.iter().enumerate() {
        if q.name.is_empty() {
            p.push((
                format!("spec.priorityQueues[{i}].name"),
                "must not be empty".into(),
            ));
        } else if !names.insert(q.name.as_str()) {
            p.push((
                format!("spec.priorityQueues[{i}].name"),
                format!("duplicate priority queue name {:?}", q.name),
            ));
        }
        if q.max_batch_size == Some(0) {
            p.push((
                format!("spec.priorityQueues[{i}].maxBatchSize"),
                "must be at least 1".into(),
            ));
        }
    }
}

/// API group of Gateway API kinds.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// `spec.poolRef` of `InferenceObjective` / `InferenceModel` (that the pool
/// exists is checked by the routing table).
fn pool_ref(r: &PoolReference, p: &mut Problems) {
    if r.name.is_empty() {
        p.push(("spec.poolRef.name".into(), "must not be empty".into()));
    }
    if let Some(kind) = r.kind.as_deref().filter(|k| *k != "InferencePool") {
        p.push((
            "spec.poolRef.kind".into(),
            format!("{kind:?}: only InferencePool is supported"),
        ));
    }
    if let Some(group) = r.group.as_deref().filter(|g| {
        !matches!(
            *g,
            "" | "inference.networking.k8s.io" | "inference.networking.x-k8s.io"
        )
    }) {
        p.push((
            "spec.poolRef.group".into(),
            format!("{group:?} is not an InferencePool group (inference.networking.k8s.io, inference.networking.x-k8s.io)"),
        ));
    }
}

fn inference_model(m: &InferenceModel, p: &mut Problems) {
    if m.spec.model_name.is_empty() {
        p.push(("spec.modelName".into(), "must not be empty".into()));
    }
    pool_ref(&m.spec.pool_ref, p);
    for (i, t) in m.spec.target_models.iter().enumerate() {
        if t.name.is_empty() {
            p.push((
                format!("spec.targetModels[{i}].name"),
                "must not be empty".into(),
            ));
        }
        if let Some(w) = t.weight.filter(|w| *w > MAX_WEIGHT) {
            p.push((
                format!("spec.targetModels[{i}].weight"),
                format!("weight {w} out of range 0..={MAX_WEIGHT}"),
            ));
        }
    }
}

fn model_rewrite(r: &InferenceModelRewrite, p: &mut Problems) {
    pool_ref(&r.spec.pool_ref, p);
    if r.spec.rules.is_empty() {
        p.push(("spec.rules".into(), "must have at least one rule".into()));
    }
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if rule.matches.is_empty() {
            p.push((
                format!("{at}.matches"),
                "must name at least one model (a rule for every model is not supported)".into(),
            ));
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let at = format!("{at}.matches[{j}].model");
            match &m.model {
                None => p.push((at, "must be set".into())),
                Some(mm) => {
                    if let Some(t) = mm.match_type.as_deref().filter(|t| *t != "Exact") {
                        p.push((
                            format!("{at}.type"),
                            format!("{t:?}: only Exact is supported"),
                        ));
                    }
                    if mm.value.is_empty() {
                        p.push((format!("{at}.value"), "must not be empty".into()));
                    }
                }
            }
        }
        if rule.targets.is_empty() {
            p.push((
                format!("{at}.targets"),
                "must have at least one target".into(),
            ));
        }
        for (j, t) in rule.targets.iter().enumerate() {
            if t.model_rewrite.is_empty() {
                p.push((
                    format!("{at}.targets[{j}].modelRewrite"),
                    "must not be empty".into(),
                ));
            }
            if let Some(w) = t.weight.filter(|w| *w > MAX_WEIGHT) {
                p.push((
                    format!("{at}.targets[{j}].weight"),
                    format!("weight {w} out of range 0..={MAX_WEIGHT}"),
                ));
            }
        }
        if !rule.targets.is_empty() && rule.targets.iter().all(|t| t.weight == Some(0)) {
            p.push((
                format!("{at}.targets"),
                "the weights must not all be 0".into(),
            ));
        }
    }
}

fn model_rollout(r: &ModelRollout, p: &mut Problems) {
    let s = &r.spec;
    pool_ref(&s.pool_ref, p);
    for (field, v) in [
        ("spec.modelName", &s.model_name),
        ("spec.stable", &s.stable),
        ("spec.canary", &s.canary),
    ] {
        if v.is_empty() {
            p.push((field.into(), "must not be empty".into()));
        }
    }
    if !s.canary.is_empty() && s.canary == s.stable {
        p.push(("spec.canary".into(), "must differ from spec.stable".into()));
    }
    let steps = s.steps();
    for (i, w) in steps.iter().enumerate() {
        if !(1..=100).contains(w) {
            p.push((
                format!("spec.steps[{i}]"),
                format!("{w}: a canary weight is 1–100 (percent)"),
            ));
        } else if i > 0 && *w <= steps[i - 1] {
            p.push((
                format!("spec.steps[{i}]"),
                format!("{w}: steps must increase"),
            ));
        }
    }
    if steps.last() != Some(&100) {
        p.push(("spec.steps".into(), "the last step must be 100".into()));
    }
    if s.step_duration.is_some_and(|d| d.is_zero()) {
        p.push(("spec.stepDuration".into(), "must be more than 0".into()));
    }
    let a = &s.analysis;
    if a.min_requests == Some(0) {
        p.push((
            "spec.analysis.minRequests".into(),
            "must be at least 1".into(),
        ));
    }
    if let Some(v) = a
        .max_error_rate_increase
        .filter(|v| !(0.0..=1.0).contains(v))
    {
        p.push((
            "spec.analysis.maxErrorRateIncrease".into(),
            format!("{v}: a fraction, 0–1"),
        ));
    }
    for (field, v) in [
        ("maxTtftP99Ratio", a.max_ttft_p99_ratio),
        ("maxTpotP99Ratio", a.max_tpot_p99_ratio),
    ] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 1.0)) {
            p.push((
                format!("spec.analysis.{field}"),
                format!("{v}: a ratio of at least 1"),
            ));
        }
    }
}

fn security_policy(s: &SecurityPolicy, p: &mut Problems) {
    if let Some(jwt) = s.spec.authentication.as_ref().and_then(|a| a.jwt.as_ref()) {
        jwt_providers(&jwt.providers, p);
    }
    let Some(rl) = &s.spec.rate_limit else {
        return;
    };
    let mut check = |at: String, v: &RateLimitValue| {
        if v.requests.is_none() && v.tokens.is_none() {
            p.push((at.clone(), "must set requests, tokens or both".into()));
        }
        if v.requests == Some(0) {
            p.push((format!("{at}.requests"), "must be at least 1".into()));
        }
        if v.tokens == Some(0) {
            p.push((format!("{at}.tokens"), "must be at least 1".into()));
        }
    };
    if let Some(d) = &rl.default {
        check("spec.rateLimit.default".into(), d);
    }
    for (model, v) in &rl.per_model {
        check(format!("spec.rateLimit.perModel.{model}"), v);
    }
}

fn jwt_providers(providers: &[JwtProvider], p: &mut Problems) {
    let base = "spec.authentication.jwt.providers";
    if providers.is_empty() {
        p.push((base.into(), "must name at least one provider".into()));
    }
    for (i, prov) in providers.iter().enumerate() {
        let at = format!("{base}[{i}]");
        if providers[..i].iter().any(|o| o.name == prov.name) {
            p.push((
                format!("{at}.name"),
                format!("duplicate provider `{}`", prov.name),
            ));
        }
        if providers.len() > 1 {
            match &prov.issuer {
                None => p.push((
                    format!("{at}.issuer"),
                    "required when there are several providers (a token's iss picks its provider)"
                        .into(),
                )),
                Some(iss)
                    if providers[..i]
                        .iter()
                        .any(|o| o.issuer.as_ref() == Some(iss)) =>
                {
                    p.push((
                        format!("{at}.issuer"),
                        format!("two providers with issuer `{iss}`"),
                    ))
                }
                Some(_) => {}
            }
        }
        if prov.remote_jwks.is_some() && prov.local_jwks.is_some() {
            p.push((at.clone(), "set localJWKS or remoteJWKS, not both".into()));
        }
        if let Some(l) = &prov.local_jwks {
            if l.secret_ref.is_some() && !l.keys.is_empty() {
                p.push((
                    format!("{at}.localJWKS"),
                    "set keys or secretRef, not both".into(),
                ));
            }
        }
        if let Some(r) = &prov.remote_jwks {
            if !(r.uri.starts_with("http://") || r.uri.starts_with("https://")) {
                p.push((
                    format!("{at}.remoteJWKS.uri"),
                    format!("`{}` is not an http:// or https:// URL", r.uri),
                ));
            }
        }
        if prov.remote_jwks.is_none()
            && prov.local_jwks.is_none()
            && !prov
                .issuer
                .as_deref()
                .is_some_and(|i| i.starts_with("http://") || i.starts_with("https://"))
        {
            p.push((
                at.clone(),
                "no keys: set localJWKS or remoteJWKS (or an http(s) issuer, whose /.well-known/jwks.json is fetched)".into(),
            ));
        }
        for (j, c) in prov.claim_to_headers.iter().enumerate() {
            if c.claim.is_empty() {
                p.push((
                    format!("{at}.claimToHeaders[{j}].claim"),
                    "must not be empty".into(),
                ));
            }
            if !is_token(&c.header) {
                p.push((
                    format!("{at}.claimToHeaders[{j}].header"),
                    format!("`{}` is not a valid header name", c.header),
                ));
            }
        }
    }
}

fn regex(pattern: &str, field: String, p: &mut Problems) {
    if let Err(e) = regex::bytes::Regex::new(&anchored(pattern)) {
        p.push((field, format!("invalid regular expression: {e}")));
    }
}

/// RFC 7230 token characters (header names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Gateway API hostname: DNS name, optionally with a leading `*.` label; no IPs.
fn hostname(h: &str, field: String, p: &mut Problems) {
    let body = h.strip_prefix("*.").unwrap_or(h);
    let labels_ok = !body.is_empty()
        && body.len() <= 253
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !labels_ok {
        p.push((
            field,
            format!("{h:?} is not a valid hostname (DNS name, optionally `*.` prefixed)"),
        ));
    } else if h.parse::<Ipv4Addr>().is_ok() {
        p.push((
            field,
            format!("{h:?}: IP addresses are not allowed as hostnames"),
        ));
    }
}

/// An RFC 9110 `tchar` (a header name is one or more of them).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Wraps a regular expression so it must match the whole input: the form in
/// which the route matcher compiles every `RegularExpression` match, so
/// validation compiles exactly what the matcher will.
pub(crate) fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}
