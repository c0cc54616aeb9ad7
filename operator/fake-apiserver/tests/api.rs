//! The fake through kube's own client: CRUD, optimistic concurrency, server-side apply conflicts,
//! status subresource, cascade deletion, and watches.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use lf_fake_apiserver::FakeApiServer;
use serde_json::json;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .unwrap()
}

#[tokio::test]
async fn create_get_list_replace_with_resource_version_checks() {
    let fake = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let created = api
        .create(&PostParams::default(), &cm("a", json!({"app": "x"})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("b", json!({"app": "y"})))
        .await
        .unwrap();
    let err = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err}"
    );
    let listed = api
        .list(&ListParams::default().labels("app in (x)"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);

    let mut stale = created.clone();
    let mut fresh = api.get("a").await.unwrap();
    fresh.data = Some([("k".to_string(), "w".to_string())].into());
    let replaced = api
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    stale.data = Some([("k".to_string(), "z".to_string())].into());
    let err = api
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );
    let err = api.get("nope").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err}"
    );
}

#[tokio::test]
async fn server_side_apply_tracks_managers_and_noop_keeps_the_version() {
    let fake = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
    let first = api
        .patch("c", &PatchParams::apply("one"), &Patch::Apply(&body))
        .await
        .unwrap();
    let again = api
        .patch("c", &PatchParams::apply("one"), &Patch::Apply(&body))
        .await
        .unwrap();
    assert_eq!(
        first.metadata.resource_version, again.metadata.resource_version,
        "a no-op apply changes nothing"
    );

    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "9"}});
    let err = api
        .patch("c", &PatchParams::apply("two"), &Patch::Apply(&other))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    api.patch(
        "c",
        &PatchParams::apply("two").force(),
        &Patch::Apply(&other),
    )
    .await
    .unwrap();
    // `one` now applies without `a`: `b` stays (still its), `a` stays (now `two`'s).
    let shrunk = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"b": "2"}});
    let out = api
        .patch("c", &PatchParams::apply("one"), &Patch::Apply(&shrunk))
        .await
        .unwrap();
    assert_eq!(
        out.data.unwrap(),
        [
            ("a".to_string(), "9".to_string()),
            ("b".to_string(), "2".to_string())
        ]
        .into()
    );
    let managers = fake.field_managers::<ConfigMap>("default", "c");
    assert_eq!(managers["two"], vec!["data.a".to_string()]);
}

#[tokio::test]
async fn status_is_a_subresource_and_deletion_cascades() {
    let fake = FakeApiServer::new();
    let jobs: Api<Job> = Api::namespaced(fake.client(), "default");
    let job: Job = serde_json::from_value(json!({"metadata": {"name": "j"}, "spec": {"completions": 2,
        "template": {"metadata": {"labels": {"x": "y"}}, "spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}},
        "status": {"active": 5}})).unwrap();
    let created = jobs.create(&PostParams::default(), &job).await.unwrap();
    assert!(created.status.is_none(), "create ignores status");
    jobs.patch(
        "j",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"active": 1}})),
    )
    .await
    .unwrap();
    assert!(
        jobs.get("j").await.unwrap().status.is_none(),
        "the main resource ignores status"
    );
    jobs.patch_status(
        "j",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"active": 2}})),
    )
    .await
    .unwrap();
    assert_eq!(jobs.get("j").await.unwrap().status.unwrap().active, Some(2));

    let pods = fake.start_job_pods("default", "j").unwrap();
    assert_eq!(pods.len(), 2);
    jobs.delete("j", &DeleteParams::foreground()).await.unwrap();
    assert!(
        fake.list::<Pod>(Some("default"), "").is_empty(),
        "pods go with their Job"
    );
}

#[tokio::test]
async fn watches_stream_changes_after_the_list() {
    let fake = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    api.create(&PostParams::default(), &cm("before", json!({"w": "1"})))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default().labels("w=1"))
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("before"));
    api.create(&PostParams::default(), &cm("ignored", json!({"w": "2"})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("after", json!({"w": "1"})))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.metadata.name.as_deref(), Some("after"));
}
