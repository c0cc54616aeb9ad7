//! What the training loop needs from a model, an optimiser and the data-parallel group. The
//! loop is written against these traits; `crate::adapters` implements them for lf-model's
//! `CausalLm`, lf-optim's optimisers and lf-dist's process group.

use std::path::Path;

use tch::Tensor;

use crate::error::TrainerError;

/// The result of one micro-batch's forward + backward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MicroOutput {
    /// Sum of the token losses (not divided by anything).
    pub loss_sum: f64,
    /// Seconds spent in the forward pass, when the model can tell them apart from backward.
    pub forward_secs: Option<f64>,
}

/// A model the loop can train.
pub trait TrainModel {
    /// The parameters that train, by name, sharing storage and `.grad` with the model.
    fn trainable_parameters(&self) -> Vec<(String, Tensor)>;
    /// Dropout on (training) or off (evaluation).
    fn set_training(&mut self, on: bool);
    /// Forward and backward of one micro-batch: accumulates `loss_scale ×` the gradient of the
    /// summed token loss into `.grad`.
    fn loss_sum_and_backward(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        loss_scale: f64,
    ) -> Result<MicroOutput, TrainerError>;
    /// The summed token loss without gradients (evaluation).
    fn eval_loss_sum(&mut self, input_ids: &Tensor, labels: &Tensor) -> Result<f64, TrainerError>;
    /// Writes what trains (a PEFT adapter, or the trainable weights) into `dir`.
    fn save_weights(&self, dir: &Path) -> Result<(), TrainerError>;
    /// Restores what [`TrainModel::save_weights`] wrote.
    fn load_weights(&mut self, dir: &Path) -> Result<(), TrainerError>;
    /// How many micro-batches the model has run forward in training mode (its dropout stream
    /// position), and setting it back on resume. Models without dropout replay return 0 / ignore.
    fn rng_position(&self) -> u64 {
        0
    }
    fn set_rng_position(&mut self, _micro_batches: u64) {}
    /// The frozen weights' bytes as stored and the architecture, for the memory record
    /// ([`crate::memory_report`]); `None` when the model cannot tell.
    fn memory(&self) -> Option<crate::memory_report::ModelMemory> {
        None
    }
}

/// An optimiser over plain tensors whose state can be checkpointed.
pub trait StepOptimizer {
    /// One update of `params` from their `.grad` with learning rate `lr`.
    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<(), TrainerError>;
    /// Bytes of state held, by place, for the memory record ([`crate::memory_report`]); `None`
    /// when the optimiser cannot tell.
    fn state_bytes(&self) -> Option<crate::memory_report::OptimizerBytes> {
        None
    }
    /// Every state tensor by a stable name (empty for stateless optimisers).
    fn state_tensors(&self) -> Vec<(String, Tensor)>;
    /// Restores [`StepOptimizer::state_tensors`].
    fn load_state_tensors(&mut self, state: Vec<(String, Tensor)>) -> Result<(), TrainerError>;
}

/// The data-parallel group as the loop sees it. The single-process group does nothing.
pub trait DataParallel {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    /// Sums a scalar over ranks (label-token counts, loss sums).
    fn sum_scalar(&self, value: f64) -> Result<f64, TrainerError> {
        Ok(value)
    }
    /// Sums every parameter's `.grad` over ranks, in place.
    fn sum_gradients(&self, _params: &[(String, Tensor)]) -> Result<(), TrainerError> {
        Ok(())
    }
    /// Waits for every rank (around checkpoints).
    fn barrier(&self) -> Result<(), TrainerError> {
        Ok(())
    }
}

/// One process, no collectives.
pub struct SingleProcess;

impl DataParallel for SingleProcess {}
