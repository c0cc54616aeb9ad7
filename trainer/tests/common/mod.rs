//! Helpers shared by lf-trainer's integration tests: a tiny random Llama built in memory, tiny
//! token data, and a loop context.
#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use lf_api::architecture::ModelArchitecture;
use lf_api::training::TrainingConfig;
use lf_data::Example;
use lf_model::{CausalLm, LoadOptions};
use lf_trainer::adapters::{LmTrainee, OptimStep};
use lf_trainer::interfaces::SingleProcess;
use lf_trainer::train_loop::{RunContext, TrainData};
use tch::{Device, Kind, Tensor};

/// The trainer's tiny Llama (see [`lf_model::testing`]).
pub fn tiny_arch() -> ModelArchitecture {
    lf_model::testing::tiny_arch(lf_model::testing::TinySize::TRAINER, false)
}

/// Random weights with Hugging Face names.
pub fn random_weights(arch: &ModelArchitecture, seed: i64) -> Vec<(String, Tensor)> {
    lf_model::testing::random_weights(arch, seed)
}

/// A model with `cfg`'s method applied, from fixed random weights (same seed → same model).
/// libtorch's generator is global and tests run in parallel threads: whatever seeds it and draws
/// from it (random weights, adapter initialisation) holds this lock, so draws never interleave.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn trainee(cfg: &TrainingConfig) -> LmTrainee {
    let _guard = rng_lock();
    let arch = tiny_arch();
    let mut lm = CausalLm::from_tensors(
        arch.clone(),
        random_weights(&arch, 3),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )
    .unwrap();
    lm.apply_method(cfg, cfg.seed).unwrap();
    LmTrainee::new(lm, "tiny")
}

pub fn optimizer(cfg: &TrainingConfig, t: &LmTrainee) -> OptimStep {
    use lf_trainer::interfaces::TrainModel;
    OptimStep(lf_optim::build(cfg, &t.trainable_parameters()).unwrap())
}

/// `n` examples of varied lengths with a masked "prompt" and a trained "response".
pub fn examples(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let len = 5 + (i * 7) % 11;
            let prompt = 1 + i % 3;
            let input_ids: Vec<u32> = (0..len)
                .map(|j| ((i * 13 + j * 5) % 60 + 2) as u32)
                .collect();
            let labels = input_ids
                .iter()
                .enumerate()
                .map(|(j, &t)| if j < prompt { -100 } else { t as i32 })
                .collect();
            Example {
                input_ids,
                labels,
                rejected: None,
                kto_tag: None,
            }
        })
        .collect()
}

pub fn data(n: usize, eval: usize) -> TrainData {
    TrainData {
        train: Arc::new(examples(n)),
        eval: examples(eval),
        pad_id: 0,
    }
}

pub fn context<'a>(
    out: &Path,
    stop: Arc<AtomicBool>,
    resume: Option<std::path::PathBuf>,
) -> RunContext<'a> {
    RunContext {
        output_dir: out.to_path_buf(),
        device: Device::Cpu,
        stop,
        status: None,
        metrics: None,
        group: &SingleProcess,
        resume_from: resume,
        numeric_setup: "fp32, sdpa".into(),
        progress_bar: false,
        bus_bandwidth_gbps: None,
        resume_warning: None,
        trackers: None,
    }
}

/// A training config for the tiny model.
pub fn config(extra: &str) -> TrainingConfig {
    let base = "finetuning_type: lora\nlora_rank: 4\nlora_target: all\nlearning_rate: 0.01\nlogging_steps: 1\nsave_steps: 0\nmax_grad_norm: 0\ngradient_checkpointing: false\n";
    let mut map: serde_yaml::Mapping = serde_yaml::from_str(base).unwrap();
    let more: Option<serde_yaml::Mapping> = serde_yaml::from_str(extra).unwrap();
    map.extend(more.unwrap_or_default());
    TrainingConfig::from_yaml_value(serde_yaml::Value::Mapping(map)).unwrap()
}

/// Every trainable tensor, by name, on the CPU.
pub fn weights(t: &LmTrainee) -> Vec<(String, Tensor)> {
    use lf_trainer::interfaces::TrainModel;
    t.trainable_parameters()
        .into_iter()
        .map(|(n, p)| (n, p.detach().copy()))
        .collect()
}

pub fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}
