//! Typed errors of the node. Container set-up failures carry the kubelet's waiting reason so they can
//! be reported on the pod status exactly as a kubelet would.

use std::fmt;

/// An error of the node itself: API calls, host commands, files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kubelet's reasons for a container that could not be created or started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerErrorReason {
    /// The container's configuration cannot be resolved (a missing ConfigMap key, runAsNonRoot
    /// without a user, ...). Retried: the referenced objects may appear.
    CreateContainerConfigError,
    /// The container cannot be created (no command: the "image entrypoint" is unknown here).
    CreateContainerError,
}

impl ContainerErrorReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerErrorReason::CreateContainerConfigError => "CreateContainerConfigError",
            ContainerErrorReason::CreateContainerError => "CreateContainerError",
        }
    }
}

/// A container that cannot be started, with the reason the pod status shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ContainerError {
    pub reason: ContainerErrorReason,
    pub message: String,
}

impl fmt::Display for ContainerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}

impl ContainerError {
    pub fn config(message: impl Into<String>) -> Self {
        ContainerError {
            reason: ContainerErrorReason::CreateContainerConfigError,
            message: message.into(),
        }
    }

    pub fn create(message: impl Into<String>) -> Self {
        ContainerError {
            reason: ContainerErrorReason::CreateContainerError,
            message: message.into(),
        }
    }
}
