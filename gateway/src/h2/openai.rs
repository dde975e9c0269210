//! HTTP (OpenAI-compatible) requests that arrive over HTTP/2, forwarded to
//! the backends over HTTP/1.1 with the one upstream client
//! ([`crate::upstream`]): streaming chat completions reach the client as
//! HTTP/2 DATA frames as the backend emits its SSE events.
//!
//! The request is read whole (bounded by `--max-body-bytes`, within
//! `--header-timeout`, charged to the shard's `--max-buffered-body-bytes`
//! share like an HTTP/1.1 body: the route may depend on the body's `model`), given an
//! HTTP/1.1 head built from its HTTP/2 fields (pseudo-headers → request
//! line and `Host`; `te`, `connection` and `content-length` dropped, a
//! `content-length` of the body read added) and parsed by the same codec as
//! an HTTP/1.1 request, so [`crate::plan`], the policy steps
//! (`stream::admit`), the picker, the attempt machine, the pooled
//! keep-alive upstream connections, the body rewrite of a model split and
//! micro-batching (a plan to batch joins the shard's queue) are exactly those
//! of HTTP/1.1.
//! Failures answer with the same OpenAI-style JSON errors.
//!
//! The answer's body is decoded from HTTP/1.1 framing (length or chunked) and
//! each piece copied into one DATA frame, sent as the client's window allows
//! (`--send-timeout` per grant); a client that resets its stream stops the
//! relay at the next piece and the upstream connection is closed, which
//! cancels the request on the backend.

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::request::Parts;
use http::{HeaderValue, Response};
use monoio::time::Instant;
use shardgate_http::{split_request_head, BodyDecoder, Framing};
use shardgate_routing::scoring::PickRequest;

use super::stream::{
    admit, answer_json, insert_request_id, record, request_id, send_all, Admission, Answered,
    Record, Served, Usage, HOP_BY_HOP,
};
use crate::attempt::{Action, Attempts, Outcome};
use crate::error::{Failure, Side};
use crate::plan::{plan, Plan, RequestInfo};
use crate::proxy::RequestId;
use crate::shard::Shard;
use crate::state::GatewayState;
use crate::upstream::{
    read_watched, send_and_read_head, write_request, ExchangeLimits, Forwarded, Watched,
    INLINE_BODY,
};

/// Reads the whole body, at most `max` bytes, each byte charged to the
/// shard's share of `--max-buffered-body-bytes` (`grant`) before it is kept.
async fn read_body(
    shard: &Shard,
    grant: &mut crate::bodymem::BodyGrant<'_>,
    body: &mut RecvStream,
    max: u64,
) -> Result<Bytes, Failure> {
    // A body that came in one DATA frame is kept as that frame (no copy);
    // more frames are gathered into one buffer.
    let mut whole: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(d) = body.data().await {
        let d = d.map_err(|e| {
            Failure::with(
                Side::Client,
                400,
                "invalid_request_error",
                "stream_error",
                format!("the request stream failed: {e}"),
            )
        })?;
        let held = buf.len() + whole.as_ref().map_or(0, Bytes::len);
        if (held + d.len()) as u64 > max {
            return Err(Failure::with(
                Side::Client,
                413,
                "invalid_request_error",
                "body_too_large",
                format!("the request body is larger than {max} bytes"),
            ));
        }
        grant.grow_to((held + d.len()) as u64).map_err(|r| {
            let mut m = shard.metrics.borrow_mut();
            match r {
                crate::bodymem::Refusal::Exhausted => {
                    m.body_refused[0] += 1;
                    Failure::body_budget_exhausted()
                }
                crate::bodymem::Refusal::OverShare { share } => {
                    m.body_refused[1] += 1;
                    Failure::body_over_budget(share)
                }
            }
        })?;
        let _ = body.flow_control().release_capacity(d.len());
        if held == 0 {
            whole = Some(d);
        } else {
            if let Some(w) = whole.take() {
                buf.reserve(w.len() + d.len());
                buf.extend_from_slice(&w);
            }
            buf.extend_from_slice(&d);
        }
    }
    Ok(whole.unwrap_or_else(|| buf.freeze()))
}

