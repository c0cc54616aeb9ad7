//! Choosing a configuration: GPU count, ZeRO stage, optimiser offload and micro-batch.
//!
//! Order of preference (auto): the fewest GPUs (1 … `gpus_per_node`, then whole nodes up to
//! `max_gpus`), then the lowest ZeRO stage, then no offload (offload is tried, with `auto`, only when
//! nothing fits without it; always with `cpu`). For the chosen configuration the micro-batch is the
//! largest halving of `per_device_train_batch_size` that fits among those that keep the global batch
//! (`micro × accumulation × GPUs`) closest to the requested one (`per_device_train_batch_size ×
//! gradient_accumulation_steps`), never below it when avoidable; accumulation makes up the rest.

use lf_api::crd::{OffloadChoice, ZeroStageChoice};
use lf_api::training::{FinetuningType, Optim, Precision, TrainingConfig};
use lf_api::{FineTuneJob, ModelArchitecture, Plan};
use serde::{Deserialize, Serialize};

use crate::evaluate::{accumulation, dominant, evaluate_with, scaled_peak};
use crate::format::format_gib;
use crate::memory::Inventory;
use crate::{resolve_architecture, PlanError};

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
            training: spec.training.clone(),
            gpu_memory_bytes: r.gpu_memory_bytes(),
            headroom,
            gpus_per_node: r.gpus_per_node.min(r.gpus.unwrap_or(r.max_gpus())),
            max_gpus: r.gpus.unwrap_or(r.max_gpus()),
            fixed_gpus: r.gpus,
            zero: spec.distributed.zero_stage,
            offload: spec.distributed.offload_optimizer,
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

    /// GPU counts the search considers: 1 … `gpus_per_node`, then multiples of `gpus_per_node` up
    /// to `max_gpus`.
    pub fn gpu_candidates(&self) -> Vec<u32> {
        if let Some(g) = self.fixed_gpus {
            return vec![g];
        }
        let per_node = self.gpus_per_node.max(1);
        let max = self.max_gpus.max(1);
        let mut out: Vec<u32> = (1..=per_node.min(max)).collect();
        let mut n = 2 * per_node;
        while n <= max {
            out.push(n);
            n += per_node;
        }
        out
    }

    fn stages(&self, gpus: u32) -> Vec<u8> {
        match self.zero.fixed() {
            Some(stage) => vec![stage],
            None if gpus <= 1 => vec![0],
            // Adafactor's factored state needs whole matrices; the trainer's ZeRO cuts element
            // ranges, so it runs Adafactor only unpartitioned (its state is tiny anyway).
            None if self.training.optim == lf_api::training::Optim::Adafactor => vec![0],
            None => vec![0, 1, 2, 3],
        }
    }

    fn offload_passes(&self) -> Vec<bool> {
        match self.offload {
            OffloadChoice::None => vec![false],
            OffloadChoice::Cpu => vec![true],
            OffloadChoice::Auto => vec![false, true],
        }
    }

    /// Micro-batches tried: the requested one, halved down to 1.
    fn micro_batches(&self) -> Vec<u32> {
        let mut m = self.training.per_device_train_batch_size.max(1) as u32;
        let mut out = vec![m];
        while m > 1 {
            m /= 2;
            out.push(m);
        }
        out
    }
}

/// One configuration tried, with its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanOption {
    pub gpus: u32,
    pub zero_stage: u8,
    pub offload_optimizer: bool,
    /// The chosen micro-batch when it fits, else the smallest tried.
    pub micro_batch_size: u32,
    pub peak_bytes: u64,
    pub fits: bool,
    pub chosen: bool,
    /// One line: what was tried, the numbers, and what dominates.
    pub verdict: String,
    pub plan: Plan,
}

/// The result of a search: the chosen plan (if any) and every option tried, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSearch {
    /// The model and method, in words (for the table).
    pub description: Vec<String>,
    pub chosen: Option<Plan>,
    pub options: Vec<PlanOption>,
}

impl PlanSearch {
    /// When nothing fits: why, one line per option tried (the CR's `Planned=False` message).
    pub fn failure_message(&self) -> Option<String> {
        if self.chosen.is_some() {
            return None;
        }
        const MAX_LINES: usize = 40;
        let Some(first) = self.options.first() else {
            return Some(
                "no configuration was tried: check spec.resources (maxGpus, gpusPerNode)".into(),
            );
        };
        let mut msg = format!(
            "no configuration fits on {} GPUs (up to {} GPU{}, {} headroom); options tried:",
            format_gib(first.plan.gpu_memory_bytes),
            self.options.iter().map(|o| o.gpus).max().unwrap_or(1),
            if self.options.iter().map(|o| o.gpus).max().unwrap_or(1) == 1 {
                ""
            } else {
                "s"
            },
            format_gib(first.plan.headroom_bytes)
        );
        for o in self.options.iter().take(MAX_LINES) {
            msg.push_str("\n- ");
            msg.push_str(&o.verdict);
        }
        if self.options.len() > MAX_LINES {
            msg.push_str(&format!(
                "\n- … and {} more",
                self.options.len() - MAX_LINES
            ));
        }
        let best = self
            .options
            .iter()
            .min_by_key(|o| o.peak_bytes)
            .map(|o| &o.plan);
        if let Some(best) = best {
            msg.push_str(&format!("\n{}", remedy(best)));
        }
        Some(msg)
    }
}

