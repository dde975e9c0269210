//! HTTP/1.1 exchanges carried over HTTP/2 streams: how every HTTP request
//! reaches an endpoint whose port speaks HTTP/2 only (`appProtocol:
//! kubernetes.io/h2c`, `h2c`, `http2` or `grpc` on its Service or
//! EndpointSlice port, [`shardgate_routing::EndpointInfo::h2`]).
//!
//! The gateway's one upstream client (`upstream`) writes HTTP/1.1
//! requests and reads HTTP/1.1 answers. For such an endpoint its connection
//! (`upstream::UpstreamStream::H2`) is an [`H2Bridge`]:
//! - writing a request head parses it (`httparse`; the gateway wrote it, so
//!   it is well formed) and opens an HTTP/2 stream with the same method,
//!   path, `Host` as `:authority` and headers (HTTP/1.1-only fields dropped);
//!   the body follows as DATA, the last frame with END_STREAM;
//! - reading yields the answer as HTTP/1.1: a status line and its headers
//!   once the HEADERS frame has come, then the DATA frames as they come, as
//!   they are when the backend sent `content-length`, else chunked (and
//!   `content-length: 0` for an answer that ended with its head).
//!
//! So the proxy (HTTP/1.1 and HTTP/2 clients), batched calls, the control
//! thread's scrapes, health checks and model polls, the attempt machine
//! (retries, stale connections, ejection), the pool, the client-disconnect
//! watch, SSE timing, usage scanning and mid-stream aborts are the same code
//! for both kinds of backend: one more `match` arm per read and write for
//! HTTP/1.1 backends, nothing else. What a bridged request pays over a direct
//! HTTP/2 client: its head serialised and parsed once more (about 1 µs), and
//! each DATA frame copied once into the read buffer with a chunk header.
//!
//! **Flow control.** A DATA frame is taken, and its window given back to the
//! backend, only when the reader asks for more bytes: a slow client slows the
//! backend, as over HTTP/1.1.
//!
//! **Connections.** A bridge holds no connection of its own. Connecting
//! (`upstream::connect`) makes sure the shard has a live HTTP/2
//! connection to the address with room for a stream
//! ([`crate::h2_upstream::ensure`]), so a refused connect is a connect
//! failure as for any backend. Each request then opens a stream on this
//! shard's pooled connections to the address (multiplexed, at most
//! `--h2-upstream-streams-per-connection` each, [`crate::h2_upstream`]). A
//! bridge goes back to the keep-alive pool once its answer has ended; one
//! dropped before that resets its stream, which cancels the request on the
//! backend. Stream failures keep their kind ([`UpstreamError`] inside the
//! `io::Error`): a stream refused on a pooled connection that had died is
//! stale, retried on a fresh connection.

use std::fmt::Write as _;
use std::future::{poll_fn, Future as _};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use http::{HeaderName, HeaderValue, Request};

use crate::error::{UpstreamError, UpstreamErrorKind as Kind};
use crate::h2_io::Limits;
use crate::h2_upstream::Lease;
use crate::upstream_tls::UpstreamTls;

/// Request fields HTTP/2 does not carry (RFC 9113 §8.2.2); `host` becomes
/// `:authority`.
const NOT_FORWARDED: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "host",
];

/// Most header fields in a request head the bridge parses (the gateway's
/// own head: the client's fields, at most `--max-headers`, and the few it adds).
const MAX_FIELDS: usize = 256;

/// One endpoint's HTTP/1.1-over-HTTP/2 connection.
pub struct H2Bridge {
    addr: SocketAddr,
    tls: Option<Arc<UpstreamTls>>,
    lim: Limits,
    timeout: Duration,
    state: State,
}

/// Where the current exchange is.
enum State {
    /// No exchange: a read is end of file.
    Idle,
    /// The head is out; `left` body bytes are still to be written.
    Body {
        send: SendStream<Bytes>,
        response: ResponseFuture,
        left: usize,
        _lease: Lease,
    },
    /// The request is out; the answer's head is awaited (`head`: the request
    /// was `HEAD`, its answer has no body whatever it says).
    Head {
        _send: SendStream<Bytes>,
        response: ResponseFuture,
        head: bool,
        _lease: Lease,
    },
    /// The answer's body is relayed: chunked (`left` is `None`), or as it
    /// comes with `left` bytes of its `content-length` to go (the bridge is
    /// idle, its stream and its share of the connection let go, once they
    /// are through: the reader then stops and pools it).
    Data {
        _send: SendStream<Bytes>,
        body: RecvStream,
        left: Option<u64>,
        _lease: Lease,
    },
}

