//! Telemetry decoding against metric dumps of every supported server family:
//! the real vLLM 0.32 dump from `../shared/examples/metrics/` (copied into
//! `tests/data/`) and hand-written fixtures in the documented formats of
//! SGLang, trtllm-serve, Triton (TRT-LLM backend), TGI, DCGM exporter and a
//! legacy vLLM.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use shardgate_routing::telemetry::{
    decode, decode_filtered, prom, ServerKind, SignalKind, StoreConfig, TelemetryStore,
};

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

/// Sample lines = non-blank lines not starting with `#`.
fn sample_lines(text: &[u8]) -> usize {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b'#')
        .count()
}

#[test]
fn real_vllm_dump_parses_cleanly() {
    let text = data("vllm-0.32-cpu-under-load-lora.txt");
    let mut names = std::collections::HashSet::new();
    let mut engine_labelled = 0;
    let stats = prom::parse(&text, |s| {
        names.insert(s.name.to_owned());
        if s.label("engine").is_some_and(|e| e == "0") {
            engine_labelled += 1;
        }
    });
    assert_eq!(stats.errors, 0, "{:?}", stats.first_error);
    assert_eq!(stats.samples, sample_lines(&text));
    assert!(stats.samples > 400, "{}", stats.samples);
    assert!(names.contains("vllm:kv_cache_usage_perc"));
    assert!(names.contains("vllm:time_to_first_token_seconds_bucket"));
    assert!(names.contains("python_gc_objects_collected_total"));
    assert!(engine_labelled > 100);
}

#[test]
fn real_vllm_dump_types_come_from_type_lines() {
    let text = data("vllm-0.32-cpu-under-load-lora.txt");
    let mut kinds = Vec::new();
    prom::parse(&text, |s| {
        if s.name.starts_with("vllm:time_to_first_token_seconds_")
            || s.name == "vllm:num_requests_waiting"
            || s.name == "vllm:prefix_cache_hits_total"
        {
            kinds.push((s.name.to_owned(), s.kind));
        }
    });
    for (name, kind) in kinds {
        let want = if name.starts_with("vllm:time_to_first_token_seconds_") {
            if name.ends_with("_created") {
                prom::MetricType::Gauge // its own `# TYPE … gauge` family
            } else {
                prom::MetricType::Histogram
            }
        } else if name.ends_with("_total") {
            prom::MetricType::Counter
        } else {
            prom::MetricType::Gauge
        };
        assert_eq!(kind, want, "{name}");
    }
}

#[test]
fn real_vllm_dump_decodes() {
    let text = data("vllm-0.32-cpu-under-load-lora.txt");
    let (t, stats) = decode(&text);
    assert_eq!(stats.parse.errors, 0);
    assert_eq!(t.server, ServerKind::Vllm);
    assert_eq!(t.waiting, Some(12.0));
    assert_eq!(t.running, Some(8.0));
    assert!(close(t.kv_usage, 0.258_064_516_129_032_25));
    assert_eq!(t.engines, 1);
    let lora = t.lora.as_ref().unwrap();
    assert_eq!(lora.max_lora, 2);
    // The newest of the two label sets (larger timestamp value).
    assert_eq!(lora.running, vec!["tiny-lora".to_owned()]);
    assert_eq!(lora.waiting, vec!["tiny-lora".to_owned()]);
    let cache = t.cache.unwrap();
    assert_eq!(cache.block_size, Some(128));
    assert_eq!(cache.num_blocks, Some(32));
    let ttft = t.ttft.unwrap();
    assert_eq!(ttft.count, 10.0);
    assert!((ttft.sum - 1.008_146_047_592_163).abs() < 1e-12);
    let e2e = t.e2e.unwrap();
    assert_eq!(e2e.count, 2.0);
    let p = t.prefix_cache.unwrap();
    assert_eq!((p.hits, p.queries), (0.0, 71.0));
    // No GPU metrics in a CPU build.
    assert_eq!(t.gpu_util, None);
    assert_eq!(t.gpu_mem_used_ratio, None);
}

