//! Gateway metrics, collected shard-locally and merged at scrape time.
//!
//! Each shard records into its own plain (non-atomic) [`ShardMetrics`] — no
//! cross-core traffic on the request path — and publishes a copy every
//! [`PUBLISH_EVERY`] (500 ms) into its slot of the [`MetricsHub`] (`arc-swap`, one
//! writer per slot). The admin thread sums the latest copies of every shard when
//! Prometheus scrapes, so a scrape shows data at most 500 ms old.
//!
//! Label cardinality is bounded: `model` is one of the models the routes serve
//! (their model-header matches, plus — registered on first use through
//! [`ShardMetrics::know_model`] — the models a matched rule is known to serve: a
//! KServe v2 path's `{name}`, the `InferenceModel` names of its InferencePools),
//! `other` (any model name the config does not list — a client cannot mint
//! series) or `none`; `route` is a configured route or `none`; `code` is the status code;
//! `gateway_queue_depth`'s `queue` is `batching` or `admission` and its `priority` a
//! configured BatchingPolicy queue or one of the three [`ADMISSION_PRIORITIES`], each
//! with a 0 series per configured model from the start.
//! Buckets suit inference: 5 ms to 10 minutes for durations, 1 ms to 1 minute for
//! time to first token, 1 ms to 2 s per output token.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use shardgate_promtext::{Kind, PromWriter, Style};

/// How often a shard publishes its metrics for scraping.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// `gateway_inference_duration_seconds` buckets (5 ms … 10 min).
pub const DURATION_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];
/// `gateway_time_to_first_token_seconds` buckets (1 ms … 60 s).
pub const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 60.0,
];
/// `gateway_time_per_output_token_seconds` buckets (1 ms … 2 s).
pub const TPOT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 2.0,
];

/// Label value for requests that named no model.
pub const NO_MODEL: &str = "none";
/// Label value for model names no route lists.
pub const OTHER_MODEL: &str = "other";

/// `gateway_queue_depth{queue}` of requests held by a BatchingPolicy's queues
/// (`priority` is the queue's name).
pub const QUEUE_BATCHING: &str = "batching";
/// `gateway_queue_depth{queue}` of requests waiting for a `maxConcurrentInferences`
/// permit (`priority` is one of [`ADMISSION_PRIORITIES`]).
pub const QUEUE_ADMISSION: &str = "admission";
/// The `priority` label of a request waiting for admission, by its resolved
/// priority: above 0, 0, below 0 (sheddable). The resolved priority is an integer
/// a client may choose (`X-Request-Priority`), so it is never a label itself.
pub const ADMISSION_PRIORITIES: [&str; 3] = ["critical", "standard", "sheddable"];

/// Index into [`ADMISSION_PRIORITIES`] of a resolved priority.
pub fn admission_priority(priority: i32) -> u8 {
    match priority.signum() {
        1 => 0,
        0 => 1,
        _ => 2,
    }
}

/// A request's `priority` and `model` labels in the admission queue
/// ([`ShardMetrics::admission_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionKey(u8, u16);

/// Counts one request in `gateway_queue_depth{queue="admission"}` for as long as
/// it lives (while the request waits for a permit; a dropped wait uncounts too).
pub struct AdmissionWait<'a> {
    metrics: &'a RefCell<ShardMetrics>,
    key: AdmissionKey,
}

impl<'a> AdmissionWait<'a> {
    /// Count a request under `key` from now on.
    pub fn start(metrics: &'a RefCell<ShardMetrics>, key: AdmissionKey) -> Self {
        metrics.borrow_mut().admission_depth_add(key, 1);
        AdmissionWait { metrics, key }
    }
}

impl Drop for AdmissionWait<'_> {
    fn drop(&mut self) {
        self.metrics.borrow_mut().admission_depth_add(self.key, -1);
    }
}

/// A fixed-bucket histogram (cumulative at render time).
#[derive(Debug, Clone, Default)]
pub struct Hist {
    counts: Vec<u64>,
    sum: f64,
}

impl Hist {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len() + 1];
        }
        let i = buckets
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(buckets.len());
        self.counts[i] += 1;
        self.sum += v;
    }

    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0–1) with linear interpolation inside its bucket
    /// (`bounds` the finite upper bounds; the overflow bucket reads as the
    /// last bound); `None` without observations.
    pub fn quantile(&self, bounds: &[f64], q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * n as f64).max(1.0);
        let mut seen = 0.0;
        for (i, c) in self.counts.iter().enumerate() {
            let c = *c as f64;
            if c > 0.0 && seen + c >= rank {
                let hi = bounds.get(i).or(bounds.last()).copied().unwrap_or(0.0);
                let lo = if i == 0 {
                    0.0
                } else {
                    bounds.get(i - 1).copied().unwrap_or(hi)
                };
                return Some(lo + (hi - lo) * ((rank - seen) / c));
            }
            seen += c;
        }
        bounds.last().copied()
    }

    /// Bucket-wise `self - base` (never below 0).
    pub fn minus(&self, base: &Hist) -> Hist {
        Hist {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(base.counts.get(i).copied().unwrap_or(0)))
                .collect(),
            sum: (self.sum - base.sum).max(0.0),
        }
    }

    fn merge(&mut self, other: &Hist) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }

    /// (upper bound, count in that bucket alone) for `bounds`, then the overflow
    /// bucket at +Inf: what [`PromWriter::histogram`] takes.
    fn buckets<'a>(&'a self, bounds: &'a [f64]) -> impl Iterator<Item = (f64, u64)> + 'a {
        (0..=bounds.len()).map(|i| {
            let bound = bounds.get(i).copied().unwrap_or(f64::INFINITY);
            (bound, self.counts.get(i).copied().unwrap_or(0))
        })
    }
}

/// One model's answers so far (cumulative): requests, failed ones (5xx, or
/// none sent), TTFT and time-per-output-token histograms.
#[derive(Debug, Clone, Default)]
pub struct ModelQuality {
    /// Requests answered.
    pub requests: u64,
    /// Of which failed: status 5xx, or no status sent.
    pub errors: u64,
    /// TTFT ([`TTFT_BUCKETS`]).
    pub ttft: Hist,
    /// Time per output token ([`TPOT_BUCKETS`]).
    pub tpot: Hist,
}

impl ModelQuality {
    /// What happened since `base` (an earlier reading of the same model).
    pub fn since(&self, base: &ModelQuality) -> ModelQuality {
        ModelQuality {
            requests: self.requests.saturating_sub(base.requests),
            errors: self.errors.saturating_sub(base.errors),
            ttft: self.ttft.minus(&base.ttft),
            tpot: self.tpot.minus(&base.tpot),
        }
    }
}

