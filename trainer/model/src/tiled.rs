//! A decoder layer's dense MLP run in tiles of tokens (`offload_activations`' long-context mode):
//! the feed-forward half of a layer is token-wise, so running it over a few hundred tokens at a
//! time gives the same rows while only one tile's `[tokens, intermediate]` tensors exist. Forward
//! (the no-gradient pass of a recomputed layer) concatenates the tiles' outputs; backward
//! recomputes and backpropagates one tile at a time, accumulating the MLP's parameter gradients
//! and collecting the gradient of the half's input.

use tch::{Kind, Tensor};

use crate::llama::{AttentionBackend, DecoderLayer, RopeTables};
use crate::ModelError;

/// `[B, S, H]` → `[B·S, H]` and back.
fn flat(x: &Tensor) -> Tensor {
    let h = x.size()[x.dim() - 1];
    x.reshape([-1, h])
}

impl DecoderLayer {
    /// [`DecoderLayer::forward`] with the feed-forward half run `tile` tokens at a time (a dense
    /// MLP; for a call without gradients).
    pub(crate) fn forward_tiled(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        backend: AttentionBackend,
        train: bool,
        tile: i64,
    ) -> Tensor {
        let mid = self.attention_half(x, rope, None, backend, train);
        let rows = flat(&mid);
        let n = rows.size()[0];
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let len = tile.min(n - start);
            parts.push(self.feed_forward_half(&rows.narrow(0, start, len), train).0);
            start += len;
        }
        Tensor::cat(&parts, 0).reshape(mid.size())
    }

    /// Backward of the feed-forward half at `mid` (the attention half's output, `[B, S, H]`) for
    /// the output gradient `grad` (same shape), `tile` tokens at a time: each tile is recomputed
    /// from a detached copy of its rows and backpropagated at once (the MLP's parameter gradients
    /// accumulate); returns the gradient of `mid`, for the attention half's backward.
    pub(crate) fn feed_forward_backward_tiled(
        &self,
        mid: &Tensor,
        grad: &Tensor,
        train: bool,
        tile: i64,
    ) -> Result<Tensor, ModelError> {
        let rows = flat(&mid.detach());
        let grads = flat(grad);
        let n = rows.size()[0];
        // Each tile's input gradient is written into one `[tokens, H]` tensor (never a second
        // copy of the whole gradient).
        let out_grad = rows.zeros_like();
        let mut start = 0;
        while start < n {
            let len = tile.min(n - start);
            let x = rows.narrow(0, start, len).detach().set_requires_grad(true);
            let (out, _) = self.feed_forward_half(&x, train);
            (&out * &grads.narrow(0, start, len))
                .sum(Kind::Float)
                .f_backward()
                .map_err(ModelError::torch("backpropagating an MLP tile"))?;
            out_grad.narrow(0, start, len).copy_(&x.grad());
            start += len;
        }
        Ok(out_grad.reshape(mid.size()))
    }
}
