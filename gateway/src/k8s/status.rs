//! The status this controller wants its objects to have, computed purely from
//! the watched objects, the validated snapshot ([`super::snapshot::Isolated`]:
//! the objects left out with their errors, the routing table's warnings) and
//! the gateway's last reload outcome.
//!
//! - **GatewayClass** (ours): `Accepted` (`True`/`Accepted`, or
//!   `False`/`InvalidParameters` when its InferenceConfig is missing or it was
//!   left out).
//! - **Gateway** (ours): `Accepted` (`Accepted`, `ListenersNotValid` when a
//!   listener's protocol is not served (HTTP, HTTPS and GRPC are),
//!   `False`/`Invalid` when left out) and
//!   `Programmed` (`True` once the gateway serves the snapshot; `False`/`Pending`
//!   when the change waits for a restart, `False`/`Invalid` when the gateway
//!   refused it); per listener `supportedKinds`, `attachedRoutes`, `Accepted`
//!   (`UnsupportedProtocol`), `Programmed`, `ResolvedRefs`; `addresses` from
//!   `--gateway-address`.
//! - **HTTPRoute** and **GRPCRoute**: one `parents` entry per `parentRef` to one of our Gateways,
//!   with `Accepted` (`Accepted`, `NotAllowedByListeners`, `NoMatchingParent`,
//!   `UnsupportedValue` when left out) and `ResolvedRefs` (`ResolvedRefs`,
//!   `BackendNotFound`, `InvalidKind`, `RefNotPermitted`); entries of other
//!   controllers are kept as they are.
//! - **InferencePool** used by an accepted route: one `parents` entry per our
//!   Gateway, `Accepted` and `ResolvedRefs`; other entries kept.
//! - **our kinds** (`ai.gateway.io`, SecurityPolicy): `conditions` with
//!   `Accepted` (`False`/`Invalid` and the errors when left out).
//!
//! A condition keeps its `lastTransitionTime` while its status stays the same,
//! and carries `observedGeneration`. [`desired`] returns a patch only for the
//! objects whose status differs from what the API server has, so a quiet
//! cluster gets no writes.

use serde_json::{json, Map, Value};
use shardgate_routing::table::Warning;

use super::kinds::{has_condition_status, WatchedKind};
use super::snapshot::{label, Isolated, Owned};
use super::store::{Key, Store};
use crate::reload::Outcome;

/// One status to write: the object (kind index, key) and its `status` fields.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPatch {
    /// Index of its kind in the watched list.
    pub kind_index: usize,
    /// `(namespace, name)`.
    pub key: Key,
    /// The fields of `status` to set (a merge patch: lists are replaced whole).
    pub status: Value,
}

/// The gateway's outcome for a snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Programmed {
    /// The snapshot's sequence number.
    pub snapshot: u64,
    /// How the gateway took it.
    pub outcome: Option<Outcome>,
}

/// What [`desired`] reads.
pub struct Input<'a> {
    /// The watched kinds, as the store indexes them.
    pub kinds: &'a [WatchedKind],
    /// The watched objects.
    pub store: &'a Store,
    /// Our classes and Gateways.
    pub owned: &'a Owned,
    /// The validated snapshot.
    pub iso: &'a Isolated,
    /// Our `controllerName`.
    pub controller: &'a str,
    /// The gateway's outcome for the newest snapshot (`None`: not known yet,
    /// nothing is computed).
    pub programmed: Option<Outcome>,
    /// `--gateway-address`.
    pub address: Option<&'a str>,
    /// RFC 3339 time for new transitions.
    pub now: String,
}

/// The time now, as conditions write it.
pub fn now() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    format!("{}", t.strftime("%Y-%m-%dT%H:%M:%SZ"))
}

struct Cond<'a> {
    ty: &'a str,
    ok: bool,
    reason: &'a str,
    message: String,
}