fn failed(kind: Kind, msg: String) -> io::Error {
    io::Error::other(UpstreamError::new(kind, msg))
}

impl H2Bridge {
    /// A bridge to `addr` (over TLS with `tls`, ALPN `h2`), after making sure
    /// this shard has a connection to it with room for a stream.
    pub async fn connect(
        addr: SocketAddr,
        tls: Option<Arc<UpstreamTls>>,
        lim: Limits,
        timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        crate::h2_upstream::ensure(addr, tls.as_ref(), &lim, timeout).await?;
        Ok(H2Bridge {
            addr,
            tls,
            lim,
            timeout,
            state: State::Idle,
        })
    }

    /// Writes an HTTP/1.1 request: its head (and the body bytes after it)
    /// opens a stream; a body too large to come with the head follows through
    /// [`Self::write_body`]. Any exchange still under way is dropped (its
    /// stream reset).
    pub async fn write_request(&mut self, buf: &[u8]) -> io::Result<()> {
        self.state = State::Idle;
        let (req, head_len, body_len) = parse_request(buf, self.addr)?;
        let inline = buf.get(head_len..).unwrap_or_default();
        let inline = &inline[..inline.len().min(body_len)];
        let left = body_len - inline.len();
        let is_head = req.method() == http::Method::HEAD;
        let s = crate::h2_upstream::open_stream(
            self.addr,
            self.tls.as_ref(),
            &self.lim,
            self.timeout,
            req,
            body_len == 0,
        )
        .await
        .map_err(io::Error::other)?;
        let crate::h2_upstream::UpstreamStream {
            mut send,
            response,
            _lease,
        } = s;
        if !inline.is_empty() {
            send.send_data(Bytes::copy_from_slice(inline), left == 0)
                .map_err(|e| failed(Kind::Closed, format!("HTTP/2 request body: {e}")))?;
        }
        self.state = if left > 0 {
            State::Body {
                send,
                response,
                left,
                _lease,
            }
        } else {
            State::Head {
                _send: send,
                response,
                head: is_head,
                _lease,
            }
        };
        Ok(())
    }

    /// Writes the rest of the request body (all of it: it ends the request).
    pub fn write_body(&mut self, body: &Bytes) -> io::Result<()> {
        let State::Body {
            send,
            response,
            left,
            _lease,
        } = std::mem::replace(&mut self.state, State::Idle)
        else {
            return Err(failed(Kind::Closed, "no request body is expected".into()));
        };
        let mut send = send;
        if body.len() != left {
            send.send_reset(h2::Reason::CANCEL);
            return Err(failed(
                Kind::Closed,
                format!("{} body bytes for {left} left", body.len()),
            ));
        }
        send.send_data(body.clone(), true)
            .map_err(|e| failed(Kind::Closed, format!("HTTP/2 request body: {e}")))?;
        self.state = State::Head {
            _send: send,
            response,
            head: false,
            _lease,
        };
        Ok(())
    }

