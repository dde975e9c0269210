//! One internal model of a model server's load, whichever server exported it.
//!
//! [`decode`] reads a Prometheus exposition (through [`super::prom`]) and fills
//! an [`EndpointTelemetry`]: queue, running requests, KV-cache usage (0–1),
//! GPU utilisation and memory (0–1), TTFT / end-to-end latency histogram
//! totals, LoRA adapters, KV-cache geometry and prefix-cache counters. The
//! family is detected from the metric-name prefixes (`vllm:`, `sglang:`,
//! `trtllm_`, `nv_`, `tgi_`, `DCGM_FI_`); a dump may mix families (Triton
//! exports `nv_trt_llm_*` and `nv_gpu_*` together) and everything recognised
//! is used. Metric names, from DESIGN.md:
//!
//! | server | queue | running | KV / memory | other |
//! |---|---|---|---|---|
//! | vLLM | `vllm:num_requests_waiting` | `vllm:num_requests_running` | `vllm:kv_cache_usage_perc` (older `vllm:gpu_cache_usage_perc`) | `vllm:lora_requests_info`, `vllm:cache_config_info`, TTFT / e2e histograms, prefix-cache counters |
//! | SGLang | `sglang:num_queue_reqs` | `sglang:num_running_reqs` | `sglang:token_usage` | `sglang:cache_config_info` (`page_size`, `num_pages`), `sglang:cache_hit_rate`, histograms |
//! | trtllm-serve | `trtllm_num_requests_waiting` | `trtllm_num_requests_running` | `trtllm_kv_cache_utilization` | `trtllm_kv_cache_tokens_per_block`, `trtllm_kv_cache_max_blocks`, `trtllm_kv_cache_hit_rate`, histograms |
//! | Triton | `nv_trt_llm_request_metrics{request_type="waiting"}`, else `nv_inference_pending_request_count` | `…{request_type="scheduled"}` | `nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}` (else `used`/`max`), `nv_gpu_memory_used_bytes` / `nv_gpu_memory_total_bytes` | `nv_gpu_utilization`, `nv_inference_request_duration_us` / `nv_inference_request_success` |
//! | TGI | `tgi_queue_size` | `tgi_batch_current_size` | | `tgi_request_duration` histogram |
//! | DCGM exporter | | | `DCGM_FI_DEV_FB_USED` / (`_USED` + `_FREE` + `_RESERVED`) | `DCGM_FI_DEV_GPU_UTIL` (percent), else `DCGM_FI_PROF_GR_ENGINE_ACTIVE` |
//!
//! Aggregation over series (several engines, GPUs or models in one dump):
//! counts (waiting, running, blocks, histogram sums and counts, prefix-cache
//! counters) are **summed** — vLLM data-parallel engines (`engine="0"`,
//! `engine="1"`, …) share one endpoint, so their queues add up; ratios (KV
//! usage, GPU utilisation, hit rates) are **averaged**; memory is Σused /
//! Σtotal. SGLang / trtllm series with a `tp_rank` or `pp_rank` other than
//! `"0"` are skipped: they repeat rank 0's numbers. Triton sums over its
//! `model` label, so an ensemble's requests count once per composing model;
//! that inflates its latency equally on every replica, which is all a
//! relative scorer needs.
//!
//! `vllm:lora_requests_info` keeps stale label sets; its value is a Unix
//! timestamp and the series with the largest one is current. The served (base)
//! model is the `model_name` label of the first vLLM / SGLang series that has
//! one: a request naming another model on a LoRA-enabled server names an
//! adapter (see [`EndpointTelemetry::served_model`]).
//!
//! Latency comes from histogram `_sum` / `_count` deltas between scrapes: a
//! [`Window`] keeps the previous totals (see [`LatencyWindows`]). Non-finite
//! values (NaN, ±Inf) never feed a signal; ratios are clamped to 0–1.

use super::prom::{self, ParseStats, Sample};

/// Which server family exported the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerKind {
    /// Nothing recognised.
    #[default]
    Unknown,
    /// vLLM (`vllm:`).
    Vllm,
    /// SGLang (`sglang:`).
    Sglang,
    /// TensorRT-LLM's `trtllm-serve` (`trtllm_`).
    TrtLlm,
    /// Triton Inference Server (`nv_`).
    Triton,
    /// Hugging Face Text Generation Inference (`tgi_`).
    Tgi,
    /// NVIDIA DCGM exporter (`DCGM_FI_`), GPU metrics only.
    Dcgm,
}

