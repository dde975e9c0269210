//! Sans-IO reading of one HTTP/1.1 response, on top of shardgate-http's
//! [`parse_response_head`] and [`BodyDecoder`] (`Content-Length`, chunked,
//! read-until-close; 1xx interim responses skipped).
//!
//! The caller appends what it reads to a `BytesMut` and calls
//! [`ResponseReader::feed`]; body bytes are decoded in place and dropped (only the
//! SSE scanner looks at them), so the buffer does not grow with the body. In the
//! steady state nothing is allocated except the parsed head's small header list:
//! the head is split off the buffer (`split().freeze()`) and the allocation is
//! reclaimed by the next read once the head is dropped. [`SseScan`] finds the
//! first line that starts with `data:` in a streamed body, however the bytes are
//! split between reads: the moment it completes is the TTFT.

use bytes::{Buf, BytesMut};
use shardgate_http::{parse_response_head, BodyDecoder, HttpError, Limits};

/// Finds the first SSE `data:` line of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseScan {
    /// At a line start, or inside a `data:` prefix that began at one.
    matching: bool,
    /// Prefix bytes matched so far.
    pos: u8,
    found: bool,
}

impl Default for SseScan {
    fn default() -> Self {
        SseScan {
            matching: true,
            pos: 0,
            found: false,
        }
    }
}

const DATA: &[u8; 5] = b"data:";

impl SseScan {
    /// Look at the next body bytes; stops looking once a `data:` line was found.
    pub fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.found {
                return;
            }
            if self.matching && DATA.get(usize::from(self.pos)) == Some(&b) {
                self.pos += 1;
                if usize::from(self.pos) == DATA.len() {
                    self.found = true;
                }
            } else {
                self.matching = b == b'\n' || b == b'\r';
                self.pos = 0;
            }
        }
    }

    /// Whether a `data:` line started.
    pub fn found(&self) -> bool {
        self.found
    }
}

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Status code.
    pub status: u16,
    /// Whether the connection may carry the next request.
    pub keep_alive: bool,
}

/// What [`ResponseReader::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The response is not complete yet: read more.
    NeedMore,
    /// The response is complete.
    Done(Done),
}

#[derive(Debug, Clone)]
enum State {
    Head,
    Body {
        decoder: BodyDecoder,
        status: u16,
        keep_alive: bool,
    },
    Done,
}

/// Reads one response at a time; [`ResponseReader::reset`] before the next.
#[derive(Debug, Clone)]
pub struct ResponseReader {
    state: State,
    sse: SseScan,
    head_request: bool,
    limits: Limits,
}

/// Whether `buf` holds the end of a head (CRLF CRLF, or a bare-LF variant the
/// parser will then reject).
fn head_complete(buf: &[u8]) -> bool {
    memchr::memmem::find(buf, b"\n\r\n").is_some() || memchr::memmem::find(buf, b"\n\n").is_some()
}

/// Feed `input` to `decoder` until it needs more or is done; returns bytes
/// consumed and whether the body is complete.
fn drive(
    decoder: &mut BodyDecoder,
    input: &[u8],
    sse: &mut SseScan,
) -> Result<(usize, bool), HttpError> {
    let mut pos = 0;
    loop {
        let rest = input.get(pos..).unwrap_or_default();
        let d = decoder.decode(rest).map_err(HttpError::into_upstream)?;
        if let Some(data) = d.data.and_then(|r| rest.get(r)) {
            sse.scan(data);
        }
        pos += d.consumed;
        if d.done {
            return Ok((pos, true));
        }
        if d.consumed == 0 {
            return Ok((pos, false));
        }
    }
}

impl ResponseReader {
    /// A reader for responses to a request whose method is HEAD (`head_request`)
    /// or not.
    pub fn new(head_request: bool, limits: Limits) -> ResponseReader {
        ResponseReader {
            state: State::Head,
            sse: SseScan::default(),
            head_request,
            limits,
        }
    }

    /// Get ready for the next response.
    pub fn reset(&mut self) {
        self.state = State::Head;
        self.sse = SseScan::default();
    }

    /// Whether the body so far contained the start of an SSE `data:` line.
    pub fn first_event_seen(&self) -> bool {
        self.sse.found()
    }

