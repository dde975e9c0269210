//! The data path: one task per client connection on the shard that accepted it.
//!
//! Per request: read and parse the head (limits, 408 on a slow client), read the
//! body (bounded; `Expect: 100-continue` answered; chunked decoded), take the model
//! from `X-Model-Type` or the JSON body's `model` (scanned, no DOM), match a route,
//! pick an endpoint, forward over a pooled keep-alive upstream connection (a stale
//! pooled connection is retried once on a fresh one; a refused connect ejects the
//! endpoint and tries another), then stream the response back chunk by chunk so SSE
//! tokens reach the client as the backend emits them. While waiting on the upstream
//! the client socket is watched: a client that goes away closes the upstream
//! connection, which cancels the request on the inference server.
//!
//! Request bodies are buffered (bounded by `--max-body-bytes`) because the route
//! depends on the body's `model`; responses are never buffered.
//!
//! Memory per request (numbers): none allocated on a busy keep-alive connection.
//! Heads are split off the connection's read buffer (16 header fields inline),
//! `Content-Length` bodies and model names are slices of it, read buffers (16 KiB,
//! [`shardgate_runtime::io::READ_CHUNK`]) and response buffers come from per-shard
//! pools, and the request future (~7 KiB) lives in a box the connection reuses. A
//! connection quiet for [`HOT_WAIT`] (50 ms) returns buffer and box and waits for
//! readability without them; the client-disconnect watch starts after
//! [`WATCH_AFTER`] (10 ms) of waiting on the upstream.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use monoio::time::Instant;
use shardgate_http::{
    split_request_head, split_response_head, write, BodyDecoder, Framing, RequestHead,
    ResponseHead, Version,
};
use shardgate_routing::{
    extract_model_strict, RequestView, RouteMatch, RuleAction, MODEL_HEADER, MODEL_TYPE_HEADER,
};
use shardgate_runtime::io::{peer_state, read_into, read_into_cancelable, PeerState};

use crate::error::Failure;
use crate::metrics::{RequestRecord, UsageScanner};
use crate::shard::{ConnGauge, GatewayState, InFlight, PickFailure, Shard, UpstreamConn};
use shardgate_routing::scoring::{PickRequest, Scorer};

/// The model header the gateway sets on the upstream request (the request's model).
pub const MODEL_HEADER_NAME: &str = MODEL_HEADER;

/// Paths whose JSON body carries the OpenAI `model` field.
const MODEL_BODY_PATHS: [&str; 3] = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"];

/// Headers the gateway sets itself on the upstream request (client copies dropped).
const REPLACED_UPSTREAM: [&str; 6] = [
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
    MODEL_HEADER,
];

/// A connection's I/O state, moved into each request's future and back.
struct ConnIo {
    client: TcpStream,
    /// Read buffer: empty with no capacity while the connection is idle.
    rbuf: BytesMut,
    /// Response buffer, from the shard's pool for one request.
    out: Vec<u8>,
}

/// Serve one client connection until it closes, errs, idles out or the gateway drains.
pub async fn serve_connection(
    shard: Rc<Shard>,
    client: TcpStream,
    peer: SocketAddr,
    listeners: Rc<[usize]>,
) {
    let _ = client.set_nodelay(true);
    let _open = ConnGauge::new(&shard);
    // Idle connections hold no buffers: the read buffer comes from the shard's pool
    // when bytes arrive and goes back when the connection idles; the write buffer
    // comes from the pool for one request.
    let mut io = ConnIo {
        client,
        rbuf: BytesMut::new(),
        out: Vec::new(),
    };
    // The request future (several KiB) is boxed, so an idle connection's task stays
    // small, and the box is reused from one request to the next, so a busy
    // keep-alive connection allocates it once; it is freed when the connection idles.
    let mut slot = None;
    let mut cancel = monoio::io::Canceller::new();
    loop {
        let head = match read_head(&shard, &mut io, &mut cancel, &mut slot).await {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(f) => {
                respond_failure(&mut io.client, &mut io.out, &f, None).await;
                break;
            }
        };
        io.out = shard.take_out_buf();
        let fut = handle_request(shard.clone(), io, head, peer, listeners.clone());
        let (keep, back) = reuse_box(&mut slot, fut).await;
        io = back;
        shard.give_out_buf(std::mem::take(&mut io.out));
        if !keep || shard.shutdown.is_draining() {
            break;
        }
    }
    shard.give_read_buf(std::mem::take(&mut io.rbuf));
}

/// Put `fut` in `slot`'s box, reusing the allocation when there is one (the future
/// type is the same for every request of a connection, so the layout matches).
fn reuse_box<F: std::future::Future>(
    slot: &mut Option<std::pin::Pin<Box<F>>>,
    fut: F,
) -> &mut std::pin::Pin<Box<F>> {
    match slot {
        Some(b) => b.set(fut),
        None => *slot = Some(Box::pin(fut)),
    }
    slot.as_mut().expect("the slot was just filled")
}

/// How long a kept-alive client connection keeps its read buffer (and request
/// box) while waiting for its next request: 50 ms. A busy connection reads
/// directly into its buffer (one operation per read); past this it gives them back
/// and waits for readability without a buffer, so 10,000 idle connections pin no
/// buffers.
pub const HOT_WAIT: Duration = Duration::from_millis(50);

