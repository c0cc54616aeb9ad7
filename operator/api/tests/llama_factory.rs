//! LLaMA-Factory's own example configs (tests/fixtures/llama-factory, their settings with a local
//! model path) parse, with the notices the issue asks for; its DeepSpeed configs map onto
//! `zero_stage`/`offload_optimizer` or fail with the reason; rejected options say why.

use std::path::{Path, PathBuf};

use lf_api::training::{ConfigError, OffloadDevice, Parsed, TrainingConfig};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llama-factory/examples")
        .join(rel)
}

fn parse(rel: &str) -> Result<Parsed, ConfigError> {
    TrainingConfig::parse_yaml_file(&fixture(rel))
}

fn notice_keys(p: &Parsed) -> Vec<&str> {
    p.notices.iter().map(|n| n.key.as_str()).collect()
}

#[test]
fn lora_sft_parses_with_a_trust_remote_code_notice() {
    let p = parse("train_lora/llama3_lora_sft.yaml").unwrap();
    assert!(p.config.trust_remote_code);
    assert_eq!(p.config.lora_rank, 8);
    assert_eq!(p.config.gradient_accumulation_steps, 8);
    assert_eq!(notice_keys(&p), ["trust_remote_code"], "{:?}", p.notices);
    assert!(p.notices[0].message.contains("no remote code runs"));
}

#[test]
fn lora_pretrain_parses() {
    let p = parse("train_lora/llama3_lora_pretrain.yaml").unwrap();
    assert_eq!(p.config.stage, lf_api::training::Stage::Pt);
    assert!(p.config.packing_enabled());
}

#[test]
fn qlora_on_the_fly_parses_with_bitsandbytes() {
    let p = parse("train_qlora/llama3_lora_sft_otfq.yaml").unwrap();
    assert_eq!(p.config.quantization_bit, Some(4));
    assert_eq!(p.config.eval_steps, Some(500));
    // `quantization_method: bitsandbytes` is what lf-trainer does: no notice.
    assert!(p.notices.is_empty(), "{:?}", p.notices);
}

#[test]
fn full_sft_reads_its_deepspeed_file_beside_the_examples() {
    let p = parse("train_full/llama3_full_sft.yaml").unwrap();
    assert_eq!(p.config.zero_stage, 3);
    assert_eq!(p.config.offload_optimizer, OffloadDevice::None);
    // "auto" left the YAML's own values alone.
    assert_eq!(p.config.per_device_train_batch_size, 1);
    assert_eq!(p.config.gradient_accumulation_steps, 2);
    assert!(p.config.bf16);
    let ds: Vec<&str> = p
        .notices
        .iter()
        .filter(|n| n.key == "deepspeed")
        .map(|n| n.message.as_str())
        .collect();
    assert!(
        ds[0].contains("ds_z3_config.json")
            && ds[0].contains("`zero_optimization.stage` → `zero_stage: 3`"),
        "{ds:?}"
    );
    let ignored = ds
        .iter()
        .find(|m| m.contains("ignored"))
        .expect("an ignored-keys notice");
    for key in ["monitor_config", "comms_config"] {
        assert!(ignored.contains(key), "{key} missing from {ignored}");
    }
    // DeepSpeed's overlap_comm is lf-trainer's too.
    assert!(
        ds[0].contains("`zero_optimization.overlap_comm` → `overlap_comm: false`"),
        "{ds:?}"
    );
    assert_eq!(p.config.overlap_comm, Some(false));
    // The path became the file's keys, so the config stands on its own (and re-parses the same).
    let again = TrainingConfig::from_yaml_str(&p.config.to_yaml_string()).unwrap();
    assert_eq!(again, p.config);
    // An explicit key that disagrees with the DeepSpeed config is an error naming both.
    let err = p
        .config
        .with_overrides(&["zero_stage=2"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`zero_stage: 2`") && err.contains("`zero_optimization.stage: 3`"),
        "{err}"
    );
}

#[test]
fn predict_example_parses_as_a_prediction_that_does_not_train() {
    let p = parse("train_lora/llama3_lora_predict.yaml").unwrap();
    assert!(p.config.do_predict && p.config.predict_with_generate);
    assert_eq!(
        p.config.eval_dataset.as_deref(),
        Some("identity,alpaca_en_demo")
    );
    // `do_train` is left unset (false in LLaMA-Factory) and there is no `dataset`: predict only.
    assert!(!p.config.trains());
    assert!(p.notices.is_empty(), "{:?}", p.notices);
    // With a training dataset it trains first, then predicts.
    let both = p
        .config
        .parse_overrides(&["dataset=alpaca_en_demo"])
        .unwrap();
    assert!(both.config.trains() && both.config.do_predict);
}

#[test]
fn predict_follows_llama_factorys_rules() {
    for (yaml, words) in [
        (
            "do_predict: true\ndataset: d",
            &["predict_with_generate: true"][..],
        ),
        ("stage: pt\npredict_with_generate: true", &["stage: sft"]),
        (
            "do_predict: true\npredict_with_generate: true\ndataset: d\npacking: true",
            &["packing: false"],
        ),
        (
            "do_predict: true\npredict_with_generate: true",
            &["eval_dataset"],
        ),
        (
            "do_predict: true\npredict_with_generate: true\ndataset: d\nzero_stage: 3",
            &["ZeRO-3"],
        ),
        ("eval_num_beams: 4", &["beam search"]),
    ] {
        let err = TrainingConfig::from_yaml_str(yaml).unwrap_err().to_string();
        for w in words {
            assert!(err.contains(w), "{yaml}: `{w}` missing from {err}");
        }
    }
}

#[test]
fn merge_lora_parses() {
    let p = parse("merge_lora/llama3_lora_sft.yaml").unwrap();
    assert_eq!(p.config.export_size, 2);
    assert_eq!(
        p.config.export_dir.as_deref(),
        Some("output/llama3_lora_sft")
    );
    // `export_device: cpu` and `export_legacy_format: false` are what export does: no notice.
    assert_eq!(notice_keys(&p), ["trust_remote_code"], "{:?}", p.notices);
}

#[test]
fn inference_parses_with_an_infer_backend_notice() {
    let p = parse("inference/llama3_lora_sft.yaml").unwrap();
    let keys = notice_keys(&p);
    assert!(
        keys.contains(&"infer_backend") && keys.contains(&"trust_remote_code"),
        "{keys:?}"
    );
}

/// The expected zero_stage and offload, or the words the error must contain.
type Expected = Result<(u8, OffloadDevice), &'static [&'static str]>;

