//! Strict parsing: LLaMA-Factory's YAML (aliases, negative flags, `key=value` overrides) into a
//! [`TrainingConfig`]; unknown keys get a "did you mean", known-but-unsupported ones the reason.

use std::path::Path;

use super::config::TrainingConfig;
use super::error::ConfigError;

/// LLaMA-Factory / `TrainingArguments` options we recognise but do not implement, with the reason
/// (and the alternative, where there is one).
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("deepspeed", "ZeRO is built in: set `zero_stage` (or let the operator's planner choose it) and `offload_optimizer`"),
    ("fsdp", "ZeRO stage 3 (`zero_stage: 3`) shards parameters, gradients and optimizer states"),
    ("fsdp_config", "ZeRO stage 3 (`zero_stage: 3`) shards parameters, gradients and optimizer states"),
    ("quantization_method", "only bitsandbytes-style quantisation on load (`quantization_bit: 4|8`) is implemented"),
    ("quantization_device_map", "the trainer places weights itself"),
    ("use_unsloth", "not available; the chunked loss and layer recomputation are built in"),
    ("use_unsloth_gc", "not available; gradient checkpointing is built in"),
    ("enable_liger_kernel", "the chunked language-model loss is always on (see `loss_chunk_size`)"),
    ("rope_scaling", "RoPE scaling is read from the model's config.json"),
    ("use_galore", "GaLore is not implemented"),
    ("use_apollo", "APOLLO is not implemented"),
    ("use_badam", "BAdam is not implemented"),
    ("use_adam_mini", "Adam-mini is not implemented"),
    ("use_muon", "Muon is not implemented"),
    ("pissa_init", "PiSSA initialisation is not implemented"),
    ("loraplus_lr_ratio", "LoRA+ is not implemented"),
    ("additional_target", "modules_to_save is not implemented"),
    ("resize_vocab", "vocabulary resizing is not implemented"),
    ("add_tokens", "adding tokens is not implemented"),
    ("add_special_tokens", "adding tokens is not implemented"),
    ("neat_packing", "only plain packing (`packing: true`) is implemented"),
    ("streaming", "datasets are tokenised once and cached; streaming is not implemented"),
    ("mix_strategy", "datasets are concatenated (`dataset: a,b`)"),
    ("interleave_probs", "datasets are concatenated (`dataset: a,b`)"),
    ("pref_beta", "only the `sft` and `pt` stages are implemented"),
    ("pref_loss", "only the `sft` and `pt` stages are implemented"),
    ("infer_backend", "chat runs on the trainer's own libtorch model"),
    ("export_quantization_bit", "exporting quantised weights is not implemented"),
    ("export_legacy_format", "export always writes safetensors"),
    ("tool_format", "tool calls are not implemented"),
    ("upcast_layernorm", "RMSNorm is always computed in fp32"),
    ("upcast_lmhead_output", "the loss is always computed in fp32, in chunks"),
    ("trust_remote_code", "only the built-in Llama-family architectures are loaded; no remote code runs"),
];

/// Keys accepted for compatibility that carry no meaning for lf-trainer (they are dropped).
const ACCEPTED_NO_OP: &[&str] = &["overwrite_cache_dir", "print_param_status"];

impl TrainingConfig {
    /// Every key the config accepts, from the type's own schema (so the list cannot drift).
    pub fn known_keys() -> Vec<String> {
        let schema = schemars::schema_for!(TrainingConfig);
        schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Parses a YAML document (a LLaMA-Factory style flat mapping), strictly.
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        Self::from_yaml_value(value)
    }

