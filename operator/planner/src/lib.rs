//! The memory planner of lf-operator: predicts the peak GPU memory of an `lf-trainer` run and
//! chooses how many GPUs, which ZeRO stage, whether to offload the optimiser, and the micro-batch.
//!
//! Everything here is a pure function of a [`PlannerInput`] (model architecture, training config,
//! GPU limits). The model is that of the trainer this project ships, not a generic one:
//! [`memory`] has the model-state facts (dtypes, quantisation, optimisers, ZeRO), [`activations`]
//! the saved tensors of its kernels and its chunked loss, [`host`] a process's host memory (the
//! pod's default memory request), [`calib`] the few runtime constants. The
//! peak is static memory plus the largest transient phase, not a sum of rows.
//!
//! - [`model_params`], [`trainable_params`]: exact counts (equal to `transformers` + `peft`).
//! - [`preset`], [`resolve_architecture`]: architectures of common models by Hugging Face id.
//! - [`search`], [`evaluate`], [`replan_after_oom`]: the choices, each option with a verdict.
//! - [`format_table`]: the human table `lf-operator plan -o table` prints.
//!
//! Files import downward only (`scripts/check_cycles.sh` checks it): `search` → `evaluate` →
//! `format` (all the prose) → `input` (→ `error` → `presets`) and `outcome` (the types read and
//! returned); the arithmetic below them: `activations`, `host` → `memory` → `params`, `calib`;
//! `recompute` (the search for the fewest recomputed layers, which `lf-trainer` shares).

pub mod activations;
pub mod calib;
mod error;
mod evaluate;
mod format;
pub mod host;
mod input;
pub mod long_context;
pub mod memory;
mod outcome;
pub mod params;
mod presets;
pub mod recompute;
mod search;
pub mod serving;

pub use error::PlanError;
pub use evaluate::{evaluate, evaluate_fixed};
pub use format::{format_gib, format_table, plan_summary};
pub use input::{resolve_architecture, PlannerInput};
pub use outcome::{PlanOption, PlanSearch};
pub use params::{model_params, trainable_params};
pub use presets::{preset, preset_names};
pub use search::{replan_after_oom, search};
