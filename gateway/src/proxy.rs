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
//! depends on the body's `model`; responses are never buffered. All bodies a
//! shard buffers at once are bounded by its share of `--max-buffered-body-bytes`
//! (256 MiB over all shards, [`crate::bodymem`]): the grant is taken before the
//! memory is reserved, a request that cannot get one is refused at once (503
//! `body_budget_exhausted`, or 413 above the whole share), and it is given back
//! when the request ends.
//!
//! Every write to the client may block at most `--send-timeout` (60 s): past it
//! the write is cancelled, the connection closes and the upstream connection is
//! dropped, cancelling the request. How each delivery ended is the access log's
//! `outcome` (`ok`, `aborted_upstream`, `aborted_client`, `send_timeout`); an
//! SSE stream whose upstream fails after the head ends with an error event
//! (`code` `aborted_mid_stream`) and the end of the chunked body.
//!
//! Memory per request (numbers): none allocated on a busy keep-alive connection.
//! Heads are split off the connection's read buffer (16 header fields inline),
//! `Content-Length` bodies and model names are slices of it, read buffers (16 KiB,
//! [`shardgate_runtime::io::READ_CHUNK`]) and response buffers come from per-shard
//! pools, and the hot phase's future (7,424 bytes, the whole request lifecycle)
//! lives in a box the connection reuses while it stays busy. A connection quiet
//! for `--client-hot-wait` (default 50 ms, rounded up to the shard's 50 ms grid,
//! [`HOT_GRID`] and [`crate::ticks`], so quiet connections are handled
//! together) is kept hot while the shard's share of `--client-hot-conns`
//! (1,024 in total) has room: its receive stays armed until its next request or
//! the idle timeout, so its next request costs one receive. Beyond the budget it
//! returns buffer and box and waits for readability without them (a cancel, a
//! readiness poll and a second receive per request after a quiet spell). The
//! client-disconnect watch starts after [`crate::upstream::WATCH_AFTER`] (10 ms)
//! of waiting on the upstream.
//!
//! Timers: each wait owns its timer and drops it when the wait ends: the hot
//! read's, one per flush, one per upstream read. A timer kept for the
//! connection and re-armed per use stays in monoio's wheel at the slot of an
//! earlier deadline (moving a deadline later only stores it), so the shard's
//! next wake-up is always near: at 64 connections every io_uring wait then
//! armed a ~1 ms timeout, which cost 20 µs of CPU per request at 2,000 rps on
//! a VM (`bench/results/latency.md` section 8).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use monoio::io::Canceller;
use monoio::time::Instant;
use shardgate_http::{
    split_request_head, write, BodyDecoder, Framing, RequestHead, ResponseHead, Version,
};
use shardgate_routing::scoring::PickRequest;
use shardgate_routing::MODEL_HEADER;
use shardgate_runtime::io::READ_CHUNK;

use crate::attempt::{Action, Attempts, Outcome};
use crate::bodymem::{BodyGrant, Refusal};
use crate::error::Failure;
use crate::metrics::{RequestRecord, UsageScanner};
use crate::plan::{plan, Plan, RequestInfo, Target};
use crate::shard::{ConnGauge, InFlight, Shard};
use crate::state::GatewayState;
use crate::tls::ClientStream;
use crate::upstream::{
    read_watched, send_and_read_head, write_request, ClaimHeaders, ExchangeLimits, Forwarded,
    UpstreamConn, Watched, INLINE_BODY,
};

/// The virtual model header, as sent upstream.
pub const MODEL_HEADER_NAME: &str = MODEL_HEADER;

/// A connection's I/O state, moved into each request's future and back.
struct ConnIo<S> {
    client: ClientConn<S>,
    /// Read buffer: empty with no capacity while the connection is idle.
    rbuf: BytesMut,
    /// Response buffer, from the shard's pool for one request.
    out: Vec<u8>,
}

/// The client socket, with the send timeout and how a write to it failed.
struct ClientConn<S> {
    /// The plain socket or the TLS stream over it.
    sock: S,
    /// Longest a single write may block (`--send-timeout`).
    send_timeout: Duration,
    /// Set when a write failed; nothing more is written and the connection closes.
    failed: Option<ClientAbort>,
    /// Cancels this connection's pending read when it goes idle (the read
    /// hands back its buffer and what it received); reused, so it allocates
    /// only after a cancel. Writes take no handle (see `flush`).
    cancel: Canceller,
}

/// How writing to a client failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAbort {
    /// The client closed or reset its connection.
    Closed,
    /// A single write blocked longer than `--send-timeout`.
    SendTimeout,
}

/// How a response's delivery ended: the access log's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// The whole answer was written (whatever its status).
    Ok,
    /// The upstream closed, broke or stalled after the response began
    /// (`gateway_upstream_errors_total{kind="aborted_mid_stream"}`).
    AbortedUpstream,
    /// The client went away first (`gateway_client_aborts_total{reason="closed"}`).
    AbortedClient,
    /// A write to the client blocked past `--send-timeout`
    /// (`gateway_client_aborts_total{reason="send_timeout"}`).
    SendTimeout,
}

impl Delivery {
    fn as_str(self) -> &'static str {
        match self {
            Delivery::Ok => "ok",
            Delivery::AbortedUpstream => "aborted_upstream",
            Delivery::AbortedClient => "aborted_client",
            Delivery::SendTimeout => "send_timeout",
        }
    }
}

/// Serve one client connection until it closes, errs, idles out, is told to
/// close while idle (to make room, see [`crate::conns`]) or the gateway drains.
/// `open` counts it as open (taken by the accept loop, so the cap sees it at once).
pub(crate) async fn serve_connection<S: ClientStream>(
    shard: Rc<Shard>,
    client: S,
    peer: SocketAddr,
    port: u16,
    open: ConnGauge,
) {
    let _ = client.tcp().set_nodelay(true);
    let _open = open;
    // Idle connections hold no buffers: the read buffer comes from the shard's pool
    // when bytes arrive and goes back when the connection idles; the write buffer
    // comes from the pool for one request.
    let mut io = ConnIo {
        client: ClientConn {
            sock: client,
            send_timeout: shard.settings.send_timeout,
            failed: None,
            cancel: Canceller::new(),
        },
        rbuf: BytesMut::new(),
        out: Vec::new(),
    };
    // The hot phase's future (≈ 7.5 KiB: the whole request lifecycle) is boxed,
    // so an idle connection's task stays small. It lives as long as the
    // connection keeps sending within its hot wait: a busy keep-alive connection
    // allocates it once and runs every request inside it, where a box per
    // request (re-armed with each request's future) copied the whole state
    // machine per request. It is freed when the connection idles.
    if io.client.sock.buffered() {
        // Bytes came with the end of a TLS handshake: read them at once (no
        // readiness would announce them).
        io.rbuf = shard.take_read_buf();
    }
    let mut idle_left = shard.settings.client_idle_timeout;
    loop {
        if io.rbuf.capacity() == 0 {
            if !wait_idle(&shard, &io, idle_left).await {
                break;
            }
            io.rbuf = shard.take_read_buf();
        }
        let (back, quiet_since) = Box::pin(hot_phase(shard.clone(), io, peer, port)).await;
        io = back;
        let Some(quiet_since) = quiet_since else {
            break;
        };
        idle_left = shard
            .settings
            .client_idle_timeout
            .saturating_sub(quiet_since.elapsed());
    }
    shard.give_read_buf(std::mem::take(&mut io.rbuf));
    if io.client.failed.is_none() {
        io.client.sock.finish().await;
    }
}

