//! AdaLoRA against PEFT 0.22 (`tests/reference/adalora_peft.py`): on a tiny llama with adapters on
//! q/v/up/down, from PEFT's own initial adapter, the first step's loss (cross-entropy + the
//! orthogonality regulariser) and every gradient equal PEFT's; ten SGD steps with rank allocation
//! after each — crossing `tinit`, masking every `deltaT`, the final mask at `total − tfinal` and
//! the kept pattern after it — give PEFT's rank pattern at every step and its parameters; the
//! adapter we save loads in PEFT (no missing or unexpected keys, pruned ranks dropped) with our
//! logits, and PEFT's saved adapter loads in lf-model with PEFT's logits.

mod common;

use std::collections::BTreeMap;

use lf_api::training::TrainingConfig;
use lf_model::{CausalLm, LoadOptions};
use tch::{Device, Kind, Tensor};

const STEPS: u64 = 10;
const LR: f64 = 0.5;

fn config() -> TrainingConfig {
    TrainingConfig::from_yaml_str(
        "use_adalora: true\nlora_target: q_proj,v_proj,up_proj,down_proj\nadalora_init_r: 4\nadalora_rank: 2\nadalora_tinit: 2\nadalora_tfinal: 2\nadalora_delta_t: 2\nlora_alpha: 8\nloss_chunk_size: 7\n",
    )
    .unwrap()
}

/// max |a − b| / max(|b|, floor).
fn rel(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    assert_eq!(a.size(), b.size());
    let diff = (a - b).abs().max().double_value(&[]);
    diff / b.abs().max().double_value(&[]).max(floor)
}

/// Our rank pattern as PEFT's `{module}.lora_E` → kept ranks.
fn pattern(lm: &CausalLm) -> Option<BTreeMap<String, Vec<bool>>> {
    lm.adalora_rank_pattern().map(|p| {
        p.iter()
            .map(|(m, kept)| (format!("{m}.lora_E"), kept.clone()))
            .collect()
    })
}

