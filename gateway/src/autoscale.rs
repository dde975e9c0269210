//! Autoscaling signals per model, for KEDA (`metrics-api` scaler on
//! `GET /autoscale` of the admin listener) and for an HPA on an external
//! metric (`gateway_model_desired_replicas` and
//! `gateway_model_forecast_replicas` through a Prometheus adapter).
//!
//! A thread of its own wakes every `--autoscale-interval` (10 s) and, per model
//! the routes serve, reads what the gateway already has, with no new work on
//! the shards:
//! - the **arrival rate**: requests answered since the last tick (the shards'
//!   published metrics) over the interval;
//! - **queueing**: requests waiting in the model's backends (their `waiting`
//!   telemetry) and in the gateway (admission and batching queues);
//! - **running** requests and the backends' mean **latency** (their e2e
//!   latency telemetry; else running / rate by Little's law; else 1 s);
//! - the measured **capacity per replica** ([`shardgate_autoscale::Capacity`]:
//!   the most running requests a replica sustained with nothing waiting and
//!   TTFT within `--autoscale-ttft-slo`, 2 s; `--autoscale-default-capacity`,
//!   8, until measured);
//! - **desired replicas** now: (running + waiting in backends and gateway,
//!   or rate × latency when larger) over capacity at 80 % utilisation;
//! - a **forecast** of the arrival rate and desired replicas 1 to 5 minutes
//!   ahead: Holt-Winters with a daily season (with intervals of 10 s or more;
//!   shorter ones keep the trend only) and a damped trend
//!   (`bench/results/forecast.md`: 9.3 % error and a 310 s median lead 5
//!   minutes ahead on a day-night replay).
//!
//! Published as one read-only report (`arc-swap`) that `/autoscale` and
//! `/metrics` render. Cost: one pass over the models' endpoints per interval.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shardgate_autoscale::{
    desired_replicas, littles_law, Capacity, HoltWinters, Params, ReplicaSample,
};
use shardgate_routing::telemetry::SignalKind;

use crate::control::ControlShared;
use crate::metrics::MetricsHub;

/// Forecast horizons, minutes.
pub const HORIZONS_MIN: [u64; 5] = [1, 2, 3, 4, 5];
/// Longest daily season kept per model, in samples (a day of 10 s samples).
pub const MAX_SEASON: usize = 8_640;

/// `--autoscale-*` settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How often the signals are computed (`--autoscale-interval`).
    pub interval: Duration,
    /// TTFT a replica must keep for its concurrency to count as capacity.
    pub ttft_slo: Duration,
    /// Capacity per replica until one is measured.
    pub default_capacity: f64,
}

/// One model's signals.
#[derive(Debug, Clone, Default)]
pub struct ModelSignals {
    /// The model.
    pub model: String,
    /// Requests/s over the last interval.
    pub arrival_rate: f64,
    /// Requests waiting in the model's backends.
    pub queued_backend: f64,
    /// Requests held in the gateway's queues.
    pub queued_gateway: f64,
    /// Requests running in the model's backends.
    pub running: f64,
    /// Mean seconds a request spends in a backend.
    pub latency: f64,
    /// Requests one replica runs within the SLO.
    pub capacity: f64,
    /// Whether [`Self::capacity`] is measured (else the default).
    pub capacity_measured: bool,
    /// Healthy replicas now.
    pub ready: u32,
    /// Replicas needed now.
    pub desired: u32,
    /// Per [`HORIZONS_MIN`]: (forecast requests/s, replicas needed).
    pub forecast: [(f64, u32); 5],
}

/// The latest signals of every model.
#[derive(Debug, Default)]
pub struct Report {
    /// When they were computed (None before the first tick).
    pub at: Option<Instant>,
    /// Per model, in the routes' model order.
    pub models: Vec<ModelSignals>,
}

/// Shared by the autoscale thread (writer) and the admin thread (reader).
pub struct AutoscaleView {
    report: ArcSwap<Report>,
    interval: Duration,
    /// Dropping it stops the thread (tests; the process otherwise keeps it).
    _stop: Sender<()>,
}

struct ModelState {
    model: String,
    endpoints: Vec<usize>,
    last_total: Option<u64>,
    capacity: Capacity,
    forecast: HoltWinters,
}