    /// Process the bytes in `buf` (consumed ones are removed). A complete response
    /// followed by extra bytes is reported with `keep_alive == false` (the server
    /// sent something nobody asked for; the connection is not trusted again).
    pub fn feed(&mut self, buf: &mut BytesMut) -> Result<Step, HttpError> {
        loop {
            match &mut self.state {
                State::Done => return Ok(Step::NeedMore),
                State::Head => {
                    if buf.is_empty()
                        || (!head_complete(buf) && buf.len() <= self.limits.max_header_bytes)
                    {
                        return Ok(Step::NeedMore);
                    }
                    let data = buf.split().freeze();
                    let Some((head, len)) =
                        parse_response_head(&data, self.head_request, &self.limits)?
                    else {
                        buf.extend_from_slice(&data);
                        return Ok(Step::NeedMore);
                    };
                    let rest = data.get(len..).unwrap_or_default();
                    if head.is_informational() && head.status() != 101 {
                        // 100 Continue, 103 Early Hints: the real response follows.
                        buf.extend_from_slice(rest);
                        continue;
                    }
                    let mut decoder = BodyDecoder::new(head.framing());
                    let (status, keep_alive) = (head.status(), head.keep_alive());
                    let (used, done) = drive(&mut decoder, rest, &mut self.sse)?;
                    let left = rest.get(used..).unwrap_or_default();
                    if done {
                        self.state = State::Done;
                        return Ok(Step::Done(Done {
                            status,
                            keep_alive: keep_alive && left.is_empty(),
                        }));
                    }
                    // Only an unfinished framing line (chunk size) is left over.
                    buf.extend_from_slice(left);
                    self.state = State::Body {
                        decoder,
                        status,
                        keep_alive,
                    };
                    return Ok(Step::NeedMore);
                }
                State::Body {
                    decoder,
                    status,
                    keep_alive,
                } => {
                    let (used, done) = drive(decoder, buf, &mut self.sse)?;
                    buf.advance(used);
                    if !done {
                        return Ok(Step::NeedMore);
                    }
                    let done = Done {
                        status: *status,
                        keep_alive: *keep_alive && buf.is_empty(),
                    };
                    buf.clear();
                    self.state = State::Done;
                    return Ok(Step::Done(done));
                }
            }
        }
    }