#[test]
fn real_vllm_dump_through_the_store() {
    let text = data("vllm-0.32-cpu-under-load-lora.txt");
    let mut store = TelemetryStore::new(StoreConfig::default());
    let t0 = Instant::now();
    store.ingest(3, &text, t0);
    let v = store.fresh(3, t0 + Duration::from_millis(50));
    assert_eq!(v.waiting(), Some(12.0));
    // First scrape: the lifetime mean.
    assert!(close(v.ttft_mean(), 1.008_146_047_592_163 / 10.0));
    assert!(v.missing.contains(SignalKind::GpuUtil));
    assert!(v.stale.is_empty());
    assert_eq!(v.lora().unwrap().max_lora, 2);
}

#[test]
fn legacy_vllm_names() {
    let (t, stats) = decode(&data("vllm-0.6-legacy.txt"));
    assert_eq!(stats.parse.errors, 0);
    assert_eq!(t.server, ServerKind::Vllm);
    assert_eq!(t.kv_usage, Some(0.4375)); // vllm:gpu_cache_usage_perc
    assert_eq!((t.waiting, t.running), (Some(2.0), Some(31.0)));
    let lora = t.lora.unwrap();
    assert_eq!(lora.max_lora, 4);
    assert_eq!(lora.running, vec!["sql-lora", "chat-lora"]);
    assert!(lora.waiting.is_empty());
    assert_eq!(t.cache.unwrap().block_size, Some(16));
    assert_eq!(t.cache.unwrap().num_blocks, Some(27541));
    assert_eq!(t.prefix_cache_hit_rate, Some(0.62));
}

#[test]
fn sglang() {
    let (t, stats) = decode(&data("sglang-0.5-llama8b.txt"));
    assert_eq!(stats.parse.errors, 0);
    assert_eq!(t.server, ServerKind::Sglang);
    // tp_rank="1" repeats rank 0 and is skipped.
    assert_eq!((t.waiting, t.running), (Some(7.0), Some(41.0)));
    assert_eq!(t.kv_usage, Some(0.28));
    assert_eq!(t.cache.unwrap().block_size, Some(1));
    assert_eq!(t.cache.unwrap().num_blocks, Some(442_367));
    assert_eq!(t.prefix_cache_hit_rate, Some(0.25));
    let p = t.prefix_cache.unwrap();
    assert_eq!((p.hits, p.queries), (2.0321e6, 8.128902e6));
    assert_eq!(t.ttft.unwrap().count, 7000.0);
    assert_eq!(t.e2e.unwrap().count, 7000.0);
}

#[test]
fn trtllm_serve() {
    let (t, stats) = decode(&data("trtllm-serve-1.1.txt"));
    assert_eq!(stats.parse.errors, 0);
    assert_eq!(t.server, ServerKind::TrtLlm);
    assert_eq!((t.waiting, t.running), (Some(3.0), Some(64.0)));
    assert_eq!(t.kv_usage, Some(0.6125));
    assert_eq!(t.cache.unwrap().block_size, Some(32));
    assert_eq!(t.cache.unwrap().num_blocks, Some(18_432));
    assert_eq!(t.prefix_cache_hit_rate, Some(0.4375));
    assert_eq!(t.ttft.unwrap().sum, 47.25);
    assert_eq!(t.e2e.unwrap().sum, 905.5);
}

#[test]
fn triton_trtllm_backend() {
    let (t, stats) = decode(&data("triton-25.01-trtllm.txt"));
    assert_eq!(stats.parse.errors, 0);
    assert_eq!(t.server, ServerKind::Triton);
    assert_eq!((t.waiting, t.running), (Some(6.0), Some(24.0)));
    assert_eq!(t.kv_usage, Some(0.75));
    assert_eq!(t.cache.unwrap().block_size, Some(64));
    assert_eq!(t.cache.unwrap().num_blocks, Some(6240));
    assert!(close(t.gpu_util, 0.90));
    assert!(close(
        t.gpu_mem_used_ratio,
        76_968_728_985.0 / 85_520_809_984.0
    ));
    let e2e = t.e2e.unwrap();
    assert_eq!((e2e.sum, e2e.count), (2408.0, 1204.0));
}

