//! Least privilege for the trainer: a ServiceAccount per FineTuneJob whose Role allows `patch` on
//! that one FineTuneJob's `status` (rank 0 reports progress and checkpoints with server-side
//! apply, which needs no read) and nothing else.
//!
//! The operator can only create this Role because it holds the same permissions itself
//! (Kubernetes' RBAC escalation check); the chart's ClusterRole grants them.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Resource;
use lf_api::FineTuneJob;

use crate::meta::{namespace, object_meta, Component};
use crate::names::service_account_name;

/// The ServiceAccount the trainer pods run as.
pub fn service_account(job: &FineTuneJob) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(job, service_account_name(job), Component::Rbac),
        ..ServiceAccount::default()
    }
}

/// `patch` on `finetunejobs/status`, for this FineTuneJob only.
pub fn role(job: &FineTuneJob) -> Role {
    Role {
        metadata: object_meta(job, service_account_name(job), Component::Rbac),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![FineTuneJob::group(&()).into_owned()]),
            resources: Some(vec![format!("{}/status", FineTuneJob::plural(&()))]),
            resource_names: Some(vec![job.metadata.name.clone().unwrap_or_default()]),
            verbs: vec!["patch".into()],
            non_resource_urls: None,
        }]),
    }
}

/// Binds [`role`] to [`service_account`].
pub fn role_binding(job: &FineTuneJob) -> RoleBinding {
    let name = service_account_name(job);
    RoleBinding {
        metadata: object_meta(job, name.clone(), Component::Rbac),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(namespace(job)),
            api_group: None,
        }]),
    }
}