/// A one-line suggestion for the closest miss.
fn remedy(plan: &Plan) -> String {
    let b = &plan.per_gpu;
    let dominant = dominant(b).0;
    let hint = match dominant {
        "weights" => {
            "allow more GPUs (maxGpus) so ZeRO-3 can shard the weights, or use quantization_bit: 4"
        }
        "optimizer states" => "allow more GPUs, offloadOptimizer: cpu, or optim: adamw_8bit",
        "gradients" => "allow more GPUs (ZeRO-2/3 shard gradients) or pure_bf16",
        "activations" => "lower cutoff_len or keep gradient_checkpointing on",
        "logits" => "lower cutoff_len or set loss_chunk_size (e.g. 1024)",
        _ => "use larger GPUs",
    };
    format!(
        "closest: {} per GPU needed; {dominant} dominate: {hint}",
        format_gib(b.peak_bytes + plan.headroom_bytes)
    )
}

fn config_label(gpus: u32, stage: u8, offload: bool) -> String {
    format!(
        "ZeRO-{stage} on {gpus} GPU{}{}",
        if gpus == 1 { "" } else { "s" },
        if offload { " + optimizer offload" } else { "" }
    )
}

/// Tries one (GPUs, stage, offload) with every micro-batch halving; the option records the
/// chosen micro-batch (or the smallest when none fits).
fn try_config(
    input: &PlannerInput,
    inv: &Inventory,
    gpus: u32,
    stage: u8,
    offload: bool,
    micros: &[u32],
) -> PlanOption {
    let target = input.target_global_batch();
    // Every halving is evaluated: the peak is not monotone in the micro-batch when accumulation
    // drops to 1 (gradients then stop persisting across micro-steps).
    let mut rejected: Option<Plan> = None;
    let mut fitting = Vec::new();
    for &m in micros {
        let plan = evaluate_with(input, inv, gpus, stage, offload, m);
        if plan.fits {
            fitting.push(m);
        } else if fitting.is_empty() {
            rejected = Some(plan);
        }
    }
    let label = config_label(gpus, stage, offload);
    if fitting.is_empty() {
        let plan = match rejected {
            Some(p) => p,
            None => evaluate_with(input, inv, gpus, stage, offload, 1),
        };
        let verdict = format!(
            "{label}, micro-batch {}: {}",
            plan.micro_batch_size, plan.summary
        );
        return PlanOption {
            gpus,
            zero_stage: stage,
            offload_optimizer: offload,
            micro_batch_size: plan.micro_batch_size,
            peak_bytes: plan.per_gpu.peak_bytes,
            fits: false,
            chosen: false,
            verdict,
            plan,
        };
    }
    // Closest global batch (never below the target when a choice avoids it), then largest micro.
    let global = |m: u32| m as u64 * accumulation(target, m, gpus) as u64 * gpus as u64;
    let best = fitting
        .iter()
        .copied()
        .min_by(|a, b| global(*a).cmp(&global(*b)).then(b.cmp(a)))
        .unwrap_or(1);
    let plan = evaluate_with(input, inv, gpus, stage, offload, best);
    let larger = rejected
        .map(|r| {
            format!(
                " (micro-batch {} needs {})",
                r.micro_batch_size,
                format_gib(scaled_peak(input, r.per_gpu.peak_bytes))
            )
        })
        .unwrap_or_default();
    let verdict = format!(
        "{label}, micro-batch {} × {} accumulation (global {}): fits, {}{larger}",
        plan.micro_batch_size,
        plan.gradient_accumulation_steps,
        plan.global_batch(),
        plan.summary
    );
    PlanOption {
        gpus,
        zero_stage: stage,
        offload_optimizer: offload,
        micro_batch_size: plan.micro_batch_size,
        peak_bytes: plan.per_gpu.peak_bytes,
        fits: true,
        chosen: false,
        verdict,
        plan,
    }
}

/// One configuration evaluated as given rather than searched: `gpus` GPUs with ZeRO `stage`, the
/// optimiser offloaded only when the job asks for `cpu`, and the job's own micro-batch.
pub fn evaluate_fixed(input: &PlannerInput, gpus: u32, stage: u8) -> Plan {
    crate::evaluate(
        input,
        gpus,
        stage,
        input.offload == OffloadChoice::Cpu,
        input.training.per_device_train_batch_size.max(1) as u32,
    )
}

