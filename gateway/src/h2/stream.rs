//! What every HTTP/2 stream goes through, a gRPC call ([`super::call`]) or
//! an HTTP request ([`super::openai`]) alike: its in-flight count on the
//! shard and endpoint ([`Served`], [`StreamCount`]), the policy steps before
//! a forward ([`admit`]: JWT authentication, the SecurityPolicy's rate
//! limits, the `maxConcurrentInferences` permit), an HTTP failure as its
//! OpenAI-style JSON answer ([`answer_json`]), sending under the stream's
//! flow-control window ([`send_all`]), and the record of a finished stream
//! for the metrics and the access log ([`record`]).
//!
//! The two protocols build on this module and never on each other; the
//! connection loop (`h2/mod.rs`) picks one per stream.

use std::borrow::Cow;
use std::cell::Cell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::SendStream;
use http::{HeaderMap, HeaderValue, Response};
use monoio::time::Instant;

use crate::error::Failure;
use crate::metrics::RequestRecord;
use crate::proxy::RequestId;
use crate::ratelimit::Admitted;
use crate::shard::{InFlight, Shard};
use crate::state::GatewayState;

/// A stream's in-flight count on the shard and its endpoint, and the
/// endpoint it went to (for the access log).
pub(super) struct Served {
    flight: InFlight,
    /// The endpoint last picked.
    pub(super) endpoint: Option<usize>,
}

impl Served {
    pub(super) fn new(shard: &Rc<Shard>) -> Self {
        Served {
            flight: InFlight::new(shard),
            endpoint: None,
        }
    }

    /// Count the stream on `ep`.
    pub(super) fn set_endpoint(&mut self, ep: usize) {
        self.flight.set_endpoint(ep);
        self.endpoint = Some(ep);
    }
}

/// Counts a connection's open streams while it lives.
pub struct StreamCount(Rc<Cell<usize>>);

impl StreamCount {
    /// Count one more stream on `c`.
    pub fn new(c: &Rc<Cell<usize>>) -> Self {
        c.set(c.get() + 1);
        StreamCount(c.clone())
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// The first value of the request header `name` (ASCII case-insensitive):
/// a scan of the fields, cheaper than `HeaderMap::get(&str)`, which parses
/// and hashes the name on every call (~360 instructions a lookup, about ten
/// lookups a call). The HTTP/1.1 path scans its fields the same way.
pub(super) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_bytes())
}

/// Headers that never cross a hop.
pub(super) const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Answers `f` as HTTP with its OpenAI-style JSON body and the request's id.
pub(super) fn answer_json(respond: &mut SendResponse<Bytes>, f: &Failure, rid: &RequestId<'_>) {
    let mut r = Response::new(());
    *r.status_mut() =
        http::StatusCode::from_u16(f.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    insert_request_id(h, rid);
    // The headers an HTTP/1.1 answer to the same failure carries.
    if let Some(secs) = f.retry_after {
        h.insert("retry-after", HeaderValue::from(secs));
    }
    if let Some(q) = &f.rate {
        insert_quota(h, q);
    }
    if let Some(v) = f.www_authenticate {
        h.insert("www-authenticate", HeaderValue::from_static(v));
    }
    if let Ok(mut s) = respond.send_response(r, false) {
        let _ = s.send_data(Bytes::from(f.json_body()), true);
    }
}

/// Sets the three `x-ratelimit-*` headers of `q` in `h`.
fn insert_quota(h: &mut HeaderMap, q: &crate::ratelimit::Quota) {
    crate::ratelimit::quota_headers(q, |name, value| {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            h.insert(name, v);
        }
    });
}

/// A stream's request id ([`RequestId::choose`], the HTTP/1.1 rule): the
/// same id goes upstream, into the access log and back to the client.
pub(super) fn request_id<'h>(headers: &'h HeaderMap, shard: &Shard) -> RequestId<'h> {
    RequestId::choose(header(headers, "x-request-id"), shard)
}

/// `rid` as a header value, marked never-indexed for HPACK: an id is new on
/// every request, so indexing it would only churn the dynamic table, and
/// h2's encoder walks every same-name entry there before each insert.
/// Indexed, the ids cost 57.0k instructions per HTTP/2 request against 53.2k
/// never-indexed, and 88.1k per gRPC call against 83.9k
/// (`bench/instructions.py`, 2026-12-08).
pub(super) fn request_id_value(rid: &RequestId<'_>) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_bytes(rid.as_bytes()).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Sets `x-request-id` in `h` (an answer's headers) unless it has one.
pub(super) fn insert_request_id(h: &mut HeaderMap, rid: &RequestId<'_>) {
    if let http::header::Entry::Vacant(e) = h.entry(X_REQUEST_ID) {
        if let Some(v) = request_id_value(rid) {
            e.insert(v);
        }
    }
}

