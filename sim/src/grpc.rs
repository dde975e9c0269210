//! KServe v2 over gRPC (`inference.GRPCInferenceService`) and
//! `grpc.health.v1.Health`, on the same port as the HTTP API: the server
//! speaks HTTP/2 with prior knowledge (what gRPC clients do) beside HTTP/1.1.
//!
//! Calls: `ServerLive`, `ServerReady`, `ModelReady`, `ModelMetadata`,
//! `ModelInfer` (an echo: each input comes back as `OUTPUT<i>` with the same
//! datatype, shape and raw contents) and `ModelStreamInfer` (bidirectional:
//! one echo per request message, sent as it is decoded, so a slow reader
//! slows the sender through HTTP/2 flow control); `grpc.health.v1.Health/Check`.
//! Models are the server's `--model` names (and LoRA adapters) as on its HTTP
//! side; an unknown one is `NOT_FOUND`. `--error-rate` answers `INTERNAL`,
//! `--stall-ms` delays the answer, slow start answers `UNAVAILABLE`. A stream
//! whose client goes away before its end counts in `/sim/stats`
//! `grpc_cancelled_total`; `grpc_last_metadata` there lists the last inference
//! call's request metadata (what a proxy in front forwarded).
//!
//! Messages are `prost` structs written here (field numbers of KServe's
//! `grpc_predict_v2.proto` and gRPC's `health.proto`); fields the sim does
//! not use are skipped by the decoder. A message is at most 64 MiB. A call with
//! `grpc-encoding: gzip` or `deflate` may send compressed messages (inflated
//! here, at most 64 MiB each; answers go back uncompressed); a compressed
//! message in another encoding is `UNIMPLEMENTED`.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use prost::Message;
use tokio::sync::mpsc;

use crate::state::{RespBody, Shared};

/// Largest message accepted: 64 MiB.
const MAX_MESSAGE: usize = 64 << 20;

/// `grpc-status` codes the sim answers with.
mod code {
    pub const OK: u8 = 0;
    pub const INVALID_ARGUMENT: u8 = 3;
    pub const NOT_FOUND: u8 = 5;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
}

/// `inference.ServerLiveResponse` / `ServerReadyResponse` / `ModelReadyResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct BoolResponse {
    /// `live` / `ready`.
    #[prost(bool, tag = "1")]
    pub value: bool,
}

/// `inference.ModelReadyRequest` / `ModelMetadataRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelRef {
    /// Model name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Model version.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `inference.ModelMetadataResponse.TensorMetadata`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorMetadata {
    /// Tensor name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Datatype (`FP32`, `BYTES`, …).
    #[prost(string, tag = "2")]
    pub datatype: String,
    /// Shape (-1: variable).
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
}

/// `inference.ModelMetadataResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelMetadataResponse {
    /// Model name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Versions.
    #[prost(string, repeated, tag = "2")]
    pub versions: Vec<String>,
    /// Platform.
    #[prost(string, tag = "3")]
    pub platform: String,
    /// Inputs.
    #[prost(message, repeated, tag = "4")]
    pub inputs: Vec<TensorMetadata>,
    /// Outputs.
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<TensorMetadata>,
}

/// `inference.ModelInferRequest.InferInputTensor` (and the response's
/// `InferOutputTensor`: the same first three fields).
#[derive(Clone, PartialEq, Message)]
pub struct Tensor {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Datatype.
    #[prost(string, tag = "2")]
    pub datatype: String,
    /// Shape.
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
}

/// `inference.ModelInferRequest` (parameters, outputs and typed contents are
/// skipped).
#[derive(Clone, PartialEq, Message)]
pub struct ModelInferRequest {
    /// Model name.
    #[prost(string, tag = "1")]
    pub model_name: String,
    /// Model version.
    #[prost(string, tag = "2")]
    pub model_version: String,
    /// Request id.
    #[prost(string, tag = "3")]
    pub id: String,
    /// Input tensors.
    #[prost(message, repeated, tag = "5")]
    pub inputs: Vec<Tensor>,
    /// Raw input contents, one per input.
    #[prost(bytes = "bytes", repeated, tag = "7")]
    pub raw_input_contents: Vec<Bytes>,
}

