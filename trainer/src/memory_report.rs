//! The model-state memory a run actually holds, measured from its tensors, next to what the
//! planner (lf-planner) predicts for the same run: one `{"memory": {...}}` line in
//! `trainer_log.jsonl`, written once per attempt after its first optimiser step (optimiser state
//! is created lazily at the first step, so that is when it reaches its steady size).
//!
//! Categories (bytes, per process):
//!
//! | key | measured from |
//! |---|---|
//! | `frozen_weight_bytes` | every base tensor that does not train (under ZeRO-3: this rank's shards of them), as stored: quantised linears as their codes, absmax and double-quantisation constants (the code tables lf-quant shares by all weights are not per tensor and not counted) |
//! | `trainable_weight_bytes` | every trainable tensor (`numel × element size`; under ZeRO-3 this rank's shards): LoRA/DoRA adapters, or the trained base weights of `full`/`freeze` |
//! | `gradient_bytes` | the `.grad` of every trainable tensor |
//! | `optimizer_bytes` | optimiser state on the training device, fp32 master copies included |
//! | `offloaded_optimizer_bytes` | optimiser state and master copies in host memory (`offload_optimizer: cpu`) |
//! | `offloaded_activation_bytes` | the recomputed layers' checkpoints in host memory during the last micro-batch (`offload_activations`; planned for a micro-batch of `cutoff_len`-token sequences) |
//!
//! `planned` holds the same keys from [`lf_planner::memory::Inventory`] for the run's architecture
//! and config, per rank for the run's ZeRO stage and world size (what rank 0, which writes the
//! record, holds; under ZeRO the other ranks hold the same or, for the last ranks of an uneven
//! split, up to one element per tensor less).

use lf_api::training::{OffloadDevice, TrainingConfig};
use lf_api::ModelArchitecture;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::interfaces::{StepOptimizer, TrainModel};

/// Bytes of the model state by category (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBytes {
    pub frozen_weight_bytes: u64,
    pub trainable_weight_bytes: u64,
    pub gradient_bytes: u64,
    /// On the training device, master copies included.
    pub optimizer_bytes: u64,
    /// In host memory (`offload_optimizer: cpu`).
    pub offloaded_optimizer_bytes: u64,
    /// Checkpoints in host memory (`offload_activations`).
    #[serde(default)]
    pub offloaded_activation_bytes: u64,
}

/// The memory line of `trainer_log.jsonl` (inside `{"memory": ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// The optimiser step after which the tensors were measured.
    pub step: u64,
    pub measured: MemoryBytes,
    pub planned: MemoryBytes,
    /// The CUDA caching allocator's peak of allocated bytes up to this step (on a GPU only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_peak_bytes: Option<u64>,
    /// The planner's per-GPU peak for this run (world size, ZeRO stage, micro-batch) less its fixed
    /// overhead (CUDA context, fragmentation reserve): what the allocator peak is compared to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_peak_bytes: Option<u64>,
}

/// `{"memory": MemoryRecord}`: a line other readers of the log (which look for `loss`,
/// `current_steps`, ...) skip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryLine {
    pub memory: MemoryRecord,
}

fn tensor_bytes(t: &Tensor) -> u64 {
    t.numel() as u64 * t.kind().elt_size_in_bytes() as u64
}

/// The planner's figures for `cfg` on `arch`, per rank with ZeRO `stage` over `world` ranks
/// (stage 0 and world 1 for one process).
pub fn planned(
    cfg: &TrainingConfig,
    arch: &ModelArchitecture,
    stage: u8,
    world: usize,
) -> MemoryBytes {
    let inv = lf_planner::memory::Inventory::new(arch, cfg);
    let offload = cfg.offload_optimizer == OffloadDevice::Cpu;
    let n = u32::try_from(world.max(1)).unwrap_or(u32::MAX);
    let states = inv.states(stage, n, offload);
    let weights = |bytes: u64| {
        if stage >= 3 {
            bytes.div_ceil(n as u64)
        } else {
            bytes
        }
    };
    MemoryBytes {
        frozen_weight_bytes: weights(inv.frozen_weight_bytes),
        trainable_weight_bytes: weights(inv.trainable_weight_bytes),
        gradient_bytes: states.gradients,
        optimizer_bytes: states.optimizer,
        offloaded_optimizer_bytes: if offload {
            if stage >= 1 {
                inv.offloaded_optimizer_bytes.div_ceil(n as u64)
            } else {
                inv.offloaded_optimizer_bytes
            }
        } else {
            0
        },
        offloaded_activation_bytes: if cfg.offload_activations.enabled() {
            let recomputed = lf_planner::activations::configured_recomputation(
                cfg,
                arch.num_hidden_layers,
                stage,
            );
            lf_planner::activations::offloaded_checkpoint_bytes(
                arch,
                cfg,
                cfg.per_device_train_batch_size.max(1) as u64,
                recomputed,
            )
        } else {
            0
        },
    }
}

