//! `trainer_state.json`: everything besides weights and optimiser state that a resumed run needs
//! to continue exactly where the interrupted one stopped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::batching::{DataPosition, StepPlan};
use crate::error::TrainerError;
use crate::schedule::LrSchedule;

/// The optimiser state file inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The loop's state after `global_step` completed steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub global_step: u64,
    pub max_steps: u64,
    pub epoch: f64,
    /// Where the next step takes its data (epoch, first micro-batch).
    pub next_position: DataPosition,
    pub plan: StepPlan,
    pub schedule: LrSchedule,
    /// The seed, and how many training micro-batches have run: dropout masks are derived from
    /// both, so a resumed run replays the same masks.
    pub seed: u64,
    pub rng_micro_batches: u64,
    /// Sum of the per-step losses so far (for `train_loss`, the mean over all steps).
    pub loss_total: f64,
    pub tokens_total: u64,
    pub samples_total: u64,
    /// The most recent loss logged, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_eval_loss: Option<f64>,
}

impl TrainerState {
    pub fn write(&self, path: &Path) -> Result<(), TrainerError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| TrainerError::runtime(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| TrainerError::io("write", path, e))
    }

    pub fn read(path: &Path) -> Result<TrainerState, TrainerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainerError::config(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            TrainerError::config(format!("{} is not a trainer state: {e}", path.display()))
        })
    }
}
