//! How long a trainer pod may take to stop: long enough to finish the step in flight and save a
//! checkpoint on SIGTERM (preemption, drain, `spec.suspend`), derived from what a checkpoint of
//! this plan writes.
//!
//! The pod's launcher (`lf-trainer`, PID 1 of the container) forwards SIGTERM to its workers and
//! gives them [`env::LAUNCHER_GRACE_SECONDS`](lf_api::runtime::env::LAUNCHER_GRACE_SECONDS) before
//! SIGKILL; the kubelet gives the pod `terminationGracePeriodSeconds` before killing the launcher.
//! The pod's period is the launcher's plus [`LAUNCHER_EXIT_SECONDS`], so the launcher always
//! outlives its workers' save and reports how it ended.

use lf_api::Plan;

/// Finishing the step in flight (an optimiser step of a large model under ZeRO, with its
/// collectives) and the trainer's own exit: the part of the grace that does not depend on size.
pub const STEP_SECONDS: u64 = 60;
/// Sustained write rate assumed for the output volume, all pods together: 100 MiB/s, a network
/// file system or block volume under load (local NVMe is far faster, which only shortens the wait).
pub const WRITE_BYTES_PER_SECOND: u64 = 100 << 20;
/// The launcher's own exit after its workers (status report, termination message).
pub const LAUNCHER_EXIT_SECONDS: u64 = 15;
/// The longest a pod is given (an hour): beyond it a drain would stall for too long.
pub const MAX_GRACE_SECONDS: u64 = 3600;

/// `(launcher grace, pod terminationGracePeriodSeconds)` for `plan`, in seconds.
pub fn termination_grace(plan: &Plan) -> (u64, u64) {
    let save = plan.checkpoint_bytes.div_ceil(WRITE_BYTES_PER_SECOND);
    let launcher = (STEP_SECONDS + save).min(MAX_GRACE_SECONDS - LAUNCHER_EXIT_SECONDS);
    (launcher, launcher + LAUNCHER_EXIT_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(checkpoint_bytes: u64) -> Plan {
        serde_json::from_value(serde_json::json!({
            "modelParams": 0, "trainableParams": 0, "gpus": 1, "nodes": 1, "gpusPerNode": 1,
            "zeroStage": 0, "offloadOptimizer": false, "microBatchSize": 1,
            "gradientAccumulationSteps": 1, "gpuMemoryBytes": 0, "headroomBytes": 0, "fits": true,
            "perGpu": {"weightsBytes": 0, "gradientsBytes": 0, "optimizerBytes": 0,
                       "activationsBytes": 0, "logitsBytes": 0, "buffersBytes": 0,
                       "overheadBytes": 0, "peakBytes": 0},
            "summary": "", "checkpointBytes": checkpoint_bytes
        }))
        .expect("a plan")
    }

    #[test]
    fn grace_grows_with_the_checkpoint_and_the_pod_outlives_the_launcher() {
        // A LoRA adapter of 168 MiB with its Adam state: the fixed part dominates.
        assert_eq!(termination_grace(&plan(168 << 20)), (62, 77));
        // Llama-3-8B full fine-tuning: 8.03e9 × (2 + 4 + 8) bytes ≈ 104.7 GiB → 1073 s to write.
        let (launcher, pod) = termination_grace(&plan(8_030_261_248 * 14));
        assert_eq!(launcher, 60 + (8_030_261_248u64 * 14).div_ceil(100 << 20));
        assert_eq!(pod, launcher + LAUNCHER_EXIT_SECONDS);
        // Capped at an hour for the pod.
        assert_eq!(termination_grace(&plan(1 << 50)), (3585, 3600));
    }
}
