//! What the planner reads: [`PlannerInput`], built from a FineTuneJob (its architecture, training
//! config and resources, each checked) or given directly, and the choices it allows the search.

use lf_api::crd::{OffloadChoice, ResourcesSpec, ZeroStageChoice, MAX_GPUS, MAX_GPUS_PER_NODE};
use lf_api::training::{OffloadDevice, TrainingConfig};
use lf_api::{FineTuneJob, ModelArchitecture};

use crate::error::PlanError;
use crate::presets::preset;

/// Everything the planner reads.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannerInput {
    /// For messages and the table (e.g. `meta-llama/Meta-Llama-3-8B`).
    pub model_name: String,
    pub arch: ModelArchitecture,
    pub training: TrainingConfig,
    /// Memory of one GPU (bytes).
    pub gpu_memory_bytes: u64,
    /// Fraction of GPU memory kept free on top of the prediction.
    pub headroom: f64,
    pub gpus_per_node: u32,
    pub max_gpus: u32,
    /// `spec.resources.gpus`: only this GPU count is considered.
    pub fixed_gpus: Option<u32>,
    pub zero: ZeroStageChoice,
    pub offload: OffloadChoice,
    /// Multiplies every predicted peak before the fit test (1.0; raised after a measured OOM).
    pub peak_scale: f64,
}

impl PlannerInput {
    /// A planner input with the defaults of a FineTuneJob (10% headroom, one GPU, auto choices).
    pub fn new(
        model_name: impl Into<String>,
        arch: ModelArchitecture,
        training: TrainingConfig,
        gpu_memory_bytes: u64,
    ) -> Self {
        PlannerInput {
            model_name: model_name.into(),
            arch,
            training,
            gpu_memory_bytes,
            headroom: 0.1,
            gpus_per_node: 1,
            max_gpus: 1,
            fixed_gpus: None,
            zero: ZeroStageChoice::Auto,
            offload: OffloadChoice::Auto,
            peak_scale: 1.0,
        }
    }

    /// The input for a FineTuneJob: its architecture (inline or preset), training config and
    /// resources.
    pub fn from_job(job: &FineTuneJob) -> Result<Self, PlanError> {
        let arch = resolve_architecture(job)?;
        let spec = &job.spec;
        let invalid = |key: &str, message: String| PlanError::InvalidInput {
            key: key.into(),
            message,
        };
        spec.training
            .validate()
            .map_err(|e| invalid("spec.training", e.to_string()))?;
        if spec.training.finetuning_type == lf_api::training::FinetuningType::Lora {
            // The names must be the model's own (Phi-3 fuses q/k/v and gate/up).
            spec.training
                .lora_targets_for(&arch)
                .map_err(|e| invalid("spec.training", e.to_string()))?;
        }
        let r = &spec.resources;
        if !(r.gpu_memory_gib.is_finite() && r.gpu_memory_gib >= 1.0) {
            return Err(invalid(
                "spec.resources.gpuMemoryGib",
                format!(
                    "{} GiB; give the memory of one GPU, e.g. 80",
                    r.gpu_memory_gib
                ),
            ));
        }
        check_gpu_limits(r)?;
        if r.gpus_per_node == 0 {
            return Err(invalid(
                "spec.resources.gpusPerNode",
                "must be at least 1".into(),
            ));
        }
        if r.max_gpus() == 0 {
            return Err(invalid(
                "spec.resources.maxGpus",
                "must be at least 1".into(),
            ));
        }
        if let Some(g) = r.gpus {
            let per_node = r.gpus_per_node.max(1);
            if g == 0 || (g > per_node && g % per_node != 0) {
                return Err(invalid(
                    "spec.resources.gpus",
                    format!("{g} is neither at most gpusPerNode ({per_node}) nor a multiple of it: every pod runs gpusPerNode processes"),
                ));
            }
            if r.max_gpus.is_some_and(|max| g > max) {
                return Err(invalid(
                    "spec.resources.gpus",
                    format!("{g} exceeds maxGpus ({})", r.max_gpus()),
                ));
            }
        }
        // A DeepSpeed config inside `spec.training` fixes what it sets; the pods get the mapped
        // keys (lf-render applies it the same way), never the object itself.
        let training = spec
            .training
            .with_deepspeed_applied()
            .map_err(|e| invalid("spec.training", e.to_string()))?
            .config;
        let (zero, offload) = deepspeed_choices(job)?;
        let headroom = r.headroom();
        if !(0.0..=0.9).contains(&headroom) {
            return Err(invalid(
                "spec.resources.headroom",
                format!("{headroom} is outside [0, 0.9]"),
            ));
        }
        Ok(PlannerInput {
            model_name: spec.model.name.clone(),
            arch,
            training,
            gpu_memory_bytes: r.gpu_memory_bytes(),
            headroom,
            gpus_per_node: r.gpus_per_node.min(r.gpus.unwrap_or(r.max_gpus())),
            max_gpus: r.gpus.unwrap_or(r.max_gpus()),
            fixed_gpus: r.gpus,
            zero,
            offload,
            peak_scale: 1.0,
        })
    }

