//! HTTP/2 connections to gRPC backends, per thread (a shard, or the control
//! thread's health checks): each backend address has
//! a list of connections, and a call takes a stream on the first one with
//! fewer than `--h2-upstream-streams-per-connection` streams open (and that
//! the backend's own `SETTINGS_MAX_CONCURRENT_STREAMS` admits), else opens a
//! new one. Calls multiplex on the same connections; nothing is shared with
//! other shards (the list is thread-local, and each shard is one thread).
//! A connection that fails is marked closed by its driver task and skipped;
//! a stream that cannot open on a pooled connection is reported as a stale
//! connection (retried on another endpoint by the attempt machine).
//!
//! **TLS.** A backend that a `BackendTLSPolicy` covers is reached over TLS
//! with ALPN `h2` (the policy's CA, names and session cache, as for HTTP/1.1
//! backends, [`crate::upstream_tls`]); a backend that does not choose `h2`
//! fails the connect with a clear error. The handshake runs on the shard's own
//! I/O (`tls::connect`), then `h2` drives the rustls connection
//! through [`TlsIo`]. Plaintext and TLS connections to one
//! address are pooled apart, so a reload that adds or removes a policy never
//! sends a stream over the wrong kind.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::SendStream;
use http::Request;
use monoio::net::TcpStream;
use monoio_compat::StreamWrapper;

use crate::error::{UpstreamError, UpstreamErrorKind};
use crate::h2_io::tls_io::TlsIo;
use crate::h2_io::{Limits, IO_BUFFER};
use crate::upstream_tls::UpstreamTls;

/// One pooled connection.
struct Conn {
    send: SendRequest<Bytes>,
    /// Streams open on it (leases alive).
    streams: Cell<usize>,
    /// Set by the connection's driver task when it ends.
    closed: Rc<Cell<bool>>,
}

/// A pool key: the backend's address, and whether the connection is TLS.
type Key = (SocketAddr, bool);

thread_local! {
    /// This shard's connections, by backend address and TLS.
    static POOL: RefCell<HashMap<Key, Vec<Rc<Conn>>>> = RefCell::new(HashMap::new());
}

/// A stream's hold on its connection.
pub struct Lease(Rc<Conn>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.streams.set(self.0.streams.get().saturating_sub(1));
    }
}

/// An open upstream stream: the request body's sender and the answer.
pub struct UpstreamStream {
    /// Request body (and trailers).
    pub send: SendStream<Bytes>,
    /// The response head, then its body.
    pub response: ResponseFuture,
    /// Keeps the connection's stream count.
    pub _lease: Lease,
}

/// Close this thread's pooled connections, inside its runtime, before the
/// thread ends: drop their handles, then wait (at most `within`) for each
/// connection's driver task to see its last handle go, send GOAWAY and end.
/// Left to the thread-local's destructor at thread exit, the last handle woke
/// a task of a runtime that was gone, and the process aborted on SIGTERM.
/// A connection that a stream still holds (past the drain deadline) is left
/// to that stream.
pub async fn close_all(within: Duration) {
    let conns: Vec<Rc<Conn>> = POOL.with(|p| {
        p.borrow_mut()
            .drain()
            .flat_map(|(_, conns)| conns)
            .collect()
    });
    let ending: Vec<Rc<Cell<bool>>> = conns
        .iter()
        .filter(|c| Rc::strong_count(c) == 1)
        .map(|c| c.closed.clone())
        .collect();
    drop(conns);
    let deadline = std::time::Instant::now() + within;
    while ending.iter().any(|c| !c.get()) && std::time::Instant::now() < deadline {
        // Polling interval of a bounded wait for the driver tasks to end.
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Open connections to `addr` on this shard (for tests and metrics).
pub fn connections(addr: SocketAddr) -> usize {
    POOL.with(|p| {
        let p = p.borrow();
        [false, true]
            .iter()
            .filter_map(|tls| p.get(&(addr, *tls)))
            .map(|v| v.iter().filter(|c| !c.closed.get()).count())
            .sum()
    })
}

async fn connect(
    addr: SocketAddr,
    tls: Option<&Arc<UpstreamTls>>,
    lim: &Limits,
    timeout: Duration,
) -> Result<Rc<Conn>, UpstreamError> {
    let deadline = std::time::Instant::now() + timeout;
    let tcp = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Connect,
                format!("connect to {addr}: {e}"),
            ))
        }
        Err(_) => {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Connect,
                format!("connect to {addr} timed out"),
            ))
        }
    };
    let _ = tcp.set_nodelay(true);
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let send = match tls {
        None => {
            let buf = IO_BUFFER;
            let io = StreamWrapper::new_with_buffer_size(tcp, buf, buf);
            handshake(io, addr, lim, left).await?
        }
        Some(tls) => {
            let io = tls_handshake(tcp, addr, tls, left).await?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            handshake(io, addr, lim, left).await?
        }
    };
    let (send, closed) = send;
    let c = Rc::new(Conn {
        send,
        streams: Cell::new(0),
        closed,
    });
    let key = (addr, tls.is_some());
    POOL.with(|p| p.borrow_mut().entry(key).or_default().push(c.clone()));
    Ok(c)
}