/// The HTTP/1.1 head of an HTTP/2 request with a body of `len` bytes.
fn h1_head(parts: &Parts, len: usize) -> BytesMut {
    let mut h = BytesMut::with_capacity(256);
    h.extend_from_slice(parts.method.as_str().as_bytes());
    h.extend_from_slice(b" ");
    h.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    h.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    h.extend_from_slice(
        parts
            .uri
            .authority()
            .map_or("localhost", |a| a.as_str())
            .as_bytes(),
    );
    h.extend_from_slice(b"\r\n");
    for (k, v) in &parts.headers {
        let k = k.as_str();
        if HOP_BY_HOP.contains(&k) || k == "te" || k == "content-length" {
            continue;
        }
        h.extend_from_slice(k.as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(v.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"content-length: ");
    h.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    h.extend_from_slice(b"\r\n\r\n");
    h
}

/// Serve one HTTP request that came over HTTP/2.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    shard: &Rc<Shard>,
    state: &std::sync::Arc<GatewayState>,
    parts: Parts,
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    port: u16,
    tls: bool,
    guard: &mut Served,
    started: Instant,
) {
    let rid = request_id(&parts.headers, shard);
    let mut rec = Record {
        status: 0,
        model: None,
        route: None,
        grpc: false,
        peer,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        request_id: rid.as_str(),
        ts_ms: shard.log_clock(),
        endpoint: None,
        answer: Answered::default(),
    };
    let settings = &shard.settings;
    // The body's memory is charged to the shard's body budget while the
    // request lives, as for HTTP/1.1 ([`crate::bodymem`]).
    let mut grant = shard.body_budget.empty();
    let read = monoio::time::timeout(
        settings.header_timeout,
        read_body(shard, &mut grant, &mut body, settings.limits.max_body_bytes),
    )
    .await;
    let body = match read {
        Ok(Ok(b)) => b,
        Ok(Err(f)) => {
            answer_json(&mut respond, &f, &rid);
            rec.status = f.status;
            record(shard, &rec, started);
            return;
        }
        Err(_) => {
            let f = Failure::request_timeout();
            answer_json(&mut respond, &f, &rid);
            rec.status = f.status;
            record(shard, &rec, started);
            return;
        }
    };
    let mut raw = h1_head(&parts, body.len());
    let head = match split_request_head(&mut raw, &settings.limits) {
        Ok(Some(h)) => h,
        Ok(None) => {
            let f = Failure::bad_json("the request head could not be read".to_owned());
            answer_json(&mut respond, &f, &rid);
            rec.status = f.status;
            record(shard, &rec, started);
            return;
        }
        Err(e) => {
            let f = Failure::from_codec(&e);
            answer_json(&mut respond, &f, &rid);
            rec.status = f.status;
            record(shard, &rec, started);
            return;
        }
    };
    let lookup = |name: &str| head.header(name);
    let info = RequestInfo {
        method: head.method(),
        path: head.path(),
        query: head.query(),
        host: head.host().and_then(|h| std::str::from_utf8(h).ok()),
        header: &lookup,
        body: &body,
        message_model: None,
        roll: fastrand::u32(..),
    };
    crate::contain::debug_panic_point(info.path);
    let decision = plan(&info, state, state.listeners_on(port));
    rec.model = decision.model.clone();
    rec.route = decision.route;
    if decision.known_model {
        if let Some(m) = rec.model.as_deref() {
            shard.metrics.borrow_mut().know_model(m);
        }
    }
    let target = match &decision.plan {
        Plan::Models => {
            let mut r = Response::new(());
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            insert_request_id(r.headers_mut(), &rid);
            if let Ok(mut s) = respond.send_response(r, false) {
                let _ = s.send_data(Bytes::from(state.models_body.to_vec()), true);
            }
            rec.status = 200;
            record(shard, &rec, started);
            return;
        }
        Plan::Reject(f) => {
            answer_json(&mut respond, f, &rid);
            rec.status = f.status;
            record(shard, &rec, started);
            return;
        }
        Plan::Forward(t) | Plan::Batch { target: t, .. } => t,
    };
    let admission = match admit(shard, state, &decision, target, &parts.headers, peer).await {
        Ok(a) => a,
        Err(f) => {
            answer_json(&mut respond, &f, &rid);
            rec.status = f.status;
            record(shard, &rec, started);
            return;
        }
    };
    // A plan to batch joins this shard's queue like an HTTP/1.1 request.
    if let Plan::Batch {
        policy,
        queue,
        class,
        ..
    } = &decision.plan
    {
        if let (Some(pb), Some(model)) = (shard.batcher(policy), decision.body_model()) {
            let reply = crate::batch::run(
                shard,
                &pb,
                crate::batch::Request {
                    state,
                    path: head.path(),
                    body: &body,
                    class: class.clone(),
                    queue: *queue,
                    level: target.priority,
                    auth: head.header("authorization"),
                    model,
                    rule_id: target.route.rule_id,
                },
            )
            .await;
            let mut r = Response::new(());
            *r.status_mut() =
                http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            insert_request_id(r.headers_mut(), &rid);
            if let Ok(mut s) = respond.send_response(r, false) {
                let _ = s.send_data(Bytes::from(reply.body), true);
            }
            rec.status = reply.status;
            record(shard, &rec, started);
            return;
        }
    }
    let rewritten = decision.rewrite.map(|to| {
        shard.metrics.borrow_mut().know_model(to);
        crate::proxy::rewrite_model(&body, to)
    });
    let body = rewritten.as_ref().unwrap_or(&body);
    let mut usage = Usage {
        request_bytes: body.len() as u64,
        ..Usage::default()
    };
    let to = Upstream {
        target,
        admission: &admission,
        started,
        tls,
        rid: &rid,
    };
    let (status, answer) = forward(
        shard,
        state,
        &head,
        body,
        decision.named_model(),
        &to,
        peer,
        guard,
        &mut respond,
        &mut usage,
    )
    .await;
    admission.charge(state, status, &usage);
    rec.status = status;
    rec.answer = answer;
    rec.endpoint = guard.endpoint;
    record(shard, &rec, started);
}

/// Where a request goes and what it was admitted with.
struct Upstream<'a> {
    target: &'a crate::plan::Target<'a>,
    admission: &'a Admission<'a>,
    /// When the request began (time to first token counts from here).
    started: Instant,
    /// The client came over TLS, terminated here (`X-Forwarded-Proto`).
    tls: bool,
    /// The request's id (sent upstream, returned to the client).
    rid: &'a RequestId<'a>,
}

