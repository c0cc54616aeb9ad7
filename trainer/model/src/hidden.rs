//! The final (normed) hidden state at one position of each row, with and without backward: what a
//! value head reads (lf-trainer's `stage: rm` reward model scores each sequence at its last
//! token).
//!
//! The backward pass reuses the training step ([`CausalLm::backward_with_head`]: layer
//! recomputation, dropout replay, quantised and frozen layers as for the token loss). That step
//! hands its head the hidden states of every position but the last; one column is appended to
//! the batch so that every real position, the last included, is among them. Attention is causal,
//! so the appended column changes nothing before it.

use tch::{Kind, Tensor};

use crate::causal_lm::CausalLm;
use crate::residency::{AlwaysResident, Residency, Unit};
use crate::training::IGNORE_INDEX;
use crate::ModelError;

impl CausalLm {
    /// `read` applied to the `[B, S, H]` final hidden states (after the final norm) of every
    /// position, each unit gathered through `residency` for its part of the forward pass; the
    /// head unit (final norm and output head) stays gathered while `read` runs, so it may apply
    /// the head. Gradients as the caller's mode has them: a partitioned model's weights are
    /// released afterwards, so call it under `tch::no_grad` unless the model is whole.
    pub(crate) fn final_hidden_with<R: Residency + ?Sized, T>(
        &self,
        input_ids: &Tensor,
        residency: &R,
        read: impl FnOnce(&Tensor) -> T,
    ) -> Result<T, R::Error> {
        let x =
            self.model
                .decoder_output(input_ids, None, self.backend, self.training, residency)?;
        residency.gather(Unit::Head)?;
        let out = read(&self.model.norm.forward(&x));
        residency.release(Unit::Head, false)?;
        Ok(out)
    }

    /// `[B, H]` final hidden states (after the final norm, in the compute dtype) at `positions`
    /// (`[B]` int64, one position of each row of `input_ids`), without gradients.
    pub fn hidden_at(&self, input_ids: &Tensor, positions: &Tensor) -> Result<Tensor, ModelError> {
        self.hidden_at_with(input_ids, positions, &AlwaysResident, |h| h.shallow_clone())
    }

    /// [`CausalLm::hidden_at`] with each unit gathered through `residency` (a partitioned model,
    /// every process making the same passes), given to `read` while the head unit is still
    /// gathered (a value head adopted into that unit reads its weight there).
    pub fn hidden_at_with<R: Residency + ?Sized, T>(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        residency: &R,
        read: impl FnOnce(&Tensor) -> T,
    ) -> Result<T, ModelError> {
        check_positions(input_ids, positions)?;
        let _guard = tch::no_grad_guard();
        let rows = Tensor::arange(positions.size()[0], (Kind::Int64, positions.device()));
        self.final_hidden_with(input_ids, residency, |hidden| {
            read(&hidden.index(&[Some(rows), Some(positions.shallow_clone())]))
        })
        .map_err(|e| ModelError::Residency {
            unit: "the forward pass to the hidden states".into(),
            source: Box::new(e),
        })
    }

    /// Forward and backward of one micro-batch for a loss of the hidden states at `positions`
    /// (`[B]` int64): `loss` gets them (`[B, H]`, differentiable) and returns the scalar to
    /// backpropagate, which it may scale; its gradient is accumulated into the `.grad` of every
    /// trainable parameter, and of any tensor `loss` used that requires grad (a value head).
    pub fn hidden_at_backward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        loss: impl FnOnce(&Tensor) -> Result<Tensor, ModelError>,
    ) -> Result<(), ModelError> {
        self.hidden_at_backward_with(input_ids, positions, &AlwaysResident, loss)
    }

    /// [`CausalLm::hidden_at_backward`] with each unit bracketed by `residency` (as
    /// [`CausalLm::loss_sum_and_backward_with`]); `loss` runs while the head unit is gathered, and
    /// the head's release after it says its gradients (a value head adopted into that unit
    /// included) are ready.
    pub fn hidden_at_backward_with<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        residency: &R,
        loss: impl FnOnce(&Tensor) -> Result<Tensor, ModelError>,
    ) -> Result<(), ModelError> {
        check_positions(input_ids, positions)?;
        let (b, s) = (input_ids.size()[0], input_ids.size()[1]);
        // One more column (a copy of the first token; causal attention never lets it reach an
        // earlier position), and a label right after each chosen position, so that the step's
        // head gets exactly the chosen positions, in row order.
        let ids = Tensor::cat(&[input_ids, &input_ids.narrow(1, 0, 1)], 1);
        let labels = Tensor::full([b, s + 1], IGNORE_INDEX, (Kind::Int64, ids.device()));
        let rows = Tensor::arange(b, (Kind::Int64, ids.device()));
        let labels = labels.index_put(
            &[Some(rows), Some(positions + 1)],
            &Tensor::zeros([b], (Kind::Int64, ids.device())),
            false,
        );
        self.backward_with_head(&ids, &labels, residency, |hidden, idx, _| {
            if idx.size()[0] != b {
                return Err(ModelError::Invalid(format!(
                    "{} positions selected for {b} rows",
                    idx.size()[0]
                )));
            }
            loss(&hidden.index_select(0, idx))?
                .f_backward()
                .map_err(ModelError::torch("backpropagating the value loss"))?;
            Ok(0.0)
        })
        .map(|_| ())
    }
}

/// `positions` must be `[B]` int64 within `input_ids`' `[B, S]`.
fn check_positions(input_ids: &Tensor, positions: &Tensor) -> Result<(), ModelError> {
    let ok_shape = input_ids.dim() == 2
        && positions.size() == [input_ids.size()[0]]
        && positions.kind() == Kind::Int64
        && input_ids.kind() == Kind::Int64;
    if !ok_shape {
        return Err(ModelError::Invalid(format!(
            "positions {:?} must give one int64 position per row of input_ids {:?}",
            positions.size(),
            input_ids.size()
        )));
    }
    if positions.numel() == 0 {
        return Ok(());
    }
    let s = input_ids.size()[1];
    let (lo, hi) = (
        positions.min().int64_value(&[]),
        positions.max().int64_value(&[]),
    );
    if lo < 0 || hi >= s {
        return Err(ModelError::Invalid(format!(
            "positions {lo}..={hi} are outside sequences of {s} tokens"
        )));
    }
    Ok(())
}