/// Read until a complete request head is buffered. `Ok(None)`: the client closed
/// or idled out between requests (nothing to answer).
async fn read_head<F>(
    shard: &Shard,
    io: &mut ConnIo,
    cancel: &mut monoio::io::Canceller,
    slot: &mut Option<F>,
) -> Result<Option<RequestHead>, Failure> {
    let settings = &shard.state.settings;
    let mut started: Option<Instant> = None;
    let client = &mut io.client;
    let rbuf = &mut io.rbuf;
    loop {
        if !rbuf.is_empty() {
            started.get_or_insert_with(Instant::now);
            match split_request_head(rbuf, &settings.limits) {
                Ok(Some(head)) => return Ok(Some(head)),
                Ok(None) => {}
                Err(e) => return Err(Failure::from_codec(&e)),
            }
        }
        if started.is_none() {
            // Between requests.
            let mut idle_left = settings.client_idle_timeout;
            if rbuf.capacity() > 0 {
                // Hot: read straight into the buffer, for a while.
                let hot = HOT_WAIT.min(idle_left);
                let read = read_into_cancelable(client, std::mem::take(rbuf), cancel.handle());
                let mut read = std::pin::pin!(read);
                let (res, b) = monoio::select! {
                    r = &mut read => r,
                    _ = monoio::time::sleep(hot) => {
                        // Cancelled, the read still hands back what it received.
                        *cancel = std::mem::take(cancel).cancel();
                        read.await
                    }
                };
                *rbuf = b;
                match res {
                    Ok(0) => return Ok(None),
                    Ok(_) => {
                        started = Some(Instant::now());
                        continue;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
                    Err(_) => return Ok(None),
                }
                // Idle: give the buffer and the request box back.
                shard.give_read_buf(std::mem::take(rbuf));
                *slot = None;
                idle_left = idle_left.saturating_sub(hot);
            }
            // Wait for readiness without a buffer.
            match monoio::time::timeout(idle_left, client.readable(false)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Ok(None),
            }
            *rbuf = shard.take_read_buf();
            started = Some(Instant::now());
        }
        let wait = match started {
            None => settings.client_idle_timeout,
            Some(t) => match settings.header_timeout.checked_sub(t.elapsed()) {
                Some(d) => d,
                None => return Err(Failure::request_timeout()),
            },
        };
        let buf = std::mem::take(rbuf);
        match monoio::time::timeout(wait, read_into(client, buf)).await {
            Ok((Ok(0), b)) => {
                *rbuf = b;
                return Ok(None);
            }
            Ok((Ok(_), b)) => *rbuf = b,
            Ok((Err(_), _)) => return Ok(None),
            Err(_) if started.is_some() => return Err(Failure::request_timeout()),
            Err(_) => return Ok(None),
        }
    }
}

/// Read the request body into one buffer, answering `100 Continue` when asked.
async fn read_body(
    shard: &Shard,
    client: &mut TcpStream,
    rbuf: &mut BytesMut,
    head: &RequestHead,
    out: &mut Vec<u8>,
) -> Result<Bytes, Failure> {
    let settings = &shard.state.settings;
    let framing = head.framing();
    if framing == Framing::None || framing == Framing::Length(0) {
        return Ok(Bytes::new());
    }
    if head.expect_continue() && rbuf.is_empty() {
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        let (res, o) = client.write_all(std::mem::take(out)).await;
        *out = o;
        out.clear();
        res.map_err(|_| Failure::request_timeout())?;
    }
    let deadline = Instant::now() + settings.header_timeout;
    if let Framing::Length(n) = framing {
        // Read the whole body into the connection buffer and split it off: no copy,
        // and no allocation when it fits the buffer's spare room.
        if n > settings.limits.max_body_bytes {
            return Err(Failure::from_codec(&body_too_large()));
        }
        let n = usize::try_from(n).map_err(|_| Failure::from_codec(&body_too_large()))?;
        if rbuf.len() < n {
            rbuf.reserve(n - rbuf.len());
        }
        while rbuf.len() < n {
            let wait = deadline.saturating_duration_since(Instant::now());
            let buf = std::mem::take(rbuf);
            match monoio::time::timeout(wait, read_into(client, buf)).await {
                Ok((Ok(k), b)) if k > 0 => *rbuf = b,
                Ok(_) => return Err(Failure::bad_request_closed()),
                Err(_) => return Err(Failure::request_timeout()),
            }
        }
        return Ok(rbuf.split_to(n).freeze());
    }
    let mut dec = BodyDecoder::new(framing);
    let mut body = BytesMut::new();
    loop {
        while !rbuf.is_empty() && !dec.is_done() {
            let d = dec.decode(rbuf).map_err(|e| Failure::from_codec(&e))?;
            if let Some(r) = d.data.clone() {
                if (body.len() + r.len()) as u64 > settings.limits.max_body_bytes {
                    return Err(Failure::from_codec(&body_too_large()));
                }
                body.extend_from_slice(&rbuf[r]);
            }
            rbuf.advance(d.consumed);
            if d.consumed == 0 && d.data.is_none() {
                break;
            }
        }
        if dec.is_done() {
            return Ok(body.freeze());
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let buf = std::mem::take(rbuf);
        match monoio::time::timeout(wait, read_into(client, buf)).await {
            Ok((Ok(n), b)) if n > 0 => *rbuf = b,
            Ok(_) => return Err(Failure::bad_request_closed()),
            Err(_) => return Err(Failure::request_timeout()),
        }
    }
}

fn body_too_large() -> shardgate_http::HttpError {
    shardgate_http::HttpError {
        kind: shardgate_http::ErrorKind::BodyTooLarge,
        status: 413,
        message: "request body exceeds the configured limit",
        close: true,
    }
}

fn is_model_body_path(method: &str, path: &str) -> bool {
    method == "POST" && MODEL_BODY_PATHS.contains(&path)
}

/// Handle one request and record its metrics; returns whether the connection may
/// serve another, and the connection's I/O state.
async fn handle_request(
    shard: Rc<Shard>,
    mut io: ConnIo,
    head: RequestHead,
    peer: SocketAddr,
    listeners: Rc<[usize]>,
) -> (bool, ConnIo) {
    let shard = &shard;
    let (client, rbuf, out) = (&mut io.client, &mut io.rbuf, &mut io.out);
    let state = shard.state.clone();
    let mut rq = RequestState {
        started: Instant::now(),
        ts_ms: crate::access_log::now_ms(),
        request_id: RequestId::of(&head, shard),
        status: 0,
        model: None,
        route: None,
        endpoint: None,
        bytes: 0,
        ttft: None,
        tpot: None,
        usage: UsageScanner::default(),
    };
    let keep = route_and_forward(
        shard, &state, client, rbuf, out, &head, peer, &listeners, &mut rq,
    )
    .await;
    let duration = rq.started.elapsed();
    shard.metrics.borrow_mut().record(&RequestRecord {
        model: rq.model.as_deref(),
        route: rq.route,
        status: rq.status,
        duration,
        ttft: rq.ttft,
        tpot: rq.tpot,
        prompt_tokens: rq.usage.prompt_tokens,
        completion_tokens: rq.usage.completion_tokens,
    });
    if let Some(log) = &shard.access_log {
        let client_addr = peer.to_string();
        log.borrow_mut().push(&crate::access_log::Line {
            ts_ms: rq.ts_ms,
            request_id: std::str::from_utf8(rq.request_id.as_bytes()).unwrap_or(""),
            client: &client_addr,
            method: head.method(),
            path: head.path(),
            model: rq.model.as_deref(),
            route: rq.route,
            endpoint: rq.endpoint.map(|ep| shard.addr(ep).to_string()),
            status: rq.status,
            bytes: rq.bytes,
            ttft_ms: rq.ttft.map(|d| d.as_secs_f64() * 1000.0),
            duration_ms: duration.as_secs_f64() * 1000.0,
            prompt_tokens: rq.usage.prompt_tokens,
            completion_tokens: rq.usage.completion_tokens,
        });
    }
    (keep, io)
}

/// A request's id: the client's `X-Request-Id` when it is usable (1–200 visible
/// ASCII bytes), else a generated one. Neither allocates.
#[derive(Clone, Copy)]
enum RequestId<'h> {
    Client(&'h [u8]),
    Own([u8; 32]),
}

impl<'h> RequestId<'h> {
    fn of(head: &'h RequestHead, shard: &Shard) -> Self {
        match head.header("x-request-id") {
            Some(v)
                if !v.is_empty() && v.len() <= 200 && v.iter().all(|b| b.is_ascii_graphic()) =>
            {
                RequestId::Client(v)
            }
            _ => RequestId::Own(shard.request_id()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Client(v) => v,
            RequestId::Own(id) => id,
        }
    }
}

/// A request's model name without a copy: a slice of the body or the head (valid
/// UTF-8 by construction; allocated only when the name was escaped or not UTF-8),
/// or a name borrowed for the request (a rule's configured model, the name in a
/// KServe path).
#[derive(Clone)]
enum ModelName<'a> {
    Shared(Bytes),
    Config(&'a str),
}

impl ModelName<'_> {
    /// From a header value (lossily decoded if it is not UTF-8).
    fn from_header(head: &RequestHead, value: &[u8]) -> Self {
        match std::str::from_utf8(value) {
            Ok(_) => ModelName::Shared(head.raw().slice_ref(value)),
            Err(_) => ModelName::Shared(Bytes::from(
                String::from_utf8_lossy(value).into_owned().into_bytes(),
            )),
        }
    }

    /// From the body's `model` field as the scanner returned it.
    fn from_body(body: &Bytes, name: std::borrow::Cow<'_, str>) -> Self {
        match name {
            std::borrow::Cow::Borrowed(s) => ModelName::Shared(body.slice_ref(s.as_bytes())),
            std::borrow::Cow::Owned(s) => ModelName::Shared(Bytes::from(s.into_bytes())),
        }
    }
}

impl std::ops::Deref for ModelName<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            ModelName::Shared(b) => std::str::from_utf8(b).unwrap_or(""),
            ModelName::Config(s) => s,
        }
    }
}

