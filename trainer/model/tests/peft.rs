//! LoRA, rsLoRA and DoRA against PEFT, on llama, qwen3 (q/k norms, explicit head_dim), mistral
//! with a sliding window shorter than the batch's sequences, gemma2/3, phi3 (LoRA on the fused
//! `qkv_proj` and `gate_up_proj`; longrope past the original context; partial rotary), and the
//! mixtures of experts mixtral and qwen3_moe (adapters on the attention, and on the routers and
//! experts as PEFT's `target_parameters`; aux loss in the gradients): the first step's loss and gradients
//! equal PEFT's on the same batch and adapter weights; after a few SGD steps our saved adapter loads in PEFT with no
//! missing or unexpected keys and gives our logits; the merged export loads in transformers and
//! equals PEFT's `merge_and_unload`. Two Python invocations in all (prepare, verify).

mod common;

use lf_api::training::TrainingConfig;
use lf_model::{CausalLm, LoadOptions, ADAPTER_WEIGHTS};
use tch::{Device, Kind, Tensor};

/// `(variant, base model family)`, as `model_reference.py`'s `VARIANTS`.
const VARIANTS: [(&str, &str); 18] = [
    ("lora", "llama"),
    ("rslora", "llama"),
    ("dora", "llama"),
    ("qwen3_lora", "qwen3"),
    ("qwen3_dora", "qwen3"),
    ("mistral_window_lora", "mistral_window"),
    ("gemma2_lora", "gemma2"),
    ("gemma3_dora", "gemma3"),
    // Attention adapters (`all` on a mixture of experts); the gradients include the router's
    // load-balancing loss.
    ("mixtral_lora", "mixtral"),
    ("qwen3_moe_dora", "qwen3_moe"),
    // LoRA on the routers and experts (PEFT's target_parameters; see `lora_target`).
    ("mixtral_experts_lora", "mixtral"),
    ("qwen3_moe_experts_rslora", "qwen3_moe"),
    ("qwen3_moe_down_lora", "qwen3_moe"),
    ("phi3_lora", "phi3_longrope"),
    ("phi3_dora", "phi3_window"),
    ("phi3_su_rslora", "phi3_su"),
    // Gemma3ForConditionalGeneration's language model (both checkpoint layouts): the adapter
    // names and target_modules PEFT uses on the multimodal model; the export keeps the vision
    // tower.
    ("gemma3_mm_lora", "gemma3_mm"),
    ("gemma3_mm_v5_dora", "gemma3_mm_v5"),
];

/// The `lora_target` of `variant` (what `model_reference.py` gives PEFT).
fn lora_target(variant: &str) -> &'static str {
    match variant {
        // transformers 4's names: PEFT fuses w1 and w3 into gate_up_proj at rank 2r.
        "mixtral_experts_lora" => "q_proj,k_proj,v_proj,o_proj,w1,w3,w2,gate",
        // transformers 5's parameter name (rank r).
        "qwen3_moe_experts_rslora" => "q_proj,v_proj,gate_up_proj,gate",
        "qwen3_moe_down_lora" => "down_proj",
        // The attention of a mixture of experts (`all` on qwen3_moe's dense layer 1 would name
        // its MLP linears, which PEFT applies to the experts too, and DoRA is refused there).
        "mixtral_lora" | "qwen3_moe_dora" => "q_proj,k_proj,v_proj,o_proj",
        _ => "all",
    }
}

/// Whether `variant` adapts a mixture of experts' router or experts (PEFT's `target_parameters`).
fn on_experts(variant: &str) -> bool {
    variant.contains("experts") || variant == "qwen3_moe_down_lora"
}

fn config(variant: &str) -> TrainingConfig {
    let extra = if variant.ends_with("rslora") {
        "use_rslora: true\n"
    } else if variant.ends_with("dora") {
        "use_dora: true\n"
    } else {
        ""
    };
    TrainingConfig::from_yaml_str(&format!(
        "lora_rank: 4\nlora_alpha: 8\nlora_target: {}\nloss_chunk_size: 7\n{extra}",
        lora_target(variant)
    ))
    .unwrap()
}

