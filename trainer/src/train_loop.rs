//! The training loop.
//!
//! Each optimiser step takes its micro-batches from the background data thread, counts the label
//! tokens of all of them (summed over ranks), and backpropagates each micro-batch's summed loss
//! scaled by `1 / label tokens of the whole step`: the gradient is exactly that of the mean token
//! loss of the step, however the step is split into micro-batches or ranks. Then gradients are
//! summed over ranks, the global norm is checked (a NaN/inf stops the run at once) and clipped,
//! the optimiser updates with the scheduled learning rate, the method's own update runs (AdaLoRA's
//! rank allocation, which reads the gradients), and the gradients are zeroed. A method's
//! regulariser (AdaLoRA's orthogonality term) is backpropagated once per step and is part of the
//! step's loss.
//! A preference run (`stage: dpo`) counts pairs instead of label tokens: each micro-batch of
//! pairs backpropagates its summed pair losses ([`crate::preference`]) scaled by `1 / pairs of the
//! whole step`.
//!
//! Around the step: a record every `logging_steps` ([`StepReporter`]), evaluation every
//! `eval_steps` or epoch, a checkpoint every `save_steps`, and on SIGTERM/SIGINT (a flag polled
//! after each step) a final checkpoint and [`TrainerError::Interrupted`] ([`Checkpointer`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use lf_api::training::{EvalStrategy, TrainingConfig};
use lf_data::{collate, collate_pairs, eval_rounds, Batch, Example, StepPlan};
use tch::{Device, Tensor};

use crate::batching::{spawn_loader, StepBatches};
use crate::checkpoint::{self, Checkpointer};
use crate::error::TrainerError;
use crate::gradients::zero_gradients;
use crate::interfaces::{DataParallel, StepOptimizer, TrainModel};
use crate::memory_report::{MemoryProbe, MemoryRecord};
use crate::metrics::Metrics;
use crate::outputs::{peak_memory_bytes, TRAINER_STATE};
use crate::preference::{PreferenceLoss, PreferenceMetrics, PreferenceSums};
use crate::profiling::StepProfiler;
use crate::report::{Sinks, StepOutcome, StepReporter};
use crate::schedule::LrSchedule;
use crate::state::TrainerState;
use crate::status::StatusReporter;

/// The data the loop trains and evaluates on.
pub struct TrainData {
    pub train: Arc<Vec<Example>>,
    pub eval: Vec<Example>,
    pub pad_id: u32,
}

/// Everything around the loop: where to write, how to report, when to stop.
pub struct RunContext<'a> {
    pub output_dir: PathBuf,
    pub device: Device,
    /// Set by the signal handler; the loop stops after the current step.
    pub stop: Arc<AtomicBool>,
    pub status: Option<&'a StatusReporter>,
    pub metrics: Option<&'a Metrics>,
    pub group: &'a dyn DataParallel,
    /// A checkpoint to resume from (already verified).
    pub resume_from: Option<PathBuf>,
    /// Describes the numeric setup for non-finite messages (dtype, attention backend).
    pub numeric_setup: String,
    /// Show an indicatif bar (a terminal on rank 0).
    pub progress_bar: bool,
    /// The pre-flight all-reduce bus bandwidth (GB/s) of a multi-process run, for the status.
    pub bus_bandwidth_gbps: Option<f64>,
    /// Why the checkpoint `resume_from_checkpoint` named was skipped for an older one (status).
    pub resume_warning: Option<String>,
    /// The experiment trackers of `report_to` (rank 0).
    pub trackers: Option<&'a lf_track::Trackers>,
}

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub global_step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    /// Mean step loss over the whole run (resumed steps included).
    pub train_loss: f64,
    /// Seconds of this attempt.
    pub train_runtime: f64,
    pub train_samples_per_second: f64,
    pub train_steps_per_second: f64,
    pub tokens_per_second: f64,
    pub eval_loss: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    pub resumed_from_step: Option<u64>,
}

