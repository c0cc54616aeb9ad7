//! Errors from reading or validating a training config.

use std::path::PathBuf;

/// Errors from reading or validating a training config. Each names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    #[error("the config must be a YAML mapping of LLaMA-Factory argument names to values")]
    NotAMapping,
    #[error("unknown key `{key}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    /// A LLaMA-Factory option (or one of its values) that lf-trainer does not implement.
    #[error("`{key}: {value}` is not supported by lf-trainer: {why}")]
    Unsupported {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("invalid value for `{key}`: {message}")]
    InvalidValue { key: String, message: String },
    #[error("override `{0}` must look like key=value")]
    BadOverride(String),
    /// A DeepSpeed config key lf-trainer cannot honour, or a DeepSpeed config it cannot read.
    #[error("deepspeed{}: {message}", if key.is_empty() { String::new() } else { format!(" `{key}`") })]
    DeepSpeed { key: String, message: String },
    /// A key set both in the config and (differently) in its DeepSpeed config.
    #[error("`{key}: {value}` conflicts with the deepspeed config's `{from}: {from_value}`; remove one or make them agree")]
    Conflict {
        key: String,
        value: String,
        from: String,
        from_value: String,
    },
    /// `trust_remote_code: true` for a model whose architecture is not built in.
    #[error("`trust_remote_code: true` asks to run the model's own code for `model_type: {model_type}`{}; lf-trainer runs no remote code and has built-in llama, mistral and qwen2 only", if architectures.is_empty() { String::new() } else { format!(" ({})", architectures.join(", ")) })]
    RemoteCode {
        model_type: String,
        architectures: Vec<String>,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::InvalidValue {
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn deepspeed(key: &str, message: impl Into<String>) -> Self {
        ConfigError::DeepSpeed {
            key: key.to_string(),
            message: message.into(),
        }
    }
}
