//! Why a job cannot be planned.

use crate::presets::preset_names;

/// Why a job cannot be planned. Each message names the field at fault and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "model `{name}` has no built-in architecture: paste the model's config.json into spec.model.architecture \
         (keys model_type, vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, \
         num_key_value_heads, tie_word_embeddings), or use a known spec.model.name: {}",
        preset_names().join(", ")
    )]
    UnknownModel { name: String },
    #[error("invalid {key}: {message}")]
    InvalidInput { key: String, message: String },
}
