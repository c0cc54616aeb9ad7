//! Short CPU training runs: 8-bit AdamW follows fp32 AdamW's loss curve (both curves are written
//! to `$CARGO_TARGET_TMPDIR/adamw8bit_curves.json`), Adafactor and SGD train, offloaded and
//! AMP-master variants equal the plain step, and a resumed run equals an uninterrupted one.

mod common;

use common::{max_abs_diff, training_config};
use lf_api::training::{OffloadDevice, Optim, TrainingConfig};
use tch::{Device, Kind, Tensor};

/// libtorch's generator is global and the tests of this file run on parallel threads: every
/// seed-and-draw sequence holds this lock, so each test sees the data its seed gives.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A two-layer tanh MLP regressing a fixed random teacher: big enough that its matrices use
/// 8-bit state (≥ 4096 elements), small enough to train in a second.
struct Task {
    x: Tensor,
    y: Tensor,
}

impl Task {
    fn new() -> Self {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(3);
        let x = Tensor::randn([256, 64], (Kind::Float, Device::Cpu));
        let t1 = Tensor::randn([64, 96], (Kind::Float, Device::Cpu)) / 8.0;
        let t2 = Tensor::randn([96, 32], (Kind::Float, Device::Cpu)) / 10.0;
        let y = x.matmul(&t1).tanh().matmul(&t2);
        Task { x, y }
    }

    fn init_params(kind: Kind) -> Vec<(String, Tensor)> {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(5);
        let p = |name: &str, shape: &[i64], scale: f64| {
            let t = (Tensor::randn(shape, (Kind::Float, Device::Cpu)) * scale)
                .to_kind(kind)
                .set_requires_grad(true);
            (name.to_string(), t)
        };
        vec![
            p("w1", &[64, 128], 0.125),
            p("b1", &[128], 0.0),
            p("w2", &[128, 32], 0.09),
            p("b2", &[32], 0.0),
        ]
    }

    fn loss(&self, p: &[Tensor]) -> Tensor {
        let x = self.x.to_kind(p[0].kind());
        let h = (x.matmul(&p[0]) + &p[1]).tanh();
        let out = h.matmul(&p[2]) + &p[3];
        (out.to_kind(Kind::Float) - &self.y)
            .square()
            .mean(Kind::Float)
    }

    /// Trains for `steps` with `cfg`; returns the loss before each step and the parameters.
    fn train(
        &self,
        cfg: &TrainingConfig,
        kind: Kind,
        steps: usize,
        lr: f64,
    ) -> (Vec<f64>, Vec<Tensor>) {
        let named = Self::init_params(kind);
        let params: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
        let mut opt = lf_optim::build(cfg, &named).expect("build");
        let mut losses = Vec::new();
        for _ in 0..steps {
            opt.zero_grad(&params);
            let loss = self.loss(&params);
            losses.push(loss.double_value(&[]));
            loss.backward();
            opt.step(&params, lr).expect("step");
        }
        (losses, params)
    }
}

fn cfg(optim: Optim) -> TrainingConfig {
    let mut c = training_config();
    c.optim = optim;
    c.weight_decay = 0.01;
    c
}

#[test]
fn adamw_8bit_tracks_fp32_adamw() {
    let task = Task::new();
    let steps = 150;
    let (fp32, _) = task.train(&cfg(Optim::AdamwTorch), Kind::Float, steps, 3e-3);
    let (q8, _) = task.train(&cfg(Optim::Adamw8bit), Kind::Float, steps, 3e-3);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("adamw8bit_curves.json");
    let json = serde_json::json!({"step": (0..steps).collect::<Vec<_>>(), "adamw_torch": fp32, "adamw_8bit": q8});
    std::fs::write(&path, json.to_string()).expect("write curves");
    println!("loss curves written to {}", path.display());
    for s in [0, 10, 25, 50, 100, steps - 1] {
        println!("step {s:>4}: adamw {:.6}  adamw_8bit {:.6}", fp32[s], q8[s]);
    }
    assert!(
        fp32[steps - 1] < 0.3 * fp32[0],
        "fp32 AdamW did not train: {} -> {}",
        fp32[0],
        fp32[steps - 1]
    );
    let gaps: Vec<f64> = fp32
        .iter()
        .zip(&q8)
        .map(|(a, b)| (a - b).abs() / a)
        .collect();
    let worst = gaps.iter().copied().fold(0.0f64, f64::max);
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    println!("relative gap between the curves: mean {mean:.4}, largest {worst:.4}");
    assert!(
        mean < 0.05,
        "8-bit AdamW departs from fp32 AdamW by {mean:.3} on average (relative)"
    );
    assert!(
        worst < 0.1,
        "8-bit AdamW departs from fp32 AdamW by up to {worst:.3} (relative)"
    );
}

#[test]
fn adafactor_and_sgd_train() {
    let task = Task::new();
    for (optim, lr) in [(Optim::Adafactor, 1e-2), (Optim::Sgd, 0.3)] {
        let (losses, _) = task.train(&cfg(optim), Kind::Float, 100, lr);
        println!("{optim:?}: {:.5} -> {:.5}", losses[0], losses[99]);
        assert!(
            losses[99] < 0.5 * losses[0],
            "{optim:?} did not train: {} -> {}",
            losses[0],
            losses[99]
        );
    }
}