/// Start the thread; `lists` says, per model, which endpoints its requests
/// reach (a live reload replaces it: models and endpoints follow, each model's
/// learned capacity and forecast carry over).
pub fn spawn(
    settings: Settings,
    lists: Arc<ArcSwap<crate::endpoints_view::EndpointLists>>,
    hub: Arc<MetricsHub>,
    control: Arc<ControlShared>,
) -> std::io::Result<Arc<AutoscaleView>> {
    let (stop, stopped) = std::sync::mpsc::channel();
    let view = Arc::new(AutoscaleView {
        report: ArcSwap::from_pointee(Report::default()),
        interval: settings.interval,
        _stop: stop,
    });
    let secs = settings.interval.as_secs_f64().max(0.001);
    let per_day = (86_400.0 / secs).round() as usize;
    let season = if settings.interval >= Duration::from_secs(10) && per_day <= MAX_SEASON {
        per_day
    } else {
        1
    };
    let out = view.clone();
    std::thread::Builder::new()
        .name("autoscale".into())
        .spawn(move || run(settings, season, &lists, &hub, &control, &out, &stopped))?;
    Ok(view)
}

/// Bring `models` in line with `lists`: new models start fresh, kept ones
/// take their new endpoints (retired ones left out), gone ones are dropped.
fn follow(
    models: &mut Vec<ModelState>,
    lists: &crate::endpoints_view::EndpointLists,
    settings: &Settings,
    season: usize,
) {
    let live = |eps: &[usize]| -> Vec<usize> {
        eps.iter()
            .copied()
            .filter(|&e| !lists.retired.get(e).copied().unwrap_or(false))
            .collect()
    };
    models.retain(|m| {
        lists
            .model_endpoints
            .iter()
            .any(|(name, _)| *name == m.model)
    });
    for (model, eps) in &lists.model_endpoints {
        match models.iter_mut().find(|m| m.model == *model) {
            Some(m) => m.endpoints = live(eps),
            None => models.push(ModelState {
                model: model.clone(),
                endpoints: live(eps),
                last_total: None,
                capacity: Capacity::new(settings.default_capacity),
                forecast: HoltWinters::new(Params {
                    season,
                    ..Params::default()
                }),
            }),
        }
    }
}

fn run(
    settings: Settings,
    season: usize,
    lists: &ArcSwap<crate::endpoints_view::EndpointLists>,
    hub: &MetricsHub,
    control: &ControlShared,
    out: &AutoscaleView,
    stopped: &Receiver<()>,
) {
    let mut last = Instant::now();
    let mut models = Vec::new();
    let mut seen = lists.load_full();
    follow(&mut models, &seen, &settings, season);
    loop {
        let now_lists = lists.load_full();
        if !Arc::ptr_eq(&now_lists, &seen) {
            follow(&mut models, &now_lists, &settings, season);
            seen = now_lists;
        }
        match stopped.recv_timeout(settings.interval) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64().max(1e-3);
        last = now;
        let load = hub.model_load();
        let report = tick(&settings, &mut models, &load, control, dt, now);
        out.report.store(Arc::new(report));
    }
}

fn tick(
    settings: &Settings,
    models: &mut [ModelState],
    load: &HashMap<String, (u64, i64)>,
    control: &ControlShared,
    dt: f64,
    now: Instant,
) -> Report {
    let snapshot = control.snapshot.load();
    let health = control.health.load();
    let slo = settings.ttft_slo.as_secs_f64();
    let horizon_samples =
        |min: u64| ((min * 60) as f64 / settings.interval.as_secs_f64().max(0.001)).round() as u64;
    let mut rows = Vec::with_capacity(models.len());
    for m in models.iter_mut() {
        let (total, queued_gateway) = load.get(&m.model).copied().unwrap_or((0, 0));
        let arrival_rate = match m.last_total {
            Some(prev) => total.saturating_sub(prev) as f64 / dt,
            None => 0.0,
        };
        m.last_total = Some(total);
        let mut replicas = Vec::with_capacity(m.endpoints.len());
        let (mut running, mut waiting, mut ready) = (0.0, 0.0, 0u32);
        let (mut lat_sum, mut lat_n) = (0.0, 0u32);
        for &ep in &m.endpoints {
            if health.get(ep).is_none_or(|h| h.healthy) {
                ready += 1;
            }
            let Some(v) = snapshot.endpoint(ep) else {
                continue;
            };
            let val = |k| {
                v.telemetry
                    .value_at(k, now)
                    .filter(|x: &f64| x.is_finite() && *x >= 0.0)
            };
            let r = ReplicaSample {
                running: val(SignalKind::Running).unwrap_or(0.0),
                waiting: val(SignalKind::Waiting).unwrap_or(0.0),
                ttft: val(SignalKind::Ttft),
            };
            running += r.running;
            waiting += r.waiting;
            if let Some(l) = val(SignalKind::E2eLatency) {
                lat_sum += l;
                lat_n += 1;
            }
            replicas.push(r);
        }
        m.capacity.observe(&replicas, slo);
        let latency = if lat_n > 0 {
            lat_sum / f64::from(lat_n)
        } else if arrival_rate > 0.0 && running > 0.0 {
            running / arrival_rate
        } else {
            1.0
        };
        let cap = m.capacity.per_replica();
        let queued_gateway = queued_gateway.max(0) as f64;
        let demand = (running + waiting + queued_gateway).max(littles_law(arrival_rate, latency));
        m.forecast.observe(arrival_rate);
        let forecast = HORIZONS_MIN.map(|min| {
            let rate = m.forecast.forecast(horizon_samples(min));
            (rate, desired_replicas(littles_law(rate, latency), cap))
        });
        rows.push(ModelSignals {
            model: m.model.clone(),
            arrival_rate,
            queued_backend: waiting,
            queued_gateway,
            running,
            latency,
            capacity: cap,
            capacity_measured: m.capacity.measured(),
            ready,
            desired: desired_replicas(demand, cap),
            forecast,
        });
    }
    Report {
        at: Some(now),
        models: rows,
    }
}

