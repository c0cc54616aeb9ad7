//! Scenario tests: the real controller (kube-runtime Controller, watches, server-side apply)
//! against the in-memory API server, with the test playing the Job controller, the kubelet and
//! the trainer.

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use lf_api::runtime::FailureReason;
use lf_api::status::Phase;
use lf_api::FineTuneJob;
use lf_render::RenderContext;
use serde_json::{json, Value};
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
        .position(|r| r.path.contains("/serviceaccounts/"))
        .unwrap();
    assert!(
        status_write < first_child,
        "status written at request {status_write}, first child at {first_child}"
    );
    // Every write is server-side apply (or a merge patch) by the operator's field manager.
    assert!(requests
        .iter()
        .filter(|r| r.method == "PATCH")
        .all(|r| r.field_manager.as_deref() == Some("lf-operator")));

    // Exact bodies: each stored child is the rendered object.
    let ctx = RenderContext {
        default_image: support::config().default_image,
        attempt: 1,
        resume_from: None,
        sidecar_injection_default: false,
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
        env.fake.get_value::<Job>(NS, &rendered.job.name_any()),
    ];
    for (want, got) in rendered.objects().into_iter().zip(stored) {
        let got = strip_server_fields(got.expect("child exists"));
        assert_eq!(strip_server_fields(want), got);
    }
    assert!(env.event_reasons().contains(&"Planned".to_string()));
    env.stop().await;
}

#[tokio::test]
async fn running_pods_then_complete_job_succeed_and_nothing_is_recreated() {
    let mut env = Env::new();
    env.start();
    env.submit(JOB).await;
    env.run_pods("demo-1").await;
    env.until("Running", "demo", |e| {
        e.status("demo").phase == Phase::Running
    })
    .await;
    assert!(env.status("demo").start_time.is_some());

    env.fake
        .set_job_condition(NS, "demo-1", "Complete", "True", "Completed", "")
        .unwrap();
    env.until("Succeeded", "demo", |e| {
        e.status("demo").phase == Phase::Succeeded
    })
    .await;
    let st = env.status("demo");
    assert!(st.completion_time.is_some());
    assert_eq!(st.output.as_deref(), Some("pvc://outputs/demo"));

    // TTL clean-up deletes the Job: a finished job is never re-created.
    env.fake.delete::<Job>(NS, "demo-1").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.job_names("demo").is_empty());
    assert_eq!(env.status("demo").phase, Phase::Succeeded);
    let reasons = env.event_reasons();
    for r in ["Planned", "Started", "Succeeded"] {
        assert!(reasons.contains(&r.to_string()), "{r} in {reasons:?}");
    }
    env.stop().await;
}

