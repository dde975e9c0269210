//! Live configuration changes (issue #14), applied without a restart: new
//! endpoints get traffic, removed ones get none after the reload, a returning
//! one serves again; a route, a rate limit and a new `maxConcurrentInferences`
//! come and go; a removed BatchingPolicy still answers the members it holds.
//! The client's keep-alive connection stays open throughout.

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

/// `gateway_admission_permits` shares summed over the shards.
fn admission_shares(m: &str) -> u64 {
    m.lines()
        .filter(|l| l.starts_with("gateway_admission_permits{") && l.contains("state=\"share\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn ask_model(c: &mut Client, model: &str) -> Response {
    c.post(
        "/v1/chat/completions",
        &chat(model, false, 1),
        &[("content-type", "application/json")],
    )
}

fn with_limits(yaml: &str, max_concurrent: u32, per_minute: Option<u32>) -> String {
    let mut y = format!(
        "{yaml}---\napiVersion: ai.gateway.io/v1alpha1\nkind: InferenceConfig\nmetadata:\n  name: limits\nspec:\n  resourceManagement:\n    maxConcurrentInferences: {max_concurrent}\n"
    );
    if let Some(n) = per_minute {
        y.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata:\n  name: limits\nspec:\n  targetRef:\n    kind: Gateway\n    name: gw\n  rateLimit:\n    perModel:\n      n: {{requests: {n}, unit: minute}}\n"
        ));
    }
    y
}

#[test]
fn routes_policies_and_limits_change_live_on_the_same_connection() {
    let (a, b) = (sim(&["m"], |_| {}), sim(&["n"], |_| {}));
    let one = config(&[("m", vec![(1, vec![a.addr()])])]);
    let two = config(&[
        ("m", vec![(1, vec![a.addr()])]),
        ("n", vec![(1, vec![b.addr()])]),
    ]);
    let gw = Gateway::start(
        &with_limits(&one, 3, None),
        &["--autoscale-interval", "100ms"],
    );
    let mut c = gw.connect();
    assert_eq!(ask_model(&mut c, "m").status, 200);
    let r = ask_model(&mut c, "n");
    assert_eq!(r.status, 404, "{}", r.text());
    let shares = poll(Duration::from_secs(10), || {
        (admission_shares(&gw.metrics()) == 3).then_some(())
    });
    assert!(shares.is_some(), "{}", gw.metrics());

    // A route for model n, a larger maxConcurrentInferences and a rate limit
    // on n: all in one reload, on the connection that is open.
    replace_config(&gw, &with_limits(&two, 5, Some(2)));
    let served_n = poll(Duration::from_secs(10), || {
        let r = ask_model(&mut c, "n");
        (r.status == 200).then_some(r)
    })
    .expect("the new route never served");
    assert!(
        served_n.header("x-ratelimit-limit-requests").is_some(),
        "the new SecurityPolicy's limit is not in force"
    );
    let refused = poll(Duration::from_secs(10), || {
        let r = ask_model(&mut c, "n");
        (r.status == 429).then_some(r)
    })
    .expect("the new rate limit never refused");
    assert!(refused.text().contains("rate_limit"), "{}", refused.text());
    assert_eq!(ask_model(&mut c, "m").status, 200);
    // The autoscaling signals follow the models the routes serve.
    let signalled = poll(Duration::from_secs(10), || {
        let a = Client::connect(gw.admin.unwrap()).get("/autoscale").json();
        a["models"]["n"].is_object().then_some(())
    });
    assert!(
        signalled.is_some(),
        "/autoscale does not list the new model"
    );
    let resized = poll(Duration::from_secs(10), || {
        (admission_shares(&gw.metrics()) == 5).then_some(())
    });
    assert!(resized.is_some(), "budget not resized:\n{}", gw.metrics());
    let dbg = Client::connect(gw.admin.unwrap())
        .get("/debug/config")
        .json();
    assert_eq!(dbg["revision"], 2, "{dbg}");
    assert_eq!(dbg["reload"]["last_result"], "applied", "{dbg}");
    assert!(
        dbg.to_string().contains("\"kind\":\"SecurityPolicy\""),
        "/debug/config lists the new documents: {dbg}"
    );

    // The route goes again (and the limits with it): n is unknown once more,
    // m still serves, nothing reached B after the reload.
    replace_config(&gw, &one);
    let gone = poll(Duration::from_secs(10), || {
        (ask_model(&mut c, "n").status == 404).then_some(())
    });
    assert!(gone.is_some(), "the removed route still serves");
    let b_after = served(b.addr());
    for _ in 0..10 {
        assert_eq!(ask_model(&mut c, "m").status, 200);
        assert_eq!(ask_model(&mut c, "n").status, 404);
    }
    assert_eq!(
        served(b.addr()),
        b_after,
        "a removed route's endpoint got requests"
    );
    // Without maxConcurrentInferences, no shard reports a share.
    let unlimited = poll(Duration::from_secs(10), || {
        (!gw.metrics().contains("gateway_admission_permits{")).then_some(())
    });
    assert!(unlimited.is_some(), "{}", gw.metrics());
    assert!(
        gw.metrics()
            .contains("gateway_config_reloads_total{result=\"applied\"} 2"),
        "{}",
        gw.metrics()
    );
}

