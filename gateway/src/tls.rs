//! TLS termination for `HTTPS` listeners, driven by the shard's own I/O.
//!
//! rustls is sans-IO: [`TlsStream`] reads ciphertext from the client socket
//! with the shard's io_uring reads into its own buffer (16 KiB,
//! [`READ_CHUNK`]), hands it to `ServerConnection::read_tls` /
//! `process_new_packets`, and drains the decrypted bytes into the connection's
//! read buffer; writes go the other way (`writer()` then `write_tls` into a
//! buffer, written with the socket's cancelable write). No other runtime, no
//! thread.
//!
//! The same driver carries the gateway's own TLS connections to backends
//! under a `BackendTLSPolicy`: [`TlsStream`] is generic over the rustls side
//! ([`TlsSide`]: `ServerConnection` here, `ClientConnection` for
//! `upstream`, whose handshake is `connect`). A peer's
//! `close_notify` reads as end of file on either side.
//!
//! The HTTP/1.1 front end (`proxy`) is generic over `ClientStream`,
//! implemented by the plain `TcpStream` (the same calls as before: the plain
//! path costs nothing new) and by [`TlsStream`]; it is monomorphised for
//! each, no dynamic dispatch.
//!
//! Certificates (numbers and choices):
//! - each port's `HTTPS` listeners share one rustls `ServerConfig`; the
//!   certificate is chosen by SNI ([`SniResolver`]): an exact listener
//!   hostname first, then a `*.` wildcard one (one label), then a listener
//!   without hostname; a client that sends no SNI or an unknown name gets the
//!   port's first listener's first certificate (its default), or, with
//!   `--tls-unknown-sni reject`, a TLS alert (no certificate is shown);
//! - TLS 1.3 and 1.2, the `ring` provider's default cipher suites; ALPN
//!   offers `http/1.1`; session resumption by tickets (12 h lifetime, keys
//!   rotated by rustls) and by a 256-entry session cache;
//! - a handshake must finish within `--tls-handshake-timeout` (10 s) or the
//!   connection closes; plaintext HTTP sent to a TLS port gets one HTTP 400
//!   (`code` `tls_required`) and is closed; anything else that is not TLS gets
//!   a TLS alert and is closed.

use std::io;
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Buf, BytesMut};
use monoio::buf::IoBuf;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncWriteRent};
use monoio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::{ClientConnection, ConnectionCommon};
use shardgate_routing::ListenerInfo;
use shardgate_runtime::io::{read_into, read_into_cancelable, READ_CHUNK};

/// The client side of a connection as the HTTP/1.1 front end uses it.
pub(crate) trait ClientStream {
    /// The connection is TLS-terminated here: the request came over `https`
    /// (sent upstream as `X-Forwarded-Proto`).
    const TLS: bool;
    /// Read once, appending plaintext to `buf` (0 = the client closed).
    async fn read_into(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut);
    /// [`ClientStream::read_into`] that `cancel` can stop: it then returns
    /// `ECANCELED`, or the bytes it did receive.
    async fn read_into_cancelable(
        &mut self,
        buf: BytesMut,
        cancel: CancelHandle,
    ) -> (io::Result<usize>, BytesMut);
    /// Write some of `buf[from..]` (how many bytes of it were taken, > 0 unless
    /// the client is gone). The buffer comes back. A write that must stop (the
    /// send timeout) is dropped: the operation is cancelled, its buffer freed
    /// when the kernel lets go of it, and the connection is not written again.
    /// No cancel handle: associating one costs two hash-set updates per write
    /// (monoio's `Canceller`), on every response.
    async fn write_from(&mut self, buf: Vec<u8>, from: usize) -> (io::Result<usize>, Vec<u8>);
    /// End the connection cleanly before it is dropped (TLS: `close_notify`).
    async fn finish(&mut self);
    /// Decrypted bytes are waiting that no socket read would announce.
    fn buffered(&self) -> bool;
    /// The socket, for readiness and the client-gone watch.
    fn tcp(&self) -> &TcpStream;
}

// The reads hand back the runtime's futures themselves: an `async fn` around
// them would be one more state machine, and the inner one (with its buffer)
// copied into it at every read.
impl ClientStream for TcpStream {
    const TLS: bool = false;

    #[inline]
    fn read_into(
        &mut self,
        buf: BytesMut,
    ) -> impl std::future::Future<Output = (io::Result<usize>, BytesMut)> {
        read_into(self, buf)
    }

