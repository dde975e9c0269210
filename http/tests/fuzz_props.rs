//! Property tests (proptest, 512–1000 cases each): arbitrary and mutated bytes
//! never panic the head parsers or the chunked decoder, the decoder always makes
//! progress when it can, prefixes of valid heads are reported incomplete, and
//! data framed with `write::chunk_header` decodes back to itself whatever the
//! read splits.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use shardgate_http::{
    parse_request_head, parse_response_head, write, ChunkedDecoder, Framing, HttpError, Limits,
};

const VALID_REQUEST: &[u8] = b"POST /v1/chat/completions?stream=true HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 17\r\nConnection: keep-alive, x-a\r\nX-Model-Type: llama\r\n\r\n{\"model\":\"llama\"}";
const VALID_CHUNKED: &[u8] =
    b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n";
const VALID_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata: \r\n0\r\n\r\n";

fn small_limits() -> Limits {
    Limits {
        max_header_bytes: 256,
        max_headers: 6,
        max_body_bytes: 1 << 20,
    }
}

/// Exercise every accessor of whatever parsed.
fn poke_request(buf: &Bytes, limits: &Limits) {
    if let Ok(Some((h, len))) = parse_request_head(buf, limits) {
        assert!(len <= buf.len() && len <= limits.max_header_bytes);
        assert_eq!(h.raw().len(), len);
        let _ = (h.method(), h.target(), h.path(), h.query(), h.version());
        let _ = (h.framing(), h.keep_alive(), h.expect_continue());
        for (name, value) in h.headers() {
            assert!(!name.is_empty());
            assert!(h.header(name).is_some());
            let _ = (h.is_hop_by_hop(name), value.len());
        }
        if let Framing::Length(n) = h.framing() {
            assert!(n <= limits.max_body_bytes);
        }
    }
}

fn poke_response(buf: &Bytes, head_request: bool, limits: &Limits) {
    match parse_response_head(buf, head_request, limits) {
        Ok(Some((h, len))) => {
            assert!(len <= buf.len());
            let _ = (
                h.status(),
                h.reason(),
                h.version(),
                h.framing(),
                h.keep_alive(),
            );
            for (name, _) in h.headers() {
                let _ = (h.is_hop_by_hop(name), h.header(name));
            }
            if h.framing() == Framing::UntilClose {
                assert!(!h.keep_alive());
            }
        }
        Ok(None) => {}
        Err(e) => assert_eq!((e.status, e.close), (502, true)),
    }
}

/// Run a decoder over `input` as one buffer; bounded: every step must consume,
/// report data, finish, or fail; a stall is allowed only on empty input.
fn drain_chunked(input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
    let mut dec = ChunkedDecoder::new();
    let mut pos = 0;
    let mut out = Vec::new();
    for _ in 0..=input.len() + 2 {
        let rest = &input[pos..];
        let d = dec.decode(rest)?;
        assert!(d.consumed <= rest.len());
        if let Some(r) = d.data.clone() {
            assert!(r.start <= r.end && r.end <= d.consumed);
            out.extend_from_slice(&rest[r]);
        }
        pos += d.consumed;
        if d.done {
            assert!(dec.is_done());
            return Ok((out, pos, true));
        }
        if d.consumed == 0 && d.data.is_none() {
            assert!(
                rest.is_empty(),
                "decoder stalled with {} bytes left",
                rest.len()
            );
            return Ok((out, pos, false));
        }
    }
    panic!("decoder did not settle within the step bound");
}

