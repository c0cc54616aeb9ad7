//! The training loop's arithmetic and resumability on a tiny in-memory Llama (no Python needed).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use lf_trainer::adapters::LmTrainee;
use lf_trainer::interfaces::{MicroOutput, ModelMemory, TrainModel};
use lf_trainer::outputs::TrainerLog;
use lf_trainer::train_loop::train;
use lf_trainer::TrainerError;
use tch::Tensor;

#[test]
fn batch_8_equals_batch_1_times_accumulation_8() {
    let data = data(16, 0);
    let run = |extra: &str| {
        let out = tempfile::tempdir().unwrap();
        let cfg = config(&format!(
            "optim: sgd\nlearning_rate: 0.5\nmax_steps: 2\n{extra}"
        ));
        let mut t = trainee(&cfg);
        let mut o = optimizer(&cfg, &t);
        let s = train(
            &cfg,
            &mut t,
            &mut o,
            &data,
            &context(out.path(), Arc::new(AtomicBool::new(false)), None),
        )
        .unwrap();
        (weights(&t), s.train_loss)
    };
    let (w8, l8) = run("per_device_train_batch_size: 8\ngradient_accumulation_steps: 1\n");
    let (w1, l1) = run("per_device_train_batch_size: 1\ngradient_accumulation_steps: 8\n");
    let (w2, _) = run("per_device_train_batch_size: 2\ngradient_accumulation_steps: 4\n");
    let start = weights(&trainee(&config("")));
    assert!(
        max_abs_diff(&w8, &start) > 1e-3,
        "the steps must change the adapter"
    );
    let d = max_abs_diff(&w8, &w1);
    assert!(d < 1e-6, "8×1 and 1×8 differ by {d}");
    assert!(max_abs_diff(&w8, &w2) < 1e-6);
    assert!((l8 - l1).abs() < 1e-6, "losses {l8} vs {l1}");
}

/// Delegates to the model and raises the stop flag (as SIGTERM would) during micro-batch `at`.
struct StopAt {
    inner: LmTrainee,
    stop: Arc<AtomicBool>,
    at: u64,
}

impl TrainModel for StopAt {
    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        self.inner.trainable_parameters()
    }
    fn set_training(&mut self, on: bool) {
        self.inner.set_training(on)
    }
    fn loss_sum_and_backward(
        &mut self,
        ids: &Tensor,
        labels: &Tensor,
        scale: f64,
    ) -> Result<MicroOutput, TrainerError> {
        if self.inner.rng_position() + 1 == self.at {
            self.stop.store(true, Ordering::SeqCst);
        }
        self.inner.loss_sum_and_backward(ids, labels, scale)
    }
    fn eval_loss_sum(&mut self, ids: &Tensor, labels: &Tensor) -> Result<f64, TrainerError> {
        self.inner.eval_loss_sum(ids, labels)
    }
    fn save_weights(&self, dir: &Path) -> Result<(), TrainerError> {
        self.inner.save_weights(dir)
    }
    fn load_weights(&mut self, dir: &Path) -> Result<(), TrainerError> {
        self.inner.load_weights(dir)
    }
    // The defaulted methods too: a wrapper that kept the defaults would checkpoint
    // `rng_micro_batches = 0` and never restore the dropout stream position.
    fn rng_position(&self) -> u64 {
        self.inner.rng_position()
    }
    fn set_rng_position(&mut self, micro_batches: u64) {
        self.inner.set_rng_position(micro_batches)
    }
    fn gather_weights(&mut self, keep: bool) -> Result<(), TrainerError> {
        self.inner.gather_weights(keep)
    }
    fn release_weights(&mut self) -> Result<(), TrainerError> {
        self.inner.release_weights()
    }
    fn memory(&self) -> Option<ModelMemory> {
        self.inner.memory()
    }
    fn set_total_steps(&mut self, total_steps: u64) -> Result<(), TrainerError> {
        self.inner.set_total_steps(total_steps)
    }
    fn regularizer_backward(&mut self, scale: f64) -> Result<f64, TrainerError> {
        self.inner.regularizer_backward(scale)
    }
    fn after_optimizer_step(&mut self, step: u64) -> Result<(), TrainerError> {
        self.inner.after_optimizer_step(step)
    }
}

