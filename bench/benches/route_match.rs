//! Route matching: `RoutingTable::match_request` over a config of 100
//! HTTPRoutes (one Gateway listener), built the way the gateway builds it
//! (`shardgate_routing::load_sources` on multi-document YAML, then
//! `RoutingTable::build`; EndpointSlices resolve every backend).
//!
//! The 100 routes: 80 model routes (`X-Gateway-Model-Name: model-N`, exact,
//! under `PathPrefix /v1/`), 10 tenant routes (`x-tenant: tenant-N` on
//! `Exact /v1/chat/completions`), 10 path routes (`PathPrefix /api/vN/`).
//! The request is a parsed `openai`-client head (17 fields) plus the body's
//! model in `RequestView::model`, built exactly as the proxy builds it.
//!
//! Parameters (which request):
//! - `model-first` / `model-last`: a model route that precedence puts early /
//!   late (model-0 / model-79);
//! - `tenant`: a tenant route (exact path, so it sorts before the prefixes);
//! - `path`: a path-only route (`/api/v7/…`);
//! - `miss`: an unknown model: every entry is tried, then `None` (404).
//!
//! Plus `build/100`: `load_sources` + `RoutingTable::build` of the whole
//! config (the cost of a config reload, off the request path).
//! Numbers: bench/results/micro.md.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use shardgate_http::{parse_request_head, Limits, RequestHead};
use shardgate_routing::{load_sources, RequestView, RoutingTable};

const ROUTES: usize = 100;

/// The 100-route config (see the module docs).
fn config() -> String {
    let mut y = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  gatewayClassName: shardgate\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n",
    );
    for i in 0..ROUTES {
        let matches = match i {
            0..80 => format!(
                "    - path: {{type: PathPrefix, value: /v1/}}\n      headers: [{{name: X-Gateway-Model-Name, value: model-{i}}}]\n"
            ),
            80..90 => format!(
                "    - path: {{type: Exact, value: /v1/chat/completions}}\n      headers: [{{name: x-tenant, value: tenant-{i}}}]\n"
            ),
            _ => format!("    - path: {{type: PathPrefix, value: /api/v{}/}}\n", i - 90),
        };
        y.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - matches:\n{matches}    backendRefs: [{{name: svc-{i}, port: 8000}}]\n"
        ));
        y.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-a\n  namespace: default\n  labels: {{kubernetes.io/service-name: svc-{i}}}\naddressType: IPv4\nports: [{{port: 8000}}]\nendpoints:\n- addresses: [\"10.0.{}.{}\", \"10.0.{}.{}\"]\n",
            i / 100,
            (2 * i) % 250 + 1,
            i / 100,
            (2 * i) % 250 + 2,
        ));
    }
    y
}

fn build(yaml: &str) -> RoutingTable {
    let config = load_sources(&[("bench.yaml".to_string(), yaml.to_string())])
        .unwrap_or_else(|e| panic!("config: {e:?}"));
    RoutingTable::build(&config, &mut |_, _| Vec::new()).unwrap_or_else(|e| panic!("build: {e:?}"))
}

/// An `openai`-client head for `path` with extra header lines.
fn head(path: &str, extra: &str) -> RequestHead {
    let text = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.inference.svc.cluster.local:8080\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\nUser-Agent: OpenAI/Python 1.54.4\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.54.4\r\nX-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\nX-Stainless-Runtime-Version: 3.11.7\r\nAuthorization: Bearer sk-proj-4f9c1d2e8b7a6350\r\nX-Stainless-Async: false\r\nx-stainless-retry-count: 0\r\n{extra}Content-Length: 1843\r\n\r\n"
    );
    parse_request_head(&Bytes::from(text), &Limits::default())
        .ok()
        .flatten()
        .expect("valid head")
        .0
}

/// Matches `head` (with `model` standing for the body's model) as the proxy
/// does; returns the route key.
fn route<'t>(table: &'t RoutingTable, head: &RequestHead, model: Option<&str>) -> Option<&'t str> {
    let host = head
        .header("host")
        .and_then(|h| std::str::from_utf8(h).ok());
    let lookup = |name: &str| head.header(name);
    let view = RequestView {
        method: head.method(),
        path: head.path(),
        query: head.query(),
        host,
        headers: &lookup,
        model,
    };
    table.match_request(0, &view).map(|m| m.route)
}

fn bench(c: &mut Criterion) {
    let yaml = config();
    let table = build(&yaml);
    let chat = "/v1/chat/completions";
    let cases: [(&str, RequestHead, Option<&str>, Option<&str>); 5] = [
        (
            "model-first",
            head(chat, ""),
            Some("model-0"),
            Some("default/r0"),
        ),
        (
            "model-last",
            head(chat, ""),
            Some("model-79"),
            Some("default/r79"),
        ),
        (
            "tenant",
            head(chat, "x-tenant: tenant-85\r\n"),
            None,
            Some("default/r85"),
        ),
        (
            "path",
            head("/api/v7/generate", ""),
            None,
            Some("default/r97"),
        ),
        ("miss", head(chat, ""), Some("no-such-model"), None),
    ];
    let mut g = c.benchmark_group("match_request/100-routes");
    for (name, head, model, want) in &cases {
        assert_eq!(route(&table, head, *model), *want, "{name}");
        g.bench_function(*name, |b| {
            b.iter(|| route(black_box(&table), black_box(head), black_box(*model)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("table");
    g.sample_size(20);
    g.bench_function("build/100", |b| b.iter(|| build(black_box(&yaml))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