/// Searches GPU count, ZeRO stage, offload and micro-batch (see the module doc for the order).
pub fn search(input: &PlannerInput) -> PlanSearch {
    let inv = Inventory::new(&input.arch, &input.training);
    let micros = input.micro_batches();
    let mut options = Vec::new();
    for offload in input.offload_passes() {
        for gpus in input.gpu_candidates() {
            for stage in input.stages(gpus) {
                let mut option = try_config(input, &inv, gpus, stage, offload, &micros);
                if option.fits {
                    option.chosen = true;
                    let chosen = Some(option.plan.clone());
                    options.push(option);
                    return PlanSearch {
                        description: describe(input, &inv),
                        chosen,
                        options,
                    };
                }
                options.push(option);
            }
        }
    }
    PlanSearch {
        description: describe(input, &inv),
        chosen: None,
        options,
    }
}

/// After an out-of-memory failure of `previous`: a plan whose predicted peak is strictly lower,
/// found with the model scaled by `measured / predicted` (or by 1.1 without a measurement, or when
/// the measurement is not above the prediction). Tries, in order: a higher ZeRO stage; a smaller
/// micro-batch with more accumulation; both; more GPUs; then optimiser offload (when allowed).
/// Fixed choices of the job (ZeRO stage, offload) are kept.
pub fn replan_after_oom(
    input: &PlannerInput,
    previous: &Plan,
    measured_peak_bytes: Option<u64>,
) -> PlanSearch {
    let predicted = previous.per_gpu.peak_bytes.max(1) as f64;
    let factor = match measured_peak_bytes {
        Some(m) if m as f64 > predicted => m as f64 / predicted,
        _ => 1.1,
    };
    let mut scaled = input.clone();
    scaled.peak_scale = input.peak_scale.max(1.0) * factor;
    let inv = Inventory::new(&scaled.arch, &scaled.training);

    let stages_from = |gpus: u32, from: u8| -> Vec<u8> {
        scaled
            .stages(gpus)
            .into_iter()
            .filter(|s| *s >= from)
            .collect()
    };
    let smaller: Vec<u32> = scaled
        .micro_batches()
        .into_iter()
        .filter(|m| *m < previous.micro_batch_size)
        .collect();
    let mut candidates: Vec<(u32, u8, bool, u32)> = Vec::new();
    let g = previous.gpus;
    let off = previous.offload_optimizer;
    for s in stages_from(g, previous.zero_stage + 1) {
        candidates.push((g, s, off, previous.micro_batch_size));
    }
    for &m in &smaller {
        candidates.push((g, previous.zero_stage, off, m));
    }
    for s in stages_from(g, previous.zero_stage + 1) {
        for &m in &smaller {
            candidates.push((g, s, off, m));
        }
    }
    let mut micros_upto: Vec<u32> = scaled
        .micro_batches()
        .into_iter()
        .filter(|m| *m <= previous.micro_batch_size)
        .collect();
    if micros_upto.is_empty() {
        micros_upto.push(1);
    }
    for n in scaled.gpu_candidates().into_iter().filter(|n| *n > g) {
        for s in scaled.stages(n) {
            for &m in &micros_upto {
                candidates.push((n, s, off, m));
            }
        }
    }
    if !off && scaled.offload != OffloadChoice::None {
        for n in scaled.gpu_candidates().into_iter().filter(|n| *n >= g) {
            for s in scaled.stages(n) {
                for &m in &micros_upto {
                    candidates.push((n, s, true, m));
                }
            }
        }
    }

    let mut options = Vec::new();
    for (gpus, stage, offload, micro) in candidates {
        let plan = evaluate_with(&scaled, &inv, gpus, stage, offload, micro);
        let lower = plan.per_gpu.peak_bytes < previous.per_gpu.peak_bytes;
        let ok = plan.fits && lower;
        let label = config_label(gpus, stage, offload);
        let verdict = if ok {
            format!(
                "{label}, micro-batch {} × {} accumulation: fits, {}",
                micro, plan.gradient_accumulation_steps, plan.summary
            )
        } else if !lower {
            format!(
                "{label}, micro-batch {micro}: {} is not below the failed plan's {}",
                format_gib(plan.per_gpu.peak_bytes),
                format_gib(previous.per_gpu.peak_bytes)
            )
        } else {
            format!("{label}, micro-batch {micro}: {}", plan.summary)
        };
        options.push(PlanOption {
            gpus,
            zero_stage: stage,
            offload_optimizer: offload,
            micro_batch_size: micro,
            peak_bytes: plan.per_gpu.peak_bytes,
            fits: ok,
            chosen: ok,
            verdict,
            plan: plan.clone(),
        });
        if ok {
            return PlanSearch {
                description: describe(&scaled, &inv),
                chosen: Some(plan),
                options,
            };
        }
    }
    PlanSearch {
        description: describe(&scaled, &inv),
        chosen: None,
        options,
    }
}

