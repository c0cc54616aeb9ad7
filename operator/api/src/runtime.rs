//! The contract between a rendered pod and the trainer running in it: environment variables, file
//! locations, exit codes and the termination message. The operator renders these; the trainer (and
//! the local runner) read them; the operator classifies failures by them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Environment variables the operator sets on every trainer pod.
pub mod env {
    /// Rank 0's stable DNS name (`<job>-0.<service>`), or 127.0.0.1 locally.
    pub const MASTER_ADDR: &str = "MASTER_ADDR";
    pub const MASTER_PORT: &str = "MASTER_PORT";
    /// Number of processes in the whole job.
    pub const WORLD_SIZE: &str = "WORLD_SIZE";
    /// Number of pods (nodes).
    pub const NNODES: &str = "NNODES";
    /// Worker processes (GPUs) per pod.
    pub const NPROC_PER_NODE: &str = "NPROC_PER_NODE";
    /// This pod's index (the Indexed Job's completion index).
    pub const NODE_RANK: &str = "NODE_RANK";
    /// Set by the launcher for each worker process.
    pub const RANK: &str = "RANK";
    pub const LOCAL_RANK: &str = "LOCAL_RANK";
    /// The FineTuneJob this pod belongs to (status reporting).
    pub const JOB_NAME: &str = "LF_JOB_NAME";
    pub const JOB_NAMESPACE: &str = "LF_JOB_NAMESPACE";
    /// The attempt number (restarts + 1), so the trainer labels its reports.
    pub const ATTEMPT: &str = "LF_ATTEMPT";
    /// Path of the rendered training config.
    pub const CONFIG: &str = "LF_CONFIG";
    /// Where the Prometheus endpoint listens (`0.0.0.0:9400` by default).
    pub const METRICS_ADDR: &str = "LF_METRICS_ADDR";
    /// Local runs: a file the trainer appends status updates to (JSON lines) instead of the API.
    pub const STATUS_FILE: &str = "LF_STATUS_FILE";
    /// Elements per gradient bucket of the data-parallel reductions (default: the planner's
    /// `GRADIENT_BUCKET_ELEMENTS`; the planner assumes the default, so set it only to test or to
    /// trade memory for fewer collectives knowingly).
    pub const BUCKET_ELEMENTS: &str = "LF_BUCKET_ELEMENTS";
    /// Seconds the pod's launcher gives its workers between forwarding SIGTERM (or stopping them
    /// after a peer failed) and SIGKILL: the time a worker has to finish its step and save a
    /// checkpoint (default [`super::DEFAULT_LAUNCHER_GRACE_SECONDS`]). Render it below the pod's
    /// `terminationGracePeriodSeconds`, which must also cover the launcher's own exit.
    pub const LAUNCHER_GRACE_SECONDS: &str = "LF_LAUNCHER_GRACE_SECONDS";

    /// A directory of files named after the MLflow variables below, read by the trainer for each
    /// one the environment does not set: in a cluster, the Secret `spec.tracking.secretName`
    /// mounted as files (never environment variables, never the spec itself).
    pub const TRACKING_DIR: &str = "LF_TRACKING_DIR";
    /// MLflow's own variables, read by the trainer for `report_to: mlflow`.
    pub const MLFLOW_TRACKING_URI: &str = "MLFLOW_TRACKING_URI";
    pub const MLFLOW_TRACKING_TOKEN: &str = "MLFLOW_TRACKING_TOKEN";
    pub const MLFLOW_TRACKING_USERNAME: &str = "MLFLOW_TRACKING_USERNAME";
    pub const MLFLOW_TRACKING_PASSWORD: &str = "MLFLOW_TRACKING_PASSWORD";
    pub const MLFLOW_EXPERIMENT_NAME: &str = "MLFLOW_EXPERIMENT_NAME";
    /// Every MLflow variable the trainer reads.
    pub const MLFLOW: [&str; 5] = [
        MLFLOW_TRACKING_URI,
        MLFLOW_TRACKING_TOKEN,
        MLFLOW_TRACKING_USERNAME,
        MLFLOW_TRACKING_PASSWORD,
        MLFLOW_EXPERIMENT_NAME,
    ];
}

/// The launcher's grace when [`env::LAUNCHER_GRACE_SECONDS`] is not set.
pub const DEFAULT_LAUNCHER_GRACE_SECONDS: u64 = 10;

