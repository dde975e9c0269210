//! Codec errors: what went wrong, the status to answer with, and whether the
//! connection must be closed afterwards (always, for framing errors).

/// What kind of protocol violation was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Head larger than `Limits::max_header_bytes` (431).
    HeaderTooLarge,
    /// More header fields than `Limits::max_headers` (431).
    TooManyHeaders,
    /// Declared or received body larger than `Limits::max_body_bytes` (413).
    BodyTooLarge,
    /// Syntax error in the request line, a header, or the framing (400).
    Malformed,
    /// Both `Content-Length` and `Transfer-Encoding` present (400, smuggling defence).
    ContentLengthAndTransferEncoding,
    /// Several `Content-Length` values that differ, or a non-numeric one (400).
    InvalidContentLength,
    /// `Transfer-Encoding` other than a final `chunked` (501 for requests, 502 upstream).
    UnsupportedTransferEncoding,
    /// Invalid chunk size line / missing CRLF after chunk data (400).
    InvalidChunk,
    /// A bare LF used as a line terminator, or a bare CR (400).
    BareLineFeed,
    /// HTTP version other than 1.0 / 1.1 (505).
    UnsupportedVersion,
}

/// A codec error with the answer it calls for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HttpError {
    /// The violation.
    pub kind: ErrorKind,
    /// Status code to send to the client when this came from a request.
    pub status: u16,
    /// Human-readable, specific message (goes into the OpenAI error body).
    pub message: &'static str,
    /// Whether the connection must be closed after answering.
    pub close: bool,
}

impl HttpError {
    /// An error that closes the connection (every codec error does: after a
    /// framing or syntax problem the byte stream can no longer be trusted).
    pub(crate) const fn new(kind: ErrorKind, status: u16, message: &'static str) -> Self {
        HttpError {
            kind,
            status,
            message,
            close: true,
        }
    }

    /// The same error seen on an upstream connection: the client gets
    /// `502 Bad Gateway` whatever the violation was. Use it on errors from a
    /// [`crate::BodyDecoder`] that decodes an upstream response body (response
    /// head errors from [`crate::parse_response_head`] already carry 502).
    #[must_use]
    pub fn into_upstream(self) -> Self {
        HttpError {
            status: 502,
            close: true,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn into_upstream_sets_502_and_keeps_kind() {
        let e = HttpError::new(ErrorKind::InvalidChunk, 400, "bad chunk").into_upstream();
        assert_eq!(e.status, 502);
        assert_eq!(e.kind, ErrorKind::InvalidChunk);
        assert!(e.close);
        assert_eq!(e.to_string(), "bad chunk");
    }
}
