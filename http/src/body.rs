//! Body decoders: sans-IO state machines fed with whatever bytes arrived.
//! They report data as ranges of the input (no copy) so a proxy can forward
//! each piece as soon as it is decoded (SSE events are not held back).
//!
//! The chunked decoder works byte by byte on framing and in bulk on data, and
//! keeps all its state between calls: every call with non-empty input either
//! consumes bytes, reports data, reports `done`, or fails. Bounds: a chunk-size
//! line (size plus extensions) of at most [`MAX_CHUNK_LINE`] bytes, a trailer
//! section of at most [`MAX_TRAILERS`] bytes (trailer fields are skipped, not
//! forwarded). Decoder errors carry status 400 (a client's body); call
//! [`HttpError::into_upstream`] on errors from an upstream body.

use std::ops::Range;

use crate::error::ErrorKind;
use crate::{Framing, HttpError};

/// Longest accepted chunk-size line, extensions included, CRLF excluded.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Longest accepted trailer section (all trailer lines, CRLFs included).
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Most hex digits in a chunk size (16 hex digits fill a `u64`).
const MAX_SIZE_DIGITS: u8 = 16;

/// Result of one decode step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input consumed by this step (framing + data).
    pub consumed: usize,
    /// Body data found in this step, as a range of the input.
    pub data: Option<Range<usize>>,
    /// The body is complete (after trailers, for chunked).
    pub done: bool,
}

/// Where the chunked decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Reading the hex digits of a chunk size (`digits` read so far).
    #[default]
    SizeStart,
    Size {
        value: u64,
        digits: u8,
    },
    /// After `;`: chunk extensions up to the CR.
    Extension {
        value: u64,
    },
    /// Saw the CR of the size line; expect LF.
    SizeLf {
        value: u64,
    },
    /// Inside chunk data.
    Data {
        remaining: u64,
    },
    /// After chunk data: expect CR, then LF.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line or the final CRLF.
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Saw the CR ending a trailer line; expect LF.
    TrailerLf,
    /// Saw the CR of the final empty line; expect LF.
    EndLf,
    /// Body complete.
    Done,
}

/// Incremental `Transfer-Encoding: chunked` decoder with strict syntax (hex
/// size, optional extensions, CRLF only, bounded size line, trailers skipped).
///
/// A single [`ChunkedDecoder::decode`] call reports at most one data range; it
/// goes on consuming framing after that range (so `done` can come with the last
/// data) but stops before a second chunk's data, and stops (returning the data
/// found) before a syntax error, which the next call then reports.
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of the current size line or trailer section so far.
    line_len: usize,
    /// Decoded body bytes so far.
    body_len: u64,
}

fn invalid(message: &'static str) -> HttpError {
    HttpError::new(ErrorKind::InvalidChunk, 400, message)
}

fn bare_lf() -> HttpError {
    HttpError::new(
        ErrorKind::BareLineFeed,
        400,
        "bare LF in chunked framing (CRLF required)",
    )
}

