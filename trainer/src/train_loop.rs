//! The training loop.
//!
//! Each optimiser step takes its micro-batches from the background data thread, counts the label
//! tokens of all of them (summed over ranks), and backpropagates each micro-batch's summed loss
//! scaled by `1 / label tokens of the whole step`: the gradient is exactly that of the mean token
//! loss of the step, however the step is split into micro-batches or ranks. Then gradients are
//! summed over ranks, the global norm is checked (a NaN/inf stops the run at once) and clipped,
//! the optimiser updates with the scheduled learning rate, and the gradients are zeroed.
//!
//! Around the step: logging every `logging_steps`, evaluation every `eval_steps`, a checkpoint
//! every `save_steps`, and on SIGTERM/SIGINT (a flag the loop polls after each step) a final
//! checkpoint and [`TrainerError::Interrupted`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use lf_api::status::{CheckpointRecord, Progress};
use lf_api::training::{EvalStrategy, TrainingConfig};
use tch::{Device, Kind, Tensor};

use crate::batching::{collate, spawn_loader, Example, HostBatch, StepPlan};
use crate::checkpoint;
use crate::error::TrainerError;
use crate::interfaces::{DataParallel, StepOptimizer, TrainModel};
use crate::metrics::Metrics;
use crate::outputs::{hms, peak_memory_bytes, LogRecord, StepTimes, TrainerLog, TRAINER_STATE};
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

fn to_device(b: &HostBatch, device: Device) -> (Tensor, Tensor) {
    let shape = [b.batch_size as i64, b.seq_len as i64];
    let ids = Tensor::from_slice(&b.input_ids)
        .reshape(shape)
        .to_device(device);
    let labels = Tensor::from_slice(&b.labels)
        .reshape(shape)
        .to_device(device);
    (ids, labels)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The global L2 norm of the gradients (fp32), or 0 when no parameter has one.
pub fn grad_norm(params: &[(String, Tensor)]) -> f64 {
    let _guard = tch::no_grad_guard();
    let norms: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.grad())
        .filter(|g| g.defined())
        .map(|g| g.to_kind(Kind::Float).norm().to_device(Device::Cpu))
        .collect();
    if norms.is_empty() {
        return 0.0;
    }
    Tensor::stack(&norms, 0).norm().double_value(&[])
}

/// Scales gradients so their global norm is at most `max_norm` (PyTorch's `clip_grad_norm_`
/// arithmetic: coefficient `max_norm / (norm + 1e-6)`, capped at 1).
pub fn clip_gradients(params: &[(String, Tensor)], norm: f64, max_norm: f64) {
    if max_norm <= 0.0 {
        return;
    }
    let coef = max_norm / (norm + 1e-6);
    if coef >= 1.0 {
        return;
    }
    let _guard = tch::no_grad_guard();
    for (_, p) in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.f_mul_scalar_(coef);
        }
    }
}

fn zero_gradients(params: &[(String, Tensor)]) {
    for (_, p) in params {
        let mut p = p.shallow_clone();
        p.zero_grad();
    }
}

/// A two-token batch without labels: what a rank runs when a partitioned (lockstep) model needs
/// a pass from every rank and this one has no data left. It contributes no loss and, in
/// training, zero gradients.
fn label_free_batch(pad_id: u32) -> HostBatch {
    collate(
        &[&Example {
            input_ids: vec![pad_id, pad_id],
            labels: vec![-100, -100],
        }],
        pad_id,
    )
}

