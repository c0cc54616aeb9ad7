//! Writing the children of a FineTuneJob: server-side apply under the operator's field manager,
//! deletion of children the current attempt no longer renders, and deletion of old attempts.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use lf_api::status::OPERATOR_FIELD_MANAGER;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Server-side applies `object` (which must carry its name) in `namespace`, taking ownership of
/// every field it sets.
pub async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.name_any();
    api.patch(
        &name,
        &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

/// Deletes one object; a missing object is not an error. `foreground`: the object stays until its
/// dependents (a Job's pods) are gone.
pub async fn delete<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    foreground: bool,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let dp = if foreground {
        DeleteParams::foreground()
    } else {
        DeleteParams::background()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes the objects of type `K` labelled as children of the job (`selector`) whose names are
/// not in `keep`. Returns the names deleted.
pub async fn delete_unlisted<K>(
    client: &Client,
    namespace: &str,
    selector: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut deleted = Vec::new();
    for obj in api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
    {
        let name = obj.name_any();
        if !keep.contains(&name) && obj.meta().deletion_timestamp.is_none() {
            delete::<K>(client, namespace, &name, false).await?;
            deleted.push(name);
        }
    }
    Ok(deleted)
}

/// Deletes children of every kind the operator renders, except those named in `keep`
/// (orphans: left over from an earlier plan or attempt).
pub async fn delete_orphans(
    client: &Client,
    namespace: &str,
    selector: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, kube::Error> {
    let mut deleted = Vec::new();
    deleted.extend(delete_unlisted::<ServiceAccount>(client, namespace, selector, keep).await?);
    deleted.extend(delete_unlisted::<Role>(client, namespace, selector, keep).await?);
    deleted.extend(delete_unlisted::<RoleBinding>(client, namespace, selector, keep).await?);
    deleted.extend(delete_unlisted::<ConfigMap>(client, namespace, selector, keep).await?);
    deleted.extend(delete_unlisted::<Service>(client, namespace, selector, keep).await?);
    deleted.extend(delete_unlisted::<Job>(client, namespace, selector, keep).await?);
    Ok(deleted)
}

/// Sets a Job's `spec.suspend` with a merge patch under the operator's field manager (the pod
/// template of a created Job is immutable, so the operator never re-applies it).
pub async fn set_job_suspend(
    client: &Client,
    namespace: &str,
    name: &str,
    suspend: bool,
) -> Result<Job, kube::Error> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let pp = PatchParams {
        field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(
        name,
        &pp,
        &Patch::Merge(serde_json::json!({"spec": {"suspend": suspend}})),
    )
    .await
}
