//! Model-server telemetry: parse a `/metrics` scrape, map it to one model,
//! keep the latest per endpoint with staleness.
//!
//! Sans-IO: the control thread fetches the bytes and passes them in with the
//! scrape time; nothing here reads a clock or a socket.
//!
//! - [`prom`]: zero-copy Prometheus text 0.0.4 parser (≈ 640 lines of a real
//!   vLLM dump per scrape, every 100 ms per endpoint, no allocation per
//!   sample);
//! - [`model`]: vLLM / SGLang / trtllm-serve / Triton / TGI / DCGM metrics →
//!   [`EndpointTelemetry`], with windowed TTFT and latency means;
//! - [`store`]: the latest signals per endpoint, each stamped; signals older
//!   than N × interval (default 2 × 100 ms) are stale, reported, never zero.

pub mod model;
pub mod prom;
pub mod store;

#[cfg(test)]
mod tests;

pub use model::{
    decode, decode_filtered, CacheConfig, DecodeStats, EndpointTelemetry, HistogramTotals,
    LatencyWindows, LoraState, PrefixCacheCounters, ServerKind, Window,
};
pub use prom::{parse, Entry, Label, LabelValue, LineError, LineErrorKind, MetricType, Sample};
pub use store::{
    EndpointRecord, FreshView, Signal, SignalKind, SignalSet, StoreConfig, TelemetryStore,
};
