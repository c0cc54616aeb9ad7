//! Errors of lf-dist. Every failure inside c10d arrives here as a value carrying the rank and the
//! operation; nothing aborts the process.

use lf_api::runtime::{exit_code, FailureReason};

/// An error from rendezvous, a collective, the launcher or bad input.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A rendezvous environment variable is missing or malformed.
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },

    /// Bad arguments from the caller (world size, rank, tensor shapes, devices, dtypes).
    #[error("{op}: {message}")]
    InvalidArgument { op: &'static str, message: String },

    /// The rendezvous at `addr` could not complete. `missing_ranks` lists the ranks known not to
    /// have arrived (empty when the store itself was unreachable and nothing can be known).
    #[error("rank {rank}: rendezvous at {addr} failed: {message}")]
    Rendezvous {
        rank: usize,
        addr: String,
        missing_ranks: Vec<usize>,
        message: String,
    },

    /// A collective (or process-group construction) failed inside c10d: a peer died, the
    /// network broke, or the operation timed out.
    #[error("rank {rank}: {op} failed: {message}")]
    Collective {
        rank: usize,
        op: &'static str,
        message: String,
    },

    /// The requested backend is not compiled in (e.g. CUDA tensors without the `nccl` feature).
    #[error("{0}")]
    Unsupported(String),

    /// The launcher could not start or supervise its workers.
    #[error("launcher: {message}")]
    Launcher {
        message: String,
        #[source]
        source: Option<std::io::Error>,
    },
}

impl DistError {
    /// How the trainer should classify this error (lf-api's runtime contract).
    pub fn failure_reason(&self) -> FailureReason {
        match self {
            DistError::Env { .. }
            | DistError::InvalidArgument { .. }
            | DistError::Unsupported(_) => FailureReason::ConfigError,
            DistError::Rendezvous { .. } | DistError::Collective { .. } => {
                FailureReason::Communication
            }
            DistError::Launcher { .. } => FailureReason::Runtime,
        }
    }

    /// The process exit code for this error (lf-api's `exit_code`).
    pub fn exit_code(&self) -> i32 {
        match self.failure_reason() {
            FailureReason::ConfigError => exit_code::CONFIG,
            reason => reason.exit_code(),
        }
    }

    pub(crate) fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        DistError::InvalidArgument {
            op,
            message: message.into(),
        }
    }
}
