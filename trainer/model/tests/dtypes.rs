//! Half-precision paths run end to end and stay close to fp32: bf16 base weights with fp32
//! adapters (AMP-style), `pure_bf16` (bf16 adapters), and fp16; LoRA and DoRA, with recomputation.

mod common;

use lf_api::training::TrainingConfig;
use lf_model::{CausalLm, LoadOptions};
use tch::{Device, Kind};

#[test]
fn half_precision_training_steps_track_fp32() {
    let arch = common::tiny_arch(true);
    let weights = {
        let _rng = common::rng_lock();
        common::random_weights(&arch, 6)
    };
    let (ids, labels) = {
        let _rng = common::rng_lock();
        common::batch(80, 2, 19, 4)
    };
    let run = |kind: Kind, extra: &str| {
        let copy: Vec<_> = weights.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
        let mut lm =
            CausalLm::from_tensors(arch.clone(), copy, &LoadOptions::new(Device::Cpu, kind))
                .unwrap();
        let cfg = TrainingConfig::from_yaml_str(&format!(
            "lora_rank: 4\nuse_dora: true\nloss_chunk_size: 8\n{extra}"
        ))
        .unwrap();
        {
            let _rng = common::rng_lock();
            lm.apply_method(&cfg, 2).unwrap();
        }
        lm.set_training(true);
        let loss = lm.loss_sum_and_backward(&ids, &labels, 1.0).unwrap();
        let params = lm.trainable_parameters();
        let adapter_kind = params[0].1.kind();
        let grad_norm: f64 = params
            .iter()
            .map(|(_, p)| {
                p.grad()
                    .to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[])
            })
            .sum::<f64>()
            .sqrt();
        for (n, p) in &params {
            assert!(
                p.grad().isfinite().all().int64_value(&[]) == 1,
                "{n}: non-finite gradient in {kind:?}"
            );
        }
        (loss, grad_norm, adapter_kind)
    };
    let (loss32, norm32, k32) = run(Kind::Float, "");
    assert_eq!(k32, Kind::Float);
    for (kind, extra, want_adapter) in [
        (Kind::BFloat16, "bf16: true", Kind::Float),
        (Kind::BFloat16, "pure_bf16: true", Kind::BFloat16),
        (Kind::Half, "fp16: true", Kind::Float),
    ] {
        let (loss, norm, adapter) = run(kind, extra);
        println!("{kind:?} {extra}: loss {loss:.3} (fp32 {loss32:.3}), grad norm {norm:.4} (fp32 {norm32:.4})");
        assert_eq!(adapter, want_adapter, "{extra}: adapter dtype");
        assert!(
            (loss - loss32).abs() <= 0.02 * loss32.abs(),
            "{extra}: loss {loss} far from fp32 {loss32}"
        );
        assert!(
            (norm - norm32).abs() <= 0.1 * norm32,
            "{extra}: grad norm {norm} far from fp32 {norm32}"
        );
    }
}