/// What one request's handling observed, for metrics.
struct RequestState<'s> {
    started: Instant,
    ts_ms: u64,
    request_id: RequestId<'s>,
    endpoint: Option<usize>,
    bytes: u64,
    status: u16,
    model: Option<ModelName<'s>>,
    route: Option<&'s str>,
    ttft: Option<Duration>,
    tpot: Option<Duration>,
    usage: UsageScanner,
}

#[allow(clippy::too_many_arguments)]
async fn route_and_forward<'s>(
    shard: &Rc<Shard>,
    state: &'s GatewayState,
    client: &mut TcpStream,
    rbuf: &mut BytesMut,
    out: &mut Vec<u8>,
    head: &'s RequestHead,
    peer: SocketAddr,
    listeners: &[usize],
    rq: &mut RequestState<'s>,
) -> bool {
    let mut guard = InFlight::new(shard);
    let request_id = rq.request_id;
    let rid = request_id.as_bytes();
    let body = match read_body(shard, client, rbuf, head, out).await {
        Ok(b) => b,
        Err(f) => {
            rq.status = respond_failure(client, out, &f, Some(rid)).await;
            return false;
        }
    };
    let client_keep = head.keep_alive() && !shard.shutdown.is_draining();

    // The gateway answers `GET /v1/models` itself: the union of what routes serve.
    if head.method() == "GET" && head.path() == "/v1/models" {
        rq.status = respond_json(client, out, 200, &state.models_body, client_keep, rid).await;
        return client_keep;
    }

    let body_model = if is_model_body_path(head.method(), head.path()) {
        match extract_model_strict(&body) {
            Ok(m) => m.map(|m| ModelName::from_body(&body, m)),
            Err(e) => {
                rq.status =
                    respond_failure(client, out, &Failure::bad_json(e.to_string()), Some(rid))
                        .await;
                return client_keep;
            }
        }
    } else {
        None
    };
    rq.model = body_model.clone().or_else(|| {
        head.header(MODEL_TYPE_HEADER)
            .or_else(|| head.header(MODEL_HEADER))
            .map(|v| ModelName::from_header(head, v))
    });

    let host = head
        .header("host")
        .and_then(|h| std::str::from_utf8(h).ok());
    // The matcher reads the body's model for `X-Gateway-Model-Name` (overriding any
    // client copy) and for the seed's `X-Model-Type` when the client sent none.
    let lookup = |name: &str| head.header(name);
    let view = RequestView {
        method: head.method(),
        path: head.path(),
        query: head.query(),
        host,
        headers: &lookup,
        model: body_model.as_deref(),
    };
    // Listeners sharing a port share one table: the first index stands for them all.
    let Some(route) = listeners
        .first()
        .and_then(|l| state.table.match_request(*l, &view))
    else {
        let f = match &rq.model {
            Some(m) => Failure::unknown_model(m),
            None => Failure::no_route(head.method(), head.path()),
        };
        rq.status = respond_failure(client, out, &f, Some(rid)).await;
        return client_keep;
    };
    rq.route = Some(route.route);
    if let RuleAction::FilterNotFound { filter } = route.action {
        rq.status =
            respond_failure(client, out, &Failure::filter_not_found(filter), Some(rid)).await;
        return client_keep;
    }
    // The request's model: its own (body or header), else the rule's one model (a
    // KServe v2 path, or the only model its pool serves), else a KServe path's. A
    // model the rule is known to serve gets its own metrics label (config-bounded).
    if rq.model.is_none() {
        rq.model = route
            .model
            .or_else(|| shardgate_routing::table::kserve_model(head.path()))
            .map(ModelName::Config);
    }
    if let Some(m) = rq.model.as_deref() {
        if route.models.iter().any(|k| k == m) {
            shard.metrics.borrow_mut().know_model(m);
        }
    }
    // Request priority (README "Flow control"): X-Request-Priority (integer), else
    // the X-Priority queue's, else the InferenceObjective named by
    // x-gateway-inference-objective (an unknown name is a 400 whatever else is
    // set), else the model's InferenceModel / like-named InferenceObjective, else 0.
    let named = head
        .header("x-priority")
        .and_then(|v| std::str::from_utf8(v).ok());
    let objective = match head.header(shardgate_routing::table::OBJECTIVE_HEADER) {
        None => None,
        Some(v) => {
            let found = std::str::from_utf8(v)
                .ok()
                .and_then(|n| state.table.objective_priority(route.rule_id, n.trim()));
            if found.is_none() {
                let f = Failure::batch_refused(
                    400,
                    "unknown_inference_objective",
                    format!(
                        "{} `{}` names no InferenceObjective",
                        shardgate_routing::table::OBJECTIVE_HEADER,
                        String::from_utf8_lossy(v)
                    ),
                );
                rq.status = respond_failure(client, out, &f, Some(rid)).await;
                return client_keep;
            }
            found
        }
    };
    let priority = head
        .header("x-request-priority")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<i32>().ok())
        .or_else(|| {
            named.and_then(|n| {
                route
                    .batching
                    .and_then(|k| shard.batcher(k))
                    .and_then(|b| b.priority_of(n))
            })
        })
        .or(objective)
        .or_else(|| {
            rq.model
                .as_deref()
                .and_then(|m| state.table.model_priority(route.rule_id, m))
        })
        .unwrap_or(0);
    // maxConcurrentInferences: hold a permit until the answer is out.
    let _permit = match &shard.admission {
        Some(adm) => match adm.acquire(priority).await {
            Ok(p) => Some(p),
            Err(r) => {
                rq.status =
                    respond_failure(client, out, &Failure::not_admitted(r), Some(rid)).await;
                return client_keep;
            }
        },
        None => None,
    };
    if let Some(pb) = route.batching.and_then(|k| shard.batcher(k)).cloned() {
        if let Some(model) = body_model.as_deref() {
            let req = crate::batch::Request {
                path: head.path(),
                body: &body,
                priority: named,
                level: priority,
                auth: head.header("authorization"),
                model,
                rule_id: route.rule_id,
            };
            match crate::batch::submit(shard, &pb, &req) {
                crate::batch::Submitted::NotBatchable => {}
                crate::batch::Submitted::Refused {
                    status,
                    code,
                    message,
                } => {
                    let f = Failure::batch_refused(status, code, message);
                    rq.status = respond_failure(client, out, &f, Some(rid)).await;
                    return client_keep;
                }
                crate::batch::Submitted::Waiting(rx, queue) => {
                    let queue = pb.queue_name(queue);
                    shard
                        .metrics
                        .borrow_mut()
                        .queue_depth_add(queue, Some(model), 1);
                    let reply = rx.await;
                    shard
                        .metrics
                        .borrow_mut()
                        .queue_depth_add(queue, Some(model), -1);
                    let reply = reply.unwrap_or(crate::batch::Reply {
                        status: 500,
                        body: b"{\"error\":{\"message\":\"the batch was dropped\",\"type\":\"gateway_error\",\"param\":null,\"code\":\"batch_dropped\"}}".to_vec(),
                    });
                    rq.usage.feed(&reply.body);
                    rq.bytes = reply.body.len() as u64;
                    rq.status =
                        respond_json(client, out, reply.status, &reply.body, client_keep, rid)
                            .await;
                    return client_keep;
                }
            }
        }
    }
    let ctx = Forward {
        head,
        body: &body,
        peer,
        request_id: rid,
        model: body_model.as_deref(),
        client_keep,
        priority,
    };
    forward(shard, client, out, &ctx, &route, &mut guard, rq).await
}

