//! QLoRA: decoder linears stored as NF4 (double-quantised) or int8 compute exactly what a dense
//! model holding the dequantised weights computes, hold far fewer bytes, train LoRA adapters with
//! the same gradients (with and without recomputation), refuse full fine-tuning, and export a
//! dequantised, merged model that reloads with the same logits.

mod common;

use lf_api::training::{QuantizationType, TrainingConfig};
use lf_model::{CausalLm, LoadOptions, QuantSettings};
use lf_quant::QuantizedWeight;
use tch::{Device, Kind, Tensor};

fn dequantised(weights: &[(String, Tensor)], q: QuantSettings) -> Vec<(String, Tensor)> {
    weights
        .iter()
        .map(|(n, t)| {
            let is_linear = n.contains("_proj.weight");
            let t = if !is_linear {
                t.shallow_clone()
            } else if q.bits == 4 {
                QuantizedWeight::quantize_4bit(t, q.quant_type, q.double_quant)
                    .unwrap()
                    .dequantize(Kind::Float)
            } else {
                QuantizedWeight::quantize_8bit(t)
                    .unwrap()
                    .dequantize(Kind::Float)
            };
            (n.clone(), t)
        })
        .collect()
}

fn grads(lm: &mut CausalLm, ckpt: bool, ids: &Tensor, labels: &Tensor) -> Vec<(String, Tensor)> {
    let cfg = TrainingConfig::from_yaml_str(&format!(
        "lora_rank: 4\nlora_target: all\nuse_dora: true\ngradient_checkpointing: {ckpt}\nloss_chunk_size: 16"
    ))
    .unwrap();
    {
        let _rng = common::rng_lock();
        lm.apply_method(&cfg, 3).unwrap();
        tch::no_grad(|| {
            for (name, p) in lm.trainable_parameters() {
                if name.ends_with("lora_B.weight") {
                    p.shallow_clone()
                        .copy_(&(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.2));
                }
            }
        });
    }
    lm.set_training(true);
    lm.loss_sum_and_backward(ids, labels, 0.01).unwrap();
    lm.trainable_parameters()
        .into_iter()
        .map(|(n, p)| (n, p.grad().copy()))
        .collect()
}

#[test]
fn quantised_models_match_their_dequantised_twins() {
    let arch = common::tiny_arch(false);
    let weights = {
        let _rng = common::rng_lock();
        common::random_weights(&arch, 8)
    };
    let (ids, labels) = {
        let _rng = common::rng_lock();
        common::batch(80, 2, 17, 2)
    };
    let dense_opts = LoadOptions::new(Device::Cpu, Kind::Float);
    for q in [
        QuantSettings {
            bits: 4,
            quant_type: QuantizationType::Nf4,
            double_quant: true,
        },
        QuantSettings {
            bits: 4,
            quant_type: QuantizationType::Fp4,
            double_quant: false,
        },
        QuantSettings {
            bits: 8,
            quant_type: QuantizationType::Nf4,
            double_quant: false,
        },
    ] {
        let opts = LoadOptions {
            quantization: Some(q),
            ..dense_opts.clone()
        };
        let copy = |w: &[(String, Tensor)]| {
            w.iter()
                .map(|(n, t)| (n.clone(), t.copy()))
                .collect::<Vec<_>>()
        };
        let mut quant = CausalLm::from_tensors(arch.clone(), copy(&weights), &opts).unwrap();
        let mut twin =
            CausalLm::from_tensors(arch.clone(), dequantised(&weights, q), &dense_opts).unwrap();

        let lq = tch::no_grad(|| quant.forward_logits(&ids));
        let lt = tch::no_grad(|| twin.forward_logits(&ids));
        let d = common::rel_diff(&lq, &lt);
        let (qb, tb) = (quant.weight_bytes(), twin.weight_bytes());
        println!("{q:?}: logits vs dequantised twin {d:.2e}; weight bytes {qb} vs {tb} dense");
        assert!(
            d <= 1e-6,
            "{q:?}: quantised forward differs from the dequantised twin by {d:e}"
        );
        assert!(qb < tb, "quantised storage must be smaller");

        let g_ckpt = grads(&mut quant, true, &ids, &labels);
        let g_plain = grads(&mut quant, false, &ids, &labels);
        let g_twin = grads(&mut twin, true, &ids, &labels);
        for ((n, a), ((_, b), (_, c))) in g_ckpt.iter().zip(g_plain.iter().zip(g_twin.iter())) {
            let scale = c.abs().max().double_value(&[]).max(1e-6);
            let d1 = (a - b).abs().max().double_value(&[]) / scale;
            let d2 = (a - c).abs().max().double_value(&[]) / scale;
            assert!(
                d1 <= 1e-6 && d2 <= 1e-5,
                "{q:?} {n}: recompute diff {d1:e}, twin diff {d2:e}"
            );
        }

        let full = TrainingConfig::from_yaml_str("finetuning_type: full").unwrap();
        let e = quant.apply_method(&full, 1).unwrap_err().to_string();
        assert!(e.contains("quantised"), "{e}");
    }

    // Export dequantises and merges; the result reloads densely with the same logits.
    let q = QuantSettings {
        bits: 4,
        quant_type: QuantizationType::Nf4,
        double_quant: true,
    };
    let opts = LoadOptions {
        quantization: Some(q),
        ..dense_opts.clone()
    };
    let mut quant = CausalLm::from_tensors(arch.clone(), weights, &opts).unwrap();
    let _ = grads(&mut quant, false, &ids, &labels);
    quant.set_training(false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&arch).unwrap(),
    )
    .unwrap();
    quant
        .export_merged(&dir.path().join("merged"), dir.path(), 1 << 30)
        .unwrap();
    let merged = CausalLm::load(&dir.path().join("merged"), &dense_opts).unwrap();
    let d = common::rel_diff(
        &tch::no_grad(|| merged.forward_logits(&ids)),
        &tch::no_grad(|| quant.forward_logits(&ids)),
    );
    println!("merged export vs quantised model with adapter: {d:.2e}");
    assert!(d <= 1e-5, "merged export differs by {d:e}");
}

