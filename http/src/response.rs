//! Upstream response-head parsing and body framing (RFC 9112 §6.3): 1xx, 204,
//! 304 and responses to HEAD have no body; chunked wins; else Content-Length;
//! else the body runs until close.
//!
//! Decisions a caller must know:
//! - every error carries status 502 (the upstream broke, the client gets a Bad
//!   Gateway) and `close == true` (drop the upstream connection);
//! - for bodiless responses (1xx, 204, 304, HEAD) `Content-Length` and
//!   `Transfer-Encoding` are not validated at all;
//! - `Transfer-Encoding` with final `chunked` gives `Framing::Chunked` and any
//!   `Content-Length` is ignored; then the connection is not reused
//!   (`keep_alive == false`, the response looked like a smuggling attempt);
//! - codings before `chunked` (`gzip, chunked`) are not undone: the decoded body
//!   is still in that coding; [`ResponseHead::has_other_transfer_coding`] says so
//!   (answering 502 is the safe choice);
//! - `Transfer-Encoding` whose final coding is not `chunked`, or any in an
//!   HTTP/1.0 response, gives `Framing::UntilClose`;
//! - `UntilClose` and `101 Switching Protocols` force `keep_alive == false`;
//! - `Limits::max_body_bytes` is not applied to responses.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};

use crate::error::ErrorKind;
use crate::headers;
use crate::parse::{
    check_line_endings, header_slots, map_httparse_error, span_of, span_str, window, ContentLength,
    HeaderFacts, Side, Slot, TransferEncoding, STACK_HEADERS,
};
use crate::{Framing, HeaderSpans, HttpError, Limits, Span, Version};

/// A parsed upstream response head (zero-copy spans into `buf`).
#[derive(Debug, Clone)]
pub struct ResponseHead {
    buf: Bytes,
    status: u16,
    reason: Span,
    version: Version,
    headers: HeaderSpans,
    framing: Framing,
    keep_alive: bool,
    other_transfer_coding: bool,
    /// Whether a `Connection` header names fields beyond `close` / `keep-alive`.
    conn_tokens: bool,
}

impl ResponseHead {
    /// The raw head bytes (status line through the blank line).
    pub fn raw(&self) -> &Bytes {
        &self.buf
    }
    /// Status code.
    pub fn status(&self) -> u16 {
        self.status
    }
    /// Reason phrase as sent (`""` when absent or when it holds non-ASCII bytes).
    pub fn reason(&self) -> &str {
        span_str(&self.buf, self.reason)
    }
    /// HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }
    /// First value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        // Byte comparison: no UTF-8 check per field (httparse accepted only
        // token characters in names).
        let name = name.as_bytes();
        self.headers
            .iter()
            .find(|(n, _)| n.get(&self.buf).eq_ignore_ascii_case(name))
            .map(|(_, v)| v.get(&self.buf))
    }
    /// All header fields in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers
            .iter()
            .map(move |&(n, v)| (span_str(&self.buf, n), v.get(&self.buf)))
    }
    /// [`ResponseHead::headers`] with the names as bytes: what a proxy copying
    /// fields uses (no UTF-8 check per name; httparse accepted only token
    /// characters).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.headers
            .iter()
            .map(move |&(n, v)| (n.get(&self.buf), v.get(&self.buf)))
    }
    /// Body framing.
    pub fn framing(&self) -> Framing {
        self.framing
    }
    /// Whether the upstream connection may be reused after this response.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }
    /// Whether this is an interim 1xx response (to be skipped by a proxy, except 101).
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }
    /// Whether header `name` is hop-by-hop for this response (fixed list + `Connection` tokens).
    pub fn is_hop_by_hop(&self, name: impl AsRef<[u8]>) -> bool {
        let name = name.as_ref();
        headers::is_hop_by_hop(name)
            || (self.conn_tokens
                && self
                    .fields()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
                    .any(|(_, v)| headers::connection_lists(v, name)))
    }
    /// Whether `Transfer-Encoding` lists codings besides one final `chunked`
    /// (e.g. `gzip, chunked`): the body a decoder yields is then still in those
    /// codings, which a proxy that strips `Transfer-Encoding` cannot forward as is.
    pub fn has_other_transfer_coding(&self) -> bool {
        self.other_transfer_coding
    }
}

