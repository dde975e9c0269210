//! The one upstream HTTP/1.1 client: connecting, the per-shard keep-alive pool,
//! serialising the proxied request, and the exchange, for every caller: the
//! proxy (streamed responses), batched calls and the control thread's scrapes
//! and health checks (whole responses). Every failure is an [`UpstreamError`]
//! that says which side failed and whether a retry is allowed; the attempt
//! machine (`attempt`) turns it into the next step and the error metric.
//!
//! Numbers: a fresh connection gets a 16 KiB read buffer and `TCP_NODELAY`; the
//! pool keeps `--upstream-idle-per-endpoint` connections per endpoint per shard
//! (LIFO; more while the endpoint's pool has run dry within the idle timeout,
//! [`ConnPool`]) for at most `--upstream-idle-timeout`, and peeks (one `recv`) only at
//! connections idle for [`PEEK_AFTER_IDLE`] (1 s); request bodies up to 64 KiB
//! go out in the head's write, larger ones in a second write; a proxied
//! exchange starts watching the client for a disconnect only after
//! [`WATCH_AFTER`] (10 ms); whole responses are bounded by [`MAX_BODY`] (8 MiB).
//!
//! TLS: an endpoint that a `BackendTLSPolicy` covers is connected with its
//! [`UpstreamTls`] ([`crate::upstream_tls`]): the handshake runs inside
//! [`connect`], within the same connect timeout, and a failure is an
//! [`Kind::Tls`] error (a connect failure: retried elsewhere, the endpoint
//! ejected) whose message says why ("TLS: certificate not valid for …").
//! [`UpstreamStream`] is then the rustls client connection driven over the
//! socket ([`crate::tls::TlsStream`], the listeners' driver); everything else
//! (pool, keep-alive, exchanges, streaming) is the same for both. The plain
//! variant costs one `match` per read or write, nothing allocated; a TLS
//! connection allocates its state once, at connect. A peer's `close_notify`
//! reads as end of file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use monoio::time::Instant;
use shardgate_http::{split_response_head, write, BodyDecoder, Limits, RequestHead, ResponseHead};
use shardgate_routing::MODEL_HEADER;
use shardgate_runtime::io::{peer_state, read_into, PeerState};

use crate::error::{UpstreamError, UpstreamErrorKind as Kind};
use crate::h2_bridge::H2Bridge;
use crate::tls::TlsStream;
use crate::upstream_tls::{tls_handshake, UpstreamTls};

/// The byte stream to an endpoint: the socket, or TLS over it.
pub enum UpstreamStream {
    /// Plaintext HTTP/1.1.
    Plain(TcpStream),
    /// HTTP/1.1 over TLS (boxed: the rustls state is large, and allocated
    /// once per connection).
    Tls(Box<TlsStream<rustls::ClientConnection>>),
    /// HTTP/1.1 exchanges carried over HTTP/2 streams, for an endpoint whose
    /// port speaks HTTP/2 ([`crate::h2_bridge`]).
    H2(Box<H2Bridge>),
}

impl UpstreamStream {
    /// The socket, for peeking (none for a bridge: its connections are
    /// [`crate::h2_upstream`]'s, checked when a stream opens).
    #[inline]
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            UpstreamStream::Plain(s) => Some(s),
            UpstreamStream::Tls(t) => Some(t.tcp()),
            UpstreamStream::H2(_) => None,
        }
    }

    /// Whether it is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamStream::Tls(_))
    }

    /// For TLS, how its handshake went: full (0) or resumed (1).
    pub fn tls_handshake(&self) -> Option<usize> {
        match self {
            UpstreamStream::Plain(_) | UpstreamStream::H2(_) => None,
            UpstreamStream::Tls(t) => Some(t.handshake_result()),
        }
    }

    /// Read once, appending (plaintext) to `buf`; 0 = end of file.
    #[inline]
    pub async fn read_into(&mut self, buf: BytesMut) -> (std::io::Result<usize>, BytesMut) {
        match self {
            UpstreamStream::Plain(s) => read_into(s, buf).await,
            UpstreamStream::Tls(t) => t.read_plain(buf, None).await,
            UpstreamStream::H2(b) => b.read_into(buf).await,
        }
    }

    /// Write all of `buf`, which comes back.
    #[inline]
    async fn write_all(&mut self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        match self {
            UpstreamStream::Plain(s) => {
                let (r, b) = s.write_all(buf).await;
                (r.map(|_| ()), b)
            }
            UpstreamStream::Tls(t) => {
                let r = t.write_all_plain(&buf).await;
                (r, buf)
            }
            UpstreamStream::H2(b) => {
                let r = b.write_request(&buf).await;
                (r, buf)
            }
        }
    }

    /// Write all of `body`.
    async fn write_bytes(&mut self, body: &Bytes) -> std::io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.write_all(body.clone()).await.0.map(|_| ()),
            UpstreamStream::Tls(t) => t.write_all_plain(body).await,
            UpstreamStream::H2(b) => b.write_body(body),
        }
    }
}

