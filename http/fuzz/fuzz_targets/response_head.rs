//! Fuzz target: arbitrary bytes as an upstream response head (first byte picks
//! whether the request was HEAD), then the rest through the body decoder the
//! framing calls for. Must never panic, loop, or report ranges outside its input.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shardgate_http::{parse_response_head, BodyDecoder, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&flag, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_header_bytes: 4096,
        max_headers: 32,
        max_body_bytes: 1 << 20,
    };
    let buf = Bytes::copy_from_slice(data);
    let Ok(Some((head, len))) = parse_response_head(&buf, flag & 1 == 1, &limits) else {
        return;
    };
    assert!(len <= data.len());
    let _ = (head.status(), head.reason(), head.keep_alive());
    let mut body = BodyDecoder::new(head.framing());
    let mut pos = 0;
    for _ in 0..=data.len() + 2 {
        let rest = &data[len + pos..];
        let Ok(d) = body.decode(rest) else { return };
        assert!(d.consumed <= rest.len());
        if let Some(r) = &d.data {
            assert!(r.end <= rest.len());
        }
        pos += d.consumed;
        if d.done || (d.consumed == 0 && d.data.is_none()) {
            let _ = body.on_eof();
            return;
        }
    }
    panic!("decoder made no progress");
});