/// Parse a response head from the start of `buf`; `head_request` tells whether
/// the request was `HEAD` (then there is no body whatever the headers say).
///
/// Same contract as [`crate::parse_request_head`]: `Ok(None)` for more bytes,
/// `Ok(Some((head, len)))`, or an error (status 502, `close == true`).
pub fn parse_response_head(
    buf: &Bytes,
    head_request: bool,
    limits: &Limits,
) -> Result<Option<(ResponseHead, usize)>, HttpError> {
    let parsed = parse(buf, head_request, limits).map_err(HttpError::into_upstream)?;
    Ok(parsed.map(|(mut head, len)| {
        head.buf = buf.slice(..len);
        (head, len)
    }))
}

/// Parse a response head from the start of an upstream connection's read buffer
/// and split it off (see [`crate::split_request_head`]: no copy, and no allocation
/// once the buffer is shared).
pub fn split_response_head(
    buf: &mut BytesMut,
    head_request: bool,
    limits: &Limits,
) -> Result<Option<ResponseHead>, HttpError> {
    let parsed = parse(buf, head_request, limits).map_err(HttpError::into_upstream)?;
    Ok(parsed.map(|(mut head, len)| {
        head.buf = buf.split_to(len).freeze();
        head
    }))
}

#[inline(always)]
fn parse(
    buf: &[u8],
    head_request: bool,
    limits: &Limits,
) -> Result<Option<(ResponseHead, usize)>, HttpError> {
    let win = window(buf, limits);
    let mut stack: [Slot<'_>; STACK_HEADERS] = [const { MaybeUninit::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = header_slots(&mut stack, &mut heap, limits.max_headers, win.len());
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, win, slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            check_line_endings(win, false)?;
            if buf.len() > limits.max_header_bytes {
                return Err(too_large());
            }
            return Ok(None);
        }
        Err(e) => return Err(map_httparse_error(e, win, Side::Response)),
    };
    if len > limits.max_header_bytes {
        return Err(too_large());
    }
    check_line_endings(&win[..len], true)?;

    let status = resp.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Err(HttpError::new(
            ErrorKind::Malformed,
            502,
            "invalid upstream status code",
        ));
    }
    let version = match resp.version {
        Some(0) => Version::Http10,
        _ => Version::Http11,
    };
    let reason = span_of(win, resp.reason.unwrap_or("").as_bytes());
    let fields: HeaderSpans = resp
        .headers
        .iter()
        .map(|h| (span_of(win, h.name.as_bytes()), span_of(win, h.value)))
        .collect();
    let facts = HeaderFacts::gather(resp.headers.iter().map(|h| (h.name, h.value)));

    let mut keep_alive = match version {
        Version::Http11 => !facts.conn_close,
        Version::Http10 => facts.conn_keep_alive && !facts.conn_close,
    };
    let mut other_transfer_coding = false;
    let bodiless = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if bodiless {
        Framing::None
    } else if facts.transfer_encoding != TransferEncoding::Absent {
        if facts.content_length != ContentLength::Absent {
            keep_alive = false;
        }
        match (version, facts.transfer_encoding) {
            (Version::Http10, _) => Framing::UntilClose,
            (_, TransferEncoding::Chunked) => Framing::Chunked,
            (_, TransferEncoding::ChunkedAfterOthers) => {
                other_transfer_coding = true;
                Framing::Chunked
            }
            _ => {
                other_transfer_coding = true;
                Framing::UntilClose
            }
        }
    } else {
        match facts.content_length {
            ContentLength::Absent => Framing::UntilClose,
            ContentLength::Valid(n) => Framing::Length(n),
            ContentLength::Invalid(message) => {
                return Err(HttpError::new(
                    ErrorKind::InvalidContentLength,
                    502,
                    message,
                ))
            }
        }
    };
    if framing == Framing::UntilClose || status == 101 {
        keep_alive = false;
    }
    let conn_tokens = headers::names_extra_connection_tokens(&buf[..len], &fields);
    let head = ResponseHead {
        buf: Bytes::new(),
        status,
        reason,
        version,
        headers: fields,
        framing,
        keep_alive,
        other_transfer_coding,
        conn_tokens,
    };
    Ok(Some((head, len)))
}