/// Serve requests while the connection stays busy. Returns the connection and,
/// when it went idle (quiet through its hot wait between requests; its read
/// buffer is then given back) rather than closed, since when it was quiet.
async fn hot_phase<S: ClientStream>(
    shard: Rc<Shard>,
    mut io: ConnIo<S>,
    peer: SocketAddr,
    port: u16,
) -> (ConnIo<S>, Option<Instant>) {
    loop {
        let mut quiet_since = None;
        let (head, started) = match read_head(&shard, &mut io, &mut quiet_since).await {
            Ok(Some(h)) => h,
            Ok(None) => return (io, quiet_since),
            Err(f) => {
                respond_failure(&mut io.client, &mut io.out, &f, None).await;
                return (io, None);
            }
        };
        io.out = shard.take_out_buf();
        let keep = handle_request(&shard, &mut io, &head, started, peer, port).await;
        drop(head);
        shard.give_out_buf(std::mem::take(&mut io.out));
        if !keep || io.client.failed.is_some() || shard.shutdown.is_draining() {
            return (io, None);
        }
    }
}

/// Wait up to `idle_left` for the idle connection to become readable, without
/// a buffer, as one of the shard's idle connections (the first to close when
/// room is needed). False: close it.
async fn wait_idle<S: ClientStream>(shard: &Shard, io: &ConnIo<S>, idle_left: Duration) -> bool {
    let idle = shard.conns.idle.enter();
    let client = &io.client.sock;
    let ready = monoio::select! {
        r = monoio::time::timeout(idle_left, client.tcp().readable(false)) => matches!(r, Ok(Ok(()))),
        _ = idle.closed() => {
            shard.metrics.borrow_mut().connections_closed_idle += 1;
            false
        }
    };
    drop(idle);
    ready
}

/// The grid a kept-alive client connection's hot wait ends on. The
/// connection keeps its read buffer (and its boxed hot phase) while waiting
/// for its next request: at least `--client-hot-wait` (default 50 ms), and
/// until the next boundary of the shard's 50 ms grid after that
/// ([`crate::ticks`]), so connections that go quiet at different times give
/// them back together, in one wake-up of the shard. A busy connection reads
/// directly into its buffer (one operation per read); past this it is kept hot
/// within the shard's `--client-hot-conns` budget, else gives them back and
/// waits for readability without a buffer, so 10,000 idle connections pin at
/// most the budget's buffers.
pub const HOT_GRID: Duration = Duration::from_millis(50);

/// How a quiet connection's hot wait ended, when its read was cancelled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HotEnd {
    /// Past the hot wait with the shard's kept-hot budget full: goes idle.
    Idle,
    /// Kept hot until the idle timeout: closes.
    IdleTimeout,
    /// Kept hot, and told to close to make room at the connection cap.
    Shed,
}

