//! The controller's watches: one per kind (FineTuneJobs, the eight child kinds, pods), each filling
//! its part of the [`Caches`] and triggering the owner's reconciliation.
//!
//! What is kept is what the controller reads: FineTuneJobs without `managedFields`; Jobs and pods
//! without them either, with only the labels and annotations the controller reads, Jobs with only
//! `spec.suspend` of their spec and pods with only `spec.nodeName`; of the seven small child kinds
//! (metadata-only watches) an index entry each.

use std::fmt::Debug;

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use lf_api::FineTuneJob;
use lf_render::LABEL_JOB_NAME;
use serde::de::DeserializeOwned;

use super::cache::{Caches, MetaCached};
use super::index::{self, ChildIndex};

/// A watch's objects, as the controller's triggers take them.
pub type Trigger<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// The watches feeding [`Caches`]; the controller polls them (and reconciles their owners).
pub struct Triggers {
    pub ftjs: Trigger<FineTuneJob>,
    pub jobs: Trigger<Job>,
    pub pods: Trigger<Pod>,
    pub service_accounts: Trigger<PartialObjectMeta<ServiceAccount>>,
    pub roles: Trigger<PartialObjectMeta<Role>>,
    pub role_bindings: Trigger<PartialObjectMeta<RoleBinding>>,
    pub config_maps: Trigger<PartialObjectMeta<ConfigMap>>,
    pub services: Trigger<PartialObjectMeta<Service>>,
    pub network_policies: Trigger<PartialObjectMeta<NetworkPolicy>>,
    pub deployments: Trigger<PartialObjectMeta<Deployment>>,
}

/// The API of kind `K` the watches use: every namespace, or only `namespace`.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Starts nothing yet: returns the stores and the watches that fill them once polled. `namespace`:
/// watch only that namespace (a namespace-scoped install), else the whole cluster.
pub fn watch(client: &Client, namespace: Option<&str>) -> (Caches, Triggers) {
    let children = watcher::Config::default().labels(LABEL_JOB_NAME);
    let (ftjs, ftj_trigger) = full(
        api(client, namespace),
        watcher::Config::default(),
        |ftj: &mut FineTuneJob| ftj.managed_fields_mut().clear(),
        false,
    );
    let (jobs, job_trigger) = full(api(client, namespace), children.clone(), slim_job, true);
    let (pods, pod_trigger) = full(api(client, namespace), children.clone(), slim_pod, true);
    let (service_accounts, sa_trigger) = meta(client, namespace, &children);
    let (roles, role_trigger) = meta(client, namespace, &children);
    let (role_bindings, rb_trigger) = meta(client, namespace, &children);
    let (config_maps, cm_trigger) = meta(client, namespace, &children);
    let (services, svc_trigger) = meta(client, namespace, &children);
    let (network_policies, np_trigger) = meta(client, namespace, &children);
    let (deployments, deployment_trigger) = meta(client, namespace, &children);
    (
        Caches {
            ftjs,
            jobs,
            pods,
            service_accounts,
            roles,
            role_bindings,
            config_maps,
            services,
            network_policies,
            deployments,
        },
        Triggers {
            ftjs: ftj_trigger,
            jobs: job_trigger,
            pods: pod_trigger,
            service_accounts: sa_trigger,
            roles: role_trigger,
            role_bindings: rb_trigger,
            config_maps: cm_trigger,
            services: svc_trigger,
            network_policies: np_trigger,
            deployments: deployment_trigger,
        },
    )
}

/// A watch of whole objects, `slim`med before they are stored. `touched`: deletions trigger too
/// (a child's deletion concerns its owner; a FineTuneJob's own deletion needs no reconciliation).
fn full<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
    touched: bool,
) -> (Store<K>, Trigger<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let events = watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer);
    let trigger = if touched {
        events.touched_objects().boxed()
    } else {
        events.applied_objects().boxed()
    };
    (store, trigger)
}

