//! The seed manifests through the public API, as the gateway uses it:
//! load, report, build, match, print.
#![allow(clippy::unwrap_used)]

use shardgate_routing::{
    load_sources, parse_duration, RequestView, RoutingTable, RuleAction, MODEL_TYPE_HEADER,
};

fn seeds() -> Vec<(String, String)> {
    let local = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/seed-manifests.yaml"
    );
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/examples/seed-manifests.yaml"
    );
    [local, shared]
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("seed manifests {path}: {e}"));
            (path.to_owned(), text)
        })
        .collect()
}

#[test]
fn seed_loads_builds_and_routes() {
    for (name, text) in seeds() {
        let config = load_sources(&[(name.clone(), text)]).unwrap();
        assert_eq!(config.docs.len(), 8, "{name}");
        let report = config.enforcement_report();
        assert_eq!(report.len(), 8);
        assert!(report
            .iter()
            .any(|(k, s, n)| k == "ServiceMonitor" && *s == "accepted, not enforced" && *n == 1));

        let mut resolved = Vec::new();
        let table = RoutingTable::build(&config, &mut |host, port| {
            resolved.push((host.to_owned(), port));
            Vec::new()
        })
        .unwrap();
        assert_eq!(
            resolved,
            [
                ("gpt-large-service".to_owned(), 8080),
                ("bert-service".to_owned(), 8080)
            ]
        );
        let http = table
            .listeners()
            .iter()
            .position(|l| l.served && l.port == 8080)
            .unwrap();
        let lookup = |n: &str| (n == MODEL_TYPE_HEADER).then_some(&b"bert-base"[..]);
        let view = RequestView {
            method: "POST",
            path: "/v1/completions",
            query: None,
            host: Some("localhost:8080"),
            headers: &lookup,
            model: None,
        };
        let m = table.match_request(http, &view).unwrap();
        assert_eq!((m.route, m.rule), ("ai-workloads/model-routing", 1));
        assert_eq!(*m.action, RuleAction::Forward);
        assert_eq!(
            table
                .inference_config()
                .unwrap()
                .spec
                .timeout
                .as_ref()
                .unwrap()
                .inference,
            Some(parse_duration("300s").unwrap())
        );
        let shown = table.to_string();
        assert!(
            shown.contains("bert-service:8080 (w 100) [no endpoints]"),
            "{shown}"
        );
    }
}