/// A connection to an endpoint with its read buffer.
pub struct UpstreamConn {
    /// The socket, or TLS over it.
    pub stream: UpstreamStream,
    /// Bytes read but not consumed.
    pub buf: BytesMut,
    /// When it went idle (for the pool's idle timeout).
    pub idle_since: Instant,
    /// Whether it has carried a request before (a failure before any response
    /// byte then means it was stale, not that the request failed).
    pub reused: bool,
}

/// Open a fresh connection to `addr` within `timeout`; over TLS with `tls`
/// (the handshake counts against the same timeout); with `h2`, a bridge
/// whose exchanges go over HTTP/2 streams under those limits
/// ([`crate::h2_bridge`]).
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&Arc<UpstreamTls>>,
    h2: Option<&crate::h2_io::Limits>,
) -> Result<UpstreamConn, UpstreamError> {
    if let Some(lim) = h2 {
        let b = H2Bridge::connect(addr, tls.cloned(), *lim, timeout).await?;
        return Ok(UpstreamConn {
            stream: UpstreamStream::H2(Box::new(b)),
            buf: BytesMut::with_capacity(16 * 1024),
            idle_since: Instant::now(),
            reused: false,
        });
    }
    let open = async {
        let stream = TcpStream::connect_addr(addr)
            .await
            .map_err(|_| UpstreamError::new(Kind::Connect, "connection refused"))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(UpstreamStream::Plain(stream));
        };
        let s = tls_handshake(stream, addr, tls, false).await?;
        Ok(UpstreamStream::Tls(Box::new(s)))
    };
    match monoio::time::timeout(timeout, open).await {
        Ok(Ok(stream)) => Ok(UpstreamConn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            idle_since: Instant::now(),
            reused: false,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) if tls.is_some() => Err(UpstreamError::new(
            Kind::Connect,
            "connect or TLS handshake timed out",
        )),
        Err(_) => Err(UpstreamError::new(Kind::Connect, "connect timed out")),
    }
}

/// Pooled connections idle at least this long are peeked at before reuse (1 s).
pub const PEEK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// One shard's idle upstream connections, per endpoint (LIFO).
///
/// `max_idle` (`--upstream-idle-per-endpoint`) is what an endpoint keeps once
/// its load has dropped, not a ceiling under load: an endpoint whose pool ran
/// dry (a request had to connect) within the last `idle_timeout` keeps every
/// connection handed back to it. Otherwise a shard with more requests in flight
/// to one endpoint than `max_idle` would close connections as answers come
/// back in a burst and open new ones a moment later: 18 % of the gateway's
/// CPU per request under 128 concurrent HTTP/2 streams (`bench/results/h2.md`).
/// The idle timeout still closes what is no longer used, so the pool never
/// holds more than the recent peak of requests in flight.
pub struct ConnPool {
    idle: Vec<Vec<UpstreamConn>>,
    /// Per endpoint: when its pool last ran dry.
    dry_at: Vec<Option<Instant>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl ConnPool {
    /// A pool for `endpoints` endpoints keeping `max_idle` each for `idle_timeout`.
    pub fn new(endpoints: usize, max_idle: usize, idle_timeout: Duration) -> Self {
        ConnPool {
            idle: (0..endpoints).map(|_| Vec::new()).collect(),
            dry_at: vec![None; endpoints],
            max_idle,
            idle_timeout,
        }
    }

    /// Room for `endpoints` endpoints (a reload added some).
    pub fn grow(&mut self, endpoints: usize) {
        while self.idle.len() < endpoints {
            self.idle.push(Vec::new());
            self.dry_at.push(None);
        }
    }

    /// An idle connection to `ep`, dropping expired or dead ones; `None`
    /// (the caller connects) marks the endpoint's pool as having run dry.
    pub fn take(&mut self, ep: usize, now: Instant) -> Option<UpstreamConn> {
        let found = self.take_live(ep, now);
        if found.is_none() {
            if let Some(d) = self.dry_at.get_mut(ep) {
                *d = Some(now);
            }
        }
        found
    }

    fn take_live(&mut self, ep: usize, now: Instant) -> Option<UpstreamConn> {
        let idle = self.idle.get_mut(ep)?;
        while let Some(c) = idle.pop() {
            let age = now.saturating_duration_since(c.idle_since);
            if age >= self.idle_timeout {
                continue;
            }
            // An idle upstream must have nothing to say: data or EOF means it is
            // stale. Checked (one syscall) only on connections idle long enough
            // for a server's keep-alive timer to matter; a busy connection that
            // turns out stale is retried once on a fresh one anyway.
            if age >= PEEK_AFTER_IDLE
                && c.stream
                    .tcp()
                    .is_some_and(|t| peer_state(t) != PeerState::Idle)
            {
                continue;
            }
            return Some(c);
        }
        None
    }

    /// Keep a connection whose exchange completed cleanly.
    pub fn put(&mut self, ep: usize, mut conn: UpstreamConn, now: Instant) {
        if !conn.buf.is_empty() {
            return;
        }
        let Some(idle) = self.idle.get_mut(ep) else {
            return;
        };
        if self.max_idle == 0 {
            return;
        }
        let busy = self
            .dry_at
            .get(ep)
            .copied()
            .flatten()
            .is_some_and(|t| now.saturating_duration_since(t) < self.idle_timeout);
        if idle.len() >= self.max_idle && !busy {
            idle.remove(0);
        }
        conn.idle_since = now;
        conn.reused = true;
        idle.push(conn);
    }

    /// Drop every idle connection to `ep` (it was ejected).
    pub fn clear(&mut self, ep: usize) {
        if let Some(idle) = self.idle.get_mut(ep) {
            idle.clear();
        }
    }
}

/// Headers the gateway sets itself on the upstream request (client copies dropped).
pub const REPLACED_UPSTREAM: [&str; 6] = [
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
    MODEL_HEADER,
];

/// Request bodies up to this size go out in the same write as the head (64 KiB).
pub const INLINE_BODY: usize = 64 * 1024;

/// What the gateway adds to a proxied request.
pub struct Forwarded<'a> {
    /// The client's address (`X-Forwarded-For`).
    pub peer: SocketAddr,
    /// The client came over TLS, terminated here (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// `X-Request-Id`.
    pub request_id: &'a [u8],
    /// The body's model (`X-Gateway-Model-Name`).
    pub model: Option<&'a str>,
    /// The whole body.
    pub body: &'a Bytes,
    /// Headers set from a verified JWT's claims (`claimToHeaders`).
    pub claims: Option<ClaimHeaders<'a>>,
}