/// The loss of `examples` (mean over label tokens), without gradients and without keeping logits.
pub fn evaluate<M: TrainModel>(
    model: &mut M,
    examples: &[Example],
    batch_size: usize,
    pad_id: u32,
    device: Device,
    group: &dyn DataParallel,
) -> Result<Option<f64>, TrainerError> {
    if examples.is_empty() {
        return Ok(None);
    }
    model.set_training(false);
    let mut loss = 0.0;
    let mut tokens = 0u64;
    let (rank, world) = (group.rank(), group.world_size().max(1));
    let chunks: Vec<&[Example]> = examples.chunks(batch_size.max(1)).collect();
    // Rank r takes chunks r, r + world, ...; a partitioned model runs as many batches on every
    // rank (the last round's missing ones as label-free batches, which add nothing).
    let rounds = chunks.len().div_ceil(world);
    let lockstep = model.lockstep();
    let result = (|| {
        for round in 0..rounds {
            let batch = match chunks.get(round * world + rank) {
                Some(chunk) => {
                    let refs: Vec<&Example> = chunk.iter().collect();
                    collate(&refs, pad_id)
                }
                None if lockstep => label_free_batch(pad_id),
                None => continue,
            };
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
    Ok((tokens > 0.0).then(|| loss / tokens))
}

/// The complete checkpoints of `output_dir`, as the status lists them.
fn checkpoint_records(output_dir: &Path, losses: &[(u64, f64)]) -> Vec<CheckpointRecord> {
    checkpoint::list(output_dir)
        .into_iter()
        .filter(|f| f.path.join(checkpoint::MARKER).exists())
        .map(|f| {
            let saved = std::fs::metadata(f.path.join(checkpoint::MARKER))
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
                .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
            CheckpointRecord {
                step: f.step,
                path: f.path.display().to_string(),
                saved_at: Time(saved),
                loss: losses
                    .iter()
                    .rev()
                    .find(|(s, _)| *s <= f.step)
                    .map(|(_, l)| *l),
            }
        })
        .collect()
}

/// Writes this rank's optimiser state as [`StepOptimizer::state_file`] into `dir`.
pub fn write_optimizer_state<O: StepOptimizer + ?Sized>(
    optimizer: &O,
    dir: &Path,
) -> Result<(), TrainerError> {
    let tensors: Vec<(String, Tensor)> = optimizer
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous()))
        .collect();
    let file = dir.join(optimizer.state_file());
    Tensor::write_safetensors(&tensors, &file)
        .map_err(|e| TrainerError::from_library("writing the optimizer state", e))
}

/// Where the ranks of a partitioned (ZeRO) optimiser put their state files for checkpoint
/// `step` before rank 0 moves them into the checkpoint.
pub fn staging_dir(output_dir: &Path, step: u64) -> PathBuf {
    output_dir.join(format!(".optimizer-shards-{step}"))
}

/// Writes checkpoint `state.global_step` (weights, optimiser state, trainer state) atomically,
/// then rotates. Only rank 0 calls it. A partitioned optimiser's per-rank state files, staged by
/// every rank in `staged`, are moved in (all `expected_files` must be there).
pub fn save_checkpoint<M: TrainModel, O: StepOptimizer + ?Sized>(
    cfg: &TrainingConfig,
    model: &M,
    optimizer: &O,
    state: &TrainerState,
    output_dir: &Path,
    staged: Option<(&Path, &[String])>,
) -> Result<PathBuf, TrainerError> {
    let path = checkpoint::write_atomic(output_dir, state.global_step, |dir| {
        model.save_weights(dir)?;
        match staged {
            Some((from, files)) => {
                for name in files {
                    let src = from.join(name);
                    let dst = dir.join(name);
                    std::fs::rename(&src, &dst).map_err(|e| {
                        TrainerError::io("move a rank's optimizer state from", &src, e)
                    })?;
                }
            }
            None if !cfg.save_only_model => write_optimizer_state(optimizer, dir)?,
            None => {}
        }
        state.write(&dir.join(TRAINER_STATE))
    })?;
    if let Some((from, _)) = staged {
        let _ = std::fs::remove_dir_all(from);
    }
    if let Some(limit) = cfg.save_total_limit {
        for gone in checkpoint::rotate(output_dir, limit) {
            tracing::info!(
                "deleted old checkpoint {} (save_total_limit {limit})",
                gone.display()
            );
        }
    }
    Ok(path)
}

/// Restores weights, optimiser state and loop state from a verified checkpoint.
fn restore<M: TrainModel, O: StepOptimizer + ?Sized>(
    model: &mut M,
    optimizer: &mut O,
    dir: &Path,
) -> Result<TrainerState, TrainerError> {
    let state = TrainerState::read(&dir.join(TRAINER_STATE))?;
    model.load_weights(dir)?;
    if !optimizer.restore_state(dir)? {
        tracing::warn!(
            "{} has no optimizer state this run can read (save_only_model, or a ZeRO-partitioned state resumed without ZeRO): the optimizer restarts from zero",
            dir.display()
        );
    }
    model.set_rng_position(state.rng_micro_batches);
    Ok(state)
}

struct Window {
    loss: f64,
    steps: u64,
    tokens: u64,
    secs: f64,
    times: StepTimes,
    forward_known: bool,
}

impl Window {
    fn new() -> Self {
        Window {
            loss: 0.0,
            steps: 0,
            tokens: 0,
            secs: 0.0,
            times: StepTimes::default(),
            forward_known: true,
        }
    }
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
    let plan = StepPlan {
        num_examples: data.train.len(),
        batch_size: cfg.per_device_train_batch_size,
        grad_accum: cfg.gradient_accumulation_steps,
        seed: cfg.seed,
        world_size: group.world_size(),
        rank: group.rank(),
    };
    let total_steps = plan.total_steps(cfg.num_train_epochs, cfg.max_steps);
    let schedule = LrSchedule::from_config(cfg, total_steps);
    let mut state = TrainerState {
        global_step: 0,
        max_steps: total_steps,
        epoch: 0.0,
        next_position: plan.position(0),
        plan,
        schedule,
        seed: cfg.seed,
        rng_micro_batches: 0,
        loss_total: 0.0,
        tokens_total: 0,
        samples_total: 0,
        last_loss: None,
        last_eval_loss: None,
    };
    let mut resumed_from_step = None;
    if let Some(dir) = &ctx.resume_from {
        let old = restore(model, optimizer, dir)?;
        if old.plan.batch_size != plan.batch_size
            || old.plan.grad_accum != plan.grad_accum
            || old.plan.num_examples != plan.num_examples
        {
            tracing::warn!(
                "resuming with a different batch plan (examples {}→{}, batch {}→{}, accumulation {}→{}): the data order after step {} differs from an uninterrupted run",
                old.plan.num_examples, plan.num_examples, old.plan.batch_size, plan.batch_size, old.plan.grad_accum, plan.grad_accum, old.global_step
            );
        }
        state = TrainerState {
            plan,
            schedule,
            max_steps: total_steps,
            next_position: plan.position(old.global_step),
            ..old
        };
        resumed_from_step = Some(state.global_step);
        tracing::info!(
            "resumed from {} at step {}/{total_steps}",
            dir.display(),
            state.global_step
        );
    }
    let log = TrainerLog::open(&ctx.output_dir, resumed_from_step.is_none())?;
    if let Some(step) = resumed_from_step {
        if is_main {
            log.truncate_after(step)?;
        }
    }
    let mut losses: Vec<(u64, f64)> = log
        .read_all()
        .iter()
        .filter_map(|r| r.loss.map(|l| (r.current_steps, l)))
        .collect();
    if let Some(m) = ctx.metrics {
        m.total_steps.set(total_steps as i64);
    }
    let bar = (ctx.progress_bar && is_main).then(|| {
        let bar = indicatif::ProgressBar::new(total_steps);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "[{bar:30.cyan/blue}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_position(state.global_step);
        bar
    });

    let start_step = state.global_step;
    let rx = spawn_loader(
        plan,
        data.train.clone(),
        data.pad_id,
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
    let started = Instant::now();
    let mut window = Window::new();
    let mut memory = crate::memory_report::MemoryProbe::default();
    let mut samples_run = 0u64;
    let mut tokens_run = 0u64;
    let mut last_saved: Option<u64> = checkpoint::newest_valid(&ctx.output_dir).map(|f| f.step);
    let eval_every = match cfg.eval_strategy {
        EvalStrategy::Steps => cfg.eval_steps.unwrap_or(cfg.logging_steps).max(1) as u64,
        _ => 0,
    };

    while state.global_step < total_steps {
        let step = state.global_step;
        let t_data = Instant::now();
        let batches = rx
            .recv()
            .map_err(|_| TrainerError::runtime("the data thread stopped unexpectedly"))?;
        debug_assert_eq!(batches.step, step);
        let local_labels: u64 = batches.micro.iter().map(|b| b.label_tokens).sum();
        let label_tokens = group.sum_scalar(local_labels as f64)?;
        let mut device_batches: Vec<(Tensor, Tensor)> = batches
            .micro
            .iter()
            .map(|b| to_device(b, ctx.device))
            .collect();
        // The epoch's last micro-batch may leave some ranks without rows; a partitioned model
        // needs the same number of passes on every rank.
        if model.lockstep() {
            while (device_batches.len() as u64) < batches.position.micro_batches {
                device_batches.push(to_device(&label_free_batch(data.pad_id), ctx.device));
            }
        }
        let data_secs = t_data.elapsed().as_secs_f64();

        let t_compute = Instant::now();
        let mut loss_sum = 0.0;
        let mut forward_secs = Some(0.0);
        if label_tokens > 0.0 {
            let scale = 1.0 / label_tokens;
            for (ids, labels) in &device_batches {
                let out = model.loss_sum_and_backward(ids, labels, scale)?;
                loss_sum += out.loss_sum;
                forward_secs = forward_secs.zip(out.forward_secs).map(|(a, b)| a + b);
            }
        } else {
            tracing::warn!("step {} has no label tokens (every response was truncated away?); skipping its update", step + 1);
        }
        sync(ctx.device);
        let compute_secs = t_compute.elapsed().as_secs_f64();

        let t_opt = Instant::now();
        let loss = if label_tokens > 0.0 {
            group.sum_scalar(loss_sum)? / label_tokens
        } else {
            0.0
        };
        if !loss.is_finite() {
            return Err(non_finite("loss", loss, step + 1, cfg, &ctx.numeric_setup));
        }
        let norm = optimizer.reduce_gradients(group, &params)?;
        if !norm.is_finite() {
            return Err(non_finite(
                "gradient norm",
                norm,
                step + 1,
                cfg,
                &ctx.numeric_setup,
            ));
        }
        optimizer.clip_gradients(&params, norm, cfg.max_grad_norm);
        let lr = schedule.lr(step);
        if label_tokens > 0.0 {
            optimizer.step(&params, lr)?;
            if is_main {
                memory.after_step(cfg, &*model, &*optimizer, &params, step + 1, ctx.device);
            }
        }
        zero_gradients(&params);
        sync(ctx.device);
        let opt_secs = t_opt.elapsed().as_secs_f64();

        // Bookkeeping.
        state.global_step += 1;
        state.rng_micro_batches = model.rng_position();
        state.next_position = plan.position(state.global_step);
        state.epoch = plan.epoch_after(state.global_step);
        state.loss_total += loss;
        let step_tokens: u64 = batches.micro.iter().map(|b| b.tokens).sum();
        let step_samples: u64 = batches.micro.iter().map(|b| b.batch_size as u64).sum();
        let step_tokens = group.sum_scalar(step_tokens as f64)? as u64;
        let step_samples = group.sum_scalar(step_samples as f64)? as u64;
        state.tokens_total += step_tokens;
        state.samples_total += step_samples;
        tokens_run += step_tokens;
        samples_run += step_samples;
        window.loss += loss;
        window.steps += 1;
        window.tokens += step_tokens;
        window.secs += data_secs + compute_secs + opt_secs;
        window.times.data += data_secs;
        window.times.forward_backward += compute_secs;
        window.times.optimizer += opt_secs;
        match forward_secs {
            Some(f) => *window.times.forward.get_or_insert(0.0) += f,
            None => window.forward_known = false,
        }
        if let Some(b) = &bar {
            b.set_position(state.global_step);
            b.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
        }

        let log_now = state
            .global_step
            .is_multiple_of(cfg.logging_steps.max(1) as u64)
            || state.global_step == total_steps;
        let epoch_end = {
            let pos = plan.position(step);
            pos.batch_index + pos.micro_batches >= plan.batches_per_epoch()
        };
        let eval_now = (eval_every > 0
            && (state.global_step.is_multiple_of(eval_every) || state.global_step == total_steps))
            || (cfg.eval_strategy == EvalStrategy::Epoch
                && (epoch_end || state.global_step == total_steps));
        let mut eval_loss = None;
        if eval_now {
            eval_loss = evaluate(
                model,
                &data.eval,
                cfg.per_device_eval_batch_size,
                data.pad_id,
                ctx.device,
                group,
            )?;
            if let Some(e) = eval_loss {
                state.last_eval_loss = Some(e);
                if let Some(m) = ctx.metrics {
                    m.eval_loss.set(e);
                }
            }
        }
        if log_now || eval_loss.is_some() {
            let n = window.steps.max(1) as f64;
            let mean_loss = window.loss / n;
            state.last_loss = Some(mean_loss);
            let elapsed = started.elapsed().as_secs_f64();
            let done_here = (state.global_step - start_step) as f64;
            let remaining = elapsed / done_here.max(1.0) * (total_steps - state.global_step) as f64;
            let throughput = window.tokens as f64 / window.secs.max(1e-9);
            let peak = peak_memory_bytes(ctx.device);
            let times = StepTimes {
                data: window.times.data / n,
                forward_backward: window.times.forward_backward / n,
                forward: window
                    .times
                    .forward
                    .filter(|_| window.forward_known)
                    .map(|f| f / n),
                backward: window
                    .times
                    .forward
                    .filter(|_| window.forward_known)
                    .map(|f| (window.times.forward_backward - f) / n),
                optimizer: window.times.optimizer / n,
            };
            let record = LogRecord {
                current_steps: state.global_step,
                total_steps,
                loss: Some(mean_loss),
                eval_loss,
                lr: Some(lr),
                grad_norm: Some(norm),
                epoch: (state.epoch * 100.0).round() / 100.0,
                percentage: (state.global_step as f64 / total_steps as f64 * 10000.0).round()
                    / 100.0,
                elapsed_time: hms(elapsed),
                remaining_time: hms(remaining),
                throughput: Some((throughput * 100.0).round() / 100.0),
                total_tokens: Some(state.tokens_total),
                step_time: Some(times),
                peak_memory_bytes: peak,
            };
            if is_main {
                log.append(&record)?;
                memory.write(&log)?;
                losses.push((state.global_step, mean_loss));
                if bar.is_none() {
                    tracing::info!(
                        step = state.global_step,
                        total = total_steps,
                        loss = format!("{mean_loss:.4}"),
                        eval_loss = eval_loss.map(|e| format!("{e:.4}")),
                        lr = format!("{lr:.3e}"),
                        grad_norm = format!("{norm:.3}"),
                        tokens_per_s = format!("{throughput:.0}"),
                        "progress"
                    );
                }
                if let Some(m) = ctx.metrics {
                    m.step.set(state.global_step as i64);
                    m.loss.set(mean_loss);
                    m.learning_rate.set(lr);
                    m.grad_norm.set(norm);
                    m.tokens_per_second.set(throughput);
                    if let Some(p) = peak {
                        m.peak_memory_bytes.set(p as i64);
                    }
                }
                if let Some(s) = ctx.status {
                    s.progress(Progress {
                        step: state.global_step,
                        total_steps,
                        step_display: Progress::step_display(state.global_step, total_steps),
                        epoch: record.epoch,
                        loss: Some(mean_loss),
                        eval_loss: state.last_eval_loss,
                        learning_rate: Some(lr),
                        tokens_per_second: Some(throughput),
                        measured_peak_bytes: peak,
                        bus_bandwidth_gbps: ctx.bus_bandwidth_gbps,
                        updated_at: Some(Time(k8s_openapi::jiff::Timestamp::now())),
                    });
                }
            }
            window = Window::new();
        }

        // A signal reaches the ranks at different moments: every rank stops after the same step
        // (a rank that stopped alone would wait in collectives the others never make).
        let signalled = ctx.stop.load(Ordering::SeqCst);
        let stopping = if group.world_size() > 1 {
            group.sum_scalar(if signalled { 1.0 } else { 0.0 })? > 0.0
        } else {
            signalled
        };
        let save_now = cfg.save_steps > 0
            && state.global_step.is_multiple_of(cfg.save_steps as u64)
            && state.global_step < total_steps;
        if save_now || stopping {
            // Every rank makes the saved weights whole (ZeRO-3 gathers them) before rank 0 writes.
            model.gather_weights(is_main)?;
            group.barrier()?;
            let staged = if optimizer.partitioned() && !cfg.save_only_model {
                let dir = staging_dir(&ctx.output_dir, state.global_step);
                std::fs::create_dir_all(&dir).map_err(|e| TrainerError::io("create", &dir, e))?;
                write_optimizer_state(optimizer, &dir)?;
                Some(dir)
            } else {
                None
            };
            group.barrier()?;
            if is_main {
                let files: Vec<String> = (0..group.world_size())
                    .map(|r| crate::zero::ZeroOptimizer::shard_file(r, group.world_size()))
                    .collect();
                let path = save_checkpoint(
                    cfg,
                    model,
                    optimizer,
                    &state,
                    &ctx.output_dir,
                    staged.as_deref().map(|d| (d, files.as_slice())),
                )?;
                tracing::info!("saved {}", path.display());
                if let Some(s) = ctx.status {
                    s.checkpoints(checkpoint_records(&ctx.output_dir, &losses));
                }
            }
            last_saved = Some(state.global_step);
            group.barrier()?;
            model.release_weights()?;
        }
        if stopping {
            if let Some(b) = &bar {
                b.abandon();
            }
            return Err(TrainerError::Interrupted {
                step: state.global_step,
                checkpoint: last_saved,
            });
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    let runtime = started.elapsed().as_secs_f64();
    // A final evaluation when evaluation was asked for but the schedule did not end on one.
    let eval_loss = match (cfg.eval_strategy, state.last_eval_loss) {
        (EvalStrategy::No, _) => None,
        (_, Some(e)) => Some(e),
        _ => {
            let e = evaluate(
                model,
                &data.eval,
                cfg.per_device_eval_batch_size,
                data.pad_id,
                ctx.device,
                group,
            )?;
            state.last_eval_loss = e.or(state.last_eval_loss);
            e
        }
    };
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
