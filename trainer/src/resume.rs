//! Which checkpoint a `train` run starts from, LLaMA-Factory's way:
//!
//! * `resume_from_checkpoint: <dir>`: that checkpoint; it must be complete and verify, else the
//!   run fails with a configuration error naming it.
//! * `resume_from_checkpoint: auto`: the newest checkpoint in `output_dir` that verifies (a
//!   corrupt or partial newer one is skipped with a warning naming it); none found: from scratch.
//! * unset: like `auto` unless `overwrite_output_dir`, which starts from scratch and removes the
//!   old checkpoints and log of `output_dir` (so they cannot be mistaken for this run's).

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
}

/// Decides where training starts (see the module docs). Only rank 0 should clean up.
pub fn resolve(
    cfg: &TrainingConfig,
    output_dir: &Path,
    clean_up: bool,
) -> Result<Start, TrainerError> {
    match cfg.resume_from_checkpoint.as_deref().map(str::trim) {
        Some("auto") | Some("true") => Ok(auto(output_dir)),
        Some(given) if !given.is_empty() => {
            let mut path = PathBuf::from(given);
            if !path.exists() && path.is_relative() && output_dir.join(given).exists() {
                path = output_dir.join(given);
            }
            if !path.is_dir() {
                return Err(TrainerError::config(format!(
                    "resume_from_checkpoint: {given} does not exist (use `auto` for the newest complete checkpoint in {})",
                    output_dir.display()
                )));
            }
            checkpoint::verify(&path).map_err(|why| {
                TrainerError::config(format!(
                    "resume_from_checkpoint: {} cannot be used: {why}",
                    path.display()
                ))
            })?;
            Ok(Start::Resume(path))
        }
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
        let explicit = TrainingConfig {
            resume_from_checkpoint: Some("checkpoint-4".into()),
            ..cfg.clone()
        };
        let err = resolve(&explicit, out.path(), true).unwrap_err();
        assert!(
            err.to_string().contains("checkpoint-4") && err.exit_code() == 2,
            "{err}"
        );
        let missing = TrainingConfig {
            resume_from_checkpoint: Some("/nope/checkpoint-9".into()),
            ..cfg.clone()
        };
        assert!(resolve(&missing, out.path(), true)
            .unwrap_err()
            .to_string()
            .contains("/nope/checkpoint-9"));
        let over = TrainingConfig {
            overwrite_output_dir: true,
            ..cfg
        };
        assert_eq!(resolve(&over, out.path(), true).unwrap(), Start::Fresh);
        assert!(checkpoint::list(out.path()).is_empty());
    }
}