/// Pick, send over HTTP/1.1, relay the answer; returns the status to record
/// and what the answer used (its `usage` is also fed to `usage`).
#[allow(clippy::too_many_arguments)]
async fn forward(
    shard: &Rc<Shard>,
    state: &GatewayState,
    head: &shardgate_http::RequestHead,
    body: &Bytes,
    model: Option<&str>,
    to: &Upstream<'_>,
    peer: SocketAddr,
    guard: &mut Served,
    respond: &mut SendResponse<Bytes>,
    usage: &mut Usage,
) -> (u16, Answered) {
    let target = to.target;
    let mut answered = Answered::default();
    let settings = &shard.settings;
    let route = &target.route;
    // Timeouts from the state's InferenceConfig (a reload may change them).
    let deadline = Instant::now()
        + route
            .request_timeout
            .unwrap_or(state.settings.response_timeout);
    let profile = state.profile(route.policy);
    // Prefix-cache keys as HTTP/1.1 requests have them.
    let (hashes, precise_keys) = shard.prompt_keys(profile, model, body).await;
    let pick_req = PickRequest {
        model,
        adapter: profile.lora_adapter(model),
        prefix_total_blocks: hashes
            .as_ref()
            .map_or(0, |h| u32::try_from(h.prompt_blocks()).unwrap_or(u32::MAX)),
        session: state.session(route.policy, |h| head.header(h), body),
    };
    let fwd = Forwarded {
        peer,
        tls: to.tls,
        request_id: to.rid.as_bytes(),
        model,
        body,
        claims: to.admission.claims(),
    };
    let lim = ExchangeLimits {
        limits: &settings.limits,
        deadline,
        idle_timeout: state.settings.stream_idle_timeout,
        head_request: head.method() == "HEAD",
    };
    let tail = (body.len() > INLINE_BODY).then_some(body);
    shard.budget.borrow_mut().earn();
    let mut attempts = Attempts::new(settings.retries);
    let mut reqbuf = shard.take_out_buf();
    let status = loop {
        if let Err(f) = attempts.next(&mut shard.budget.borrow_mut()) {
            answer_json(respond, &f, to.rid);
            break f.status;
        }
        let ep = match shard.pick_precise(
            route.backends,
            attempts.tried(),
            Instant::now(),
            profile,
            &pick_req,
            hashes.as_deref(),
            precise_keys.as_deref(),
            target.priority,
        ) {
            Ok(ep) => ep,
            Err(why) => {
                let f = attempts.pick_failed(why, route.route);
                answer_json(respond, &f, to.rid);
                break f.status;
            }
        };
        guard.set_endpoint(ep);
        attempts.picked(ep);
        write_request(head, &fwd, shard.addr(ep), &mut reqbuf);
        let done = loop {
            let result = match shard
                .upstream_conn(ep, attempts.may_use_pool(), Instant::now())
                .await
            {
                Ok(mut c) => send_and_read_head(&mut c, &mut reqbuf, tail, None, &lim)
                    .await
                    .map(|resp| (resp, c)),
                Err(e) => Err(e),
            };
            let (outcome, answer) = match result {
                Ok((resp, conn)) => (Outcome::Head(resp.status()), Some((resp, conn))),
                Err(e) => (Outcome::Error(e), None),
            };
            // One clock reading for the verdict and the prompt's record.
            let head_at = std::time::Instant::now();
            let action = shard.judge_at(&mut attempts, ep, outcome, route.backends, head_at);
            match action {
                Action::Deliver => {
                    let Some((resp, conn)) = answer else {
                        break Some(502);
                    };
                    let keys = precise_keys.as_deref();
                    shard.record_prompt(ep, hashes.as_deref(), keys, head_at);
                    let answer = Answer {
                        resp,
                        conn,
                        ep,
                        deadline,
                        idle: lim.idle_timeout,
                    };
                    let status = relay(shard, answer, to, respond, usage, &mut answered).await;
                    answered.prompt_tokens = usage.scanner.prompt_tokens;
                    answered.completion_tokens = usage.scanner.completion_tokens;
                    answered.bytes = usage.response_bytes;
                    break Some(status);
                }
                Action::RetryFresh => {}
                Action::PickAgain => break None,
                Action::Respond(f) => {
                    answer_json(respond, &f, to.rid);
                    break Some(f.status);
                }
                Action::Abandon => break Some(0),
            }
        };
        if let Some(s) = done {
            break s;
        }
    };
    shard.give_out_buf(reqbuf);
    (status, answered)
}

