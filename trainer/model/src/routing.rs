//! What a mixture-of-experts model's routers decide in a forward pass, and the loss transformers
//! trains such a model with: the token cross-entropy plus `router_aux_loss_coef ×` the
//! load-balancing loss when `output_router_logits` is set (see [`crate::moe`]).
//!
//! A training micro-batch ([`CausalLm::loss_sum_and_backward`]) adds `router_aux_loss_coef ×`
//! its load-balancing loss to the loss it backpropagates, unscaled by `loss_scale`, as
//! transformers' `Trainer` does per micro-batch when the model takes `num_items_in_batch`
//! (Mixtral's and Qwen3-MoE's forward do). LLaMA-Factory's collator passes the attention mask,
//! which leaves padding out of the statistics: so does a step given the batch's mask
//! ([`CausalLm::loss_sum_and_backward_masked_with`]; [`CausalLm::moe_loss`] takes one too).
//!
//! Packed rows: with `packing` the rows are plain right-padded rows (examples attend across their
//! boundaries), masked as any. With `neat_packing` the examples of a row attend block-diagonally
//! (position ids restarting at 0), and a step given the rows' mask
//! ([`CausalLm::loss_sum_and_backward_packed_masked_with`], [`CausalLm::moe_loss_packed`]) counts
//! each real token once and leaves the padding out — LLaMA-Factory's segment-index mask (1, 2, 3,
//! … per example) is taken as the 0/1 mask it stands for (see [`crate::moe`] for what transformers
//! does with it).

use tch::{Kind, Reduction, Tensor};

use crate::causal_lm::CausalLm;
use crate::moe::RouterBalance;
use crate::residency::{AlwaysResident, Residency};
use crate::training::IGNORE_INDEX;
use crate::ModelError;

/// Logits and router decisions of one forward pass.
pub struct RoutedForward {
    /// `[B, S, V]`, fp32.
    pub logits: Tensor,
    /// Each sparse layer's router logits, `[B·S, E]`, in layer order (empty for dense models).
    pub router_logits: Vec<Tensor>,
}

/// transformers' `MoeCausalLMOutputWithPast` losses of one batch.
pub struct MoeLoss {
    /// Mean token cross-entropy over the labels ≠ −100 (next-token shift).
    pub cross_entropy: Tensor,
    /// The load-balancing loss (`aux_loss`).
    pub aux: Tensor,
    /// `cross_entropy + router_aux_loss_coef · aux` when `output_router_logits` is set, else
    /// `cross_entropy` (transformers' `loss`).
    pub total: Tensor,
}

impl CausalLm {
    /// [`CausalLm::forward_routed`] on packed rows (`neat_packing`): `position_ids` (`[B, S]`)
    /// restart at 0 at each example, which attends only to itself ([`crate::packing`]).
    /// `Llama::decoder_output_routed` runs positions `0..S` only, so the layer walk is its, at
    /// packed positions.
    pub fn forward_routed_packed(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
    ) -> RoutedForward {
        let model = &self.model;
        let mut x = model.embed(input_ids);
        let rope = model.rope_packed(position_ids, x.kind(), x.device());
        let mut router_logits = Vec::new();
        for layer in &model.layers {
            let (y, logits) = layer.forward_routed(&x, &rope, None, self.backend, self.training);
            x = y;
            router_logits.extend(logits);
        }
        let logits = model.head(&model.norm.forward(&x));
        RoutedForward {
            logits: logits.to_kind(Kind::Float),
            router_logits,
        }
    }

    /// Logits and every sparse layer's router logits for `input_ids` (`[B, S]`).
    pub fn forward_routed(&self, input_ids: &Tensor) -> RoutedForward {
        let mut router_logits = Vec::new();
        let Ok(x) = self.model.decoder_output_routed(
            input_ids,
            None,
            self.backend,
            self.training,
            &AlwaysResident,
            Some(&mut router_logits),
        );
        let logits = self.model.head(&self.model.norm.forward(&x));
        RoutedForward {
            logits: logits.to_kind(Kind::Float),
            router_logits,
        }
    }

    /// The experts each token was routed to in each sparse layer (`[B·S, k]`, most probable
    /// first), from that layer's router logits.
    pub fn chosen_experts(&self, router_logits: &Tensor) -> Tensor {
        let k = self.arch.experts_per_token() as i64;
        let (_, chosen) = router_logits
            .softmax(-1, Kind::Float)
            .topk(k, -1, true, true);
        chosen
    }

    /// The load-balancing loss of a forward pass's router logits over the tokens
    /// `attention_mask` (`[B, S]`, non-zero = real token) keeps (all when `None`), as
    /// transformers' `load_balancing_loss_func` given the 0/1 mask (`None` for a dense model).
    pub fn router_aux_loss(
        &self,
        router_logits: &[Tensor],
        attention_mask: Option<&Tensor>,
    ) -> Option<Tensor> {
        let first = router_logits.first()?;
        let mut balance = RouterBalance::new(
            self.arch.num_experts() as i64,
            self.arch.experts_per_token() as i64,
            first.device(),
        );
        for logits in router_logits {
            balance.add_layer(logits, attention_mask);
        }
        Some(balance.loss())
    }

