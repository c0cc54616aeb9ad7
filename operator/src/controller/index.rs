//! A compact index of one small child kind (ServiceAccount, Role, RoleBinding, ConfigMap,
//! Service), fed by its watch of labelled objects: per object only what the controller reads (its
//! controller and the hash of its rendered content), about 150 bytes instead of the 2 KiB a
//! cached object's metadata takes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use lf_render::LABEL_JOB_NAME;

use super::ownership::{controller_of, Controller};

/// The annotation holding the hash of a child's rendered content, to apply it only when that
/// changed.
pub const RENDERED_HASH: &str = "lf-operator.io/rendered-hash";

/// `(namespace, name)`.
type Key = (String, String);

/// What the controller reads of one cached child.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its [`RENDERED_HASH`], if it has one.
    pub hash: Option<u64>,
    /// Its controller owner reference, if any.
    pub controller: Option<Controller>,
}

#[derive(Default)]
struct State {
    live: HashMap<Key, Entry>,
    /// While the watch (re)lists: the objects listed so far, swapped in when the list is done.
    next: Option<HashMap<Key, Entry>>,
}

/// The reading side.
#[derive(Clone)]
pub struct ChildIndex {
    state: Arc<RwLock<State>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

/// The writing side, fed every event of the watch.
pub struct IndexWriter {
    state: Arc<RwLock<State>>,
    ready: tokio::sync::watch::Sender<bool>,
}

/// An empty index and its writer.
pub fn index() -> (ChildIndex, IndexWriter) {
    let state = Arc::new(RwLock::new(State::default()));
    let (tx, rx) = tokio::sync::watch::channel(false);
    (
        ChildIndex {
            state: state.clone(),
            ready: rx,
        },
        IndexWriter { state, ready: tx },
    )
}

/// The hash a rendered-hash annotation holds.
pub fn parse_hash(annotation: &str) -> Option<u64> {
    u64::from_str_radix(annotation, 16).ok()
}

fn entry<K: Resource>(obj: &K) -> Option<(Key, Entry)> {
    obj.labels().get(LABEL_JOB_NAME)?;
    let key = (obj.namespace()?, obj.name_any());
    let entry = Entry {
        hash: (obj.annotations().get(RENDERED_HASH)).and_then(|h| parse_hash(h)),
        controller: controller_of(obj.meta().owner_references.as_deref()),
    };
    Some((key, entry))
}

impl IndexWriter {
    /// Applies one watch event.
    pub fn apply<K: Resource>(&mut self, event: &watcher::Event<K>) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(obj) => {
                if let Some((k, v)) = entry(obj) {
                    st.live.insert(k, v);
                }
            }
            watcher::Event::Delete(obj) => {
                if let Some(ns) = obj.namespace() {
                    st.live.remove(&(ns, obj.name_any()));
                }
            }
            watcher::Event::Init => st.next = Some(HashMap::new()),
            watcher::Event::InitApply(obj) => {
                if let (Some(next), Some((k, v))) = (st.next.as_mut(), entry(obj)) {
                    next.insert(k, v);
                }
            }
            watcher::Event::InitDone => {
                if let Some(next) = st.next.take() {
                    st.live = next;
                }
                drop(st);
                self.ready.send_replace(true);
            }
        }
    }
}

impl ChildIndex {
    /// Waits until the watch has listed once.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        // An error means the writer is gone (shutting down): nothing to wait for then.
        let _ = ready.wait_for(|r| *r).await;
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// `None`: no such object (as far as the watch of labelled objects knows).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Entry> {
        let key = (namespace.to_string(), name.to_string());
        self.state().live.get(&key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn hash(idx: &ChildIndex, name: &str) -> Option<Option<u64>> {
        idx.get("default", name).map(|e| e.hash)
    }

    fn cm(name: &str, owner: &str, hash: Option<&str>) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("default".into());
        cm.metadata.labels = Some([(LABEL_JOB_NAME.to_string(), owner.to_string())].into());
        cm.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "lf-operator.io/v1alpha1".into(),
            kind: "FineTuneJob".into(),
            name: owner.into(),
            uid: format!("uid-{owner}"),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        if let Some(h) = hash {
            cm.metadata.annotations = Some([(RENDERED_HASH.to_string(), h.to_string())].into());
        }
        cm
    }

    #[test]
    fn follows_the_watch_and_relists_atomically() {
        let (idx, mut w) = index();
        assert!(!*idx.ready.borrow());
        w.apply(&watcher::Event::<ConfigMap>::Init);
        w.apply(&watcher::Event::InitApply(cm(
            "a-config",
            "a",
            Some("00ff"),
        )));
        assert_eq!(hash(&idx, "a-config"), None, "not before the list ends");
        w.apply(&watcher::Event::<ConfigMap>::InitDone);
        assert!(*idx.ready.borrow());
        assert_eq!(hash(&idx, "a-config"), Some(Some(255)));

        w.apply(&watcher::Event::Apply(cm("b-config", "b", None)));
        assert_eq!(hash(&idx, "b-config"), Some(None));
        let controller = |name| idx.get("default", name).and_then(|e| e.controller);
        assert_eq!(controller("b-config").map(|c| c.uid), Some("uid-b".into()));
        let mut foreign = cm("a-foreign", "a", None);
        foreign.metadata.owner_references = None;
        w.apply(&watcher::Event::Apply(foreign));
        assert_eq!(controller("a-foreign"), None, "no controller");
        w.apply(&watcher::Event::Delete(cm("a-foreign", "a", None)));
        assert_eq!(hash(&idx, "a-foreign"), None);

        // A relist replaces everything once it is complete.
        w.apply(&watcher::Event::<ConfigMap>::Init);
        w.apply(&watcher::Event::InitApply(cm("b-config", "b", Some("1"))));
        assert_eq!(hash(&idx, "a-config"), Some(Some(255)));
        w.apply(&watcher::Event::<ConfigMap>::InitDone);
        assert_eq!(hash(&idx, "a-config"), None);
        assert_eq!(hash(&idx, "b-config"), Some(Some(1)));
    }
}
