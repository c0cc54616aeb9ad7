//! Metadata every rendered object carries: the recommended `app.kubernetes.io/*` labels, the
//! `lf-operator.io/job-name` label the controller selects its children by, the namespace, and an
//! owner reference to the FineTuneJob so that deleting it garbage-collects everything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use lf_api::FineTuneJob;

/// The FineTuneJob a child belongs to.
pub const LABEL_JOB_NAME: &str = "lf-operator.io/job-name";
/// The attempt (1, 2, ...) an Indexed Job and its pods belong to.
pub const LABEL_ATTEMPT: &str = "lf-operator.io/attempt";
/// `app.kubernetes.io/name` of every child: the application running in the pods.
pub const APP_NAME: &str = "lf-trainer";
/// `app.kubernetes.io/managed-by` and `app.kubernetes.io/part-of`.
pub const MANAGED_BY: &str = "lf-operator";

/// The namespace objects are rendered into when the FineTuneJob has none (an offline render of a
/// file): `default`, as `kubectl` would use.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What a child does, as its `app.kubernetes.io/component` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The Indexed Job and its pods.
    Trainer,
    /// The headless Service.
    Rendezvous,
    /// The ConfigMap.
    Config,
    /// The ServiceAccount, Role and RoleBinding.
    Rbac,
    /// The server of the result (`spec.serve`): its Deployment, pods, Service and ConfigMap.
    Serve,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Trainer => "trainer",
            Component::Rendezvous => "rendezvous",
            Component::Config => "config",
            Component::Rbac => "rbac",
            Component::Serve => "serve",
        }
    }
}

/// The namespace of the FineTuneJob (or [`DEFAULT_NAMESPACE`]).
pub fn namespace(job: &FineTuneJob) -> String {
    job.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

/// The labels of a child of `job`.
pub fn labels(job: &FineTuneJob, component: Component) -> BTreeMap<String, String> {
    let name = job.metadata.name.clone().unwrap_or_default();
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), name.clone()),
        (
            "app.kubernetes.io/component".to_string(),
            component.as_str().to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
        (
            "app.kubernetes.io/part-of".to_string(),
            MANAGED_BY.to_string(),
        ),
        (LABEL_JOB_NAME.to_string(), name),
    ])
}

/// The labels that select a job's pods of `component`.
pub fn selector(job: &FineTuneJob, component: Component) -> BTreeMap<String, String> {
    let name = job.metadata.name.clone().unwrap_or_default();
    BTreeMap::from([
        (LABEL_JOB_NAME.to_string(), name),
        (
            "app.kubernetes.io/component".to_string(),
            component.as_str().to_string(),
        ),
    ])
}

/// The labels that select a job's trainer pods (every attempt): the Service's selector.
pub fn trainer_selector(job: &FineTuneJob) -> BTreeMap<String, String> {
    selector(job, Component::Trainer)
}

/// The owner reference to the FineTuneJob (`controller: true`, `blockOwnerDeletion: true`).
/// `None` when the FineTuneJob has no UID, i.e. it was read from a file rather than the API server
/// (`lf-operator render`, `lf-operator local`): an owner reference without a UID is invalid.
pub fn owner_reference(job: &FineTuneJob) -> Option<OwnerReference> {
    let uid = job.metadata.uid.clone()?;
    Some(OwnerReference {
        api_version: FineTuneJob::api_version(&()).into_owned(),
        kind: FineTuneJob::kind(&()).into_owned(),
        name: job.metadata.name.clone().unwrap_or_default(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Name, namespace, labels and owner reference of a child.
pub fn object_meta(job: &FineTuneJob, name: String, component: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(job)),
        labels: Some(labels(job, component)),
        owner_references: owner_reference(job).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}
