//! `trainer_state.json`: everything besides weights and optimiser state that a resumed run needs
//! to continue exactly where the interrupted one stopped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use lf_data::{DataPosition, StepPlan};

use crate::error::TrainerError;
use crate::schedule::LrSchedule;

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
    /// The state before the first step of a run with `plan`, `schedule` and `max_steps` steps.
    pub fn new(plan: StepPlan, schedule: LrSchedule, max_steps: u64, seed: u64) -> Self {
        TrainerState {
            global_step: 0,
            max_steps,
            epoch: 0.0,
            next_position: plan.position(0),
            plan,
            schedule,
            seed,
            rng_micro_batches: 0,
            loss_total: 0.0,
            tokens_total: 0,
            samples_total: 0,
            last_loss: None,
            last_eval_loss: None,
        }
    }

    /// `saved` (a checkpoint's state) continued with this run's plan, schedule and step count (a
    /// resume may change `max_steps`). Warns when the data order after the saved step differs
    /// from the uninterrupted run's.
    pub fn continued_from(self, saved: TrainerState) -> TrainerState {
        let (old, new) = (saved.plan, self.plan);
        if old.batch_size != new.batch_size
            || old.grad_accum != new.grad_accum
            || old.num_examples != new.num_examples
        {
            tracing::warn!(
                "resuming with a different batch plan (examples {}→{}, batch {}→{}, accumulation {}→{}): the data order after step {} differs from an uninterrupted run",
                old.num_examples, new.num_examples, old.batch_size, new.batch_size, old.grad_accum, new.grad_accum, saved.global_step
            );
        }
        TrainerState {
            plan: new,
            schedule: self.schedule,
            max_steps: self.max_steps,
            next_position: new.position(saved.global_step),
            ..saved
        }
    }

    /// Records one completed step: its loss (mean over the step's label tokens), its tokens and
    /// examples (summed over the ranks) and the model's dropout stream position after it.
    pub fn complete_step(&mut self, loss: f64, tokens: u64, samples: u64, rng_micro_batches: u64) {
        self.global_step += 1;
        self.rng_micro_batches = rng_micro_batches;
        self.next_position = self.plan.position(self.global_step);
        self.epoch = self.plan.epoch_after(self.global_step);
        self.loss_total += loss;
        self.tokens_total += tokens;
        self.samples_total += samples;
    }

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