    /// Bytes kept free.
    pub fn headroom_bytes(&self) -> u64 {
        (self.gpu_memory_bytes as f64 * self.headroom) as u64
    }

    /// The requested global batch: `per_device_train_batch_size × gradient_accumulation_steps`.
    pub fn target_global_batch(&self) -> u64 {
        (self.training.per_device_train_batch_size.max(1)
            * self.training.gradient_accumulation_steps.max(1)) as u64
    }

    /// GPU counts the search considers, in increasing order: the counts within one node (1 …
    /// `gpus_per_node`), then whole nodes up to `max_gpus`. Both lists are [`spaced`]: dense up
    /// to a point, then each count at most 1/8 above the previous one (so the chosen count is at
    /// most 12.5% above the fewest that fit), ending at the largest allowed count. Whatever the
    /// input, the list stays short (a few hundred entries for `u32::MAX` GPUs) and no arithmetic
    /// overflows: the search's work is bounded.
    pub fn gpu_candidates(&self) -> Vec<u32> {
        if let Some(g) = self.fixed_gpus {
            return vec![g];
        }
        let per_node = self.gpus_per_node.max(1);
        let max = self.max_gpus.max(1);
        let mut out = spaced(per_node.min(max), MAX_GPUS_PER_NODE);
        // nodes <= max / per_node, so every product is at most max.
        let whole_nodes = spaced(max / per_node, 16).into_iter().filter(|n| *n >= 2);
        out.extend(whole_nodes.map(|nodes| nodes * per_node));
        out
    }

    pub(crate) fn stages(&self, gpus: u32) -> Vec<u8> {
        match self.zero.fixed() {
            Some(stage) => vec![stage],
            None if gpus <= 1 => vec![0],
            // Only the stages the trainer runs this config with (the reasons are at
            // `highest_zero_stage`).
            None => (0..=self.training.highest_zero_stage()).collect(),
        }
    }

    pub(crate) fn offload_passes(&self) -> Vec<bool> {
        match self.offload {
            OffloadChoice::None => vec![false],
            OffloadChoice::Cpu => vec![true],
            OffloadChoice::Auto => vec![false, true],
        }
    }

    /// Micro-batches tried: the requested one, halved down to 1 (`stage: kto`: 2).
    pub(crate) fn micro_batches(&self) -> Vec<u32> {
        let mut m = self.training.per_device_train_batch_size.max(1) as u32;
        // KTO's KL term pairs each example with another of its micro-batch: at least 2.
        let least = if self.training.stage == lf_api::training::Stage::Kto {
            2.min(m)
        } else {
            1
        };
        let mut out = vec![m];
        while m / 2 >= least && m > 1 {
            m /= 2;
            out.push(m);
        }
        out
    }
}

/// 1 … `limit`: every count up to `dense`, then steps of at most 1/8 of the count, and `limit`
/// itself. Fewer than 200 entries past `dense` for any `u32`.
fn spaced(limit: u32, dense: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut n: u32 = 1;
    while n < limit {
        out.push(n);
        let step = if n < dense { 1 } else { (n / 8).max(1) };
        n = match n.checked_add(step) {
            Some(next) => next,
            None => break,
        };
    }
    if limit >= 1 {
        out.push(limit);
    }
    out
}

