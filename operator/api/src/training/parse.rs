//! Strict parsing: LLaMA-Factory's YAML (aliases, negative flags, `key=value` overrides, the
//! `deepspeed` JSON) into a [`TrainingConfig`] plus the [`Notice`]s about what was accepted as a
//! no-op; unknown keys get a "did you mean", unsupported options and values the reason.

use std::path::Path;

use super::compat::{self, Verdict, REJECTED_VALUES};
use super::config::TrainingConfig;
use super::deepspeed::{self, DeepSpeedConfig, DeepSpeedMapping};
use super::error::ConfigError;
use super::notice::Notice;

/// A parsed config and the notices about it (options accepted as no-ops, or whose behaviour
/// lf-trainer already has; what a `deepspeed` config mapped and ignored). Callers log the notices.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub config: TrainingConfig,
    pub notices: Vec<Notice>,
}

/// Accepted spellings of supported keys: (alias, key). `disable_gradient_checkpointing` is
/// LLaMA-Factory's negative flag for `gradient_checkpointing`; `use_unsloth_gc` is its switch for
/// Unsloth's gradient checkpointing, which offloads the checkpoints to host memory.
pub const ALIASES: &[(&str, &str)] = &[
    ("disable_gradient_checkpointing", "gradient_checkpointing"),
    ("evaluation_strategy", "eval_strategy"),
    ("use_unsloth_gc", "offload_activations"),
];

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

    /// Parses a YAML document (a LLaMA-Factory style flat mapping), strictly. The notices are
    /// dropped: see [`TrainingConfig::parse_yaml_str`].
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse_yaml_str(text).map(|p| p.config)
    }

    /// Reads and parses a YAML file. The notices are dropped: see
    /// [`TrainingConfig::parse_yaml_file`].
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        Self::parse_yaml_file(path).map(|p| p.config)
    }

    /// Parses an already-loaded YAML value, strictly (unknown and unsupported keys are errors).
    /// The notices are dropped: see [`TrainingConfig::parse_yaml_value`].
    pub fn from_yaml_value(value: serde_yaml::Value) -> Result<Self, ConfigError> {
        Self::parse_yaml_value(value, None).map(|p| p.config)
    }

    /// [`TrainingConfig::from_yaml_str`] with the notices. A `deepspeed` path is read relative
    /// to the current directory.
    pub fn parse_yaml_str(text: &str) -> Result<Parsed, ConfigError> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        Self::parse_yaml_value(value, None)
    }

    /// [`TrainingConfig::from_yaml_file`] with the notices. A `deepspeed` path is read relative
    /// to the current directory (as LLaMA-Factory reads it) or, when not found there, to the YAML
    /// file's directory and its parents.
    pub fn parse_yaml_file(path: &Path) -> Result<Parsed, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        Self::parse_yaml_value(value, path.parent())
    }

    /// Parses a YAML value, strictly, with the notices; `yaml_dir` is where a relative
    /// `deepspeed` path is looked for when the current directory does not have it. A `deepspeed`
    /// path is replaced by the file's keys, so the config stands on its own.
    pub fn parse_yaml_value(
        value: serde_yaml::Value,
        yaml_dir: Option<&Path>,
    ) -> Result<Parsed, ConfigError> {
        let mapping = match value {
            serde_yaml::Value::Mapping(m) => m,
            serde_yaml::Value::Null => serde_yaml::Mapping::new(),
            _ => return Err(ConfigError::NotAMapping),
        };
        let mut notices = Vec::new();
        let mapping = normalise_keys(mapping, yaml_dir, &mut notices)?;
        let config: TrainingConfig =
            serde_path_to_error::deserialize(serde_yaml::Value::Mapping(mapping)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::InvalidValue {
                    key,
                    message: e.into_inner().to_string(),
                }
            })?;
        config.validate()?;
        Ok(Parsed { config, notices })
    }

    /// The config as the trainer runs it when it did not come through the parser (a
    /// FineTuneJob's `spec.training` arrives through the API server): `deepspeed` applied onto
    /// the keys it maps to, then dropped, so the result stands on its own and a plan may change
    /// those keys afterwards. A key set to something other than its default and other than
    /// DeepSpeed's value is a conflict, as in a parsed file. Without `deepspeed`, an unchanged
    /// copy and no notices.
    pub fn with_deepspeed_applied(&self) -> Result<Parsed, ConfigError> {
        if self.deepspeed.is_none() {
            return Ok(Parsed {
                config: self.clone(),
                notices: Vec::new(),
            });
        }
        let mapping = |c: &TrainingConfig| match serde_yaml::to_value(c) {
            Ok(serde_yaml::Value::Mapping(m)) => Ok(m),
            Ok(_) => Err(ConfigError::NotAMapping),
            Err(e) => Err(ConfigError::Yaml(e.to_string())),
        };
        let defaults = mapping(&TrainingConfig::default())?;
        let mut explicit = mapping(self)?;
        explicit.retain(|k, v| k.as_str() == Some("deepspeed") || defaults.get(k) != Some(v));
        let mut parsed = Self::parse_yaml_value(serde_yaml::Value::Mapping(explicit), None)?;
        parsed.config.deepspeed = None;
        Ok(parsed)
    }

    /// Applies `key=value` overrides (as on LLaMA-Factory's command line); values are YAML scalars.
    pub fn with_overrides<S: AsRef<str>>(&self, overrides: &[S]) -> Result<Self, ConfigError> {
        self.parse_overrides(overrides).map(|p| p.config)
    }

    /// [`TrainingConfig::with_overrides`] with the notices about the overridden keys (the rest
    /// were reported when the config itself was parsed).
    pub fn parse_overrides<S: AsRef<str>>(&self, overrides: &[S]) -> Result<Parsed, ConfigError> {
        let mut value = serde_yaml::to_value(self).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        let map = value.as_mapping_mut().ok_or(ConfigError::NotAMapping)?;
        let mut keys = Vec::new();
        for o in overrides {
            let o = o.as_ref();
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::BadOverride(o.to_string()))?;
            let v: serde_yaml::Value =
                serde_yaml::from_str(v).map_err(|e| ConfigError::invalid(k, e.to_string()))?;
            keys.push(k.trim().to_string());
            map.insert(serde_yaml::Value::String(k.trim().to_string()), v);
        }
        let mut parsed = Self::parse_yaml_value(value, None)?;
        parsed
            .notices
            .retain(|n| keys.iter().any(|k| n.concerns(k)));
        Ok(parsed)
    }

    /// What `deepspeed` sets (`zero_stage`, `offload_optimizer`, ...), for a config that did not
    /// come through the parser (a FineTuneJob read from the API server). `None` without one.
    pub fn deepspeed_mapping(&self) -> Result<Option<DeepSpeedMapping>, ConfigError> {
        let inline = match &self.deepspeed {
            None => return Ok(None),
            Some(DeepSpeedConfig::Inline(m)) => m.clone(),
            Some(DeepSpeedConfig::Path(p)) => {
                match deepspeed::resolve(&serde_yaml::Value::String(p.clone()), None)? {
                    Some(resolved) => resolved.config,
                    None => return Ok(None),
                }
            }
        };
        DeepSpeedMapping::from_json(&inline).map(Some)
    }

    /// With `trust_remote_code: true`, checks the model's `config.json` (its JSON) against the
    /// built-in architectures: a notice when it is one (no remote code runs), an error naming
    /// the architecture when it is not. `None` when `trust_remote_code` is false (the loader
    /// rejects an unknown architecture anyway).
    pub fn check_remote_code(
        &self,
        model_config: &serde_json::Value,
    ) -> Result<Option<Notice>, ConfigError> {
        if !self.trust_remote_code {
            return Ok(None);
        }
        let model_type = model_config
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        // A multimodal checkpoint whose text decoder is built in (Gemma 3's `gemma3`) is one too.
        let builtin = serde_json::from_value::<crate::architecture::ModelType>(
            serde_json::Value::String(model_type.to_string()),
        )
        .is_ok()
            || crate::architecture::Multimodal::from_name(model_type).is_some();
        if !builtin {
            let architectures = model_config
                .get("architectures")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            return Err(ConfigError::RemoteCode {
                model_type: if model_type.is_empty() {
                    "(none)".to_string()
                } else {
                    model_type.to_string()
                },
                architectures,
            });
        }
        let auto_map = if model_config.get("auto_map").is_some() {
            "; the config.json's `auto_map` code is not used"
        } else {
            ""
        };
        Ok(Some(Notice::new(
            "trust_remote_code",
            format!("`model_type: {model_type}` is built in and loaded with lf-trainer's own code{auto_map}"),
        )))
    }

    /// Serialises to YAML (what the operator writes into the pod's ConfigMap).
    pub fn to_yaml_string(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }
}