    #[inline]
    fn read_into_cancelable(
        &mut self,
        buf: BytesMut,
        cancel: CancelHandle,
    ) -> impl std::future::Future<Output = (io::Result<usize>, BytesMut)> {
        read_into_cancelable(self, buf, cancel)
    }

    #[inline]
    async fn write_from(&mut self, buf: Vec<u8>, from: usize) -> (io::Result<usize>, Vec<u8>) {
        let (res, slice) = self.write(buf.slice(from..)).await;
        (res, slice.into_inner())
    }

    #[inline]
    async fn finish(&mut self) {}

    #[inline]
    fn buffered(&self) -> bool {
        false
    }

    #[inline]
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// Most plaintext one write hands to rustls: 64 KiB.
const WRITE_CHUNK: usize = 64 * 1024;

/// One side of a rustls connection: the server side for clients of `HTTPS`
/// listeners, the client side for backends reached over TLS
/// (`upstream`). [`TlsStream`] drives either the same way.
pub trait TlsSide: DerefMut<Target = ConnectionCommon<Self::Data>> {
    /// rustls' per-side state.
    type Data;
}

impl TlsSide for ServerConnection {
    type Data = rustls::server::ServerConnectionData;
}

impl TlsSide for ClientConnection {
    type Data = rustls::client::ClientConnectionData;
}

/// A connection after a completed TLS handshake: a client's (the default)
/// or, with `ClientConnection`, the gateway's own to a backend.
pub struct TlsStream<C: TlsSide = ServerConnection> {
    sock: TcpStream,
    conn: C,
    /// Ciphertext read from the socket, not yet handed to rustls.
    rx: BytesMut,
    /// Ciphertext from rustls, being written.
    tx: Vec<u8>,
    /// The socket reached end of file, or the peer sent `close_notify`.
    eof: bool,
}

impl<C: TlsSide> TlsStream<C> {
    /// The socket, for readiness and peeking.
    pub fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    /// Its index in [`HANDSHAKE_RESULTS`]: a full handshake (0) or a resumed
    /// session (1).
    pub fn handshake_result(&self) -> usize {
        usize::from(matches!(
            self.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        ))
    }

    /// Move decrypted bytes into `buf`; how many.
    fn drain_plain(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut total = 0;
        loop {
            let start = buf.len();
            if buf.capacity() - start < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            let room = buf.capacity() - start;
            buf.resize(start + room, 0);
            let r = self.conn.reader().read_plain(&mut buf[start..]);
            match r {
                Ok(n) => {
                    buf.truncate(start + n);
                    if n == 0 {
                        return Ok(total);
                    }
                    total += n;
                }
                Err(e) => {
                    buf.truncate(start);
                    return match e.kind() {
                        io::ErrorKind::WouldBlock => Ok(total),
                        // The peer closed without close_notify: its data ended.
                        io::ErrorKind::UnexpectedEof => Ok(total),
                        _ => Err(e),
                    };
                }
            }
        }
    }

    /// Hand `self.rx` to rustls record by record, decrypting into `buf`.
    fn feed(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut got = 0;
        let mut at = 0;
        // An empty read means end of file to rustls.
        while at < self.rx.len() || (self.eof && at == 0) {
            let mut src = &self.rx[at..];
            let n = self.conn.read_tls(&mut src)?;
            at += n;
            match self.conn.process_new_packets() {
                // A close_notify ends the data cleanly, whatever the socket does.
                Ok(st) if st.peer_has_closed() => self.eof = true,
                Ok(_) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            got += self.drain_plain(buf)?;
            if n == 0 {
                break;
            }
        }
        self.rx.clear();
        Ok(got)
    }

    /// Write whatever rustls has queued (handshake messages, alerts,
    /// records), stopping at `cancel` when given.
    async fn flush_tls(&mut self, cancel: Option<&CancelHandle>) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.tx)?;
        }
        let mut done = 0;
        while done < self.tx.len() {
            let buf = std::mem::take(&mut self.tx);
            let (res, slice) = match cancel {
                Some(c) => {
                    self.sock
                        .cancelable_write(buf.slice(done..), c.clone())
                        .await
                }
                None => self.sock.write(buf.slice(done..)).await,
            };
            self.tx = slice.into_inner();
            match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) => {
                    self.tx.clear();
                    return Err(e);
                }
            }
        }
        self.tx.clear();
        Ok(())
    }

    /// Read once: plaintext appended to `buf` (0 = the peer closed, by
    /// `close_notify` or end of file), from a socket read that `cancel`, when
    /// given, can stop.
    pub(crate) async fn read_plain(
        &mut self,
        mut buf: BytesMut,
        cancel: Option<CancelHandle>,
    ) -> (io::Result<usize>, BytesMut) {
        loop {
            match self.drain_plain(&mut buf) {
                Ok(0) => {}
                Ok(n) => return (Ok(n), buf),
                Err(e) => return (Err(e), buf),
            }
            if self.eof {
                return (Ok(0), buf);
            }
            if self.rx.is_empty() {
                if self.conn.wants_write() {
                    if let Err(e) = self.flush_tls(cancel.as_ref()).await {
                        return (Err(e), buf);
                    }
                }
                let rx = std::mem::take(&mut self.rx);
                let (res, rx) = match &cancel {
                    Some(c) => read_into_cancelable(&mut self.sock, rx, c.clone()).await,
                    None => read_into(&mut self.sock, rx).await,
                };
                self.rx = rx;
                match res {
                    Ok(0) => self.eof = true,
                    Ok(_) => {}
                    Err(e) => return (Err(e), buf),
                }
            }
            match self.feed(&mut buf) {
                Ok(0) => {}
                Ok(n) => return (Ok(n), buf),
                Err(e) => {
                    // Tell the client why (an alert), best effort.
                    let _ = self.flush_tls(cancel.as_ref()).await;
                    return (Err(e), buf);
                }
            }
        }
    }
}

