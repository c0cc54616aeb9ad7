//! Layer recomputation and the chunked loss change memory, never numbers: gradients with and
//! without recomputation, and with chunked vs whole-sequence loss, agree (fp32, relative to each
//! tensor's largest gradient: 1e-6 for recomputation, 5e-6 once chunking reorders the sums), including
//! with LoRA dropout (replayed masks) and for full/freeze fine-tuning of a tied model; and with
//! only some layers recomputed (`gradient_checkpointing: auto` with `recompute_layers`).

mod common;

use std::collections::BTreeMap;

use lf_api::training::TrainingConfig;
use lf_model::{CausalLm, LoadOptions};
use tch::{Device, Kind, Tensor};

/// Loss sum and gradients of one micro-batch under `yaml`.
fn run(yaml: &str, tied: bool, train_mode: bool) -> (f64, BTreeMap<String, Tensor>) {
    let _rng = common::rng_lock();
    let arch = common::tiny_arch(tied);
    let weights = common::random_weights(&arch, 3);
    let mut lm =
        CausalLm::from_tensors(arch, weights, &LoadOptions::new(Device::Cpu, Kind::Float)).unwrap();
    let cfg = TrainingConfig::from_yaml_str(yaml).unwrap();
    lm.apply_method(&cfg, 9).unwrap();
    // Non-zero B so every adapter gradient is non-trivial.
    tch::no_grad(|| {
        for (name, p) in lm.trainable_parameters() {
            if name.ends_with("lora_B.weight") {
                p.shallow_clone()
                    .copy_(&(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.2));
            }
        }
    });
    lm.set_training(train_mode);
    let (ids, labels) = common::batch(80, 3, 21, 5);
    let loss = lm.loss_sum_and_backward(&ids, &labels, 0.5).unwrap();
    let grads = lm
        .trainable_parameters()
        .into_iter()
        .map(|(n, p)| (n, p.grad().copy()))
        .collect();
    (loss, grads)
}

/// Largest per-tensor relative difference (max |a − b| / max |b|).
fn max_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut worst = 0.0f64;
    for (k, ga) in a {
        assert!(ga.defined(), "{k} got no gradient");
        let scale = b[k].abs().max().double_value(&[]).max(1e-6);
        worst = worst.max((ga - &b[k]).abs().max().double_value(&[]) / scale);
    }
    worst
}

#[test]
fn recomputation_and_chunking_keep_gradients() {
    for (method, tied, dropout) in [
        ("finetuning_type: lora\nuse_dora: true", false, 0.0),
        ("finetuning_type: lora", false, 0.2),
        ("finetuning_type: lora\nuse_dora: true", true, 0.1),
        ("finetuning_type: full", true, 0.0),
        (
            "finetuning_type: freeze\nfreeze_trainable_layers: 1",
            false,
            0.0,
        ),
    ] {
        let base = format!("{method}\nlora_dropout: {dropout}\nlora_rank: 4\n");
        let (loss_ref, grads_ref) = run(
            &format!("{base}gradient_checkpointing: false\nloss_chunk_size: 0"),
            tied,
            true,
        );
        // `auto` with 1 or 2 of the 3 layers recomputed: the first layers recomputed, the others
        // keeping their graph (the boundary between the two passes gradients both ways).
        for (ckpt, chunk) in [
            ("true", 0),
            ("false", 5),
            ("true", 5),
            ("true", 1),
            ("auto\nrecompute_layers: 1", 0),
            ("auto\nrecompute_layers: 2", 0),
            ("auto\nrecompute_layers: 2", 5),
            // Checkpoints in host memory, the MLP whole (chunk 0) or in tiles of 5 tokens (of
            // 60 per micro-batch); tiles draw LoRA dropout masks per tile, so with dropout they
            // are compared in `offloaded_tiles_replay_their_dropout` instead.
            ("true\noffload_activations: true", 0),
            ("auto\nrecompute_layers: 2\noffload_activations: true", 0),
            ("true\noffload_activations: true", 5),
            ("auto\nrecompute_layers: 2\noffload_activations: true", 5),
        ] {
            if dropout > 0.0 && ckpt.contains("offload") && chunk > 0 {
                continue;
            }
            let (loss, grads) = run(
                &format!("{base}gradient_checkpointing: {ckpt}\nloss_chunk_size: {chunk}"),
                tied,
                true,
            );
            let d = max_diff(&grads, &grads_ref);
            let ckpt = ckpt.replace('\n', " ");
            println!("{method:?} tied={tied} dropout={dropout} ckpt={ckpt} chunk={chunk}: loss {loss:.6} vs {loss_ref:.6}, grad diff {d:.2e}");
            assert!(
                (loss - loss_ref).abs() <= 1e-5 * loss_ref.abs(),
                "loss changed: {loss} vs {loss_ref}"
            );
            // Recomputation alone replays the same kernels: 1e-6. Chunking reorders fp32 sums of the
            // head gradient, which moves the last bits: 5e-6.
            let tol = if chunk == 0 { 1e-6 } else { 5e-6 };
            assert!(
                d <= tol,
                "{method}: gradients changed by {d:e} (ckpt={ckpt}, chunk={chunk})"
            );
        }
        if dropout > 0.0 {
            // Dropout really is active in training mode (so the replay above was exercised).
            let (loss_eval, _) = run(&format!("{base}gradient_checkpointing: false"), tied, false);
            assert!((loss_eval - loss_ref).abs() > 1e-4, "dropout had no effect");
        }
    }
}

