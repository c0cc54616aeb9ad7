//! The memory plan: what the planner decided and predicts, as the FineTuneJob status shows it and
//! `lf-operator plan -o json` prints it. The planner (`lf-planner`) computes it; nothing else does.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Predicted bytes per GPU, by component. `peak_bytes` is the phase peak (static memory plus the
/// largest transient phase), not the sum of the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryBreakdown {
    /// Model weights held on the GPU (quantised storage included), after ZeRO-3 partitioning.
    pub weights_bytes: u64,
    /// Gradients of trainable parameters (partitioned under ZeRO-2/3).
    pub gradients_bytes: u64,
    /// Optimiser states and fp32 master weights (partitioned under ZeRO-1/2/3; 0 when offloaded).
    pub optimizer_bytes: u64,
    /// Activations saved for backward at the forward/backward peak.
    pub activations_bytes: u64,
    /// Language-model head logits and loss temporaries.
    pub logits_bytes: u64,
    /// Communication buffers (gradient buckets, ZeRO-3 gathered layers).
    pub buffers_bytes: u64,
    /// Fixed per-process overhead (CUDA context, NCCL, allocator fragmentation reserve).
    pub overhead_bytes: u64,
    /// The predicted peak.
    pub peak_bytes: u64,
}

/// A chosen (or evaluated) configuration and its prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Every parameter of the base model.
    pub model_params: u64,
    /// Parameters that receive gradients (adapters, or all for full fine-tuning).
    pub trainable_params: u64,
    pub gpus: u32,
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub zero_stage: u8,
    pub offload_optimizer: bool,
    pub micro_batch_size: u32,
    pub gradient_accumulation_steps: u32,
    /// Memory of one GPU as given (bytes).
    pub gpu_memory_bytes: u64,
    /// Headroom kept free (bytes).
    pub headroom_bytes: u64,
    /// Whether `per_gpu.peak_bytes + headroom_bytes <= gpu_memory_bytes`.
    pub fits: bool,
    pub per_gpu: MemoryBreakdown,
    /// Host (CPU) memory one trainer process needs: the runtime allowance, the offloaded optimiser
    /// state of its partition, loading copies and the ZeRO-3 final save. A pod requests this per
    /// local process, plus its `/dev/shm`, when `spec.resources.memory` is unset.
    #[serde(default)]
    pub host_memory_bytes: u64,
    /// Bytes one checkpoint writes (trainable weights, optimiser states and master copies, all
    /// ranks together): what sizes the pods' termination grace period (time to save on SIGTERM).
    #[serde(default)]
    pub checkpoint_bytes: u64,
    /// Layer recomputation the prediction assumes (the first `recomputed` decoder layers): the
    /// planner's choice under `gradient_checkpointing: auto`, rendered as `recompute_layers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recomputation: Option<Recomputation>,
    /// One line saying what dominates (for status messages).
    pub summary: String,
}

/// How many decoder layers are recomputed in backward, of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recomputation {
    /// Recomputed layers (the first ones); the others keep their activations.
    pub recomputed: u32,
    /// Decoder layers of the model.
    pub layers: u32,
    /// Whether the recomputed layers' checkpoints live in host memory and their dense MLPs run in
    /// tiles (`offload_activations`; the planner's choice under `auto`, rendered as
    /// `offload_activations: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offloaded: bool,
}

impl Plan {
    /// Global batch (sequences per optimiser step).
    pub fn global_batch(&self) -> u64 {
        self.micro_batch_size as u64 * self.gradient_accumulation_steps as u64 * self.gpus as u64
    }
}
