//! Shared by the `prometheus` and `dashboard` tests: a gateway in front of two
//! simulated backends and one dead endpoint, traffic that gives every exported
//! metric family at least one sample, and the Grafana dashboard's queries.
//!
//! Test crates that use it declare `mod common;` before `mod observability;`.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use crate::common::{chat, config, poll, sim, Client, Gateway, SimHandle};

/// Model served by backend `a` through route `default/r0`.
pub const MODEL_A: &str = "model-a";
/// Model served by backend `b` through route `default/r1`.
pub const MODEL_B: &str = "model-b";
/// Model whose only endpoint refuses connections (route `default/r2`).
pub const MODEL_DEAD: &str = "model-dead";
/// Requests `traffic` sends for model-a (all 200: 2 plain chat, 2 streamed chat).
pub const A_OK: u64 = 4;
/// Streamed requests for model-a.
pub const A_STREAMED: u64 = 2;
/// Requests for model-b (all 200: 1 streamed chat, 1 embeddings).
pub const B_OK: u64 = 2;
/// Streamed requests for model-b.
pub const B_STREAMED: u64 = 1;
/// Requests naming a model no route serves (404, label `other`).
pub const UNKNOWN: u64 = 1;
/// Requests for the dead model (502 or 503).
pub const DEAD: u64 = 1;

/// A running gateway with its backends.
pub struct Setup {
    pub gw: Gateway,
    pub admin: SocketAddr,
    pub a: SimHandle,
    pub b: SimHandle,
    /// The dead endpoint (nothing listens there).
    pub dead: SocketAddr,
}

/// An address on 127.0.0.1 where nothing listens (bound, then closed).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Start two sims and a gateway with two shards; routes r0 (model-a), r1 (model-b),
/// r2 (model-dead, one endpoint where nothing listens).
pub fn start() -> Setup {
    let a = sim(&[MODEL_A], |c| c.decode_step_us = 2_000);
    let b = sim(&[MODEL_B], |c| c.decode_step_us = 2_000);
    let dead = free_addr();
    // Route r1 (model-b) micro-batches through a BatchingPolicy, so the batching
    // metrics (`gateway_queue_depth`, …) carry real samples.
    let yaml = config(&[
        (MODEL_A, vec![(1, vec![a.addr()])]),
        (MODEL_B, vec![(1, vec![b.addr()])]),
        (MODEL_DEAD, vec![(1, vec![dead])]),
    ])
    .replace(
        "    backendRefs:\n    - name: svc-1-0\n",
        "    filters:\n    - type: ExtensionRef\n      extensionRef:\n        group: ai.gateway.io\n        kind: BatchingPolicy\n        name: batching\n    backendRefs:\n    - name: svc-1-0\n",
    ) + "---\napiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: batching\n  namespace: default\nspec:\n  maxBatchSize: 8\n  maxLatency: 20ms\n  priorityQueues:\n  - name: batch\n    maxLatency: 30ms\n    maxBatchSize: 16\n";
    assert!(yaml.contains("kind: BatchingPolicy\n        name: batching"));
    let gw = Gateway::start(&yaml, &["--shards", "2"]);
    let admin = gw.admin.expect("gateway reported no admin address");
    Setup {
        gw,
        admin,
        a,
        b,
        dead,
    }
}

fn streamed_chat(model: &str, max_tokens: u32) -> String {
    format!(
        r#"{{"model":"{model}","stream":true,"stream_options":{{"include_usage":true}},"max_tokens":{max_tokens},"messages":[{{"role":"user","content":"one two three four"}}]}}"#
    )
}

