//! HTTP front: hyper 1 HTTP/1.1 server (keep-alive, `TCP_NODELAY`; HTTPS with
//! `--tls-cert`/`--tls-key`, see `tls`), routing, faults. The same port speaks
//! HTTP/2 to clients that open with its preface (gRPC: [`crate::grpc`]).
//!
//! Endpoints: `POST /v1/completions`, `POST /v1/chat/completions`, `POST /v1/embeddings`,
//! `POST /v1/chat/completions/render`, `POST /v1/completions/render`, `POST /tokenize`,
//! `GET /v1/models`, `GET /health`, `GET /metrics`, `GET /version`, `GET|POST
//! /sim/faults`, `GET /sim/stats`, `/sim/echo`. Unknown paths answer FastAPI's
//! `{"detail":"Not Found"}` 404 as vLLM does; so does `/metrics` with `--no-metrics`.
//!
//! Render / tokenize order ([`crate::render`]): slow start (503) → read body → parse and
//! validate like the inference call (400 / 404) → token ids; no engine, no faults.
//!
//! Inference request order: slow start (503) → read body (≤ 64 MiB, else 413) → stall →
//! error-rate fault (500) → parse (400) → model (404) → cold start of the model or
//! adapter (`--cold-start-ms`, first request only) → limits (400) → fast answer or
//! engine. Streaming bodies are fed by the engine task through a channel and each SSE
//! event is handed to hyper as its own frame when produced. A streaming response picked
//! by `close_mid_stream_rate` fails its body after `k ∈ [1, max_tokens]` token events,
//! which makes hyper drop the connection without the final chunk.
//!
//! Shutdown: the accept loop stops, the listener closes, connection tasks are aborted
//! (closing their sockets) and the engine task ends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::api::{self, ApiError, Kind, ResponseMeta, Usage, SSE_DONE};
use crate::config::SimConfig;
use crate::driver::{self, Command, Part, SeqEvent};
use crate::engine::{AddError, Engine, EngineConfig, Timing};
use crate::metrics::{self, ExpositionInfo};
use crate::render;
use crate::state::{FaultUpdate, Faults, RespBody, Shared};
use crate::tokens::{embedding, Prompt};

/// Largest request body read, in bytes.
const MAX_BODY: usize = 64 << 20;
/// Output tokens of a `--fast` response (fewer if `max_tokens` is smaller).
const FAST_TOKENS: usize = 8;
/// Version reported by `/version`.
const VLLM_VERSION: &str = "0.32.0";

fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Serves on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    cfg: SimConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    kv: crate::KvListeners,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    fastrand::seed(cfg.seed);
    let (tx, rx) = mpsc::unbounded_channel();
    let kv_events = kv.map(|(pub_l, replay_l)| {
        let (kv_tx, kv_rx) = mpsc::unbounded_channel();
        tokio::spawn(crate::kv_events::publish(
            pub_l,
            replay_l,
            cfg.kv_events_topic.clone(),
            kv_rx,
        ));
        kv_tx
    });
    let mut engine = Engine::new(EngineConfig {
        max_num_seqs: cfg.max_num_seqs,
        num_gpu_blocks: cfg.num_gpu_blocks,
        block_size: cfg.block_size,
        max_loras: cfg.max_loras,
        timing: Timing {
            prefill_us_per_token: cfg.prefill_us_per_token,
            decode_step_us: cfg.decode_step_us,
            decode_step_us_per_seq: cfg.decode_step_us_per_seq,
            call_overhead_us: cfg.call_overhead_us,
            embedding_us_per_input: cfg.embedding_us_per_input,
        },
    });
    engine.kv_mut().record_events(kv_events.is_some());
    let shared = Arc::new(Shared {
        kv_events,
        faults: Faults::new(&cfg),
        cfg,
        started: Instant::now(),
        created_unix: unix_secs(),
        requests_total: AtomicU64::new(0),
        renders_total: AtomicU64::new(0),
        loaded: tokio::sync::Mutex::new(std::collections::HashMap::new()),
        cold_starts_total: AtomicU64::new(0),
        grpc_cancelled_total: AtomicU64::new(0),
        grpc_last_metadata: tokio::sync::Mutex::new(Vec::new()),
        connections_total: AtomicU64::new(0),
        http2_requests_total: AtomicU64::new(0),
        tls_handshake_failures_total: AtomicU64::new(0),
        engine: tx,
    });
    let timing = {
        let shared = shared.clone();
        move || shared.faults.timing()
    };
    let engine_task = tokio::spawn(driver::run(timing, shared.kv_events.clone(), engine, rx));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    shared.connections_total.fetch_add(1, Relaxed);
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let tls = tls.clone();
                    conns.spawn(async move {
                        // HTTP/1.1, and HTTP/2 with prior knowledge (gRPC, `crate::grpc`).
                        let mut http = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        );
                        http.http1().timer(TokioTimer::new()).keep_alive(true);
                        http.http2().timer(TokioTimer::new());
                        if shared.cfg.http2_only {
                            http = http.http2_only();
                        }
                        let svc_shared = shared.clone();
                        let service = hyper::service::service_fn(move |req| {
                            let shared = svc_shared.clone();
                            async move { Ok::<_, Infallible>(handle(shared, req).await) }
                        });
                        let r = match tls {
                            None => http.serve_connection(TokioIo::new(stream), service).await,
                            Some(acceptor) => match acceptor.accept(stream).await {
                                Ok(s) => {
                                    http.serve_connection(TokioIo::new(s), service).await
                                }
                                Err(e) => {
                                    shared.tls_handshake_failures_total.fetch_add(1, Relaxed);
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    return;
                                }
                            },
                        };
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    engine_task.abort();
    let _ = engine_task.await;
    Ok(())
}

fn respond(status: u16, content_type: &'static str, body: RespBody) -> Response<RespBody> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !content_type.is_empty() {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    r
}

fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn json(status: u16, body: impl Into<Bytes>) -> Response<RespBody> {
    respond(status, "application/json", full(body))
}

fn error(e: &ApiError) -> Response<RespBody> {
    json(e.status, e.body())
}

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Completions,
    Chat,
    Embeddings,
}

/// The engine-free endpoints ([`crate::render`]).
#[derive(Debug, Clone, Copy)]
enum Render {
    Chat,
    Completions,
    Tokenize,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<RespBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if crate::grpc::is_grpc_path(&path) {
        return crate::grpc::handle(shared, req).await;
    }
    if req.version() == hyper::Version::HTTP_2 {
        shared.http2_requests_total.fetch_add(1, Relaxed);
    }
    let ep = match path.as_str() {
        "/v1/completions" => Some(Endpoint::Completions),
        "/v1/chat/completions" => Some(Endpoint::Chat),
        "/v1/embeddings" => Some(Endpoint::Embeddings),
        _ => None,
    };
    if let Some(ep) = ep {
        if method != Method::POST {
            return not_allowed();
        }
        return match inference(&shared, ep, req).await {
            Ok(r) => r,
            Err(e) => error(&e),
        };
    }
    let rendering = match path.as_str() {
        "/v1/chat/completions/render" => Some(Render::Chat),
        "/v1/completions/render" => Some(Render::Completions),
        "/tokenize" => Some(Render::Tokenize),
        _ => None,
    };
    if let Some(r) = rendering {
        if method != Method::POST {
            return not_allowed();
        }
        return match render_call(&shared, r, req).await {
            Ok(body) => json(200, body),
            Err(e) => error(&e),
        };
    }
    match (method, path.as_str()) {
        (Method::GET, "/health") => {
            let status = if shared.loading() { 503 } else { 200 };
            respond(status, "", full(Bytes::new()))
        }
        (Method::GET, "/v1/models") => json(
            200,
            api::models_response(
                &shared.cfg.model,
                &shared.cfg.lora,
                shared.created_unix as u64,
                shared.cfg.max_model_len(),
            ),
        ),
        (Method::GET, "/version") => json(200, format!("{{\"version\":\"{VLLM_VERSION}\"}}")),
        (Method::GET, "/metrics") if shared.cfg.no_metrics => not_found(),
        (Method::GET, "/metrics") => metrics_page(&shared).await,
        (Method::GET, "/sim/stats") => stats_page(&shared).await,
        (Method::GET, "/sim/faults") => json(200, api::to_bytes(&shared.faults.view())),
        (_, "/sim/echo") => echo(req).await,
        (Method::POST, "/sim/faults") => match set_faults(&shared, req).await {
            Ok(r) => r,
            Err(e) => error(&e),
        },
        (_, "/health" | "/v1/models" | "/version" | "/metrics" | "/sim/stats" | "/sim/faults") => {
            not_allowed()
        }
        _ => not_found(),
    }
}