fn too_large() -> HttpError {
    HttpError::new(
        ErrorKind::HeaderTooLarge,
        502,
        "upstream response head larger than the limit",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse_as(
        raw: &[u8],
        head_request: bool,
    ) -> Result<Option<(ResponseHead, usize)>, HttpError> {
        parse_response_head(
            &Bytes::copy_from_slice(raw),
            head_request,
            &Limits::default(),
        )
    }

    fn head(raw: &[u8]) -> ResponseHead {
        parse_as(raw, false).unwrap().unwrap().0
    }

    #[test]
    fn split_response_keeps_the_body_in_the_buffer() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..]);
        let h = split_response_head(&mut buf, false, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(h.status(), 200);
        assert_eq!(h.framing(), Framing::Length(2));
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn accessors() {
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
        let (h, len) = parse_as(raw, false).unwrap().unwrap();
        assert_eq!(len, raw.len() - 3);
        assert_eq!(h.status(), 404);
        assert_eq!(h.reason(), "Not Found");
        assert_eq!(h.version(), Version::Http11);
        assert_eq!(h.header("x-a"), Some(&b"b"[..]));
        assert_eq!(h.headers().count(), 2);
        let text: Vec<_> = h.headers().map(|(n, v)| (n.as_bytes(), v)).collect();
        assert_eq!(h.fields().collect::<Vec<_>>(), text);
        assert_eq!(h.framing(), Framing::Length(3));
        assert!(h.keep_alive());
        assert!(!h.is_informational());
        assert_eq!(h.raw().len(), len);
    }

    #[test]
    fn reason_optional_and_obs_text() {
        assert_eq!(
            head(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").reason(),
            ""
        );
        assert_eq!(
            head(b"HTTP/1.1 200 \xffok\r\nContent-Length: 0\r\n\r\n").reason(),
            ""
        );
    }

    #[test]
    fn bodiless_statuses_and_head() {
        for raw in [
            &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: bogus\r\n\r\n",
        ] {
            assert_eq!(head(raw).framing(), Framing::None, "{raw:?}");
        }
        let (h, _) = parse_as(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing(), Framing::None);
        assert!(h.keep_alive());
        assert!(head(b"HTTP/1.1 100 Continue\r\n\r\n").is_informational());
        assert!(
            !head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n").keep_alive()
        );
    }

    #[test]
    fn framing_rules() {
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing(), Framing::Chunked);
        assert!(h.keep_alive());
        assert!(!h.has_other_transfer_coding());
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing(), Framing::Chunked);
        assert!(!h.keep_alive());
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing(), Framing::Chunked);
        assert!(h.has_other_transfer_coding());
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing(), Framing::UntilClose);
        assert!(!h.keep_alive());
        let h = head(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing(), Framing::UntilClose);
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing(), Framing::UntilClose);
        assert!(!h.keep_alive());
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(h.framing(), Framing::Length(4));
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            let e = parse_as(raw, false).unwrap_err();
            assert_eq!(
                (e.kind, e.status, e.close),
                (ErrorKind::InvalidContentLength, 502, true)
            );
        }
    }

    #[test]
    fn keep_alive_rules() {
        assert!(
            !head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .keep_alive()
        );
        assert!(!head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive());
        assert!(
            head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive()
        );
    }

    #[test]
    fn hop_by_hop() {
        let h = head(b"HTTP/1.1 200 OK\r\nConnection: x-trace\r\nContent-Length: 0\r\n\r\n");
        assert!(h.is_hop_by_hop("X-Trace"));
        assert!(h.is_hop_by_hop("upgrade"));
        assert!(!h.is_hop_by_hop("content-length"));
    }

    #[test]
    fn errors_are_502() {
        for raw in [
            &b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"[..],
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            let e = parse_as(raw, false).unwrap_err();
            assert_eq!((e.status, e.close), (502, true), "{raw:?}");
        }
        assert!(parse_as(b"HTTP/1.1 200 OK\r\n", false).unwrap().is_none());
        let limits = Limits {
            max_header_bytes: 16,
            ..Limits::default()
        };
        let e = parse_response_head(
            &Bytes::from_static(b"HTTP/1.1 200 OK\r\nX: 1234567\r\n"),
            false,
            &limits,
        )
        .unwrap_err();
        assert_eq!((e.kind, e.status), (ErrorKind::HeaderTooLarge, 502));
    }
}
