//! Every way a request can fail at the gateway, with the side at fault, the status
//! the client gets, and the OpenAI-style `type`/`code` of the JSON error body
//! (`{"error":{"message","type","param","code"}}`).

use std::borrow::Cow;

use shardgate_http::{ErrorKind, HttpError};

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we cannot accept.
    Client,
    /// The upstream (inference server) failed or timed out.
    Upstream,
    /// The gateway itself (configuration, capacity).
    Gateway,
}

/// A failed request, as answered to the client.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Side at fault.
    pub side: Side,
    /// HTTP status.
    pub status: u16,
    /// OpenAI error `type`.
    pub err_type: &'static str,
    /// shardgate error `code`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Close the client connection after answering.
    pub close: bool,
    /// `Retry-After` seconds, for 429/503.
    pub retry_after: Option<u32>,
    /// The `x-ratelimit-*-requests` headers of a rate-limited request.
    pub rate: Option<crate::ratelimit::Quota>,
    /// `WWW-Authenticate` value, for 401.
    pub www_authenticate: Option<&'static str>,
}

impl Failure {
    fn new(
        side: Side,
        status: u16,
        err_type: &'static str,
        code: &'static str,
        message: String,
    ) -> Self {
        Failure {
            side,
            status,
            err_type,
            code,
            message,
            close: false,
            retry_after: None,
            rate: None,
            www_authenticate: None,
        }
    }

    /// Malformed or over-limit request head/body from the codec.
    pub fn from_codec(e: &HttpError) -> Self {
        let code = match e.kind {
            ErrorKind::HeaderTooLarge | ErrorKind::TooManyHeaders => "header_too_large",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            ErrorKind::UnsupportedVersion => "unsupported_http_version",
            _ => "bad_request",
        };
        let mut f = Failure::new(
            Side::Client,
            e.status,
            "invalid_request_error",
            code,
            e.message.to_string(),
        );
        f.close = true;
        f
    }

    /// The client closed its side before sending the whole body.
    pub fn bad_request_closed() -> Self {
        let mut f = Failure::new(
            Side::Client,
            400,
            "invalid_request_error",
            "incomplete_body",
            "The connection closed before the whole request body arrived.".to_string(),
        );
        f.close = true;
        f
    }

    /// The request body's JSON could not be read.
    pub fn bad_json(message: String) -> Self {
        Failure::new(
            Side::Client,
            400,
            "invalid_request_error",
            "invalid_json",
            message,
        )
    }

    /// A model was named but no route serves it.
    pub fn unknown_model(model: &str) -> Self {
        Failure::new(
            Side::Client,
            404,
            "invalid_request_error",
            "model_not_found",
            format!("The model `{model}` does not exist or is not served by this gateway."),
        )
    }

    /// No route matches the request.
    pub fn no_route(method: &str, path: &str) -> Self {
        Failure::new(
            Side::Client,
            404,
            "invalid_request_error",
            "route_not_found",
            format!("No route matches {method} {path}."),
        )
    }

    /// The client took too long to send its request.
    pub fn request_timeout() -> Self {
        let mut f = Failure::new(
            Side::Client,
            408,
            "invalid_request_error",
            "request_timeout",
            "The request was not received in time.".to_string(),
        );
        f.close = true;
        f
    }

    /// The matched rule references a filter that does not exist (Gateway API: 500).
    pub fn filter_not_found(filter: &str) -> Self {
        Failure::new(
            Side::Gateway,
            500,
            "gateway_error",
            "filter_not_found",
            format!("The route's filter {filter} does not exist; fix the configuration."),
        )
    }

    /// No endpoint can take the request.
    pub fn no_endpoint(route: &str) -> Self {
        let mut f = Failure::new(
            Side::Gateway,
            503,
            "service_unavailable",
            "no_healthy_endpoint",
            format!("No healthy endpoint is available for route {route}."),
        );
        f.retry_after = Some(1);
        f
    }

    /// The batching queue refused the request (unknown queue 400, full 429).
    pub fn batch_refused(status: u16, code: &'static str, message: String) -> Self {
        let (side, err_type) = if status == 400 {
            (Side::Client, "invalid_request_error")
        } else {
            (Side::Gateway, "rate_limit_error")
        };
        let mut f = Failure::new(side, status, err_type, code, message);
        if status == 429 {
            f.retry_after = Some(1);
        }
        f
    }

