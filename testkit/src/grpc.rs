//! A small gRPC client over HTTP/2 with prior knowledge (the `h2` crate on a
//! one-worker tokio runtime that keeps driving the connection), blocking, for end-to-end tests: unary calls
//! and streams whose messages the test sends and reads one by one (to check
//! flow control and cancellation). Every wait has a deadline (10 s).

use std::io;
use std::net::SocketAddr;

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use tokio::runtime::Runtime;

/// Longest a call waits for anything.
const WAIT: Duration = Duration::from_secs(10);

/// What a call got back.
#[derive(Debug, Default)]
pub struct Reply {
    /// `:status`.
    pub http_status: u16,
    /// Response headers (and trailers, after them).
    pub headers: Vec<(String, String)>,
    /// Whole messages, unframed.
    pub messages: Vec<Bytes>,
    /// `grpc-status` (trailers, or headers of a trailers-only answer).
    pub status: Option<u32>,
    /// `grpc-message`, percent-decoded.
    pub message: String,
}

impl Reply {
    /// The first value of a header or trailer.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Frames `msg` as one uncompressed gRPC message.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

/// Frames `msg` compressed with `encoding` (`"gzip"`, else `"deflate"`: zlib,
/// as gRPC names it), the compressed flag set.
pub fn frame_compressed(msg: &[u8], encoding: &str) -> Bytes {
    use std::io::Write;
    let level = flate2::Compression::default();
    let z = if encoding == "gzip" {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
        let _ = e.write_all(msg);
        e.finish()
    } else {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
        let _ = e.write_all(msg);
        e.finish()
    }
    .unwrap_or_default();
    let mut b = BytesMut::with_capacity(5 + z.len());
    b.extend_from_slice(&[1]);
    b.extend_from_slice(&(z.len() as u32).to_be_bytes());
    b.extend_from_slice(&z);
    b.freeze()
}

/// `n` bytes that do not compress (xorshift from `seed`), so a tensor stays
/// big once compressed.
pub fn incompressible(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Splits whole messages off `buf`.
pub fn deframe(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    buf.advance(5);
    Some(buf.split_to(len).freeze())
}

fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn add_headers(reply: &mut Reply, h: &http::HeaderMap) {
    for (k, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        if k == "grpc-status" {
            reply.status = v.parse().ok();
        } else if k == "grpc-message" {
            reply.message = percent_decode(&v);
        }
        reply.headers.push((k.as_str().to_owned(), v));
    }
}

/// A Gateway with one GRPC listener and a GRPCRoute sending the KServe v2
/// service to `models` → Service (one EndpointSlice per address), routed by
/// the model (`X-Gateway-Model-Name`, which the gRPC `model_name` stands for).
pub fn grpc_config(routes: &[(&str, &str, SocketAddr)]) -> String {
    let mut y = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: default\nspec:\n  gatewayClassName: shardgate\n  listeners:\n  - name: inference-grpc\n    protocol: GRPC\n    port: 50051\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: kserve\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw\n    sectionName: inference-grpc\n  rules:\n",
    );
    for (model, svc, _) in routes {
        y.push_str(&format!(
            "  - matches:\n    - method: {{service: inference.GRPCInferenceService}}\n      headers:\n      - name: X-Gateway-Model-Name\n        value: {model}\n    backendRefs:\n    - name: {svc}\n      port: 8000\n"
        ));
    }
    y.push_str("  - matches:\n    - method: {service: grpc.health.v1.Health, method: Check}\n    backendRefs:\n");
    for (_, svc, _) in routes {
        y.push_str(&format!("    - name: {svc}\n      port: 8000\n"));
    }
    for (_, svc, a) in routes {
        y.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {svc}\naddressType: IPv4\nports:\n- port: {}\nendpoints:\n- addresses: [\"{}\"]\n",
            a.port(),
            a.ip()
        ));
    }
    y
}

/// A plain HTTP answer: status, headers, each DATA frame's bytes.
pub type HttpReply = (u16, Vec<(String, String)>, Vec<Bytes>);

/// One HTTP/2 connection to a gRPC server.
pub struct GrpcClient {
    rt: Runtime,
    send: SendRequest<Bytes>,
}

/// An open call: the test sends and receives messages itself.
pub struct Call {
    /// Request body.
    pub send: SendStream<Bytes>,
    /// The answer's head, once received.
    pub reply: Reply,
    body: Option<RecvStream>,
    buf: BytesMut,
    response: Option<h2::client::ResponseFuture>,
}

