//! What the admin port shows about endpoints: `/debug/endpoints` (JSON: per
//! endpoint its telemetry, staleness, health, in-flight, ejection, the models
//! and adapters its `GET /v1/models` listed (`served_models`, null until a
//! poll succeeded: it then serves any model) and score per scorer under the
//! default profile; `tls`: the `BackendTLSPolicy` and verified name when it
//! is reached over TLS, else null; the prefix-sharing counters; and
//! `pick_decisions`: how many picks the profile's picker, a session's own
//! endpoint or a session's spill past the load bound decided, as in
//! `gateway_pick_decisions_total`),
//! `/readyz` (ready when every model the routes serve has at least one healthy
//! endpoint), and the telemetry-derived metrics
//! (`gateway_gpu_utilization_percent`, `gateway_gpu_memory_used_ratio`,
//! `gateway_endpoint_healthy`, `gateway_endpoint_queue_depth`,
//! `gateway_telemetry_scrape_age_seconds`) plus
//! `gateway_prefix_share_records_total{result="received|forwarded|dropped"}`.

use std::sync::Arc;
use std::time::Instant;

use shardgate_promtext::{Kind, PromWriter, Style};
use shardgate_routing::scoring::{Candidate, PickRequest, Picker, Profile, ScoreBreakdown, Scorer};
use shardgate_routing::telemetry::SignalKind;
use shardgate_routing::{RequestView, RoutingTable};

use crate::control::ControlShared;
use crate::metrics::MetricsHub;

/// What the views list, from the routing table in force (a live reload of
/// endpoints replaces it).
pub struct EndpointLists {
    /// Endpoint addresses and backends.
    pub endpoints: Vec<(String, String)>,
    /// Per endpoint, the `BackendTLSPolicy` (`namespace/name`) and hostname
    /// it is reached over TLS with; `None` = plaintext.
    pub tls: Vec<Option<(String, String)>>,
    /// Per served model: its endpoint ids (through the routes, first listener).
    pub model_endpoints: Vec<(String, Vec<usize>)>,
    /// Per endpoint: no backend names it any more (kept for stable indices).
    pub retired: Vec<bool>,
    /// The default scheduling profile (the score columns).
    pub profile: Profile,
}

impl EndpointLists {
    /// The lists of `table`.
    pub fn of(table: &RoutingTable) -> Self {
        let eps = table.endpoints();
        EndpointLists {
            endpoints: eps
                .iter()
                .map(|e| (e.addr.to_string(), e.backend.clone()))
                .collect(),
            tls: eps
                .iter()
                .map(|e| {
                    e.tls
                        .as_ref()
                        .map(|t| (t.policy.clone(), t.hostname.clone()))
                })
                .collect(),
            model_endpoints: model_endpoints(table),
            retired: eps.iter().map(|e| e.retired).collect(),
            profile: Profile::default(),
        }
    }

    /// The same lists scored under `profile`.
    pub fn with_profile(self, profile: Profile) -> Self {
        EndpointLists { profile, ..self }
    }
}

/// Everything the endpoint views read.
pub struct EndpointsView {
    /// The lists in force.
    pub lists: Arc<arc_swap::ArcSwap<EndpointLists>>,
    /// Control-thread state.
    pub control: Arc<ControlShared>,
    /// Shard metrics (in-flight, ejection).
    pub hub: Arc<MetricsHub>,
}

/// For each model the routes list, the endpoints a request naming it reaches
/// (resolved with the real matcher on the first listener).
pub fn model_endpoints(table: &RoutingTable) -> Vec<(String, Vec<usize>)> {
    table
        .models()
        .iter()
        .map(|m| (m.clone(), endpoints_for_model(table, m)))
        .collect()
}

/// The endpoints a chat request whose body names `model` (and that sends no
/// header) reaches on the first served listener, by id, each once; also for
/// a model no route names (a catch-all rule reaches it).
pub fn endpoints_for_model(table: &RoutingTable, model: &str) -> Vec<usize> {
    let Some(listener) = table.listeners().iter().position(|l| l.served) else {
        return Vec::new();
    };
    let view = RequestView {
        method: "POST",
        path: "/v1/chat/completions",
        query: None,
        host: None,
        headers: &|_| None,
        model: Some(model),
    };
    let mut eps: Vec<usize> = table
        .match_request(listener, &view)
        .map(|r| {
            r.backends
                .iter()
                .filter(|g| g.weight > 0)
                .flat_map(|g| g.endpoints.iter().copied())
                .collect()
        })
        .unwrap_or_default();
    eps.sort_unstable();
    eps.dedup();
    eps
}

