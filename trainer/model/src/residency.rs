//! Where the model's weights live while it runs: whole on this process (the default), or
//! partitioned across processes and gathered one unit at a time (ZeRO stage 3, implemented by the
//! trainer over its process group).
//!
//! The model is cut into [`Unit`]s — the embedding, each decoder layer, and the head (final norm
//! plus `lm_head`, or the tied embedding) — and every pass over the model brackets its use of a
//! unit with [`Residency::gather`] and [`Residency::release`]:
//!
//! * forward: gather, run, release;
//! * training with layer recomputation: the first pass gathers and releases each layer; backward
//!   gathers a layer again for its recomputation and releases it with `gradients_ready` once its
//!   gradients for this micro-batch are complete (a partitioned implementation reduce-scatters
//!   them then and frees the full gradients).
//!
//! [`CausalLm::unit_tensors`] lists every tensor a unit holds (dense weights, quantised storage,
//! adapters), sharing storage with the model, so an implementation can swap their data in place
//! (`Tensor::set_data`) without the model knowing.

use std::convert::Infallible;

use lf_api::training::LinearModule;
use tch::Tensor;

use crate::causal_lm::CausalLm;
use crate::linear::{BaseWeight, Linear};
use crate::llama::{DecoderLayer, RmsNorm};
use crate::method::peft_prefix;
use crate::ModelError;

/// A part of the model gathered and released as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// `model.embed_tokens.weight`.
    Embedding,
    /// Decoder layer `i`: its norms, linears (base and adapters) and biases.
    Layer(usize),
    /// `model.norm.weight` and the head weight (`lm_head.weight`, or the embedding when tied).
    Head,
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unit::Embedding => write!(f, "the embedding"),
            Unit::Layer(i) => write!(f, "decoder layer {i}"),
            Unit::Head => write!(f, "the head"),
        }
    }
}

/// Makes a unit's weights whole before it runs and gives them back after.
///
/// Every process of a partitioned model must make the same calls in the same order (they are
/// collectives); the model's passes guarantee that for identical call sequences.
pub trait Residency {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The unit's tensors hold their full values until [`Residency::release`].
    fn gather(&self, unit: Unit) -> Result<(), Self::Error>;
    /// The unit is not needed any more. `gradients_ready`: backward through it is complete for
    /// this micro-batch, so its trainable tensors' `.grad` hold their full contribution.
    fn release(&self, unit: Unit, gradients_ready: bool) -> Result<(), Self::Error>;
    /// Whether every process must run the same passes (a partitioned model): a micro-batch
    /// without labels still runs backward (with zero gradients) instead of returning early.
    fn lockstep(&self) -> bool {
        false
    }
}

/// Every weight is whole on this process all the time (no partitioning).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysResident;

impl Residency for AlwaysResident {
    type Error = Infallible;
    fn gather(&self, _unit: Unit) -> Result<(), Infallible> {
        Ok(())
    }
    fn release(&self, _unit: Unit, _gradients_ready: bool) -> Result<(), Infallible> {
        Ok(())
    }
}

fn linear_tensors(name: &str, peft: &str, lin: &Linear, out: &mut Vec<(String, Tensor)>) {
    match &lin.weight {
        BaseWeight::Dense(w) => out.push((format!("{name}.weight"), w.shallow_clone())),
        BaseWeight::Quantized(q) => {
            for (role, t) in q.storage_tensors() {
                out.push((format!("{name}.weight.{role}"), t));
            }
        }
    }
    if let Some(b) = &lin.bias {
        out.push((format!("{name}.bias"), b.shallow_clone()));
    }
    if let Some(ad) = &lin.adapter {
        out.push((format!("{peft}.lora_A.weight"), ad.a.shallow_clone()));
        out.push((format!("{peft}.lora_B.weight"), ad.b.shallow_clone()));
        if let Some(m) = &ad.magnitude {
            out.push((format!("{peft}.lora_magnitude_vector"), m.shallow_clone()));
        }
    }
}

/// The tensors of [`Unit::Embedding`].
pub(crate) fn embedding_tensors(embed_tokens: &Tensor) -> Vec<(String, Tensor)> {
    vec![(
        "model.embed_tokens.weight".to_string(),
        embed_tokens.shallow_clone(),
    )]
}

/// The tensors of [`Unit::Head`]: the final norm and `lm_head` (or the tied embedding).
pub(crate) fn head_tensors(
    norm: &RmsNorm,
    lm_head: Option<&Tensor>,
    embed_tokens: &Tensor,
) -> Vec<(String, Tensor)> {
    let head = match lm_head {
        Some(w) => ("lm_head.weight".to_string(), w.shallow_clone()),
        None => (
            "model.embed_tokens.weight".to_string(),
            embed_tokens.shallow_clone(),
        ),
    };
    vec![
        ("model.norm.weight".to_string(), norm.weight.shallow_clone()),
        head,
    ]
}

/// The tensors of [`Unit::Layer`] `i`.
pub(crate) fn layer_tensors(i: usize, layer: &DecoderLayer) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    let p = format!("model.layers.{i}");
    for module in LinearModule::ALL {
        let name = format!("{p}.{}.{}", module.parent(), module.name());
        linear_tensors(
            &name,
            &peft_prefix(i, module),
            layer.linear(module),
            &mut out,
        );
    }
    out.push((
        format!("{p}.input_layernorm.weight"),
        layer.input_layernorm.weight.shallow_clone(),
    ));
    out.push((
        format!("{p}.post_attention_layernorm.weight"),
        layer.post_attention_layernorm.weight.shallow_clone(),
    ));
    out
}

/// Receives each unit's tensors as the loader finishes it (ZeRO-3 partitions them right away, so
/// at most one unit is whole at a time while loading).
pub type UnitSink<'a> = dyn FnMut(Unit, Vec<(String, Tensor)>) -> Result<(), ModelError> + 'a;

impl CausalLm {
    /// The model's units in the order a forward pass uses them.
    pub fn units(&self) -> Vec<Unit> {
        let mut units = vec![Unit::Embedding];
        units.extend((0..self.model.layers.len()).map(Unit::Layer));
        units.push(Unit::Head);
        units
    }

    /// Every tensor `unit` holds, named as [`CausalLm::trainable_parameters`] names the trainable
    /// ones (PEFT names for adapters, Hugging Face names for base weights; quantised storage as
    /// `{weight}.{role}`), sharing storage with the model. A tied head lists the embedding.
    pub fn unit_tensors(&self, unit: Unit) -> Vec<(String, Tensor)> {
        let m = &self.model;
        match unit {
            Unit::Embedding => embedding_tensors(&m.embed_tokens),
            Unit::Head => head_tensors(&m.norm, m.lm_head.as_ref(), &m.embed_tokens),
            Unit::Layer(i) => m
                .layers
                .get(i)
                .map(|layer| layer_tensors(i, layer))
                .unwrap_or_default(),
        }
    }

    /// Turns layer recomputation on for training whatever the method said (a partitioned model
    /// cannot keep autograd's references to gathered weights across layers).
    pub fn force_layer_recomputation(&mut self) {
        self.method.gradient_checkpointing = true;
    }
}
