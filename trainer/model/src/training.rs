//! The loss, and forward + backward for one micro-batch with optional layer recomputation.
//!
//! Memory design (both parts measured by `tests/memory.rs`):
//!
//! * **Chunked head + loss.** Only positions with a label (≠ −100) go through the head, at most
//!   `loss_chunk_size` tokens at a time: logits of one chunk are computed in fp32, its
//!   cross-entropy is backpropagated immediately into the detached final hidden state (and the
//!   head weight if it trains), and the chunk is dropped. The full `[tokens, vocab]` fp32 logits
//!   never exist, in forward or backward.
//! * **Layer recomputation** (gradient checkpointing). The first pass runs every decoder layer
//!   without autograd, keeping only each layer's input. Backward then walks the layers from the
//!   top: layer `i` is recomputed with autograd from its stored input (a fresh leaf that requires
//!   grad), the incoming gradient is pushed through it with `(out · g).sum().backward()`, and the
//!   input's `.grad` becomes the gradient for layer `i − 1`. Only one layer's activations are
//!   alive at a time. Dropout masks are replayed exactly: each layer's forward runs after seeding
//!   libtorch's generator with a value derived from (seed, micro-batch, layer), in both passes.
//!   This reseeds libtorch's global generator whenever LoRA dropout is active in training mode;
//!   anything else drawing from it (nothing in lf-model) sees a deterministic but reseeded stream.
//!   With `gradient_checkpointing: auto` only the first `N` layers (`recompute_layers`) are
//!   recomputed: the layers above them run with autograd from a fresh leaf at their input, keep
//!   their saved tensors, and are back-propagated first (with the head); the leaf's gradient then
//!   enters the walk down the recomputed layers. The saved tensors of the kept layers are freed
//!   by that backward before the first recomputation.
//! * **Offloaded checkpoints and tiled MLPs** (`offload_activations`): the recomputed layers'
//!   inputs live in host memory between the two passes ([`crate::offload`]), and a recomputed
//!   layer with a dense MLP runs it `loss_chunk_size` tokens at a time in both passes
//!   ([`crate::tiled`]): its backward pushes the gradient through the MLP tile by tile, then
//!   through the attention half.

use tch::{Kind, Reduction, Tensor};

use crate::causal_lm::CausalLm;
use crate::moe::TrainingAux;
use crate::names;
use crate::offload::Checkpoints;
use crate::residency::{AlwaysResident, Residency, Unit};
use crate::ModelError;

