//! Parser edge cases and fuzzing, per-family mapping rules, windowed means and
//! staleness on a virtual clock.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::model::{decode, HistogramTotals, LoraState, ServerKind, Window};
use super::prom::{self, parse, parse_sample, Entry, LineErrorKind, Lines, MetricType};
use super::store::{SignalKind, StoreConfig, TelemetryStore};

/// Name, labels, value, timestamp.
type Owned = (String, Vec<(String, String)>, f64, Option<i64>);

fn samples(text: &str) -> Vec<Owned> {
    let mut out = Vec::new();
    parse(text.as_bytes(), |s| {
        out.push((
            s.name.to_owned(),
            s.labels()
                .map(|l| (l.name.to_owned(), l.value.get().into_owned()))
                .collect(),
            s.value,
            s.timestamp_ms,
        ));
    });
    out
}

// ---- prom ----

#[test]
fn plain_sample_and_labels() {
    let s = parse_sample(r#"http_requests_total{method="post",code="200"} 1027 1395066363000"#)
        .unwrap();
    assert_eq!(s.name, "http_requests_total");
    assert_eq!(s.value, 1027.0);
    assert_eq!(s.timestamp_ms, Some(1_395_066_363_000));
    assert_eq!(s.label("code").unwrap(), "200");
    assert_eq!(s.label("method").unwrap().raw(), "post");
    assert!(s.label("missing").is_none());
    assert_eq!(s.labels().count(), 2);
    let bare = parse_sample("metric_without_timestamp_and_labels 12.47").unwrap();
    assert_eq!(bare.labels().count(), 0);
    assert_eq!(bare.timestamp_ms, None);
}

#[test]
fn escapes_are_handled_lazily() {
    let line = r#"msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9"#;
    let s = parse_sample(line).unwrap();
    let path = s.label("path").unwrap();
    assert!(path.is_escaped());
    assert_eq!(path.get(), r"C:\DIR\FILE.TXT");
    assert!(path.eq_str(r"C:\DIR\FILE.TXT"));
    assert!(!path.eq_str(r"C:\DIR\FILE.TX"));
    assert!(!path.eq_str(r"C:\DIR\FILE.TXTX"));
    let err = s.label("error").unwrap();
    assert_eq!(err.get(), "Cannot find file:\n\"FILE.TXT\"");
    assert!(err.eq_str("Cannot find file:\n\"FILE.TXT\""));
    assert_eq!(s.value, 1.458_255_915e9);
    // Borrowed when there is nothing to unescape.
    let plain = parse_sample(r#"a{b="c"} 1"#).unwrap();
    assert!(matches!(
        plain.label("b").unwrap().get(),
        std::borrow::Cow::Borrowed("c")
    ));
    // Unknown escapes are kept literally.
    let odd = parse_sample(r#"a{b="x\ty"} 1"#).unwrap();
    assert_eq!(odd.label("b").unwrap().get(), r"x\ty");
    assert!(odd.label("b").unwrap().eq_str(r"x\ty"));
}

#[test]
fn special_floats_and_exponents() {
    let got = samples("a NaN\nb +Inf\nc -Inf\nd 1e3\ne -1.5E-3\nf +7\ng .5\nh 0x10\ni 1_000\n");
    assert!(got[0].2.is_nan());
    assert_eq!(got[1].2, f64::INFINITY);
    assert_eq!(got[2].2, f64::NEG_INFINITY);
    assert_eq!(got[3].2, 1000.0);
    assert_eq!(got[4].2, -0.0015);
    assert_eq!(got[5].2, 7.0);
    assert_eq!(got[6].2, 0.5);
    assert_eq!(got.len(), 7, "hex and underscores are rejected");
}

#[test]
fn help_type_comments_blank_lines_crlf() {
    let text = "# HELP foo_seconds The \\\\ help\\n text\r\n# TYPE foo_seconds histogram\r\n\r\n   \r\n# a comment\r\n#HELP not a help line\r\nfoo_seconds_bucket{le=\"+Inf\"} 3\r\nfoo_seconds_sum 1.5\r\nfoo_seconds_count 3\r\nfoo_other 1\r\n# EOF\r\n";
    let entries: Vec<_> = Lines::new(text.as_bytes()).collect();
    assert!(matches!(
        entries[0],
        Ok(Entry::Help {
            name: "foo_seconds",
            text: "The \\\\ help\\n text"
        })
    ));
    assert!(matches!(
        entries[1],
        Ok(Entry::Type {
            name: "foo_seconds",
            kind: MetricType::Histogram
        })
    ));
    assert!(matches!(entries[2], Ok(Entry::Comment)));
    assert!(matches!(entries[3], Ok(Entry::Comment)));
    let kinds: Vec<_> = entries
        .iter()
        .filter_map(|e| match e {
            Ok(Entry::Sample(s)) => Some((s.name, s.kind)),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("foo_seconds_bucket", MetricType::Histogram),
            ("foo_seconds_sum", MetricType::Histogram),
            ("foo_seconds_count", MetricType::Histogram),
            ("foo_other", MetricType::Untyped),
        ]
    );
    assert_eq!(samples(text)[0].1, vec![("le".into(), "+Inf".into())]);
}

#[test]
fn tolerated_spacing() {
    let got = samples("  a { b = \"1\" , c=\"2\", } 5 \t 17 \nd{} 2\ne\t3\nf{g=\"h\"}4\n");
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0].1,
        vec![("b".into(), "1".into()), ("c".into(), "2".into())]
    );
    assert_eq!((got[0].2, got[0].3), (5.0, Some(17)));
    assert_eq!(got[1].1, vec![]);
    assert_eq!(got[3].2, 4.0);
}

#[test]
fn malformed_lines_are_counted_and_skipped() {
    let cases = [
        ("9bad 1", LineErrorKind::BadName),
        ("foo-bar 1", LineErrorKind::BadName),
        ("foo+1", LineErrorKind::BadName),
        ("foo{a=\"1\" 1", LineErrorKind::BadLabels),
        ("foo{a=1} 1", LineErrorKind::BadLabels),
        ("foo{1a=\"x\"} 1", LineErrorKind::BadLabels),
        ("foo{a=\"x\"b=\"y\"} 1", LineErrorKind::BadLabels),
        ("foo{a=\"unterminated} 1", LineErrorKind::BadLabels),
        ("foo", LineErrorKind::BadValue),
        ("foo{a=\"1\"}", LineErrorKind::BadValue),
        ("foo abc", LineErrorKind::BadValue),
        ("foo 1 1.5", LineErrorKind::BadTimestamp),
        ("foo 1 2 3", LineErrorKind::TrailingGarbage),
        ("# TYPE foo bogus", LineErrorKind::BadMetadata),
        ("# TYPE 1foo gauge", LineErrorKind::BadMetadata),
    ];
    for (line, kind) in cases {
        let text = format!("ok_before 1\n{line}\nok_after 2\n");
        let mut names = Vec::new();
        let stats = parse(text.as_bytes(), |s| names.push(s.name.to_owned()));
        assert_eq!(names, vec!["ok_before", "ok_after"], "{line}");
        assert_eq!(stats.errors, 1, "{line}");
        let e = stats.first_error.unwrap();
        assert_eq!((e.line, e.kind), (2, kind), "{line}");
    }
    let mut bytes = b"ok 1\nbad{a=\"".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(b"\"} 1\nok 2");
    let stats = parse(&bytes, |_| {});
    assert_eq!((stats.samples, stats.errors), (2, 1));
    assert_eq!(stats.first_error.unwrap().kind, LineErrorKind::InvalidUtf8);
}

#[test]
fn utf8_label_values() {
    let got = samples("m{name=\"naïve ✓\"} 1\n");
    assert_eq!(got[0].1[0].1, "naïve ✓");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let stats = parse(&bytes, |s| {
            for l in s.labels() {
                let _ = l.value.get();
                let _ = l.value.eq_str("x");
            }
        });
        prop_assert!(stats.samples + stats.errors <= stats.lines);
    }

    #[test]
    fn near_miss_lines_never_panic(
        parts in proptest::collection::vec(
            prop::sample::select(vec![
                "a", "b_c", ":", "{", "}", "=", "\"", "\\", "\\\"", ",", " ", "\t", "\r",
                "\n", "1", "-", "+Inf", "NaN", "1e5", "#", "# TYPE", "# HELP", "é", "le",
            ]),
            0..40,
        )
    ) {
        let text: String = parts.concat();
        let _ = parse(text.as_bytes(), |s| {
            let _ = s.labels().count();
            let _ = s.label("le").map(|v| v.get());
        });
    }

    #[test]
    fn well_formed_samples_round_trip(
        name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
        labels in proptest::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,8}", "[ -~\n]{0,12}"), 0..5),
        value in any::<f64>(),
        ts in proptest::option::of(any::<i64>()),
    ) {
        let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let body: Vec<String> =
            labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        let mut line = name.clone();
        if !labels.is_empty() {
            line.push('{');
            line.push_str(&body.join(","));
            line.push('}');
        }
        line.push(' ');
        line.push_str(&format!("{value:?}"));
        if let Some(t) = ts {
            line.push_str(&format!(" {t}"));
        }
        let s = parse_sample(&line).unwrap();
        prop_assert_eq!(s.name, name.as_str());
        prop_assert!(s.value == value || (s.value.is_nan() && value.is_nan()));
        prop_assert_eq!(s.timestamp_ms, ts);
        let got: Vec<(String, String)> =
            s.labels().map(|l| (l.name.to_owned(), l.value.get().into_owned())).collect();
        prop_assert_eq!(&got, &labels);
        for (k, v) in &labels {
            // First occurrence wins for duplicate names.
            let first = labels.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v).unwrap();
            prop_assert!(s.label(k).unwrap().eq_str(first));
            let _ = v;
        }
    }
}

