//! Controller-mode I/O against kube's client on a mock API server
//! (`tower-test`): discovery, watch events into the store, the Lease
//! election's writes, and the status writer's patches. Each test scripts the
//! server's side request by request and checks method, path and body.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::client::Body;
use kube::runtime::watcher;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

use super::lease::{self, LeaseSettings};
use super::status::StatusPatch;
use super::store::Store;

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (kube::Client, ApiHandle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(svc, "default"), handle)
}

fn respond(code: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn not_found() -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

async fn body_json(req: Request<Body>) -> Value {
    use http_body_util::BodyExt;
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn settings(id: &str) -> LeaseSettings {
    LeaseSettings {
        namespace: "gw".into(),
        name: "shardgate-status-writer".into(),
        identity: id.into(),
        duration: lease::DURATION,
        renew_every: lease::RENEW_EVERY,
    }
}

#[test]
fn discovery_watches_the_first_served_version_of_each_kind() {
    rt().block_on(async {
        let (client, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let mut asked = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                let path = req.uri().path().to_string();
                asked.push(path.clone());
                let list = |group_version: &str, plurals: &[&str]| {
                    let resources: Vec<Value> = plurals
                        .iter()
                        .map(|p| json!({"name": p, "singularName": "", "namespaced": true, "kind": "X", "verbs": ["list", "watch"]}))
                        .collect();
                    respond(StatusCode::OK, json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
                };
                let resp = match path.as_str() {
                    "/apis/gateway.networking.k8s.io/v1" => list("gateway.networking.k8s.io/v1", &["gatewayclasses", "gateways", "httproutes"]),
                    "/apis/gateway.networking.k8s.io/v1beta1" => list("gateway.networking.k8s.io/v1beta1", &["referencegrants"]),
                    "/api/v1" => list("v1", &["services", "secrets", "configmaps"]),
                    "/apis/discovery.k8s.io/v1" => list("discovery.k8s.io/v1", &["endpointslices"]),
                    _ => not_found(),
                };
                send.send_response(resp);
            }
            asked
        });
        let found = super::discover(&client).await.unwrap();
        drop(client);
        let kinds: Vec<(String, String)> = found
            .iter()
            .map(|(_, ar)| (ar.kind.clone(), ar.api_version.clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("GatewayClass".into(), "gateway.networking.k8s.io/v1".into()),
                ("Gateway".into(), "gateway.networking.k8s.io/v1".into()),
                ("HTTPRoute".into(), "gateway.networking.k8s.io/v1".into()),
                ("ReferenceGrant".into(), "gateway.networking.k8s.io/v1beta1".into()),
                ("Service".into(), "v1".into()),
                ("EndpointSlice".into(), "discovery.k8s.io/v1".into()),
                ("Secret".into(), "v1".into()),
                ("ConfigMap".into(), "v1".into()),
            ]
        );
        let asked = server.await.unwrap();
        // Each group-version is asked once.
        let mut dedup = asked.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), asked.len(), "{asked:?}");
    });
}

#[test]
fn watch_events_from_the_server_reach_the_store() {
    rt().block_on(async {
        let (client, mut handle) = mock_client();
        let ar = ApiResource {
            group: "discovery.k8s.io".into(),
            version: "v1".into(),
            api_version: "discovery.k8s.io/v1".into(),
            kind: "EndpointSlice".into(),
            plural: "endpointslices".into(),
        };
        let slice = |ip: &str, rv: &str| {
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "s", "namespace": "a", "resourceVersion": rv,
                    "labels": {"kubernetes.io/service-name": "svc"}},
                "addressType": "IPv4", "ports": [{"port": 80}],
                "endpoints": [{"addresses": [ip]}]})
        };
        let list_item = slice("10.0.0.1", "5");
        let server = tokio::spawn(async move {
            // The list.
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.uri().path(), "/apis/discovery.k8s.io/v1/endpointslices");
            assert!(!req.uri().query().unwrap_or("").contains("watch=true"));
            send.send_response(respond(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "5"}, "items": [list_item]}),
            ));
            // The watch: one modification, then the stream ends.
            let (req, send) = handle.next_request().await.unwrap();
            let q = req.uri().query().unwrap_or("").to_string();
            assert!(q.contains("watch=true") && q.contains("resourceVersion=5"), "{q}");
            let ev = json!({"type": "MODIFIED", "object": slice("10.0.0.2", "6")});
            let mut bytes = serde_json::to_vec(&ev).unwrap();
            bytes.push(b'\n');
            send.send_response(Response::builder().body(Body::from(bytes)).unwrap());
            handle
        });
        let api: Api<DynamicObject> = Api::all_with(client, &ar);
        let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
        let mut store = Store::new(vec![("discovery.k8s.io/v1".into(), "EndpointSlice".into())]);
        let mut docs_changed = 0;
        // Init, InitApply, InitDone, Apply.
        for _ in 0..4 {
            let ev = events.next().await.unwrap().unwrap();
            docs_changed += usize::from(store.apply(0, ev).docs);
        }
        assert!(store.synced());
        assert_eq!(docs_changed, 2, "the first list and the modification");
        let o = &store.kinds[0].objects[&("a".to_string(), "s".to_string())];
        assert_eq!(o.doc["endpoints"][0]["addresses"][0], "10.0.0.2");
        drop(events);
        drop(server.await.unwrap());
    });
}