impl ServerKind {
    /// The family a metric name belongs to, by prefix.
    pub fn detect(name: &str) -> Option<Self> {
        Some(if name.starts_with("vllm:") {
            Self::Vllm
        } else if name.starts_with("sglang:") {
            Self::Sglang
        } else if name.starts_with("trtllm_") || name.starts_with("trtllm:") {
            Self::TrtLlm
        } else if name.starts_with("nv_") {
            Self::Triton
        } else if name.starts_with("tgi_") {
            Self::Tgi
        } else if name.starts_with("DCGM_FI_") {
            Self::Dcgm
        } else {
            return None;
        })
    }

    /// Lower-case name for logs and the debug view.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Vllm => "vllm",
            Self::Sglang => "sglang",
            Self::TrtLlm => "trtllm-serve",
            Self::Triton => "triton",
            Self::Tgi => "tgi",
            Self::Dcgm => "dcgm",
        }
    }
}

/// LoRA adapters on an endpoint (vLLM `vllm:lora_requests_info`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoraState {
    /// Adapters that can be in one batch (`max_lora`); 0 if unknown.
    pub max_lora: u32,
    /// Adapters of running requests.
    pub running: Vec<String>,
    /// Adapters of waiting requests.
    pub waiting: Vec<String>,
}

impl LoraState {
    /// Whether `adapter` is in a running batch.
    pub fn is_running(&self, adapter: &str) -> bool {
        self.running.iter().any(|a| a == adapter)
    }

    /// Whether requests for `adapter` are waiting.
    pub fn is_waiting(&self, adapter: &str) -> bool {
        self.waiting.iter().any(|a| a == adapter)
    }

    /// Whether another adapter could join: the distinct adapters running or
    /// waiting are fewer than `max_lora` (waiting ones will claim slots
    /// first, so they count).
    pub fn has_free_slot(&self) -> bool {
        let extra = self
            .waiting
            .iter()
            .filter(|w| !self.running.contains(w))
            .count();
        ((self.running.len() + extra) as u64) < u64::from(self.max_lora)
    }
}

/// KV-cache geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheConfig {
    /// Tokens per block (vLLM `block_size`, SGLang `page_size`, TRT-LLM
    /// tokens per block).
    pub block_size: Option<u32>,
    /// Blocks in the cache, summed over engines.
    pub num_blocks: Option<u64>,
}

/// Cumulative `_sum` and `_count` of a histogram (or a pair of counters).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HistogramTotals {
    /// Sum of observations (seconds for latencies).
    pub sum: f64,
    /// Number of observations.
    pub count: f64,
}

/// Cumulative prefix-cache counters, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PrefixCacheCounters {
    /// Prompt tokens served from the cache.
    pub hits: f64,
    /// Prompt tokens looked up.
    pub queries: f64,
}

/// One endpoint's load, decoded from one scrape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EndpointTelemetry {
    /// The detected family (an inference server wins over DCGM).
    pub server: ServerKind,
    /// Requests waiting (summed over engines).
    pub waiting: Option<f64>,
    /// Requests running (summed over engines).
    pub running: Option<f64>,
    /// KV-cache usage, 0–1 (averaged over engines).
    pub kv_usage: Option<f64>,
    /// GPU utilisation, 0–1 (averaged over GPUs).
    pub gpu_util: Option<f64>,
    /// GPU memory used / total, 0–1.
    pub gpu_mem_used_ratio: Option<f64>,
    /// Cumulative TTFT histogram totals (seconds).
    pub ttft: Option<HistogramTotals>,
    /// Cumulative end-to-end latency totals (seconds).
    pub e2e: Option<HistogramTotals>,
    /// Mean TTFT over the last scrape interval (seconds); filled by
    /// [`EndpointTelemetry::apply_windows`].
    pub ttft_mean: Option<f64>,
    /// Mean end-to-end latency over the last scrape interval (seconds);
    /// filled by [`EndpointTelemetry::apply_windows`].
    pub e2e_mean: Option<f64>,
    /// LoRA adapters (vLLM only).
    pub lora: Option<LoraState>,
    /// The served base model (label `model_name` of vLLM / SGLang series).
    pub served_model: Option<String>,
    /// KV-cache geometry.
    pub cache: Option<CacheConfig>,
    /// Cumulative prefix-cache counters.
    pub prefix_cache: Option<PrefixCacheCounters>,
    /// Prefix-cache hit rate, 0–1: the server's gauge where it exports one,
    /// else over the last interval from [`Self::prefix_cache`].
    pub prefix_cache_hit_rate: Option<f64>,
    /// Engines (series of the running-requests metric) seen.
    pub engines: u32,
}

