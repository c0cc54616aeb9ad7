//! Which checkpoint a `train` run starts from, LLaMA-Factory's way:
//!
//! * `resume_from_checkpoint: <dir>` (the operator names the newest checkpoint of the status):
//!   that checkpoint when it is complete and verifies; otherwise (lost, half-written, corrupt) the
//!   newest checkpoint in `output_dir` that verifies, with a warning naming the unusable one and
//!   why; a configuration error only when there is none.
//! * `resume_from_checkpoint: auto`: the newest checkpoint in `output_dir` that verifies (a
//!   corrupt or partial newer one is skipped with a warning naming it); none found: from scratch.
//! * unset: like `auto` unless `overwrite_output_dir`, which starts from scratch and removes the
//!   old checkpoints and log of `output_dir` (so they cannot be mistaken for this run's).
//!
//! Before choosing, every rank puts back a checkpoint a crash left aside while replacing it
//! ([`checkpoint::recover`]), and rank 0 removes what earlier attempts left half-written
//! ([`checkpoint::clean_stale`]).

use std::path::{Path, PathBuf};

use lf_api::training::TrainingConfig;

use crate::checkpoint;
use crate::error::TrainerError;
use crate::outputs::TRAINER_LOG;

/// Where training starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Fresh,
    Resume(PathBuf),
    /// The checkpoint `resume_from_checkpoint` named cannot be used: resume from `path`, the newest
    /// that verifies; `warning` says which was skipped and why (it goes onto the status).
    Fallback {
        path: PathBuf,
        warning: String,
    },
}

impl Start {
    /// The checkpoint training resumes from, if any.
    pub fn checkpoint(&self) -> Option<&Path> {
        match self {
            Start::Fresh => None,
            Start::Resume(path) | Start::Fallback { path, .. } => Some(path),
        }
    }
}

/// Decides where training starts (see the module docs). Only rank 0 should clean up.
pub fn resolve(
    cfg: &TrainingConfig,
    output_dir: &Path,
    clean_up: bool,
) -> Result<Start, TrainerError> {
    checkpoint::recover(output_dir);
    if clean_up {
        for gone in checkpoint::clean_stale(output_dir) {
            tracing::info!("removed {} (left by an earlier attempt)", gone.display());
        }
    }
    match cfg.resume_from_checkpoint.as_deref().map(str::trim) {
        Some("auto") | Some("true") => Ok(auto(output_dir)),
        Some(given) if !given.is_empty() => named(given, output_dir),
        _ if cfg.overwrite_output_dir => {
            if clean_up {
                for f in checkpoint::list(output_dir) {
                    std::fs::remove_dir_all(&f.path)
                        .map_err(|e| TrainerError::io("remove", &f.path, e))?;
                }
                let log = output_dir.join(TRAINER_LOG);
                if log.exists() {
                    std::fs::remove_file(&log).map_err(|e| TrainerError::io("remove", &log, e))?;
                }
            }
            Ok(Start::Fresh)
        }
        _ => {
            let start = auto(output_dir);
            if let Start::Resume(p) = &start {
                tracing::info!(
                    "output_dir has checkpoints: resuming from {} (set overwrite_output_dir: true to start over)",
                    p.display()
                );
            }
            Ok(start)
        }
    }
}

/// The checkpoint `resume_from_checkpoint` names, or the newest valid one when it cannot be
/// used.
fn named(given: &str, output_dir: &Path) -> Result<Start, TrainerError> {
    let mut path = PathBuf::from(given);
    if !path.exists() && path.is_relative() && output_dir.join(given).exists() {
        path = output_dir.join(given);
    }
    let why = if path.is_dir() {
        match checkpoint::verify(&path) {
            Ok(_) => return Ok(Start::Resume(path)),
            Err(why) => why.to_string(),
        }
    } else {
        "it does not exist".to_string()
    };
    match checkpoint::newest_valid(output_dir) {
        Some(f) => {
            let warning = format!(
                "resume_from_checkpoint: {} cannot be used ({why}): resuming from {}, the newest checkpoint that verifies",
                path.display(),
                f.path.display()
            );
            tracing::warn!("{warning}");
            Ok(Start::Fallback {
                path: f.path,
                warning,
            })
        }
        None => Err(TrainerError::config(format!(
            "resume_from_checkpoint: {} cannot be used ({why}), and {} has no complete checkpoint to fall back to (use `auto`, or unset it to start from scratch)",
            path.display(),
            output_dir.display()
        ))),
    }
}

fn auto(output_dir: &Path) -> Start {
    match checkpoint::newest_valid(output_dir) {
        Some(f) => Start::Resume(f.path),
        None => Start::Fresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(dir: &Path, step: u64) {
        checkpoint::write_atomic(dir, step, |d| {
            std::fs::write(d.join("w"), "x").map_err(|e| TrainerError::io("write", d, e))
        })
        .unwrap();
    }

    #[test]
    fn auto_default_explicit_and_overwrite() {
        let out = tempfile::tempdir().unwrap();
        let cfg = TrainingConfig::default();
        assert_eq!(resolve(&cfg, out.path(), true).unwrap(), Start::Fresh);
        save(out.path(), 2);
        save(out.path(), 4);
        std::fs::write(out.path().join("checkpoint-4/w"), "corrupt").unwrap();
        let want = Start::Resume(out.path().join("checkpoint-2"));
        assert_eq!(resolve(&cfg, out.path(), true).unwrap(), want);
        let auto = TrainingConfig {
            resume_from_checkpoint: Some("auto".into()),
            ..cfg.clone()
        };
        assert_eq!(resolve(&auto, out.path(), true).unwrap(), want);
        // A named checkpoint that is corrupt or gone: the newest valid one instead.
        let explicit = TrainingConfig {
            resume_from_checkpoint: Some("checkpoint-4".into()),
            ..cfg.clone()
        };
        let fallback = |start: Start, skipped: &str| match start {
            Start::Fallback { path, warning } => {
                assert_eq!(path, out.path().join("checkpoint-2"));
                assert!(warning.contains(skipped), "{warning}");
                assert!(warning.contains("checkpoint-2"), "{warning}");
            }
            other => panic!("expected a fallback, got {other:?}"),
        };
        fallback(
            resolve(&explicit, out.path(), true).unwrap(),
            "checkpoint-4",
        );
        let missing = TrainingConfig {
            resume_from_checkpoint: Some("/nope/checkpoint-9".into()),
            ..cfg.clone()
        };
        fallback(
            resolve(&missing, out.path(), true).unwrap(),
            "/nope/checkpoint-9 cannot be used (it does not exist)",
        );
        let elsewhere = tempfile::tempdir().unwrap();
        let err = resolve(&missing, elsewhere.path(), true).unwrap_err();
        assert!(
            err.to_string().contains("/nope/checkpoint-9") && err.exit_code() == 2,
            "nothing to fall back to: {err}"
        );
        let over = TrainingConfig {
            overwrite_output_dir: true,
            ..cfg
        };
        assert_eq!(resolve(&over, out.path(), true).unwrap(), Start::Fresh);
        assert!(checkpoint::list(out.path()).is_empty());
    }
}