impl EndpointsView {
    /// `Ok(())` when every model has a healthy endpoint, else the models without one.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let health = self.control.health.load();
        let lists = self.lists.load();
        let missing: Vec<String> = lists
            .model_endpoints
            .iter()
            .filter(|(_, eps)| !eps.iter().any(|e| health.get(*e).is_none_or(|h| h.healthy)))
            .map(|(m, _)| m.clone())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }

    /// Every endpoint's filter verdict and scores under the default profile (no
    /// prefix affinity, no local in-flight), from `snap`.
    fn breakdown(
        &self,
        snap: &shardgate_routing::scoring::ScoringSnapshot,
        now: Instant,
    ) -> Vec<ScoreBreakdown> {
        let lists = self.lists.load();
        let cands: Vec<Candidate> = (0..lists.endpoints.len())
            .map(|endpoint| Candidate {
                endpoint,
                prefix_blocks: 0,
                held_blocks: 0,
                held_families: 0,
            })
            .collect();
        let zeros = vec![0u32; cands.len()];
        let mut out = vec![ScoreBreakdown::default(); cands.len()];
        let req = PickRequest {
            model: None,
            adapter: None,
            prefix_total_blocks: 0,
            session: None,
        };
        let _ = Picker::new(0).pick_explained(
            &lists.profile,
            snap,
            &req,
            &cands,
            &zeros,
            now,
            &mut out,
        );
        out
    }

    /// `/debug/endpoints` body.
    pub fn debug_json(&self) -> Vec<u8> {
        let lists = self.lists.load();
        let now = Instant::now();
        let snap = self.control.snapshot.load();
        let health = self.control.health.load();
        // From the shards' reports: current, not as of the last metrics publication.
        let inflight = self.control.reports.endpoint_in_flight();
        let ejected = self.hub.endpoint_ejected();
        let breakdown = self.breakdown(&snap, now);
        let mut out = Vec::new();
        for (id, (addr, backend)) in lists.endpoints.iter().enumerate() {
            let view = snap.endpoint(id);
            let t = view.map(|v| &v.telemetry);
            let signal = |k: SignalKind| t.and_then(|t| t.value(k));
            let scores: serde_json::Map<String, serde_json::Value> = breakdown
                .get(id)
                .map(|b| {
                    Scorer::ALL
                        .iter()
                        .filter_map(|s| {
                            b.scores[s.index()]
                                .map(|v| (s.as_str().to_string(), serde_json::json!(v)))
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(serde_json::json!({
                "id": id,
                "address": addr,
                "backend": backend,
                "retired": lists.retired.get(id).copied().unwrap_or(false),
                "tls": lists.tls.get(id).and_then(Option::as_ref).map(|(policy, hostname)| {
                    serde_json::json!({"policy": policy, "hostname": hostname})
                }),
                "health": health.get(id),
                "in_flight": inflight.get(id),
                "ejected_on_some_shard": ejected.get(id),
                "on_this_node": view.map(|v| v.local),
                "served_models": view.and_then(|v| v.models.as_ref()).map(|m| serde_json::json!({
                    "models": m.models,
                    "adapters": m.adapters.iter().map(|a| serde_json::json!({"name": a.name, "base": a.base})).collect::<Vec<_>>(),
                })),
                "telemetry": {
                    "server": t.map(|t| t.server.as_str()),
                    "last_scrape_ms_ago": t.and_then(|t| t.age(now)).map(|d| d.as_millis() as u64),
                    "consecutive_scrape_failures": t.map(|t| t.consecutive_failures),
                    "waiting": signal(SignalKind::Waiting),
                    "running": signal(SignalKind::Running),
                    "kv_usage": signal(SignalKind::KvUsage),
                    "gpu_utilization": signal(SignalKind::GpuUtil),
                    "gpu_memory_used_ratio": signal(SignalKind::GpuMemUsed),
                    "ttft_seconds": signal(SignalKind::Ttft),
                    "e2e_latency_seconds": signal(SignalKind::E2eLatency),
                    "prefix_cache_hit_rate": t.and_then(|t| t.prefix_cache_hit_rate),
                    "served_model": t.and_then(|t| t.served_model.as_deref()),
                    "lora": t.and_then(|t| t.lora()).map(|l| serde_json::json!({"max_lora": l.max_lora, "running": l.running, "waiting": l.waiting})),
                    "stale": t.map(|t| t.stale.iter().map(|k| k.as_str()).collect::<Vec<_>>()),
                    "missing": t.map(|t| t.missing.iter().map(|k| k.as_str()).collect::<Vec<_>>()),
                },
                "kv_events": self.control.precise.status(id),
                "scores": {
                    "profile": lists.profile.kind.as_str(),
                    "status": breakdown.get(id).map(|b| format!("{:?}", b.status)),
                    "total": breakdown.get(id).and_then(|b| b.total),
                    "by_scorer": scores,
                },
            }));
        }
        let share = self.control.prefix_share_stats();
        let decided: serde_json::Map<String, serde_json::Value> = crate::metrics::PICK_DECISIONS
            .iter()
            .zip(self.hub.pick_decisions())
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        serde_json::to_vec_pretty(&serde_json::json!({
            "generation": snap.generation,
            "endpoints": out,
            "pick_decisions": decided,
            "prefix_share": {
                "shards": share.shards,
                "received": share.received,
                "forwarded": share.forwarded,
                "dropped": share.dropped,
            },
        }))
        .unwrap_or_default()
    }

    /// Telemetry-derived metrics, appended to `/metrics` (Prometheus text, written by
    /// [`shardgate_promtext`]).
    pub fn render_metrics(&self, out: &mut String) {
        let lists = self.lists.load();
        let now = Instant::now();
        let snap = self.control.snapshot.load();
        let health = self.control.health.load();
        let model_of = |id: usize| -> String {
            let names: Vec<&str> = lists
                .model_endpoints
                .iter()
                .filter(|(_, eps)| eps.contains(&id))
                .map(|(m, _)| m.as_str())
                .collect();
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(",")
            }
        };
        let telemetry = |id: usize| snap.endpoint(id).map(|v| &v.telemetry);
        let mut w = PromWriter::new(out, Style::PLAIN);
        w.family(
            "gateway_gpu_utilization_percent",
            "GPU utilisation per endpoint, 0-100: the GPU's own utilisation where the backend exports it (DCGM, Triton), else, for vLLM-family servers, their KV-cache utilisation.",
            Kind::Gauge,
        );
        for (id, (addr, _)) in lists.endpoints.iter().enumerate() {
            let v = telemetry(id).and_then(|t| {
                t.value(SignalKind::GpuUtil)
                    .or_else(|| t.value(SignalKind::KvUsage))
            });
            if let Some(v) = v {
                let model = model_of(id);
                w.sample("", &[("endpoint", addr), ("model", &model)], v * 100.0);
            }
        }
        w.family(
            "gateway_gpu_memory_used_ratio",
            "GPU memory (or, for vLLM-family servers, KV-cache) in use, 0-1.",
            Kind::Gauge,
        );
        for (id, (addr, _)) in lists.endpoints.iter().enumerate() {
            if let Some(v) = telemetry(id).and_then(|t| {
                t.value(SignalKind::GpuMemUsed)
                    .or_else(|| t.value(SignalKind::KvUsage))
            }) {
                let model = model_of(id);
                w.sample("", &[("endpoint", addr), ("model", &model)], v);
            }
        }
        w.family(
            "gateway_endpoint_queue_depth",
            "Requests waiting in the endpoint's own queue (from its telemetry).",
            Kind::Gauge,
        );
        for (id, (addr, _)) in lists.endpoints.iter().enumerate() {
            if let Some(v) = telemetry(id).and_then(|t| t.value(SignalKind::Waiting)) {
                w.sample("", &[("endpoint", addr)], v);
            }
        }
        w.family(
            "gateway_endpoint_healthy",
            "1 while the endpoint passes its health checks.",
            Kind::Gauge,
        );
        for (id, (addr, _)) in lists.endpoints.iter().enumerate() {
            let ok = health.get(id).is_none_or(|h| h.healthy);
            w.sample("", &[("endpoint", addr)], ok);
        }
        let breakdown = self.breakdown(&snap, now);
        w.family(
            "gateway_endpoint_score",
            "Endpoint score (0-1) under the gateway's default scheduling profile from the latest telemetry, without prefix affinity.",
            Kind::Gauge,
        );
        for (id, (addr, _)) in lists.endpoints.iter().enumerate() {
            if let Some(total) = breakdown.get(id).and_then(|b| b.total) {
                let labels = [
                    ("endpoint", addr.as_str()),
                    ("profile", lists.profile.kind.as_str()),
                ];
                w.sample("", &labels, total);
            }
        }
        let share = self.control.prefix_share_stats();
        w.family(
            "gateway_prefix_share_records_total",
            "Prefix-index records shared between shards: received from a shard, forwarded to another shard, dropped on a full ring.",
            Kind::Counter,
        );
        for (result, n) in [
            ("received", share.received),
            ("forwarded", share.forwarded),
            ("dropped", share.dropped),
        ] {
            w.sample("", &[("result", result)], n);
        }
        w.family(
            "gateway_telemetry_scrape_age_seconds",
            "Time since the endpoint's last successful telemetry scrape.",
            Kind::Gauge,
        );
        for (id, (addr, _)) in lists.endpoints.iter().enumerate() {
            if let Some(age) = telemetry(id).and_then(|t| t.age(now)) {
                w.sample("", &[("endpoint", addr)], age.as_secs_f64());
            }
        }
    }
}