/// `x-request-id`, made at compile time (no name parsed per request).
pub(super) const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

pub(super) struct Record<'s> {
    pub(super) status: u16,
    pub(super) model: Option<Cow<'s, str>>,
    pub(super) route: Option<&'s str>,
    /// A gRPC call (else HTTP over HTTP/2).
    pub(super) grpc: bool,
    /// For the access log: the client, the path, the request's id, when the
    /// request began, the endpoint.
    pub(super) peer: SocketAddr,
    pub(super) method: &'s str,
    pub(super) path: &'s str,
    pub(super) request_id: &'s str,
    pub(super) ts_ms: u64,
    pub(super) endpoint: Option<usize>,
    /// What the answer used: `usage` token counts, body bytes sent to the
    /// client, time to the first SSE event.
    pub(super) answer: Answered,
}

/// The answer's figures for the metrics and the access log.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Answered {
    pub(super) prompt_tokens: Option<u64>,
    pub(super) completion_tokens: Option<u64>,
    pub(super) bytes: u64,
    pub(super) ttft: Option<Duration>,
    pub(super) tpot: Option<Duration>,
}

pub(super) fn record(shard: &Shard, rec: &Record<'_>, started: Instant) {
    let duration = started.elapsed();
    if let Some(log) = &shard.access_log {
        let client = rec.peer.to_string();
        log.borrow_mut().push(&crate::access_log::Line {
            ts_ms: rec.ts_ms,
            request_id: rec.request_id,
            client: &client,
            method: rec.method,
            path: rec.path,
            model: rec.model.as_deref(),
            route: rec.route,
            endpoint: rec.endpoint.map(|ep| shard.addr(ep).to_string()),
            status: rec.status,
            bytes: rec.answer.bytes,
            ttft_ms: rec.answer.ttft.map(|d| d.as_secs_f64() * 1000.0),
            duration_ms: duration.as_secs_f64() * 1000.0,
            prompt_tokens: rec.answer.prompt_tokens,
            completion_tokens: rec.answer.completion_tokens,
            outcome: if rec.status == 0 {
                "aborted_client"
            } else {
                "ok"
            },
        });
    }
    let mut m = shard.metrics.borrow_mut();
    m.h2_requests[usize::from(!rec.grpc)] += 1;
    m.record(&RequestRecord {
        model: rec.model.as_deref(),
        route: rec.route,
        status: rec.status,
        duration,
        ttft: rec.answer.ttft,
        tpot: rec.answer.tpot,
        prompt_tokens: rec.answer.prompt_tokens,
        completion_tokens: rec.answer.completion_tokens,
    });
}

/// The policy steps every plan to forward goes through, for gRPC and HTTP
/// alike: JWT authentication (`authorization`), the SecurityPolicy's rate
/// limits, then an admission permit (`maxConcurrentInferences`), held by the
/// caller until the answer is out.
pub(super) async fn admit<'s>(
    shard: &Rc<Shard>,
    state: &'s GatewayState,
    decision: &crate::plan::Decision<'_>,
    target: &crate::plan::Target<'_>,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Admission<'s>, Failure> {
    let header = |name: &str| header(headers, name);
    let jwt = decision.security.and_then(|k| state.auth.policy(k));
    let verified = match jwt.map(|p| {
        p.verify_cached(
            &mut shard.jwt_cache.borrow_mut(),
            header("authorization"),
            crate::jwt::unix_now(),
        )
    }) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(reason)) => {
            shard.metrics.borrow_mut().auth_failures[reason.index()] += 1;
            return Err(Failure::unauthorized(
                reason == crate::jwt::Reason::Missing,
                reason.message(),
                reason.www_authenticate(),
            ));
        }
    };
    let subject = verified.as_ref().and_then(|v| v.subject.as_deref());
    // The rule's `claimToHeaders`: set from the token, the client's copies dropped.
    let claims = match (jwt, &verified) {
        (Some(p), Some(v)) if !p.claim_header_names().is_empty() => {
            Some((p.claim_header_names(), v.clone()))
        }
        _ => None,
    };
    let model = decision.named_model();
    let mut admitted = Admitted::default();
    if let (Some(limiter), Some(policy)) = (&state.rate_limiter, target.route.security) {
        match rate_limit(state, limiter, policy, headers, peer, model, subject).await {
            Ok(a) => admitted = a,
            Err(f) => {
                shard.metrics.borrow_mut().rate_limited(model);
                return Err(f);
            }
        }
    }
    let permit = shard
        .permit(target.priority, decision.model.as_deref())
        .await?;
    Ok(Admission {
        _permit: permit,
        admitted,
        claims,
    })
}

