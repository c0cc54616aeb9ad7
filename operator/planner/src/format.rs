//! Every line of prose the planner writes: the plan's one-line summary and the options' verdicts,
//! the failure message of a search, the model and method in words, and the table
//! `lf-operator plan -o table` prints. The numbers come from `evaluate` and `search`; only the
//! wording lives here.

use std::fmt::Write;

use lf_api::crd::OffloadChoice;
use lf_api::training::{FinetuningType, GradientCheckpointing, Optim, Precision};
use lf_api::{MemoryBreakdown, Plan};

use crate::input::PlannerInput;
use crate::memory::Inventory;
use crate::outcome::PlanSearch;

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes as GiB with one decimal (`91.2 GiB`), for one-line messages.
pub fn format_gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}

fn gib2(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / GIB)
}

/// `8030261248` → `8,030,261,248`.
fn group_digits(n: u64) -> String {
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

/// The rows of the per-GPU breakdown: name, bytes and what the row holds. The table prints them
/// and [`dominant`] names the largest, so both always speak of the same rows.
fn rows(b: &MemoryBreakdown) -> [(&'static str, u64, &'static str); 7] {
    [
        ("weights", b.weights_bytes, ""),
        ("gradients", b.gradients_bytes, ""),
        (
            "optimizer states",
            b.optimizer_bytes,
            "moments (+ fp32 master weights: full/freeze under AMP)",
        ),
        (
            "activations",
            b.activations_bytes,
            "checkpoints + kept layers + one layer's working set",
        ),
        (
            "logits / loss",
            b.logits_bytes,
            "not live together with the layer working set",
        ),
        (
            "buffers",
            b.buffers_bytes,
            "gradient buckets, ZeRO-3 gathered layers",
        ),
        (
            "overhead",
            b.overhead_bytes,
            "CUDA context + allocator fragmentation",
        ),
    ]
}

/// The largest row of the breakdown and its bytes (the later row on a tie).
fn dominant(b: &MemoryBreakdown) -> (&'static str, u64) {
    rows(b)
        .into_iter()
        .map(|(name, bytes, _)| (name, bytes))
        .max_by_key(|(_, bytes)| *bytes)
        .unwrap_or(("weights", 0))
}

/// A plan's `summary`: the scaled peak and headroom against the GPU, and the largest row
/// (`20.5 GiB + 2.4 GiB headroom ≤ 24.0 GiB; weights 15.1 GiB dominate`).
pub(crate) fn fit_summary(
    input: &PlannerInput,
    scaled_peak: u64,
    fits: bool,
    per_gpu: &MemoryBreakdown,
) -> String {
    let (what, bytes) = dominant(per_gpu);
    let scale_note = if (input.peak_scale - 1.0).abs() > 1e-9 {
        format!(" (×{:.2} after a measured OOM)", input.peak_scale)
    } else {
        String::new()
    };
    format!(
        "{}{} + {} headroom {} {}; {what} {} dominate",
        format_gib(scaled_peak),
        scale_note,
        format_gib(input.headroom_bytes()),
        if fits { "≤" } else { ">" },
        format_gib(input.gpu_memory_bytes),
        format_gib(bytes)
    )
}

/// What a plan of a multimodal checkpoint leaves out: the trainer loads its text decoder alone,
/// so the vision tower and projector are neither in memory nor in the counts.
fn multimodal_note(a: &lf_api::ModelArchitecture) -> String {
    match a.multimodal {
        Some(m) => format!(
            "; text decoder of {}: vision tower and projector not loaded, not counted",
            m.class_name()
        ),
        None => String::new(),
    }
}

/// `recompute 20 of 32 layers`: the layer recomputation a plan assumes (empty when unknown).
fn recompute_phrase(plan: &Plan) -> String {
    let offloaded = |r: &lf_api::Recomputation| {
        if r.offloaded {
            " (checkpoints offloaded to host, MLP tiled)"
        } else {
            ""
        }
    };
    match plan.recomputation {
        Some(r) if r.recomputed == r.layers => {
            format!("recompute all {} layers{}", r.layers, offloaded(&r))
        }
        Some(r) if r.recomputed == 0 => format!("recompute none of {} layers", r.layers),
        Some(r) => format!(
            "recompute {} of {} layers{}",
            r.recomputed,
            r.layers,
            offloaded(&r)
        ),
        None => String::new(),
    }
}

/// `recompute_phrase` after a separator, or nothing.
fn recompute_suffix(plan: &Plan, sep: &str) -> String {
    let phrase = recompute_phrase(plan);
    if phrase.is_empty() {
        phrase
    } else {
        format!("{sep}{phrase}")
    }
}

/// `ZeRO-2 on 4 GPUs + optimizer offload`: the configuration a verdict is about.
fn config_label(plan: &Plan) -> String {
    format!(
        "ZeRO-{} on {} GPU{}{}",
        plan.zero_stage,
        plan.gpus,
        if plan.gpus == 1 { "" } else { "s" },
        if plan.offload_optimizer {
            " + optimizer offload"
        } else {
            ""
        }
    )
}

/// The verdict of a configuration that does not fit, at `plan`'s micro-batch.
pub(crate) fn miss_verdict(plan: &Plan) -> String {
    format!(
        "{}, micro-batch {}: {}",
        config_label(plan),
        plan.micro_batch_size,
        plan.summary
    )
}

/// The verdict of a searched configuration that fits; `larger` is the next larger micro-batch
/// that did not, with its scaled peak.
pub(crate) fn fit_verdict(plan: &Plan, larger: Option<(u32, u64)>) -> String {
    let larger = larger
        .map(|(micro, peak)| format!(" (micro-batch {micro} needs {})", format_gib(peak)))
        .unwrap_or_default();
    format!(
        "{}, micro-batch {} × {} accumulation (global {}){}: fits, {}{larger}",
        config_label(plan),
        plan.micro_batch_size,
        plan.gradient_accumulation_steps,
        plan.global_batch(),
        recompute_suffix(plan, ", "),
        plan.summary
    )
}

/// The verdict of a re-plan candidate that fits below the failed plan's peak.
pub(crate) fn replan_fit_verdict(plan: &Plan) -> String {
    format!(
        "{}, micro-batch {} × {} accumulation: fits, {}",
        config_label(plan),
        plan.micro_batch_size,
        plan.gradient_accumulation_steps,
        plan.summary
    )
}

/// The verdict of a re-plan candidate whose peak is not below the failed plan's.
pub(crate) fn not_lower_verdict(plan: &Plan, previous: &Plan) -> String {
    format!(
        "{}, micro-batch {}: {} is not below the failed plan's {}",
        config_label(plan),
        plan.micro_batch_size,
        format_gib(plan.per_gpu.peak_bytes),
        format_gib(previous.per_gpu.peak_bytes)
    )
}

// The failure message is prose about a search, so it lives here rather than beside the type.
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
        if let Some(closest) = self.closest() {
            let zero3_tried = self.options.iter().any(|o| o.plan.zero_stage >= 3);
            msg.push_str(&format!("\n{}", remedy(&closest.plan, zero3_tried)));
        }
        Some(msg)
    }
}

