//! Helpers shared by the request- and response-head parsers (crate-private):
//! spans into the head buffer, the bounded parse window, header slots for
//! httparse, line-ending checks httparse does not make, httparse error
//! mapping, and the framing facts gathered from the header fields.

use std::mem::MaybeUninit;

use crate::error::{ErrorKind, HttpError};
use crate::headers::{connection_lists, list_elements, trim_ows};
use crate::{Limits, Span};

/// Header slots kept on the stack; a larger `Limits::max_headers` spills to the heap.
pub(crate) const STACK_HEADERS: usize = 128;

/// Uninitialised header slots for httparse (it writes only what it parses).
pub(crate) type Slot<'b> = MaybeUninit<httparse::Header<'b>>;

/// The prefix of `buf` httparse may look at: never more than the header limit
/// (so a huge buffer costs no more than a full head), never more than `u32`
/// offsets can address.
pub(crate) fn window<'b>(buf: &'b [u8], limits: &Limits) -> &'b [u8] {
    let max = limits.max_header_bytes.min(u32::MAX as usize);
    &buf[..buf.len().min(max)]
}

/// The header slots to hand to httparse: `max_headers` of them, capped by how
/// many fields can fit in `window_len` bytes (each takes at least 3), on the
/// stack when they fit there.
pub(crate) fn header_slots<'s, 'b>(
    stack: &'s mut [Slot<'b>; STACK_HEADERS],
    heap: &'s mut Vec<Slot<'b>>,
    max_headers: usize,
    window_len: usize,
) -> &'s mut [Slot<'b>] {
    let n = max_headers.min(window_len / 3 + 1);
    if n <= STACK_HEADERS {
        &mut stack[..n]
    } else {
        heap.resize(n, MaybeUninit::uninit());
        heap.as_mut_slice()
    }
}

/// The span of `part` (a sub-slice handed back by httparse) inside `base`;
/// an empty span if `part` does not lie inside `base` (httparse returns a
/// static `""` for some values, e.g. a reason phrase with obs-text).
pub(crate) fn span_of(base: &[u8], part: &[u8]) -> Span {
    let base_start = base.as_ptr() as usize;
    match (part.as_ptr() as usize).checked_sub(base_start) {
        Some(off) if off + part.len() <= base.len() && base.len() <= u32::MAX as usize => Span {
            start: off as u32,
            end: (off + part.len()) as u32,
        },
        _ => Span::default(),
    }
}

/// The bytes of `span` in `buf` as text; every span made by the parsers covers
/// text httparse validated (token, URI, visible ASCII), so the fallback `""`
/// is never taken in practice.
pub(crate) fn span_str(buf: &[u8], span: Span) -> &str {
    std::str::from_utf8(span.get(buf)).unwrap_or("")
}

/// Reject a bare LF (an LF not preceded by CR) or a bare CR (a CR not followed
/// by LF) anywhere in `head`. httparse accepts a lone `\n` as a line end; we do
/// not (request-smuggling defence: front and back ends must agree on lines).
/// With `complete == false` the head is still arriving, so a CR as the very
/// last byte may yet be followed by its LF.
///
/// A clean head is confirmed in one pass over its byte pairs with no branch per
/// byte (the compiler vectorises it: ~60 instructions for a 150-byte head, where
/// a `memchr` per line ending cost ~700); only a head that fails it is searched
/// again, for the error to name.
pub(crate) fn check_line_endings(head: &[u8], complete: bool) -> Result<(), HttpError> {
    // Every pair (a, b) must have "a is CR" equal to "b is LF"; the first
    // byte must not be an LF, and a finished head must not end in a CR.
    let mismatched = head
        .iter()
        .zip(head.iter().skip(1))
        .fold(false, |bad, (&a, &b)| bad | ((a == b'\r') != (b == b'\n')));
    let clean =
        !mismatched && head.first() != Some(&b'\n') && !(complete && head.last() == Some(&b'\r'));
    if clean {
        return Ok(());
    }
    if memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r') {
        return Err(HttpError::new(
            ErrorKind::BareLineFeed,
            400,
            "bare LF line terminator in the head (CRLF required)",
        ));
    }
    Err(HttpError::new(
        ErrorKind::BareLineFeed,
        400,
        "bare CR in the head",
    ))
}

/// Which message a parser was reading (for error wording and version checks).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Request,
    Response,
}

/// Map an httparse error on `window` to our error (statuses as for a request;
/// the response parser turns them into 502 afterwards).
pub(crate) fn map_httparse_error(err: httparse::Error, window: &[u8], side: Side) -> HttpError {
    // A bare CR / LF often makes httparse fail somewhere else; report the cause.
    let head_end = memchr::memmem::find(window, b"\r\n\r\n").map_or(window.len(), |i| i + 4);
    if let Err(e) = check_line_endings(&window[..head_end], false) {
        return e;
    }
    let malformed = |message| HttpError::new(ErrorKind::Malformed, 400, message);
    match err {
        httparse::Error::TooManyHeaders => {
            HttpError::new(ErrorKind::TooManyHeaders, 431, "too many header fields")
        }
        httparse::Error::Version if names_an_http_version(window, side) => HttpError::new(
            ErrorKind::UnsupportedVersion,
            505,
            "HTTP version not supported (only HTTP/1.0 and HTTP/1.1)",
        ),
        httparse::Error::Version => malformed("invalid HTTP version"),
        httparse::Error::HeaderName => {
            malformed("invalid header field name (or obsolete line folding)")
        }
        httparse::Error::HeaderValue => malformed("invalid header field value"),
        httparse::Error::NewLine => malformed("invalid line ending"),
        httparse::Error::Status => malformed("invalid status line"),
        httparse::Error::Token => match side {
            Side::Request => malformed("invalid request line"),
            Side::Response => malformed("invalid status line"),
        },
    }
}