/// The TLS handshake (ALPN `h2`) within `timeout`, as an `h2` transport.
async fn tls_handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: &Arc<UpstreamTls>,
    timeout: Duration,
) -> Result<TlsIo<rustls::ClientConnection>, UpstreamError> {
    let handshake = crate::upstream_tls::tls_handshake(tcp, addr, tls, true);
    let stream = match monoio::time::timeout(timeout, handshake).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Connect,
                format!("TLS handshake with {addr} timed out"),
            ))
        }
    };
    if stream.alpn() != Some(b"h2") {
        return Err(UpstreamError::new(
            UpstreamErrorKind::Tls,
            "TLS: the backend did not choose HTTP/2 (ALPN h2)",
        ));
    }
    let (sock, conn, rx) = stream.into_parts();
    Ok(TlsIo::new(sock, conn, rx, IO_BUFFER))
}

/// The HTTP/2 handshake on `io` within `timeout`; its driver runs as a task
/// on this thread and sets the returned flag when the connection ends.
async fn handshake<T>(
    io: T,
    addr: SocketAddr,
    lim: &Limits,
    timeout: Duration,
) -> Result<(SendRequest<Bytes>, Rc<Cell<bool>>), UpstreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let handshake = h2::client::Builder::new()
        .initial_window_size(lim.stream_window)
        .initial_connection_window_size(lim.connection_window)
        .max_frame_size(lim.max_frame_bytes)
        .max_header_list_size(lim.max_header_list_bytes)
        .header_table_size(lim.header_table_bytes)
        .max_send_buffer_size(lim.max_send_buffer)
        .enable_push(false)
        .handshake::<_, Bytes>(io);
    let (send, conn) = match monoio::time::timeout(timeout, handshake).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Send,
                format!("HTTP/2 handshake with {addr}: {e}"),
            ))
        }
        Err(_) => {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Timeout,
                format!("HTTP/2 handshake with {addr} timed out"),
            ))
        }
    };
    let closed = Rc::new(Cell::new(false));
    let flag = closed.clone();
    monoio::spawn(crate::contain::contained(
        crate::contain::Task::UpstreamConnection,
        async move {
            // Set however the driver ends, a contained panic included.
            let _closed = SetOnDrop(flag);
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        },
    ));
    Ok((send, closed))
}

/// Makes sure this shard has a live connection to `addr` (over TLS with
/// `tls`) with room for another stream, connecting within `timeout` when it
/// has none: a connect failure is then an [`UpstreamErrorKind::Connect`] (or
/// `Tls`) error before any request is written, as for HTTP/1.1 backends.
pub async fn ensure(
    addr: SocketAddr,
    tls: Option<&Arc<UpstreamTls>>,
    lim: &Limits,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    let cap = lim.upstream_streams_per_connection.max(1);
    let room = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.entry((addr, tls.is_some())).or_default();
        list.retain(|c| !c.closed.get());
        list.iter().any(|c| c.streams.get() < cap)
    });
    if !room {
        Box::pin(connect(addr, tls, lim, timeout)).await?;
    }
    Ok(())
}

