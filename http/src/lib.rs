//! Sans-IO HTTP/1.1 codec for shardgate.
//!
//! Nothing here touches a socket: callers hand in bytes they read and get back
//! parsed heads (zero-copy spans into a shared [`bytes::Bytes`]), body framing
//! decisions, decoded chunk ranges, or a typed [`HttpError`] carrying the status
//! to answer with and whether the connection must close.
//!
//! The data path uses [`split_request_head`] / [`split_response_head`], which split
//! a parsed head off the connection's `BytesMut` in place: no copy, and with up to
//! [`INLINE_HEADERS`] (16) fields no heap allocation either.
//!
//! Pieces:
//! - [`request`]: request-head parsing with limits and request-smuggling defences;
//! - [`response`]: upstream response-head parsing and framing (RFC 9112 §6.3);
//! - [`body`]: the body decoders (`Content-Length`, chunked, read-until-close);
//! - [`mod@write`]: serialisers for heads, chunks and OpenAI-style error responses;
//! - [`headers`]: hop-by-hop rules and small header helpers.

#![forbid(unsafe_code)]

pub mod body;
pub mod error;
pub mod headers;
mod parse;
pub mod request;
pub mod response;
pub mod write;

pub use body::{BodyDecoder, ChunkedDecoder, Decoded};
pub use error::{ErrorKind, HttpError};
pub use request::{parse_request_head, split_request_head, RequestHead};
pub use response::{parse_response_head, split_response_head, ResponseHead};

/// Limits the parser enforces. Every limit has a flag in the gateway's CLI.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum bytes of a request or response head, request line included (431 beyond).
    pub max_header_bytes: usize,
    /// Maximum number of header fields (431 beyond).
    pub max_headers: usize,
    /// Maximum request body bytes (413 beyond).
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 32 * 1024 * 1024,
        }
    }
}

/// HTTP version of a message (HTTP/1.0 or HTTP/1.1; anything else is rejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (requests without `Content-Length`/`Transfer-Encoding`, 1xx/204/304, HEAD responses).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Response body runs until the upstream closes the connection.
    UntilClose,
}

/// Header field spans of a parsed head: the first [`INLINE_HEADERS`] live inside the
/// head itself, so parsing a typical request or response allocates nothing.
pub type HeaderSpans = smallvec::SmallVec<[(Span, Span); INLINE_HEADERS]>;

/// Header fields a head holds without a heap allocation (16 × 16 bytes).
pub const INLINE_HEADERS: usize = 16;

/// A byte range inside a head's buffer (kept as `u32` pairs so a head is small).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Start offset.
    pub start: u32,
    /// End offset (exclusive).
    pub end: u32,
}

impl Span {
    /// The bytes this span covers in `buf`.
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
}