impl TrainSummary {
    /// The `all_results.json` keys (Hugging Face's names).
    pub fn results(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("epoch".into(), self.epoch.into());
        m.insert("train_loss".into(), self.train_loss.into());
        m.insert("train_runtime".into(), self.train_runtime.into());
        m.insert(
            "train_samples_per_second".into(),
            self.train_samples_per_second.into(),
        );
        m.insert(
            "train_steps_per_second".into(),
            self.train_steps_per_second.into(),
        );
        m.insert(
            "train_tokens_per_second".into(),
            self.tokens_per_second.into(),
        );
        if let Some(e) = self.eval_loss {
            m.insert("eval_loss".into(), e.into());
            m.insert("eval_perplexity".into(), e.exp().into());
        }
        if let Some(p) = self.peak_memory_bytes {
            m.insert("peak_memory_bytes".into(), p.into());
        }
        m
    }
}

fn to_device(b: &Batch, device: Device) -> (Tensor, Tensor) {
    let shape = [b.batch_size as i64, b.seq_len as i64];
    let ids = Tensor::from_slice(&b.input_ids)
        .reshape(shape)
        .to_device(device);
    let labels = Tensor::from_slice(&b.labels)
        .reshape(shape)
        .to_device(device);
    (ids, labels)
}

/// A packed batch's position ids on `device` (`None` for an unpacked one).
fn positions_to_device(b: &Batch, device: Device) -> Option<Tensor> {
    let pos = b.position_ids.as_ref()?;
    let shape = [b.batch_size as i64, b.seq_len as i64];
    Some(Tensor::from_slice(pos).reshape(shape).to_device(device))
}