#[test]
fn llama_factory_deepspeed_configs_map_or_fail_with_the_reason() {
    let cases: &[(&str, Expected)] = &[
        ("ds_z0_config.json", Ok((0, OffloadDevice::None))),
        ("ds_z2_config.json", Ok((2, OffloadDevice::None))),
        ("ds_z2_offload_config.json", Ok((2, OffloadDevice::Cpu))),
        ("ds_z3_config.json", Ok((3, OffloadDevice::None))),
        (
            "ds_z3_offload_config.json",
            Err(&[
                "zero_optimization.offload_param.device",
                "parameter offload is not implemented",
            ]),
        ),
    ];
    for (file, expected) in cases {
        let yaml = format!(
            "finetuning_type: full\nbf16: true\ndeepspeed: {}\n",
            fixture("deepspeed").join(file).display()
        );
        match (TrainingConfig::parse_yaml_str(&yaml), expected) {
            (Ok(p), Ok((stage, offload))) => {
                assert_eq!(p.config.zero_stage, *stage, "{file}");
                assert_eq!(p.config.offload_optimizer, *offload, "{file}");
                let mapping = p.config.deepspeed_mapping().unwrap().unwrap();
                assert_eq!(mapping.zero_stage(), Some(*stage), "{file}");
                let all: String = p.notices.iter().map(|n| format!("{n}\n")).collect();
                if file.starts_with("ds_z0") || file.starts_with("ds_z2") {
                    assert!(
                        all.contains("reduce_bucket_size: 500000000"),
                        "{file}: {all}"
                    );
                }
                assert!(all.contains("monitor_config"), "{file}: {all}");
            }
            (Err(e), Err(words)) => {
                let e = e.to_string();
                for w in *words {
                    assert!(e.contains(w), "{file}: `{w}` missing from {e}");
                }
            }
            (got, want) => panic!("{file}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn deepspeed_inline_mapping_works_like_the_file() {
    let p = TrainingConfig::parse_yaml_str(
        "deepspeed:\n  zero_optimization:\n    stage: 2\n    offload_optimizer: {device: cpu}\n",
    )
    .unwrap();
    assert_eq!(p.config.zero_stage, 2);
    assert_eq!(p.config.offload_optimizer, OffloadDevice::Cpu);
    // Explicit keys that agree are fine; `adamw_torch_fused` is `adamw_torch`.
    TrainingConfig::from_yaml_str(
        "zero_stage: 2\noffload_optimizer: cpu\noptim: adamw_torch_fused\ndeepspeed: {zero_optimization: {stage: 2, offload_optimizer: {device: cpu}}, optimizer: {type: AdamW, params: {lr: auto}}}",
    )
    .unwrap();
    let err = TrainingConfig::from_yaml_str(
        "offload_optimizer: none\ndeepspeed: {zero_optimization: {stage: 2, offload_optimizer: {device: cpu}}}",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`offload_optimizer: none`")
            && err.contains("`zero_optimization.offload_optimizer.device: cpu`"),
        "{err}"
    );
    let err = TrainingConfig::from_yaml_str("bf16: true\ndeepspeed: {fp16: {enabled: true}}")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`bf16: true`") && err.contains("fp16.enabled"),
        "{err}"
    );
}

#[test]
fn a_missing_deepspeed_file_says_where_it_looked() {
    let err = TrainingConfig::from_yaml_str("deepspeed: nowhere/ds.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nowhere/ds.json") && err.contains("current directory"),
        "{err}"
    );
}

#[test]
fn accepted_options_give_notices_and_rejected_values_the_reason() {
    let p = TrainingConfig::parse_yaml_str(
        "enable_liger_kernel: true\nupcast_layernorm: true\nupcast_lmhead_output: true\nmix_strategy: concat\nstreaming: false\nexport_device: cpu\nexport_legacy_format: false\ninfer_backend: huggingface\n",
    )
    .unwrap();
    let keys = notice_keys(&p);
    assert_eq!(
        keys,
        [
            "enable_liger_kernel",
            "upcast_layernorm",
            "upcast_lmhead_output",
            "infer_backend"
        ],
        "{:?}",
        p.notices
    );
    assert!(p.notices[0].message.contains("loss_chunk_size"));
    for (yaml, words) in [
        (
            "quantization_method: hqq",
            &["`quantization_method: hqq`", "bitsandbytes"][..],
        ),
        ("export_legacy_format: true", &["safetensors"]),
        ("infer_backend: vllm", &["vLLM", "huggingface"]),
        ("export_device: auto", &["CPU"]),
        ("streaming: true", &["streaming"]),
        ("stage: ppo", &["PPO", "`rm`"]),
        ("stage: rm\npacking: true", &["stage: rm", "packing: false"]),
        (
            "stage: kto\nper_device_train_batch_size: 1",
            &["KL", "at least 2"],
        ),
        (
            "stage: kto\nkto_rejected_weight: -1",
            &["kto_rejected_weight"],
        ),
        ("stage: kto\npref_ftx: 0.5", &["pref_ftx", "kto"]),
        ("stage: dpo\npref_loss: kto_pair", &["kto_pair", "sigmoid"]),
        ("stage: dpo\ndpo_label_smoothing: 0.1", &["label-smoothed"]),
        ("stage: dpo\npref_beta: 0", &["pref_beta"]),
        ("stage: dpo\npacking: true", &["packing"]),
        ("finetuning_type: oft", &["OFT"]),
    ] {
        let err = TrainingConfig::from_yaml_str(yaml).unwrap_err().to_string();
        for w in words {
            assert!(err.contains(w), "{yaml}: `{w}` missing from {err}");
        }
    }
}

#[test]
fn trust_remote_code_is_checked_against_the_model() {
    let c = TrainingConfig::from_yaml_str("trust_remote_code: true").unwrap();
    let llama = serde_json::json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"]});
    let notice = c.check_remote_code(&llama).unwrap().unwrap();
    assert!(notice.message.contains("built in"), "{notice}");
    // Gemma 3's multimodal checkpoint: its text decoder is built in.
    let gemma3 = serde_json::json!({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]});
    assert!(c.check_remote_code(&gemma3).unwrap().is_some());
    let other = serde_json::json!({"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "auto_map": {}});
    let err = c.check_remote_code(&other).unwrap_err().to_string();
    assert!(
        err.contains("deepseek_v3") && err.contains("DeepseekV3ForCausalLM"),
        "{err}"
    );
    let off = TrainingConfig::default();
    assert!(off.check_remote_code(&other).unwrap().is_none());
}

#[test]
fn override_notices_cover_only_the_overridden_keys() {
    let p = parse("train_full/llama3_full_sft.yaml").unwrap();
    let o = p
        .config
        .parse_overrides(&["enable_liger_kernel=true", "lora_rank=16"])
        .unwrap();
    assert_eq!(notice_keys(&o), ["enable_liger_kernel"], "{:?}", o.notices);
}

#[test]
fn a_finetunejob_carries_deepspeed_inline() {
    let job = lf_api::FineTuneJob::from_yaml_str(
        r#"
apiVersion: lf-operator.io/v1alpha1
kind: FineTuneJob
metadata: {name: ds}
spec:
  model: {name: meta-llama/Meta-Llama-3-8B}
  data: {source: {claimName: data}}
  output: {claimName: out}
  resources: {gpuMemoryGib: 80}
  training:
    finetuning_type: full
    deepspeed:
      zero_optimization: {stage: 3, overlap_comm: false}
      bf16: {enabled: auto}
"#,
    )
    .unwrap();
    assert_eq!(job.spec.training.zero_stage, 3);
    // As the controller reads it from the API server (plain serde, no parser): the inline keys
    // survive and map the same way.
    let json = serde_json::to_value(&job).unwrap();
    let back: lf_api::FineTuneJob = serde_json::from_value(json).unwrap();
    let mapping = back.spec.training.deepspeed_mapping().unwrap().unwrap();
    assert_eq!(mapping.zero_stage(), Some(3));
    assert_eq!(mapping.offload_optimizer(), None);
    assert_eq!(mapping.get("overlap_comm"), Some(&false.into()));
}