    /// Reads once: appends the answer's head or its next body bytes (framed
    /// as HTTP/1.1) to `buf`. 0 = end of file: no exchange under way. Cancel
    /// safe: a read dropped before it finished loses nothing.
    pub async fn read_into(&mut self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        let r = self.read(&mut buf).await;
        (r, buf)
    }

    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match &mut self.state {
                State::Idle => return Ok(0),
                State::Body { .. } => {
                    return Err(failed(Kind::Closed, "the request body is unsent".into()))
                }
                State::Head { response, head, .. } => {
                    let resp = poll_fn(|cx| Pin::new(&mut *response).poll(cx))
                        .await
                        .map_err(|e| {
                            failed(Kind::Closed, format!("HTTP/2 answer from backend: {e}"))
                        })?;
                    let is_head = *head;
                    let State::Head { _send, _lease, .. } =
                        std::mem::replace(&mut self.state, State::Idle)
                    else {
                        return Ok(0);
                    };
                    let (parts, body) = resp.into_parts();
                    let before = buf.len();
                    let ended = body.is_end_stream() || is_head;
                    let left = write_head(buf, &parts, ended, is_head);
                    if !ended && left != Some(0) {
                        self.state = State::Data {
                            _send,
                            body,
                            left,
                            _lease,
                        };
                    }
                    return Ok(buf.len() - before);
                }
                State::Data { body, left, .. } => {
                    let chunked = left.is_none();
                    match poll_fn(|cx| body.poll_data(cx)).await {
                        Some(Ok(d)) => {
                            let _ = body.flow_control().release_capacity(d.len());
                            if d.is_empty() {
                                continue;
                            }
                            let before = buf.len();
                            match left {
                                None => {
                                    let _ = write!(buf, "{:x}\r\n", d.len());
                                    buf.extend_from_slice(&d);
                                    buf.extend_from_slice(b"\r\n");
                                }
                                Some(n) => {
                                    // The `h2` crate refuses DATA beyond the
                                    // stream's `content-length`.
                                    buf.extend_from_slice(&d);
                                    *n = n.saturating_sub(d.len() as u64);
                                    if *n == 0 {
                                        self.state = State::Idle;
                                    }
                                }
                            }
                            return Ok(buf.len() - before);
                        }
                        Some(Err(e)) => {
                            self.state = State::Idle;
                            return Err(failed(
                                Kind::Closed,
                                format!("HTTP/2 answer body from backend: {e}"),
                            ));
                        }
                        None => {
                            // Trailers, if any, are not relayed to HTTP/1.1.
                            self.state = State::Idle;
                            if chunked {
                                buf.extend_from_slice(b"0\r\n\r\n");
                                return Ok(5);
                            }
                            return Ok(0);
                        }
                    }
                }
            }
        }
    }
}

/// Parses the gateway's own HTTP/1.1 request head in `buf` into an HTTP/2
/// request to `addr`: the request, the head's length and the body's
/// (`content-length`, 0 without one).
fn parse_request(buf: &[u8], addr: SocketAddr) -> io::Result<(Request<()>, usize, usize)> {
    let bad = |why: &str| failed(Kind::Send, format!("request for HTTP/2: {why}"));
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(bad("incomplete head")),
        Err(e) => return Err(bad(&e.to_string())),
    };
    let method = http::Method::from_bytes(req.method.unwrap_or("GET").as_bytes())
        .map_err(|_| bad("method"))?;
    let mut authority = None;
    let mut body_len = 0usize;
    let mut out = Request::new(());
    let headers = out.headers_mut();
    for f in req.headers.iter() {
        if f.name.eq_ignore_ascii_case("host") {
            authority = Some(f.value);
        } else if f.name.eq_ignore_ascii_case("content-length") {
            body_len = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad("content-length"))?;
        }
        if NOT_FORWARDED.iter().any(|n| f.name.eq_ignore_ascii_case(n)) {
            continue;
        }
        // Names come out lowercase, as HTTP/2 wants them.
        let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) else {
            return Err(bad("header field"));
        };
        headers.append(k, v);
    }
    let path = req.path.unwrap_or("/");
    let authority = match authority.and_then(|a| http::uri::Authority::try_from(a).ok()) {
        Some(a) => a,
        None => http::uri::Authority::try_from(addr.to_string().as_str())
            .map_err(|_| bad("authority"))?,
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query =
        Some(http::uri::PathAndQuery::try_from(path).map_err(|_| bad("request target"))?);
    *out.uri_mut() = http::Uri::from_parts(uri).map_err(|_| bad("request target"))?;
    *out.method_mut() = method;
    Ok((out, head_len, body_len))
}