/// What [`admit`] let through: the concurrency permit (held while the
/// request lives), the rate limits' quotas and token charge, and the
/// verified token's claim headers.
pub(super) struct Admission<'s> {
    /// `maxConcurrentInferences`' permit, if the gateway has a budget (held,
    /// never read: dropping it frees the slot).
    pub _permit: Option<crate::admit::Permit>,
    /// The quotas for the success headers, and the token charge to make once
    /// the answer is out.
    pub admitted: Admitted,
    /// The rule's `claimToHeaders` names and the token that verified, when
    /// the rule has any.
    claims: Option<(&'s [String], Rc<crate::jwt::Verified>)>,
}

impl Admission<'_> {
    /// The headers to set upstream from the token's claims (and the names
    /// whose client copies are dropped), as over HTTP/1.1.
    pub fn claims(&self) -> Option<crate::upstream::ClaimHeaders<'_>> {
        self.claims
            .as_ref()
            .map(|(strip, v)| crate::upstream::ClaimHeaders {
                strip,
                set: &v.headers,
            })
    }

    /// Adds the `x-ratelimit-*` headers of the admitted quotas to `h`.
    pub fn quota_headers(&self, h: &mut HeaderMap) {
        let a = &self.admitted;
        for q in [a.requests, a.tokens].into_iter().flatten() {
            insert_quota(h, &q);
        }
    }

    /// Charges the tokens of a finished 2xx answer to the token limit, if
    /// one applies ([`crate::ratelimit::tokens_used`]: the answer's `usage`,
    /// else estimates from the bytes and SSE events).
    pub fn charge(&self, state: &GatewayState, status: u16, usage: &Usage) {
        let (Some(c), Some(limiter)) = (self.admitted.charge, &state.rate_limiter) else {
            return;
        };
        if !(200..300).contains(&status) {
            return;
        }
        let n = crate::ratelimit::tokens_used(
            usage.scanner.prompt_tokens,
            usage.scanner.completion_tokens,
            usage.request_bytes,
            usage.scanner.events,
            usage.response_bytes,
        );
        limiter.charge_tokens(c.key, &c.limit, n, limiter.now());
    }
}

/// What an HTTP/2 answer used, for the token charge, the metrics and the log.
#[derive(Default)]
pub(super) struct Usage {
    /// `usage` counts and SSE events found in the answer's body.
    pub scanner: crate::metrics::UsageScanner,
    /// The request body's bytes.
    pub request_bytes: u64,
    /// The answer body's bytes.
    pub response_bytes: u64,
}

/// The rate-limit step: `Err` is the 429 to answer. A fleet-wide limit
/// waiting on its lease is polled every [`crate::ratelimit_global::WAIT_STEP`]
/// up to `--rate-limit-redis-timeout`.
async fn rate_limit(
    state: &GatewayState,
    limiter: &crate::ratelimit::RateLimiter,
    policy: &str,
    headers: &HeaderMap,
    peer: SocketAddr,
    model: Option<&str>,
    subject: Option<&str>,
) -> Result<Admitted, Failure> {
    let started = Instant::now();
    loop {
        let gave_up = state
            .global_limiter
            .as_ref()
            .is_none_or(|g| started.elapsed() >= g.timeout());
        let forwarded_for = || header(headers, "x-forwarded-for");
        match state.rate_limit(
            limiter,
            policy,
            model,
            subject,
            peer.ip(),
            forwarded_for,
            gave_up,
        ) {
            Some(decided) => return decided,
            None => monoio::time::sleep(crate::ratelimit_global::WAIT_STEP).await,
        }
    }
}

/// Sends `data` on `to` as its window allows, waiting at most `wait` for
/// each grant of capacity.
pub(super) async fn send_all(
    to: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    wait: Duration,
) -> Result<(), &'static str> {
    if data.is_empty() {
        if end {
            to.send_data(data, true).map_err(|_| "reset")?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        to.reserve_capacity(data.len());
        let granted = monoio::time::timeout(wait, poll_fn(|cx| to.poll_capacity(cx)))
            .await
            .map_err(|_| "send_timeout")?;
        let n = match granted {
            Some(Ok(n)) => n.min(data.len()),
            _ => return Err("reset"),
        };
        if n == 0 {
            continue;
        }
        let chunk = data.split_to(n);
        let last = end && data.is_empty();
        to.send_data(chunk, last).map_err(|_| "reset")?;
    }
    Ok(())
}