/// The CRD's maxima ([`MAX_GPUS`], [`MAX_GPUS_PER_NODE`]), checked again here: an object
/// stored before they existed, or read from a file, must fail in microseconds with the limit in
/// the message, never reach the search.
fn check_gpu_limits(r: &ResourcesSpec) -> Result<(), PlanError> {
    let over = |key: &str, value: u32, limit: u32| PlanError::InvalidInput {
        key: key.into(),
        message: format!("{value} exceeds the limit of {limit} GPUs a FineTuneJob may ask for"),
    };
    if r.gpus_per_node > MAX_GPUS_PER_NODE {
        return Err(over(
            "spec.resources.gpusPerNode",
            r.gpus_per_node,
            MAX_GPUS_PER_NODE,
        ));
    }
    if let Some(max) = r.max_gpus.filter(|m| *m > MAX_GPUS) {
        return Err(over("spec.resources.maxGpus", max, MAX_GPUS));
    }
    if let Some(g) = r.gpus.filter(|g| *g > MAX_GPUS) {
        return Err(over("spec.resources.gpus", g, MAX_GPUS));
    }
    Ok(())
}

/// The architecture to plan a job with: `spec.model.architecture` when given, else the preset for
/// `spec.model.name`, else an error telling the user to paste the model's `config.json`.
pub fn resolve_architecture(job: &FineTuneJob) -> Result<ModelArchitecture, PlanError> {
    if let Some(arch) = &job.spec.model.architecture {
        arch.validate().map_err(|e| PlanError::InvalidInput {
            key: "spec.model.architecture".into(),
            message: e.to_string(),
        })?;
        return Ok(arch.clone());
    }
    preset(&job.spec.model.name).ok_or_else(|| PlanError::UnknownModel {
        name: job.spec.model.name.clone(),
    })
}

/// `spec.distributed`'s ZeRO stage and offload, with what `spec.training.deepspeed` fixes: a
/// stage or offload device DeepSpeed sets is a fixed choice for the planner; one that disagrees
/// with an explicit `spec.distributed` setting is an error naming both.
fn deepspeed_choices(job: &FineTuneJob) -> Result<(ZeroStageChoice, OffloadChoice), PlanError> {
    let d = &job.spec.distributed;
    let mapping = job
        .spec
        .training
        .deepspeed_mapping()
        .map_err(|e| PlanError::InvalidInput {
            key: "spec.training.deepspeed".into(),
            message: e.to_string(),
        })?;
    let Some(m) = mapping else {
        return Ok((d.zero_stage, d.offload_optimizer));
    };
    let conflict = |key: &str, ours: String, theirs: String| PlanError::InvalidInput {
        key: key.into(),
        message: format!(
            "{ours} disagrees with spec.training.deepspeed ({theirs}); remove one of them"
        ),
    };
    let zero = match (d.zero_stage.fixed(), m.zero_stage()) {
        (Some(a), Some(b)) if a != b => {
            return Err(conflict(
                "spec.distributed.zeroStage",
                a.to_string(),
                format!("zero_optimization.stage {b}"),
            ))
        }
        (None, Some(0)) => ZeroStageChoice::Zero0,
        (None, Some(1)) => ZeroStageChoice::Zero1,
        (None, Some(2)) => ZeroStageChoice::Zero2,
        (None, Some(3)) => ZeroStageChoice::Zero3,
        _ => d.zero_stage,
    };
    let ds_offload = m.offload_optimizer().map(|o| match o {
        OffloadDevice::Cpu => OffloadChoice::Cpu,
        OffloadDevice::None => OffloadChoice::None,
    });
    let offload = match (d.offload_optimizer, ds_offload) {
        (OffloadChoice::Auto, Some(o)) => o,
        (ours, Some(o)) if ours != o => {
            return Err(conflict(
                "spec.distributed.offloadOptimizer",
                format!("{ours:?}").to_lowercase(),
                format!(
                    "offload_optimizer.device {}",
                    format!("{o:?}").to_lowercase()
                ),
            ))
        }
        (ours, _) => ours,
    };
    Ok((zero, offload))
}
