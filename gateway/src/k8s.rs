//! Kubernetes controller mode: `shardgate serve --kubernetes`.
//!
//! The configuration comes from the API server instead of files, through the
//! same pipeline as a file reload ([`crate::reload::Reloader::reload`]): a
//! full snapshot of (name, YAML) pairs, validated whole, applied live.
//!
//! Threads (never the shards):
//! - **`k8s-controller`**: a single-threaded tokio runtime. It finds which of
//!   the [`kinds::KINDS`] (20 entries) the API server serves (discovery, retried
//!   until `--kubernetes-sync-timeout`), starts one kube-rs watcher per kind
//!   (list, then watch; a broken watch re-lists with kube's default backoff,
//!   800 ms growing to 30 s), and feeds every event into one [`store::Store`].
//!   Once every kind has been listed it builds a snapshot ([`snapshot`]: our
//!   GatewayClasses, their Gateways and routes, and what they use; bad
//!   objects isolated) whenever events have been quiet for [`QUIET`] (50 ms),
//!   at most [`MAX_DELAY`] (500 ms) after the first event of a burst, and
//!   sends it on when it differs from the last one. While the API server is
//!   unreachable nothing is sent: the last good snapshot keeps serving.
//! - **`k8s-reload`**: hands each snapshot to the reloader (the newest one
//!   only, when several are waiting) and reports the outcome back, for the
//!   Gateways' `Programmed` condition.
//! - the **status writer** and the **Lease** loop ([`lease`]) run as tasks of
//!   the controller's runtime: one replica, elected through a
//!   `coordination.k8s.io/v1` Lease (15 s, renewed every 5 s), merge-patches the
//!   `status` subresource of the objects whose status differs from what
//!   [`status::desired`] computes; every replica serves.
//!
//! Start: the gateway waits for the first complete list of every watched kind
//! (or fails after `--kubernetes-sync-timeout`, naming the kinds still
//! missing), then starts on the first snapshot that has a listener to serve.
//! From then on listeners, routes, policies and endpoints follow the API live,
//! as file reloads do ([`crate::reload`]): about 200 ms from `kubectl apply`
//! (or `delete`) returning to the first request routed the new way, for an
//! EndpointSlice change as for a deleted HTTPRoute, measured by
//! `gateway/tests/e2e_kubernetes.rs` (the 50 ms quiet time plus the reload).

pub mod crds;
pub mod kinds;
pub mod lease;
pub mod snapshot;
pub mod status;
pub mod store;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use tokio::time::Instant;

use crate::cli::{KubeArgs, RunArgs};
use crate::reload::Outcome;

/// A snapshot is built once watch events have been quiet this long…
pub const QUIET: Duration = Duration::from_millis(50);
/// …or this long after the first event of a burst.
pub const MAX_DELAY: Duration = Duration::from_millis(500);

/// The field manager of our status patches.
pub const FIELD_MANAGER: &str = "shardgate";

/// From the controller to the gateway.
enum ToGateway {
    /// A new valid snapshot, with its sequence number (1, 2, …).
    Snapshot(u64, Vec<(String, String)>),
    /// The controller cannot go on (no credentials, no first list in time).
    Failed(String),
}

