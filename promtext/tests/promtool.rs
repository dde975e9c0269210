//! The writer's output, in both styles, passes `promtool check metrics` (the parser
//! and linter Prometheus ships): counters, gauges, a label-less series, label values
//! needing every escape, and histograms with and without an overflow bucket.
//!
//! Without `promtool` on PATH the test is skipped with a printed reason, unless
//! `SHARDGATE_REQUIRE_PROMETHEUS` is set (scripts/test sets it): then it fails.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use shardgate_promtext::{Kind, PromWriter, Style};

fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("SHARDGATE_REQUIRE_PROMETHEUS").is_none(),
            "promtool is not on PATH but SHARDGATE_REQUIRE_PROMETHEUS is set"
        );
        eprintln!("skipped: promtool is not on PATH (apt-get install prometheus)");
    }
    found
}

/// `promtool check metrics` on `text`: (success, its output).
fn check(tool: &PathBuf, text: &str) -> (bool, String) {
    let mut child = Command::new(tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

fn exposition(style: Style) -> String {
    let mut out = String::new();
    let mut w = PromWriter::new(&mut out, style);
    w.family("demo_requests_total", "Requests answered.", Kind::Counter);
    for (model, code, n) in [("a", "200", 3u64), ("b\\\"c\nd", "500", 1)] {
        w.sample("", &[("model", model), ("code", code)], n);
    }
    w.family("demo_shards", "Shards.", Kind::Gauge)
        .sample("", &[], 4u32);
    w.family("demo_ratio", "A ratio.", Kind::Gauge)
        .sample("", &[("endpoint", "127.0.0.1:8001")], 0.25)
        .sample("", &[("endpoint", "127.0.0.1:8002")], f64::NAN);
    w.family("demo_duration_seconds", "Durations.", Kind::Histogram)
        .histogram(
            &[("engine", "0"), ("model_name", "m")],
            [(0.005, 1), (0.5, 4), (600.0, 0), (f64::INFINITY, 2)],
            31.5,
        )
        .histogram(
            &[("engine", "1"), ("model_name", "m")],
            [(0.005, 0), (0.5, 0), (600.0, 0)],
            0.0,
        );
    out
}

#[test]
fn both_styles_pass_promtool() {
    let Some(tool) = promtool() else { return };
    for style in [Style::PLAIN, Style::PYTHON] {
        let text = exposition(style);
        let (ok, said) = check(&tool, &text);
        assert!(
            ok,
            "promtool rejected {style:?}:\n{said}\n--- input ---\n{text}"
        );
    }
    // The check can fail: a family typed twice is rejected.
    let twice = "# TYPE x gauge\nx 1\n# TYPE x gauge\nx 2\n";
    assert!(
        !check(&tool, twice).0,
        "promtool accepted a duplicated family"
    );
}
