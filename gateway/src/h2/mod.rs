//! HTTP/2 on the shards: the server side of `GRPC` listeners (h2c with prior
//! knowledge, what gRPC clients speak) and the client side to gRPC backends
//! ([`crate::h2_upstream`]), both on the shard's own monoio runtime.
//!
//! **Why the `h2` crate through `monoio-compat`, not a frame layer of our own.**
//! HTTP/2's hard parts are not the frame codec but its state: stream states,
//! two levels of flow control, HPACK with its dynamic table, SETTINGS
//! negotiation, and the defences (rapid reset, CONTINUATION floods, reset
//! floods, send-buffer bounds). `h2` (hyper's, used by tonic, linkerd2-proxy
//! and pingora) has all of it, hardened by the 2023–2024 CVEs, and does no I/O
//! of its own: it needs only an `AsyncRead + AsyncWrite`, which
//! `monoio_compat::StreamWrapper` gives over a monoio `TcpStream` (two 16 KiB
//! buffers per connection; its boxed read/write futures are reused, not
//! allocated per frame). Everything stays on the accepting core: the
//! connection future, its streams (each a `monoio::spawn`ed task on the same
//! thread, `!Send` state allowed) and the upstream pool
//! ([`crate::h2_upstream`]), which is per shard.
//! The cost is one copy per read and write through the compat buffers and
//! `h2`'s own allocations (a `Bytes` per DATA frame it hands over); the
//! figures are in `bench/results/h2.md`. A sans-IO frame layer of our own
//! would remove the copy but re-implement, and re-harden, the state above.
//!
//! **Per connection**: the handshake must finish within `--header-timeout`;
//! a connection with no open stream for `--client-idle-timeout` is closed
//! with GOAWAY; on drain the gateway sends GOAWAY and lets open streams end.
//! Every stream is a task that carries out the same [`crate::plan`] as an
//! HTTP/1.1 request: a gRPC call in [`call`], an HTTP request in [`openai`],
//! both on what `stream.rs` gives every stream.
//!
//! **Limits** ([`crate::h2_io::Limits`], each a CLI flag): concurrent streams (100),
//! header-list size (16 KiB: beyond it the stream is refused, and a
//! CONTINUATION flood is cut there), HPACK table (4 KiB: an HPACK
//! decompression bomb cannot grow it), stream and connection receive windows
//! (1 MiB and 2 MiB: the most a client can make the gateway buffer per stream
//! and connection), frame size (16 KiB), send buffer per stream (64 KiB),
//! rapid reset: at most 20 streams reset by the client before the gateway
//! accepted them (CVE-2023-44487; beyond it GOAWAY `ENHANCE_YOUR_CALM`), and
//! at most 1,024 streams the gateway had to reset for protocol errors.

pub mod call;
pub mod openai;
mod stream;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::Request;
use monoio::net::TcpStream;
use monoio::time::Instant;
use monoio_compat::StreamWrapper;

use self::stream::{header, Served, StreamCount};
use crate::h2_io::{tls_io, IO_BUFFER};
use crate::shard::{ConnGauge, Shard};
use crate::ticks::boundary_after;

/// The client connection preface of HTTP/2.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long an HTTP listener waits for a new connection's first bytes to tell
/// HTTP/2 from HTTP/1.1 (100 ms): a prior-knowledge client sends its preface
/// right after connecting; a connection silent that long is served as
/// HTTP/1.1 (and counted idle, so the connection cap can close it).
pub const SNIFF_WAIT: Duration = Duration::from_millis(100);

/// On an HTTP listener: whether the connection opens with the HTTP/2 preface
/// (prior knowledge, `curl --http2-prior-knowledge`). Waits for its first
/// bytes (at most `wait`) and peeks at them without reading: one readiness
/// wait and one `recv(MSG_PEEK)` per connection. `PRI ` is no HTTP/1.1
/// method, so four bytes that match decide.
pub(crate) async fn sniff_preface(tcp: &TcpStream, wait: Duration) -> bool {
    if monoio::time::timeout(wait, tcp.readable(false))
        .await
        .is_err()
    {
        return false;
    }
    // One peek: a client that sends fewer than 4 bytes first is served as
    // HTTP/1.1 (no waiting loop on a socket that stays readable).
    let mut head = [0u8; 24];
    let n = shardgate_runtime::io::peek_prefix(tcp, &mut head);
    n >= 4 && head[..n] == PREFACE[..n]
}

/// How often the connection loop looks at the drain flag and idle time, on
/// the shard's shared grid ([`crate::ticks`]: 64 connections cost the shard
/// one wake-up per tick, not 64 spread over it).
const TICK: Duration = Duration::from_millis(100);

/// Serve one HTTP/2 client connection (prior knowledge) until it closes,
/// idles out, errs, or the gateway drains.
pub(crate) async fn serve_connection(
    shard: Rc<Shard>,
    tcp: TcpStream,
    peer: SocketAddr,
    port: u16,
    open: ConnGauge,
) {
    let _ = tcp.set_nodelay(true);
    let io = StreamWrapper::new_with_buffer_size(tcp, IO_BUFFER, IO_BUFFER);
    serve_io(shard, io, peer, port, open, false).await
}

