//! Why writing a checkpoint failed. (Why a written one cannot be used is [`crate::Invalid`].)

use std::path::PathBuf;

/// A failed checkpoint write. The OS error is kept, so a caller can tell a full volume
/// (`ErrorKind::StorageFull`) from anything else.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// `op` (`create`, `fsync`, `rename into place`, …) failed on `path`.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The completion marker could not be serialised.
    #[error("cannot encode the completion marker: {0}")]
    Encode(serde_json::Error),
}

impl CheckpointError {
    /// `op` failed on `path`.
    pub fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        CheckpointError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