/// FastAPI's 404, as vLLM answers an unknown path.
fn not_found() -> Response<RespBody> {
    json(404, &b"{\"detail\":\"Not Found\"}"[..])
}

/// `/sim/echo` (any method): the request as the server received it — method,
/// target, headers in order and the body length — so tests can check what a
/// proxy forwarded (hop-by-hop removal, `X-Forwarded-*`, request ids).
async fn echo(req: Request<Incoming>) -> Response<RespBody> {
    let method = req.method().to_string();
    let target = req.uri().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body_len = match read_body(req).await {
        Ok(b) => b.len(),
        Err(e) => return error(&e),
    };
    let v = serde_json::json!({"method": method, "target": target, "headers": headers, "body_len": body_len});
    json(200, v.to_string())
}

fn not_allowed() -> Response<RespBody> {
    json(405, &b"{\"detail\":\"Method Not Allowed\"}"[..])
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError {
            status: 413,
            kind: "BadRequestError",
            message: format!("Request body larger than {MAX_BODY} bytes."),
            param: None,
        }),
        Err(e) => Err(ApiError::bad_request(format!(
            "Could not read the body: {e}"
        ))),
    }
}

async fn render_call(
    shared: &Shared,
    r: Render,
    req: Request<Incoming>,
) -> Result<Bytes, ApiError> {
    if shared.loading() {
        return Err(ApiError::loading());
    }
    let body = read_body(req).await?;
    let n = shared.renders_total.fetch_add(1, Relaxed);
    let cfg = &shared.cfg;
    // Ids from their own generator, so render traffic leaves the seeded sequence of
    // response ids and fault decisions alone.
    let mut rng = fastrand::Rng::with_seed(cfg.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut id = || rng.u128(..);
    match r {
        Render::Chat => render::chat(cfg, &body, &mut id),
        Render::Completions => render::completions(cfg, &body, &mut id),
        Render::Tokenize => render::tokenize(cfg, &body),
    }
}

async fn metrics_page(shared: &Shared) -> Response<RespBody> {
    let Some(snap) = shared.snapshot().await else {
        return json(500, ApiError::injected().body());
    };
    let c = &shared.cfg;
    let info = ExpositionInfo {
        model_name: c.base_model(),
        block_size: c.block_size,
        num_gpu_blocks: c.num_gpu_blocks,
        max_loras: c.max_loras,
        lora_enabled: !c.lora.is_empty(),
        legacy: c.legacy_metrics,
        created_unix: shared.created_unix,
    };
    let text = metrics::render(&info, &snap.metrics, &snap.lora_history);
    respond(200, "text/plain; version=0.0.4; charset=utf-8", full(text))
}

async fn stats_page(shared: &Shared) -> Response<RespBody> {
    let Some(snap) = shared.snapshot().await else {
        return json(500, ApiError::injected().body());
    };
    let m = snap.metrics;
    let body = serde_json::json!({
        "requests_total": shared.requests_total.load(Relaxed),
        "cold_starts_total": shared.cold_starts_total.load(Relaxed),
        "grpc_cancelled_total": shared.grpc_cancelled_total.load(Relaxed),
        "grpc_last_metadata": *shared.grpc_last_metadata.lock().await,
        "render_requests_total": shared.renders_total.load(Relaxed),
        "requests_cancelled_total": m.finished_abort,
        "connections_total": shared.connections_total.load(Relaxed),
        "http2_requests_total": shared.http2_requests_total.load(Relaxed),
        "tls_handshake_failures_total": shared.tls_handshake_failures_total.load(Relaxed),
        "running": m.running,
        "waiting": m.waiting,
        "kv_cache_usage": m.kv_usage,
        "prefix_cache_hits": m.prefix_cache_hits,
        "prefix_cache_queries": m.prefix_cache_queries,
        "prompt_tokens": m.prompt_tokens,
        "generation_tokens": m.generation_tokens,
        "requests_finished": m.finished_length + m.finished_stop,
        "steps": m.steps,
        "running_lora_adapters": m.running_loras,
        "waiting_lora_adapters": m.waiting_loras,
    });
    json(200, api::to_bytes(&body))
}

async fn set_faults(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, ApiError> {
    let body = read_body(req).await?;
    let u: FaultUpdate = api::parse(&body)?;
    let f = &shared.faults;
    f.apply(&u)?;
    tracing::info!(faults = ?f.view(), "faults changed");
    Ok(json(200, api::to_bytes(&f.view())))
}

async fn inference(
    shared: &Shared,
    ep: Endpoint,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, ApiError> {
    shared.requests_total.fetch_add(1, Relaxed);
    if shared.loading() {
        return Err(ApiError::loading());
    }
    let body = read_body(req).await?;
    let stall = shared.faults.stall_ms.load(Relaxed);
    if stall > 0 {
        tokio::time::sleep(Duration::from_millis(stall)).await;
    }
    let rate = shared.faults.error_rate();
    if rate > 0.0 && fastrand::f64() < rate {
        return Err(ApiError::injected());
    }
    match ep {
        Endpoint::Completions => {
            let r: api::CompletionRequest = api::parse(&body)?;
            let include_usage = r.stream_options.and_then(|o| o.include_usage) == Some(true);
            let gen = Generate {
                kind: Kind::Completion,
                model: r.model,
                prompts: r.prompt.prompts(),
                max_tokens: r.max_tokens,
                stream: r.stream == Some(true),
                include_usage,
            };
            generate(shared, gen).await
        }
        Endpoint::Chat => {
            let r: api::ChatRequest = api::parse(&body)?;
            let include_usage =
                r.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true);
            let gen = Generate {
                kind: Kind::Chat,
                prompts: vec![r.prompt()],
                max_tokens: r.max_completion_tokens.or(r.max_tokens),
                stream: r.stream == Some(true),
                model: r.model,
                include_usage,
            };
            generate(shared, gen).await
        }
        Endpoint::Embeddings => {
            let r: api::EmbeddingRequest = api::parse(&body)?;
            embeddings(shared, r).await
        }
    }
}

struct Generate {
    kind: Kind,
    model: Option<String>,
    prompts: Vec<Prompt>,
    max_tokens: Option<i64>,
    stream: bool,
    include_usage: bool,
}

fn check_lengths(shared: &Shared, prompts: &[Prompt], max_tokens: usize) -> Result<(), ApiError> {
    api::check_lengths(prompts, max_tokens, shared.cfg.max_model_len())
}

fn rejected(error: &AddError) -> ApiError {
    ApiError::bad_request(format!("The engine refused the request: {error:?}"))
}

fn engine_gone() -> ApiError {
    ApiError {
        status: 503,
        kind: "ServiceUnavailableError",
        message: "The engine is shutting down.".into(),
        param: None,
    }
}

fn submit(
    shared: &Shared,
    prompts: &[Prompt],
    lora: Option<&String>,
    seed_name: &str,
    max_tokens: usize,
) -> Result<mpsc::UnboundedReceiver<SeqEvent>, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let parts = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Part {
            choice: u32::try_from(i).unwrap_or(u32::MAX),
            lora: lora.cloned(),
            prompt_len: p.len(),
            block_hashes: shared.block_hashes(p, lora, seed_name),
            max_tokens,
        })
        .collect();
    shared
        .engine
        .send(Command::Submit { parts, events: tx })
        .map_err(|_| engine_gone())?;
    Ok(rx)
}