#[test]
fn triton_without_fraction_uses_used_over_max() {
    let text = data("triton-25.01-trtllm.txt");
    let (t, _) = decode_filtered(&text, |s| {
        !(s.name == "nv_trt_llm_kv_cache_block_metrics"
            && s.label("kv_cache_block_type")
                .is_some_and(|v| v == "fraction"))
    });
    assert!(close(t.kv_usage, 4680.0 / 6240.0));
}

#[test]
fn tgi() {
    let (t, stats) = decode(&data("tgi-3.0.txt"));
    assert_eq!(stats.parse.errors, 0);
    assert_eq!(t.server, ServerKind::Tgi);
    assert_eq!((t.waiting, t.running), (Some(4.0), Some(18.0)));
    assert_eq!(t.kv_usage, None);
    let e2e = t.e2e.unwrap();
    assert_eq!((e2e.sum, e2e.count), (5522.0, 5020.0));
}

#[test]
fn dcgm_whole_node_and_per_pod() {
    let text = data("dcgm-exporter-3.3.txt");
    let (t, stats) = decode(&text);
    assert_eq!(stats.parse.errors, 0);
    assert_eq!(t.server, ServerKind::Dcgm);
    assert!(close(t.gpu_util, 0.69)); // mean of 97 % and 41 %
    assert!(close(t.gpu_mem_used_ratio, 133_500.0 / 160_000.0));
    assert_eq!(t.waiting, None);

    let (pod0, _) = decode_filtered(&text, |s| s.label("pod").is_some_and(|p| p == "vllm-0"));
    assert!(close(pod0.gpu_util, 0.97));
    assert!(close(pod0.gpu_mem_used_ratio, 73_500.0 / 80_000.0));
}

#[test]
fn vllm_and_dcgm_merge_in_the_store() {
    let mut store = TelemetryStore::new(StoreConfig::default());
    let t0 = Instant::now();
    store.ingest(0, &data("vllm-0.32-cpu-under-load-lora.txt"), t0);
    let dcgm = data("dcgm-exporter-3.3.txt");
    store.ingest_filtered(0, &dcgm, t0 + Duration::from_millis(30), |s| {
        s.label("pod").is_some_and(|p| p == "vllm-1")
    });
    let v = store.fresh(0, t0 + Duration::from_millis(100));
    assert_eq!(v.server, ServerKind::Vllm, "DCGM does not hide the server");
    assert_eq!(v.waiting(), Some(12.0));
    assert!(close(v.gpu_util(), 0.41));
    // 200 ms after the vLLM scrape it is stale; the DCGM signal is not yet.
    let v = store.fresh(0, t0 + Duration::from_millis(215));
    assert_eq!(v.waiting(), None);
    assert!(v.stale.contains(SignalKind::Waiting));
    assert!(v.stale.contains(SignalKind::Lora));
    assert!(close(v.gpu_util(), 0.41));
}

#[test]
fn every_fixture_parses_without_errors() {
    for name in [
        "vllm-0.32-cpu-under-load-lora.txt",
        "vllm-0.6-legacy.txt",
        "sglang-0.5-llama8b.txt",
        "trtllm-serve-1.1.txt",
        "triton-25.01-trtllm.txt",
        "tgi-3.0.txt",
        "dcgm-exporter-3.3.txt",
    ] {
        let text = data(name);
        let stats = prom::parse(&text, |_| {});
        assert_eq!(stats.errors, 0, "{name}: {:?}", stats.first_error);
        assert_eq!(stats.samples, sample_lines(&text), "{name}");
        // CRLF line ends change nothing.
        let crlf: Vec<u8> = String::from_utf8(text.clone())
            .unwrap()
            .replace('\n', "\r\n")
            .into_bytes();
        let (a, _) = decode(&text);
        let (b, sb) = decode(&crlf);
        assert_eq!(sb.parse.errors, 0, "{name}");
        assert_eq!(a, b, "{name}");
    }
}