/// Requests waiting in batching queues, summed.
fn batching_depth(m: &str) -> f64 {
    m.lines()
        .filter(|l| l.starts_with("gateway_queue_depth{queue=\"batching\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_removed_batching_policy_answers_the_requests_it_holds() {
    let emb = sim(&["emb"], |_| {});
    let base = config(&[("emb", vec![(1, vec![emb.addr()])])]);
    // Held for 3 s unless 32 arrive: the reload comes while they wait.
    let batched = format!(
        "{base}---\napiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata:\n  name: slow\n  namespace: default\nspec:\n  maxBatchSize: 32\n  maxLatency: 3s\n  targetRefs:\n  - group: gateway.networking.k8s.io\n    kind: HTTPRoute\n    name: r0\n"
    );
    let gw = Gateway::start(&batched, &["--shards", "1"]);
    let addr = gw.addr;
    let before = served(emb.addr());
    let start = Instant::now();
    let waiting: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let body = format!(r#"{{"model":"emb","input":"member {i}"}}"#);
                let r = c.post("/v1/embeddings", &body, &[]);
                (r.status, r.text())
            })
        })
        .collect();
    let queued = poll(Duration::from_secs(10), || {
        (batching_depth(&gw.metrics()) >= 4.0).then_some(())
    });
    assert!(queued.is_some(), "{}", gw.metrics());
    // The policy goes while its four members wait.
    replace_config(&gw, &base);
    let applied = poll(Duration::from_secs(10), || {
        let cfg = Client::connect(gw.admin.unwrap())
            .get("/debug/config")
            .json();
        (cfg["revision"] == 2).then_some(())
    });
    assert!(applied.is_some(), "the reload was not applied");
    // New requests are no longer held.
    let mut c = gw.connect();
    let t = Instant::now();
    let r = c.post("/v1/embeddings", r#"{"model":"emb","input":"after"}"#, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a request after the reload was still batched"
    );
    // The members of the removed policy's lane are answered, as one batch.
    for w in waiting {
        let (status, text) = w.join().unwrap();
        assert_eq!(status, 200, "{text}");
    }
    assert!(start.elapsed() >= Duration::from_secs(2), "flushed early");
    assert_eq!(served(emb.addr()) - before, 2, "one batch and one request");
}

#[test]
fn a_listener_is_bound_and_unbound_without_a_restart() {
    let a = sim(&["m"], |_| {});
    let base = config(&[("m", vec![(1, vec![a.addr()])])]);
    let gw = Gateway::start(&base, &[]);
    let mut main_conn = gw.connect();
    assert_eq!(ask_model(&mut main_conn, "m").status, 200);
    // A port nobody uses now (bound and let go: the gateway binds it next).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let with_extra = base.replacen(
        "    port: 8080\n",
        &format!(
            "    port: 8080\n  - name: extra\n    protocol: HTTP\n    port: {}\n",
            free.port()
        ),
        1,
    );
    assert_ne!(with_extra, base);
    replace_config(&gw, &with_extra);
    let mut extra = poll(Duration::from_secs(10), || {
        std::net::TcpStream::connect(free).ok()?;
        Some(Client::connect(free))
    })
    .expect("the new listener was never bound");
    assert_eq!(ask_model(&mut extra, "m").status, 200);
    let cfg = Client::connect(gw.admin.unwrap())
        .get("/debug/config")
        .json();
    assert!(
        cfg["listen"].to_string().contains(&free.to_string()),
        "{cfg}"
    );

    // The listener goes: new connections are refused, the open one gets a
    // 404 and is closed, the first port serves on as before.
    replace_config(&gw, &base);
    let unbound = poll(Duration::from_secs(10), || {
        std::net::TcpStream::connect(free).is_err().then_some(())
    });
    assert!(unbound.is_some(), "the removed listener still accepts");
    let r = ask_model(&mut extra, "m");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        extra.is_closed(),
        "a removed listener's connection stays open"
    );
    assert_eq!(ask_model(&mut main_conn, "m").status, 200);
    let m = gw.metrics();
    assert!(
        m.contains("gateway_config_reloads_total{result=\"applied\"} 2"),
        "{m}"
    );
}
