//! End-to-end HTTP tests: each test spawns a simulator on 127.0.0.1:0 with tiny step
//! times (decode 200 µs) and talks raw HTTP/1.1 over `std::net::TcpStream` (the client
//! is the small helper below). Waits poll with a deadline; every read has a 10 s timeout.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use shardgate_sim::{spawn, SimConfig, SimHandle};

fn config() -> SimConfig {
    SimConfig {
        port: 0,
        model: vec!["base".into(), "alias".into()],
        lora: vec!["lora-a".into(), "lora-b".into()],
        max_loras: 1,
        prefill_us_per_token: 10,
        decode_step_us: 200,
        decode_step_us_per_seq: 10,
        max_tokens_default: 4,
        ..SimConfig::default()
    }
}

fn start(c: SimConfig) -> SimHandle {
    spawn(c).unwrap()
}

/// A parsed response; `chunks` holds each chunk of a chunked body with its arrival time.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunks: Vec<(Instant, Vec<u8>)>,
    /// The body ended without its terminating chunk (connection closed).
    truncated: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

/// Minimal keep-alive HTTP/1.1 client.
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Self {
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, method: &str, path: &str, body: Option<&str>) {
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.r.get_mut().write_all(req.as_bytes()).unwrap();
    }

    fn line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(l.trim_end_matches(['\r', '\n']).to_owned()),
        }
    }

    fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let l = self.line().unwrap();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        (status, headers)
    }

    /// Reads one chunk of a chunked body; `None` at the terminating chunk or on EOF.
    fn chunk(&mut self) -> Result<Option<Vec<u8>>, ()> {
        let size_line = self.line().ok_or(())?;
        let size =
            usize::from_str_radix(size_line.split(';').next().unwrap(), 16).map_err(|_| ())?;
        if size == 0 {
            self.line();
            return Ok(None);
        }
        let mut data = vec![0; size + 2];
        self.r.read_exact(&mut data).map_err(|_| ())?;
        data.truncate(size);
        Ok(Some(data))
    }

    fn response(&mut self) -> Resp {
        let (status, headers) = self.head();
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
            chunks: Vec::new(),
            truncated: false,
        };
        if let Some(n) = resp.header("content-length") {
            let mut body = vec![0; n.parse().unwrap()];
            self.r.read_exact(&mut body).unwrap();
            resp.body = body;
        } else if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                match self.chunk() {
                    Ok(Some(c)) => {
                        resp.body.extend_from_slice(&c);
                        resp.chunks.push((Instant::now(), c));
                    }
                    Ok(None) => break,
                    Err(()) => {
                        resp.truncated = true;
                        break;
                    }
                }
            }
        }
        resp
    }

    fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.send(method, path, body);
        self.response()
    }
}

fn get(h: &SimHandle, path: &str) -> Resp {
    Client::connect(h.addr()).call("GET", path, None)
}

fn post(h: &SimHandle, path: &str, body: &str) -> Resp {
    Client::connect(h.addr()).call("POST", path, Some(body))
}

fn stats(h: &SimHandle) -> Value {
    get(h, "/sim/stats").json()
}

/// Polls `f` until it holds or 5 s pass.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::park_timeout(Duration::from_millis(2));
    }
}

/// The JSON payloads of an SSE body, plus whether it ended with `[DONE]`.
fn sse_events(body: &[u8]) -> (Vec<Value>, bool) {
    let text = std::str::from_utf8(body).unwrap();
    let mut events = Vec::new();
    let mut done = false;
    for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = ev.strip_prefix("data: ").unwrap();
        if data == "[DONE]" {
            done = true;
        } else {
            assert!(!done, "event after [DONE]");
            events.push(serde_json::from_str(data).unwrap());
        }
    }
    (events, done)
}

