//! The trainer's error type and how each error maps onto the runtime contract
//! ([`FailureReason`], exit code, termination message).

use std::path::{Path, PathBuf};

pub use lf_model::durable::is_storage_full;

use lf_api::runtime::{exit_code, paths, FailureReason, TerminationReport};

/// Why a trainer command stopped. Every variant carries a message meant for the user; variants
/// that have an obvious next step carry a hint too.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// Bad configuration or input (config file, override, model directory, dataset): retrying
    /// cannot help.
    #[error("{message}")]
    Config { message: String },
    /// The loss or the gradient norm became NaN or infinite.
    #[error("{message}")]
    NonFinite { message: String, hint: String },
    /// Device or host memory ran out.
    #[error("{message}")]
    OutOfMemory { message: String },
    /// A collective or the rendezvous failed.
    #[error("{message}")]
    Communication { message: String },
    /// SIGTERM/SIGINT: the current step finished and (when one could be written) a checkpoint was
    /// saved.
    #[error("interrupted by a signal after step {step}{}", checkpoint.map(|c| format!("; checkpoint-{c} is complete")).unwrap_or_default())]
    Interrupted { step: u64, checkpoint: Option<u64> },
    /// The output volume (or a quota on it) is full: the same step would fail again.
    #[error("output volume full: {} at {}{}; free space or enlarge the PVC", needed.map_or("more space needed".to_string(), |n| format!("{n} bytes needed")), path.display(), free.map(|f| format!(" ({f} bytes free)")).unwrap_or_default())]
    VolumeFull {
        path: PathBuf,
        needed: Option<u64>,
        free: Option<u64>,
    },
    /// Anything else (I/O while writing outputs, an internal libtorch error).
    #[error("{message}")]
    Runtime { message: String },
}

impl TrainerError {
    pub fn config(message: impl Into<String>) -> Self {
        TrainerError::Config {
            message: message.into(),
        }
    }

    pub fn runtime(message: impl Into<String>) -> Self {
        TrainerError::Runtime {
            message: message.into(),
        }
    }

    /// An I/O failure on `path` while doing `what`; a full volume is [`TrainerError::VolumeFull`].
    pub fn io(what: &str, path: &Path, err: std::io::Error) -> Self {
        if is_storage_full(&err) {
            return TrainerError::volume_full(path, None);
        }
        TrainerError::Runtime {
            message: format!("cannot {what} {}: {err}", path.display()),
        }
    }

    /// Writing `needed` bytes (when known) at `path` found its volume full.
    pub fn volume_full(path: &Path, needed: Option<u64>) -> Self {
        TrainerError::VolumeFull {
            path: path.to_path_buf(),
            needed,
            free: free_bytes(path),
        }
    }

    /// Classifies a message coming from libtorch or a library crate: allocation failures become
    /// [`TrainerError::OutOfMemory`], the rest [`TrainerError::Runtime`].
    pub fn from_library(context: &str, message: impl std::fmt::Display) -> Self {
        let message = format!("{context}: {message}");
        if looks_like_oom(&message) {
            TrainerError::OutOfMemory { message }
        } else {
            TrainerError::Runtime { message }
        }
    }

    /// The same error with `context: ` before its message.
    pub fn with_context(self, context: &str) -> Self {
        let prefix = |m: String| format!("{context}: {m}");
        match self {
            TrainerError::Config { message } => TrainerError::Config {
                message: prefix(message),
            },
            TrainerError::NonFinite { message, hint } => TrainerError::NonFinite {
                message: prefix(message),
                hint,
            },
            TrainerError::OutOfMemory { message } => TrainerError::OutOfMemory {
                message: prefix(message),
            },
            TrainerError::Communication { message } => TrainerError::Communication {
                message: prefix(message),
            },
            TrainerError::Runtime { message } => TrainerError::Runtime {
                message: prefix(message),
            },
            unchanged @ (TrainerError::Interrupted { .. } | TrainerError::VolumeFull { .. }) => {
                unchanged
            }
        }
    }

    pub fn reason(&self) -> FailureReason {
        match self {
            TrainerError::Config { .. } => FailureReason::ConfigError,
            TrainerError::NonFinite { .. } => FailureReason::NonFinite,
            TrainerError::OutOfMemory { .. } => FailureReason::OutOfMemory,
            TrainerError::Communication { .. } => FailureReason::Communication,
            TrainerError::Interrupted { .. } => FailureReason::Preempted,
            TrainerError::Runtime { .. } => FailureReason::Runtime,
            // Not retried (the operator fails the job: freeing space is the user's to do).
            TrainerError::VolumeFull { .. } => FailureReason::OutputVolumeFull,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            // The contract's code for an interruption, whatever FailureReason maps it to.
            TrainerError::Interrupted { .. } => exit_code::INTERRUPTED,
            TrainerError::VolumeFull { .. } => exit_code::OUTPUT_VOLUME_FULL,
            other => other.reason().exit_code(),
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            TrainerError::NonFinite { hint, .. } => Some(hint.clone()),
            TrainerError::OutOfMemory { .. } => Some(
                "lower per_device_train_batch_size or cutoff_len, keep gradient_checkpointing on, or use more GPUs / a higher zero_stage"
                    .into(),
            ),
            TrainerError::VolumeFull { .. } => Some(format!(
                "{}: free space on the output volume or enlarge its PersistentVolumeClaim (lower save_total_limit to keep fewer checkpoints)",
                lf_api::runtime::OUTPUT_VOLUME_FULL
            )),
            TrainerError::Interrupted { .. } => Some("resume with resume_from_checkpoint: auto (the default when output_dir has checkpoints)".into()),
            _ => None,
        }
    }

