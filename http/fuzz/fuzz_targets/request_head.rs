//! Fuzz target: arbitrary bytes as a client's request head, then (when the head
//! parses) the rest as its body through the matching body decoder, plus the
//! raw input straight through the chunked decoder. Must never panic, loop, or
//! report ranges outside its input.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shardgate_http::{parse_request_head, BodyDecoder, ChunkedDecoder, Framing, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_header_bytes: 4096,
        max_headers: 32,
        max_body_bytes: 1 << 20,
    };
    let buf = Bytes::copy_from_slice(data);
    if let Ok(Some((head, len))) = parse_request_head(&buf, &limits) {
        assert!(len <= data.len());
        let _ = (head.method(), head.path(), head.query(), head.keep_alive());
        for (name, _) in head.headers() {
            let _ = head.is_hop_by_hop(name);
        }
        let mut body = BodyDecoder::new(head.framing());
        drain(&data[len..], |input| body.decode(input));
        if head.framing() != Framing::Chunked {
            let _ = body.on_eof();
        }
    }
    let mut chunked = ChunkedDecoder::new();
    drain(data, |input| chunked.decode(input));
});

/// Feed `input` to a decoder until it needs more, finishes or fails, checking
/// that every step makes progress and stays inside its input.
fn drain(
    input: &[u8],
    mut decode: impl FnMut(&[u8]) -> Result<shardgate_http::Decoded, shardgate_http::HttpError>,
) {
    let mut pos = 0;
    for _ in 0..=input.len() + 2 {
        let rest = &input[pos..];
        let Ok(d) = decode(rest) else { return };
        assert!(d.consumed <= rest.len());
        if let Some(r) = &d.data {
            assert!(r.start <= r.end && r.end <= rest.len());
        }
        pos += d.consumed;
        if d.done || (d.consumed == 0 && d.data.is_none()) {
            return;
        }
    }
    panic!("decoder made no progress");
}
