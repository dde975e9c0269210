//! End-to-end: precise prefix routing from the servers' KV-cache events (#18).
//!
//! Four simulated vLLM servers publish their prefix cache's `BlockStored` /
//! `BlockRemoved` batches over ZMQ (`--kv-events-port`, with a replay socket);
//! the gateway subscribes (`--kv-events`), tokenizes with the simulator's
//! tokenizer as a `tokenizer.json` (`tests/data/kv/`) and hashes blocks the
//! way the servers do. The checks are ones approximate routing cannot pass:
//!
//! - a prompt cached by traffic that bypassed the gateway (sent to one sim
//!   directly) draws the gateway's requests with that prefix to that sim;
//! - the same for a chat conversation rendered with the chat template, and
//!   for requests over HTTP/2;
//! - two gateway processes: each routes by what the other's traffic cached;
//! - a sim that goes away is shown not live (approximate scoring for it).
//!
//! Deterministic: scrapes are off (`--no-scrape`: the prefix scorer decides),
//! requests are sequential, the tokenize deadline is one no loaded core
//! misses (`--kv-tokenize-timeout 30s`: every request is keyed), and the tests poll `/debug/endpoints` until the
//! events they wait for arrived (a probe request per poll forces a new batch,
//! so a batch sent before the subscription took effect is replayed).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use shardgate_testkit::grpc::GrpcClient;

