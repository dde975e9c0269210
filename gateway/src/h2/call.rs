//! One HTTP/2 stream of a client connection: a gRPC call carried through the
//! same steps as an HTTP/1.1 request, then relayed to an upstream HTTP/2
//! stream with flow control end to end.
//!
//! Steps: read the first bytes of the request until `model_name` is found
//! (KServe v2 calls only, [`crate::grpc::wire`]; a compressed message is
//! inflated up to 64 KiB for it, [`crate::grpc::compressed`]: the tensors that follow are
//! not read yet, at most `--max-body-bytes` are held, and they must arrive
//! within `--header-timeout`, else `DEADLINE_EXCEEDED`) → [`crate::plan`] (the
//! model is [`crate::plan::RequestInfo::message_model`]) → JWT
//! authentication (`authorization` metadata) → rate limits → admission
//! (`maxConcurrentInferences`) → pick (the same picker, in-flight counts and
//! outlier ejection as HTTP/1.1; a failed connect tries another endpoint)
//! → relay. A failure before the upstream answers is a trailers-only answer
//! with the gRPC status of [`crate::grpc::status::of_failure`].
//!
//! Relay: the request body goes upstream as it arrives, and each DATA frame's
//! bytes are released to the client's window only once the upstream stream
//! took them; the answer comes back the same way. So a slow reader on either
//! side slows the other through HTTP/2 windows, and the gateway holds at most
//! one window per direction per stream. Headers and trailers (`grpc-status`,
//! `grpc-message`, metadata) pass through, hop-by-hop headers dropped.
//! `grpc-timeout` (capped by the route's timeout, else `--response-timeout`)
//! bounds the whole call: past it the client gets `DEADLINE_EXCEEDED` and the
//! upstream stream is reset (`CANCEL`), as it is when the client resets.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response};
use monoio::time::Instant;
use shardgate_routing::scoring::PickRequest;

use super::stream::{
    admit, header, record, request_id, request_id_value, send_all, Admission, Answered, Record,
    Served, Usage, HOP_BY_HOP, X_REQUEST_ID,
};
use crate::attempt::{Action, Attempts, Outcome};
use crate::error::Failure;
use crate::grpc::status::{encode_message, of_failure, Code};
use crate::grpc::{first_model, FirstModel};
use crate::plan::{plan, Plan, RequestInfo};
use crate::proxy::RequestId;
use crate::shard::Shard;
use crate::state::GatewayState;
use crate::upstream::{ClaimHeaders, REPLACED_UPSTREAM};

/// `grpc-timeout` and the model header as header names made at compile
/// time: inserting them parses and hashes no string per call.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
const MODEL_HEADER: http::HeaderName =
    http::HeaderName::from_static(shardgate_routing::MODEL_HEADER);
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// A trailers-only gRPC answer: `:status 200`, `grpc-status`, `grpc-message`.
fn status_only(code: Code, message: &str) -> Response<()> {
    let mut r = Response::new(());
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static(code.as_str()));
    if !message.is_empty() {
        let mut enc = String::with_capacity(message.len());
        encode_message(message, &mut enc);
        if let Ok(v) = HeaderValue::from_str(&enc) {
            h.insert("grpc-message", v);
        }
    }
    r
}

fn status_trailers(code: Code, message: &str) -> HeaderMap {
    let (parts, ()) = status_only(code, message).into_parts();
    let mut h = parts.headers;
    h.remove("content-type");
    h
}

/// Answers `f` as a gRPC status; returns the HTTP status to record.
fn reject(respond: &mut SendResponse<Bytes>, f: &Failure) -> u16 {
    let _ = respond.send_response(status_only(of_failure(f), &f.message), true);
    f.status
}

/// What the first bytes of the body say, and the bytes read so far.
struct FirstBytes {
    buf: BytesMut,
    /// The client ended its stream.
    ended: bool,
}

