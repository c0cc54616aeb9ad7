//! Why a pod failed, as a pure function of what it says: the trainer's termination message, the
//! exit code, a disruption condition or an eviction; and which failed pod speaks for the gang.

use k8s_openapi::api::core::v1::Pod;
use lf_api::runtime::{FailureReason, TerminationReport};
use lf_api::status::FailureRecord;

/// A failed pod, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFailure {
    pub record: FailureRecord,
    /// The last complete checkpoint step the trainer reported, if any.
    pub last_checkpoint_step: Option<u64>,
    /// The pod's completion index (for ordering).
    pub index: u32,
}

fn pod_index(pod: &Pod) -> u32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("batch.kubernetes.io/job-completion-index"))
        .or_else(|| {
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("batch.kubernetes.io/job-completion-index"))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn condition_true<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Whether a pod failed, and why. A pod counts as failed when its phase is `Failed`, a container
/// terminated with a non-zero exit code, or it carries `DisruptionTarget=True` (preemption,
/// eviction, node drain).
pub fn classify_pod(pod: &Pod) -> Option<PodFailure> {
    let status = pod.status.as_ref()?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let terminated = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()))
        .find(|t| t.exit_code != 0);
    let disruption = condition_true(pod, "DisruptionTarget");
    let evicted = status.reason.as_deref() == Some("Evicted");
    let failed_phase = status.phase.as_deref() == Some("Failed");
    if terminated.is_none() && disruption.is_none() && !evicted && !failed_phase {
        return None;
    }
    let report = terminated
        .and_then(|t| t.message.as_deref())
        .and_then(TerminationReport::parse);
    let exit_code = terminated
        .map(|t| t.exit_code)
        .or(report.as_ref().map(|r| r.exit_code));
    let (reason, message, hint) = if let Some(c) = disruption {
        let why = [c.reason.as_deref(), c.message.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        (
            FailureReason::Preempted,
            format!("pod {name} was disrupted ({why})"),
            None,
        )
    } else if evicted {
        (
            FailureReason::Preempted,
            format!(
                "pod {name} was evicted: {}",
                status.message.clone().unwrap_or_default()
            ),
            None,
        )
    } else if let Some(r) = &report {
        (r.reason, r.message.clone(), r.hint.clone())
    } else if terminated.and_then(|t| t.reason.as_deref()) == Some("OOMKilled") {
        (
            FailureReason::OutOfMemory,
            format!(
                "container of pod {name} was OOM-killed (exit code {})",
                exit_code.unwrap_or(137)
            ),
            Some(
                "host memory ran out: raise spec.resources.memory, or lower dataloader workers"
                    .into(),
            ),
        )
    } else if let Some(t) = terminated {
        let reason = FailureReason::from_exit_code(t.exit_code);
        let detail = t.message.clone().or(t.reason.clone()).unwrap_or_default();
        (
            reason,
            format!(
                "container of pod {name} exited with code {}{}",
                t.exit_code,
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            ),
            None,
        )
    } else {
        (
            FailureReason::Runtime,
            format!(
                "pod {name} failed: {}",
                status
                    .message
                    .clone()
                    .or(status.reason.clone())
                    .unwrap_or_default()
            ),
            None,
        )
    };
    Some(PodFailure {
        record: FailureRecord {
            reason,
            rank: report.as_ref().and_then(|r| r.rank),
            pod: Some(name),
            node,
            exit_code,
            message,
            hint,
        },
        last_checkpoint_step: report.and_then(|r| r.last_checkpoint_step),
        index: pod_index(pod),
    })
}

/// How telling a reason is about the root cause: peers of a crashed rank fail with communication
/// errors, so those rank last.
fn severity(reason: FailureReason) -> u8 {
    match reason {
        FailureReason::ConfigError => 0,
        FailureReason::NonFinite => 1,
        FailureReason::OutOfMemory => 2,
        FailureReason::Preempted => 3,
        FailureReason::Runtime => 4,
        FailureReason::Communication => 5,
    }
}

/// The failure of the gang: the most telling failed pod (then the lowest index), if any failed.
pub fn gang_failure(pods: &[Pod]) -> Option<PodFailure> {
    pods.iter()
        .filter_map(classify_pod)
        .min_by_key(|f| (severity(f.record.reason), f.index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn classifies_by_termination_message_then_signals() {
        let msg = r#"{"reason":"OutOfMemory","rank":3,"exitCode":3,"message":"CUDA out of memory","hint":"h","lastCheckpointStep":40}"#;
        let p = pod(
            json!({"metadata": {"name": "a"}, "status": {"phase": "Failed", "containerStatuses": [
            {"name": "t", "ready": false, "restartCount": 0, "image": "", "imageID": "",
             "state": {"terminated": {"exitCode": 3, "message": msg}}}]}}),
        );
        let f = classify_pod(&p).unwrap();
        assert_eq!(
            (f.record.reason, f.record.rank, f.last_checkpoint_step),
            (FailureReason::OutOfMemory, Some(3), Some(40))
        );

        let p = pod(
            json!({"metadata": {"name": "b"}, "status": {"phase": "Failed", "containerStatuses": [
            {"name": "t", "ready": false, "restartCount": 0, "image": "", "imageID": "",
             "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}),
        );
        assert_eq!(
            classify_pod(&p).unwrap().record.reason,
            FailureReason::OutOfMemory
        );
        // The same exit code from a plain SIGKILL (what a real kubelet reports as `Error`) is a
        // runtime failure, not a reason to re-plan.
        let p = pod(
            json!({"metadata": {"name": "b2"}, "status": {"phase": "Failed", "containerStatuses": [
            {"name": "t", "ready": false, "restartCount": 0, "image": "", "imageID": "",
             "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}}),
        );
        assert_eq!(
            classify_pod(&p).unwrap().record.reason,
            FailureReason::Runtime
        );

        let p = pod(
            json!({"metadata": {"name": "c"}, "status": {"phase": "Running", "conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]}}),
        );
        assert_eq!(
            classify_pod(&p).unwrap().record.reason,
            FailureReason::Preempted
        );

        let p = pod(
            json!({"metadata": {"name": "d"}, "status": {"phase": "Failed", "containerStatuses": [
            {"name": "t", "ready": false, "restartCount": 0, "image": "", "imageID": "",
             "state": {"terminated": {"exitCode": 2}}}]}}),
        );
        assert_eq!(
            classify_pod(&p).unwrap().record.reason,
            FailureReason::ConfigError
        );

        let p = pod(json!({"metadata": {"name": "e"}, "status": {"phase": "Running"}}));
        assert!(classify_pod(&p).is_none());
    }

    #[test]
    fn gang_failure_prefers_the_root_cause() {
        let failed = |name: &str, idx: u32, code: i32| {
            pod(
                json!({"metadata": {"name": name, "annotations": {"batch.kubernetes.io/job-completion-index": idx.to_string()}},
                "status": {"phase": "Failed", "containerStatuses": [{"name": "t", "ready": false, "restartCount": 0,
                "image": "", "imageID": "", "state": {"terminated": {"exitCode": code}}}]}}),
            )
        };
        let pods = vec![failed("p0", 0, 4), failed("p1", 1, 1), failed("p2", 2, 4)];
        let f = gang_failure(&pods).unwrap();
        assert_eq!(
            (f.record.reason, f.record.pod.as_deref()),
            (FailureReason::Runtime, Some("p1"))
        );
    }
}
