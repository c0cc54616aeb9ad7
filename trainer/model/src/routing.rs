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
    /// `attention_mask` (`[B, S]`, 1 = real token) keeps (all when `None`), as transformers'
    /// `load_balancing_loss_func` (`None` for a dense model).
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
        if attention_mask.size() != input_ids.size() {
            return Err(ModelError::Invalid(format!(
                "attention_mask {:?} must be shaped like input_ids {:?}",
                attention_mask.size(),
                input_ids.size()
            )));
        }
        crate::moe::with_training_mask(attention_mask.reshape([-1]), || {
            self.loss_sum_and_backward_with(input_ids, labels, loss_scale, residency)
        })
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
        let out = self.forward_routed(input_ids);
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
