//! The crate's error type. Every variant names the file (and line or key) at fault, so a user can
//! fix their data or config without reading our source.

use std::path::PathBuf;

/// Errors from loading tokenizers, reading datasets, rendering templates and the token cache.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file that must be JSON is not (whole-file formats: `tokenizer_config.json`, `dataset_info.json`).
    #[error("{}: invalid JSON at line {line}, column {column}: {message}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// `tokenizer.json` could not be loaded, or text could not be encoded.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    /// A dataset record is malformed: bad JSON or missing/ill-typed columns.
    #[error("{}:{line}{}: {message}", path.display(), column.map(|c| format!(":{c}")).unwrap_or_default())]
    BadRecord {
        path: PathBuf,
        line: usize,
        column: Option<usize>,
        message: String,
    },
    /// The dataset configuration (`dataset`, `dataset_info.json`, `val_size`, ...) is wrong.
    #[error("invalid data config `{key}`: {message}")]
    Config { key: String, message: String },
    /// A chat template failed to compile or render.
    #[error("chat template `{template}`: {message}")]
    Template { template: String, message: String },
    /// A file named by the input escapes its directory, is not a regular file, or is unreadable.
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// The tokenised-dataset cache is unreadable, or another rank did not produce it in time.
    #[error("tokenised dataset cache {}: {message}", path.display())]
    Cache { path: PathBuf, message: String },
}

impl DataError {
    /// True when the user's input is at fault (data, config, template or tokenizer files), so
    /// the trainer can exit with the configuration/input exit code; false for I/O and cache
    /// failures, which may be transient.
    pub fn is_input_error(&self) -> bool {
        match self {
            DataError::Io { .. } | DataError::Cache { .. } => false,
            DataError::File(e) => e.is_input_error(),
            _ => true,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(key: &str, message: impl Into<String>) -> Self {
        DataError::Config {
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn template(template: &str, message: impl Into<String>) -> Self {
        DataError::Template {
            template: template.to_string(),
            message: message.into(),
        }
    }
}