/// Send the traffic the counts above describe and wait (polling) until a scrape
/// shows all of it; returns that scrape.
pub fn traffic(s: &Setup) -> String {
    let mut c = s.gw.connect();
    for _ in 0..(A_OK - A_STREAMED) {
        let r = c.post("/v1/chat/completions", &chat(MODEL_A, false, 4), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..A_STREAMED {
        let r = c.post("/v1/chat/completions", &streamed_chat(MODEL_A, 6), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("data: [DONE]"), "{}", r.text());
    }
    let r = c.post("/v1/chat/completions", &streamed_chat(MODEL_B, 6), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.post(
        "/v1/embeddings",
        &format!(r#"{{"model":"{MODEL_B}","input":["one","two"]}}"#),
        &[("x-priority", "batch")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.post(
        "/v1/chat/completions",
        &chat("no-such-model", false, 4),
        &[],
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r =
        s.gw.connect()
            .post("/v1/chat/completions", &chat(MODEL_DEAD, false, 4), &[]);
    assert!(
        r.status == 502 || r.status == 503,
        "{} {}",
        r.status,
        r.text()
    );
    // Shards publish every 500 ms: wait until the scrape shows everything.
    let want = [
        format!(
            r#"gateway_requests_total{{model="{MODEL_A}",route="default/r0",code="200"}} {A_OK}"#
        ),
        format!(
            r#"gateway_requests_total{{model="{MODEL_B}",route="default/r1",code="200"}} {B_OK}"#
        ),
        format!(r#"gateway_requests_total{{model="other",route="none",code="404"}} {UNKNOWN}"#),
        format!(
            r#"gateway_inference_duration_seconds_count{{model="{MODEL_DEAD}",route="default/r2",status_class="5xx"}} {DEAD}"#
        ),
        "gateway_upstream_errors_total{".to_string(),
        format!(r#"gateway_queue_depth{{queue="batching",priority="batch",model="{MODEL_B}"}} 0"#),
    ];
    let mut last = String::new();
    poll(Duration::from_secs(10), || {
        last = scrape(s.admin);
        want.iter().all(|w| last.contains(w.as_str())).then_some(())
    })
    .unwrap_or_else(|| panic!("/metrics never showed the traffic ({want:?}):\n{last}"));
    last
}

/// GET the admin `/metrics`.
pub fn scrape(admin: SocketAddr) -> String {
    let r = Client::connect(admin).get("/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// A scrape, parsed enough for the tests: the declared type of each family, the
/// label names of each sample name, the sample names seen.
#[derive(Debug, Default)]
pub struct Exposition {
    /// family -> `# TYPE` kind.
    pub types: std::collections::BTreeMap<String, String>,
    /// sample name -> label names seen on it.
    pub labels: std::collections::BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(k)) = (it.next(), it.next()) {
                    e.types.insert(n.to_string(), k.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let set = e.labels.entry(name.to_string()).or_default();
            if line[name_end..].starts_with('{') {
                let close = line.rfind('}').expect("unclosed label set");
                for pair in split_label_pairs(&line[name_end + 1..close]) {
                    set.insert(pair);
                }
            }
        }
        e
    }

    /// The family a sample name belongs to (`x_bucket` -> `x` for histograms).
    pub fn family<'a>(&self, sample: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(f) = sample.strip_suffix(suffix) {
                if self.types.get(f).is_some_and(|k| k == "histogram") {
                    return f;
                }
            }
        }
        sample
    }
}

/// Label names of a `a="x",b="y\"z"` list.
fn split_label_pairs(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        out.push(rest[..eq].trim().trim_start_matches(',').trim().to_string());
        let after = &rest[eq + 1..];
        assert!(after.starts_with('"'), "bad label value in {s}");
        // Skip the quoted value, honouring escapes.
        let bytes = after.as_bytes();
        let mut i = 1;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        rest = &after[(i + 1).min(after.len())..];
    }
    out
}

/// Path of the committed dashboard.
pub fn dashboard_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json")
}

/// One query of the dashboard: where it is, and its PromQL.
#[derive(Debug, Clone)]
pub struct Query {
    pub place: String,
    pub expr: String,
}

/// Every panel target `expr` (rows' nested panels included) and every query
/// variable's query.
pub fn dashboard_queries() -> Vec<Query> {
    let path = dashboard_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut out = Vec::new();
    fn walk(panels: &serde_json::Value, out: &mut Vec<Query>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("(untitled)");
            for (i, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(Query {
                        place: format!("panel {title:?} target {i}"),
                        expr: e.to_string(),
                    });
                }
            }
            walk(&p["panels"], out);
        }
    }
    walk(&json["panels"], &mut out);
    for v in json["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]
                .as_str()
                .or_else(|| v["query"]["query"].as_str())
                .unwrap_or_default();
            out.push(Query {
                place: format!("variable {}", v["name"]),
                expr: q.to_string(),
            });
        }
    }
    out
}

/// Every `gateway_…` identifier in a PromQL expression.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("gateway_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && ident(b[end]) {
            end += 1;
        }
        if start == 0 || !ident(b[start - 1]) {
            out.insert(expr[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// Label names an expression relies on: matchers (`{a="x", b=~"y"}`) and
/// grouping clauses (`by (a, b)`), and `label_values(…, a)`'s label.
pub fn label_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let inner = &rest[open + 1..open + close];
        // Skip Grafana's `${var}`.
        if !rest[..open].ends_with('$') {
            for m in split_matchers(inner) {
                out.insert(m);
            }
        }
        rest = &rest[open + close + 1..];
    }
    for kw in ["by", "without"] {
        let mut rest = expr;
        while let Some(pos) = find_word(rest, kw) {
            let after = rest[pos + kw.len()..].trim_start();
            if let Some(list) = after.strip_prefix('(') {
                let end = list.find(')').unwrap_or(list.len());
                for l in list[..end].split(',') {
                    let l = l.trim();
                    if !l.is_empty() {
                        out.insert(l.to_string());
                    }
                }
            }
            rest = &rest[pos + kw.len()..];
        }
    }
    if let Some(args) = expr.trim().strip_prefix("label_values(") {
        if let Some(last) = args.trim_end().trim_end_matches(')').rsplit(',').next() {
            if args.contains(',') {
                out.insert(last.trim().to_string());
            }
        }
    }
    out
}

fn find_word(hay: &str, word: &str) -> Option<usize> {
    let b = hay.as_bytes();
    let mut i = 0;
    while let Some(p) = hay[i..].find(word) {
        let s = i + p;
        let e = s + word.len();
        let before = s == 0 || !(b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_');
        let after = e >= b.len() || !(b[e].is_ascii_alphanumeric() || b[e] == b'_');
        if before && after {
            return Some(s);
        }
        i = e;
    }
    None
}

/// Label names in a matcher list `a="x", b=~"y"` (quoted values skipped).
fn split_matchers(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let rest_trim = rest.trim_start_matches([',', ' ']);
        let Some(op) = rest_trim.find(['=', '!']) else {
            break;
        };
        out.push(rest_trim[..op].trim().to_string());
        let Some(q) = rest_trim.find('"') else { break };
        let after = &rest_trim[q + 1..];
        let bytes = after.as_bytes();
        let mut i = 0;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        rest = &after[(i + 1).min(after.len())..];
    }
    out
}

/// Labels Prometheus or the Prometheus Operator attach to every scraped series.
pub const TARGET_LABELS: &[&str] = &[
    "job",
    "instance",
    "pod",
    "namespace",
    "service",
    "container",
    "node",
    "gpu_type",
];