#[test]
fn adapters_match_peft_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    common::reference("peft-init", out);
    let batch = common::read_all(&out.join("batch.safetensors"));
    let (ids, labels) = (&batch["input_ids"], &batch["labels"]);
    let n_tokens = labels
        .narrow(1, 1, labels.size()[1] - 1)
        .ne(-100)
        .sum(Kind::Int64)
        .int64_value(&[]) as f64;
    for (variant, family) in VARIANTS {
        let d = out.join(variant);
        let base = out.join("base").join(family);
        let mut lm = CausalLm::load(&base, &LoadOptions::new(Device::Cpu, Kind::Float)).unwrap();
        lm.apply_method(&config(variant), 1).unwrap();
        lm.load_adapter(&d.join("init")).unwrap();
        lm.set_training(true);
        let reference = common::read_all(&d.join("reference.safetensors"));

        // First step: loss and every gradient equal PEFT's.
        let loss = lm.loss_sum_and_backward(ids, labels, 1.0).unwrap();
        let want = reference["loss_sum"].double_value(&[0]);
        println!("{variant}: loss sum ours {loss:.6} peft {want:.6}");
        assert!(
            (loss - want).abs() <= 1e-5 * want.abs(),
            "{variant}: first-step loss {loss} != PEFT {want}"
        );
        let params = lm.trainable_parameters();
        assert_eq!(
            params.len(),
            reference.len() - 1,
            "{variant}: trainable parameter count differs from PEFT"
        );
        let mut worst = 0.0f64;
        for (name, p) in &params {
            // PEFT's names on the model the checkpoint loads as (a multimodal model's language
            // model nests the layers).
            let peft_name = lm.checkpoint_layout().peft_name(name);
            let g = reference
                .get(&format!("grad.{peft_name}"))
                .unwrap_or_else(|| panic!("PEFT has no parameter {name}"));
            let diff = (p.grad() - g).abs().max().double_value(&[]);
            let scale = g.abs().max().double_value(&[]).max(1e-3);
            worst = worst.max(diff / scale);
        }
        println!("{variant}: worst gradient rel diff {worst:.2e}");
        // LoRA on the routers and experts: ≤ 1e-5 (issue 16's bound).
        let bound = if on_experts(variant) { 1e-5 } else { 1e-4 };
        assert!(
            worst <= bound,
            "{variant}: gradients differ from PEFT by {worst:e}"
        );

        // A few SGD steps with exact per-token normalisation.
        for _ in 0..3 {
            for (_, p) in &params {
                let _ = p.grad().zero_();
            }
            lm.loss_sum_and_backward(ids, labels, 1.0 / n_tokens)
                .unwrap();
            tch::no_grad(|| {
                for (_, p) in &params {
                    let _ = p.shallow_clone().f_sub_(&(p.grad() * 0.5)).unwrap();
                }
            });
        }
        lm.set_training(false);
        lm.save_adapter(&d.join("trained"), &base.display().to_string())
            .unwrap();
        let logits = tch::no_grad(|| lm.forward_logits(ids));
        let map = [("logits".to_string(), logits)];
        Tensor::write_safetensors(&map, d.join("ours.safetensors")).unwrap();
        lm.export_merged(&d.join("merged"), &base, 40_000).unwrap();
        assert!(
            d.join("merged/model.safetensors.index.json").exists(),
            "a small shard size must produce several shards"
        );
        // The sharded export reloads through the index with our own loader.
        let merged = CausalLm::load(
            &d.join("merged"),
            &LoadOptions::new(Device::Cpu, Kind::Float),
        )
        .unwrap();
        assert!(merged.load_report().is_some_and(|r| r.files > 1));
        let merged_logits = tch::no_grad(|| merged.forward_logits(ids));
        let d_merged = common::rel_diff(&merged_logits, &map[0].1);
        println!("{variant}: reloaded merged export vs adapter model {d_merged:.2e}");
        // Merged weights add W + s·BA once, in another order than the adapter's x·W + s·(x·A)·B:
        // fp32 rounding, larger with rsLoRA's scale after three steps at lr 0.5 (phi3_su_rslora:
        // 1.4e-5 with PEFT 0.22's initialisation, while our export equals PEFT's
        // merge_and_unload exactly, below); a wrong merge is off by orders of magnitude.
        assert!(
            d_merged <= 5e-5,
            "{variant}: reloaded merged export differs from the adapter model by {d_merged:e}"
        );

        // Our adapter file reloads into a fresh model with the same logits.
        let mut again = CausalLm::load(&base, &LoadOptions::new(Device::Cpu, Kind::Float)).unwrap();
        again.load_adapter(&d.join("trained")).unwrap();
        let reloaded = tch::no_grad(|| again.forward_logits(ids));
        assert!(common::rel_diff(&reloaded, &map[0].1) < 1e-6);
        assert!(d.join("trained").join(ADAPTER_WEIGHTS).exists());
    }
    common::reference("peft-verify", out);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("verify.json")).unwrap()).unwrap();
    for (variant, _) in VARIANTS {
        let r = &report[variant];
        assert_eq!(
            r["unexpected_keys"],
            serde_json::json!([]),
            "{variant}: PEFT found unexpected keys"
        );
        assert_eq!(
            r["missing_keys"],
            serde_json::json!([]),
            "{variant}: PEFT found missing adapter keys"
        );
        if variant.starts_with("gemma3_mm") {
            assert_eq!(
                r["export_class"], "Gemma3ForConditionalGeneration",
                "{variant}: the export must load as the multimodal class"
            );
            assert!(r["passthrough_tensors"].as_u64().unwrap() > 0);
            assert_eq!(
                r["passthrough_max_diff"].as_f64(),
                Some(0.0),
                "{variant}: the exported vision tower differs from the base's"
            );
        }
        let ours = r["peft_vs_ours"].as_f64().unwrap();
        let export = r["export_vs_merge"].as_f64().unwrap();
        println!("{variant}: PEFT vs ours {ours:.2e}, export vs PEFT merge {export:.2e}");
        assert!(
            ours <= 1e-5,
            "{variant}: PEFT's logits with our adapter differ from ours by {ours:e}"
        );
        assert!(
            export <= 1e-5,
            "{variant}: exported model differs from PEFT's merge by {export:e}"
        );
    }
}
