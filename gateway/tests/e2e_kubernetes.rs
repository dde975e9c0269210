//! Controller mode against a real Kubernetes API server (issue #14):
//! `scripts/k8s-testenv` starts kube-apiserver v1.37.2 and etcd on 127.0.0.1;
//! the test applies the Gateway API and Inference Extension CRDs, ours
//! (`deploy/crds/`), the seed's manifests exactly as written, and an
//! EndpointSlice for `bert-service` pointing at a simulated backend, then
//! starts `shardgate serve --kubernetes` and checks that
//! - the API server refuses what `shardgate check` refuses where our CRDs'
//!   schemas can say so (a malformed duration, an unknown enum value, a string
//!   for a number, a ratio above 1, a batch size of 0);
//! - the GatewayClass, the Gateway and the HTTPRoute get `Accepted=True`
//!   (written by the first of two replicas, elected through the Lease; both
//!   serve and both follow endpoint changes);
//! - a request for `bert-base` reaches the backend;
//! - an EndpointSlice change moves the traffic within 1 s (the time is printed);
//! - an InferencePool behind a route of ours gets an `Accepted` parent in its status;
//! - a bad HTTPRoute is left out with `Accepted=False` and the rest keeps serving;
//! - a deleted route stops being served within 1 s;
//! - when the status writer stops, the other replica takes the Lease over and
//!   writes status;
//! - with the API server gone, the gateway keeps serving its last snapshot.
//!
//! Needs `SHARDGATE_K8S_TESTENV` (the script's path; `scripts/test` sets it after
//! building the binaries); without it the test skips, unless
//! `SHARDGATE_REQUIRE_K8S=1` (CI), which makes it fail.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shardgate_testkit::{temp_dir, wait_ready_file, ChildGuard};

const CONTROLLER: &str = "ai.gateway.io/inference-controller";

/// A running test environment, stopped on drop.
struct TestEnv {
    script: PathBuf,
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
}

impl TestEnv {
    fn start(script: PathBuf) -> TestEnv {
        let dir = temp_dir("shardgate-k8s");
        let st = Command::new(&script)
            .arg("start")
            .arg(&dir)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        let mut env = TestEnv {
            script,
            kubeconfig: dir.join("kubeconfig"),
            kubectl: PathBuf::new(),
            dir,
        };
        assert!(st.success(), "k8s-testenv start failed");
        let vars = std::fs::read_to_string(env.dir.join("env")).unwrap();
        let bin = vars
            .lines()
            .filter_map(|l| l.trim_start_matches("export ").split_once('='))
            .find(|(k, _)| *k == "K8S_TESTENV_BIN")
            .map(|(_, v)| v.trim_matches(|c| c == '"' || c == '\'').to_string())
            .expect("K8S_TESTENV_BIN in env");
        env.kubectl = Path::new(&bin).join("kubectl");
        env
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut cmd = Command::new(&self.kubectl);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn must(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, text) = self.kubectl(args, stdin);
        assert!(ok, "kubectl {args:?} failed:\n{text}");
        text
    }

    fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let (ok, text) = self.kubectl(&a, None);
        if !ok {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn condition(v: &serde_json::Value, ty: &str) -> Option<(String, String)> {
    v.as_array()?.iter().find(|c| c["type"] == ty).map(|c| {
        (
            c["status"].as_str().unwrap_or("").to_string(),
            c["reason"].as_str().unwrap_or("").to_string(),
        )
    })
}

fn slice_yaml(addr: SocketAddr) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: bert-service-1\n  namespace: ai-workloads\n  labels:\n    kubernetes.io/service-name: bert-service\naddressType: IPv4\nports:\n- port: {}\nendpoints:\n- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n",
        addr.port(),
        addr.ip()
    )
}

/// A non-loopback address of this machine: the API server refuses loopback
/// addresses in EndpointSlices, so the simulated backends listen on this one.
/// (A UDP socket's `connect` only picks the route's source address: nothing is sent.)
fn host_ip() -> std::net::IpAddr {
    for target in ["192.0.2.1:9", "10.255.255.255:9", "198.51.100.1:9"] {
        let Ok(s) = std::net::UdpSocket::bind("0.0.0.0:0") else {
            continue;
        };
        if s.connect(target).is_ok() {
            if let Ok(a) = s.local_addr() {
                if !a.ip().is_loopback() && !a.ip().is_unspecified() {
                    return a.ip();
                }
            }
        }
    }
    panic!("this machine has no non-loopback IPv4 address for the simulated backends");
}

fn ask(gw: SocketAddr) -> u16 {
    let mut c = Client::connect(gw);
    c.post(
        "/v1/completions",
        r#"{"model":"bert-base","max_tokens":1,"prompt":"hello"}"#,
        &[
            ("content-type", "application/json"),
            ("x-model-type", "bert-base"),
        ],
    )
    .status
}