/// What one finished request contributes.
#[derive(Debug, Default)]
pub struct RequestRecord<'a> {
    /// Model named by the request, if any.
    pub model: Option<&'a str>,
    /// `namespace/name` of the matched route.
    pub route: Option<&'a str>,
    /// Status sent to the client (0: none was sent, e.g. the client left first).
    pub status: u16,
    /// From the parsed head to the last byte sent.
    pub duration: Duration,
    /// From the parsed head to the first streamed event, for SSE responses.
    pub ttft: Option<Duration>,
    /// Mean time between streamed events after the first.
    pub tpot: Option<Duration>,
    /// `usage.prompt_tokens` seen in the response.
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens` seen in the response.
    pub completion_tokens: Option<u64>,
}

/// The maps every request touches (by model, route and status ids, and
/// route names): foldhash, seeded per process, where SipHash showed at
/// 4 % of a request's instructions.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One shard's metrics. Plain data: only its shard writes it.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    models: Arc<[String]>,
    /// Models known from the matched rules (config-bounded), in registration order.
    rule_models: Vec<String>,
    routes: FastMap<String, u16>,
    route_names: Vec<String>,
    requests: FastMap<(u16, u16, u16), u64>,
    duration: FastMap<(u16, u16, u8), Hist>,
    ttft: FastMap<(u16, u16), Hist>,
    tpot: FastMap<u16, Hist>,
    prompt_tokens: FastMap<u16, u64>,
    completion_tokens: FastMap<u16, u64>,
    /// Requests refused by a SecurityPolicy rate limit, by model.
    rate_limited: HashMap<u16, u64>,
    upstream_errors: HashMap<(u32, &'static str), u64>,
    /// Client connections open now.
    pub connections_open: u64,
    /// Client connections accepted.
    pub connections_total: u64,
    /// Idle keep-alive connections now (filled at publish).
    pub connections_idle: u64,
    /// Quiet keep-alive connections kept hot now (filled at publish).
    pub connections_kept_hot: u64,
    /// Connections accepted and closed at once at the shard's connection cap.
    pub connections_refused_cap: u64,
    /// Accepts that failed for want of descriptors (EMFILE/ENFILE), each
    /// followed by a back-off pause.
    pub connections_refused_emfile: u64,
    /// Idle keep-alive connections closed to make room (at the cap or at EMFILE).
    pub connections_closed_idle: u64,
    /// Panics contained in this shard's tasks, per [`crate::contain::TASKS`]
    /// (filled at publish).
    pub task_panics: [u64; 4],
    /// Per endpoint: requests in flight from this shard (filled at publish).
    pub endpoint_in_flight: Vec<u32>,
    /// Per endpoint: ejected on this shard (filled at publish).
    pub endpoint_ejected: Vec<bool>,
    /// Requests waiting on a batching queue or its batched call, by (queue, model).
    queue_depth: HashMap<(String, u16), i64>,
    /// Requests waiting for an admission permit, by (index into
    /// [`ADMISSION_PRIORITIES`], model).
    admission_depth: HashMap<(u8, u16), i64>,
    /// Per BatchingPolicy: its queues' numbers (filled at publish).
    pub batch: Vec<(String, Vec<QueueMetrics>)>,
    /// Admission (share, in use, demand, waiting), when `maxConcurrentInferences` is set.
    pub admission: Option<(u32, u32, u32, u32)>,
    /// Responses cut short on the client's side, by [`CLIENT_ABORT_REASONS`].
    pub client_aborts: [u64; 2],
    /// Requests that came over HTTP/2, by [`H2_KINDS`] (the rest came over
    /// HTTP/1.1).
    pub h2_requests: [u64; 2],
    /// Requests refused for want of body budget, by [`BODY_REFUSAL_REASONS`].
    pub body_refused: [u64; 2],
    /// Buffered-body budget (bytes held now, share), filled at publish.
    pub body_budget: (u64, u64),
    /// Requests refused by JWT authentication, by [`crate::jwt::Reason::ALL`].
    pub auth_failures: [u64; AUTH_REASONS],
    /// TLS handshakes, by [`crate::tls::HANDSHAKE_RESULTS`].
    pub tls_handshakes: [u64; crate::tls::HANDSHAKE_RESULTS.len()],
    /// Completed TLS handshakes with backends (`BackendTLSPolicy`), by
    /// [`UPSTREAM_HANDSHAKE_RESULTS`].
    pub upstream_tls_handshakes: [u64; 2],
    /// Endpoint picks by what decided them, by [`PICK_DECISIONS`].
    pub pick_decisions: [u64; PICK_DECISIONS.len()],
}

/// `decided_by` label values of `gateway_pick_decisions_total`
/// ([`shardgate_routing::scoring::Decision`]): the profile's picker; session
/// affinity, the session's own endpoint; session affinity, spilled past it at
/// the load bound.
pub const PICK_DECISIONS: [&str; 3] = ["profile", "session_home", "session_spilled"];

/// `result` label values of `gateway_upstream_tls_handshakes_total`: the
/// same indices as the first two of [`crate::tls::HANDSHAKE_RESULTS`].
pub const UPSTREAM_HANDSHAKE_RESULTS: [&str; 2] = ["full", "resumed"];

/// One counter family with one label, summed over the shards: `get` gives a
/// shard's counts in the order of `label.1`.
fn labelled_sum<const N: usize>(
    w: &mut PromWriter<'_>,
    shards: &[&ShardMetrics],
    name: &str,
    help: &str,
    label: (&str, &[&str; N]),
    get: impl Fn(&ShardMetrics) -> [u64; N],
) {
    let mut sum = [0u64; N];
    for s in shards {
        for (t, v) in sum.iter_mut().zip(get(s)) {
            *t += v;
        }
    }
    w.family(name, help, Kind::Counter);
    for (value, v) in label.1.iter().zip(sum) {
        w.sample("", &[(label.0, value)], v);
    }
}

/// One family with a sample per shard that has published (`shard` label).
fn per_shard(
    w: &mut PromWriter<'_>,
    snaps: &[Arc<Option<ShardMetrics>>],
    name: &str,
    help: &str,
    kind: Kind,
    get: impl Fn(&ShardMetrics) -> u64,
) {
    w.family(name, help, kind);
    for (i, s) in snaps.iter().enumerate() {
        if let Some(s) = s.as_ref() {
            w.sample("", &[("shard", itoa::Buffer::new().format(i))], get(s));
        }
    }
}

/// A family with one sample per shard and value of a second label `label`:
/// `values` gives each shard's (label value, sample) pairs.
fn per_shard_by<const N: usize>(
    w: &mut PromWriter<'_>,
    snaps: &[Arc<Option<ShardMetrics>>],
    (name, help, kind): (&str, &str, Kind),
    label: &str,
    values: impl Fn(&ShardMetrics) -> [(&'static str, u64); N],
) {
    w.family(name, help, kind);
    for (i, s) in snaps.iter().enumerate() {
        if let Some(s) = s.as_ref() {
            let mut shard = itoa::Buffer::new();
            let shard = shard.format(i);
            for (value, n) in values(s) {
                w.sample("", &[("shard", shard), (label, value)], n);
            }
        }
    }
}

/// Number of `reason` values of `gateway_auth_failures_total`.
pub const AUTH_REASONS: usize = crate::jwt::Reason::ALL.len();

/// `reason` label values of `gateway_client_aborts_total`: the client closed
/// (or reset) its connection before the whole response was written; a single
/// write blocked longer than `--send-timeout`.
pub const CLIENT_ABORT_REASONS: [&str; 2] = ["closed", "send_timeout"];

/// `kind` label values of `gateway_h2_requests_total`: gRPC calls, and HTTP
/// (OpenAI-compatible) requests over HTTP/2.
pub const H2_KINDS: [&str; 2] = ["grpc", "http"];

/// `reason` label values of `gateway_body_budget_refused_total`: the shard's
/// share was held by other bodies (503); the body was larger than the share (413).
pub const BODY_REFUSAL_REASONS: [&str; 2] = ["exhausted", "over_share"];

impl ShardMetrics {
    /// Empty metrics; `models` is the sorted list the routes serve.
    pub fn new(models: Arc<[String]>) -> Self {
        ShardMetrics {
            models,
            rule_models: Vec::new(),
            routes: FastMap::default(),
            route_names: vec![NO_MODEL.to_string()],
            requests: FastMap::default(),
            duration: FastMap::default(),
            ttft: FastMap::default(),
            tpot: FastMap::default(),
            prompt_tokens: FastMap::default(),
            completion_tokens: FastMap::default(),
            rate_limited: HashMap::new(),
            upstream_errors: HashMap::new(),
            connections_open: 0,
            connections_total: 0,
            connections_idle: 0,
            connections_kept_hot: 0,
            connections_refused_cap: 0,
            connections_refused_emfile: 0,
            connections_closed_idle: 0,
            task_panics: [0; 4],
            endpoint_in_flight: Vec::new(),
            endpoint_ejected: Vec::new(),
            queue_depth: HashMap::new(),
            admission_depth: HashMap::new(),
            batch: Vec::new(),
            admission: None,
            client_aborts: [0; 2],
            h2_requests: [0; 2],
            body_refused: [0; 2],
            pick_decisions: [0; PICK_DECISIONS.len()],
            body_budget: (0, 0),
            auth_failures: [0; AUTH_REASONS],
            tls_handshakes: [0; crate::tls::HANDSHAKE_RESULTS.len()],
            upstream_tls_handshakes: [0; 2],
        }
    }

    /// Move the batching queue depth of (`queue`, `model`) by `delta`.
    pub fn queue_depth_add(&mut self, queue: &str, model: Option<&str>, delta: i64) {
        let m = self.model_id(model);
        if let Some(v) = self.queue_depth.get_mut(&(queue.to_string(), m)) {
            *v += delta;
        } else {
            self.queue_depth.insert((queue.to_string(), m), delta);
        }
    }

    /// Move the admission queue depth of `key` by `delta` (no allocation once the
    /// key has been seen).
    pub fn admission_depth_add(&mut self, key: AdmissionKey, delta: i64) {
        *self.admission_depth.entry((key.0, key.1)).or_default() += delta;
    }

    /// The key [`AdmissionWait`] counts a request under.
    pub fn admission_key(&self, priority: i32, model: Option<&str>) -> AdmissionKey {
        AdmissionKey(admission_priority(priority), self.model_id(model))
    }

    /// Give `model` its own label from now on. Only for names the config lists
    /// (a model the matched rule is known to serve), never for a client's
    /// arbitrary name, so the label set stays bounded by the config.
    pub fn know_model(&mut self, model: &str) {
        if self.model_id(Some(model)) == 1 {
            self.rule_models.push(model.to_owned());
        }
    }

    /// Bounded model label id: 0 none, 1 other, 2.. a served model, then the
    /// models registered by [`Self::know_model`].
    fn model_id(&self, model: Option<&str>) -> u16 {
        match model {
            None => 0,
            Some(m) => match self.models.binary_search_by(|x| x.as_str().cmp(m)) {
                Ok(i) => (i + 2) as u16,
                Err(_) => match self.rule_models.iter().position(|x| x == m) {
                    Some(i) => (self.models.len() + i + 2) as u16,
                    None => 1,
                },
            },
        }
    }

    fn model_label(&self, id: u16) -> &str {
        match id {
            0 => NO_MODEL,
            1 => OTHER_MODEL,
            i => {
                let i = i as usize - 2;
                self.models
                    .get(i)
                    .or_else(|| {
                        i.checked_sub(self.models.len())
                            .and_then(|j| self.rule_models.get(j))
                    })
                    .map(|s| s.as_str())
                    .unwrap_or(OTHER_MODEL)
            }
        }
    }

    fn route_id(&mut self, route: Option<&str>) -> u16 {
        let Some(r) = route else { return 0 };
        if let Some(id) = self.routes.get(r) {
            return *id;
        }
        let id = self.route_names.len() as u16;
        self.routes.insert(r.to_string(), id);
        self.route_names.push(r.to_string());
        id
    }

    /// Record one finished request.
    pub fn record(&mut self, r: &RequestRecord<'_>) {
        let m = self.model_id(r.model);
        let rt = self.route_id(r.route);
        *self.requests.entry((m, rt, r.status)).or_default() += 1;
        if r.status == 0 {
            return;
        }
        let class = (r.status / 100).min(9) as u8;
        self.duration
            .entry((m, rt, class))
            .or_default()
            .observe(&DURATION_BUCKETS, r.duration.as_secs_f64());
        if let Some(t) = r.ttft {
            self.ttft
                .entry((m, rt))
                .or_default()
                .observe(&TTFT_BUCKETS, t.as_secs_f64());
        }
        if let Some(t) = r.tpot {
            self.tpot
                .entry(m)
                .or_default()
                .observe(&TPOT_BUCKETS, t.as_secs_f64());
        }
        if let Some(n) = r.prompt_tokens {
            *self.prompt_tokens.entry(m).or_default() += n;
        }
        if let Some(n) = r.completion_tokens {
            *self.completion_tokens.entry(m).or_default() += n;
        }
    }

    /// Count a request refused by a rate limit (`gateway_rate_limited_total`).
    pub fn rate_limited(&mut self, model: Option<&str>) {
        *self.rate_limited.entry(self.model_id(model)).or_default() += 1;
    }

    /// Count an upstream failure of `kind` on endpoint `ep`.
    pub fn upstream_error(&mut self, ep: usize, kind: &'static str) {
        *self.upstream_errors.entry((ep as u32, kind)).or_default() += 1;
    }
}

/// Where shards publish and the admin thread reads.
pub struct MetricsHub {
    slots: Vec<ArcSwap<Option<ShardMetrics>>>,
    /// Endpoint addresses, for labels (a live reload adds to them).
    endpoints: ArcSwap<Vec<String>>,
    /// I/O driver name.
    pub driver: &'static str,
}

impl MetricsHub {
    /// A hub for `shards` shards.
    pub fn new(shards: usize, endpoints: Vec<String>, driver: &'static str) -> Self {
        MetricsHub {
            slots: (0..shards).map(|_| ArcSwap::from_pointee(None)).collect(),
            endpoints: ArcSwap::from_pointee(endpoints),
            driver,
        }
    }

    /// Endpoint addresses, for labels, indexed like the routing table's.
    pub fn endpoints(&self) -> Arc<Vec<String>> {
        self.endpoints.load_full()
    }

    /// A live reload's endpoint list (addresses, indexed like the table's).
    pub fn set_endpoints(&self, endpoints: Vec<String>) {
        self.endpoints.store(Arc::new(endpoints));
    }

    /// Per model label, over every shard's last publish: (requests answered
    /// so far, requests held in the gateway's queues now: batching and
    /// admission). The autoscaling signals read it once per interval.
    pub fn model_load(&self) -> HashMap<String, (u64, i64)> {
        let mut out: HashMap<String, (u64, i64)> = HashMap::new();
        for slot in &self.slots {
            let snap = slot.load();
            let Some(s) = snap.as_ref().as_ref() else {
                continue;
            };
            for ((m, _, _), v) in &s.requests {
                out.entry(s.model_label(*m).to_string()).or_default().0 += v;
            }
            for ((_, m), v) in &s.queue_depth {
                out.entry(s.model_label(*m).to_string()).or_default().1 += v;
            }
            for ((_, m), v) in &s.admission_depth {
                out.entry(s.model_label(*m).to_string()).or_default().1 += v;
            }
        }
        out
    }

    /// One model label's answers so far, over every shard's last publish: what
    /// a canary rollout compares between versions (`rollout`).
    pub fn model_quality(&self, model: &str) -> ModelQuality {
        let mut q = ModelQuality::default();
        for slot in &self.slots {
            let snap = slot.load();
            let Some(s) = snap.as_ref().as_ref() else {
                continue;
            };
            let id = s.model_id(Some(model));
            if id < 2 {
                continue;
            }
            for ((m, _, status), v) in &s.requests {
                if *m == id {
                    q.requests += v;
                    if *status == 0 || *status >= 500 {
                        q.errors += v;
                    }
                }
            }
            for ((m, _), h) in &s.ttft {
                if *m == id {
                    q.ttft.merge(h);
                }
            }
            if let Some(h) = s.tpot.get(&id) {
                q.tpot.merge(h);
            }
        }
        q
    }

    /// Publish shard `id`'s latest metrics.
    pub fn publish(&self, id: usize, m: ShardMetrics) {
        if let Some(slot) = self.slots.get(id) {
            slot.store(Arc::new(Some(m)));
        }
    }

    /// In-flight requests per endpoint, summed over the shards' latest reports.
    pub fn endpoint_in_flight(&self) -> Vec<u32> {
        let mut out = vec![0u32; self.endpoints.load().len()];
        for slot in &self.slots {
            if let Some(m) = slot.load().as_ref() {
                for (o, v) in out.iter_mut().zip(&m.endpoint_in_flight) {
                    *o = o.saturating_add(*v);
                }
            }
        }
        out
    }

    /// Per shard: admission (share, in use, demand), when set.
    pub fn admission(&self) -> Vec<Option<(u32, u32, u32)>> {
        self.slots
            .iter()
            .map(|s| {
                s.load()
                    .as_ref()
                    .as_ref()
                    .and_then(|m| m.admission.map(|(a, b, c, _)| (a, b, c)))
            })
            .collect()
    }

    /// Per endpoint: whether some shard has it ejected, at the latest reports.
    pub fn endpoint_ejected(&self) -> Vec<bool> {
        let mut out = vec![false; self.endpoints.load().len()];
        for slot in &self.slots {
            if let Some(m) = slot.load().as_ref() {
                for (o, v) in out.iter_mut().zip(&m.endpoint_ejected) {
                    *o |= *v;
                }
            }
        }
        out
    }

    /// Endpoint picks by what decided them ([`PICK_DECISIONS`]), over every
    /// shard's last publish.
    pub fn pick_decisions(&self) -> [u64; PICK_DECISIONS.len()] {
        let mut out = [0; PICK_DECISIONS.len()];
        for slot in &self.slots {
            if let Some(m) = slot.load().as_ref() {
                for (o, v) in out.iter_mut().zip(m.pick_decisions) {
                    *o += v;
                }
            }
        }
        out
    }

    /// Render every shard's latest metrics, merged, in Prometheus text format 0.0.4
    /// (written by [`shardgate_promtext`]).
    pub fn render(&self) -> String {
        let snaps: Vec<Arc<Option<ShardMetrics>>> =
            self.slots.iter().map(|s| s.load_full()).collect();
        let shards: Vec<&ShardMetrics> = snaps.iter().filter_map(|s| s.as_ref().as_ref()).collect();
        let mut requests: HashMap<(String, String, u16), u64> = HashMap::new();
        let mut duration: HashMap<(String, String, u8), Hist> = HashMap::new();
        let mut ttft: HashMap<(String, String), Hist> = HashMap::new();
        let mut tpot: HashMap<String, Hist> = HashMap::new();
        let mut prompt: HashMap<String, u64> = HashMap::new();
        let mut completion: HashMap<String, u64> = HashMap::new();
        let mut rate_limited: HashMap<String, u64> = HashMap::new();
        let mut upstream: HashMap<(u32, &'static str), u64> = HashMap::new();
        let endpoints = self.endpoints.load_full();
        let n_ep = endpoints.len();
        let mut in_flight = vec![0u64; n_ep];
        let mut ejected = vec![false; n_ep];
        for s in &shards {
            let route = |id: u16| {
                s.route_names
                    .get(id as usize)
                    .cloned()
                    .unwrap_or_else(|| NO_MODEL.to_string())
            };
            for ((m, r, c), v) in &s.requests {
                *requests
                    .entry((s.model_label(*m).to_string(), route(*r), *c))
                    .or_default() += v;
            }
            for ((m, r, c), h) in &s.duration {
                duration
                    .entry((s.model_label(*m).to_string(), route(*r), *c))
                    .or_default()
                    .merge(h);
            }
            for ((m, r), h) in &s.ttft {
                ttft.entry((s.model_label(*m).to_string(), route(*r)))
                    .or_default()
                    .merge(h);
            }
            for (m, h) in &s.tpot {
                tpot.entry(s.model_label(*m).to_string())
                    .or_default()
                    .merge(h);
            }
            for (m, v) in &s.prompt_tokens {
                *prompt.entry(s.model_label(*m).to_string()).or_default() += v;
            }
            for (m, v) in &s.completion_tokens {
                *completion.entry(s.model_label(*m).to_string()).or_default() += v;
            }
            for (m, v) in &s.rate_limited {
                *rate_limited
                    .entry(s.model_label(*m).to_string())
                    .or_default() += v;
            }
            for (k, v) in &s.upstream_errors {
                *upstream.entry(*k).or_default() += v;
            }
            for (i, v) in s.endpoint_in_flight.iter().enumerate().take(n_ep) {
                in_flight[i] += u64::from(*v);
            }
            for (i, v) in s.endpoint_ejected.iter().enumerate().take(n_ep) {
                ejected[i] |= *v;
            }
        }
        let mut queue_depth: QueueDepths = HashMap::new();
        let mut batch: HashMap<(String, String), Vec<&QueueMetrics>> = HashMap::new();
        for s in &shards {
            // A zero series for every configured queue and model: dashboards show 0,
            // not "no data", before the first request waits.
            let models: Vec<&str> = if s.models.is_empty() {
                vec![NO_MODEL]
            } else {
                s.models.iter().map(String::as_str).collect()
            };
            for (_, queues) in &s.batch {
                for q in queues {
                    for m in &models {
                        queue_depth
                            .entry((QUEUE_BATCHING, q.queue.clone(), m.to_string()))
                            .or_default();
                    }
                }
            }
            if s.admission.is_some() {
                for p in ADMISSION_PRIORITIES {
                    for m in &models {
                        queue_depth
                            .entry((QUEUE_ADMISSION, p.to_string(), m.to_string()))
                            .or_default();
                    }
                }
            }
            for ((q, m), v) in &s.queue_depth {
                *queue_depth
                    .entry((QUEUE_BATCHING, q.clone(), s.model_label(*m).to_string()))
                    .or_default() += v;
            }
            for ((p, m), v) in &s.admission_depth {
                let p = ADMISSION_PRIORITIES
                    .get(usize::from(*p))
                    .copied()
                    .unwrap_or(ADMISSION_PRIORITIES[1]);
                *queue_depth
                    .entry((
                        QUEUE_ADMISSION,
                        p.to_string(),
                        s.model_label(*m).to_string(),
                    ))
                    .or_default() += v;
            }
            for (policy, queues) in &s.batch {
                for q in queues {
                    batch
                        .entry((policy.clone(), q.queue.clone()))
                        .or_default()
                        .push(q);
                }
            }
        }
        let mut text = String::with_capacity(16 * 1024);
        let mut w = PromWriter::new(&mut text, Style::PLAIN);
        w.family(
            "gateway_build_info",
            "shardgate build and runtime information.",
            Kind::Gauge,
        )
        .sample(
            "",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("driver", self.driver),
            ],
            1u8,
        );
        w.family(
            "gateway_shards",
            "Number of shards (threads with their own listener).",
            Kind::Gauge,
        )
        .sample("", &[], self.slots.len());

        w.family("gateway_requests_total", "Requests answered, by model, route and status code (code 0: the client left before an answer).", Kind::Counter);
        for ((m, r, c), v) in sorted(&requests) {
            let mut code = itoa::Buffer::new();
            let labels = [
                ("model", m.as_str()),
                ("route", r),
                ("code", code.format(*c)),
            ];
            w.sample("", &labels, *v);
        }
        w.family(
            "gateway_inference_duration_seconds",
            "Time from the request head to the last response byte.",
            Kind::Histogram,
        );
        for ((m, r, c), h) in sorted(&duration) {
            let class = STATUS_CLASSES[usize::from(*c).min(9)];
            let labels = [("model", m.as_str()), ("route", r), ("status_class", class)];
            w.histogram(&labels, h.buckets(&DURATION_BUCKETS), h.sum);
        }
        w.family(
            "gateway_time_to_first_token_seconds",
            "Time from the request head to the first streamed (SSE) event sent to the client.",
            Kind::Histogram,
        );
        for ((m, r), h) in sorted(&ttft) {
            let labels = [("model", m.as_str()), ("route", r)];
            w.histogram(&labels, h.buckets(&TTFT_BUCKETS), h.sum);
        }
        w.family(
            "gateway_time_per_output_token_seconds",
            "Mean time between streamed events after the first, per request.",
            Kind::Histogram,
        );
        for (m, h) in sorted(&tpot) {
            w.histogram(&[("model", m)], h.buckets(&TPOT_BUCKETS), h.sum);
        }
        w.family(
            "gateway_prompt_tokens_total",
            "Prompt tokens reported in responses' usage.",
            Kind::Counter,
        );
        for (m, v) in sorted(&prompt) {
            w.sample("", &[("model", m)], *v);
        }
        w.family(
            "gateway_completion_tokens_total",
            "Completion tokens reported in responses' usage.",
            Kind::Counter,
        );
        for (m, v) in sorted(&completion) {
            w.sample("", &[("model", m)], *v);
        }
        w.family(
            "gateway_rate_limited_total",
            "Requests refused with 429 by a SecurityPolicy rate limit, by model.",
            Kind::Counter,
        );
        for (m, v) in sorted(&rate_limited) {
            w.sample("", &[("model", m)], *v);
        }
        w.family(
            "gateway_upstream_errors_total",
            "Upstream failures by endpoint and kind (aborted_mid_stream: the upstream closed, stalled or broke the framing after the response began).",
            Kind::Counter,
        );
        for ((ep, kind), v) in sorted(&upstream) {
            let addr = endpoints
                .get(*ep as usize)
                .map(|s| s.as_str())
                .unwrap_or("unknown");
            w.sample("", &[("endpoint", addr), ("kind", kind)], *v);
        }
        labelled_sum(
            &mut w,
            &shards,
            "gateway_pick_decisions_total",
            "Endpoint picks by what decided them: the scheduling profile's picker (profile), session affinity on the session's own endpoint (session_home), or session affinity past it because it was at the load bound (session_spilled).",
            ("decided_by", &PICK_DECISIONS),
            |s| s.pick_decisions,
        );
        labelled_sum(
            &mut w,
            &shards,
            "gateway_client_aborts_total",
            "Responses cut short on the client's side: it closed its connection (closed), or a write to it blocked longer than --send-timeout (send_timeout). The upstream request is cancelled either way.",
            ("reason", &CLIENT_ABORT_REASONS),
            |s| s.client_aborts,
        );
        labelled_sum(
            &mut w,
            &shards,
            "gateway_h2_requests_total",
            "Requests that came over HTTP/2: gRPC calls (grpc) and HTTP requests (http). They are also counted in the request metrics with every HTTP/1.1 request; their difference is the HTTP/1.1 share.",
            ("kind", &H2_KINDS),
            |s| s.h2_requests,
        );
        labelled_sum(
            &mut w,
            &shards,
            "gateway_body_budget_refused_total",
            "Requests refused because their body did not fit the shard's share of --max-buffered-body-bytes: held by other bodies (exhausted, 503) or larger than the share (over_share, 413).",
            ("reason", &BODY_REFUSAL_REASONS),
            |s| s.body_refused,
        );
        let auth_labels = crate::jwt::Reason::ALL.map(|r| r.label());
        labelled_sum(
            &mut w,
            &shards,
            "gateway_auth_failures_total",
            "Requests refused with 401 by JWT authentication (SecurityPolicy authentication.jwt), by reason.",
            ("reason", &auth_labels),
            |s| s.auth_failures,
        );
        labelled_sum(
            &mut w,
            &shards,
            "gateway_tls_handshakes_total",
            "TLS handshakes on HTTPS listeners, by result: completed in full (full) or by session resumption (resumed); failed by --tls-handshake-timeout (timeout), plaintext HTTP on the TLS port (plaintext), the client closing or a socket error (io), or TLS the gateway refused: not TLS, no shared version or cipher suite, an unknown SNI with --tls-unknown-sni reject (tls).",
            ("result", &crate::tls::HANDSHAKE_RESULTS),
            |s| s.tls_handshakes,
        );
        labelled_sum(
            &mut w,
            &shards,
            "gateway_upstream_tls_handshakes_total",
            "TLS handshakes the shards completed with backends a BackendTLSPolicy covers (proxied and batched calls), by result: in full (full) or by session resumption (resumed). Failures count in gateway_upstream_errors_total{kind=\"tls\"}.",
            ("result", &UPSTREAM_HANDSHAKE_RESULTS),
            |s| s.upstream_tls_handshakes,
        );
        w.family(
            "gateway_kv_tokenize_total",
            "Prompts keyed for precise prefix routing off the shards (--kv-tokenize-threads), by result: keyed on a kv-tokenize thread (offloaded), refused because every queue was full (queue_full) or not back within --kv-tokenize-timeout (timeout); the last two are scored by the approximate index. Prompts up to --kv-tokenize-inline-bytes are keyed on their shard and not counted.",
            Kind::Counter,
        );
        for (label, n) in crate::kv_offload::RESULTS
            .iter()
            .zip(&crate::kv_offload::COUNTS)
        {
            w.sample(
                "",
                &[("result", label)],
                n.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        w.family(
            "gateway_control_tls_handshakes_total",
            "TLS handshakes the control thread completed with backends and JWKS servers (telemetry scrapes, health checks, model polls, remoteJWKS fetches), by result: in full (full) or by session resumption (resumed).",
            Kind::Counter,
        );
        for (label, n) in UPSTREAM_HANDSHAKE_RESULTS
            .iter()
            .zip(&crate::upstream::CONTROL_TLS_HANDSHAKES)
        {
            w.sample(
                "",
                &[("result", label)],
                n.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        per_shard_by(
            &mut w,
            &snaps,
            (
                "gateway_buffered_body_bytes",
                "Request-body bytes buffered now, per shard (held against its share of --max-buffered-body-bytes).",
                Kind::Gauge,
            ),
            "state",
            |s| [("used", s.body_budget.0), ("share", s.body_budget.1)],
        );
        w.family(
            "gateway_endpoint_in_flight",
            "Requests in flight per endpoint, all shards.",
            Kind::Gauge,
        );
        for (addr, v) in endpoints.iter().zip(&in_flight) {
            w.sample("", &[("endpoint", addr)], *v);
        }
        w.family(
            "gateway_endpoint_ejected",
            "1 while some shard has the endpoint ejected after connection failures.",
            Kind::Gauge,
        );
        for (addr, v) in endpoints.iter().zip(&ejected) {
            w.sample("", &[("endpoint", addr)], *v);
        }
        render_batching(&mut w, &queue_depth, &batch);
        w.family(
            "gateway_admission_permits",
            "maxConcurrentInferences permits per shard: its share and how many are in use.",
            Kind::Gauge,
        );
        for (i, s) in snaps.iter().enumerate() {
            if let Some((share, in_use, _, _)) = s.as_ref().as_ref().and_then(|m| m.admission) {
                let mut shard = itoa::Buffer::new();
                let shard = shard.format(i);
                w.sample("", &[("shard", shard), ("state", "share")], share);
                w.sample("", &[("shard", shard), ("state", "in_use")], in_use);
            }
        }
        w.family(
            "gateway_admission_waiting",
            "Requests waiting for a maxConcurrentInferences permit, per shard.",
            Kind::Gauge,
        );
        for (i, s) in snaps.iter().enumerate() {
            if let Some((_, _, _, waiting)) = s.as_ref().as_ref().and_then(|m| m.admission) {
                w.sample("", &[("shard", itoa::Buffer::new().format(i))], waiting);
            }
        }
        per_shard(
            &mut w,
            &snaps,
            "gateway_connections_open",
            "Client connections open, per shard.",
            Kind::Gauge,
            |s| s.connections_open,
        );
        per_shard(
            &mut w,
            &snaps,
            "gateway_connections_total",
            "Client connections accepted, per shard.",
            Kind::Counter,
            |s| s.connections_total,
        );
        per_shard(
            &mut w,
            &snaps,
            "gateway_connections_idle",
            "Client keep-alive connections waiting for their next request (the first closed when room is needed), per shard.",
            Kind::Gauge,
            |s| s.connections_idle,
        );
        per_shard(
            &mut w,
            &snaps,
            "gateway_connections_kept_hot",
            "Quiet HTTP/1.1 client connections kept hot past their hot wait (receive armed into their read buffer; at most the shard's share of --client-hot-conns), per shard; also counted in gateway_connections_idle.",
            Kind::Gauge,
            |s| s.connections_kept_hot,
        );
        per_shard_by(
            &mut w,
            &snaps,
            (
                "gateway_connections_refused_total",
                "Client connections refused, per shard: `cap` = accepted and closed at once at the shard's --max-connections share with no idle connection to close; `emfile` = accepts that failed for want of descriptors (EMFILE/ENFILE), each followed by a back-off pause.",
                Kind::Counter,
            ),
            "reason",
            |s| {
                [
                    ("cap", s.connections_refused_cap),
                    ("emfile", s.connections_refused_emfile),
                ]
            },
        );
        per_shard(
            &mut w,
            &snaps,
            "gateway_connections_closed_idle_total",
            "Idle keep-alive client connections closed to make room for new ones (at the connection cap or when descriptors ran out), per shard.",
            Kind::Counter,
            |s| s.connections_closed_idle,
        );
        per_shard_by(
            &mut w,
            &snaps,
            (
                "gateway_task_panics_total",
                "Panics caught in a shard's tasks, per shard and task (`connection`, `stream`, `batch`, `upstream_connection`): each ended its task only (its connection or stream closed) and the shard went on. Any is a bug; the log has the message.",
                Kind::Counter,
            ),
            "task",
            |s| -> [_; crate::contain::TASKS.len()] {
                std::array::from_fn(|k| (crate::contain::TASKS[k], s.task_panics[k]))
            },
        );
        text
    }
}

/// `status_class` label values, by status / 100.
const STATUS_CLASSES: [&str; 10] = [
    "0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
];

type BatchMap<'a> = HashMap<(String, String), Vec<&'a QueueMetrics>>;

/// `gateway_queue_depth` by (queue, priority, model).
type QueueDepths = HashMap<(&'static str, String, String), i64>;

fn render_batching(w: &mut PromWriter<'_>, queue_depth: &QueueDepths, batch: &BatchMap<'_>) {
    w.family("gateway_queue_depth", "Pending inference requests: queue=\"batching\" held by a BatchingPolicy queue (waiting for their batch or its merged upstream call), priority = the queue's name; queue=\"admission\" waiting for a maxConcurrentInferences permit, priority = critical (above 0), standard (0) or sheddable (below 0). By model; 0 for every configured queue and model.", Kind::Gauge);
    for ((queue, p, m), v) in sorted(queue_depth) {
        w.sample(
            "",
            &[("queue", queue), ("priority", p), ("model", m)],
            (*v).max(0),
        );
    }
    w.family("gateway_batch_flushes_total", "Batches flushed, by BatchingPolicy, priority queue and reason (full, deadline, adaptive, alone, drain).", Kind::Counter);
    for ((p, q), list) in sorted(batch) {
        let mut by_reason: Vec<(&str, u64)> = Vec::new();
        for m in list {
            for (r, n) in &m.flushes {
                match by_reason.iter_mut().find(|(x, _)| x == r) {
                    Some((_, t)) => *t += n,
                    None => by_reason.push((r, *n)),
                }
            }
        }
        for (r, n) in by_reason {
            w.sample("", &[("policy", p), ("priority", q), ("reason", r)], n);
        }
    }
    w.family(
        "gateway_batch_size",
        "Requests per flushed batch.",
        Kind::Histogram,
    );
    for ((p, q), list) in sorted(batch) {
        let parts = list.iter().map(|m| (&m.batch_size, m.batch_size_sum));
        batch_histogram(w, &[("policy", p), ("priority", q)], parts, 1.0);
    }
    w.family(
        "gateway_batch_queue_wait_seconds",
        "Time each request spent queued before its batch was flushed.",
        Kind::Histogram,
    );
    for ((p, q), list) in sorted(batch) {
        let parts = list.iter().map(|m| (&m.queued_us, m.queued_us_sum));
        batch_histogram(w, &[("policy", p), ("priority", q)], parts, 1e6);
    }
    w.family(
        "gateway_batch_rejected_total",
        "Requests a batching queue refused (full) or that expired waiting.",
        Kind::Counter,
    );
    for ((p, q), list) in sorted(batch) {
        let full: u64 = list.iter().map(|m| m.rejected_full).sum();
        let expired: u64 = list.iter().map(|m| m.expired).sum();
        w.sample(
            "",
            &[("policy", p), ("priority", q), ("reason", "full")],
            full,
        );
        w.sample(
            "",
            &[("policy", p), ("priority", q), ("reason", "timeout")],
            expired,
        );
    }
}

/// Write the shards' batching histograms merged. Their buckets are `(upper bound,
/// cumulative count)` pairs ending with `None` = +Inf; bounds and the sum are divided by
/// `divisor` (1e6: µs → s; dividing keeps labels like `0.0001` free of float noise).
fn batch_histogram<'a>(
    w: &mut PromWriter<'_>,
    labels: &[(&str, &str)],
    parts: impl Iterator<Item = (&'a Vec<(Option<u64>, u64)>, u64)>,
    divisor: f64,
) {
    let mut merged: Vec<(Option<u64>, u64)> = Vec::new();
    let mut sum = 0u64;
    for (buckets, s) in parts {
        sum += s;
        for (i, (b, n)) in buckets.iter().enumerate() {
            match merged.get_mut(i) {
                Some(slot) => slot.1 += n,
                None => merged.push((*b, *n)),
            }
        }
    }
    // The writer wants each bucket's own count: undo the accumulation.
    let mut below = 0u64;
    let buckets = merged.iter().map(|(b, n)| {
        let own = n.saturating_sub(below);
        below = *n;
        (b.map_or(f64::INFINITY, |b| b as f64 / divisor), own)
    });
    w.histogram(labels, buckets, sum as f64 / divisor);
}

fn sorted<K: Ord, V>(m: &HashMap<K, V>) -> Vec<(&K, &V)> {
    let mut v: Vec<(&K, &V)> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// TTFT and TPOT of a streamed (SSE) answer, from the instants its bytes
/// reached the client: TTFT is the first, TPOT the mean gap between the
/// events after the first ([`UsageScanner::events`]). HTTP/1.1 and HTTP/2
/// answers are timed by the same clock.
#[derive(Debug, Default)]
pub struct EventClock {
    first: Option<monoio::time::Instant>,
}

impl EventClock {
    /// Bytes carrying `events` events so far reached the client at `now`, for
    /// a request that began at `started`: sets `ttft` the first time, `tpot`
    /// once there are two events.
    pub fn reached(
        &mut self,
        now: monoio::time::Instant,
        started: monoio::time::Instant,
        events: u32,
        (ttft, tpot): (&mut Option<Duration>, &mut Option<Duration>),
    ) {
        let first = *self.first.get_or_insert_with(|| {
            *ttft = Some(now.saturating_duration_since(started));
            now
        });
        if events > 1 {
            *tpot = Some(now.saturating_duration_since(first) / (events - 1));
        }
    }
}

/// Finds `usage` token counts in a response body streamed in pieces, including
/// numbers split across two pieces (a 32-byte junction window is checked).
#[derive(Debug, Default)]
pub struct UsageScanner {
    tail: [u8; 32],
    tail_len: usize,
    /// Last `prompt_tokens` value seen.
    pub prompt_tokens: Option<u64>,
    /// Last `completion_tokens` value seen.
    pub completion_tokens: Option<u64>,
    /// SSE `data:` events seen (excluding `[DONE]`).
    pub events: u32,
}

/// What both `usage` keys end with: one search finds either, and the
/// bytes before the hit tell which (two searches per piece, not four).
const TOKENS_KEY: &[u8] = b"_tokens\":";
const PROMPT_KEY: &[u8] = b"\"prompt";
const COMPLETION_KEY: &[u8] = b"\"completion";
const DONE_EVENT: &[u8] = b"data: [DONE]";

/// Searchers built once (building a `memmem` finder per call showed in profiles).
struct Finders {
    tokens: memchr::memmem::Finder<'static>,
    data: memchr::memmem::Finder<'static>,
}

static FINDERS: std::sync::LazyLock<Finders> = std::sync::LazyLock::new(|| Finders {
    tokens: memchr::memmem::Finder::new(TOKENS_KEY),
    data: memchr::memmem::Finder::new(b"data:"),
});

impl UsageScanner {
    /// Scan the next piece of the body.
    pub fn feed(&mut self, piece: &[u8]) {
        if self.tail_len > 0 {
            let mut junction = [0u8; 64];
            let take = piece.len().min(32);
            junction[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            junction[self.tail_len..self.tail_len + take].copy_from_slice(&piece[..take]);
            let junction = &junction[..self.tail_len + take];
            // Catches keys and numbers that straddle the two pieces.
            self.scan(junction);
        }
        self.scan(piece);
        // SSE events, but `data: [DONE]`.
        let events = FINDERS
            .data
            .find_iter(piece)
            .filter(|&at| !piece[at..].starts_with(DONE_EVENT))
            .count();
        self.events = self.events.saturating_add(events as u32);
        let keep = piece.len().min(32);
        self.tail[..keep].copy_from_slice(&piece[piece.len() - keep..]);
        self.tail_len = keep;
    }

    fn scan(&mut self, hay: &[u8]) {
        let finder = &FINDERS.tokens;
        let mut at = 0;
        while let Some(pos) = finder.find(&hay[at..]) {
            let key = at + pos;
            let start = key + TOKENS_KEY.len();
            at = start;
            let slot = if hay[..key].ends_with(PROMPT_KEY) {
                &mut self.prompt_tokens
            } else if hay[..key].ends_with(COMPLETION_KEY) {
                &mut self.completion_tokens
            } else {
                continue;
            };
            if let Some(n) = number_at(&hay[start..]) {
                *slot = Some(n);
            }
        }
    }
}

/// A complete unsigned integer at the start of `s` (after spaces), or None if it
/// runs to the end of `s` (it may continue in the next piece).
fn number_at(s: &[u8]) -> Option<u64> {
    let s = &s[s.iter().take_while(|b| **b == b' ').count()..];
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits == s.len() || digits > 18 {
        return None;
    }
    // At most 18 digits: no overflow (and no UTF-8 check and `str::parse`).
    Some(
        s[..digits]
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn usage_is_found_whole_and_split() {
        let body =
            br#"{"id":"x","usage":{"prompt_tokens":12,"total_tokens":19,"completion_tokens":7}}"#;
        for cut in 0..body.len() {
            let mut s = UsageScanner::default();
            s.feed(&body[..cut]);
            s.feed(&body[cut..]);
            assert_eq!(
                (s.prompt_tokens, s.completion_tokens),
                (Some(12), Some(7)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn sse_events_are_counted_without_done() {
        let mut s = UsageScanner::default();
        s.feed(b"data: {\"a\":1}\n\ndata: {\"a\":2}\n\n");
        s.feed(b"data: [DONE]\n\n");
        assert_eq!(s.events, 2);
    }

    #[test]
    fn models_known_from_the_matched_rule_get_their_own_label() {
        let models: Arc<[String]> = vec!["a".to_string()].into();
        let mut m = ShardMetrics::new(models);
        let req = |model| RequestRecord {
            model: Some(model),
            route: Some("ns/kserve"),
            status: 200,
            ..Default::default()
        };
        m.record(&req("resnet"));
        // The proxy registers a model its rule serves (a KServe path's, a pool's).
        m.know_model("resnet");
        m.know_model("resnet");
        m.know_model("a");
        m.record(&req("resnet"));
        m.record(&req("a"));
        m.queue_depth_add("default", Some("resnet"), 1);
        let hub = MetricsHub::new(1, vec![], "epoll");
        hub.publish(0, m);
        let text = hub.render();
        for line in [
            "gateway_requests_total{model=\"other\",route=\"ns/kserve\",code=\"200\"} 1",
            "gateway_requests_total{model=\"resnet\",route=\"ns/kserve\",code=\"200\"} 1",
            "gateway_requests_total{model=\"a\",route=\"ns/kserve\",code=\"200\"} 1",
            "gateway_queue_depth{queue=\"batching\",priority=\"default\",model=\"resnet\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    /// Issue 12, item 13: a zero series per configured queue and model, and the
    /// requests waiting for admission, by a bounded priority class.
    #[test]
    fn queue_depth_has_zero_series_and_counts_admission_waiters() {
        let models: Arc<[String]> = vec!["a".to_string(), "b".to_string()].into();
        let mut m = ShardMetrics::new(models);
        m.admission = Some((4, 4, 6, 2));
        m.batch = vec![(
            "default/p".to_string(),
            vec![QueueMetrics {
                queue: "real-time".into(),
                depth: 0,
                flushes: Vec::new(),
                batch_size: Vec::new(),
                batch_size_sum: 0,
                queued_us: Vec::new(),
                queued_us_sum: 0,
                expired: 0,
                rejected_full: 0,
            }],
        )];
        let metrics = RefCell::new(m);
        let key = |p, model| metrics.borrow().admission_key(p, model);
        let (k_std, k_crit, k_other) = (key(0, Some("a")), key(7, Some("b")), key(1, Some("zzz")));
        let w1 = AdmissionWait::start(&metrics, k_std);
        let w2 = AdmissionWait::start(&metrics, k_std);
        let w3 = AdmissionWait::start(&metrics, k_crit);
        let w4 = AdmissionWait::start(&metrics, k_other);
        drop(w2);
        let render = |m: &RefCell<ShardMetrics>| {
            let hub = MetricsHub::new(1, vec![], "epoll");
            hub.publish(0, m.borrow().clone());
            hub.render()
        };
        let text = render(&metrics);
        let q = "gateway_queue_depth";
        for line in [
            format!("{q}{{queue=\"admission\",priority=\"critical\",model=\"a\"}} 0"),
            format!("{q}{{queue=\"admission\",priority=\"critical\",model=\"b\"}} 1"),
            format!("{q}{{queue=\"admission\",priority=\"critical\",model=\"other\"}} 1"),
            format!("{q}{{queue=\"admission\",priority=\"standard\",model=\"a\"}} 1"),
            format!("{q}{{queue=\"admission\",priority=\"sheddable\",model=\"b\"}} 0"),
            format!("{q}{{queue=\"batching\",priority=\"real-time\",model=\"a\"}} 0"),
            format!("{q}{{queue=\"batching\",priority=\"real-time\",model=\"b\"}} 0"),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        drop((w1, w3, w4));
        let text = render(&metrics);
        assert!(text.contains(
            "gateway_queue_depth{queue=\"admission\",priority=\"standard\",model=\"a\"} 0"
        ));
        // Without admission or batching: no series at all (nothing is configured).
        let bare = RefCell::new(ShardMetrics::new(vec!["a".to_string()].into()));
        assert!(!render(&bare).contains("gateway_queue_depth{"));
        assert_eq!(
            [
                admission_priority(i32::MAX),
                admission_priority(0),
                admission_priority(-1)
            ],
            [0, 1, 2]
        );
    }

    #[test]
    fn model_labels_are_bounded() {
        let models: Arc<[String]> = vec!["a".to_string(), "b".to_string()].into();
        let mut m = ShardMetrics::new(models);
        for i in 0..1000 {
            let name = format!("random-{i}");
            m.record(&RequestRecord {
                model: Some(&name),
                route: None,
                status: 404,
                ..Default::default()
            });
        }
        m.record(&RequestRecord {
            model: Some("a"),
            route: Some("ns/r"),
            status: 200,
            duration: Duration::from_millis(30),
            ..Default::default()
        });
        let hub = MetricsHub::new(1, vec![], "epoll");
        hub.publish(0, m);
        let text = hub.render();
        assert!(
            text.contains(
                "gateway_requests_total{model=\"other\",route=\"none\",code=\"404\"} 1000"
            ),
            "{text}"
        );
        assert!(text.contains("gateway_requests_total{model=\"a\",route=\"ns/r\",code=\"200\"} 1"));
        assert!(text.contains("gateway_inference_duration_seconds_bucket{model=\"a\",route=\"ns/r\",status_class=\"2xx\",le=\"0.05\"} 1"));
        assert!(text.contains("gateway_inference_duration_seconds_count{model=\"a\",route=\"ns/r\",status_class=\"2xx\"} 1"));
        assert!(!text.contains("random-"));
    }
}

/// A queue's numbers for `/metrics`.
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    /// Queue (priority) name.
    pub queue: String,
    /// Requests waiting.
    pub depth: u64,
    /// Flushes by reason.
    pub flushes: Vec<(&'static str, u64)>,
    /// Batch-size buckets: (upper bound, count); `None` = +Inf.
    pub batch_size: Vec<(Option<u64>, u64)>,
    /// Sum of batch sizes.
    pub batch_size_sum: u64,
    /// Wait buckets in µs.
    pub queued_us: Vec<(Option<u64>, u64)>,
    /// Sum of waits in µs.
    pub queued_us_sum: u64,
    /// Requests expired waiting.
    pub expired: u64,
    /// Requests refused on a full queue.
    pub rejected_full: u64,
}