/// `b`'s attention mask (1 on each row's tokens, 0 on its padding), `[B, S]` on `device`.
fn mask_to_device(b: &Batch, device: Device) -> Tensor {
    Tensor::from_slice(&b.attention_mask)
        .reshape([b.batch_size as i64, b.seq_len as i64])
        .to_device(device)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The loss of `examples` (mean over label tokens; with `preference`, the mean preference loss
/// over the pairs), without gradients and without keeping logits. The ranks share the batches
/// ([`eval_rounds`]); a rank without a batch in the last round runs a label-free one (or, for
/// pairs, none), which adds nothing.
pub fn evaluate<M: TrainModel>(
    model: &mut M,
    examples: &[Example],
    batch_size: usize,
    pad_id: u32,
    device: Device,
    group: &dyn DataParallel,
    preference: Option<&PreferenceLoss>,
) -> Result<Option<f64>, TrainerError> {
    let e = evaluate_with_metrics(
        model, examples, batch_size, pad_id, device, group, preference,
    )?;
    Ok(e.map(|e| e.loss))
}

/// What [`evaluate_with_metrics`] measures.
pub struct Evaluation {
    pub loss: f64,
    /// A preference run's `rewards/*` and `logps/*` means over the evaluated pairs.
    pub preference: Option<PreferenceMetrics>,
}

/// [`evaluate`], with a preference run's metrics (TRL's `eval_rewards/*`, `eval_logps/*`).
pub fn evaluate_with_metrics<M: TrainModel>(
    model: &mut M,
    examples: &[Example],
    batch_size: usize,
    pad_id: u32,
    device: Device,
    group: &dyn DataParallel,
    preference: Option<&PreferenceLoss>,
) -> Result<Option<Evaluation>, TrainerError> {
    if examples.is_empty() {
        return Ok(None);
    }
    model.set_training(false);
    let mut loss = 0.0;
    let mut tokens = 0u64;
    let mut pair_sums = PreferenceSums::default();
    let rounds = eval_rounds(examples.len(), batch_size, group.rank(), group.world_size());
    let result = (|| {
        for rows in rounds {
            let refs: Vec<&Example> = examples[rows].iter().collect();
            if let Some(p) = preference {
                // A round without pairs still runs (ZeRO-3's gathers, KTO's KL estimate),
                // contributing nothing.
                let batch = collate_pairs(&refs, pad_id);
                let (ids, labels) = to_device(&batch, device);
                let sums = if p.value_head {
                    model.reward_eval(&ids, &mask_to_device(&batch, device))?
                } else {
                    model.preference_eval(&ids, &labels, &batch.desirable, p)?
                };
                loss += sums.loss;
                tokens += sums.pairs as u64;
                pair_sums += sums;
                continue;
            }
            let batch = collate(&refs, pad_id);
            let (ids, labels) = to_device(&batch, device);
            loss += model.eval_loss_sum(&ids, &labels)?;
            tokens += batch.label_tokens;
        }
        Ok::<(), TrainerError>(())
    })();
    model.set_training(true);
    result?;
    let loss = group.sum_scalar(loss)?;
    let tokens = group.sum_scalar(tokens as f64)?;
    let pair_metrics = match preference {
        Some(_) => sum_over_ranks(group, pair_sums)?.means(),
        None => None,
    };
    Ok((tokens > 0.0).then(|| Evaluation {
        loss: loss / tokens,
        preference: pair_metrics,
    }))
}

fn non_finite(
    what: &str,
    value: f64,
    step: u64,
    cfg: &TrainingConfig,
    setup: &str,
) -> TrainerError {
    TrainerError::NonFinite {
        message: format!("the {what} became {value} at step {step} ({setup}, learning_rate {})", cfg.learning_rate),
        hint: "lower learning_rate or raise warmup; prefer bf16 over fp16 (fp16 overflows); try flash_attn: eager to rule out the attention kernel; check the data for empty or extremely long responses".into(),
    }
}

/// Whether the step `step` (0-based) just completed ends with an evaluation.
fn eval_due(cfg: &TrainingConfig, plan: &StepPlan, step: u64, total_steps: u64) -> bool {
    let done = step + 1;
    match cfg.eval_strategy {
        EvalStrategy::Steps => {
            let every = cfg.eval_steps.unwrap_or(cfg.logging_steps).max(1) as u64;
            done.is_multiple_of(every) || done == total_steps
        }
        EvalStrategy::Epoch => plan.ends_epoch(step) || done == total_steps,
        _ => false,
    }
}

/// What every step needs besides the model and the optimiser.
struct Stepper<'a> {
    cfg: &'a TrainingConfig,
    ctx: &'a RunContext<'a>,
    /// The trainable parameters (sharing storage and `.grad` with the model).
    params: Vec<(String, Tensor)>,
    schedule: LrSchedule,
    /// `stage: dpo`: the loss of the pairs.
    preference: Option<PreferenceLoss>,
}

impl Stepper<'_> {
    /// One optimiser step (see the module docs) on the micro-batches of step `step` from `rx`;
    /// `probe` (rank 0's) measures the model-state memory after the first update.
    fn step<M: TrainModel, O: StepOptimizer + ?Sized>(
        &self,
        model: &mut M,
        optimizer: &mut O,
        rx: &Receiver<StepBatches>,
        step: u64,
        probe: Option<&mut MemoryProbe>,
    ) -> Result<(StepOutcome, Option<MemoryRecord>), TrainerError> {
        let (cfg, ctx, group, params) = (self.cfg, self.ctx, self.ctx.group, &self.params[..]);
        let t_data = Instant::now();
        let batches = rx
            .recv()
            .map_err(|_| TrainerError::runtime("the data thread stopped unexpectedly"))?;
        debug_assert_eq!(batches.step, step);
        // What the step's loss is a mean over: label tokens, or pairs.
        let local_units: u64 = match self.preference {
            Some(_) => batches.micro.iter().map(|b| b.examples as u64).sum(),
            None => batches.micro.iter().map(|b| b.label_tokens).sum(),
        };
        let loss_units = group.sum_scalar(local_units as f64)?;
        let device_batches: Vec<(Tensor, Tensor)> = batches
            .micro
            .iter()
            .map(|b| to_device(b, ctx.device))
            .collect();
        // `neat_packing`: each packed micro-batch's position ids.
        let positions: Vec<Option<Tensor>> = batches
            .micro
            .iter()
            .map(|b| positions_to_device(b, ctx.device))
            .collect();
        // Each micro-batch's attention mask: a mixture of experts' load-balancing loss leaves
        // the padding out by it, as with LLaMA-Factory's collator.
        let masks: Vec<Tensor> = batches
            .micro
            .iter()
            .map(|b| mask_to_device(b, ctx.device))
            .collect();
        let data_secs = t_data.elapsed().as_secs_f64();

        let t_compute = Instant::now();
        let (loss_sum, forward_secs, preference) = match &self.preference {
            _ if loss_units == 0.0 => {
                tracing::warn!("step {} has no label tokens (every response was truncated away?); skipping its update", step + 1);
                (0.0, Some(0.0), None)
            }
            Some(loss) => {
                // Every micro-batch, a label-free one too (no pairs left for this process): it
                // contributes nothing but takes part in the other processes' collectives
                // (ZeRO-3's gathers, the reductions `overlap_comm` starts, KTO's KL estimate).
                let desirable: Vec<&[bool]> =
                    batches.micro.iter().map(|b| &b.desirable[..]).collect();
                let sums = if loss.value_head {
                    reward_backward(model, &device_batches, &masks, 1.0 / loss_units)?
                } else {
                    preference_backward(model, &device_batches, &desirable, loss, 1.0 / loss_units)?
                };
                let sums = sum_over_ranks(group, sums)?;
                (sums.loss, None, Some(sums))
            }
            None => {
                let (loss_sum, forward_secs) =
                    forward_backward(model, &device_batches, &positions, &masks, 1.0 / loss_units)?;
                (group.sum_scalar(loss_sum)?, forward_secs, None)
            }
        };
        // The method's regulariser (AdaLoRA), once per step: each rank adds its share, so the
        // gradients summed over ranks hold it once.
        let regularizer = if loss_units > 0.0 {
            model.regularizer_backward(1.0 / group.world_size() as f64)?
        } else {
            0.0
        };
        sync(ctx.device);
        let compute_secs = t_compute.elapsed().as_secs_f64();

        let t_opt = Instant::now();
        let loss = if loss_units > 0.0 {
            loss_sum / loss_units + regularizer
        } else {
            0.0
        };
        let setup = &ctx.numeric_setup;
        if !loss.is_finite() {
            return Err(non_finite("loss", loss, step + 1, cfg, setup));
        }
        let grad_norm = optimizer.reduce_gradients(group, params)?;
        if !grad_norm.is_finite() {
            return Err(non_finite("gradient norm", grad_norm, step + 1, cfg, setup));
        }
        optimizer.clip_gradients(params, grad_norm, cfg.max_grad_norm)?;
        let lr = self.schedule.lr(step);
        let mut memory = None;
        if loss_units > 0.0 {
            optimizer.step(params, lr)?;
            model.after_optimizer_step(step)?;
            memory = probe.and_then(|p| {
                p.after_step(cfg, &*model, &*optimizer, params, step + 1, ctx.device)
            });
        }
        zero_gradients(params);
        sync(ctx.device);
        let optimizer_secs = t_opt.elapsed().as_secs_f64();

        let tokens: u64 = batches.micro.iter().map(|b| b.tokens).sum();
        let samples: u64 = batches.micro.iter().map(|b| b.examples as u64).sum();
        let outcome = StepOutcome {
            loss,
            lr,
            grad_norm,
            tokens: group.sum_scalar(tokens as f64)? as u64,
            samples: group.sum_scalar(samples as f64)? as u64,
            data_secs,
            compute_secs,
            optimizer_secs,
            forward_secs,
            preference,
        };
        Ok((outcome, memory))
    }
}