/// A metadata-only watch of a child kind (`Api<PartialObjectMeta<K>>` asks for metadata only),
/// feeding its index.
fn meta<K: MetaCached>(
    client: &Client,
    namespace: Option<&str>,
    config: &watcher::Config,
) -> (ChildIndex, Trigger<PartialObjectMeta<K>>) {
    let (index, mut writer) = index::index();
    let trigger = watcher(
        api::<PartialObjectMeta<K>>(client, namespace),
        config.clone(),
    )
    .default_backoff()
    .inspect(move |event| {
        if let Ok(event) = event {
            writer.apply(event);
        }
    })
    .touched_objects()
    .boxed();
    (index, trigger)
}

/// The labels and annotations the controller reads (the job-name labels map pods to Jobs and
/// FineTuneJobs; the completion index orders a gang's pods).
const KEPT_LABELS: [&str; 4] = [
    LABEL_JOB_NAME,
    "batch.kubernetes.io/job-name",
    "job-name",
    "batch.kubernetes.io/job-completion-index",
];
const KEPT_ANNOTATIONS: [&str; 1] = ["batch.kubernetes.io/job-completion-index"];

/// Metadata as the controller reads it: no `managedFields`, only the labels and annotations it
/// reads (owner references stay: they route a child's events to its FineTuneJob).
fn slim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| KEPT_LABELS.contains(&k.as_str()));
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| KEPT_ANNOTATIONS.contains(&k.as_str()));
    }
}

/// A Job as the controller reads it: metadata, conditions and `spec.suspend` (not the pod
/// template, which is immutable and never compared).
fn slim_job(job: &mut Job) {
    slim_meta(&mut job.metadata);
    if let Some(spec) = job.spec.take() {
        job.spec = Some(JobSpec {
            suspend: spec.suspend,
            ..JobSpec::default()
        });
    }
}

/// A pod as the controller reads it: metadata, status and the node it runs on.
fn slim_pod(pod: &mut Pod) {
    slim_meta(&mut pod.metadata);
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(PodSpec {
            node_name: spec.node_name,
            ..PodSpec::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reconciliations_wait_for_every_watch_to_list_once() {
        let fake = lf_fake_apiserver::FakeApiServer::new().with_crd(&FineTuneJob::definition());
        let (caches, mut triggers) = watch(&fake.client(), None);
        assert_eq!(
            caches.not_ready().len(),
            10,
            "nothing listed before the watches run"
        );
        // Only the Jobs' watch runs: the others still hold reconciliations back.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while caches.not_ready().contains(&"jobs") {
            assert!(
                std::time::Instant::now() < deadline,
                "the Jobs' watch never listed"
            );
            let poll =
                tokio::time::timeout(std::time::Duration::from_millis(10), triggers.jobs.next());
            let _ = poll.await;
        }
        assert_eq!(caches.not_ready().len(), 9);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), caches.ready())
                .await
                .is_err()
        );
    }

    #[test]
    fn cached_jobs_and_pods_keep_what_the_controller_reads() {
        let mut job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "demo-1", "managedFields": [{"manager": "lf-operator"}],
                         "labels": {"lf-operator.io/job-name": "demo", "app.kubernetes.io/name": "lf-trainer"}},
            "spec": {"suspend": true, "template": {"spec": {"containers": [{"name": "trainer"}]}}},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]}
        }))
        .unwrap();
        slim_job(&mut job);
        assert!(job.managed_fields().is_empty());
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.suspend, Some(true));
        assert!(spec.template.spec.is_none());
        assert_eq!(
            job.labels().keys().collect::<Vec<_>>(),
            ["lf-operator.io/job-name"]
        );
        assert!(job.status.is_some());

        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "demo-1-0", "managedFields": [{"manager": "kubelet"}],
                         "annotations": {"batch.kubernetes.io/job-completion-index": "0", "other": "x"}},
            "spec": {"nodeName": "gpu-1", "containers": [{"name": "trainer", "image": "x"}]},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        slim_pod(&mut pod);
        assert!(pod.managed_fields().is_empty());
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("gpu-1"));
        assert!(spec.containers.is_empty());
        assert_eq!(
            pod.annotations().keys().collect::<Vec<_>>(),
            ["batch.kubernetes.io/job-completion-index"]
        );
        assert_eq!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
    }
}
