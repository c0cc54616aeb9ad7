//! The training config's MoE LoRA targets: names are checked before the model is known, and
//! PEFT's ParamWrapper refusals (dropout, DoRA) are the config's.

use lf_api::architecture::LinearModule;
use lf_api::{ModelArchitecture, TrainingConfig};

#[test]
fn expert_targets_in_the_training_config() {
    let mixtral = ModelArchitecture::from_json_str(
        r#"{"model_type":"mixtral","num_local_experts":4,"vocab_size":96,"hidden_size":64,
        "intermediate_size":112,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2}"#,
    )
    .unwrap();
    // The training config: names are checked before the model is known, and PEFT's
    // ParamWrapper refusals (dropout, DoRA) are the config's.
    let cfg = |yaml: &str| TrainingConfig::from_yaml_str(yaml).unwrap();
    let c = cfg("lora_target: q_proj,gate,w1,w3");
    assert_eq!(c.lora_targets_for(&mixtral).unwrap(), [LinearModule::QProj]);
    assert_eq!(
        c.expert_lora_targets_for(&mixtral).unwrap().gate_up,
        Some(2)
    );
    assert!(cfg("lora_target: gate").lora_targets().unwrap().is_empty());
    for bad in ["lora_dropout: 0.1", "use_dora: true"] {
        let c = cfg(&format!("lora_target: gate\n{bad}"));
        let err = c.lora_targets_for(&mixtral).unwrap_err().to_string();
        assert!(err.contains("ParamWrapper"), "{bad}: {err}");
        // The attention alone takes them.
        assert!(cfg(&format!("lora_target: q_proj\n{bad}"))
            .lora_targets_for(&mixtral)
            .is_ok());
    }
}