#[test]
fn models_lists_base_aliases_and_loras() {
    let h = start(config());
    let r = get(&h, "/v1/models");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["base", "alias", "lora-a", "lora-b"]);
    let lora = &v["data"][2];
    assert_eq!(lora["object"], "model");
    assert_eq!(lora["owned_by"], "vllm");
    assert_eq!(lora["parent"], "base");
    assert!(v["data"][0]["parent"].is_null());
    assert_eq!(v["data"][0]["root"], "base");
    assert_eq!(get(&h, "/health").status, 200);
    assert_eq!(get(&h, "/version").json()["version"], "0.32.0");
    assert_eq!(get(&h, "/nope").status, 404);
    h.shutdown();
}

#[test]
fn completion_json_shape_and_usage() {
    let h = start(config());
    let r = post(
        &h,
        "/v1/completions",
        r#"{"model":"alias","prompt":"one two  three four","max_tokens":5}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "alias");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(
        choice["text"].as_str().unwrap().split_whitespace().count(),
        5
    );
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 9);

    // Same prompt, same output (deterministic words); default max_tokens applies.
    let again = post(
        &h,
        "/v1/completions",
        r#"{"model":"base","prompt":"one two three four","max_tokens":5}"#,
    );
    assert_eq!(again.json()["choices"][0]["text"], choice["text"]);
    let dflt = post(&h, "/v1/completions", r#"{"prompt":["a","b c"]}"#).json();
    assert_eq!(dflt["model"], "base");
    assert_eq!(dflt["choices"].as_array().unwrap().len(), 2);
    assert_eq!(dflt["choices"][1]["index"], 1);
    assert_eq!(dflt["usage"]["prompt_tokens"], 3);
    assert_eq!(dflt["usage"]["completion_tokens"], 8);

    let chat = post(
        &h,
        "/v1/chat/completions",
        r#"{"model":"base","messages":[{"role":"user","content":"hi there"}],"max_tokens":3}"#,
    )
    .json();
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        chat["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        3
    );
    assert_eq!(chat["usage"]["prompt_tokens"], 3);
    h.shutdown();
}