fn hex_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Bytes allowed in chunk extensions and trailer lines: HTAB, visible ASCII,
/// space, obs-text; no other control characters.
fn is_line_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the whole body, trailers included, has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Body bytes decoded so far (chunk data only): compare it with
    /// `Limits::max_body_bytes` to enforce the limit on chunked requests.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Decode from `input` (bytes not yet consumed). Call again with the rest
    /// while `consumed > 0`; `consumed == 0 && data.is_none() && !done` means
    /// more input is needed.
    ///
    /// Handle `data` before `done`: both can come in the same step. Bytes after
    /// the end of the body are never consumed (they belong to the next message).
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, HttpError> {
        let mut pos = 0;
        let mut data = None;
        while pos < input.len() {
            match self.state {
                State::Done => break,
                State::Data { remaining } => {
                    if data.is_some() {
                        break;
                    }
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - pos);
                    data = Some(pos..pos + take);
                    pos += take;
                    self.body_len = self.body_len.saturating_add(take as u64);
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                }
                _ => match self.step(input[pos]) {
                    Ok(()) => pos += 1,
                    Err(_) if data.is_some() => break,
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(Decoded {
            consumed: pos,
            data,
            done: self.state == State::Done,
        })
    }

    /// Advance over one framing byte; on error the state is left unchanged.
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        self.state = match self.state {
            State::SizeStart => match hex_value(b) {
                Some(v) => {
                    self.line_len = 1;
                    State::Size {
                        value: v,
                        digits: 1,
                    }
                }
                None if b == b'\n' => return Err(bare_lf()),
                None => return Err(invalid("invalid chunk size")),
            },
            State::Size { value, digits } => match (b, hex_value(b)) {
                (_, Some(v)) => {
                    if digits >= MAX_SIZE_DIGITS {
                        return Err(invalid("chunk size too large"));
                    }
                    self.line_len += 1;
                    State::Size {
                        value: (value << 4) | v,
                        digits: digits + 1,
                    }
                }
                (b';', _) => {
                    self.line_len += 1;
                    State::Extension { value }
                }
                (b'\r', _) => State::SizeLf { value },
                (b'\n', _) => return Err(bare_lf()),
                _ => return Err(invalid("invalid chunk size")),
            },
            State::Extension { value } => match b {
                b'\r' => State::SizeLf { value },
                b'\n' => return Err(bare_lf()),
                _ if !is_line_byte(b) => return Err(invalid("invalid byte in chunk extension")),
                _ if self.line_len >= MAX_CHUNK_LINE => {
                    return Err(invalid("chunk size line too long"))
                }
                _ => {
                    self.line_len += 1;
                    State::Extension { value }
                }
            },
            State::SizeLf { value } => match b {
                b'\n' if value == 0 => {
                    self.line_len = 0;
                    State::TrailerStart
                }
                b'\n' => State::Data { remaining: value },
                _ => return Err(bare_cr()),
            },
            // Data bytes are taken in bulk by `decode`; never a single byte here.
            State::Data { .. } => return Err(invalid("internal: data byte stepped")),
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(invalid("chunk data not followed by CRLF")),
            },
            State::DataLf => match b {
                b'\n' => State::SizeStart,
                _ => return Err(invalid("chunk data not followed by CRLF")),
            },
            State::TrailerStart | State::Trailer => {
                let start = self.state == State::TrailerStart;
                match b {
                    b'\r' if start => State::EndLf,
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(bare_lf()),
                    _ if !is_line_byte(b) => return Err(invalid("invalid byte in trailer")),
                    _ if self.line_len >= MAX_TRAILERS => {
                        return Err(invalid("trailer section too large"))
                    }
                    _ => {
                        self.line_len += 1;
                        State::Trailer
                    }
                }
            }
            State::TrailerLf => match b {
                b'\n' => {
                    // Count the CRLF against the trailer bound too.
                    self.line_len += 2;
                    State::TrailerStart
                }
                _ => return Err(bare_cr()),
            },
            State::EndLf => match b {
                b'\n' => State::Done,
                _ => return Err(bare_cr()),
            },
            State::Done => State::Done,
        };
        Ok(())
    }
}

fn bare_cr() -> HttpError {
    HttpError::new(
        ErrorKind::BareLineFeed,
        400,
        "bare CR in chunked framing (CRLF required)",
    )
}

/// Any body decoder, chosen from a message's [`Framing`].
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    /// No body: done immediately.
    None,
    /// Remaining bytes of a `Content-Length` body.
    Length(u64),
    /// Chunked body.
    Chunked(ChunkedDecoder),
    /// Until the peer closes.
    UntilClose,
}

