//! The training config: one type, LLaMA-Factory's argument names and defaults.
//!
//! The same value is `spec.training` in a FineTuneJob, the YAML file the operator renders into each
//! pod (with the plan's decisions filled in), and what `lf-trainer train CONFIG.yaml` reads. Keys
//! are snake_case exactly as LLaMA-Factory (and Hugging Face `TrainingArguments`) spell them, so a
//! LLaMA-Factory YAML works unchanged as long as it only uses what we support.
//!
//! Parsing is strict: an unknown key is an error naming the key and the closest valid one. Every
//! LLaMA-Factory option is in one of three lists: the config's own keys (supported), [`ACCEPTED`]
//! (lf-trainer already does what it asks, or it changes nothing: accepted, with a [`Notice`] where
//! it is a no-op) and [`REJECTED`] (a feature lf-trainer does not have: an error with the reason
//! unless the value turns it off). `deepspeed` is read and mapped onto the config's keys. See
//! [`TrainingConfig::parse_yaml_str`] for the notices.

mod activation_offload;
mod adalora;
mod checkpointing;
mod compat;
mod config;
mod deepspeed;
mod error;
mod notice;
mod options;
mod parse;
pub mod profile_steps;
pub mod report_to;
mod validate;

pub use crate::architecture::LinearModule;
pub use activation_offload::{mlp_tile, OffloadActivations};
pub use adalora::AdaLora;
pub use checkpointing::GradientCheckpointing;
pub use compat::{CompatOption, Source, ACCEPTED, REJECTED, REJECTED_VALUES};
pub use config::TrainingConfig;
pub use deepspeed::{DeepSpeedConfig, DeepSpeedMapping, DeepSpeedSetting, DEEPSPEED_MAPPING};
pub use error::ConfigError;
pub use notice::Notice;
pub use options::{
    DatasetFormat, EvalStrategy, FinetuningType, FlashAttn, LrSchedulerType, OffloadDevice, Optim,
    Precision, PrefLoss, QuantizationType, Stage, TEMPLATES,
};
pub use parse::{Parsed, ALIASES};