/// Request headers from a verified token's claims.
#[derive(Clone, Copy)]
pub struct ClaimHeaders<'a> {
    /// Header names the gateway owns on this rule: the client's copies are dropped.
    pub strip: &'a [String],
    /// (lowercase name, value) to send.
    pub set: &'a [(String, String)],
}

/// Serialise the proxied request for endpoint `ep_addr` into `buf`: the client's
/// head without hop-by-hop fields, `X-Forwarded-*`, `X-Request-Id`, the model
/// header, `Content-Length`, and the body when it is at most [`INLINE_BODY`].
///
/// The target goes out in origin-form. For an absolute-form target
/// (`GET http://a.example/x`) that is its path and query, and its authority
/// replaces the client's `Host` field (RFC 9112 §3.2.2). Without either, as an
/// HTTP/1.0 client may send, `Host` is the endpoint's address.
pub fn write_request(
    head: &RequestHead,
    fwd: &Forwarded<'_>,
    ep_addr: SocketAddr,
    buf: &mut Vec<u8>,
) {
    buf.clear();
    buf.extend_from_slice(head.method_bytes());
    buf.push(b' ');
    buf.extend_from_slice(head.target_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = head.authority();
    let mut has_host = false;
    let mut xff: Option<&[u8]> = None;
    for (name, value) in head.fields() {
        if head.is_hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff = Some(value);
            continue;
        }
        if REPLACED_UPSTREAM
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        {
            continue;
        }
        if fwd.claims.is_some_and(|c| {
            c.strip
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        }) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            if authority.is_some() {
                continue;
            }
            has_host = true;
        }
        write::header(buf, name, value);
    }
    match authority {
        Some(a) => write::header(buf, "host", a.as_bytes()),
        None if !has_host => {
            let host = ep_addr.to_string();
            write::header(buf, "host", host.as_bytes());
        }
        None => {}
    }
    buf.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = xff {
        buf.extend_from_slice(prev);
        buf.extend_from_slice(b", ");
    }
    write_ip(buf, fwd.peer.ip());
    buf.extend_from_slice(b"\r\n");
    let proto: &[u8] = if fwd.tls { b"https" } else { b"http" };
    write::header(buf, "x-forwarded-proto", proto);
    write::header(buf, "x-request-id", fwd.request_id);
    if let Some(m) = fwd.model {
        write::header(buf, MODEL_HEADER, m.as_bytes());
    }
    for (name, value) in fwd.claims.iter().flat_map(|c| c.set) {
        write::header(buf, name, value.as_bytes());
    }
    if !fwd.body.is_empty() || matches!(head.method_bytes(), b"POST" | b"PUT" | b"PATCH") {
        write::header_u64(buf, "content-length", fwd.body.len() as u64);
    }
    buf.extend_from_slice(b"\r\n");
    if fwd.body.len() <= INLINE_BODY {
        buf.extend_from_slice(fwd.body);
    }
}

