//! The memory planner of lf-operator: predicts the peak GPU memory of an `lf-trainer` run and
//! chooses how many GPUs, which ZeRO stage, whether to offload the optimiser, and the micro-batch.
//!
//! Everything here is a pure function of a [`PlannerInput`] (model architecture, training config,
//! GPU limits). The model is that of the trainer this project ships, not a generic one:
//! [`memory`] has the model-state facts (dtypes, quantisation, optimisers, ZeRO), [`activations`]
//! the saved tensors of its kernels and its chunked loss, [`calib`] the few runtime constants. The
//! peak is static memory plus the largest transient phase, not a sum of rows.
//!
//! - [`model_params`], [`trainable_params`]: exact counts (equal to `transformers` + `peft`).
//! - [`preset`], [`resolve_architecture`]: architectures of common models by Hugging Face id.
//! - [`search`], [`evaluate`], [`replan_after_oom`]: the choices, each option with a verdict.
//! - [`format_table`]: the human table `lf-operator plan -o table` prints.

pub mod activations;
pub mod calib;
mod evaluate;
mod format;
pub mod memory;
pub mod params;
mod presets;
mod search;

pub use evaluate::evaluate;
pub use format::{format_gib, format_table, plan_summary};
pub use params::{model_params, trainable_params};
pub use presets::{preset, preset_names, resolve_architecture};
pub use search::{evaluate_fixed, replan_after_oom, search, PlanOption, PlanSearch, PlannerInput};

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
