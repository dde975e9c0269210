//! Request-head parsing: httparse for the syntax, then RFC 9112 framing rules and
//! smuggling defences (CL+TE, differing duplicate CL, non-chunked TE, bare LF).
//!
//! Decisions a caller must know:
//! - every error closes the connection (`HttpError::close` is always `true`);
//! - statuses: 400 syntax / framing, 413 `Content-Length` over the body limit,
//!   431 head too large or too many fields, 501 a transfer coding other than a
//!   lone `chunked` (also `gzip, chunked`), 505 a well-formed other version;
//! - an HTTP/1.1 request without a `Host` field is a 400, and so is more than
//!   one `Host` field (RFC 9112 §3.2); HTTP/1.0 may omit it;
//! - an absolute-form target (`http://a.example/p?q`, `https://…`; RFC 9112
//!   §3.2.2) is split into its authority ([`RequestHead::authority`]), which
//!   wins over the `Host` field ([`RequestHead::host`]), and its origin-form
//!   ([`RequestHead::target`]: `/p?q`, `/` for an empty path). An absolute-form
//!   target with another scheme, an empty authority, userinfo (`user@host`), or
//!   a query but no path is a 400;
//! - `Content-Length: 0` gives `Framing::Length(0)`, no body fields give
//!   `Framing::None`;
//! - `Expect: 100-continue` is honoured for HTTP/1.1 only (RFC 9110 §10.1.1);
//! - a chunked request body is not limited here: count the decoded bytes
//!   ([`crate::ChunkedDecoder::body_len`]) against `Limits::max_body_bytes`.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};

use crate::error::ErrorKind;
use crate::headers;
use crate::parse::{
    check_line_endings, header_slots, map_httparse_error, span_of, span_str, window, ContentLength,
    HeaderFacts, Side, Slot, TransferEncoding, STACK_HEADERS,
};
use crate::{Framing, HeaderSpans, HttpError, Limits, Span, Version};

/// A parsed request head. Zero-copy: the spans point into `buf`, which shares the
/// connection's read buffer allocation.
#[derive(Debug, Clone)]
pub struct RequestHead {
    buf: Bytes,
    method: Span,
    /// The origin-form part of the target (for an absolute-form target, what
    /// follows the authority); empty with `root` for `http://host`.
    target: Span,
    /// The authority of an absolute-form target; empty for other forms.
    authority: Span,
    /// An absolute-form target with an empty path: the origin-form is `/`.
    root: bool,
    version: Version,
    headers: HeaderSpans,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    /// Whether a `Connection` header names fields beyond `close` / `keep-alive`.
    conn_tokens: bool,
}

