//! `offload_activations` (lf-operator extension): the long-context mode of layer recomputation.
//!
//! `true`: each recomputed decoder layer's input (its checkpoint) goes to host memory right after
//! the layer's forward and comes back just before the layer is recomputed in backward; and every
//! pass without gradients or a KV cache (the first pass of recomputed layers, their recomputation,
//! a preference run's reference and KL passes, evaluation) runs a dense MLP in tiles of
//! `loss_chunk_size` tokens (`0`: whole), forward and backward (the MLP is token-wise, so the tiles
//! give the same rows), so that no `[tokens, intermediate]` tensor of the whole micro-batch ever
//! exists. GPU memory then no longer grows with the number of layers times the sequence, only
//! with one layer's attention. `false`: checkpoints stay on the device and the MLP runs whole.
//! `auto` (the default): the operator's planner turns it on only when no number of recomputed
//! layers fits the GPU without it, and renders its choice; `lf-trainer` alone treats `auto` as
//! `false`.

use serde::{Deserializer, Serialize, Serializer};

use super::checkpointing::tri_state;

/// Activation offload as the config says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffloadActivations {
    On,
    Off,
    /// The planner decides (`lf-trainer` alone: off).
    #[default]
    Auto,
}

impl OffloadActivations {
    /// Whether the trainer offloads: `true` only (an undecided `auto` runs without).
    pub fn enabled(self) -> bool {
        self == OffloadActivations::On
    }
}

impl From<bool> for OffloadActivations {
    fn from(on: bool) -> Self {
        if on {
            OffloadActivations::On
        } else {
            OffloadActivations::Off
        }
    }
}

impl Serialize for OffloadActivations {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OffloadActivations::On => s.serialize_bool(true),
            OffloadActivations::Off => s.serialize_bool(false),
            OffloadActivations::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for OffloadActivations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(tri_state("offload_activations", d)?.map_or(OffloadActivations::Auto, Into::into))
    }
}

/// The tile (tokens) in which a recomputed layer runs its MLP under `offload_activations`, in a
/// micro-batch of `tokens` tokens: `loss_chunk_size` when that is shorter than `tokens` and the
/// MLP is dense (`sparse`: a router's load-balancing loss needs every token's logits at once);
/// `None` runs the MLP whole. The one rule the planner and `lf-trainer` share (the trainer per
/// layer; the planner with `sparse` true when any layer is sparse, never under-counting).
pub fn mlp_tile(loss_chunk_size: usize, tokens: u64, sparse: bool) -> Option<u64> {
    let tile = loss_chunk_size as u64;
    (!sparse && tile > 0 && tile < tokens).then_some(tile)
}

/// The CRD schema: `true`, `false` or `auto`, kept as written (parsing checks it), as
/// `gradient_checkpointing`'s.
pub(crate) fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "default": "auto",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_false_and_auto_in_both_spellings() {
        for (text, want) in [
            ("true", OffloadActivations::On),
            ("\"true\"", OffloadActivations::On),
            ("false", OffloadActivations::Off),
            ("auto", OffloadActivations::Auto),
        ] {
            let got: OffloadActivations = serde_yaml::from_str(text).expect(text);
            assert_eq!(got, want, "{text}");
        }
        let e = serde_yaml::from_str::<OffloadActivations>("cpu").unwrap_err();
        assert!(
            e.to_string().contains("offload_activations: \"cpu\""),
            "{e}"
        );
        assert!(!OffloadActivations::Auto.enabled());
    }

    #[test]
    fn the_mlp_is_tiled_only_when_dense_and_longer_than_a_tile() {
        assert_eq!(mlp_tile(1024, 4096, false), Some(1024));
        assert_eq!(mlp_tile(1024, 1024, false), None);
        assert_eq!(mlp_tile(1024, 4096, true), None);
        assert_eq!(mlp_tile(0, 4096, false), None);
    }
}