/// Reads the body until `model_name` of the first message is known (or the
/// message, the stream, or `max` bytes end). Read bytes are not released to
/// the client's window: they are released when they went upstream.
async fn first_bytes(
    body: &mut RecvStream,
    max: u64,
    encoding: Option<&[u8]>,
) -> Result<FirstBytes, Failure> {
    let mut fb = FirstBytes {
        buf: BytesMut::new(),
        ended: false,
    };
    loop {
        match first_model(&fb.buf, encoding) {
            Ok(FirstModel::NeedMore) => {}
            Ok(_) => return Ok(fb),
            Err(e) => return Err(Failure::bad_json(format!("malformed gRPC message: {e}"))),
        }
        match body.data().await {
            Some(Ok(d)) => {
                if (fb.buf.len() + d.len()) as u64 > max {
                    return Err(Failure::with(
                        crate::error::Side::Client,
                        413,
                        "invalid_request_error",
                        "body_too_large",
                        format!(
                            "the first gRPC message does not name its model within {max} bytes"
                        ),
                    ));
                }
                fb.buf.extend_from_slice(&d);
            }
            Some(Err(e)) => {
                return Err(Failure::with(
                    crate::error::Side::Client,
                    400,
                    "invalid_request_error",
                    "stream_error",
                    format!("the request stream failed: {e}"),
                ))
            }
            None => {
                fb.ended = true;
                return Ok(fb);
            }
        }
    }
}

/// Serve one gRPC call (the same arguments as the HTTP side's `serve`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    shard: &Rc<Shard>,
    state: &std::sync::Arc<GatewayState>,
    parts: http::request::Parts,
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    port: u16,
    tls: bool,
    guard: &mut Served,
    started: Instant,
) {
    let path = parts.uri.path();
    let rid = request_id(&parts.headers, shard);
    let mut rec = Record {
        status: 0,
        model: None,
        route: None,
        grpc: true,
        peer,
        method: "POST",
        path,
        request_id: rid.as_str(),
        ts_ms: shard.log_clock(),
        endpoint: None,
        answer: Answered::default(),
    };
    let encoding = header(&parts.headers, "grpc-encoding");
    let first = if crate::grpc::names_model(path) {
        // The first message must name its model within `--header-timeout`.
        let read = first_bytes(&mut body, shard.settings.limits.max_body_bytes, encoding);
        let read = monoio::time::timeout(shard.settings.header_timeout, read).await;
        match read.unwrap_or_else(|_| Err(Failure::request_timeout())) {
            Ok(fb) => fb,
            Err(f) => {
                rec.status = reject(&mut respond, &f);
                record(shard, &rec, started);
                return;
            }
        }
    } else {
        FirstBytes {
            buf: BytesMut::new(),
            ended: body.is_end_stream(),
        }
    };
    let first_buf = first.buf.freeze();
    let message_model = match first_model(&first_buf, encoding) {
        Ok(FirstModel::Found(m)) => Some(m),
        _ => None,
    };
    let headers = &parts.headers;
    let lookup = |name: &str| header(headers, name);
    let info = RequestInfo {
        method: parts.method.as_str(),
        path,
        query: parts.uri.query(),
        host: parts.uri.authority().map(|a| a.as_str()),
        header: &lookup,
        body: &first_buf,
        message_model: message_model.as_deref(),
        roll: fastrand::u32(..),
    };
    crate::contain::debug_panic_point(path);
    // The port's listeners in the state in force (a reload may change them).
    let decision = plan(&info, state, state.listeners_on(port));
    rec.model = decision.model.clone();
    rec.route = decision.route;
    if decision.known_model {
        if let Some(m) = rec.model.as_deref() {
            shard.metrics.borrow_mut().know_model(m);
        }
    }
    let outcome = execute(
        shard,
        state,
        &decision,
        Exec {
            headers,
            uri: &parts.uri,
            path,
            peer,
            tls,
            request_id: &rid,
            first: first_buf.clone(),
            ended: first.ended,
            started,
        },
        &mut body,
        &mut respond,
        guard,
    )
    .await;
    rec.status = outcome;
    rec.endpoint = guard.endpoint;
    record(shard, &rec, started);
}