/// Forward and backward of every micro-batch, each loss scaled by `scale`; returns the summed
/// loss and the forward seconds (when the model tells them apart).
fn forward_backward<M: TrainModel>(
    model: &mut M,
    batches: &[(Tensor, Tensor)],
    positions: &[Option<Tensor>],
    masks: &[Tensor],
    scale: f64,
) -> Result<(f64, Option<f64>), TrainerError> {
    let mut loss_sum = 0.0;
    let mut forward_secs = Some(0.0);
    for (i, (ids, labels)) in batches.iter().enumerate() {
        model.last_micro_batch(i + 1 == batches.len());
        let out = match positions.get(i).and_then(Option::as_ref) {
            Some(pos) => model.loss_sum_and_backward_packed(ids, labels, pos, &masks[i], scale)?,
            None => model.loss_sum_and_backward_masked(ids, labels, &masks[i], scale)?,
        };
        loss_sum += out.loss_sum;
        forward_secs = forward_secs.zip(out.forward_secs).map(|(a, b)| a + b);
    }
    Ok((loss_sum, forward_secs))
}

/// Forward and backward of every micro-batch of pairs, each loss scaled by `scale`; returns
/// the pairs' summed metrics (their summed loss included).
fn preference_backward<M: TrainModel>(
    model: &mut M,
    batches: &[(Tensor, Tensor)],
    desirable: &[&[bool]],
    loss: &PreferenceLoss,
    scale: f64,
) -> Result<PreferenceSums, TrainerError> {
    let mut sums = PreferenceSums::default();
    for (i, ((ids, labels), tags)) in batches.iter().zip(desirable).enumerate() {
        model.last_micro_batch(i + 1 == batches.len());
        sums += model.preference_backward(ids, labels, tags, loss, scale)?;
    }
    Ok(sums)
}