impl AutoscaleView {
    /// The `/autoscale` body: per model, the signals, keyed by model name so
    /// that KEDA's `metrics-api` scaler reads e.g. `models.llama.desired_replicas`.
    pub fn json(&self) -> Vec<u8> {
        let r = self.report.load();
        let mut models = serde_json::Map::new();
        for m in &r.models {
            let forecast: serde_json::Map<String, serde_json::Value> = HORIZONS_MIN
                .iter()
                .zip(m.forecast)
                .map(|(min, (rate, replicas))| {
                    (
                        format!("{min}m"),
                        serde_json::json!({"arrival_rate": rate, "desired_replicas": replicas}),
                    )
                })
                .collect();
            models.insert(
                m.model.clone(),
                serde_json::json!({
                    "arrival_rate": m.arrival_rate,
                    "queued_backend": m.queued_backend,
                    "queued_gateway": m.queued_gateway,
                    "running": m.running,
                    "latency_seconds": m.latency,
                    "capacity_per_replica": m.capacity,
                    "capacity_measured": m.capacity_measured,
                    "ready_replicas": m.ready,
                    "desired_replicas": m.desired,
                    "forecast": forecast,
                }),
            );
        }
        let body = serde_json::json!({
            "interval_seconds": self.interval.as_secs_f64(),
            "age_seconds": r.at.map(|t| t.elapsed().as_secs_f64()),
            "models": models,
        });
        serde_json::to_vec_pretty(&body).unwrap_or_default()
    }

    /// The signals as Prometheus metrics (nothing before the first tick).
    pub fn render(&self, out: &mut String) {
        use shardgate_promtext::{Kind, PromWriter, Style};
        let r = self.report.load();
        if r.at.is_none() {
            return;
        }
        let mut w = PromWriter::new(out, Style::PLAIN);
        type Get = fn(&ModelSignals) -> f64;
        let per_model: [(&str, &str, Get); 3] = [
            ("gateway_model_arrival_rate", "Requests per second for the model over the last autoscaling interval.", |m| m.arrival_rate),
            ("gateway_model_capacity_per_replica", "Requests one replica of the model runs within the TTFT SLO (measured; the default until measured).", |m| m.capacity),
            ("gateway_model_desired_replicas", "Replicas the model needs now at 80 % of the measured capacity.", |m| f64::from(m.desired)),
        ];
        for (name, help, get) in per_model {
            w.family(name, help, Kind::Gauge);
            for m in &r.models {
                w.sample("", &[("model", &m.model)], get(m));
            }
        }
        w.family("gateway_model_queued", "Requests waiting for the model: in its backends (where=\"backend\", their telemetry) or in the gateway's admission and batching queues (where=\"gateway\").", Kind::Gauge);
        for m in &r.models {
            for (place, v) in [("backend", m.queued_backend), ("gateway", m.queued_gateway)] {
                w.sample("", &[("model", &m.model), ("where", place)], v);
            }
        }
        w.family("gateway_model_forecast_replicas", "Replicas the model will need, by horizon: its arrival rate forecast by Holt-Winters (daily season, damped trend) times the latency, over the capacity.", Kind::Gauge);
        for m in &r.models {
            for (min, (_, replicas)) in HORIZONS_MIN.iter().zip(m.forecast) {
                let horizon = format!("{min}m");
                w.sample("", &[("model", &m.model), ("horizon", &horizon)], replicas);
            }
        }
    }
}
