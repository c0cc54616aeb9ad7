//! Every bad input gives an error that names the file or tensor at fault.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use lf_api::training::TrainingConfig;
use lf_model::safetensors_io::{write_file, HostTensor};
use lf_model::{CausalLm, LoadOptions};
use tch::{Device, Kind};

fn opts() -> LoadOptions {
    LoadOptions::new(Device::Cpu, Kind::Float)
}

/// Writes a model directory for `tiny_arch` with `edit` applied to the config and `drop` removed.
fn write_model(dir: &Path, config_edit: impl Fn(&mut serde_json::Value), drop: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    let arch = common::tiny_arch(false);
    let mut config = serde_json::to_value(&arch).unwrap();
    config_edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let weights = {
        let _rng = common::rng_lock();
        common::random_weights(&arch, 1)
    };
    let map: BTreeMap<String, HostTensor> = weights
        .iter()
        .filter(|(n, _)| Some(n.as_str()) != drop)
        .map(|(n, t)| (n.clone(), HostTensor::from_tensor(n, t).unwrap()))
        .collect();
    write_file(&dir.join("model.safetensors"), &map).unwrap();
}

fn load_err(dir: &Path) -> String {
    match CausalLm::load(dir, &opts()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_model_directories_are_named() {
    let tmp = tempfile::tempdir().unwrap();

    let good = tmp.path().join("good");
    write_model(&good, |_| {}, None);
    CausalLm::load(&good, &opts()).unwrap();

    let no_config = tmp.path().join("no_config");
    std::fs::create_dir_all(&no_config).unwrap();
    let e = load_err(&no_config);
    assert!(e.contains("config.json"), "{e}");

    let no_weights = tmp.path().join("no_weights");
    write_model(&no_weights, |_| {}, None);
    std::fs::remove_file(no_weights.join("model.safetensors")).unwrap();
    let e = load_err(&no_weights);
    assert!(
        e.contains("model.safetensors") && e.contains("no_weights"),
        "{e}"
    );

    let corrupt = tmp.path().join("corrupt");
    write_model(&corrupt, |_| {}, None);
    std::fs::write(
        corrupt.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    )
    .unwrap();
    let e = load_err(&corrupt);
    assert!(
        e.contains("corrupt/model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );

    let truncated = tmp.path().join("truncated");
    write_model(&truncated, |_| {}, None);
    let bytes = std::fs::read(truncated.join("model.safetensors")).unwrap();
    std::fs::write(
        truncated.join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = load_err(&truncated);
    assert!(e.contains("truncated/model.safetensors"), "{e}");

    let missing = tmp.path().join("missing");
    write_model(&missing, |_| {}, Some("model.layers.1.mlp.up_proj.weight"));
    let e = load_err(&missing);
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("missing"),
        "{e}"
    );

    let shape = tmp.path().join("shape");
    write_model(&shape, |c| c["intermediate_size"] = 64.into(), None);
    let e = load_err(&shape);
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[64, 48]"),
        "{e}"
    );

    let extra = tmp.path().join("extra");
    write_model(&extra, |c| c["num_hidden_layers"] = 2.into(), None);
    let e = load_err(&extra);
    assert!(e.contains("unexpected tensor `model.layers.2."), "{e}");

    let family = tmp.path().join("family");
    write_model(&family, |c| c["model_type"] = "gpt2".into(), None);
    let e = load_err(&family);
    assert!(
        e.contains("gpt2") && e.contains("family/config.json"),
        "{e}"
    );

    let act = tmp.path().join("act");
    write_model(&act, |c| c["hidden_act"] = "gelu".into(), None);
    let e = load_err(&act);
    assert!(
        e.contains("hidden_act") && e.contains("act/config.json"),
        "{e}"
    );

    let rope = tmp.path().join("rope");
    write_model(
        &rope,
        |c| c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
        None,
    );
    let e = load_err(&rope);
    assert!(e.contains("yarn"), "{e}");

    let broken_index = tmp.path().join("index");
    write_model(&broken_index, |_| {}, None);
    std::fs::write(
        broken_index.join("model.safetensors.index.json"),
        "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\"}}",
    )
    .unwrap();
    let e = load_err(&broken_index);
    assert!(e.contains("model-00001-of-00002.safetensors"), "{e}");
}

#[test]
fn adapters_for_other_models_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    write_model(&base, |_| {}, None);
    let cfg = TrainingConfig::from_yaml_str("lora_rank: 4\nlora_target: q_proj,v_proj").unwrap();

    // An adapter made for a model with a wider MLP / different width.
    let mut arch = serde_json::to_value(common::tiny_arch(false)).unwrap();
    arch["hidden_size"] = 32.into();
    let arch: lf_api::architecture::ModelArchitecture = serde_json::from_value(arch).unwrap();
    let weights = {
        let _rng = common::rng_lock();
        common::random_weights(&arch, 2)
    };
    let mut lm_other = CausalLm::from_tensors(arch, weights, &opts()).unwrap();
    lm_other.apply_method(&cfg, 1).unwrap();
    lm_other
        .save_adapter(&tmp.path().join("adapter_other"), "other")
        .unwrap();

    let mut lm = CausalLm::load(&base, &opts()).unwrap();
    let e = lm
        .load_adapter(&tmp.path().join("adapter_other"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lora_A.weight") && e.contains("adapter_other/adapter_model.safetensors"),
        "{e}"
    );

    // Continuing training with a different rank.
    let mut lm = CausalLm::load(&base, &opts()).unwrap();
    lm.apply_method(
        &TrainingConfig::from_yaml_str("lora_rank: 8\nlora_target: q_proj,v_proj").unwrap(),
        1,
    )
    .unwrap();
    let mut lm4 = CausalLm::load(&base, &opts()).unwrap();
    lm4.apply_method(&cfg, 1).unwrap();
    lm4.save_adapter(&tmp.path().join("adapter_r4"), "base")
        .unwrap();
    let e = lm
        .load_adapter(&tmp.path().join("adapter_r4"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("r=4") && e.contains("r=8") && e.contains("adapter_config.json"),
        "{e}"
    );

    // Not a LoRA adapter, and no adapter at all.
    let prefix = tmp.path().join("prefix");
    std::fs::create_dir_all(&prefix).unwrap();
    std::fs::write(
        prefix.join("adapter_config.json"),
        r#"{"peft_type": "PREFIX_TUNING"}"#,
    )
    .unwrap();
    let e = lm.load_adapter(&prefix).unwrap_err().to_string();
    assert!(
        e.contains("PREFIX_TUNING") && e.contains("prefix/adapter_config.json"),
        "{e}"
    );
    let e = lm
        .load_adapter(&tmp.path().join("nowhere"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nowhere/adapter_config.json"), "{e}");

    // Bad batches and prompts.
    let ids = tch::Tensor::zeros([2, 5], (Kind::Int64, Device::Cpu));
    let labels = tch::Tensor::zeros([2, 4], (Kind::Int64, Device::Cpu));
    assert!(lm
        .loss_sum_and_backward(&ids, &labels, 1.0)
        .unwrap_err()
        .to_string()
        .contains("[batch, seq]"));
    let e = lm
        .generate(&[1000], &lf_model::GenerationParams::greedy(2), &[], |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("1000") && e.contains("vocabulary"), "{e}");
}