struct Forward<'a> {
    head: &'a RequestHead,
    body: &'a Bytes,
    peer: SocketAddr,
    request_id: &'a [u8],
    model: Option<&'a str>,
    client_keep: bool,
    priority: i32,
}

/// Serialise the upstream request (head, and the body when it is small).
fn upstream_request(ctx: &Forward<'_>, ep_addr: SocketAddr, buf: &mut Vec<u8>) {
    let head = ctx.head;
    buf.clear();
    buf.extend_from_slice(head.method().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(head.target().as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    let mut xff: Option<&[u8]> = None;
    for (name, value) in head.headers() {
        if head.is_hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            xff = Some(value);
            continue;
        }
        if REPLACED_UPSTREAM
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        has_host |= name.eq_ignore_ascii_case("host");
        write::header(buf, name, value);
    }
    if !has_host {
        let host = ep_addr.to_string();
        write::header(buf, "host", host.as_bytes());
    }
    buf.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = xff {
        buf.extend_from_slice(prev);
        buf.extend_from_slice(b", ");
    }
    // Formats straight into the buffer (no temporary String).
    let _ = std::io::Write::write_fmt(buf, format_args!("{}", ctx.peer.ip()));
    buf.extend_from_slice(b"\r\n");
    write::header(buf, "x-forwarded-proto", b"http");
    write::header(buf, "x-request-id", ctx.request_id);
    if let Some(m) = ctx.model {
        write::header(buf, MODEL_HEADER, m.as_bytes());
    }
    if !ctx.body.is_empty() || matches!(head.method(), "POST" | "PUT" | "PATCH") {
        write::header_u64(buf, "content-length", ctx.body.len() as u64);
    }
    buf.extend_from_slice(b"\r\n");
    if ctx.body.len() <= 64 * 1024 {
        buf.extend_from_slice(ctx.body);
    }
}

/// Why one upstream attempt failed.
enum Attempt {
    /// A reused pooled connection failed before any response byte: retry fresh.
    Stale,
    /// Connect failed: eject the endpoint, try another.
    Connect(&'static str),
    /// Anything else: answer with this failure.
    Fail(Failure),
    /// The client went away while we waited.
    ClientGone,
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shard: &Rc<Shard>,
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    ctx: &Forward<'_>,
    route: &RouteMatch<'_>,
    guard: &mut InFlight,
    rq: &mut RequestState<'_>,
) -> bool {
    let settings = &shard.state.settings;
    let total = route.request_timeout.unwrap_or(settings.response_timeout);
    let deadline = Instant::now() + total;
    let profile = shard.state.profile(route.policy);
    let uses_prefix = profile.weights.get(Scorer::Prefix) > 0.0;
    let hashes = (uses_prefix && !ctx.body.is_empty())
        .then(|| shard.prefix_hashes(ctx.model.unwrap_or(""), ctx.body));
    let pick_req = PickRequest {
        model: ctx.model,
        adapter: profile.lora_adapter(ctx.model),
        prefix_total_blocks: hashes
            .as_ref()
            .map_or(0, |h| u32::try_from(h.prompt_blocks()).unwrap_or(u32::MAX)),
    };
    shard.earn_retry();
    let mut tried = Tried::default();
    let mut last_error: Option<&'static str> = None;
    let mut pooled = PooledBuf::new(shard);
    let reqbuf: &mut Vec<u8> = &mut pooled.buf;
    let rid = Some(ctx.request_id);
    let mut retry_paid = false;
    loop {
        if !tried.is_empty()
            && !std::mem::take(&mut retry_paid)
            && (tried.len() as u32 > settings.retries || !shard.take_retry())
        {
            let f = Failure::upstream_failed(last_error.unwrap_or("retry budget exhausted"));
            rq.status = respond_failure(client, out, &f, rid).await;
            return ctx.client_keep;
        }
        let ep = match shard.pick(
            route.backends,
            tried.as_slice(),
            Instant::now(),
            profile,
            &pick_req,
            hashes.as_deref(),
            ctx.priority,
        ) {
            Ok(ep) => ep,
            Err(why) => {
                let f = match (why, last_error) {
                    (PickFailure::Saturated, _) => Failure::saturated(route.route),
                    (PickFailure::Shed, _) => Failure::shed_saturated(route.route),
                    (_, Some(e)) => Failure::upstream_failed(e),
                    _ => Failure::no_endpoint(route.route),
                };
                rq.status = respond_failure(client, out, &f, rid).await;
                return ctx.client_keep;
            }
        };
        guard.set_endpoint(ep);
        rq.endpoint = Some(ep);
        tried.push(ep);
        let addr = shard.addr(ep);
        upstream_request(ctx, addr, reqbuf);
        let mut fresh_retry_done = false;
        loop {
            let pooled = if fresh_retry_done {
                None
            } else {
                shard.take_conn(ep, Instant::now())
            };
            let conn = match pooled {
                Some(c) => c,
                None => match connect(addr, settings.connect_timeout).await {
                    Ok(c) => c,
                    Err(why) => {
                        shard.metrics.borrow_mut().upstream_error(ep, "connect");
                        shard.eject(ep, Instant::now(), why);
                        last_error = Some(why);
                        break;
                    }
                },
            };
            match exchange(shard, client, conn, reqbuf, ctx, deadline).await {
                Ok((resp, conn)) => {
                    if let Some(h) = &hashes {
                        shard.record_prefix(ep, h);
                    }
                    if resp.status() >= 500 {
                        shard.upstream_5xx(ep, Instant::now());
                    } else {
                        shard.restore(ep);
                    }
                    // A 503 before anything reached the client: try another endpoint.
                    if resp.status() == 503
                        && (tried.len() as u32) <= settings.retries
                        && shard.has_alternative(route.backends, tried.as_slice(), Instant::now())
                        && shard.take_retry()
                    {
                        retry_paid = true;
                        shard
                            .metrics
                            .borrow_mut()
                            .upstream_error(ep, "http_503_retried");
                        last_error = Some("the upstream answered 503");
                        drop(conn);
                        break;
                    }
                    return stream_response(shard, client, out, ctx, resp, conn, ep, deadline, rq)
                        .await;
                }
                Err(Attempt::Stale) if !fresh_retry_done => {
                    shard
                        .metrics
                        .borrow_mut()
                        .upstream_error(ep, "stale_connection_retried");
                    fresh_retry_done = true;
                    upstream_request(ctx, addr, reqbuf);
                }
                Err(Attempt::Stale) => {
                    shard.metrics.borrow_mut().upstream_error(ep, "reset");
                    let f = Failure::upstream_failed("connection closed before the response");
                    rq.status = respond_failure(client, out, &f, rid).await;
                    return ctx.client_keep;
                }
                Err(Attempt::Connect(why)) => {
                    shard.metrics.borrow_mut().upstream_error(ep, "reset");
                    shard.eject(ep, Instant::now(), why);
                    last_error = Some(why);
                    break;
                }
                Err(Attempt::Fail(f)) => {
                    let kind = match f.status {
                        504 => "timeout",
                        _ if f.code == "upstream_protocol_error" => "protocol",
                        _ => "reset",
                    };
                    shard.metrics.borrow_mut().upstream_error(ep, kind);
                    shard.upstream_5xx(ep, Instant::now());
                    rq.status = respond_failure(client, out, &f, rid).await;
                    return ctx.client_keep && !f.close;
                }
                Err(Attempt::ClientGone) => {
                    shard
                        .metrics
                        .borrow_mut()
                        .upstream_error(ep, "client_cancelled");
                    return false;
                }
            }
        }
    }
}

/// A buffer from the shard's pool, returned when dropped.
struct PooledBuf<'a> {
    shard: &'a Shard,
    buf: Vec<u8>,
}

impl<'a> PooledBuf<'a> {
    fn new(shard: &'a Shard) -> Self {
        PooledBuf {
            shard,
            buf: shard.take_out_buf(),
        }
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        self.shard.give_out_buf(std::mem::take(&mut self.buf));
    }
}

/// Endpoints already tried for one request (at most 8; no heap).
#[derive(Default)]
struct Tried {
    eps: [usize; 8],
    len: usize,
}

impl Tried {
    fn push(&mut self, ep: usize) {
        if self.len < self.eps.len() {
            self.eps[self.len] = ep;
            self.len += 1;
        }
    }
    fn as_slice(&self) -> &[usize] {
        &self.eps[..self.len]
    }
    fn len(&self) -> usize {
        self.len
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Open a fresh upstream connection within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<UpstreamConn, &'static str> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(UpstreamConn {
                stream,
                buf: BytesMut::with_capacity(16 * 1024),
                idle_since: Instant::now(),
                reused: false,
            })
        }
        Ok(Err(_)) => Err("connection refused"),
        Err(_) => Err("connect timed out"),
    }
}

