//! Helpers shared by lf-optim's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use lf_api::training::TrainingConfig;
use tch::{Kind, Tensor};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python reference interpreter (`LF_PYTHON`, default `<repo>/.venv/bin/python`); panics
/// with instructions when it is missing.
pub fn python() -> PathBuf {
    let p = std::env::var_os("LF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "the Python reference stack is missing: {} does not exist (install it or set LF_PYTHON)",
        p.display()
    );
    p
}

pub fn training_config() -> TrainingConfig {
    TrainingConfig::from_yaml_str("{}").expect("default config")
}

/// Accumulates exactly `g` into `p.grad()` (d/dp Σ p·g = g).
pub fn set_grad(p: &Tensor, g: &Tensor) {
    (p * g.to_kind(p.kind())).sum(p.kind()).backward();
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
