//! The controller's copy of the watched objects: one map per watched kind,
//! fed by kube-rs watcher events (a reflector of our own, so that one task
//! owns every map and no lock is needed).
//!
//! Each object is kept in two parts: its *document* (`apiVersion`, `kind`,
//! `metadata.name/namespace/labels/annotations`, and every top-level field but
//! `status`), which is what a configuration snapshot is made of, and its
//! `status`, `metadata.generation` and `resourceVersion`, which only the status
//! writer reads. Server-filled metadata (`uid`, `resourceVersion`,
//! `managedFields`, timestamps, kubectl's last-applied annotation) is left out
//! of the document, so a status write or a no-op update changes no snapshot.
//!
//! Event handling follows the watcher's protocol: `Init` opens a fresh buffer,
//! `InitApply` fills it, `InitDone` swaps it in (objects missing from a re-list
//! are gone) and marks the kind synced; `Apply` and `Delete` change one object.
//! [`Store::apply`] says whether any document changed, so a status-only update
//! triggers no new snapshot.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use serde_json::Value;

/// `(namespace, name)`; the namespace is `""` for cluster-scoped objects.
pub type Key = (String, String);

/// One stored object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// The document a snapshot is made of (JSON; see the module doc).
    pub doc: Value,
    /// `status` as the API server has it (`Null` when none).
    pub status: Value,
    /// `metadata.generation`.
    pub generation: Option<i64>,
}

/// The objects of one watched kind.
#[derive(Debug, Default)]
pub struct KindObjects {
    /// Whether the first list has completed.
    pub synced: bool,
    /// Current objects.
    pub objects: BTreeMap<Key, Object>,
    /// A re-list in progress.
    pending: Option<BTreeMap<Key, Object>>,
}

/// Every watched kind's objects, by index into the watched list.
#[derive(Debug, Default)]
pub struct Store {
    /// Per watched kind.
    pub kinds: Vec<KindObjects>,
    /// apiVersion and kind written into each kind's documents.
    types: Vec<(String, String)>,
}

/// What an event changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// Some document (what a snapshot is made of) changed.
    pub docs: bool,
    /// Some status (what the status writer compares with) changed.
    pub status: bool,
}

impl Change {
    fn of(old: Option<&Object>, new: Option<&Object>) -> Change {
        Change {
            docs: old.map(|o| &o.doc) != new.map(|o| &o.doc),
            status: old.map(|o| (&o.status, o.generation))
                != new.map(|o| (&o.status, o.generation)),
        }
    }

    fn or(self, o: Change) -> Change {
        Change {
            docs: self.docs || o.docs,
            status: self.status || o.status,
        }
    }
}

/// The key and the stored form of `obj`, typed as `api_version`/`kind`.
pub fn object_of(obj: DynamicObject, api_version: &str, kind: &str) -> (Key, Object) {
    let meta = obj.metadata;
    let key = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    let mut doc = serde_json::Map::new();
    doc.insert("apiVersion".into(), api_version.into());
    doc.insert("kind".into(), kind.into());
    let mut m = serde_json::Map::new();
    m.insert("name".into(), key.1.clone().into());
    if let Some(ns) = &meta.namespace {
        m.insert("namespace".into(), ns.clone().into());
    }
    if let Some(labels) = meta.labels.filter(|l| !l.is_empty()) {
        m.insert("labels".into(), serde_json::json!(labels));
    }
    if let Some(mut ann) = meta.annotations {
        ann.remove("kubectl.kubernetes.io/last-applied-configuration");
        if !ann.is_empty() {
            m.insert("annotations".into(), serde_json::json!(ann));
        }
    }
    doc.insert("metadata".into(), Value::Object(m));
    let mut status = Value::Null;
    if let Value::Object(fields) = obj.data {
        for (k, v) in fields {
            match k.as_str() {
                "status" => status = v,
                "apiVersion" | "kind" | "metadata" => {}
                _ => {
                    doc.insert(k, v);
                }
            }
        }
    }
    (
        key,
        Object {
            doc: Value::Object(doc),
            status,
            generation: meta.generation,
        },
    )
}

impl Store {
    /// A store for kinds typed `(apiVersion, kind)`, in watched order.
    pub fn new(types: Vec<(String, String)>) -> Store {
        Store {
            kinds: types.iter().map(|_| KindObjects::default()).collect(),
            types,
        }
    }

    /// Whether every kind has completed its first list.
    pub fn synced(&self) -> bool {
        self.kinds.iter().all(|k| k.synced)
    }

    /// The kinds (`apiVersion kind`) still waiting for their first list.
    pub fn unsynced(&self) -> Vec<String> {
        self.kinds
            .iter()
            .zip(&self.types)
            .filter(|(k, _)| !k.synced)
            .map(|(_, (v, k))| format!("{k} ({v})"))
            .collect()
    }

    /// `(apiVersion, kind)` of watched kind `i`.
    pub fn type_of(&self, i: usize) -> Option<(&str, &str)> {
        self.types.get(i).map(|(v, k)| (v.as_str(), k.as_str()))
    }