impl<C: TlsSide> TlsStream<C> {
    /// The protocol the two sides agreed on in ALPN, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The socket, the rustls connection and the ciphertext read past the
    /// handshake: for a protocol driven elsewhere (HTTP/2, `h2`).
    pub fn into_parts(self) -> (TcpStream, C, BytesMut) {
        (self.sock, self.conn, self.rx)
    }
}

/// rustls' `Reader::read`, by a name that does not clash with the trait's.
trait ReadPlain {
    fn read_plain(&mut self, dst: &mut [u8]) -> io::Result<usize>;
}

impl ReadPlain for rustls::Reader<'_> {
    fn read_plain(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        io::Read::read(self, dst)
    }
}

impl<C: TlsSide> TlsStream<C> {
    /// Encrypt all of `data` and write it (records of at most 16 KiB; rustls
    /// buffers what a write does not take).
    pub(crate) async fn write_all_plain(&mut self, data: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < data.len() {
            let end = data.len().min(at + WRITE_CHUNK);
            let n = io::Write::write(&mut self.conn.writer(), &data[at..end])?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            at += n;
            self.flush_tls(None).await?;
        }
        Ok(())
    }

    /// Send `close_notify` (best effort, at most 1 s).
    pub(crate) async fn close_notify(&mut self) {
        self.conn.send_close_notify();
        let _ = monoio::time::timeout(Duration::from_secs(1), self.flush_tls(None)).await;
    }
}

impl ClientStream for TlsStream {
    const TLS: bool = true;

    async fn read_into(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        self.read_plain(buf, None).await
    }

    async fn read_into_cancelable(
        &mut self,
        buf: BytesMut,
        cancel: CancelHandle,
    ) -> (io::Result<usize>, BytesMut) {
        self.read_plain(buf, Some(cancel)).await
    }

    async fn write_from(&mut self, buf: Vec<u8>, from: usize) -> (io::Result<usize>, Vec<u8>) {
        let end = buf.len().min(from.saturating_add(WRITE_CHUNK));
        let n = match io::Write::write(&mut self.conn.writer(), &buf[from..end]) {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        match self.flush_tls(None).await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn finish(&mut self) {
        self.close_notify().await;
    }

    fn buffered(&self) -> bool {
        // Unprocessed ciphertext, or plaintext rustls holds (it wants no read).
        !self.rx.is_empty() || (!self.conn.wants_read() && !self.eof)
    }

    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug)]
pub enum HandshakeError {
    /// Not done within `--tls-handshake-timeout`.
    Timeout,
    /// Plaintext HTTP on the TLS port (answered with a 400).
    Plaintext,
    /// The client closed, or a socket error.
    Io(io::Error),
    /// Not TLS, or TLS that rustls refused (answered with an alert).
    Tls(rustls::Error),
}

/// `result` label values of `gateway_tls_handshakes_total`: two successes
/// (a full handshake, a resumed session), then [`HandshakeError::reason`]s.
pub const HANDSHAKE_RESULTS: [&str; 6] = ["full", "resumed", "timeout", "plaintext", "io", "tls"];

impl HandshakeError {
    /// A short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        HANDSHAKE_RESULTS[self.index()]
    }

