//! Leader election for the status writer, with a `coordination.k8s.io/v1`
//! Lease: many replicas serve (one per node), one writes status.
//!
//! Every [`RENEW_EVERY`] (5 s) each replica reads the Lease and [`decide`]s:
//! create it when there is none, renew it when it holds it, take it over
//! when the holder has not renewed it for `leaseDurationSeconds`
//! ([`DURATION`], 15 s), else follow. Writes carry the `resourceVersion`
//! read, so two replicas that both try to take over race on the API server's
//! optimistic concurrency and exactly one wins (the other gets 409 and
//! follows). A leader that cannot renew steps down once its own lease would
//! have expired. The decision is a pure function of the Lease, the identity
//! and the time, tested without a server; [`run`] is the I/O around it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

/// How long a Lease holds without renewal.
pub const DURATION: Duration = Duration::from_secs(15);
/// How often a replica reads (and, leading, renews) the Lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Where the Lease is and who we are.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// This replica's `holderIdentity`.
    pub identity: String,
    /// `leaseDurationSeconds`.
    pub duration: Duration,
    /// The renewal period.
    pub renew_every: Duration,
}

/// `POD_NAME` is the usual identity; without it, host name and pid.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "shardgate".into());
    format!("{host}-{}", std::process::id())
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// There is none: create it, holding it.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Its holder let it expire (or it has none): take it.
    TakeOver,
    /// Someone else holds it.
    Follow,
}

/// The decision for `spec` (the Lease's, `None` when absent), at `now`.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Action {
    let Some(spec) = spec else {
        return Action::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return Action::Renew;
    }
    if holder.is_empty() {
        return Action::TakeOver;
    }
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15).max(1));
    let last = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match last {
        Some(t) if now.as_second() < t.as_second().saturating_add(secs) => Action::Follow,
        _ => Action::TakeOver,
    }
}

/// The Lease as `identity` writes it for `action` (`old` is what was read).
pub fn lease_for(action: Action, old: Option<&Lease>, s: &LeaseSettings, now: Timestamp) -> Lease {
    let mut lease = old.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            namespace: Some(s.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_default();
    if action != Action::Renew {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(
            spec.lease_transitions
                .unwrap_or(0)
                .saturating_add(i32::from(action == Action::TakeOver)),
        );
    }
    spec.holder_identity = Some(s.identity.clone());
    spec.lease_duration_seconds = Some(s.duration.as_secs().clamp(1, 3600) as i32);
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(spec);
    lease
}

/// One round: read, decide, write. Returns whether we lead afterwards.
pub async fn step(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool, kube::Error> {
    let old = api.get_opt(&s.name).await?;
    let now = Timestamp::now();
    let action = decide(old.as_ref().and_then(|l| l.spec.as_ref()), &s.identity, now);
    let new = lease_for(action, old.as_ref(), s, now);
    let pp = PostParams::default();
    let written = match action {
        Action::Follow => return Ok(false),
        Action::Create => api.create(&pp, &new).await,
        Action::Renew | Action::TakeOver => api.replace(&s.name, &pp, &new).await,
    };
    match written {
        Ok(_) => Ok(true),
        // Someone else wrote it first (409 on replace, or it exists on create).
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Run the election for the life of the process: `leader` says whether this
/// replica writes status; each change is also sent on `changes`.
pub async fn run(
    client: kube::Client,
    s: LeaseSettings,
    leader: Arc<AtomicBool>,
    changes: tokio::sync::mpsc::UnboundedSender<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let mut last_ok = tokio::time::Instant::now();
    loop {
        let was = leader.load(Ordering::Acquire);
        let now_leader = match step(&api, &s).await {
            Ok(l) => {
                last_ok = tokio::time::Instant::now();
                l
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %format!("{}/{}", s.namespace, s.name), "kubernetes: lease update failed");
                // Keep leading only while our lease cannot have expired.
                was && last_ok.elapsed() < s.duration
            }
        };
        if now_leader != was {
            leader.store(now_leader, Ordering::Release);
            if changes.send(now_leader).is_err() {
                return;
            }
        }
        tokio::time::sleep(s.renew_every).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(id: &str) -> LeaseSettings {
        LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: id.into(),
            duration: DURATION,
            renew_every: RENEW_EVERY,
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", t(0)), Action::Create);
        let held = lease_for(Action::Create, None, &settings("a"), t(0));
        let spec = held.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(decide(Some(spec), "a", t(3)), Action::Renew);
        assert_eq!(decide(Some(spec), "b", t(14)), Action::Follow);
        assert_eq!(decide(Some(spec), "b", t(15)), Action::TakeOver);
        let taken = lease_for(Action::TakeOver, Some(&held), &settings("b"), t(15));
        let spec = taken.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.acquire_time, Some(MicroTime(t(15))));
        // A renewal keeps the acquire time.
        let renewed = lease_for(Action::Renew, Some(&taken), &settings("b"), t(20));
        let spec = renewed.spec.as_ref().unwrap();
        assert_eq!(spec.acquire_time, Some(MicroTime(t(15))));
        assert_eq!(spec.renew_time, Some(MicroTime(t(20))));
        let released = LeaseSpec::default();
        assert_eq!(decide(Some(&released), "c", t(0)), Action::TakeOver);
    }
}