/// How long an upstream read waits before the client socket is watched for a
/// disconnect (10 ms): a fast exchange pays no poll and cancel for the watch.
pub const WATCH_AFTER: Duration = Duration::from_millis(10);

/// Outcome of waiting on an upstream read while watching the client.
enum Watched {
    Read(std::io::Result<usize>, BytesMut),
    TimedOut,
    ClientGone,
}

/// Read once from the upstream, giving up at `deadline`, and abandoning the read
/// if the client disconnects meanwhile (pipelined client bytes stop the watch).
async fn read_upstream_watched(
    client: &TcpStream,
    conn: &mut UpstreamConn,
    deadline: Instant,
    watch: &mut bool,
) -> Watched {
    let buf = std::mem::take(&mut conn.buf);
    let read = read_into(&mut conn.stream, buf);
    let mut read = std::pin::pin!(read);
    let sleep = monoio::time::sleep_until(deadline);
    let mut sleep = std::pin::pin!(sleep);
    if *watch {
        // Most reads finish quickly: start watching the client only once this one
        // has waited WATCH_AFTER, so a fast exchange costs no poll and cancel.
        monoio::select! {
            (res, b) = &mut read => return Watched::Read(res, b),
            _ = &mut sleep => return Watched::TimedOut,
            _ = monoio::time::sleep(WATCH_AFTER) => {}
        }
    }
    loop {
        let watching = *watch;
        monoio::select! {
            (res, b) = &mut read => return Watched::Read(res, b),
            _ = &mut sleep => return Watched::TimedOut,
            r = client.readable(false), if watching => {
                match (r, peer_state(client)) {
                    (Err(_), _) | (_, PeerState::Gone) => return Watched::ClientGone,
                    (_, PeerState::Data) => *watch = false,
                    (_, PeerState::Idle) => {}
                }
            }
        }
    }
}

