//! The latest telemetry of every endpoint, each signal stamped with the time
//! of the scrape that carried it.
//!
//! The control thread owns one [`TelemetryStore`] (no locks): after each
//! scrape it calls [`TelemetryStore::ingest`] with the body and `now`, after a
//! failed scrape [`TelemetryStore::record_failure`]. Signals are stamped one by
//! one, so an endpoint fed by two targets (its server's `/metrics` and the
//! node's DCGM exporter) keeps both, and a signal that a scrape no longer
//! carries simply ages.
//!
//! Staleness: a signal older than `stale_after_intervals × interval` (default
//! 2 × 100 ms = 200 ms, GAIE's limit) is stale. [`TelemetryStore::fresh`]
//! returns a [`FreshView`] in which stale signals read `None` and are listed in
//! [`FreshView::stale`]; signals never seen are listed in
//! [`FreshView::missing`]. A stale signal is never read as zero: scorers
//! redistribute its weight. The view keeps the stamps, so a shard holding an
//! old snapshot re-checks ages at pick time ([`FreshView::value_at`]).

use std::time::{Duration, Instant};

use super::model::{
    self, CacheConfig, DecodeStats, EndpointTelemetry, LatencyWindows, LoraState, ServerKind,
};
use super::prom::Sample;

/// A scheduling signal of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalKind {
    /// Requests waiting.
    Waiting,
    /// Requests running.
    Running,
    /// KV-cache usage, 0–1.
    KvUsage,
    /// GPU utilisation, 0–1.
    GpuUtil,
    /// GPU memory used / total, 0–1.
    GpuMemUsed,
    /// Mean TTFT over the last interval, seconds.
    Ttft,
    /// Mean end-to-end latency over the last interval, seconds.
    E2eLatency,
    /// LoRA adapter state (not a number; staleness only).
    Lora,
}

/// Numeric signals (all but [`SignalKind::Lora`]).
const NUMERIC: usize = 7;

impl SignalKind {
    /// Every signal.
    pub const ALL: [SignalKind; 8] = [
        SignalKind::Waiting,
        SignalKind::Running,
        SignalKind::KvUsage,
        SignalKind::GpuUtil,
        SignalKind::GpuMemUsed,
        SignalKind::Ttft,
        SignalKind::E2eLatency,
        SignalKind::Lora,
    ];