    /// The server closed the connection: completes a read-until-close body, else
    /// the response is truncated (error).
    pub fn on_eof(&mut self) -> Result<Step, HttpError> {
        match &mut self.state {
            State::Body {
                decoder, status, ..
            } => {
                decoder.on_eof()?;
                let status = *status;
                self.state = State::Done;
                Ok(Step::Done(Done {
                    status,
                    keep_alive: false,
                }))
            }
            State::Head | State::Done => Err(shardgate_http::HttpError {
                kind: shardgate_http::ErrorKind::Malformed,
                status: 502,
                message: "connection closed before the response was complete",
                close: true,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Feed `raw` in pieces of `step` bytes; returns the final step, whether the
    /// first SSE event was seen, and how many bytes were fed when it first was.
    fn feed_in_pieces(raw: &[u8], step: usize) -> (Step, bool, Option<usize>) {
        let mut r = ResponseReader::new(false, Limits::default());
        let mut buf = BytesMut::new();
        let mut seen_at = None;
        for (i, piece) in raw.chunks(step).enumerate() {
            buf.extend_from_slice(piece);
            let s = r.feed(&mut buf).unwrap();
            if seen_at.is_none() && r.first_event_seen() {
                seen_at = Some((i + 1) * step);
            }
            if let Step::Done(_) = s {
                return (s, r.first_event_seen(), seen_at);
            }
        }
        (Step::NeedMore, r.first_event_seen(), seen_at)
    }

    #[test]
    fn sse_scan_finds_data_at_line_starts_only() {
        let mut s = SseScan::default();
        s.scan(b"event: x\nid: data:\n");
        assert!(!s.found());
        s.scan(b"da");
        s.scan(b"ta");
        assert!(!s.found());
        s.scan(b": {}\n\n");
        assert!(s.found());
        let mut s = SseScan::default();
        s.scan(b"data: [DONE]");
        assert!(s.found());
        let mut s = SseScan::default();
        s.scan(b":comment\r\ndat");
        s.scan(b"a:");
        assert!(s.found());
        let mut s = SseScan::default();
        s.scan(b"ddata:");
        assert!(!s.found());
    }

    #[test]
    fn content_length_in_any_split() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for step in 1..=raw.len() {
            let (s, _, _) = feed_in_pieces(raw, step);
            assert_eq!(
                s,
                Step::Done(Done {
                    status: 200,
                    keep_alive: true
                }),
                "step {step}"
            );
        }
    }

    #[test]
    fn chunked_sse_in_any_split() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n\
            7\r\n: ping\n\r\nf\r\ndata: {\"a\":1}\n\n\r\nf\r\ndata: {\"a\":2}\n\n\r\n0\r\n\r\n";
        let first_data = memchr::memmem::find(raw, b"data:").unwrap() + 5;
        for step in 1..=raw.len() {
            let (s, seen, at) = feed_in_pieces(raw, step);
            assert_eq!(
                s,
                Step::Done(Done {
                    status: 200,
                    keep_alive: true
                }),
                "step {step}"
            );
            assert!(seen);
            // Seen in the read that completed "data:", not before.
            let at = at.unwrap();
            assert!(
                at >= first_data && at < first_data + step,
                "step {step}: {at}"
            );
        }
    }

    #[test]
    fn until_close_ends_on_eof() {
        let mut r = ResponseReader::new(false, Limits::default());
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n\r\npartial body"[..]);
        assert_eq!(r.feed(&mut buf).unwrap(), Step::NeedMore);
        assert!(buf.is_empty());
        buf.extend_from_slice(b" more");
        assert_eq!(r.feed(&mut buf).unwrap(), Step::NeedMore);
        assert_eq!(
            r.on_eof().unwrap(),
            Step::Done(Done {
                status: 200,
                keep_alive: false
            })
        );
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let mut r = ResponseReader::new(false, Limits::default());
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"[..]);
        assert_eq!(r.feed(&mut buf).unwrap(), Step::NeedMore);
        assert!(r.on_eof().is_err());

        let mut r = ResponseReader::new(false, Limits::default());
        assert!(r.on_eof().is_err(), "nothing received");

        let mut r = ResponseReader::new(false, Limits::default());
        let mut buf = BytesMut::from(&b"SSH-2.0-OpenSSH\r\n\r\n"[..]);
        assert!(r.feed(&mut buf).is_err());

        let mut r = ResponseReader::new(false, Limits::default());
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..]);
        assert!(r.feed(&mut buf).is_err());

        // A head that never ends is refused once past the limit.
        let limits = Limits {
            max_header_bytes: 64,
            ..Limits::default()
        };
        let mut r = ResponseReader::new(false, limits);
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        assert_eq!(r.feed(&mut buf).unwrap(), Step::NeedMore);
        buf.extend_from_slice(&[b'x'; 100]);
        assert!(r.feed(&mut buf).is_err());
    }

    #[test]
    fn interim_responses_bodiless_statuses_and_head() {
        let raw =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        for step in 1..=raw.len() {
            let (s, _, _) = feed_in_pieces(raw, step);
            assert_eq!(
                s,
                Step::Done(Done {
                    status: 201,
                    keep_alive: true
                }),
                "step {step}"
            );
        }
        let (s, _, _) = feed_in_pieces(b"HTTP/1.1 204 No Content\r\n\r\n", 100);
        assert_eq!(
            s,
            Step::Done(Done {
                status: 204,
                keep_alive: true
            })
        );
        let mut r = ResponseReader::new(true, Limits::default());
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"[..]);
        assert_eq!(
            r.feed(&mut buf).unwrap(),
            Step::Done(Done {
                status: 200,
                keep_alive: true
            })
        );
    }

    #[test]
    fn extra_bytes_or_close_forbid_reuse_and_reset_allows_the_next() {
        let mut r = ResponseReader::new(false, Limits::default());
        let mut buf = BytesMut::from(&b"HTTP/1.1 503 Busy\r\nContent-Length: 1\r\n\r\nxJUNK"[..]);
        assert_eq!(
            r.feed(&mut buf).unwrap(),
            Step::Done(Done {
                status: 503,
                keep_alive: false
            })
        );
        r.reset();
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"[..],
        );
        assert_eq!(
            r.feed(&mut buf).unwrap(),
            Step::Done(Done {
                status: 200,
                keep_alive: false
            })
        );
    }

    #[test]
    fn the_read_buffer_is_reused_across_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let mut r = ResponseReader::new(false, Limits::default());
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let base = buf.as_ptr() as usize;
        let end = base + buf.capacity();
        for _ in 0..2000 {
            r.reset();
            // What `read_into` does before each read.
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            let at = buf.as_ptr() as usize;
            assert!(at >= base && at < end, "a new allocation");
            buf.extend_from_slice(raw);
            assert!(matches!(r.feed(&mut buf).unwrap(), Step::Done(_)));
            assert!(buf.is_empty());
        }
    }
}