#[tokio::test]
async fn pod_failure_with_a_checkpoint_resumes_as_a_new_attempt() {
    let mut env = Env::new();
    env.start();
    env.submit(JOB).await;
    let pods = env.run_pods("demo-1").await;
    env.until("Running", "demo", |e| {
        e.status("demo").phase == Phase::Running
    })
    .await;
    env.trainer_reports("demo", 40, None).await;
    env.until("CheckpointSaved", "demo", |e| {
        e.event_reasons().contains(&"CheckpointSaved".to_string())
    })
    .await;

    env.fail_pod(&pods[0], 1, None, None);
    env.until("attempt 2 Job", "demo", |e| {
        e.job_names("demo") == vec!["demo-2".to_string()]
    })
    .await;
    let st = env.status("demo");
    assert_eq!(st.attempt, Some(2));
    assert_eq!(st.restarts.len(), 1);
    let r = &st.restarts[0];
    assert_eq!(
        (r.attempt, r.reason, r.resumed_from_step, r.counted),
        (2, FailureReason::Runtime, Some(40), true)
    );
    let failure = st.failure.clone().unwrap();
    assert_eq!(
        (failure.reason, failure.exit_code, failure.pod.as_deref()),
        (FailureReason::Runtime, Some(1), Some(pods[0].as_str()))
    );
    assert!(env.pods_of("demo-1").is_empty(), "the old gang is gone");
    assert!(
        env.config_map_text("demo")
            .contains("resume_from_checkpoint: /output/checkpoint-40"),
        "{}",
        env.config_map_text("demo")
    );
    // The trainer's fields survived every operator write, still owned by the trainer.
    assert_eq!(st.checkpoints.len(), 1);
    assert_eq!(st.progress.as_ref().map(|p| p.step), Some(40));
    let managers = env.fake.field_managers::<FineTuneJob>(NS, "demo");
    assert!(
        managers["lf-trainer"].contains(&"status.checkpoints".to_string()),
        "{managers:?}"
    );
    assert!(
        !managers["lf-operator"]
            .iter()
            .any(|p| p == "status.progress" || p == "status.checkpoints"),
        "{managers:?}"
    );

    // The new attempt runs.
    env.run_pods("demo-2").await;
    env.until("Running again", "demo", |e| {
        e.status("demo").phase == Phase::Running
    })
    .await;
    let reasons = env.event_reasons();
    assert!(
        reasons.contains(&"AttemptFailed".to_string()) && reasons.contains(&"Resumed".to_string()),
        "{reasons:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn out_of_memory_replans_with_less_memory_per_gpu() {
    let mut env = Env::new();
    env.start();
    env.submit(JOB).await;
    let pods = env.run_pods("demo-1").await;
    env.until("Running", "demo", |e| {
        e.status("demo").phase == Phase::Running
    })
    .await;
    let before = env.status("demo").plan.unwrap();
    env.trainer_reports("demo", 10, Some(before.per_gpu.peak_bytes + (1 << 30)))
        .await;
    let report = json!({"reason": "OutOfMemory", "rank": 0, "exitCode": 3, "message": "CUDA out of memory", "lastCheckpointStep": 10});
    env.fail_pod(&pods[0], 3, None, Some(&report.to_string()));
    env.until("attempt 2", "demo", |e| e.status("demo").attempt == Some(2))
        .await;
    let st = env.status("demo");
    let after = st.plan.clone().unwrap();
    assert!(
        after.per_gpu.peak_bytes < before.per_gpu.peak_bytes,
        "re-planned peak {} must be below {}",
        after.per_gpu.peak_bytes,
        before.per_gpu.peak_bytes
    );
    assert_eq!(
        after.global_batch(),
        before.global_batch(),
        "the global batch is kept"
    );
    assert_eq!(st.restarts[0].reason, FailureReason::OutOfMemory);
    assert!(st.restarts[0].counted);
    env.until("attempt 2 Job", "demo", |e| {
        e.job_names("demo") == vec!["demo-2".to_string()]
    })
    .await;
    assert!(env.config_map_text("demo").contains(&format!(
        "per_device_train_batch_size: {}",
        after.micro_batch_size
    )));
    env.stop().await;
}

#[tokio::test]
async fn preemption_is_retried_without_using_the_restart_budget() {
    let mut env = Env::new();
    env.start();
    env.submit(&JOB.replace("maxRestarts: 3", "maxRestarts: 0"))
        .await;
    let pods = env.run_pods("demo-1").await;
    env.until("Running", "demo", |e| {
        e.status("demo").phase == Phase::Running
    })
    .await;
    env.fake
        .set_pod_condition(
            NS,
            &pods[0],
            "DisruptionTarget",
            "True",
            "PreemptionByScheduler",
            "preempted by a higher priority pod",
        )
        .unwrap();
    env.until("attempt 2", "demo", |e| e.status("demo").attempt == Some(2))
        .await;
    let st = env.status("demo");
    assert_eq!(
        (st.restarts[0].reason, st.restarts[0].counted),
        (FailureReason::Preempted, false)
    );
    assert_eq!(st.counted_restarts(), 0);

    // With maxRestarts 0, the next real failure ends the job.
    let pods = env.run_pods("demo-2").await;
    env.fail_pod(&pods[0], 1, None, None);
    env.until("Failed", "demo", |e| {
        e.status("demo").phase == Phase::Failed
    })
    .await;
    let st = env.status("demo");
    let failed = st.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "RestartLimitExceeded");
    assert_eq!(env.job_names("demo"), vec!["demo-2".to_string()]);
    env.stop().await;
}