    /// [`CausalLm::loss_sum_and_backward_with`] on a right-padded batch with its
    /// `attention_mask` (`[B, S]`, 1 = real token, 0 = padding): the load-balancing loss a
    /// mixture of experts adds to the step leaves padding out, as transformers'
    /// `load_balancing_loss_func` does when the model is given the mask. Nothing else depends on
    /// it: a right-padded row's real tokens attend only to earlier (real) positions, and padding
    /// has no labels.
    pub fn loss_sum_and_backward_masked_with<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        attention_mask: &Tensor,
        loss_scale: f64,
        residency: &R,
    ) -> Result<f64, ModelError> {
        check_mask(attention_mask, input_ids)?;
        crate::moe::with_training_mask(attention_mask.reshape([-1]), || {
            self.loss_sum_and_backward_with(input_ids, labels, loss_scale, residency)
        })
    }

    /// [`CausalLm::loss_sum_and_backward_packed_with`] given the packed rows' `attention_mask`
    /// (`[B, S]`, non-zero on the examples' tokens, 0 on padding: lf-data's 0/1 mask or
    /// LLaMA-Factory's segment indices): the load-balancing loss a mixture of experts adds counts
    /// each real token once and leaves the padding out, as transformers computes it on what
    /// LLaMA-Factory's `neat_packing` feeds it (see [`crate::moe`]).
    pub fn loss_sum_and_backward_packed_masked_with<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        position_ids: &Tensor,
        attention_mask: &Tensor,
        loss_scale: f64,
        residency: &R,
    ) -> Result<f64, ModelError> {
        check_mask(attention_mask, input_ids)?;
        crate::moe::with_training_mask(attention_mask.reshape([-1]), || {
            self.loss_sum_and_backward_packed_with(
                input_ids,
                labels,
                position_ids,
                loss_scale,
                residency,
            )
        })
    }

    /// [`CausalLm::loss_sum_and_backward_packed_masked_with`] with the whole model resident.
    pub fn loss_sum_and_backward_packed_masked(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        position_ids: &Tensor,
        attention_mask: &Tensor,
        loss_scale: f64,
    ) -> Result<f64, ModelError> {
        self.loss_sum_and_backward_packed_masked_with(
            input_ids,
            labels,
            position_ids,
            attention_mask,
            loss_scale,
            &AlwaysResident,
        )
    }

    /// [`CausalLm::loss_sum_and_backward_masked_with`] with the whole model resident.
    pub fn loss_sum_and_backward_masked(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        attention_mask: &Tensor,
        loss_scale: f64,
    ) -> Result<f64, ModelError> {
        self.loss_sum_and_backward_masked_with(
            input_ids,
            labels,
            attention_mask,
            loss_scale,
            &AlwaysResident,
        )
    }

    /// transformers' loss of a mixture-of-experts causal LM on one batch (differentiable).
    pub fn moe_loss(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> MoeLoss {
        self.losses(self.forward_routed(input_ids), labels, attention_mask)
    }

    /// [`CausalLm::moe_loss`] on packed rows ([`CausalLm::forward_routed_packed`]).
    pub fn moe_loss_packed(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        position_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> MoeLoss {
        let out = self.forward_routed_packed(input_ids, position_ids);
        self.losses(out, labels, attention_mask)
    }

    /// The losses of a forward pass's logits and router logits.
    fn losses(
        &self,
        out: RoutedForward,
        labels: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> MoeLoss {
        let v = out.logits.size()[2];
        let s = labels.size()[1];
        let cross_entropy = out
            .logits
            .narrow(1, 0, s - 1)
            .reshape([-1, v])
            .cross_entropy_loss::<Tensor>(
                &labels.narrow(1, 1, s - 1).reshape([-1]),
                None,
                Reduction::Mean,
                IGNORE_INDEX,
                0.0,
            );
        let aux = self
            .router_aux_loss(&out.router_logits, attention_mask)
            .unwrap_or_else(|| Tensor::zeros([], (Kind::Float, out.logits.device())));
        let total = match self.arch.router_aux_loss_weight() {
            Some(c) => &cross_entropy + &aux * c,
            None => cross_entropy.shallow_clone(),
        };
        MoeLoss {
            cross_entropy,
            aux,
            total,
        }
    }
}

/// A batch's attention mask is shaped like its `input_ids`.
fn check_mask(attention_mask: &Tensor, input_ids: &Tensor) -> Result<(), ModelError> {
    if attention_mask.size() != input_ids.size() {
        return Err(ModelError::Invalid(format!(
            "attention_mask {:?} must be shaped like input_ids {:?}",
            attention_mask.size(),
            input_ids.size()
        )));
    }
    Ok(())
}