/// Whether the version field of the first line looks like `HTTP/<digit>…`
/// (case-sensitive, as the version is)
/// (a well-formed but unsupported version such as `HTTP/2.0` or `HTTP/1.2`).
fn names_an_http_version(window: &[u8], side: Side) -> bool {
    let start = window
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(window.len());
    let rest = &window[start..];
    let line_end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
    let line = &rest[..line_end];
    let field = match side {
        // Only a well-formed `method SP target SP version` line names a version.
        Side::Request if memchr::memchr_iter(b' ', line).count() != 2 => return false,
        Side::Request => line.rsplit(|&b| b == b' ').next().unwrap_or(line),
        Side::Response => line.split(|&b| b == b' ').next().unwrap_or(line),
    };
    field.len() > 5 && field.starts_with(b"HTTP/") && field[5].is_ascii_digit()
}

/// The `Content-Length` header fields, combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentLength {
    /// No `Content-Length` field.
    Absent,
    /// One value (possibly repeated identically).
    Valid(u64),
    /// Present but unusable (syntax, overflow, or differing values).
    Invalid(&'static str),
}

/// The `Transfer-Encoding` header fields, combined (all fields, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferEncoding {
    /// No `Transfer-Encoding` field.
    Absent,
    /// Field(s) present but listing no coding at all.
    Empty,
    /// Exactly one coding, `chunked`.
    Chunked,
    /// Final coding `chunked`, preceded by other codings (e.g. `gzip, chunked`).
    ChunkedAfterOthers,
    /// Final coding is not `chunked` (e.g. `gzip`, `identity`, `chunked, gzip`).
    NotChunked,
}

/// What the header fields say about framing and the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderFacts {
    pub content_length: ContentLength,
    pub transfer_encoding: TransferEncoding,
    pub conn_close: bool,
    pub conn_keep_alive: bool,
    pub expect_continue: bool,
    pub hosts: usize,
}

impl HeaderFacts {
    /// Gather the facts from the header fields in order.
    pub(crate) fn gather<'a>(fields: impl Iterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut facts = HeaderFacts {
            content_length: ContentLength::Absent,
            transfer_encoding: TransferEncoding::Absent,
            conn_close: false,
            conn_keep_alive: false,
            expect_continue: false,
            hosts: 0,
        };
        let mut codings = 0usize;
        let mut last_chunked = false;
        // One length compare picks the only name a field can be: comparing each
        // field against all five names cost ~100 instructions a field.
        for (name, value) in fields {
            let is = |known: &str| name.eq_ignore_ascii_case(known);
            match name.len() {
                14 if is("content-length") => {
                    facts.content_length = merge_content_length(facts.content_length, value);
                }
                17 if is("transfer-encoding") => {
                    for coding in list_elements(value) {
                        codings += 1;
                        last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                    }
                    facts.transfer_encoding = match (codings, last_chunked) {
                        (0, _) => TransferEncoding::Empty,
                        (1, true) => TransferEncoding::Chunked,
                        (_, true) => TransferEncoding::ChunkedAfterOthers,
                        (_, false) => TransferEncoding::NotChunked,
                    };
                }
                10 if is("connection") => {
                    facts.conn_close |= connection_lists(value, "close");
                    facts.conn_keep_alive |= connection_lists(value, "keep-alive");
                }
                6 if is("expect") => {
                    facts.expect_continue |= trim_ows(value).eq_ignore_ascii_case(b"100-continue");
                }
                4 if is("host") => facts.hosts += 1,
                _ => {}
            }
        }
        facts
    }
}

/// Fold one more `Content-Length` field value (itself possibly a comma list)
/// into what was seen so far.
fn merge_content_length(seen: ContentLength, value: &[u8]) -> ContentLength {
    if let ContentLength::Invalid(_) = seen {
        return seen;
    }
    let mut seen = seen;
    let mut any = false;
    for element in value.split(|&b| b == b',') {
        any = true;
        let n = match parse_decimal(trim_ows(element)) {
            Some(n) => n,
            None => return ContentLength::Invalid("invalid Content-Length value"),
        };
        seen = match seen {
            ContentLength::Valid(m) if m != n => {
                return ContentLength::Invalid("conflicting Content-Length values")
            }
            _ => ContentLength::Valid(n),
        };
    }
    if any {
        seen
    } else {
        ContentLength::Invalid("invalid Content-Length value")
    }
}