    /// Its index in [`HANDSHAKE_RESULTS`].
    pub fn index(&self) -> usize {
        match self {
            HandshakeError::Timeout => 2,
            HandshakeError::Plaintext => 3,
            HandshakeError::Io(_) => 4,
            HandshakeError::Tls(_) => 5,
        }
    }
}

/// The body of the answer to plaintext HTTP on a TLS port.
const PLAINTEXT_BODY: &str = r#"{"error":{"message":"this port speaks TLS: use https://","type":"invalid_request_error","param":null,"code":"tls_required"}}"#;

/// Complete a server handshake on `sock` within `timeout`.
pub async fn accept(
    sock: TcpStream,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> Result<TlsStream, HandshakeError> {
    let conn = ServerConnection::new(config).map_err(HandshakeError::Tls)?;
    let mut s = TlsStream {
        sock,
        conn,
        rx: BytesMut::new(),
        tx: Vec::new(),
        eof: false,
    };
    match monoio::time::timeout(timeout, handshake(&mut s, true)).await {
        Ok(Ok(())) => Ok(s),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HandshakeError::Timeout),
    }
}

/// Complete a client handshake with a backend on `sock` (the caller bounds
/// it with its connect timeout): `conn` carries the configuration and the
/// server name. Data the server sends after its handshake stays buffered for
/// the first read.
pub(crate) async fn connect(
    sock: TcpStream,
    conn: ClientConnection,
) -> Result<TlsStream<ClientConnection>, HandshakeError> {
    let mut s = TlsStream {
        sock,
        conn,
        rx: BytesMut::new(),
        tx: Vec::new(),
        eof: false,
    };
    handshake(&mut s, false).await?;
    Ok(s)
}

/// Drive a handshake to its end; `server` answers plaintext HTTP on the
/// first read with a 400.
async fn handshake<C: TlsSide>(s: &mut TlsStream<C>, server: bool) -> Result<(), HandshakeError> {
    let mut first = server;
    while s.conn.is_handshaking() {
        if s.conn.wants_write() {
            s.flush_tls(None).await.map_err(HandshakeError::Io)?;
            continue;
        }
        let rx = std::mem::take(&mut s.rx);
        let (res, rx) = read_into(&mut s.sock, rx).await;
        s.rx = rx;
        match res {
            Ok(0) => return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(HandshakeError::Io(e)),
        }
        if first {
            first = false;
            // A TLS handshake record starts with 0x16; an HTTP method with a letter.
            if s.rx.first().is_some_and(u8::is_ascii_uppercase) {
                let mut out = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    PLAINTEXT_BODY.len()
                )
                .into_bytes();
                out.extend_from_slice(PLAINTEXT_BODY.as_bytes());
                let (_, _) = s.sock.write_all(out).await;
                return Err(HandshakeError::Plaintext);
            }
        }
        let mut at = 0;
        while at < s.rx.len() && s.conn.is_handshaking() {
            let mut src = &s.rx[at..];
            match s.conn.read_tls(&mut src) {
                Ok(n) => at += n,
                Err(e) => return Err(HandshakeError::Io(e)),
            }
            if let Err(e) = s.conn.process_new_packets() {
                let _ = s.flush_tls(None).await;
                return Err(HandshakeError::Tls(e));
            }
        }
        // What follows the handshake (the first request, perhaps) stays for
        // the first read (`buffered`).
        s.rx.advance(at);
    }
    if s.conn.wants_write() {
        s.flush_tls(None).await.map_err(HandshakeError::Io)?;
    }
    Ok(())
}

/// One certificate choice of [`SniResolver`].
#[derive(Debug)]
enum Name {
    /// A listener hostname, lower-case.
    Exact(String),
    /// `*.suffix`: the suffix with its leading dot, lower-case.
    Wildcard(String),
    /// A listener without hostname.
    Any,
}

/// A port's certificates, as [`SniResolver`] chooses among them.
#[derive(Debug)]
struct PortCerts {
    /// In listener order; each listener's first certificate.
    by_name: Vec<(Name, Arc<CertifiedKey>)>,
    /// The port's first listener's first certificate; `None` with
    /// `--tls-unknown-sni reject` (unknown names get no certificate).
    default: Option<Arc<CertifiedKey>>,
}

impl PortCerts {
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let any = || self.by_name.iter().find(|(n, _)| matches!(n, Name::Any));
        let Some(sni) = sni else {
            return any()
                .map(|(_, k)| k.clone())
                .or_else(|| self.default.clone());
        };
        let sni = sni.to_ascii_lowercase();
        let exact = self
            .by_name
            .iter()
            .find(|(n, _)| matches!(n, Name::Exact(h) if *h == sni));
        let wildcard = || {
            self.by_name.iter().find(|(n, _)| match n {
                Name::Wildcard(suffix) => sni
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.')),
                _ => false,
            })
        };
        exact
            .or_else(wildcard)
            .or_else(any)
            .map_or_else(|| self.default.clone(), |(_, k)| Some(k.clone()))
    }
}