/// A YAML value as the user would write it (scalars plain, collections as flow JSON).
fn show(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Null => "null".to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// Renames accepted aliases, drops (with a notice) options accepted as no-ops, rejects unknown
/// and unsupported keys with a precise message, and maps `deepspeed` onto the config's keys.
fn normalise_keys(
    mapping: serde_yaml::Mapping,
    yaml_dir: Option<&Path>,
    notices: &mut Vec<Notice>,
) -> Result<serde_yaml::Mapping, ConfigError> {
    let known = TrainingConfig::known_keys();
    let mut out = serde_yaml::Mapping::new();
    let mut deepspeed_value = None;
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
        // `evaluation_strategy` is the pre-4.46 transformers spelling; `use_unsloth_gc`
        // LLaMA-Factory's name for offloaded checkpoints.
        let key = match key.as_str() {
            "evaluation_strategy" => "eval_strategy".to_string(),
            "use_unsloth_gc" => "offload_activations".to_string(),
            _ => key,
        };
        if key == "deepspeed" {
            deepspeed_value = Some(v);
            continue;
        }
        if let Some(option) = compat::find(&key) {
            match option.judge(&v) {
                Verdict::Quiet => {}
                Verdict::Noted => notices.push(Notice::new(&key, option.notice)),
                Verdict::Rejected => {
                    return Err(ConfigError::Unsupported {
                        key,
                        value: show(&v),
                        why: option.rejected,
                    })
                }
            }
            continue;
        }
        if let Some((_, values, why)) = REJECTED_VALUES.iter().find(|(name, _, _)| *name == key) {
            if let Some(s) = v.as_str() {
                if values.iter().any(|x| x.eq_ignore_ascii_case(s.trim())) {
                    return Err(ConfigError::Unsupported {
                        key,
                        value: s.to_string(),
                        why,
                    });
                }
            }
        }
        if !known.contains(&key) {
            let mut candidates: Vec<&str> = known.iter().map(String::as_str).collect();
            for k in compat::keys().chain(ALIASES.iter().map(|(alias, _)| *alias)) {
                candidates.push(k);
            }
            let suggestion = crate::suggest::closest(&key, candidates).map(str::to_string);
            return Err(ConfigError::UnknownKey { key, suggestion });
        }
        if key == "trust_remote_code" && v.as_bool() == Some(true) {
            notices.push(Notice::new(
                "trust_remote_code",
                "no remote code runs: lf-trainer loads the built-in architectures (llama, mistral, qwen2, qwen3, gemma2, gemma3_text) with its own code, and rejects any other when it reads the model's config.json",
            ));
        }
        out.insert(serde_yaml::Value::String(key), v);
    }
    if let Some(value) = deepspeed_value {
        if let Some(deepspeed::Resolved { config: json, file }) =
            deepspeed::resolve(&value, yaml_dir)?
        {
            let mapping = DeepSpeedMapping::from_json(&json)?;
            apply_deepspeed(&mut out, &mapping)?;
            let mut ds_notices = mapping.notices;
            if let (Some(file), Some(first)) = (file, ds_notices.first_mut()) {
                first.message = format!("{}: {}", file.display(), first.message);
            }
            notices.extend(ds_notices);
            let inline =
                serde_yaml::to_value(&json).map_err(|e| ConfigError::Yaml(e.to_string()))?;
            out.insert("deepspeed".into(), inline);
        }
    }
    Ok(out)
}

