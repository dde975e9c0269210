//! `shardgate-sim`: a simulated vLLM OpenAI-compatible server, realistic enough that a
//! gateway's routing decisions (prefix-cache affinity, load awareness, LoRA affinity)
//! change the latencies it sees.
//!
//! - **API** ([`api`]): `/v1/completions`, `/v1/chat/completions` (SSE or JSON),
//!   `/v1/embeddings`, `/v1/models`, `/health`, `/version`, and `/metrics` in vLLM 0.32's
//!   Prometheus format ([`metrics`]). Prompt rendering without the engine ([`render`]):
//!   `/v1/chat/completions/render`, `/v1/completions/render` and `/tokenize` return a
//!   prompt's token ids (what vllm-router's `cache_aware` policy asks a worker for).
//!   Test hooks: `POST /sim/faults` changes faults and
//!   speed at run time, `GET /sim/stats` reports counters (requests, cancellations,
//!   accepted TCP connections, renders, queue sizes, prefix-cache hits).
//! - **Tokens are whitespace-separated words** ([`tokens`]), each with a stable id below
//!   2³¹; output words are deterministic for a given seed and prompt.
//! - **Engine** ([`engine`], sans-IO, virtual-clock tested): continuous batching bounded by
//!   `--max-num-seqs` and KV blocks ([`kv`]), a chained-hash prefix cache with LRU
//!   eviction, LoRA slots, step time = prefill of uncached tokens + decode step growing
//!   with batch size (+ an optional fixed cost per API call admitted and per embedding
//!   input, `--call-overhead-us`, `--embedding-us-per-input`). Defaults: 16 seqs, 2,048
//!   blocks × 16 tokens, 200 µs/prefill token, 8 ms + 0.4 ms/seq per decode step, no
//!   per-call or per-input cost.
//! - **gRPC** ([`grpc`]): KServe v2 `inference.GRPCInferenceService` (`ModelInfer` echo,
//!   `ModelStreamInfer`, `ModelReady`, `ModelMetadata`, `ServerLive/Ready`) and
//!   `grpc.health.v1.Health/Check` over HTTP/2 (prior knowledge) on the same port.
//! - **HTTPS** (`--tls-cert`, `--tls-key`; `tls`): rustls in front of the same server,
//!   for gateways that reach backends over TLS.
//! - **KV-cache events** (`--kv-events-port`, `--kv-events-replay-port`; `kv_events`):
//!   vLLM's ZMQ PUB stream of `BlockStored` / `BlockRemoved` batches from the prefix
//!   cache, with vLLM's `sha256_cbor` block hashes, and its replay socket.
//! - **Faults**: error rate (500), stall before headers, mid-stream connection aborts,
//!   slow start (503), and `--fast` (no engine: immediate fixed answers).
//!
//! Each server runs on its own thread with a tokio current-thread runtime ([`spawn`]) or
//! on the calling thread until ctrl-c ([`run_blocking`]).

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
mod driver;
pub mod engine;
pub mod grpc;
pub mod kv;
mod kv_events;
pub mod metrics;
pub mod render;
mod server;
mod state;
mod tls;
pub mod tokens;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::thread::JoinHandle;

pub use config::SimConfig;

/// Listen backlog of the server socket (bursts of gateway connections must not be
/// dropped).
const LISTEN_BACKLOG: i32 = 1024;

/// A server running on its own thread; [`SimHandle::shutdown`] (or dropping the handle)
/// stops it.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    kv_events: Option<(SocketAddr, Option<SocketAddr>)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// The bound address (with the real port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The KV-event PUB and replay addresses (`--kv-events-port`), real ports.
    pub fn kv_events_addr(&self) -> Option<(SocketAddr, Option<SocketAddr>)> {
        self.kv_events
    }

    /// `http://ip:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, closes every connection, ends the engine and joins the thread;
    /// the port is free afterwards.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(addr = %self.addr, "simulator thread panicked");
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn bind(config: &SimConfig) -> io::Result<std::net::TcpListener> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut last = io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!("`{}` resolves to no address", config.host),
    );
    for addr in (config.host.as_str(), config.port).to_socket_addrs()? {
        match bind_addr(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn bind_addr(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The event listeners (`--kv-events-port`, `--kv-events-replay-port`), bound now so
/// the real ports are known before the server runs.
type KvListeners = Option<(std::net::TcpListener, Option<std::net::TcpListener>)>;

fn bind_kv(config: &SimConfig, http: SocketAddr) -> io::Result<KvListeners> {
    let Some(port) = config.kv_events_port else {
        return Ok(None);
    };
    let at = |p: u16| bind_addr(SocketAddr::new(http.ip(), p));
    let replay = config.kv_events_replay_port.map(at).transpose()?;
    Ok(Some((at(port)?, replay)))
}

fn kv_addrs(kv: &KvListeners) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let (p, r) = kv.as_ref()?;
    Some((
        p.local_addr().ok()?,
        r.as_ref().and_then(|r| r.local_addr().ok()),
    ))
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Binds `config.host:config.port` (port 0 = ephemeral) synchronously (returning the bind
/// or validation error), then serves on its own thread with a tokio current-thread
/// runtime.
pub fn spawn(config: SimConfig) -> io::Result<SimHandle> {
    let listener = bind(&config)?;
    let tls = tls::acceptor(&config)?;
    let addr = listener.local_addr()?;
    let kv = bind_kv(&config, addr)?;
    let kv_events = kv_addrs(&kv);
    let rt = runtime()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("sim-{}", addr.port()))
        .spawn(move || {
            let stopped = async {
                let _ = stop_rx.await;
            };
            if let Err(e) = rt.block_on(server::serve(listener, config, tls, kv, stopped)) {
                tracing::error!(%addr, error = %e, "simulator failed");
            }
        })?;
    Ok(SimHandle {
        addr,
        kv_events,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Runs in the calling thread until SIGINT / ctrl-c.
pub fn run_blocking(config: SimConfig) -> io::Result<()> {
    let listener = bind(&config)?;
    let tls = tls::acceptor(&config)?;
    let addr = listener.local_addr()?;
    let kv = bind_kv(&config, addr)?;
    tracing::info!(
        %addr,
        kv_events = ?kv_addrs(&kv),
        models = ?config.model,
        loras = ?config.lora,
        fast = config.fast,
        https = tls.is_some(),
        "shardgate-sim listening"
    );
    let rt = runtime()?;
    rt.block_on(server::serve(listener, config, tls, kv, async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c; stopping");
        }
        tracing::info!("ctrl-c: stopping");
    }))
}