/// `ip` in its usual text form, straight into `buf`: IPv4 digit by digit
/// (`fmt` machinery cost ~1,000 instructions per request here), IPv6
/// through `Display` (no temporary `String` either way).
pub(crate) fn write_ip(buf: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                if octet >= 100 {
                    buf.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    buf.push(b'0' + octet / 10 % 10);
                }
                buf.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = std::io::Write::write_fmt(buf, format_args!("{v6}"));
        }
    }
}

/// The request line, `host` and `user-agent` of a gateway-made request.
fn request_head(out: &mut Vec<u8>, method: &str, path: &str, host: SocketAddr) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write::header(out, "host", host.to_string().as_bytes());
    write::header(out, "user-agent", b"shardgate");
}

/// Serialise a gateway-made JSON `POST` (batched calls, inference probes).
pub fn write_post(
    path: &str,
    host: SocketAddr,
    extra: &[(&str, &[u8])],
    body: &[u8],
    out: &mut Vec<u8>,
) {
    request_head(out, "POST", path, host);
    write::header(out, "content-type", b"application/json");
    for (name, value) in extra {
        write::header(out, name, value);
    }
    write::header_u64(out, "content-length", body.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Serialise a gateway-made `GET` (scrapes, health checks).
pub fn write_get(path: &str, host: SocketAddr, out: &mut Vec<u8>) {
    request_head(out, "GET", path, host);
    write::header(out, "accept", b"*/*");
    out.extend_from_slice(b"\r\n");
}

/// How long an upstream read waits before the client socket is watched for a
/// disconnect (10 ms): a fast exchange pays no poll and cancel for the watch.
pub const WATCH_AFTER: Duration = Duration::from_millis(10);

/// Outcome of waiting on an upstream read while watching the client.
pub enum Watched {
    /// The read finished.
    Read(std::io::Result<usize>, BytesMut),
    /// The deadline passed.
    TimedOut,
    /// The client disconnected.
    ClientGone,
}

/// Read once from the upstream, giving up at `deadline` or after `idle` of
/// silence, whichever comes first, and abandoning the read if the client (when
/// given) disconnects meanwhile (pipelined client bytes stop the watch).
///
/// One timer serves both waits, first the point where the watch starts, then
/// the deadline. It is this read's own and is dropped (deregistered) when the
/// read returns: a timer that outlived its read, re-armed by the next, would
/// sit in the timer wheel at its watch point and come due there for nothing.
pub async fn read_watched(
    client: Option<&TcpStream>,
    conn: &mut UpstreamConn,
    (deadline, idle): (Instant, Duration),
    watch: &mut bool,
) -> Watched {
    let now = Instant::now();
    let until = deadline.min(now + idle);
    let buf = std::mem::take(&mut conn.buf);
    // Pinned where they are made (a `let` first would copy them there).
    let mut read = std::pin::pin!(conn.stream.read_into(buf));
    // Most reads finish quickly: start watching the client only once this one
    // has waited WATCH_AFTER, so a fast exchange costs no poll and cancel.
    let watch_from = client
        .filter(|_| *watch)
        .map(|c| (c, now + WATCH_AFTER))
        .filter(|(_, at)| *at < until);
    let mut timer = std::pin::pin!(monoio::time::sleep_until(
        watch_from.map_or(until, |(_, at)| at)
    ));
    monoio::select! {
        (res, b) = &mut read => return Watched::Read(res, b),
        _ = timer.as_mut() => {}
    }
    let Some((client, _)) = watch_from else {
        return Watched::TimedOut;
    };
    timer.as_mut().reset(until);
    loop {
        let watching = *watch;
        monoio::select! {
            (res, b) = &mut read => return Watched::Read(res, b),
            _ = timer.as_mut() => return Watched::TimedOut,
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

/// Timing and limits of one exchange.
pub struct ExchangeLimits<'a> {
    /// Codec limits for the response head.
    pub limits: &'a Limits,
    /// The whole exchange's deadline.
    pub deadline: Instant,
    /// Longest silence between upstream bytes.
    pub idle_timeout: Duration,
    /// The request was `HEAD` (the response has no body).
    pub head_request: bool,
}

/// Send `req` (and `tail`, a body too large to go with the head, when not empty)
/// and read the response head (1xx but 101 skipped), watching `client` for a
/// disconnect meanwhile (see [`read_watched`]). The body's first bytes stay in
/// `conn.buf`.
///
/// The connection is borrowed, not passed through: moving it and the head in
/// and out of this future by value copied ~450 bytes three times per request.
pub async fn send_and_read_head(
    conn: &mut UpstreamConn,
    req: &mut Vec<u8>,
    tail: Option<&Bytes>,
    client: Option<&TcpStream>,
    lim: &ExchangeLimits<'_>,
) -> Result<ResponseHead, UpstreamError> {
    let (res, b) = conn.stream.write_all(std::mem::take(req)).await;
    *req = b;
    if let Err(e) = res {
        if let Some(bridged) = carried(&e) {
            return Err(bridged);
        }
        return Err(if conn.reused {
            UpstreamError::new(Kind::Stale, "connection closed before the response")
        } else {
            UpstreamError::new(Kind::Send, "connection reset while sending")
        });
    }
    if let Some(body) = tail.filter(|b| !b.is_empty()) {
        if let Err(e) = conn.stream.write_bytes(body).await {
            if let Some(bridged) = carried(&e) {
                return Err(bridged);
            }
            return Err(UpstreamError::new(
                Kind::Closed,
                "connection reset while sending the body",
            ));
        }
    }
    let mut watch = true;
    let mut got_bytes = false;
    loop {
        if !conn.buf.is_empty() {
            got_bytes = true;
            match split_response_head(&mut conn.buf, lim.head_request, lim.limits) {
                Ok(Some(resp)) => {
                    if resp.is_informational() && resp.status() != 101 {
                        continue;
                    }
                    if resp.has_other_transfer_coding() {
                        return Err(UpstreamError::new(
                            Kind::Closed,
                            "response uses a transfer coding other than chunked",
                        ));
                    }
                    return Ok(resp);
                }
                Ok(None) => {}
                Err(e) => return Err(UpstreamError::new(Kind::Protocol, e.message)),
            }
        }
        let times = (lim.deadline, lim.idle_timeout);
        match read_watched(client, conn, times, &mut watch).await {
            Watched::Read(Ok(0), _) | Watched::Read(Err(_), _) => {
                return Err(if conn.reused && !got_bytes {
                    UpstreamError::new(Kind::Stale, "connection closed before the response")
                } else {
                    UpstreamError::new(Kind::Closed, "connection closed before the response head")
                });
            }
            Watched::Read(Ok(_), b) => conn.buf = b,
            Watched::TimedOut => {
                return Err(UpstreamError::new(
                    Kind::Timeout,
                    "no response head in time",
                ))
            }
            Watched::ClientGone => {
                return Err(UpstreamError::new(Kind::ClientGone, "the client went away"))
            }
        }
    }
}

/// The exchange failure an HTTP/2 bridge put inside an `io::Error`, with its
/// kind (a stale pooled HTTP/2 connection, a refused connect, …).
fn carried(e: &std::io::Error) -> Option<UpstreamError> {
    e.get_ref()?.downcast_ref::<UpstreamError>().cloned()
}

/// Largest whole response body the gateway reads for itself (8 MiB).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
}

/// Send `req` and read the whole response (body bounded by [`MAX_BODY`]) by
/// `deadline`: batched calls and the control thread's requests.
pub async fn exchange_whole(
    mut conn: UpstreamConn,
    req: &mut Vec<u8>,
    deadline: Instant,
    idle_timeout: Duration,
) -> Result<(Reply, UpstreamConn), UpstreamError> {
    let limits = Limits::default();
    let lim = ExchangeLimits {
        limits: &limits,
        deadline,
        idle_timeout,
        head_request: false,
    };
    let head = send_and_read_head(&mut conn, req, None, None, &lim).await?;
    let mut dec = BodyDecoder::new(head.framing());
    let mut body = Vec::new();
    let mut watch = false;
    loop {
        while !conn.buf.is_empty() && !dec.is_done() {
            let d = dec
                .decode(&conn.buf)
                .map_err(|e| UpstreamError::new(Kind::Protocol, e.message))?;
            if let Some(r) = d.data.clone() {
                if body.len() + r.len() > MAX_BODY {
                    return Err(UpstreamError::new(
                        Kind::Protocol,
                        "response body too large",
                    ));
                }
                body.extend_from_slice(&conn.buf[r]);
            }
            conn.buf.advance(d.consumed);
            if d.consumed == 0 && d.data.is_none() {
                break;
            }
        }
        if dec.is_done() {
            let keep_alive = head.keep_alive() && conn.buf.is_empty();
            let reply = Reply {
                status: head.status(),
                body,
                keep_alive,
            };
            return Ok((reply, conn));
        }
        let times = (deadline, idle_timeout);
        match read_watched(None, &mut conn, times, &mut watch).await {
            Watched::Read(Ok(0), b) => {
                conn.buf = b;
                dec.on_eof()
                    .map_err(|_| UpstreamError::new(Kind::Closed, "response body truncated"))?;
                let reply = Reply {
                    status: head.status(),
                    body,
                    keep_alive: false,
                };
                return Ok((reply, conn));
            }
            Watched::Read(Ok(_), b) => conn.buf = b,
            Watched::Read(Err(_), _) => {
                return Err(UpstreamError::new(
                    Kind::Closed,
                    "connection reset mid-body",
                ))
            }
            Watched::TimedOut | Watched::ClientGone => {
                return Err(UpstreamError::new(
                    Kind::Timeout,
                    "response body not in time",
                ))
            }
        }
    }
}

/// An endpoint as the control thread reaches it: its address, over TLS when
/// a `BackendTLSPolicy` covers it.
#[derive(Clone)]
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    /// Its TLS settings; `None` = plaintext.
    pub tls: Option<Arc<UpstreamTls>>,
    /// Its port speaks HTTP/2 only: requests go over HTTP/2 streams
    /// ([`crate::h2_bridge`]).
    pub h2: bool,
}

impl Target {
    /// A fresh keep-alive client to it.
    pub fn client(&self) -> Client {
        let mut c = Client::new(self.addr, self.tls.clone());
        c.h2 = self.h2.then(crate::h2_io::Limits::default);
        c
    }
}

/// TLS handshakes the control thread's clients completed (scrapes, health
/// checks, model polls, JWKS fetches), full and resumed: off the request path,
/// so one process-wide pair of counters
/// (`gateway_control_tls_handshakes_total`).
pub static CONTROL_TLS_HANDSHAKES: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// A keep-alive client to one endpoint for the control thread (scrapes, health
/// checks): connects lazily, reconnects after any error, retries once on a fresh
/// connection when a kept-alive one turns out stale.
pub struct Client {
    addr: SocketAddr,
    tls: Option<Arc<UpstreamTls>>,
    /// Over HTTP/2 streams, under these limits.
    h2: Option<crate::h2_io::Limits>,
    conn: Option<UpstreamConn>,
    req: Vec<u8>,
}

impl Client {
    /// A client for `addr`, over TLS with `tls`.
    pub fn new(addr: SocketAddr, tls: Option<Arc<UpstreamTls>>) -> Self {
        Client {
            addr,
            tls,
            h2: None,
            conn: None,
            req: Vec::new(),
        }
    }

    /// Its TLS settings; `None` = plaintext.
    pub fn tls(&self) -> Option<&Arc<UpstreamTls>> {
        self.tls.as_ref()
    }

    /// `GET path` within `timeout`.
    pub async fn get(&mut self, path: &str, timeout: Duration) -> Result<Reply, UpstreamError> {
        let mut req = std::mem::take(&mut self.req);
        write_get(path, self.addr, &mut req);
        let r = self.call(&mut req, timeout).await;
        self.req = req;
        r
    }

    /// `POST path` with a JSON body within `timeout`.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Reply, UpstreamError> {
        let mut req = std::mem::take(&mut self.req);
        write_post(path, self.addr, &[], body, &mut req);
        let r = self.call(&mut req, timeout).await;
        self.req = req;
        r
    }

    async fn call(&mut self, req: &mut Vec<u8>, timeout: Duration) -> Result<Reply, UpstreamError> {
        let deadline = Instant::now() + timeout;
        let mut retried = false;
        loop {
            let conn = match self.conn.take() {
                Some(c) => c,
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let c = connect(self.addr, left, self.tls.as_ref(), self.h2.as_ref()).await?;
                    if let Some(n) = c
                        .stream
                        .tls_handshake()
                        .and_then(|i| CONTROL_TLS_HANDSHAKES.get(i))
                    {
                        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    c
                }
            };
            // The request bytes come back from the write: a stale retry resends them.
            match exchange_whole(conn, req, deadline, timeout).await {
                Ok((reply, conn)) => {
                    if reply.keep_alive {
                        self.conn = Some(UpstreamConn {
                            reused: true,
                            ..conn
                        });
                    }
                    return Ok(reply);
                }
                Err(e) if e.kind == Kind::Stale && !retried => retried = true,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut ips: Vec<std::net::IpAddr> = vec![
            "::1".parse().unwrap(),
            "2001:db8::8a2e:370:7334".parse().unwrap(),
            "::ffff:10.0.0.1".parse().unwrap(),
        ];
        for a in [0u8, 1, 9, 10, 99, 100, 109, 110, 199, 200, 255] {
            for b in [0u8, 7, 42, 250] {
                ips.push(std::net::Ipv4Addr::new(a, b, 255 - a, a / 3).into());
            }
        }
        for ip in ips {
            let mut buf = b"x".to_vec();
            write_ip(&mut buf, ip);
            assert_eq!(buf, format!("x{ip}").into_bytes(), "{ip}");
        }
    }

    /// What `write_request` sends for the raw client head `raw`, from a
    /// cleartext client.
    fn forwarded(raw: &[u8]) -> String {
        forwarded_from(raw, false)
    }

    /// What `write_request` sends for `raw`, from a client on TLS when `tls`.
    fn forwarded_from(raw: &[u8], tls: bool) -> String {
        let buf = Bytes::copy_from_slice(raw);
        let (head, _) =
            shardgate_http::parse_request_head(&buf, &shardgate_http::Limits::default())
                .unwrap()
                .unwrap();
        let body = Bytes::new();
        let fwd = Forwarded {
            peer: "10.0.0.9:5000".parse().unwrap(),
            tls,
            request_id: b"rid",
            model: None,
            body: &body,
            claims: None,
        };
        let mut out = Vec::new();
        write_request(&head, &fwd, "127.0.0.1:9000".parse().unwrap(), &mut out);
        String::from_utf8(out).unwrap()
    }

    /// A one-connection TLS server for `localhost` (certificate from a fresh
    /// CA, returned as PEM) that answers one request with `response`, then
    /// sends `close_notify` and keeps the socket open until the client closes.
    fn tls_server_once(response: &'static [u8]) -> (SocketAddr, Vec<u8>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        use std::io::{Read, Write};
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(cfg)).unwrap();
            let mut s = rustls::StreamOwned::new(conn, sock);
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(response).unwrap();
            s.conn.send_close_notify();
            s.flush().unwrap();
            // No FIN: the client must end at close_notify, not wait for EOF.
            let _ = s.sock.read(&mut buf);
        });
        (addr, ca.pem().into_bytes())
    }

    /// A local server that accepts `n` connections and holds them open (the
    /// handle gives them back, for the test to keep until it ends).
    fn held_peer(
        n: usize,
    ) -> (
        SocketAddr,
        std::thread::JoinHandle<Vec<std::net::TcpStream>>,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = std::thread::spawn(move || {
            (0..n)
                .map(|_| listener.accept().unwrap().0)
                .collect::<Vec<_>>()
        });
        (addr, held)
    }

    /// How many live idle connections `p` holds for endpoint 0 at `at`
    /// (taken out to count them).
    fn idle_count(p: &mut ConnPool, at: Instant) -> usize {
        let mut n = 0;
        while p.take_live(0, at).is_some() {
            n += 1;
        }
        n
    }

    #[test]
    fn the_pool_keeps_what_recent_load_needed_and_trims_to_its_floor_after() {
        let (addr, held) = held_peer(10);
        shardgate_runtime::block_on(async move {
            let mut conns = Vec::new();
            for _ in 0..10 {
                conns.push(
                    connect(addr, Duration::from_secs(5), None, None)
                        .await
                        .unwrap(),
                );
            }
            let timeout = Duration::from_secs(4);
            let t0 = Instant::now();
            // Quiet endpoint: five handed back, the floor (2) kept.
            let mut p = ConnPool::new(1, 2, timeout);
            for c in conns.drain(..5) {
                p.put(0, c, t0);
            }
            assert_eq!(idle_count(&mut p, t0), 2);
            // Busy endpoint: its pool ran dry (a request connected), so every
            // connection handed back within the idle timeout is kept.
            let mut p = ConnPool::new(1, 2, timeout);
            assert!(p.take(0, t0).is_none());
            for c in conns.drain(..) {
                p.put(0, c, t0 + Duration::from_secs(1));
            }
            assert_eq!(idle_count(&mut p, t0 + Duration::from_secs(1)), 5);
        })
        .unwrap();
        drop(held.join());
    }

    #[test]
    fn a_busy_pool_is_trimmed_once_the_load_has_gone() {
        let (addr, held) = held_peer(4);
        shardgate_runtime::block_on(async move {
            let timeout = Duration::from_secs(4);
            let t0 = Instant::now();
            let mut p = ConnPool::new(1, 1, timeout);
            assert!(p.take(0, t0).is_none());
            for i in 0..4u64 {
                let c = connect(addr, Duration::from_secs(5), None, None)
                    .await
                    .unwrap();
                // The last one comes back after the dry spell is past the
                // idle timeout: the pool goes back to its floor.
                let at = t0 + Duration::from_millis(if i < 3 { 3_000 } else { 4_500 });
                p.put(0, c, at);
            }
            assert_eq!(
                idle_count(&mut p, t0 + Duration::from_millis(4_500)),
                3,
                "three kept while busy, the fourth replaced the oldest"
            );
        })
        .unwrap();
        drop(held.join());
    }

    #[test]
    fn a_close_notify_ends_a_response_read_to_end_of_file() {
        let (addr, ca_pem) = tls_server_once(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello");
        let mut roots = rustls::RootCertStore::empty();
        crate::upstream_tls::add_pem(&mut roots, &ca_pem).unwrap();
        let tls = Arc::new(UpstreamTls::new("localhost", roots, &[], "test".into()).unwrap());
        let started = std::time::Instant::now();
        let reply = shardgate_runtime::block_on(async move {
            let conn = connect(addr, Duration::from_secs(5), Some(&tls), None).await?;
            assert!(conn.stream.is_tls());
            let mut req = Vec::new();
            write_get("/x", addr, &mut req);
            let deadline = Instant::now() + Duration::from_secs(10);
            exchange_whole(conn, &mut req, deadline, Duration::from_secs(10))
                .await
                .map(|(r, _)| r)
        })
        .unwrap()
        .unwrap();
        assert_eq!((reply.status, &reply.body[..]), (200, &b"hello"[..]));
        assert!(!reply.keep_alive);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited for the socket to close"
        );
    }

    #[test]
    fn a_handshake_failure_is_a_tls_connect_error_with_its_reason() {
        let (addr, _) = tls_server_once(b"");
        let tls = Arc::new(
            UpstreamTls::new(
                "localhost",
                crate::upstream_tls::system_roots(),
                &[],
                "test".into(),
            )
            .unwrap(),
        );
        let e = shardgate_runtime::block_on(async move {
            connect(addr, Duration::from_secs(5), Some(&tls), None)
                .await
                .err()
        })
        .unwrap()
        .expect("an unknown CA must not connect");
        assert_eq!(e.kind, Kind::Tls);
        assert!(e.retryable());
        assert_eq!(
            e.static_message(),
            "TLS: certificate signed by an unknown CA"
        );
    }

    #[test]
    fn claim_headers_replace_the_clients_copies() {
        let raw = b"POST /v1/x HTTP/1.1\r\nHost: h\r\nX-JWT-Sub: forged\r\nx-other: 1\r\n\r\n";
        let buf = Bytes::copy_from_slice(raw);
        let (head, _) =
            shardgate_http::parse_request_head(&buf, &shardgate_http::Limits::default())
                .unwrap()
                .unwrap();
        let body = Bytes::new();
        let strip = ["x-jwt-sub".to_string(), "x-tier".to_string()];
        let set = [("x-jwt-sub".to_string(), "user-1".to_string())];
        let fwd = Forwarded {
            peer: "10.0.0.9:5000".parse().unwrap(),
            tls: false,
            request_id: b"rid",
            model: None,
            body: &body,
            claims: Some(ClaimHeaders {
                strip: &strip,
                set: &set,
            }),
        };
        let mut out = Vec::new();
        write_request(&head, &fwd, "127.0.0.1:9000".parse().unwrap(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("forged"), "{text}");
        assert!(text.contains("\r\nx-jwt-sub: user-1\r\n"), "{text}");
        assert!(text.contains("\r\nx-other: 1\r\n"), "{text}");
    }

    fn hosts(req: &str) -> Vec<&str> {
        req.split("\r\n")
            .filter_map(|l| l.split_once(": "))
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v)
            .collect()
    }

    #[test]
    fn absolute_form_goes_upstream_in_origin_form_with_its_authority_as_host() {
        let req = forwarded(b"GET http://evil.example/x?y=1 HTTP/1.1\r\nHost: a\r\nX-K: v\r\n\r\n");
        assert!(req.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{req}");
        assert_eq!(hosts(&req), ["evil.example"], "{req}");
        assert!(req.contains("X-K: v\r\n"), "{req}");
        let req = forwarded(b"GET https://b.example:8443 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(req.starts_with("GET / HTTP/1.1\r\n"), "{req}");
        assert_eq!(hosts(&req), ["b.example:8443"], "{req}");
    }

    #[test]
    fn forwarded_proto_says_how_the_client_came_and_replaces_the_clients_own() {
        let raw = b"GET /v1/models HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: ftp\r\n\r\n";
        let protos = |req: &str| -> Vec<String> {
            req.lines()
                .filter_map(|l| l.strip_prefix("x-forwarded-proto: "))
                .map(str::to_string)
                .collect()
        };
        let req = forwarded_from(raw, false);
        assert_eq!(protos(&req), ["http"], "{req}");
        let req = forwarded_from(raw, true);
        assert_eq!(protos(&req), ["https"], "{req}");
    }

    #[test]
    fn origin_form_keeps_the_clients_host_and_http10_gets_the_endpoints() {
        let req = forwarded(b"GET /v1/models HTTP/1.1\r\nHost: api.example\r\n\r\n");
        assert!(req.starts_with("GET /v1/models HTTP/1.1\r\n"), "{req}");
        assert_eq!(hosts(&req), ["api.example"], "{req}");
        let req = forwarded(b"GET /v1/models HTTP/1.0\r\n\r\n");
        assert_eq!(hosts(&req), ["127.0.0.1:9000"], "{req}");
    }
}