#[test]
fn offload_equals_in_place_for_fp32_and_bf16_params() {
    let task = Task::new();
    for (kind, bf16) in [(Kind::Float, false), (Kind::BFloat16, true)] {
        for optim in [
            Optim::AdamwTorch,
            Optim::Adamw8bit,
            Optim::Adafactor,
            Optim::Sgd,
        ] {
            let mut plain = cfg(optim);
            plain.bf16 = bf16;
            let mut offload = plain.clone();
            offload.offload_optimizer = OffloadDevice::Cpu;
            let (la, pa) = task.train(&plain, kind, 8, 1e-2);
            let (lb, pb) = task.train(&offload, kind, 8, 1e-2);
            assert_eq!(la, lb, "{optim:?} {kind:?}: losses differ with offload");
            for (a, b) in pa.iter().zip(&pb) {
                assert_eq!(
                    max_abs_diff(a, b),
                    0.0,
                    "{optim:?} {kind:?}: parameters differ with offload"
                );
            }
        }
    }
}

#[test]
fn amp_keeps_fp32_master_and_pure_bf16_keeps_bf16_state() {
    let named = Task::init_params(Kind::BFloat16);
    let params: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
    let n: u64 = params.iter().map(|p| p.numel() as u64).sum();
    let task = Task::new();
    for (pure, expected_state, expected_master) in [(false, 12 * n, 4 * n), (true, 4 * n, 0)] {
        let mut c = cfg(Optim::AdamwTorch);
        c.bf16 = !pure;
        c.pure_bf16 = pure;
        let mut opt = lf_optim::build(&c, &named).expect("build");
        assert_eq!(opt.state_bytes(), 0, "state is created lazily");
        task.loss(&params).backward();
        opt.step(&params, 1e-3).expect("step");
        let detail = opt.state_bytes_detail();
        assert_eq!(opt.state_bytes(), expected_state, "pure_bf16={pure}");
        assert_eq!(detail.master, expected_master, "pure_bf16={pure}");
        assert_eq!(detail.host, 0);
        opt.zero_grad(&params);
    }
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let task = Task::new();
    for optim in [Optim::AdamwTorch, Optim::Adamw8bit, Optim::Adafactor] {
        for offload in [false, true] {
            let mut c = cfg(optim);
            c.bf16 = true;
            if offload {
                c.offload_optimizer = OffloadDevice::Cpu;
            }
            let (_, straight) = task.train(&c, Kind::BFloat16, 10, 1e-2);

            let named = Task::init_params(Kind::BFloat16);
            let params: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
            let mut opt = lf_optim::build(&c, &named).expect("build");
            let run = |opt: &mut Box<dyn lf_optim::Optimizer>, steps: usize| {
                for _ in 0..steps {
                    opt.zero_grad(&params);
                    task.loss(&params).backward();
                    opt.step(&params, 1e-2).expect("step");
                }
            };
            run(&mut opt, 5);
            // Round-trip the state through a file, as a checkpoint does.
            let dir = tempfile::tempdir().expect("tmp");
            let file = dir.path().join("optimizer.safetensors");
            let state = opt.state_dict();
            Tensor::write_safetensors(&state, &file).expect("save");
            drop(opt);
            let mut resumed = lf_optim::build(&c, &named).expect("build");
            resumed
                .load_state_dict(Tensor::read_safetensors(&file).expect("load"))
                .expect("restore");
            run(&mut resumed, 5);
            for (a, b) in params.iter().zip(&straight) {
                assert_eq!(
                    max_abs_diff(a, b),
                    0.0,
                    "{optim:?} offload={offload}: resumed run differs"
                );
            }
            // Loading another optimiser's state is refused with a reason.
            let other = lf_optim::build(&cfg(Optim::Sgd), &named).expect("sgd");
            let mut fresh = lf_optim::build(&c, &named).expect("build");
            let err = fresh
                .load_state_dict(other.state_dict())
                .unwrap_err()
                .to_string();
            assert!(err.contains("sgd"), "{err}");
        }
    }
}

#[test]
fn clip_grad_norm_matches_torch_semantics() {
    let a = Tensor::from_slice(&[3.0f32, 0.0]).set_requires_grad(true);
    let b = Tensor::from_slice(&[4.0f32]).set_requires_grad(true);
    let c = Tensor::from_slice(&[1.0f32]).set_requires_grad(true); // no gradient
    common::set_grad(&a, &Tensor::from_slice(&[3.0f32, 0.0]));
    common::set_grad(&b, &Tensor::from_slice(&[4.0f32]));
    let params = [a.shallow_clone(), b.shallow_clone(), c];
    let norm = lf_optim::clip_grad_norm(&params, 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    let after = lf_optim::clip_grad_norm(&params, 1.0).unwrap();
    assert!((after - 5.0 / (5.0 + 1e-6)).abs() < 1e-6, "{after}");
    // Below the threshold nothing changes.
    assert!((lf_optim::clip_grad_norm(&params, 10.0).unwrap() - after).abs() < 1e-5);
    // A max_norm of 0 or less clips nothing (Hugging Face's convention).
    assert!((lf_optim::clip_grad_norm(&params, 0.0).unwrap() - after).abs() < 1e-5);
    let nan = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
    common::set_grad(&nan, &Tensor::from_slice(&[f32::NAN]));
    assert!(lf_optim::clip_grad_norm(&[nan], 1.0).unwrap().is_nan());
}