impl RequestHead {
    /// The raw head bytes (request line through the blank line).
    pub fn raw(&self) -> &Bytes {
        &self.buf
    }
    /// Request method, e.g. `POST`.
    pub fn method(&self) -> &str {
        span_str(&self.buf, self.method)
    }
    /// Request target in origin-form (path plus optional query): as sent, or,
    /// for an absolute-form target (`http://host/p?q`), the part after the
    /// authority (`/p?q`; `/` when the path is empty). Asterisk- and
    /// authority-form targets are returned as sent.
    pub fn target(&self) -> &str {
        if self.root {
            "/"
        } else {
            span_str(&self.buf, self.target)
        }
    }
    /// The authority of an absolute-form target (`host[:port]`), if the target
    /// had that form.
    pub fn authority(&self) -> Option<&str> {
        (self.authority.start != self.authority.end).then(|| span_str(&self.buf, self.authority))
    }
    /// The host the request is for: the authority of an absolute-form target,
    /// which wins (RFC 9112 §3.2.2), else the `Host` field.
    pub fn host(&self) -> Option<&[u8]> {
        match self.authority() {
            Some(a) => Some(a.as_bytes()),
            None => self.header("host"),
        }
    }
    /// Path part of the target (before `?`), in origin-form.
    pub fn path(&self) -> &str {
        let target = self.target();
        target.split_once('?').map_or(target, |(path, _)| path)
    }
    /// Query part of the target (after `?`, without it), if any.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, query)| query)
    }
    /// [`RequestHead::path`] and [`RequestHead::query`] together, from one
    /// UTF-8 check of the target instead of two.
    pub fn path_and_query(&self) -> (&str, Option<&str>) {
        let target = self.target();
        match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        }
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
    /// All header fields in order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers
            .iter()
            .map(move |&(n, v)| (span_str(&self.buf, n), v.get(&self.buf)))
    }
    /// [`RequestHead::headers`] with the names as bytes: what a proxy copying
    /// fields uses (no UTF-8 check per name, ~100 instructions each; httparse
    /// accepted only token characters).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.headers
            .iter()
            .map(move |&(n, v)| (n.get(&self.buf), v.get(&self.buf)))
    }
    /// [`RequestHead::method`] as bytes (no UTF-8 check).
    pub fn method_bytes(&self) -> &[u8] {
        self.method.get(&self.buf)
    }
    /// [`RequestHead::target`] as bytes (no UTF-8 check).
    pub fn target_bytes(&self) -> &[u8] {
        if self.root {
            b"/"
        } else {
            self.target.get(&self.buf)
        }
    }
    /// Body framing decided from `Content-Length` / `Transfer-Encoding`.
    pub fn framing(&self) -> Framing {
        self.framing
    }
    /// Whether the client wants the connection kept open after this exchange.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }
    /// Whether the client sent `Expect: 100-continue`.
    pub fn expect_continue(&self) -> bool {
        self.expect_continue
    }
    /// Whether header `name` must not be forwarded: fixed hop-by-hop names plus
    /// the names listed in this request's `Connection` header.
    pub fn is_hop_by_hop(&self, name: impl AsRef<[u8]>) -> bool {
        let name = name.as_ref();
        headers::is_hop_by_hop(name)
            || (self.conn_tokens
                && self
                    .fields()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
                    .any(|(_, v)| headers::connection_lists(v, name)))
    }
}

/// Parse a request head from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (and `buf` is still within the
/// header limit), `Ok(Some((head, len)))` with the head length in bytes on
/// success (the caller splits `len` bytes off its buffer; `head` holds
/// `buf.slice(..len)`, a reference-counted view, no copy), or the error to
/// answer (always with `close == true`; see the module docs for statuses).
pub fn parse_request_head(
    buf: &Bytes,
    limits: &Limits,
) -> Result<Option<(RequestHead, usize)>, HttpError> {
    Ok(parse(buf, limits)?.map(|(mut head, len)| {
        head.buf = buf.slice(..len);
        (head, len)
    }))
}