    /// Apply one watcher event for kind `i`.
    pub fn apply(&mut self, i: usize, event: Event<DynamicObject>) -> Change {
        let Some((api_version, kind)) = self.types.get(i).cloned() else {
            return Change::default();
        };
        let Some(k) = self.kinds.get_mut(i) else {
            return Change::default();
        };
        match event {
            Event::Init => {
                k.pending = Some(BTreeMap::new());
                Change::default()
            }
            Event::InitApply(obj) => {
                let (key, o) = object_of(obj, &api_version, &kind);
                k.pending.get_or_insert_with(BTreeMap::new).insert(key, o);
                Change::default()
            }
            Event::InitDone => {
                let fresh = k.pending.take().unwrap_or_default();
                let mut change = Change::default();
                for (key, o) in &k.objects {
                    change = change.or(Change::of(Some(o), fresh.get(key)));
                }
                for (key, o) in &fresh {
                    if !k.objects.contains_key(key) {
                        change = change.or(Change::of(None, Some(o)));
                    }
                }
                k.objects = fresh;
                if !k.synced {
                    // The first list always counts: the kind is now known.
                    change.docs = true;
                }
                k.synced = true;
                change
            }
            Event::Apply(obj) => {
                let (key, o) = object_of(obj, &api_version, &kind);
                let change = Change::of(k.objects.get(&key), Some(&o));
                k.objects.insert(key, o);
                change
            }
            Event::Delete(obj) => {
                let (key, _) = object_of(obj, &api_version, &kind);
                let old = k.objects.remove(&key);
                Change::of(old.as_ref(), None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn dynobj(v: Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    fn slice(name: &str, ip: &str, rv: &str) -> DynamicObject {
        dynobj(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv,
                "uid": "u-1", "managedFields": [{"manager": "kubectl"}],
                "labels": {"kubernetes.io/service-name": "svc"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip]}],
            "ports": [{"port": 80}]
        }))
    }

    fn store() -> Store {
        Store::new(vec![("discovery.k8s.io/v1".into(), "EndpointSlice".into())])
    }

    #[test]
    fn the_initial_list_syncs_and_counts_as_a_change() {
        let mut s = store();
        assert!(!s.synced());
        assert_eq!(s.unsynced(), vec!["EndpointSlice (discovery.k8s.io/v1)"]);
        assert_eq!(s.apply(0, Event::Init), Change::default());
        assert_eq!(
            s.apply(0, Event::InitApply(slice("a", "10.0.0.1", "1"))),
            Change::default()
        );
        assert!(s.kinds[0].objects.is_empty(), "buffered until InitDone");
        assert!(s.apply(0, Event::InitDone).docs);
        assert!(s.synced());
        let o = &s.kinds[0].objects[&("ns".into(), "a".into())];
        // Server-filled metadata is not part of the document.
        assert_eq!(o.doc["metadata"].get("uid"), None);
        assert_eq!(o.doc["metadata"].get("managedFields"), None);
        assert_eq!(o.doc["endpoints"][0]["addresses"][0], "10.0.0.1");
    }

    #[test]
    fn apply_and_delete_report_document_changes_only() {
        let mut s = store();
        s.apply(0, Event::Init);
        s.apply(0, Event::InitDone);
        assert!(s.apply(0, Event::Apply(slice("a", "10.0.0.1", "1"))).docs);
        // A new resourceVersion with the same content: nothing to reload.
        assert!(!s.apply(0, Event::Apply(slice("a", "10.0.0.1", "2"))).docs);
        assert!(s.apply(0, Event::Apply(slice("a", "10.0.0.2", "3"))).docs);
        let mut with_status = slice("a", "10.0.0.2", "4");
        with_status.data["status"] = serde_json::json!({"x": 1});
        let c = s.apply(0, Event::Apply(with_status));
        assert!(!c.docs && c.status);
        assert!(s.apply(0, Event::Delete(slice("a", "10.0.0.2", "5"))).docs);
        assert!(s.kinds[0].objects.is_empty());
    }

    #[test]
    fn a_relist_drops_what_it_no_longer_lists() {
        let mut s = store();
        s.apply(0, Event::Init);
        s.apply(0, Event::InitApply(slice("a", "10.0.0.1", "1")));
        s.apply(0, Event::InitApply(slice("b", "10.0.0.2", "1")));
        s.apply(0, Event::InitDone);
        // The watch broke; the re-list only has `b`, unchanged.
        s.apply(0, Event::Init);
        s.apply(0, Event::InitApply(slice("b", "10.0.0.2", "9")));
        assert_eq!(s.kinds[0].objects.len(), 2, "kept until InitDone");
        assert!(s.apply(0, Event::InitDone).docs);
        let keys: Vec<_> = s.kinds[0].objects.keys().cloned().collect();
        assert_eq!(keys, vec![("ns".to_string(), "b".to_string())]);
        // The same re-list again changes nothing.
        s.apply(0, Event::Init);
        s.apply(0, Event::InitApply(slice("b", "10.0.0.2", "10")));
        assert_eq!(s.apply(0, Event::InitDone), Change::default());
    }
}
