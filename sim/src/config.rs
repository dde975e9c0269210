//! Command-line / library configuration of a simulated server.
//!
//! Defaults model a mid-size GPU serving one model: 16 sequences, 2,048 KV blocks of 16
//! tokens (32,768 tokens of KV), 200 µs per uncached prompt token (5k tokens/s prefill),
//! 8 ms per decode step plus 0.4 ms per running sequence (≈ 14 ms per token at 16
//! sequences), 16 output tokens unless the request says otherwise. No per-call overhead
//! and no per-embedding-input cost unless `--call-overhead-us` / `--embedding-us-per-input`
//! ask for them (the batching benchmark does).

use clap::Parser;

/// Default `--port`.
pub const DEFAULT_PORT: u16 = 8000;
/// Default `--model`.
pub const DEFAULT_MODEL: &str = "sim-model";

/// Configuration of a simulated vLLM server (all flags of `shardgate-sim`).
///
/// Tokens are whitespace-separated words. Times are in microseconds unless the flag
/// name says `_ms`.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "shardgate-sim",
    version,
    about = "Simulated vLLM-compatible inference server (tokens are whitespace-separated words)"
)]
pub struct SimConfig {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 = ephemeral).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Served model name (repeatable); the first is the base model, the others aliases of it.
    #[arg(long = "model", value_name = "NAME", default_value = DEFAULT_MODEL)]
    pub model: Vec<String>,
    /// LoRA adapter this server can load (repeatable).
    #[arg(long = "lora", value_name = "NAME")]
    pub lora: Vec<String>,
    /// LoRA slots: most distinct adapters among running requests.
    #[arg(long, default_value_t = 2)]
    pub max_loras: usize,
    /// Most requests running at once (continuous-batching width).
    #[arg(long, default_value_t = 16)]
    pub max_num_seqs: usize,
    /// KV-cache blocks (capacity = blocks × block size tokens).
    #[arg(long, default_value_t = 2048)]
    pub num_gpu_blocks: usize,
    /// Tokens per KV-cache block (and per prefix-cache block).
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Prefill time per uncached prompt token, in microseconds.
    #[arg(long, default_value_t = 200)]
    pub prefill_us_per_token: u64,
    /// Base time of one decode step, in microseconds.
    #[arg(long, default_value_t = 8000)]
    pub decode_step_us: u64,
    /// Extra decode-step time per running sequence, in microseconds.
    #[arg(long, default_value_t = 400)]
    pub decode_step_us_per_seq: u64,
    /// Fixed cost of every API call the engine admits (HTTP parsing, tokenization,
    /// scheduling, kernel launches), in microseconds: charged once per call, however
    /// many prompts or inputs it carries, and serialized on the engine (it lengthens
    /// the step that admits the call's first prompt). 0 = none.
    #[arg(long, default_value_t = 0)]
    pub call_overhead_us: u64,
    /// Cost of each embedding input (each prompt of a prefill-only request), in
    /// microseconds, on top of the prefill of its tokens: an embeddings call with k
    /// inputs of n tokens costs call overhead + k × this + n × prefill time per token.
    #[arg(long, default_value_t = 0)]
    pub embedding_us_per_input: u64,
    /// Output tokens when a request gives no max_tokens.
    #[arg(long, default_value_t = 16)]
    pub max_tokens_default: usize,
    /// Length of embedding vectors, in floats.
    #[arg(long, default_value_t = 16)]
    pub embedding_dim: usize,
    /// Seed for output words, ids and fault decisions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fault: fraction (0..1) of inference requests answered 500 with an OpenAI error.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,
    /// Fault: delay before answering an inference request's headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub stall_ms: u64,
    /// Fault: fraction (0..1) of streaming responses whose connection is aborted after
    /// a random number of tokens.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub close_mid_stream_rate: f64,
    /// Fault: answer 503 on /health and inference endpoints for this long after start,
    /// in milliseconds (model loading).
    #[arg(long, default_value_t = 0)]
    pub slow_start_ms: u64,
    /// Cold start: the first inference request for each model or adapter pays this
    /// load time, in milliseconds, before it is scheduled (weights or an adapter
    /// loading, CUDA graphs being captured); requests that arrive meanwhile wait
    /// for the same load. 0 = warm from the start.
    #[arg(long, default_value_t = 0)]
    pub cold_start_ms: u64,
    /// Fixed-response mode: skip the engine and answer every inference request at once
    /// with at most 8 output tokens (benchmarks where the backend must not be the
    /// bottleneck).
    #[arg(long)]
    pub fast: bool,
    /// Export the older `vllm:gpu_cache_usage_perc` instead of `vllm:kv_cache_usage_perc`.
    #[arg(long)]
    pub legacy_metrics: bool,
    /// Export no telemetry: `GET /metrics` answers 404 (FastAPI's `Not Found`), as
    /// a server started without a metrics endpoint (tests comparing a gateway's
    /// behaviour with and without backend telemetry).
    #[arg(long)]
    pub no_metrics: bool,
    /// Speak HTTP/2 only (prior knowledge; ALPN `h2` with TLS): an HTTP/1.1
    /// request is a protocol error, as on a server behind a Service port with
    /// `appProtocol: kubernetes.io/h2c` (tests of the gateway's HTTP/2
    /// upstream; `GET /sim/stats` counts `http2_requests_total` either way).
    #[arg(long)]
    pub http2_only: bool,
    /// Serve HTTPS with this PEM certificate chain (with `--tls-key`).
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Publish KV-cache events in vLLM's format on this ZMQ PUB port (0 = ephemeral),
    /// on `--host`; the prefix cache then uses vLLM's `sha256_cbor` block hashes.
    #[arg(long, value_name = "PORT")]
    pub kv_events_port: Option<u16>,
    /// Serve event replays on this ZMQ ROUTER port (0 = ephemeral; with `--kv-events-port`).
    #[arg(long, value_name = "PORT", requires = "kv_events_port")]
    pub kv_events_replay_port: Option<u16>,
    /// Topic of the published events (vLLM's default: empty).
    #[arg(long, default_value = "")]
    pub kv_events_topic: String,
    /// The `NONE_HASH` seed of the block hashes (vLLM: `PYTHONHASHSEED`, else
    /// `vllm-none-hash`).
    #[arg(long, default_value = shardgate_kvevents::DEFAULT_SEED)]
    pub prefix_hash_seed: String,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not within 0..1"))
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: DEFAULT_PORT,
            model: vec![DEFAULT_MODEL.into()],
            lora: Vec::new(),
            max_loras: 2,
            max_num_seqs: 16,
            num_gpu_blocks: 2048,
            block_size: 16,
            prefill_us_per_token: 200,
            decode_step_us: 8000,
            decode_step_us_per_seq: 400,
            call_overhead_us: 0,
            embedding_us_per_input: 0,
            max_tokens_default: 16,
            embedding_dim: 16,
            seed: 0,
            error_rate: 0.0,
            stall_ms: 0,
            close_mid_stream_rate: 0.0,
            slow_start_ms: 0,
            cold_start_ms: 0,
            fast: false,
            legacy_metrics: false,
            no_metrics: false,
            http2_only: false,
            tls_cert: None,
            tls_key: None,
            kv_events_port: None,
            kv_events_replay_port: None,
            kv_events_topic: String::new(),
            prefix_hash_seed: shardgate_kvevents::DEFAULT_SEED.into(),
        }
    }
}