    /// Every endpoint is saturated and the request's priority is sheddable.
    pub fn shed_saturated(route: &str) -> Self {
        let mut f = Failure::new(
            Side::Gateway,
            429,
            "rate_limit_error",
            "shed_saturated",
            format!("Every endpoint of route {route} is saturated and this request is sheddable (priority below 0); retry later."),
        );
        f.retry_after = Some(1);
        f
    }

    /// Only endpoints still warming up for the model are left
    /// (`modelPrewarming.mode: strict`).
    pub fn warming(route: &str) -> Self {
        let mut f = Failure::new(
            Side::Gateway,
            503,
            "service_unavailable",
            "model_warming",
            format!("The endpoints of route {route} are still warming up this model (modelPrewarming, strict); retry shortly."),
        );
        f.retry_after = Some(1);
        f
    }

    /// Every healthy endpoint of the route is saturated (queue or KV-cache over
    /// the thresholds).
    pub fn saturated(route: &str) -> Self {
        let mut f = Failure::new(
            Side::Gateway,
            503,
            "service_unavailable",
            "all_endpoints_saturated",
            format!("Every endpoint of route {route} is saturated; retry later."),
        );
        f.retry_after = Some(1);
        f
    }

    /// Connecting to, writing to, or reading a head from the upstream failed.
    pub fn upstream_failed(what: &str) -> Self {
        Failure::new(
            Side::Upstream,
            502,
            "upstream_error",
            "upstream_failed",
            format!("The upstream failed: {what}."),
        )
    }

    /// The upstream sent an invalid response.
    pub fn upstream_protocol(what: &str) -> Self {
        Failure::new(
            Side::Upstream,
            502,
            "upstream_error",
            "upstream_protocol_error",
            format!("The upstream sent an invalid response: {what}."),
        )
    }

    /// 401 for a request without valid credentials on a rule with JWT
    /// authentication: `code` `invalid_api_key` when there was no token, else
    /// `invalid_token`; `www_authenticate` is the RFC 6750 challenge.
    pub fn unauthorized(
        missing: bool,
        message: &'static str,
        www_authenticate: &'static str,
    ) -> Self {
        let mut f = Failure::new(
            Side::Client,
            401,
            "authentication_error",
            if missing {
                "invalid_api_key"
            } else {
                "invalid_token"
            },
            message.to_string(),
        );
        f.www_authenticate = Some(www_authenticate);
        f
    }

    /// A failure built from its parts (the admission and batching executors).
    pub fn with(
        side: Side,
        status: u16,
        err_type: &'static str,
        code: &'static str,
        message: String,
    ) -> Self {
        Failure::new(side, status, err_type, code, message)
    }

    /// Write this failure as a whole HTTP/1.1 response into `out` (the one
    /// OpenAI error writer: [`shardgate_http::write::error_response`]).
    pub fn write_http1(&self, out: &mut Vec<u8>, request_id: Option<&[u8]>) {
        let mut retry = [0u8; 10];
        let (mut limit, mut remaining, mut reset) = ([0u8; 10], [0u8; 10], [0u8; 32]);
        let mut extra: [(&str, &[u8]); 6] = [("", b""); 6];
        let mut n = 0;
        if let Some(w) = self.www_authenticate {
            extra[n] = ("www-authenticate", w.as_bytes());
            n += 1;
        }
        if let Some(r) = self.retry_after {
            let len = fmt_u32(r, &mut retry);
            extra[n] = ("retry-after", &retry[..len]);
            n += 1;
        }
        if let Some(q) = &self.rate {
            let l = fmt_u32(q.limit, &mut limit);
            let r = fmt_u32(q.remaining, &mut remaining);
            let z = crate::ratelimit::fmt_reset(q.reset_ns, &mut reset);
            let names = crate::ratelimit::header_names(q.counted);
            extra[n] = (names[0], &limit[..l]);
            extra[n + 1] = (names[1], &remaining[..r]);
            extra[n + 2] = (names[2], &reset[..z]);
            n += 3;
        }
        if let Some(rid) = request_id {
            extra[n] = ("x-request-id", rid);
            n += 1;
        }
        shardgate_http::write::error_response(
            out,
            self.status,
            &self.message,
            self.err_type,
            self.code,
            self.close,
            &extra[..n],
        );
    }

