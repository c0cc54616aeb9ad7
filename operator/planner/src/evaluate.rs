//! Evaluating one configuration: the per-GPU breakdown, the phase peak, the fit test.
//!
//! The peak is static memory (weights, optimiser states, buffers, overhead) plus the largest of
//! three transient phases of a training step:
//!
//! - **loss**: layer checkpoints (or all saved activations) + the loss chunk's temporaries. Gradients
//!   are live here only when they persist across micro-steps (gradient accumulation > 1); with
//!   accumulation 1 the trainer frees them after each step (`zero_grad(set_to_none)`) and backward
//!   has not produced any yet (ZeRO-2/3 partitions are allocated at backward the same way).
//! - **layer backward**: one layer's working set on top of whatever is live. With accumulation 1,
//!   checkpoints are freed as gradients appear, so the live part is the larger of "all checkpoints +
//!   the head's gradient" (start of backward) and "all gradients" (end); otherwise both are summed.
//! - **optimiser step**: all gradients + one fp32 temporary of the largest trainable tensor (of this
//!   rank's partition under ZeRO ≥ 1); nothing when the optimiser is offloaded.
//!
//! Under `gradient_checkpointing: auto` (without `recompute_layers`) each configuration recomputes
//! the fewest decoder layers whose peak fits with the headroom ([`fewest_recomputed`]); the plan
//! records the count (`recomputation`), and the operator renders it as `recompute_layers`.

use lf_api::{MemoryBreakdown, Plan, Recomputation};

use lf_api::crd::OffloadChoice;

use crate::activations::{activations_offloaded, offloaded_checkpoint_bytes, Activations};
use crate::calib;
use crate::format::fit_summary;
use crate::host;
use crate::input::PlannerInput;
use crate::memory::{Inventory, ModelStates};
use crate::recompute::fewest_recomputed;

/// The largest transient phase (bytes), gradients included.
fn transient_peak(
    inv: &Inventory,
    act: &Activations,
    states: &ModelStates,
    stage: u8,
    gpus: u32,
    offload: bool,
    accum: u32,
) -> u64 {
    let grads = states.gradients;
    let persist = accum > 1;
    let loss = act.persistent + act.loss + if persist { grads } else { 0 };
    let live_in_backward = if persist {
        act.persistent + grads
    } else {
        (act.persistent + inv.head_gradient_bytes).max(grads)
    };
    let layer = live_in_backward + act.layer_working_set;
    let step_divisor = if stage >= 1 { gpus.max(1) as u64 } else { 1 };
    let step = grads
        + if offload {
            0
        } else {
            4 * inv.largest_trainable.div_ceil(step_divisor)
        };
    loss.max(layer).max(step)
}

/// Processes per node for `gpus` GPUs: all on one node when they fit, else the largest divisor of
/// `gpus` not above `gpus_per_node` (every pod runs the same number of processes).
fn per_node(gpus: u32, gpus_per_node: u32) -> u32 {
    let gpn = gpus_per_node.max(1);
    if gpus <= gpn {
        return gpus.max(1);
    }
    (1..=gpn)
        .rev()
        .find(|d| gpus.is_multiple_of(*d))
        .unwrap_or(1)
}

pub(crate) fn accumulation(target: u64, micro: u32, gpus: u32) -> u32 {
    let per_step = micro.max(1) as u64 * gpus.max(1) as u64;
    target.div_ceil(per_step).max(1) as u32
}

/// Evaluates exactly one configuration (what `lf-operator plan --gpus N --zero-stage S` prints).
pub fn evaluate(
    input: &PlannerInput,
    gpus: u32,
    stage: u8,
    offload: bool,
    micro_batch: u32,
) -> Plan {
    let inv = Inventory::new(&input.arch, &input.training);
    evaluate_with(input, &inv, gpus, stage, offload, micro_batch)
}

/// One configuration evaluated as given rather than searched: `gpus` GPUs with ZeRO `stage`, the
/// optimiser offloaded only when the job asks for `cpu`, and the job's own micro-batch.
pub fn evaluate_fixed(input: &PlannerInput, gpus: u32, stage: u8) -> Plan {
    evaluate(
        input,
        gpus,
        stage,
        input.offload == OffloadChoice::Cpu,
        input.training.per_device_train_batch_size.max(1) as u32,
    )
}

