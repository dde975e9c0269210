//! Request-head parsing: `shardgate_http::parse_request_head` on the heads a
//! gateway sees, with the request body's first bytes already in the buffer
//! (as after one read).
//!
//! Parameters:
//! - `openai-python`: a `POST /v1/chat/completions` head as the official
//!   `openai` Python client sends it (17 fields, 615 bytes: bearer token,
//!   the `x-stainless-*` family, content-length), plus the start of its JSON body;
//! - `minimal`: the 4-field head `shardgate-load` sends (`Host`,
//!   `User-Agent`, `Content-Type`, `Content-Length`), 141 bytes;
//! - `openai-python+lookup`: the first head, then the three lookups the proxy
//!   does per request (`host`, `content-type`, `x-model-type`, the last one
//!   absent so it scans every field).
//!
//! Throughput is reported in head bytes. Numbers: bench/results/micro.md.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardgate_http::{parse_request_head, Limits};

/// The head the `openai` Python client (1.x) sends for a chat completion.
const OPENAI_HEAD: &str = "POST /v1/chat/completions HTTP/1.1\r\n\
Host: gateway.inference.svc.cluster.local:8080\r\n\
Accept-Encoding: gzip, deflate\r\n\
Connection: keep-alive\r\n\
Accept: application/json\r\n\
Content-Type: application/json\r\n\
User-Agent: OpenAI/Python 1.54.4\r\n\
X-Stainless-Lang: python\r\n\
X-Stainless-Package-Version: 1.54.4\r\n\
X-Stainless-OS: Linux\r\n\
X-Stainless-Arch: x64\r\n\
X-Stainless-Runtime: CPython\r\n\
X-Stainless-Runtime-Version: 3.11.7\r\n\
Authorization: Bearer sk-proj-4f9c1d2e8b7a6350c1e2d3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4\r\n\
X-Stainless-Async: false\r\n\
x-stainless-retry-count: 0\r\n\
x-stainless-read-timeout: 600.0\r\n\
Content-Length: 1843\r\n\r\n";

/// The head `shardgate-load` sends (its `completion` template).
const MINIMAL_HEAD: &str = "POST /v1/completions HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\n\
User-Agent: shardgate-load/0.1.0\r\n\
Content-Type: application/json\r\n\
Content-Length: 98\r\n\r\n";

fn with_body(head: &str) -> Bytes {
    let mut v = head.as_bytes().to_vec();
    let body = br#"{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Summarise the following text in three bullet points. The text is about shard-per-core gateways"#;
    v.extend_from_slice(body);
    Bytes::from(v)
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse_request_head");
    for (name, head) in [("openai-python", OPENAI_HEAD), ("minimal", MINIMAL_HEAD)] {
        let buf = with_body(head);
        let parsed = parse_request_head(&buf, &limits).expect("valid head");
        assert_eq!(parsed.map(|(_, n)| n), Some(head.len()), "{name}");
        g.throughput(Throughput::Bytes(head.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| parse_request_head(black_box(&buf), &limits))
        });
    }
    let buf = with_body(OPENAI_HEAD);
    g.throughput(Throughput::Bytes(OPENAI_HEAD.len() as u64));
    g.bench_function("openai-python+lookup", |b| {
        b.iter(|| {
            let (head, _) = parse_request_head(black_box(&buf), &limits)
                .ok()
                .flatten()
                .expect("valid head");
            let found = [
                head.header("host").is_some(),
                head.header("content-type").is_some(),
                head.header("x-model-type").is_some(),
            ];
            black_box(found)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
