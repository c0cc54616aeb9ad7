//! Helpers shared by lf-model's integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lf_api::architecture::ModelArchitecture;
use lf_model::safetensors_io::MappedFile;
use tch::{Device, Kind, Tensor};

/// The Python interpreter of the reference stack: `$LF_PYTHON` or `<repo>/.venv/bin/python`.
pub fn python() -> PathBuf {
    match std::env::var_os("LF_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
    }
}

/// Runs `tests/reference/model_reference.py MODE OUT`, failing the test with its output if it fails.
pub fn reference(mode: &str, out: &Path) {
    reference_script("model_reference.py", mode, out)
}

/// Runs `tests/reference/SCRIPT MODE OUT`, failing the test with its output if it fails.
pub fn reference_script(script: &str, mode: &str, out: &Path) {
    let py = python();
    assert!(
        py.exists(),
        "the Python reference stack is missing: {} does not exist (set LF_PYTHON or run scripts/install-python-ref.sh)",
        py.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference")
        .join(script);
    let output = Command::new(&py)
        .arg(&script)
        .arg(mode)
        .arg(out)
        .output()
        .expect("cannot start the Python reference");
    assert!(
        output.status.success(),
        "reference script `{mode}` failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every tensor of a safetensors file, on the CPU.
pub fn read_all(path: &Path) -> HashMap<String, Tensor> {
    let f = MappedFile::open(path).unwrap();
    f.names()
        .unwrap()
        .into_iter()
        .map(|n| {
            let t = f.load(&n, None, Device::Cpu).unwrap();
            (n, t)
        })
        .collect()
}

/// max |a − b| / max |b|.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - &b).abs().max().double_value(&[]) / scale
}

#[allow(unused_imports)] // not every test binary draws weights
pub use lf_model::testing::random_weights;

/// lf-model's tiny architecture (see [`lf_model::testing`]).
pub fn tiny_arch(tied: bool) -> ModelArchitecture {
    lf_model::testing::tiny_arch(lf_model::testing::TinySize::MODEL, tied)
}

/// A batch with masked prompts and a right-padded row.
pub fn batch(vocab: i64, b: i64, s: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let ids = Tensor::randint(vocab, [b, s], (Kind::Int64, Device::Cpu));
    let labels = ids.copy();
    let _ = labels.narrow(1, 0, s / 4).fill_(-100);
    if b > 1 {
        let _ = labels.get(1).narrow(0, s - s / 4, s / 4).fill_(-100);
        let _ = ids.get(1).narrow(0, s - s / 4, s / 4).fill_(0);
    }
    (ids, labels)
}

/// libtorch's global generator is shared by the test threads of one binary: hold this while
/// seeding and drawing.
pub static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`RNG_LOCK`], surviving a panicked holder.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
