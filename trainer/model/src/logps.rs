//! Log-probabilities of the labelled tokens, for losses that are functions of them (the
//! preference losses): without gradients for a reference pass, and forward + backward where the
//! caller turns them into per-token gradient coefficients.
//!
//! The backward pass runs the head twice over the labelled positions, once without autograd to
//! get the log-probabilities the loss needs, once chunk by chunk with autograd to push
//! `Σ coefficient · log p` into the hidden states: the decoder runs forward once, and no full
//! `[tokens, vocab]` logits ever exist (as in [`CausalLm::loss_sum_and_backward`]).

use tch::{Kind, Tensor};

use crate::causal_lm::CausalLm;
use crate::residency::{AlwaysResident, Residency};
use crate::ModelError;

/// The log-probability of each labelled token of a batch (position `t` predicting label
/// `t + 1`), in row-major order, and the batch row it belongs to.
#[derive(Debug)]
pub struct TokenLogps {
    /// `[N]` fp32, `log p(label | prefix)`.
    pub logps: Tensor,
    /// `[N]` int64, the row of each.
    pub rows: Tensor,
}

impl TokenLogps {
    /// Per-row sums of `values` (`[N]`, e.g. [`TokenLogps::logps`]) over the labelled tokens,
    /// `[rows]` (0 for a row without labels); differentiable in `values`.
    pub fn per_row(&self, values: &Tensor, rows: i64) -> Tensor {
        Tensor::zeros([rows], (values.kind(), values.device())).index_add(0, &self.rows, values)
    }

    /// The labelled tokens of rows `start..start + n`, those rows numbered from 0.
    pub fn row_range(&self, start: i64, n: i64) -> TokenLogps {
        let keep = self.rows.ge(start).logical_and(&self.rows.lt(start + n));
        TokenLogps {
            logps: self.logps.masked_select(&keep),
            rows: self.rows.masked_select(&keep) - start,
        }
    }
}

impl CausalLm {
    /// `[N]` log-probabilities of `targets` under the head applied to `hidden` (`[N, H]`), in
    /// chunks of `loss_chunk_size` rows (fp32 logits of one chunk at a time).
    fn head_logps(&self, hidden: &Tensor, targets: &Tensor) -> Tensor {
        let n = targets.size()[0];
        let chunk = self.chunk_len(n);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            parts.push(self.chunk_logps(
                &hidden.narrow(0, start, len),
                &targets.narrow(0, start, len),
            ));
            start += len;
        }
        if parts.is_empty() {
            return Tensor::zeros([0], (Kind::Float, hidden.device()));
        }
        Tensor::cat(&parts, 0)
    }

    fn chunk_logps(&self, hidden: &Tensor, targets: &Tensor) -> Tensor {
        self.model
            .head(hidden)
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float)
            .gather(1, &targets.unsqueeze(1), false)
            .squeeze_dim(1)
    }

    /// The labelled tokens' log-probabilities without gradients (call it inside
    /// [`crate::linear::without_adapters`] for the reference model of a LoRA run).
    pub fn token_logps(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
    ) -> Result<TokenLogps, ModelError> {
        self.token_logps_with(input_ids, labels, &AlwaysResident)
    }

    /// [`CausalLm::token_logps`] with each unit gathered through `residency` and released without
    /// gradients (a partitioned model: every process makes the same call).
    pub fn token_logps_with<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        residency: &R,
    ) -> Result<TokenLogps, ModelError> {
        self.check_batch(input_ids, labels)?;
        let _guard = tch::no_grad_guard();
        self.final_hidden_with(input_ids, residency, |hidden| {
            let (h, t, rows) = Self::labelled(hidden, labels);
            TokenLogps {
                logps: self.head_logps(&h, &t),
                rows,
            }
        })
        .map_err(|e| ModelError::Residency {
            unit: "the forward pass to the log-probabilities".into(),
            source: Box::new(e),
        })
    }

    /// Forward and backward of one micro-batch for a loss of the labelled tokens'
    /// log-probabilities: `coefficients` gets them (without gradients) and returns `[N]` fp32
    /// `∂loss/∂log p` for each; `Σ coefficient · ∇ log p` is accumulated into the `.grad` of every
    /// trainable parameter. Layers are recomputed in backward as in
    /// [`CausalLm::loss_sum_and_backward`]. `coefficients` is not called when no token has a
    /// label.
    pub fn token_logps_backward(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        coefficients: impl FnOnce(&TokenLogps) -> Result<Tensor, ModelError>,
    ) -> Result<(), ModelError> {
        self.token_logps_backward_with(input_ids, labels, &AlwaysResident, coefficients)
    }

    /// [`CausalLm::token_logps_backward`] with each unit bracketed by `residency` (as
    /// [`CausalLm::loss_sum_and_backward_with`]); `coefficients` runs while the head unit is
    /// gathered. A partitioned model runs the pass even when no token has a label (then
    /// `coefficients` is not called and the gradients are zero), as every process must.
    pub fn token_logps_backward_with<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        residency: &R,
        coefficients: impl FnOnce(&TokenLogps) -> Result<Tensor, ModelError>,
    ) -> Result<(), ModelError> {
        let positions = labels.size().get(1).map_or(1, |s| (s - 1).max(1));
        self.backward_with_head(input_ids, labels, residency, |hidden, idx, targets| {
            let logps = tch::no_grad(|| self.head_logps(&hidden.index_select(0, idx), targets));
            let rows = idx.floor_divide_scalar(positions);
            let coef = coefficients(&TokenLogps { logps, rows })?.detach();
            let n = idx.size()[0];
            if coef.size() != [n] {
                return Err(ModelError::Invalid(format!(
                    "{} coefficients for {n} labelled tokens",
                    coef.numel()
                )));
            }
            let chunk = self.chunk_len(n);
            let mut start = 0;
            while start < n {
                let len = chunk.min(n - start);
                let h = hidden.index_select(0, &idx.narrow(0, start, len));
                let lp = self.chunk_logps(&h, &targets.narrow(0, start, len));
                (lp * coef.narrow(0, start, len))
                    .sum(Kind::Float)
                    .f_backward()
                    .map_err(ModelError::torch("backpropagating the log-probabilities"))?;
                start += len;
            }
            Ok(0.0)
        })
        .map(|_| ())
    }
}
