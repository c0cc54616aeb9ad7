//! What the pods and the Job of an attempt say, as pure functions: is the gang running, did it
//! finish, did the attempt fail, why is it still pending.

use k8s_openapi::api::batch::v1::Job;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use lf_api::runtime::FailureReason;
use lf_api::status::FailureRecord;

use super::classify::{gang_failure, PodFailure};

/// The Job's own verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Active,
    /// `spec.suspend` is true.
    Suspended,
    Complete,
    /// `Failed=True`, with the Job controller's reason and message.
    Failed {
        reason: String,
        message: String,
    },
}

/// The state of a Job from its conditions and `spec.suspend`.
pub fn job_state(job: &Job) -> JobState {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    let is_true = |t: &str| {
        conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if is_true("Complete").is_some() {
        return JobState::Complete;
    }
    if let Some(c) = is_true("Failed") {
        return JobState::Failed {
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        };
    }
    if job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false) {
        return JobState::Suspended;
    }
    JobState::Active
}

/// The failure of the current attempt (Job `job_name`, in `state`), if any: its most telling
/// failed pod, else the Job controller's own `Failed` verdict (deadline, backoff limit). While the
/// FineTuneJob is `suspended` its pods are stopped on purpose (SIGTERM, exit code 143), so a pod
/// then is no failure; the Job's own verdict still is.
pub fn attempt_failure(
    job_name: &str,
    state: &JobState,
    pods: &[Pod],
    suspended: bool,
) -> Option<PodFailure> {
    let pod = if suspended { None } else { gang_failure(pods) };
    pod.or_else(|| match state {
        JobState::Failed { reason, message } => Some(job_failure(job_name, reason, message)),
        _ => None,
    })
}

/// A failure the Job controller reports without a failed pod to read (deadline, backoff limit).
fn job_failure(job_name: &str, reason: &str, message: &str) -> PodFailure {
    PodFailure {
        record: FailureRecord {
            reason: FailureReason::Runtime,
            rank: None,
            pod: None,
            node: None,
            exit_code: None,
            message: format!("Job {job_name} failed ({reason}): {message}"),
            hint: None,
        },
        last_checkpoint_step: None,
        index: 0,
    }
}

/// Whether every pod of a gang of `nodes` pods is running. A pod that has already succeeded
/// counts: between the trainer's exit and the Job controller's `Complete` the gang is finishing,
/// not pending (a real cluster shows that window; the phase must not fall back to Pending).
pub fn gang_running(pods: &[Pod], nodes: u32) -> bool {
    let running = pods
        .iter()
        .filter(|p| {
            matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Running") | Some("Succeeded")
            )
        })
        .count();
    nodes > 0 && running >= nodes as usize
}

/// Why a gang is not running yet, as `(reason, message)`, from the first pod with something to
/// say: unschedulable (no GPUs, a missing PVC), image pull errors, config errors.
pub fn pending_reason(pods: &[Pod], nodes: u32) -> (String, String) {
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        if let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        {
            return (
                c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
                format!(
                    "pod {name} cannot be scheduled: {}",
                    c.message.clone().unwrap_or_default()
                ),
            );
        }
        for cs in status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
        {
            if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                let reason = w.reason.clone().unwrap_or_default();
                if matches!(
                    reason.as_str(),
                    "ImagePullBackOff"
                        | "ErrImagePull"
                        | "InvalidImageName"
                        | "CreateContainerConfigError"
                        | "CreateContainerError"
                        | "CrashLoopBackOff"
                ) {
                    return (
                        reason.clone(),
                        format!(
                            "pod {name}: {reason}: {}",
                            w.message.clone().unwrap_or_default()
                        ),
                    );
                }
            }
        }
    }
    let running = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    (
        "PodsNotRunning".into(),
        format!("{running} of {nodes} pods running"),
    )
}

/// A pod that has been terminating for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminating {
    pub pod: String,
    pub node: Option<String>,
    pub for_how_long: Duration,
}

/// The pod of `pods` that has been terminating longest (by its deletion timestamp), if any.
pub fn longest_terminating(pods: &[Pod]) -> Option<Terminating> {
    let now = k8s_openapi::jiff::Timestamp::now();
    pods.iter()
        .filter_map(|p| {
            let since = p.metadata.deletion_timestamp.as_ref()?;
            Some(Terminating {
                pod: p.metadata.name.clone().unwrap_or_default(),
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                for_how_long: now.duration_since(since.0).try_into().unwrap_or_default(),
            })
        })
        .max_by_key(|t| t.for_how_long)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_suspended_jobs_stopped_pods_are_no_failure() {
        let stopped = pod(
            json!({"metadata": {"name": "p-1-0", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Running", "containerStatuses": [
            {"name": "t", "ready": false, "restartCount": 0, "image": "", "imageID": "",
             "state": {"terminated": {"exitCode": 143}}}]}}),
        );
        let deadline = JobState::Failed {
            reason: "DeadlineExceeded".into(),
            message: "too long".into(),
        };
        let pods = [stopped];
        // (state, suspended) → the failure's reason and whether it names the pod.
        let table = [
            (
                JobState::Active,
                false,
                Some((FailureReason::Preempted, true)),
            ),
            (JobState::Active, true, None),
            (JobState::Suspended, true, None),
            (
                deadline.clone(),
                true,
                Some((FailureReason::Runtime, false)),
            ),
            (deadline, false, Some((FailureReason::Preempted, true))),
        ];
        for (state, suspended, want) in table {
            let got = attempt_failure("p-1", &state, &pods, suspended)
                .map(|f| (f.record.reason, f.record.pod.is_some()));
            assert_eq!(got, want, "{state:?}, suspended {suspended}");
        }
        let f = attempt_failure(
            "p-1",
            &JobState::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "m".into(),
            },
            &[],
            false,
        )
        .unwrap();
        assert_eq!(f.record.message, "Job p-1 failed (BackoffLimitExceeded): m");
    }

    #[test]
    fn pending_reason_names_the_blocker() {
        let p = pod(
            json!({"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes have nvidia.com/gpu"}]}}),
        );
        let (reason, msg) = pending_reason(&[p], 1);
        assert_eq!(reason, "Unschedulable");
        assert!(msg.contains("nvidia.com/gpu"), "{msg}");
        assert_eq!(pending_reason(&[], 2).1, "0 of 2 pods running");
    }

    #[test]
    fn a_finishing_gang_is_still_running() {
        let with_phase = |name: &str, phase: &str| {
            pod(json!({"metadata": {"name": name}, "status": {"phase": phase}}))
        };
        let pods = [with_phase("a", "Succeeded"), with_phase("b", "Running")];
        assert!(gang_running(&pods, 2));
        let pods = [with_phase("a", "Succeeded"), with_phase("b", "Pending")];
        assert!(!gang_running(&pods, 2));
    }
}
