//! The training config: one type, LLaMA-Factory's argument names and defaults.
//!
//! The same value is `spec.training` in a FineTuneJob, the YAML file the operator renders into each
//! pod (with the plan's decisions filled in), and what `lf-trainer train CONFIG.yaml` reads. Keys
//! are snake_case exactly as LLaMA-Factory (and Hugging Face `TrainingArguments`) spell them, so a
//! LLaMA-Factory YAML works unchanged as long as it only uses what we support.
//!
//! Parsing is strict: an unknown key is an error naming the key and the closest valid one, and a
//! LLaMA-Factory option we know but do not implement is an error that says so (never silently
//! ignored). See [`TrainingConfig::from_yaml_str`].

mod config;
mod error;
mod options;
mod parse;
mod validate;

pub use crate::architecture::LinearModule;
pub use config::TrainingConfig;
pub use error::ConfigError;
pub use options::{
    DatasetFormat, EvalStrategy, FinetuningType, FlashAttn, LrSchedulerType, OffloadDevice, Optim,
    Precision, QuantizationType, Stage, TEMPLATES,
};
pub use parse::UNSUPPORTED;
