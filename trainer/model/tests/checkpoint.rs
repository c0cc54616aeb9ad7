//! `save_trainable` / `load_trainable` round-trip the trainable weights of full, freeze and LoRA
//! fine-tuning, and refuse files that do not match the model.

mod common;

use lf_api::training::TrainingConfig;
use lf_model::{CausalLm, LoadOptions};
use tch::{Device, Kind, Tensor};

fn model(yaml: &str) -> CausalLm {
    let _rng = common::rng_lock();
    let arch = common::tiny_arch(true);
    let weights = common::random_weights(&arch, 12);
    let mut lm =
        CausalLm::from_tensors(arch, weights, &LoadOptions::new(Device::Cpu, Kind::Float)).unwrap();
    lm.apply_method(&TrainingConfig::from_yaml_str(yaml).unwrap(), 5)
        .unwrap();
    lm
}

#[test]
fn trainable_weights_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, _) = {
        let _rng = common::rng_lock();
        common::batch(80, 2, 9, 1)
    };
    for (yaml, count) in [
        ("finetuning_type: full", 3 * 9 + 2),
        ("finetuning_type: freeze\nfreeze_trainable_layers: 2", 2 * 9),
        (
            "lora_rank: 2\nlora_target: q_proj,down_proj\nuse_dora: true",
            3 * 2 * 3,
        ),
    ] {
        let lm = model(yaml);
        let params = lm.trainable_parameters();
        assert_eq!(params.len(), count, "{yaml}: trainable tensors");
        assert!(params.iter().all(|(_, p)| p.requires_grad()));
        // Change the weights, save, reload into a fresh model.
        tch::no_grad(|| {
            for (_, p) in &params {
                p.shallow_clone()
                    .copy_(&(p.copy() + Tensor::ones_like(p) * 0.01));
            }
        });
        let path = dir.path().join("trainable.safetensors");
        lm.save_trainable(&path).unwrap();
        let mut fresh = model(yaml);
        fresh.load_trainable(&path).unwrap();
        let a = tch::no_grad(|| lm.forward_logits(&ids));
        let b = tch::no_grad(|| fresh.forward_logits(&ids));
        assert_eq!(
            common::rel_diff(&b, &a),
            0.0,
            "{yaml}: reloaded weights differ"
        );
    }
    // A file from another method does not fit.
    let other = model("finetuning_type: freeze\nfreeze_trainable_layers: 1");
    let path = dir.path().join("freeze1.safetensors");
    other.save_trainable(&path).unwrap();
    let mut lm = model("finetuning_type: freeze\nfreeze_trainable_layers: 2");
    let e = lm.load_trainable(&path).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.1.") && e.contains("freeze1.safetensors"),
        "{e}"
    );
}