    /// This failure's JSON body alone.
    pub fn json_body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        shardgate_http::write::openai_error_json(
            &mut body,
            &self.message,
            self.err_type,
            self.code,
        );
        body
    }

    /// Over a SecurityPolicy rate limit (429 `rate_limit_exceeded`, with
    /// `Retry-After` rounded up to the second and the `x-ratelimit-*-requests`
    /// headers); `quota` is `None` when the limiter's table is full.
    pub fn rate_limited(
        model: Option<&str>,
        retry_after_ns: u64,
        quota: Option<crate::ratelimit::Quota>,
    ) -> Self {
        let message = match (model, quota) {
            (_, None) => {
                "Too many clients are being rate limited at once; try again shortly.".to_string()
            }
            (Some(m), Some(q)) => format!(
                "Rate limit reached for model `{m}`: {} {} per period. Try again later.",
                q.limit,
                q.counted.noun()
            ),
            (None, Some(q)) => format!(
                "Rate limit reached: {} {} per period. Try again later.",
                q.limit,
                q.counted.noun()
            ),
        };
        let mut f = Failure::new(
            Side::Client,
            429,
            match quota.map(|q| q.counted) {
                Some(crate::ratelimit::Counted::Tokens) => "tokens",
                _ => "requests",
            },
            "rate_limit_exceeded",
            message,
        );
        f.retry_after = Some(
            u32::try_from(retry_after_ns.div_ceil(1_000_000_000))
                .unwrap_or(u32::MAX)
                .max(1),
        );
        f.rate = quota;
        f
    }

    /// Global rate limits cannot be checked (Redis unreachable) under
    /// `--rate-limit-redis-failure closed`: 429 `rate_limit_unavailable`,
    /// `Retry-After: 1`.
    pub fn rate_limit_unavailable() -> Self {
        let mut f = Failure::new(
            Side::Gateway,
            429,
            "rate_limit_error",
            "rate_limit_unavailable",
            "Rate limits cannot be checked right now (the rate-limit store is unreachable); try again shortly.".to_string(),
        );
        f.retry_after = Some(1);
        f
    }

    /// The upstream did not answer in time.
    pub fn upstream_timeout(what: &str) -> Self {
        Failure::new(
            Side::Upstream,
            504,
            "upstream_error",
            "upstream_timeout",
            format!("The upstream timed out: {what}."),
        )
    }

    /// The shard's share of `--max-buffered-body-bytes` is held by other
    /// requests' bodies: refused at once, before the body is read (503, retry
    /// after 1 s; the connection closes, the body unread).
    pub fn body_budget_exhausted() -> Self {
        let mut f = Failure::new(
            Side::Gateway,
            503,
            "service_unavailable",
            "body_budget_exhausted",
            "The gateway is buffering as many request bodies as its memory budget (--max-buffered-body-bytes) allows; retry later.".to_string(),
        );
        f.close = true;
        f.retry_after = Some(1);
        f
    }

    /// The body is larger than a shard's whole share of
    /// `--max-buffered-body-bytes`, so it can never be buffered (413).
    pub fn body_over_budget(share: u64) -> Self {
        let mut f = Failure::new(
            Side::Client,
            413,
            "invalid_request_error",
            "body_too_large",
            format!("The request body is larger than the {share} bytes of request-body memory a shard may buffer (--max-buffered-body-bytes over the shards)."),
        );
        f.close = true;
        f
    }

    /// The upstream failed after the response began (the error event that ends
    /// an SSE stream; the status already sent stays).
    pub fn aborted_mid_stream(what: &str) -> Self {
        Failure::new(
            Side::Upstream,
            502,
            "upstream_error",
            "aborted_mid_stream",
            format!("The upstream failed mid-stream: {what}; the response is incomplete."),
        )
    }

    /// The gateway is shutting down.
    pub fn draining() -> Self {
        let mut f = Failure::new(
            Side::Gateway,
            503,
            "service_unavailable",
            "draining",
            "The gateway is shutting down.".to_string(),
        );
        f.close = true;
        f.retry_after = Some(1);
        f
    }
}

/// Decimal digits of `v` into `buf`; returns their count.
fn fmt_u32(mut v: u32, buf: &mut [u8; 10]) -> usize {
    let mut tmp = [0u8; 10];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[i] = tmp[n - 1 - i];
    }
    n
}

/// How an upstream exchange failed before a response head reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Connecting failed (refused, unreachable, timed out).
    Connect,
    /// The TLS handshake with a backend that a `BackendTLSPolicy` covers
    /// failed (its certificate did not verify, or it does not speak TLS): a
    /// connect failure, nothing was sent.
    Tls,
    /// A fresh connection broke while the request head was sent.
    Send,
    /// A pooled (reused) connection broke before any response byte: the server
    /// closed it while idle, so the request never reached it.
    Stale,
    /// The connection closed or broke after the request was sent (or while its
    /// body was).
    Closed,
    /// No response (head, or bytes) in time.
    Timeout,
    /// The response was not valid HTTP.
    Protocol,
    /// The client went away while the gateway waited (the request is cancelled).
    ClientGone,
}