/// Chooses a port's certificate by the client's SNI (see the module doc).
/// The certificates sit behind an [`ArcSwap`]: a rotation ([`PortTls::prepare`], then
/// [`PortTls::install`]) swaps them for the handshakes that follow; a connection keeps the
/// certificate its handshake chose.
#[derive(Debug)]
pub struct SniResolver {
    certs: ArcSwap<PortCerts>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.load().pick(hello.server_name())
    }
}

/// Load one PEM certificate chain and key, checking that they match.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt: no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls.key: not a PEM private key: {e}"))?;
    let ck = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("tls.crt / tls.key: {e}"))?;
    Ok(Arc::new(ck))
}

/// The certificates of one served port's `HTTPS` listeners (indices into
/// `all`). `Ok(None)` for a plain `HTTP` port; `Err` names the Secret and field
/// that cannot be used.
fn port_certs(
    all: &[ListenerInfo],
    listeners: &[usize],
    reject_unknown_sni: bool,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Option<PortCerts>, String> {
    let mut by_name = Vec::new();
    let mut default = None;
    for &i in listeners {
        let Some(l) = all.get(i) else { continue };
        if l.protocol != "HTTPS" {
            continue;
        }
        let mut first = None;
        for c in &l.tls {
            let ck = certified_key(&c.cert_pem, &c.key_pem, provider)
                .map_err(|e| format!("{}: {e}", c.origin))?;
            first.get_or_insert(ck);
        }
        let Some(first) = first else {
            return Err(format!(
                "listener {}/{}: no usable certificate (tls.certificateRefs)",
                l.gateway, l.name
            ));
        };
        default.get_or_insert_with(|| first.clone());
        let name = match l.hostname.as_deref().map(str::to_ascii_lowercase) {
            None => Name::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => Name::Wildcard(suffix.to_string()),
                None => Name::Exact(h),
            },
        };
        by_name.push((name, first));
    }
    Ok(default.map(|default| PortCerts {
        by_name,
        default: (!reject_unknown_sni).then_some(default),
    }))
}

/// One served port's TLS: the rustls configuration its connections use and
/// the resolver whose certificates [`PortTls::install`] replaces.
#[derive(Debug, Clone)]
pub struct PortTls {
    /// Shared by the port's sockets on every shard.
    pub config: Arc<ServerConfig>,
    resolver: Arc<SniResolver>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    reject_unknown_sni: bool,
}

impl PortTls {
    /// The certificates that `all` (a newer configuration's listeners) gives
    /// the port's `listeners`, checked and ready for [`PortTls::install`].
    /// `Err` names the Secret and field, or says the port lost its `HTTPS`
    /// listeners.
    pub fn prepare(&self, all: &[ListenerInfo], listeners: &[usize]) -> Result<Certs, String> {
        match port_certs(all, listeners, self.reject_unknown_sni, &self.provider)? {
            Some(certs) => Ok(Certs(certs)),
            None => Err("a TLS port has no HTTPS listener any more".to_string()),
        }
    }

    /// Serve `certs` on every handshake from now on; connections that exist
    /// keep the certificate theirs chose.
    pub fn install(&self, certs: Certs) {
        self.resolver.certs.store(Arc::new(certs.0));
    }
}

/// A port's certificates, checked, between [`PortTls::prepare`] and
/// [`PortTls::install`].
#[derive(Debug)]
pub struct Certs(PortCerts);

/// The rustls configuration of one served port: its `HTTPS` listeners
/// (indices into `all`) with their certificates. `Ok(None)` for a plain
/// `HTTP` port; `Err` names the Secret and field that cannot be used.
pub fn port_config(
    all: &[ListenerInfo],
    listeners: &[usize],
    reject_unknown_sni: bool,
) -> Result<Option<PortTls>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Some(certs) = port_certs(all, listeners, reject_unknown_sni, &provider)? else {
        return Ok(None);
    };
    let resolver = Arc::new(SniResolver {
        certs: ArcSwap::from_pointee(certs),
    });
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    // HTTP/2 first for clients that offer it (`h2`), else HTTP/1.1.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS setup: {e}"))?;
    Ok(Some(PortTls {
        config: Arc::new(cfg),
        resolver,
        provider,
        reject_unknown_sni,
    }))
}