impl GrpcClient {
    /// Connects with HTTP/2 prior knowledge.
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        // One worker thread drives the connection while the test does
        // something else (e.g. watches the server while its sends are stuck).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let send = rt.block_on(async {
            let tcp = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect"))??;
            let _ = tcp.set_nodelay(true);
            let (send, conn) = h2::client::handshake(tcp).await.map_err(io::Error::other)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, io::Error>(send)
        })?;
        Ok(GrpcClient { rt, send })
    }

    /// Opens a call to `path` with `metadata` headers.
    pub fn open(&mut self, path: &str, metadata: &[(&str, &str)]) -> io::Result<Call> {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in metadata {
            req = req.header(*k, *v);
        }
        let req = req.body(()).map_err(io::Error::other)?;
        let send = &mut self.send;
        self.rt.block_on(async {
            let mut ready = tokio::time::timeout(WAIT, send.clone().ready())
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "ready"))?
                .map_err(io::Error::other)?;
            let (response, send) = ready.send_request(req, false).map_err(io::Error::other)?;
            Ok(Call {
                send,
                reply: Reply::default(),
                body: None,
                buf: BytesMut::new(),
                response: Some(response),
            })
        })
    }

    /// Sends one framed message on `call` (`end`: it is the last).
    pub fn send(&mut self, call: &mut Call, msg: &[u8], end: bool) -> io::Result<()> {
        call.send
            .send_data(frame(msg), end)
            .map_err(io::Error::other)
    }

    /// Sends `framed` on `call` as it is: a message with its 5-byte prefix
    /// already written (a compressed one, say).
    pub fn send_framed(&mut self, call: &mut Call, framed: Bytes, end: bool) -> io::Result<()> {
        call.send.send_data(framed, end).map_err(io::Error::other)
    }

    /// Waits for the response head of `call`.
    fn head(&mut self, call: &mut Call) -> io::Result<()> {
        let Some(resp) = call.response.take() else {
            return Ok(());
        };
        let r = self.rt.block_on(async {
            tokio::time::timeout(WAIT, resp)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response head"))?
                .map_err(io::Error::other)
        })?;
        call.reply.http_status = r.status().as_u16();
        add_headers(&mut call.reply, r.headers());
        call.body = Some(r.into_body());
        Ok(())
    }

    /// The next whole message of `call`, `None` at the end of the answer
    /// (its trailers are then in `call.reply`).
    pub fn recv(&mut self, call: &mut Call) -> io::Result<Option<Bytes>> {
        self.head(call)?;
        loop {
            if let Some(m) = deframe(&mut call.buf) {
                return Ok(Some(m));
            }
            let Some(body) = call.body.as_mut() else {
                return Ok(None);
            };
            let got = self.rt.block_on(async {
                tokio::time::timeout(WAIT, body.data())
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response data"))
            })?;
            match got {
                Some(Ok(d)) => {
                    let _ = body.flow_control().release_capacity(d.len());
                    call.buf.extend_from_slice(&d);
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => {
                    let t = self.rt.block_on(async {
                        tokio::time::timeout(WAIT, body.trailers())
                            .await
                            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "trailers"))
                    })?;
                    if let Ok(Some(t)) = t {
                        add_headers(&mut call.reply, &t);
                    }
                    call.body = None;
                    return Ok(None);
                }
            }
        }
    }

    /// Reads `call` to its end.
    pub fn finish(&mut self, mut call: Call) -> io::Result<Reply> {
        while let Some(m) = self.recv(&mut call)? {
            call.reply.messages.push(m);
        }
        Ok(call.reply)
    }

    /// A plain HTTP request over the same connection (no gRPC framing): the
    /// status, headers, and each DATA frame's bytes as they came.
    pub fn http(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<HttpReply> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://localhost{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).map_err(io::Error::other)?;
        let send = self.send.clone();
        let body = Bytes::copy_from_slice(body);
        self.rt.block_on(async move {
            let run = async {
                let mut ready = send.ready().await.map_err(io::Error::other)?;
                let (resp, mut tx) = ready
                    .send_request(req, body.is_empty())
                    .map_err(io::Error::other)?;
                if !body.is_empty() {
                    tx.send_data(body, true).map_err(io::Error::other)?;
                }
                let resp = resp.await.map_err(io::Error::other)?;
                let status = resp.status().as_u16();
                let hs = resp
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                let mut rx = resp.into_body();
                let mut chunks = Vec::new();
                while let Some(d) = rx.data().await {
                    let d = d.map_err(io::Error::other)?;
                    let _ = rx.flow_control().release_capacity(d.len());
                    chunks.push(d);
                }
                Ok::<_, io::Error>((status, hs, chunks))
            };
            tokio::time::timeout(WAIT, run)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "HTTP/2 request"))?
        })
    }

    /// A unary call: one message out, the whole answer back.
    pub fn unary(
        &mut self,
        path: &str,
        metadata: &[(&str, &str)],
        msg: &[u8],
    ) -> io::Result<Reply> {
        let mut call = self.open(path, metadata)?;
        self.send(&mut call, msg, true)?;
        self.finish(call)
    }
}