/// The request, as the executor needs it.
struct Exec<'a> {
    headers: &'a HeaderMap,
    /// The client's URI (its path and query go upstream as they came).
    uri: &'a http::Uri,
    path: &'a str,
    /// The client, for `x-forwarded-for`; whether it came over TLS
    /// terminated here, for `x-forwarded-proto`.
    peer: SocketAddr,
    tls: bool,
    /// `x-request-id`, the client's or the gateway's.
    request_id: &'a RequestId<'a>,
    /// Body bytes read before planning (not yet released to the client).
    first: Bytes,
    /// The client's stream ended within them.
    ended: bool,
    started: Instant,
}

/// Carry out the plan; returns the status to record (200: relayed).
#[allow(clippy::too_many_arguments)]
async fn execute(
    shard: &Rc<Shard>,
    state: &GatewayState,
    decision: &crate::plan::Decision<'_>,
    req: Exec<'_>,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    guard: &mut Served,
) -> u16 {
    let target = match &decision.plan {
        Plan::Reject(f) => return reject(respond, f),
        Plan::Models => return reject(respond, &Failure::no_route("POST", req.path)),
        Plan::Forward(t) | Plan::Batch { target: t, .. } => t,
    };
    let admission = match admit(shard, state, decision, target, req.headers, req.peer).await {
        Ok(a) => a,
        Err(f) => return reject(respond, &f),
    };
    let header = |name: &str| header(req.headers, name);
    let model = decision.named_model();
    let route = &target.route;
    let settings = &shard.settings;
    // Timeouts from the state's InferenceConfig (a reload may change them).
    let mut budget = route
        .request_timeout
        .unwrap_or(state.settings.response_timeout);
    match header("grpc-timeout").map(crate::grpc::timeout::parse) {
        None => {}
        Some(Some(d)) => budget = budget.min(d),
        Some(None) => {
            return reject(
                respond,
                &Failure::with(
                    crate::error::Side::Client,
                    400,
                    "invalid_request_error",
                    "bad_grpc_timeout",
                    "malformed grpc-timeout".to_owned(),
                ),
            )
        }
    }
    let deadline = req.started + budget;
    let profile = state.profile(route.policy);
    let pick_req = PickRequest {
        model,
        adapter: profile.lora_adapter(model),
        prefix_total_blocks: 0,
        session: state.session(route.policy, header, &req.first),
    };
    shard.budget.borrow_mut().earn();
    let mut attempts = Attempts::new(settings.retries);
    loop {
        if let Err(f) = attempts.next(&mut shard.budget.borrow_mut()) {
            return reject(respond, &f);
        }
        let ep = match shard.pick(
            route.backends,
            attempts.tried(),
            Instant::now(),
            profile,
            &pick_req,
            None,
            target.priority,
        ) {
            Ok(ep) => ep,
            Err(why) => return reject(respond, &attempts.pick_failed(why, route.route)),
        };
        guard.set_endpoint(ep);
        attempts.picked(ep);
        let addr = shard.addr(ep);
        let tls = state.upstream_tls.get(ep).and_then(Option::as_ref);
        let opened = crate::h2_upstream::open_stream(
            addr,
            tls,
            &settings.h2,
            settings.connect_timeout,
            upstream_request(&req, model, deadline, admission.claims()),
            req.ended && req.first.is_empty(),
        )
        .await;
        let (outcome, stream) = match opened {
            Ok(s) => (Outcome::Head(200), Some(s)),
            Err(e) => (Outcome::Error(e), None),
        };
        let action = shard.judge(&mut attempts, ep, outcome, route.backends);
        match action {
            Action::Deliver => {
                let Some(stream) = stream else {
                    return 502;
                };
                let with = (&admission, state);
                return relay(shard, stream, req, body, respond, deadline, with).await;
            }
            Action::RetryFresh | Action::PickAgain => {}
            Action::Respond(f) => return reject(respond, &f),
            Action::Abandon => return 0,
        }
    }
}

