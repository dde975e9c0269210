//! HTTP/2 over TLS: the rustls connection of a completed handshake (ALPN
//! `h2`, negotiated by [`crate::tls`] on the shard's own I/O) as a tokio
//! `AsyncRead + AsyncWrite` for the `h2` crate, over the socket's
//! `monoio-compat` wrapper: a client's connection to an `HTTPS` listener, or
//! the gateway's own to a gRPC backend behind a `BackendTLSPolicy`
//! (`h2_upstream`). Ciphertext goes through one 8 KiB stack buffer per
//! read; rustls holds at most its buffer limit (64 KiB) of unsent records, so
//! a client that does not read holds back writes instead of growing memory.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use monoio::net::TcpStream;
use monoio_compat::StreamWrapper;
use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tls::TlsSide;

/// A TLS connection (server side by default) driven through poll functions.
pub struct TlsIo<C: TlsSide = ServerConnection> {
    conn: C,
    io: StreamWrapper<TcpStream>,
    /// Ciphertext read, not yet taken by rustls.
    pending: BytesMut,
    /// The socket reached end of file.
    eof: bool,
}

/// rustls' ciphertext writer onto the socket: `WouldBlock` while the socket
/// cannot take more.
struct SocketWriter<'a, 'b> {
    io: &'a mut StreamWrapper<TcpStream>,
    cx: &'a mut Context<'b>,
}

impl Write for SocketWriter<'_, '_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, b) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<C: TlsSide> TlsIo<C> {
    /// The connection after its handshake: `sock` its socket, `rx` ciphertext
    /// read past the handshake.
    pub fn new(sock: TcpStream, mut conn: C, rx: BytesMut, buffer: usize) -> Self {
        conn.set_buffer_limit(Some(64 * 1024));
        TlsIo {
            conn,
            io: StreamWrapper::new_with_buffer_size(sock, buffer, buffer),
            pending: rx,
            eof: false,
        }
    }

    /// Write the records rustls has queued; `Pending` while the socket is full.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut w = SocketWriter {
                io: &mut self.io,
                cx,
            };
            match self.conn.write_tls(&mut w) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Hand buffered ciphertext to rustls; whether any was taken.
    fn feed(&mut self) -> io::Result<bool> {
        if self.pending.is_empty() && !self.eof {
            return Ok(false);
        }
        let mut src = &self.pending[..];
        let n = self.conn.read_tls(&mut src)?;
        self.pending.advance(n);
        self.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(n > 0)
    }
}

impl<C: TlsSide + Unpin> AsyncRead for TlsIo<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            // When rustls takes nothing its buffer is full of records not yet
            // decrypted, which the read above drains.
            if !this.pending.is_empty() && this.feed()? {
                continue;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if rb.filled().is_empty() {
                this.eof = true;
                // An empty read tells rustls the stream ended.
                let _ = this.conn.read_tls(&mut &[][..]);
                let _ = this.conn.process_new_packets();
            } else {
                this.pending.extend_from_slice(rb.filled());
                this.feed()?;
            }
        }
    }
}

impl<C: TlsSide + Unpin> AsyncWrite for TlsIo<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let flushed = this.poll_flush_tls(cx);
            if let Poll::Ready(Err(e)) = flushed {
                return Poll::Ready(Err(e));
            }
            let n = this.conn.writer().write(buf)?;
            if n > 0 || buf.is_empty() {
                if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(n));
            }
            if flushed.is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.send_close_notify();
        match this.poll_flush_tls(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
            other => other,
        }
    }
}