fn precision_label(p: Precision) -> &'static str {
    match p {
        Precision::Fp32 => "fp32",
        Precision::Bf16Amp => "bf16 AMP",
        Precision::Fp16Amp => "fp16 AMP",
        Precision::PureBf16 => "pure bf16",
    }
}

fn optim_label(o: Optim) -> &'static str {
    match o {
        Optim::AdamwTorch => "adamw_torch",
        Optim::Adamw8bit => "adamw_8bit",
        Optim::Adafactor => "adafactor",
        Optim::Sgd => "sgd",
    }
}

/// The model and method, in words.
fn describe(input: &PlannerInput, inv: &Inventory) -> Vec<String> {
    let a = &input.arch;
    let t = &input.training;
    let method = match t.finetuning_type {
        FinetuningType::Full => "full fine-tuning".to_string(),
        FinetuningType::Freeze => format!(
            "freeze (last {} layers train)",
            crate::params::freeze_trainable_layers(a, t)
        ),
        FinetuningType::Lora => {
            let kind = if t.use_dora { "DoRA" } else { "LoRA" };
            let q = match t.quantization_bit {
                Some(4) => format!(
                    ", {} 4-bit base{}",
                    if t.quantization_type == lf_api::training::QuantizationType::Nf4 {
                        "NF4"
                    } else {
                        "FP4"
                    },
                    if t.double_quantization {
                        " + double quantisation"
                    } else {
                        ""
                    }
                ),
                Some(bits) => format!(", {bits}-bit base"),
                None => String::new(),
            };
            let targets: Vec<&str> = crate::params::lora_targets(t)
                .iter()
                .map(|m| m.name())
                .collect();
            format!("{kind} r={} on {}{q}", t.lora_rank, targets.join(","))
        }
    };
    let pct = if inv.model_params > 0 {
        100.0 * inv.trainable_params as f64 / inv.model_params as f64
    } else {
        0.0
    };
    let mut lines = vec![
        format!(
            "model      {} ({}, {} layers, hidden {}, heads {}/{} kv, intermediate {}, vocab {}{})",
            input.model_name,
            match a.model_type {
                lf_api::architecture::ModelType::Llama => "llama",
                lf_api::architecture::ModelType::Mistral => "mistral",
                lf_api::architecture::ModelType::Qwen2 => "qwen2",
            },
            a.num_hidden_layers,
            a.hidden_size,
            a.num_attention_heads,
            a.kv_heads(),
            a.intermediate_size,
            a.vocab_size,
            if a.tie_word_embeddings { ", tied embeddings" } else { "" }
        ),
        format!("params     {} total, {} trainable ({pct:.2}%)", group_digits(inv.model_params), group_digits(inv.trainable_params)),
        format!(
            "method     {method}; {}; {}",
            precision_label(t.precision()),
            optim_label(t.optim)
        ),
        format!(
            "batch      cutoff_len {}, micro-batch ≤ {}, global batch {}; gradient checkpointing {}; attention {}; loss chunk {}",
            t.cutoff_len,
            t.per_device_train_batch_size,
            input.target_global_batch(),
            if t.gradient_checkpointing { "on" } else { "off" },
            match t.flash_attn {
                lf_api::training::FlashAttn::Eager => "eager (s² scores)",
                _ => "sdpa/flash",
            },
            if t.loss_chunk_size == 0 { "off (full logits)".to_string() } else { format!("{} tokens", t.loss_chunk_size) }
        ),
        format!(
            "gpus       {} each, {:.0}% headroom ({}), {} {} GPU{} ({} per node); ZeRO {}; offload {}",
            format_gib(input.gpu_memory_bytes),
            input.headroom * 100.0,
            format_gib(input.headroom_bytes()),
            if input.fixed_gpus.is_some() { "exactly" } else { "≤" },
            input.max_gpus,
            if input.max_gpus == 1 { "" } else { "s" },
            input.gpus_per_node,
            match input.zero.fixed() {
                Some(s) => s.to_string(),
                None => "auto".into(),
            },
            match input.offload {
                OffloadChoice::Auto => "auto",
                OffloadChoice::None => "none",
                OffloadChoice::Cpu => "cpu",
            }
        ),
    ];
    if t.finetuning_type == FinetuningType::Lora && input.max_gpus > 1 {
        lines.push(
            "note       LoRA: the frozen base dominates model memory; ZeRO-1/2 shard only the adapters' gradients and optimizer states, ZeRO-3 also shards the frozen base (kept packed under QLoRA)"
                .to_string(),
        );
    }
    lines
}

/// `8030261248` → `8,030,261,248`.
pub(crate) fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
