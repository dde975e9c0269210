//! Corpus of nasty inputs for the request parser, the response parser and the
//! chunked decoder: each case names the attack or mistake, the raw bytes, and
//! the exact outcome (accepted with a property, incomplete, or the error kind,
//! status and close flag). Valid chunked bodies are also fed split at every
//! byte boundary, one byte at a time, and in pseudo-random pieces.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use shardgate_http::{
    parse_request_head, parse_response_head, ChunkedDecoder, ErrorKind, Framing, HttpError, Limits,
    RequestHead, ResponseHead, Version,
};

/// Limits used by every request case: small enough to reach with short inputs.
const LIMITS: Limits = Limits {
    max_header_bytes: 512,
    max_headers: 8,
    max_body_bytes: 1_000_000,
};

enum Expect<H> {
    /// Parsed; the predicate holds.
    Accept(fn(&H) -> bool),
    /// Needs more bytes.
    Incomplete,
    /// Rejected with this kind and status (and `close`).
    Reject(ErrorKind, u16, bool),
}

use Expect::{Accept, Incomplete, Reject};

fn framing_is(h: &RequestHead, f: Framing) -> bool {
    h.framing() == f
}

/// A request case: name, raw bytes, expected outcome.
type RequestCase = (&'static str, Vec<u8>, Expect<RequestHead>);
/// A response case: name, raw bytes, whether the request was HEAD, expected outcome.
type ResponseCase = (&'static str, Vec<u8>, bool, Expect<ResponseHead>);
/// A chunked-body case: name, raw body, the decoded data or the error kind.
type ChunkedCase = (&'static str, Vec<u8>, Result<&'static [u8], ErrorKind>);

fn request_cases() -> Vec<RequestCase> {
    use ErrorKind::*;
    let b = |s: &str| s.as_bytes().to_vec();
    let many_headers: String = (0..9).map(|i| format!("h{i}: v\r\n")).collect();
    vec![
        ("simple get", b("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Accept(|h| h.method() == "GET" && h.framing() == Framing::None)),
        ("post with length", b("POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"), Accept(|h| framing_is(h, Framing::Length(5)))),
        ("chunked post", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"), Accept(|h| framing_is(h, Framing::Chunked))),
        ("chunked upper case", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n"), Accept(|h| framing_is(h, Framing::Chunked))),
        ("CL then TE", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), Reject(ContentLengthAndTransferEncoding, 400, true)),
        ("TE then CL", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"), Reject(ContentLengthAndTransferEncoding, 400, true)),
        ("CL+TE with invalid CL", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n"), Reject(ContentLengthAndTransferEncoding, 400, true)),
        ("duplicate differing CL", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"), Reject(InvalidContentLength, 400, true)),
        ("duplicate identical CL", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"), Accept(|h| framing_is(h, Framing::Length(5)))),
        ("CL list identical", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"), Accept(|h| framing_is(h, Framing::Length(5)))),
        ("CL list differing", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n"), Reject(InvalidContentLength, 400, true)),
        ("CL list empty element", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n"), Reject(InvalidContentLength, 400, true)),
        ("CL plus sign", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"), Reject(InvalidContentLength, 400, true)),
        ("CL negative", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"), Reject(InvalidContentLength, 400, true)),
        ("CL inner space", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n"), Reject(InvalidContentLength, 400, true)),
        ("CL surrounding OWS is trimmed", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  7 \t\r\n\r\n"), Accept(|h| framing_is(h, Framing::Length(7)))),
        ("CL hex", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n"), Reject(InvalidContentLength, 400, true)),
        ("CL letters", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n"), Reject(InvalidContentLength, 400, true)),
        ("CL empty", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n"), Reject(InvalidContentLength, 400, true)),
        ("CL u64 overflow", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n"), Reject(InvalidContentLength, 400, true)),
        ("CL zero", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"), Accept(|h| framing_is(h, Framing::Length(0)))),
        ("CL above body limit", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000001\r\n\r\n"), Reject(BodyTooLarge, 413, true)),
        ("CL at body limit", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n"), Accept(|h| framing_is(h, Framing::Length(1_000_000)))),
        ("TE chunked, gzip", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), Reject(UnsupportedTransferEncoding, 501, true)),
        ("TE gzip only", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"), Reject(UnsupportedTransferEncoding, 501, true)),
        ("TE identity", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"), Reject(UnsupportedTransferEncoding, 501, true)),
        ("TE gzip, chunked (rejected by choice)", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), Reject(UnsupportedTransferEncoding, 501, true)),
        ("TE split over two fields", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"), Reject(UnsupportedTransferEncoding, 501, true)),
        ("TE chunked twice", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), Reject(UnsupportedTransferEncoding, 501, true)),
        ("TE with parameter", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n"), Reject(UnsupportedTransferEncoding, 501, true)),
        ("TE empty", b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n"), Reject(Malformed, 400, true)),
        ("HTTP/1.0 with TE", b("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), Reject(Malformed, 400, true)),
        ("bare LF request line", b("GET / HTTP/1.1\nHost: a\r\n\r\n"), Reject(BareLineFeed, 400, true)),
        ("bare LF headers", b("GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n"), Reject(BareLineFeed, 400, true)),
        ("bare LF everywhere", b("GET / HTTP/1.1\nHost: a\n\n"), Reject(BareLineFeed, 400, true)),
        ("bare LF final line", b("GET / HTTP/1.1\r\nHost: a\r\n\n"), Reject(BareLineFeed, 400, true)),
        ("bare LF in incomplete head", b("GET / HTTP/1.1\nHo"), Reject(BareLineFeed, 400, true)),
        ("bare CR in header value", b("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"), Reject(BareLineFeed, 400, true)),
        ("bare CR in request line", b("GET /\r HTTP/1.1\r\nHost: a\r\n\r\n"), Reject(BareLineFeed, 400, true)),
        ("bare CR as line end", b("GET / HTTP/1.1\rHost: a\r\n\r\n"), Reject(BareLineFeed, 400, true)),
        ("obs-fold space", b("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"), Reject(Malformed, 400, true)),
        ("obs-fold tab", b("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n"), Reject(Malformed, 400, true)),
        ("space before first header", b("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("space before colon", b("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("empty header name", b("GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("header name with slash", b("GET / HTTP/1.1\r\nHost: a\r\nX/Y: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("NUL in header value", b("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"), Reject(Malformed, 400, true)),
        ("HTTP/1.1 without Host (RFC 9112 §3.2)", b("GET / HTTP/1.1\r\n\r\n"), Reject(Malformed, 400, true)),
        ("HTTP/1.1 POST without Host", b("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Reject(Malformed, 400, true)),
        ("HTTP/1.0 without Host is fine", b("GET / HTTP/1.0\r\n\r\n"), Accept(|h| h.host().is_none())),
        ("empty Host value is present", b("GET / HTTP/1.1\r\nHost:\r\n\r\n"), Accept(|h| h.host() == Some(&b""[..]))),
        ("two Host fields, different case", b("GET / HTTP/1.1\r\nHost: a\r\nhOST: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("two Host fields in HTTP/1.0", b("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), Reject(Malformed, 400, true)),
        ("two Host fields", b("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), Reject(Malformed, 400, true)),
        ("oversized complete head", b(&format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "a".repeat(600))), Reject(HeaderTooLarge, 431, true)),
        ("oversized incomplete head", b(&format!("GET /{}", "a".repeat(600))), Reject(HeaderTooLarge, 431, true)),
        ("head exactly at limit", {
            let mut v = b("GET / HTTP/1.1\r\nHost: a\r\nX: ");
            v.resize(512 - 4, b'a');
            v.extend_from_slice(b"\r\n\r\n");
            v
        }, Accept(|h| h.raw().len() == 512)),
        ("too many headers", b(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n")), Reject(TooManyHeaders, 431, true)),
        ("HTTP/2.0 request line", b("GET / HTTP/2.0\r\n\r\n"), Reject(UnsupportedVersion, 505, true)),
        ("HTTP/1.2 request line", b("GET / HTTP/1.2\r\n\r\n"), Reject(UnsupportedVersion, 505, true)),
        ("h2 preface", b("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Reject(UnsupportedVersion, 505, true)),
        ("lower-case version", b("GET / http/1.1\r\n\r\n"), Reject(Malformed, 400, true)),
        ("HTTP/0.9 style", b("GET /\r\n\r\n"), Reject(Malformed, 400, true)),
        ("garbage bytes", vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03], Reject(Malformed, 400, true)),
        ("empty method", b(" / HTTP/1.1\r\nHost: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("double space", b("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("tab separator", b("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("trailing junk after version", b("GET / HTTP/1.1x\r\n\r\n"), Reject(Malformed, 400, true)),
        ("space in target", b("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("custom method token", b("PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n"), Accept(|h| h.method() == "PURGE")),
        ("absolute-form target", b("GET http://h/p?q=1 HTTP/1.1\r\nHost: h\r\n\r\n"), Accept(|h| h.path() == "/p" && h.query() == Some("q=1") && h.authority() == Some("h"))),
        ("absolute-form authority wins over Host", b("GET http://evil.example/x HTTP/1.1\r\nHost: a\r\n\r\n"), Accept(|h| h.target() == "/x" && h.host() == Some(&b"evil.example"[..]))),
        ("absolute-form https with port, empty path", b("GET https://b:8443 HTTP/1.1\r\nHost: a\r\n\r\n"), Accept(|h| h.target() == "/" && h.authority() == Some("b:8443"))),
        ("absolute-form still needs Host in HTTP/1.1", b("GET http://h/p HTTP/1.1\r\n\r\n"), Reject(Malformed, 400, true)),
        ("absolute-form other scheme", b("GET ftp://h/p HTTP/1.1\r\nHost: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("absolute-form empty authority", b("GET http:///p HTTP/1.1\r\nHost: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("absolute-form userinfo", b("GET http://u:pw@h/p HTTP/1.1\r\nHost: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("absolute-form query without path", b("GET http://h?q HTTP/1.1\r\nHost: a\r\n\r\n"), Reject(Malformed, 400, true)),
        ("origin-form with :// in the path", b("GET /a/http://b HTTP/1.1\r\nHost: a\r\n\r\n"), Accept(|h| h.target() == "/a/http://b" && h.authority().is_none())),
        ("leading empty line tolerated", b("\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n"), Accept(|h| h.target() == "/x")),
        ("obs-text in value kept", b("GET / HTTP/1.1\r\nHost: a\r\nX: café\r\n\r\n"), Accept(|h| h.header("x") == Some("café".as_bytes()))),
        ("HTTP/1.0 default close", b("GET / HTTP/1.0\r\n\r\n"), Accept(|h| h.version() == Version::Http10 && !h.keep_alive())),
        ("HTTP/1.0 keep-alive", b("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), Accept(|h| h.keep_alive())),
        ("HTTP/1.1 close", b("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\n\r\n"), Accept(|h| !h.keep_alive() && h.is_hop_by_hop("upgrade"))),
        ("expect continue", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"), Accept(|h| h.expect_continue())),
        ("incomplete head", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"), Incomplete),
        ("incomplete ending in CR", b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r"), Incomplete),
        ("only CRLFs", b("\r\n\r\n"), Incomplete),
    ]
}

fn check<H>(name: &str, got: Result<Option<(H, usize)>, HttpError>, expect: &Expect<H>) {
    match (got, expect) {
        (Ok(Some((h, _))), Accept(pred)) => assert!(pred(&h), "{name}: property failed"),
        (Ok(None), Incomplete) => {}
        (Err(e), Reject(kind, status, close)) => assert_eq!(
            (e.kind, e.status, e.close),
            (*kind, *status, *close),
            "{name}: {e}"
        ),
        (Ok(Some(_)), _) => panic!("{name}: unexpectedly accepted"),
        (Ok(None), _) => panic!("{name}: unexpectedly incomplete"),
        (Err(e), _) => panic!("{name}: unexpected error {:?} {} ({e})", e.kind, e.status),
    }
}

#[test]
fn request_corpus() {
    let cases = request_cases();
    assert!(cases.len() >= 40);
    for (name, raw, expect) in &cases {
        let buf = Bytes::copy_from_slice(raw);
        check(name, parse_request_head(&buf, &LIMITS), expect);
    }
}

#[test]
fn request_head_length_excludes_body() {
    let raw =
        Bytes::from_static(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET");
    let (_, len) = parse_request_head(&raw, &LIMITS).unwrap().unwrap();
    assert_eq!(&raw[len..], b"helloGET");
}

fn response_cases() -> Vec<ResponseCase> {
    use ErrorKind::*;
    let b = |s: &str| s.as_bytes().to_vec();
    vec![
        ("200 with length", b("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"), false, Accept(|h| h.framing() == Framing::Length(2) && h.keep_alive())),
        ("chunked beats CL", b("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"), false, Accept(|h| h.framing() == Framing::Chunked && !h.keep_alive())),
        ("non-chunked TE reads to close", b("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), false, Accept(|h| h.framing() == Framing::UntilClose && !h.keep_alive())),
        ("no framing reads to close", b("HTTP/1.1 200 OK\r\n\r\n"), false, Accept(|h| h.framing() == Framing::UntilClose)),
        ("HEAD response", b("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"), true, Accept(|h| h.framing() == Framing::None)),
        ("204", b("HTTP/1.1 204 No Content\r\n\r\n"), false, Accept(|h| h.framing() == Framing::None && h.keep_alive())),
        ("304", b("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"), false, Accept(|h| h.framing() == Framing::None)),
        ("100 continue", b("HTTP/1.1 100 Continue\r\n\r\n"), false, Accept(|h| h.is_informational())),
        ("SSE stream", b("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"), false, Accept(|h| h.framing() == Framing::Chunked)),
        ("differing CL", b("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"), false, Reject(InvalidContentLength, 502, true)),
        ("bare LF", b("HTTP/1.1 200 OK\nContent-Length: 2\n\n"), false, Reject(BareLineFeed, 502, true)),
        ("HTTP/2 status line", b("HTTP/2 200\r\n\r\n"), false, Reject(UnsupportedVersion, 502, true)),
        ("status out of range", b("HTTP/1.1 600 Nope\r\n\r\n"), false, Reject(Malformed, 502, true)),
        ("incomplete", b("HTTP/1.1 200 OK\r\n"), false, Incomplete),
    ]
}

#[test]
fn response_corpus() {
    for (name, raw, head_request, expect) in &response_cases() {
        let buf = Bytes::copy_from_slice(raw);
        check(
            name,
            parse_response_head(&buf, *head_request, &LIMITS),
            expect,
        );
    }
}

/// Feed `pieces` to a fresh decoder the way a connection would (unconsumed
/// bytes are kept and the next piece is appended); returns the body data, the
/// bytes left over after the body, and whether it finished.
fn feed(pieces: &[&[u8]]) -> Result<(Vec<u8>, Vec<u8>, bool), HttpError> {
    let mut dec = ChunkedDecoder::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut done = false;
    for piece in pieces {
        pending.extend_from_slice(piece);
        loop {
            if done {
                break;
            }
            let d = dec.decode(&pending)?;
            if let Some(r) = d.data.clone() {
                assert!(r.end <= d.consumed, "data beyond consumed");
                out.extend_from_slice(&pending[r]);
            }
            pending.drain(..d.consumed);
            done = d.done;
            if d.consumed == 0 && d.data.is_none() && !d.done {
                assert!(pending.is_empty(), "stalled with input left");
                break;
            }
        }
    }
    Ok((out, pending, done))
}

fn chunked_cases() -> Vec<ChunkedCase> {
    use ErrorKind::*;
    let b = |s: &str| s.as_bytes().to_vec();
    let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(5000));
    let long_trailer = format!("0\r\nX: {}\r\n\r\n", "y".repeat(17_000));
    vec![
        ("single chunk", b("5\r\nhello\r\n0\r\n\r\n"), Ok(b"hello")),
        (
            "multi chunk",
            b("3\r\nabc\r\n1\r\nd\r\nA\r\n0123456789\r\n0\r\n\r\n"),
            Ok(b"abcd0123456789"),
        ),
        (
            "upper and lower hex",
            b("a\r\n0123456789\r\nB\r\n0123456789a\r\n0\r\n\r\n"),
            Ok(b"01234567890123456789a"),
        ),
        (
            "leading zeros",
            b("0005\r\nhello\r\n000\r\n\r\n"),
            Ok(b"hello"),
        ),
        (
            "extensions",
            b("5;a=b;c=\"d e\"\r\nhello\r\n0;last\r\n\r\n"),
            Ok(b"hello"),
        ),
        (
            "trailer section",
            b("2\r\nhi\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n"),
            Ok(b"hi"),
        ),
        ("empty body", b("0\r\n\r\n"), Ok(b"")),
        (
            "invalid hex",
            b("zz\r\nhello\r\n0\r\n\r\n"),
            Err(InvalidChunk),
        ),
        (
            "size overflow",
            b("10000000000000000\r\n"),
            Err(InvalidChunk),
        ),
        ("empty size", b("\r\nhello\r\n"), Err(InvalidChunk)),
        (
            "0x prefix",
            b("0x5\r\nhello\r\n0\r\n\r\n"),
            Err(InvalidChunk),
        ),
        (
            "negative size",
            b("-5\r\nhello\r\n0\r\n\r\n"),
            Err(InvalidChunk),
        ),
        (
            "leading space",
            b(" 5\r\nhello\r\n0\r\n\r\n"),
            Err(InvalidChunk),
        ),
        (
            "trailing space",
            b("5 \r\nhello\r\n0\r\n\r\n"),
            Err(InvalidChunk),
        ),
        (
            "missing CRLF after data",
            b("5\r\nhelloX\r\n0\r\n\r\n"),
            Err(InvalidChunk),
        ),
        (
            "data longer than size",
            b("3\r\nhello\r\n0\r\n\r\n"),
            Err(InvalidChunk),
        ),
        (
            "LF only after data",
            b("5\r\nhello\n0\r\n\r\n"),
            Err(InvalidChunk),
        ),
        (
            "bare LF in size line",
            b("5\nhello\r\n0\r\n\r\n"),
            Err(BareLineFeed),
        ),
        (
            "bare CR in size line",
            b("5\rhello\r\n0\r\n\r\n"),
            Err(BareLineFeed),
        ),
        (
            "bare LF in last chunk",
            b("5\r\nhello\r\n0\n\n"),
            Err(BareLineFeed),
        ),
        (
            "bare LF in trailer",
            b("0\r\nX: 1\n\r\n"),
            Err(BareLineFeed),
        ),
        (
            "control char in extension",
            b("5;a\x00\r\nhello\r\n0\r\n\r\n"),
            Err(InvalidChunk),
        ),
        (
            "oversized extension line",
            long_ext.into_bytes(),
            Err(InvalidChunk),
        ),
        (
            "oversized trailer section",
            long_trailer.into_bytes(),
            Err(InvalidChunk),
        ),
    ]
}

#[test]
fn chunked_corpus() {
    for (name, raw, expect) in chunked_cases() {
        match (feed(&[&raw]), expect) {
            (Ok((data, rest, done)), Ok(want)) => {
                assert_eq!(data, want, "{name}");
                assert!(done && rest.is_empty(), "{name}: done={done} rest={rest:?}");
            }
            (Err(e), Err(kind)) => {
                assert_eq!(
                    (e.kind, e.status, e.close),
                    (kind, 400, true),
                    "{name}: {e}"
                );
                assert_eq!(e.clone().into_upstream().status, 502);
            }
            (got, _) => panic!("{name}: unexpected {got:?}"),
        }
    }
}

/// Valid bodies from the corpus plus bytes of the next pipelined message.
fn valid_bodies() -> Vec<(Vec<u8>, Vec<u8>)> {
    chunked_cases()
        .into_iter()
        .filter_map(|(_, raw, expect)| expect.ok().map(|want| (raw, want.to_vec())))
        .collect()
}

#[test]
fn chunked_every_split_point() {
    for (raw, want) in valid_bodies() {
        let mut input = raw.clone();
        input.extend_from_slice(b"GET /next");
        for i in 0..=input.len() {
            let (data, rest, done) = feed(&[&input[..i], &input[i..]]).unwrap();
            assert_eq!(data, want, "split at {i}");
            assert!(done);
            assert_eq!(rest, b"GET /next");
        }
    }
}

#[test]
fn chunked_one_byte_at_a_time() {
    for (raw, want) in valid_bodies() {
        let pieces: Vec<&[u8]> = raw.chunks(1).collect();
        let (data, rest, done) = feed(&pieces).unwrap();
        assert_eq!(data, want);
        assert!(done && rest.is_empty());
    }
}

#[test]
fn chunked_random_splits() {
    // xorshift64*: deterministic, no dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for (raw, want) in valid_bodies() {
        for _ in 0..200 {
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < raw.len() {
                let len = 1 + (next() % 7) as usize;
                let end = (at + len).min(raw.len());
                pieces.push(&raw[at..end]);
                at = end;
            }
            let (data, rest, done) = feed(&pieces).unwrap();
            assert_eq!(data, want);
            assert!(done && rest.is_empty());
        }
    }
}

#[test]
fn errors_are_found_whatever_the_split() {
    for (name, raw, expect) in chunked_cases() {
        let Err(kind) = expect else { continue };
        if raw.len() > 200 {
            continue;
        }
        let pieces: Vec<&[u8]> = raw.chunks(1).collect();
        let e = feed(&pieces).unwrap_err();
        assert_eq!(e.kind, kind, "{name}");
    }
}