/// Read until a complete request head is buffered; with it, when its first
/// byte was seen (the request's start). `Ok(None)`: the client closed, or
/// the connection is to close (kept hot until the idle timeout, or told to
/// close to make room), or (`quiet_since` set to when it went quiet) it sent
/// nothing through its hot wait ([`HOT_GRID`]) between requests and the shard
/// keeps no more connections hot: the read buffer went back to the pool and the
/// caller waits for readiness.
async fn read_head<S: ClientStream>(
    shard: &Shard,
    io: &mut ConnIo<S>,
    quiet_since: &mut Option<Instant>,
) -> Result<Option<(RequestHead, Instant)>, Failure> {
    let settings = &shard.settings;
    let mut started: Option<Instant> = None;
    let ClientConn {
        sock: client,
        cancel,
        ..
    } = &mut io.client;
    let rbuf = &mut io.rbuf;
    loop {
        if !rbuf.is_empty() {
            let t = *started.get_or_insert_with(Instant::now);
            match split_request_head(rbuf, &settings.limits) {
                Ok(Some(head)) => return Ok(Some((head, t))),
                Ok(None) => {}
                Err(e) => return Err(Failure::from_codec(&e)),
            }
        }
        let Some(t) = started else {
            // Between requests.
            let quiet = Instant::now();
            if rbuf.capacity() > 0 {
                // Hot: read straight into the buffer, for a while: until a
                // boundary of the shard's grid, never past the idle timeout.
                let hot_until =
                    crate::ticks::boundary_after(quiet + settings.client_hot_wait, HOT_GRID)
                        .min(quiet + settings.client_idle_timeout);
                // Pinned where it is made (a `let` first would copy it there).
                let mut read = std::pin::pin!(
                    client.read_into_cancelable(std::mem::take(rbuf), cancel.handle())
                );
                // A timer of this wait's own, gone with it (see `flush`).
                // The read's own result, or how its wait ended without one.
                let waited = monoio::select! {
                    r = &mut read => Ok(r),
                    _ = monoio::time::sleep_until(hot_until) => match shard.conns.keep_hot() {
                        // Past the hot wait with the shard's budget full: put away.
                        None => Err(HotEnd::Idle),
                        // Kept hot: the read stays armed.
                        Some(kept) => monoio::select! {
                            r = &mut read => Ok(r),
                            _ = monoio::time::sleep_until(quiet + settings.client_idle_timeout) => {
                                Err(HotEnd::IdleTimeout)
                            }
                            _ = kept.closed() => Err(HotEnd::Shed),
                        },
                    },
                };
                let end = waited.as_ref().err().copied();
                let (res, b) = match waited {
                    Ok(r) => r,
                    // Cancelled, the read still hands back what it received.
                    Err(_) => {
                        *cancel = std::mem::take(cancel).cancel();
                        read.await
                    }
                };
                if end == Some(HotEnd::Shed) {
                    shard.metrics.borrow_mut().connections_closed_idle += 1;
                }
                *rbuf = b;
                match res {
                    Ok(0) => return Ok(None),
                    // Told to close to make room: close, as an idle one does.
                    Ok(_) if end == Some(HotEnd::Shed) => return Ok(None),
                    Ok(_) => {
                        started = Some(Instant::now());
                        continue;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
                    Err(_) => return Ok(None),
                }
                if end != Some(HotEnd::Idle) {
                    // Kept hot to its end: closed (idle timeout, or room needed).
                    return Ok(None);
                }
            }
            // Idle: give the buffer back; the caller frees the hot phase and
            // waits for readiness without a buffer.
            shard.give_read_buf(std::mem::take(rbuf));
            *quiet_since = Some(quiet);
            return Ok(None);
        };
        // Part of a head is in: the rest must come within --header-timeout.
        let Some(wait) = settings.header_timeout.checked_sub(t.elapsed()) else {
            return Err(Failure::request_timeout());
        };
        let buf = std::mem::take(rbuf);
        match monoio::time::timeout(wait, client.read_into(buf)).await {
            Ok((Ok(0), b)) => {
                *rbuf = b;
                return Ok(None);
            }
            Ok((Ok(_), b)) => *rbuf = b,
            Ok((Err(_), _)) => return Ok(None),
            Err(_) => return Err(Failure::request_timeout()),
        }
    }
}

/// Read the request body into one buffer, answering `100 Continue` when asked.
/// The body's memory is granted from the shard's [`crate::bodymem::BodyBudget`]
/// before it is reserved: a `Content-Length` body in full before any of it is
/// read (and before `100 Continue`), a chunked one as its buffer grows. The grant
/// must live as long as the body.
async fn read_body<'s, S: ClientStream>(
    shard: &'s Shard,
    client: &mut ClientConn<S>,
    rbuf: &mut BytesMut,
    head: &RequestHead,
    out: &mut Vec<u8>,
) -> Result<(Bytes, BodyGrant<'s>), Failure> {
    let settings = &shard.settings;
    let framing = head.framing();
    let mut grant = shard.body_budget.empty();
    if framing == Framing::None || framing == Framing::Length(0) {
        return Ok((Bytes::new(), grant));
    }
    let max = settings.limits.max_body_bytes;
    if let Framing::Length(n) = framing {
        if n > max {
            return Err(Failure::from_codec(&body_too_large()));
        }
        grow_grant(shard, &mut grant, n)?;
    }
    if head.expect_continue() && rbuf.is_empty() {
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        flush(client, out)
            .await
            .map_err(|_| Failure::request_timeout())?;
    }
    let client = &mut client.sock;
    // The body's deadline, fixed at its first read that has to wait (a body
    // that came with its head reads no clock).
    let mut deadline: Option<Instant> = None;
    let mut wait_left = || {
        let d = *deadline.get_or_insert_with(|| Instant::now() + settings.header_timeout);
        d.saturating_duration_since(Instant::now())
    };
    if let Framing::Length(n) = framing {
        // Read the whole body into the connection buffer and split it off: no copy,
        // and no allocation when it fits the buffer's spare room.
        let n = usize::try_from(n).map_err(|_| Failure::from_codec(&body_too_large()))?;
        if rbuf.len() < n {
            rbuf.reserve(n - rbuf.len());
        }
        while rbuf.len() < n {
            let wait = wait_left();
            let buf = std::mem::take(rbuf);
            match monoio::time::timeout(wait, client.read_into(buf)).await {
                Ok((Ok(k), b)) if k > 0 => *rbuf = b,
                Ok(_) => return Err(Failure::bad_request_closed()),
                Err(_) => return Err(Failure::request_timeout()),
            }
        }
        return Ok((rbuf.split_to(n).freeze(), grant));
    }
    let mut dec = BodyDecoder::new(framing);
    let mut body = BytesMut::new();
    loop {
        while !rbuf.is_empty() && !dec.is_done() {
            let d = dec.decode(rbuf).map_err(|e| Failure::from_codec(&e))?;
            if let Some(r) = d.data.clone() {
                let need = body.len() + r.len();
                if need as u64 > max {
                    return Err(Failure::from_codec(&body_too_large()));
                }
                if need > body.capacity() {
                    // Grow by doubling (at least a read chunk, at most the
                    // body limit or the shard's share), granted first.
                    let cap = max.min(shard.body_budget.share());
                    let target = need
                        .max(body.capacity() * 2)
                        .max(READ_CHUNK)
                        .min(usize::try_from(cap).unwrap_or(usize::MAX))
                        .max(need);
                    grow_grant(shard, &mut grant, target as u64)?;
                    body.reserve(target - body.len());
                }
                body.extend_from_slice(&rbuf[r]);
            }
            rbuf.advance(d.consumed);
            if d.consumed == 0 && d.data.is_none() {
                break;
            }
        }
        if dec.is_done() {
            return Ok((body.freeze(), grant));
        }
        let wait = wait_left();
        let buf = std::mem::take(rbuf);
        match monoio::time::timeout(wait, client.read_into(buf)).await {
            Ok((Ok(n), b)) if n > 0 => *rbuf = b,
            Ok(_) => return Err(Failure::bad_request_closed()),
            Err(_) => return Err(Failure::request_timeout()),
        }
    }
}

/// Grow `grant` to `n` bytes of the shard's body budget, or the failure to
/// answer (counted): 503 `body_budget_exhausted`, or 413 when `n` exceeds the
/// whole share.
fn grow_grant(shard: &Shard, grant: &mut BodyGrant<'_>, n: u64) -> Result<(), Failure> {
    grant.grow_to(n).map_err(|r| {
        let mut m = shard.metrics.borrow_mut();
        match r {
            Refusal::Exhausted => {
                m.body_refused[0] += 1;
                Failure::body_budget_exhausted()
            }
            Refusal::OverShare { share } => {
                m.body_refused[1] += 1;
                Failure::body_over_budget(share)
            }
        }
    })
}

fn body_too_large() -> shardgate_http::HttpError {
    shardgate_http::HttpError {
        kind: shardgate_http::ErrorKind::BodyTooLarge,
        status: 413,
        message: "request body exceeds the configured limit",
        close: true,
    }
}

