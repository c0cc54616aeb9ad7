//! `neat_packing`: examples packed into shared rows (position ids restarting per example,
//! block-diagonal causal attention, each example's first label masked) give the loss and
//! gradients of the same examples on right-padded rows of their own (fp32, LoRA on every linear;
//! with and without layer recomputation).

mod common;

use std::collections::BTreeMap;

use lf_api::training::TrainingConfig;
use lf_data::{collate, collate_packed, Batch, Example};
use lf_model::{CausalLm, LoadOptions};
use tch::{Device, Kind, Tensor};

/// Four examples of 7, 12, 5 and 9 tokens, prompts (the first 2–3 tokens) masked.
fn examples() -> Vec<Example> {
    let mut state = 17u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % 79 + 1) as u32
    };
    [7usize, 12, 5, 9]
        .iter()
        .enumerate()
        .map(|(n, &len)| {
            let input_ids: Vec<u32> = (0..len).map(|_| next()).collect();
            let prompt = 2 + n % 2;
            let labels = input_ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < prompt { -100 } else { t as i32 })
                .collect();
            Example {
                input_ids,
                labels,
                ..Example::default()
            }
        })
        .collect()
}

fn tensor(v: &[i64], b: &Batch) -> Tensor {
    Tensor::from_slice(v).view([b.batch_size as i64, b.seq_len as i64])
}

/// Loss sum and gradients of `batch` under `ckpt` (`gradient_checkpointing`'s value).
fn run(batch: &Batch, ckpt: &str) -> (f64, BTreeMap<String, Tensor>) {
    let _rng = common::rng_lock();
    let arch = common::tiny_arch(false);
    let weights = common::random_weights(&arch, 3);
    let mut lm =
        CausalLm::from_tensors(arch, weights, &LoadOptions::new(Device::Cpu, Kind::Float)).unwrap();
    let cfg = TrainingConfig::from_yaml_str(&format!(
        "lora_rank: 4\nlora_target: all\ngradient_checkpointing: {ckpt}\nloss_chunk_size: 0"
    ))
    .unwrap();
    lm.apply_method(&cfg, 9).unwrap();
    tch::no_grad(|| {
        for (name, p) in lm.trainable_parameters() {
            if name.ends_with("lora_B.weight") {
                p.shallow_clone()
                    .copy_(&(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.2));
            }
        }
    });
    lm.set_training(true);
    let ids = tensor(&batch.input_ids, batch);
    let labels = tensor(&batch.labels, batch);
    let loss = match &batch.position_ids {
        Some(pos) => lm
            .loss_sum_and_backward_packed(&ids, &labels, &tensor(pos, batch), 1.0)
            .unwrap(),
        None => lm.loss_sum_and_backward(&ids, &labels, 1.0).unwrap(),
    };
    let grads = lm
        .trainable_parameters()
        .into_iter()
        .map(|(n, p)| (n, p.grad().copy()))
        .collect();
    (loss, grads)
}

#[test]
fn packed_rows_equal_the_examples_on_rows_of_their_own() {
    let data = examples();
    let refs: Vec<&Example> = data.iter().collect();
    let plain = collate(&refs, 0);
    let packed = collate_packed(&refs, 0, 21);
    // 33 tokens in 2 rows of 21 ([12 + 9], [7 + 5] and 9 padding) instead of 4 rows of 12.
    assert_eq!((packed.batch_size, packed.seq_len), (2, 21));
    assert!(packed.batch_size * packed.seq_len < plain.batch_size * plain.seq_len);
    assert_eq!(packed.label_tokens, plain.label_tokens);
    for ckpt in ["false", "true", "auto\nrecompute_layers: 1"] {
        let (loss_ref, grads_ref) = run(&plain, ckpt);
        let (loss, grads) = run(&packed, ckpt);
        let mut worst = 0.0f64;
        for (k, g) in &grads {
            let r = &grads_ref[k];
            let scale = r.abs().max().double_value(&[]).max(1e-6);
            worst = worst.max((g - r).abs().max().double_value(&[]) / scale);
        }
        let rel = (loss - loss_ref).abs() / loss_ref.abs();
        println!(
            "recompute {}: loss {loss:.6} vs {loss_ref:.6} (rel {rel:.2e}), worst gradient {worst:.2e}",
            ckpt.replace('\n', " ")
        );
        assert!(rel <= 1e-6, "loss differs by {rel:e}");
        assert!(worst <= 1e-5, "gradients differ by {worst:e}");
    }
}
