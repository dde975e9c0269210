//! End-to-end tests of session affinity (`InferencePolicy`
//! `loadBalancing.sessionAffinity`): consistent hashing with bounded loads
//! over four simulated backends.
//!
//! - Under light load (sequential requests) every request of a session, named
//!   by the `x-session-id` header or by the body's `user` field, lands on the
//!   same sim, and twelve sessions spread over more than one sim.
//! - A burst of one session's requests (all in flight at once: each decodes
//!   for about a second) spills past the session's sim at the load bound
//!   (`ceil(1.25·(L + 1) / 4)`), and once it has drained the session is back
//!   on its own sim.
//!
//! `gateway_pick_decisions_total` and `/debug/endpoints` (`pick_decisions`)
//! count which picks the session's own sim and a spill decided.
//!
//! Deterministic: one shard (its in-flight counts are the whole gateway's),
//! telemetry scrapes off (`--no-scrape`: the load is the gateway's own
//! in-flight count), which sim served a request is read from the sims'
//! counters after each sequential request, counters are polled with deadlines.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// Four sims behind one route whose InferencePolicy turns session affinity on.
fn session_config(addrs: Vec<SocketAddr>) -> String {
    let base = config(&[("m", vec![(1, addrs)])]);
    let base = base.replace(
        "    backendRefs:\n",
        "    filters:\n    - type: ExtensionRef\n      extensionRef:\n        group: ai.gateway.io\n        kind: InferencePolicy\n        name: lb\n    backendRefs:\n",
    );
    format!(
        "{base}---\napiVersion: ai.gateway.io/v1alpha1\nkind: InferencePolicy\nmetadata:\n  name: lb\n  namespace: default\nspec:\n  loadBalancing:\n    algorithm: default\n    sessionAffinity:\n      header: x-session-id\n      useUserField: true\n      loadFactor: 1.25\n"
    )
}

fn served(sims: &[SimHandle]) -> Vec<u64> {
    sims.iter()
        .map(|s| sim_stats(s.addr())["requests_total"].as_u64().unwrap())
        .collect()
}

/// Send one request and return the index of the sim that served it.
fn send_one(gw: &Gateway, sims: &[SimHandle], body: &str, headers: &[(&str, &str)]) -> usize {
    let before = served(sims);
    let r = gw.connect().post("/v1/chat/completions", body, headers);
    assert_eq!(r.status, 200, "{}", r.text());
    let after = served(sims);
    let moved: Vec<usize> = (0..sims.len()).filter(|&i| after[i] != before[i]).collect();
    assert_eq!(moved.len(), 1, "{before:?} → {after:?}");
    moved[0]
}

fn decisions(gw: &Gateway, by: &str) -> f64 {
    let series = format!("gateway_pick_decisions_total{{decided_by=\"{by}\"}}");
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn chat(user: Option<&str>) -> String {
    match user {
        Some(u) => format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"hello, how are you"}}],"max_tokens":2,"user":"{u}"}}"#
        ),
        None => r#"{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":2}"#
            .to_owned(),
    }
}

#[test]
fn a_session_sticks_to_one_sim_and_sessions_spread() {
    let sims: Vec<SimHandle> = (0..4).map(|_| sim(&["m"], |_| {})).collect();
    let gw = Gateway::start(
        &session_config(sims.iter().map(|s| s.addr()).collect()),
        &["--shards", "1", "--no-scrape"],
    );
    let mut homes = Vec::new();
    for s in 0..12 {
        let id = format!("conversation-{s}");
        let mut seen = Vec::new();
        for turn in 0..4 {
            // Even sessions use the header, odd ones the body's `user` field
            // (and one turn of each sends both, the header winning).
            let i = match (s % 2, turn) {
                (0, _) => send_one(&gw, &sims, &chat(None), &[("x-session-id", &id)]),
                (_, 3) => send_one(
                    &gw,
                    &sims,
                    &chat(Some("someone-else")),
                    &[("X-Session-Id", &id)],
                ),
                _ => send_one(&gw, &sims, &chat(Some(&id)), &[]),
            };
            seen.push(i);
        }
        assert!(seen.iter().all(|&i| i == seen[0]), "{id}: {seen:?}");
        homes.push(seen[0]);
    }
    homes.sort_unstable();
    homes.dedup();
    // 12 sessions on one of 4 sims: a 1-in-4-million event.
    assert!(homes.len() >= 2, "sessions spread: {homes:?}");
    // Requests without a session are the profile's to place.
    send_one(&gw, &sims, &chat(None), &[]);
    let got = poll(Duration::from_secs(10), || {
        (decisions(&gw, "session_home") >= 48.0 && decisions(&gw, "profile") >= 1.0).then_some(())
    });
    assert!(got.is_some(), "{}", gw.metrics());
    assert_eq!(decisions(&gw, "session_spilled"), 0.0);
    // `/debug/endpoints` shows the same counts.
    let debug = Client::connect(gw.admin.unwrap())
        .get("/debug/endpoints")
        .json();
    assert!(debug["pick_decisions"]["session_home"].as_u64().unwrap() >= 48);
    assert_eq!(debug["pick_decisions"]["session_spilled"].as_u64(), Some(0));
}

#[test]
fn a_burst_of_one_session_spills_at_the_load_bound_then_returns() {
    // Each request decodes 100 tokens at 10 ms a step: about a second in flight.
    let sims: Vec<SimHandle> = (0..4)
        .map(|_| {
            sim(&["m"], |c| {
                c.decode_step_us = 10_000;
                c.decode_step_us_per_seq = 0;
            })
        })
        .collect();
    let gw = Gateway::start(
        &session_config(sims.iter().map(|s| s.addr()).collect()),
        &["--shards", "1", "--no-scrape"],
    );
    let quick = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1}"#;
    let home = send_one(&gw, &sims, quick, &[("x-session-id", "hot")]);
    let before = served(&sims);
    let slow = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":100}"#;
    let addr = gw.addr;
    let burst: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let r = Client::connect(addr).post(
                    "/v1/chat/completions",
                    slow,
                    &[("x-session-id", "hot")],
                );
                assert_eq!(r.status, 200, "{}", r.text());
            })
        })
        .collect();
    for t in burst {
        t.join().unwrap();
    }
    let after = served(&sims);
    let per_sim: Vec<u64> = (0..4).map(|i| after[i] - before[i]).collect();
    assert_eq!(per_sim.iter().sum::<u64>(), 8);
    // Not all on the session's sim: the bound (1 at first, 3 with 8 in
    // flight) sent the rest clockwise; the session's sim took the most.
    assert!(per_sim[home] < 8, "{per_sim:?}");
    assert!(
        per_sim.iter().filter(|&&n| n > 0).count() >= 2,
        "{per_sim:?}"
    );
    assert_eq!(per_sim.iter().max(), Some(&per_sim[home]), "{per_sim:?}");
    let spilled = poll(Duration::from_secs(10), || {
        let n = decisions(&gw, "session_spilled");
        (n > 0.0).then_some(n)
    });
    assert!(spilled.is_some(), "{}", gw.metrics());
    // Drained: the session is home again.
    assert_eq!(
        send_one(&gw, &sims, quick, &[("x-session-id", "hot")]),
        home
    );
}