/// Send the request and read the response head.
async fn exchange(
    shard: &Shard,
    client: &mut TcpStream,
    mut conn: UpstreamConn,
    reqbuf: &mut Vec<u8>,
    ctx: &Forward<'_>,
    deadline: Instant,
) -> Result<(ResponseHead, UpstreamConn), Attempt> {
    let settings = &shard.state.settings;
    let (res, b) = conn.stream.write_all(std::mem::take(reqbuf)).await;
    *reqbuf = b;
    if res.is_err() {
        return Err(if conn.reused {
            Attempt::Stale
        } else {
            Attempt::Connect("connection reset while sending")
        });
    }
    if ctx.body.len() > 64 * 1024 {
        let (res, _) = conn.stream.write_all(ctx.body.clone()).await;
        if res.is_err() {
            return Err(Attempt::Fail(Failure::upstream_failed(
                "connection reset while sending the body",
            )));
        }
    }
    let head_request = ctx.head.method() == "HEAD";
    let mut watch = true;
    let mut got_bytes = false;
    loop {
        if !conn.buf.is_empty() {
            got_bytes = true;
            match split_response_head(&mut conn.buf, head_request, &settings.limits) {
                Ok(Some(resp)) => {
                    if resp.is_informational() && resp.status() != 101 {
                        continue;
                    }
                    if resp.has_other_transfer_coding() {
                        return Err(Attempt::Fail(Failure::upstream_failed(
                            "response uses a transfer coding other than chunked",
                        )));
                    }
                    return Ok((resp, conn));
                }
                Ok(None) => {}
                Err(e) => return Err(Attempt::Fail(Failure::upstream_protocol(&e))),
            }
        }
        let idle_deadline = Instant::now() + settings.stream_idle_timeout;
        let until = deadline.min(idle_deadline);
        match read_upstream_watched(client, &mut conn, until, &mut watch).await {
            Watched::Read(Ok(0), _) | Watched::Read(Err(_), _) => {
                return Err(if conn.reused && !got_bytes {
                    Attempt::Stale
                } else {
                    Attempt::Fail(Failure::upstream_failed(
                        "connection closed before the response head",
                    ))
                });
            }
            Watched::Read(Ok(_), b) => conn.buf = b,
            Watched::TimedOut => {
                return Err(Attempt::Fail(Failure::upstream_timeout(
                    "no response head in time",
                )))
            }
            Watched::ClientGone => return Err(Attempt::ClientGone),
        }
    }
}

