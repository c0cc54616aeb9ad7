//! The controller's caches, filled by its watches (see [`watches`](super::watches)), which
//! reconciliations read instead of listing: FineTuneJobs, Jobs and pods as slimmed objects, the
//! seven small child kinds (the servers' Deployments among them) as a [`ChildIndex`] each (their content is compared through the
//! annotation [`RENDERED_HASH`]).
//!
//! [`RENDERED_HASH`]: super::index::RENDERED_HASH

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use lf_api::FineTuneJob;
use lf_render::LABEL_JOB_NAME;
use serde::de::DeserializeOwned;

use super::index::{ChildIndex, Entry};
use super::ownership::controller_of;

/// How long reconciliations wait for the watches' first lists before that is logged.
const READY_WARNING: std::time::Duration = std::time::Duration::from_secs(10);

/// The stores reconciliations read.
#[derive(Clone)]
pub struct Caches {
    pub ftjs: Store<FineTuneJob>,
    pub(super) jobs: Store<Job>,
    pub(super) pods: Store<Pod>,
    pub(super) service_accounts: ChildIndex,
    pub(super) roles: ChildIndex,
    pub(super) role_bindings: ChildIndex,
    pub(super) config_maps: ChildIndex,
    pub(super) services: ChildIndex,
    pub(super) network_policies: ChildIndex,
    /// The result servers' Deployments (`spec.serve`).
    pub(super) deployments: ChildIndex,
}

/// The small child kinds, indexed by [`ChildIndex`] and applied when their rendered content
/// changes.
pub trait MetaCached:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    fn index(caches: &Caches) -> &ChildIndex;
}

macro_rules! meta_cached {
    ($($kind:ty => $field:ident),*) => {$(
        impl MetaCached for $kind {
            fn index(caches: &Caches) -> &ChildIndex {
                &caches.$field
            }
        }
    )*};
}
meta_cached!(
    ServiceAccount => service_accounts,
    Role => roles,
    RoleBinding => role_bindings,
    ConfigMap => config_maps,
    Service => services,
    NetworkPolicy => network_policies,
    Deployment => deployments
);

/// Whether an object is labelled as a child of the FineTuneJob `name` in `namespace`.
fn child_of<K: Resource>(obj: &K, namespace: &str, name: &str) -> bool {
    obj.meta().namespace.as_deref() == Some(namespace)
        && obj
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_JOB_NAME))
            .is_some_and(|v| v == name)
}

/// Whether `obj`'s controller owner reference names the UID `uid`.
pub fn controlled_by<K: Resource>(obj: &K, uid: &str) -> bool {
    controller_of(obj.meta().owner_references.as_deref()).is_some_and(|c| c.uid == uid)
}

impl Caches {
    /// Waits until every watch has listed once (before that, a missing child proves nothing).
    pub async fn ready(&self) {
        let all = async {
            // A dropped writer means the controller is shutting down; nothing to wait for then.
            let _ = futures::join!(
                self.ftjs.wait_until_ready(),
                self.jobs.wait_until_ready(),
                self.pods.wait_until_ready(),
                self.service_accounts.wait_until_ready(),
                self.roles.wait_until_ready(),
                self.role_bindings.wait_until_ready(),
                self.config_maps.wait_until_ready(),
                self.services.wait_until_ready(),
                self.network_policies.wait_until_ready(),
                self.deployments.wait_until_ready(),
            );
        };
        tokio::pin!(all);
        if tokio::time::timeout(READY_WARNING, &mut all).await.is_err() {
            tracing::warn!(
                waiting_for = ?self.not_ready(),
                "reconciliations wait for the first list of these watches (permissions? API server?)"
            );
            all.await;
        }
    }

    /// The kinds whose watch has not listed yet.
    pub(super) fn not_ready(&self) -> Vec<&'static str> {
        use futures::FutureExt;
        fn listed<K>(store: &Store<K>) -> bool
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            store.wait_until_ready().now_or_never().is_some()
        }
        let indexed = |index: &ChildIndex| index.wait_until_ready().now_or_never().is_some();
        [
            ("finetunejobs", listed(&self.ftjs)),
            ("jobs", listed(&self.jobs)),
            ("pods", listed(&self.pods)),
            ("serviceaccounts", indexed(&self.service_accounts)),
            ("roles", indexed(&self.roles)),
            ("rolebindings", indexed(&self.role_bindings)),
            ("configmaps", indexed(&self.config_maps)),
            ("services", indexed(&self.services)),
            ("networkpolicies", indexed(&self.network_policies)),
            ("deployments", indexed(&self.deployments)),
        ]
        .into_iter()
        .filter(|(_, ready)| !ready)
        .map(|(kind, _)| kind)
        .collect()
    }

    /// The Job `name` in `namespace`, as cached.
    pub fn job(&self, namespace: &str, name: &str) -> Option<Job> {
        self.jobs
            .get(&ObjectRef::new(name).within(namespace))
            .map(|j| (*j).clone())
    }

    /// The Jobs labelled as children of the FineTuneJob `ftj` and controlled by it (`uid`).
    pub fn jobs_of(&self, namespace: &str, ftj: &str, uid: &str) -> Vec<Arc<Job>> {
        (self.jobs).state_filter(|j| child_of(j, namespace, ftj) && controlled_by(j, uid))
    }

    /// The pods labelled as children of the FineTuneJob `ftj`.
    pub fn pods_of(&self, namespace: &str, ftj: &str) -> Vec<Pod> {
        self.pods
            .state_filter(|p| child_of(p, namespace, ftj))
            .iter()
            .map(|p| (**p).clone())
            .collect()
    }

    /// A small child as cached (its rendered hash and controller), if it exists.
    pub fn child<K: MetaCached>(&self, namespace: &str, name: &str) -> Option<Entry> {
        K::index(self).get(namespace, name)
    }

    /// The names of the Jobs that `ftj` (UID `uid`) controls and that are not in `keep` and not
    /// being deleted, sorted.
    pub fn unlisted_jobs(
        &self,
        namespace: &str,
        ftj: &str,
        uid: &str,
        keep: &BTreeSet<String>,
    ) -> Vec<String> {
        let mut names: Vec<String> = (self.jobs)
            .state_filter(|j| {
                child_of(j, namespace, ftj)
                    && controlled_by(j, uid)
                    && j.meta().deletion_timestamp.is_none()
                    && !keep.contains(&j.name_any())
            })
            .iter()
            .map(|j| j.name_any())
            .collect();
        names.sort();
        names
    }
}