/// Opens a stream to `addr` (over TLS with `tls`) carrying `req` (`end`: no
/// body follows).
pub async fn open_stream(
    addr: SocketAddr,
    tls: Option<&Arc<UpstreamTls>>,
    lim: &Limits,
    timeout: Duration,
    req: Request<()>,
    end: bool,
) -> Result<UpstreamStream, UpstreamError> {
    let mut req = req;
    if let Some(t) = tls {
        // Over TLS: `:scheme https` and the name the certificate was verified
        // for as `:authority`, as a gRPC client of that server would send.
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        if let rustls::pki_types::ServerName::DnsName(n) = &t.server_name {
            if let Ok(a) = http::uri::Authority::try_from(n.as_ref()) {
                parts.authority = Some(a);
            }
        }
        if let Ok(u) = http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    let cap = lim.upstream_streams_per_connection.max(1);
    let pooled = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.entry((addr, tls.is_some())).or_default();
        list.retain(|c| !c.closed.get());
        list.iter().find(|c| c.streams.get() < cap).cloned()
    });
    let (conn, fresh) = match pooled {
        Some(c) => (c, false),
        // Boxed: a new connection is rare next to a pooled stream, and its
        // handshakes would otherwise sit inline in every call's future.
        None => (Box::pin(connect(addr, tls, lim, timeout)).await?, true),
    };
    conn.streams.set(conn.streams.get() + 1);
    let lease = Lease(conn.clone());
    let mut send = conn.send.clone();
    let kind = if fresh {
        UpstreamErrorKind::Send
    } else {
        UpstreamErrorKind::Stale
    };
    match monoio::time::timeout(timeout, poll_fn(|cx| send.poll_ready(cx))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            conn.closed.set(true);
            return Err(UpstreamError::new(
                kind,
                format!("HTTP/2 stream to {addr}: {e}"),
            ));
        }
        Err(_) => {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Timeout,
                format!("no HTTP/2 stream to {addr} in time"),
            ))
        }
    }
    let (response, stream) = send.send_request(req, end).map_err(|e| {
        conn.closed.set(true);
        UpstreamError::new(kind, format!("HTTP/2 request to {addr}: {e}"))
    })?;
    Ok(UpstreamStream {
        send: stream,
        response,
        _lease: lease,
    })
}

/// `grpc.health.v1.Health/Check` with an empty service name (the server as a
/// whole), within `timeout`: `Ok` when the answer is `SERVING` with
/// `grpc-status` 0, else why not.
pub async fn health_check(
    addr: SocketAddr,
    tls: Option<&Arc<UpstreamTls>>,
    timeout: Duration,
) -> Result<(), String> {
    let check = async {
        let mut req = Request::new(());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = http::Uri::from_static("http://upstream/grpc.health.v1.Health/Check");
        let h = req.headers_mut();
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert("te", http::HeaderValue::from_static("trailers"));
        let lim = Limits::default();
        let mut s = open_stream(addr, tls, &lim, timeout, req, false)
            .await
            .map_err(|e| e.message().to_owned())?;
        // One empty HealthCheckRequest: flag 0, length 0.
        s.send
            .send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .map_err(|e| e.to_string())?;
        let resp = s.response.await.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("HTTP status {}", resp.status()));
        }
        let trailers_only = resp.headers().get("grpc-status").cloned();
        let mut body = resp.into_body();
        let mut msg = Vec::new();
        while let Some(d) = body.data().await {
            let d = d.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(d.len());
            if msg.len() + d.len() > 1024 {
                return Err("health answer too large".into());
            }
            msg.extend_from_slice(&d);
        }
        let status = match trailers_only {
            Some(s) => Some(s),
            None => body
                .trailers()
                .await
                .map_err(|e| e.to_string())?
                .and_then(|t| t.get("grpc-status").cloned()),
        };
        match status.as_ref().map(|v| v.as_bytes()) {
            Some(b"0") => {}
            Some(s) => return Err(format!("grpc-status {}", String::from_utf8_lossy(s))),
            None => return Err("no grpc-status".into()),
        }
        // HealthCheckResponse { status = 1 (SERVING) }: field 1, varint 1.
        match msg.get(5..) {
            Some([0x08, 0x01]) => Ok(()),
            Some([0x08, s]) => Err(format!("serving status {s}")),
            _ => Err("malformed HealthCheckResponse".into()),
        }
    };
    monoio::time::timeout(timeout, check)
        .await
        .map_err(|_| format!("no answer in {} ms", timeout.as_millis()))?
}

/// Sets its flag when dropped: a connection's `closed` mark.
struct SetOnDrop(Rc<Cell<bool>>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set(true);
    }
}
