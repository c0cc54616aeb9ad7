//! The Indexed Job of one attempt, and its failure semantics.
//!
//! The operator, not the Job controller, restarts training: one pod failing breaks every rank's
//! collectives, so retrying that pod alone would rejoin a gang that no longer exists (Kubeflow's
//! "never re-rendezvous" reports). Hence:
//! - `backoffLimit: 0`: the first counted pod failure fails the Job, Kubernetes stops the other
//!   pods, and the controller classifies the failure and creates attempt N+1 (a new Job, resuming
//!   from the last checkpoint) or gives up.
//! - `podFailurePolicy`: `FailJob` on the trainer's configuration-error exit code
//!   ([`exit_code::CONFIG`]) and full-output-volume exit code ([`exit_code::OUTPUT_VOLUME_FULL`]), so the Job's `Failed` condition carries reason `PodFailurePolicy`
//!   and the controller fails the FineTuneJob without a retry; `Ignore` for pods with the
//!   `DisruptionTarget` condition (preemption, node drain, eviction), which are replaced without
//!   counting. Their peers' collectives still fail, and the controller, seeing the disruption,
//!   restarts the gang without spending the restart budget.
//! - `podReplacementPolicy: Failed`: a replacement pod starts only once the old one is gone, so an
//!   index never has two pods (and two rank-N processes).
//! - `activeDeadlineSeconds` and `ttlSecondsAfterFinished` from `spec.runPolicy`.
//! - `suspend: true` when the job goes through a Kueue LocalQueue (Kueue admits it by unsuspending;
//!   the controller must not re-assert `suspend` afterwards) or `spec.suspend` is set.

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use lf_api::runtime::exit_code;
use lf_api::{FineTuneJob, Plan};

use crate::context::RenderContext;
use crate::error::RenderError;
use crate::meta::{object_meta, Component, LABEL_ATTEMPT};
use crate::names::job_name;
use crate::pod::{pod_template, CONTAINER_NAME};

/// Kueue's LocalQueue label.
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";

/// The pod failure policy described in the module docs.
pub fn pod_failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(CONTAINER_NAME.into()),
                    operator: "In".into(),
                    values: vec![exit_code::CONFIG, exit_code::OUTPUT_VOLUME_FULL],
                }),
                on_pod_conditions: None,
            },
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_exit_codes: None,
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: Some("True".into()),
                }]),
            },
        ],
    }
}

/// The Indexed Job of attempt `ctx.attempt`.
pub fn job(ftj: &FineTuneJob, plan: &Plan, ctx: &RenderContext) -> Result<Job, RenderError> {
    let spec = &ftj.spec;
    let mut metadata = object_meta(ftj, job_name(ftj, ctx.attempt), Component::Trainer);
    let labels = metadata.labels.get_or_insert_with(Default::default);
    labels.insert(LABEL_ATTEMPT.to_string(), ctx.attempt.to_string());
    if let Some(queue) = &spec.scheduling.queue_name {
        labels.insert(KUEUE_QUEUE_LABEL.to_string(), queue.clone());
    }
    let suspend = spec.scheduling.queue_name.is_some() || spec.suspend;
    let nodes = plan.nodes as i32;
    Ok(Job {
        metadata,
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(nodes),
            parallelism: Some(nodes),
            backoff_limit: Some(0),
            pod_failure_policy: Some(pod_failure_policy()),
            pod_replacement_policy: Some("Failed".into()),
            active_deadline_seconds: spec.run_policy.active_deadline_seconds,
            ttl_seconds_after_finished: spec.run_policy.ttl_seconds_after_finished,
            suspend: Some(suspend),
            template: pod_template(ftj, plan, ctx)?,
            ..JobSpec::default()
        }),
        status: None,
    })
}