/// Copy the response head to the client and stream the body, chunk by chunk.
#[allow(clippy::too_many_arguments)]
async fn stream_response(
    shard: &Shard,
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    ctx: &Forward<'_>,
    resp: ResponseHead,
    mut conn: UpstreamConn,
    ep: usize,
    deadline: Instant,
    rq: &mut RequestState<'_>,
) -> bool {
    let settings = &shard.state.settings;
    let framing = resp.framing();
    rq.status = resp.status();
    let sse = resp
        .header("content-type")
        .is_some_and(|v| memchr::memmem::find(v, b"text/event-stream").is_some());
    let mut timing = StreamTiming::default();
    let client_http11 = ctx.head.version() == Version::Http11;
    // Chunked toward the client whenever the length is unknown and it speaks 1.1.
    let chunked_out = matches!(framing, Framing::Chunked | Framing::UntilClose) && client_http11;
    let mut keep = ctx.client_keep && (framing != Framing::UntilClose || chunked_out);
    out.clear();
    write::status_line(out, resp.status());
    let mut has_rid = false;
    for (name, value) in resp.headers() {
        if resp.is_hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") && framing != Framing::None {
            continue;
        }
        has_rid |= name.eq_ignore_ascii_case("x-request-id");
        write::header(out, name, value);
    }
    if !has_rid {
        write::header(out, "x-request-id", ctx.request_id);
    }
    match framing {
        Framing::Length(n) => write::header_u64(out, "content-length", n),
        Framing::Chunked | Framing::UntilClose if chunked_out => {
            write::header(out, "transfer-encoding", b"chunked")
        }
        // No body: keep a HEAD response's content-length (copied above), else say 0.
        Framing::None
            if resp.header("content-length").is_none()
                && !matches!(resp.status(), 100..=199 | 204 | 304) =>
        {
            write::header_u64(out, "content-length", 0)
        }
        _ => {}
    }
    if !keep {
        write::header(out, "connection", b"close");
    } else if ctx.head.version() == Version::Http10 {
        write::header(out, "connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");

    let mut dec = BodyDecoder::new(framing);
    let mut watch = true;
    loop {
        // Decode everything buffered and frame it for the client.
        while !conn.buf.is_empty() && !dec.is_done() {
            let d = match dec.decode(&conn.buf) {
                Ok(d) => d,
                Err(_) => {
                    tracing::warn!(endpoint = %shard.addr(ep), "invalid response body framing from upstream");
                    let _ = flush(client, out).await;
                    return false;
                }
            };
            if let Some(r) = d.data.clone() {
                rq.usage.feed(&conn.buf[r.clone()]);
                rq.bytes += r.len() as u64;
                timing.pending = true;
                if chunked_out {
                    write::chunk_header(out, r.len());
                    out.extend_from_slice(&conn.buf[r]);
                    out.extend_from_slice(write::CHUNK_END);
                } else {
                    out.extend_from_slice(&conn.buf[r]);
                }
            }
            conn.buf.advance(d.consumed);
            if d.consumed == 0 && d.data.is_none() {
                break;
            }
        }
        if dec.is_done() {
            if chunked_out {
                out.extend_from_slice(write::LAST_CHUNK);
            }
            if flush(client, out).await.is_err() {
                return false;
            }
            timing.flushed(sse, rq);
            if resp.keep_alive() && conn.buf.is_empty() {
                shard.put_conn(ep, conn, Instant::now());
            }
            return keep;
        }
        if !out.is_empty() {
            if flush(client, out).await.is_err() {
                // Client gone mid-stream: dropping `conn` closes the upstream, cancelling it.
                return false;
            }
            timing.flushed(sse, rq);
        }
        let until = deadline.min(Instant::now() + settings.stream_idle_timeout);
        match read_upstream_watched(client, &mut conn, until, &mut watch).await {
            Watched::Read(Ok(0), b) => {
                conn.buf = b;
                if dec.on_eof().is_ok() {
                    if chunked_out {
                        out.extend_from_slice(write::LAST_CHUNK);
                    }
                    let ok = flush(client, out).await.is_ok();
                    timing.flushed(sse, rq);
                    keep &= ok;
                    return keep;
                }
                tracing::warn!(endpoint = %shard.addr(ep), "upstream closed mid-body; aborting the client response");
                return false;
            }
            Watched::Read(Ok(_), b) => conn.buf = b,
            Watched::Read(Err(_), _) => return false,
            Watched::TimedOut => {
                tracing::warn!(endpoint = %shard.addr(ep), "upstream stalled mid-body; aborting");
                return false;
            }
            Watched::ClientGone => return false,
        }
    }
}

