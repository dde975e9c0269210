//! Model pre-warming (`InferenceConfig.spec.modelPrewarming`): at start, each
//! listed model (or LoRA adapter) gets a short real inference on
//! `replicasPerModel` of the endpoints its routes reach (default 1), so the
//! first client request does not pay the cold start (weights or an adapter
//! loading, CUDA graphs being captured, an empty prefix cache).
//!
//! - The warm-up is `POST /v1/completions` `{"model", "prompt", "max_tokens":
//!   1}` with the configured `prompt` (a common system-prompt prefix warms the
//!   prefix cache too; default a one-word prompt). A 2xx answer makes the
//!   (endpoint, model) warm.
//! - Until then the pair is **cold**: with `mode: preferred` (default) a
//!   request for that model goes to a cold endpoint only when no warm one can
//!   take it (none healthy or all saturated); with `strict`, never (503
//!   `model_warming`, `Retry-After: 1`, when only cold endpoints are left).
//!   Endpoints not chosen for warm-up are treated as warm, as without the
//!   field.
//! - Each try has `timeout` (default 120 s: a load of weights). A failed try
//!   is retried after 1 s, 2 s, 4 s … (at most 30 s), up to `maxAttempts`
//!   (default 5); then the pair is given up (logged, `failed`) and treated
//!   as warm again, so a broken warm-up never hides an endpoint for good
//!   (health checks and passive ejection still apply).
//! - At most `maxConcurrent` (default 4) warm-ups run at once: that many
//!   worker threads, each with its share of the pairs, off the shards
//!   (blocking sockets with timeouts, on their own threads).
//! - Shards read a pair's state with one atomic load, only for models that
//!   are pre-warmed and only while some pair is cold; metrics:
//!   `gateway_endpoint_warm{endpoint,model}` (1 warm, 0 cold or given up) and
//!   `gateway_prewarm_duration_seconds` (from start to the successful try).
//!
//! Endpoints that appear later (a live reload) are warmed too: every new
//! endpoint that a pre-warmed model's routes reach is cold until its warm-up
//! succeeds, before the reload's state routes to it ([`start`]). A reload
//! that keeps the `modelPrewarming` models and mode keeps every pair's state;
//! one that changes them starts over as at start.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_routing::config::{ModelPrewarming, PrewarmMode};

/// Default `timeout` of one warm-up try.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Default `maxAttempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default `maxConcurrent`.
pub const DEFAULT_MAX_CONCURRENT: u32 = 4;
/// First backoff between tries (doubling, at most [`MAX_BACKOFF`]).
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff between tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Upper bounds of `gateway_prewarm_duration_seconds`, in seconds.
const BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// State of one (model, endpoint) pair.
const NOT_TARGETED: u8 = 0;
const COLD: u8 = 1;
const WARM: u8 = 2;
const GIVEN_UP: u8 = 3;

/// Which (model, endpoint) pairs are warm; shared read-only by the shards,
/// written by the warm-up workers.
pub struct Warmth {
    models: Vec<String>,
    /// Endpoint addresses by id (a reload adds some).
    endpoints: arc_swap::ArcSwap<Vec<String>>,
    /// Endpoint ids the states have room for.
    capacity: usize,
    strict: bool,
    /// `models.len() × capacity` states, model-major.
    states: Vec<AtomicU8>,
    /// Pairs still cold (the shards skip every check at 0).
    cold: AtomicU64,
    /// Histogram of successful warm-ups: per bucket, +Inf, sum in µs.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
    started: AtomicBool,
}

impl Warmth {
    /// No pair cold yet, for `models` over `endpoints` (their addresses),
    /// with room for `capacity` endpoint ids (at least as many as now).
    pub fn new(
        models: Vec<String>,
        endpoints: Vec<String>,
        mode: PrewarmMode,
        capacity: usize,
    ) -> Self {
        let capacity = capacity.max(endpoints.len());
        let n = models.len() * capacity;
        Warmth {
            models,
            endpoints: arc_swap::ArcSwap::from_pointee(endpoints),
            capacity,
            strict: mode == PrewarmMode::Strict,
            states: (0..n).map(|_| AtomicU8::new(NOT_TARGETED)).collect(),
            cold: AtomicU64::new(0),
            buckets: Default::default(),
            sum_us: AtomicU64::new(0),
            started: AtomicBool::new(false),
        }
    }