impl EndpointTelemetry {
    /// Fills the windowed means from the cumulative totals and advances
    /// `windows` (the previous scrape's totals).
    pub fn apply_windows(&mut self, windows: &mut LatencyWindows) {
        if let Some(t) = self.ttft {
            self.ttft_mean = windows.ttft.update(t);
        }
        if let Some(t) = self.e2e {
            self.e2e_mean = windows.e2e.update(t);
        }
        if let Some(p) = self.prefix_cache {
            let rate = windows.prefix.update(HistogramTotals {
                sum: p.hits,
                count: p.queries,
            });
            if self.prefix_cache_hit_rate.is_none() {
                self.prefix_cache_hit_rate = rate.map(clamp01);
            }
        }
    }
}

/// Mean of a cumulative `(sum, count)` pair over the interval between two
/// scrapes.
///
/// - first scrape: the lifetime mean (`sum / count`), or none when empty;
/// - counters went down (server restart): the lifetime mean of the new ones;
/// - no new observations: the previous interval's mean still stands;
/// - otherwise `Δsum / Δcount`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Window {
    prev: Option<HistogramTotals>,
    mean: Option<f64>,
}

impl Window {
    /// Feeds the latest totals; returns the current mean.
    pub fn update(&mut self, cur: HistogramTotals) -> Option<f64> {
        if !(cur.sum.is_finite() && cur.count.is_finite()) || cur.count < 0.0 {
            return self.mean;
        }
        let lifetime = (cur.count > 0.0).then(|| cur.sum / cur.count);
        self.mean = match self.prev {
            None => lifetime,
            Some(p) if cur.count < p.count || cur.sum < p.sum => lifetime,
            Some(p) if cur.count > p.count => Some((cur.sum - p.sum) / (cur.count - p.count)),
            Some(_) => self.mean,
        };
        self.prev = Some(cur);
        self.mean
    }

    /// The mean after the last update.
    pub fn mean(&self) -> Option<f64> {
        self.mean
    }
}

/// The windows a store keeps per endpoint between scrapes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencyWindows {
    /// TTFT.
    pub ttft: Window,
    /// End-to-end latency.
    pub e2e: Window,
    /// Prefix-cache hits / queries.
    pub prefix: Window,
}

/// What [`decode`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeStats {
    /// Parser totals (samples, skipped lines, first error).
    pub parse: ParseStats,
    /// Samples that fed a signal.
    pub used: usize,
}

/// Decodes one exposition. Latency means are left empty: call
/// [`EndpointTelemetry::apply_windows`] with the endpoint's windows.
pub fn decode(text: &[u8]) -> (EndpointTelemetry, DecodeStats) {
    decode_filtered(text, |_| true)
}

/// Like [`decode`], using only the samples `keep` accepts: e.g. a node's
/// DCGM exporter lists every GPU of the node, and `keep` can pick the
/// endpoint's pod by its `pod` label.
pub fn decode_filtered<'a>(
    text: &'a [u8],
    mut keep: impl FnMut(&Sample<'a>) -> bool,
) -> (EndpointTelemetry, DecodeStats) {
    let mut d = Decoder::default();
    let parse = prom::parse(text, |s| {
        if keep(s) {
            d.sample(s);
        }
    });
    let used = d.used;
    (d.finish(), DecodeStats { parse, used })
}

/// Sum / mean accumulator over finite values.
#[derive(Debug, Clone, Copy, Default)]
struct Agg {
    sum: f64,
    n: u32,
}

impl Agg {
    fn add(&mut self, v: f64) -> bool {
        if v.is_finite() {
            self.sum += v;
            self.n += 1;
            true
        } else {
            false
        }
    }

    fn sum(&self) -> Option<f64> {
        (self.n > 0).then_some(self.sum)
    }

    fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / f64::from(self.n))
    }
}

#[derive(Debug, Default)]
struct Decoder<'a> {
    server: Option<ServerKind>,
    dcgm: bool,
    used: usize,
    waiting: Agg,
    waiting_alt: Agg,
    running: Agg,
    kv: Agg,
    kv_alt: Agg,
    kv_used_blocks: Agg,
    kv_max_blocks: Agg,
    nv_gpu_util: Agg,
    dcgm_util_pct: Agg,
    dcgm_gr_active: Agg,
    nv_mem_used: Agg,
    nv_mem_total: Agg,
    fb_used: Agg,
    fb_free: Agg,
    fb_reserved: Agg,
    ttft_sum: Agg,
    ttft_count: Agg,
    e2e_sum: Agg,
    e2e_count: Agg,
    hits: Agg,
    queries: Agg,
    hits_alt: Agg,
    queries_alt: Agg,
    hit_rate: Agg,
    block_size: Option<u32>,
    num_blocks: Agg,
    lora: Option<Sample<'a>>,
    served_model: Option<prom::LabelValue<'a>>,
}

/// Series repeated per tensor / pipeline-parallel rank: only rank 0 counts.
fn replicated_rank(s: &Sample<'_>) -> bool {
    s.labels()
        .any(|l| (l.name == "tp_rank" || l.name == "pp_rank") && !l.value.eq_str("0"))
}

fn label_num<T: std::str::FromStr>(s: &Sample<'_>, name: &str) -> Option<T> {
    s.label(name)?.get().trim().parse().ok()
}

