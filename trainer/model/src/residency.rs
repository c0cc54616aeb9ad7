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
//!   them then and frees the full gradients). A layer that kept its graph is released with
//!   `gradients_ready` right after the backward pass that reaches it (the one through the head),
//!   as is the embedding when no layer is recomputed; a unit's `gradients_ready` release is
//!   where data parallelism starts reducing its gradients while backward goes on (`overlap_comm`).
//!
//! [`crate::CausalLm::unit_tensors`] lists every tensor a unit holds (dense weights, quantised storage,
//! adapters), sharing storage with the model, so an implementation can swap their data in place
//! (`Tensor::set_data`) without the model knowing.

use std::convert::Infallible;

/// A part of the model gathered and released as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// `model.embed_tokens.weight`.
    Embedding,
    /// Decoder layer `i`: its norms, linears (base and adapters) and biases; a sparse MLP's
    /// router and every expert, so a mixture-of-experts layer is gathered whole.
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
    /// Whether the unit's weights exist only between [`Residency::gather`] and
    /// [`Residency::release`] (a partitioned model), so that backward must recompute every layer
    /// (autograd cannot keep references to a layer's weights across the others).
    fn needs_recomputation(&self) -> bool {
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