fn cond(c: Cond<'_>, old: Option<&Value>, generation: Option<i64>, now: &str) -> Value {
    let status = if c.ok { "True" } else { "False" };
    let kept = old
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|o| o["type"] == c.ty && o["status"] == status)
        .and_then(|o| o["lastTransitionTime"].as_str())
        .unwrap_or(now);
    let mut m = Map::new();
    m.insert("type".into(), c.ty.into());
    m.insert("status".into(), status.into());
    m.insert("reason".into(), c.reason.into());
    // The API caps messages at 32,768 characters.
    let mut msg = c.message;
    if msg.len() > 4096 {
        let mut end = 4096;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
    }
    m.insert("message".into(), msg.into());
    m.insert("lastTransitionTime".into(), kept.into());
    m.insert("observedGeneration".into(), generation.unwrap_or(0).into());
    Value::Object(m)
}

fn kind_indices<'a>(kinds: &'a [WatchedKind], kind: &'a str) -> impl Iterator<Item = usize> + 'a {
    kinds
        .iter()
        .enumerate()
        .filter(move |(_, w)| w.kind == kind)
        .map(|(i, _)| i)
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Every status that should change (see the module doc).
pub fn desired(input: &Input<'_>) -> Vec<StatusPatch> {
    let Some(outcome) = input.programmed else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let warnings = input.iso.table.warnings();
    let rejected = &input.iso.rejected;
    let mut push = |kind_index: usize, key: &Key, old: &Value, status: Map<String, Value>| {
        let same = status.iter().all(|(k, v)| old.get(k) == Some(v));
        if !same {
            out.push(StatusPatch {
                kind_index,
                key: key.clone(),
                status: Value::Object(status),
            });
        }
    };

    // GatewayClasses.
    for i in kind_indices(input.kinds, "GatewayClass") {
        let Some(objs) = input.store.kinds.get(i) else {
            continue;
        };
        for (key, o) in &objs.objects {
            if !input.owned.classes.contains(&key.1) {
                continue;
            }
            let l = label("GatewayClass", false, "", &key.1);
            let missing = warnings.iter().find_map(|w| match w {
                Warning::InferenceConfigNotFound { doc, .. } if *doc == l => Some(w.to_string()),
                _ => None,
            });
            let c = match (rejected.get(&l), missing) {
                (Some(errs), _) => Cond {
                    ty: "Accepted",
                    ok: false,
                    reason: "InvalidParameters",
                    message: errs.join("; "),
                },
                (None, Some(m)) => Cond {
                    ty: "Accepted",
                    ok: false,
                    reason: "InvalidParameters",
                    message: m,
                },
                (None, None) => Cond {
                    ty: "Accepted",
                    ok: true,
                    reason: "Accepted",
                    message: format!("served by {}", input.controller),
                },
            };
            let old = o.status.get("conditions");
            let mut s = Map::new();
            s.insert(
                "conditions".into(),
                json!([cond(c, old, o.generation, &input.now)]),
            );
            push(i, key, &o.status, s);
        }
    }

    // Routes attached per (gateway key, listener name, route kind), for attachedRoutes.
    let all_routes: Vec<(usize, &str)> = kind_indices(input.kinds, "HTTPRoute")
        .map(|i| (i, "HTTPRoute"))
        .chain(kind_indices(input.kinds, "GRPCRoute").map(|i| (i, "GRPCRoute")))
        .collect();
    let mut attached: Vec<((String, String), Option<String>, &str)> = Vec::new();
    for &(i, route_kind) in &all_routes {
        let Some(objs) = input.store.kinds.get(i) else {
            continue;
        };
        for ((ns, name), o) in &objs.objects {
            let l = label(route_kind, true, ns, name);
            if rejected.contains_key(&l) {
                continue;
            }
            let prs = o.doc["spec"]["parentRefs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for (pi, pr) in prs.iter().enumerate() {
                if !input.owned.parent_is_ours(ns, pr) {
                    continue;
                }
                let unattached = warnings.iter().any(|w| matches!(w, Warning::ParentRefUnattached { doc, index, .. } if *doc == l && *index == pi));
                if unattached {
                    continue;
                }
                let gns = str_of(pr, "namespace").unwrap_or(ns).to_string();
                let gname = str_of(pr, "name").unwrap_or("").to_string();
                attached.push((
                    (gns, gname),
                    str_of(pr, "sectionName").map(str::to_string),
                    route_kind,
                ));
            }
        }
    }

    let (prog_ok, prog_reason, prog_msg) = match outcome {
        Outcome::Applied | Outcome::Unchanged => (true, "Programmed", "serving".to_string()),
        Outcome::RestartRequired => (
            false,
            "Pending",
            "valid; this change takes effect at the gateway's next start (live reload does not cover it yet)".to_string(),
        ),
        Outcome::Error => (
            false,
            "Invalid",
            "the gateway refused this configuration; the last good one keeps serving".to_string(),
        ),
    };

    // Gateways.
    for i in kind_indices(input.kinds, "Gateway") {
        let Some(objs) = input.store.kinds.get(i) else {
            continue;
        };
        for (key, o) in &objs.objects {
            if !input.owned.gateways.contains(key) {
                continue;
            }
            let l = label("Gateway", true, &key.0, &key.1);
            let old = o.status.get("conditions");
            let mut s = Map::new();
            if let Some(errs) = rejected.get(&l) {
                let msg = errs.join("; ");
                s.insert(
                    "conditions".into(),
                    json!([
                        cond(
                            Cond {
                                ty: "Accepted",
                                ok: false,
                                reason: "Invalid",
                                message: msg.clone()
                            },
                            old,
                            o.generation,
                            &input.now
                        ),
                        cond(
                            Cond {
                                ty: "Programmed",
                                ok: false,
                                reason: "Invalid",
                                message: msg
                            },
                            old,
                            o.generation,
                            &input.now
                        ),
                    ]),
                );
                push(i, key, &o.status, s);
                continue;
            }
            let listeners = o.doc["spec"]["listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let old_listeners = o.status["listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut all_ok = true;
            let mut ls = Vec::new();
            for li in &listeners {
                let name = str_of(li, "name").unwrap_or("");
                let protocol = str_of(li, "protocol").unwrap_or("");
                let served = protocol == "HTTP" || protocol == "HTTPS" || protocol == "GRPC";
                all_ok &= served;
                let old_l = old_listeners
                    .iter()
                    .find(|x| x["name"] == name)
                    .and_then(|x| x.get("conditions"));
                let n = attached
                    .iter()
                    .filter(|(g, sec, kind)| {
                        g == key
                            && sec.as_deref().is_none_or(|s| s == name)
                            && (*kind == "GRPCRoute" || protocol != "GRPC")
                    })
                    .count();
                // HTTP/2 with prior knowledge reaches HTTP listeners and ALPN `h2`
                // HTTPS ones, so both carry GRPCRoutes too; a GRPC listener only those.
                let kinds = match protocol {
                    "HTTP" | "HTTPS" => json!([
                        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
                        {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}
                    ]),
                    "GRPC" => json!([{"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}]),
                    _ => json!([]),
                };
                let accepted = if served {
                    Cond {
                        ty: "Accepted",
                        ok: true,
                        reason: "Accepted",
                        message: "listener accepted".into(),
                    }
                } else {
                    Cond {
                        ty: "Accepted",
                        ok: false,
                        reason: "UnsupportedProtocol",
                        message: format!(
                            "protocol {protocol} is not served (HTTP, HTTPS and GRPC are)"
                        ),
                    }
                };
                let programmed = Cond {
                    ty: "Programmed",
                    ok: served && prog_ok,
                    reason: if !served { "Invalid" } else { prog_reason },
                    message: if served {
                        prog_msg.clone()
                    } else {
                        "not served".into()
                    },
                };
                ls.push(json!({
                    "name": name,
                    "supportedKinds": kinds,
                    "attachedRoutes": n,
                    "conditions": [
                        cond(accepted, old_l, o.generation, &input.now),
                        cond(programmed, old_l, o.generation, &input.now),
                        cond(Cond { ty: "ResolvedRefs", ok: true, reason: "ResolvedRefs", message: "references resolved".into() }, old_l, o.generation, &input.now),
                    ],
                }));
            }
            let accepted = Cond {
                ty: "Accepted",
                ok: true,
                reason: if all_ok {
                    "Accepted"
                } else {
                    "ListenersNotValid"
                },
                message: if all_ok {
                    format!("accepted by {}", input.controller)
                } else {
                    "accepted; some listeners are not served (see status.listeners)".into()
                },
            };
            let programmed = Cond {
                ty: "Programmed",
                ok: prog_ok,
                reason: prog_reason,
                message: prog_msg.clone(),
            };
            s.insert(
                "conditions".into(),
                json!([
                    cond(accepted, old, o.generation, &input.now),
                    cond(programmed, old, o.generation, &input.now),
                ]),
            );
            s.insert("listeners".into(), Value::Array(ls));
            if let Some(a) = input.address {
                let ty = if a.parse::<std::net::IpAddr>().is_ok() {
                    "IPAddress"
                } else {
                    "Hostname"
                };
                s.insert("addresses".into(), json!([{"type": ty, "value": a}]));
            }
            push(i, key, &o.status, s);
        }
    }

    // HTTPRoutes and GRPCRoutes, and the InferencePools their accepted rules use.
    let services: Vec<&Key> = kind_indices(input.kinds, "Service")
        .filter_map(|i| input.store.kinds.get(i))
        .flat_map(|k| k.objects.keys())
        .collect();
    let mut pools: Vec<(Key, (String, String))> = Vec::new();
    for &(i, route_kind) in &all_routes {
        let Some(objs) = input.store.kinds.get(i) else {
            continue;
        };
        for (key, o) in &objs.objects {
            let (ns, name) = key;
            let l = label(route_kind, true, ns, name);
            let prs = o.doc["spec"]["parentRefs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !prs.iter().any(|pr| input.owned.parent_is_ours(ns, pr)) {
                continue;
            }
            let backends: Vec<Value> = o.doc["spec"]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r["backendRefs"].as_array().cloned().unwrap_or_default())
                .collect();
            let resolved = resolved_refs(&l, ns, &backends, warnings, &services);
            let old_parents = o.status["parents"].as_array().cloned().unwrap_or_default();
            let mut parents: Vec<Value> = old_parents
                .iter()
                .filter(|p| p["controllerName"] != input.controller)
                .cloned()
                .collect();
            for (pi, pr) in prs.iter().enumerate() {
                if !input.owned.parent_is_ours(ns, pr) {
                    continue;
                }
                let old = old_parents
                    .iter()
                    .find(|p| p["controllerName"] == input.controller && p["parentRef"] == *pr)
                    .and_then(|p| p.get("conditions"));
                let unattached = warnings.iter().find_map(|w| match w {
                    Warning::ParentRefUnattached {
                        doc,
                        index,
                        reasons,
                        ..
                    } if *doc == l && *index == pi => Some((reasons.is_empty(), w.to_string())),
                    _ => None,
                });
                let accepted = match (rejected.get(&l), unattached) {
                    (Some(errs), _) => Cond {
                        ty: "Accepted",
                        ok: false,
                        reason: "UnsupportedValue",
                        message: errs.join("; "),
                    },
                    (None, Some((true, m))) => Cond {
                        ty: "Accepted",
                        ok: false,
                        reason: "NoMatchingParent",
                        message: m,
                    },
                    (None, Some((false, m))) => Cond {
                        ty: "Accepted",
                        ok: false,
                        reason: "NotAllowedByListeners",
                        message: m,
                    },
                    (None, None) => Cond {
                        ty: "Accepted",
                        ok: true,
                        reason: "Accepted",
                        message: "attached".into(),
                    },
                };
                if accepted.ok {
                    let gns = str_of(pr, "namespace").unwrap_or(ns).to_string();
                    let gname = str_of(pr, "name").unwrap_or("").to_string();
                    for b in &backends {
                        if str_of(b, "kind") == Some("InferencePool") {
                            let pns = str_of(b, "namespace").unwrap_or(ns).to_string();
                            let pname = str_of(b, "name").unwrap_or("").to_string();
                            let entry = ((pns, pname), (gns.clone(), gname.clone()));
                            if !pools.contains(&entry) {
                                pools.push(entry);
                            }
                        }
                    }
                }
                let rr = match &resolved {
                    Ok(()) => Cond {
                        ty: "ResolvedRefs",
                        ok: true,
                        reason: "ResolvedRefs",
                        message: "every backendRef resolved".into(),
                    },
                    Err((reason, m)) => Cond {
                        ty: "ResolvedRefs",
                        ok: false,
                        reason,
                        message: m.clone(),
                    },
                };
                parents.push(json!({
                    "parentRef": pr,
                    "controllerName": input.controller,
                    "conditions": [
                        cond(accepted, old, o.generation, &input.now),
                        cond(rr, old, o.generation, &input.now),
                    ],
                }));
            }
            let mut s = Map::new();
            s.insert("parents".into(), Value::Array(parents));
            push(i, key, &o.status, s);
        }
    }
    for i in kind_indices(input.kinds, "InferencePool") {
        let Some(objs) = input.store.kinds.get(i) else {
            continue;
        };
        for (key, o) in &objs.objects {
            let ours: Vec<&(String, String)> = pools
                .iter()
                .filter(|(p, _)| p == key)
                .map(|(_, g)| g)
                .collect();
            if ours.is_empty() {
                continue;
            }
            // Entries of other controllers stay (v1 pools carry `controllerName`;
            // older ones are told apart by their parent).
            let is_ours = |p: &Value| {
                p["controllerName"] == input.controller
                    || (p.get("controllerName").is_none()
                        && input.owned.gateways.iter().any(|(gns, gn)| {
                            p["parentRef"]["name"] == gn.as_str()
                                && p["parentRef"]["namespace"] == gns.as_str()
                        }))
            };
            let old_parents = o.status["parents"].as_array().cloned().unwrap_or_default();
            let mut parents: Vec<Value> = old_parents
                .iter()
                .filter(|p| !is_ours(p))
                .cloned()
                .collect();
            for (gns, gname) in ours {
                let pr = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": gns, "name": gname});
                let old = old_parents
                    .iter()
                    .find(|p| p["parentRef"] == pr)
                    .and_then(|p| p.get("conditions"));
                parents.push(json!({
                    "parentRef": pr,
                    "controllerName": input.controller,
                    "conditions": [
                        cond(Cond { ty: "Accepted", ok: true, reason: "Accepted", message: format!("used by routes of Gateway {gns}/{gname}") }, old, o.generation, &input.now),
                        cond(Cond { ty: "ResolvedRefs", ok: true, reason: "ResolvedRefs", message: "resolved".into() }, old, o.generation, &input.now),
                    ],
                }));
            }
            let mut s = Map::new();
            s.insert("parents".into(), Value::Array(parents));
            push(i, key, &o.status, s);
        }
    }

    // Our own kinds.
    for (i, w) in input.kinds.iter().enumerate() {
        let Some(objs) = input.store.kinds.get(i) else {
            continue;
        };
        for (key, o) in &objs.objects {
            let api_version = str_of(&o.doc, "apiVersion").unwrap_or("");
            if !has_condition_status(w.kind, api_version) {
                continue;
            }
            let l = label(w.kind, w.namespaced, &key.0, &key.1);
            let c = match rejected.get(&l) {
                Some(errs) => Cond {
                    ty: "Accepted",
                    ok: false,
                    reason: "Invalid",
                    message: errs.join("; "),
                },
                None => Cond {
                    ty: "Accepted",
                    ok: true,
                    reason: "Accepted",
                    message: format!("accepted by {}", input.controller),
                },
            };
            let old = o.status.get("conditions");
            let mut s = Map::new();
            s.insert(
                "conditions".into(),
                json!([cond(c, old, o.generation, &input.now)]),
            );
            push(i, key, &o.status, s);
        }
    }
    out
}

/// `Ok` when every backendRef of route `l` resolved, else the reason and message.
fn resolved_refs(
    l: &str,
    ns: &str,
    backends: &[Value],
    warnings: &[Warning],
    services: &[&Key],
) -> Result<(), (&'static str, String)> {
    for w in warnings {
        match w {
            Warning::BackendKindUnsupported { doc, .. } if doc == l => {
                return Err(("InvalidKind", w.to_string()))
            }
            Warning::CrossNamespaceBackend { doc, .. } if doc == l => {
                return Err(("RefNotPermitted", w.to_string()))
            }
            Warning::ExtensionRefUnresolved { doc, .. } if doc == l => {
                return Err(("BackendNotFound", w.to_string()))
            }
            _ => {}
        }
    }
    for b in backends {
        let kind = str_of(b, "kind").unwrap_or("Service");
        let bns = str_of(b, "namespace").unwrap_or(ns);
        let name = str_of(b, "name").unwrap_or("");
        let unresolved = warnings.iter().any(|w| match w {
            Warning::ServiceUnresolved {
                namespace, name: n, ..
            } => kind == "Service" && namespace == bns && n == name,
            Warning::PoolUndefined { backend } => {
                kind == "InferencePool" && *backend == format!("{bns}/{name}")
            }
            _ => false,
        });
        let service_exists = services.iter().any(|(sns, sn)| sns == bns && sn == name);
        if unresolved && !service_exists {
            return Err(("BackendNotFound", format!("{kind} {bns}/{name} not found")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::k8s::kinds::KINDS;
    use crate::k8s::snapshot::{isolate, select};
    use shardgate_routing::LoadLimits;

    const SEED: &str = include_str!("../../tests/data/seed-manifests.yaml");

    fn objs(y: &str, default_ns: &str) -> Vec<Value> {
        use serde::Deserialize;
        serde_yaml_ng::Deserializer::from_str(y)
            .filter_map(|d| {
                let mut v =
                    serde_json::to_value(serde_yaml_ng::Value::deserialize(d).unwrap()).unwrap();
                if v.is_null() {
                    return None;
                }
                // As the API server stores them: namespaced kinds get one.
                let kind = v["kind"].as_str().unwrap().to_string();
                if KINDS.iter().any(|k| k.kind == kind && k.namespaced)
                    && v["metadata"].get("namespace").is_none()
                {
                    v["metadata"]["namespace"] = default_ns.into();
                }
                v["metadata"]["generation"] = 1.into();
                Some(v)
            })
            .collect()
    }

    fn run(store: &Store, outcome: Outcome) -> Vec<StatusPatch> {
        let (docs, owned) = select(store, KINDS, "ai.gateway.io/inference-controller");
        let iso = isolate(docs, &LoadLimits::default()).unwrap();
        desired(&Input {
            kinds: KINDS,
            store,
            owned: &owned,
            iso: &iso,
            controller: "ai.gateway.io/inference-controller",
            programmed: Some(outcome),
            address: Some("10.1.2.3"),
            now: "2026-01-01T00:00:00Z".into(),
        })
    }

    fn find<'a>(p: &'a [StatusPatch], kind: &str, name: &str) -> &'a Value {
        &p.iter()
            .find(|p| KINDS[p.kind_index].kind == kind && p.key.1 == name)
            .unwrap_or_else(|| panic!("no status for {kind} {name}: {p:#?}"))
            .status
    }

    #[test]
    fn the_seed_gets_accepted_statuses() {
        let store = crate::k8s::snapshot::tests::store_of(&objs(SEED, "default"));
        let p = run(&store, Outcome::Applied);
        let gc = find(&p, "GatewayClass", "ai-inference-gateway");
        assert_eq!(gc["conditions"][0]["type"], "Accepted");
        assert_eq!(gc["conditions"][0]["status"], "True", "{gc}");
        let gw = find(&p, "Gateway", "llm-gateway");
        assert_eq!(gw["conditions"][0]["reason"], "Accepted", "{gw}");
        assert_eq!(gw["conditions"][1]["status"], "True", "{gw}");
        assert_eq!(gw["listeners"][0]["name"], "inference-http");
        assert_eq!(gw["listeners"][0]["attachedRoutes"], 1, "{gw}");
        // The seed's GRPC listener is served (HTTP/2 with prior knowledge).
        assert_eq!(gw["listeners"][1]["name"], "inference-grpc");
        assert_eq!(
            gw["listeners"][1]["conditions"][0]["status"], "True",
            "{gw}"
        );
        assert_eq!(gw["listeners"][1]["attachedRoutes"], 0, "{gw}");
        assert_eq!(gw["addresses"][0]["value"], "10.1.2.3");
        let r = find(&p, "HTTPRoute", "model-routing");
        let parent = &r["parents"][0];
        assert_eq!(
            parent["controllerName"],
            "ai.gateway.io/inference-controller"
        );
        assert_eq!(parent["parentRef"]["name"], "llm-gateway");
        assert_eq!(parent["conditions"][0]["status"], "True", "{r}");
        // gpu-required is not defined: the seed's ExtensionRef is unresolved.
        assert_eq!(parent["conditions"][1]["status"], "False", "{r}");
        let ic = find(&p, "InferenceConfig", "llm-routing-config");
        assert!(p.iter().all(|x| KINDS[x.kind_index].kind != "GRPCRoute"));
        assert_eq!(ic["conditions"][0]["status"], "True");
        // Applied as written, the seed's SecurityPolicy lands in `default`, and the
        // Gateway it targets is in `ai-workloads`: left out, and told why.
        let sp = find(&p, "SecurityPolicy", "ai-security");
        assert_eq!(sp["conditions"][0]["status"], "False", "{sp}");
        let msg = sp["conditions"][0]["message"].as_str().unwrap();
        assert!(
            msg.contains("Gateway default/llm-gateway not found"),
            "{msg}"
        );
        let ip = find(&p, "InferencePolicy", "resource-aware-lb");
        assert_eq!(ip["conditions"][0]["status"], "True", "{ip}");
        // A pending restart shows on Programmed.
        let p = run(&store, Outcome::RestartRequired);
        assert_eq!(
            find(&p, "Gateway", "llm-gateway")["conditions"][1]["reason"],
            "Pending"
        );
    }

    #[test]
    fn a_written_status_is_not_written_again_and_others_parents_stay() {
        let mut all = objs(SEED, "default");
        let p = {
            let store = crate::k8s::snapshot::tests::store_of(&all);
            run(&store, Outcome::Applied)
        };
        // Put every computed status in place, plus another controller's parent.
        for patch in &p {
            let o = all
                .iter_mut()
                .find(|o| {
                    o["kind"] == KINDS[patch.kind_index].kind
                        && o["metadata"]["name"] == patch.key.1.as_str()
                })
                .unwrap();
            o["status"] = patch.status.clone();
        }
        let store = crate::k8s::snapshot::tests::store_of(&all);
        let again = run(&store, Outcome::Applied);
        assert!(again.is_empty(), "written again: {again:#?}");
        // Another controller's parent entry (and ours gone): ours is written, theirs kept.
        let route = all.iter_mut().find(|o| o["kind"] == "HTTPRoute").unwrap();
        route["status"]["parents"] = json!([{"controllerName": "example.com/other", "parentRef": {"name": "x"}, "conditions": []}]);
        let store = crate::k8s::snapshot::tests::store_of(&all);
        let again = run(&store, Outcome::Applied);
        assert_eq!(again.len(), 1, "{again:#?}");
        let parents = again[0].status["parents"].as_array().unwrap();
        assert_eq!(parents[0]["controllerName"], "example.com/other");
        assert_eq!(
            parents[1]["controllerName"],
            "ai.gateway.io/inference-controller"
        );
        assert_eq!(parents.len(), 2);
    }

    #[test]
    fn a_listener_of_an_unserved_protocol_is_not_valid() {
        assert!(SEED.contains("protocol: GRPC"));
        let seed = SEED.replacen("protocol: GRPC", "protocol: TLS", 1);
        let store = crate::k8s::snapshot::tests::store_of(&objs(&seed, "default"));
        let p = run(&store, Outcome::Applied);
        let gw = find(&p, "Gateway", "llm-gateway");
        assert_eq!(gw["conditions"][0]["reason"], "ListenersNotValid", "{gw}");
        let l = &gw["listeners"][1]["conditions"][0];
        assert_eq!(l["status"], "False", "{l}");
        assert_eq!(l["reason"], "UnsupportedProtocol", "{l}");
    }

    #[test]
    fn a_grpc_route_is_accepted_and_counted_on_the_grpc_listener() {
        let mut all = objs(SEED, "default");
        all.extend(objs(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: ai-workloads}\nspec:\n  parentRefs: [{name: llm-gateway, sectionName: inference-grpc}]\n  rules: [{backendRefs: [{name: bert-service, port: 8080}]}]\n",
            "default",
        ));
        let store = crate::k8s::snapshot::tests::store_of(&all);
        let p = run(&store, Outcome::Applied);
        let c = &find(&p, "GRPCRoute", "g")["parents"][0]["conditions"][0];
        assert_eq!(c["type"], "Accepted", "{c}");
        assert_eq!(c["status"], "True", "{c}");
        let gw = find(&p, "Gateway", "llm-gateway");
        assert_eq!(gw["conditions"][0]["status"], "True", "{gw}");
        let listeners = gw["listeners"].as_array().unwrap();
        let grpc = listeners
            .iter()
            .find(|l| l["name"] == "inference-grpc")
            .unwrap();
        assert_eq!(grpc["attachedRoutes"], 1, "{grpc}");
        assert_eq!(grpc["supportedKinds"][0]["kind"], "GRPCRoute");
        assert_eq!(grpc["conditions"][0]["status"], "True", "{grpc}");
        // The HTTP listener counts the HTTPRoutes only (the GRPCRoute names its section).
        let http = listeners
            .iter()
            .find(|l| l["name"] == "inference-http")
            .unwrap();
        assert_eq!(
            http["supportedKinds"].as_array().unwrap().len(),
            2,
            "{http}"
        );
    }

    #[test]
    fn a_bad_route_gets_accepted_false_and_the_gateway_stays() {
        let mut all = objs(SEED, "default");
        all.extend(objs(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken, namespace: ai-workloads}\nspec:\n  parentRefs: [{name: llm-gateway}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: '(('}}]\n    backendRefs: [{name: bert-service, port: 8080}]\n",
            "default",
        ));
        let store = crate::k8s::snapshot::tests::store_of(&all);
        let p = run(&store, Outcome::Applied);
        let r = find(&p, "HTTPRoute", "broken");
        let c = &r["parents"][0]["conditions"][0];
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "UnsupportedValue");
        assert!(
            c["message"]
                .as_str()
                .unwrap()
                .contains("regular expression"),
            "{c}"
        );
        let gw = find(&p, "Gateway", "llm-gateway");
        assert_eq!(gw["conditions"][0]["status"], "True");
        assert_eq!(
            gw["listeners"][0]["attachedRoutes"], 1,
            "the bad route is not counted"
        );
    }
}