/// Serve HTTP/2 on a TLS connection whose client chose `h2` in ALPN.
pub(crate) async fn serve_tls(
    shard: Rc<Shard>,
    tls: crate::tls::TlsStream,
    peer: SocketAddr,
    port: u16,
    open: ConnGauge,
) {
    let (sock, conn, rx) = tls.into_parts();
    let io = tls_io::TlsIo::new(sock, conn, rx, IO_BUFFER);
    serve_io(shard, io, peer, port, open, true).await
}

/// Serve HTTP/2 on `io` (cleartext, or TLS terminated here when `tls`).
async fn serve_io<T>(
    shard: Rc<Shard>,
    io: T,
    peer: SocketAddr,
    port: u16,
    open: ConnGauge,
    tls: bool,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let _open = open;
    let lim = shard.settings.h2;
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(lim.max_concurrent_streams)
        .max_header_list_size(lim.max_header_list_bytes)
        .header_table_size(lim.header_table_bytes)
        .initial_window_size(lim.stream_window)
        .initial_connection_window_size(lim.connection_window)
        .max_frame_size(lim.max_frame_bytes)
        .max_send_buffer_size(lim.max_send_buffer)
        .max_pending_accept_reset_streams(lim.max_pending_resets)
        .max_local_error_reset_streams(Some(lim.max_error_resets));
    let handshake = b.handshake::<_, Bytes>(io);
    let mut conn = match monoio::time::timeout(shard.settings.header_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(shard = shard.id, %peer, error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(shard = shard.id, %peer, "HTTP/2 handshake timed out");
            return;
        }
    };
    let open_streams = Rc::new(Cell::new(0usize));
    // One timer for the connection's life, re-armed when it fires: accepting
    // a stream neither reads the clock nor touches the timer wheel (a new
    // `sleep` per accepted stream was an insert and a cancel per request).
    let tick = monoio::time::sleep_until(boundary_after(Instant::now(), TICK));
    let mut tick = std::pin::pin!(tick);
    let mut idle_since = Instant::now();
    let mut accepted = 0u64;
    let mut accepted_at_tick = 0u64;
    let mut draining = false;
    loop {
        monoio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    accepted += 1;
                    let guard = StreamCount::new(&open_streams);
                    let stream = serve_stream(shard.clone(), req, respond, peer, port, tls, guard);
                    monoio::spawn(crate::contain::contained(crate::contain::Task::Stream, stream));
                }
                Some(Err(e)) => {
                    tracing::debug!(shard = shard.id, %peer, error = %e, "HTTP/2 connection error");
                    break;
                }
                None => break,
            },
            _ = tick.as_mut() => {
                let now = Instant::now();
                tick.as_mut().reset(boundary_after(now, TICK));
                if open_streams.get() > 0 || accepted != accepted_at_tick {
                    idle_since = now;
                    accepted_at_tick = accepted;
                }
                let idle = now.duration_since(idle_since) >= shard.settings.client_idle_timeout;
                if !draining && (shard.shutdown.is_draining() || idle) {
                    draining = true;
                    conn.graceful_shutdown();
                }
            }
        }
    }
}

/// Serve one stream: a small task (what `monoio::spawn` copies into its cell
/// twice) whose protocol's future, gRPC or HTTP, is boxed once, sized for
/// that protocol alone. The whole lifecycle inline was a 2-copy spawn of
/// both protocols' state machines per stream.
async fn serve_stream(
    shard: Rc<Shard>,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    peer: SocketAddr,
    port: u16,
    tls: bool,
    _count: StreamCount,
) {
    let started = Instant::now();
    let state = shard.state_for_request();
    let mut guard = Served::new(&shard);
    let (parts, body) = req.into_parts();
    if crate::grpc::is_grpc(header(&parts.headers, "content-type")) {
        Box::pin(call::serve(
            &shard, &state, parts, body, respond, peer, port, tls, &mut guard, started,
        ))
        .await;
    } else {
        // HTTP over HTTP/2 (OpenAI-compatible): the same plan, forwarded over
        // HTTP/1.1 ([`openai`]).
        Box::pin(openai::serve(
            &shard, &state, parts, body, respond, peer, port, tls, &mut guard, started,
        ))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_task_is_small_and_its_protocol_future_boxed() {
        // `monoio::spawn` copies the task's future twice (into its cell, then
        // the cell into its box) per accepted stream; the whole gRPC or HTTP
        // lifecycle inline made that several KiB of copying per call.
        let task = future_size!(serve_stream; A, B, C, D, E, G, H);
        let grpc = future_size!(call::serve; A, B, C, D, E, G, H, I, J, K);
        eprintln!("stream task {task} bytes, gRPC call {grpc} bytes");
        assert!(task <= 1024, "the spawned stream future is {task} bytes");
        assert!(
            grpc > 2 * task,
            "the gRPC lifecycle ({grpc} bytes) is not the task's"
        );
    }
}