/// Writes the HTTP/1.1 head of an HTTP/2 answer to `buf`: its body's
/// `content-length` when it has one (`None`: chunked, or none). `ended`: no
/// body follows (the answer ended with its head, or answers `HEAD`).
fn write_head(
    buf: &mut BytesMut,
    parts: &http::response::Parts,
    ended: bool,
    head: bool,
) -> Option<u64> {
    let status = parts.status;
    buf.put_slice(b"HTTP/1.1 ");
    buf.put_slice(status.as_str().as_bytes());
    buf.put_u8(b' ');
    buf.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    buf.put_slice(b"\r\n");
    let mut length = None;
    for (k, v) in &parts.headers {
        if k == http::header::CONTENT_LENGTH {
            // The `h2` crate has checked it is a number.
            length = std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if length.is_none() {
                continue;
            }
        }
        buf.put_slice(k.as_str().as_bytes());
        buf.put_slice(b": ");
        buf.put_slice(v.as_bytes());
        buf.put_slice(b"\r\n");
    }
    let bodiless = head || matches!(status.as_u16(), 100..=199 | 204 | 304);
    if length.is_none() && !bodiless {
        if ended {
            buf.put_slice(b"content-length: 0\r\n");
        } else {
            buf.put_slice(b"transfer-encoding: chunked\r\n");
        }
    }
    buf.put_slice(b"\r\n");
    if bodiless {
        Some(0)
    } else {
        length
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ADDR: &str = "10.0.0.1:8000";

    #[test]
    fn a_request_head_becomes_an_http2_request() {
        let raw = b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: api.example\r\nconnection: keep-alive\r\nte: trailers\r\nX-Request-Id: r1\r\ncontent-length: 5\r\n\r\nhello";
        let (req, head_len, body_len) = parse_request(raw, ADDR.parse().unwrap()).unwrap();
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(
            req.uri().to_string(),
            "http://api.example/v1/chat/completions?x=1"
        );
        assert_eq!(&raw[head_len..], b"hello");
        assert_eq!(body_len, 5);
        let h = req.headers();
        assert_eq!(h.get("x-request-id").unwrap(), "r1");
        assert_eq!(h.get("content-length").unwrap(), "5");
        for gone in ["host", "connection", "te"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn without_host_the_authority_is_the_endpoint() {
        let raw = b"GET /metrics HTTP/1.1\r\naccept: */*\r\n\r\n";
        let (req, head_len, body_len) = parse_request(raw, ADDR.parse().unwrap()).unwrap();
        assert_eq!(req.uri().to_string(), "http://10.0.0.1:8000/metrics");
        assert_eq!((head_len, body_len), (raw.len(), 0));
    }

    #[test]
    fn a_broken_head_is_a_send_error() {
        for raw in [
            &b"GET / HTTP/1.1\r\nhost: a\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n",
        ] {
            let e = parse_request(raw, ADDR.parse().unwrap()).unwrap_err();
            let u = e
                .get_ref()
                .unwrap()
                .downcast_ref::<UpstreamError>()
                .unwrap();
            assert_eq!(u.kind, Kind::Send);
        }
    }

    fn head_of(
        status: u16,
        headers: &[(&str, &str)],
        ended: bool,
        head: bool,
    ) -> (String, Option<u64>) {
        let mut r = http::Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let (parts, ()) = r.body(()).unwrap().into_parts();
        let mut buf = BytesMut::new();
        let left = write_head(&mut buf, &parts, ended, head);
        (String::from_utf8(buf.to_vec()).unwrap(), left)
    }

    #[test]
    fn answer_heads_keep_their_length_or_go_chunked() {
        let (h, left) = head_of(200, &[("content-type", "text/event-stream")], false, false);
        assert_eq!(left, None, "chunked");
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let (h, left) = head_of(200, &[("content-length", "12")], false, false);
        assert_eq!(left, Some(12));
        assert_eq!(h, "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n");
        // Ended with its head: an empty body, said so.
        let (h, _) = head_of(404, &[], true, false);
        assert_eq!(h, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        // HEAD and 204 have no body to frame.
        let (h, left) = head_of(200, &[], true, true);
        assert_eq!(left, Some(0));
        assert_eq!(h, "HTTP/1.1 200 OK\r\n\r\n");
        let (h, _) = head_of(204, &[], true, false);
        assert_eq!(h, "HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn heads_written_parse_as_http11_answers() {
        for (status, headers, ended) in [
            (200, vec![("content-type", "application/json")], false),
            (503, vec![("retry-after", "1")], true),
            (200, vec![("content-length", "3")], false),
        ] {
            let (h, _) = head_of(status, &headers, ended, false);
            let mut b = BytesMut::from(h.as_bytes());
            let resp = shardgate_http::split_response_head(
                &mut b,
                false,
                &shardgate_http::Limits::default(),
            )
            .unwrap()
            .unwrap();
            assert_eq!(resp.status(), status);
            assert!(resp.keep_alive());
        }
    }
}