/// Handle one request and record its metrics; returns whether the connection may
/// serve another.
///
/// The connection's state and the head are borrowed from the hot phase, not
/// moved in and back out: each by-value pass of them through a future is a
/// copy of a few hundred bytes per request.
async fn handle_request<S: ClientStream>(
    shard: &Rc<Shard>,
    io: &mut ConnIo<S>,
    head: &RequestHead,
    started: Instant,
    peer: SocketAddr,
    port: u16,
) -> bool {
    let (client, rbuf, out) = (&mut io.client, &mut io.rbuf, &mut io.out);
    let state = shard.state_for_request();
    let ts_ms = shard.log_clock();
    let mut guard = InFlight::new(shard);
    let (body, grant) = match read_body(shard, client, rbuf, head, out).await {
        Ok((b, g)) => (Ok(b), Some(g)),
        Err(f) => (Err(f), None),
    };
    let mut rq = RequestState {
        started,
        ts_ms,
        request_id: RequestId::choose(head.header("x-request-id"), shard),
        status: 0,
        model: None,
        route: None,
        endpoint: None,
        bytes: 0,
        ttft: None,
        tpot: None,
        usage: UsageScanner::default(),
        rate: Default::default(),
        delivery: None,
    };
    let keep = match &body {
        Ok(body) => {
            // The port's listeners in this state (none once a reload removed
            // the port: the request finds no route and the connection closes).
            let listeners = state.listeners_on(port);
            let req = Req {
                head,
                body,
                peer,
                client_keep: head.keep_alive()
                    && !shard.shutdown.is_draining()
                    && !listeners.is_empty(),
            };
            execute(
                shard, &state, client, out, &req, listeners, &mut rq, &mut guard,
            )
            .await
        }
        Err(f) => {
            // The connection closes after a body failure: drop a buffer grown
            // for a `Content-Length` body now, its grant being gone already.
            drop(std::mem::take(rbuf));
            rq.status = respond_failure(client, out, f, Some(rq.request_id.as_bytes())).await;
            false
        }
    };
    drop(guard);
    let delivery = match (rq.delivery, client.failed) {
        (Some(d), _) => d,
        (None, Some(ClientAbort::SendTimeout)) => Delivery::SendTimeout,
        (None, Some(ClientAbort::Closed)) => Delivery::AbortedClient,
        (None, None) => Delivery::Ok,
    };
    match delivery {
        Delivery::AbortedClient => shard.metrics.borrow_mut().client_aborts[0] += 1,
        Delivery::SendTimeout => shard.metrics.borrow_mut().client_aborts[1] += 1,
        Delivery::Ok | Delivery::AbortedUpstream => {}
    }
    if let (Some(c), Some(limiter), Ok(body)) = (rq.rate.charge, &state.rate_limiter, &body) {
        if (200..300).contains(&rq.status) {
            let n = crate::ratelimit::tokens_used(
                rq.usage.prompt_tokens,
                rq.usage.completion_tokens,
                body.len() as u64,
                rq.usage.events,
                rq.bytes,
            );
            limiter.charge_tokens(c.key, &c.limit, n, limiter.now());
        }
    }
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
            outcome: delivery.as_str(),
        });
    }
    // The body's memory goes back before its budget does: a `Content-Length` body
    // larger than a read chunk was read into a grown connection buffer, whose
    // allocation the rest of the buffer still holds, so swap in a pooled one.
    drop(body);
    if grant
        .as_ref()
        .is_some_and(|g| g.bytes() > READ_CHUNK as u64)
    {
        let old = std::mem::replace(&mut io.rbuf, shard.take_read_buf());
        io.rbuf.extend_from_slice(&old);
    }
    drop(grant);
    keep
}

/// A request's id, over HTTP/1.1 and HTTP/2 alike: the client's
/// `X-Request-Id` when it is usable (1–200 visible ASCII bytes), else a
/// generated one (32 hex digits). Neither allocates; both are ASCII.
#[derive(Clone, Copy)]
pub(crate) enum RequestId<'h> {
    Client(&'h [u8]),
    Own([u8; 32]),
}

impl<'h> RequestId<'h> {
    /// The id for a request whose `X-Request-Id` value is `client`.
    pub(crate) fn choose(client: Option<&'h [u8]>, shard: &Shard) -> Self {
        match client {
            Some(v)
                if !v.is_empty() && v.len() <= 200 && v.iter().all(|b| b.is_ascii_graphic()) =>
            {
                RequestId::Client(v)
            }
            _ => RequestId::Own(shard.request_id()),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Client(v) => v,
            RequestId::Own(id) => id,
        }
    }

    /// The id as text (it is ASCII either way).
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

/// What one request's handling observed, for metrics and the access log.
struct RequestState<'s> {
    started: Instant,
    ts_ms: u64,
    request_id: RequestId<'s>,
    endpoint: Option<usize>,
    bytes: u64,
    status: u16,
    /// A slice of the head or body, or a configured name; owned only when the
    /// body's name was JSON-escaped or a header's was not UTF-8.
    model: Option<Cow<'s, str>>,
    route: Option<&'s str>,
    ttft: Option<Duration>,
    tpot: Option<Duration>,
    usage: UsageScanner,
    /// The rate limits' quotas (success headers) and the token charge.
    rate: crate::ratelimit::Admitted,
    /// How the delivery ended, once known to have gone wrong (the first cause
    /// wins); `None` at the end: from the client's write state, else `ok`.
    delivery: Option<Delivery>,
}

/// The request as the executors need it.
struct Req<'a> {
    head: &'a RequestHead,
    body: &'a Bytes,
    peer: SocketAddr,
    /// The client wants, and the gateway allows, another request on the connection.
    client_keep: bool,
}