/// QLoRA on the families with extra norms and scales (qwen3's q/k norms; Gemma 2's (1 + w) norms,
/// soft caps and scaled embeddings; Gemma 3's q/k norms) or fused linears (Phi-3): NF4 storage
/// computes what the dequantised twin computes, and the adapters' gradients agree.
#[test]
fn quantised_new_families_match_their_dequantised_twins() {
    let (ids, labels) = {
        let _rng = common::rng_lock();
        common::batch(80, 2, 17, 2)
    };
    let q = QuantSettings {
        bits: 4,
        quant_type: QuantizationType::Nf4,
        double_quant: true,
    };
    let dense_opts = LoadOptions::new(Device::Cpu, Kind::Float);
    let opts = LoadOptions {
        quantization: Some(q),
        ..dense_opts.clone()
    };
    for extra in [
        r#""model_type":"qwen3","head_dim":16,"attention_bias":true"#,
        r#""model_type":"gemma2","head_dim":16,"query_pre_attn_scalar":24,"attn_logit_softcapping":2.0,"final_logit_softcapping":5.0"#,
        r#""model_type":"gemma3_text","head_dim":16,"query_pre_attn_scalar":24"#,
        // Fused qkv_proj and gate_up_proj quantised whole (as bitsandbytes does), half of each
        // head rotated, longrope past an original context of 8 (the batch has 17 positions).
        r#""model_type":"phi3","partial_rotary_factor":0.5,"original_max_position_embeddings":8,
            "rope_scaling":{"type":"su","short_factor":[1.0,1.2,1.5],"long_factor":[1.0,3.0,9.0]}"#,
    ] {
        let arch = lf_api::ModelArchitecture::from_json_str(&format!(
            r#"{{{extra},"vocab_size":80,"hidden_size":48,"intermediate_size":96,"num_hidden_layers":2,
                "num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5,"tie_word_embeddings":false}}"#
        ))
        .unwrap();
        let weights = {
            let _rng = common::rng_lock();
            common::random_weights(&arch, 8)
        };
        let family = arch.model_type.name();
        let copy: Vec<_> = weights.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
        let mut quant = CausalLm::from_tensors(arch.clone(), copy, &opts).unwrap();
        let mut twin =
            CausalLm::from_tensors(arch.clone(), dequantised(&weights, q), &dense_opts).unwrap();
        let d = common::rel_diff(
            &tch::no_grad(|| quant.forward_logits(&ids)),
            &tch::no_grad(|| twin.forward_logits(&ids)),
        );
        println!("{family}: NF4 logits vs dequantised twin {d:.2e}");
        assert!(d <= 1e-6, "{family}: quantised forward differs by {d:e}");
        assert!(quant.weight_bytes() < twin.weight_bytes());
        let g_quant = grads(&mut quant, true, &ids, &labels);
        let g_twin = grads(&mut twin, true, &ids, &labels);
        assert_eq!(g_quant.len(), g_twin.len());
        for ((n, a), (_, b)) in g_quant.iter().zip(&g_twin) {
            let scale = b.abs().max().double_value(&[]).max(1e-6);
            let d = (a - b).abs().max().double_value(&[]) / scale;
            assert!(
                d <= 1e-5,
                "{family} {n}: gradient differs from the twin by {d:e}"
            );
        }
    }
}

