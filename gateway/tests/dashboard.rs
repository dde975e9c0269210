//! The Grafana dashboard (`deploy/grafana-dashboard.json`) only queries what the
//! gateway really exports: every `gateway_…` metric a panel target or a variable
//! names must appear, with samples, in a real `/metrics` scrape after traffic, and
//! every label its matchers and `by (…)` clauses use must be on one of the metrics
//! the query names (or be a label Prometheus adds to every target).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;
mod observability;

use std::collections::BTreeSet;

use observability::*;

#[test]
fn every_dashboard_query_names_exported_metrics_and_labels() {
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 10,
        "the dashboard has only {} queries",
        queries.len()
    );
    let setup = start();
    let text = traffic(&setup);
    let expo = Exposition::parse(&text);

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(&q.expr);
        if names.is_empty() {
            problems.push(format!("{}: names no gateway_ metric: {}", q.place, q.expr));
        }
        let mut labels_available: BTreeSet<String> =
            TARGET_LABELS.iter().map(|s| s.to_string()).collect();
        for name in &names {
            used.insert(expo.family(name).to_string());
            let family = expo.family(name);
            let Some(kind) = expo.types.get(family) else {
                problems.push(format!(
                    "{}: {name} is not exported (no `# TYPE {family}`)",
                    q.place
                ));
                continue;
            };
            if name != family && kind != "histogram" {
                problems.push(format!("{}: {name}: {family} is a {kind}", q.place));
            }
            // A histogram used by its family name alone is not a series.
            let sample = if kind == "histogram" && name == family {
                problems.push(format!(
                    "{}: {name} is a histogram: query {name}_bucket, _sum or _count",
                    q.place
                ));
                continue;
            } else {
                name.as_str()
            };
            match expo.labels.get(sample) {
                Some(l) => labels_available.extend(l.iter().cloned()),
                None => problems.push(format!(
                    "{}: {sample} has no sample in the scrape after traffic",
                    q.place
                )),
            }
        }
        for l in label_names(&q.expr) {
            if !labels_available.contains(&l) {
                problems.push(format!(
                    "{}: label {l:?} is on none of {names:?}: {}",
                    q.place, q.expr
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard queries what the gateway does not export:\n  {}\n--- scrape:\n{text}",
        problems.join("\n  ")
    );
    // The panels cover what the issue asks to see.
    for family in [
        "gateway_inference_duration_seconds",
        "gateway_requests_total",
        "gateway_time_to_first_token_seconds",
        "gateway_time_per_output_token_seconds",
        "gateway_prompt_tokens_total",
        "gateway_completion_tokens_total",
        "gateway_upstream_errors_total",
        "gateway_endpoint_in_flight",
        "gateway_endpoint_ejected",
        "gateway_connections_open",
    ] {
        assert!(used.contains(family), "no panel shows {family}");
    }
}

#[test]
fn query_parsing_finds_names_and_labels() {
    let e = r#"histogram_quantile(0.99, sum by (le, model) (rate(gateway_inference_duration_seconds_bucket{model=~"$model",route=~"a\"}b"}[$__rate_interval]))) / on() gateway_x_total"#;
    assert_eq!(
        metric_names(e).into_iter().collect::<Vec<_>>(),
        vec![
            "gateway_inference_duration_seconds_bucket",
            "gateway_x_total"
        ]
    );
    assert_eq!(
        label_names(e).into_iter().collect::<Vec<_>>(),
        vec!["le", "model", "route"]
    );
    assert_eq!(
        label_names(r#"label_values(gateway_requests_total{model=~"$model"}, route)"#)
            .into_iter()
            .collect::<Vec<_>>(),
        vec!["model", "route"]
    );
    // A dashboard naming a metric the gateway lacks is caught by the name scan.
    assert!(
        metric_names("rate(gateway_nonexistent_total[5m])").contains("gateway_nonexistent_total")
    );
}