/// Whether `a` and `b` mean the same value of `key` (`adamw_torch_fused` is `adamw_torch`, `3` is
/// `3.0`): both parsed as that one key of the config.
fn same(key: &str, a: &serde_yaml::Value, b: &serde_yaml::Value) -> bool {
    let one = |v: &serde_yaml::Value| {
        let mut m = serde_yaml::Mapping::new();
        m.insert(key.into(), v.clone());
        serde_yaml::from_value::<TrainingConfig>(serde_yaml::Value::Mapping(m))
    };
    match (one(a), one(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Sets the keys a DeepSpeed config maps to; a key the config sets differently is an error
/// naming both.
fn apply_deepspeed(
    out: &mut serde_yaml::Mapping,
    mapping: &DeepSpeedMapping,
) -> Result<(), ConfigError> {
    for s in &mapping.settings {
        let conflict = |key: &str, value: &serde_yaml::Value| ConfigError::Conflict {
            key: key.to_string(),
            value: show(value),
            from: s.from.clone(),
            from_value: show(&s.value),
        };
        if let Some(existing) = out.get(s.key) {
            if !same(s.key, existing, &s.value) {
                return Err(conflict(s.key, existing));
            }
        }
        // Half-precision flags exclude each other.
        let excludes: &[&str] = match (s.key, s.value.as_bool()) {
            ("fp16", Some(true)) => &["bf16", "pure_bf16"],
            ("bf16", Some(true)) => &["fp16"],
            _ => &[],
        };
        for other in excludes {
            if let Some(existing) = out.get(*other) {
                if existing.as_bool() == Some(true) {
                    return Err(conflict(other, existing));
                }
            }
        }
        out.insert(s.key.into(), s.value.clone());
    }
    Ok(())
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
        assert_eq!(
            c.gradient_checkpointing,
            super::super::GradientCheckpointing::Auto
        );
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
        let err = TrainingConfig::from_yaml_str("use_galore: true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not supported"), "{err}");
        assert!(err.contains("GaLore"), "{err}");
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
        assert_eq!(
            c.gradient_checkpointing,
            super::super::GradientCheckpointing::Off
        );
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

    #[test]
    fn deepspeed_applied_to_a_config_that_skipped_the_parser() {
        let mut c = TrainingConfig::default();
        let ds = r#"{"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}"#;
        c.deepspeed = serde_yaml::from_str(&format!("'{ds}'")).unwrap();
        c.learning_rate = 2e-5;
        let applied = c.with_deepspeed_applied().unwrap().config;
        assert_eq!(applied.zero_stage, 3);
        assert_eq!(applied.learning_rate, 2e-5);
        assert!(applied.deepspeed.is_none());
        // An explicit stage that disagrees is the same conflict as in a file.
        c.zero_stage = 2;
        let err = c.with_deepspeed_applied().unwrap_err().to_string();
        assert!(err.contains("zero_stage"), "{err}");
        // Without deepspeed, nothing changes.
        let plain = TrainingConfig::default();
        assert_eq!(plain.with_deepspeed_applied().unwrap().config, plain);
    }
}
