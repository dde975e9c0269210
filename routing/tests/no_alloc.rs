//! `RoutingTable::match_request` and `extract_model` (on escape-free values)
//! must not allocate: a counting global allocator checks it on a warm table.
#![allow(clippy::unwrap_used)]
#![forbid(unsafe_code)]

use shardgate_routing::{extract_model, load_sources, RequestView, RoutingTable};
use shardgate_testkit::Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROUTES: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: c
  listeners: [{name: http, protocol: HTTP, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  hostnames: [api.example.com, '*.example.org']
  rules:
  - matches:
    - path: {type: RegularExpression, value: '/v1/models/[a-z0-9-]+'}
      headers: [{type: RegularExpression, name: x-model-type, value: 'gpt-.*'}]
      queryParams: [{name: stream, value: 'true'}]
    - path: {type: Exact, value: /v1/chat/completions}
      method: POST
      headers: [{name: x-gateway-model-name, value: llama}]
  - backendRefs: [{name: s, port: 80}]
";

#[test]
fn matching_and_model_scan_do_not_allocate() {
    let config = load_sources(&[("r.yaml".to_owned(), ROUTES.to_owned())]).unwrap();
    let table = RoutingTable::build(&config, &mut |_, _| Vec::new()).unwrap();
    let requests = [
        (
            "GET",
            "/v1/models/gpt-4",
            Some("a=1&stream=true"),
            Some("API.example.com:443"),
        ),
        ("POST", "/v1/chat/completions", None, Some("x.example.org")),
        ("GET", "/other", None, Some("api.example.com")),
        ("GET", "/", None, Some("nowhere.net")),
    ];
    let body = br#"{"messages":[{"role":"user","content":"hello \"model\""}],"model":"llama"}"#;
    let run = || {
        let model = extract_model(body).unwrap().unwrap();
        assert_eq!(model, "llama");
        // The client sends X-Model-Type; the body's model answers for
        // x-gateway-model-name through `RequestView::model`.
        let lookup = |name: &str| match name {
            "x-model-type" => Some(&b"gpt-large"[..]),
            _ => None,
        };
        let mut found = 0;
        for (method, path, query, host) in requests {
            let view = RequestView {
                method,
                path,
                query,
                host,
                headers: &lookup,
                model: Some(&model),
            };
            found += usize::from(table.match_request(0, &view).is_some());
        }
        found
    };
    assert_eq!(run(), 3); // warm regex caches
    let (found, allocs) = Counting::count(|| (0..100).map(|_| run()).sum::<usize>());
    assert_eq!(found, 300);
    assert_eq!(allocs, 0);
}