#[test]
fn adalora_matches_peft_step_by_step_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    common::reference_script("adalora_peft.py", "train", out);
    let batch = common::read_all(&out.join("batch.safetensors"));
    let (ids, labels) = (&batch["input_ids"], &batch["labels"]);
    let n_tokens = labels
        .narrow(1, 1, labels.size()[1] - 1)
        .ne(-100)
        .sum(Kind::Int64)
        .int64_value(&[]) as f64;
    let base = out.join("base");
    let opts = LoadOptions::new(Device::Cpu, Kind::Float);
    let mut lm = CausalLm::load(&base, &opts).unwrap();
    lm.apply_method(&config(), 1).unwrap();
    lm.load_adapter(&out.join("init")).unwrap();
    lm.adalora_set_total_steps(STEPS).unwrap();
    lm.set_training(true);
    let params = lm.trainable_parameters();
    let steps: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("steps.json")).unwrap()).unwrap();

    for step in 0..STEPS {
        let loss_sum = lm
            .loss_sum_and_backward(ids, labels, 1.0 / n_tokens)
            .unwrap();
        let reg = lm.adalora_regularizer().unwrap();
        reg.backward();
        let loss = loss_sum / n_tokens + reg.double_value(&[]);
        let want = steps[step as usize]["loss"].as_f64().unwrap();
        let loss_diff = (loss - want).abs() / want.abs();
        if step == 0 {
            let first = common::read_all(&out.join("first_step.safetensors"));
            println!("first step: loss ours {loss:.7} peft {want:.7} (rel {loss_diff:.1e})");
            assert_eq!(
                params.len(),
                first.len() - 1,
                "trainable tensors differ from PEFT's"
            );
            let mut worst = 0.0f64;
            for (name, p) in &params {
                let g = first
                    .get(&format!("grad.{name}"))
                    .unwrap_or_else(|| panic!("PEFT has no parameter {name}"));
                worst = worst.max(rel(&p.grad(), g, 1e-6));
            }
            println!(
                "first step: worst gradient rel diff {worst:.2e} over {} tensors",
                params.len()
            );
            assert!(worst <= 1e-5, "gradients differ from PEFT by {worst:e}");
        }
        assert!(loss_diff <= 1e-5, "step {step}: loss {loss} != PEFT {want}");
        tch::no_grad(|| {
            for (_, p) in &params {
                let _ = p.shallow_clone().f_sub_(&(p.grad() * LR)).unwrap();
            }
        });
        lm.adalora_after_step(step).unwrap();
        for (_, p) in &params {
            let _ = p.grad().zero_();
        }
        let want: Option<BTreeMap<String, Vec<bool>>> =
            serde_json::from_value(steps[step as usize]["pattern"].clone()).unwrap();
        assert_eq!(
            pattern(&lm),
            want,
            "step {step}: rank pattern differs from PEFT's"
        );
    }
    let kept: usize = pattern(&lm)
        .unwrap()
        .values()
        .flatten()
        .filter(|k| **k)
        .count();
    println!(
        "after {STEPS} steps: rank pattern equal to PEFT's at every step; {kept} ranks kept of 32"
    );

    let final_params = common::read_all(&out.join("final.safetensors"));
    let mut worst = 0.0f64;
    for (name, p) in &params {
        worst = worst.max(rel(p, &final_params[name], 1e-6));
    }
    println!("after {STEPS} steps: worst parameter rel diff {worst:.2e}");
    assert!(worst <= 1e-4, "parameters differ from PEFT's by {worst:e}");

    // Our adapter in PEFT, and PEFT's in lf-model.
    lm.set_training(false);
    lm.save_adapter(&out.join("ours"), &base.display().to_string())
        .unwrap();
    let logits = tch::no_grad(|| lm.forward_logits(ids));
    Tensor::write_safetensors(&[("logits", &logits)], out.join("ours_logits.safetensors")).unwrap();
    common::reference_script("adalora_peft.py", "verify", out);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("verify.json")).unwrap()).unwrap();
    assert_eq!(report["missing_keys"], serde_json::json!([]), "{report}");
    assert_eq!(report["unexpected_keys"], serde_json::json!([]), "{report}");
    let diff = report["peft_vs_ours"].as_f64().unwrap();
    println!("PEFT loads our adapter: no missing or unexpected keys; logits rel diff {diff:.2e}");
    assert!(diff <= 1e-5, "{report}");
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("ours/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["peft_type"], "ADALORA");
    assert_eq!(saved["total_step"], STEPS);
    let want_pattern: serde_json::Value = steps.last().unwrap()["pattern"].clone();
    assert_eq!(saved["rank_pattern"], want_pattern);

    let peft_logits = &common::read_all(&out.join("peft_logits.safetensors"))["logits"];
    let mut fresh = CausalLm::load(&base, &opts).unwrap();
    fresh.load_adapter(&out.join("peft_trained")).unwrap();
    let theirs = tch::no_grad(|| fresh.forward_logits(ids));
    let d = common::rel_diff(&theirs, peft_logits);
    println!("PEFT's pruned adapter in lf-model: logits rel diff {d:.2e}");
    assert!(d <= 1e-5);

    // A pruned adapter cannot be continued: its importance scores are gone.
    let mut cont = CausalLm::load(&base, &opts).unwrap();
    cont.apply_method(&config(), 1).unwrap();
    let err = cont
        .load_adapter(&out.join("peft_trained"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("resume_from_checkpoint"), "{err}");
}

#[test]
fn checkpoint_state_round_trips_mid_schedule() {
    // Random batches on the tiny model: after 5 steps (EMAs and a pattern present), the state
    // file restores a fresh model exactly, and both continue identically.
    let dir = tempfile::tempdir().unwrap();
    let arch = common::tiny_arch(false);
    let (ids, labels) = common::batch(arch.vocab_size as i64, 2, 12, 7);
    let make = || {
        let tensors = common::random_weights(&arch, 3);
        let mut lm = CausalLm::from_tensors(
            arch.clone(),
            tensors,
            &LoadOptions::new(Device::Cpu, Kind::Float),
        )
        .unwrap();
        lm.apply_method(&config(), 1).unwrap();
        lm.adalora_set_total_steps(STEPS).unwrap();
        lm.set_training(true);
        lm
    };
    let step = |lm: &mut CausalLm, s: u64| {
        let params = lm.trainable_parameters();
        lm.loss_sum_and_backward(&ids, &labels, 0.05).unwrap();
        lm.adalora_regularizer().unwrap().backward();
        tch::no_grad(|| {
            for (_, p) in &params {
                let _ = p.shallow_clone().f_sub_(&(p.grad() * LR)).unwrap();
            }
        });
        lm.adalora_after_step(s).unwrap();
        for (_, p) in &params {
            let _ = p.grad().zero_();
        }
    };
    let mut a = make();
    for s in 0..5 {
        step(&mut a, s);
    }
    assert!(a.adalora_rank_pattern().is_some());
    let state = dir.path().join(lf_model::ADALORA_STATE);
    a.save_adalora_state(&state).unwrap();
    let mut b = make();
    b.load_adalora_state(&state).unwrap();
    assert_eq!(a.adalora_rank_pattern(), b.adalora_rank_pattern());
    for s in 5..STEPS {
        step(&mut a, s);
        step(&mut b, s);
    }
    assert_eq!(a.adalora_rank_pattern(), b.adalora_rank_pattern());
    for ((name, x), (_, y)) in a
        .trainable_parameters()
        .iter()
        .zip(b.trainable_parameters())
    {
        assert!(
            x.equal(&y),
            "{name} differs after resuming from the state file"
        );
    }
}

#[test]
fn adalora_is_refused_on_mixture_of_experts_parameters() {
    let arch = lf_api::ModelArchitecture::from_json_str(
        r#"{"model_type":"mixtral","num_local_experts":4,"num_experts_per_tok":2,"vocab_size":80,
            "hidden_size":48,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2,"rms_norm_eps":1e-5}"#,
    )
    .unwrap();
    let weights = common::random_weights(&arch, 8);
    let opts = LoadOptions::new(Device::Cpu, Kind::Float);
    let mut lm = CausalLm::from_tensors(arch, weights, &opts).unwrap();
    let experts =
        TrainingConfig::from_yaml_str("use_adalora: true\nlora_target: q_proj,gate,w1,w3,w2")
            .unwrap();
    let err = lm.apply_method(&experts, 1).unwrap_err().to_string();
    assert!(err.contains("use_adalora"), "{err}");
    // The attention of the same model takes AdaLoRA.
    let attention = TrainingConfig::from_yaml_str("use_adalora: true\nlora_target: all").unwrap();
    lm.apply_method(&attention, 1).unwrap();
    assert!(lm.adalora_training());
}