/// A one-line suggestion for the closest miss; `zero3_tried`: whether the search could shard
/// the weights (a preference run, Adafactor, AdaLoRA or a fixed stage below 3 cannot).
fn remedy(plan: &Plan, zero3_tried: bool) -> String {
    let b = &plan.per_gpu;
    let dominant = dominant(b).0;
    let hint = match dominant {
        "weights" if zero3_tried => {
            "allow more GPUs (maxGpus) so ZeRO-3 can shard the weights, or use quantization_bit: 4"
        }
        "weights" => {
            "ZeRO-3 is not available to this run (see the options tried), so the weights are whole on every GPU: use LoRA or QLoRA (quantization_bit: 4), or larger GPUs"
        }
        "optimizer states" => "allow more GPUs, offloadOptimizer: cpu, or optim: adamw_8bit",
        "gradients" => "allow more GPUs (ZeRO-2/3 shard gradients) or pure_bf16",
        "activations" => "lower cutoff_len or use gradient_checkpointing: auto or true",
        "logits / loss" => "lower cutoff_len or set loss_chunk_size (e.g. 1024)",
        _ => "use larger GPUs",
    };
    format!(
        "closest: {} per GPU needed; {dominant} dominate: {hint}",
        format_gib(b.peak_bytes + plan.headroom_bytes)
    )
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
pub(crate) fn describe(input: &PlannerInput, inv: &Inventory) -> Vec<String> {
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
            let mut targets: Vec<&str> = crate::params::lora_targets(a, t)
                .iter()
                .map(|m| m.name())
                .collect();
            // A mixture of experts' router and experts, by PEFT's `target_parameters`.
            targets.extend(
                t.expert_lora_targets_for(a)
                    .unwrap_or_default()
                    .target_parameters(),
            );
            let rank = match t.adalora() {
                Some(ada) => format!("AdaLoRA r={}→{}", ada.init_r, ada.target_r),
                None => format!("{kind} r={}", t.lora_rank),
            };
            format!("{rank} on {}{q}", targets.join(","))
        }
    };
    let reference = if t.keeps_reference_copy() {
        "reference pass without gradients on a frozen copy of the weights"
    } else {
        "reference pass without gradients, adapter off"
    };
    let method = if t.stage == lf_api::training::Stage::Rm {
        format!("reward model (2 sequences per example, value head on the last token, no reference pass), {method}")
    } else if t.stage == lf_api::training::Stage::Kto {
        format!("KTO (2 sequences per example, its own and its KL sequence; {reference}), {method}")
    } else if t.stage.is_pairwise() {
        let reference = if t.pref_loss.uses_reference() {
            reference
        } else {
            "no reference pass"
        };
        // The variants are single words, so this is the config's spelling.
        let loss = format!("{:?}", t.pref_loss).to_lowercase();
        format!("DPO ({loss}; 2 sequences per example; {reference}), {method}")
    } else {
        method
    };
    let pct = if inv.model_params > 0 {
        100.0 * inv.trainable_params as f64 / inv.model_params as f64
    } else {
        0.0
    };
    let mut lines = vec![
        format!(
            "model      {} ({}, {} layers, hidden {}, heads {}/{} kv, intermediate {}, vocab {}{}{})",
            input.model_name,
            a.model_type.name(),
            a.num_hidden_layers,
            a.hidden_size,
            a.num_attention_heads,
            a.kv_heads(),
            a.intermediate_size,
            a.vocab_size,
            if a.tie_word_embeddings { ", tied embeddings" } else { "" },
            multimodal_note(a)
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
            match t.gradient_checkpointing {
                GradientCheckpointing::On => "on".to_string(),
                GradientCheckpointing::Off => "off".to_string(),
                GradientCheckpointing::Auto => match t.recompute_layers {
                    Some(n) => format!("auto, {n} layers recomputed"),
                    None => "auto (fewest recomputed layers that fit)".to_string(),
                },
            },
            if crate::activations::eager_attention(a, t) {
                if t.flash_attn == lf_api::training::FlashAttn::Eager {
                    "eager (s² scores)"
                } else {
                    "eager (s² scores: soft-capped)"
                }
            } else {
                "sdpa/flash"
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

/// The plan as a table: the model and method, the chosen configuration with its per-GPU breakdown
/// (GiB), and every option tried with its verdict (`*` marks the chosen one).
pub fn format_table(search: &PlanSearch) -> String {
    let mut out = String::new();
    for line in &search.description {
        let _ = writeln!(out, "{line}");
    }
    out.push('\n');
    match &search.chosen {
        Some(plan) => {
            let _ = writeln!(out, "CHOSEN  {}", headline(plan));
            out.push('\n');
            breakdown(&mut out, plan);
        }
        None => {
            let _ = writeln!(out, "NO CONFIGURATION FITS");
            if let Some(closest) = search.closest() {
                let _ = writeln!(out, "closest: {}", headline(&closest.plan));
                out.push('\n');
                breakdown(&mut out, &closest.plan);
            }
        }
    }
    out.push('\n');
    let _ = writeln!(out, "options tried");
    let _ = writeln!(
        out,
        "     {:>4}  {:>4}  {:<7}  {:>5}  {:>5}  {:>8}  verdict",
        "GPUs", "ZeRO", "offload", "micro", "accum", "peak GiB"
    );
    for o in &search.options {
        let label_end = o.verdict.find(", micro-batch").map(|i| i + 2).unwrap_or(0);
        let _ = writeln!(
            out,
            "  {}  {:>4}  {:>4}  {:<7}  {:>5}  {:>5}  {:>8}  {}",
            if o.chosen { "*" } else { " " },
            o.gpus,
            o.zero_stage,
            if o.offload_optimizer { "cpu" } else { "no" },
            o.micro_batch_size,
            o.plan.gradient_accumulation_steps,
            gib2(o.peak_bytes),
            &o.verdict[label_end..]
        );
    }
    out
}

/// One line describing a plan, for conditions, events and logs.
pub fn plan_summary(plan: &Plan) -> String {
    format!(
        "{}, ZeRO-{}{}, micro-batch {} × {} accumulation{}; predicted peak {} of {} per GPU",
        layout(plan),
        plan.zero_stage,
        if plan.offload_optimizer {
            ", optimizer offloaded"
        } else {
            ""
        },
        plan.micro_batch_size,
        plan.gradient_accumulation_steps,
        recompute_suffix(plan, ", "),
        format_gib(plan.per_gpu.peak_bytes),
        format_gib(plan.gpu_memory_bytes),
    )
}

/// `4 GPUs (2 nodes × 2)`.
fn layout(plan: &Plan) -> String {
    format!(
        "{} GPU{} ({} node{} × {})",
        plan.gpus,
        if plan.gpus == 1 { "" } else { "s" },
        plan.nodes,
        if plan.nodes == 1 { "" } else { "s" },
        plan.gpus_per_node
    )
}

fn headline(plan: &Plan) -> String {
    format!(
        "{}, ZeRO-{}, {}, micro-batch {} × {} accumulation = global batch {}{}",
        layout(plan),
        plan.zero_stage,
        if plan.offload_optimizer {
            "optimizer offloaded to CPU"
        } else {
            "no offload"
        },
        plan.micro_batch_size,
        plan.gradient_accumulation_steps,
        plan.global_batch(),
        recompute_suffix(plan, ", ")
    )
}

fn breakdown(out: &mut String, plan: &Plan) {
    let b = &plan.per_gpu;
    let _ = writeln!(out, "  {:<18} {:>8}", "per GPU", "GiB");
    for (name, bytes, note) in rows(b) {
        let line = format!("  {name:<18} {:>8}  {note}", gib2(bytes));
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(
        out,
        "  {:<18} {:>8}  static + the larger transient phase (not the sum of the rows)",
        "peak",
        gib2(b.peak_bytes)
    );
    let _ = writeln!(out, "  {:<18} {:>8}", "headroom", gib2(plan.headroom_bytes));
    let _ = writeln!(
        out,
        "  {:<18} {:>8}  of {} GiB per GPU ({})",
        "needed",
        gib2(b.peak_bytes + plan.headroom_bytes),
        gib2(plan.gpu_memory_bytes),
        if plan.fits { "fits" } else { "does not fit" }
    );
    let _ = writeln!(
        out,
        "  {:<18} {} total, {} trainable",
        "parameters",
        group_digits(plan.model_params),
        group_digits(plan.trainable_params)
    );
}