#[tokio::test]
async fn configuration_error_fails_at_once() {
    let mut env = Env::new();
    env.start();
    env.submit(JOB).await;
    let pods = env.run_pods("demo-1").await;
    let report = json!({"reason": "ConfigError", "exitCode": 2, "message": "dataset `alpaca_en` not in dataset_info.json",
                        "hint": "check spec.training.dataset"});
    env.fail_pod(&pods[0], 2, None, Some(&report.to_string()));
    env.until("Failed", "demo", |e| {
        e.status("demo").phase == Phase::Failed
    })
    .await;
    let st = env.status("demo");
    let failure = st.failure.unwrap();
    assert_eq!(failure.reason, FailureReason::ConfigError);
    assert_eq!(failure.hint.as_deref(), Some("check spec.training.dataset"));
    assert!(st.restarts.is_empty());
    assert_eq!(
        st.conditions
            .iter()
            .find(|c| c.type_ == "Failed")
            .unwrap()
            .reason,
        "ConfigError"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        env.job_names("demo"),
        vec!["demo-1".to_string()],
        "no retry"
    );
    env.stop().await;
}

#[tokio::test]
async fn suspend_and_resume_from_the_latest_checkpoint() {
    let mut env = Env::new();
    env.start();
    env.submit(JOB).await;
    env.run_pods("demo-1").await;
    env.until("Running", "demo", |e| {
        e.status("demo").phase == Phase::Running
    })
    .await;
    env.trainer_reports("demo", 60, None).await;

    let api = Api::<FineTuneJob>::namespaced(env.client.clone(), NS);
    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .unwrap();
    env.until("Suspended", "demo", |e| {
        e.status("demo").phase == Phase::Suspended
    })
    .await;
    let job = env.fake.get::<Job>(NS, "demo-1").unwrap();
    assert_eq!(job.spec.unwrap().suspend, Some(true));
    // The Job controller deletes the pods of a suspended Job.
    for p in env.pods_of("demo-1") {
        env.fake.delete::<Pod>(NS, &p).unwrap();
    }

    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    env.until("Job resumed", "demo", |e| {
        e.fake
            .get::<Job>(NS, "demo-1")
            .and_then(|j| j.spec?.suspend)
            == Some(false)
    })
    .await;
    assert!(env
        .config_map_text("demo")
        .contains("resume_from_checkpoint: /output/checkpoint-60"));
    env.run_pods("demo-1").await;
    env.until("Running again", "demo", |e| {
        e.status("demo").phase == Phase::Running
    })
    .await;
    let reasons = env.event_reasons();
    assert!(
        reasons.contains(&"Suspended".to_string()) && reasons.contains(&"Resumed".to_string()),
        "{reasons:?}"
    );
    assert_eq!(
        env.status("demo").attempt,
        Some(1),
        "suspension is not a new attempt"
    );
    env.stop().await;
}