#[test]
fn eval_loss_matches_training_loss_and_full_logits() {
    let _rng = common::rng_lock();
    let arch = common::tiny_arch(false);
    let lm = CausalLm::from_tensors(
        arch,
        common::random_weights(&arch_clone(), 3),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )
    .unwrap();
    let (ids, labels) = common::batch(80, 3, 21, 5);
    let chunked = tch::no_grad(|| lm.loss_sum(&ids, &labels)).double_value(&[]);
    let logits = tch::no_grad(|| lm.forward_logits(&ids));
    let s = ids.size()[1];
    let full = logits
        .narrow(1, 0, s - 1)
        .reshape([-1, 80])
        .cross_entropy_loss::<Tensor>(
            &labels.narrow(1, 1, s - 1).reshape([-1]),
            None,
            tch::Reduction::Sum,
            -100,
            0.0,
        )
        .double_value(&[]);
    assert!(
        (chunked - full).abs() <= 1e-5 * full.abs(),
        "{chunked} vs {full}"
    );
}

fn arch_clone() -> lf_api::architecture::ModelArchitecture {
    common::tiny_arch(false)
}

/// Loss of `lm` on the fixed batch with the dropout masks of micro-batch `step` (gradients
/// dropped).
fn loss_at_step(lm: &CausalLm, step: u64) -> f64 {
    let (ids, labels) = common::batch(80, 3, 21, 5);
    lm.set_micro_step(step);
    let loss = lm.loss_sum_and_backward(&ids, &labels, 1.0).unwrap();
    for (_, p) in lm.trainable_parameters() {
        let _ = p.grad().zero_();
    }
    loss
}

/// Tiled MLPs under LoRA dropout draw one mask per tile, in the same order in the first pass and
/// in the recomputation: the gradient the step returns is the gradient of the loss it reports.
/// Checked by central differences along the gradient (fp32, step 1e-2 on unit-norm direction),
/// for the tiled path and, as controls, the untiled one and a difference taken with other masks
/// (which must miss).
#[test]
fn offloaded_tiles_replay_their_dropout() {
    let _rng = common::rng_lock();
    let directional = |yaml: &str, masks_of: u64| {
        let arch = common::tiny_arch(false);
        let mut lm = CausalLm::from_tensors(
            arch.clone(),
            common::random_weights(&arch, 3),
            &LoadOptions::new(Device::Cpu, Kind::Float),
        )
        .unwrap();
        let cfg = TrainingConfig::from_yaml_str(yaml).unwrap();
        lm.apply_method(&cfg, 9).unwrap();
        lm.set_training(true);
        let params = lm.trainable_parameters();
        tch::no_grad(|| {
            for (name, p) in &params {
                if name.ends_with("lora_B.weight") {
                    p.shallow_clone()
                        .copy_(&(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.2));
                }
            }
        });
        let (ids, labels) = common::batch(80, 3, 21, 5);
        lm.set_micro_step(0);
        lm.loss_sum_and_backward(&ids, &labels, 1.0).unwrap();
        let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad().copy()).collect();
        let norm = grads
            .iter()
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        let eps = 1e-2;
        let shift = |sign: f64| {
            tch::no_grad(|| {
                for ((_, p), g) in params.iter().zip(&grads) {
                    let _ = p.shallow_clone().g_add_(&(g * (sign * eps / norm)));
                }
            })
        };
        shift(1.0);
        let up = loss_at_step(&lm, masks_of);
        shift(-2.0);
        let down = loss_at_step(&lm, masks_of);
        let numeric = (up - down) / (2.0 * eps);
        (numeric, norm)
    };
    let base = "finetuning_type: lora\nlora_rank: 4\nlora_dropout: 0.3\nloss_chunk_size: 5\n";
    let tiled = "gradient_checkpointing: true\noffload_activations: true";
    for (name, extra, masks_of, agrees) in [
        ("tiled", tiled, 0, true),
        ("untiled", "gradient_checkpointing: true", 0, true),
        ("tiled, other masks", tiled, 7, false),
    ] {
        let (numeric, analytic) = directional(&format!("{base}{extra}"), masks_of);
        let rel = (numeric - analytic).abs() / analytic;
        println!("{name}: directional derivative {numeric:.6} vs |grad| {analytic:.6} ({rel:.2e})");
        assert_eq!(rel < 5e-3, agrees, "{name}: {numeric} vs {analytic}");
    }
}
