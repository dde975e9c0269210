//! The simulator's state shared by its handlers (HTTP in `server`, gRPC in
//! `grpc`) and read by the engine task: the configuration, the
//! counters its pages show, the faults and timing `/sim/faults` changes at
//! run time, and the engine's command queue. Both front ends build on this
//! module; neither imports the other for it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::api::ApiError;
use crate::config::SimConfig;
use crate::driver::{self, Command};
use crate::engine::Timing;
use crate::tokens::Prompt;

/// Response body type of every handler.
pub(crate) type RespBody = UnsyncBoxBody<Bytes, io::Error>;

/// Faults and timing, changeable at run time (`/sim/faults`).
#[derive(Debug)]
pub(crate) struct Faults {
    error_rate: AtomicU64,
    pub(crate) stall_ms: AtomicU64,
    close_mid_stream_rate: AtomicU64,
    prefill_us_per_token: AtomicU64,
    decode_step_us: AtomicU64,
    decode_step_us_per_seq: AtomicU64,
    call_overhead_us: AtomicU64,
    embedding_us_per_input: AtomicU64,
}

impl Faults {
    pub(crate) fn new(c: &SimConfig) -> Self {
        Self {
            error_rate: AtomicU64::new(c.error_rate.to_bits()),
            stall_ms: AtomicU64::new(c.stall_ms),
            close_mid_stream_rate: AtomicU64::new(c.close_mid_stream_rate.to_bits()),
            prefill_us_per_token: AtomicU64::new(c.prefill_us_per_token),
            decode_step_us: AtomicU64::new(c.decode_step_us),
            decode_step_us_per_seq: AtomicU64::new(c.decode_step_us_per_seq),
            call_overhead_us: AtomicU64::new(c.call_overhead_us),
            embedding_us_per_input: AtomicU64::new(c.embedding_us_per_input),
        }
    }

    /// Current engine timing.
    pub(crate) fn timing(&self) -> Timing {
        Timing {
            prefill_us_per_token: self.prefill_us_per_token.load(Relaxed),
            decode_step_us: self.decode_step_us.load(Relaxed),
            decode_step_us_per_seq: self.decode_step_us_per_seq.load(Relaxed),
            call_overhead_us: self.call_overhead_us.load(Relaxed),
            embedding_us_per_input: self.embedding_us_per_input.load(Relaxed),
        }
    }

    pub(crate) fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate.load(Relaxed))
    }

    pub(crate) fn close_mid_stream_rate(&self) -> f64 {
        f64::from_bits(self.close_mid_stream_rate.load(Relaxed))
    }

    /// Apply a `/sim/faults` update; a rate outside 0..1 is refused and
    /// nothing changes.
    pub(crate) fn apply(&self, u: &FaultUpdate) -> Result<(), ApiError> {
        for (name, v) in [
            ("error_rate", u.error_rate),
            ("close_mid_stream_rate", u.close_mid_stream_rate),
        ] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    return Err(ApiError::bad_request(format!(
                        "{name} {v} is not within 0..1"
                    )));
                }
            }
        }
        if let Some(v) = u.error_rate {
            self.error_rate.store(v.to_bits(), Relaxed);
        }
        if let Some(v) = u.close_mid_stream_rate {
            self.close_mid_stream_rate.store(v.to_bits(), Relaxed);
        }
        let stores = [
            (u.stall_ms, &self.stall_ms),
            (u.decode_step_us, &self.decode_step_us),
            (u.decode_step_us_per_seq, &self.decode_step_us_per_seq),
            (u.prefill_us_per_token, &self.prefill_us_per_token),
            (u.call_overhead_us, &self.call_overhead_us),
            (u.embedding_us_per_input, &self.embedding_us_per_input),
        ];
        for (v, slot) in stores {
            if let Some(v) = v {
                slot.store(v, Relaxed);
            }
        }
        Ok(())
    }

    pub(crate) fn view(&self) -> FaultView {
        let t = self.timing();
        FaultView {
            error_rate: self.error_rate(),
            stall_ms: self.stall_ms.load(Relaxed),
            close_mid_stream_rate: self.close_mid_stream_rate(),
            decode_step_us: t.decode_step_us,
            decode_step_us_per_seq: t.decode_step_us_per_seq,
            prefill_us_per_token: t.prefill_us_per_token,
            call_overhead_us: t.call_overhead_us,
            embedding_us_per_input: t.embedding_us_per_input,
        }
    }
}