/// [`preference_backward`] for `stage: rm`: each micro-batch's rows scored by the value head at
/// their last token (`masks`).
fn reward_backward<M: TrainModel>(
    model: &mut M,
    batches: &[(Tensor, Tensor)],
    masks: &[Tensor],
    scale: f64,
) -> Result<PreferenceSums, TrainerError> {
    let mut sums = PreferenceSums::default();
    for (i, ((ids, _), mask)) in batches.iter().zip(masks).enumerate() {
        model.last_micro_batch(i + 1 == batches.len());
        sums += model.reward_backward(ids, mask, scale)?;
    }
    Ok(sums)
}

/// `sums` added up over the ranks.
fn sum_over_ranks(
    group: &dyn DataParallel,
    sums: PreferenceSums,
) -> Result<PreferenceSums, TrainerError> {
    let mut all = sums.to_array();
    for v in &mut all {
        *v = group.sum_scalar(*v)?;
    }
    Ok(PreferenceSums::from_array(all))
}

/// A final evaluation when evaluation was asked for but the schedule did not end on one.
fn final_evaluation<M: TrainModel>(
    cfg: &TrainingConfig,
    model: &mut M,
    data: &TrainData,
    state: &mut TrainerState,
    ctx: &RunContext<'_>,
) -> Result<Option<f64>, TrainerError> {
    match (cfg.eval_strategy, state.last_eval_loss) {
        (EvalStrategy::No, _) => Ok(None),
        (_, Some(e)) => Ok(Some(e)),
        _ => {
            let e = evaluate(
                model,
                &data.eval,
                cfg.per_device_eval_batch_size,
                data.pad_id,
                ctx.device,
                ctx.group,
                PreferenceLoss::from_config(cfg).as_ref(),
            )?;
            state.last_eval_loss = e;
            Ok(e)
        }
    }
}