/// Plan the request ([`crate::plan::plan`]), then carry the plan out: answer,
/// admit, batch or forward.
#[allow(clippy::too_many_arguments)]
async fn execute<'s, S: ClientStream>(
    shard: &Rc<Shard>,
    state: &'s std::sync::Arc<GatewayState>,
    client: &mut ClientConn<S>,
    out: &mut Vec<u8>,
    req: &Req<'s>,
    listeners: &[usize],
    rq: &mut RequestState<'s>,
    guard: &mut InFlight,
) -> bool {
    let head = req.head;
    let request_id = rq.request_id;
    let rid = request_id.as_bytes();
    let lookup = |name: &str| head.header(name);
    let (path, query) = head.path_and_query();
    let info = RequestInfo {
        method: head.method(),
        path,
        query,
        // The authority of an absolute-form target wins over `Host`.
        host: head.host().and_then(|h| std::str::from_utf8(h).ok()),
        header: &lookup,
        body: req.body,
        message_model: None,
        roll: fastrand::u32(..),
    };
    crate::contain::debug_panic_point(path);
    let mut decision = plan(&info, state, listeners);
    split_fallback(shard, state, &mut decision);
    rq.model = decision.model.clone();
    rq.route = decision.route;
    if decision.known_model {
        if let Some(m) = rq.model.as_deref() {
            shard.metrics.borrow_mut().know_model(m);
        }
    }
    // JWT authentication (SecurityPolicy `authentication.jwt`) comes before any
    // answer about the rule; rules without it pay one `None` check.
    let jwt = decision.security.and_then(|k| state.auth.policy(k));
    let verified = match jwt.map(|p| {
        p.verify_cached(
            &mut shard.jwt_cache.borrow_mut(),
            head.header("authorization"),
            crate::jwt::unix_now(),
        )
    }) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(reason)) => {
            shard.metrics.borrow_mut().auth_failures[reason.index()] += 1;
            let f = Failure::unauthorized(
                reason == crate::jwt::Reason::Missing,
                reason.message(),
                reason.www_authenticate(),
            );
            rq.status = respond_failure(client, out, &f, Some(rid)).await;
            return req.client_keep;
        }
    };
    // The verified identity (JWT `sub`), for per-client limits.
    let subject: Option<&str> = verified.as_ref().and_then(|v| v.subject.as_deref());
    let claims = match (jwt, &verified) {
        (Some(p), Some(v)) if !p.claim_header_names().is_empty() => Some(ClaimHeaders {
            strip: p.claim_header_names(),
            set: &v.headers,
        }),
        _ => None,
    };
    let body_model = decision.body_model();
    let named_model = decision.named_model();
    let target = match &decision.plan {
        Plan::Models => {
            rq.status = respond_json(
                client,
                out,
                200,
                &state.models_body,
                req.client_keep,
                rid,
                &Default::default(),
            )
            .await;
            return req.client_keep;
        }
        Plan::Reject(f) => {
            rq.status = respond_failure(client, out, f, Some(rid)).await;
            return req.client_keep && !f.close;
        }
        Plan::Forward(t) | Plan::Batch { target: t, .. } => t,
    };
    // SecurityPolicy rateLimit, before any permit is taken: per verified JWT
    // `sub`, else per client IP.
    if let (Some(limiter), Some(policy)) = (&state.rate_limiter, target.route.security) {
        // With global limits, a request whose replica holds no permit for its
        // key waits (polling its lease) for the lease thread's refill, at most
        // `--rate-limit-redis-timeout`; then the failure mode decides.
        let mut waited: Option<Instant> = None;
        // Limits name the model the client asked for, not a split's target.
        let limit_model = decision.requested.as_deref().or(rq.model.as_deref());
        let decided = loop {
            let gave_up = waited.is_some_and(|t| {
                state
                    .global_limiter
                    .as_ref()
                    .is_none_or(|g| t.elapsed() >= g.timeout())
            });
            let forwarded_for = || req.head.header("x-forwarded-for");
            let peer = req.peer.ip();
            match state.rate_limit(
                limiter,
                policy,
                limit_model,
                subject,
                peer,
                forwarded_for,
                gave_up,
            ) {
                Some(d) => break d,
                None => {
                    if waited.is_none() {
                        waited = Some(Instant::now());
                        if let Some(g) = &state.global_limiter {
                            g.stats
                                .waited
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    monoio::time::sleep(crate::ratelimit_global::WAIT_STEP).await;
                }
            }
        };
        match decided {
            Ok(admitted) => rq.rate = admitted,
            Err(f) => {
                shard.metrics.borrow_mut().rate_limited(limit_model);
                rq.status = respond_failure(client, out, &f, Some(rid)).await;
                return req.client_keep;
            }
        }
    }
    // maxConcurrentInferences: hold a permit until the answer is out.
    let _permit = match shard.permit(target.priority, rq.model.as_deref()).await {
        Ok(p) => p,
        Err(f) => {
            rq.status = respond_failure(client, out, &f, Some(rid)).await;
            return req.client_keep;
        }
    };
    if let Plan::Batch {
        policy,
        queue,
        class,
        ..
    } = &decision.plan
    {
        if let (Some(pb), Some(model)) = (shard.batcher(policy), body_model) {
            let reply = crate::batch::run(
                shard,
                &pb,
                crate::batch::Request {
                    path: head.path(),
                    body: req.body,
                    class: class.clone(),
                    queue: *queue,
                    level: target.priority,
                    auth: head.header("authorization"),
                    model,
                    rule_id: target.route.rule_id,
                    state,
                },
            )
            .await;
            rq.usage.feed(&reply.body);
            rq.bytes = reply.body.len() as u64;
            rq.status = respond_json(
                client,
                out,
                reply.status,
                &reply.body,
                req.client_keep,
                rid,
                &rq.rate,
            )
            .await;
            return req.client_keep;
        }
    }
    // A model-version split: the body goes upstream naming the chosen target
    // (one copy of the body with the value replaced; the rest untouched).
    let rewritten = decision.rewrite.map(|to| {
        shard.metrics.borrow_mut().know_model(to);
        rewrite_model(req.body, to)
    });
    let req_rw;
    let req = match &rewritten {
        Some(body) => {
            req_rw = Req { body, ..*req };
            &req_rw
        }
        None => req,
    };
    forward(
        shard,
        state,
        client,
        out,
        req,
        named_model,
        claims,
        target,
        guard,
        rq,
    )
    .await
}

/// A model-version split chose a target no endpoint of the route can serve
/// now (none lists it, or none is healthy and not ejected): the request goes
/// to the split's first target that one can (a rollout's stable version
/// first), instead of failing with 503. The choice stands when none can.
fn split_fallback<'a>(shard: &Shard, state: &'a GatewayState, d: &mut crate::plan::Decision<'a>) {
    let Some((to, backends, rule_id)) = d
        .rewrite
        .zip(d.target_route())
        .map(|(to, r)| (to, r.backends, r.rule_id))
    else {
        return;
    };
    let now = Instant::now();
    if shard.model_reachable(backends, to, now) {
        return;
    }
    let Some(split) = d
        .requested
        .as_deref()
        .and_then(|m| state.table.model_split(rule_id, m))
    else {
        return;
    };
    let Some(alt) = split
        .targets
        .iter()
        .map(|t| t.model.as_str())
        .find(|m| *m != to && shard.model_reachable(backends, m, now))
    else {
        return;
    };
    tracing::debug!(
        chosen = to,
        fallback = alt,
        "split target unreachable: falling back"
    );
    d.rewrite = Some(alt);
    d.model = Some(std::borrow::Cow::Borrowed(alt));
}