/// An upstream exchange's failure: which side failed, what, and whether a
/// retry is allowed.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    /// What failed.
    pub kind: UpstreamErrorKind,
    message: Cow<'static, str>,
}

impl UpstreamError {
    /// A failure of `kind`.
    pub fn new(kind: UpstreamErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        UpstreamError {
            kind,
            message: message.into(),
        }
    }

    /// The side at fault.
    pub fn side(&self) -> Side {
        match self.kind {
            UpstreamErrorKind::ClientGone => Side::Client,
            _ => Side::Upstream,
        }
    }

    /// Whether the request certainly did not reach the server, so that trying
    /// again (fresh connection, or another endpoint) cannot run it twice.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            UpstreamErrorKind::Connect
                | UpstreamErrorKind::Tls
                | UpstreamErrorKind::Send
                | UpstreamErrorKind::Stale
        )
    }

    /// The message when it is static, else a generic one for the kind.
    pub fn static_message(&self) -> &'static str {
        match &self.message {
            Cow::Borrowed(s) => s,
            Cow::Owned(_) => match self.kind {
                UpstreamErrorKind::Connect => "connection refused",
                UpstreamErrorKind::Tls => "TLS: handshake failed",
                UpstreamErrorKind::Send => "connection reset while sending",
                UpstreamErrorKind::Stale | UpstreamErrorKind::Closed => {
                    "connection closed before the response"
                }
                UpstreamErrorKind::Timeout => "no response in time",
                UpstreamErrorKind::Protocol => "invalid response",
                UpstreamErrorKind::ClientGone => "the client went away",
            },
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The answer for the client.
    pub fn to_failure(&self) -> Failure {
        match self.kind {
            UpstreamErrorKind::Timeout => Failure::upstream_timeout(&self.message),
            UpstreamErrorKind::Protocol => Failure::upstream_protocol(&self.message),
            _ => Failure::upstream_failed(&self.message),
        }
    }
}

/// Carried inside an `io::Error` by the HTTP/2 bridge
/// (`h2_bridge`), so the exchange keeps its kind.
impl std::error::Error for UpstreamError {}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upstream_errors_say_their_side_and_whether_a_retry_is_safe() {
        use UpstreamErrorKind as K;
        for (kind, retry) in [
            (K::Connect, true),
            (K::Tls, true),
            (K::Send, true),
            (K::Stale, true),
            (K::Closed, false),
            (K::Timeout, false),
            (K::Protocol, false),
            (K::ClientGone, false),
        ] {
            let e = UpstreamError::new(kind, "x");
            assert_eq!(e.retryable(), retry, "{kind:?}");
            let side = if kind == K::ClientGone {
                Side::Client
            } else {
                Side::Upstream
            };
            assert_eq!(e.side(), side, "{kind:?}");
        }
        let t = UpstreamError::new(K::Timeout, "no head").to_failure();
        assert_eq!((t.status, t.code), (504, "upstream_timeout"));
        let p = UpstreamError::new(K::Protocol, "bad status line").to_failure();
        assert_eq!((p.status, p.code), (502, "upstream_protocol_error"));
        assert!(p.message.contains("bad status line"));
        let owned = UpstreamError::new(K::Connect, format!("connect: {}", 111));
        assert_eq!(owned.static_message(), "connection refused");
        assert_eq!(owned.to_string(), "connect: 111");
    }

    #[test]
    fn failures_write_one_http1_answer_with_retry_after_and_request_id() {
        let mut f = Failure::no_endpoint("default/r");
        f.retry_after = Some(120);
        let mut out = Vec::new();
        f.write_http1(&mut out, Some(b"abc"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("\r\nretry-after: 120\r\n"), "{text}");
        assert!(text.contains("\r\nx-request-id: abc\r\n"), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(body.as_bytes(), f.json_body().as_slice());
        let j: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(j["error"]["code"], "no_healthy_endpoint");
        let mut digits = [0u8; 10];
        let n = fmt_u32(u32::MAX, &mut digits);
        assert_eq!(&digits[..n], u32::MAX.to_string().as_bytes());
        let n = fmt_u32(0, &mut digits);
        assert_eq!(&digits[..n], b"0");
    }
}
