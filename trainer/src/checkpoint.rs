//! Checkpoints: what goes into one and how a run comes back from one, and the stop-and-save
//! protocol every rank follows after each step. How a checkpoint directory is written atomically,
//! verified, rotated and cleaned up after a crash is [`crate::checkpoint_dir`] (re-exported here).
//!
//! It holds what trains (the adapter, or the trainable weights), the optimiser state and
//! `trainer_state.json`. Rank 0 writes it; a partitioned (ZeRO) optimiser's ranks first stage
//! their own state files ([`staging_dir`]), which rank 0 moves in. A signal (SIGTERM, SIGINT)
//! reaches the ranks at different moments: every rank stops after the same step, saving first
//! ([`Checkpointer`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use lf_api::status::CheckpointRecord;
use lf_api::training::TrainingConfig;
use lf_model::safetensors_io::{write_file, HostTensor};
use tch::Device;

use crate::adapters::model_error;
pub use crate::checkpoint_dir::{
    checkpoint_path, clean_stale, list, newest_valid, recover, rotate, staging_dir, verify,
    write_atomic, write_atomic_observed, FileDigest, Found, Invalid, Manifest, WritePhase, MARKER,
    PREFIX,
};
use crate::error::TrainerError;
use crate::interfaces::{DataParallel, RestoredState, StepOptimizer, TrainModel};
use crate::outputs::TRAINER_STATE;
use crate::state::TrainerState;

/// The complete checkpoints of `output_dir`, as the FineTuneJob status lists them, each with the
/// last loss logged at or before its step (`losses`: `(step, loss)` in step order).
pub fn records(output_dir: &Path, losses: &[(u64, f64)]) -> Vec<CheckpointRecord> {
    list(output_dir)
        .into_iter()
        .filter(|f| f.path.join(MARKER).exists())
        .map(|f| {
            let saved = std::fs::metadata(f.path.join(MARKER))
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
                .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
            CheckpointRecord {
                step: f.step,
                path: f.path.display().to_string(),
                saved_at: Time(saved),
                loss: losses
                    .iter()
                    .rev()
                    .find(|(s, _)| *s <= f.step)
                    .map(|(_, l)| *l),
            }
        })
        .collect()
}

/// Writes this rank's optimiser state as [`StepOptimizer::state_file`] into `dir` (atomically,
/// and a full volume keeps its OS error: [`TrainerError::VolumeFull`]).
pub fn write_optimizer_state<O: StepOptimizer + ?Sized>(
    optimizer: &O,
    dir: &Path,
) -> Result<(), TrainerError> {
    let mut tensors = std::collections::BTreeMap::new();
    for (name, t) in optimizer.state_tensors() {
        let host = HostTensor::from_tensor(&name, &t.to_device(Device::Cpu))
            .map_err(|e| model_error("writing the optimizer state", e))?;
        tensors.insert(name, host);
    }
    let file = dir.join(optimizer.state_file());
    write_file(&file, &tensors).map_err(|e| model_error("writing the optimizer state", e))
}

/// Writes checkpoint `state.global_step` (weights, optimiser state, trainer state) atomically,
/// then rotates. Only rank 0 calls it. A partitioned optimiser's per-rank state files, staged by
/// every rank in `staged`, are moved in (all `expected_files` must be there).
pub fn save<M: TrainModel, O: StepOptimizer + ?Sized>(
    cfg: &TrainingConfig,
    model: &M,
    optimizer: &O,
    state: &TrainerState,
    output_dir: &Path,
    staged: Option<(&Path, &[String])>,
) -> Result<PathBuf, TrainerError> {
    let path = write_atomic(output_dir, state.global_step, |dir| {
        model.save_weights(dir)?;
        match staged {
            Some((from, files)) => {
                for name in files {
                    let src = from.join(name);
                    let dst = dir.join(name);
                    std::fs::rename(&src, &dst).map_err(|e| {
                        TrainerError::io("move a rank's optimizer state from", &src, e)
                    })?;
                }
            }
            None if !cfg.save_only_model => write_optimizer_state(optimizer, dir)?,
            None => {}
        }
        state.write(&dir.join(TRAINER_STATE))
    })?;
    if let Some((from, _)) = staged {
        let _ = std::fs::remove_dir_all(from);
    }
    if let Some(limit) = cfg.save_total_limit {
        for gone in rotate(output_dir, limit) {
            tracing::info!(
                "deleted old checkpoint {} (save_total_limit {limit})",
                gone.display()
            );
        }
    }
    Ok(path)
}

