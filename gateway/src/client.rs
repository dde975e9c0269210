//! A small HTTP/1.1 client for the control thread (telemetry scrapes, health
//! checks), on monoio and the sans-IO codec. One keep-alive connection per
//! endpoint, reconnected on any error; every exchange is bounded by a deadline.
//! Response bodies are read whole (bounded by [`MAX_BODY`], 8 MiB): a `/metrics`
//! page or a 1-token completion, never a stream.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use shardgate_http::{parse_response_head, BodyDecoder, Limits};
use shardgate_runtime::io::read_into;

/// Largest response body the client accepts.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// A response: status and whole body.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// A reusable connection to one endpoint.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: BytesMut,
}

impl Conn {
    /// A client for `addr` (connects lazily).
    pub fn new(addr: SocketAddr) -> Self {
        Conn {
            addr,
            stream: None,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str, timeout: Duration) -> Result<Reply, String> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\nuser-agent: shardgate\r\naccept: */*\r\n\r\n",
            self.addr
        );
        self.exchange(req.into_bytes(), timeout).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Reply, String> {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\nuser-agent: shardgate\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.exchange(req, timeout).await
    }

    async fn exchange(&mut self, req: Vec<u8>, timeout: Duration) -> Result<Reply, String> {
        match monoio::time::timeout(timeout, self.exchange_inner(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(format!("timed out after {} ms", timeout.as_millis()))
            }
        }
    }

    async fn exchange_inner(&mut self, req: Vec<u8>) -> Result<Reply, String> {
        let reused = self.stream.is_some();
        match self.try_once(req.clone()).await {
            Ok(r) => Ok(r),
            // A kept-alive connection the server closed meanwhile: retry once, fresh.
            Err(_) if reused => {
                self.stream = None;
                self.try_once(req).await
            }
            Err(e) => Err(e),
        }
    }

    async fn try_once(&mut self, req: Vec<u8>) -> Result<Reply, String> {
        if self.stream.is_none() {
            let s = TcpStream::connect_addr(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = s.set_nodelay(true);
            self.stream = Some(s);
            self.buf.clear();
        }
        let stream = self.stream.as_mut().ok_or("no connection")?;
        let (status, body, keep) = exchange(stream, &mut self.buf, req).await?;
        if !keep {
            self.stream = None;
            self.buf.clear();
        }
        Ok(Reply { status, body })
    }
}

/// Write `req` on `stream` and read one whole response (1xx skipped, body bounded
/// by [`MAX_BODY`]); `buf` holds bytes read but not consumed. Returns the status,
/// the body, and whether the connection may carry another request.
pub async fn exchange(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    req: Vec<u8>,
) -> Result<(u16, Vec<u8>, bool), String> {
    let (res, _) = stream.write_all(req).await;
    res.map_err(|e| format!("write: {e}"))?;
    let limits = Limits::default();
    let head = loop {
        if !buf.is_empty() {
            let bytes = std::mem::take(buf).freeze();
            match parse_response_head(&bytes, false, &limits) {
                Ok(Some((h, len))) => {
                    buf.extend_from_slice(&bytes[len..]);
                    if h.is_informational() {
                        continue;
                    }
                    break h;
                }
                Ok(None) => {
                    *buf = bytes
                        .try_into_mut()
                        .unwrap_or_else(|b| BytesMut::from(&b[..]))
                }
                Err(e) => return Err(format!("invalid response: {e}")),
            }
        }
        let (res, b) = read_into(stream, std::mem::take(buf)).await;
        *buf = b;
        match res {
            Ok(0) => return Err("closed before the response head".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    };
    let mut dec = BodyDecoder::new(head.framing());
    let mut body = Vec::new();
    loop {
        while !buf.is_empty() && !dec.is_done() {
            let d = dec.decode(buf).map_err(|e| format!("invalid body: {e}"))?;
            if let Some(r) = d.data.clone() {
                if body.len() + r.len() > MAX_BODY {
                    return Err("response body too large".into());
                }
                body.extend_from_slice(&buf[r]);
            }
            buf.advance(d.consumed);
            if d.consumed == 0 && d.data.is_none() {
                break;
            }
        }
        if dec.is_done() {
            return Ok((head.status(), body, head.keep_alive() && buf.is_empty()));
        }
        let (res, b) = read_into(stream, std::mem::take(buf)).await;
        *buf = b;
        match res {
            Ok(0) => {
                dec.on_eof().map_err(|e| format!("truncated body: {e}"))?;
                return Ok((head.status(), body, false));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}
