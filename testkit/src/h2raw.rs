//! A raw HTTP/2 client for hostile-input tests: frames written byte for byte
//! (so a test can send what no well-behaved client library would: reset
//! floods, CONTINUATION floods, oversized header lists, zero windows), HPACK
//! blocks of literals only, and frames read back with a deadline.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub mod ty {
    /// DATA.
    pub const DATA: u8 = 0;
    /// HEADERS.
    pub const HEADERS: u8 = 1;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 4;
    /// PING.
    pub const PING: u8 = 6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 9;
}

/// Flags.
pub mod flag {
    /// END_STREAM (DATA, HEADERS); ACK (SETTINGS, PING).
    pub const END_STREAM: u8 = 1;
    /// ACK.
    pub const ACK: u8 = 1;
    /// END_HEADERS.
    pub const END_HEADERS: u8 = 4;
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Type.
    pub ty: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.ty {
            ty::RST_STREAM => 0,
            ty::GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Encodes a frame.
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix, first byte's high bits `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// An HPACK block of literal fields (never indexed), pseudo-headers first.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.push(0x10);
        hpack_str(&mut out, k.as_bytes());
        hpack_str(&mut out, v.as_bytes());
    }
    out
}

/// The header block of a gRPC call to `path`, plus `extra` fields.
pub fn grpc_request(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    fields.extend_from_slice(extra);
    header_block(&fields)
}

/// A raw connection.
pub struct RawH2 {
    /// The socket.
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects and sends the preface and a SETTINGS frame with `settings`
    /// (identifier, value).
    pub fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> io::Result<Self> {
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        sock.set_nodelay(true)?;
        let mut c = RawH2 {
            sock,
            buf: Vec::new(),
        };
        let mut p = Vec::new();
        for (id, v) in settings {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        let mut out = PREFACE.to_vec();
        out.extend(frame(ty::SETTINGS, 0, 0, &p));
        c.sock.write_all(&out)?;
        Ok(c)
    }

    /// Writes bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// The next frame, or `None` at EOF, error, or `deadline`.
    pub fn read_frame(&mut self, deadline: Instant) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        ty: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut chunk = [0u8; 16 * 1024];
            match self.sock.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frames until one satisfies `pred` (returned), EOF or `within`.
    /// SETTINGS from the server are acknowledged on the way.
    pub fn wait_for(&mut self, within: Duration, pred: impl Fn(&Frame) -> bool) -> Option<Frame> {
        let deadline = Instant::now() + within;
        while let Some(f) = self.read_frame(deadline) {
            if f.ty == ty::SETTINGS && f.flags & flag::ACK == 0 {
                let _ = self.send(&frame(ty::SETTINGS, flag::ACK, 0, &[]));
            }
            if pred(&f) {
                return Some(f);
            }
        }
        None
    }

    /// Whether the connection still answers a PING within `within`.
    pub fn alive(&mut self, within: Duration) -> bool {
        if self.send(&frame(ty::PING, 0, 0, b"alive!!!")).is_err() {
            return false;
        }
        self.wait_for(within, |f| f.ty == ty::PING && f.flags & flag::ACK != 0)
            .is_some()
    }
}