impl BodyDecoder {
    /// The decoder for `framing`.
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::None => BodyDecoder::None,
            Framing::Length(n) => BodyDecoder::Length(n),
            Framing::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => BodyDecoder::UntilClose,
        }
    }

    /// Decode as [`ChunkedDecoder::decode`] does. `Length` reports up to the
    /// remaining length as data; `UntilClose` reports all input as data and is
    /// done only through [`BodyDecoder::on_eof`].
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, HttpError> {
        let need_more = Decoded {
            consumed: 0,
            data: None,
            done: false,
        };
        match self {
            BodyDecoder::None | BodyDecoder::Length(0) => Ok(Decoded {
                consumed: 0,
                data: None,
                done: true,
            }),
            BodyDecoder::Length(remaining) => {
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                if take == 0 {
                    return Ok(need_more);
                }
                *remaining -= take as u64;
                Ok(Decoded {
                    consumed: take,
                    data: Some(0..take),
                    done: *remaining == 0,
                })
            }
            BodyDecoder::Chunked(chunked) => chunked.decode(input),
            BodyDecoder::UntilClose if input.is_empty() => Ok(need_more),
            BodyDecoder::UntilClose => Ok(Decoded {
                consumed: input.len(),
                data: Some(0..input.len()),
                done: false,
            }),
        }
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::None | BodyDecoder::Length(0) => true,
            BodyDecoder::Length(_) | BodyDecoder::UntilClose => false,
            BodyDecoder::Chunked(chunked) => chunked.is_done(),
        }
    }

    /// The peer closed: `Ok(())` if that legitimately ends the body
    /// (`UntilClose`, or already done), else an error (truncated body:
    /// `ErrorKind::Malformed`, status 502, `close == true`). After `Ok(())`
    /// the decoder is done.
    pub fn on_eof(&mut self) -> Result<(), HttpError> {
        if self.is_done() {
            return Ok(());
        }
        match self {
            BodyDecoder::UntilClose => {
                *self = BodyDecoder::None;
                Ok(())
            }
            _ => Err(HttpError::new(
                ErrorKind::Malformed,
                502,
                "connection closed before the body was complete",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Run the decoder over `input` until it needs more, is done or fails.
    fn run(dec: &mut ChunkedDecoder, input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let d = dec.decode(&input[pos..])?;
            if let Some(r) = d.data.clone() {
                out.extend_from_slice(&input[pos..][r]);
            }
            pos += d.consumed;
            if d.done || (d.consumed == 0 && d.data.is_none()) {
                return Ok((out, pos, d.done));
            }
        }
    }

    #[test]
    fn simple_body_with_extension_and_trailers() {
        let body = b"5;name=\"v\"\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\nNEXT";
        let mut dec = ChunkedDecoder::new();
        let (out, used, done) = run(&mut dec, body).unwrap();
        assert_eq!(out, b"hello world");
        assert!(done);
        assert_eq!(&body[used..], b"NEXT");
        assert_eq!(dec.body_len(), 11);
        // Done is sticky and consumes nothing more.
        let d = dec.decode(b"NEXT").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 0,
                data: None,
                done: true
            }
        );
    }

    #[test]
    fn last_data_and_done_in_one_step() {
        let mut dec = ChunkedDecoder::new();
        let d = dec.decode(b"3\r\nabc\r\n0\r\n\r\n").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 13,
                data: Some(3..6),
                done: true
            }
        );
    }

    #[test]
    fn one_data_range_per_step() {
        let mut dec = ChunkedDecoder::new();
        let input = b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n";
        let d = dec.decode(input).unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 9,
                data: Some(3..4),
                done: false
            }
        );
        let d = dec.decode(&input[9..]).unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 8,
                data: Some(0..1),
                done: true
            }
        );
    }

    #[test]
    fn partial_chunk_data_is_streamed() {
        let mut dec = ChunkedDecoder::new();
        let d = dec.decode(b"a\r\n0123").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 7,
                data: Some(3..7),
                done: false
            }
        );
        let d = dec.decode(b"456789\r").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 7,
                data: Some(0..6),
                done: false
            }
        );
        let d = dec.decode(b"").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 0,
                data: None,
                done: false
            }
        );
    }

    #[test]
    fn error_after_data_is_deferred_to_next_step() {
        let mut dec = ChunkedDecoder::new();
        let d = dec.decode(b"2\r\nabXY").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 5,
                data: Some(3..5),
                done: false
            }
        );
        let e = dec.decode(b"XY").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidChunk);
    }

    #[test]
    fn strict_size_lines() {
        for (bad, kind) in [
            (&b"\r\n"[..], ErrorKind::InvalidChunk),
            (b"0x5\r\n", ErrorKind::InvalidChunk),
            (b"-1\r\n", ErrorKind::InvalidChunk),
            (b" 5\r\n", ErrorKind::InvalidChunk),
            (b"5 \r\n", ErrorKind::InvalidChunk),
            (b"g\r\n", ErrorKind::InvalidChunk),
            (b"10000000000000000\r\n", ErrorKind::InvalidChunk),
            (b"5\n", ErrorKind::BareLineFeed),
            (b"5\rx", ErrorKind::BareLineFeed),
            (b"5;a\n", ErrorKind::BareLineFeed),
            (b"5;a\x01\r\n", ErrorKind::InvalidChunk),
        ] {
            let e = run(&mut ChunkedDecoder::new(), bad).unwrap_err();
            assert_eq!((e.kind, e.status, e.close), (kind, 400, true), "{bad:?}");
        }
        // 16 digits are fine.
        let mut dec = ChunkedDecoder::new();
        let d = dec.decode(b"FFFFFFFFFFFFFFFF\r\nab").unwrap();
        assert_eq!(d.data, Some(18..20));
    }

    #[test]
    fn extension_line_is_bounded() {
        let mut line = b"1;".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        line.extend_from_slice(b"\r\n");
        let e = run(&mut ChunkedDecoder::new(), &line).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidChunk);
        let mut ok = b"1;".to_vec();
        ok.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE - 2));
        ok.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        let (out, _, done) = run(&mut ChunkedDecoder::new(), &ok).unwrap();
        assert_eq!((out.as_slice(), done), (&b"x"[..], true));
    }

    #[test]
    fn trailers_are_bounded() {
        let mut body = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILERS / 10 + 1) {
            body.extend_from_slice(b"X-Pad: 1\r\n");
        }
        body.extend_from_slice(b"\r\n");
        let e = run(&mut ChunkedDecoder::new(), &body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidChunk);
    }

    #[test]
    fn data_must_end_with_crlf() {
        for bad in [&b"1\r\naX\r\n"[..], b"1\r\na\n0\r\n\r\n", b"1\r\na\rX"] {
            let e = run(&mut ChunkedDecoder::new(), bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidChunk, "{bad:?}");
        }
    }

    #[test]
    fn body_decoder_length() {
        let mut dec = BodyDecoder::new(Framing::Length(5));
        assert!(!dec.is_done());
        let d = dec.decode(b"abc").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 3,
                data: Some(0..3),
                done: false
            }
        );
        let d = dec.decode(b"").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 0,
                data: None,
                done: false
            }
        );
        let d = dec.decode(b"defgh").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 2,
                data: Some(0..2),
                done: true
            }
        );
        assert!(dec.is_done());
        assert!(dec.on_eof().is_ok());
        let d = dec.decode(b"gh").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 0,
                data: None,
                done: true
            }
        );
    }

    #[test]
    fn body_decoder_none_and_zero_length_are_done() {
        for framing in [Framing::None, Framing::Length(0)] {
            let mut dec = BodyDecoder::new(framing);
            assert!(dec.is_done());
            assert_eq!(
                dec.decode(b"xyz").unwrap(),
                Decoded {
                    consumed: 0,
                    data: None,
                    done: true
                }
            );
            assert!(dec.on_eof().is_ok());
        }
    }

    #[test]
    fn body_decoder_until_close() {
        let mut dec = BodyDecoder::new(Framing::UntilClose);
        let d = dec.decode(b"abc").unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 3,
                data: Some(0..3),
                done: false
            }
        );
        assert_eq!(
            dec.decode(b"").unwrap(),
            Decoded {
                consumed: 0,
                data: None,
                done: false
            }
        );
        assert!(!dec.is_done());
        assert!(dec.on_eof().is_ok());
        assert!(dec.is_done());
    }

    #[test]
    fn truncated_bodies_fail_on_eof() {
        let mut dec = BodyDecoder::new(Framing::Length(3));
        dec.decode(b"ab").unwrap();
        let e = dec.on_eof().unwrap_err();
        assert_eq!(
            (e.kind, e.status, e.close),
            (ErrorKind::Malformed, 502, true)
        );
        let mut dec = BodyDecoder::new(Framing::Chunked);
        dec.decode(b"2\r\nab\r\n").unwrap();
        assert!(dec.on_eof().is_err());
        let mut dec = BodyDecoder::new(Framing::Chunked);
        let d = dec.decode(b"2\r\nab\r\n0\r\n\r\n").unwrap();
        assert_eq!(d.data, Some(3..5));
        let d = dec.decode(&b"2\r\nab\r\n0\r\n\r\n"[d.consumed..]).unwrap();
        assert!(d.done);
        assert!(dec.on_eof().is_ok());
    }
}
