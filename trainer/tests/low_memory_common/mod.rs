//! Shared by `memory_vs_planner.rs` and `low_memory_e2e.rs`: a tiny-but-not-trivial random Llama
//! (2 layers, hidden 256, intermediate 640, 4 heads / 2 KV heads, untied head, ~100-token word
//! vocabulary) and alpaca data made by `tests/reference/trainer_make_tiny.py`, configs for it, and
//! running the `lf-trainer` binary on them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use lf_trainer::memory_report::{MemoryBytes, MemoryRecord};
use lf_trainer::outputs::TrainerLog;

/// Hidden size of the tiny model: 64-element quantisation blocks, 256-element 8-bit optimiser
/// blocks and the 4096-element small-tensor rule of 8-bit AdamW all matter at this size (a LoRA
/// `A` of r=8 on a 256-wide input has 2048 elements and keeps fp32 moments; on the 640-wide
/// `down_proj` input it has 5120 and is quantised).
pub const HIDDEN: usize = 256;

pub fn python() -> PathBuf {
    match std::env::var_os("LF_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    }
}

pub fn reference_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference")
        .join(name)
}

#[path = "../support/process_dir.rs"]
mod process_dir;

/// The tiny model (`assets()/model`) and data (`assets()/data`), made once per test process
/// (removed when it exits).
pub fn assets() -> &'static Path {
    static DIR: OnceLock<&'static Path> = OnceLock::new();
    DIR.get_or_init(|| make_assets("llama"))
}

/// The same tiny model and data in another family (`qwen3`, `gemma3_text`, `phi3`), made once per test
/// process and family.
pub fn family_assets(family: &'static str) -> &'static Path {
    static DIRS: OnceLock<std::sync::Mutex<Vec<(&'static str, &'static Path)>>> = OnceLock::new();
    let mut dirs = DIRS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = dirs.iter().find(|(f, _)| *f == family) {
        return p;
    }
    // Kept for the whole process, as `assets()`'s is.
    let dir = make_assets(family);
    dirs.push((family, dir));
    dir
}

fn make_assets(family: &str) -> &'static Path {
    let py = python();
    assert!(
        py.exists(),
        "the Python reference stack is missing: {} (set LF_PYTHON or run the install script)",
        py.display()
    );
    let dir = process_dir::process_tempdir();
    let out = Command::new(&py)
        .arg(reference_script("trainer_make_tiny.py"))
        .arg(dir)
        .args(["--hidden", &HIDDEN.to_string(), "--examples", "64"])
        .args(["--family", family])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trainer_make_tiny.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Writes `dir/train.yaml` for the tiny model (LoRA r=8 on all linears, output in `dir/out`),
/// with `extra` YAML lines merged in (`extra` wins).
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    write_config_for(assets(), dir, extra)
}

/// [`write_config`] for the model and data in `a` (see [`family_assets`]).
pub fn write_config_for(a: &Path, dir: &Path, extra: &str) -> PathBuf {
    let base = format!(
        "model_name_or_path: {m}\ndataset: tiny\ndataset_dir: {d}\ntemplate: alpaca\ncutoff_len: 64\n\
         output_dir: {o}\noverwrite_output_dir: true\nper_device_train_batch_size: 4\n\
         gradient_accumulation_steps: 1\nlearning_rate: 1.0e-3\nlr_scheduler_type: constant\n\
         max_steps: 2\nlogging_steps: 1\nsave_steps: 0\nfinetuning_type: lora\nlora_rank: 8\n\
         lora_target: all\n",
        m = a.join("model").display(),
        d = a.join("data").display(),
        o = dir.join("out").display(),
    );
    let mut map: serde_yaml::Mapping = serde_yaml::from_str(&base).unwrap();
    let more: Option<serde_yaml::Mapping> = serde_yaml::from_str(extra).unwrap();
    map.extend(more.unwrap_or_default());
    let path = dir.join("train.yaml");
    std::fs::write(&path, serde_yaml::to_string(&map).unwrap()).unwrap();
    path
}

/// Runs `lf-trainer ARGS`. One libtorch thread: tests run side by side on few cores, where
/// spinning OpenMP workers of several processes slow each other down by an order of magnitude.
pub fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lf-trainer"))
        .args(args)
        .env_remove("LF_CONFIG")
        .env_remove("LF_JOB_NAME")
        .env_remove("LF_STATUS_FILE")
        .env_remove("LF_METRICS_ADDR")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

/// `lf-trainer train CONFIG OVERRIDES...`, asserting success.
pub fn train(cfg: &Path, overrides: &[&str]) -> Output {
    let mut args = vec!["train", cfg.to_str().unwrap()];
    args.extend_from_slice(overrides);
    let o = trainer(&args);
    assert!(
        o.status.success(),
        "lf-trainer {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `(step, loss)` of every progress record of `out/trainer_log.jsonl`.
pub fn losses(out: &Path) -> Vec<(u64, f64)> {
    TrainerLog::open(out, false)
        .unwrap()
        .read_all()
        .iter()
        .filter_map(|r| r.loss.map(|l| (r.current_steps, l)))
        .collect()
}

/// The `{"memory": ...}` records of `out/trainer_log.jsonl`.
pub fn memory(out: &Path) -> Vec<MemoryRecord> {
    TrainerLog::open(out, false).unwrap().read_memory()
}

/// Mean of the losses of `steps`.
pub fn mean(losses: &[(u64, f64)]) -> f64 {
    losses.iter().map(|(_, l)| l).sum::<f64>() / losses.len().max(1) as f64
}

/// The model-state categories of a memory record, measured next to planned.
pub fn categories(m: &MemoryBytes, p: &MemoryBytes) -> [(&'static str, u64, u64); 6] {
    [
        (
            "frozen weights",
            m.frozen_weight_bytes,
            p.frozen_weight_bytes,
        ),
        (
            "trainable weights",
            m.trainable_weight_bytes,
            p.trainable_weight_bytes,
        ),
        ("gradients", m.gradient_bytes, p.gradient_bytes),
        (
            "optimizer state on the device",
            m.optimizer_bytes,
            p.optimizer_bytes,
        ),
        (
            "optimizer state in host memory",
            m.offloaded_optimizer_bytes,
            p.offloaded_optimizer_bytes,
        ),
        (
            "checkpoints in host memory",
            m.offloaded_activation_bytes,
            p.offloaded_activation_bytes,
        ),
    ]
}