async fn generate(shared: &Shared, g: Generate) -> Result<Response<RespBody>, ApiError> {
    let (served, lora, seed_name) = shared.resolve(g.model.as_deref())?;
    shared.cold_start(&served).await;
    let max_tokens = api::max_tokens(g.max_tokens, shared.cfg.max_tokens_default)?;
    check_lengths(shared, &g.prompts, max_tokens)?;
    let prefix = match g.kind {
        Kind::Completion => "cmpl",
        Kind::Chat => "chatcmpl",
    };
    let meta = ResponseMeta {
        kind: g.kind,
        id: format!("{prefix}-{:032x}", fastrand::u128(..)),
        created: unix_secs() as u64,
        model: served,
        seed: shared.cfg.seed,
        fingerprints: g.prompts.iter().map(Prompt::fingerprint).collect(),
    };
    let n = g.prompts.len();

    if shared.cfg.fast {
        let out = max_tokens.min(FAST_TOKENS);
        let prompt_tokens: usize = g.prompts.iter().map(Prompt::len).sum();
        let usage = Usage::new(prompt_tokens, out * n);
        if !g.stream {
            return Ok(json(200, meta.full_response(&vec![out; n], usage)));
        }
        let mut body = Vec::new();
        for c in 0..n {
            let c = u32::try_from(c).unwrap_or(u32::MAX);
            if g.kind == Kind::Chat {
                body.extend_from_slice(&meta.role_chunk(c));
            }
            for i in 0..out {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                body.extend_from_slice(&meta.token_chunk(c, i, i as usize + 1 == out));
            }
        }
        if g.include_usage {
            body.extend_from_slice(&meta.usage_chunk(usage));
        }
        body.extend_from_slice(SSE_DONE);
        return Ok(respond(200, "text/event-stream; charset=utf-8", full(body)));
    }

    let mut rx = submit(shared, &g.prompts, lora.as_ref(), &seed_name, max_tokens)?;
    if g.stream {
        let rate = shared.faults.close_mid_stream_rate();
        let abort_after =
            (rate > 0.0 && fastrand::f64() < rate).then(|| fastrand::usize(1..=max_tokens));
        let body = SseBody {
            rx,
            meta,
            max_tokens,
            choices: n,
            started: vec![false; n],
            finished: 0,
            usage: Usage::default(),
            include_usage: g.include_usage,
            abort_after,
            tokens_sent: 0,
            queue: VecDeque::new(),
            end: None,
        };
        return Ok(respond(
            200,
            "text/event-stream; charset=utf-8",
            body.boxed_unsync(),
        ));
    }
    let mut counts = vec![0usize; n];
    let mut usage = Usage::default();
    let mut finished = 0;
    while finished < n {
        match rx.recv().await {
            Some(SeqEvent::Token { .. }) => {}
            Some(SeqEvent::Finished {
                choice,
                prompt_tokens,
                completion_tokens,
            }) => {
                if let Some(c) = counts.get_mut(choice as usize) {
                    *c = completion_tokens;
                }
                usage = usage + Usage::new(prompt_tokens, completion_tokens);
                finished += 1;
            }
            Some(SeqEvent::Rejected { error, .. }) => return Err(rejected(&error)),
            None => return Err(engine_gone()),
        }
    }
    Ok(json(200, meta.full_response(&counts, usage)))
}