    /// Reads and parses a YAML file.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// Parses an already-loaded YAML value, strictly (unknown and unsupported keys are errors).
    pub fn from_yaml_value(value: serde_yaml::Value) -> Result<Self, ConfigError> {
        let mapping = match value {
            serde_yaml::Value::Mapping(m) => m,
            serde_yaml::Value::Null => serde_yaml::Mapping::new(),
            _ => return Err(ConfigError::NotAMapping),
        };
        let mapping = normalise_keys(mapping)?;
        let config: TrainingConfig =
            serde_path_to_error::deserialize(serde_yaml::Value::Mapping(mapping)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::InvalidValue {
                    key,
                    message: e.into_inner().to_string(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `key=value` overrides (as on LLaMA-Factory's command line); values are YAML scalars.
    pub fn with_overrides<S: AsRef<str>>(&self, overrides: &[S]) -> Result<Self, ConfigError> {
        let mut value = serde_yaml::to_value(self).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        let map = value.as_mapping_mut().ok_or(ConfigError::NotAMapping)?;
        for o in overrides {
            let o = o.as_ref();
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::BadOverride(o.to_string()))?;
            let v: serde_yaml::Value =
                serde_yaml::from_str(v).map_err(|e| ConfigError::invalid(k, e.to_string()))?;
            map.insert(serde_yaml::Value::String(k.trim().to_string()), v);
        }
        Self::from_yaml_value(value)
    }

    /// Serialises to YAML (what the operator writes into the pod's ConfigMap).
    pub fn to_yaml_string(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }
}

/// Renames accepted aliases, rejects unknown and unsupported keys with a precise message.
fn normalise_keys(mapping: serde_yaml::Mapping) -> Result<serde_yaml::Mapping, ConfigError> {
    let known = TrainingConfig::known_keys();
    let mut out = serde_yaml::Mapping::new();
    for (k, v) in mapping {
        let key = match &k {
            serde_yaml::Value::String(s) => s.clone(),
            other => {
                return Err(ConfigError::UnknownKey {
                    key: format!("{other:?}"),
                    suggestion: None,
                });
            }
        };
        if ACCEPTED_NO_OP.contains(&key.as_str()) {
            continue;
        }
        // LLaMA-Factory spells "gradient checkpointing off" as a negative flag.
        if key == "disable_gradient_checkpointing" {
            let disabled = v
                .as_bool()
                .ok_or_else(|| ConfigError::invalid(&key, "must be true or false"))?;
            out.insert(
                "gradient_checkpointing".into(),
                serde_yaml::Value::Bool(!disabled),
            );
            continue;
        }
        // `evaluation_strategy` is the pre-4.46 transformers spelling.
        let key = if key == "evaluation_strategy" {
            "eval_strategy".to_string()
        } else {
            key
        };
        if let Some((_, why)) = UNSUPPORTED.iter().find(|(name, _)| *name == key) {
            // An explicit "off" value of an unsupported feature is harmless.
            let off = v.is_null() || v.as_bool() == Some(false);
            if off {
                continue;
            }
            return Err(ConfigError::Unsupported { key, why });
        }
        if !known.contains(&key) {
            let suggestion =
                crate::suggest::closest(&key, known.iter().map(String::as_str)).map(str::to_string);
            return Err(ConfigError::UnknownKey { key, suggestion });
        }
        out.insert(serde_yaml::Value::String(key), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::{FlashAttn, Optim};

    #[test]
    fn defaults_follow_llama_factory() {
        let c = TrainingConfig::from_yaml_str("{}").unwrap();
        assert_eq!(c.lora_rank, 8);
        assert_eq!(c.effective_lora_alpha(), 16.0);
        assert!(c.gradient_checkpointing);
        assert_eq!(c.cutoff_len, 2048);
        assert_eq!(c.lora_targets().unwrap().len(), 7);
    }

    #[test]
    fn unknown_key_suggests_closest() {
        let err = TrainingConfig::from_yaml_str("lora_rnak: 8")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unknown key `lora_rnak` (did you mean `lora_rank`?)");
    }

    #[test]
    fn unsupported_key_says_so() {
        let err = TrainingConfig::from_yaml_str("deepspeed: ds_z3.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not support"), "{err}");
        assert!(err.contains("zero_stage"), "{err}");
        // An explicit "off" is fine.
        TrainingConfig::from_yaml_str("use_unsloth: false").unwrap();
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = TrainingConfig::from_yaml_str("lora_rank: eight")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lora_rank"), "{err}");
    }

    #[test]
    fn invalid_combinations() {
        let err = TrainingConfig::from_yaml_str("quantization_bit: 4\nfinetuning_type: full")
            .unwrap_err()
            .to_string();
        assert!(err.contains("quantization_bit"), "{err}");
        let err = TrainingConfig::from_yaml_str("lora_rank: 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lora_rank"), "{err}");
        let err = TrainingConfig::from_yaml_str("lora_target: q_prj")
            .unwrap_err()
            .to_string();
        assert!(err.contains("q_proj"), "{err}");
    }

    #[test]
    fn aliases_and_overrides() {
        let c = TrainingConfig::from_yaml_str(
            "disable_gradient_checkpointing: true\noptim: adamw_torch_fused\nflash_attn: disabled",
        )
        .unwrap();
        assert!(!c.gradient_checkpointing);
        assert_eq!(c.optim, Optim::AdamwTorch);
        assert_eq!(c.flash_attn, FlashAttn::Eager);
        let c = c
            .with_overrides(&["lora_rank=16", "learning_rate=1e-4"])
            .unwrap();
        assert_eq!(c.lora_rank, 16);
        assert_eq!(c.learning_rate, 1e-4);
        assert!(c.with_overrides(&["lora_rnak=16"]).is_err());
    }

    #[test]
    fn round_trips_through_yaml() {
        let c = TrainingConfig::from_yaml_str("lora_rank: 32\ndataset: a,b\nbf16: true").unwrap();
        let back = TrainingConfig::from_yaml_str(&c.to_yaml_string()).unwrap();
        assert_eq!(c, back);
    }
}