/// An upstream HTTP/1.1 answer whose head has been read.
struct Answer {
    resp: shardgate_http::ResponseHead,
    conn: crate::upstream::UpstreamConn,
    ep: usize,
    deadline: Instant,
    idle: std::time::Duration,
}

/// The HTTP/1.1 answer as an HTTP/2 response, streamed; its body is scanned
/// for `usage` and SSE events (`usage`: token counts, bytes sent), and
/// `answered` gets, for an event stream, the time to the first event and per
/// output token.
async fn relay(
    shard: &Shard,
    answer: Answer,
    to: &Upstream<'_>,
    respond: &mut SendResponse<Bytes>,
    usage: &mut Usage,
    answered: &mut Answered,
) -> u16 {
    let Answer {
        resp,
        mut conn,
        ep,
        deadline,
        idle,
    } = answer;
    let status = resp.status();
    let sse = resp
        .header("content-type")
        .is_some_and(|v| v.starts_with(b"text/event-stream"));
    let mut clock = crate::metrics::EventClock::default();
    let framing = resp.framing();
    let mut head = Response::new(());
    *head.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    for (name, value) in resp.fields() {
        // Compared without allocating a lowercase copy; `HeaderName` lowercases
        // as it parses.
        if resp.is_hop_by_hop(name)
            || HOP_BY_HOP
                .iter()
                .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
            || (name.eq_ignore_ascii_case(b"content-length") && framing != Framing::None)
        {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value),
        ) {
            head.headers_mut().append(k, v);
        }
    }
    if let Framing::Length(n) = framing {
        head.headers_mut()
            .insert("content-length", HeaderValue::from(n));
    }
    insert_request_id(head.headers_mut(), to.rid);
    to.admission.quota_headers(head.headers_mut());
    let end = framing == Framing::None;
    let Ok(mut down) = respond.send_response(head, end) else {
        return 0;
    };
    if end {
        if resp.keep_alive() && conn.buf.is_empty() {
            shard.pool.borrow_mut().put(ep, conn, Instant::now());
        }
        return status;
    }
    let wait = shard.settings.send_timeout;
    let mut dec = BodyDecoder::new(framing);
    let mut watch = false;
    let mut sent_end = false;
    loop {
        while !conn.buf.is_empty() && !dec.is_done() {
            let Ok(d) = dec.decode(&conn.buf) else {
                down.send_reset(h2::Reason::INTERNAL_ERROR);
                return status;
            };
            let piece = d.data.clone().map(|r| Bytes::copy_from_slice(&conn.buf[r]));
            conn.buf.advance(d.consumed);
            if let Some(piece) = piece {
                usage.scanner.feed(&piece);
                usage.response_bytes += piece.len() as u64;
                if sse {
                    let times = (&mut answered.ttft, &mut answered.tpot);
                    clock.reached(Instant::now(), to.started, usage.scanner.events, times);
                }
                // The body's last bytes carry END_STREAM: no empty DATA
                // frame after them.
                if send_all(&mut down, piece, d.done, wait).await.is_err() {
                    // The client went away or stalled: closing the upstream
                    // connection (dropped here) cancels the request.
                    return status;
                }
                sent_end = d.done;
            }
            if d.consumed == 0 && d.data.is_none() {
                break;
            }
        }
        if dec.is_done() {
            if !sent_end {
                let _ = down.send_data(Bytes::new(), true);
            }
            if resp.keep_alive() && conn.buf.is_empty() && !shard.shutdown.is_draining() {
                shard.pool.borrow_mut().put(ep, conn, Instant::now());
            }
            return status;
        }
        let times = (deadline, idle);
        match read_watched(None, &mut conn, times, &mut watch).await {
            Watched::Read(Ok(0), b) => {
                conn.buf = b;
                if dec.on_eof().is_ok() {
                    let _ = down.send_data(Bytes::new(), true);
                } else {
                    down.send_reset(h2::Reason::INTERNAL_ERROR);
                }
                return status;
            }
            Watched::Read(Ok(_), b) => conn.buf = b,
            Watched::Read(Err(_), _) | Watched::TimedOut | Watched::ClientGone => {
                down.send_reset(h2::Reason::INTERNAL_ERROR);
                return status;
            }
        }
    }
}

#[cfg(test)]
mod header_tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn header_names_from_any_case_come_out_lowercase() {
        // `relay` hands the backend's names to `HeaderName` as they came.
        for n in ["X-Custom-Header", "Content-Type", "x-request-id", "ETag"] {
            let h = http::HeaderName::from_bytes(n.as_bytes()).unwrap();
            assert_eq!(h.as_str(), n.to_ascii_lowercase());
        }
    }
}