/// `body` with its top-level `model` string's value replaced by `to` (JSON-
/// escaped), everything else byte for byte; the body as it is when it has no
/// such value (the plan found one, so that does not happen).
pub fn rewrite_model(body: &Bytes, to: &str) -> Bytes {
    let Ok(Some(span)) = shardgate_routing::model_span(body) else {
        return body.clone();
    };
    let quoted = serde_json::to_string(to).unwrap_or_else(|_| format!("{to:?}"));
    let value = &quoted.as_bytes()[1..quoted.len() - 1];
    let mut out = Vec::with_capacity(body.len() - span.len() + value.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(value);
    out.extend_from_slice(&body[span.end..]);
    Bytes::from(out)
}

/// Forward the request to one endpoint of its route, as the attempt machine
/// directs, and stream the answer back.
#[allow(clippy::too_many_arguments)]
async fn forward<S: ClientStream>(
    shard: &Rc<Shard>,
    state: &GatewayState,
    client: &mut ClientConn<S>,
    out: &mut Vec<u8>,
    req: &Req<'_>,
    model: Option<&str>,
    claims: Option<ClaimHeaders<'_>>,
    target: &Target<'_>,
    guard: &mut InFlight,
    rq: &mut RequestState<'_>,
) -> bool {
    let settings = &shard.settings;
    let route = &target.route;
    // One clock reading serves the deadline, the first pick and its pool
    // lookup; another, after the answer's head, the verdict and the prompt's
    // record (each reading is ~50 instructions and a vDSO call).
    let started = Instant::now();
    let mut first_try = Some(started);
    // Timeouts from the state's InferenceConfig (a reload may change them).
    let deadline = started
        + route
            .request_timeout
            .unwrap_or(state.settings.response_timeout);
    let profile = state.profile(route.policy);
    let (hashes, precise_keys) = shard.prompt_keys(profile, model, req.body).await;
    let pick_req = PickRequest {
        model,
        adapter: profile.lora_adapter(model),
        prefix_total_blocks: hashes
            .as_ref()
            .map_or(0, |h| u32::try_from(h.prompt_blocks()).unwrap_or(u32::MAX)),
        session: state.session(route.policy, |h| req.head.header(h), req.body),
    };
    let request_id = rq.request_id;
    let rid = request_id.as_bytes();
    let fwd = Forwarded {
        peer: req.peer,
        tls: S::TLS,
        request_id: rid,
        model,
        body: req.body,
        claims,
    };
    let lim = ExchangeLimits {
        limits: &settings.limits,
        deadline,
        idle_timeout: state.settings.stream_idle_timeout,
        head_request: req.head.method_bytes() == b"HEAD",
    };
    let tail = (req.body.len() > INLINE_BODY).then_some(req.body);
    shard.budget.borrow_mut().earn();
    let mut attempts = Attempts::new(settings.retries);
    let mut pooled = PooledBuf::new(shard);
    let reqbuf: &mut Vec<u8> = &mut pooled.buf;
    loop {
        let next = attempts.next(&mut shard.budget.borrow_mut());
        if let Err(f) = next {
            rq.status = respond_failure(client, out, &f, Some(rid)).await;
            return req.client_keep;
        }
        let now = first_try.take().unwrap_or_else(Instant::now);
        let picked = shard.pick_precise(
            route.backends,
            attempts.tried(),
            now,
            profile,
            &pick_req,
            hashes.as_deref(),
            precise_keys.as_deref(),
            target.priority,
        );
        let ep = match picked {
            Ok(ep) => ep,
            Err(why) => {
                let f = attempts.pick_failed(why, route.route);
                rq.status = respond_failure(client, out, &f, Some(rid)).await;
                return req.client_keep;
            }
        };
        guard.set_endpoint(ep);
        rq.endpoint = Some(ep);
        attempts.picked(ep);
        let addr = shard.addr(ep);
        write_request(req.head, &fwd, addr, reqbuf);
        loop {
            // The connection and the answer stay where they landed (the
            // outcome is read off them; an error, the rare case, is copied):
            // each move of them through the state machine was a copy of
            // ~470 bytes.
            let mut upstream = shard.upstream_conn(ep, attempts.may_use_pool(), now).await;
            let result = match &mut upstream {
                Ok(c) => {
                    let tcp = Some(client.sock.tcp());
                    send_and_read_head(c, reqbuf, tail, tcp, &lim).await
                }
                Err(e) => Err(e.clone()),
            };
            let outcome = match &result {
                Ok(resp) => Outcome::Head(resp.status()),
                Err(e) => Outcome::Error(e.clone()),
            };
            let answered = std::time::Instant::now();
            let action = shard.judge_at(&mut attempts, ep, outcome, route.backends, answered);
            match action {
                Action::Deliver => {
                    let (Ok(resp), Ok(conn)) = (&result, &mut upstream) else {
                        return false;
                    };
                    let keys = precise_keys.as_deref();
                    shard.record_prompt(ep, hashes.as_deref(), keys, answered);
                    let times = (deadline, lim.idle_timeout);
                    let done =
                        stream_response(shard, client, out, req, rid, resp, conn, ep, times, rq)
                            .await;
                    if done.reusable {
                        if let Ok(conn) = upstream {
                            shard.pool.borrow_mut().put(ep, conn, Instant::now());
                        }
                    }
                    return done.keep;
                }
                // The request bytes come back from the failed write: resend them.
                Action::RetryFresh => {}
                Action::PickAgain => break,
                Action::Respond(f) => {
                    rq.status = respond_failure(client, out, &f, Some(rid)).await;
                    return req.client_keep && !f.close;
                }
                Action::Abandon => {
                    rq.delivery.get_or_insert(Delivery::AbortedClient);
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

/// Copy the response head to the client and stream the body, chunk by chunk.
/// The head and the connection stay with the caller (borrowed, not moved
/// through this future: a copy of ~450 bytes saved per request), which pools
/// the connection when the answer says it may.
#[allow(clippy::too_many_arguments)]
async fn stream_response<S: ClientStream>(
    shard: &Shard,
    client: &mut ClientConn<S>,
    out: &mut Vec<u8>,
    req: &Req<'_>,
    request_id: &[u8],
    resp: &ResponseHead,
    conn: &mut UpstreamConn,
    ep: usize,
    (deadline, idle_timeout): (Instant, Duration),
    rq: &mut RequestState<'_>,
) -> Streamed {
    let framing = resp.framing();
    rq.status = resp.status();
    let sse = resp
        .header("content-type")
        .is_some_and(|v| memchr::memmem::find(v, b"text/event-stream").is_some());
    let mut timing = StreamTiming::default();
    let client_http11 = req.head.version() == Version::Http11;
    // Chunked toward the client whenever the length is unknown and it speaks 1.1.
    let chunked_out = matches!(framing, Framing::Chunked | Framing::UntilClose) && client_http11;
    let mut keep = req.client_keep && (framing != Framing::UntilClose || chunked_out);
    out.clear();
    write::status_line(out, resp.status());
    let mut has_rid = false;
    for (name, value) in resp.fields() {
        if resp.is_hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") && framing != Framing::None {
            continue;
        }
        has_rid |= name.eq_ignore_ascii_case(b"x-request-id");
        write::header(out, name, value);
    }
    if !has_rid {
        write::header(out, "x-request-id", request_id);
    }
    for q in [rq.rate.requests, rq.rate.tokens].into_iter().flatten() {
        crate::ratelimit::write_quota_headers(out, &q);
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
    } else if req.head.version() == Version::Http10 {
        write::header(out, "connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");

    let mut dec = BodyDecoder::new(framing);
    let mut watch = true;
    // An upstream failure mid-stream ends an SSE stream with an error event when
    // the client's framing can carry one (chunked, or close-delimited).
    let mut cut = MidStream {
        ep,
        event: sse
            && (chunked_out || framing == Framing::UntilClose)
            && req.head.method_bytes() != b"HEAD",
        chunked: chunked_out,
        tail: *b"\n\n",
    };
    loop {
        // Decode everything buffered and frame it for the client.
        while !conn.buf.is_empty() && !dec.is_done() {
            let d = match dec.decode(&conn.buf) {
                Ok(d) => d,
                Err(_) => {
                    tracing::warn!(endpoint = %shard.addr(ep), "invalid response body framing from upstream");
                    cut.abort(shard, client, out, rq, "invalid body framing")
                        .await;
                    return Streamed::CLOSE;
                }
            };
            if let Some(r) = d.data.clone() {
                rq.usage.feed(&conn.buf[r.clone()]);
                rq.bytes += r.len() as u64;
                timing.pending = true;
                cut.saw(&conn.buf[r.clone()]);
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
                return Streamed::CLOSE;
            }
            timing.flushed(sse, rq);
            let reusable =
                resp.keep_alive() && conn.buf.is_empty() && !shard.shutdown.is_draining();
            return Streamed { keep, reusable };
        }
        if !out.is_empty() {
            if flush(client, out).await.is_err() {
                // Client gone mid-stream: dropping `conn` (not pooled) closes
                // the upstream, cancelling it.
                return Streamed::CLOSE;
            }
            timing.flushed(sse, rq);
        }
        let times = (deadline, idle_timeout);
        match read_watched(Some(client.sock.tcp()), conn, times, &mut watch).await {
            Watched::Read(Ok(0), b) => {
                conn.buf = b;
                if dec.on_eof().is_ok() {
                    if chunked_out {
                        out.extend_from_slice(write::LAST_CHUNK);
                    }
                    let ok = flush(client, out).await.is_ok();
                    timing.flushed(sse, rq);
                    keep &= ok;
                    return Streamed {
                        keep,
                        reusable: false,
                    };
                }
                tracing::warn!(endpoint = %shard.addr(ep), "upstream closed mid-body; aborting the client response");
                cut.abort(
                    shard,
                    client,
                    out,
                    rq,
                    "the connection closed before the end of the body",
                )
                .await;
                return Streamed::CLOSE;
            }
            Watched::Read(Ok(_), b) => conn.buf = b,
            Watched::Read(Err(_), _) => {
                tracing::warn!(endpoint = %shard.addr(ep), "upstream connection broke mid-body; aborting the client response");
                cut.abort(shard, client, out, rq, "the connection broke")
                    .await;
                return Streamed::CLOSE;
            }
            Watched::TimedOut => {
                tracing::warn!(endpoint = %shard.addr(ep), "upstream stalled mid-body; aborting");
                cut.abort(shard, client, out, rq, "no bytes in time").await;
                return Streamed::CLOSE;
            }
            Watched::ClientGone => {
                // Dropping `conn` (not pooled) closes the upstream, cancelling
                // the request.
                rq.delivery.get_or_insert(Delivery::AbortedClient);
                return Streamed::CLOSE;
            }
        }
    }
}

/// How [`stream_response`] ended.
struct Streamed {
    /// The client connection may carry another request.
    keep: bool,
    /// The upstream connection may go back to the pool.
    reusable: bool,
}

impl Streamed {
    /// Both connections close.
    const CLOSE: Streamed = Streamed {
        keep: false,
        reusable: false,
    };
}

/// Ending a response whose upstream failed after the head went out.
struct MidStream {
    ep: usize,
    /// Send an SSE error event before closing.
    event: bool,
    /// The client's framing is chunked.
    chunked: bool,
    /// The last two body bytes sent (to end a partly sent event first).
    tail: [u8; 2],
}

impl MidStream {
    /// Remember the end of body bytes about to be sent.
    fn saw(&mut self, data: &[u8]) {
        match data {
            [.., a, b] => self.tail = [*a, *b],
            [b] => self.tail = [self.tail[1], *b],
            [] => {}
        }
    }

    /// Count the abort (`gateway_upstream_errors_total{kind="aborted_mid_stream"}`,
    /// outcome `aborted_upstream`), send what is buffered and, for SSE, an error
    /// event `data: {"error":{…,"code":"aborted_mid_stream"}}` and the end of the
    /// chunked body; the caller then closes the connection.
    async fn abort<S: ClientStream>(
        &self,
        shard: &Shard,
        client: &mut ClientConn<S>,
        out: &mut Vec<u8>,
        rq: &mut RequestState<'_>,
        what: &str,
    ) {
        shard
            .metrics
            .borrow_mut()
            .upstream_error(self.ep, "aborted_mid_stream");
        rq.delivery.get_or_insert(Delivery::AbortedUpstream);
        if self.event {
            let f = Failure::aborted_mid_stream(what);
            // Rare path: the event is built in its own buffer.
            let mut ev = Vec::with_capacity(256);
            match self.tail {
                [_, b'\n'] if self.tail == *b"\n\n" => {}
                [_, b'\n'] => ev.push(b'\n'),
                _ => ev.extend_from_slice(b"\n\n"),
            }
            ev.extend_from_slice(b"data: ");
            write::openai_error_json(&mut ev, &f.message, f.err_type, f.code);
            ev.extend_from_slice(b"\n\n");
            if self.chunked {
                write::chunk_header(out, ev.len());
                out.extend_from_slice(&ev);
                out.extend_from_slice(write::CHUNK_END);
                out.extend_from_slice(write::LAST_CHUNK);
            } else {
                out.extend_from_slice(&ev);
            }
        }
        let _ = flush(client, out).await;
    }
}

/// First/last instants at which streamed body bytes reached the client socket:
/// TTFT is the first, TPOT the mean gap between SSE events after the first.
#[derive(Default)]
struct StreamTiming {
    pending: bool,
    clock: crate::metrics::EventClock,
}

impl StreamTiming {
    fn flushed(&mut self, sse: bool, rq: &mut RequestState<'_>) {
        if !sse || !std::mem::take(&mut self.pending) {
            return;
        }
        let times = (&mut rq.ttft, &mut rq.tpot);
        self.clock
            .reached(Instant::now(), rq.started, rq.usage.events, times);
    }
}

/// Write `out` to the client and clear it. Each single write may block at most
/// `--send-timeout`; past it the write is dropped (which cancels it, and its
/// buffer with it). After a failure the client is marked failed, nothing more
/// is written, and the connection closes.
async fn flush<S: ClientStream>(
    client: &mut ClientConn<S>,
    out: &mut Vec<u8>,
) -> Result<(), ClientAbort> {
    if out.is_empty() {
        return Ok(());
    }
    if let Some(f) = client.failed {
        out.clear();
        return Err(f);
    }
    let mut buf = std::mem::take(out);
    let mut done = 0;
    let mut failed = None;
    let ClientConn {
        sock, send_timeout, ..
    } = &mut *client;
    // The flush's own timer, gone when it returns (the module doc's
    // "Timers" says why); each write gets the whole send timeout.
    let mut timer = std::pin::pin!(monoio::time::sleep(*send_timeout));
    while done < buf.len() {
        let written = monoio::select! {
            r = sock.write_from(buf, done) => Some(r),
            // The write is dropped, which cancels it; its buffer goes with it
            // (the connection is not written again).
            _ = timer.as_mut() => None,
        };
        let Some((res, slice)) = written else {
            failed = Some(ClientAbort::SendTimeout);
            buf = Vec::new();
            break;
        };
        buf = slice;
        match res {
            Ok(n) if n > 0 => done += n,
            _ => {
                failed = Some(ClientAbort::Closed);
                break;
            }
        }
        if done < buf.len() {
            timer.as_mut().reset(Instant::now() + *send_timeout);
        }
    }
    buf.clear();
    *out = buf;
    match failed {
        None => Ok(()),
        Some(f) => {
            client.failed = Some(f);
            Err(f)
        }
    }
}

/// Answer a JSON body with `status`.
#[allow(clippy::too_many_arguments)]
async fn respond_json<S: ClientStream>(
    client: &mut ClientConn<S>,
    out: &mut Vec<u8>,
    status: u16,
    body: &[u8],
    keep: bool,
    rid: &[u8],
    rate: &crate::ratelimit::Admitted,
) -> u16 {
    out.clear();
    write::status_line(out, status);
    write::header(out, "content-type", b"application/json");
    write::header_u64(out, "content-length", body.len() as u64);
    write::header(out, "x-request-id", rid);
    for q in [rate.requests, rate.tokens].into_iter().flatten() {
        crate::ratelimit::write_quota_headers(out, &q);
    }
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
async fn respond_failure<S: ClientStream>(
    client: &mut ClientConn<S>,
    out: &mut Vec<u8>,
    f: &Failure,
    rid: Option<&[u8]>,
) -> u16 {
    out.clear();
    f.write_http1(out, rid);
    let _ = flush(client, out).await;
    f.status
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The hot phase's future is allocated and moved into its box each time
    /// a connection turns busy again (at every request of a sparse client):
    /// its size is a cost per request, kept under a budget here. The nested
    /// futures are printed to show where it goes.
    #[test]
    fn the_hot_phase_future_stays_within_its_budget() {
        type T = monoio::net::TcpStream;
        let sizes = [
            ("hot_phase", future_size!(hot_phase::<T>; A, B, C, D)),
            (
                "handle_request",
                future_size!(handle_request::<T>; A, B, C, D, E, G),
            ),
            ("read_body", future_size!(read_body::<T>; A, B, C, D, E)),
            (
                "execute",
                future_size!(execute::<T>; A, B, C, D, E, G, H, I),
            ),
            (
                "forward",
                future_size!(forward::<T>; A, B, C, D, E, G, H, I, J, K),
            ),
            (
                "stream_response",
                future_size!(stream_response::<T>; A, B, C, D, E, G, H, I, J, K),
            ),
            ("flush", future_size!(flush::<T>; A, B)),
            (
                "respond_failure",
                future_size!(respond_failure::<T>; A, B, C, D),
            ),
        ];
        for (name, size) in sizes {
            eprintln!("{name}: {size} bytes");
        }
        let hot = sizes[0].1;
        // 8,960 bytes before the request's state was borrowed down the path
        // instead of moved through it (7,424 after, dev profile).
        assert!(hot <= 8 * 1024, "the hot phase's future is {hot} bytes");
        assert!(sizes[1..].iter().all(|(_, s)| *s < hot));
    }

    #[test]
    fn rewriting_the_model_replaces_only_its_value() {
        let body = Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"model \"x\""}],"model":"llama\u002dv1","stream":true}"#,
        );
        let out = rewrite_model(&body, "llama-v2");
        assert_eq!(
            &out[..],
            br#"{"messages":[{"role":"user","content":"model \"x\""}],"model":"llama-v2","stream":true}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "llama-v2");
        // A target that needs escaping stays valid JSON.
        let out = rewrite_model(&body, "a\"b\\c");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "a\"b\\c");
        // No model: unchanged.
        let none = Bytes::from_static(br#"{"prompt":"hi"}"#);
        assert_eq!(rewrite_model(&none, "x"), none);
    }
}
