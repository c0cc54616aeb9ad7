//! Scenario tests: the real controller (kube-runtime Controller, watches, server-side apply)
//! against the in-memory API server, with the test playing the Job controller, the kubelet and
//! the trainer. Only what the real control plane (tests/e2e) cannot show stays here: the exact
//! sequence and bodies of the operator's requests, and pod states injected at chosen points
//! (Pending reasons). Every other scenario (success, restarts from a checkpoint, OOM re-plan,
//! preemption, configuration errors, suspend, impossible jobs, operator restarts, Kueue) runs
//! against the real control plane in tests/e2e, and the restart decisions are table-tested in
//! `operator/src/controller/restart.rs`.

mod support;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use lf_api::status::Phase;
use lf_render::RenderContext;
use serde_json::Value;
use support::{Env, JOB, NS};

/// A stored object without what the server adds (uid, resourceVersion, timestamps, generation,
/// status) and the operator's rendered-content hash, to compare with what was rendered.
fn strip_server_fields(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
        ] {
            meta.remove(k);
        }
        // The operator's record of what it rendered (it re-applies a child only when that changes).
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("lf-operator.io/rendered-hash");
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    v
}

#[tokio::test]
async fn create_plans_first_then_applies_exactly_the_rendered_children() {
    let mut env = Env::new();
    env.start();
    env.submit(JOB).await;
    env.until("Job demo-1", "demo", |e| {
        e.fake.get::<Job>(NS, "demo-1").is_some()
    })
    .await;

    let ftj = env.ftj("demo");
    let status = ftj.status.clone().unwrap_or_default();
    let input = lf_planner::PlannerInput::from_job(&ftj).unwrap();
    let expected_plan = lf_planner::search(&input).chosen.unwrap();
    assert_eq!(status.plan.as_ref(), Some(&expected_plan));
    assert_eq!(status.attempt, Some(1));
    assert_eq!(status.method.as_deref(), Some("lora"));
    assert_eq!(status.phase, Phase::Pending, "no pods yet");

    // The plan reached the status before any child was created.
    let requests = env.fake.requests();
    let status_write = requests
        .iter()
        .position(|r| r.path.ends_with("/finetunejobs/demo/status") && r.method == "PATCH")
        .unwrap();
    let first_child = requests
        .iter()
        .position(|r| r.method == "POST" && r.path.contains("/serviceaccounts"))
        .unwrap();
    assert!(
        status_write < first_child,
        "status written at request {status_write}, first child at {first_child}"
    );
    // Every write is a create (of a child the caches did not show), a server-side apply or a
    // merge patch by the operator's field manager (events excepted: kube's recorder writes them).
    let writes: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "PATCH" || r.method == "POST")
        .filter(|r| !r.path.contains("/events"))
        .filter(|r| !(r.method == "POST" && r.path.ends_with("/finetunejobs")))
        .collect();
    assert!(
        writes.iter().any(|r| r.method == "POST"),
        "children are created"
    );
    for r in writes {
        assert_eq!(
            r.field_manager.as_deref(),
            Some("lf-operator"),
            "{} {}",
            r.method,
            r.path
        );
    }

    // Exact bodies: each stored child is the rendered object.
    let ctx = RenderContext {
        default_image: support::config().default_image,
        attempt: 1,
        resume_from: None,
        sidecar_injection_default: false,
        metrics_from: Vec::new(),
    };
    let rendered = lf_render::render(&ftj, &expected_plan, &ctx).unwrap();
    let stored = [
        env.fake
            .get_value::<ServiceAccount>(NS, &rendered.service_account.name_any()),
        env.fake.get_value::<Role>(NS, &rendered.role.name_any()),
        env.fake
            .get_value::<RoleBinding>(NS, &rendered.role_binding.name_any()),
        env.fake
            .get_value::<ConfigMap>(NS, &rendered.config_map.name_any()),
        env.fake
            .get_value::<Service>(NS, &rendered.service.name_any()),
        env.fake
            .get_value::<NetworkPolicy>(NS, &rendered.network_policy.name_any()),
        env.fake.get_value::<Job>(NS, &rendered.job.name_any()),
    ];
    assert_eq!(
        rendered.objects().len(),
        stored.len(),
        "every rendered kind is checked"
    );
    for (want, got) in rendered.objects().into_iter().zip(stored) {
        let got = strip_server_fields(got.expect("child exists"));
        assert_eq!(strip_server_fields(want), got);
    }
    assert!(env.event_reasons().contains(&"Planned".to_string()));
    env.stop().await;
}

#[tokio::test]
async fn pending_pods_explain_why_and_metrics_follow() {
    let mut env = Env::new();
    env.start();
    env.submit(JOB).await;
    env.until("Job demo-1", "demo", |e| {
        e.fake.get::<Job>(NS, "demo-1").is_some()
    })
    .await;
    let pods = env.fake.start_job_pods(NS, "demo-1").unwrap();
    env.fake
        .set_pod_condition(
            NS,
            &pods[0],
            "PodScheduled",
            "False",
            "Unschedulable",
            "0/4 nodes are available: 4 Insufficient nvidia.com/gpu",
        )
        .unwrap();
    env.until("Ready=False Unschedulable", "demo", |e| {
        e.status("demo").conditions.iter().any(|c| {
            c.type_ == "Ready"
                && c.reason == "Unschedulable"
                && c.message.contains("nvidia.com/gpu")
        })
    })
    .await;
    assert_eq!(env.status("demo").phase, Phase::Pending);
    let text = env.metrics.render();
    assert!(
        text.contains("lf_operator_reconciliations_total{result=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains("lf_operator_jobs{phase=\"Pending\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lf_operator_job_predicted_peak_bytes{name=\"demo\",namespace=\"default\"}"),
        "{text}"
    );
    assert!(
        text.contains("lf_operator_reconcile_duration_seconds_count"),
        "{text}"
    );
    env.stop().await;
}