/// `serve --kubernetes`: start the controller, wait for the first snapshot,
/// serve it, and follow the API until a signal drains the gateway.
pub fn serve(kube_args: &KubeArgs, run: &RunArgs) -> ExitCode {
    let (tx, rx) = mpsc::channel::<ToGateway>();
    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Outcome)>();
    let settings = Settings {
        args: kube_args.clone(),
        limits: run.config_limits.limits(),
    };
    let spawned = std::thread::Builder::new()
        .name("k8s-controller".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(ToGateway::Failed(format!("cannot start a runtime: {e}")));
                    return;
                }
            };
            rt.block_on(controller(settings, tx, out_rx));
        });
    if let Err(e) = spawned {
        return crate::report_errors(&[format!("cannot start the controller thread: {e}")]);
    }
    // The first snapshot the gateway can start on.
    let running = loop {
        match rx.recv() {
            Ok(ToGateway::Snapshot(seq, sources)) => {
                match crate::start(&sources, run, shardgate_runtime::Shutdown::new()) {
                    Ok(running) => {
                        let _ = out_tx.send((seq, Outcome::Applied));
                        break running;
                    }
                    Err(errors) => {
                        for e in &errors {
                            tracing::warn!(error = %e, "kubernetes: cannot start on this snapshot yet; waiting for the next one");
                        }
                        let _ = out_tx.send((seq, Outcome::Error));
                    }
                }
            }
            Ok(ToGateway::Failed(why)) => return crate::report_errors(&[why]),
            Err(_) => return crate::report_errors(&["the controller thread stopped".to_string()]),
        }
    };
    let mut reloader = running.reloader;
    let spawned = std::thread::Builder::new()
        .name("k8s-reload".into())
        .spawn(move || {
            while let Ok(msg) = rx.recv() {
                let mut latest = Some(msg);
                // Only the newest of the waiting snapshots matters.
                while let Ok(next) = rx.try_recv() {
                    latest = Some(next);
                }
                match latest {
                    Some(ToGateway::Snapshot(seq, sources)) => {
                        let started = std::time::Instant::now();
                        let outcome = reloader.reload(&sources);
                        tracing::info!(
                            snapshot = seq,
                            result = crate::reload::RESULTS[outcome as usize],
                            took_ms = started.elapsed().as_secs_f64() * 1e3,
                            "kubernetes: snapshot reloaded"
                        );
                        let _ = out_tx.send((seq, outcome));
                    }
                    Some(ToGateway::Failed(why)) => {
                        tracing::error!(error = %why, "kubernetes: the controller stopped; the last snapshot keeps serving");
                    }
                    None => {}
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the reload thread: the first snapshot serves until a restart");
    }
    crate::wait_shards(running.shards)
}

/// A burst of watch events: the snapshot is due [`QUIET`] after its last
/// event, and at most [`MAX_DELAY`] after its first.
#[derive(Debug, Default, Clone, Copy)]
pub struct Debounce {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    /// An event that changed a document, at `now`.
    pub fn event(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the snapshot is due (`None`: no burst is waiting).
    pub fn due(&self) -> Option<Instant> {
        Some((self.last? + QUIET).min(self.first? + MAX_DELAY))
    }
}

/// What the controller task needs.
struct Settings {
    args: KubeArgs,
    limits: shardgate_routing::LoadLimits,
}

/// Which watched kinds the server serves, as `(index in KINDS, resource)`;
/// `Err` when the API cannot be asked.
async fn discover(client: &kube::Client) -> Result<Vec<(usize, ApiResource)>, String> {
    let mut lists: std::collections::HashMap<String, Option<Vec<String>>> = Default::default();
    let mut out = Vec::new();
    for (i, w) in kinds::KINDS.iter().enumerate() {
        for v in w.api_versions {
            if !lists.contains_key(*v) {
                let (group, version) = kinds::split_api_version(v);
                let r = if group.is_empty() {
                    client.list_core_api_resources(version).await
                } else {
                    client.list_api_group_resources(v).await
                };
                let plurals = match r {
                    Ok(l) => Some(l.resources.into_iter().map(|r| r.name).collect()),
                    Err(kube::Error::Api(e)) if e.code == 404 => None,
                    Err(e) => return Err(format!("discovery of {v}: {e}")),
                };
                lists.insert((*v).to_string(), plurals);
            }
            let served = lists
                .get(*v)
                .and_then(|l| l.as_ref())
                .is_some_and(|l| l.iter().any(|p| p == w.plural));
            if served {
                let (group, version) = kinds::split_api_version(v);
                out.push((
                    i,
                    ApiResource {
                        group: group.to_string(),
                        version: version.to_string(),
                        api_version: (*v).to_string(),
                        kind: w.kind.to_string(),
                        plural: w.plural.to_string(),
                    },
                ));
                break;
            }
        }
    }
    Ok(out)
}

/// The controller task: discovery, watchers, snapshots, status (module doc).
async fn controller(
    settings: Settings,
    tx: mpsc::Sender<ToGateway>,
    mut outcomes: tokio::sync::mpsc::UnboundedReceiver<(u64, Outcome)>,
) {
    let args = settings.args;
    let fail = |why: String| {
        let _ = tx.send(ToGateway::Failed(why));
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "kubernetes: no usable credentials (in-cluster service account or KUBECONFIG): {e}"
            ))
        }
    };
    let sync_deadline = Instant::now() + args.kubernetes_sync_timeout;
    let watched = loop {
        match discover(&client).await {
            Ok(w) => break w,
            Err(e) if Instant::now() < sync_deadline => {
                tracing::warn!(error = %e, "kubernetes: discovery failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return fail(format!("kubernetes: {e}")),
        }
    };
    for (i, w) in kinds::KINDS.iter().enumerate() {
        if !watched.iter().any(|(j, _)| *j == i) {
            tracing::info!(kind = w.kind, versions = %w.api_versions.join(","), "kubernetes: kind not served by the API server (CRD not installed); not watched");
        }
    }
    let kinds: Vec<kinds::WatchedKind> = watched.iter().map(|(i, _)| kinds::KINDS[*i]).collect();
    let resources: Vec<ApiResource> = watched.iter().map(|(_, ar)| ar.clone()).collect();
    let mut store = store::Store::new(
        resources
            .iter()
            .map(|ar| (ar.api_version.clone(), ar.kind.clone()))
            .collect(),
    );
    let mut events =
        futures_util::stream::select_all(resources.iter().enumerate().map(|(j, ar)| {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
            watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |e| (j, e))
                .boxed()
        }));

    // Leader election and the status writer.
    let leader = Arc::new(AtomicBool::new(false));
    let (lead_tx, mut lead_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(lease::default_identity);
    tokio::spawn(lease::run(
        client.clone(),
        lease::LeaseSettings {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity,
            duration: lease::DURATION,
            renew_every: lease::RENEW_EVERY,
        },
        leader.clone(),
        lead_tx,
    ));
    let (status_tx, status_rx) = tokio::sync::watch::channel(Vec::<status::StatusPatch>::new());
    tokio::spawn(write_status(
        client.clone(),
        resources.clone(),
        leader.clone(),
        status_rx,
    ));

    let mut burst = Debounce::default();
    let mut status_dirty = false;
    let mut seq = 0u64;
    let mut sent: Option<Vec<(String, String)>> = None;
    let mut last_iso: Option<(snapshot::Owned, snapshot::Isolated)> = None;
    let mut programmed = status::Programmed::default();
    let mut synced = false;
    loop {
        let fire_at = burst.due();
        tokio::select! {
            ev = events.next() => {
                let Some((j, ev)) = ev else { break };
                match ev {
                    Ok(ev) => {
                        let change = store.apply(j, ev);
                        if change.docs {
                            burst.event(Instant::now());
                        }
                        status_dirty |= change.status;
                    }
                    Err(e) => {
                        let kind = store.type_of(j).map(|(_, k)| k.to_string()).unwrap_or_default();
                        tracing::warn!(kind = %kind, error = %e, "kubernetes: watch failed; retrying with backoff (the last snapshot keeps serving)");
                    }
                }
                if !synced && store.synced() {
                    synced = true;
                    tracing::info!(kinds = kinds.len(), "kubernetes: every watched kind listed");
                }
            }
            _ = tokio::time::sleep_until(fire_at.unwrap_or(sync_deadline)), if fire_at.is_some() && synced => {
                burst = Debounce::default();
                let (docs, owned) = snapshot::select(&store, &kinds, &args.controller_name);
                match snapshot::isolate(docs, &settings.limits) {
                    Ok(iso) => {
                        // Each object left out is logged once, when it is first left out
                        // (its status condition says it for as long as it lasts).
                        for (obj, errs) in &iso.rejected {
                            let before = last_iso.as_ref().and_then(|(_, i)| i.rejected.get(obj));
                            if before != Some(errs) {
                                tracing::warn!(object = %obj, errors = %errs.join("; "), "kubernetes: object left out of the configuration");
                            }
                        }
                        if sent.as_ref() != Some(&iso.sources) {
                            seq += 1;
                            sent = Some(iso.sources.clone());
                            tracing::info!(snapshot = seq, objects = iso.sources.len(), left_out = iso.rejected.len(), "kubernetes: new snapshot");
                            if tx.send(ToGateway::Snapshot(seq, iso.sources.clone())).is_err() {
                                break;
                            }
                        }
                        last_iso = Some((owned, iso));
                        status_dirty = true;
                    }
                    Err(errors) => {
                        for e in &errors {
                            tracing::error!(error = %e, "kubernetes: snapshot invalid; the last one keeps serving");
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(sync_deadline), if !synced => {
                return fail(format!(
                    "kubernetes: no complete list within {:?} (--kubernetes-sync-timeout) of: {}",
                    args.kubernetes_sync_timeout,
                    store.unsynced().join(", ")
                ));
            }
            o = outcomes.recv() => {
                if let Some((s, outcome)) = o {
                    programmed = status::Programmed { snapshot: s, outcome: Some(outcome) };
                    status_dirty = true;
                }
            }
            l = lead_rx.recv() => {
                if let Some(is_leader) = l {
                    tracing::info!(leader = is_leader, "kubernetes: status writer election");
                    status_dirty = true;
                }
            }
        }
        if status_dirty && burst.due().is_none() {
            status_dirty = false;
            if let Some((owned, iso)) = &last_iso {
                let patches = status::desired(&status::Input {
                    kinds: &kinds,
                    store: &store,
                    owned,
                    iso,
                    controller: &args.controller_name,
                    programmed: if programmed.snapshot == seq {
                        programmed.outcome
                    } else {
                        None
                    },
                    address: args.gateway_address.as_deref(),
                    now: status::now(),
                });
                let _ = status_tx.send(patches);
            }
        }
    }
}

/// The status writer: applies the newest set of patches while this replica
/// leads (merge patches on the `status` subresource).
async fn write_status(
    client: kube::Client,
    resources: Vec<ApiResource>,
    leader: Arc<AtomicBool>,
    mut rx: tokio::sync::watch::Receiver<Vec<status::StatusPatch>>,
) {
    while rx.changed().await.is_ok() {
        if !leader.load(Ordering::Acquire) {
            continue;
        }
        let patches = rx.borrow_and_update().clone();
        for p in patches {
            let Some(ar) = resources.get(p.kind_index) else {
                continue;
            };
            let api: Api<DynamicObject> = if p.key.0.is_empty() {
                Api::all_with(client.clone(), ar)
            } else {
                Api::namespaced_with(client.clone(), &p.key.0, ar)
            };
            let body = serde_json::json!({ "status": p.status });
            match api
                .patch_status(&p.key.1, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => {
                    tracing::debug!(kind = %ar.kind, object = %format!("{}/{}", p.key.0, p.key.1), "kubernetes: status written")
                }
                Err(e) => {
                    tracing::warn!(kind = %ar.kind, object = %format!("{}/{}", p.key.0, p.key.1), error = %e, "kubernetes: status write failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod mock_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_due_when_quiet_or_at_the_latest_max_delay_after_its_start() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        assert_eq!(d.due(), None);
        d.event(t0);
        assert_eq!(d.due(), Some(t0 + QUIET));
        // Events every 30 ms push it back, but never past MAX_DELAY.
        for i in 1..=40u32 {
            d.event(t0 + Duration::from_millis(30) * i);
        }
        assert_eq!(d.due(), Some(t0 + MAX_DELAY));
        let mut quiet = Debounce::default();
        quiet.event(t0);
        quiet.event(t0 + Duration::from_millis(20));
        assert_eq!(quiet.due(), Some(t0 + Duration::from_millis(20) + QUIET));
    }
}