fn data(name: &str) -> String {
    format!("{}/tests/data/kv/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn kv_sims(n: usize) -> Vec<SimHandle> {
    (0..n)
        .map(|_| {
            sim(&["m"], |c| {
                c.kv_events_port = Some(0);
                c.kv_events_replay_port = Some(0);
            })
        })
        .collect()
}

/// The gateway's flags for `sims`' event streams and the test tokenizer.
fn kv_flags(sims: &[SimHandle]) -> Vec<String> {
    let mut f = Vec::new();
    for s in sims {
        let (publisher, replay) = s.kv_events_addr().unwrap();
        f.push("--kv-events".into());
        f.push(format!(
            "{}={publisher},replay={}",
            s.addr(),
            replay.unwrap()
        ));
    }
    f.push("--kv-tokenizer".into());
    f.push(format!("m={}", data("tokenizer.json")));
    f.push("--kv-chat-template".into());
    f.push(format!("m={}", data("chat_template.jinja")));
    f.push("--no-scrape".into());
    // The checks are of routing, not of the tokenize deadline (unit-tested in
    // `kv_offload`): at the 50 ms default a loaded CI core can miss it, and
    // one request scored approximately warms a second sim, after which ties
    // decide. A deadline no run reaches keeps every request precise.
    f.push("--kv-tokenize-timeout".into());
    f.push("30s".into());
    f
}

fn start(sims: &[SimHandle]) -> Gateway {
    let addrs = sims.iter().map(|s| s.addr()).collect();
    let flags = kv_flags(sims);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Gateway::start(&config(&[("m", vec![(1, addrs)])]), &flags)
}

fn requests(sims: &[SimHandle]) -> Vec<u64> {
    sims.iter()
        .map(|s| sim_stats(s.addr())["requests_total"].as_u64().unwrap())
        .collect()
}

/// `/debug/endpoints`' `kv_events` of endpoint `id`.
fn kv_status(admin: SocketAddr, id: usize) -> serde_json::Value {
    let v = Client::connect(admin).get("/debug/endpoints").json();
    v["endpoints"][id]["kv_events"].clone()
}

/// Words "0".."1999" (the test tokenizer's vocabulary): `n` of them from `seed`.
fn words(seed: usize, n: usize) -> String {
    (0..n)
        .map(|i| ((seed * 7919 + i * 31) % 2000).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn completion(prompt: &str) -> String {
    format!(r#"{{"model":"m","prompt":"{prompt}","max_tokens":1}}"#)
}

fn post_direct(sim: &SimHandle, path: &str, body: &str) {
    let r = Client::connect(sim.addr()).post(path, body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Polls until every gateway in `admins` shows endpoint `id` live with at
/// least `blocks` blocks; each round sends `id`'s sim a small probe (a new
/// batch, so that one lost before the subscription is replayed).
fn wait_blocks(admins: &[SocketAddr], sims: &[SimHandle], id: usize, blocks: u64) {
    let mut probe = 0;
    let got = poll(Duration::from_secs(20), || {
        let ok = admins.iter().all(|a| {
            let s = kv_status(*a, id);
            s["live"] == true && s["blocks"].as_u64().unwrap_or(0) >= blocks
        });
        if !ok {
            probe += 1;
            post_direct(
                &sims[id],
                "/v1/completions",
                &completion(&words(10_000 + probe, 16)),
            );
        }
        ok.then_some(())
    });
    assert!(
        got.is_some(),
        "endpoint {id} never showed {blocks} blocks: {:?}",
        admins.iter().map(|a| kv_status(*a, id)).collect::<Vec<_>>()
    );
}

#[test]
fn a_prefix_cached_by_traffic_that_bypassed_the_gateway_draws_its_requests() {
    let sims = kv_sims(4);
    let gw = start(&sims);
    let admin = gw.admin.unwrap();
    for (i, sim) in sims.iter().enumerate() {
        // The KV-events thread lists its streams within its first scan.
        let s = poll(Duration::from_secs(5), || {
            Some(kv_status(admin, i)).filter(|s| !s.is_null())
        })
        .expect("streams listed");
        assert_eq!(s["publisher"], sim.kv_events_addr().unwrap().0.to_string());
    }
    // 600 tokens (37 whole blocks of 16) to sim 2, directly.
    let system = words(1, 600);
    post_direct(&sims[2], "/v1/completions", &completion(&system));
    wait_blocks(&[admin], &sims, 2, 37);
    let before = requests(&sims);
    for q in 0..6 {
        let body = completion(&format!("{system} {}", words(500 + q, 20)));
        let r = gw.connect().post("/v1/completions", &body, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let after = requests(&sims);
    let routed: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        routed[2], 6,
        "every request went to the warm sim: {routed:?}"
    );

    // The same with a chat conversation (the template renders role then
    // content, as the simulator's chat prompt), warmed on sim 0.
    let msg = |extra: &str| {
        format!(
            r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"system","content":"{}"}},{{"role":"user","content":"{extra}"}}]}}"#,
            words(3, 500)
        )
    };
    post_direct(&sims[0], "/v1/chat/completions", &msg("1 2 3"));
    wait_blocks(&[admin], &sims, 0, 31);
    let before = requests(&sims);
    for q in 0..4 {
        let r = gw
            .connect()
            .post("/v1/chat/completions", &msg(&words(900 + q, 8)), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let after = requests(&sims);
    assert_eq!(after[0] - before[0], 4, "{before:?} -> {after:?}");

    // HTTP/2 requests are keyed the same way (one plan for both protocols).
    let mut h2 = GrpcClient::connect(gw.addr).unwrap();
    let before = requests(&sims);
    for q in 0..4 {
        let body = completion(&format!("{system} {}", words(700 + q, 20)));
        let (status, _, chunks) = h2
            .http(
                "POST",
                "/v1/completions",
                &[("content-type", "application/json")],
                body.as_bytes(),
            )
            .unwrap();
        assert_eq!(status, 200, "{:?}", chunks);
    }
    let after = requests(&sims);
    assert_eq!(after[2] - before[2], 4, "over h2: {before:?} -> {after:?}");
    // These prompts (over 2 KiB) were keyed on the kv-tokenize thread.
    let m = gw.metrics();
    let offloaded = sample(&m, "gateway_kv_tokenize_total{result=\"offloaded\"}").unwrap_or(0.0);
    assert!(offloaded >= 10.0, "{m}");
    assert_eq!(
        sample(&m, "gateway_kv_tokenize_total{result=\"timeout\"}"),
        Some(0.0)
    );

    // A sim that goes away: its stream is lost, shown not live.
    let mut sims = sims;
    let gone = sims.remove(3);
    gone.shutdown();
    let lost = poll(Duration::from_secs(10), || {
        (kv_status(admin, 3)["live"] == false).then_some(())
    });
    assert!(lost.is_some(), "{}", kv_status(admin, 3));
    let s = kv_status(admin, 2);
    assert_eq!(s["malformed"], 0, "{s}");
}

#[test]
fn two_gateways_route_by_what_the_others_traffic_cached() {
    let sims = kv_sims(3);
    let a = start(&sims);
    let b = start(&sims);
    let admins = [a.admin.unwrap(), b.admin.unwrap()];
    // Gateway A routes a long prompt somewhere; gateway B has never seen it.
    let system = words(7, 640);
    let r = a
        .connect()
        .post("/v1/completions", &completion(&system), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let counts = requests(&sims);
    let warm = counts.iter().position(|n| *n == 1).unwrap();
    wait_blocks(&admins, &sims, warm, 40);
    let before = requests(&sims);
    for q in 0..5 {
        let body = completion(&format!("{system} {}", words(700 + q, 20)));
        let r = b.connect().post("/v1/completions", &body, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let after = requests(&sims);
    assert_eq!(
        after[warm] - before[warm],
        5,
        "gateway B followed A's cache: {before:?} -> {after:?}; tokenize timeouts {:?}",
        sample(
            &b.metrics(),
            "gateway_kv_tokenize_total{result=\"timeout\"}"
        )
    );
}

#[test]
fn what_a_sim_cached_before_the_gateway_started_is_replayed() {
    let sims = kv_sims(3);
    // Sim 1 caches a prompt while no gateway listens: its batches are only in
    // the sim's replay buffer.
    let system = words(11, 480);
    post_direct(&sims[1], "/v1/completions", &completion(&system));
    let gw = start(&sims);
    let admin = gw.admin.unwrap();
    // A later batch (a probe per poll) reveals the gap from sequence 0; the
    // replay brings the 30 blocks back.
    wait_blocks(&[admin], &sims, 1, 30);
    let s = kv_status(admin, 1);
    assert!(s["replays"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["resyncs"], 0, "{s}");
    let before = requests(&sims);
    for q in 0..4 {
        let body = completion(&format!("{system} {}", words(300 + q, 20)));
        let r = gw.connect().post("/v1/completions", &body, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let after = requests(&sims);
    assert_eq!(after[1] - before[1], 4, "{before:?} -> {after:?}");
}

#[test]
fn bad_kv_flags_fail_the_start_naming_the_flag_and_the_file() {
    let sims = kv_sims(1);
    let dir = std::env::temp_dir().join(format!("sg-kv-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.yaml");
    std::fs::write(&cfg, config(&[("m", vec![(1, vec![sims[0].addr()])])])).unwrap();
    for (flag, value, want) in [
        (
            "--kv-events",
            "host=:5557",
            "--kv-events \"host=:5557\": endpoint",
        ),
        ("--kv-events", "*=5557", "expected HOST:PORT, :PORT or +N"),
        (
            "--kv-tokenizer",
            "m=/nonexistent/tokenizer.json",
            "--kv-tokenizer m: /nonexistent/tokenizer.json",
        ),
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["serve", "-c", cfg.to_str().unwrap(), "--bind", "127.0.0.1"])
            .args([
                "--listen-port",
                "0",
                "--admin-addr",
                "127.0.0.1:0",
                "--shards",
                "1",
            ])
            .args([flag, value])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = poll(Duration::from_secs(20), || child.try_wait().ok().flatten());
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{flag} {value}: the gateway started");
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{flag} {value}: {err}");
        assert!(err.contains(want), "{flag} {value}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