pub(crate) fn evaluate_with(
    input: &PlannerInput,
    inv: &Inventory,
    gpus: u32,
    stage: u8,
    offload: bool,
    micro_batch: u32,
) -> Plan {
    let gpus = gpus.max(1);
    let micro_batch = micro_batch.max(1);
    let states = inv.states(stage, gpus, offload);
    let buffers = inv.buffers(stage, gpus);
    let accum = accumulation(input.target_global_batch(), micro_batch, gpus);
    let headroom_bytes = input.headroom_bytes();
    // Activations and the peak with the first `r` layers recomputed, their checkpoints offloaded
    // or not: (activations, overhead, peak).
    let phase = |r: u64, offloaded: bool| {
        let act = activations_offloaded(
            &input.arch,
            &input.training,
            inv,
            micro_batch as u64,
            r,
            offloaded,
        );
        let transient = transient_peak(inv, &act, &states, stage, gpus, offload, accum);
        let overhead =
            calib::CUDA_CONTEXT_BYTES + (transient as f64 * calib::FRAGMENTATION).ceil() as u64;
        let peak = states.weights + states.optimizer + buffers + transient + overhead;
        (act, overhead, peak)
    };
    let fits_peak = |peak: u64| scaled_peak(input, peak) + headroom_bytes <= input.gpu_memory_bytes;
    let layers = input.arch.num_hidden_layers;
    let offloaded = offloads_activations(input, stage, |r, o| phase(r, o).2, fits_peak);
    let recomputed = recomputed_layers(input, stage, |r| phase(r, offloaded).2, fits_peak);
    let (act, overhead, peak) = phase(recomputed, offloaded);
    let offloaded = offloaded && recomputed > 0;
    let per_gpu = MemoryBreakdown {
        weights_bytes: states.weights,
        gradients_bytes: states.gradients,
        optimizer_bytes: states.optimizer,
        activations_bytes: act.persistent + act.layer_working_set,
        logits_bytes: act.loss,
        buffers_bytes: buffers,
        overhead_bytes: overhead,
        peak_bytes: peak,
    };
    let scaled = scaled_peak(input, peak);
    let fits = fits_peak(peak);
    let per_node = per_node(gpus, input.gpus_per_node);
    let summary = fit_summary(input, scaled, fits, &per_gpu);
    Plan {
        model_params: inv.model_params,
        trainable_params: inv.trainable_params,
        gpus,
        nodes: gpus.div_ceil(per_node),
        gpus_per_node: per_node,
        zero_stage: stage,
        offload_optimizer: offload,
        micro_batch_size: micro_batch,
        gradient_accumulation_steps: accum,
        gpu_memory_bytes: input.gpu_memory_bytes,
        headroom_bytes,
        fits,
        per_gpu,
        host_memory_bytes: host::host_bytes_per_process(inv, &input.training, stage, gpus, offload)
            + if offloaded {
                offloaded_checkpoint_bytes(
                    &input.arch,
                    &input.training,
                    micro_batch as u64,
                    recomputed,
                )
            } else {
                0
            },
        checkpoint_bytes: inv.checkpoint_bytes(offload),
        recomputation: Some(Recomputation {
            recomputed: recomputed as u32,
            layers: layers as u32,
            offloaded,
        }),
        summary,
    }
}

/// Whether the recomputed layers' checkpoints are offloaded (`offload_activations`): as the config
/// says, or under `auto` only when no recomputation fits without it and one fits with it.
fn offloads_activations(
    input: &PlannerInput,
    stage: u8,
    peak: impl Fn(u64, bool) -> u64,
    fits: impl Fn(u64) -> bool,
) -> bool {
    use lf_api::training::{GradientCheckpointing, OffloadActivations};
    let training = &input.training;
    match training.offload_activations {
        OffloadActivations::On => true,
        OffloadActivations::Off => false,
        OffloadActivations::Auto => {
            if training.gradient_checkpointing == GradientCheckpointing::Off {
                return false;
            }
            let without = recomputed_layers(input, stage, |r| peak(r, false), &fits);
            let with = recomputed_layers(input, stage, |r| peak(r, true), &fits);
            !fits(peak(without, false)) && fits(peak(with, true))
        }
    }
}

/// How many of the first decoder layers a configuration recomputes: every one under ZeRO-3 (the
/// trainer gathers each layer again for its recomputation, whatever `gradient_checkpointing`
/// says); under an open `auto` the fewest whose `peak` `fits` (when none fits, whichever of all
/// or all but one has the lower peak); else what the config says.
fn recomputed_layers(
    input: &PlannerInput,
    stage: u8,
    peak: impl Fn(u64) -> u64,
    fits: impl Fn(u64) -> bool,
) -> u64 {
    let layers = input.arch.num_hidden_layers;
    if stage >= 3 || !input.training.recomputation_open() {
        return crate::activations::configured_recomputation(&input.training, layers, stage);
    }
    fewest_recomputed(layers, |r| fits(peak(r))).unwrap_or_else(|| {
        let all_but_one = layers.saturating_sub(1);
        if peak(all_but_one) < peak(layers) {
            all_but_one
        } else {
            layers
        }
    })
}

pub(crate) fn scaled_peak(input: &PlannerInput, peak: u64) -> u64 {
    (peak as f64 * input.peak_scale.max(0.0)).ceil() as u64
}
