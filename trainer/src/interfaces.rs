//! What the training loop needs from a model, an optimiser and the data-parallel group. The
//! loop is written against these traits; `crate::adapters` implements them for lf-model's
//! `CausalLm` and lf-optim's optimisers, `crate::zero` for ZeRO, and `crate::data_parallel` for
//! lf-dist's process group.

use std::path::Path;

use lf_api::ModelArchitecture;
use tch::Tensor;

use crate::error::TrainerError;
use crate::gradients;
use crate::preference::{PreferenceLoss, PreferenceSums};

/// The optimiser state file inside a checkpoint (of an optimiser that is not partitioned).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

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
    /// Told before each training micro-batch whether it is the last of its optimiser step: only
    /// that one's units start reducing their gradients as their backward finishes
    /// (`overlap_comm`); the earlier ones only accumulate.
    fn last_micro_batch(&mut self, _last: bool) {}
    /// Forward and backward of one micro-batch: accumulates `loss_scale ×` the gradient of the
    /// summed token loss into `.grad`.
    fn loss_sum_and_backward(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        loss_scale: f64,
    ) -> Result<MicroOutput, TrainerError>;
    /// [`TrainModel::loss_sum_and_backward`] given the micro-batch's `attention_mask` (`[B, S]`,
    /// 1 on each row's tokens, 0 on its padding), which a mixture of experts' load-balancing loss
    /// leaves padding out by; a model without such a loss needs no mask.
    fn loss_sum_and_backward_masked(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        _attention_mask: &Tensor,
        loss_scale: f64,
    ) -> Result<MicroOutput, TrainerError> {
        self.loss_sum_and_backward(input_ids, labels, loss_scale)
    }
    /// [`TrainModel::loss_sum_and_backward`] on packed rows (`neat_packing`): `position_ids`
    /// restart at 0 at each example, which attends only to itself; `attention_mask` is non-zero
    /// on the rows' real tokens (a mixture of experts' load-balancing loss counts only those).
    /// A model that cannot do this says so.
    fn loss_sum_and_backward_packed(
        &mut self,
        _input_ids: &Tensor,
        _labels: &Tensor,
        _position_ids: &Tensor,
        _attention_mask: &Tensor,
        _loss_scale: f64,
    ) -> Result<MicroOutput, TrainerError> {
        Err(TrainerError::config(
            "this model does not train on packed rows (neat_packing)",
        ))
    }
    /// Forward and backward of one micro-batch of preference pairs (the chosen rows, then the
    /// rejected rows, as `lf_data::collate_pairs` lays them out; for KTO the examples, tagged by
    /// `desirable`, then their KL sequences): `loss_scale ×` the gradient of the pairs' summed
    /// `loss` is accumulated into `.grad`, with the reference log-probabilities (when the loss
    /// uses them) from the same weights with the adapter off. Returns the pairs' metric sums. A
    /// model that cannot do this says so.
    fn preference_backward(
        &mut self,
        _input_ids: &Tensor,
        _labels: &Tensor,
        _desirable: &[bool],
        _loss: &PreferenceLoss,
        _loss_scale: f64,
    ) -> Result<PreferenceSums, TrainerError> {
        Err(TrainerError::config(
            "this model does not train on preference pairs",
        ))
    }
    /// [`TrainModel::preference_backward`]'s metric sums without gradients (evaluation).
    fn preference_eval(
        &mut self,
        _input_ids: &Tensor,
        _labels: &Tensor,
        _desirable: &[bool],
        _loss: &PreferenceLoss,
    ) -> Result<PreferenceSums, TrainerError> {
        Err(TrainerError::config(
            "this model does not evaluate preference pairs",
        ))
    }
    /// `stage: rm`: forward and backward of one micro-batch of pairs (the chosen rows, then the
    /// rejected rows), each row scored by the value head at its last token (`attention_mask`):
    /// `loss_scale ×` the gradient of the pairs' summed `−log σ(r_chosen − r_rejected)` is
    /// accumulated into `.grad`. Returns the pairs' metric sums. A model without a value head
    /// says so.
    fn reward_backward(
        &mut self,
        _input_ids: &Tensor,
        _attention_mask: &Tensor,
        _loss_scale: f64,
    ) -> Result<PreferenceSums, TrainerError> {
        Err(TrainerError::config(
            "this model has no value head to train",
        ))
    }
    /// [`TrainModel::reward_backward`]'s metric sums without gradients (evaluation).
    fn reward_eval(
        &mut self,
        _input_ids: &Tensor,
        _attention_mask: &Tensor,
    ) -> Result<PreferenceSums, TrainerError> {
        Err(TrainerError::config(
            "this model has no value head to evaluate",
        ))
    }
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
    /// Makes the weights [`TrainModel::save_weights`] writes whole where `keep` is set (the rank
    /// that saves); every rank calls it before rank 0 saves (ZeRO-3 gathers them collectively).
    /// [`TrainModel::release_weights`] undoes it.
    fn gather_weights(&mut self, _keep: bool) -> Result<(), TrainerError> {
        Ok(())
    }
    fn release_weights(&mut self) -> Result<(), TrainerError> {
        Ok(())
    }
    /// The frozen weights' bytes as stored and the architecture, for the memory record
    /// ([`crate::memory_report`]); `None` when the model cannot tell.
    fn memory(&self) -> Option<ModelMemory> {
        None
    }
    /// Told the run's number of optimiser steps before the first (AdaLoRA's budget schedule).
    fn set_total_steps(&mut self, _total_steps: u64) -> Result<(), TrainerError> {
        Ok(())
    }
    /// Once per step, after the micro-batches' backward: accumulates `scale ×` the gradient of
    /// the method's regulariser (AdaLoRA's orthogonality term) and returns its value, which the
    /// step's loss includes; 0 when the method has none.
    fn regularizer_backward(&mut self, _scale: f64) -> Result<f64, TrainerError> {
        Ok(0.0)
    }
    /// After optimiser step `step` (0-based), before the gradients are zeroed: the method's own
    /// update (AdaLoRA's importance scores and rank allocation).
    fn after_optimizer_step(&mut self, _step: u64) -> Result<(), TrainerError> {
        Ok(())
    }
}