// ---- model ----

#[test]
fn several_engines_sum_counts_and_average_ratios() {
    let text = "\
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 3
vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 4
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 8
vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 6
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.2
vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.6
vllm:cache_config_info{block_size=\"16\",engine=\"0\",num_gpu_blocks=\"100\"} 1
vllm:cache_config_info{block_size=\"16\",engine=\"1\",num_gpu_blocks=\"100\"} 1
";
    let (t, _) = decode(text.as_bytes());
    assert_eq!((t.waiting, t.running), (Some(7.0), Some(14.0)));
    assert!((t.kv_usage.unwrap() - 0.4).abs() < 1e-12);
    assert_eq!(t.engines, 2);
    assert_eq!(t.cache.unwrap().num_blocks, Some(200));
}

#[test]
fn new_kv_name_wins_over_old_and_values_are_sanitised() {
    let text = "\
vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.9
vllm:kv_cache_usage_perc{model_name=\"m\"} 1.7
vllm:num_requests_waiting{model_name=\"m\"} NaN
vllm:num_requests_running{model_name=\"m\"} -3
";
    let (t, stats) = decode(text.as_bytes());
    assert_eq!(t.kv_usage, Some(1.0), "clamped to 0..1");
    assert_eq!(t.waiting, None, "NaN never feeds a signal");
    assert_eq!(t.running, Some(0.0));
    assert_eq!(stats.used, 3);
}

#[test]
fn lora_newest_timestamp_wins_regardless_of_order() {
    let text = "\
vllm:lora_requests_info{max_lora=\"3\",running_lora_adapters=\"a\",waiting_lora_adapters=\"\"} 100
vllm:lora_requests_info{max_lora=\"3\",running_lora_adapters=\"b, c\",waiting_lora_adapters=\"d\"} 300
vllm:lora_requests_info{max_lora=\"3\",running_lora_adapters=\"e\",waiting_lora_adapters=\"\"} 200
";
    let (t, _) = decode(text.as_bytes());
    let l = t.lora.unwrap();
    assert_eq!(l.running, vec!["b", "c"]);
    assert_eq!(l.waiting, vec!["d"]);
    assert_eq!(l.max_lora, 3);
}

#[test]
fn served_model_comes_from_the_model_name_label_and_reaches_the_view() {
    let text = "\
vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"m-lora\",waiting_lora_adapters=\"\"} 100
vllm:num_requests_waiting{engine=\"0\",model_name=\"\"} 1
vllm:num_requests_waiting{engine=\"1\",model_name=\"base-m\"} 1
vllm:num_requests_running{engine=\"0\",model_name=\"other\"} 2
";
    let (t, _) = decode(text.as_bytes());
    assert_eq!(
        t.served_model.as_deref(),
        Some("base-m"),
        "first non-empty label"
    );
    let t0 = Instant::now();
    let mut store = TelemetryStore::new(StoreConfig::default());
    store.apply(0, &t, t0);
    // Identity, not a signal: still known once the signals went stale.
    let view = store.fresh(0, t0 + Duration::from_secs(60));
    assert_eq!(view.served_model.as_deref(), Some("base-m"));
    assert!(view.lora().is_none());
    // TGI exports no model name.
    let (t, _) = decode(b"tgi_queue_size 3\n");
    assert_eq!(t.served_model, None);
    // A real vLLM dump with a LoRA adapter: base "tiny", adapter "tiny-lora".
    let (t, _) = decode(include_bytes!(
        "../../tests/data/vllm-0.32-cpu-under-load-lora.txt"
    ));
    assert_eq!(t.served_model.as_deref(), Some("tiny"));
    assert!(t.lora.unwrap().is_running("tiny-lora"));
}

#[test]
fn lora_slots() {
    let mut l = LoraState {
        max_lora: 2,
        running: vec!["a".into()],
        waiting: vec![],
    };
    assert!(l.has_free_slot());
    l.waiting.push("a".into());
    assert!(
        l.has_free_slot(),
        "a waiting adapter already running takes no slot"
    );
    l.waiting.push("b".into());
    assert!(!l.has_free_slot());
    assert!(l.is_running("a") && l.is_waiting("b") && !l.is_running("b"));
}

#[test]
fn family_detection() {
    assert_eq!(ServerKind::detect("vllm:x"), Some(ServerKind::Vllm));
    assert_eq!(ServerKind::detect("sglang:x"), Some(ServerKind::Sglang));
    assert_eq!(ServerKind::detect("trtllm_x"), Some(ServerKind::TrtLlm));
    assert_eq!(
        ServerKind::detect("nv_gpu_utilization"),
        Some(ServerKind::Triton)
    );
    assert_eq!(ServerKind::detect("tgi_queue_size"), Some(ServerKind::Tgi));
    assert_eq!(
        ServerKind::detect("DCGM_FI_DEV_GPU_UTIL"),
        Some(ServerKind::Dcgm)
    );
    assert_eq!(ServerKind::detect("process_open_fds"), None);
    let (t, _) = decode(b"process_open_fds 3\npython_info{version=\"3\"} 1\n");
    assert_eq!(t.server, ServerKind::Unknown);
    assert_eq!(t, Default::default());
}

#[test]
fn window_means() {
    let mut w = Window::default();
    let t = |sum, count| HistogramTotals { sum, count };
    assert_eq!(w.update(t(0.0, 0.0)), None, "nothing observed yet");
    assert_eq!(w.update(t(10.0, 10.0)), Some(1.0), "first: lifetime mean");
    assert_eq!(w.update(t(13.0, 11.0)), Some(3.0), "Δ3 s / Δ1");
    assert_eq!(
        w.update(t(13.0, 11.0)),
        Some(3.0),
        "no new requests: unchanged"
    );
    assert_eq!(
        w.update(t(1.0, 2.0)),
        Some(0.5),
        "reset: lifetime of the new one"
    );
    assert_eq!(w.update(t(f64::NAN, 3.0)), Some(0.5), "garbage ignored");
    assert_eq!(w.update(t(2.0, 4.0)), Some(0.5));
    assert_eq!(w.mean(), Some(0.5));
}

// ---- store ----

fn vllm(waiting: f64, kv: f64, ttft_sum: f64, ttft_count: f64) -> String {
    format!(
        "vllm:num_requests_waiting{{engine=\"0\"}} {waiting}\n\
         vllm:num_requests_running{{engine=\"0\"}} 2\n\
         vllm:kv_cache_usage_perc{{engine=\"0\"}} {kv}\n\
         vllm:time_to_first_token_seconds_sum{{engine=\"0\"}} {ttft_sum}\n\
         vllm:time_to_first_token_seconds_count{{engine=\"0\"}} {ttft_count}\n"
    )
}

#[test]
fn staleness_on_a_virtual_clock() {
    let cfg = StoreConfig {
        interval: Duration::from_millis(100),
        stale_after_intervals: 3,
    };
    assert_eq!(cfg.max_age(), Duration::from_millis(300));
    let mut store = TelemetryStore::new(cfg);
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    store.ingest(1, vllm(4.0, 0.5, 2.0, 4.0).as_bytes(), t0);

    let v = store.fresh(1, ms(300));
    assert_eq!(v.waiting(), Some(4.0));
    assert_eq!(v.kv_usage(), Some(0.5));
    assert_eq!(v.ttft_mean(), Some(0.5));
    assert!(v.stale.is_empty());
    assert!(v.missing.contains(SignalKind::GpuUtil));
    assert!(v.missing.contains(SignalKind::Lora));
    assert_eq!(v.age(ms(300)), Some(Duration::from_millis(300)));

    let v = store.fresh(1, ms(301));
    assert_eq!(v.waiting(), None, "stale reads as None, never 0");
    assert_eq!(v.kv_usage(), None);
    assert!(v.stale.contains(SignalKind::Waiting));
    assert!(v.stale.contains(SignalKind::KvUsage));
    assert!(v.stale.contains(SignalKind::Ttft));
    assert!(!v.stale.contains(SignalKind::GpuUtil), "missing, not stale");

    // Failed scrapes do not refresh anything.
    store.record_failure(1, ms(400));
    let v = store.fresh(1, ms(400));
    assert_eq!(v.consecutive_failures, 1);
    assert_eq!(v.waiting(), None);

    // A new scrape: fresh again, TTFT now windowed (Δ4 s / Δ2).
    store.ingest(1, vllm(1.0, 0.25, 6.0, 6.0).as_bytes(), ms(500));
    let v = store.fresh(1, ms(500));
    assert_eq!(v.waiting(), Some(1.0));
    assert_eq!(v.ttft_mean(), Some(2.0));
    assert_eq!(v.consecutive_failures, 0);
    // A snapshot's view re-checks ages when read later.
    assert_eq!(v.value_at(SignalKind::Waiting, ms(800)), Some(1.0));
    assert_eq!(v.value_at(SignalKind::Waiting, ms(801)), None);

    // Unknown endpoints: everything missing.
    let u = store.fresh(7, ms(500));
    assert_eq!(u.missing.len(), SignalKind::ALL.len());
    assert_eq!(u.age(ms(500)), None);

    store.remove(1);
    assert_eq!(store.fresh(1, ms(500)).waiting(), None);
}

#[test]
fn a_signal_absent_from_a_scrape_ages_alone() {
    let mut store = TelemetryStore::new(StoreConfig::default());
    let t0 = Instant::now();
    store.ingest(0, vllm(4.0, 0.5, 1.0, 1.0).as_bytes(), t0);
    // Later scrapes lose the KV metric.
    let later = t0 + Duration::from_millis(150);
    store.ingest(0, b"vllm:num_requests_waiting 2\n", later);
    let v = store.fresh(0, t0 + Duration::from_millis(250));
    assert_eq!(v.waiting(), Some(2.0));
    assert_eq!(v.kv_usage(), None);
    assert!(v.stale.contains(SignalKind::KvUsage));
}

#[test]
fn empty_and_garbage_input() {
    let (t, stats) = decode(b"");
    assert_eq!(t, Default::default());
    assert_eq!(stats.parse.samples, 0);
    let (_, stats) = decode(b"\xff\xfe\n{{{\n");
    assert_eq!(stats.parse.errors, 2);
    let _ = prom::parse(b"\n\n\r\n", |_| panic!("no samples"));
}