/// Trains `model` with `optimizer` on `data` according to `cfg`.
pub fn train<M: TrainModel, O: StepOptimizer + ?Sized>(
    cfg: &TrainingConfig,
    model: &mut M,
    optimizer: &mut O,
    data: &TrainData,
    ctx: &RunContext<'_>,
) -> Result<TrainSummary, TrainerError> {
    let group = ctx.group;
    let is_main = group.rank() == 0;
    if data.train.is_empty() {
        return Err(TrainerError::config(
            "the training split is empty: check `dataset`, `max_samples` and `val_size`",
        ));
    }
    // What each step trains on, at which learning rate; where a resumed run stands.
    let plan = StepPlan {
        num_examples: data.train.len(),
        batch_size: cfg.per_device_train_batch_size,
        grad_accum: cfg.gradient_accumulation_steps,
        seed: cfg.seed,
        world_size: group.world_size(),
        rank: group.rank(),
    };
    let total_steps = plan.total_steps(cfg.num_train_epochs, cfg.max_steps);
    model.set_total_steps(total_steps)?;
    let schedule = LrSchedule::from_config(cfg, total_steps);
    let mut state = TrainerState::new(plan, schedule, total_steps, cfg.seed);
    if let Some(dir) = &ctx.resume_from {
        state = checkpoint::resume(model, optimizer, dir, state)?;
    }
    let resumed_from_step = ctx.resume_from.as_ref().map(|_| state.global_step);
    let start_step = state.global_step;
    let sinks = Sinks {
        output_dir: &ctx.output_dir,
        device: ctx.device,
        is_main,
        status: ctx.status,
        metrics: ctx.metrics,
        progress_bar: ctx.progress_bar,
        bus_bandwidth_gbps: ctx.bus_bandwidth_gbps,
        resume_warning: ctx.resume_warning.clone(),
        trackers: ctx.trackers,
    };
    let mut reporter = StepReporter::open(
        sinks,
        cfg.logging_steps,
        total_steps,
        start_step,
        resumed_from_step.is_some(),
    )?;
    let rx = spawn_loader(
        plan,
        data.train.clone(),
        data.pad_id,
        cfg.neat_packing.then_some(cfg.cutoff_len),
        start_step,
        total_steps,
        4,
    );
    let params = model.trainable_parameters();
    if params.is_empty() {
        return Err(TrainerError::config(
            "nothing is trainable: check finetuning_type, lora_target and freeze_trainable_layers",
        ));
    }
    zero_gradients(&params);
    model.set_training(true);
    let stepper = Stepper {
        cfg,
        ctx,
        params,
        schedule,
        preference: PreferenceLoss::from_config(cfg),
    };
    let mut checkpointer = Checkpointer::new(&ctx.output_dir, &ctx.stop);
    let mut memory_probe = MemoryProbe::default();
    let mut profiler = StepProfiler::new(cfg, &ctx.output_dir, group.rank(), ctx.device)?;
    let (mut tokens_run, mut samples_run) = (0u64, 0u64);
    let started = Instant::now();

    while state.global_step < total_steps {
        let step = state.global_step;
        let probe = is_main.then_some(&mut memory_probe);
        profiler.before(step + 1);
        let (outcome, memory) = stepper.step(model, optimizer, &rx, step, probe)?;
        profiler.after(step + 1, &outcome);
        if let Some(record) = memory {
            reporter.memory(record);
        }
        state.complete_step(
            outcome.loss,
            outcome.tokens,
            outcome.samples,
            model.rng_position(),
        );
        tokens_run += outcome.tokens;
        samples_run += outcome.samples;
        reporter.step(state.global_step, &outcome);

        let evaluation = if eval_due(cfg, &plan, step, total_steps) {
            evaluate_with_metrics(
                model,
                &data.eval,
                cfg.per_device_eval_batch_size,
                data.pad_id,
                ctx.device,
                group,
                stepper.preference.as_ref(),
            )?
        } else {
            None
        };
        let eval_loss = evaluation.as_ref().map(|e| e.loss);
        if let Some(e) = eval_loss {
            state.last_eval_loss = Some(e);
            reporter.evaluated(e);
        }
        if reporter.due(state.global_step) || eval_loss.is_some() {
            let eval_pairs = evaluation.and_then(|e| e.preference);
            state.last_loss = Some(reporter.record(&state, eval_loss, eval_pairs)?);
        }

        let after = checkpointer.after_step(cfg, model, &*optimizer, &state, group)?;
        if let Some(path) = &after.saved {
            reporter.checkpoint_saved(path);
        }
        if after.stopping {
            reporter.abandon();
            return Err(checkpointer.interrupted(state.global_step));
        }
    }
    reporter.finish();
    let runtime = started.elapsed().as_secs_f64();
    let eval_loss = final_evaluation(cfg, model, data, &mut state, ctx)?;
    if is_main {
        state.write(&ctx.output_dir.join(TRAINER_STATE))?;
    }
    Ok(TrainSummary {
        global_step: state.global_step,
        total_steps,
        epoch: state.epoch,
        train_loss: state.loss_total / state.global_step.max(1) as f64,
        train_runtime: runtime,
        train_samples_per_second: samples_run as f64 / runtime.max(1e-9),
        train_steps_per_second: (state.global_step - start_step) as f64 / runtime.max(1e-9),
        tokens_per_second: tokens_run as f64 / runtime.max(1e-9),
        eval_loss,
        peak_memory_bytes: peak_memory_bytes(ctx.device),
        resumed_from_step,
    })
}