/// What a model reports about its weights for the memory record.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMemory {
    /// Bytes of every base tensor that does not train, as stored.
    pub frozen_weight_bytes: u64,
    /// Bytes of trainable parameter shards held apart from the parameters (ZeRO-3, whose
    /// parameters are emptied between uses); 0 otherwise.
    pub partitioned_trainable_bytes: u64,
    /// Host bytes of the last training pass's offloaded checkpoints (`offload_activations`).
    pub offloaded_activation_bytes: u64,
    /// The architecture the planner's prediction is made for.
    pub architecture: ModelArchitecture,
}

/// Bytes of optimiser state held, by place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptimizerBytes {
    /// On the parameters' device (master copies included).
    pub device: u64,
    /// In host memory (offloaded state and master copies).
    pub host: u64,
}

/// What [`StepOptimizer::restore_state`] made of a checkpoint's optimiser state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoredState {
    /// The saved state was loaded (re-sliced for a new partition where needed).
    Restored,
    /// The checkpoint holds no state this optimiser can read (`save_only_model`, or a
    /// ZeRO-partitioned state resumed without ZeRO): the optimiser starts from zero.
    Absent,
    /// The checkpoint holds state that does not fit this run, and the optimiser restarts from
    /// zero moments at this step (`why` says what did not fit).
    Restarted { why: String },
}

/// An optimiser over plain tensors whose state can be checkpointed.
pub trait StepOptimizer {
    /// One update of `params` from their `.grad` with learning rate `lr`.
    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<(), TrainerError>;
    /// Bytes of state held, by place, for the memory record ([`crate::memory_report`]); `None`
    /// when the optimiser cannot tell.
    fn state_bytes(&self) -> Option<OptimizerBytes> {
        None
    }
    /// Every state tensor by a stable name (empty for stateless optimisers).
    fn state_tensors(&self) -> Vec<(String, Tensor)>;
    /// Restores [`StepOptimizer::state_tensors`].
    fn load_state_tensors(&mut self, state: Vec<(String, Tensor)>) -> Result<(), TrainerError>;

    /// Bytes of gradient this optimiser keeps per rank between the reduction and the step, when
    /// that is not simply every parameter's `.grad` (ZeRO stage 2 keeps shards).
    fn gradient_bytes(&self, _params: &[(String, Tensor)]) -> Option<u64> {
        None
    }
    /// The ZeRO stage and world size this optimiser partitions over (`(0, 1)`: none).
    fn partition(&self) -> (u8, usize) {
        (0, 1)
    }

    /// Sums the gradients over the ranks as this optimiser needs them and returns their global
    /// L2 norm. Plain data parallelism all-reduces every `.grad`; ZeRO reduces into shards.
    fn reduce_gradients(
        &mut self,
        group: &dyn DataParallel,
        params: &[(String, Tensor)],
    ) -> Result<f64, TrainerError> {
        group.sum_gradients(params)?;
        Ok(gradients::grad_norm(params))
    }
    /// Scales the gradients the next [`StepOptimizer::step`] uses so that their global norm
    /// (`norm`) is at most `max_norm` (no-op for `max_norm <= 0`).
    fn clip_gradients(
        &mut self,
        params: &[(String, Tensor)],
        norm: f64,
        max_norm: f64,
    ) -> Result<(), TrainerError> {
        gradients::clip_gradients(params, norm, max_norm)
    }
    /// The checkpoint file this rank's state goes to.
    fn state_file(&self) -> String {
        OPTIMIZER_FILE.to_string()
    }
    /// The state files of every rank together, in rank order: what the rank that saves a
    /// checkpoint collects into it when the state is [`StepOptimizer::partitioned`].
    fn state_files(&self) -> Vec<String> {
        vec![self.state_file()]
    }
    /// Whether every rank holds a different part of the state (ZeRO), so that every rank writes
    /// its own [`StepOptimizer::state_file`]; otherwise rank 0 writes the one state.
    fn partitioned(&self) -> bool {
        false
    }
    /// Restores the state saved in checkpoint `dir`, and says whether there was one it could
    /// use.
    fn restore_state(&mut self, dir: &Path) -> Result<RestoredState, TrainerError> {
        let file = dir.join(self.state_file());
        if !file.exists() {
            return Ok(RestoredState::Absent);
        }
        let tensors = Tensor::read_safetensors(&file)
            .map_err(|e| TrainerError::from_library("reading the optimizer state", e))?;
        self.load_state_tensors(tensors)?;
        Ok(RestoredState::Restored)
    }
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