    fn slot(&self, model: usize, ep: usize) -> Option<&AtomicU8> {
        if ep >= self.capacity {
            return None;
        }
        self.states.get(model * self.capacity + ep)
    }

    /// A reload's endpoint addresses (ids kept, new ones appended).
    pub fn set_endpoints(&self, endpoints: Vec<String>) {
        self.endpoints.store(Arc::new(endpoints));
    }

    /// Whether `spec` warms what this state tracks (the same models and mode).
    pub fn follows(&self, spec: &ModelPrewarming) -> bool {
        self.models == spec.models
            && self.strict == (spec.mode.unwrap_or_default() == PrewarmMode::Strict)
    }

    fn set(&self, model: usize, ep: usize, to: u8) {
        if let Some(s) = self.slot(model, ep) {
            let was = s.swap(to, Ordering::AcqRel);
            if was == COLD && to != COLD {
                self.cold.fetch_sub(1, Ordering::AcqRel);
            } else if was != COLD && to == COLD {
                self.cold.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Whether any pair is still cold (a shard checks nothing otherwise).
    #[inline]
    pub fn any_cold(&self) -> bool {
        self.cold.load(Ordering::Acquire) > 0
    }

    /// Whether cold endpoints get no traffic at all (`mode: strict`).
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// The index of a pre-warmed model.
    pub fn model_index(&self, model: &str) -> Option<usize> {
        self.models.iter().position(|m| m == model)
    }

    /// Whether endpoint `ep` is still warming up for model `model`.
    #[inline]
    pub fn is_cold(&self, model: usize, ep: usize) -> bool {
        self.slot(model, ep)
            .is_some_and(|s| s.load(Ordering::Acquire) == COLD)
    }

    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// `gateway_endpoint_warm` and `gateway_prewarm_duration_seconds`, in the
    /// Prometheus text format (nothing before the warm-ups were started).
    pub fn render(&self, out: &mut String) {
        use shardgate_promtext::{Kind, PromWriter, Style};
        if !self.started.load(Ordering::Acquire) {
            return;
        }
        let mut w = PromWriter::new(out, Style::PLAIN);
        w.family("gateway_endpoint_warm", "Whether a pre-warmed model's warm-up on the endpoint succeeded (modelPrewarming): 1 warm, 0 still cold or given up.", Kind::Gauge);
        let endpoints = self.endpoints.load();
        for (mi, m) in self.models.iter().enumerate() {
            for (ei, e) in endpoints.iter().enumerate() {
                let Some(s) = self.slot(mi, ei) else { continue };
                let v = match s.load(Ordering::Acquire) {
                    NOT_TARGETED => continue,
                    WARM => 1u8,
                    _ => 0,
                };
                w.sample("", &[("endpoint", e), ("model", m)], v);
            }
        }
        w.family("gateway_prewarm_duration_seconds", "Time from the gateway's start to a successful warm-up of a model on an endpoint (retries and the cold start included).", Kind::Histogram);
        let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
        let counts = self.buckets.iter().map(|b| b.load(Ordering::Relaxed));
        w.histogram(
            &[],
            bounds.zip(counts),
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
    }
}

impl Warmth {
    /// The warm-up state for `table`'s InferenceConfig `modelPrewarming`, when
    /// it is enabled and lists models, with room for `capacity` endpoint ids.
    pub fn for_table(
        table: &shardgate_routing::RoutingTable,
        capacity: usize,
    ) -> Option<Arc<Warmth>> {
        let p = spec_of(table)?;
        Some(Arc::new(Warmth::new(
            p.models.clone(),
            table
                .endpoints()
                .iter()
                .map(|e| e.addr.to_string())
                .collect(),
            p.mode.unwrap_or_default(),
            capacity,
        )))
    }
}

/// `table`'s `modelPrewarming`, when enabled with models.
pub fn spec_of(table: &shardgate_routing::RoutingTable) -> Option<&ModelPrewarming> {
    table
        .inference_config()?
        .spec
        .model_prewarming
        .as_ref()
        .filter(|p| p.enabled && !p.models.is_empty())
}

/// Start warming up `table`'s pairs on `warmth`: at start (`appeared` None),
/// `replicasPerModel` of the endpoints each model's routes reach; after a
/// reload, every endpoint of `appeared` (ids new to the table) that a
/// pre-warmed model's routes reach, so a scale-up's pods warm before they take
/// that model's traffic. The pairs are cold once this returns. Returns how
/// many pairs it started.
pub fn start(
    warmth: &Arc<Warmth>,
    table: &shardgate_routing::RoutingTable,
    appeared: Option<&[usize]>,
) -> std::io::Result<usize> {
    let Some(spec) = spec_of(table) else {
        return Ok(0);
    };
    let reach: Vec<(String, Vec<usize>)> = spec
        .models
        .iter()
        .map(|m| {
            let eps = crate::endpoints_view::endpoints_for_model(table, m);
            let eps = match appeared {
                Some(new) => eps.into_iter().filter(|e| new.contains(e)).collect(),
                None => eps,
            };
            (m.clone(), eps)
        })
        .collect();
    let addrs: Vec<SocketAddr> = table.endpoints().iter().map(|e| e.addr).collect();
    let targets = match appeared {
        None => targets(spec, &reach, &addrs),
        Some(_) => {
            let all = ModelPrewarming {
                replicas_per_model: Some(u32::MAX),
                ..spec.clone()
            };
            if reach.iter().all(|(_, eps)| eps.is_empty()) {
                return Ok(0);
            }
            targets(&all, &reach, &addrs)
        }
    };
    let n = targets.len();
    tracing::info!(
        pairs = n,
        strict = warmth.strict(),
        reload = appeared.is_some(),
        "modelPrewarming: warming up"
    );
    spawn(warmth.clone(), spec, targets)?;
    Ok(n)
}

/// One warm-up to do.
#[derive(Debug, Clone)]
pub struct Target {
    /// Index into the pre-warmed models.
    pub model: usize,
    /// Endpoint id.
    pub endpoint: usize,
    /// Its address.
    pub addr: SocketAddr,
}

/// The pairs to warm: for each model of `spec`, the first
/// `replicasPerModel` (default 1) of the endpoints `reach` lists for it
/// (`(model, endpoint ids)`, as the routes reach them).
pub fn targets(
    spec: &ModelPrewarming,
    reach: &[(String, Vec<usize>)],
    addrs: &[SocketAddr],
) -> Vec<Target> {
    let per_model = spec.replicas_per_model.unwrap_or(1).max(1) as usize;
    let mut out = Vec::new();
    for (mi, m) in spec.models.iter().enumerate() {
        let Some((_, eps)) = reach
            .iter()
            .find(|(name, eps)| name == m && !eps.is_empty())
        else {
            tracing::warn!(model = %m, "modelPrewarming: no route reaches an endpoint for this model; nothing to warm");
            continue;
        };
        for &ep in eps.iter().take(per_model) {
            if let Some(&addr) = addrs.get(ep) {
                out.push(Target {
                    model: mi,
                    endpoint: ep,
                    addr,
                });
            }
        }
    }
    out
}

/// Mark `targets` cold and start the workers (see the module doc).
pub fn spawn(
    warmth: Arc<Warmth>,
    spec: &ModelPrewarming,
    targets: Vec<Target>,
) -> std::io::Result<()> {
    for t in &targets {
        warmth.set(t.model, t.endpoint, COLD);
    }
    warmth.started.store(true, Ordering::Release);
    let workers = spec.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT).max(1) as usize;
    let timeout = spec.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let attempts = spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1);
    let prompt = spec.prompt.clone().unwrap_or_else(|| "Hello".to_string());
    let start = Instant::now();
    for w in 0..workers.min(targets.len()) {
        let mine: Vec<Target> = targets.iter().skip(w).step_by(workers).cloned().collect();
        let warmth = warmth.clone();
        let prompt = prompt.clone();
        std::thread::Builder::new()
            .name(format!("prewarm-{w}"))
            .spawn(move || {
                for t in mine {
                    warm_one(&warmth, &t, &prompt, timeout, attempts, start);
                }
            })?;
    }
    Ok(())
}

fn warm_one(
    warmth: &Warmth,
    t: &Target,
    prompt: &str,
    timeout: Duration,
    attempts: u32,
    start: Instant,
) {
    let model = warmth.models.get(t.model).map_or("", String::as_str);
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=attempts {
        let tried = Instant::now();
        match warm_up(t.addr, model, prompt, timeout) {
            Ok(()) => {
                warmth.set(t.model, t.endpoint, WARM);
                warmth.observe(start.elapsed());
                tracing::info!(endpoint = %t.addr, model, attempt, took_ms = tried.elapsed().as_millis() as u64, "modelPrewarming: warm");
                return;
            }
            Err(e) => {
                tracing::warn!(endpoint = %t.addr, model, attempt, attempts, error = %e, "modelPrewarming: warm-up failed");
            }
        }
        if attempt < attempts {
            // A dedicated thread, off the shards: waiting out the backoff is its job.
            park_for(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    warmth.set(t.model, t.endpoint, GIVEN_UP);
    tracing::warn!(endpoint = %t.addr, model, "modelPrewarming: given up; the endpoint serves as if warm");
}

/// Block this worker thread for `d` (parking with a deadline: the backoff
/// between warm-up tries, not a wait for something to happen).
fn park_for(d: Duration) {
    let until = Instant::now() + d;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        std::thread::park_timeout(left);
    }
}

/// One warm-up inference: `Ok` on a 2xx answer.
fn warm_up(addr: SocketAddr, model: &str, prompt: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {timeout:?}"))
    };
    let body = serde_json::json!({"model": model, "prompt": prompt, "max_tokens": 1}).to_string();
    let mut sock =
        TcpStream::connect_timeout(&addr, left()?).map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    sock.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nuser-agent: shardgate-prewarm\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    // Read to the end of the status line, then drain to EOF (connection: close).
    loop {
        sock.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if head.len() < 512 {
                    head.extend_from_slice(&buf[..n.min(512 - head.len())]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let status = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP status line".to_string())?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pairs_go_cold_then_warm_and_the_count_follows() {
        let w = Warmth::new(
            vec!["a".into(), "b".into()],
            vec!["e0".into(), "e1".into()],
            PrewarmMode::Preferred,
            2,
        );
        assert!(!w.any_cold());
        w.set(1, 0, COLD);
        w.set(1, 1, COLD);
        assert!(w.any_cold() && w.is_cold(1, 0) && !w.is_cold(0, 0));
        w.set(1, 0, WARM);
        w.set(1, 1, GIVEN_UP);
        assert!(!w.any_cold() && !w.is_cold(1, 1));
        assert!(
            !w.is_cold(5, 0) && !w.is_cold(0, 9),
            "out of range is never cold"
        );
        assert_eq!(w.model_index("b"), Some(1));
    }

    #[test]
    fn targets_take_replicas_per_model_of_the_reached_endpoints() {
        let spec = ModelPrewarming {
            enabled: true,
            models: vec!["m".into(), "absent".into()],
            replicas_per_model: Some(2),
            ..ModelPrewarming::default()
        };
        let addrs: Vec<SocketAddr> = (0..3)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
            .collect();
        let t = targets(&spec, &[("m".into(), vec![2, 0, 1])], &addrs);
        assert_eq!(
            t.iter().map(|t| (t.model, t.endpoint)).collect::<Vec<_>>(),
            vec![(0, 2), (0, 0)]
        );
    }
}