const RESUMED_RUN: &str = "optim: adamw_torch\nweight_decay: 0.01\nlr_scheduler_type: cosine\nwarmup_ratio: 0.2\nmax_steps: 8\n\
     per_device_train_batch_size: 2\ngradient_accumulation_steps: 2\nmax_grad_norm: 1.0\nsave_steps: 3\n";

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    interrupted_and_resumed_equals_uninterrupted(&config(RESUMED_RUN));
}

/// AdaLoRA, interrupted in its budgeting phase (after the masks at steps 2 and 4 of 8): the
/// checkpoint's state (full-rank adapters, importance EMAs, rank pattern) continues it exactly.
#[test]
fn adalora_interrupted_and_resumed_run_equals_uninterrupted_run() {
    let cfg = config(&format!(
        "{RESUMED_RUN}use_adalora: true\nadalora_init_r: 4\nadalora_rank: 2\nadalora_tinit: 1\nadalora_tfinal: 2\nadalora_delta_t: 2\n"
    ));
    let out = interrupted_and_resumed_equals_uninterrupted(&cfg);
    let ckpt = out.path().join("checkpoint-4");
    assert!(ckpt.join(lf_model::ADALORA_STATE).is_file());
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ckpt.join(lf_model::ADAPTER_CONFIG)).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["peft_type"], "ADALORA");
    assert!(saved["rank_pattern"].is_object(), "{saved}");
}

/// Trains `cfg` (8 steps, checkpoints every 3) uninterrupted, then interrupted during step 4 and
/// resumed from checkpoint-4 in a fresh model: the weights, the mean loss and the log equal.
/// Returns the interrupted run's output directory.
fn interrupted_and_resumed_equals_uninterrupted(
    cfg: &lf_api::training::TrainingConfig,
) -> tempfile::TempDir {
    let cfg = cfg.clone();
    let data = data(20, 4);
    // Uninterrupted: 8 steps.
    let full = tempfile::tempdir().unwrap();
    let mut t = trainee(&cfg);
    let mut o = optimizer(&cfg, &t);
    let done = train(
        &cfg,
        &mut t,
        &mut o,
        &data,
        &context(full.path(), Arc::new(AtomicBool::new(false)), None),
    )
    .unwrap();
    assert_eq!(done.global_step, 8);
    let reference = weights(&t);

    // Interrupted during step 4 (micro-batch 8 of 2 per step): it finishes step 4, saves, stops.
    let out = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut t = StopAt {
        inner: trainee(&cfg),
        stop: stop.clone(),
        at: 8,
    };
    let mut o = optimizer(&cfg, &t.inner);
    let err = train(
        &cfg,
        &mut t,
        &mut o,
        &data,
        &context(out.path(), stop, None),
    )
    .unwrap_err();
    match &err {
        TrainerError::Interrupted {
            step: 4,
            checkpoint: Some(4),
        } => {}
        other => panic!("expected an interruption after step 4 with checkpoint-4, got {other:?}"),
    }
    assert_eq!(err.exit_code(), lf_api::runtime::exit_code::INTERRUPTED);
    let ckpt = lf_trainer::checkpoint::newest_valid(out.path()).unwrap();
    assert_eq!(ckpt.step, 4);

    // A fresh process: new model and optimiser, resumed from checkpoint-4.
    let mut t = trainee(&cfg);
    let mut o = optimizer(&cfg, &t);
    let ctx = context(
        out.path(),
        Arc::new(AtomicBool::new(false)),
        Some(ckpt.path),
    );
    let resumed = train(&cfg, &mut t, &mut o, &data, &ctx).unwrap();
    assert_eq!(resumed.resumed_from_step, Some(4));
    let d = max_abs_diff(&weights(&t), &reference);
    assert!(
        d < 1e-6,
        "resumed adapter differs from the uninterrupted one by {d}"
    );
    assert!((resumed.train_loss - done.train_loss).abs() < 1e-6);
    let steps: Vec<u64> = TrainerLog::open(out.path(), false)
        .unwrap()
        .read_all()
        .iter()
        .map(|r| r.current_steps)
        .collect();
    assert_eq!(
        steps,
        (1..=8).collect::<Vec<_>>(),
        "each step logged exactly once across both attempts"
    );
    out
}

