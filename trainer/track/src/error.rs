//! What can go wrong while reporting to a tracker. None of it stops training: the worker logs it
//! (and MLflow retries what a server that is down or overloaded could not take).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The tracking server could not be reached or answered 5xx/429: worth retrying.
    #[error("{url}: {message}")]
    Unavailable { url: String, message: String },
    /// The tracking server refused the request (4xx): retrying would not help.
    #[error("{url} refused the request ({status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("invalid tracker setting: {0}")]
    Config(String),
}

impl TrackError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        TrackError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, TrackError::Unavailable { .. })
    }
}