/// Parse a request head from the start of a connection's read buffer and split it
/// off: on success `buf` keeps only what follows the head (body bytes, pipelined
/// requests) and the head shares the buffer's allocation. Nothing is copied and,
/// once the buffer is shared, nothing is allocated. Errors and `Ok(None)` as for
/// [`parse_request_head`]; `buf` is untouched then.
pub fn split_request_head(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<RequestHead>, HttpError> {
    Ok(parse(buf, limits)?.map(|(mut head, len)| {
        head.buf = buf.split_to(len).freeze();
        head
    }))
}

/// The parse proper, over plain bytes; the returned head's `buf` is empty and the
/// caller fills it with the first `len` bytes.
#[inline(always)]
fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let win = window(buf, limits);
    let mut stack: [Slot<'_>; STACK_HEADERS] = [const { MaybeUninit::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = header_slots(&mut stack, &mut heap, limits.max_headers, win.len());
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(win, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            check_line_endings(win, false)?;
            if buf.len() > limits.max_header_bytes {
                return Err(too_large());
            }
            return Ok(None);
        }
        Err(e) => return Err(map_httparse_error(e, win, Side::Request)),
    };
    if len > limits.max_header_bytes {
        return Err(too_large());
    }
    check_line_endings(&win[..len], true)?;

    let version = match req.version {
        Some(0) => Version::Http10,
        _ => Version::Http11,
    };
    let method = span_of(win, req.method.unwrap_or("").as_bytes());
    let mut target = span_of(win, req.path.unwrap_or("").as_bytes());
    let fields: HeaderSpans = req
        .headers
        .iter()
        .map(|h| (span_of(win, h.name.as_bytes()), span_of(win, h.value)))
        .collect();
    let facts = HeaderFacts::gather(req.headers.iter().map(|h| (h.name, h.value)));
    if method.start == method.end || target.start == target.end {
        return Err(malformed("invalid request line"));
    }
    if facts.hosts > 1 {
        return Err(malformed("more than one Host header field"));
    }
    if facts.hosts == 0 && version == Version::Http11 {
        return Err(malformed("HTTP/1.1 request without a Host header field"));
    }
    let (authority, root) = match absolute_form(target.get(win))? {
        Some(abs) => {
            let base = target.start;
            target = Span {
                start: base + abs.path_start,
                end: target.end,
            };
            let authority = Span {
                start: base + abs.authority.0,
                end: base + abs.authority.1,
            };
            (authority, target.start == target.end)
        }
        None => (Span::default(), false),
    };
    let framing = request_framing(&facts, version, limits)?;
    let keep_alive = match version {
        Version::Http11 => !facts.conn_close,
        Version::Http10 => facts.conn_keep_alive && !facts.conn_close,
    };
    let conn_tokens = headers::names_extra_connection_tokens(&buf[..len], &fields);
    let head = RequestHead {
        buf: Bytes::new(),
        method,
        target,
        authority,
        root,
        version,
        headers: fields,
        framing,
        keep_alive,
        expect_continue: facts.expect_continue && version == Version::Http11,
        conn_tokens,
    };
    Ok(Some((head, len)))
}

/// The body framing of a request (RFC 9112 §6.1–6.3), strictest reading.
fn request_framing(
    facts: &HeaderFacts,
    version: Version,
    limits: &Limits,
) -> Result<Framing, HttpError> {
    if facts.transfer_encoding != TransferEncoding::Absent {
        if version == Version::Http10 {
            return Err(malformed("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if facts.content_length != ContentLength::Absent {
            return Err(HttpError::new(
                ErrorKind::ContentLengthAndTransferEncoding,
                400,
                "both Content-Length and Transfer-Encoding present",
            ));
        }
    }
    match facts.transfer_encoding {
        TransferEncoding::Absent => {}
        TransferEncoding::Chunked => return Ok(Framing::Chunked),
        TransferEncoding::Empty => return Err(malformed("empty Transfer-Encoding")),
        TransferEncoding::ChunkedAfterOthers => {
            return Err(HttpError::new(
                ErrorKind::UnsupportedTransferEncoding,
                501,
                "transfer codings other than chunked are not supported",
            ))
        }
        TransferEncoding::NotChunked => {
            return Err(HttpError::new(
                ErrorKind::UnsupportedTransferEncoding,
                501,
                "the final transfer coding is not chunked",
            ))
        }
    }
    match facts.content_length {
        ContentLength::Absent => Ok(Framing::None),
        ContentLength::Invalid(message) => Err(HttpError::new(
            ErrorKind::InvalidContentLength,
            400,
            message,
        )),
        ContentLength::Valid(n) if n > limits.max_body_bytes => Err(HttpError::new(
            ErrorKind::BodyTooLarge,
            413,
            "request body larger than the limit",
        )),
        ContentLength::Valid(n) => Ok(Framing::Length(n)),
    }
}

/// Offsets (within the target) of an absolute-form target's parts.
struct AbsoluteForm {
    /// `start..end` of the authority.
    authority: (u32, u32),
    /// Where the origin-form part (`/path?query`) starts.
    path_start: u32,
}

/// Recognises an absolute-form target (`scheme://authority[/path][?query]`).
/// `Ok(None)` for every other form; a 400 for an absolute-form target this
/// gateway will not convert (see the module doc).
fn absolute_form(target: &[u8]) -> Result<Option<AbsoluteForm>, HttpError> {
    // Origin-form (nearly every request) starts with `/`, and a `://` after it
    // is part of the path: no search (building one cost ~200 instructions).
    if target.first() == Some(&b'/') {
        return Ok(None);
    }
    let Some(sep) = memchr::memmem::find(target, b"://") else {
        return Ok(None);
    };
    let scheme = &target[..sep];
    if !scheme.iter().all(u8::is_ascii_alphabetic) {
        return Ok(None);
    }
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return Err(malformed(
            "absolute-form target with a scheme other than http or https",
        ));
    }
    let start = sep + 3;
    let rest = &target[start..];
    let len = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..len];
    if authority.is_empty() {
        return Err(malformed("absolute-form target without an authority"));
    }
    if authority.contains(&b'@') {
        return Err(malformed("absolute-form target with userinfo"));
    }
    if rest.get(len).is_some_and(|&b| b != b'/') {
        return Err(malformed("absolute-form target with a query but no path"));
    }
    // Targets are bounded by the head window (u32 offsets, see `parse::window`).
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(Some(AbsoluteForm {
        authority: (to_u32(start), to_u32(start + len)),
        path_start: to_u32(start + len),
    }))
}