#[test]
fn rotation_during_training_and_evaluation() {
    let data = data(12, 5);
    let cfg = config(
        "max_steps: 5\nper_device_train_batch_size: 4\nsave_steps: 1\nsave_total_limit: 2\neval_strategy: steps\neval_steps: 2\n",
    );
    let out = tempfile::tempdir().unwrap();
    let mut t = trainee(&cfg);
    let mut o = optimizer(&cfg, &t);
    let s = train(
        &cfg,
        &mut t,
        &mut o,
        &data,
        &context(out.path(), Arc::new(AtomicBool::new(false)), None),
    )
    .unwrap();
    let left: Vec<u64> = lf_trainer::checkpoint::list(out.path())
        .iter()
        .map(|f| f.step)
        .collect();
    assert_eq!(left, vec![3, 4]);
    let log = TrainerLog::open(out.path(), false).unwrap().read_all();
    let evals: Vec<u64> = log
        .iter()
        .filter(|r| r.eval_loss.is_some())
        .map(|r| r.current_steps)
        .collect();
    assert_eq!(evals, vec![2, 4, 5]);
    assert!(s.eval_loss.unwrap().is_finite());
    let r = &log[0];
    assert!(
        r.throughput.unwrap() > 0.0 && r.peak_memory_bytes.unwrap() > 0 && r.step_time.is_some()
    );
}

#[test]
fn non_finite_loss_stops_at_once() {
    use lf_model::{CausalLm, LoadOptions};
    let data = data(8, 0);
    let cfg = config("max_steps: 3\nper_device_train_batch_size: 4\n");
    let arch = tiny_arch();
    let _rng = rng_lock();
    let mut w = random_weights(&arch, 3);
    for (name, t) in w.iter_mut() {
        if name == "lm_head.weight" {
            let _ = t.get(0).get(0).fill_(f64::NAN);
        }
    }
    let mut lm = CausalLm::from_tensors(
        arch,
        w,
        &LoadOptions::new(tch::Device::Cpu, tch::Kind::Float),
    )
    .unwrap();
    lm.apply_method(&cfg, cfg.seed).unwrap();
    let mut t = LmTrainee::new(lm, "tiny");
    let mut o = optimizer(&cfg, &t);
    let out = tempfile::tempdir().unwrap();
    let err = train(
        &cfg,
        &mut t,
        &mut o,
        &data,
        &context(out.path(), Arc::new(AtomicBool::new(false)), None),
    )
    .unwrap_err();
    assert!(matches!(err, TrainerError::NonFinite { .. }), "{err:?}");
    assert!(
        err.to_string().contains("step 1") && err.to_string().contains("learning_rate"),
        "{err}"
    );
    assert_eq!(err.exit_code(), lf_api::runtime::exit_code::CONFIG);
    assert!(err.hint().unwrap().contains("flash_attn"));
}

#[test]
fn epoch_evaluation_runs_at_each_epoch_end() {
    let data = data(12, 3);
    let cfg = config("num_train_epochs: 2\nper_device_train_batch_size: 4\neval_strategy: epoch\nlogging_steps: 100\n");
    let out = tempfile::tempdir().unwrap();
    let mut t = trainee(&cfg);
    let mut o = optimizer(&cfg, &t);
    train(
        &cfg,
        &mut t,
        &mut o,
        &data,
        &context(out.path(), Arc::new(AtomicBool::new(false)), None),
    )
    .unwrap();
    let log = TrainerLog::open(out.path(), false).unwrap().read_all();
    let evals: Vec<u64> = log
        .iter()
        .filter(|r| r.eval_loss.is_some())
        .map(|r| r.current_steps)
        .collect();
    assert_eq!(evals, vec![3, 6]);
}
