//! Serving what a FineTuneJob trained: `spec.serve` (how) and `status.serving` (what runs).
//!
//! Once the job has Succeeded, the operator runs `lf-trainer serve` on its result behind a
//! Deployment and a Service; the planner sizes each replica's GPU memory (weights, the KV cache
//! for `maxConcurrency` sequences of `maxModelLen` tokens, the decoding workspace).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The port the server listens on unless `spec.serve.port` says otherwise.
pub const DEFAULT_SERVE_PORT: u16 = 8000;
/// Sequences one replica decodes together unless `spec.serve.maxConcurrency` says otherwise.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 16;
/// The most replicas one FineTuneJob may ask for.
pub const MAX_REPLICAS: u32 = 64;

/// Serve the result once the job has Succeeded: a Deployment running `lf-trainer serve`
/// (OpenAI-compatible `/v1/chat/completions`, `/v1/completions`, `/v1/models`; `/generate`,
/// `/health`, `/metrics`) on the final adapter or a checkpoint, and a Service in front of it.
/// Removing `spec.serve` removes them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServeSpec {
    /// Server replicas, one GPU each (0 keeps the Deployment with no pods).
    #[serde(default = "default_replicas")]
    #[schemars(range(max = MAX_REPLICAS))]
    pub replicas: u32,
    /// The port the server listens on and the Service exposes.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1024))]
    pub port: u16,
    /// Serve the checkpoint saved at this step (one of `status.checkpoints`) instead of the final
    /// result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_step: Option<u64>,
    /// Sequences one replica decodes together; more requests wait in its queue. The KV cache is
    /// sized for this many sequences of `maxModelLen` tokens.
    #[serde(default = "default_max_concurrency")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrency: u32,
    /// The longest sequence (prompt and answer) a request may use (default: `training.cutoff_len`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16))]
    pub max_model_len: Option<u32>,
    /// CPU request of a replica (default 2; never a limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory request and limit of a replica (default: the planner's host estimate as the
    /// request, twice that as the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

fn default_replicas() -> u32 {
    1
}

fn default_port() -> u16 {
    DEFAULT_SERVE_PORT
}

fn default_max_concurrency() -> u32 {
    DEFAULT_MAX_CONCURRENCY
}

impl ServeSpec {
    /// The longest sequence served: `maxModelLen`, else the training's `cutoff_len`.
    pub fn max_model_len_or(&self, cutoff_len: usize) -> u64 {
        self.max_model_len.map_or(cutoff_len as u64, u64::from)
    }
}

/// What the operator serves for a FineTuneJob, and how far the rollout is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServingStatus {
    /// The Service's address inside the cluster (`http://<service>.<namespace>.svc:<port>`);
    /// the OpenAI API is under `/v1`.
    pub url: String,
    /// The name a request's `model` gives to reach the trained result (the FineTuneJob's name;
    /// the base model is served too, under its directory's name).
    pub model: String,
    /// What is served: `final` or `checkpoint-<step>`.
    pub served: String,
    /// Replicas asked for.
    pub replicas: u32,
    /// Replicas answering `/health` with the served result.
    pub ready_replicas: u32,
    /// The planner's GPU memory per replica (weights, KV cache, workspace), in bytes.
    pub gpu_memory_bytes: u64,
    /// The KV cache's share of it, in bytes.
    pub kv_cache_bytes: u64,
}
