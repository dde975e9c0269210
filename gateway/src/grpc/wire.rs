//! A protobuf wire-format scanner for one string field of a gRPC call's first
//! message: `model_name` (field 1) of KServe v2 requests.
//!
//! A gRPC message is a 5-byte prefix (compressed flag, 4-byte big-endian
//! length) and a protobuf message. [`model_name`] walks the message's fields
//! in the bytes it is given: each field costs one tag varint and either a
//! value varint, a fixed 4/8 bytes, or a length varint and a skip; tensors
//! (`raw_input_contents`, field 7) are never read, and the answer is a slice
//! of the input. Encoders write fields in field-number order, so field 1 is
//! found in the first bytes; a field 1 after other fields is found too, with
//! more bytes ([`Scan::NeedMore`] until they arrive). The first field 1 wins
//! (protobuf says the last; clients send one).
//!
//! Errors: a varint over 10 bytes or 64 bits, a length past the message, a
//! group or reserved wire type, field 1 not length-delimited or not UTF-8.

/// What the bytes so far say about the model name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan<'a> {
    /// Field 1's value (non-empty).
    Found(&'a str),
    /// The message has no (or an empty) field 1.
    Absent,
    /// The message is compressed: its fields are read from its inflated
    /// first bytes ([`super::compressed`]), not from these.
    Compressed,
    /// More bytes of the message are needed.
    NeedMore,
}

/// A malformed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A varint longer than 10 bytes or over 64 bits.
    #[error("malformed protobuf varint")]
    Varint,
    /// A length or fixed field that runs past the message.
    #[error("protobuf field runs past the end of the message")]
    Length,
    /// Wire type 3, 4 (groups), 6 or 7.
    #[error("unsupported protobuf wire type {0}")]
    WireType(u8),
    /// Field 1 is not a string.
    #[error("model_name is not a length-delimited field")]
    ModelType,
    /// Field 1 is not UTF-8.
    #[error("model_name is not UTF-8")]
    ModelUtf8,
    /// The compressed flag is neither 0 nor 1.
    #[error("bad gRPC message flag {0}")]
    Flag(u8),
    /// A compressed message that does not inflate with its `grpc-encoding`.
    #[error("the compressed message does not inflate with its grpc-encoding")]
    Inflate,
}

/// Length of a gRPC message prefix.
pub const PREFIX: usize = 5;

/// The message length a gRPC prefix declares, and whether it is compressed;
/// `None` when fewer than 5 bytes are given.
pub fn prefix(buf: &[u8]) -> Option<Result<(bool, u32), WireError>> {
    let p: [u8; PREFIX] = buf.get(..PREFIX)?.try_into().ok()?;
    let len = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
    Some(match p[0] {
        0 => Ok((false, len)),
        1 => Ok((true, len)),
        f => Err(WireError::Flag(f)),
    })
}

/// Reads a varint at `*at`; `Ok(None)` when `buf` ends inside it.
fn varint(buf: &[u8], at: &mut usize) -> Result<Option<u64>, WireError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let Some(&b) = buf.get(*at + i) else {
            return Ok(None);
        };
        let bits = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return Err(WireError::Varint);
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            *at += i + 1;
            return Ok(Some(v));
        }
    }
    Err(WireError::Varint)
}

/// `model_name` (field 1) of the first gRPC message of a call, from the start
/// of the request body (`body` may hold only the first bytes of it).
pub fn model_name(body: &[u8]) -> Result<Scan<'_>, WireError> {
    let (compressed, len) = match prefix(body) {
        None => return Ok(Scan::NeedMore),
        Some(r) => r?,
    };
    if compressed {
        return Ok(Scan::Compressed);
    }
    let end = PREFIX as u64 + u64::from(len);
    let have = body.len().min(usize::try_from(end).unwrap_or(usize::MAX));
    let complete = body.len() as u64 >= end;
    scan_fields(&body[..have], PREFIX, end, complete)
}

/// Walks the protobuf fields of `msg` from `at` for field 1; the message ends
/// at `end` (an offset into `msg`, which may hold fewer bytes so far) and
/// `complete` says all of it is in `msg`. Also used on an inflated message
/// ([`super::compressed`]).
pub(super) fn scan_fields(
    msg: &[u8],
    mut at: usize,
    end: u64,
    complete: bool,
) -> Result<Scan<'_>, WireError> {
    let more = |complete: bool| {
        if complete {
            Err(WireError::Length)
        } else {
            Ok(Scan::NeedMore)
        }
    };
    while at < msg.len() {
        let Some(tag) = varint(msg, &mut at)? else {
            return more(complete);
        };
        let (field, wt) = (tag >> 3, (tag & 7) as u8);
        if field == 0 {
            return Err(WireError::WireType(wt));
        }
        if field == 1 && wt != 2 {
            return Err(WireError::ModelType);
        }
        let skip = match wt {
            0 => match varint(msg, &mut at)? {
                Some(_) => 0,
                None => return more(complete),
            },
            1 => 8,
            5 => 4,
            2 => {
                let Some(n) = varint(msg, &mut at)? else {
                    return more(complete);
                };
                if at as u64 + n > end {
                    return Err(WireError::Length);
                }
                if field == 1 {
                    let Some(v) = msg.get(at..at + n as usize) else {
                        return Ok(Scan::NeedMore);
                    };
                    return match std::str::from_utf8(v) {
                        Ok("") => Ok(Scan::Absent),
                        Ok(s) => Ok(Scan::Found(s)),
                        Err(_) => Err(WireError::ModelUtf8),
                    };
                }
                n
            }
            other => return Err(WireError::WireType(other)),
        };
        if at as u64 + skip > end {
            return Err(WireError::Length);
        }
        at += skip as usize;
        if at > msg.len() {
            return Ok(Scan::NeedMore);
        }
    }
    if complete {
        Ok(Scan::Absent)
    } else {
        Ok(Scan::NeedMore)
    }
}