/// First/last instants at which streamed body bytes reached the client socket:
/// TTFT is the first, TPOT the mean gap between SSE events after the first.
#[derive(Default)]
struct StreamTiming {
    pending: bool,
    first: Option<Instant>,
}

impl StreamTiming {
    fn flushed(&mut self, sse: bool, rq: &mut RequestState<'_>) {
        if !sse || !std::mem::take(&mut self.pending) {
            return;
        }
        let now = Instant::now();
        let first = *self.first.get_or_insert_with(|| {
            rq.ttft = Some(now.saturating_duration_since(rq.started));
            now
        });
        let events = rq.usage.events;
        if events > 1 {
            rq.tpot = Some(now.saturating_duration_since(first) / (events - 1));
        }
    }
}

async fn flush(client: &mut TcpStream, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let (res, o) = client.write_all(std::mem::take(out)).await;
    *out = o;
    out.clear();
    res.map(|_| ())
}

/// Answer a JSON body with `status`.
async fn respond_json(
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    status: u16,
    body: &[u8],
    keep: bool,
    rid: &[u8],
) -> u16 {
    out.clear();
    write::status_line(out, status);
    write::header(out, "content-type", b"application/json");
    write::header_u64(out, "content-length", body.len() as u64);
    write::header(out, "x-request-id", rid);
    // The gateway's own 429 / 503 answers to batched requests (shed, queue
    // timeout, nothing healthy) say when to come back, like unbatched ones.
    if matches!(status, 429 | 503) {
        write::header(out, "retry-after", b"1");
    }
    if !keep {
        write::header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    let _ = flush(client, out).await;
    status
}

/// Answer an OpenAI-style error.
pub async fn respond_failure(
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    f: &Failure,
    rid: Option<&[u8]>,
) -> u16 {
    out.clear();
    let retry;
    let mut extra: Vec<(&str, &[u8])> = Vec::with_capacity(2);
    if let Some(r) = f.retry_after {
        retry = r.to_string();
        extra.push(("retry-after", retry.as_bytes()));
    }
    if let Some(rid) = rid {
        extra.push(("x-request-id", rid));
    }
    write::error_response(
        out, f.status, &f.message, f.err_type, f.code, f.close, &extra,
    );
    let _ = flush(client, out).await;
    f.status
}
