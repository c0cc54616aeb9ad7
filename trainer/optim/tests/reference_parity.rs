//! Our AdamW, SGD and Adafactor against `torch.optim.AdamW`, `torch.optim.SGD` and
//! `transformers.optimization.Adafactor` over several steps with identical gradients (fp32, CPU),
//! run in one batch by `tests/reference/optim_torch.py`. Also: offloaded AdamW equals AdamW.

mod common;

use std::collections::HashMap;

use common::{max_abs_diff, python, repo_root, set_grad, training_config};
use lf_api::training::{OffloadDevice, Optim};
use tch::{Device, Kind, Tensor};

const STEPS: usize = 6;

struct Case {
    name: &'static str,
    spec: serde_json::Value,
}

fn cases() -> Vec<Case> {
    let adam = |name, wd: f64| Case {
        name,
        spec: serde_json::json!({"optim": "adamw", "lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": wd}),
    };
    vec![
        adam("adamw", 0.1),
        adam("adamw_nowd", 0.0),
        Case {
            name: "sgd",
            spec: serde_json::json!({"optim": "sgd", "lr": 5e-2, "momentum": 0.0, "weight_decay": 0.01}),
        },
        Case {
            name: "sgd_momentum",
            spec: serde_json::json!({"optim": "sgd", "lr": 5e-2, "momentum": 0.9, "weight_decay": 0.0}),
        },
        Case {
            name: "adafactor",
            spec: serde_json::json!({"optim": "adafactor", "lr": 1e-2, "weight_decay": 0.0}),
        },
        Case {
            name: "adafactor_wd",
            spec: serde_json::json!({"optim": "adafactor", "lr": 1e-2, "weight_decay": 0.1}),
        },
    ]
}

const PARAMS: [(&str, &[i64]); 3] = [("w", &[17, 33]), ("b", &[33]), ("t", &[3, 4, 5])];

fn build(case: &Case, params: &[(String, Tensor)], offload: bool) -> Box<dyn lf_optim::Optimizer> {
    let s = &case.spec;
    let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
    match s["optim"].as_str() {
        Some("sgd") if f("momentum") != 0.0 => {
            lf_optim::sgd_with_momentum(params, f("momentum"), f("weight_decay"), offload)
                .expect("sgd")
        }
        Some(kind) => {
            let mut cfg = training_config();
            cfg.optim = match kind {
                "adamw" => Optim::AdamwTorch,
                "sgd" => Optim::Sgd,
                _ => Optim::Adafactor,
            };
            cfg.weight_decay = f("weight_decay");
            if kind == "adamw" {
                cfg.adam_beta1 = f("beta1");
                cfg.adam_beta2 = f("beta2");
                cfg.adam_epsilon = f("eps");
            }
            cfg.offload_optimizer = if offload {
                OffloadDevice::Cpu
            } else {
                OffloadDevice::None
            };
            lf_optim::build(&cfg, params).expect("build")
        }
        None => panic!("case without optim"),
    }
}

/// Runs our optimiser over the case's gradients; returns the parameters after each step.
fn run_ours(
    case: &Case,
    inputs: &HashMap<String, Tensor>,
    offload: bool,
) -> HashMap<String, Tensor> {
    let params: Vec<(String, Tensor)> = PARAMS
        .iter()
        .map(|(p, _)| {
            (
                p.to_string(),
                inputs[&format!("{}.{p}.init", case.name)]
                    .copy()
                    .set_requires_grad(true),
            )
        })
        .collect();
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    let mut opt = build(case, &params, offload);
    let lr = case.spec["lr"].as_f64().unwrap_or(0.0);
    let mut out = HashMap::new();
    for k in 0..STEPS {
        opt.zero_grad(&tensors);
        for (p, t) in PARAMS.iter().zip(&tensors) {
            set_grad(t, &inputs[&format!("{}.{}.grad{k}", case.name, p.0)]);
        }
        opt.step(&tensors, lr).expect("step");
        for (p, t) in PARAMS.iter().zip(&tensors) {
            out.insert(format!("{}.{}.step{k}", case.name, p.0), t.detach().copy());
        }
    }
    out
}

#[test]
fn adamw_sgd_adafactor_match_the_python_reference() {
    tch::manual_seed(11);
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = cases();
    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    let mut spec = Vec::new();
    for c in &cases {
        for (p, shape) in PARAMS {
            inputs.push((
                format!("{}.{p}.init", c.name),
                Tensor::randn(shape, (Kind::Float, Device::Cpu)),
            ));
            for k in 0..STEPS {
                // Gradients of varied scale, one step with a zero gradient entry pattern.
                let g = Tensor::randn(shape, (Kind::Float, Device::Cpu)) * (0.1 * (k as f64 + 1.0));
                inputs.push((format!("{}.{p}.grad{k}", c.name), g));
            }
        }
        let mut s = c.spec.clone();
        s["name"] = c.name.into();
        s["steps"] = STEPS.into();
        s["params"] = serde_json::json!(PARAMS.iter().map(|(p, _)| *p).collect::<Vec<_>>());
        spec.push(s);
    }
    std::fs::write(
        dir.path().join("cases.json"),
        serde_json::to_string(&spec).expect("json"),
    )
    .expect("write");
    Tensor::write_safetensors(&inputs, dir.path().join("inputs.safetensors"))
        .expect("write inputs");
    let script = repo_root().join("tests/reference/optim_torch.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("run reference");
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("outputs.safetensors"))
            .expect("outputs")
            .into_iter()
            .collect();
    let inputs: HashMap<String, Tensor> = inputs.into_iter().collect();

    for c in &cases {
        let ours = run_ours(c, &inputs, false);
        for k in 0..STEPS {
            for (p, _) in PARAMS {
                let key = format!("{}.{p}.step{k}", c.name);
                let d = max_abs_diff(&ours[&key], &reference[&key]);
                assert!(d <= 1e-6, "{key}: max |ours − reference| = {d:e}");
            }
        }
        // Offloading (fp32 master + states on the CPU, a separate copy even for fp32 params)
        // must not change the numbers.
        let offloaded = run_ours(c, &inputs, true);
        for (key, t) in &offloaded {
            let d = max_abs_diff(t, &ours[key]);
            assert!(d == 0.0, "{key}: offloaded differs from in-place by {d:e}");
        }
    }
}