/// The upstream request: the client's headers less hop-by-hop ones, the
/// remaining `grpc-timeout`, `x-forwarded-for` (the client's list, then its
/// address), `x-forwarded-proto`, `x-request-id`, the rule's `claimToHeaders`
/// (the client's copies of those dropped) and `X-Gateway-Model-Name` when a
/// model was named: what an HTTP/1.1 request carries upstream.
fn upstream_request(
    req: &Exec<'_>,
    model: Option<&str>,
    deadline: Instant,
    claims: Option<ClaimHeaders<'_>>,
) -> Request<()> {
    let mut r = Request::new(());
    *r.method_mut() = http::Method::POST;
    // The client's path and query as they are (a reference-counted clone,
    // not parsed again).
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(http::uri::Authority::from_static("upstream"));
    uri.path_and_query = req.uri.path_and_query().cloned();
    *r.uri_mut() = http::Uri::from_parts(uri).unwrap_or_default();
    let h = r.headers_mut();
    h.reserve(req.headers.len() + 5);
    let mut xff = Vec::with_capacity(48);
    for (k, v) in req.headers {
        let name = k.as_str();
        if k == X_FORWARDED_FOR {
            xff.extend_from_slice(v.as_bytes());
            xff.extend_from_slice(b", ");
            continue;
        }
        if HOP_BY_HOP.contains(&name)
            || k == GRPC_TIMEOUT
            || REPLACED_UPSTREAM.contains(&name)
            || claims.is_some_and(|c| c.strip.iter().any(|s| s.eq_ignore_ascii_case(name)))
        {
            continue;
        }
        h.append(k.clone(), v.clone());
    }
    crate::upstream::write_ip(&mut xff, req.peer.ip());
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if req.tls { "https" } else { "http" }),
    );
    if let Some(v) = request_id_value(req.request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    for (name, value) in claims.iter().flat_map(|c| c.set) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(k, v);
        }
    }
    let mut t = String::with_capacity(16);
    crate::grpc::timeout::format(deadline.saturating_duration_since(Instant::now()), &mut t);
    if let Ok(v) = HeaderValue::from_str(&t) {
        h.insert(GRPC_TIMEOUT, v);
    }
    if let Some(m) = model.and_then(|m| HeaderValue::from_str(m).ok()) {
        h.insert(MODEL_HEADER, m);
    }
    r
}

/// Client body → upstream: each frame's bytes are released to the client's
/// window once the upstream took them.
async fn pump_request(
    first: Bytes,
    ended: bool,
    body: &mut RecvStream,
    up: &mut SendStream<Bytes>,
    wait: Duration,
    sent: &Cell<u64>,
) -> Result<(), &'static str> {
    let first_len = first.len();
    if !first.is_empty() || ended {
        send_all(up, first, ended, wait).await?;
        let _ = body.flow_control().release_capacity(first_len);
        sent.set(sent.get() + first_len as u64);
    }
    if ended {
        return Ok(());
    }
    loop {
        match body.data().await {
            Some(Ok(d)) => {
                let n = d.len();
                send_all(up, d, false, wait).await?;
                sent.set(sent.get() + n as u64);
                let _ = body.flow_control().release_capacity(n);
            }
            Some(Err(_)) => return Err("client_reset"),
            None => {
                if let Ok(Some(t)) = body.trailers().await {
                    up.send_trailers(t).map_err(|_| "reset")?;
                } else {
                    up.send_data(Bytes::new(), true).map_err(|_| "reset")?;
                }
                return Ok(());
            }
        }
    }
}

/// Upstream answer body → client, then its trailers.
/// The HTTP status a gRPC call is recorded with in the request metrics (the
/// client got `200` and this `grpc-status`): the reverse of
/// [`crate::grpc::status::of_failure`], so dashboards see gRPC errors.
fn recorded_status(grpc_status: Option<&HeaderValue>, http: u16) -> u16 {
    let Some(code) = grpc_status.and_then(|v| std::str::from_utf8(v.as_bytes()).ok()) else {
        return http;
    };
    match code.trim() {
        "0" => http,
        "1" => 499,
        "3" | "9" | "11" => 400,
        "4" => 504,
        "5" => 404,
        "7" => 403,
        "8" => 429,
        "12" => 501,
        "14" => 503,
        "16" => 401,
        _ => 500,
    }
}

