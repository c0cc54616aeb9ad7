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
    #[error("`{key}` is a LLaMA-Factory option that lf-trainer does not support: {why}")]
    Unsupported { key: String, why: &'static str },
    #[error("invalid value for `{key}`: {message}")]
    InvalidValue { key: String, message: String },
    #[error("override `{0}` must look like key=value")]
    BadOverride(String),
}

impl ConfigError {
    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::InvalidValue {
            key: key.to_string(),
            message: message.into(),
        }
    }
}
