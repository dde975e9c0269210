//! Prometheus text exposition (format 0.0.4) in vLLM 0.32's shape.
//!
//! Families, HELP texts, label order (alphabetical: `engine`, `finished_reason`, `le`,
//! `model_name`), `_created` companions and number formatting (Python
//! `prometheus_client`'s Go-style floats: `8.0`, `1.7956480950568624e+09`) follow the real
//! dump in `shared/examples/metrics/`. Every engine series carries
//! `engine="0",model_name="<base model>"`; `vllm:lora_requests_info` carries only
//! `max_lora`, `running_lora_adapters`, `waiting_lora_adapters` (as vLLM) and is emitted
//! only when LoRA adapters are configured, with up to [`LORA_INFO_HISTORY`] stale label
//! sets kept, like vLLM's gauge.
//!
//! Written with [`shardgate_promtext`] in its [`Style::PYTHON`] (the number format and
//! `le` placement above).
//!
//! Histogram buckets (seconds) are vLLM's: [`TTFT_BUCKETS`], [`ITL_BUCKETS`],
//! [`REQUEST_LATENCY_BUCKETS`].
//!
//! The figures themselves ([`EngineMetrics`]) are defined here too: the engine
//! counts into them and this module renders them, so the engine imports this
//! module and not the other way round.

use shardgate_promtext::{Kind, PromWriter, Style};

/// `vllm:time_to_first_token_seconds` buckets.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// `vllm:inter_token_latency_seconds` buckets.
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];

/// `vllm:e2e_request_latency_seconds` and `vllm:request_queue_time_seconds` buckets.
pub const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// Stale `vllm:lora_requests_info` label sets kept in the output (newest has the largest
/// value).
pub const LORA_INFO_HISTORY: usize = 8;

/// A cumulative Prometheus histogram with fixed upper bounds (seconds).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative count per bound; the last slot is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Counters, gauges and histograms of the engine (a snapshot).
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// Requests running.
    pub running: usize,
    /// Requests waiting.
    pub waiting: usize,
    /// KV blocks in use / all blocks.
    pub kv_usage: f64,
    /// Prompt tokens of admitted requests (cached or not).
    pub prompt_tokens: u64,
    /// Output tokens produced.
    pub generation_tokens: u64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries: u64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_cache_hits: u64,
    /// Requests finished with `finished_reason="length"`.
    pub finished_length: u64,
    /// Prefill-only requests finished (`finished_reason="stop"`).
    pub finished_stop: u64,
    /// Requests aborted (client gone).
    pub finished_abort: u64,
    /// Engine steps run.
    pub steps: u64,
    /// Time to first token, seconds.
    pub ttft: Histogram,
    /// Time between consecutive output tokens, seconds.
    pub itl: Histogram,
    /// Arrival to finish, seconds.
    pub e2e: Histogram,
    /// Time spent waiting, seconds.
    pub queue_time: Histogram,
    /// Adapters with running requests, sorted.
    pub running_loras: Vec<String>,
    /// Adapters with waiting requests, sorted.
    pub waiting_loras: Vec<String>,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            running: 0,
            waiting: 0,
            kv_usage: 0.0,
            prompt_tokens: 0,
            generation_tokens: 0,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            finished_length: 0,
            finished_stop: 0,
            finished_abort: 0,
            steps: 0,
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(REQUEST_LATENCY_BUCKETS),
            queue_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            running_loras: Vec::new(),
            waiting_loras: Vec::new(),
        }
    }
}

/// Static facts the exposition needs besides the engine counters.
#[derive(Debug, Clone)]
pub struct ExpositionInfo<'a> {
    /// Base model name (label `model_name`).
    pub model_name: &'a str,
    /// KV block size in tokens.
    pub block_size: usize,
    /// KV blocks in the pool.
    pub num_gpu_blocks: usize,
    /// LoRA slots (`max_lora` label).
    pub max_loras: usize,
    /// Whether any LoRA adapter is configured (emit `vllm:lora_requests_info`).
    pub lora_enabled: bool,
    /// Emit `vllm:gpu_cache_usage_perc` instead of `vllm:kv_cache_usage_perc`.
    pub legacy: bool,
    /// Server start, unix seconds (value of `_created` series).
    pub created_unix: f64,
}

/// Past `vllm:lora_requests_info` label sets with the last time each was current.
#[derive(Debug, Clone, Default)]
pub struct LoraInfoHistory {
    entries: Vec<(String, String, f64)>,
}

impl LoraInfoHistory {
    /// Marks `(running, waiting)` as the current label set at `now_unix`.
    pub fn record(&mut self, running: String, waiting: String, now_unix: f64) {
        self.entries
            .retain(|(r, w, _)| !(r == &running && w == &waiting));
        self.entries.push((running, waiting, now_unix));
        if self.entries.len() > LORA_INFO_HISTORY {
            self.entries.remove(0);
        }
    }
}

/// The vLLM series' common labels and `_created` value, over the shared writer.
struct Writer<'a, 'b> {
    w: PromWriter<'a>,
    /// `engine`, `model_name`.
    labels: [(&'b str, &'b str); 2],
    created: f64,
}