/// Protobuf writers for tests of the scanners.
#[cfg(test)]
pub(super) mod test_support {
    /// Appends `v` as a varint.
    pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Appends a length-delimited field.
    pub fn string_field(out: &mut Vec<u8>, field: u64, v: &[u8]) {
        put_varint(out, field << 3 | 2);
        put_varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    use super::test_support::{put_varint, string_field};

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(msg);
        out
    }

    /// A ModelInferRequest: model_name, model_version, id, and a big
    /// raw_input_contents (field 7).
    fn infer_request(model: &str, tensor: usize) -> Vec<u8> {
        let mut m = Vec::new();
        string_field(&mut m, 1, model.as_bytes());
        string_field(&mut m, 2, b"1");
        string_field(&mut m, 3, b"req-1");
        string_field(&mut m, 7, &vec![0xAB; tensor]);
        framed(&m)
    }

    #[test]
    fn finds_the_model_in_a_big_request_from_its_first_bytes() {
        let body = infer_request("resnet50", 8 << 20);
        assert_eq!(model_name(&body[..32]), Ok(Scan::Found("resnet50")));
        assert_eq!(model_name(&body), Ok(Scan::Found("resnet50")));
    }

    #[test]
    fn the_model_after_other_fields_is_found() {
        let mut m = Vec::new();
        put_varint(&mut m, 4 << 3); // field 4 varint
        put_varint(&mut m, 300);
        m.extend_from_slice(&[5 << 3 | 5, 1, 2, 3, 4]); // fixed32
        m.push(6 << 3 | 1); // fixed64
        m.extend_from_slice(&[0; 8]);
        string_field(&mut m, 3, b"id");
        string_field(&mut m, 1, b"llama");
        let body = framed(&m);
        assert_eq!(model_name(&body), Ok(Scan::Found("llama")));
        assert_eq!(model_name(&body[..body.len() - 2]), Ok(Scan::NeedMore));
    }

    #[test]
    fn partial_prefixes_need_more() {
        let body = infer_request("m", 10);
        for n in 0..8 {
            assert_eq!(model_name(&body[..n]), Ok(Scan::NeedMore), "{n}");
        }
    }

    #[test]
    fn absent_empty_and_compressed() {
        assert_eq!(model_name(&framed(&[])), Ok(Scan::Absent));
        let mut m = Vec::new();
        string_field(&mut m, 1, b"");
        assert_eq!(model_name(&framed(&m)), Ok(Scan::Absent));
        let mut m = Vec::new();
        string_field(&mut m, 2, b"x");
        assert_eq!(model_name(&framed(&m)), Ok(Scan::Absent));
        let mut c = framed(&m);
        c[0] = 1;
        assert_eq!(model_name(&c), Ok(Scan::Compressed));
        c[0] = 7;
        assert_eq!(model_name(&c), Err(WireError::Flag(7)));
    }

    #[test]
    fn malformed_messages_are_errors() {
        // An 11-byte varint.
        let bad = framed(&[
            0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        assert_eq!(model_name(&bad), Err(WireError::Varint));
        // A 10th varint byte over 1: more than 64 bits.
        let bad = framed(&[
            0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ]);
        assert_eq!(model_name(&bad), Err(WireError::Varint));
        // A length past the message.
        assert_eq!(
            model_name(&framed(&[0x0a, 0x05, b'a'])),
            Err(WireError::Length)
        );
        assert_eq!(
            model_name(&framed(&[0x12, 0x7f, b'a'])),
            Err(WireError::Length)
        );
        // A varint cut by the message's end.
        assert_eq!(model_name(&framed(&[0x20, 0x80])), Err(WireError::Length));
        // Groups, field 0, model_name as a varint, not UTF-8.
        assert_eq!(model_name(&framed(&[0x13])), Err(WireError::WireType(3)));
        assert_eq!(
            model_name(&framed(&[0x02, 0x00])),
            Err(WireError::WireType(2))
        );
        assert_eq!(
            model_name(&framed(&[0x08, 0x01])),
            Err(WireError::ModelType)
        );
        assert_eq!(
            model_name(&framed(&[0x0a, 0x01, 0xff])),
            Err(WireError::ModelUtf8)
        );
        // Fixed fields past the end.
        assert_eq!(model_name(&framed(&[0x15, 0, 0])), Err(WireError::Length));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = model_name(&bytes);
            let mut f = framed(&bytes);
            let _ = model_name(&f);
            f.truncate(f.len() / 2);
            let _ = model_name(&f);
        }

        #[test]
        fn finds_any_model_in_any_prefix_long_enough(
            model in "[a-zA-Z0-9_.-]{1,40}",
            tensor in 0usize..2000,
            cut in 0usize..4000,
        ) {
            let body = infer_request(&model, tensor);
            let cut = cut.min(body.len());
            let got = model_name(&body[..cut]).unwrap();
            // prefix 5 + tag 1 + length 1 + the name.
            if cut >= PREFIX + 2 + model.len() {
                prop_assert_eq!(got, Scan::Found(model.as_str()));
            } else {
                prop_assert_eq!(got, Scan::NeedMore);
            }
        }
    }
}