#[test]
fn streaming_chat_arrives_event_by_event() {
    let mut c = config();
    c.decode_step_us = 2_000;
    let h = start(c);
    let mut client = Client::connect(h.addr());
    let r = client.call(
        "POST",
        "/v1/chat/completions",
        Some(r#"{"model":"base","messages":[{"role":"user","content":"tell me"}],"max_tokens":6,"stream":true,"stream_options":{"include_usage":true}}"#),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert!(!r.truncated);
    // One SSE event per chunk.
    for (_, chunk) in &r.chunks {
        let s = std::str::from_utf8(chunk).unwrap();
        assert!(s.starts_with("data: ") && s.ends_with("\n\n"), "{s:?}");
        assert_eq!(s.matches("data: ").count(), 1, "{s:?}");
    }
    let (events, done) = sse_events(&r.body);
    assert!(done);
    // role chunk + 6 tokens + usage.
    assert_eq!(events.len(), 8);
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = events[1..7]
        .iter()
        .map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(content.split_whitespace().count(), 6);
    assert!(events[1..6]
        .iter()
        .all(|e| e["choices"][0]["finish_reason"].is_null()));
    assert_eq!(events[6]["choices"][0]["finish_reason"], "length");
    assert_eq!(events[7]["choices"].as_array().unwrap().len(), 0);
    assert_eq!(events[7]["usage"]["completion_tokens"], 6);
    assert_eq!(events[7]["usage"]["prompt_tokens"], 3);
    // Tokens came over time (≥ 5 decode steps of ≥ 2 ms between first and last token).
    let first = r.chunks[1].0;
    let last = r.chunks[6].0;
    assert!(
        last - first >= Duration::from_millis(8),
        "{:?}",
        last - first
    );

    // The connection is reused for a streaming completion without usage.
    let r = client.call(
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"x y","max_tokens":3,"stream":true}"#),
    );
    let (events, done) = sse_events(&r.body);
    assert!(done);
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["object"], "text_completion");
    assert!(events[0]["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with(' '));
    assert_eq!(events[2]["choices"][0]["finish_reason"], "length");
    assert_eq!(stats(&h)["connections_total"], 2);
    h.shutdown();
}

#[test]
fn embeddings_shape() {
    let mut c = config();
    c.embedding_dim = 8;
    let h = start(c);
    let r = post(
        &h,
        "/v1/embeddings",
        r#"{"model":"base","input":["a b","c"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "base");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_eq!(d["embedding"].as_array().unwrap().len(), 8);
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], 3);
    let again = post(&h, "/v1/embeddings", r#"{"input":"a b"}"#).json();
    assert_eq!(again["data"][0]["embedding"], data[0]["embedding"]);
    let ids = post(&h, "/v1/embeddings", r#"{"input":[[1,2,3],[4]]}"#).json();
    assert_eq!(ids["usage"]["prompt_tokens"], 4);
    h.shutdown();
}

#[test]
fn errors_unknown_model_malformed_json_and_limits() {
    let h = start(config());
    let r = post(&h, "/v1/completions", r#"{"model":"x","prompt":"hi"}"#);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":"model","code":404}}"#
    );
    let r = post(
        &h,
        "/v1/chat/completions",
        r#"{"model":"base","messages":[{"role""#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "BadRequestError");
    assert_eq!(r.json()["error"]["code"], 400);
    let r = post(&h, "/v1/completions", r#"{"prompt":"hi","max_tokens":0}"#);
    assert_eq!(r.status, 400);
    // 2048 blocks × 16 tokens is the longest context.
    let r = post(
        &h,
        "/v1/completions",
        r#"{"prompt":"hi","max_tokens":40000}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length is 32768"));
    assert_eq!(get(&h, "/v1/completions").status, 405);
    h.shutdown();
}

/// The `token_ids` of a render answer, as numbers.
fn token_ids(v: &Value) -> Vec<u64> {
    v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn render_and_tokenize_give_the_engines_tokens() {
    let h = start(config());
    let other = start(SimConfig {
        seed: 99,
        model: vec!["other".into()],
        ..config()
    });
    let chat = r#"{"model":"base","messages":[{"role":"system","content":"you are a terse assistant"},{"role":"user","content":"what is  a prefix cache"}],"max_tokens":2,"stream":true}"#;

    // Chat: one GenerateRequest, as many ids as the call's prompt tokens, stable across
    // calls and simulators.
    let r = post(&h, "/v1/chat/completions/render", chat);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert!(v["request_id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "base");
    assert_eq!(v["stream"], true);
    assert_eq!(v["sampling_params"]["max_tokens"], 2);
    let ids = token_ids(&v);
    assert_eq!(ids.len(), 12);
    assert!(ids.iter().all(|&id| id < 1 << 31));
    assert_eq!(
        token_ids(&post(&h, "/v1/chat/completions/render", chat).json()),
        ids
    );
    let elsewhere = chat.replace(r#""model":"base""#, r#""model":"other""#);
    assert_eq!(
        token_ids(&post(&other, "/v1/chat/completions/render", &elsewhere).json()),
        ids
    );
    let done = post(&h, "/v1/chat/completions", &chat.replace("true", "false")).json();
    assert_eq!(done["usage"]["prompt_tokens"], ids.len());
    // A shared prefix renders to a shared id prefix.
    let longer = chat.replace("prefix cache", "prefix cache and why");
    let ids2 = token_ids(&post(&h, "/v1/chat/completions/render", &longer).json());
    assert_eq!(ids2[..ids.len()], ids[..]);
    assert_eq!(ids2.len(), ids.len() + 2);

    // Completions: a list, one item per prompt; token-id prompts come back as given.
    let r = post(
        &h,
        "/v1/completions/render",
        r#"{"prompt":["one two three","four"],"max_tokens":3}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let items = r.json();
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items[0]["request_id"]
        .as_str()
        .unwrap()
        .starts_with("cmpl-"));
    assert!(items[0]["model"].is_null());
    assert_eq!(token_ids(&items[0]).len(), 3);
    assert_eq!(token_ids(&items[1]).len(), 1);
    let r = post(&h, "/v1/completions/render", r#"{"prompt":[11,12,13]}"#).json();
    assert_eq!(token_ids(&r[0]), [11, 12, 13]);

    // /tokenize: the same ids, both forms.
    let t = post(
        &h,
        "/tokenize",
        r#"{"model":"base","prompt":"one two three","return_token_strs":true}"#,
    )
    .json();
    assert_eq!(t["count"], 3);
    assert_eq!(t["max_model_len"], 32768);
    assert_eq!(t["tokens"], items[0]["token_ids"]);
    assert_eq!(t["token_strs"][1], "two");
    let t = post(
        &h,
        "/tokenize",
        r#"{"messages":[{"role":"system","content":"you are a terse assistant"},{"role":"user","content":"what is  a prefix cache"}]}"#,
    )
    .json();
    assert_eq!(t["tokens"], v["token_ids"]);

    // Errors are the inference call's, in OpenAI format.
    let r = post(&h, "/v1/chat/completions/render", r#"{"messages":[{"role""#);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "BadRequestError");
    assert_eq!(r.json()["error"]["code"], 400);
    let r = post(
        &h,
        "/v1/completions/render",
        r#"{"model":"x","prompt":"a"}"#,
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["param"], "model");
    assert_eq!(post(&h, "/tokenize", r#"{"model":"base"}"#).status, 400);
    assert_eq!(get(&h, "/v1/completions/render").status, 405);
    assert_eq!(get(&h, "/tokenize").status, 405);

    // Renders are counted apart and never reach the engine.
    let s = stats(&h);
    assert_eq!(s["render_requests_total"], 10);
    assert_eq!(s["requests_total"], 1);
    assert_eq!(s["prompt_tokens"], 12);
    other.shutdown();
    h.shutdown();
}

#[test]
fn metrics_have_vllm_families_and_labels() {
    let h = start(config());
    let long = (0..64)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    for q in ["first", "second"] {
        let body = format!(r#"{{"model":"lora-a","prompt":"{long} {q}","max_tokens":2}}"#);
        let r = post(&h, "/v1/completions", &body);
        assert_eq!(r.json()["model"], "lora-a");
    }
    let r = get(&h, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    let labels = r#"{engine="0",model_name="base"}"#;
    for family in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_sum",
    ] {
        assert!(
            text.contains(&format!("{family}{labels} ")),
            "{family} missing"
        );
    }
    for needle in [
        "# TYPE vllm:num_requests_running gauge\n",
        "# TYPE vllm:prompt_tokens_total counter\n",
        "# TYPE vllm:time_to_first_token_seconds histogram\n",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n",
        "vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"base\"} 2.0\n",
        "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"base\"} 2.0\n",
        "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"2560.0\",model_name=\"base\"} 2.0\n",
        "vllm:generation_tokens_total{engine=\"0\",model_name=\"base\"} 4.0\n",
        // 64 shared words = 4 blocks of 16 hit by the second request.
        "vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"base\"} 64.0\n",
        "vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"base\"} 130.0\n",
        "vllm:cache_config_info{block_size=\"16\",",
        "num_gpu_blocks=\"2048\"",
        "vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} ",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    assert!(!text.contains("gpu_cache_usage_perc"));
    let s = stats(&h);
    assert_eq!(s["prefix_cache_hits"], 64);
    assert_eq!(s["requests_total"], 2);

    let legacy = start(SimConfig {
        legacy_metrics: true,
        lora: Vec::new(),
        ..config()
    });
    let text = get(&legacy, "/metrics").text();
    assert!(text.contains(r#"vllm:gpu_cache_usage_perc{engine="0",model_name="base"} 0.0"#));
    assert!(!text.contains("vllm:kv_cache_usage_perc"));
    assert!(!text.contains("vllm:lora_requests_info"));
    legacy.shutdown();

    // --no-metrics: a server without telemetry; everything else still answers.
    let silent = start(SimConfig {
        no_metrics: true,
        lora: Vec::new(),
        ..config()
    });
    let r = get(&silent, "/metrics");
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), r#"{"detail":"Not Found"}"#);
    assert_eq!(get(&silent, "/health").status, 200);
    assert_eq!(stats(&silent)["requests_total"], 0);
    silent.shutdown();
    h.shutdown();
}

#[test]
fn faults_endpoint_switches_error_rate_and_speed() {
    let h = start(config());
    let body = r#"{"prompt":"hi","max_tokens":1}"#;
    assert_eq!(post(&h, "/v1/completions", body).status, 200);
    let r = post(
        &h,
        "/sim/faults",
        r#"{"error_rate":1.0,"decode_step_us":300}"#,
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["error_rate"], 1.0);
    assert_eq!(v["decode_step_us"], 300);
    assert_eq!(v["prefill_us_per_token"], 10);
    let r = post(&h, "/v1/completions", body);
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["code"], 500);
    assert_eq!(post(&h, "/sim/faults", r#"{"error_rate":2}"#).status, 400);
    assert_eq!(post(&h, "/sim/faults", r#"{"typo":1}"#).status, 400);
    post(&h, "/sim/faults", r#"{"error_rate":0}"#);
    assert_eq!(post(&h, "/v1/completions", body).status, 200);
    h.shutdown();
}

#[test]
fn call_overhead_and_per_input_cost_slow_embeddings_calls() {
    let h = start(SimConfig {
        call_overhead_us: 40_000,
        embedding_us_per_input: 5_000,
        ..config()
    });
    let v = get(&h, "/sim/faults").json();
    assert_eq!(v["call_overhead_us"], 40_000);
    assert_eq!(v["embedding_us_per_input"], 5_000);
    // One call of 4 inputs: 40 ms once + 4 × 5 ms (+ 8 tokens of prefill).
    let t = Instant::now();
    let r = post(
        &h,
        "/v1/embeddings",
        r#"{"input":["a b","c d","e f","g h"]}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 4);
    assert!(
        t.elapsed() >= Duration::from_millis(60),
        "{:?}",
        t.elapsed()
    );
    // Changeable at run time: back to no overhead.
    let v = post(
        &h,
        "/sim/faults",
        r#"{"call_overhead_us":0,"embedding_us_per_input":0}"#,
    )
    .json();
    assert_eq!(v["call_overhead_us"], 0);
    let t = Instant::now();
    assert_eq!(post(&h, "/v1/embeddings", r#"{"input":"a b"}"#).status, 200);
    assert!(t.elapsed() < Duration::from_secs(5));
    h.shutdown();
}

#[test]
fn keep_alive_connections_are_counted_once() {
    let h = start(config());
    let mut c = Client::connect(h.addr());
    for _ in 0..5 {
        assert_eq!(
            c.call(
                "POST",
                "/v1/completions",
                Some(r#"{"prompt":"a","max_tokens":1}"#)
            )
            .status,
            200
        );
    }
    assert_eq!(
        c.call("GET", "/sim/stats", None).json()["connections_total"],
        1
    );
    h.shutdown();
}

#[test]
fn client_disconnect_cancels_the_request() {
    let h = start(config());
    let mut c = Client::connect(h.addr());
    c.send(
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"a b c","max_tokens":30000,"stream":true}"#),
    );
    let (status, _) = c.head();
    assert_eq!(status, 200);
    assert!(c.chunk().unwrap().is_some());
    assert_eq!(stats(&h)["running"], 1);
    drop(c);
    eventually("the cancellation", || {
        let s = stats(&h);
        s["requests_cancelled_total"] == 1 && s["running"] == 0 && s["kv_cache_usage"] == 0.0
    });
    h.shutdown();
}

#[test]
fn close_mid_stream_truncates_the_response() {
    let h = start(SimConfig {
        close_mid_stream_rate: 1.0,
        ..config()
    });
    let mut c = Client::connect(h.addr());
    let r = c.call(
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"a b","max_tokens":20,"stream":true}"#),
    );
    assert_eq!(r.status, 200);
    assert!(r.truncated);
    assert!(!r.text().contains("[DONE]"));
    // The server closed the connection.
    let mut rest = Vec::new();
    assert_eq!(c.r.read_to_end(&mut rest).unwrap_or(0), 0);
    h.shutdown();
}

#[test]
fn slow_start_answers_503_then_serves() {
    let h = start(SimConfig {
        slow_start_ms: 300,
        ..config()
    });
    assert_eq!(get(&h, "/health").status, 503);
    let r = post(&h, "/v1/completions", r#"{"prompt":"a"}"#);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], 503);
    let r = post(&h, "/v1/chat/completions/render", r#"{"messages":[]}"#);
    assert_eq!(r.status, 503);
    assert_eq!(get(&h, "/metrics").status, 200);
    eventually("the end of slow start", || get(&h, "/health").status == 200);
    assert_eq!(post(&h, "/v1/completions", r#"{"prompt":"a"}"#).status, 200);
    h.shutdown();
}

#[test]
fn stall_delays_the_headers() {
    let h = start(SimConfig {
        stall_ms: 50,
        ..config()
    });
    let t = Instant::now();
    assert_eq!(
        post(&h, "/v1/completions", r#"{"prompt":"a","max_tokens":1}"#).status,
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(50));
    h.shutdown();
}

#[test]
fn fast_mode_answers_without_the_engine() {
    let h = start(SimConfig {
        fast: true,
        ..config()
    });
    let v = post(
        &h,
        "/v1/completions",
        r#"{"prompt":"a b","max_tokens":100}"#,
    )
    .json();
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let r = post(
        &h,
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"stream":true}"#,
    );
    let (events, done) = sse_events(&r.body);
    assert!(done);
    assert_eq!(events.len(), 3);
    let e = post(&h, "/v1/embeddings", r#"{"input":"a b c"}"#).json();
    assert_eq!(e["usage"]["prompt_tokens"], 3);
    let s = stats(&h);
    assert_eq!(s["steps"], 0);
    assert_eq!(s["requests_total"], 3);
    h.shutdown();
}

#[test]
fn lora_requests_wait_for_a_slot() {
    // max_loras = 1: a lora-b request waits while lora-a runs.
    let h = start(config());
    let mut a = Client::connect(h.addr());
    a.send(
        "POST",
        "/v1/completions",
        Some(r#"{"model":"lora-a","prompt":"x","max_tokens":30000,"stream":true}"#),
    );
    assert_eq!(a.head().0, 200);
    assert!(a.chunk().unwrap().is_some());
    let mut b = Client::connect(h.addr());
    b.send(
        "POST",
        "/v1/completions",
        Some(r#"{"model":"lora-b","prompt":"y","max_tokens":2}"#),
    );
    eventually("lora-b waiting", || {
        let s = stats(&h);
        s["waiting"] == 1 && s["running_lora_adapters"][0] == "lora-a"
    });
    let text = get(&h, "/metrics").text();
    assert!(text.contains(
        r#"vllm:lora_requests_info{max_lora="1",running_lora_adapters="lora-a",waiting_lora_adapters="lora-b"} "#
    ));
    drop(a);
    let r = b.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "lora-b");
    h.shutdown();
}

#[test]
fn shutdown_frees_the_port() {
    let h = start(config());
    let addr = h.addr();
    // An idle keep-alive connection must not keep the server alive.
    let mut c = Client::connect(addr);
    assert_eq!(c.call("GET", "/health", None).status, 200);
    h.shutdown();
    let mut rest = Vec::new();
    assert_eq!(c.r.read_to_end(&mut rest).unwrap_or(0), 0);
    let again = spawn(SimConfig {
        port: addr.port(),
        ..config()
    })
    .unwrap();
    assert_eq!(again.addr(), addr);
    again.shutdown();
    // A port in use is a bind error, returned synchronously.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = spawn(SimConfig {
        port: blocker.local_addr().unwrap().port(),
        ..config()
    });
    assert!(busy.is_err());
}