impl Writer<'_, '_> {
    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.w
            .family(name, help, Kind::Gauge)
            .sample("", &self.labels, v);
    }

    fn counter(&mut self, base: &str, help: &str, v: f64) {
        self.w
            .family(&format!("{base}_total"), help, Kind::Counter)
            .sample("", &self.labels, v);
        self.w
            .family(&format!("{base}_created"), help, Kind::Gauge)
            .sample("", &self.labels, self.created);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        let buckets = h.bounds.iter().copied().chain([f64::INFINITY]);
        self.w.family(name, help, Kind::Histogram).histogram(
            &self.labels,
            buckets.zip(h.counts.iter().copied()),
            h.sum,
        );
        self.w
            .family(&format!("{name}_created"), help, Kind::Gauge)
            .sample("", &self.labels, self.created);
    }
}

/// Renders the `/metrics` body.
pub fn render(info: &ExpositionInfo<'_>, m: &EngineMetrics, lora: &LoraInfoHistory) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let mut w = Writer {
        w: PromWriter::new(&mut out, Style::PYTHON),
        labels: [("engine", "0"), ("model_name", info.model_name)],
        created: info.created_unix,
    };
    w.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        m.running as f64,
    );
    w.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        m.waiting as f64,
    );
    if info.legacy {
        w.gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            m.kv_usage,
        );
    } else {
        w.gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            m.kv_usage,
        );
    }
    w.counter(
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        m.prefix_cache_queries as f64,
    );
    w.counter(
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        m.prefix_cache_hits as f64,
    );
    w.counter(
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        0.0,
    );
    w.counter(
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        m.prompt_tokens as f64,
    );
    w.counter(
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        m.generation_tokens as f64,
    );

    // request_success has a third label, between the common two.
    let help = "Count of successfully processed requests.";
    let reasons = [
        ("stop", m.finished_stop),
        ("length", m.finished_length),
        ("abort", m.finished_abort),
    ];
    let labels = |reason| {
        [
            ("engine", "0"),
            ("finished_reason", reason),
            ("model_name", info.model_name),
        ]
    };
    w.w.family("vllm:request_success_total", help, Kind::Counter);
    for (reason, v) in reasons {
        w.w.sample("", &labels(reason), v);
    }
    w.w.family("vllm:request_success_created", help, Kind::Gauge);
    for (reason, _) in reasons {
        w.w.sample("", &labels(reason), info.created_unix);
    }

    w.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &m.ttft,
    );
    w.histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &m.itl,
    );
    w.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        &m.e2e,
    );
    w.histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        &m.queue_time,
    );

    let mut w = w.w;
    if info.lora_enabled {
        w.family(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            Kind::Gauge,
        );
        let max_lora = info.max_loras.to_string();
        for (running, waiting, t) in lora.entries.iter().rev() {
            let labels = [
                ("max_lora", max_lora.as_str()),
                ("running_lora_adapters", running),
                ("waiting_lora_adapters", waiting),
            ];
            w.sample("", &labels, *t);
        }
    }
    let (block_size, num_gpu_blocks) =
        (info.block_size.to_string(), info.num_gpu_blocks.to_string());
    w.family(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        Kind::Gauge,
    )
    .sample(
        "",
        &[
            ("block_size", &block_size),
            ("cache_dtype", "auto"),
            ("enable_prefix_caching", "True"),
            ("engine", "0"),
            ("num_gpu_blocks", &num_gpu_blocks),
            ("prefix_caching_hash_algo", "xxh3"),
        ],
        1.0,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(TTFT_BUCKETS);
        h.observe(0.05);
        h.observe(0.05);
        h.observe(3000.0);
        assert_eq!(h.count(), 3);
        assert!((h.sum() - 3000.1).abs() < 1e-9);
        let m = EngineMetrics {
            ttft: h,
            ..EngineMetrics::default()
        };
        let info = ExpositionInfo {
            model_name: "tiny",
            block_size: 16,
            num_gpu_blocks: 32,
            max_loras: 2,
            lora_enabled: false,
            legacy: false,
            created_unix: 1.0,
        };
        let text = render(&info, &m, &LoraInfoHistory::default());
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.04\",model_name=\"tiny\"} 0.0\n"
        ));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.06\",model_name=\"tiny\"} 2.0\n"
        ));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"2560.0\",model_name=\"tiny\"} 2.0\n"
        ));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"tiny\"} 3.0\n"
        ));
        assert!(text.contains("vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"tiny\"} 0.0\n"));
        assert!(!text.contains("gpu_cache_usage_perc"));
        assert!(!text.contains("lora_requests_info"));
    }

    #[test]
    fn lora_history_keeps_stale_sets_newest_largest() {
        let mut hist = LoraInfoHistory::default();
        hist.record(String::new(), String::new(), 10.0);
        hist.record("a".into(), "b".into(), 11.0);
        hist.record(String::new(), String::new(), 12.0);
        assert_eq!(hist.entries.len(), 2);
        let info = ExpositionInfo {
            model_name: "m",
            block_size: 16,
            num_gpu_blocks: 32,
            max_loras: 2,
            lora_enabled: true,
            legacy: true,
            created_unix: 1.0,
        };
        let text = render(&info, &EngineMetrics::default(), &hist);
        assert!(text.contains("vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 12.0\n"));
        assert!(text.contains("vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"a\",waiting_lora_adapters=\"b\"} 11.0\n"));
        assert!(text.contains("vllm:gpu_cache_usage_perc{"));
        assert!(!text.contains("vllm:kv_cache_usage_perc"));
    }
}