/// Restores weights, optimiser state and loop state from the verified checkpoint `dir`, and
/// continues `fresh` (this run's plan, schedule and step count) from the saved step.
pub fn resume<M: TrainModel, O: StepOptimizer + ?Sized>(
    model: &mut M,
    optimizer: &mut O,
    dir: &Path,
    fresh: TrainerState,
) -> Result<TrainerState, TrainerError> {
    let saved = TrainerState::read(&dir.join(TRAINER_STATE))?;
    model.load_weights(dir)?;
    match optimizer.restore_state(dir)? {
        RestoredState::Restored => {}
        RestoredState::Absent => tracing::warn!(
            "{} has no optimizer state this run can read (save_only_model, or a ZeRO-partitioned state resumed without ZeRO): the optimizer restarts from zero",
            dir.display()
        ),
        RestoredState::Restarted { why } => tracing::warn!(
            "the optimizer state in {} does not fit this run ({why}): the optimizer restarts from zero moments at this step",
            dir.display()
        ),
    }
    model.set_rng_position(saved.rng_micro_batches);
    let state = fresh.continued_from(saved);
    tracing::info!(
        "resumed from {} at step {}/{}",
        dir.display(),
        state.global_step,
        state.max_steps
    );
    Ok(state)
}

/// What [`Checkpointer::after_step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterStep {
    /// The checkpoint written (on the rank that writes them).
    pub saved: Option<PathBuf>,
    /// The run stops here: [`Checkpointer::interrupted`] is its error.
    pub stopping: bool,
}

/// The stop-and-save protocol: after each step every rank learns whether any rank was signalled,
/// and saves a checkpoint together with the others when one is due or the run stops.
pub struct Checkpointer<'a> {
    output_dir: &'a Path,
    /// Set by the signal handler.
    stop: &'a AtomicBool,
    /// The newest checkpoint there is (from an earlier attempt, or saved by this one).
    last_saved: Option<u64>,
}

impl<'a> Checkpointer<'a> {
    pub fn new(output_dir: &'a Path, stop: &'a AtomicBool) -> Self {
        Checkpointer {
            output_dir,
            stop,
            last_saved: newest_valid(output_dir).map(|f| f.step),
        }
    }

    /// Every rank calls this after each step (`state` is the state after it). Saves when
    /// `save_steps` says so (not after the last step: the final save follows) or when the run
    /// stops, which it does after the same step on every rank: a rank that stopped alone would
    /// wait in collectives the others never make.
    pub fn after_step<M: TrainModel, O: StepOptimizer + ?Sized>(
        &mut self,
        cfg: &TrainingConfig,
        model: &mut M,
        optimizer: &O,
        state: &TrainerState,
        group: &dyn DataParallel,
    ) -> Result<AfterStep, TrainerError> {
        let signalled = self.stop.load(Ordering::SeqCst);
        let stopping = if group.world_size() > 1 {
            group.sum_scalar(if signalled { 1.0 } else { 0.0 })? > 0.0
        } else {
            signalled
        };
        let step = state.global_step;
        let due = cfg.save_steps > 0
            && step.is_multiple_of(cfg.save_steps as u64)
            && step < state.max_steps;
        let saved = if due || stopping {
            let saved = self.save_with_every_rank(cfg, model, optimizer, state, group)?;
            self.last_saved = Some(step);
            saved
        } else {
            None
        };
        Ok(AfterStep { saved, stopping })
    }

    /// The error a run that stops after `step` ends with.
    pub fn interrupted(&self, step: u64) -> TrainerError {
        TrainerError::Interrupted {
            step,
            checkpoint: self.last_saved,
        }
    }

