//! Choosing a configuration: GPU count, ZeRO stage, optimiser offload and micro-batch.
//!
//! Order of preference (auto): the fewest GPUs (1 … `gpus_per_node`, then whole nodes up to
//! `max_gpus`), then the lowest ZeRO stage, then no offload (offload is tried, with `auto`, only when
//! nothing fits without it; always with `cpu`). For the chosen configuration the micro-batch is the
//! largest halving of `per_device_train_batch_size` that fits among those that keep the global batch
//! (`micro × accumulation × GPUs`) closest to the requested one (`per_device_train_batch_size ×
//! gradient_accumulation_steps`), never below it when avoidable; accumulation makes up the rest.

use lf_api::crd::OffloadChoice;
use lf_api::Plan;

use crate::evaluate::{accumulation, evaluate_with, scaled_peak};
use crate::format::{describe, fit_verdict, miss_verdict, not_lower_verdict, replan_fit_verdict};
use crate::input::PlannerInput;
use crate::memory::Inventory;
use crate::outcome::{PlanOption, PlanSearch};

/// Tries one (GPUs, stage, offload) with every micro-batch halving; the option records the
/// chosen micro-batch (or the smallest when none fits). Under `offload_activations: auto` the
/// checkpoints are offloaded only when no micro-batch fits without it (never just to raise the
/// micro-batch: the copies cost time).
fn try_config(
    input: &PlannerInput,
    inv: &Inventory,
    gpus: u32,
    stage: u8,
    offload: bool,
    micros: &[u32],
) -> PlanOption {
    use lf_api::training::OffloadActivations;
    if input.training.offload_activations == OffloadActivations::Auto {
        let mut on_device = input.clone();
        on_device.training.offload_activations = OffloadActivations::Off;
        let option = try_config_as_given(&on_device, inv, gpus, stage, offload, micros);
        if option.fits {
            return option;
        }
    }
    try_config_as_given(input, inv, gpus, stage, offload, micros)
}

/// [`try_config`] with `offload_activations` as the input says.
fn try_config_as_given(
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
    if fitting.is_empty() {
        let plan = match rejected {
            Some(p) => p,
            None => evaluate_with(input, inv, gpus, stage, offload, 1),
        };
        let verdict = miss_verdict(&plan);
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
    let larger = rejected.map(|r| (r.micro_batch_size, scaled_peak(input, r.per_gpu.peak_bytes)));
    let verdict = fit_verdict(&plan, larger);
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
/// the measurement is not above the prediction). Tries, in order: under `gradient_checkpointing:
/// auto`, the same configuration recomputing more layers; a higher ZeRO stage; a smaller
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
    // Under `gradient_checkpointing: auto` the same configuration, evaluated with the scaled
    // model, recomputes more layers: the cheapest remedy, tried first.
    if scaled.training.recomputation_open() {
        candidates.push((g, previous.zero_stage, off, previous.micro_batch_size));
    }
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
        let verdict = if ok {
            replan_fit_verdict(&plan)
        } else if !lower {
            not_lower_verdict(&plan, previous)
        } else {
            miss_verdict(&plan)
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