#[tokio::test]
async fn impossible_job_fails_with_the_planners_reason_and_creates_nothing() {
    let mut env = Env::new();
    env.start();
    env.submit(&JOB.replace("gpuMemoryGib: 24", "gpuMemoryGib: 4"))
        .await;
    env.until("Failed", "demo", |e| {
        e.status("demo").phase == Phase::Failed
    })
    .await;
    let st = env.status("demo");
    let planned = st.conditions.iter().find(|c| c.type_ == "Planned").unwrap();
    assert_eq!(
        (planned.status.as_str(), planned.reason.as_str()),
        ("False", "DoesNotFit")
    );
    assert!(
        planned.message.contains("no configuration fits"),
        "{}",
        planned.message
    );
    assert!(st.plan.is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sel = "lf-operator.io/job-name=demo";
    assert!(env.fake.list_values::<Job>(Some(NS), sel).is_empty());
    assert!(env.fake.list_values::<ConfigMap>(Some(NS), sel).is_empty());
    assert!(env
        .fake
        .list_values::<ServiceAccount>(Some(NS), sel)
        .is_empty());
    assert!(env.fake.list_values::<Service>(Some(NS), sel).is_empty());
    assert!(env.event_reasons().contains(&"DoesNotFit".to_string()));
    env.stop().await;
}

#[tokio::test]
async fn operator_restarts_never_duplicate_children_or_restarts() {
    let mut env = Env::new();
    env.start();
    env.submit(JOB).await;
    env.run_pods("demo-1").await;
    env.until("Running", "demo", |e| {
        e.status("demo").phase == Phase::Running
    })
    .await;
    env.stop().await;

    // A crash right after deciding a restart: the status says attempt 2, the old Job still runs.
    let api = Api::<FineTuneJob>::namespaced(env.client.clone(), NS);
    let body = json!({"apiVersion": "lf-operator.io/v1alpha1", "kind": "FineTuneJob", "status": {
        "attempt": 2, "phase": "Pending",
        "restarts": [{"attempt": 2, "reason": "Runtime", "counted": true, "at": "2026-01-01T00:00:00Z"}]}});
    api.patch_status(
        "demo",
        &PatchParams::apply("crash-test").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
    let before = env.ftj("demo").status.unwrap();

    env.start();
    env.until("attempt 2 Job only", "demo", |e| {
        e.job_names("demo") == vec!["demo-2".to_string()]
    })
    .await;
    env.stop().await;
    env.start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = env.status("demo");
    assert_eq!(st.restarts.len(), 1, "the restart is not counted twice");
    assert_eq!(st.plan, before.plan);
    assert_eq!(env.job_names("demo"), vec!["demo-2".to_string()]);
    let sel = "lf-operator.io/job-name=demo";
    assert_eq!(env.fake.list_values::<ConfigMap>(Some(NS), sel).len(), 1);
    assert_eq!(
        env.fake.list_values::<ServiceAccount>(Some(NS), sel).len(),
        1
    );
    assert_eq!(env.fake.list_values::<Role>(Some(NS), sel).len(), 1);
    assert_eq!(env.fake.list_values::<RoleBinding>(Some(NS), sel).len(), 1);
    assert_eq!(env.fake.list_values::<Service>(Some(NS), sel).len(), 1);
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

#[tokio::test]
async fn a_kueue_queued_job_waits_for_admission_and_is_never_resuspended() {
    let mut env = Env::new();
    env.start();
    env.submit(&JOB.replace(
        "  runPolicy:",
        "  scheduling:\n    queueName: team-a\n  runPolicy:",
    ))
    .await;
    env.until("Job demo-1", "demo", |e| {
        e.fake.get::<Job>(NS, "demo-1").is_some()
    })
    .await;
    let job = env.fake.get::<Job>(NS, "demo-1").unwrap();
    assert_eq!(
        job.labels()
            .get("kueue.x-k8s.io/queue-name")
            .map(String::as_str),
        Some("team-a")
    );
    assert_eq!(
        job.spec.as_ref().and_then(|s| s.suspend),
        Some(true),
        "created suspended for Kueue"
    );
    env.until("WaitingForAdmission", "demo", |e| {
        e.status("demo")
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "WaitingForAdmission")
    })
    .await;
    assert_eq!(env.status("demo").phase, Phase::Pending);

    // Kueue admits the Job by unsuspending it (and injects a node selector).
    env.fake
        .modify::<Job>(NS, "demo-1", "kueue", |j| {
            j["spec"]["suspend"] = json!(false);
            j["spec"]["template"]["spec"]["nodeSelector"] = json!({"pool": "a100"});
        })
        .unwrap();
    env.run_pods("demo-1").await;
    env.until("Running", "demo", |e| {
        e.status("demo").phase == Phase::Running
    })
    .await;
    let job = env.fake.get::<Job>(NS, "demo-1").unwrap();
    let spec = job.spec.unwrap();
    assert_eq!(
        spec.suspend,
        Some(false),
        "the operator does not fight Kueue"
    );
    assert_eq!(
        spec.template.spec.unwrap().node_selector.unwrap()["pool"],
        "a100"
    );
    env.stop().await;
}