/// `inference.ModelInferResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelInferResponse {
    /// Model name.
    #[prost(string, tag = "1")]
    pub model_name: String,
    /// Model version.
    #[prost(string, tag = "2")]
    pub model_version: String,
    /// Request id.
    #[prost(string, tag = "3")]
    pub id: String,
    /// Output tensors.
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<Tensor>,
    /// Raw output contents, one per output.
    #[prost(bytes = "bytes", repeated, tag = "6")]
    pub raw_output_contents: Vec<Bytes>,
}

/// `inference.ModelStreamInferResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelStreamInferResponse {
    /// Error, empty on success.
    #[prost(string, tag = "1")]
    pub error_message: String,
    /// The answer.
    #[prost(message, optional, tag = "2")]
    pub infer_response: Option<ModelInferResponse>,
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct HealthCheckRequest {
    /// Service name ("" = the server).
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse` (status 1 = SERVING, 2 = NOT_SERVING).
#[derive(Clone, PartialEq, Message)]
pub struct HealthCheckResponse {
    /// Serving status.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// Frames `msg` as one gRPC message (uncompressed).
pub fn frame(msg: &impl Message) -> Bytes {
    let len = msg.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = msg.encode(&mut out);
    out.freeze()
}

/// Splits whole gRPC messages off the front of `buf`.
pub struct Deframer {
    buf: BytesMut,
    /// The call's `grpc-encoding`, when the sim inflates it.
    encoding: Option<Compression>,
}

impl Default for Deframer {
    fn default() -> Self {
        Self::new()
    }
}

impl Deframer {
    /// An empty deframer for uncompressed messages.
    pub fn new() -> Self {
        Deframer {
            buf: BytesMut::new(),
            encoding: None,
        }
    }

    /// An empty deframer for a call whose `grpc-encoding` is `encoding`:
    /// compressed messages are inflated (`gzip`, `deflate`), at most
    /// 64 MiB each.
    pub fn with_encoding(encoding: Option<&[u8]>) -> Self {
        let encoding = encoding.and_then(|v| {
            let v = v.trim_ascii();
            if v.eq_ignore_ascii_case(b"gzip") {
                Some(Compression::Gzip)
            } else if v.eq_ignore_ascii_case(b"deflate") {
                Some(Compression::Deflate)
            } else {
                None
            }
        });
        Deframer {
            buf: BytesMut::new(),
            encoding,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, `Ok(None)` when more bytes are needed; `Err`:
    /// (gRPC status, message) for a compressed or too large message.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, (u8, String)> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let compressed =
            match (self.buf[0], self.encoding) {
                (0, _) => None,
                (1, Some(c)) => Some(c),
                (1, None) => return Err((
                    code::UNIMPLEMENTED,
                    "a compressed message without a grpc-encoding the sim inflates (gzip, deflate)"
                        .into(),
                )),
                (f, _) => return Err((code::INTERNAL, format!("bad message flag {f}"))),
            };
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err((
                code::INVALID_ARGUMENT,
                format!("message of {len} bytes is too large"),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let msg = self.buf.split_to(len).freeze();
        match compressed {
            None => Ok(Some(msg)),
            Some(c) => inflate(&msg, c).map(Some),
        }
    }
}

/// A `grpc-encoding` the sim inflates.
#[derive(Debug, Clone, Copy)]
enum Compression {
    Gzip,
    Deflate,
}

/// Inflates one message, at most [`MAX_MESSAGE`] bytes of it.
fn inflate(msg: &[u8], c: Compression) -> Result<Bytes, (u8, String)> {
    use std::io::Read;
    let mut out = Vec::new();
    let cap = MAX_MESSAGE as u64 + 1;
    let read = match c {
        Compression::Gzip => flate2::bufread::GzDecoder::new(msg)
            .take(cap)
            .read_to_end(&mut out),
        Compression::Deflate => flate2::bufread::ZlibDecoder::new(msg)
            .take(cap)
            .read_to_end(&mut out),
    };
    match read {
        Err(e) => Err((code::INTERNAL, format!("the message does not inflate: {e}"))),
        Ok(_) if out.len() > MAX_MESSAGE => Err((
            code::INVALID_ARGUMENT,
            "the inflated message is too large".into(),
        )),
        Ok(_) => Ok(Bytes::from(out)),
    }
}

fn trailers(status: u8, message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(u16::from(status)));
    if !message.is_empty() {
        let enc: String = message
            .bytes()
            .map(|b| {
                if (0x20..0x7f).contains(&b) && b != b'%' {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&enc) {
            t.insert("grpc-message", v);
        }
    }
    t
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

/// A response body fed through a bounded channel: each frame is handed to
/// hyper as it arrives; a full channel holds the producer back.
pub struct ChanBody(mpsc::Receiver<Chunk>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        self.get_mut().0.poll_recv(cx)
    }
}

fn grpc_response(rx: mpsc::Receiver<Chunk>) -> Response<RespBody> {
    let mut r = Response::new(ChanBody(rx).boxed_unsync());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    r
}

/// An answer of one message and OK, or only a status.
fn unary(result: Result<Bytes, (u8, String)>) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel(2);
    let (msg, status, message) = match result {
        Ok(m) => (Some(m), code::OK, String::new()),
        Err((c, m)) => (None, c, m),
    };
    if let Some(m) = msg {
        let _ = tx.try_send(Ok(Frame::data(m)));
    }
    let _ = tx.try_send(Ok(Frame::trailers(trailers(status, &message))));
    grpc_response(rx)
}

/// Reads one request message (a unary call's).
async fn one_message(body: Incoming, encoding: Option<&[u8]>) -> Result<Bytes, (u8, String)> {
    let mut d = Deframer::with_encoding(encoding);
    let mut body = body;
    loop {
        if let Some(m) = d.next_message()? {
            return Ok(m);
        }
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    if d.buf.len() + data.len() > MAX_MESSAGE + 5 {
                        return Err((code::INVALID_ARGUMENT, "message too large".into()));
                    }
                    d.buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err((code::INTERNAL, format!("reading the request: {e}"))),
            None => return Err((code::INVALID_ARGUMENT, "no request message".into())),
        }
    }
}

fn decode<M: Message + Default>(m: &Bytes) -> Result<M, (u8, String)> {
    M::decode(m.clone()).map_err(|e| (code::INVALID_ARGUMENT, format!("bad message: {e}")))
}

/// Encodes one message, unframed: for clients in tests.
pub fn encode_message<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

/// Decodes one (unframed) message: for clients in tests.
pub fn decode_message<M: Message + Default>(m: &[u8]) -> Result<M, String> {
    M::decode(m).map_err(|e| e.to_string())
}

fn serves(shared: &Shared, model: &str) -> bool {
    shared.cfg.model.iter().any(|m| m == model) || shared.cfg.lora.iter().any(|m| m == model)
}

fn echo(shared: &Shared, req: ModelInferRequest) -> Result<ModelInferResponse, (u8, String)> {
    if !serves(shared, &req.model_name) {
        return Err((
            code::NOT_FOUND,
            format!(
                "Request for unknown model: '{}' is not found",
                req.model_name
            ),
        ));
    }
    Ok(ModelInferResponse {
        outputs: req
            .inputs
            .iter()
            .enumerate()
            .map(|(i, t)| Tensor {
                name: format!("OUTPUT{i}"),
                datatype: t.datatype.clone(),
                shape: t.shape.clone(),
            })
            .collect(),
        raw_output_contents: req.raw_input_contents,
        model_name: req.model_name,
        model_version: if req.model_version.is_empty() {
            "1".into()
        } else {
            req.model_version
        },
        id: req.id,
    })
}

/// Faults that apply to an inference call: slow start, stall, error rate.
async fn faults(shared: &Shared) -> Result<(), (u8, String)> {
    if shared.loading() {
        return Err((code::UNAVAILABLE, "the server is loading".into()));
    }
    let stall = shared.faults.stall_ms.load(Relaxed);
    if stall > 0 {
        tokio::time::sleep(Duration::from_millis(stall)).await;
    }
    let rate = shared.faults.error_rate();
    if rate > 0.0 && fastrand::f64() < rate {
        return Err((code::INTERNAL, "injected fault".into()));
    }
    Ok(())
}

/// Whether `path` is a gRPC call this module answers.
pub(crate) fn is_grpc_path(path: &str) -> bool {
    path.starts_with("/inference.GRPCInferenceService/")
        || path.starts_with("/grpc.health.v1.Health/")
}

/// Keeps an inference call's request metadata for `/sim/stats` (health
/// checks are not kept: they would replace what a test looks for).
async fn record_metadata(shared: &Shared, headers: &HeaderMap) {
    let mut last = shared.grpc_last_metadata.lock().await;
    last.clear();
    last.extend(headers.iter().map(|(k, v)| {
        (
            k.as_str().to_owned(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        )
    }));
}

/// Answers one gRPC call.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<RespBody> {
    let path = req.uri().path().to_owned();
    let method = path.rsplit('/').next().unwrap_or("").to_owned();
    let encoding = req.headers().get("grpc-encoding").cloned();
    let enc = encoding.as_ref().map(HeaderValue::as_bytes);
    if path.starts_with("/inference.GRPCInferenceService/") {
        record_metadata(&shared, req.headers()).await;
    }
    let body = req.into_body();
    let shared = &shared;
    match path.as_str() {
        "/grpc.health.v1.Health/Check" => unary(
            async {
                let r: HealthCheckRequest = decode(&one_message(body, enc).await?)?;
                if !r.service.is_empty() && r.service != "inference.GRPCInferenceService" {
                    return Err((code::NOT_FOUND, format!("unknown service {}", r.service)));
                }
                let status = if shared.loading() { 2 } else { 1 };
                Ok(frame(&HealthCheckResponse { status }))
            }
            .await,
        ),
        _ if !path.starts_with("/inference.GRPCInferenceService/") => {
            unary(Err((code::UNIMPLEMENTED, format!("unknown method {path}"))))
        }
        _ => match method.as_str() {
            "ServerLive" => unary(Ok(frame(&BoolResponse { value: true }))),
            "ServerReady" => unary(Ok(frame(&BoolResponse {
                value: !shared.loading(),
            }))),
            "ModelReady" => unary(
                async {
                    let r: ModelRef = decode(&one_message(body, enc).await?)?;
                    Ok(frame(&BoolResponse {
                        value: serves(shared, &r.name) && !shared.loading(),
                    }))
                }
                .await,
            ),
            "ModelMetadata" => unary(
                async {
                    let r: ModelRef = decode(&one_message(body, enc).await?)?;
                    if !serves(shared, &r.name) {
                        return Err((code::NOT_FOUND, format!("unknown model {}", r.name)));
                    }
                    let t = |n: &str| TensorMetadata {
                        name: n.into(),
                        datatype: "BYTES".into(),
                        shape: vec![-1],
                    };
                    Ok(frame(&ModelMetadataResponse {
                        name: r.name,
                        versions: vec!["1".into()],
                        platform: "shardgate-sim".into(),
                        inputs: vec![t("INPUT0")],
                        outputs: vec![t("OUTPUT0")],
                    }))
                }
                .await,
            ),
            "ModelInfer" => unary(
                async {
                    shared.requests_total.fetch_add(1, Relaxed);
                    let m = one_message(body, enc).await?;
                    faults(shared).await?;
                    Ok(frame(&echo(shared, decode(&m)?)?))
                }
                .await,
            ),
            "ModelStreamInfer" => stream_infer(shared.clone(), body, enc),
            _ => unary(Err((code::UNIMPLEMENTED, format!("unknown method {path}")))),
        },
    }
}

/// `ModelStreamInfer`: one answer per request message, each sent when its
/// request is decoded; the answer channel holds 4 messages, so a client that
/// does not read stops the sim reading (flow control end to end).
fn stream_infer(
    shared: Arc<Shared>,
    mut body: Incoming,
    encoding: Option<&[u8]>,
) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel::<Chunk>(4);
    let mut d = Deframer::with_encoding(encoding);
    tokio::spawn(async move {
        let status = loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    shared.requests_total.fetch_add(1, Relaxed);
                    if let Err(e) = faults(&shared).await {
                        break e;
                    }
                    let answer =
                        match decode::<ModelInferRequest>(&m).and_then(|r| echo(&shared, r)) {
                            Ok(r) => ModelStreamInferResponse {
                                error_message: String::new(),
                                infer_response: Some(r),
                            },
                            Err((_, msg)) => ModelStreamInferResponse {
                                error_message: msg,
                                infer_response: None,
                            },
                        };
                    if tx.send(Ok(Frame::data(frame(&answer)))).await.is_err() {
                        shared.grpc_cancelled_total.fetch_add(1, Relaxed);
                        return;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => break e,
            }
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        d.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) => {
                    shared.grpc_cancelled_total.fetch_add(1, Relaxed);
                    return;
                }
                None => break (code::OK, String::new()),
            }
        };
        let _ = tx
            .send(Ok(Frame::trailers(trailers(status.0, &status.1))))
            .await;
    });
    grpc_response(rx)
}