/// Label value that is not trained on: lf-data's, as the loss's index type.
pub const IGNORE_INDEX: i64 = lf_data::IGNORE_INDEX as i64;

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64 finaliser over a combination of the inputs.
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CausalLm {
    pub(crate) fn check_batch(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
    ) -> Result<(), ModelError> {
        if input_ids.dim() != 2 || input_ids.size() != labels.size() {
            return Err(ModelError::Invalid(format!(
                "input_ids {:?} and labels {:?} must both be [batch, seq]",
                input_ids.size(),
                labels.size()
            )));
        }
        if input_ids.kind() != Kind::Int64 || labels.kind() != Kind::Int64 {
            return Err(ModelError::Invalid(
                "input_ids and labels must be int64".into(),
            ));
        }
        Ok(())
    }

    /// Hidden states of positions that have a next-token label, `[N, H]`, those labels `[N]`
    /// (the usual causal shift: position t predicts label t+1), and the batch row of each `[N]`.
    pub(crate) fn labelled(hidden: &Tensor, labels: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (b, s) = (labels.size()[0], labels.size()[1]);
        let h = hidden.narrow(1, 0, s - 1).reshape([b * (s - 1), -1]);
        let t = labels.narrow(1, 1, s - 1).reshape([b * (s - 1)]);
        let idx = t.ne(IGNORE_INDEX).nonzero().squeeze_dim(1);
        let rows = idx.floor_divide_scalar(s - 1);
        (h.index_select(0, &idx), t.index_select(0, &idx), rows)
    }

    pub(crate) fn chunk_len(&self, n: i64) -> i64 {
        match self.method.loss_chunk_size {
            0 => n.max(1),
            c => c as i64,
        }
    }

    /// Sum of token cross-entropies over labels ≠ −100 (fp32 scalar), head computed in chunks of
    /// `loss_chunk_size` tokens. Differentiable, but meant for evaluation: call it under
    /// `tch::no_grad` so no chunk's logits are kept. Divide by the label-token count yourself.
    pub fn loss_sum(&self, input_ids: &Tensor, labels: &Tensor) -> Tensor {
        let Ok(total) = self.loss_sum_with(input_ids, labels, &AlwaysResident);
        total
    }

    /// [`CausalLm::loss_sum`] with each unit gathered through `residency` (a partitioned model;
    /// call it under `tch::no_grad`).
    pub fn loss_sum_with<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        residency: &R,
    ) -> Result<Tensor, R::Error> {
        let x =
            self.model
                .decoder_output(input_ids, None, self.backend, self.training, residency)?;
        // One gather of the head for the final norm and every chunk's logits.
        residency.gather(Unit::Head)?;
        let hidden = self.model.norm.forward(&x);
        let (h, t, _) = Self::labelled(&hidden, labels);
        let n = t.size()[0];
        let mut total = Tensor::zeros([], (Kind::Float, hidden.device()));
        let chunk = self.chunk_len(n);
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let logits = self
                .model
                .head(&h.narrow(0, start, len))
                .to_kind(Kind::Float);
            total += logits.cross_entropy_loss::<Tensor>(
                &t.narrow(0, start, len),
                None,
                Reduction::Sum,
                IGNORE_INDEX,
                0.0,
            );
            start += len;
        }
        residency.release(Unit::Head, false)?;
        Ok(total)
    }

    /// Forward and backward of one micro-batch: accumulates `loss_scale ×` the gradient of the
    /// summed token loss into the `.grad` of every trainable parameter, and returns the loss sum
    /// (unscaled). Pass `loss_scale = 1 / (label tokens of the whole optimiser step)` for exact
    /// gradient accumulation. Layers are recomputed in backward when training with
    /// `gradient_checkpointing`; the head and loss always run in chunks (see the module docs).
    ///
    /// With quantised base weights and no recomputation, autograd keeps every layer's dequantised
    /// weights until backward (there is no custom autograd function in tch to re-dequantise them),
    /// so QLoRA should keep `gradient_checkpointing` on (the default).
    pub fn loss_sum_and_backward(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        loss_scale: f64,
    ) -> Result<f64, ModelError> {
        self.loss_sum_and_backward_with(input_ids, labels, loss_scale, &AlwaysResident)
    }

    /// [`CausalLm::loss_sum_and_backward`] on packed rows (`neat_packing`): `position_ids`
    /// (`[B, S]`) restart at 0 at each example, which then attends only to itself (see
    /// [`crate::packing`]). `labels` must not train on an example's first token (nothing of that
    /// example precedes it: `lf_data::collate_packed` masks it), so the loss and gradients equal
    /// those of the examples on rows of their own.
    pub fn loss_sum_and_backward_packed(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        position_ids: &Tensor,
        loss_scale: f64,
    ) -> Result<f64, ModelError> {
        self.loss_sum_and_backward_packed_with(
            input_ids,
            labels,
            position_ids,
            loss_scale,
            &AlwaysResident,
        )
    }

    /// [`CausalLm::loss_sum_and_backward_packed`] with each unit bracketed by `residency` (as
    /// [`CausalLm::loss_sum_and_backward_with`]).
    pub fn loss_sum_and_backward_packed_with<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        position_ids: &Tensor,
        loss_scale: f64,
        residency: &R,
    ) -> Result<f64, ModelError> {
        if position_ids.size() != input_ids.size() || position_ids.kind() != Kind::Int64 {
            return Err(ModelError::Invalid(format!(
                "position_ids {:?} must be int64 and shaped like input_ids {:?}",
                position_ids.size(),
                input_ids.size()
            )));
        }
        self.backward_with_head_at(
            input_ids,
            labels,
            Some(position_ids),
            residency,
            |hidden, rows, targets| self.cross_entropy_backward(hidden, rows, targets, loss_scale),
        )
    }

    /// [`CausalLm::loss_sum_and_backward`] with each unit gathered through `residency` before it
    /// runs (forward, and again for its recomputation in backward) and released right after;
    /// a unit's release after its backward says its gradients are ready. A partitioned model
    /// needs layer recomputation ([`CausalLm::force_layer_recomputation`]).
    pub fn loss_sum_and_backward_with<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        loss_scale: f64,
        residency: &R,
    ) -> Result<f64, ModelError> {
        self.backward_with_head(input_ids, labels, residency, |hidden, rows, targets| {
            self.cross_entropy_backward(hidden, rows, targets, loss_scale)
        })
    }

    /// The summed cross-entropy of the labelled positions, each chunk of `loss_chunk_size` rows
    /// backpropagated at once (scaled by `loss_scale`) into `hidden` (`[positions, H]`, a leaf):
    /// `rows` picks the labelled positions, `targets` are their labels.
    fn cross_entropy_backward(
        &self,
        hidden: &Tensor,
        rows: &Tensor,
        targets: &Tensor,
        loss_scale: f64,
    ) -> Result<f64, ModelError> {
        let n = rows.size()[0];
        let chunk = self.chunk_len(n);
        // Summed on the device; read once after the loop (one host sync, not one per chunk).
        let mut total = Tensor::zeros([], (Kind::Double, targets.device()));
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let logits = self
                .model
                .head(&hidden.index_select(0, &rows.narrow(0, start, len)))
                .to_kind(Kind::Float);
            let loss = logits.cross_entropy_loss::<Tensor>(
                &targets.narrow(0, start, len),
                None,
                Reduction::Sum,
                IGNORE_INDEX,
                0.0,
            );
            total += loss.detach().to_kind(Kind::Double);
            (loss * loss_scale)
                .f_backward()
                .map_err(ModelError::torch("backpropagating the loss"))?;
            start += len;
        }
        Ok(total.double_value(&[]))
    }

    /// Forward and backward of one micro-batch around a loss `head`: the decoder runs (with
    /// layer recomputation when configured), then `head(hidden, rows, targets)` gets the final
    /// hidden states of every position but the last, flattened to `[batch·(seq−1), H]` as a leaf,
    /// the indices of the positions that predict a label, and those labels; it must backpropagate
    /// its loss into that leaf (in chunks, so no full logits exist) and return the value to
    /// report. That gradient is then pushed through the final norm and the decoder. `head` is
    /// not called when no position has a label.
    pub(crate) fn backward_with_head<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        residency: &R,
        head: impl FnOnce(&Tensor, &Tensor, &Tensor) -> Result<f64, ModelError>,
    ) -> Result<f64, ModelError> {
        self.backward_with_head_at(input_ids, labels, None, residency, head)
    }

    /// [`CausalLm::backward_with_head`] at `position_ids` (packed rows), or at `0..S` on every
    /// row when `None`.
    fn backward_with_head_at<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        position_ids: Option<&Tensor>,
        residency: &R,
        head: impl FnOnce(&Tensor, &Tensor, &Tensor) -> Result<f64, ModelError>,
    ) -> Result<f64, ModelError> {
        self.check_batch(input_ids, labels)?;
        let n_layers = self.model.layers.len();
        // The first `recomputed` layers are recomputed; the others keep their graph.
        let recomputed = self.recomputed_layers();
        let recompute = recomputed > 0;
        let lockstep = residency.lockstep();
        if residency.needs_recomputation() && recomputed < n_layers {
            return Err(ModelError::Invalid(
                "a partitioned model trains with layer recomputation (gradient_checkpointing)"
                    .into(),
            ));
        }
        let gather = |u: Unit| {
            residency
                .gather(u)
                .map_err(ModelError::residency(u, "gathering"))
        };
        let release = |u: Unit, ready: bool| {
            residency
                .release(u, ready)
                .map_err(ModelError::residency(u, "releasing"))
        };
        let step = self
            .micro_step
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let step_seed = mix(self.method.seed, step);
        let replay = self.training && self.method.lora.as_ref().is_some_and(|l| l.dropout > 0.0);
        let seed_layer = |i: usize| {
            if replay {
                tch::manual_seed((mix(step_seed, i as u64 + 1) >> 1) as i64);
            }
        };
        let embed_trains = self.model.embed_tokens.requires_grad();
        let first_trainable = if embed_trains {
            0
        } else {
            self.first_trainable_layer()
        };
        let s = input_ids.size()[1];
        gather(Unit::Embedding)?;
        // With recomputation the embedding's graph is not kept: backward recomputes it.
        let x0 = if recompute {
            tch::no_grad(|| self.model.embed(input_ids))
        } else {
            self.model.embed(input_ids)
        };
        release(Unit::Embedding, false)?;
        let rope = match position_ids {
            Some(p) => self.model.rope_packed(p, x0.kind(), x0.device()),
            None => self.model.rope(0, s, x0.kind(), x0.device()),
        };
        let layers = &self.model.layers;

        // Forward through the layers; a recomputed layer keeps only its input. The first kept
        // layer above recomputed ones starts the graph from a fresh leaf (`boundary`), whose
        // gradient then enters the recomputed layers.
        let mut inputs = Checkpoints::new(
            self.method.offload_activations,
            x0.device(),
            first_trainable,
            &self.offload_stats,
        );
        let tokens = input_ids.numel();
        let mut boundary: Option<Tensor> = None;
        let mut x = x0.shallow_clone();
        let mut aux = TrainingAux::new(&self.arch, x0.device());
        for (i, layer) in layers.iter().enumerate() {
            seed_layer(i);
            gather(Unit::Layer(i))?;
            if i < recomputed || i < first_trainable {
                let _guard = tch::no_grad_guard();
                if i < recomputed {
                    inputs.push(&x);
                }
                x = match self.model.tile_for(layer, tokens) {
                    Some(t) => layer.forward_tiled(&x, &rope, self.backend, self.training, t),
                    None => {
                        let (y, logits) =
                            layer.forward_routed(&x, &rope, None, self.backend, self.training);
                        TrainingAux::observe(aux.as_mut(), logits);
                        y
                    }
                };
            } else {
                if i == recomputed && recomputed > first_trainable {
                    x = x.detach().set_requires_grad(true);
                    boundary = Some(x.shallow_clone());
                }
                let (y, logits) =
                    layer.forward_routed(&x, &rope, None, self.backend, self.training);
                TrainingAux::observe(aux.as_mut(), logits);
                x = y;
            }
            release(Unit::Layer(i), false)?;
        }
        // With every layer recomputed the graph starts at the last layer's output (a fresh leaf).
        let x_top = if recomputed == n_layers && recompute {
            x.detach().set_requires_grad(true)
        } else {
            x
        };
        gather(Unit::Head)?;
        let hidden = self.model.norm.forward(&x_top);

        // Chunked head + loss, each chunk backpropagated at once into a detached copy of the
        // (shifted, flattened) hidden states; only one chunk's logits exist at a time.
        let (b, s) = (labels.size()[0], labels.size()[1]);
        let flat = hidden.narrow(1, 0, s - 1).reshape([b * (s - 1), -1]);
        let flat_leaf = flat.detach().set_requires_grad(true);
        let targets = labels.narrow(1, 1, s - 1).reshape([b * (s - 1)]);
        let idx = targets.ne(IGNORE_INDEX).nonzero().squeeze_dim(1);
        let n = idx.size()[0];
        if n == 0 && !lockstep {
            release(Unit::Head, false)?;
            return Ok(0.0);
        }
        let targets = targets.index_select(0, &idx);
        let loss_sum = if n > 0 {
            head(&flat_leaf, &idx, &targets)?
        } else {
            0.0
        };
        // A partitioned model without labels here still runs backward, with zero gradients:
        // the other processes gather the same units in the same order.
        let grad = if n == 0 {
            flat_leaf.zeros_like()
        } else {
            flat_leaf.grad()
        };
        if !flat.requires_grad() || !grad.defined() {
            release(Unit::Head, true)?;
            return Ok(loss_sum);
        }
        // The kept layers' routers' graph is alive: the load-balancing loss joins here (its
        // gradient reaches only those routers; each recomputed layer adds its own share below).
        let aux_total = if recomputed == n_layers {
            None
        } else {
            aux.as_ref()
        };
        TrainingAux::add_total(aux_total, (&flat * &grad).sum(Kind::Float))
            .f_backward()
            .map_err(ModelError::torch("backpropagating through the final norm"))?;
        release(Unit::Head, true)?;
        // The layers that kept their graph are through their backward now, and so is the
        // embedding when nothing is recomputed.
        for i in (recomputed.max(first_trainable)..n_layers).rev() {
            release(Unit::Layer(i), true)?;
        }
        if !recompute {
            if embed_trains {
                release(Unit::Embedding, true)?;
            }
            return Ok(loss_sum);
        }

        // Walk the recomputed layers from the top, recomputing each from its stored input.
        let mut grad = match &boundary {
            Some(leaf) => leaf.grad(),
            None if recomputed == n_layers => x_top.grad(),
            // The recomputed layers are all frozen and below every trainable one.
            None => return Ok(loss_sum),
        };
        for i in (first_trainable..inputs.len()).rev() {
            if !grad.defined() {
                break;
            }
            let needs_input_grad = i > first_trainable || embed_trains;
            let input = inputs.take(i).detach().set_requires_grad(needs_input_grad);
            seed_layer(i);
            gather(Unit::Layer(i))?;
            let backprop = |out: Tensor, grad: &Tensor, logits: Option<Tensor>| {
                if !out.requires_grad() {
                    return Ok(());
                }
                let loss = (&out * grad).sum(Kind::Float);
                TrainingAux::add_layer(aux.as_ref(), loss, logits.as_ref())
                    .f_backward()
                    .map_err(ModelError::torch(format!(
                        "backpropagating through layer {i}"
                    )))
            };
            match self.model.tile_for(&layers[i], tokens) {
                Some(t) => {
                    let mid =
                        layers[i].attention_half(&input, &rope, None, self.backend, self.training);
                    let mid_grad =
                        layers[i].feed_forward_backward_tiled(&mid, &grad, self.training, t)?;
                    // The layer's output gradient is spent: free it before the attention half's
                    // backward.
                    grad = Tensor::new();
                    backprop(mid, &mid_grad, None)?;
                }
                None => {
                    let (out, logits) =
                        layers[i].forward_routed(&input, &rope, None, self.backend, self.training);
                    backprop(out, &grad, logits)?;
                }
            }
            release(Unit::Layer(i), true)?;
            if !needs_input_grad {
                break;
            }
            grad = input.grad();
        }
        if embed_trains && grad.defined() {
            gather(Unit::Embedding)?;
            let e = self.model.embed(input_ids);
            (&e * &grad)
                .sum(Kind::Float)
                .f_backward()
                .map_err(ModelError::torch("backpropagating into the embeddings"))?;
            drop(e);
            release(Unit::Embedding, true)?;
        }
        Ok(loss_sum)
    }

    /// What the last training pass did with its recomputed layers' checkpoints (host bytes,
    /// copies, the most on the device at once).
    pub fn offload_stats(&self) -> crate::offload::OffloadStats {
        self.offload_stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Index of the lowest decoder layer with a trainable parameter (number of layers if none).
    fn first_trainable_layer(&self) -> usize {
        let layers = self.model.layers.len();
        self.trainable_parameters()
            .iter()
            .filter_map(|(name, _)| names::layer_of(name))
            .filter(|&i| i < layers)
            .min()
            .unwrap_or(layers)
    }
}
