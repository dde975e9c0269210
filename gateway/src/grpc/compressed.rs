//! `model_name` of a compressed first message: a client that sends
//! `grpc-encoding: gzip` or `deflate` (tritonclient's
//! `compression_algorithm`, grpc-python's `compression=`) sets the message's
//! compressed flag, and field 1 is only readable once inflated.
//!
//! Only the message's first bytes are inflated: at most [`MAX_INFLATED`]
//! (64 KiB) of output, which holds field 1 of any KServe v2 request (encoders
//! write it first; a tensor after it is never reached). A message that
//! inflates past that without a field 1 is routed by its headers, as one
//! without a model is; a compression bomb costs at most 64 KiB of output and
//! the input it took to produce it. The message itself goes upstream as it
//! came (compressed, with its `grpc-encoding`): nothing is re-encoded.
//!
//! `gzip` is RFC 1952, `deflate` is zlib (RFC 1950), as the gRPC spec's
//! compression document names them; both through `flate2` (its pure-Rust
//! `miniz_oxide` backend). Any other encoding (`snappy`, an unknown name) is
//! not inflated: the call is routed by its headers.
//!
//! Cost: inflating stops as soon as field 1 has come out (4 KiB steps), and
//! is redone from the message's start each time more bytes of it arrive (the
//! first DATA frame almost always holds field 1), bounded by the 64 KiB cap
//! per try.

use std::io::Read;

use super::wire::{prefix, scan_fields, Scan, WireError, PREFIX};

/// The most bytes of a compressed message inflated to find its model.
pub const MAX_INFLATED: usize = 64 * 1024;

/// A `grpc-encoding` the gateway can inflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `gzip` (RFC 1952).
    Gzip,
    /// `deflate`: zlib (RFC 1950).
    Deflate,
}

impl Encoding {
    /// The encoding a `grpc-encoding` header names, when it is one the
    /// gateway inflates.
    pub fn from_header(v: Option<&[u8]>) -> Option<Self> {
        let v = v?.trim_ascii();
        if v.eq_ignore_ascii_case(b"gzip") {
            Some(Encoding::Gzip)
        } else if v.eq_ignore_ascii_case(b"deflate") {
            Some(Encoding::Deflate)
        } else {
            None
        }
    }
}

/// What the first bytes of a compressed message say about its model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inflated {
    /// Field 1's value.
    Found(String),
    /// No field 1 (or an empty one) in the message, or none in its first
    /// [`MAX_INFLATED`] bytes.
    Absent,
    /// More of the message is needed.
    NeedMore,
}

/// `model_name` of the compressed gRPC message at the start of `body` (its
/// prefix included; `body` may hold only the message's first bytes).
pub fn model_name(body: &[u8], enc: Encoding) -> Result<Inflated, WireError> {
    let (_, len) = match prefix(body) {
        None => return Ok(Inflated::NeedMore),
        Some(r) => r?,
    };
    let end = PREFIX as u64 + u64::from(len);
    let have = body.len().min(usize::try_from(end).unwrap_or(usize::MAX));
    let input_complete = body.len() as u64 >= end;
    let input = &body[PREFIX..have];
    let mut out = Vec::new();
    let (read, found) = match enc {
        Encoding::Gzip => inflate(flate2::bufread::GzDecoder::new(input), &mut out),
        Encoding::Deflate => inflate(flate2::bufread::ZlibDecoder::new(input), &mut out),
    };
    if let Some(m) = found {
        return Ok(Inflated::Found(m));
    }
    let capped = out.len() > MAX_INFLATED;
    out.truncate(MAX_INFLATED);
    // The whole message is inflated when the input is all here and the
    // stream ended cleanly within the cap.
    let finished = input_complete && read.is_ok() && !capped;
    if input_complete && read.is_err() && !capped {
        // The stream is corrupt or cut short (what came out before the
        // failure did not name the model: `inflate` would have returned it).
        return Err(WireError::Inflate);
    }
    let end = if finished { out.len() as u64 } else { u64::MAX };
    match scan_fields(&out, 0, end, finished) {
        Ok(Scan::Found(m)) => Ok(Inflated::Found(m.to_owned())),
        Ok(Scan::Absent) => Ok(Inflated::Absent),
        Ok(Scan::NeedMore | Scan::Compressed) if capped => Ok(Inflated::Absent),
        Ok(Scan::NeedMore | Scan::Compressed) => Ok(Inflated::NeedMore),
        // Lengths are only known once the message is whole; a field cut by
        // the cap is not an error of the message.
        Err(WireError::Length) if !finished => Ok(if capped {
            Inflated::Absent
        } else {
            Inflated::NeedMore
        }),
        Err(e) => Err(e),
    }
}