impl SimConfig {
    /// The base model (first `--model`).
    pub fn base_model(&self) -> &str {
        self.model.first().map_or(DEFAULT_MODEL, String::as_str)
    }

    /// Longest prompt plus output a request may have, in tokens (the whole KV pool).
    pub fn max_model_len(&self) -> usize {
        self.num_gpu_blocks.saturating_mul(self.block_size)
    }

    /// Checks the values clap cannot: positive sizes, rates within 0..1, distinct names.
    pub fn validate(&self) -> Result<(), String> {
        if self.model.is_empty() {
            return Err("at least one --model is needed".into());
        }
        for (name, v) in [
            ("--max-num-seqs", self.max_num_seqs),
            ("--num-gpu-blocks", self.num_gpu_blocks),
            ("--block-size", self.block_size),
            ("--max-tokens-default", self.max_tokens_default),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !self.lora.is_empty() && self.max_loras == 0 {
            return Err("--max-loras must be at least 1 when --lora is given".into());
        }
        for (name, v) in [
            ("--error-rate", self.error_rate),
            ("--close-mid-stream-rate", self.close_mid_stream_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} {v} is not within 0..1"));
            }
        }
        let mut names: Vec<&String> = self.model.iter().chain(&self.lora).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("model or adapter name `{}` given twice", w[0]));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::{Args, CommandFactory, FromArgMatches};

    #[test]
    fn clap_defaults_equal_default() {
        SimConfig::command().debug_assert();
        assert_eq!(
            SimConfig::parse_from(["shardgate-sim"]),
            SimConfig::default()
        );
        assert!(SimConfig::default().validate().is_ok());
    }

    #[test]
    fn repeatable_flags_and_rates() {
        let c = SimConfig::parse_from([
            "x",
            "--model",
            "a",
            "--model",
            "b",
            "--lora",
            "l1",
            "--lora",
            "l2",
            "--error-rate",
            "0.5",
            "--fast",
        ]);
        assert_eq!(c.model, vec!["a", "b"]);
        assert_eq!(c.lora, vec!["l1", "l2"]);
        assert_eq!(c.base_model(), "a");
        assert!(c.fast);
        assert!(!c.no_metrics);
        assert!(SimConfig::parse_from(["x", "--no-metrics"]).no_metrics);
        assert!(SimConfig::try_parse_from(["x", "--error-rate", "1.5"]).is_err());
        let dup = SimConfig {
            lora: vec!["sim-model".into()],
            ..SimConfig::default()
        };
        assert!(dup.validate().is_err());
    }

    #[test]
    fn cost_model_flags() {
        let d = SimConfig::default();
        assert_eq!((d.call_overhead_us, d.embedding_us_per_input), (0, 0));
        let c = SimConfig::parse_from([
            "x",
            "--call-overhead-us",
            "2000",
            "--embedding-us-per-input",
            "50",
        ]);
        assert_eq!((c.call_overhead_us, c.embedding_us_per_input), (2000, 50));
    }

    #[test]
    fn flattens_into_another_cli() {
        #[derive(clap::Parser, Debug)]
        #[command(name = "parent", about = "parent about")]
        struct Parent {
            #[command(flatten)]
            sim: SimConfig,
            #[arg(long)]
            other: bool,
        }
        let p = Parent::parse_from(["parent", "--port", "0", "--other"]);
        assert_eq!(p.sim.port, 0);
        assert!(p.other);
        let cmd = Parent::command();
        assert_eq!(cmd.get_name(), "parent");
        assert_eq!(
            cmd.get_about().map(ToString::to_string).as_deref(),
            Some("parent about")
        );
        // The Args impl is usable on its own too.
        let m = SimConfig::augment_args(clap::Command::new("t")).get_matches_from(["t"]);
        assert_eq!(
            SimConfig::from_arg_matches(&m).unwrap(),
            SimConfig::default()
        );
    }
}