    /// Name for logs and the debug view.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Running => "running",
            Self::KvUsage => "kv_usage",
            Self::GpuUtil => "gpu_util",
            Self::GpuMemUsed => "gpu_mem_used",
            Self::Ttft => "ttft",
            Self::E2eLatency => "e2e_latency",
            Self::Lora => "lora",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A small set of [`SignalKind`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SignalSet(u16);

impl SignalSet {
    /// The empty set.
    pub const EMPTY: SignalSet = SignalSet(0);

    /// Adds `kind`.
    pub fn insert(&mut self, kind: SignalKind) {
        self.0 |= kind.bit();
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: SignalKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of members.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Members in [`SignalKind::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = SignalKind> {
        SignalKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

/// A value and the time of the scrape that carried it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signal {
    /// The value.
    pub value: f64,
    /// When it was scraped.
    pub at: Instant,
}

/// Staleness settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Scrape interval (default 100 ms).
    pub interval: Duration,
    /// A signal older than this many intervals is stale (default 2).
    pub stale_after_intervals: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
            stale_after_intervals: 2,
        }
    }
}

impl StoreConfig {
    /// The age beyond which a signal is stale.
    pub fn max_age(&self) -> Duration {
        self.interval.saturating_mul(self.stale_after_intervals)
    }
}

/// Everything the store knows about one endpoint.
#[derive(Debug, Clone, Default)]
pub struct EndpointRecord {
    /// Detected family (an inference server wins over DCGM).
    pub server: ServerKind,
    signals: [Option<Signal>; NUMERIC],
    /// LoRA state and when it was scraped.
    pub lora: Option<(LoraState, Instant)>,
    /// The served base model (static; the latest seen).
    pub served_model: Option<String>,
    /// KV-cache geometry (static; the latest seen).
    pub cache: Option<CacheConfig>,
    /// Prefix-cache hit rate, 0–1.
    pub prefix_cache_hit_rate: Option<Signal>,
    /// Last successful scrape.
    pub last_scrape: Option<Instant>,
    /// Last failed scrape.
    pub last_failure: Option<Instant>,
    /// Failed scrapes since the last success.
    pub consecutive_failures: u32,
    /// What the last successful scrape's decode saw.
    pub last_stats: DecodeStats,
    windows: LatencyWindows,
}

impl EndpointRecord {
    /// The latest value of a numeric signal, however old.
    pub fn signal(&self, kind: SignalKind) -> Option<Signal> {
        slot(kind).and_then(|i| self.signals.get(i).copied().flatten())
    }
}

fn slot(kind: SignalKind) -> Option<usize> {
    match kind {
        SignalKind::Lora => None,
        k => Some(k as usize),
    }
}

/// An endpoint's telemetry as of one instant: stale signals removed and
/// reported. Plain data (`Send + Sync`), cloned into scoring snapshots.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FreshView {
    /// Detected family.
    pub server: ServerKind,
    signals: [Option<Signal>; NUMERIC],
    lora: Option<(LoraState, Instant)>,
    /// The served base model (static; the latest seen, never stale): a
    /// request for any other model on a LoRA-enabled server names an adapter.
    pub served_model: Option<String>,
    /// KV-cache geometry.
    pub cache: Option<CacheConfig>,
    /// Prefix-cache hit rate, 0–1 (fresh only).
    pub prefix_cache_hit_rate: Option<f64>,
    /// Signals seen before but older than [`Self::max_age`] at build time.
    pub stale: SignalSet,
    /// Signals never seen for this endpoint.
    pub missing: SignalSet,
    /// Last successful scrape.
    pub last_scrape: Option<Instant>,
    /// Failed scrapes since the last success.
    pub consecutive_failures: u32,
    /// The staleness limit used.
    pub max_age: Duration,
}

impl FreshView {
    /// A fresh numeric signal (with its stamp).
    pub fn signal(&self, kind: SignalKind) -> Option<Signal> {
        slot(kind).and_then(|i| self.signals.get(i).copied().flatten())
    }

    /// A fresh numeric signal's value.
    pub fn value(&self, kind: SignalKind) -> Option<f64> {
        self.signal(kind).map(|s| s.value)
    }

    /// The value if still fresh at `now` (for a snapshot read later than it
    /// was built).
    pub fn value_at(&self, kind: SignalKind, now: Instant) -> Option<f64> {
        self.signal(kind)
            .filter(|s| now.saturating_duration_since(s.at) <= self.max_age)
            .map(|s| s.value)
    }

    /// Requests waiting.
    pub fn waiting(&self) -> Option<f64> {
        self.value(SignalKind::Waiting)
    }

    /// Requests running.
    pub fn running(&self) -> Option<f64> {
        self.value(SignalKind::Running)
    }

    /// KV-cache usage, 0–1.
    pub fn kv_usage(&self) -> Option<f64> {
        self.value(SignalKind::KvUsage)
    }

    /// GPU utilisation, 0–1.
    pub fn gpu_util(&self) -> Option<f64> {
        self.value(SignalKind::GpuUtil)
    }

    /// GPU memory used / total, 0–1.
    pub fn gpu_mem_used_ratio(&self) -> Option<f64> {
        self.value(SignalKind::GpuMemUsed)
    }

    /// Mean TTFT over the last interval, seconds.
    pub fn ttft_mean(&self) -> Option<f64> {
        self.value(SignalKind::Ttft)
    }

    /// Mean end-to-end latency over the last interval, seconds.
    pub fn e2e_mean(&self) -> Option<f64> {
        self.value(SignalKind::E2eLatency)
    }

    /// LoRA state, if fresh.
    pub fn lora(&self) -> Option<&LoraState> {
        self.lora.as_ref().map(|(l, _)| l)
    }

    /// LoRA state if still fresh at `now`.
    pub fn lora_at(&self, now: Instant) -> Option<&LoraState> {
        self.lora
            .as_ref()
            .filter(|(_, at)| now.saturating_duration_since(*at) <= self.max_age)
            .map(|(l, _)| l)
    }

    /// Time since the last successful scrape.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.last_scrape.map(|t| now.saturating_duration_since(t))
    }

    /// A view with the given signals, all stamped `at` (tests, fakes).
    pub fn with_signals(at: Instant, max_age: Duration, values: &[(SignalKind, f64)]) -> Self {
        let mut v = FreshView {
            last_scrape: Some(at),
            max_age,
            ..FreshView::default()
        };
        for (kind, value) in values {
            v.set(*kind, Signal { value: *value, at });
        }
        for kind in SignalKind::ALL {
            let present = match kind {
                SignalKind::Lora => false,
                k => v.signal(k).is_some(),
            };
            if !present {
                v.missing.insert(kind);
            }
        }
        v
    }

    /// Sets a numeric signal (tests, fakes).
    pub fn set(&mut self, kind: SignalKind, signal: Signal) {
        if let Some(s) = slot(kind).and_then(|i| self.signals.get_mut(i)) {
            *s = Some(signal);
        }
    }

    /// Sets the LoRA state (tests, fakes).
    pub fn set_lora(&mut self, lora: LoraState, at: Instant) {
        self.lora = Some((lora, at));
    }
}

/// Latest telemetry per endpoint index (the index of
/// [`crate::RoutingTable::endpoints`], or any dense id the caller picks).
#[derive(Debug, Clone, Default)]
pub struct TelemetryStore {
    config: StoreConfig,
    records: Vec<EndpointRecord>,
}

impl TelemetryStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            records: Vec::new(),
        }
    }

    /// The staleness settings.
    pub fn config(&self) -> StoreConfig {
        self.config
    }

    /// Changes the staleness settings (config reload).
    pub fn set_config(&mut self, config: StoreConfig) {
        self.config = config;
    }

    fn record_mut(&mut self, endpoint: usize) -> &mut EndpointRecord {
        if self.records.len() <= endpoint {
            self.records
                .resize_with(endpoint + 1, EndpointRecord::default);
        }
        &mut self.records[endpoint]
    }

    /// Decodes a scrape body and records its signals stamped `now`.
    pub fn ingest(&mut self, endpoint: usize, body: &[u8], now: Instant) -> DecodeStats {
        self.ingest_filtered(endpoint, body, now, |_| true)
    }

    /// Like [`Self::ingest`] with a sample filter (see
    /// [`model::decode_filtered`]).
    pub fn ingest_filtered<'a>(
        &mut self,
        endpoint: usize,
        body: &'a [u8],
        now: Instant,
        keep: impl FnMut(&Sample<'a>) -> bool,
    ) -> DecodeStats {
        let (mut t, stats) = model::decode_filtered(body, keep);
        let rec = self.record_mut(endpoint);
        t.apply_windows(&mut rec.windows);
        rec.last_stats = stats;
        Self::merge(rec, &t, now);
        stats
    }

    /// Records already-decoded telemetry stamped `now`. Latency means are
    /// taken from `t.ttft_mean` / `t.e2e_mean` as given.
    pub fn apply(&mut self, endpoint: usize, t: &EndpointTelemetry, now: Instant) {
        Self::merge(self.record_mut(endpoint), t, now);
    }

    fn merge(rec: &mut EndpointRecord, t: &EndpointTelemetry, now: Instant) {
        match t.server {
            ServerKind::Unknown => {}
            ServerKind::Dcgm => {
                if rec.server == ServerKind::Unknown {
                    rec.server = ServerKind::Dcgm;
                }
            }
            k => rec.server = k,
        }
        let values = [
            (SignalKind::Waiting, t.waiting),
            (SignalKind::Running, t.running),
            (SignalKind::KvUsage, t.kv_usage),
            (SignalKind::GpuUtil, t.gpu_util),
            (SignalKind::GpuMemUsed, t.gpu_mem_used_ratio),
            (SignalKind::Ttft, t.ttft_mean),
            (SignalKind::E2eLatency, t.e2e_mean),
        ];
        for (kind, value) in values {
            if let (Some(value), Some(i)) = (value.filter(|v| v.is_finite()), slot(kind)) {
                if let Some(s) = rec.signals.get_mut(i) {
                    *s = Some(Signal { value, at: now });
                }
            }
        }
        if let Some(l) = &t.lora {
            rec.lora = Some((l.clone(), now));
        }
        if let Some(m) = &t.served_model {
            if rec.served_model.as_ref() != Some(m) {
                rec.served_model = Some(m.clone());
            }
        }
        if let Some(c) = t.cache {
            rec.cache = Some(c);
        }
        if let Some(r) = t.prefix_cache_hit_rate {
            rec.prefix_cache_hit_rate = Some(Signal { value: r, at: now });
        }
        rec.last_scrape = Some(now);
        rec.consecutive_failures = 0;
    }

    /// Notes a failed scrape; the signals keep ageing towards stale.
    pub fn record_failure(&mut self, endpoint: usize, now: Instant) {
        let rec = self.record_mut(endpoint);
        rec.last_failure = Some(now);
        rec.consecutive_failures = rec.consecutive_failures.saturating_add(1);
    }

    /// Forgets an endpoint (removed from the config).
    pub fn remove(&mut self, endpoint: usize) {
        if let Some(r) = self.records.get_mut(endpoint) {
            *r = EndpointRecord::default();
        }
    }

    /// The raw record, however old.
    pub fn record(&self, endpoint: usize) -> Option<&EndpointRecord> {
        self.records.get(endpoint)
    }

    /// Endpoint slots held (the highest index seen + 1).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no endpoint was ever recorded.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The endpoint's signals as of `now`: stale ones are `None` and listed
    /// in [`FreshView::stale`]. An unknown endpoint has every signal missing.
    pub fn fresh(&self, endpoint: usize, now: Instant) -> FreshView {
        let max_age = self.config.max_age();
        let mut view = FreshView {
            max_age,
            ..FreshView::default()
        };
        let Some(rec) = self.records.get(endpoint) else {
            for k in SignalKind::ALL {
                view.missing.insert(k);
            }
            return view;
        };
        let is_fresh = |at: Instant| now.saturating_duration_since(at) <= max_age;
        view.server = rec.server;
        view.served_model.clone_from(&rec.served_model);
        view.cache = rec.cache;
        view.last_scrape = rec.last_scrape;
        view.consecutive_failures = rec.consecutive_failures;
        for kind in SignalKind::ALL {
            let at = match kind {
                SignalKind::Lora => rec.lora.as_ref().map(|(_, at)| *at),
                k => rec.signal(k).map(|s| s.at),
            };
            match at {
                None => view.missing.insert(kind),
                Some(at) if !is_fresh(at) => view.stale.insert(kind),
                Some(_) => match kind {
                    SignalKind::Lora => view.lora = rec.lora.clone(),
                    k => {
                        if let Some(s) = rec.signal(k) {
                            view.set(k, s);
                        }
                    }
                },
            }
        }
        view.prefix_cache_hit_rate = rec
            .prefix_cache_hit_rate
            .filter(|s| is_fresh(s.at))
            .map(|s| s.value);
        view
    }
}