async fn embeddings(
    shared: &Shared,
    r: api::EmbeddingRequest,
) -> Result<Response<RespBody>, ApiError> {
    let (served, lora, seed_name) = shared.resolve(r.model.as_deref())?;
    let prompts = r.input.prompts();
    check_lengths(shared, &prompts, 0)?;
    let mut usage = Usage::default();
    if shared.cfg.fast {
        usage = Usage::new(prompts.iter().map(Prompt::len).sum(), 0);
    } else {
        let mut rx = submit(shared, &prompts, lora.as_ref(), &seed_name, 0)?;
        let mut finished = 0;
        while finished < prompts.len() {
            match rx.recv().await {
                Some(SeqEvent::Token { .. }) => {}
                Some(SeqEvent::Finished { prompt_tokens, .. }) => {
                    usage = usage + Usage::new(prompt_tokens, 0);
                    finished += 1;
                }
                Some(SeqEvent::Rejected { error, .. }) => return Err(rejected(&error)),
                None => return Err(engine_gone()),
            }
        }
    }
    let dim = shared.cfg.embedding_dim;
    let vectors: Vec<Vec<f32>> = prompts
        .iter()
        .map(|p| embedding(&seed_name, p, dim))
        .collect();
    Ok(json(
        200,
        api::embeddings_response(
            &format!("embd-{:032x}", fastrand::u128(..)),
            unix_secs() as u64,
            &served,
            &vectors,
            usage,
        ),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Eof,
    Abort,
}

/// SSE body fed by the engine task; one frame per event.
struct SseBody {
    rx: mpsc::UnboundedReceiver<SeqEvent>,
    meta: ResponseMeta,
    max_tokens: usize,
    choices: usize,
    started: Vec<bool>,
    finished: usize,
    usage: Usage,
    include_usage: bool,
    /// Abort the connection after this many token events (fault).
    abort_after: Option<usize>,
    tokens_sent: usize,
    queue: VecDeque<Bytes>,
    end: Option<End>,
}

impl SseBody {
    fn on_event(&mut self, ev: SeqEvent) {
        match ev {
            SeqEvent::Token { choice, index } => {
                if self.meta.kind == Kind::Chat {
                    if let Some(s) = self.started.get_mut(choice as usize) {
                        if !*s {
                            *s = true;
                            self.queue.push_back(self.meta.role_chunk(choice));
                        }
                    }
                }
                let last = index as usize + 1 >= self.max_tokens;
                self.queue
                    .push_back(self.meta.token_chunk(choice, index, last));
                self.tokens_sent += 1;
                if self.abort_after == Some(self.tokens_sent) {
                    self.end = Some(End::Abort);
                }
            }
            SeqEvent::Finished {
                prompt_tokens,
                completion_tokens,
                ..
            } => {
                self.usage = self.usage + Usage::new(prompt_tokens, completion_tokens);
                self.finished += 1;
                if self.finished >= self.choices {
                    if self.include_usage {
                        self.queue.push_back(self.meta.usage_chunk(self.usage));
                    }
                    self.queue.push_back(Bytes::from_static(SSE_DONE));
                    self.end.get_or_insert(End::Eof);
                }
            }
            SeqEvent::Rejected { error, .. } => {
                self.queue
                    .push_back(api::sse_event(&rejected(&error).body()));
                self.queue.push_back(Bytes::from_static(SSE_DONE));
                self.end.get_or_insert(End::Eof);
            }
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.end == Some(End::Abort) {
                // Fail the body: hyper drops the connection without the last chunk.
                this.end = Some(End::Eof);
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "simulated mid-stream close",
                ))));
            }
            if this.end.is_some() {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => this.on_event(ev),
                // The engine went away (shutdown): end the stream where it is.
                Poll::Ready(None) => this.end = Some(End::Eof),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.end == Some(End::Eof) && self.queue.is_empty()
    }
}