fn malformed(message: &'static str) -> HttpError {
    HttpError::new(ErrorKind::Malformed, 400, message)
}

fn too_large() -> HttpError {
    HttpError::new(
        ErrorKind::HeaderTooLarge,
        431,
        "request head larger than the limit",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
        parse_request_head(&Bytes::copy_from_slice(raw), &Limits::default())
    }

    fn head(raw: &[u8]) -> RequestHead {
        parse(raw).unwrap().unwrap().0
    }

    fn err(raw: &[u8]) -> HttpError {
        parse(raw).unwrap_err()
    }

    /// The byte accessors a proxy copies from are the text ones without the
    /// UTF-8 check: same bytes, same order, for every target form.
    #[test]
    fn byte_accessors_agree_with_the_text_ones() {
        for raw in [
            &b"POST /v1/completions?x=1 HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nx-two: \xff\r\nContent-Length: 0\r\n\r\n"[..],
            b"GET http://a.example HTTP/1.1\r\nHost: b\r\n\r\n",
            b"GET http://a.example/p?q HTTP/1.1\r\nHost: b\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: b\r\n\r\n",
        ] {
            let h = head(raw);
            assert_eq!(h.path_and_query(), (h.path(), h.query()));
            assert_eq!(h.method_bytes(), h.method().as_bytes());
            assert_eq!(h.target_bytes(), h.target().as_bytes());
            let text: Vec<_> = h.headers().map(|(n, v)| (n.as_bytes(), v)).collect();
            let bytes: Vec<_> = h.fields().collect();
            assert_eq!(text, bytes);
            assert!(!bytes.is_empty());
        }
    }

    #[test]
    fn simple_get_and_accessors() {
        let raw =
            b"GET /v1/models?x=1&y HTTP/1.1\r\nHost: a\r\nX-Foo: bar \r\nx-foo: two\r\n\r\nBODY";
        let (h, len) = parse(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!(h.raw().len(), len);
        assert_eq!(h.method(), "GET");
        assert_eq!(h.target(), "/v1/models?x=1&y");
        assert_eq!(h.path(), "/v1/models");
        assert_eq!(h.query(), Some("x=1&y"));
        assert_eq!(h.version(), Version::Http11);
        assert_eq!(h.header("x-foo"), Some(&b"bar"[..]));
        assert_eq!(h.header("HOST"), Some(&b"a"[..]));
        assert_eq!(h.header("missing"), None);
        let all: Vec<_> = h.headers().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2], ("x-foo", &b"two"[..]));
        assert_eq!(h.framing(), Framing::None);
        assert!(h.keep_alive());
        assert!(!h.expect_continue());
    }

    #[test]
    fn path_without_query() {
        let h = head(b"POST /a HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.path(), "/a");
        assert_eq!(h.query(), None);
        let h = head(b"GET /a? HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.query(), Some(""));
    }

    #[test]
    fn split_leaves_the_rest_in_the_buffer() {
        let mut buf =
            BytesMut::from(&b"POST /v1 HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}GET"[..]);
        let start = buf.as_ptr();
        let h = split_request_head(&mut buf, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(h.path(), "/v1");
        assert_eq!(h.header("host"), Some(&b"a"[..]));
        assert_eq!(h.raw().as_ptr(), start, "the head shares the buffer");
        assert_eq!(&buf[..], b"{}GET");
        // An incomplete head leaves the buffer as it was.
        let _ = buf.split_to(2);
        assert!(split_request_head(&mut buf, &Limits::default())
            .unwrap()
            .is_none());
        assert_eq!(&buf[..], b"GET");
    }

    #[test]
    fn many_headers_spill_to_the_heap_intact() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..40 {
            raw.extend_from_slice(format!("x-h{i}: v{i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let h = head(&raw);
        assert_eq!(h.headers().count(), 41);
        assert_eq!(h.header("x-h39"), Some(&b"v39"[..]));
    }

    #[test]
    fn head_is_zero_copy_view() {
        let buf = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest");
        let (h, len) = parse_request_head(&buf, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(h.raw().as_ptr(), buf.as_ptr());
        assert_eq!(len, 27);
    }

    #[test]
    fn incomplete_head_needs_more() {
        assert!(parse(b"").unwrap().is_none());
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r").unwrap().is_none());
        assert!(parse(b"POS").unwrap().is_none());
    }

    #[test]
    fn framing_decisions() {
        assert_eq!(
            head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").framing(),
            Framing::Length(12)
        );
        assert_eq!(
            head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").framing(),
            Framing::Length(0)
        );
        assert_eq!(
            head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n")
                .framing(),
            Framing::Length(7)
        );
        assert_eq!(
            head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").framing(),
            Framing::Chunked
        );
        let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            (e.kind, e.status),
            (ErrorKind::ContentLengthAndTransferEncoding, 400)
        );
        let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(
            (e.kind, e.status),
            (ErrorKind::UnsupportedTransferEncoding, 501)
        );
        let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(
            (e.kind, e.status),
            (ErrorKind::UnsupportedTransferEncoding, 501)
        );
        let e = err(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((e.kind, e.status), (ErrorKind::Malformed, 400));
        let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n");
        assert_eq!((e.kind, e.status), (ErrorKind::InvalidContentLength, 400));
        let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n");
        assert_eq!((e.kind, e.status), (ErrorKind::Malformed, 400));
    }

    #[test]
    fn body_limit_is_checked_against_content_length() {
        let limits = Limits {
            max_body_bytes: 10,
            ..Limits::default()
        };
        let ok = Bytes::from_static(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n");
        assert!(parse_request_head(&ok, &limits).unwrap().is_some());
        let big = Bytes::from_static(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n");
        let e = parse_request_head(&big, &limits).unwrap_err();
        assert_eq!(
            (e.kind, e.status, e.close),
            (ErrorKind::BodyTooLarge, 413, true)
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive());
        assert!(!head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n").keep_alive());
        assert!(head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").keep_alive());
        assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
        assert!(!head(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive());
    }

    #[test]
    fn expect_continue_only_for_http11() {
        assert!(
            head(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n").expect_continue()
        );
        assert!(!head(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue());
        assert!(!head(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n").expect_continue());
    }

    #[test]
    fn hop_by_hop_includes_connection_tokens() {
        let h =
            head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Secret, close\r\nConnection: x-other\r\n\r\n");
        assert!(h.is_hop_by_hop("x-secret"));
        assert!(h.is_hop_by_hop("X-Other"));
        assert!(h.is_hop_by_hop("Keep-Alive"));
        assert!(h.is_hop_by_hop("transfer-encoding"));
        assert!(!h.is_hop_by_hop("content-type"));
    }

    #[test]
    fn limits_on_head_size_and_field_count() {
        let limits = Limits {
            max_header_bytes: 64,
            max_headers: 2,
            ..Limits::default()
        };
        let long = Bytes::from(format!("GET /{} HTTP/1.1\r\n", "a".repeat(80)));
        let e = parse_request_head(&long, &limits).unwrap_err();
        assert_eq!((e.kind, e.status), (ErrorKind::HeaderTooLarge, 431));
        let three = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\nb: 2\r\nc: 3\r\n\r\n");
        let e = parse_request_head(&three, &limits).unwrap_err();
        assert_eq!((e.kind, e.status), (ErrorKind::TooManyHeaders, 431));
        let two = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\nb: 2\r\n\r\n");
        assert!(parse_request_head(&two, &limits).unwrap().is_some());
    }

    #[test]
    fn many_headers_above_stack_capacity() {
        let limits = Limits {
            max_headers: 300,
            ..Limits::default()
        };
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 1..250 {
            raw.push_str(&format!("h{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        let (h, _) = parse_request_head(&Bytes::from(raw), &limits)
            .unwrap()
            .unwrap();
        assert_eq!(h.headers().count(), 250);
        assert_eq!(h.header("H249"), Some(&b"v"[..]));
    }

    #[test]
    fn host_is_required_once_in_http11_optional_in_http10() {
        let e = err(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            (e.kind, e.status, e.close),
            (ErrorKind::Malformed, 400, true)
        );
        let e = err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        assert_eq!((e.kind, e.status), (ErrorKind::Malformed, 400));
        let e = err(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n");
        assert_eq!((e.kind, e.status), (ErrorKind::Malformed, 400));
        let h = head(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.host(), None);
        let e = err(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n");
        assert_eq!(e.status, 400);
    }

    #[test]
    fn absolute_form_becomes_origin_form_and_its_authority_wins() {
        let h = head(b"GET http://evil.example/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.target(), "/x?y=1");
        assert_eq!(h.path(), "/x");
        assert_eq!(h.query(), Some("y=1"));
        assert_eq!(h.authority(), Some("evil.example"));
        assert_eq!(h.host(), Some(&b"evil.example"[..]));
        assert_eq!(
            h.header("host"),
            Some(&b"a"[..]),
            "the field is kept as sent"
        );
        let h = head(b"GET HTTPS://b.example:8443 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((h.target(), h.authority()), ("/", Some("b.example:8443")));
        // Origin-form with `://` inside the path is not absolute-form.
        let h = head(b"GET /p/http://x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((h.target(), h.authority()), ("/p/http://x", None));
        assert_eq!(h.host(), Some(&b"a"[..]));
        for bad in [
            &b"GET ftp://x/y HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET http:///y HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://u:p@x/y HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://x?q HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let e = err(bad);
            assert_eq!((e.kind, e.status), (ErrorKind::Malformed, 400), "{bad:?}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(head(b"GET / HTTP/1.0\r\n\r\n").version(), Version::Http10);
        let e = err(b"GET / HTTP/2.0\r\n\r\n");
        assert_eq!((e.kind, e.status), (ErrorKind::UnsupportedVersion, 505));
        let e = err(b"GET / HTTP/1.2\r\n\r\n");
        assert_eq!((e.kind, e.status), (ErrorKind::UnsupportedVersion, 505));
        let e = err(b"GET / FTP/1.1\r\n\r\n");
        assert_eq!((e.kind, e.status), (ErrorKind::Malformed, 400));
    }

    #[test]
    fn bare_lf_and_cr_rejected() {
        let e = err(b"GET / HTTP/1.1\nHost: a\n\n");
        assert_eq!((e.kind, e.status), (ErrorKind::BareLineFeed, 400));
        // Rejected before the head is even complete.
        let e = err(b"GET / HTTP/1.1\nHost: a");
        assert_eq!(e.kind, ErrorKind::BareLineFeed);
        let e = err(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n");
        assert_eq!(e.kind, ErrorKind::BareLineFeed);
    }

    #[test]
    fn every_error_closes() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n"[..],
            b"GET / HTTP/3\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        ] {
            assert!(err(raw).close, "{raw:?}");
        }
    }
}
