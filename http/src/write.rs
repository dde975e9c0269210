//! Serialisers: status lines, header fields, chunk framing and OpenAI-style
//! JSON error responses. They append to a caller-owned `Vec<u8>` so a shard can
//! reuse one buffer per connection; none of them allocates beyond growing it.
//!
//! They do not validate what they are given: names and values must already be
//! free of CR / LF (header injection is the caller's to prevent; values copied
//! from a parsed head are).

/// Canonical reason phrase for `status` (`"OK"`, `"Not Found"`, …; `""` if unknown).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// Append `HTTP/1.1 {status} {reason}\r\n` (an unknown status keeps the space
/// before its empty reason, as RFC 9112 §4 allows).
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Append `name: value\r\n`.
pub fn header(out: &mut Vec<u8>, name: impl AsRef<[u8]>, value: &[u8]) {
    out.extend_from_slice(name.as_ref());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Append `name: {n}\r\n` for a number without allocating.
pub fn header_u64(out: &mut Vec<u8>, name: &str, n: u64) {
    header(out, name, itoa::Buffer::new().format(n).as_bytes());
}

/// Append the size line of a chunk of `len` bytes (`{len:x}\r\n`, lower-case hex).
pub fn chunk_header(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 2 * std::mem::size_of::<usize>()];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The CRLF that ends a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The last chunk and the empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

const JSON_HEAD: &[u8] = b"{\"error\":{\"message\":\"";
const JSON_TYPE: &[u8] = b"\",\"type\":\"";
const JSON_CODE: &[u8] = b"\",\"param\":null,\"code\":\"";
const JSON_TAIL: &[u8] = b"\"}}";

/// Append an OpenAI-compatible JSON error body
/// `{"error":{"message":…,"type":…,"param":null,"code":…}}` with proper JSON
/// string escaping of all three strings (`"` and `\` backslash-escaped,
/// control characters as `\u00XX`; other characters as they are, UTF-8).
pub fn openai_error_json(out: &mut Vec<u8>, message: &str, err_type: &str, code: &str) {
    out.reserve(openai_error_json_len(message, err_type, code));
    out.extend_from_slice(JSON_HEAD);
    escape_json(out, message);
    out.extend_from_slice(JSON_TYPE);
    escape_json(out, err_type);
    out.extend_from_slice(JSON_CODE);
    escape_json(out, code);
    out.extend_from_slice(JSON_TAIL);
}

/// An error body's `code` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode<'a> {
    /// A string code (the gateway's own, e.g. `model_not_found`).
    Str(&'a str),
    /// An integer code (as inference servers send, e.g. vLLM's `"code": 400`).
    Int(i64),
    /// No code.
    Null,
}

/// Like [`openai_error_json`] with any kind of `code`: the one writer of
/// OpenAI error bodies (the gateway's own errors and the sanitised errors of
/// batched calls).
pub fn openai_error_json_code(
    out: &mut Vec<u8>,
    message: &str,
    err_type: &str,
    code: ErrorCode<'_>,
) {
    match code {
        ErrorCode::Str(c) => openai_error_json(out, message, err_type, c),
        ErrorCode::Int(_) | ErrorCode::Null => {
            out.extend_from_slice(JSON_HEAD);
            escape_json(out, message);
            out.extend_from_slice(JSON_TYPE);
            escape_json(out, err_type);
            out.extend_from_slice(b"\",\"param\":null,\"code\":");
            match code {
                ErrorCode::Int(n) => {
                    let _ = std::io::Write::write_fmt(out, format_args!("{n}"));
                }
                _ => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b"}}");
        }
    }
}

/// Length in bytes of what [`openai_error_json`] appends.
pub fn openai_error_json_len(message: &str, err_type: &str, code: &str) -> usize {
    JSON_HEAD.len()
        + JSON_TYPE.len()
        + JSON_CODE.len()
        + JSON_TAIL.len()
        + escaped_len(message)
        + escaped_len(err_type)
        + escaped_len(code)
}

/// Append a complete error response: status line, `content-type:
/// application/json`, `content-length`, `connection: close` when `close`, the
/// `extra` headers (e.g. `retry-after`, `x-request-id`), and the JSON body.
pub fn error_response(
    out: &mut Vec<u8>,
    status: u16,
    message: &str,
    err_type: &str,
    code: &str,
    close: bool,
    extra: &[(&str, &[u8])],
) {
    status_line(out, status);
    header(out, "content-type", b"application/json");
    let body_len = openai_error_json_len(message, err_type, code);
    header_u64(out, "content-length", body_len as u64);
    if close {
        header(out, "connection", b"close");
    }
    for (name, value) in extra {
        header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    openai_error_json(out, message, err_type, code);
}

/// The JSON escape of `b`, if it needs one: `None` for bytes copied as is.
fn escape_of(b: u8) -> Option<[u8; 6]> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => Some(*b"\\\"    "),
        b'\\' => Some(*b"\\\\    "),
        0x00..=0x1f => Some([
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
        _ => None,
    }
}

/// Bytes used by an escape from [`escape_of`].
fn escape_width(b: u8) -> usize {
    match b {
        b'"' | b'\\' => 2,
        _ => 6,
    }
}

fn escape_json(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(esc) = escape_of(b) {
            out.extend_from_slice(&bytes[run_start..i]);
            out.extend_from_slice(&esc[..escape_width(b)]);
            run_start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[run_start..]);
}

fn escaped_len(s: &str) -> usize {
    s.bytes()
        .map(|b| escape_of(b).map_or(1, |_| escape_width(b)))
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn error_codes_may_be_strings_integers_or_null() {
        let body = |code| {
            let mut out = Vec::new();
            openai_error_json_code(&mut out, "m\"x", "t", code);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            body(ErrorCode::Int(-400)),
            r#"{"error":{"message":"m\"x","type":"t","param":null,"code":-400}}"#
        );
        assert_eq!(
            body(ErrorCode::Null),
            r#"{"error":{"message":"m\"x","type":"t","param":null,"code":null}}"#
        );
        let mut plain = Vec::new();
        openai_error_json(&mut plain, "m\"x", "t", "c");
        assert_eq!(body(ErrorCode::Str("c")).into_bytes(), plain);
        for b in [body(ErrorCode::Int(7)), body(ErrorCode::Null)] {
            serde_json::from_str::<serde_json::Value>(&b).unwrap();
        }
    }

    #[test]
    fn reason_phrases() {
        for (code, reason) in [
            (100, "Continue"),
            (200, "OK"),
            (204, "No Content"),
            (206, "Partial Content"),
            (304, "Not Modified"),
            (308, "Permanent Redirect"),
            (400, "Bad Request"),
            (408, "Request Timeout"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (415, "Unsupported Media Type"),
            (422, "Unprocessable Content"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (499, "Client Closed Request"),
            (502, "Bad Gateway"),
            (505, "HTTP Version Not Supported"),
        ] {
            assert_eq!(reason_phrase(code), reason);
        }
        assert_eq!(reason_phrase(299), "");
    }

    #[test]
    fn lines_and_headers() {
        let mut out = Vec::new();
        status_line(&mut out, 404);
        header(&mut out, "x-a", b"b");
        header_u64(&mut out, "content-length", 18_446_744_073_709_551_615);
        status_line(&mut out, 299);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nx-a: b\r\ncontent-length: 18446744073709551615\r\nHTTP/1.1 299 \r\n"
        );
    }

    #[test]
    fn chunk_headers_are_lower_hex() {
        for len in [0usize, 1, 9, 10, 15, 16, 255, 4096, 0xdead_beef, usize::MAX] {
            let mut out = Vec::new();
            chunk_header(&mut out, len);
            assert_eq!(out, format!("{len:x}\r\n").into_bytes());
        }
    }

    #[test]
    fn error_json_escapes_everything() {
        let mut out = Vec::new();
        let message = "bad \"model\" \\ path\n\t\u{1}\u{1f} ünï €";
        openai_error_json(&mut out, message, "invalid_\"request", "c\\1");
        assert_eq!(
            out.len(),
            openai_error_json_len(message, "invalid_\"request", "c\\1")
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["message"], message);
        assert_eq!(v["error"]["type"], "invalid_\"request");
        assert_eq!(v["error"]["code"], "c\\1");
        assert!(v["error"]["param"].is_null());
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.contains(r#"\"model\" \\ path\u000a\u0009\u0001\u001f ünï €"#),
            "{text}"
        );
        let mut plain = Vec::new();
        openai_error_json(&mut plain, "m", "t", "c");
        assert_eq!(
            plain,
            br#"{"error":{"message":"m","type":"t","param":null,"code":"c"}}"#
        );
    }

    #[test]
    fn full_error_response() {
        let mut out = Vec::new();
        error_response(
            &mut out,
            429,
            "slow \"down\"",
            "rate_limit",
            "rate_limited",
            true,
            &[("retry-after", b"2")],
        );
        let text = std::str::from_utf8(&out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 2",
                body.len()
            )
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["message"], "slow \"down\"");

        let mut keep = Vec::new();
        error_response(
            &mut keep,
            404,
            "no",
            "not_found",
            "model_not_found",
            false,
            &[],
        );
        assert!(!std::str::from_utf8(&keep).unwrap().contains("connection"));
    }
}