/// A mutation of a valid message: flip, insert or delete bytes, preferring the
/// bytes that matter to HTTP framing.
fn mutated(base: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop::sample::select(vec![
        b'\r', b'\n', b' ', b'\t', b':', b',', b';', b'0', b'9', b'a', b'f', b'-', b'+', 0u8, 0xff,
    ]);
    let op = (0..3u8, any::<prop::sample::Index>(), interesting);
    prop::collection::vec(op, 1..6).prop_map(move |ops| {
        let mut v = base.to_vec();
        for (kind, at, byte) in ops {
            let i = at.index(v.len() + 1);
            match kind {
                0 if i < v.len() => v[i] = byte,
                1 => v.insert(i, byte),
                _ if i < v.len() => {
                    v.remove(i);
                }
                _ => v.push(byte),
            }
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..600), head in any::<bool>()) {
        let buf = Bytes::from(raw.clone());
        poke_request(&buf, &Limits::default());
        poke_request(&buf, &small_limits());
        poke_response(&buf, head, &Limits::default());
        poke_response(&buf, head, &small_limits());
        let _ = drain_chunked(&raw);
    }

    #[test]
    fn http_looking_bytes_never_panic(
        raw in prop::collection::vec(prop::sample::select(b"GETPOST HTTP/1.0\r\n:;,-+0123456789abcdefxX \tchunkedContent-LengthTransfer-Encoding".to_vec()), 0..400),
    ) {
        let buf = Bytes::from(raw.clone());
        poke_request(&buf, &small_limits());
        poke_response(&buf, false, &small_limits());
        let _ = drain_chunked(&raw);
    }

    #[test]
    fn mutated_requests_never_panic(raw in prop_oneof![mutated(VALID_REQUEST), mutated(VALID_CHUNKED)]) {
        let buf = Bytes::from(raw.clone());
        poke_request(&buf, &Limits::default());
        poke_request(&buf, &small_limits());
        if let Ok(Some((h, len))) = parse_request_head(&buf, &Limits::default()) {
            if h.framing() == Framing::Chunked {
                let _ = drain_chunked(&raw[len..]);
            }
        }
    }

    #[test]
    fn mutated_responses_never_panic(raw in mutated(VALID_RESPONSE), head in any::<bool>()) {
        let buf = Bytes::from(raw.clone());
        poke_response(&buf, head, &Limits::default());
        if let Ok(Some((h, len))) = parse_response_head(&buf, head, &Limits::default()) {
            if h.framing() == Framing::Chunked {
                let _ = drain_chunked(&raw[len..]);
            }
        }
    }

    #[test]
    fn mutated_chunked_bodies_never_panic(raw in mutated(b"5;x=y\r\nhello\r\n1a\r\n0123456789abcdefghijklmnop\r\n0\r\nT: 1\r\n\r\n")) {
        let _ = drain_chunked(&raw);
    }

    #[test]
    fn prefixes_of_valid_heads_are_incomplete(cut in 0usize..150) {
        let head_len = VALID_REQUEST.len() - 17;
        let cut = cut.min(head_len - 1);
        let buf = Bytes::copy_from_slice(&VALID_REQUEST[..cut]);
        prop_assert!(parse_request_head(&buf, &Limits::default()).unwrap().is_none());
        let full = Bytes::from_static(VALID_REQUEST);
        let (_, len) = parse_request_head(&full, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(len, head_len);
    }

    #[test]
    fn generated_requests_round_trip(
        method in "[A-Z]{1,10}",
        path in "/[a-zA-Z0-9._~!$&'()*+,;=:@%/-]{0,40}",
        fields in prop::collection::vec(("[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,20}", "[ -~]{0,40}"), 0..6),
    ) {
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .filter(|(n, _)| {
                let n = n.to_ascii_lowercase();
                !matches!(n.as_str(), "content-length" | "transfer-encoding" | "host")
            })
            .map(|(n, v)| (n, v.trim_matches(|c| c == ' ' || c == '\t').to_string()))
            .collect();
        let mut raw = Vec::new();
        raw.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
        // HTTP/1.1 requires Host (RFC 9112 §3.2).
        write::header(&mut raw, "Host", b"h");
        for (n, v) in &fields {
            write::header(&mut raw, n, v.as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let (h, len) = parse_request_head(&Bytes::from(raw.clone()), &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(len, raw.len());
        prop_assert_eq!(h.method(), method.as_str());
        prop_assert_eq!(h.target(), path.as_str());
        let got: Vec<(String, Vec<u8>)> = h.headers().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        let want: Vec<(String, Vec<u8>)> = std::iter::once(("Host".to_string(), b"h".to_vec()))
            .chain(fields.into_iter().map(|(n, v)| (n, v.into_bytes())))
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn chunked_round_trip(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        sizes in prop::collection::vec(1usize..700, 1..20),
        splits in prop::collection::vec(1usize..64, 1..50),
        with_ext in any::<bool>(),
        with_trailer in any::<bool>(),
    ) {
        // Encode.
        let mut body = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < data.len() {
            let len = sizes[i % sizes.len()].min(data.len() - at);
            write::chunk_header(&mut body, len);
            if with_ext {
                // Put an extension before the CRLF the header wrote.
                body.truncate(body.len() - 2);
                body.extend_from_slice(b";ext=\"v\"\r\n");
            }
            body.extend_from_slice(&data[at..at + len]);
            body.extend_from_slice(write::CHUNK_END);
            at += len;
            i += 1;
        }
        if with_trailer {
            body.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
        } else {
            body.extend_from_slice(write::LAST_CHUNK);
        }
        let body_len = body.len();
        body.extend_from_slice(b"HTTP/1.1 200 OK\r\n");

        // Decode in random pieces, keeping unconsumed bytes as a connection would.
        let mut dec = ChunkedDecoder::new();
        let mut pending = Vec::new();
        let mut out = Vec::new();
        let mut consumed_total = 0;
        let mut fed = 0;
        let mut s = 0;
        let mut done = false;
        while !done {
            if fed < body.len() {
                let n = splits[s % splits.len()].min(body.len() - fed);
                pending.extend_from_slice(&body[fed..fed + n]);
                fed += n;
                s += 1;
            }
            loop {
                let d = dec.decode(&pending).unwrap();
                if let Some(r) = d.data.clone() {
                    out.extend_from_slice(&pending[r]);
                }
                pending.drain(..d.consumed);
                consumed_total += d.consumed;
                if d.done {
                    done = true;
                    break;
                }
                if d.consumed == 0 && d.data.is_none() {
                    prop_assert!(pending.is_empty());
                    break;
                }
            }
            prop_assert!(done || fed < body.len(), "input exhausted before done");
        }
        prop_assert_eq!(out, data.clone());
        prop_assert_eq!(consumed_total, body_len);
        prop_assert_eq!(dec.body_len(), data.len() as u64);
    }
}