async fn pump_response(
    up_body: &mut RecvStream,
    down: &mut SendStream<Bytes>,
    wait: Duration,
    sent: &Cell<u64>,
) -> Result<Option<HeaderValue>, &'static str> {
    loop {
        match up_body.data().await {
            Some(Ok(d)) => {
                let n = d.len();
                send_all(down, d, false, wait).await?;
                sent.set(sent.get() + n as u64);
                let _ = up_body.flow_control().release_capacity(n);
            }
            Some(Err(_)) => {
                let _ = down.send_trailers(status_trailers(
                    Code::Unavailable,
                    "the upstream stream failed",
                ));
                return Err("upstream_reset");
            }
            None => {
                return Ok(match up_body.trailers().await {
                    Ok(Some(t)) => {
                        let status = t.get("grpc-status").cloned();
                        let _ = down.send_trailers(t);
                        status
                    }
                    _ => {
                        let _ = down.send_data(Bytes::new(), true);
                        None
                    }
                });
            }
        }
    }
}

/// Relay one call; returns the status to record. Returning drops the
/// upstream stream's handles: an unfinished upstream stream is then reset
/// (`CANCEL`), which cancels the call on the backend.
async fn relay(
    shard: &Shard,
    stream: crate::h2_upstream::UpstreamStream,
    req: Exec<'_>,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    deadline: Instant,
    (admission, state): (&Admission<'_>, &GatewayState),
) -> u16 {
    let up_bytes = Cell::new(0u64);
    let down_bytes = Cell::new(0u64);
    let status = relay_call(
        shard,
        stream,
        req,
        body,
        respond,
        deadline,
        admission,
        &up_bytes,
        &down_bytes,
    )
    .await;
    // A token limit is charged estimates from the messages' bytes (a gRPC
    // answer carries no OpenAI `usage`), as an HTTP/1.1 KServe call is.
    let usage = Usage {
        request_bytes: up_bytes.get(),
        response_bytes: down_bytes.get(),
        ..Usage::default()
    };
    admission.charge(state, status, &usage);
    status
}

#[allow(clippy::too_many_arguments)]
async fn relay_call(
    shard: &Shard,
    stream: crate::h2_upstream::UpstreamStream,
    req: Exec<'_>,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    deadline: Instant,
    admission: &Admission<'_>,
    up_bytes: &Cell<u64>,
    down_bytes: &Cell<u64>,
) -> u16 {
    let crate::h2_upstream::UpstreamStream {
        mut send,
        response,
        _lease,
    } = stream;
    let wait = shard.settings.send_timeout;
    let mut req_done = req.ended && req.first.is_empty();
    let up_req = pump_request(
        req.first.clone(),
        req.ended,
        body,
        &mut send,
        wait,
        up_bytes,
    );
    let mut up_req = std::pin::pin!(up_req);
    let answer = async {
        monoio::time::timeout_at(deadline, response)
            .await
            .map_err(|_| (Code::DeadlineExceeded, "the call's deadline passed"))?
            .map_err(|_| (Code::Unavailable, "the upstream stream failed"))
    };
    let mut answer = std::pin::pin!(answer);
    let resp = loop {
        monoio::select! {
            r = &mut up_req, if !req_done => {
                req_done = true;
                if r == Err("client_reset") {
                    return 0;
                }
            }
            a = &mut answer => break a,
        }
    };
    let resp = match resp {
        Ok(r) => r,
        Err((code, msg)) => {
            let _ = respond.send_response(status_only(code, msg), true);
            return if code == Code::DeadlineExceeded {
                504
            } else {
                502
            };
        }
    };
    let (parts, mut up_body) = resp.into_parts();
    let mut head = Response::new(());
    *head.status_mut() = parts.status;
    for (k, v) in &parts.headers {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            head.headers_mut().append(k.clone(), v.clone());
        }
    }
    admission.quota_headers(head.headers_mut());
    let end = up_body.is_end_stream();
    let status = recorded_status(parts.headers.get("grpc-status"), parts.status.as_u16());
    let Ok(mut down) = respond.send_response(head, end) else {
        return 0;
    };
    if end {
        return status;
    }
    // The answer's body and trailers, while the request body keeps going up
    // (bidirectional streaming); the deadline ends it with DEADLINE_EXCEEDED.
    let down_pump = async {
        let pump = pump_response(&mut up_body, &mut down, wait, down_bytes);
        match monoio::time::timeout_at(deadline, pump).await {
            Ok(r) => r,
            Err(_) => {
                let _ = down.send_trailers(status_trailers(
                    Code::DeadlineExceeded,
                    "the call's deadline passed",
                ));
                Err("deadline")
            }
        }
    };
    let mut down_pump = std::pin::pin!(down_pump);
    loop {
        monoio::select! {
            r = &mut up_req, if !req_done => {
                req_done = true;
                if r == Err("client_reset") {
                    return 0;
                }
            }
            r = &mut down_pump => {
                return match r {
                    Ok(trailer) => recorded_status(trailer.as_ref(), status),
                    Err("deadline") => 504,
                    Err(_) => 502,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_upstream_call_carries_the_gateways_forwarding_and_claim_headers() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "forged"),
            ("x-gateway-model-name", "forged"),
            ("X-Tenant", "forged"),
            ("connection", "keep-alive"),
            ("grpc-timeout", "1H"),
            ("authorization", "Bearer t"),
            ("x-custom", "kept"),
        ] {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        let uri: http::Uri = "/inference.GRPCInferenceService/ModelInfer"
            .parse()
            .unwrap();
        let req = Exec {
            headers: &headers,
            uri: &uri,
            path: uri.path(),
            peer: "[2001:db8::7]:4000".parse().unwrap(),
            tls: true,
            request_id: &RequestId::Client(b"rid-1"),
            first: Bytes::new(),
            ended: true,
            started: Instant::now(),
        };
        let strip = ["x-tenant".to_owned()];
        let set = [("x-tenant".to_owned(), "acme".to_owned())];
        let claims = ClaimHeaders {
            strip: &strip,
            set: &set,
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let r = upstream_request(&req, Some("bert"), deadline, Some(claims));
        let all = |n: &str| -> Vec<&str> {
            r.headers()
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(
            all("x-forwarded-for"),
            ["203.0.113.9, 198.51.100.2, 2001:db8::7"]
        );
        assert_eq!(all("x-forwarded-proto"), ["https"]);
        assert_eq!(all("x-request-id"), ["rid-1"]);
        assert!(r.headers()["x-request-id"].is_sensitive(), "never indexed");
        assert_eq!(all("x-gateway-model-name"), ["bert"]);
        assert_eq!(all("x-tenant"), ["acme"]);
        assert_eq!(all("authorization"), ["Bearer t"]);
        assert_eq!(all("x-custom"), ["kept"]);
        assert!(all("connection").is_empty());
        let t = all("grpc-timeout");
        assert!(t.len() == 1 && t[0] != "1H", "{t:?}");
        // Without a named model or claims, the client's copies are still dropped.
        let r = upstream_request(&req, None, deadline, None);
        assert!(r.headers().get("x-gateway-model-name").is_none());
        assert_eq!(r.headers()["x-tenant"], "forged");
    }

    #[test]
    fn grpc_statuses_are_recorded_as_http_statuses() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(recorded_status(None, 200), 200);
        assert_eq!(recorded_status(Some(&v("0")), 200), 200);
        assert_eq!(recorded_status(Some(&v("5")), 200), 404);
        assert_eq!(recorded_status(Some(&v("14")), 200), 503);
        assert_eq!(recorded_status(Some(&v("8")), 200), 429);
        assert_eq!(recorded_status(Some(&v("4")), 200), 504);
        assert_eq!(recorded_status(Some(&v("13")), 200), 500);
        assert_eq!(recorded_status(Some(&v("x")), 200), 500);
    }

    #[test]
    fn trailers_only_answers_carry_the_status_and_an_encoded_message() {
        let r = status_only(Code::NotFound, "model `é` not found");
        assert_eq!(r.headers()["grpc-status"], "5");
        assert_eq!(r.headers()["grpc-message"], "model `%C3%A9` not found");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        let t = status_trailers(Code::Unavailable, "");
        assert_eq!(t["grpc-status"], "14");
        assert!(t.get("content-type").is_none() && t.get("grpc-message").is_none());
    }
}