/// Inflates from `r` into `out` a step of [`STEP`] bytes at a time, until
/// field 1 shows up (its value is returned), the stream ends or fails (the
/// read's result), or `out` passes [`MAX_INFLATED`]. The model is in the
/// first bytes of a KServe request, so a call usually inflates one step, not
/// the cap.
fn inflate<R: Read>(mut r: R, out: &mut Vec<u8>) -> (std::io::Result<()>, Option<String>) {
    let mut step = [0u8; STEP];
    while out.len() <= MAX_INFLATED {
        match r.read(&mut step) {
            Ok(0) => return (Ok(()), None),
            Ok(n) => {
                out.extend_from_slice(&step[..n]);
                if let Ok(Scan::Found(m)) = scan_fields(out, 0, u64::MAX, false) {
                    return (Ok(()), Some(m.to_owned()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), None),
        }
    }
    (Ok(()), None)
}

/// Bytes inflated per step of [`inflate`].
const STEP: usize = 4096;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::grpc::wire::test_support::string_field;
    use shardgate_testkit::grpc::{frame_compressed, incompressible};

    fn infer_request(model: &str, tensor: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        string_field(&mut m, 1, model.as_bytes());
        string_field(&mut m, 2, b"1");
        string_field(&mut m, 7, tensor);
        m
    }

    fn compress(msg: &[u8], enc: Encoding) -> Vec<u8> {
        let name = match enc {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        };
        frame_compressed(msg, name).to_vec()
    }

    #[test]
    fn encodings_from_headers() {
        assert_eq!(Encoding::from_header(Some(b"gzip")), Some(Encoding::Gzip));
        assert_eq!(
            Encoding::from_header(Some(b" Deflate")),
            Some(Encoding::Deflate)
        );
        assert_eq!(Encoding::from_header(Some(b"snappy")), None);
        assert_eq!(Encoding::from_header(Some(b"identity")), None);
        assert_eq!(Encoding::from_header(None), None);
    }

    #[test]
    fn the_model_of_a_big_compressed_request_comes_from_its_first_bytes() {
        for enc in [Encoding::Gzip, Encoding::Deflate] {
            let body = compress(
                &infer_request("resnet50", &incompressible(4 << 20, 0x9e37_79b9)),
                enc,
            );
            assert_eq!(
                model_name(&body, enc),
                Ok(Inflated::Found("resnet50".into()))
            );
            // The first frame's worth is enough.
            assert_eq!(
                model_name(&body[..16 * 1024], enc),
                Ok(Inflated::Found("resnet50".into()))
            );
            // Too few bytes to inflate anything yet.
            assert_eq!(model_name(&body[..8], enc), Ok(Inflated::NeedMore));
            assert_eq!(model_name(&body[..3], enc), Ok(Inflated::NeedMore));
        }
    }

    #[test]
    fn no_model_an_empty_one_and_one_past_the_cap_are_absent() {
        let enc = Encoding::Gzip;
        let mut m = Vec::new();
        string_field(&mut m, 2, b"x");
        assert_eq!(model_name(&compress(&m, enc), enc), Ok(Inflated::Absent));
        let mut m = Vec::new();
        string_field(&mut m, 1, b"");
        assert_eq!(model_name(&compress(&m, enc), enc), Ok(Inflated::Absent));
        // A compression bomb: 16 MiB of zeros before field 1. Inflating stops
        // at the cap; the call is routed by its headers.
        let mut m = Vec::new();
        string_field(&mut m, 7, &vec![0; 16 << 20]);
        string_field(&mut m, 1, b"late");
        let body = compress(&m, enc);
        assert!(body.len() < (16 << 20) / 100, "{}", body.len());
        assert_eq!(model_name(&body, enc), Ok(Inflated::Absent));
    }

    #[test]
    fn corrupt_streams_are_errors_once_whole() {
        let enc = Encoding::Deflate;
        let mut body = compress(&infer_request("m", b"t"), enc);
        // Not a zlib stream at all.
        for b in &mut body[PREFIX..] {
            *b = 0xff;
        }
        assert_eq!(model_name(&body, enc), Err(WireError::Inflate));
        // A gzip message sent as deflate.
        let body = compress(&infer_request("m", b"t"), Encoding::Gzip);
        assert_eq!(model_name(&body, enc), Err(WireError::Inflate));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut body = vec![1];
            body.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            body.extend_from_slice(&bytes);
            let _ = model_name(&body, Encoding::Gzip);
            let _ = model_name(&body, Encoding::Deflate);
            let _ = model_name(&body[..body.len() / 2], Encoding::Gzip);
        }
    }
}