#[test]
fn the_lease_is_created_when_missing_and_followed_when_held() {
    rt().block_on(async {
        let (client, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let path = "/apis/coordination.k8s.io/v1/namespaces/gw/leases";
            // Round 1: none there, so we create it.
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "GET");
            assert_eq!(req.uri().path(), format!("{path}/shardgate-status-writer"));
            send.send_response(not_found());
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "POST");
            assert_eq!(req.uri().path(), path);
            let created = body_json(req).await;
            assert_eq!(created["spec"]["holderIdentity"], "me");
            assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
            send.send_response(respond(StatusCode::CREATED, created));
            // Round 2: someone else renewed it just now: follow, no write.
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "GET");
            let now = k8s_openapi::jiff::Timestamp::now();
            send.send_response(respond(
                StatusCode::OK,
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "shardgate-status-writer", "namespace": "gw", "resourceVersion": "7"},
                    "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15,
                        "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()}}),
            ));
            // Round 3: it expired long ago: take it over, with its resourceVersion;
            // the other replica got there first (409): follow.
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "GET");
            send.send_response(respond(
                StatusCode::OK,
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "shardgate-status-writer", "namespace": "gw", "resourceVersion": "8"},
                    "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15,
                        "renewTime": "2020-01-01T00:00:00.000000Z"}}),
            ));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "PUT");
            let body = body_json(req).await;
            assert_eq!(body["metadata"]["resourceVersion"], "8");
            assert_eq!(body["spec"]["holderIdentity"], "me");
            assert_eq!(body["spec"]["leaseTransitions"], 1);
            send.send_response(respond(
                StatusCode::CONFLICT,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "conflict"}),
            ));
        });
        let api: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client, "gw");
        let s = settings("me");
        assert!(lease::step(&api, &s).await.unwrap(), "created: leading");
        assert!(!lease::step(&api, &s).await.unwrap(), "held by another");
        assert!(!lease::step(&api, &s).await.unwrap(), "lost the race");
        server.await.unwrap();
    });
}

#[test]
fn the_status_writer_merge_patches_the_status_subresource_only_when_leading() {
    rt().block_on(async {
        let (client, mut handle) = mock_client();
        let ar = ApiResource {
            group: "gateway.networking.k8s.io".into(),
            version: "v1".into(),
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "HTTPRoute".into(),
            plural: "httproutes".into(),
        };
        let leader = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::watch::channel(Vec::<StatusPatch>::new());
        let writer = tokio::spawn(super::write_status(client, vec![ar], leader.clone(), rx));
        let patch = StatusPatch {
            kind_index: 0,
            key: ("a".into(), "r".into()),
            status: json!({"parents": [{"controllerName": "c", "parentRef": {"name": "gw"}, "conditions": []}]}),
        };
        // Not leading: nothing is written.
        tx.send(vec![patch.clone()]).unwrap();
        tokio::task::yield_now().await;
        leader.store(true, Ordering::Release);
        tx.send(vec![patch]).unwrap();
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), "PATCH");
        assert_eq!(
            req.uri().path(),
            "/apis/gateway.networking.k8s.io/v1/namespaces/a/httproutes/r/status"
        );
        assert_eq!(
            req.headers()["content-type"],
            "application/merge-patch+json"
        );
        let body = body_json(req).await;
        assert_eq!(body["status"]["parents"][0]["parentRef"]["name"], "gw");
        send.send_response(respond(StatusCode::OK, json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "a"}})));
        drop(tx);
        writer.await.unwrap();
    });
}
