//! Shared by the preference parity tests (`preference_parity.rs`, `kto_parity.rs`): reading the
//! adapters and logs both sides write, and comparing tensors.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use tch::{Kind, Tensor};

pub fn adapter(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path.join("adapter_model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// max |a − b| / max |b| (0 when both are 0).
pub fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]);
    if diff == 0.0 {
        0.0
    } else {
        diff / scale.max(1e-30)
    }
}

/// The largest relative difference over the adapter tensors (every name in both).
pub fn worst(ours: &HashMap<String, Tensor>, theirs: &HashMap<String, Tensor>) -> (f64, String) {
    let mut names: Vec<&String> = theirs.keys().collect();
    names.sort();
    let mut keys: Vec<&String> = ours.keys().collect();
    keys.sort();
    assert_eq!(keys, names, "the adapters hold different tensors");
    names
        .into_iter()
        .map(|n| (rel(&ours[n], &theirs[n]), n.clone()))
        .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a })
}

/// The training records (those with a `loss`) of `dir/trainer_log.jsonl`.
pub fn log_records(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("trainer_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .collect()
}

/// TRL's `log.json` (its `log_history`) in `dir`.
pub fn trl_log(dir: &Path) -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("log.json")).unwrap()).unwrap()
}

/// The largest absolute difference over the adapter tensors.
pub fn max_abs(ours: &HashMap<String, Tensor>, theirs: &HashMap<String, Tensor>) -> f64 {
    theirs
        .iter()
        .map(|(name, t)| (&ours[name] - t).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// What a metric's difference is relative to: its value, except for the rewards (and KTO's `kl`),
/// which are `beta` (1) times a difference of log-probabilities and so carry those
/// log-probabilities' rounding (fp32 cancellation); they are compared relative to `beta` (1) × the
/// larger log-probability.
pub fn metric_scale(key: &str, theirs: &Value, beta: f64) -> f64 {
    let value = |k: &str| theirs[k].as_f64().unwrap().abs();
    let own = value(key).max(1e-6);
    let logps = value("logps/chosen").max(value("logps/rejected"));
    if key.starts_with("rewards/") && key != "rewards/accuracies" {
        own.max(beta * logps)
    } else if key == "kl" {
        own.max(logps)
    } else {
        own
    }
}
