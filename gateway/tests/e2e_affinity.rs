//! End-to-end tests of `InferenceConfig` `resourceManagement.gpuAffinity`:
//! with `--node-name`, endpoints whose EndpointSlice `nodeName` is the
//! gateway's node get the traffic until they are saturated; without the
//! field, the same endpoints share it.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;

use common::*;

/// One route for model `m` to Service `svc`, whose two EndpointSlices put
/// `local` on node-a and `remote` on node-b; an InferenceConfig with
/// `gpuAffinity: affinity`.
fn config(local: SocketAddr, remote: SocketAddr, affinity: bool) -> String {
    let slice = |i: usize, a: SocketAddr, node: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: svc\naddressType: IPv4\nports:\n- port: {}\nendpoints:\n- addresses: [\"{}\"]\n  nodeName: {node}\n",
            a.port(),
            a.ip()
        )
    };
    format!(
        "apiVersion: ai.gateway.io/v1alpha1\nkind: InferenceConfig\nmetadata:\n  name: cfg\n  namespace: default\nspec:\n  resourceManagement:\n    gpuAffinity: {affinity}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: default\nspec:\n  gatewayClassName: shardgate\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: 8080\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw\n  rules:\n  - backendRefs:\n    - name: svc\n      port: 8000\n{}{}",
        slice(0, local, "node-a"),
        slice(1, remote, "node-b")
    )
}

fn served(a: SocketAddr) -> u64 {
    sim_stats(a)["requests_total"].as_u64().unwrap()
}

fn send(gw: &Gateway, n: usize) {
    let req = r#"{"model":"m","prompt":"x","max_tokens":1}"#;
    for _ in 0..n {
        let r = gw.connect().post("/v1/completions", req, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[test]
fn gpu_affinity_keeps_traffic_on_the_gateways_node_until_it_is_saturated() {
    let local = sim(&["m"], |c| {
        c.decode_step_us = 20_000;
        c.max_num_seqs = 1;
    });
    let remote = sim(&["m"], |_| {});
    // A scraped signal counts for two intervals. At 50 ms, a scrape of the
    // busy local sim that came late on a loaded machine left its queue
    // unknown (so not saturated) for a moment: the ten requests below could
    // then reach it. 200 ms leaves 400 ms.
    let gw = Gateway::start(
        &config(local.addr(), remote.addr(), true),
        &[
            "--node-name",
            "node-a",
            "--saturation-waiting",
            "0",
            "--scrape-interval",
            "200ms",
        ],
    );
    send(&gw, 20);
    assert_eq!(served(local.addr()), 20, "every request stays on node-a");
    assert_eq!(served(remote.addr()), 0);

    // The debug view says why.
    let j = Client::connect(gw.admin.unwrap())
        .get("/debug/endpoints")
        .json();
    let eps = j["endpoints"].as_array().unwrap();
    assert_eq!(eps[0]["on_this_node"], true, "{j}");
    assert_eq!(eps[1]["on_this_node"], false, "{j}");
    assert_eq!(eps[0]["scores"]["by_scorer"]["locality"], 1.0, "{j}");
    assert_eq!(eps[1]["scores"]["by_scorer"]["locality"], 0.0, "{j}");

    // Saturate only from a settled view: the local endpoint scraped, empty
    // and eligible. (About one run in ten or twenty, all three streams below
    // went to the remote endpoint; see `saturate`'s failure message.)
    let admin = gw.admin.unwrap();
    let drained = poll(std::time::Duration::from_secs(10), || {
        let j = Client::connect(admin).get("/debug/endpoints").json();
        let ep = &j["endpoints"][0];
        (ep["telemetry"]["waiting"].as_f64()? == 0.0 && ep["scores"]["status"] == "Eligible")
            .then_some(())
    });
    assert!(
        drained.is_some(),
        "the local endpoint's queue never drained"
    );

    // Saturate the local endpoint (one running, two waiting): the remote one
    // serves now. Each stream decodes for 4 s, so the queue outlasts the ten
    // requests on a loaded machine too.
    let streams = saturate(&gw, "m", 3, 200);
    send(&gw, 10);
    assert_eq!(
        served(remote.addr()),
        10,
        "a saturated local endpoint hands the traffic to the others: {}",
        Client::connect(admin).get("/debug/endpoints").json()
    );
    drop(streams);
}

#[test]
fn without_gpu_affinity_the_same_endpoints_share_the_traffic() {
    let local = sim(&["m"], |_| {});
    let remote = sim(&["m"], |_| {});
    let gw = Gateway::start(
        &config(local.addr(), remote.addr(), false),
        &["--node-name", "node-a"],
    );
    send(&gw, 40);
    let (l, r) = (served(local.addr()), served(remote.addr()));
    assert_eq!(l + r, 40);
    assert!(l > 0 && r > 0, "local {l}, remote {r}");
    let j = Client::connect(gw.admin.unwrap())
        .get("/debug/endpoints")
        .json();
    assert!(
        j["endpoints"][0]["scores"]["by_scorer"]
            .get("locality")
            .is_none(),
        "{j}"
    );
}