/// AdaLoRA on an NF4 base: its adapters' gradients (loss and orthogonality regulariser) equal the
/// dequantised twin's, and a rank allocation runs on them.
#[test]
fn adalora_on_a_quantised_base_matches_its_dequantised_twin() {
    let arch = common::tiny_arch(false);
    let weights = {
        let _rng = common::rng_lock();
        common::random_weights(&arch, 8)
    };
    let (ids, labels) = {
        let _rng = common::rng_lock();
        common::batch(80, 2, 17, 2)
    };
    let q = QuantSettings {
        bits: 4,
        quant_type: QuantizationType::Nf4,
        double_quant: true,
    };
    let dense_opts = LoadOptions::new(Device::Cpu, Kind::Float);
    let opts = LoadOptions {
        quantization: Some(q),
        ..dense_opts.clone()
    };
    let cfg = TrainingConfig::from_yaml_str(
        "use_adalora: true\nadalora_init_r: 4\nadalora_rank: 2\nlora_target: all\nloss_chunk_size: 16",
    )
    .unwrap();
    let adalora_grads = |lm: &mut CausalLm| {
        {
            let _rng = common::rng_lock();
            lm.apply_method(&cfg, 3).unwrap();
            tch::no_grad(|| {
                for (name, p) in lm.trainable_parameters() {
                    if name.ends_with("lora_E") {
                        p.shallow_clone()
                            .copy_(&(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.5));
                    }
                }
            });
        }
        lm.adalora_set_total_steps(4).unwrap();
        lm.set_training(true);
        lm.loss_sum_and_backward(&ids, &labels, 0.01).unwrap();
        lm.adalora_regularizer().unwrap().backward();
        let grads: Vec<(String, Tensor)> = lm
            .trainable_parameters()
            .into_iter()
            .map(|(n, p)| (n, p.grad().copy()))
            .collect();
        // Step 1 of 4 (tinit 0): the budget shrinks and ranks are masked.
        let allocation = lm.adalora_after_step(1).unwrap().expect("a masking step");
        assert!(allocation.kept < 4 * 7 * arch.num_hidden_layers);
        grads
    };
    let copy: Vec<(String, Tensor)> = weights.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
    let mut quant = CausalLm::from_tensors(arch.clone(), copy, &opts).unwrap();
    let mut twin =
        CausalLm::from_tensors(arch.clone(), dequantised(&weights, q), &dense_opts).unwrap();
    let g_quant = adalora_grads(&mut quant);
    let g_twin = adalora_grads(&mut twin);
    assert_eq!(g_quant.len(), 3 * 7 * arch.num_hidden_layers as usize);
    let mut worst = 0.0f64;
    for ((n, a), (_, b)) in g_quant.iter().zip(&g_twin) {
        let scale = b.abs().max().double_value(&[]).max(1e-6);
        worst = worst.max((a - b).abs().max().double_value(&[]) / scale);
        assert!(
            worst <= 1e-5,
            "{n}: AdaLoRA gradient differs from the twin by {worst:e}"
        );
    }
    println!("AdaLoRA on NF4: worst adapter gradient vs dequantised twin {worst:.2e}");
    assert_eq!(quant.adalora_rank_pattern(), twin.adalora_rank_pattern());
}