/// `1*DIGIT` as a `u64`: no sign, no spaces, no hex, no overflow.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decimal_is_strict() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"00012"), Some(12));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        for bad in [&b""[..], b"+5", b"-1", b" 5", b"0x5", b"5a", b"1 2"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn content_length_merging() {
        let one = |v: &[u8]| merge_content_length(ContentLength::Absent, v);
        assert_eq!(one(b"5"), ContentLength::Valid(5));
        assert_eq!(one(b"5, 5"), ContentLength::Valid(5));
        assert!(matches!(one(b"5, 6"), ContentLength::Invalid(_)));
        assert!(matches!(one(b"5,"), ContentLength::Invalid(_)));
        assert!(matches!(one(b""), ContentLength::Invalid(_)));
        assert_eq!(
            merge_content_length(ContentLength::Valid(5), b"5"),
            ContentLength::Valid(5)
        );
        assert!(matches!(
            merge_content_length(ContentLength::Valid(5), b"7"),
            ContentLength::Invalid(_)
        ));
    }

    #[test]
    fn transfer_encoding_lists_combine_across_fields() {
        let te = |fields: &[&[u8]]| {
            HeaderFacts::gather(fields.iter().map(|v| ("Transfer-Encoding", *v))).transfer_encoding
        };
        assert_eq!(te(&[b"chunked"]), TransferEncoding::Chunked);
        assert_eq!(te(&[b"CHUNKED "]), TransferEncoding::Chunked);
        assert_eq!(
            te(&[b"gzip", b"chunked"]),
            TransferEncoding::ChunkedAfterOthers
        );
        assert_eq!(
            te(&[b"gzip, chunked"]),
            TransferEncoding::ChunkedAfterOthers
        );
        assert_eq!(te(&[b"chunked", b"gzip"]), TransferEncoding::NotChunked);
        assert_eq!(
            te(&[b"chunked, chunked"]),
            TransferEncoding::ChunkedAfterOthers
        );
        assert_eq!(te(&[b"identity"]), TransferEncoding::NotChunked);
        assert_eq!(te(&[b"chunked;q=1"]), TransferEncoding::NotChunked);
        assert_eq!(te(&[b""]), TransferEncoding::Empty);
        assert_eq!(te(&[]), TransferEncoding::Absent);
    }

    #[test]
    fn line_endings() {
        assert!(check_line_endings(b"a\r\nb\r\n\r\n", true).is_ok());
        assert!(check_line_endings(b"a\r\nb\r", false).is_ok());
        assert!(check_line_endings(b"a\r\nb\r", true).is_err());
        assert!(check_line_endings(b"a\nb", false).is_err());
        assert!(check_line_endings(b"\n", false).is_err());
        assert!(check_line_endings(b"a\rb\r\n", false).is_err());
    }

    /// The one-pass check agrees with the plain reading of the rule (every LF
    /// after a CR, every CR before an LF, a trailing CR only while incomplete),
    /// message included, on every string of up to 8 bytes over `a`, CR and LF.
    #[test]
    fn line_endings_agree_with_the_rule_on_every_short_string() {
        fn rule(head: &[u8], complete: bool) -> Option<&'static str> {
            let bare_lf =
                (0..head.len()).any(|i| head[i] == b'\n' && (i == 0 || head[i - 1] != b'\r'));
            let bare_cr = (0..head.len())
                .any(|i| head[i] == b'\r' && head.get(i + 1).map_or(complete, |&b| b != b'\n'));
            if bare_lf {
                Some("bare LF line terminator in the head (CRLF required)")
            } else if bare_cr {
                Some("bare CR in the head")
            } else {
                None
            }
        }
        let alphabet = [b'a', b'\r', b'\n'];
        let mut checked = 0;
        for len in 0..=8u32 {
            for mut code in 0..3usize.pow(len) {
                let head: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = alphabet[code % 3];
                        code /= 3;
                        b
                    })
                    .collect();
                for complete in [false, true] {
                    let got = check_line_endings(&head, complete).err().map(|e| e.message);
                    assert_eq!(got, rule(&head, complete), "{head:?} complete={complete}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 2 * (0..=8).map(|n| 3usize.pow(n)).sum::<usize>());
    }

    #[test]
    fn version_sniffing() {
        assert!(names_an_http_version(b"GET / HTTP/2.0\r\n", Side::Request));
        assert!(names_an_http_version(b"\r\nGET / HTTP/1.2", Side::Request));
        assert!(!names_an_http_version(b"GET / HTTX/1.1\r\n", Side::Request));
        assert!(!names_an_http_version(b"GET / HTTP/\r\n", Side::Request));
        assert!(!names_an_http_version(
            b"GET /a b HTTP/1.1\r\n",
            Side::Request
        ));
        assert!(names_an_http_version(b"HTTP/2 200 OK\r\n", Side::Response));
    }

    #[test]
    fn span_of_outside_is_empty() {
        let base = b"hello world";
        assert_eq!(span_of(base, &base[6..]), Span { start: 6, end: 11 });
        assert_eq!(span_of(base, b"elsewhere"), Span::default());
    }
}