/// `shardgate serve --kubernetes` as `identity`; returns once it serves (the
/// process, its listener and admin addresses).
fn start_gateway(kubeconfig: &Path, identity: &str) -> (ChildGuard, SocketAddr, SocketAddr) {
    let dir = temp_dir("shardgate-kube-gw");
    let ready = dir.join("ready.json");
    let child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args([
            "serve",
            "--kubernetes",
            "--bind",
            "127.0.0.1",
            "--listen-port",
            "0",
            // The seed's GRPC listener (50051), on a port of its own per replica.
            "--port-map",
            "50051=0",
            "--admin-addr",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--gateway-address",
            "127.0.0.1",
            "--identity",
            identity,
            "--lease-namespace",
            "ai-workloads",
            "--ready-file",
        ])
        .arg(&ready)
        .env("KUBECONFIG", kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env_remove("POD_NAMESPACE")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut gw = ChildGuard::new(child, Some(dir));
    let info = wait_ready_file(&mut gw, &ready, Duration::from_secs(60));
    let addr = info["listen"][0].as_str().unwrap().parse().unwrap();
    let admin = info["admin"].as_str().unwrap().parse().unwrap();
    (gw, addr, admin)
}

fn served(a: SocketAddr) -> u64 {
    sim_stats(a)["requests_total"].as_u64().unwrap()
}

#[test]
fn controller_mode_against_a_real_api_server() {
    let Some(script) = std::env::var_os("SHARDGATE_K8S_TESTENV").map(PathBuf::from) else {
        assert!(
            std::env::var_os("SHARDGATE_REQUIRE_K8S").is_none(),
            "SHARDGATE_REQUIRE_K8S is set but SHARDGATE_K8S_TESTENV is not"
        );
        eprintln!("skipped: SHARDGATE_K8S_TESTENV is not set (scripts/test sets it)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let env = TestEnv::start(script.clone());

    // CRDs: Gateway API, Inference Extension, ours, and the ServiceMonitor the seed uses.
    let out = Command::new(&script)
        .arg("crds")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "k8s-testenv crds failed");
    for dir in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
    {
        env.must(&["apply", "--server-side", "-f", dir], None);
    }
    let ours = root.join("deploy/crds");
    env.must(&["apply", "-f", ours.to_str().unwrap()], None);
    let monitor = root.join("tests/k8s/fixtures/servicemonitor-crd.yaml");
    env.must(&["apply", "-f", monitor.to_str().unwrap()], None);
    env.must(
        &[
            "wait",
            "--for",
            "condition=Established",
            "--timeout",
            "60s",
            "crd",
            "--all",
        ],
        None,
    );
    // The seed, exactly as written (its namespaces first).
    env.must(&["create", "namespace", "ai-workloads"], None);
    env.must(&["create", "namespace", "monitoring"], None);
    // RBAC as deployed; the gateway runs as its ServiceAccount, with a token
    // from a TokenRequest, so a missing permission fails the test.
    env.must(
        &[
            "apply",
            "-f",
            root.join("deploy/rbac.yaml").to_str().unwrap(),
        ],
        None,
    );
    let token = env.must(
        &["create", "token", "shardgate", "-n", "ai-workloads"],
        None,
    );
    let sa_config = env.dir.join("sa-kubeconfig");
    std::fs::copy(&env.kubeconfig, &sa_config).unwrap();
    let sa = sa_config.to_str().unwrap();
    env.must(
        &[
            "config",
            "set-credentials",
            "shardgate-sa",
            "--token",
            token.trim(),
            "--kubeconfig",
            sa,
        ],
        None,
    );
    env.must(
        &[
            "config",
            "set-context",
            "--current",
            "--user",
            "shardgate-sa",
            "--kubeconfig",
            sa,
        ],
        None,
    );
    let seed = root.join("gateway/tests/data/seed-manifests.yaml");
    env.must(&["apply", "-f", seed.to_str().unwrap()], None);

    let ip = host_ip().to_string();
    // The CRDs' schemas come from the types the loader parses: what `shardgate
    // check` refuses for a type, an enum value or a duration, kubectl refuses too.
    for (bad, field) in [
        ("apiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata: {name: bad, namespace: ai-workloads}\nspec:\n  maxBatchSize: 8\n  maxLatency: 5 minutes\n", "maxLatency"),
        ("apiVersion: ai.gateway.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: bad, namespace: ai-workloads}\nspec:\n  rateLimit:\n    default: {requests: 1, unit: fortnight}\n", "unit"),
        ("apiVersion: ai.gateway.io/v1alpha1\nkind: InferenceConfig\nmetadata: {name: bad}\nspec:\n  resourceManagement: {maxConcurrentInferences: many}\n", "maxConcurrentInferences"),
        ("apiVersion: ai.gateway.io/v1alpha1\nkind: InferencePolicy\nmetadata: {name: bad, namespace: ai-workloads}\nspec:\n  loadBalancing:\n    factors: {gpuUtilization: 1.5}\n", "gpuUtilization"),
        ("apiVersion: ai.gateway.io/v1alpha1\nkind: BatchingPolicy\nmetadata: {name: bad, namespace: ai-workloads}\nspec:\n  maxBatchSize: 0\n", "maxBatchSize"),
    ] {
        let (ok, text) = env.kubectl(&["apply", "-f", "-"], Some(bad));
        assert!(!ok && text.contains(field), "the API server took {bad}:\n{text}");
        let checked = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["check", "-c", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(bad.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(!checked.status.success(), "shardgate check took {bad}");
    }

    let a = sim(&["bert-base"], |c| c.host = ip.clone());
    let b = sim(&["bert-base"], |c| c.host = ip.clone());
    env.must(&["apply", "-f", "-"], Some(&slice_yaml(a.addr())));

    // Two replicas, as a DaemonSet on two nodes runs them: both serve, the first
    // (it starts first) holds the Lease and writes status.
    let (gw, addr, admin) = start_gateway(&sa_config, "e2e-gateway");
    let (mut gw2, addr2, _) = start_gateway(&sa_config, "e2e-gateway-2");
    assert_eq!(ask(addr2), 200);
    assert_eq!(ask(addr), 200);
    assert!(served(a.addr()) >= 1);

    // Status: Accepted on the class, the Gateway and the route.
    let accepted = poll(Duration::from_secs(30), || {
        let gc = env.get_json(&["gatewayclass", "ai-inference-gateway"]);
        let g = env.get_json(&["gateway", "-n", "ai-workloads", "llm-gateway"]);
        let r = env.get_json(&["httproute", "-n", "ai-workloads", "model-routing"]);
        let ok = condition(&gc["status"]["conditions"], "Accepted").is_some_and(|c| c.0 == "True")
            && condition(&g["status"]["conditions"], "Accepted").is_some_and(|c| c.0 == "True")
            && condition(&g["status"]["conditions"], "Programmed").is_some_and(|c| c.0 == "True")
            && condition(&r["status"]["parents"][0]["conditions"], "Accepted")
                .is_some_and(|c| c.0 == "True");
        ok.then_some((g, r))
    });
    let (g, r) = accepted.unwrap_or_else(|| {
        panic!(
            "no Accepted status:\n{}\n{}",
            env.must(
                &["get", "gatewayclass,gateway,httproute", "-A", "-o", "yaml"],
                None
            ),
            env.must(&["get", "lease", "-A", "-o", "yaml"], None)
        )
    });
    assert_eq!(r["status"]["parents"][0]["controllerName"], CONTROLLER);
    assert_eq!(g["status"]["addresses"][0]["value"], "127.0.0.1");
    assert_eq!(g["status"]["listeners"][0]["attachedRoutes"], 1, "{g}");
    let ic = env.get_json(&["inferenceconfig", "llm-routing-config"]);
    assert_eq!(
        condition(&ic["status"]["conditions"], "Accepted")
            .unwrap()
            .0,
        "True"
    );
    let lease = env.get_json(&["lease", "-n", "ai-workloads", "shardgate-status-writer"]);
    assert_eq!(lease["spec"]["holderIdentity"], "e2e-gateway");

    // An EndpointSlice change: traffic moves to B within a second.
    env.must(&["apply", "-f", "-"], Some(&slice_yaml(b.addr())));
    let t0 = Instant::now();
    // One endpoint at a time: the first client request that A does not count
    // went to B (B's own counter also counts the gateway's warm-up request).
    let moved = poll(Duration::from_secs(10), || {
        let a0 = served(a.addr());
        assert_eq!(ask(addr), 200);
        (served(a.addr()) == a0).then(|| t0.elapsed())
    });
    let took = moved.expect("the EndpointSlice change never routed to the new endpoint");
    eprintln!("EndpointSlice applied -> first request on the new endpoint: {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let a_before = served(a.addr());
    for _ in 0..10 {
        assert_eq!(ask(addr), 200);
    }
    assert_eq!(
        served(a.addr()),
        a_before,
        "the removed endpoint got requests"
    );
    // The other replica follows too (it does not write status, it serves).
    let followed = poll(Duration::from_secs(10), || {
        let a0 = served(a.addr());
        assert_eq!(ask(addr2), 200);
        (served(a.addr()) == a0).then_some(())
    });
    assert!(
        followed.is_some(),
        "the second replica did not follow the EndpointSlice"
    );

    // An InferencePool behind a route of ours gets a parent entry in its status.
    let pool = "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {name: llama-pool, namespace: ai-workloads}\nspec:\n  selector:\n    matchLabels: {app: llama}\n  targetPorts: [{number: 8000}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: pool-route, namespace: ai-workloads}\nspec:\n  parentRefs: [{name: llm-gateway}]\n  rules:\n  - matches: [{headers: [{name: X-Model-Type, value: llama}]}]\n    backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: llama-pool}]\n";
    env.must(&["apply", "-f", "-"], Some(pool));
    let pool_status = poll(Duration::from_secs(10), || {
        let p = env.get_json(&["inferencepool", "-n", "ai-workloads", "llama-pool"]);
        let parent = &p["status"]["parents"][0];
        condition(&parent["conditions"], "Accepted")
            .filter(|c| c.0 == "True")
            .map(|_| parent.clone())
    });
    let parent = pool_status.expect("no Accepted parent in the InferencePool's status");
    assert_eq!(parent["parentRef"]["name"], "llm-gateway");
    assert_eq!(parent["controllerName"], CONTROLLER);

    // A bad route is left out, with a condition saying why; the rest serves.
    let bad = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: broken\n  namespace: ai-workloads\nspec:\n  parentRefs:\n  - name: llm-gateway\n  rules:\n  - matches:\n    - path: {type: RegularExpression, value: \"((\"}\n    backendRefs:\n    - name: bert-service\n      port: 8080\n";
    env.must(&["apply", "-f", "-"], Some(bad));
    let rejected = poll(Duration::from_secs(10), || {
        let r = env.get_json(&["httproute", "-n", "ai-workloads", "broken"]);
        condition(&r["status"]["parents"][0]["conditions"], "Accepted").filter(|c| c.0 == "False")
    });
    assert_eq!(
        rejected.expect("no Accepted=False on the bad route").1,
        "UnsupportedValue"
    );
    assert_eq!(ask(addr), 200);

    // Delete the route: it stops being served (404: no route for the model).
    env.must(
        &["delete", "httproute", "-n", "ai-workloads", "model-routing"],
        None,
    );
    let t0 = Instant::now();
    let stopped = poll(Duration::from_secs(10), || {
        (ask(addr) == 404).then(|| t0.elapsed())
    });
    let took = stopped.expect("the deleted route is still served");
    eprintln!("HTTPRoute deleted -> first 404: {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let cfg = Client::connect(admin).get("/debug/config").json();
    assert_eq!(cfg["reload"]["last_result"], "applied", "{}", cfg["reload"]);

    // The status writer goes away: the other replica takes the Lease over once
    // it expires (15 s) and writes status from then on.
    drop(gw);
    let took_over = poll(Duration::from_secs(40), || {
        let l = env.get_json(&["lease", "-n", "ai-workloads", "shardgate-status-writer"]);
        (l["spec"]["holderIdentity"] == "e2e-gateway-2").then_some(())
    });
    assert!(
        took_over.is_some(),
        "the second replica never took the Lease over"
    );
    let bad2 = bad.replace("name: broken", "name: broken-2");
    env.must(&["apply", "-f", "-"], Some(&bad2));
    let written = poll(Duration::from_secs(10), || {
        let r = env.get_json(&["httproute", "-n", "ai-workloads", "broken-2"]);
        condition(&r["status"]["parents"][0]["conditions"], "Accepted").filter(|c| c.0 == "False")
    });
    assert!(written.is_some(), "the new leader wrote no status");

    // The API server goes away: the gateway keeps serving its last snapshot.
    let before = ask(addr2);
    drop(env);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            ask(addr2),
            before,
            "the answer changed once the API server was gone"
        );
    }
    assert!(
        gw2.exited().is_none(),
        "the gateway exited without its API server"
    );
    drop(gw2);
}

/// Without a reachable API server the gateway does not start: it exits, after
/// `--kubernetes-sync-timeout`, saying why (no test environment needed).
#[test]
fn no_api_server_fails_the_start_with_a_clear_error() {
    let dir = temp_dir("shardgate-kube-none");
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args([
            "serve",
            "--kubernetes",
            "--kubernetes-sync-timeout",
            "1s",
            "--bind",
            "127.0.0.1",
            "--admin-addr",
            "off",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(child, Some(dir));
    let status = guard
        .wait_exit(Duration::from_secs(30))
        .expect("the gateway kept waiting for an API server that is not there");
    assert_eq!(status.code(), Some(2));
    let mut err = String::new();
    use std::io::Read;
    guard
        .child()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("kubernetes: discovery of"), "{err}");
}
