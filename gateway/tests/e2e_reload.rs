//! Live endpoint changes (issue #14): a configuration file whose only changes
//! are EndpointSlices is applied without a restart. New endpoints get traffic,
//! removed ones get none after the reload, a returning one serves again, and
//! the client's keep-alive connection stays open throughout. Anything else that
//! changes still waits for a restart (`e2e_tls`).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

fn replace_config(gw: &Gateway, yaml: &str) {
    let dir = gw.process.dir().unwrap();
    let tmp = dir.join("config.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join("config.yaml")).unwrap();
}

fn served(a: SocketAddr) -> u64 {
    sim_stats(a)["requests_total"].as_u64().unwrap()
}

fn ask(c: &mut Client) {
    let status = try_ask(c);
    assert_eq!(status, 200);
}

fn try_ask(c: &mut Client) -> u16 {
    // A different prompt each time, so prefix affinity does not pin them all
    // to the endpoint that saw the first.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body =
        format!(r#"{{"model":"m","max_tokens":1,"prompt":"{n:08} is this request's number"}}"#);
    let r = c.post(
        "/v1/completions",
        &body,
        &[("content-type", "application/json")],
    );
    r.status
}

fn slices(addrs: &[SocketAddr]) -> String {
    config(&[("m", vec![(1, addrs.to_vec())])])
}

/// Sends requests on `c` until `ep` has served one (polling, with a deadline);
/// returns how long that took.
fn until_served(gw: &Gateway, c: &mut Client, ep: SocketAddr) -> Duration {
    let t = Instant::now();
    let before = served(ep);
    let got = poll(Duration::from_secs(10), || {
        let st = try_ask(c);
        assert_eq!(
            st,
            200,
            "{}",
            Client::connect(gw.admin.unwrap())
                .get("/debug/endpoints")
                .text()
        );
        (served(ep) > before).then_some(())
    });
    assert!(got.is_some(), "{ep} never got a request:\n{}", gw.metrics());
    t.elapsed()
}

#[test]
fn endpoint_changes_apply_without_a_restart_or_a_dropped_connection() {
    let (a, b, cc) = (
        sim(&["m"], |_| {}),
        sim(&["m"], |_| {}),
        sim(&["m"], |_| {}),
    );
    let gw = Gateway::start(&slices(&[a.addr()]), &[]);
    let mut c = gw.connect();
    for _ in 0..5 {
        ask(&mut c);
    }
    assert_eq!(served(a.addr()), 5);

    // B joins.
    replace_config(&gw, &slices(&[a.addr(), b.addr()]));
    let took = until_served(&gw, &mut c, b.addr());
    eprintln!("file replaced -> first request on the new endpoint: {took:?}");
    let m = gw.metrics();
    assert!(
        m.contains("gateway_config_reloads_total{result=\"applied\"} 1"),
        "{m}"
    );
    let cfg = Client::connect(gw.admin.unwrap())
        .get("/debug/config")
        .json();
    assert_eq!(cfg["revision"], 2, "{cfg}");

    // A leaves, C joins: nothing reaches A once C serves (the reload is in).
    replace_config(&gw, &slices(&[b.addr(), cc.addr()]));
    until_served(&gw, &mut c, cc.addr());
    let a_before = served(a.addr());
    for _ in 0..30 {
        ask(&mut c);
    }
    assert_eq!(
        served(a.addr()),
        a_before,
        "a removed endpoint got requests"
    );
    // /debug/endpoints lists C, and A as retired (its index is kept).
    let v = Client::connect(gw.admin.unwrap())
        .get("/debug/endpoints")
        .json();
    let eps = v["endpoints"].as_array().unwrap();
    let find = |a: SocketAddr| {
        eps.iter()
            .find(|e| e["address"] == a.to_string())
            .unwrap_or_else(|| panic!("{a} not listed: {v}"))
    };
    assert_eq!(find(a.addr())["retired"], true);
    assert_eq!(find(cc.addr())["retired"], false);
    assert_eq!(find(a.addr())["id"], 0);
    // C is in the metrics under its own label.
    let label = format!("gateway_endpoint_in_flight{{endpoint=\"{}\"}}", cc.addr());
    let labelled = poll(Duration::from_secs(5), || {
        gw.metrics().contains(&label).then_some(())
    });
    assert!(labelled.is_some(), "{label} missing:\n{}", gw.metrics());

    // A comes back (under its old index) and serves again; the same client
    // connection carried every request.
    replace_config(&gw, &slices(&[a.addr()]));
    until_served(&gw, &mut c, a.addr());
    let (b_before, c_before) = (served(b.addr()), served(cc.addr()));
    for _ in 0..10 {
        ask(&mut c);
    }
    assert_eq!((served(b.addr()), served(cc.addr())), (b_before, c_before));
    assert!(
        gw.metrics()
            .contains("gateway_config_reloads_total{result=\"applied\"} 3"),
        "{}",
        gw.metrics()
    );
}