    /// The termination message for this error.
    pub fn report(
        &self,
        rank: Option<u32>,
        last_checkpoint_step: Option<u64>,
    ) -> TerminationReport {
        TerminationReport {
            reason: self.reason(),
            rank,
            exit_code: self.exit_code(),
            message: self.to_string(),
            hint: self.hint(),
            last_checkpoint_step,
        }
    }
}

impl From<lf_checkpoint::CheckpointError> for TrainerError {
    /// A failed checkpoint write: an I/O failure is [`TrainerError::io`]'s (a full volume is
    /// [`TrainerError::VolumeFull`]).
    fn from(e: lf_checkpoint::CheckpointError) -> Self {
        match e {
            lf_checkpoint::CheckpointError::Io { op, path, source } => {
                TrainerError::io(op, &path, source)
            }
            lf_checkpoint::CheckpointError::Encode(e) => TrainerError::runtime(e.to_string()),
        }
    }
}

/// Free bytes for an unprivileged writer on the volume holding `path` (or its nearest existing
/// ancestor).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized out-buffer that
    // statvfs fills completely when it returns 0; it is read only in that case.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether an error text is an allocation failure (CUDA caching allocator, CPU allocator, or the
/// OS refusing memory).
pub fn looks_like_oom(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out of memory")
        || m.contains("can't allocate memory")
        || m.contains("cannot allocate memory")
}

/// Writes the termination message to `/dev/termination-log` when that file exists and is
/// writable (inside a pod); elsewhere does nothing. Returns whether it was written.
pub fn write_termination_log(report: &TerminationReport) -> bool {
    write_termination_log_to(Path::new(paths::TERMINATION_LOG), report)
}

/// [`write_termination_log`] to another path (tests). Only an existing file is written: the
/// trainer never creates `/dev/termination-log` outside a pod.
pub fn write_termination_log_to(path: &Path, report: &TerminationReport) -> bool {
    if !path.exists() {
        return false;
    }
    let Ok(text) = serde_json::to_string(report) else {
        return false;
    };
    std::fs::write(path, text).is_ok()
}

/// Maps an lf-dist error onto the trainer's classes (lf-dist knows which are configuration
/// mistakes and which are communication failures).
pub fn dist_error(e: lf_dist::DistError) -> TrainerError {
    match e.failure_reason() {
        FailureReason::ConfigError => TrainerError::config(e.to_string()),
        FailureReason::Communication => TrainerError::Communication {
            message: e.to_string(),
        },
        _ => TrainerError::runtime(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(TrainerError::config("x").exit_code(), exit_code::CONFIG);
        assert_eq!(TrainerError::runtime("x").exit_code(), exit_code::RUNTIME);
        let oom =
            TrainerError::from_library("step", "CUDA out of memory. Tried to allocate 2.00 GiB");
        assert_eq!(oom.exit_code(), exit_code::OUT_OF_MEMORY);
        let nan = TrainerError::NonFinite {
            message: "nan".into(),
            hint: "h".into(),
        };
        assert_eq!(nan.exit_code(), exit_code::CONFIG);
        assert_eq!(nan.reason(), FailureReason::NonFinite);
        let int = TrainerError::Interrupted {
            step: 3,
            checkpoint: Some(3),
        };
        assert_eq!(int.exit_code(), exit_code::INTERRUPTED);
        assert!(int.to_string().contains("checkpoint-3"));
    }

    #[test]
    fn a_full_volume_keeps_its_cause_and_has_its_own_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint-2");
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = TrainerError::io("write", &path, std::io::Error::from_raw_os_error(errno));
            assert_eq!(e.exit_code(), exit_code::OUTPUT_VOLUME_FULL, "{e}");
            assert_ne!(
                e.reason(),
                FailureReason::Runtime,
                "a full volume is not retried"
            );
            let text = e.to_string();
            assert!(
                text.starts_with("output volume full:")
                    && text.contains(&path.display().to_string())
                    && text.contains("enlarge the PVC"),
                "{text}"
            );
        }
        let sized = TrainerError::volume_full(&path, Some(1234));
        assert!(
            sized.to_string().contains("1234 bytes needed at"),
            "{sized}"
        );
        let report = sized.report(Some(0), Some(1));
        assert_eq!(report.exit_code, exit_code::OUTPUT_VOLUME_FULL);
        assert!(report.hint.unwrap().contains("OutputVolumeFull"));
        let other = TrainerError::io(
            "write",
            &path,
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(other.exit_code(), exit_code::RUNTIME);
    }

    #[test]
    fn termination_log_only_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        let report = TrainerError::config("bad key").report(Some(0), None);
        assert!(!write_termination_log_to(&path, &report));
        std::fs::write(&path, "").unwrap();
        assert!(write_termination_log_to(&path, &report));
        let back = TerminationReport::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, report);
    }
}