    /// Every rank makes the saved weights whole (ZeRO-3 gathers them) and stages its optimiser
    /// state when that is partitioned; then rank 0 writes the checkpoint.
    fn save_with_every_rank<M: TrainModel, O: StepOptimizer + ?Sized>(
        &self,
        cfg: &TrainingConfig,
        model: &mut M,
        optimizer: &O,
        state: &TrainerState,
        group: &dyn DataParallel,
    ) -> Result<Option<PathBuf>, TrainerError> {
        let is_main = group.rank() == 0;
        model.gather_weights(is_main)?;
        group.barrier()?;
        let staged = if optimizer.partitioned() && !cfg.save_only_model {
            let dir = staging_dir(self.output_dir, state.global_step);
            std::fs::create_dir_all(&dir).map_err(|e| TrainerError::io("create", &dir, e))?;
            write_optimizer_state(optimizer, &dir)?;
            Some(dir)
        } else {
            None
        };
        group.barrier()?;
        let saved = if is_main {
            let files = optimizer.state_files();
            let staged = staged.as_deref().map(|d| (d, files.as_slice()));
            Some(save(cfg, model, optimizer, state, self.output_dir, staged)?)
        } else {
            None
        };
        group.barrier()?;
        model.release_weights()?;
        Ok(saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(dir: &Path, step: u64) -> PathBuf {
        write_atomic(dir, step, |d| {
            std::fs::write(d.join("weights.bin"), format!("weights {step}")).unwrap();
            std::fs::write(d.join("trainer_state.json"), "{}").unwrap();
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn atomic_write_verifies_and_detects_corruption() {
        let out = tempfile::tempdir().unwrap();
        let p = save(out.path(), 5);
        assert_eq!(p, out.path().join("checkpoint-5"));
        assert_eq!(verify(&p).unwrap().files.len(), 2);
        std::fs::write(p.join("weights.bin"), "weights 6").unwrap();
        assert!(matches!(verify(&p), Err(Invalid::Mismatch { .. })));
        std::fs::remove_file(p.join("weights.bin")).unwrap();
        assert!(matches!(verify(&p), Err(Invalid::Missing { .. })));
        std::fs::remove_file(p.join(MARKER)).unwrap();
        assert!(matches!(verify(&p), Err(Invalid::NoMarker)));
        // No temporary directory is left behind.
        let names: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn failed_fill_leaves_nothing() {
        let out = tempfile::tempdir().unwrap();
        let err = write_atomic(out.path(), 3, |_| {
            Err(TrainerError::runtime("disk on fire"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }

    #[test]
    fn newest_valid_skips_corrupt_ones() {
        let out = tempfile::tempdir().unwrap();
        for s in [2, 4, 6] {
            save(out.path(), s);
        }
        std::fs::write(out.path().join("checkpoint-6/weights.bin"), "garbage!!").unwrap();
        std::fs::create_dir_all(out.path().join("checkpoint-8")).unwrap();
        assert_eq!(newest_valid(out.path()).unwrap().step, 4);
    }

    #[test]
    fn rotation_keeps_the_newest_valid() {
        let out = tempfile::tempdir().unwrap();
        for s in [1, 2, 3, 4] {
            save(out.path(), s);
        }
        // The newest one is corrupt: it must not count, and checkpoint-3 must survive.
        std::fs::remove_file(out.path().join("checkpoint-4").join(MARKER)).unwrap();
        let deleted = rotate(out.path(), 1);
        assert_eq!(deleted.len(), 2, "{deleted:?}");
        let left: Vec<u64> = list(out.path()).iter().map(|f| f.step).collect();
        assert_eq!(left, vec![3, 4]);
        save(out.path(), 5);
        rotate(out.path(), 2);
        let left: Vec<u64> = list(out.path()).iter().map(|f| f.step).collect();
        assert_eq!(left, vec![3, 5]);
    }

    #[test]
    fn rotation_does_not_rehash_the_kept_checkpoints() {
        let out = tempfile::tempdir().unwrap();
        for s in [1, 2, 3] {
            save(out.path(), s);
        }
        // Same size, other bytes: only a checksum tells. Rotation counts it as complete (the
        // checksum is checked when resuming), so checkpoint-2 is kept and checkpoint-1 goes.
        std::fs::write(out.path().join("checkpoint-2/weights.bin"), "weights X").unwrap();
        rotate(out.path(), 2);
        let left: Vec<u64> = list(out.path()).iter().map(|f| f.step).collect();
        assert_eq!(left, vec![2, 3]);
        assert_eq!(newest_valid(out.path()).unwrap().step, 3);
    }
}
