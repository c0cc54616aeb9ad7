//! `gradient_checkpointing`: `true` (recompute every decoder layer in backward), `false` (keep
//! every layer's activations) or `auto` (the default: recompute only as many layers as memory
//! requires). Under `auto` the number of recomputed layers is `recompute_layers` when set (the
//! operator renders the planner's choice there), else chosen by `lf-trainer` from
//! `memory_budget_mib` when that is set, else every layer (as `true`).
//!
//! Which layers: the first `N` decoder layers (counted from the embedding) are recomputed, the
//! others keep their activations for backward.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Layer recomputation (gradient checkpointing) as the config says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GradientCheckpointing {
    /// Every decoder layer is recomputed (`true`).
    On,
    /// No layer is recomputed (`false`).
    Off,
    /// As many layers as memory requires (`auto`).
    #[default]
    Auto,
}

impl From<bool> for GradientCheckpointing {
    fn from(on: bool) -> Self {
        if on {
            GradientCheckpointing::On
        } else {
            GradientCheckpointing::Off
        }
    }
}

impl Serialize for GradientCheckpointing {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GradientCheckpointing::On => s.serialize_bool(true),
            GradientCheckpointing::Off => s.serialize_bool(false),
            GradientCheckpointing::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for GradientCheckpointing {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match tri_state("gradient_checkpointing", d)? {
            Some(on) => on.into(),
            None => GradientCheckpointing::Auto,
        })
    }
}

/// `true`, `false` or `auto` (`None`), as a boolean or a string: the form of the switches the
/// planner may decide (`gradient_checkpointing`, `offload_activations`).
pub(crate) fn tri_state<'de, D: Deserializer<'de>>(
    key: &str,
    d: D,
) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bool(b) => Ok(Some(b)),
        Raw::Text(t) => match t.as_str() {
            "auto" => Ok(None),
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            other => Err(serde::de::Error::custom(format!(
                "{key}: {other:?} is not true, false or auto"
            ))),
        },
    }
}

/// The CRD schema of `gradient_checkpointing`: a structural schema cannot say "boolean or the
/// string `auto`", so the value is kept as it is (parsing checks it).
pub(crate) fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "default": "auto",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
