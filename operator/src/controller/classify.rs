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
    // Only the API's word makes a failure a free retry: a disruption condition, an eviction or
    // the pod's deletion. What the trainer says of itself (an interruption report, exit 143)
    // without them is counted like any failure, so that no image can restart forever.
    let deleted = pod.metadata.deletion_timestamp.is_some();
    let (reason, message, hint) = if let Some(c) = disruption {
        let why = [c.reason.as_deref(), c.message.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        interruption(&name, "was disrupted", &why)
    } else if evicted {
        let why = status.message.clone().unwrap_or_default();
        interruption(&name, "was evicted", &why)
    } else if let Some(r) = report
        .as_ref()
        .filter(|r| !self_reported_interruption(r.reason, deleted))
    {
        (r.reason, r.message.clone(), r.hint.clone())
    } else if let Some(r) = &report {
        (
            FailureReason::Runtime,
            format!("{} ({UNEXPLAINED_INTERRUPTION})", r.message),
            r.hint.clone(),
        )
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
        let mut reason = FailureReason::from_exit_code(t.exit_code);
        let mut detail = t.message.clone().or(t.reason.clone()).unwrap_or_default();
        if self_reported_interruption(reason, deleted) {
            reason = FailureReason::Runtime;
            detail = [detail.as_str(), UNEXPLAINED_INTERRUPTION]
                .join(" ")
                .trim()
                .to_string();
        }
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

/// Said of an interruption the trainer reported but the API does not explain.
const UNEXPLAINED_INTERRUPTION: &str =
    "the trainer reported an interruption that no preemption, eviction or deletion of its pod explains: counted as a failure";

/// An interruption the trainer reports of itself while its pod was not deleted.
fn self_reported_interruption(reason: FailureReason, pod_deleted: bool) -> bool {
    reason == FailureReason::Preempted && !pod_deleted
}

/// Whether a kubelet's eviction message says the pod exceeded its own limits (an emptyDir such as
/// `/dev/shm` over its sizeLimit, ephemeral storage over its limit) rather than the node being
/// short: the job's own doing, which a retry repeats.
fn exceeded_own_limits(why: &str) -> bool {
    let why = why.to_ascii_lowercase();
    [
        "exceeds the limit",
        "exceeds the total limit",
        "exceeded its local ephemeral storage limit",
    ]
    .iter()
    .any(|m| why.contains(m))
}

/// A disruption or eviction (`how`, with the API's `why`): free unless the pod exceeded its own
/// limits.
fn interruption(pod: &str, how: &str, why: &str) -> (FailureReason, String, Option<String>) {
    if exceeded_own_limits(why) {
        return (
            FailureReason::Runtime,
            format!("pod {pod} {how} for exceeding its own limits ({why})"),
            Some("the trainer used more /dev/shm or local storage than its pod may: lower dataloader workers or micro-batch, or write less under /tmp".into()),
        );
    }
    (
        FailureReason::Preempted,
        format!("pod {pod} {how} ({why})"),
        None,
    )
}

/// How telling a reason is about the root cause: peers of a crashed rank fail with communication
/// errors, so those rank last.
fn severity(reason: FailureReason) -> u8 {
    match reason {
        FailureReason::ConfigError | FailureReason::OutputVolumeFull => 0,
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
    fn only_the_api_makes_a_failure_free() {
        let evicted = |why: &str| {
            pod(
                json!({"metadata": {"name": "e"}, "status": {"phase": "Failed", "reason": "Evicted", "message": why}}),
            )
        };
        let reason = |p: &Pod| classify_pod(p).map(|f| f.record.reason);
        // The kubelet's messages (pkg/kubelet/eviction): the pod's own limits vs the node's.
        let own = evicted("Usage of EmptyDir volume \"dshm\" exceeds the limit \"64Mi\". ");
        assert_eq!(reason(&own), Some(FailureReason::Runtime));
        let f = classify_pod(&own).unwrap().record;
        assert!(
            f.message.contains("exceeding its own limits") && f.hint.is_some(),
            "{f:?}"
        );
        let storage = evicted(
            "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi. ",
        );
        assert_eq!(reason(&storage), Some(FailureReason::Runtime));
        let container =
            evicted("Container trainer exceeded its local ephemeral storage limit \"1Gi\". ");
        assert_eq!(reason(&container), Some(FailureReason::Runtime));
        let node = evicted("The node was low on resource: memory. ");
        assert_eq!(reason(&node), Some(FailureReason::Preempted));
        let shm_by_kubelet = pod(
            json!({"metadata": {"name": "k"}, "status": {"phase": "Failed", "conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
             "message": "Usage of EmptyDir volume \"dshm\" exceeds the limit \"64Mi\". "}]}}),
        );
        assert_eq!(reason(&shm_by_kubelet), Some(FailureReason::Runtime));

        // The trainer's own word: an interruption report or exit 143 is free only when the pod
        // was deleted (a preemption or drain the API shows).
        let report = r#"{"reason":"Preempted","exitCode":143,"message":"interrupted by SIGTERM"}"#;
        let claimed = |deleted: bool, message: Option<&str>| {
            let mut meta = json!({"name": "s"});
            if deleted {
                meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            let mut terminated = json!({"exitCode": 143});
            if let Some(m) = message {
                terminated["message"] = json!(m);
            }
            pod(
                json!({"metadata": meta, "status": {"phase": "Failed", "containerStatuses": [
                {"name": "t", "ready": false, "restartCount": 0, "image": "", "imageID": "",
                 "state": {"terminated": terminated}}]}}),
            )
        };
        for message in [Some(report), None] {
            let forged = classify_pod(&claimed(false, message)).unwrap().record;
            assert_eq!(forged.reason, FailureReason::Runtime, "{message:?}");
            assert!(
                forged
                    .message
                    .contains("no preemption, eviction or deletion"),
                "{}",
                forged.message
            );
            assert_eq!(
                reason(&claimed(true, message)),
                Some(FailureReason::Preempted),
                "{message:?}"
            );
        }
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