/// `/sim/faults` request: any subset of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultUpdate {
    error_rate: Option<f64>,
    stall_ms: Option<u64>,
    close_mid_stream_rate: Option<f64>,
    decode_step_us: Option<u64>,
    decode_step_us_per_seq: Option<u64>,
    prefill_us_per_token: Option<u64>,
    call_overhead_us: Option<u64>,
    embedding_us_per_input: Option<u64>,
}

/// `/sim/faults` answer: all current values.
#[derive(Debug, Serialize)]
pub(crate) struct FaultView {
    error_rate: f64,
    stall_ms: u64,
    close_mid_stream_rate: f64,
    decode_step_us: u64,
    decode_step_us_per_seq: u64,
    prefill_us_per_token: u64,
    call_overhead_us: u64,
    embedding_us_per_input: u64,
}

/// State shared by the handlers and the engine task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: SimConfig,
    pub(crate) started: Instant,
    pub(crate) created_unix: f64,
    pub(crate) faults: Faults,
    pub(crate) requests_total: AtomicU64,
    pub(crate) renders_total: AtomicU64,
    /// Per model or adapter: when its cold start ends (`--cold-start-ms`).
    pub(crate) loaded: tokio::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
    pub(crate) cold_starts_total: AtomicU64,
    /// gRPC streams whose client went away (reset or closed) before the end.
    pub(crate) grpc_cancelled_total: AtomicU64,
    /// The request metadata (headers, in order) of the last gRPC call, for
    /// tests of what a proxy forwards (`/sim/stats` `grpc_last_metadata`).
    pub(crate) grpc_last_metadata: tokio::sync::Mutex<Vec<(String, String)>>,
    pub(crate) connections_total: AtomicU64,
    /// HTTP requests (not gRPC calls) that came over HTTP/2.
    pub(crate) http2_requests_total: AtomicU64,
    /// Connections whose TLS handshake failed (HTTPS only).
    pub(crate) tls_handshake_failures_total: AtomicU64,
    pub(crate) engine: mpsc::UnboundedSender<Command>,
    /// The KV-event publisher's queue (`--kv-events-port`).
    pub(crate) kv_events: Option<mpsc::UnboundedSender<shardgate_kvevents::Batch>>,
}

impl Shared {
    pub(crate) fn loading(&self) -> bool {
        self.started.elapsed() < Duration::from_millis(self.cfg.slow_start_ms)
    }

    /// A prompt's prefix-cache block hashes: vLLM's `sha256_cbor` keys when KV events
    /// are published (the adapter name as extra key), else the chained xxh3 hashes.
    pub(crate) fn block_hashes(
        &self,
        p: &Prompt,
        lora: Option<&String>,
        seed_name: &str,
    ) -> Vec<u64> {
        if self.kv_events.is_none() {
            return p.block_hashes(seed_name, self.cfg.block_size);
        }
        let mut hasher =
            shardgate_kvevents::BlockHasher::new(self.cfg.block_size, &self.cfg.prefix_hash_seed);
        let mut out = Vec::new();
        hasher.keys(
            &p.token_ids(),
            lora.map(String::as_str),
            usize::MAX,
            &mut out,
        );
        out
    }

    /// Served model name → (name, LoRA adapter, prefix-hash seed name).
    pub(crate) fn resolve(
        &self,
        model: Option<&str>,
    ) -> Result<(String, Option<String>, String), ApiError> {
        let base = self.cfg.base_model().to_owned();
        match model {
            None => Ok((base.clone(), None, base)),
            Some(m) if self.cfg.model.iter().any(|x| x == m) => Ok((m.to_owned(), None, base)),
            Some(m) if self.cfg.lora.iter().any(|x| x == m) => {
                Ok((m.to_owned(), Some(m.to_owned()), m.to_owned()))
            }
            Some(m) => Err(ApiError::unknown_model(m)),
        }
    }

    /// Wait out `name`'s cold start: the first request for it starts the load
    /// (`--cold-start-ms`), later ones wait until it ends.
    pub(crate) async fn cold_start(&self, name: &str) {
        if self.cfg.cold_start_ms == 0 {
            return;
        }
        let ready = {
            let mut loaded = self.loaded.lock().await;
            *loaded.entry(name.to_owned()).or_insert_with(|| {
                self.cold_starts_total.fetch_add(1, Relaxed);
                tokio::time::Instant::now() + Duration::from_millis(self.cfg.cold_start_ms)
            })
        };
        tokio::time::sleep_until(ready).await;
    }

    pub(crate) async fn snapshot(&self) -> Option<driver::Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.engine.send(Command::Snapshot(tx)).ok()?;
        rx.await.ok()
    }
}