/// The planner's per-GPU peak for `cfg` on `arch` with ZeRO `stage` over `world` ranks, less the
/// fixed overhead the allocator does not see (CUDA context, fragmentation reserve).
pub fn planned_peak(
    cfg: &TrainingConfig,
    arch: &ModelArchitecture,
    stage: u8,
    world: usize,
) -> u64 {
    let input = lf_planner::PlannerInput::new("", arch.clone(), cfg.clone(), u64::MAX);
    let plan = lf_planner::evaluate(
        &input,
        u32::try_from(world.max(1)).unwrap_or(u32::MAX),
        stage,
        cfg.offload_optimizer == OffloadDevice::Cpu,
        u32::try_from(cfg.per_device_train_batch_size.max(1)).unwrap_or(u32::MAX),
    );
    plan.per_gpu
        .peak_bytes
        .saturating_sub(plan.per_gpu.overhead_bytes)
}

/// Measures what `model` and `optimizer` hold now (`params`: the trainable parameters, whose
/// `.grad` is counted), next to the planner's prediction. `None` when the model or the optimiser
/// cannot report its part.
pub fn measure<M: TrainModel + ?Sized, O: StepOptimizer + ?Sized>(
    cfg: &TrainingConfig,
    model: &M,
    optimizer: &O,
    params: &[(String, Tensor)],
    step: u64,
    device: tch::Device,
) -> Option<MemoryRecord> {
    let weights = model.memory()?;
    let opt = optimizer.state_bytes()?;
    let measured = MemoryBytes {
        frozen_weight_bytes: weights.frozen_weight_bytes,
        trainable_weight_bytes: params.iter().map(|(_, p)| tensor_bytes(p)).sum::<u64>()
            + weights.partitioned_trainable_bytes,
        gradient_bytes: optimizer.gradient_bytes(params).unwrap_or_else(|| {
            params
                .iter()
                .map(|(_, p)| p.grad())
                .filter(|g| g.defined())
                .map(|g| tensor_bytes(&g))
                .sum()
        }),
        optimizer_bytes: opt.device,
        offloaded_optimizer_bytes: opt.host,
        offloaded_activation_bytes: weights.offloaded_activation_bytes,
    };
    let (stage, world) = optimizer.partition();
    Some(MemoryRecord {
        step,
        measured,
        planned: planned(cfg, &weights.architecture, stage, world),
        measured_peak_bytes: match device {
            tch::Device::Cuda(i) => lf_dist::cuda_peak_allocated_bytes(i as i64),
            _ => None,
        },
        planned_peak_bytes: Some(planned_peak(cfg, &weights.architecture, stage, world)),
    })
}

/// Measures once, after the first optimiser step of an attempt, and hands the record back (the
/// loop's reporter writes it after the attempt's first progress line, so the log still starts
/// with a progress record).
#[derive(Debug, Default)]
pub struct MemoryProbe {
    done: bool,
}

impl MemoryProbe {
    /// Call right after an optimiser step (`step` counts from 1). Only the first call measures:
    /// it returns the record (also logged); later calls return `None`.
    pub fn after_step<M: TrainModel + ?Sized, O: StepOptimizer + ?Sized>(
        &mut self,
        cfg: &TrainingConfig,
        model: &M,
        optimizer: &O,
        params: &[(String, Tensor)],
        step: u64,
        device: tch::Device,
    ) -> Option<MemoryRecord> {
        if self.done {
            return None;
        }
        self.done = true;
        let record = measure(cfg, model, optimizer, params, step, device)?;
        tracing::info!(
            step = record.step,
            measured = ?record.measured,
            planned = ?record.planned,
            "model-state memory"
        );
        Some(record)
    }
}
