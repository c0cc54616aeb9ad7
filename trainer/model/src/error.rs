//! The one error type of this crate. Every variant names the file or tensor at fault so a user can
//! act on it without reading code.

use std::path::PathBuf;

use lf_data::files::FileError;

/// Errors from loading, adapting, saving or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A write failed because the volume (or a quota) is full: retrying cannot help.
    #[error("output volume full: {needed} bytes needed at {path}: {source}")]
    StorageFull {
        path: PathBuf,
        needed: u64,
        source: std::io::Error,
    },
    #[error(transparent)]
    Architecture(#[from] lf_api::architecture::ArchitectureError),
    #[error("{path} is not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path} is not valid JSON: {message}")]
    Json { path: PathBuf, message: String },
    /// A shard named by `model.safetensors.index.json` that escapes the model directory, is not a
    /// regular file (a FIFO would hang the open) or cannot be opened.
    #[error("{index}: weight_map entry `{entry}`: {source}")]
    WeightMapEntry {
        index: PathBuf,
        entry: String,
        source: FileError,
    },
    /// A model file that is not a regular file (a FIFO, a device, a directory).
    #[error("{0}")]
    NotRegular(FileError),
    #[error(
        "{dir} has no model weights: expected model.safetensors or model.safetensors.index.json"
    )]
    NoWeights { dir: PathBuf },
    #[error("tensor `{name}` is missing from {source_desc}")]
    MissingTensor { name: String, source_desc: String },
    #[error("tensor `{name}` in {source_desc} has shape {found:?}, but the architecture needs {expected:?}")]
    ShapeMismatch {
        name: String,
        source_desc: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("tensor `{name}` in {source_desc} has dtype {dtype}, which lf-model cannot load")]
    UnsupportedDtype {
        name: String,
        source_desc: String,
        dtype: String,
    },
    #[error("unexpected tensor `{name}` in {source_desc}: it does not belong to this {what}")]
    UnexpectedTensor {
        name: String,
        source_desc: String,
        what: String,
    },
    #[error("config {path}: {message}")]
    UnsupportedConfig { path: PathBuf, message: String },
    #[error("adapter {path}: {message}")]
    Adapter { path: PathBuf, message: String },
    #[error("quantising `{name}`: {message}")]
    Quantization { name: String, message: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Gathering or releasing a partitioned unit failed (a collective of the process group).
    #[error("{unit}: {source}")]
    Residency {
        unit: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("libtorch error while {context}: {source}")]
    Torch {
        context: String,
        source: tch::TchError,
    },
}

impl ModelError {
    /// A failed write of `needed` bytes to `path`: [`ModelError::StorageFull`] when the volume is
    /// full, [`ModelError::Write`] otherwise (the OS error is kept either way).
    pub fn write(path: &std::path::Path, needed: u64, source: std::io::Error) -> ModelError {
        if is_storage_full(&source) {
            ModelError::StorageFull {
                path: path.to_path_buf(),
                needed,
                source,
            }
        } else {
            ModelError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// Wraps a [`crate::Residency`] error with the unit it was about.
    pub(crate) fn residency<E: std::error::Error + Send + Sync + 'static>(
        unit: crate::Unit,
        what: &'static str,
    ) -> impl FnOnce(E) -> ModelError {
        move |e| ModelError::Residency {
            unit: format!("{what} {unit}"),
            source: Box::new(e),
        }
    }

    /// Wraps a libtorch error with what we were doing.
    pub(crate) fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> ModelError {
        let context = context.into();
        move |source| ModelError::Torch { context, source }
    }
}

impl From<FileError> for ModelError {
    /// An I/O failure stays [`ModelError::Io`] (as for every other model file); a refused file is
    /// [`ModelError::NotRegular`].
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io { path, source } => ModelError::Io { path, source },
            refused => ModelError::NotRegular(refused),
        }
    }
}

/// Whether an I/O error means the volume (or the user's quota) is full: ENOSPC or EDQUOT.
pub fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}