fn clamp01(v: f64) -> f64 {
    v.clamp(0.0, 1.0)
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

impl<'a> Decoder<'a> {
    fn sample(&mut self, s: &Sample<'a>) {
        let name = s.name;
        let used = if let Some(rest) = name.strip_prefix("vllm:") {
            self.served_model_of(s);
            self.vllm(rest, s)
        } else if let Some(rest) = name.strip_prefix("sglang:") {
            self.served_model_of(s);
            !replicated_rank(s) && self.sglang(rest, s)
        } else if let Some(rest) = name
            .strip_prefix("trtllm_")
            .or_else(|| name.strip_prefix("trtllm:"))
        {
            !replicated_rank(s) && self.trtllm(rest, s)
        } else if let Some(rest) = name.strip_prefix("nv_") {
            self.triton(rest, s)
        } else if let Some(rest) = name.strip_prefix("tgi_") {
            self.tgi(rest, s)
        } else if let Some(rest) = name.strip_prefix("DCGM_FI_") {
            let used = self.dcgm(rest, s);
            self.dcgm |= used;
            return self.count(used);
        } else {
            false
        };
        if used && self.server.is_none() {
            self.server = ServerKind::detect(name);
        }
        self.count(used);
    }

    fn count(&mut self, used: bool) {
        self.used += usize::from(used);
    }

    /// Keeps the first non-empty `model_name` label (the served base model).
    fn served_model_of(&mut self, s: &Sample<'a>) {
        if self.served_model.is_none() {
            self.served_model = s.label("model_name").filter(|v| !v.raw().is_empty());
        }
    }

    fn vllm(&mut self, rest: &str, s: &Sample<'a>) -> bool {
        let v = s.value;
        match rest {
            "num_requests_waiting" => self.waiting.add(v),
            "num_requests_running" => self.running.add(v),
            "kv_cache_usage_perc" => self.kv.add(v),
            "gpu_cache_usage_perc" => self.kv_alt.add(v),
            "time_to_first_token_seconds_sum" => self.ttft_sum.add(v),
            "time_to_first_token_seconds_count" => self.ttft_count.add(v),
            "e2e_request_latency_seconds_sum" => self.e2e_sum.add(v),
            "e2e_request_latency_seconds_count" => self.e2e_count.add(v),
            "prefix_cache_hits_total" => self.hits.add(v),
            "prefix_cache_queries_total" => self.queries.add(v),
            "gpu_prefix_cache_hits_total" => self.hits_alt.add(v),
            "gpu_prefix_cache_queries_total" => self.queries_alt.add(v),
            "gpu_prefix_cache_hit_rate" => self.hit_rate.add(v),
            "lora_requests_info" => {
                if !v.is_finite() {
                    return false;
                }
                if self.lora.is_none_or(|best| v > best.value) {
                    self.lora = Some(*s);
                }
                true
            }
            "cache_config_info" => {
                let bs = label_num::<u32>(s, "block_size");
                let nb = label_num::<f64>(s, "num_gpu_blocks");
                self.cache_info(bs, nb)
            }
            _ => false,
        }
    }

    fn sglang(&mut self, rest: &str, s: &Sample<'a>) -> bool {
        let v = s.value;
        match rest {
            "num_queue_reqs" => self.waiting.add(v),
            "num_running_reqs" => self.running.add(v),
            "token_usage" => self.kv.add(v),
            "cache_hit_rate" => self.hit_rate.add(v),
            "cached_tokens_total" => self.hits.add(v),
            "prompt_tokens_total" => self.queries.add(v),
            "time_to_first_token_seconds_sum" => self.ttft_sum.add(v),
            "time_to_first_token_seconds_count" => self.ttft_count.add(v),
            "e2e_request_latency_seconds_sum" => self.e2e_sum.add(v),
            "e2e_request_latency_seconds_count" => self.e2e_count.add(v),
            "cache_config_info" => {
                let bs = label_num::<u32>(s, "page_size");
                let nb = label_num::<f64>(s, "num_pages");
                self.cache_info(bs, nb)
            }
            _ => false,
        }
    }

    fn trtllm(&mut self, rest: &str, s: &Sample<'a>) -> bool {
        let v = s.value;
        match rest {
            "num_requests_waiting" => self.waiting.add(v),
            "num_requests_running" => self.running.add(v),
            "kv_cache_utilization" => self.kv.add(v),
            "kv_cache_hit_rate" => self.hit_rate.add(v),
            "kv_cache_tokens_per_block" => self.block_size_value(v),
            "kv_cache_max_blocks" => self.num_blocks.add(v),
            "time_to_first_token_seconds_sum" => self.ttft_sum.add(v),
            "time_to_first_token_seconds_count" => self.ttft_count.add(v),
            "e2e_request_latency_seconds_sum" => self.e2e_sum.add(v),
            "e2e_request_latency_seconds_count" => self.e2e_count.add(v),
            _ => false,
        }
    }

    fn triton(&mut self, rest: &str, s: &Sample<'a>) -> bool {
        let v = s.value;
        match rest {
            "trt_llm_request_metrics" => match s.label("request_type") {
                Some(t) if t.eq_str("waiting") => self.waiting.add(v),
                Some(t) if t.eq_str("scheduled") => self.running.add(v),
                _ => false,
            },
            "inference_pending_request_count" => self.waiting_alt.add(v),
            "trt_llm_kv_cache_block_metrics" => match s.label("kv_cache_block_type") {
                Some(t) if t.eq_str("fraction") => self.kv.add(v),
                Some(t) if t.eq_str("used") => self.kv_used_blocks.add(v),
                Some(t) if t.eq_str("max") => {
                    self.kv_max_blocks.add(v);
                    self.num_blocks.add(v)
                }
                Some(t) if t.eq_str("tokens_per") => self.block_size_value(v),
                _ => false,
            },
            "gpu_utilization" => self.nv_gpu_util.add(v),
            "gpu_memory_used_bytes" => self.nv_mem_used.add(v),
            "gpu_memory_total_bytes" => self.nv_mem_total.add(v),
            "inference_request_duration_us" => self.e2e_sum.add(v / 1e6),
            "inference_request_success" => self.e2e_count.add(v),
            _ => false,
        }
    }

    fn tgi(&mut self, rest: &str, s: &Sample<'a>) -> bool {
        let v = s.value;
        match rest {
            "queue_size" => self.waiting.add(v),
            "batch_current_size" => self.running.add(v),
            "request_duration_sum" => self.e2e_sum.add(v),
            "request_duration_count" => self.e2e_count.add(v),
            _ => false,
        }
    }

    fn dcgm(&mut self, rest: &str, s: &Sample<'a>) -> bool {
        let v = s.value;
        match rest {
            "DEV_GPU_UTIL" => self.dcgm_util_pct.add(v),
            "PROF_GR_ENGINE_ACTIVE" => self.dcgm_gr_active.add(v),
            "DEV_FB_USED" => self.fb_used.add(v),
            "DEV_FB_FREE" => self.fb_free.add(v),
            "DEV_FB_RESERVED" => self.fb_reserved.add(v),
            _ => false,
        }
    }

    fn cache_info(&mut self, block_size: Option<u32>, num_blocks: Option<f64>) -> bool {
        if let Some(bs) = block_size {
            self.block_size = Some(self.block_size.map_or(bs, |b| b.max(bs)));
        }
        let nb = num_blocks.is_some_and(|n| self.num_blocks.add(n));
        block_size.is_some() || nb
    }

    fn block_size_value(&mut self, v: f64) -> bool {
        if !(v.is_finite() && v >= 1.0 && v <= f64::from(u32::MAX)) {
            return false;
        }
        let bs = v as u32;
        self.block_size = Some(self.block_size.map_or(bs, |b| b.max(bs)));
        true
    }

    fn finish(self) -> EndpointTelemetry {
        let server = match (self.server, self.dcgm) {
            (Some(k), _) => k,
            (None, true) => ServerKind::Dcgm,
            (None, false) => ServerKind::Unknown,
        };
        let kv_from_blocks = match (self.kv_used_blocks.sum(), self.kv_max_blocks.sum()) {
            (Some(u), Some(m)) if m > 0.0 => Some(u / m),
            _ => None,
        };
        let gpu_mem_used_ratio = match (self.nv_mem_used.sum(), self.nv_mem_total.sum()) {
            (Some(u), Some(t)) if t > 0.0 => Some(u / t),
            _ => {
                let total = self.fb_used.sum().unwrap_or(0.0)
                    + self.fb_free.sum().unwrap_or(0.0)
                    + self.fb_reserved.sum().unwrap_or(0.0);
                match self.fb_used.sum() {
                    Some(u) if self.fb_free.n > 0 && total > 0.0 => Some(u / total),
                    _ => None,
                }
            }
        };
        let totals = |sum: Agg, count: Agg| match (sum.sum(), count.sum()) {
            (Some(sum), Some(count)) => Some(HistogramTotals { sum, count }),
            _ => None,
        };
        let prefix = match (self.hits.sum(), self.queries.sum()) {
            (Some(hits), Some(queries)) => Some(PrefixCacheCounters { hits, queries }),
            _ => match (self.hits_alt.sum(), self.queries_alt.sum()) {
                (Some(hits), Some(queries)) => Some(PrefixCacheCounters { hits, queries }),
                _ => None,
            },
        };
        let num_blocks = self
            .num_blocks
            .sum()
            .filter(|n| *n >= 0.0 && *n <= u64::MAX as f64)
            .map(|n| n as u64);
        let cache = (self.block_size.is_some() || num_blocks.is_some()).then_some(CacheConfig {
            block_size: self.block_size,
            num_blocks,
        });
        let lora = self.lora.map(|s| LoraState {
            max_lora: label_num::<u32>(&s, "max_lora").unwrap_or(0),
            running: s
                .label("running_lora_adapters")
                .map(|v| split_list(&v.get()))
                .unwrap_or_default(),
            waiting: s
                .label("waiting_lora_adapters")
                .map(|v| split_list(&v.get()))
                .unwrap_or_default(),
        });
        EndpointTelemetry {
            server,
            waiting: self
                .waiting
                .sum()
                .or(self.waiting_alt.sum())
                .map(|v| v.max(0.0)),
            running: self.running.sum().map(|v| v.max(0.0)),
            kv_usage: self
                .kv
                .mean()
                .or(self.kv_alt.mean())
                .or(kv_from_blocks)
                .map(clamp01),
            gpu_util: self
                .nv_gpu_util
                .mean()
                .or(self.dcgm_util_pct.mean().map(|p| p / 100.0))
                .or(self.dcgm_gr_active.mean())
                .map(clamp01),
            gpu_mem_used_ratio: gpu_mem_used_ratio.map(clamp01),
            ttft: totals(self.ttft_sum, self.ttft_count),
            e2e: totals(self.e2e_sum, self.e2e_count),
            ttft_mean: None,
            e2e_mean: None,
            lora,
            served_model: self.served_model.map(|v| v.get().into_owned()),
            cache,
            prefix_cache: prefix,
            prefix_cache_hit_rate: self.hit_rate.mean().map(clamp01),
            engines: self.running.n,
        }
    }
}
