//! Writing the children of a FineTuneJob: server-side apply under the operator's field manager
//! (of the small children only when their rendered content changed), deletion of children the
//! current attempt no longer renders, and deletion of old attempts.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use lf_api::status::OPERATOR_FIELD_MANAGER;
use lf_render::Rendered;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::cache::{Caches, MetaCached};
use super::index::RENDERED_HASH;

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

/// Deletes the `K` children of `ftj` whose names are not in `keep` (as cached). Returns the names
/// deleted.
async fn delete_unlisted<K: MetaCached>(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    ftj: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, kube::Error> {
    let names = caches.unlisted::<K>(namespace, ftj, keep);
    for name in &names {
        delete::<K>(client, namespace, name, false).await?;
    }
    Ok(names)
}

/// Deletes children of every kind the operator renders, except those named in `keep`
/// (orphans: left over from an earlier plan or attempt).
pub async fn delete_orphans(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    ftj: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, kube::Error> {
    let (c, ns) = (client, namespace);
    let mut deleted = Vec::new();
    deleted.extend(delete_unlisted::<ServiceAccount>(c, caches, ns, ftj, keep).await?);
    deleted.extend(delete_unlisted::<Role>(c, caches, ns, ftj, keep).await?);
    deleted.extend(delete_unlisted::<RoleBinding>(c, caches, ns, ftj, keep).await?);
    deleted.extend(delete_unlisted::<ConfigMap>(c, caches, ns, ftj, keep).await?);
    deleted.extend(delete_unlisted::<Service>(c, caches, ns, ftj, keep).await?);
    for name in caches.unlisted_jobs(ns, ftj, keep) {
        delete::<Job>(c, ns, &name, false).await?;
        deleted.push(name);
    }
    Ok(deleted)
}

/// Applies a small child unless the cache shows it with the same rendered content (its
/// [`RENDERED_HASH`]). Returns whether it was applied.
///
/// Re-applying unchanged children on every reconciliation was most of the operator's API traffic
/// at scale; what is compared is what the operator renders, so a change of spec, plan, attempt or
/// operator version still reaches the object.
pub async fn apply_if_changed<K>(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    object: &K,
) -> Result<bool, kube::Error>
where
    K: MetaCached + Serialize,
{
    let mut object = object.clone();
    let hash = stamp(&mut object);
    if caches.rendered_hash::<K>(namespace, &object.name_any()) == Some(Some(hash)) {
        return Ok(false);
    }
    apply(client, namespace, &object).await?;
    Ok(true)
}

/// Annotates `object` with the hash of its rendered content ([`RENDERED_HASH`]); returns it.
pub fn stamp<K: Resource + Serialize>(object: &mut K) -> u64 {
    object.annotations_mut().remove(RENDERED_HASH);
    let hash = fnv1a(&serde_json::to_vec(object).unwrap_or_default());
    object
        .annotations_mut()
        .insert(RENDERED_HASH.into(), format!("{hash:016x}"));
    hash
}

/// FNV-1a (64 bit): stable across Rust versions and processes, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Applies the current attempt's small children (all but the Job) whose rendered content the
/// cache does not show.
pub async fn apply_small(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    rendered: &Rendered,
) -> Result<(), kube::Error> {
    let (c, ns) = (client, namespace);
    apply_if_changed(c, caches, ns, &rendered.service_account).await?;
    apply_if_changed(c, caches, ns, &rendered.role).await?;
    apply_if_changed(c, caches, ns, &rendered.role_binding).await?;
    apply_if_changed(c, caches, ns, &rendered.config_map).await?;
    apply_if_changed(c, caches, ns, &rendered.service).await?;
    Ok(())
}

/// The names of the current attempt's children (what an orphan sweep keeps).
pub fn names(rendered: &Rendered) -> BTreeSet<String> {
    [
        rendered.service_account.name_any(),
        rendered.role.name_any(),
        rendered.role_binding.name_any(),
        rendered.config_map.name_any(),
        rendered.service.name_any(),
        rendered.job.name_any(),
    ]
    .into_iter()
    .collect()
}

/// The current attempt's Job as it is created: suspended while `spec.suspend`.
pub fn job_to_create(rendered: &Job, suspend: bool) -> Job {
    let mut job = rendered.clone();
    if suspend {
        if let Some(spec) = job.spec.as_mut() {
            spec.suspend = Some(true);
        }
    }
    job
}

/// Suspends or resumes an existing Job as `spec.suspend` says; a Job queued in Kueue (`queued`)
/// is left to Kueue to resume. Returns the Job as it now is.
pub async fn follow_suspend(
    client: &Client,
    namespace: &str,
    existing: Job,
    suspend: bool,
    queued: bool,
) -> Result<Job, kube::Error> {
    let suspended = (existing.spec.as_ref())
        .and_then(|s| s.suspend)
        .unwrap_or(false);
    let name = existing.name_any();
    if suspend && !suspended {
        set_job_suspend(client, namespace, &name, true).await
    } else if !suspend && suspended && !queued {
        // Before resuming, the ConfigMap (applied first) already names the latest checkpoint.
        set_job_suspend(client, namespace, &name, false).await
    } else {
        Ok(existing)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::index::parse_hash;

    #[test]
    fn the_stamp_follows_the_content_only() {
        let mut a = ConfigMap::default();
        a.metadata.name = Some("demo-config".into());
        a.data = Some([("train.yaml".to_string(), "lr: 1e-4".to_string())].into());
        let mut again = a.clone();
        let h = stamp(&mut a);
        assert_eq!(parse_hash(&a.annotations()[RENDERED_HASH]), Some(h));
        assert_eq!(
            stamp(&mut a),
            h,
            "stamping a stamped object changes nothing"
        );
        assert_eq!(stamp(&mut again), h);
        let mut other = again.clone();
        other.data = Some([("train.yaml".to_string(), "lr: 2e-4".to_string())].into());
        assert_ne!(stamp(&mut other), h);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