/// Paths inside a trainer pod.
pub mod paths {
    pub const CONFIG_DIR: &str = "/etc/lf-trainer";
    pub const CONFIG_FILE: &str = "/etc/lf-trainer/train.yaml";
    pub const MODEL_DIR: &str = "/models";
    /// `spec.model.adapter`: the PEFT adapter training starts from.
    pub const ADAPTER_DIR: &str = "/adapter";
    pub const DATA_DIR: &str = "/data";
    pub const CHECKPOINT_DIR: &str = "/checkpoints";
    pub const OUTPUT_DIR: &str = "/output";
    pub const SHM_DIR: &str = "/dev/shm";
    /// The tracker settings' Secret (`spec.tracking.secretName`), one file per MLflow variable.
    pub const TRACKING_DIR: &str = "/etc/lf-tracking";
    pub const TERMINATION_LOG: &str = "/dev/termination-log";
}

/// Trainer exit codes.
pub mod exit_code {
    /// Finished.
    pub const OK: i32 = 0;
    /// A runtime failure worth retrying (a crash, a collective timeout).
    pub const RUNTIME: i32 = 1;
    /// Bad configuration or input (config, model files, dataset): retrying cannot help. The
    /// operator's pod failure policy fails the Job at once on this code.
    pub const CONFIG: i32 = 2;
    /// Out of memory (the operator re-plans with more headroom).
    pub const OUT_OF_MEMORY: i32 = 3;
    /// A rendezvous or collective failed (a peer died or the network is misconfigured).
    pub const COMMUNICATION: i32 = 4;
    /// The output volume (or a quota on it) is full (ENOSPC, EDQUOT): retrying the same step
    /// cannot help until space is freed or the PVC enlarged. Termination reason
    /// [`super::OUTPUT_VOLUME_FULL`].
    pub const OUTPUT_VOLUME_FULL: i32 = 5;
    /// Interrupted by a signal (SIGTERM on preemption or drain); the last checkpoint is kept.
    pub const INTERRUPTED: i32 = 143;
}

/// The failure reason of [`exit_code::OUTPUT_VOLUME_FULL`] as the status shows it.
pub const OUTPUT_VOLUME_FULL: &str = "OutputVolumeFull";

/// Why an attempt ended, as the trainer reports it and the operator classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailureReason {
    /// Bad configuration, model or dataset: fail at once.
    ConfigError,
    /// GPU (or host) out of memory: re-plan and retry.
    OutOfMemory,
    /// Rendezvous or collective timeout / peer failure: retry.
    Communication,
    /// Preempted, evicted or the node drained: retry without using the restart budget.
    Preempted,
    /// Anything else: retry within the budget.
    Runtime,
    /// Loss or gradient became NaN/inf: fail (retrying repeats it).
    NonFinite,
    /// The output volume (or a quota on it) is full: fail (retrying the same save cannot help
    /// until space is freed or the PVC enlarged).
    OutputVolumeFull,
}

impl FailureReason {
    /// The exit code the trainer uses for this reason.
    pub fn exit_code(self) -> i32 {
        match self {
            FailureReason::ConfigError | FailureReason::NonFinite => exit_code::CONFIG,
            FailureReason::OutOfMemory => exit_code::OUT_OF_MEMORY,
            FailureReason::Communication => exit_code::COMMUNICATION,
            FailureReason::Preempted => exit_code::INTERRUPTED,
            FailureReason::Runtime => exit_code::RUNTIME,
            FailureReason::OutputVolumeFull => exit_code::OUTPUT_VOLUME_FULL,
        }
    }

    /// The reason an exit code implies when no termination message was written.
    pub fn from_exit_code(code: i32) -> FailureReason {
        match code {
            exit_code::CONFIG => FailureReason::ConfigError,
            exit_code::OUTPUT_VOLUME_FULL => FailureReason::OutputVolumeFull,
            exit_code::OUT_OF_MEMORY => FailureReason::OutOfMemory,
            exit_code::COMMUNICATION => FailureReason::Communication,
            exit_code::INTERRUPTED => FailureReason::Preempted,
            // 137 (SIGKILL) alone is not an OOM: the kubelet reports the kernel OOM killer with
            // reason `OOMKilled`, which the operator reads first. A plain kill (a liveness probe,
            // a person, a node agent) is a runtime failure: retry with the same plan.
            _ => FailureReason::Runtime,
        }
    }
}

/// What the trainer writes to `/dev/termination-log` when it fails (one JSON object). Kubernetes
/// copies it into the container status, where the operator reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TerminationReport {
    pub reason: FailureReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    pub exit_code: i32,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The last checkpoint step the trainer knows to be complete, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint_step: Option<u64>,
}

impl TerminationReport {
    /// Parses a termination message; anything that is not our JSON yields `None`.
    pub fn parse(text: &str) -> Option<TerminationReport> {
        serde_json::from_str(text.trim()).ok()
    }
}
